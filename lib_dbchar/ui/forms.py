"""Forms built from a settings dataclass, handed back to the core as one dict keyed by field name.

The dataclass (see :mod:`lib_dbchar.config`) is the schema: label, help, range and choices come
from its :func:`~lib_dbchar.config.specs`, so the UI never repeats them. A :class:`Form` renders
one widget per field and turns the widgets' values back into ``{field: value}``;
:meth:`Form.parse` validates that dict with :func:`~lib_dbchar.config.from_dict`, whose errors name
the field. Handlers never see positional argument lists.
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Generic, TypeVar

from lib_dbchar.config import FieldInfo, from_dict, specs, to_dict
from lib_dbchar.ui.compat import gr
from lib_dbchar.ui.ids import elem_id

T = TypeVar("T")

_SEQUENCES = (list, tuple)


def _base_type(tp: Any) -> Any:
    """``int | None`` -> ``int``; anything else unchanged."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if type(None) in typing.get_args(tp) and len(args) == 1:
        return args[0]
    return tp


def _is_sequence(tp: Any) -> bool:
    return typing.get_origin(_base_type(tp)) in _SEQUENCES


def _is_optional(tp: Any) -> bool:
    return type(None) in typing.get_args(tp)


def _checkbox(info: FieldInfo, value: Any, common: dict[str, Any]) -> Any:
    return gr.Checkbox(value=bool(value), **common)


def _number(info: FieldInfo, value: Any, common: dict[str, Any]) -> Any:
    spec, is_int = info.spec, _base_type(info.type) is int
    if spec.minimum is not None and spec.maximum is not None:
        step = spec.step or (1 if is_int else (spec.maximum - spec.minimum) / 100)
        return gr.Slider(minimum=spec.minimum, maximum=spec.maximum, step=step, value=value, **common)
    bounds = {k: v for k, v in (("minimum", spec.minimum), ("maximum", spec.maximum)) if v is not None}
    return gr.Number(value=value, precision=0 if is_int else None, **bounds, **common)


def _dropdown(info: FieldInfo, value: Any, common: dict[str, Any]) -> Any:
    return gr.Dropdown(choices=list(info.spec.choices or ()), value=value, **common)


def _textbox(info: FieldInfo, value: Any, common: dict[str, Any]) -> Any:
    multiline = info.spec.multiline or _is_sequence(info.type)
    return gr.Textbox(value=_display(info, value), lines=3 if multiline else 1, **common)


def _display(info: FieldInfo, value: Any) -> Any:
    """A field value as its widget shows it (sequences: one item per line; None: empty text)."""
    if _is_sequence(info.type):
        return "\n".join(str(v) for v in (value or ()))
    return str(value) if isinstance(value, Path) else value


def _field_value(info: FieldInfo | None, value: Any) -> Any:
    """A widget value as the field's value (the inverse of :func:`_display`); unknown fields pass as is."""
    if info is not None and _is_sequence(info.type) and isinstance(value, str):
        return [line.strip() for line in value.splitlines() if line.strip()]
    if info is not None and _is_optional(info.type) and value == "":
        return None
    return value


def _factory(info: FieldInfo) -> Callable[[FieldInfo, Any, dict[str, Any]], Any]:
    """Which widget a field gets: choices -> Dropdown, bool -> Checkbox, int/float -> Slider or
    Number (Slider when both ends of the range are known), anything else -> Textbox."""
    base = _base_type(info.type)
    if info.spec.choices:
        return _dropdown
    if base is bool:
        return _checkbox
    if base in (int, float):
        return _number
    return _textbox


class Form(Generic[T]):
    """One widget per field of the settings dataclass ``cls``.

    Args:
        name: the form's short name, used in element ids: ``dbchar-<name>-<field>``.
        cls: a dataclass declared with :func:`lib_dbchar.config.setting` fields.
        interactive: False shows the values read-only.
        initial: the values shown at first; None shows the dataclass's defaults.
    """

    def __init__(
        self, name: str, cls: type[T], *, interactive: bool = True, initial: T | None = None
    ) -> None:
        self.name = name
        self.cls = cls
        self.interactive = interactive
        self.initial = initial
        self.fields: dict[str, FieldInfo] = {info.name: info for info in specs(cls)}
        #: field name -> its widget, filled by :meth:`render`, in the dataclass's field order.
        self.components: dict[str, Any] = {}

    def elem_id(self, field: str) -> str:
        """The DOM id of a field's widget."""
        return elem_id(self.name, field)

    def render(self) -> Form[T]:
        """Create the widgets inside the current gradio layout block."""
        initial = to_dict(self.initial) if self.initial is not None else {}
        for name, info in self.fields.items():
            common = {
                "label": info.spec.label,
                "info": info.spec.help or None,
                "elem_id": self.elem_id(name),
                "interactive": self.interactive,
            }
            self.components[name] = _factory(info)(info, initial.get(name, info.default), common)
        return self

    def collect(self, widget_values: Mapping[str, Any]) -> dict[str, Any]:
        """Turn widget values (``{field: value}``) into field values for :func:`from_dict`.

        A textbox holding a list becomes a list of its non-empty lines; an emptied box of an
        optional field becomes None. Everything else passes as is: validation is :meth:`parse`'s.
        """
        return {name: _field_value(self.fields.get(name), value) for name, value in widget_values.items()}

    def parse(self, widget_values: Mapping[str, Any]) -> T:
        """Validate widget values into an instance of the dataclass.

        Raises:
            ValueError: naming the field (``Cls.field (Label): ...``) for a wrong or out-of-range value.
        """
        return from_dict(self.cls, self.collect(widget_values))

    def by_component(self, values: Mapping[Any, Any]) -> dict[str, Any]:
        """Pick this form's widget values out of a ``{component: value}`` dict, keyed by field name."""
        return {name: values[comp] for name, comp in self.components.items() if comp in values}

    def show(self, obj: T) -> list[Any]:
        """Widget values that display ``obj``, in :attr:`components` order (for a handler's outputs)."""
        data = to_dict(obj)
        return [_display(self.fields[name], data[name]) for name in self.components]
