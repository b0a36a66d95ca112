"""Fake of modules/script_callbacks.py: how extensions hook into the webui.

As in the real one, each ``*_callback()`` runs the registered callbacks in order and **reports and
swallows** any exception (the tab or option just goes missing), ``clear_callbacks()`` empties
everything before scripts are (re)loaded, and a callback is named after the file that registered it.
"""

import dataclasses
import inspect
import os

from modules import errors


@dataclasses.dataclass
class ScriptCallback:
    script: str
    callback: object
    name: str = "unnamed"


callback_map = dict(
    callbacks_app_started=[],
    callbacks_model_loaded=[],
    callbacks_ui_tabs=[],
    callbacks_ui_train_tabs=[],
    callbacks_ui_settings=[],
    callbacks_script_unloaded=[],
    callbacks_before_ui=[],
    callbacks_on_reload=[],
)


def report_exception(c, job):
    errors.report(f"Error executing callback {job} for {c.script}", exc_info=True)


def add_callback(callbacks, fun, *, name=None, category="unknown", filename=None):
    if filename is None:
        stack = [x for x in inspect.stack() if x.filename != __file__]
        filename = stack[0].filename if stack else "unknown file"
    # The real webui names the extension owning the file; the fake uses the file's folder.
    base = f"{os.path.basename(os.path.dirname(filename))}/{os.path.basename(filename)}/{category}"
    if name is not None:
        base += f"/{name}"
    unique = base
    for index in range(1000):
        if not any(x.name == unique for x in callbacks):
            break
        unique = f"{base}-{index + 1}"
    callbacks.append(ScriptCallback(filename, fun, unique))


def ordered_callbacks(category):
    return list(callback_map["callbacks_" + category])


def clear_callbacks():
    for callback_list in callback_map.values():
        callback_list.clear()


def remove_current_script_callbacks():
    stack = [x for x in inspect.stack() if x.filename != __file__]
    filename = stack[0].filename if stack else "unknown file"
    for callback_list in callback_map.values():
        for c in [c for c in callback_list if c.script == filename]:
            callback_list.remove(c)


def remove_callbacks_for_function(callback_func):
    for callback_list in callback_map.values():
        for c in [c for c in callback_list if c.callback == callback_func]:
            callback_list.remove(c)


def app_started_callback(demo, app):
    for c in ordered_callbacks("app_started"):
        try:
            c.callback(demo, app)
        except Exception:
            report_exception(c, "app_started_callback")


def app_reload_callback():
    for c in ordered_callbacks("on_reload"):
        try:
            c.callback()
        except Exception:
            report_exception(c, "callbacks_on_reload")


def model_loaded_callback(sd_model):
    for c in ordered_callbacks("model_loaded"):
        try:
            c.callback(sd_model)
        except Exception:
            report_exception(c, "model_loaded_callback")


def ui_tabs_callback():
    """Collect ``(blocks, title, elem_id)`` tuples; the webui shows each as TabItem(title, elem_id='tab_'+elem_id)."""
    res = []
    for c in ordered_callbacks("ui_tabs"):
        try:
            res += c.callback() or []
        except Exception:
            report_exception(c, "ui_tabs_callback")
    return res


def ui_train_tabs_callback(params):
    for c in ordered_callbacks("ui_train_tabs"):
        try:
            c.callback(params)
        except Exception:
            report_exception(c, "callbacks_ui_train_tabs")


def ui_settings_callback():
    for c in ordered_callbacks("ui_settings"):
        try:
            c.callback()
        except Exception:
            report_exception(c, "ui_settings_callback")


def script_unloaded_callback():
    for c in reversed(ordered_callbacks("script_unloaded")):
        try:
            c.callback()
        except Exception:
            report_exception(c, "script_unloaded")


def before_ui_callback():
    for c in reversed(ordered_callbacks("before_ui")):
        try:
            c.callback()
        except Exception:
            report_exception(c, "before_ui")


def on_app_started(callback, *, name=None):
    """``callback(demo, app)`` once the FastAPI app is up: add routes here (middleware is too late)."""
    add_callback(callback_map["callbacks_app_started"], callback, name=name, category="app_started")


def on_before_reload(callback, *, name=None):
    add_callback(callback_map["callbacks_on_reload"], callback, name=name, category="on_reload")


def on_model_loaded(callback, *, name=None):
    """``callback(sd_model)`` after a checkpoint is loaded (also from a start-up thread)."""
    add_callback(callback_map["callbacks_model_loaded"], callback, name=name, category="model_loaded")


def on_ui_tabs(callback, *, name=None):
    """``callback()`` returns a list of ``(gr.Blocks, title, elem_id)``."""
    add_callback(callback_map["callbacks_ui_tabs"], callback, name=name, category="ui_tabs")


def on_ui_train_tabs(callback, *, name=None):
    add_callback(callback_map["callbacks_ui_train_tabs"], callback, name=name, category="ui_train_tabs")


def on_ui_settings(callback, *, name=None):
    """``callback()`` adds options with ``shared.opts.add_option``; runs at every UI build."""
    add_callback(callback_map["callbacks_ui_settings"], callback, name=name, category="ui_settings")


def on_script_unloaded(callback, *, name=None):
    add_callback(callback_map["callbacks_script_unloaded"], callback, name=name, category="script_unloaded")


def on_before_ui(callback, *, name=None):
    add_callback(callback_map["callbacks_before_ui"], callback, name=name, category="before_ui")
