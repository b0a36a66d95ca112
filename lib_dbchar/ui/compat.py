"""Every difference between gradio 3.41 (the webui's pin) and gradio 4.x (Forge, new standalone installs).

Every module of ``lib_dbchar.ui`` imports gradio as ``from lib_dbchar.ui.compat import gr`` and goes
through the helpers below wherever the two majors differ; nothing else in ``ui/`` looks at the
gradio version. The differences handled here:

* gradio 4.x does ``from huggingface_hub import HfFolder``, which huggingface_hub 1.0 removed
  (:func:`_add_missing_hffolder`);
* gradio 4.x's client library cannot describe a component whose JSON schema holds a boolean
  sub-schema (pydantic >= 2.11 writes ``additionalProperties: true`` for File/Image/Gallery
  data), which fails every page load (:func:`_accept_boolean_json_schemas`);
* gradio 4.x serves its page with Starlette's pre-1.0 ``TemplateResponse(name, context)`` call,
  which Starlette 1.0 removed (:func:`accept_old_template_calls`);
* front-end JS on an event: ``_js=`` in 3, ``js=`` in 4 (:func:`listen`);
* ``gr.Box`` exists only in 3 (:func:`panel`);
* queue workers: ``concurrency_count`` in 3, ``default_concurrency_limit`` in 4 (:func:`enable_queue`).
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable
from typing import Any


def _add_missing_hffolder() -> None:
    """Give huggingface_hub back the ``HfFolder`` name gradio 4.x imports, when it lacks it.

    Every gradio 4.x release does ``from huggingface_hub import HfFolder`` (for its OAuth helper,
    which only calls ``HfFolder.get_token()``). huggingface_hub 1.0 removed that class, and
    transformers 5 needs huggingface_hub >= 1.3, so a standalone install with current releases
    cannot import gradio 4 at all. The webui (hub 0.2x/0.3x) and Forge still have the class and
    are left alone. The stand-in only forwards ``get_token`` to the function that replaced it.
    """
    try:
        import huggingface_hub
    except ImportError:
        return  # gradio itself will report the missing package
    if hasattr(huggingface_hub, "HfFolder"):
        return

    class HfFolder:
        """Stand-in for the class huggingface_hub 1.0 removed (added by dbchar for gradio 4)."""

        @staticmethod
        def get_token() -> str | None:
            return huggingface_hub.get_token()

    huggingface_hub.HfFolder = HfFolder


# Gradio reads this when a Blocks is created and when it launches; set before the import so that no
# version check or telemetry call is ever attempted (the standalone UI must start with no network).
# setdefault: the webui sets its own value first and we keep it.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
_add_missing_hffolder()

import gradio as gr  # noqa: E402 - must come after the two fixes above


def _accept_boolean_json_schemas() -> None:
    """Let gradio 4.x's ``gradio_client`` describe schemas that contain ``true`` / ``false``.

    JSON Schema allows a boolean as a sub-schema ("anything" / "nothing"), and pydantic >= 2.11
    writes ``"additionalProperties": true`` for the ``meta`` dict of gradio's ``FileData``. The
    client library shipped with gradio 4.x indexes every sub-schema as a dict, so describing any
    page with a File, Image or Gallery raises "argument of type 'bool' is not iterable" -- and
    gradio 4 describes the page on every load. The converter is wrapped to read a boolean
    sub-schema as ``Any``; a client that already copes is left alone.
    """
    try:
        from gradio_client import utils as client_utils
    except ImportError:
        return
    convert = getattr(client_utils, "_json_schema_to_python_type", None)
    if convert is None or getattr(convert, "dbchar_accepts_booleans", False):
        return
    try:
        convert(True, {})
    except (TypeError, AttributeError, KeyError):  # how a dict-only converter fails on a bool
        pass
    else:
        return  # this client handles boolean schemas itself

    @functools.wraps(convert)
    def accepting_booleans(schema: Any, defs: Any) -> str:
        return "Any" if isinstance(schema, bool) else convert(schema, defs)

    accepting_booleans.dbchar_accepts_booleans = True  # type: ignore[attr-defined]
    # The converter recurses through this module attribute, so nested schemas are covered too.
    client_utils._json_schema_to_python_type = accepting_booleans


_accept_boolean_json_schemas()

#: The major version of the gradio that was imported (3 in the webui 1.10, 4 in Forge).
GRADIO_MAJOR = int(gr.__version__.split(".")[0])

__all__ = [
    "GRADIO_MAJOR",
    "enable_queue",
    "gr",
    "launch_blocking",
    "listen",
    "listen_background",
    "no_change",
    "offline_theme",
    "panel",
    "run_js_on_load",
    "update",
]


def update(**props: Any) -> dict[str, Any]:
    """A property update for an output component (``gr.update`` exists in both majors)."""
    return gr.update(**props)


def no_change() -> dict[str, Any]:
    """An output value that leaves the component as it is."""
    return gr.update()


def listen(
    event: Callable[..., Any],
    fn: Callable[..., Any] | None,
    inputs: Any = None,
    outputs: Any = None,
    *,
    js: str | None = None,
    show_progress: bool = True,
    queue: bool | None = None,
) -> Any:
    """Attach ``fn`` to an event such as ``button.click``.

    Args:
        event: the bound event method, e.g. ``button.click``.
        fn: the Python handler, or None for a JS-only event.
        inputs: a list of components, or a set (the handler then gets one ``{component: value}`` dict).
        outputs: a list of components.
        js: a JS function expression run in the page before ``fn``; it receives the input values
            and returns the values sent to ``fn``.
        show_progress: whether gradio shows its own spinner/progress on the outputs.
        queue: False sends the event past the queue (e.g. a Stop button that must not wait
            behind the job it stops); None keeps the app's setting.

    Returns:
        Whatever the event method returns (a dependency object).
    """
    kwargs: dict[str, Any] = {"show_progress": "full" if show_progress else "hidden"}
    if js is not None:
        kwargs["_js" if GRADIO_MAJOR < 4 else "js"] = js
    if queue is not None:
        kwargs["queue"] = queue
    return event(fn=fn, inputs=inputs, outputs=outputs, **kwargs)


def panel(**kwargs: Any) -> Any:
    """A bordered container: ``gr.Box`` in gradio 3, ``gr.Group`` in 4 (which has no Box)."""
    factory = getattr(gr, "Box", None) if GRADIO_MAJOR < 4 else None
    return (factory or gr.Group)(**kwargs)


def enable_queue(blocks: gr.Blocks, workers: int) -> gr.Blocks:
    """Enable the queue (needed for ``gr.Progress``) with ``workers`` events running at once."""
    if GRADIO_MAJOR < 4:
        return blocks.queue(concurrency_count=workers)
    return blocks.queue(default_concurrency_limit=workers)


def offline_theme() -> Any:
    """The default theme with system fonts: the stock one asks Google Fonts, which offline never answers."""
    return gr.themes.Default(
        font=["ui-sans-serif", "system-ui", "sans-serif"],
        font_mono=["ui-monospace", "Consolas", "monospace"],
    )


def run_js_on_load(blocks: gr.Blocks, js: str) -> None:
    """Run the JS function expression ``js`` once when the page has loaded (top-level Blocks only)."""
    listen(blocks.load, None, None, None, js=js, show_progress=False)


def accept_old_template_calls() -> None:
    """Let gradio 4.x render its page under Starlette >= 1.0.

    gradio 4.x calls ``templates.TemplateResponse(name, {"request": request, ...})``; Starlette
    1.0 accepts only ``TemplateResponse(request, name, context)`` and fails every page load with
    "unhashable type: 'dict'". When the installed Starlette wants the request first, wrap gradio's
    one ``templates`` object so the old call order is translated. Older Starlette (the webui's
    0.26, Forge's) is left untouched.
    """
    import gradio.routes

    templates = getattr(gradio.routes, "templates", None)
    if templates is None:
        return
    params = list(inspect.signature(type(templates).TemplateResponse).parameters)
    if len(params) < 2 or params[1] != "request":
        return
    original = type(templates).TemplateResponse

    @functools.wraps(original)
    def template_response(*args: Any, **kwargs: Any) -> Any:
        if args and isinstance(args[0], str) and len(args) >= 2 and isinstance(args[1], dict):
            name, context, *rest = args
            return original(templates, context["request"], name, context, *rest, **kwargs)
        return original(templates, *args, **kwargs)

    templates.TemplateResponse = template_response


def launch_blocking(blocks: gr.Blocks, *, listen_on: str, port: int, open_browser: bool) -> None:
    """Serve a top-level Blocks on ``listen_on:port`` until Ctrl+C; never a share link."""
    accept_old_template_calls()
    blocks.launch(
        server_name=listen_on,
        server_port=port,
        inbrowser=open_browser,
        share=False,
        prevent_thread_lock=False,
        show_error=True,
    )


def listen_background(event: Callable[..., Any], fn: Callable[..., Any], inputs: Any, outputs: Any) -> Any:
    """Attach a long-lived generator ``fn`` (a live view) that must not queue behind other pages.

    gradio 4 runs one call of each event at a time by default, so a second page's live view would
    wait for the first to finish; ``concurrency_limit=None`` lifts that. gradio 3 has no
    per-event limit (its queue's workers are shared), so nothing is needed there. No spinner: the
    outputs refresh quietly.
    """
    kwargs: dict[str, Any] = {"show_progress": "hidden"}
    if GRADIO_MAJOR >= 4:
        kwargs["concurrency_limit"] = None
    return event(fn=fn, inputs=inputs, outputs=outputs, **kwargs)
