"""The training settings (one frozen dataclass) and the presets that fill it.

Every setting of the guide's "Create Model" and "Parameters" sections is a field of
:class:`TrainConfig`, named by its dataclass field in saved runs and in preset files. The defaults
are the guide's values; the shipped presets (``lib_dbchar/presets/*.json``) are the guide's
("Character (guide)"), one for 8 GB cards and one for a quick check of the whole chain.

:func:`validate_config` rejects impossible combinations before any GPU time is spent, and
:func:`validate_for_device` the ones that depend on the machine (fp16 needs a GPU, xformers must be
installed). Both raise ``ValueError`` naming the field.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from lib_dbchar.config import from_dict, setting, specs, to_dict
from lib_dbchar.paths import atomic_write, child_path

PREDICTION_TYPES = ("auto", "epsilon", "v_prediction")
SCHEDULERS = ("ddim", "euler_a", "dpmpp_2m")
LR_SCHEDULERS = ("constant", "cosine", "linear")
MIXED_PRECISION = ("no", "fp16", "bf16")
ATTENTION = ("auto", "sdpa", "xformers", "default")
TOKEN_CHUNK = 75  # CLIP sees 77 positions: start + 75 tokens + end.
LATENT_MULTIPLE = 64  # the VAE divides by 8 and the UNet by 8 again.


@dataclass(frozen=True)
class TrainConfig:
    """How a Dreambooth run trains. Defaults are the guide's settings."""

    # -- model -------------------------------------------------------------------------------
    source_checkpoint: str = setting(
        "",
        label="Source checkpoint",
        help="The model to train from: a checkpoint title from the list or a path. "
        "The guide: Waifu Diffusion 1.3 (or a NAI/WD mix).",
    )
    prediction_type: str = setting(
        "auto",
        label="Prediction type",
        help="auto: from a .yaml beside the checkpoint or its metadata (SD1.x: epsilon). "
        "SD 2.x 768 models are v_prediction, SD 2.x 512 (base) models epsilon.",
        choices=PREDICTION_TYPES,
    )
    scheduler: str = setting(
        "ddim",
        label="Scheduler",
        help="Sampler for class images and previews (the guide: ddim).",
        choices=SCHEDULERS,
    )
    # -- length and saving -------------------------------------------------------------------
    epochs: int = setting(
        10_000_000,
        label="Training steps per image (epochs)",
        help="How many times each picture is trained on. The guide sets a huge number and stops by hand.",
        minimum=1,
    )
    max_steps: int = setting(
        10_000_000,
        label="Max training steps",
        help="Stop after this many steps whatever the epochs say. 0: no limit.",
        minimum=0,
    )
    lifetime_epochs: bool = setting(
        False,
        label="Use lifetime steps/epochs when saving",
        help="When continuing a finished run: count epochs (for saving and stopping) from the run's "
        "very start instead of from where this session started.",
    )
    save_every_epochs: int = setting(
        10,
        label="Save checkpoint every N epochs",
        help="A checkpoint lands in the checkpoint folder every N epochs. 0: only at the end.",
        minimum=0,
    )
    preview_every_epochs: int = setting(
        10,
        label="Save previews every N epochs",
        help="Preview images (fixed seeds, so epochs compare) every N epochs. 0: never.",
        minimum=0,
    )
    save_on_stop: bool = setting(
        True,
        label="Save a checkpoint when stopped",
        help="When you stop the run, also write a checkpoint of where it got to (the state for "
        "resuming is always saved).",
    )
    # -- optimiser ---------------------------------------------------------------------------
    learning_rate: float = setting(1e-6, label="Learning rate", help="The guide: 0.000001.", minimum=0.0)
    lr_scheduler: str = setting(
        "constant",
        label="Learning rate schedule",
        help="constant (the guide), or cosine/linear decay to 0 over the planned steps.",
        choices=LR_SCHEDULERS,
    )
    lr_warmup_steps: int = setting(
        0, label="Warmup steps", help="Steps to ramp the learning rate up from 0.", minimum=0
    )
    use_8bit_adam: bool = setting(
        True,
        label="Use 8-bit Adam",
        help="Optimizer state in 8 bits (bitsandbytes): about 5 GB less for SD1.5. "
        "Falls back to plain AdamW, with a message, where bitsandbytes is missing.",
    )
    optimizer_in_backward: bool = setting(
        False,
        label="Step the optimizer during backward",
        help="Update each weight as soon as its gradient is ready and free that gradient: the full set of "
        "gradients never exists (about 3.4 GB less for SD1.5). Gradient clipping then applies per tensor.",
    )
    adam_weight_decay: float = setting(0.01, label="Adam weight decay", minimum=0.0, maximum=1.0)
    adam_beta1: float = setting(0.9, label="Adam beta 1", minimum=0.0, maximum=0.999999)
    adam_beta2: float = setting(0.999, label="Adam beta 2", minimum=0.0, maximum=0.999999)
    adam_epsilon: float = setting(1e-8, label="Adam epsilon", minimum=0.0)
    max_grad_norm: float = setting(
        1.0, label="Gradient clipping", help="Clip the gradient norm to this. 0: no clipping.", minimum=0.0
    )
    # -- data --------------------------------------------------------------------------------
    resolution: int = setting(
        512,
        label="Resolution",
        help="Training size in pixels (the guide: 512, with pictures cropped to 512x512 beforehand).",
        minimum=64,
        maximum=2048,
        step=64,
    )
    batch_size: int = setting(1, label="Batch size", minimum=1, maximum=64)
    random_flip: bool = setting(
        False,
        label="Random horizontal flip",
        help="Mirror pictures at random. Off by default: characters are rarely symmetric.",
    )
    max_token_length: int = setting(
        75,
        label="Max caption tokens",
        help="Long captions are encoded in 75-token chunks as the webui does: 75, 150 or 225.",
        minimum=75,
        maximum=225,
        step=75,
    )
    cache_latents: bool = setting(
        False,
        label="Cache latents",
        help="Encode every picture once instead of at every step: faster, less VRAM. The guide: off.",
    )
    # -- memory and speed --------------------------------------------------------------------
    mixed_precision: str = setting(
        "fp16",
        label="Mixed precision",
        help="fp16 (the guide) or bf16 halve activation memory; weights stay in fp32. fp16 needs a CUDA GPU.",
        choices=MIXED_PRECISION,
    )
    attention: str = setting(
        "auto",
        label="Memory attention",
        help="auto: xformers when installed (the guide), else PyTorch's SDPA, which saves as much.",
        choices=ATTENTION,
    )
    gradient_checkpointing: bool = setting(
        False,
        label="Gradient checkpointing",
        help="Recompute activations in the backward pass: much less VRAM, about 30% slower.",
    )
    train_text_encoder: bool = setting(
        False,
        label="Train text encoder",
        help="Also train the text encoder (about 1.2 GB more VRAM). The guide: no.",
    )
    text_encoder_stop_step: int = setting(
        0,
        label="Stop training the text encoder at step",
        help="Freeze the text encoder after this step. 0: train it for the whole run.",
        minimum=0,
    )
    # -- loss --------------------------------------------------------------------------------
    prior_preservation: bool = setting(
        True,
        label="Prior preservation",
        help="Train on class images beside your pictures so the class is not forgotten.",
    )
    prior_loss_weight: float = setting(1.0, label="Prior loss weight", minimum=0.0, maximum=10.0)
    offset_noise: float = setting(
        0.0,
        label="Offset noise",
        help="Adds a per-channel constant to the noise so the model learns very dark/bright images. "
        "0: off; 0.05-0.1 is typical.",
        minimum=0.0,
        maximum=1.0,
    )
    min_snr_gamma: float = setting(
        0.0,
        label="Min-SNR gamma",
        help="Weights the loss per timestep (Min-SNR). 0: off; 5 is the paper's value.",
        minimum=0.0,
        maximum=100.0,
    )
    clip_skip: int = setting(
        1,
        label="Clip skip",
        help="Use the text encoder's n-th layer from the end: 1 for most models, 2 for NAI-family.",
        minimum=1,
        maximum=12,
    )
    seed: int = setting(1234, label="Seed", help="Same seed, same run (data order and noise).", minimum=0)
    # -- previews ----------------------------------------------------------------------------
    preview_seed: int = setting(
        1, label="Preview seed", help="Previews use fixed seeds so epochs compare.", minimum=0
    )
    preview_steps: int = setting(20, label="Preview steps", minimum=1, maximum=150)
    preview_guidance_scale: float = setting(7.5, label="Preview CFG scale", minimum=1.0, maximum=30.0)
    previews_per_concept: int = setting(1, label="Previews per concept", minimum=1, maximum=16)
    # -- class images ------------------------------------------------------------------------
    class_steps: int = setting(30, label="Class image steps", minimum=1, maximum=150)
    class_guidance_scale: float = setting(7.5, label="Class image CFG scale", minimum=1.0, maximum=30.0)
    class_batch_size: int = setting(
        0, label="Class image batch size", help="0: sized to the free GPU memory (1 on CPU).", minimum=0
    )


# Fields that describe the model rather than how to train it: presets never carry them.
MODEL_FIELDS = frozenset({"source_checkpoint", "prediction_type"})


def validate_config(config: TrainConfig) -> TrainConfig:
    """Reject combinations that cannot work, before any time is spent.

    Args:
        config: the settings (ranges and choices are checked by :func:`~lib_dbchar.config.from_dict`).

    Returns:
        ``config`` unchanged, so calls can be chained.

    Raises:
        ValueError: naming the field and what to change.
    """
    if config.learning_rate <= 0:
        raise ValueError(
            f"TrainConfig.learning_rate: {config.learning_rate} must be above 0 (the guide: 1e-6)."
        )
    if config.resolution % LATENT_MULTIPLE:
        msg = f"TrainConfig.resolution: {config.resolution} is not a multiple of {LATENT_MULTIPLE}; use 512."
        raise ValueError(msg)
    if config.max_token_length % TOKEN_CHUNK:
        raise ValueError(f"TrainConfig.max_token_length: {config.max_token_length} must be 75, 150 or 225.")
    if config.cache_latents and config.random_flip:
        msg = "TrainConfig.cache_latents: cached latents cannot be flipped; turn off random_flip or this"
        raise ValueError(msg)
    if config.text_encoder_stop_step and not config.train_text_encoder:
        msg = "TrainConfig.text_encoder_stop_step: set, but train_text_encoder is off; turn it on or use 0."
        raise ValueError(msg)
    if config.max_steps and config.lr_warmup_steps >= config.max_steps:
        raise ValueError(
            f"TrainConfig.lr_warmup_steps: {config.lr_warmup_steps} warmup steps do not fit in max_steps "
            f"{config.max_steps}; lower the warmup."
        )
    if config.prior_preservation and config.prior_loss_weight == 0:
        msg = (
            "TrainConfig.prior_loss_weight: 0 with prior preservation on trains on class images for nothing; "
            "turn prior_preservation off instead."
        )
        raise ValueError(msg)
    return config


def xformers_available() -> bool:
    """Whether the ``xformers`` package is installed (without importing it)."""
    return importlib.util.find_spec("xformers") is not None


def resolved_attention(config: TrainConfig, *, have_xformers: bool) -> str:
    """``"xformers"``, ``"sdpa"`` or ``"default"``: what ``attention="auto"`` means on this machine."""
    if config.attention == "auto":
        return "xformers" if have_xformers else "sdpa"
    return config.attention


def validate_for_device(config: TrainConfig, device: str, *, have_xformers: bool | None = None) -> None:
    """Reject settings this machine cannot run.

    Args:
        config: the settings.
        device: the torch device string the run will use (``"cuda"``, ``"cpu"``, ...).
        have_xformers: override the installed check (tests).

    Raises:
        ValueError: fp16 without CUDA; xformers asked for but missing or on CPU.
    """
    have_xformers = xformers_available() if have_xformers is None else have_xformers
    on_cuda = str(device).startswith("cuda")
    if config.mixed_precision == "fp16" and not on_cuda:
        raise ValueError(
            f"TrainConfig.mixed_precision: fp16 needs a CUDA GPU and this run uses {device!r}; "
            "choose bf16 or no."
        )
    attention = resolved_attention(config, have_xformers=have_xformers and on_cuda)
    if config.attention == "xformers" and not have_xformers:
        msg = "TrainConfig.attention: xformers is not installed; choose sdpa (as fast, as frugal) or auto."
        raise ValueError(msg)
    if attention == "xformers" and not on_cuda:
        raise ValueError(
            f"TrainConfig.attention: xformers runs on CUDA only and this run uses {device!r}; choose sdpa."
        )


# --- presets ---------------------------------------------------------------------------------

BUILTIN_PRESETS_DIR = Path(__file__).resolve().parent.parent / "presets"
PRESET_SUFFIX = ".json"
#: Appended to a user preset's name when it is a shipped preset's (see :func:`user_presets`).
USER_PRESET_MARK = "(yours)"


@dataclass(frozen=True)
class Preset:
    """A named set of :class:`TrainConfig` values.

    Attributes:
        name: shown in the preset dropdown ("Character (guide)").
        description: one or two sentences on when to use it.
        values: field name -> value; only the fields the preset sets.
        path: the JSON file it came from.
        builtin: shipped with dbchar (read-only) rather than saved by the user.
        order: position in lists (the shipped files set it; user presets come after).
    """

    name: str
    description: str
    values: Mapping[str, Any] = field(default_factory=dict)
    path: Path | None = None
    builtin: bool = False
    order: int = 100


def _check_values(values: Any, where: str) -> dict[str, Any]:
    if not isinstance(values, Mapping):
        raise ValueError(f"{where}: 'values' must be an object of field name -> value.")  # noqa: TRY004 - bad file content
    model = sorted(MODEL_FIELDS & set(values))
    if model:
        raise ValueError(f"{where}: presets do not set the model ({', '.join(model)}); remove those fields.")
    try:
        from_dict(TrainConfig, values)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None
    return dict(values)


def load_preset_file(path: Path, *, builtin: bool = False) -> Preset:
    """Read one preset file.

    Args:
        path: a JSON file ``{"name": ..., "description": ..., "values": {field: value}}``.
        builtin: mark it as shipped.

    Returns:
        The :class:`Preset`; its values are checked against :class:`TrainConfig`.

    Raises:
        ValueError: not JSON, or an unknown field or invalid value; the message names the file.
    """
    path = Path(path)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"Preset {path} cannot be read ({exc}); fix or delete the file.") from None
    if not isinstance(record, dict) or "values" not in record:
        raise ValueError(f'Preset {path}: expected {{"name", "description", "values"}}; fix or delete it.')
    values = _check_values(record["values"], f"Preset {path}")
    name = str(record.get("name") or path.stem)
    order = record.get("order", 100)
    return Preset(name, str(record.get("description", "")), values, path, builtin, int(order))


def builtin_presets() -> list[Preset]:
    """The presets shipped in ``lib_dbchar/presets/``, the guide's first."""
    presets = [
        load_preset_file(p, builtin=True) for p in sorted(BUILTIN_PRESETS_DIR.glob(f"*{PRESET_SUFFIX}"))
    ]
    return sorted(presets, key=lambda p: (p.order, p.name))


def user_presets(folder: Path | None) -> tuple[list[Preset], list[str]]:
    """The presets a user saved in ``folder``.

    Args:
        folder: e.g. ``<projects>/presets``; ``None`` or a missing folder gives none.

    Returns:
        ``(presets, problems)``: a broken file is reported in ``problems`` (one message each)
        and skipped; the others still load. A preset named like a shipped one is listed with
        " (yours)" after its name, and a problem says so.
    """
    if folder is None or not Path(folder).is_dir():
        return [], []
    presets, problems = [], []
    shipped = {p.name.casefold() for p in builtin_presets()}
    for path in sorted(Path(folder).glob(f"*{PRESET_SUFFIX}")):
        try:
            preset = load_preset_file(path)
        except ValueError as exc:
            problems.append(str(exc))
            continue
        if preset.name.casefold() in shipped:
            # Never let a user's file silently stand in for a shipped preset of the same name.
            renamed = f"{preset.name} {USER_PRESET_MARK}"
            problems.append(
                f"Preset {path} has the name of a shipped preset, {preset.name!r}; it is listed as "
                f"{renamed!r}. Change its name in the file to choose another."
            )
            preset = replace(preset, name=renamed)
        presets.append(preset)
    return presets, problems


def find_preset(name: str, user_dir: Path | None = None) -> Preset:
    """A preset by its name (built-in first) or by the path of a preset file.

    Raises:
        ValueError: no such preset; the message lists the known names.
    """
    candidate = Path(name).expanduser()
    if candidate.suffix == PRESET_SUFFIX and candidate.is_file():
        return load_preset_file(candidate)
    known = builtin_presets() + user_presets(user_dir)[0]
    for preset in known:
        if preset.name.casefold() == name.strip().casefold():
            return preset
    raise ValueError(f"No preset named {name!r}; known: {', '.join(p.name for p in known)}.")


def apply_preset(config: TrainConfig, preset: Preset, *, keep: Iterable[str] = ()) -> TrainConfig:
    """Fill ``config`` with a preset's values, except the fields the user set themselves.

    Args:
        config: the current settings.
        preset: the preset to apply.
        keep: field names the user changed in this session; the preset never overrides them.

    Returns:
        A new :class:`TrainConfig`.
    """
    keep = set(keep)
    values = {k: v for k, v in preset.values.items() if k not in keep}
    return replace(config, **_only(values))


def _only(values: Mapping[str, Any]) -> dict[str, Any]:
    """The validated, coerced form of ``values`` (only those keys)."""
    full = to_dict(from_dict(TrainConfig, values))
    return {k: full[k] for k in values}


def preset_values(config: TrainConfig, *, only: Iterable[str] | None = None) -> dict[str, Any]:
    """The values a preset saved from ``config`` holds (model fields left out).

    Args:
        config: the settings to save.
        only: restrict to these fields (e.g. the ones that differ from the defaults).
    """
    values = {k: v for k, v in to_dict(config).items() if k not in MODEL_FIELDS}
    return values if only is None else {k: values[k] for k in only if k in values}


def changed_fields(config: TrainConfig, base: TrainConfig | None = None) -> list[str]:
    """Names of the fields where ``config`` differs from ``base`` (default: the defaults)."""
    base = base or TrainConfig()
    return [i.name for i in specs(TrainConfig) if getattr(config, i.name) != getattr(base, i.name)]


def save_preset(
    folder: Path, name: str, config: TrainConfig, *, description: str = "", overwrite: bool = False
) -> Path:
    """Save ``config`` as a user preset, atomically.

    Args:
        folder: the user presets folder (created).
        name: the preset's name; it also becomes the file name (made safe).
        config: the settings to store (all training fields; the model fields are left out).
        description: shown beside the name.
        overwrite: replace a user preset of the same name.

    Returns:
        The written file.

    Raises:
        ValueError: the name is a built-in preset's.
        FileExistsError: a user preset of that name exists and ``overwrite`` is False.
    """
    if any(p.name.casefold() == name.strip().casefold() for p in builtin_presets()):
        raise ValueError(f"{name!r} is a built-in preset; save under another name.")
    path = child_path(Path(folder), name, suffix=PRESET_SUFFIX, what="preset name")
    if path.exists() and not overwrite:
        raise FileExistsError(f"Preset {path} exists; choose another name or allow overwriting.")
    record = {"name": name.strip(), "description": description, "values": preset_values(config)}
    return atomic_write(path, json.dumps(record, indent=2) + "\n")


# --- the project's train.json ---------------------------------------------------------------

TRAIN_CONFIG_FILE = "train.json"


def save_train_config(path: Path, config: TrainConfig) -> Path:
    """Write the settings as ``{field: value}`` JSON (a project's ``train.json``), atomically."""
    return atomic_write(Path(path), json.dumps(to_dict(config), indent=2) + "\n")


def load_train_config(path: Path) -> TrainConfig:
    """Read settings saved by :func:`save_train_config`; missing fields take their defaults.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not JSON, or an invalid field (the message names the file and the field).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; save the Train tab's settings first.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return from_dict(TrainConfig, data)
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from None
