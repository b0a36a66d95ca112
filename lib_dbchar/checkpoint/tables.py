"""The machinery every key map in this package is built from.

A model is a list of *modules* (a resnet, an attention block, a norm, ...). Each module lives at
one prefix in the diffusers layout and at another in the ldm layout, and names its own tensors
by a small per-kind rule set (:class:`Inner`). A :class:`Part` ties the two prefixes to the rule
set; a :class:`KeyMap` built from a list of parts converts a flat state dict in either direction.

Because both directions are derived from the same table, a conversion there and back again is
the identity by construction, and every rule is written down exactly once.

Strictness is the point: a key that matches no part, a tensor name a module does not have, or a
required tensor that is absent all raise, naming the key. A checkpoint is never converted into a
silently truncated model.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from lib_dbchar.checkpoint.errors import MissingKeyError, UnsupportedCheckpoint

DIFFUSERS = "diffusers"
LDM = "ldm"

# "{n}" in a parameter template stands for a block index (transformer_blocks.0, .1, ...).
_INDEX = "{n}"


@dataclass(frozen=True)
class Fuse:
    """Several diffusers tensors that ldm stores as one tensor, concatenated along dim 0.

    Args:
        ldm: the ldm-local name of the concatenated tensor, e.g. ``"attn.in_proj_weight"``.
        diffusers: the diffusers-local names in concatenation order (q, k, v).
    """

    ldm: str
    diffusers: tuple[str, ...]


@dataclass(frozen=True)
class Inner:
    """How the tensors inside one kind of module are named and shaped in both layouts.

    Args:
        name: what the module is, for error messages ("UNet resnet").
        params: diffusers-local names of the tensors every such module has; ``{n}`` is any index.
        optional: diffusers-local names that may be absent (e.g. a resnet's shortcut conv
            exists only where the width changes).
        renames: ``(diffusers_local, ldm_local)`` prefix pairs, matched on whole dotted
            components; a name no pair matches is the same in both layouts. An empty ldm name
            means the tensor sits at the module prefix itself (``positional_embedding``).
        linear_as_conv: diffusers-local names that are ``Linear`` weights (2-D) in diffusers and
            1x1 conv weights (4-D) in ldm.
        transposed: diffusers-local names that ldm stores transposed (matmul vs ``Linear``).
        fuses: tensors that ldm concatenates (see :class:`Fuse`).
    """

    name: str
    params: tuple[str, ...]
    optional: tuple[str, ...] = ()
    renames: tuple[tuple[str, str], ...] = ()
    linear_as_conv: frozenset[str] = frozenset()
    transposed: frozenset[str] = frozenset()
    fuses: tuple[Fuse, ...] = ()

    def templates(self, side: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The (required, optional) local names on ``side`` (``DIFFUSERS`` or ``LDM``)."""
        if side == DIFFUSERS:
            return self.params, self.optional
        return (_ldm_names(self, self.params), _ldm_names(self, self.optional))


def _ldm_names(inner: Inner, names: Iterable[str]) -> tuple[str, ...]:
    out: list[str] = []
    for name in names:
        fused = next((f.ldm for f in inner.fuses if name in f.diffusers), None)
        ldm_name = fused if fused is not None else _rename(name, inner.renames, 0, 1)
        if ldm_name not in out:
            out.append(ldm_name)
    return tuple(out)


def wb(*names: str) -> tuple[str, ...]:
    """``wb("norm1", "conv1")`` -> ``("norm1.weight", "norm1.bias", "conv1.weight", "conv1.bias")``."""
    return tuple(f"{name}.{p}" for name in names for p in ("weight", "bias"))


# A module that is one layer with a weight and a bias (a conv, a norm, a Linear).
LEAF = Inner("layer", params=("weight", "bias"))


@dataclass(frozen=True)
class Part:
    """One module: its prefix in each layout and the rules for the tensors inside it.

    Args:
        diffusers: prefix in the diffusers layout, e.g. ``"down_blocks.0.resnets.1"``.
        ldm: prefix in the ldm layout (after the component prefix), e.g. ``"input_blocks.2.0"``.
        inner: the naming rules inside the module.
        optional: the whole module may be absent (e.g. ``position_ids`` buffers).
    """

    diffusers: str
    ldm: str
    inner: Inner
    optional: bool = False

    def prefix(self, side: str) -> str:
        return self.diffusers if side == DIFFUSERS else self.ldm


@dataclass(frozen=True)
class KeyMap:
    """A complete key map for one component (UNet, VAE or text encoder).

    Args:
        what: the component's name for error messages ("UNet").
        parts: every module of the component.
        ldm_prefix: the component's prefix in an ldm single file, e.g. ``"model.diffusion_model."``.
    """

    what: str
    parts: Sequence[Part]
    ldm_prefix: str
    _index: dict[str, dict[str, Part]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        index: dict[str, dict[str, Part]] = {DIFFUSERS: {}, LDM: {}}
        for part in self.parts:
            for side in (DIFFUSERS, LDM):
                if part.prefix(side) in index[side]:
                    raise ValueError(f"{self.what} table: two parts at {side} prefix {part.prefix(side)!r}")
                index[side][part.prefix(side)] = part
        object.__setattr__(self, "_index", index)

    def to_ldm(self, state_dict: Mapping[str, Any]) -> dict[str, Any]:
        """Convert a diffusers component state dict to ldm keys (with :attr:`ldm_prefix`).

        Raises:
            UnsupportedCheckpoint: a key belongs to no module or is unknown to its module.
            MissingKeyError: a required tensor is absent (the message names its diffusers key).
        """
        out = self._convert(state_dict, DIFFUSERS)
        return {self.ldm_prefix + key: value for key, value in out.items()}

    def to_diffusers(self, state_dict: Mapping[str, Any]) -> dict[str, Any]:
        """Convert ldm keys (already stripped of :attr:`ldm_prefix`) to diffusers keys.

        Raises:
            UnsupportedCheckpoint: a key belongs to no module or is unknown to its module.
            MissingKeyError: a required tensor is absent (the message names its full ldm key).
        """
        return self._convert(state_dict, LDM)

    def _convert(self, state_dict: Mapping[str, Any], side: str) -> dict[str, Any]:
        buckets = self._bucket(state_dict, side)
        out: dict[str, Any] = {}
        for part in self.parts:
            tensors = buckets.get(part.prefix(side), {})
            if not tensors and part.optional:
                continue
            self._check(part, tensors, side)
            target = LDM if side == DIFFUSERS else DIFFUSERS
            convert = _part_to_ldm if side == DIFFUSERS else _part_to_diffusers
            for local, value in convert(part.inner, tensors, self._namer(part, side)).items():
                out[_join(part.prefix(target), local)] = value
        return out

    def _bucket(self, state_dict: Mapping[str, Any], side: str) -> dict[str, dict[str, Any]]:
        """Group keys by the module they belong to (longest matching prefix)."""
        index = self._index[side]
        buckets: dict[str, dict[str, Any]] = {}
        for key, value in state_dict.items():
            pieces = key.split(".")
            for cut in range(len(pieces), 0, -1):
                prefix = ".".join(pieces[:cut])
                if prefix in index:
                    buckets.setdefault(prefix, {})[".".join(pieces[cut:])] = value
                    break
            else:
                raise UnsupportedCheckpoint(
                    f"{self.what}: unexpected key {self._full(key, side)!r} belongs to no known module; "
                    "this is not a Stable Diffusion 1.x/2.x layout dbchar can convert."
                )
        return buckets

    def _check(self, part: Part, tensors: Mapping[str, Any], side: str) -> None:
        """Every local name must be known to the module, and every required one present."""
        required, optional = part.inner.templates(side)
        patterns = [_template_regex(t) for t in (*required, *optional)]
        indices: set[int] = set()
        for local in tensors:
            match = next((m for m in (p.fullmatch(local) for p in patterns) if m), None)
            if match is None:
                raise UnsupportedCheckpoint(
                    f"{self.what}: unexpected key {self._full(_join(part.prefix(side), local), side)!r}; "
                    f"a {part.inner.name} has no tensor called {local!r}."
                )
            indices.update(int(g) for g in match.groups())
        # Indices must run 0..max without gaps: a hole means a block was dropped.
        expected = range(max(indices) + 1) if indices else range(1)
        for template in required:
            for n in expected if _INDEX in template else (0,):
                local = template.replace(_INDEX, str(n))
                if local not in tensors:
                    key = self._full(_join(part.prefix(side), local), side)
                    raise MissingKeyError(
                        key,
                        f"{self.what}: required key {key!r} is missing (a {part.inner.name} without it "
                        "would be a broken model); the file is truncated or of another architecture.",
                    )

    def _namer(self, part: Part, side: str) -> Namer:
        return lambda local: self._full(_join(part.prefix(side), local), side)

    def _full(self, key: str, side: str) -> str:
        return self.ldm_prefix + key if side == LDM else key


def _join(prefix: str, local: str) -> str:
    return f"{prefix}.{local}" if local else prefix


def _template_regex(template: str) -> re.Pattern[str]:
    return re.compile(re.escape(template).replace(re.escape(_INDEX), r"(\d+)"))


def _rename(local: str, renames: Sequence[tuple[str, str]], src: int, dst: int) -> str:
    """Apply the longest rename whose source is ``local`` or a dotted-component prefix of it."""
    best: tuple[str, str] | None = None
    for pair in renames:
        head = pair[src]
        matches = local == head or (head and local.startswith(head + "."))
        if matches and (best is None or len(head) > len(best[src])):
            best = pair
    if best is None:
        return local
    return _join(best[dst], local[len(best[src]) :].lstrip("."))


Namer = Callable[[str], str]  # module-local name -> full key, for error messages


def rename_local(inner: Inner, local: str, *, to: str) -> str:
    """A module-local tensor name in the other layout, e.g. a resnet's ldm ``in_layers.2.weight``
    -> diffusers ``conv1.weight`` (``to=DIFFUSERS``). Fused and reshaped tensors are not handled.
    """
    return _rename(local, inner.renames, 1, 0) if to == DIFFUSERS else _rename(local, inner.renames, 0, 1)


def _part_to_ldm(inner: Inner, tensors: Mapping[str, Any], full_name: Namer) -> dict[str, Any]:
    import torch

    rest = dict(tensors)
    out: dict[str, Any] = {}
    for fuse in inner.fuses:
        # _check guaranteed all members are present (they are required params).
        out[fuse.ldm] = torch.cat([rest.pop(name) for name in fuse.diffusers], dim=0)
    for local, value in rest.items():
        out[_rename(local, inner.renames, 0, 1)] = _reshape(
            inner, local, value, full_name(local), to_ldm=True
        )
    return out


def _part_to_diffusers(inner: Inner, tensors: Mapping[str, Any], full_name: Namer) -> dict[str, Any]:
    rest = dict(tensors)
    out: dict[str, Any] = {}
    for fuse in inner.fuses:
        out.update(_split(rest.pop(fuse.ldm), fuse, full_name(fuse.ldm)))
    for local, value in rest.items():
        name = _rename(local, inner.renames, 1, 0)
        out[name] = _reshape(inner, name, value, full_name(local), to_ldm=False)
    return out


def _reshape(inner: Inner, name: str, value: Any, key: str, *, to_ldm: bool) -> Any:
    """Apply the module's shape rule for the diffusers-local ``name`` (most tensors have none)."""
    if name in inner.linear_as_conv:
        return _linear_to_conv(value, key) if to_ldm else _conv_to_linear(value, key)
    if name in inner.transposed:
        return value.T.contiguous()
    return value


def _linear_to_conv(value: Any, key: str) -> Any:
    if value.ndim != 2:
        raise UnsupportedCheckpoint(f"{key}: expected a 2-D Linear weight, found shape {tuple(value.shape)}")
    return value.reshape(*value.shape, 1, 1)


def _conv_to_linear(value: Any, key: str) -> Any:
    # Some converted VAEs already hold 2-D weights here; accept them as they are.
    if value.ndim == 2:
        return value
    if value.ndim != 4 or tuple(value.shape[2:]) != (1, 1):
        raise UnsupportedCheckpoint(f"{key}: expected a 1x1 conv weight, found shape {tuple(value.shape)}")
    return value.reshape(value.shape[0], value.shape[1])


def _split(value: Any, fuse: Fuse, key: str) -> dict[str, Any]:
    count = len(fuse.diffusers)
    if value.shape[0] % count:
        raise UnsupportedCheckpoint(
            f"{key}: dim 0 ({value.shape[0]}) does not split into {count} equal parts"
        )
    # clone(): chunks are views of one storage, and safetensors refuses to save shared tensors.
    return {
        name: chunk.clone() for name, chunk in zip(fuse.diffusers, value.chunk(count, dim=0), strict=True)
    }
