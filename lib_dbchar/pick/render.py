"""Draw the same prompts with many checkpoints of one model, one checkpoint after another.

A grid compares the source model and every checkpoint of a run; they all share one architecture,
so one set of modules (UNet, VAE, text encoder) is built once and each checkpoint's tensors are
converted in memory (:func:`~lib_dbchar.checkpoint.ldm_to_diffusers`) and copied into it
(``load_state_dict`` copies into the existing parameters: no second copy of the model, no
diffusers folder written per checkpoint). Images come from
:class:`~lib_dbchar.train.sampling.Sampler`, so a cell depends only on the weights, the prompt, the
seed and the settings -- the same as the previews the training run saved.

The Merge tab's preview uses the same renderer: one prompt and seed per merged result.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lib_dbchar.checkpoint import (
    CheckpointError,
    detect_kind,
    inspect_checkpoint,
    ldm_to_diffusers,
    load_checkpoint,
    match_text_encoder_keys,
)
from lib_dbchar.train.sampling import Sampler, SampleRequest

_PREDICTION = {"epsilon": "epsilon", "v": "v_prediction"}


class Renderer:
    """One set of SD modules that checkpoints are loaded into in turn, and a sampler over them.

    Build it with :func:`open_renderer`. Use as a context manager (or call :meth:`close`) to let
    go of the modules.

    Attributes:
        loaded: the checkpoint whose weights the modules hold (``None`` before :meth:`load`).
        kind: ``"sd1"`` / ``"sd2"`` of the loaded checkpoints (``None`` until known).
    """

    def __init__(self, sampler: Sampler, *, kind: str | None = None) -> None:
        self._sampler: Sampler | None = sampler
        self.kind = kind
        self.loaded: Path | None = None

    @property
    def sampler(self) -> Sampler:
        if self._sampler is None:
            msg = "this renderer is closed; open a new one"
            raise RuntimeError(msg)
        return self._sampler

    def load(self, checkpoint: Path) -> None:
        """Put the weights of a single-file checkpoint into the modules.

        Args:
            checkpoint: an ldm (A1111) ``.safetensors`` or ``.ckpt`` of the same architecture.

        Raises:
            FileNotFoundError: no such file.
            CheckpointError, UnsupportedCheckpoint: damaged, another architecture, or tensors that
                do not fit the modules (the message names the file).
        """
        path = Path(checkpoint)
        pipe = self.sampler.pipe
        # EMA copies are never drawn with (the webui draws with the regular weights too).
        state = load_checkpoint(path, ema="drop")
        kind = detect_kind(state)
        if self.kind is not None and kind != self.kind:
            raise CheckpointError(
                f"{path.name} is an {kind} model but this grid draws {self.kind} models; "
                "only checkpoints of the run's source model belong in it."
            )
        parts = ldm_to_diffusers(state, kind=kind, text_model_prefix=True)
        del state  # the converted dicts share the tensors; drop the extra names early
        self.loaded = None  # a failure below leaves the modules half-loaded: do not draw with them
        _copy_into(pipe.unet, parts.unet, "UNet", path)
        _copy_into(pipe.vae, parts.vae, "VAE", path)
        text = match_text_encoder_keys(parts.text_encoder, pipe.text_encoder.state_dict().keys())
        _copy_into(pipe.text_encoder, text, "text encoder", path)
        self.kind = kind
        self.loaded = path

    def sample(self, request: SampleRequest) -> list[Any]:
        """Draw ``request`` with the loaded checkpoint.

        Returns:
            PIL RGB images of ``request.size`` pixels, one per seed, in order.

        Raises:
            RuntimeError: nothing is loaded (call :meth:`load` first, or it failed).
        """
        if self.loaded is None:
            msg = "no checkpoint is loaded; call load() first (a failed load leaves none loaded)"
            raise RuntimeError(msg)
        return self.sampler(request)

    def close(self) -> None:
        """Let go of the modules (and of cached GPU memory)."""
        if self._sampler is None:
            return
        device = str(self._sampler.device)
        self._sampler = None
        self.loaded = None
        if device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()

    def __enter__(self) -> Renderer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _copy_into(module: Any, tensors: Mapping[str, Any], what: str, path: Path) -> None:
    """Copy converted tensors into a module's parameters, failing with the file's name."""
    from lib_dbchar.train.model import shape_mismatch

    detail = shape_mismatch({k: tuple(v.shape) for k, v in module.state_dict().items()}, tensors)
    if detail:
        raise CheckpointError(
            f"{path.name}: its {what} does not fit the grid's model ({detail}). Is it a checkpoint of "
            "this run's source model?"
        )
    # load_state_dict copies (and casts fp16 files to the modules' dtype) in place.
    module.load_state_dict(dict(tensors), strict=True)


def _build_modules(configs: Mapping[str, Mapping[str, Any]], device: str) -> tuple[Any, Any, Any]:
    """UNet, VAE and text encoder from their configs, with uninitialised weights on ``device``.

    Every :meth:`Renderer.load` overwrites all parameters, so drawing random initial weights
    (half a minute for SD 1.x on a busy CPU) would be wasted: the modules are built on the
    ``meta`` device (shapes only) and then given empty storage on ``device``. The one buffer a
    checkpoint does not carry -- the text encoder's ``position_ids`` when transformers keeps it
    out of the state dict -- is filled here.
    """
    import torch

    from lib_dbchar.train.model import build_component

    # fork_rng: whatever initialisation runs must not move the caller's random stream.
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        built = [build_component(name, configs[name]) for name in ("unet", "vae", "text_encoder")]
    modules = tuple(m.to_empty(device=device).eval() for m in built)
    for module in modules:
        _fill_unsaved_buffers(module)
    return modules


def _fill_unsaved_buffers(module: Any) -> None:
    """Give buffers outside the state dict (never loaded) their values.

    Raises:
        RuntimeError: a buffer this code does not know (a new library version); its value
            cannot be guessed, and drawing with garbage in it would be silently wrong.
    """
    import torch

    saved = set(module.state_dict())
    for name, buffer in module.named_buffers():
        if name in saved:
            continue
        if not name.endswith("position_ids"):
            msg = f"{type(module).__name__}.{name}: a buffer the renderer cannot fill; please report this"
            raise RuntimeError(msg)
        with torch.no_grad():
            positions = torch.arange(buffer.shape[-1], device=buffer.device, dtype=buffer.dtype)
            buffer.copy_(positions.expand_as(buffer))


def _load_tokenizer(model_folder: Path | None, kind: str) -> Any:
    from transformers import CLIPTokenizer

    from lib_dbchar.train.tokenizer import find_tokenizer, write_tokenizer

    if model_folder is not None and (Path(model_folder) / "tokenizer" / "vocab.json").is_file():
        return CLIPTokenizer.from_pretrained(str(Path(model_folder) / "tokenizer"), local_files_only=True)
    source = find_tokenizer(config_dir=model_folder)
    # The tokenizer files are written to a scratch folder only to be read back into memory.
    with tempfile.TemporaryDirectory(prefix="dbchar-tokenizer-") as scratch:
        folder = write_tokenizer(source, Path(scratch) / "tokenizer", model_kind=kind)
        return CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)


def _folder_description(model_folder: Path) -> tuple[str | None, str]:
    """(kind or None, prediction type) of a diffusers folder (a run's ``working/`` records its kind)."""
    folder = Path(model_folder)
    scheduler = folder / "scheduler" / "scheduler_config.json"
    if not scheduler.is_file():
        raise FileNotFoundError(
            f"{folder} is not a diffusers model folder (no scheduler/scheduler_config.json); give a run's "
            "working/ folder or a diffusers model."
        )
    prediction = json.loads(scheduler.read_text(encoding="utf-8")).get("prediction_type", "epsilon")
    record = folder / "source.json"
    kind = json.loads(record.read_text(encoding="utf-8")).get("kind") if record.is_file() else None
    return kind, prediction


def _checkpoint_description(checkpoint: Path) -> tuple[str, str]:
    info = inspect_checkpoint(checkpoint)
    if info.arch not in ("sd1", "sd2"):
        raise CheckpointError(f"{Path(checkpoint).name} is an {info.arch} model; the grid draws SD 1.x/2.x.")
    return info.arch, _PREDICTION.get(info.prediction, "epsilon")


def _autocast_dtype(dtype: Any) -> Any:
    """Half precision runs under autocast over fp32 weights, as the training previews do."""
    import torch

    if dtype is None or dtype == torch.float32:
        return None
    if dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"dtype: {dtype} is not one of float32, float16, bfloat16")
    return dtype


def open_renderer(
    *,
    model_folder: Path | None = None,
    checkpoint: Path | None = None,
    device: str = "cpu",
    dtype: Any = None,
    scheduler: str = "ddim",
    clip_skip: int = 1,
) -> Renderer:
    """Build the modules once, ready to draw checkpoints of one model.

    Args:
        model_folder: a diffusers folder whose configs, scheduler config and tokenizer describe the
            checkpoints (a run's ``working/`` folder; the tiny test models). Its weights are not read.
        checkpoint: a single file to load at once; without ``model_folder`` its kind and prediction
            type choose the shipped SD1/SD2 configs.
        device: ``"cpu"``, ``"cuda"``, ...
        dtype: ``None``/``torch.float32``, or ``torch.float16``/``torch.bfloat16`` to draw under
            autocast (the weights stay float32; the VAE always decodes in float32).
        scheduler: ``ddim``, ``euler_a`` or ``dpmpp_2m``.
        clip_skip: as the run was trained (``TrainConfig.clip_skip``).

    Returns:
        A :class:`Renderer`; with ``checkpoint`` it is loaded.

    Raises:
        ValueError: neither ``model_folder`` nor ``checkpoint``; an unknown scheduler or dtype.
        FileNotFoundError, CheckpointError, UnsupportedCheckpoint, TokenizerNotFound: as named.
    """
    from lib_dbchar.train.model import component_configs

    if model_folder is None and checkpoint is None:
        msg = "open_renderer: give model_folder (a diffusers folder) or checkpoint (a single file)"
        raise ValueError(msg)
    autocast = _autocast_dtype(dtype)
    if model_folder is not None:
        kind, prediction = _folder_description(Path(model_folder))
        configs = component_configs(kind or "sd1", prediction, Path(model_folder))
    else:
        kind, prediction = _checkpoint_description(Path(checkpoint))
        configs = component_configs(kind, prediction)
    unet, vae, text_encoder = _build_modules(configs, device)
    tokenizer = _load_tokenizer(model_folder, kind or "sd1")
    sampler = Sampler(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler_config=configs["scheduler"],
        scheduler=scheduler,
        device=device,
        autocast_dtype=autocast,
        clip_skip=clip_skip,
    )
    renderer = Renderer(sampler, kind=kind)
    if checkpoint is not None:
        renderer.load(Path(checkpoint))
    return renderer
