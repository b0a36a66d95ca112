"""Fake of the part of modules/ui_settings.py that turns options into Settings widgets.

``create_ui()`` fires the ``on_ui_settings`` callbacks, reorders, and picks each option's widget the
way the real page does; without gradio it returns the widget *kind* per key. An option whose default
is not str/int/bool and that names no component breaks the real Settings page: raise like it does.
"""

from modules import script_callbacks, shared


def setting_component_kind(key):
    info = shared.opts.data_labels[key]
    if isinstance(info.component, str):
        return info.component
    if info.component is not None:
        return getattr(info.component, "__name__", "custom")
    kinds = {str: "Textbox", int: "Number", bool: "Checkbox"}
    kind = kinds.get(type(info.default))
    if kind is None:
        raise Exception(f"bad options item type: {type(info.default)} for key {key}")
    return kind


class UiSettings:
    def create_ui(self):
        script_callbacks.ui_settings_callback()
        shared.opts.reorder()
        return {key: setting_component_kind(key) for key in shared.opts.data_labels}
