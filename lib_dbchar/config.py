"""Typed settings with their UI description beside them.

Every form in dbchar is a dataclass whose fields are declared with :func:`setting`: default, label,
help text and range live in one place. The UI builds its widgets from :func:`specs` and hands the
core one dict keyed by field name; :func:`from_dict` validates that dict into the dataclass, naming
the field in every error. Nothing here knows about gradio.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class FieldSpec:
    """How a field is shown and what values it accepts."""

    label: str
    help: str = ""
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    choices: tuple[str, ...] | None = None
    multiline: bool = False


def setting(
    default: Any,
    *,
    label: str,
    help: str = "",
    minimum: float | None = None,
    maximum: float | None = None,
    step: float | None = None,
    choices: Sequence[str] | None = None,
    multiline: bool = False,
) -> Any:
    """A dataclass field carrying its :class:`FieldSpec` (use as ``x: int = setting(3, label=...)``)."""
    spec = FieldSpec(label, help, minimum, maximum, step, tuple(choices) if choices else None, multiline)
    if isinstance(default, list | dict | set):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata={"dbchar": spec})
    return dataclasses.field(default=default, metadata={"dbchar": spec})


@dataclass(frozen=True)
class FieldInfo:
    name: str
    type: Any
    default: Any
    spec: FieldSpec


def specs(cls: type) -> list[FieldInfo]:
    """The fields of a settings dataclass with their resolved types and specs, in order."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        spec = f.metadata.get("dbchar") or FieldSpec(label=f.name.replace("_", " ").capitalize())
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        out.append(FieldInfo(f.name, hints[f.name], default, spec))
    return out


def _base_type(tp: Any) -> Any:
    """``int | None`` -> ``int``; other types unchanged."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else tp
    return tp


_TRUE_WORDS = frozenset({"true", "1", "yes", "on"})
_BOOL_WORDS = _TRUE_WORDS | {"false", "0", "no", "off"}


def _to_bool(value: Any) -> bool:
    # A form or a JSON file may hold "yes"/"off"; bool("off") would be True, so read the word.
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered not in _BOOL_WORDS:
            raise ValueError(value)
        return lowered in _TRUE_WORDS
    return bool(value)


def _to_int(value: Any) -> int:
    # UI sliders send floats; 3.0 is a fine int, 2.5 is a mistake worth reporting.
    if isinstance(value, float) and not value.is_integer():
        raise ValueError(value)
    return int(value)


_CONVERTERS: dict[Any, Any] = {bool: _to_bool, int: _to_int, float: float, str: str, Path: Path}


def _convert(tp: Any, value: Any) -> Any:
    """``value`` as type ``tp``; raises TypeError/ValueError when it cannot be."""
    if tp in _CONVERTERS:
        return _CONVERTERS[tp](value)
    if typing.get_origin(tp) in (list, tuple):
        return typing.get_origin(tp)(value)
    return value


def _check_range(where: str, spec: FieldSpec, value: Any) -> None:
    if spec.minimum is not None and value < spec.minimum:
        raise ValueError(f"{where}: {value!r} is below the minimum {spec.minimum}")
    if spec.maximum is not None and value > spec.maximum:
        raise ValueError(f"{where}: {value!r} is above the maximum {spec.maximum}")
    if spec.choices is not None and value not in spec.choices:
        raise ValueError(f"{where}: {value!r} is not one of {', '.join(spec.choices)}")


def _coerce(cls_name: str, info: FieldInfo, value: Any) -> Any:
    where = f"{cls_name}.{info.name} ({info.spec.label})"
    tp = _base_type(info.type)
    if value is None:
        if tp is not info.type:  # Optional
            return None
        raise ValueError(f"{where}: a value is required")
    try:
        converted = _convert(tp, value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: {value!r} is not a valid {getattr(tp, '__name__', tp)}") from None
    _check_range(where, info.spec, converted)
    return converted


def from_dict(cls: type[T], data: Mapping[str, Any], *, partial: bool = True) -> T:
    """Validate a name-keyed dict into ``cls``.

    Args:
        cls: a dataclass declared with :func:`setting` fields.
        data: field name -> value, e.g. what a UI form or a saved JSON file holds.
        partial: when True, missing fields take their defaults; when False they are an error.

    Raises:
        ValueError: naming the field for an unknown key, a wrong type, or a value out of range.
    """
    infos = {i.name: i for i in specs(cls)}
    unknown = sorted(set(data) - set(infos))
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown field(s) {', '.join(unknown)}; known: {', '.join(infos)}")
    values = {}
    for name, info in infos.items():
        if name in data:
            values[name] = _coerce(cls.__name__, info, data[name])
        elif not partial:
            raise ValueError(f"{cls.__name__}.{name}: missing")
    return cls(**values)


def to_dict(obj: Any) -> dict[str, Any]:
    """A JSON-friendly dict of a settings dataclass (Paths become strings)."""
    out = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        out[f.name] = str(value) if isinstance(value, Path) else value
    return out
