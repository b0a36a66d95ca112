"""The tagging panel of the Tags tab: the WD14 settings form, Tag / Stop, and what the run did.

The form is :class:`~lib_dbchar.tagger.runner.TaggerConfig` itself (built by
:class:`~lib_dbchar.ui.forms.Form`), so labels, ranges and validation live in the core. The Tag
button runs :func:`~lib_dbchar.tagger.runner.run_tagging` on the project's ``dataset/`` folder as a
job of the host (progress per picture, Stop between batches), with the host's device and the
``tagger_cache_dir`` setting read at click time. The loaded model is dropped after the run unless
the user asks to keep it (faster re-runs), because its memory (VRAM with CUDA) is what training and
generation need next; "Free the model's memory" drops a kept one, and so does every job that
needs the memory (the panel puts its release on ``UiContext.release_hooks``, which the Train tab
calls before training and before generating class images).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lib_dbchar.errors import DbcharError
from lib_dbchar.jobs import JobContext
from lib_dbchar.pick.probes import TAGGER_JSON
from lib_dbchar.tagger.runner import TaggerConfig, list_images, load_tagger, run_tagging
from lib_dbchar.tagger.session import TaggerHolder
from lib_dbchar.ui import compat
from lib_dbchar.ui.compat import gr
from lib_dbchar.ui.context import UiContext
from lib_dbchar.ui.forms import Form
from lib_dbchar.ui.ids import elem_id
from lib_dbchar.ui.jobs import JobBinding, Outcome, bind_job, bind_stop, status_box
from lib_dbchar.ui.messages import message_html
from lib_dbchar.ui.tags_editor import TagEditor, open_named_project
from lib_dbchar.ui.tags_view import model_info, provider_text, tagging_message

TITLE = "tagging"
FORM_NAME = "tags-config"


def cache_dir_setting(host: Any) -> str | None:
    """The ``tagger_cache_dir`` setting as saved now (None: the Hugging Face cache)."""
    return host.settings().tagger_cache_dir.strip() or None


def check_pictures(folder: Path, recursive: bool) -> None:
    """Fail before loading a model when there is nothing to tag.

    Raises:
        DbcharError: the folder is missing or holds no picture; the message says where to add them.
    """
    try:
        list_images(folder, recursive=recursive)
    except DbcharError as exc:
        raise DbcharError(f"{exc}; add pictures in the Dataset tab first") from None


class TaggingPanel:
    """Render the panel, then bind its buttons (after the editor exists: a run refreshes it).

    Attributes:
        holder: keeps the loaded model between runs when "Keep the model loaded" is ticked.
        form: the :class:`TaggerConfig` form.
        binding / release_binding: the job bindings of Tag and of "Free the model's memory".
    """

    def __init__(self, ctx: UiContext, initial: TaggerConfig | None = None) -> None:
        self.ctx = ctx
        self.holder = TaggerHolder()
        # A kept model must not sit in (V)RAM while a training or class-image job needs it.
        ctx.release_hooks.append(self.holder.release)
        self.form: Form[TaggerConfig] = Form(FORM_NAME, TaggerConfig, initial=initial)
        self.binding: JobBinding | None = None
        self.release_binding: JobBinding | None = None

    def render(self) -> TaggingPanel:
        """Create the panel's widgets inside the current layout block."""
        initial = self.form.initial or TaggerConfig()
        with gr.Accordion("Tagger settings", open=True, elem_id=elem_id("tags", "settings")):
            self.model_info = gr.HTML(
                value=self.describe_model(initial.model, initial.model_dir),
                elem_id=elem_id("tags", "model-info"),
            )
            with gr.Row(elem_id=elem_id("tags", "config")):
                self.form.render()
        with gr.Row(elem_id=elem_id("tags", "run-row")):
            self.run_button = gr.Button("Tag all pictures", variant="primary", elem_id=elem_id("tags", "run"))
            self.stop_button = gr.Button("Stop", elem_id=elem_id("tags", "stop"))
            self.keep = gr.Checkbox(
                value=False,
                label="Keep the model loaded",
                info="Faster re-runs; holds its memory until freed.",
                elem_id=elem_id("tags", "keep"),
            )
            self.release_button = gr.Button("Free the model's memory", elem_id=elem_id("tags", "release"))
        self.status = status_box("tags")
        self.provider = gr.Textbox(
            value="",
            label="Ran on",
            lines=1,
            max_lines=4,
            interactive=False,
            elem_id=elem_id("tags", "provider"),
        )
        self.summary = gr.Textbox(
            value="",
            label="Result",
            lines=3,
            max_lines=20,
            interactive=False,
            elem_id=elem_id("tags", "summary"),
        )
        return self

    def register(self, editor: TagEditor) -> None:
        """Bind Tag (a job that ends by refreshing ``editor``), Stop, Free, and the model line."""
        self.editor = editor
        self.binding = bind_job(
            self.ctx,
            self.run_button,
            title=TITLE,
            handler=self.run,
            status=self.status,
            inputs={**editor.view_input_map(), "config": self.form, "keep": self.keep},
            outputs=[self.provider, self.summary, *editor.view_outputs()],
        )
        bind_stop(self.ctx, self.stop_button)
        # A job too: it waits for a running tagging job instead of closing its session under it.
        self.release_binding = bind_job(
            self.ctx,
            self.release_button,
            title="freeing the tagger",
            handler=self.release,
            status=self.status,
        )
        model, model_dir = self.form.components["model"], self.form.components["model_dir"]
        for widget in (model, model_dir):
            compat.listen(
                widget.change, self.describe_model, [model, model_dir], [self.model_info], show_progress=False
            )

    # -- handlers -------------------------------------------------------------------------------
    def describe_model(self, model: str, model_dir: str) -> str:
        """The HTML line about the chosen model (what it is; on this machine or to download)."""
        return message_html(model_info(model, model_dir or "", cache_dir_setting(self.ctx.host)), "info")

    def run(self, values: dict[str, Any], job: JobContext) -> Outcome:
        """The Tag job: tag the project's dataset, then show the result and the refreshed editor.

        Raises:
            DbcharError: no project, no pictures, the model missing offline (the core's message).
            JobStopped: Stop was pressed; captions written so far stay (Undo takes them back).
        """
        config: TaggerConfig = values["config"]
        project = open_named_project(self.ctx.host, values["project"])
        folder = project.dataset_dir
        check_pictures(folder, config.recursive)
        cache = cache_dir_setting(self.ctx.host)
        device = self.ctx.host.device()
        job.report(0, 0, f"Loading the tagger model {config.model_dir.strip() or config.model}")
        try:
            tagger = load_tagger(config, device=device, cache_dir=cache, holder=self.holder)
            # Every picture's scores go to <project>/tags.json too: "Pick a checkpoint" reads the
            # character's traits there after "drop traits" has taken them out of the captions.
            result = run_tagging(
                config,
                folder,
                job,
                device=device,
                cache_dir=cache,
                tagger=tagger,
                json_out=project.root / TAGGER_JSON,
            )
        finally:
            if not values["keep"]:
                self.holder.release()
        view = self.editor.view_values(*(values[name] for name in self.editor.view_input_map()))
        return Outcome((provider_text(result), result.summary(), *view), tagging_message(result))

    def release(self, values: dict[str, Any], job: JobContext) -> Outcome:
        """Drop the kept model (its memory goes back to training and generation)."""
        held = self.holder.tagger
        self.holder.release()
        if held is None:
            return Outcome((), "No tagger model is loaded.")
        return Outcome((), f"Freed the tagger model {held.files.name}.")
