"""Small single-file checkpoints made from the tiny models: relatives of a source, strangers, files.

The merge, lineage and Merge-tab tests all need "the same model, a little trained" and "an
unrelated model with the same keys". They are made here from an ldm state dict (usually
``load_single_file(tiny_sd1.single_file)``), so the noise rules live in one place. Import the
functions explicitly (``from tests.kit.sdfiles import nudged``); torch and safetensors are imported
inside them, so tests/conftest.py stays light.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["nudged", "shuffled", "write_models"]


def nudged(
    sd: Mapping[str, Any],
    scale: float,
    seed: int,
    *,
    relative: bool = True,
    skip: tuple[str, ...] = (),
) -> dict[str, Any]:
    """A relative of ``sd``: every float tensor plus Gaussian noise; others copied.

    Args:
        sd: an ldm state dict (key -> tensor).
        scale: the noise's size: times each tensor's RMS when ``relative`` (so the median relative
            change of the result is about ``scale``), else absolute.
        seed: the same seed gives the same result, bit for bit.
        relative: see ``scale``.
        skip: key prefixes left unchanged (e.g. ``("cond_stage_model.",)`` for a model whose text
            encoder was not trained).

    Returns:
        A new dict; each tensor keeps its dtype (noise is added in float32).
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, value in sd.items():
        if not value.is_floating_point() or key.startswith(skip):
            out[key] = value.clone()
            continue
        noise = torch.randn(value.shape, generator=gen) * scale
        if relative:
            noise = noise * value.float().pow(2).mean().sqrt()
        out[key] = (value.float() + noise).to(value.dtype)
    return out


def shuffled(sd: Mapping[str, Any], seed: int) -> dict[str, Any]:
    """An unrelated model of the same architecture: each float tensor's values permuted.

    Keys, shapes, dtypes and value statistics match ``sd``; the weights have nothing in common.

    Args:
        sd: an ldm state dict.
        seed: for the permutations.

    Returns:
        A new dict.
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    return {
        k: v.flatten()[torch.randperm(v.numel(), generator=gen)].reshape(v.shape)
        if v.is_floating_point()
        else v.clone()
        for k, v in sd.items()
    }


def write_models(
    folder: Path, models: Mapping[str, Mapping[str, Any]], *, metadata: Mapping[str, str] | None = None
) -> dict[str, Path]:
    """Save each state dict as ``<folder>/<name>.safetensors`` (the folder is created).

    Args:
        folder: where to write.
        models: name -> state dict.
        metadata: safetensors metadata given to every file.

    Returns:
        name -> the written path, in ``models``' order.
    """
    import safetensors.torch

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, sd in models.items():
        paths[name] = folder / f"{name}.safetensors"
        safetensors.torch.save_file(dict(sd), str(paths[name]), metadata=dict(metadata) if metadata else None)
    return paths
