"""The webui host: dbchar inside AUTOMATIC1111's stable-diffusion-webui (1.10.x) or Forge.

This is the only module of dbchar that imports the webui's ``modules``. Every such import sits
inside the function that needs it, for three reasons: the file must import anywhere (docs, linters,
the import-boundary tests); ``scripts/dbchar.py`` imports it while the webui is still starting; and
it must never hold on to a ``modules`` object, always reading the live ``shared.opts`` /
``shared.state``.

Traps this module steps around (see /work/shared/REFERENCE.md, section 1):

* reading ``shared.sd_model`` LOADS a checkpoint when none is loaded; we read
  ``sd_models.model_data.sd_model`` and pass the model explicitly to every helper
  (``unload_model_weights()`` without an argument reads ``shared.sd_model`` too);
* the webui's ``wrap_gradio_gpu_call`` turns exceptions into an error-HTML output and appends
  timing HTML to the handler's last output, which must therefore be a str; :meth:`WebuiHost.wrap_gpu_call`
  checks that shape so a wrong one fails with a message naming the handler;
* an extension's options exist only after its ``on_ui_settings`` callback ran, so settings are
  read with ``opts.data.get(key, default)``;
* on Forge ``send_model_to_cpu`` / ``send_model_to_device`` are empty stubs and models live in
  Forge's own memory manager.
"""

from __future__ import annotations

import contextlib
import functools
import html
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from lib_dbchar.config import from_dict, specs
from lib_dbchar.errors import DbcharError
from lib_dbchar.host.base import (
    LANCZOS,
    LORA_FOLDER,
    CheckpointRef,
    Host,
    lanczos_resize,
    natural_sort_key,
)
from lib_dbchar.jobs import JobContext, Progress, ProgressFn
from lib_dbchar.settings import WEBUI_OPTION_KEYS, Settings
from lib_dbchar.version import __version__

#: The tab: its title and its id (the webui shows it as ``TabItem(title, elem_id="tab_" + id)``).
TAB_TITLE = "dbchar"
TAB_ID = "dbchar"
#: Settings > dbchar, listed under the webui's "Training" category.
SETTINGS_SECTION = ("dbchar", "dbchar")
SETTINGS_CATEGORY = "training"
VERSION_ROUTE = "/dbchar/v1/version"
#: The webui's "no upscaling" entry in ``shared.sd_upscalers``.
WEBUI_NO_UPSCALER = "None"


class WebuiHost(Host):
    """The webui's checkpoints, device, GPU lock, progress bar and settings, behind :class:`Host`."""

    name = "webui"

    # -- checkpoints -------------------------------------------------------------------------
    def list_checkpoints(self) -> list[CheckpointRef]:
        """The webui's checkpoint dropdown: ``sd_models.checkpoints_list`` (title -> file), by title."""
        from modules import sd_models

        listed = sd_models.checkpoints_list.items()
        refs = [CheckpointRef(title, Path(info.filename)) for title, info in listed]
        return sorted(refs, key=lambda ref: ref.title.lower())

    def checkpoint_dir(self) -> Path:
        """``--ckpt-dir`` when given, else ``models/Stable-diffusion``: both are scanned by the webui."""
        from modules import sd_models, shared

        return Path(shared.cmd_opts.ckpt_dir or sd_models.model_path)

    def refresh_checkpoints(self) -> None:
        """Rescan the checkpoint folders (what the webui's refresh button next to the dropdown does)."""
        from modules import shared

        shared.refresh_checkpoints()

    def lora_dir(self) -> Path:
        """``--lora-dir`` (the built-in Lora extension adds that flag, default ``models/Lora``).

        Without that extension (disabled, or a fork without it) the flag does not exist; the
        default folder is used then.
        """
        from modules import paths, shared

        return Path(getattr(shared.cmd_opts, "lora_dir", None) or Path(paths.models_path) / LORA_FOLDER)

    def vae_files(self) -> list[Path]:
        """The files of the webui's "SD VAE" dropdown: ``sd_vae.vae_dict`` after a rescan.

        The rescan (``sd_vae.refresh_vae_list()``, what the refresh button beside that dropdown
        does) covers ``models/VAE``, ``--vae-dir`` and the ``*.vae.*`` files among the checkpoints
        (``models/Stable-diffusion`` and ``--ckpt-dir``). A host without that module lists none.
        """
        try:
            from modules import sd_vae
        except ImportError:  # a fork that moved the VAE list; "Bake in VAE" keeps its path box
            return []
        sd_vae.refresh_vae_list()
        # By name: the webui's dict keeps the scan order (its sort does not reorder existing keys).
        return [Path(sd_vae.vae_dict[name]) for name in sorted(sd_vae.vae_dict, key=natural_sort_key)]

    def known_hashes(self) -> dict[str, str]:
        """SHA-256 of the listed checkpoints the webui has in its hash cache, still valid, by path.

        Read with ``hashes.sha256_from_cache`` under the title the webui hashes checkpoints with
        (``checkpoint/<name>``), which also rejects an entry older than the file. Nothing is hashed
        here; the merge hashes the rest the way the webui does.
        """
        from modules import hashes, sd_models

        known = {}
        for info in list(sd_models.checkpoints_list.values()):
            sha256 = hashes.sha256_from_cache(info.filename, f"checkpoint/{info.name}")
            if sha256:
                known[str(Path(info.filename))] = sha256
        return known

    # -- compute -----------------------------------------------------------------------------
    def device(self) -> str:
        """The webui's torch device as a string ("cuda", "cuda:1", "cpu", ...).

        Raises:
            DbcharError: the webui has not chosen its device yet (called before start-up finished).
        """
        from modules import devices

        device = getattr(devices, "device", None)
        if device is None:
            msg = "The webui has not chosen its device yet; wait until it has finished starting."
            raise DbcharError(msg)
        return str(device)

    def dtype(self) -> str:
        """The webui's inference dtype without the ``torch.`` prefix: "float16" unless --no-half."""
        from modules import devices

        return str(devices.dtype).removeprefix("torch.")

    @contextlib.contextmanager
    def vram_freed(self) -> Iterator[None]:
        """Move the webui's loaded model to RAM for the duration; put it back after, also on error.

        Never loads a model: when none is loaded there is nothing to move. The model goes back
        only if it is still the current one (if something loaded another meanwhile, that one is
        already on the GPU). On Forge, whose ``send_model_to_*`` are stubs, Forge's memory manager
        drops its models instead; Forge reloads them by itself on the next generation.
        """
        from modules import sd_models

        model = sd_models.model_data.sd_model  # not shared.sd_model: that would load one
        _offload(model)
        try:
            yield
        finally:
            _restore(model)

    # -- upscalers ---------------------------------------------------------------------------
    def upscalers(self) -> list[str]:
        """The webui's upscalers (``shared.sd_upscalers``, as in Extras), Lanczos first.

        The webui's "None" entry is left out: it enlarges nothing itself and falls back to Lanczos.
        Lanczos comes first whatever the webui's order, as the default that needs no model.
        """
        from modules import shared

        names = [u.name for u in shared.sd_upscalers if u.name and u.name != WEBUI_NO_UPSCALER]
        return [LANCZOS, *dict.fromkeys(n for n in names if n != LANCZOS)]

    def upscale(self, image: Any, name: str, scale: float) -> Any:
        """Enlarge ``image`` with the webui upscaler ``name``: ``scaler.upscale(image, scale, data_path)``.

        That is what Extras does. The webui's upscaler rounds the size down to a multiple of 8 and
        may stop early when the user presses Interrupt, so the size is only about ``scale`` times
        the input's. Model upscalers run on the webui's device; call this holding the GPU lock
        (inside :meth:`wrap_gpu_call`) and from one thread at a time.

        Raises:
            DbcharError: the webui lists no upscaler called ``name``.
        """
        if name == LANCZOS:
            return lanczos_resize(image, scale)
        from modules import shared

        found = next((u for u in shared.sd_upscalers if u.name == name), None)
        if found is None or name == WEBUI_NO_UPSCALER:
            raise DbcharError(
                f"The webui has no upscaler called {name!r}; pick one of {', '.join(self.upscalers())}."
            )
        return found.scaler.upscale(image, scale, found.data_path)

    # -- jobs --------------------------------------------------------------------------------
    def wrap_gpu_call(
        self, fn: Callable[..., Any], extra_outputs: list[Any] | None = None
    ) -> Callable[..., Any]:
        """Wrap a UI handler with the webui's ``call_queue.wrap_gradio_gpu_call``.

        What that gives: one GPU job at a time with txt2img, the merger and model switching
        (``queue_lock``); ``shared.state.begin()/end()``; a first argument ``"task(...)"`` is the task
        id the webui's progress bar polls; afterwards the Interrupt/Stop flags are reset.
        What it costs: the webui returns ``tuple(result)`` with its timing HTML appended to the
        LAST item, and turns any exception into ``extra_outputs + [error HTML]`` (printing the
        traceback to the console). So ``fn`` must return a list or tuple whose last item is a str
        (the status HTML); anything else becomes a TypeError naming ``fn``, shown the same way.

        Args:
            fn: the handler. Not a generator function: the lock would be released before its body runs.
            extra_outputs: the values for every output but the last when ``fn`` raises
                (the webui's default is ``[None, ""]``).

        Returns:
            The webui's wrapper around ``fn``.
        """
        from modules import call_queue

        return call_queue.wrap_gradio_gpu_call(_checked_outputs(fn), extra_outputs=extra_outputs)

    @contextlib.contextmanager
    def job(self, title: str, ui_progress: ProgressFn | None = None) -> Iterator[JobContext]:
        """Map the job's progress onto ``shared.state`` so the webui's own progress bar shows it.

        Each :class:`Progress` sets ``job_count`` = total, ``job_no`` = done, ``textinfo`` = text (the
        title when empty) and, with an image, the live preview. ``should_stop`` is True once the
        user pressed Interrupt (``state.interrupted``) or Stop (``state.stopping_generation``).
        Run it inside :meth:`wrap_gpu_call`, whose ``state.begin()`` clears those flags.

        Args:
            title: the first line the progress bar shows.
            ui_progress: ignored; the webui draws its own bar from ``shared.state``.
        """
        del ui_progress  # the webui's progress bar reads shared.state
        from modules import shared

        state = shared.state
        state.textinfo = title
        yield JobContext(
            progress=functools.partial(_show_progress, state, title),
            should_stop=functools.partial(_stop_requested, state),
        )

    def interrupt(self) -> None:
        """What the webui's Interrupt button does: ``shared.state.interrupt()``."""
        from modules import shared

        shared.state.interrupt()

    # -- settings ----------------------------------------------------------------------------
    def settings(self) -> Settings:
        """The dbchar options as saved in the webui's config.json (defaults for the missing ones).

        Raises:
            ValueError: a saved value is invalid; the message names the field.
        """
        from modules import shared

        saved = shared.opts.data
        values = {}
        for info in specs(Settings):
            value = saved.get(WEBUI_OPTION_KEYS[info.name], info.default)
            if value is not None:  # a null in config.json means "not set"
                values[info.name] = value
        return from_dict(Settings, values)

    def default_projects_dir(self) -> Path:
        """``<webui data dir>/dbchar`` (``--data-dir`` moves it along with the rest of the user data)."""
        from modules import paths_internal

        return Path(paths_internal.data_path) / "dbchar"


def _checked_outputs(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` with its result checked against what the webui's wrapper can handle."""

    @functools.wraps(fn)
    def checked(*args: Any, **kwargs: Any) -> Any:
        result = fn(*args, **kwargs)
        # The webui does list(result) and appends its timing HTML to the last item: a dict would
        # lose its values, a str would be split into characters, a non-str last item would crash.
        if not isinstance(result, list | tuple) or not result or not isinstance(result[-1], str):
            name = getattr(fn, "__qualname__", repr(fn))
            raise TypeError(
                f"{name} returned {type(result).__name__}; inside the webui a dbchar handler must return "
                "a list or tuple whose last item is the status HTML (a str)."
            )
        return result

    return checked


def _show_progress(state: Any, title: str, p: Progress) -> None:
    state.job_count = p.total
    state.job_no = p.done
    state.textinfo = p.text or title
    if p.image is not None:
        state.assign_current_image(p.image)


def _stop_requested(state: Any) -> bool:
    return bool(state.interrupted or state.stopping_generation)


def _offload(model: Any) -> None:
    """Move ``model`` (may be None) to RAM; on Forge let its memory manager free the GPU."""
    from modules import sd_models

    if model is not None:
        # Explicit model: unload_model_weights() without one would read shared.sd_model (and load).
        sd_models.send_model_to_cpu(model)  # A1111: to CPU + torch_gc; Forge: an empty stub
    _free_forge_memory()


def _restore(model: Any) -> None:
    from modules import sd_models

    if model is not None and sd_models.model_data.sd_model is model:
        # With --medvram/--lowvram this re-applies nothing (the hooks are in place) and moves
        # nothing: the hooks bring each part back to the GPU when it is next used.
        sd_models.send_model_to_device(model)


def _free_forge_memory() -> None:
    """On Forge, unload every model from its memory manager (A1111 has no such manager)."""
    if "modules_forge" not in sys.modules:
        return
    try:
        from backend import memory_management
    except ImportError:  # a Forge fork without the manager: its stubs freed nothing, nothing to do
        return
    memory_management.unload_all_models()
    memory_management.soft_empty_cache()


# -- registration --------------------------------------------------------------------------------
def ui_tabs(host: Host) -> list[tuple[Any, str, str]]:
    """The ``on_ui_tabs`` callback: build the dbchar tab for ``host``.

    Returns:
        ``[(blocks, "dbchar", "dbchar")]``, as the webui expects.
    """
    from lib_dbchar.ui.app import build_ui  # gradio is imported only when the UI is built

    return [(build_ui(host), TAB_TITLE, TAB_ID)]


def add_settings() -> None:
    """The ``on_ui_settings`` callback: one option per :class:`Settings` field in Settings > dbchar."""
    from modules import shared

    for info in specs(Settings):
        default = str(info.default) if isinstance(info.default, Path) else info.default
        option = shared.OptionInfo(
            default, info.spec.label, section=SETTINGS_SECTION, category_id=SETTINGS_CATEGORY
        )
        if info.spec.help:
            option = option.info(html.escape(info.spec.help, quote=False))
        shared.opts.add_option(WEBUI_OPTION_KEYS[info.name], option)


def version_info() -> dict[str, str]:
    """``GET /dbchar/v1/version``: the installed dbchar version."""
    return {"version": __version__}


def add_routes(demo: Any, app: Any) -> None:
    """The ``on_app_started`` callback: add dbchar's API routes to the webui's FastAPI app.

    Args:
        demo: the webui's gr.Blocks (unused).
        app: the FastAPI app; a route already present (the callback ran twice) is not added again.
    """
    del demo
    if any(getattr(route, "path", None) == VERSION_ROUTE for route in app.routes):
        return
    app.add_api_route(VERSION_ROUTE, version_info, methods=["GET"])


def register(host: WebuiHost | None = None) -> WebuiHost:
    """Register dbchar's callbacks with the webui. Called by ``scripts/dbchar.py`` on every (re)load.

    Args:
        host: the host the tab will use; a new :class:`WebuiHost` by default.

    Returns:
        The host the callbacks use.
    """
    from modules import script_callbacks

    host = host if host is not None else WebuiHost()
    script_callbacks.on_ui_settings(add_settings)
    script_callbacks.on_ui_tabs(functools.partial(ui_tabs, host))
    script_callbacks.on_app_started(add_routes)
    return host
