"""Fake of modules/shared.py: the webui's global state, as it is after start-up.

In the real webui ``opts``, ``state`` and ``device`` are filled in by initialize(); here they are
ready at import. ``sd_model`` is a property (see shared_items.py): reading it loads a model.
"""

from modules import options, shared_cmd_options, util
from modules.paths_internal import (  # noqa: F401
    data_path,
    default_sd_model_file,
    extensions_builtin_dir,
    extensions_dir,
    models_path,
    script_path,
    sd_model_file,
)

cmd_opts = shared_cmd_options.cmd_opts
parser = shared_cmd_options.parser

natural_sort_key = util.natural_sort_key

parallel_processing_allowed = True
demo = None
settings_components = None
tab_names = []
sd_upscalers = []  # filled by modelloader.load_upscalers() at start-up (below)

OptionInfo = options.OptionInfo
options_section = options.options_section

options.categories.register_category("sd", "Stable Diffusion")
options.categories.register_category("ui", "User Interface")
options.categories.register_category("system", "System")
options.categories.register_category("training", "Training")

# A few of the real options, enough for what the fake itself reads. Components are gradio classes in
# the real webui; the fake names them.
options_templates = {}
options_templates.update(options.options_section(("sd", "Stable Diffusion", "sd"), {
    "sd_model_checkpoint": OptionInfo(None, "Stable Diffusion checkpoint", component="Dropdown"),
    "sd_checkpoint_cache": OptionInfo(0, "Checkpoints to cache in RAM"),
}))
options_templates.update(options.options_section(("ui", "Live previews", "ui"), {
    "live_previews_enable": OptionInfo(True, "Show live previews of the created image"),
    "live_previews_image_format": OptionInfo("png", "Live preview file format"),
    "show_progress_every_n_steps": OptionInfo(10, "Live preview display period"),
}))
options_templates.update(options.options_section(("system", "System", "system"), {
    "memmon_poll_rate": OptionInfo(8, "VRAM usage polls per second during generation"),
    "profiling_enable": OptionInfo(False, "Enable profiling"),
}))
options_templates.update(options.options_section(("ui", "User Interface", "ui"), {
    "hidden_tabs": OptionInfo([], "Hidden UI tabs", component="CheckboxGroup"),
    "ui_tab_order": OptionInfo([], "UI tab order", component="Dropdown"),
}))

opts = options.Options(options_templates, restricted_opts=set())

from modules import devices, shared_state  # noqa: E402  (shared_state reads shared.opts)

state = shared_state.State()
device = devices.device

from modules import shared_items  # noqa: E402  (turns sd_model into a loading property)

refresh_checkpoints = shared_items.refresh_checkpoints
list_checkpoint_tiles = shared_items.list_checkpoint_tiles

from modules import modelloader  # noqa: E402  (start-up: the webui loads the upscalers in initialize)

modelloader.load_upscalers()
