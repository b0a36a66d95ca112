"""The source checkpoint, converted once into a diffusers "working" folder inside the run.

Users pick a single-file checkpoint (``.safetensors``) from the webui's list. Training needs the
diffusers components, so the file is split with :mod:`lib_dbchar.checkpoint` and written as a
diffusers folder with **local** configs only: the JSON configs shipped in
``lib_dbchar/train/configs/`` (SD1.x, SD2.x) or those of a diffusers folder the caller names (the
tests' tiny models), and a CLIP tokenizer found offline (:mod:`~lib_dbchar.train.tokenizer`).
Nothing is fetched from the hub.

The folder is written under a temporary name and renamed when complete, so a half-converted model
is never used. ``source.json`` records which file it came from; a run keeps using its working folder
(resume) and refuses a different source.

Tensors the conversion does not carry (SD2's unused last text layer, noise-schedule buffers, ...)
are kept in ``extras.safetensors`` and written back into every checkpoint, so a trained file has the
same keys as its source (EMA copies and the VAE's training loss are dropped).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lib_dbchar.checkpoint import (
    CheckpointError,
    UnsupportedCheckpoint,
    detect_kind,
    diffusers_to_ldm,
    ldm_to_diffusers,
    load_single_file,
    read_metadata,
    save_single_file,
    unconverted_keys,
)
from lib_dbchar.paths import atomic_write
from lib_dbchar.train.tokenizer import find_tokenizer, write_tokenizer
from lib_dbchar.version import __version__

CONFIGS_DIR = Path(__file__).resolve().parent / "configs"
SOURCE_RECORD = "source.json"
EXTRAS_FILE = "extras.safetensors"
# Keys of a source file that never go into a trained checkpoint.
_DROPPED_PREFIXES = ("model_ema.", "first_stage_model.loss.")
_COMPONENT_FILES = {
    "unet": "diffusion_pytorch_model.safetensors",
    "vae": "diffusion_pytorch_model.safetensors",
    "text_encoder": "model.safetensors",
}
_MODELSPEC = {"epsilon": "epsilon", "v_prediction": "v"}
_ARCHITECTURE = {
    ("sd1", "epsilon"): "stable-diffusion-v1",
    ("sd2", "epsilon"): "stable-diffusion-v2-512",
    ("sd2", "v_prediction"): "stable-diffusion-v2-768-v",
}


@dataclass(frozen=True)
class WorkingModel:
    """A converted source model.

    Attributes:
        folder: the diffusers folder (``model_index.json``, ``unet/``, ``vae/``, ...).
        kind: ``"sd1"`` or ``"sd2"``.
        prediction_type: ``"epsilon"`` or ``"v_prediction"``.
        source: the single file it was converted from.
        tokenizer_origin: where the tokenizer came from (for the log).
    """

    folder: Path
    kind: str
    prediction_type: str
    source: Path
    tokenizer_origin: str = ""

    @property
    def extras_file(self) -> Path:
        return self.folder / EXTRAS_FILE


# --- reading the source ----------------------------------------------------------------------


def read_source(path: Path) -> dict[str, Any]:
    """Every tensor of a source checkpoint.

    Raises:
        FileNotFoundError: the file does not exist.
        UnsupportedCheckpoint: a pickled ``.ckpt`` when no safe reader for it is installed.
        CheckpointError: a damaged file.
    """
    path = Path(path)
    if path.suffix.lower() in (".ckpt", ".pt", ".pth"):
        return _read_pickled(path)
    return load_single_file(path)


def _read_pickled(path: Path) -> dict[str, Any]:
    # The restricted .ckpt reader lives in the checkpoint package when installed; it never runs
    # code from the file. Without it we refuse rather than unpickle.
    try:
        from lib_dbchar.checkpoint import legacy
    except ImportError:
        legacy = None
    if legacy is None or not hasattr(legacy, "load_ckpt"):
        raise UnsupportedCheckpoint(
            f"{path}: .ckpt files are not read by this version; convert it to .safetensors first."
        )
    from lib_dbchar.checkpoint import unwrap_state_dict

    return unwrap_state_dict(legacy.load_ckpt(path))


def _yaml_prediction(path: Path) -> str | None:
    """``v_prediction`` / ``epsilon`` from a ``<name>.yaml`` beside the checkpoint, if there is one."""
    yaml = path.with_suffix(".yaml")
    if not yaml.is_file():
        return None
    text = yaml.read_text(encoding="utf-8", errors="replace")
    for line in text.splitlines():
        key, _, value = line.strip().partition(":")
        if key.strip() == "parameterization":
            return "v_prediction" if value.strip().strip("\"'") == "v" else "epsilon"
    return "epsilon"


def detect_prediction_type(path: Path, metadata: Mapping[str, str], kind: str, choice: str = "auto") -> str:
    """Decide whether the model predicts noise (epsilon) or velocity (v).

    SD2-v and SD2-base have the same keys and shapes, so the weights cannot tell. In order: the
    user's choice, a ``<name>.yaml`` beside the file (the webui's convention), the
    ``modelspec.prediction_type`` metadata, and for SD1.x epsilon.

    Args:
        path: the source checkpoint.
        metadata: its safetensors metadata.
        kind: ``"sd1"`` or ``"sd2"``.
        choice: ``TrainConfig.prediction_type``.

    Returns:
        ``"epsilon"`` or ``"v_prediction"``.

    Raises:
        ValueError: an SD2.x file with nothing that says which it is (naming the field to set).
    """
    if choice != "auto":
        return choice
    from_yaml = _yaml_prediction(Path(path))
    if from_yaml:
        return from_yaml
    spec = str(metadata.get("modelspec.prediction_type", "")).strip().lower()
    if spec in ("v", "v_prediction", "v-prediction"):
        return "v_prediction"
    if spec in ("epsilon", "eps"):
        return "epsilon"
    if kind == "sd1":
        return "epsilon"
    raise ValueError(
        f"TrainConfig.prediction_type: {Path(path).name} is an SD 2.x model and nothing says whether it "
        "predicts v (SD 2.x 768 models) or noise (SD 2.x 512 base models); choose v_prediction or epsilon. "
        "A wrong choice trains towards brown noise."
    )


# --- configs ---------------------------------------------------------------------------------


def _load_json(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def component_configs(kind: str, prediction_type: str, config_dir: Path | None = None) -> dict[str, dict]:
    """The configs of the four components, from ``config_dir`` or the shipped ones.

    Args:
        kind: ``"sd1"`` or ``"sd2"``.
        prediction_type: written into the scheduler config.
        config_dir: a diffusers folder whose ``unet/``, ``vae/``, ``text_encoder/`` and ``scheduler/``
            configs describe the checkpoint (for models that are not standard SD sizes).

    Returns:
        ``{"unet": ..., "vae": ..., "text_encoder": ..., "scheduler": ...}``.
    """
    if config_dir is not None:
        folder = Path(config_dir)
        configs = {name: _load_json(folder / name / "config.json") for name in _COMPONENT_FILES}
        configs["scheduler"] = _load_json(folder / "scheduler" / "scheduler_config.json")
    else:
        configs = {name: _load_json(CONFIGS_DIR / kind / f"{name}.json") for name in _COMPONENT_FILES}
        configs["scheduler"] = _load_json(CONFIGS_DIR / "scheduler.json")
        if prediction_type == "v_prediction":
            # SD 2.x v models are the 768 ones.
            configs["unet"]["sample_size"] = 96
            configs["vae"]["sample_size"] = 768
    configs["scheduler"]["prediction_type"] = prediction_type
    return configs


def build_component(name: str, config: Mapping[str, Any]) -> Any:
    """A ``unet``, ``vae`` or ``text_encoder`` module built from its config (randomly initialised).

    Built on torch's current default device: under ``torch.device("meta")`` it has shapes only.
    """
    if name == "unet":
        from diffusers import UNet2DConditionModel

        return UNet2DConditionModel.from_config(dict(config))
    if name == "vae":
        from diffusers import AutoencoderKL

        return AutoencoderKL.from_config(dict(config))
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(**{k: v for k, v in config.items() if k != "architectures"}))


def _expected_shapes(name: str, config: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Parameter shapes of a component built from ``config``, without allocating memory."""
    import torch

    with torch.device("meta"):
        module = build_component(name, config)
    return {key: tuple(value.shape) for key, value in module.state_dict().items()}


def shape_mismatch(expected: Mapping[str, tuple[int, ...]], tensors: Mapping[str, Any]) -> str:
    """How ``tensors`` fail to fit a module's parameters, in a few words ("" when they fit).

    Args:
        expected: the module's parameter shapes by key.
        tensors: the converted tensors by key.

    Returns:
        Up to three missing, unexpected and wrongly shaped keys per kind, e.g.
        ``"missing: a, b; other shape: c"``.
    """
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = sorted(k for k in set(expected) & set(tensors) if tuple(tensors[k].shape) != tuple(expected[k]))
    return "; ".join(
        f"{label}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("other shape", wrong))
        if keys
    )


def check_component(
    name: str, tensors: Mapping[str, Any], config: Mapping[str, Any], *, source: Path
) -> None:
    """Check that converted tensors fit the component a config describes.

    Raises:
        CheckpointError: missing or unexpected keys or wrong shapes, naming a few and the fix.
    """
    from lib_dbchar.checkpoint import match_text_encoder_keys

    expected = _expected_shapes(name, config)
    if name == "text_encoder":
        tensors = match_text_encoder_keys(tensors, expected.keys())
    detail = shape_mismatch(expected, tensors)
    if detail:
        raise CheckpointError(
            f"{source.name}: its {name} does not match the standard configuration ({detail}). It is not a "
            "standard SD 1.x/2.x model; give a diffusers folder with matching configs (model config folder)."
        )


# --- the working folder ----------------------------------------------------------------------


def _source_record(source: Path, kind: str, prediction_type: str, tokenizer_origin: str) -> dict[str, Any]:
    stat = source.stat()
    return {
        "source": str(source.resolve()),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "kind": kind,
        "prediction_type": prediction_type,
        "tokenizer": tokenizer_origin,
        "dbchar": __version__,
    }


def open_working_model(folder: Path) -> WorkingModel | None:
    """The working model already in ``folder``, or ``None`` when there is none (or it is incomplete)."""
    record_path = Path(folder) / SOURCE_RECORD
    if not record_path.is_file():
        return None
    record = _load_json(record_path)
    return WorkingModel(
        Path(folder),
        record["kind"],
        record["prediction_type"],
        Path(record["source"]),
        record.get("tokenizer", ""),
    )


def prepare_working_model(
    source: Path,
    folder: Path,
    *,
    prediction_type: str = "auto",
    config_dir: Path | None = None,
    tokenizer_dir: Path | None = None,
) -> WorkingModel:
    """Convert ``source`` into a diffusers folder at ``folder``, or reuse the one already there.

    Args:
        source: the single-file checkpoint.
        folder: where the working model lives (``runs/<run>/working``).
        prediction_type: ``"auto"``, ``"epsilon"`` or ``"v_prediction"``.
        config_dir: a diffusers folder with configs to use instead of the shipped SD1/SD2 ones.
        tokenizer_dir: a CLIP tokenizer folder (see :func:`~lib_dbchar.train.tokenizer.find_tokenizer`).

    Returns:
        The :class:`WorkingModel`.

    Raises:
        ValueError: the folder was made from another checkpoint (start a new run instead), or the
            prediction type cannot be told.
        CheckpointError, UnsupportedCheckpoint: the source cannot be read or converted (SDXL: not yet).
        TokenizerNotFound: no CLIP vocabulary on this machine.
    """
    source, folder = Path(source), Path(folder)
    existing = open_working_model(folder)
    if existing is not None:
        if existing.source != source.resolve():
            raise ValueError(
                f"This run was started from {existing.source.name} ({existing.source}); it cannot continue "
                f"from {source.name}. Start a new run for another source model."
            )
        return existing
    if not source.is_file():
        raise FileNotFoundError(f"Source checkpoint {source} does not exist; pick one from the list.")
    state_dict = read_source(source)
    metadata = read_metadata(source) if source.suffix.lower() == ".safetensors" else {}
    kind = detect_kind(state_dict)
    prediction = detect_prediction_type(source, metadata, kind, prediction_type)
    configs = component_configs(kind, prediction, config_dir)
    components = ldm_to_diffusers(state_dict, kind=kind, text_model_prefix=True)._asdict()
    for name, tensors in components.items():
        check_component(name, tensors, configs[name], source=source)
    tokenizer = find_tokenizer(explicit=tokenizer_dir, config_dir=config_dir)
    extras = {
        k: state_dict[k]
        for k in unconverted_keys(state_dict, kind=kind)
        if not k.startswith(_DROPPED_PREFIXES)
    }
    record = _source_record(source, kind, prediction, tokenizer.origin)
    _write_folder(
        folder,
        components=components,
        configs=configs,
        extras=extras,
        record=record,
        tokenizer=tokenizer,
        kind=kind,
    )
    return WorkingModel(folder, kind, prediction, source.resolve(), tokenizer.origin)


def _write_folder(
    folder: Path,
    *,
    components: Mapping[str, Mapping[str, Any]],
    configs: Mapping[str, Mapping[str, Any]],
    extras: Mapping[str, Any],
    record: Mapping[str, Any],
    tokenizer: Any,
    kind: str,
) -> None:
    """Write everything into a temporary sibling folder, then rename it into place."""
    from safetensors.torch import save_file

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        for name, filename in _COMPONENT_FILES.items():
            (tmp / name).mkdir()
            tensors = {k: v.contiguous() for k, v in components[name].items()}
            save_file(tensors, str(tmp / name / filename), metadata={"format": "pt"})
            (tmp / name / "config.json").write_text(json.dumps(configs[name], indent=2), encoding="utf-8")
        (tmp / "scheduler").mkdir()
        (tmp / "scheduler" / "scheduler_config.json").write_text(
            json.dumps(configs["scheduler"], indent=2), encoding="utf-8"
        )
        write_tokenizer(tokenizer, tmp / "tokenizer", model_kind=kind)
        if extras:
            save_file({k: v.contiguous() for k, v in extras.items()}, str(tmp / EXTRAS_FILE))
        (tmp / "model_index.json").write_text(json.dumps(pipeline_index(), indent=2), encoding="utf-8")
        # source.json last: its presence marks a complete folder.
        (tmp / SOURCE_RECORD).write_text(json.dumps(dict(record), indent=2), encoding="utf-8")
        tmp.replace(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def pipeline_index() -> dict[str, Any]:
    """The ``model_index.json`` of an SD1/SD2 diffusers folder (no safety checker)."""
    return {
        "_class_name": "StableDiffusionPipeline",
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "DDIMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }


# --- loading and saving ----------------------------------------------------------------------


@dataclass
class Components:
    """The loaded modules of a working model (fp32 unless asked otherwise)."""

    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    scheduler_config: dict[str, Any]


def load_components(model: WorkingModel) -> Components:
    """Load the working model's modules in float32 on the CPU (the caller moves them).

    Training keeps fp32 master weights and lets autocast run the maths in half precision:
    training from fp16 weights under a gradient scaler fails ("Attempting to unscale FP16
    gradients"), so files stored in fp16 are upcast here.
    """
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    folder = model.folder
    options = {"torch_dtype": torch.float32, "local_files_only": True}
    return Components(
        unet=UNet2DConditionModel.from_pretrained(folder / "unet", **options),
        vae=AutoencoderKL.from_pretrained(folder / "vae", **options),
        text_encoder=CLIPTextModel.from_pretrained(folder / "text_encoder", **options),
        tokenizer=CLIPTokenizer.from_pretrained(str(folder / "tokenizer"), local_files_only=True),
        scheduler_config=_load_json(folder / "scheduler" / "scheduler_config.json"),
    )


def checkpoint_metadata(model: WorkingModel, recipe: Mapping[str, Any]) -> dict[str, Any]:
    """Safetensors metadata of a trained checkpoint: the recipe plus what loaders look for."""
    return {
        "dbchar.recipe": dict(recipe),
        "dbchar.version": __version__,
        "modelspec.prediction_type": _MODELSPEC[model.prediction_type],
        "modelspec.architecture": _ARCHITECTURE.get((model.kind, model.prediction_type), model.kind),
    }


def export_checkpoint(
    model: WorkingModel,
    unet: Mapping[str, Any],
    vae: Mapping[str, Any],
    text_encoder: Mapping[str, Any],
    path: Path,
    *,
    recipe: Mapping[str, Any],
) -> Path:
    """Write trained weights as an fp16 single-file checkpoint the webui lists.

    Args:
        model: the working model (kind, prediction type, extras).
        unet, vae, text_encoder: component state dicts (any float dtype).
        path: the ``.safetensors`` target; replaced atomically if it exists.
        recipe: how the weights were made (stored as JSON in the metadata).

    Returns:
        ``path``. A ``<name>.yaml`` beside the source is copied beside the checkpoint, so the
        webui configures it the same way (SD 2.x v models need it).
    """
    state_dict = diffusers_to_ldm(unet, vae, text_encoder, kind=model.kind)
    if model.extras_file.is_file():
        extras = load_single_file(model.extras_file)
        state_dict.update({k: v for k, v in extras.items() if k not in state_dict})
    save_single_file(state_dict, path, checkpoint_metadata(model, recipe), fp16=True, overwrite=True)
    yaml = model.source.with_suffix(".yaml")
    if yaml.is_file():
        atomic_write(Path(path).with_suffix(".yaml"), yaml.read_bytes())
    return Path(path)


__all__ = [
    "CheckpointError",
    "Components",
    "WorkingModel",
    "detect_prediction_type",
    "export_checkpoint",
    "load_components",
    "prepare_working_model",
]
