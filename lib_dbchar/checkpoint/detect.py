"""What a checkpoint is, from its tensor names and shapes alone (no weights are read).

* **Architecture** -- from sentinel keys, text encoder first (it is what differs):
  SD1 (CLIP ViT-L under ``cond_stage_model.transformer``), SD2 (OpenCLIP-H under
  ``cond_stage_model.model``), SDXL (two encoders under ``conditioner.embedders.{0,1}``), the SDXL
  refiner (one OpenCLIP-bigG encoder at ``conditioner.embedders.0``). UNet-only files are told
  apart by the UNet: SDXL has ``label_emb``; SD2 projects its transformers with Linear layers
  (2-D ``proj_in``) where SD1 uses 1x1 convs (4-D).
* **Variant** -- the UNet's input channels: 4 standard, 9 inpainting (latent + masked latent +
  mask), 8 instruct-pix2pix (latent + image latent).
* **Prediction type** -- epsilon or v. Keys cannot tell (SD2-768-v and SD2-base are identical), so,
  in order: a ``<name>.yaml`` beside the file (the webui's convention; ``parameterization: "v"``),
  ``modelspec.prediction_type`` metadata, a ``v_pred`` marker tensor, then a guess. The guess
  (:func:`guess_prediction`) is documented and reported as such so a UI can ask the user.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

ARCH_LABELS: Mapping[str, str] = {
    "sd1": "Stable Diffusion 1.x",
    "sd2": "Stable Diffusion 2.x",
    "sdxl": "Stable Diffusion XL",
    "sdxl_refiner": "Stable Diffusion XL refiner",
    "unknown": "an unknown architecture",
}
VARIANT_BY_CHANNELS: Mapping[int, str] = {4: "standard", 9: "inpainting", 8: "instruct-pix2pix"}

UNET_PREFIX = "model.diffusion_model."
CONV_IN = UNET_PREFIX + "input_blocks.0.0.weight"
# The one sentinel table (lib_dbchar.checkpoint.kinds derives the kinds it converts from it):
# (key, architecture), checked in order; the first key present decides. Text encoder keys come
# first: they are what differs between the architectures.
SENTINELS: tuple[tuple[str, str], ...] = (
    ("conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight", "sdxl"),
    ("conditioner.embedders.0.model.transformer.resblocks.0.attn.in_proj_weight", "sdxl_refiner"),
    ("cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight", "sd2"),  # OpenCLIP
    ("cond_stage_model.transformer.text_model.embeddings.token_embedding.weight", "sd1"),  # HF CLIP
    ("cond_stage_model.transformer.embeddings.token_embedding.weight", "sd1"),  # old CLIP layout (NAI)
)
_LABEL_EMB = UNET_PREFIX + "label_emb.0.0.weight"
_SDXL_REFINER_ADM = 2560  # the refiner's label_emb input width; the base model's is 2816
# Without a text encoder (UNet-only files): SD2's transformers project with Linear layers (2-D
# weights), SD1's with 1x1 convs (4-D).
PROJ_IN = UNET_PREFIX + "input_blocks.1.1.proj_in.weight"
_V_PRED_MARKER = "v_pred"
_PARAMETERIZATION = re.compile(r"^\s*parameterization\s*:\s*[\"']?([A-Za-z_]+)", re.MULTILINE)
_MODELSPEC_PREDICTION = "modelspec.prediction_type"
# SD2 releases named for their 512 px epsilon "base" model; the 768 px ones predict v.
_EPSILON_NAME_HINT = re.compile(r"base|512", re.IGNORECASE)


@dataclass(frozen=True)
class ModelInfo:
    """What a checkpoint is.

    Attributes:
        arch: ``"sd1"``, ``"sd2"``, ``"sdxl"``, ``"sdxl_refiner"`` or ``"unknown"``.
        variant: ``"standard"``, ``"inpainting"``, ``"instruct-pix2pix"`` or ``"other"``;
            ``"unknown"`` without a UNet.
        in_channels: the UNet's input channels (None without a UNet).
        prediction: ``"epsilon"`` or ``"v"``.
        prediction_source: how :attr:`prediction` was found: ``"yaml"``, ``"metadata"``, ``"key"``
            or ``"guess"`` (then a UI should let the user confirm).
        config_path: the ``.yaml`` beside the file, if any.
        has_unet, has_vae, has_text_encoder: which components the file holds.
        has_ema: it carries ``model_ema.*`` tensors.
    """

    arch: str
    variant: str
    in_channels: int | None
    prediction: str
    prediction_source: str
    config_path: str | None = None
    has_unet: bool = False
    has_vae: bool = False
    has_text_encoder: bool = False
    has_ema: bool = False

    @property
    def label(self) -> str:
        """For messages: "Stable Diffusion 2.x (inpainting, v-prediction)"."""
        extras = [self.variant] if self.variant not in ("standard", "unknown") else []
        if self.prediction == "v":
            extras.append("v-prediction")
        return ARCH_LABELS[self.arch] + (f" ({', '.join(extras)})" if extras else "")


def detect_arch(shapes: Mapping[str, Sequence[int]]) -> str:
    """The architecture of a checkpoint from its (normalised) keys and shapes.

    Args:
        shapes: key -> shape, e.g. :meth:`CheckpointReader.shapes`.

    Returns:
        One of :data:`ARCH_LABELS`' keys.
    """
    return detect_arch_by(shapes)[0]


def detect_arch_by(shapes: Mapping[str, Sequence[int]]) -> tuple[str, str | None]:
    """Like :func:`detect_arch`, plus the key that decided (for messages).

    Args:
        shapes: key -> shape; only ``in`` and ``get`` are used, so a lazy view of a state dict works.

    Returns:
        ``(arch, key)``; ``("unknown", None)`` when no rule applies.
    """
    for key, arch in SENTINELS:
        if key in shapes:
            return arch, key
    label_emb = shapes.get(_LABEL_EMB)
    if label_emb is not None:
        return ("sdxl_refiner" if label_emb[-1] == _SDXL_REFINER_ADM else "sdxl"), _LABEL_EMB
    proj_in = shapes.get(PROJ_IN)
    if proj_in is not None:
        return ("sd2" if len(proj_in) == 2 else "sd1"), PROJ_IN
    return "unknown", None


def detect_variant(shapes: Mapping[str, Sequence[int]]) -> tuple[str, int | None]:
    """``(variant, in_channels)`` from the UNet's first conv; ``("unknown", None)`` without one."""
    conv_in = shapes.get(CONV_IN)
    if conv_in is None or len(conv_in) != 4:
        return "unknown", None
    channels = int(conv_in[1])
    return VARIANT_BY_CHANNELS.get(channels, "other"), channels


def config_beside(path: Path | str) -> Path | None:
    """The webui's per-checkpoint config: ``<stem>.yaml`` in the checkpoint's folder, if present."""
    path = Path(path)
    for suffix in (".yaml", ".yml"):
        candidate = path.with_suffix(suffix)
        if candidate.is_file():
            return candidate
    return None


def prediction_from_yaml(config: Path | str) -> str | None:
    """``"v"`` or ``"epsilon"`` from an ldm config's ``parameterization`` (absent means epsilon).

    Read with a pattern rather than a YAML parser: the one line is all we need, and PyYAML is
    not one of our dependencies.
    """
    try:
        text = Path(config).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    match = _PARAMETERIZATION.search(text)
    if match is None:
        return "epsilon"
    return "v" if match.group(1).lower() == "v" else "epsilon"


def prediction_from_metadata(metadata: Mapping[str, str]) -> str | None:
    """``"v"`` / ``"epsilon"`` from ``modelspec.prediction_type``, or None when absent/unknown."""
    value = str(metadata.get(_MODELSPEC_PREDICTION, "")).strip().lower()
    if value in ("v", "v_prediction", "v-prediction"):
        return "v"
    if value in ("epsilon", "eps"):
        return "epsilon"
    return None


def guess_prediction(arch: str, name: str = "") -> str:
    """The documented fallback when neither a ``.yaml``, metadata nor a marker key tells.

    SD2 checkpoints are assumed to be v-prediction (SD2.0-768/SD2.1-768 and most fine-tunes of
    them are) unless the file name mentions ``base`` or ``512`` (SD2's epsilon base models);
    everything else is assumed epsilon. A wrong guess gives brown/noisy images, so UIs should
    show the guess and let the user override it.

    Args:
        arch: from :func:`detect_arch`.
        name: the file name (only SD2 looks at it).
    """
    if arch == "sd2":
        return "epsilon" if _EPSILON_NAME_HINT.search(name) else "v"
    return "epsilon"


def describe_checkpoint(
    shapes: Mapping[str, Sequence[int]],
    *,
    path: Path | str | None = None,
    metadata: Mapping[str, str] | None = None,
) -> ModelInfo:
    """Everything :class:`ModelInfo` holds, from names and shapes (plus the file's neighbours).

    Args:
        shapes: normalised key -> shape.
        path: the checkpoint file, to find a ``.yaml`` beside it and to guess from its name.
        metadata: the file's metadata strings.

    Returns:
        The :class:`ModelInfo`.
    """
    arch = detect_arch(shapes)
    variant, channels = detect_variant(shapes)
    config = config_beside(path) if path is not None else None
    prediction, source = _prediction(arch, shapes, config, metadata or {}, Path(path).name if path else "")
    return ModelInfo(
        arch=arch,
        variant=variant,
        in_channels=channels,
        prediction=prediction,
        prediction_source=source,
        config_path=str(config) if config else None,
        has_unet=any(k.startswith(UNET_PREFIX) for k in shapes),
        has_vae=any(k.startswith("first_stage_model.") for k in shapes),
        has_text_encoder=any(k.startswith(("cond_stage_model.", "conditioner.")) for k in shapes),
        has_ema=any(k.startswith("model_ema.") for k in shapes),
    )


def _prediction(
    arch: str,
    shapes: Mapping[str, Sequence[int]],
    config: Path | None,
    metadata: Mapping[str, str],
    name: str,
) -> tuple[str, str]:
    if config is not None:
        found = prediction_from_yaml(config)
        if found is not None:
            return found, "yaml"
    found = prediction_from_metadata(metadata)
    if found is not None:
        return found, "metadata"
    if _V_PRED_MARKER in shapes:
        return "v", "key"
    return guess_prediction(arch, name), "guess"


def inspect_checkpoint(path: Path | str) -> ModelInfo:
    """Open ``path``, read its header (safetensors) and describe it.

    Raises:
        FileNotFoundError, UnsupportedCheckpoint, CheckpointError: as
        :func:`~lib_dbchar.checkpoint.reader.open_checkpoint`.
    """
    from lib_dbchar.checkpoint.reader import open_checkpoint

    with open_checkpoint(path) as reader:
        return describe_checkpoint(reader.shapes(), path=path, metadata=reader.metadata)
