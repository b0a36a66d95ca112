"""Dreambooth with prior preservation: ``train(spec, ctx)``.

The shape is the one of diffusers' ``examples/dreambooth/train_dreambooth.py`` -- helpers above,
one narrated loop below -- rewritten to run inside the webui's process (no ``accelerate launch``, no
``sys.argv``), to take a :class:`~lib_dbchar.jobs.JobContext` for progress and stop, and to resume
bit for bit:

* every random draw of a step (VAE latent sample, noise, offset noise, timesteps) comes from one
  CPU ``torch.Generator`` whose state is saved; the data order and the caption shuffles are pure
  functions of ``(seed, epoch, position)`` (:mod:`~lib_dbchar.train.data`); the learning rate is a
  pure function of the step. So a run stopped at step ``n`` and resumed continues exactly as if it
  had never stopped (on the same machine, same thread count).
* weights are trained in float32 ("master weights"); mixed precision only runs the forward pass
  under autocast, with a gradient scaler for fp16.

Outputs (see :mod:`~lib_dbchar.train.run` for the folder): fp16 single-file checkpoints in the
host's checkpoint folder every N epochs, previews with fixed seeds, a JSONL loss log and TensorBoard
scalars, the resume state.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from lib_dbchar.concept import sample_negative_prompt, sample_prompt, validate_concept
from lib_dbchar.config import to_dict
from lib_dbchar.errors import DbcharError, TargetExists
from lib_dbchar.jobs import JobContext
from lib_dbchar.paths import atomic_write
from lib_dbchar.train import text
from lib_dbchar.train.config import (
    TrainConfig,
    resolved_attention,
    validate_config,
    validate_for_device,
    xformers_available,
)
from lib_dbchar.train.data import (
    BatchPlan,
    ConceptData,
    Sample,
    load_concept_data,
    load_pixels,
    plan_batch,
    steps_per_epoch,
)
from lib_dbchar.train.distributed import SINGLE, Processes, balance_warning
from lib_dbchar.train.guards import diverged, out_of_memory
from lib_dbchar.train.model import (
    Components,
    WorkingModel,
    export_checkpoint,
    load_components,
    prepare_working_model,
)
from lib_dbchar.train.optim import StepInBackward, build_optimizer, build_scaler
from lib_dbchar.train.plan import ConceptCounts, StepsPlan, plan_steps
from lib_dbchar.train.run import (
    CheckpointRecord,
    EventFn,
    RunFolders,
    RunSpec,
    TrainEvent,
    TrainingStopped,
    TrainResult,
    read_checkpoint_records,
    save_run_spec,
    truncate_loss_log,
    write_checkpoint_records,
)
from lib_dbchar.train.state import Counters, counters_from, load_state, save_state
from lib_dbchar.train.tbevents import EventWriter, trim_events
from lib_dbchar.version import __version__

log = logging.getLogger("dbchar.train")

# Settings that may change between a stop and a resume without changing the maths of the steps.
RESUMABLE_CHANGES = frozenset(
    {
        "epochs", "max_steps", "lifetime_epochs", "save_every_epochs", "preview_every_epochs", "save_on_stop",
        "preview_seed", "preview_steps", "preview_guidance_scale", "previews_per_concept", "class_steps",
        "class_guidance_scale", "class_batch_size", "scheduler", "source_checkpoint",
    }
)  # fmt: skip
# Changing these makes the saved optimizer state unusable.
OPTIMIZER_SHAPING = ("train_text_encoder", "use_8bit_adam", "optimizer_in_backward")


# --- helpers: numbers ----------------------------------------------------------------------


def remaining_steps(counters: Counters, config: TrainConfig, per_epoch: int) -> int:
    """Steps left before the run stops on its own (epochs or max steps, whichever is first).

    With ``lifetime_epochs`` both limits count from the run's start, otherwise from where this
    session began.
    """
    epoch_base = 0 if config.lifetime_epochs else counters.session_epoch
    step_base = 0 if config.lifetime_epochs else counters.session_step
    by_epochs = (config.epochs - (counters.epoch - epoch_base)) * per_epoch - counters.index
    left = by_epochs
    if config.max_steps:
        left = min(left, config.max_steps - (counters.step - step_base))
    return max(0, left)


def learning_rate_at(config: TrainConfig, position: int, length: int) -> float:
    """The learning rate of the step at ``position`` (0-based) of a schedule ``length`` steps long.

    Warmup ramps linearly from ``lr / warmup`` to ``lr``; ``cosine`` and ``linear`` then decay
    to 0 at the end of the schedule; ``constant`` stays (the guide).
    """
    lr = config.learning_rate
    warmup = config.lr_warmup_steps
    if position < warmup:
        return lr * (position + 1) / warmup
    if config.lr_scheduler == "constant":
        return lr
    progress = min(1.0, (position - warmup) / max(1, length - warmup))
    if config.lr_scheduler == "cosine":
        return lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    return lr * (1.0 - progress)


def snr_weights(alphas_cumprod: Any, timesteps: Any, gamma: float, prediction_type: str) -> Any:
    """Min-SNR loss weights per sample (Hang et al. 2023, arXiv:2303.09556).

    ``snr = a / (1 - a)`` with ``a = alphas_cumprod[t]``; the weight is ``min(snr, gamma) / snr``
    for noise prediction and ``min(snr, gamma) / (snr + 1)`` for v prediction.
    """
    import torch

    alpha = alphas_cumprod.to(timesteps.device)[timesteps].float()
    snr = alpha / (1.0 - alpha)
    clipped = torch.minimum(snr, torch.full_like(snr, gamma))
    return clipped / (snr + 1.0) if prediction_type == "v_prediction" else clipped / snr


def dataset_fingerprint(data: Sequence[ConceptData]) -> str:
    """A hash of the pictures' names and captions and of the class images (to notice changes on resume)."""
    digest = hashlib.sha256()
    for concept in data:
        for image in (*concept.images, *concept.class_images):
            digest.update(f"{concept.index}|{image.path.name}|{image.caption}\n".encode())
    return digest.hexdigest()[:16]


# --- helpers: building ---------------------------------------------------------------------


def _dtype(name: str) -> Any:
    import torch

    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(name)


def set_attention(unet: Any, vae: Any, choice: str) -> None:
    """Pick the attention implementation: xformers, PyTorch SDPA, or plain matmuls."""
    if choice == "xformers":
        unet.enable_xformers_memory_efficient_attention()
        vae.enable_xformers_memory_efficient_attention()
        return
    from diffusers.models import attention_processor as ap

    processor = ap.AttnProcessor2_0 if choice == "sdpa" else ap.AttnProcessor
    unet.set_attn_processor(processor())
    vae.set_attn_processor(processor())


def _is_oom(exc: BaseException) -> bool:
    import torch

    kinds = tuple(
        k
        for k in (getattr(torch, "OutOfMemoryError", None), getattr(torch.cuda, "OutOfMemoryError", None))
        if k
    )
    return isinstance(exc, kinds)


# --- the session: everything one call of train() holds -----------------------------------------


@dataclass
class _Session:
    spec: RunSpec
    config: TrainConfig
    folders: RunFolders
    ctx: JobContext
    emit: EventFn
    model: WorkingModel
    parts: Components
    data: list[ConceptData]
    device: Any
    noise_scheduler: Any
    optimizer: Any
    optimizer_name: str
    scaler: Any
    trainable: list[Any]
    generator: Any
    counters: Counters
    per_epoch: int
    target_step: int
    plan: StepsPlan
    writer: EventWriter | _NoWriter
    warnings: list[str]
    records: list[CheckpointRecord]
    group: Processes = SINGLE
    unet_forward: Any = None  # the UNet's forward (through DDP with several processes)
    te_forward: Any = None  # the text encoder's, while it trains
    latents: dict[Path, tuple[Any, Any]] | None = None
    sampler: Any = None
    previews: list[str] = field(default_factory=list)
    last_state_step: int | None = None
    last_checkpoint_step: int | None = None
    last_preview_step: int | None = None
    last_loss: float | None = None
    step_seconds: list[float] = field(default_factory=list)


class _NoWriter:
    """The event writer of the processes other than rank 0 (only rank 0 writes logs)."""

    def add_scalars(self, step: int, scalars: Any, *, wall_time: float | None = None) -> None:
        """Nothing."""

    def close(self) -> None:
        """Nothing."""


@dataclass(frozen=True)
class StepLosses:
    loss: float
    instance: float
    prior: float | None


def _no_event(_: TrainEvent) -> None:
    """The default ``on_event``: nothing."""


def train(
    spec: RunSpec,
    ctx: JobContext | None = None,
    *,
    resume: bool = False,
    on_event: EventFn | None = None,
    processes: Processes = SINGLE,
) -> TrainResult:
    """Train a Dreambooth model with prior preservation.

    Args:
        spec: the run (project, concepts, settings, checkpoint folder, device). The source
            checkpoint in ``spec.config.source_checkpoint`` must be a file path.
        ctx: progress (one unit per step; class image generation reports its own) and stop.
        resume: continue from the run's saved state (an interrupted session continues where it
            stopped; a finished one starts a new session on top, e.g. with more epochs).
        on_event: receives a :class:`~lib_dbchar.train.run.TrainEvent` per step, checkpoint and
            preview (the Train tab's live loss chart and gallery).
        processes: this process's place in a multi-process run (``torchrun``/``accelerate launch``,
            joined by :func:`~lib_dbchar.train.distributed.process_group`); see
            :mod:`~lib_dbchar.train.distributed`. Only rank 0 reports progress, emits events and
            writes; a stop asked in any process stops all at the same step.

    Returns:
        The :class:`~lib_dbchar.train.run.TrainResult` of a run that reached its end.

    Raises:
        ValueError: invalid settings or concepts (the message names the field).
        TargetExists: the run already has a saved state and ``resume`` is False.
        TrainingStopped: the user stopped; the state (and, with ``save_on_stop``, a checkpoint) is
            saved; the exception's ``result`` lists what was written.
        TrainingDiverged: the loss became NaN/inf (step, likely cause, fix).
        TrainingOutOfMemory: the GPU ran out of memory (the switches to try).
        CheckpointError, TokenizerNotFound: the source model cannot be used.
    """
    ctx = ctx or JobContext()
    emit = on_event or _no_event
    if not processes.is_main:
        ctx, emit = JobContext(should_stop=ctx.should_stop), _no_event
    session = _prepare(spec, ctx, resume=resume, emit=emit, group=processes)
    try:
        return _run(session)
    finally:
        session.writer.close()


# --- preparing ---------------------------------------------------------------------------------


def _validate(spec: RunSpec, group: Processes) -> TrainConfig:
    config = validate_config(spec.config)
    validate_for_device(config, spec.device)
    if group.distributed and config.optimizer_in_backward:
        msg = (
            f"TrainConfig.optimizer_in_backward: not possible with {group.world_size} processes (each "
            "weight would step on its own process's gradient, before the average); turn it off."
        )
        raise ValueError(msg)
    if not spec.concepts:
        msg = "RunSpec.concepts: a run needs at least one concept; fill in the Concept tab."
        raise ValueError(msg)
    for i, concept in enumerate(spec.concepts):
        validate_concept(concept, index=i)
    if not config.source_checkpoint.strip():
        msg = "TrainConfig.source_checkpoint: pick the model to train from."
        raise ValueError(msg)
    return config


def _main_first(group: Processes, make: Any) -> Any:
    """``make()`` on rank 0 first (it may write files), then on the others, which find them made."""
    if group.is_main:
        made = make()
        group.barrier()
        return made
    group.barrier()
    return make()


def _prepare(spec: RunSpec, ctx: JobContext, *, resume: bool, emit: EventFn, group: Processes) -> _Session:
    import torch

    config = _validate(spec, group)
    folders = RunFolders(spec.run_dir)
    state = _existing_state(folders, config, resume=resume, run=spec.name)
    if group.is_main:
        save_run_spec(spec)
    data, warnings = load_concept_data(spec.concepts, spec.project_dir)
    if not any(c.images for c in data):
        folders_text = ", ".join(str(c.dataset_dir) for c in data)
        raise ValueError(f"Concept: no pictures in {folders_text}; add them in the Dataset tab.")
    ctx.report(0, 0, "Preparing the source model")
    model = _main_first(
        group,
        lambda: prepare_working_model(
            Path(config.source_checkpoint).expanduser(),
            folders.working,
            prediction_type=config.prediction_type,
            config_dir=spec.model_config_dir,
            tokenizer_dir=spec.tokenizer_dir,
        ),
    )
    parts = load_components(model)
    device = torch.device(group.device(spec.device))
    try:
        _place_modules(parts, config, device)
        if config.prior_preservation:
            scanned = data

            def class_images() -> list[ConceptData]:
                # The other processes scan again: rank 0 has drawn the missing images meanwhile.
                now = scanned if group.is_main else load_concept_data(spec.concepts, spec.project_dir)[0]
                return _ensure_class_images(
                    spec, config=config, model=model, parts=parts, data=now, ctx=ctx, emit=emit
                )

            data = _main_first(group, class_images)
    except Exception as exc:
        if _is_oom(exc):
            raise out_of_memory(
                config, step=0, last_state_step=None, detail=str(exc).splitlines()[0]
            ) from exc
        raise
    return _assemble(
        spec,
        config=config,
        folders=folders,
        ctx=ctx,
        emit=emit,
        model=model,
        parts=parts,
        data=data,
        device=device,
        state=state,
        warnings=warnings,
        group=group,
    )


def _existing_state(
    folders: RunFolders, config: TrainConfig, *, resume: bool, run: str
) -> dict[str, Any] | None:
    """The state to resume from (checked against ``config``), or ``None`` for a fresh start."""
    if resume:
        state = load_state(folders.state_file)
        for name in OPTIMIZER_SHAPING:
            was, now = state["config"].get(name), getattr(config, name)
            if was != now:
                raise ValueError(
                    f"TrainConfig.{name}: was {was} when the state was saved, now {now}; "
                    "set it back to resume, or start a new run."
                )
        return state
    if folders.state_file.is_file():
        raise TargetExists(
            f"Run {run!r} already has a saved state ({folders.state_file}); "
            "resume it, or use another run name."
        )
    return None


def _place_modules(parts: Components, config: TrainConfig, device: Any) -> None:
    """Move the modules to the device in the dtypes training uses.

    The UNet (and the text encoder when trained) stay float32: they are the master weights. A
    frozen text encoder runs in the autocast dtype to save memory. The VAE stays float32: fp16
    VAEs overflow into NaN on some images.
    """
    half = _dtype(config.mixed_precision)
    parts.unet.to(device)
    parts.vae.to(device)
    frozen_te_dtype = half if (half is not None and not config.train_text_encoder) else None
    parts.text_encoder.to(device=device, dtype=frozen_te_dtype)
    parts.vae.requires_grad_(False)
    attention = resolved_attention(config, have_xformers=xformers_available() and device.type == "cuda")
    set_attention(parts.unet, parts.vae, attention)


def _make_sampler(config: TrainConfig, parts: Components, device: Any) -> Any:
    from lib_dbchar.train.sampling import Sampler

    return Sampler(
        unet=parts.unet,
        vae=parts.vae,
        text_encoder=parts.text_encoder,
        tokenizer=parts.tokenizer,
        scheduler_config=parts.scheduler_config,
        scheduler=config.scheduler,
        device=str(device),
        autocast_dtype=_dtype(config.mixed_precision),
        clip_skip=config.clip_skip,
    )


def _ensure_class_images(
    spec: RunSpec,
    *,
    config: TrainConfig,
    model: WorkingModel,
    parts: Components,
    data: list[ConceptData],
    ctx: JobContext,
    emit: EventFn,
) -> list[ConceptData]:
    """Draw missing class images with the (still untrained) source model, then rescan."""
    from lib_dbchar.train.classes import generate_class_images, missing_class_images

    missing = any(missing_class_images(c, config.seed) for c in data)
    if missing:
        sampler = _make_sampler(config, parts, parts.unet.device)
        results = generate_class_images(data, sampler, config, device=spec.device, ctx=ctx)
        emit(TrainEvent("class_images", 0, 0, {"results": [r.to_dict() for r in results]}))
        data, _ = load_concept_data(spec.concepts, spec.project_dir)
    empty = [c for c in data if c.images and not c.class_images]
    if empty:
        raise ValueError(
            f"Concept {empty[0].index + 1}: no class images in {empty[0].class_dir}; "
            "set num_class_images above 0 or turn prior_preservation off."
        )
    return data


def _assemble(
    spec: RunSpec,
    *,
    config: TrainConfig,
    folders: RunFolders,
    ctx: JobContext,
    emit: EventFn,
    model: WorkingModel,
    parts: Components,
    data: list[ConceptData],
    device: Any,
    state: dict[str, Any] | None,
    warnings: list[str],
    group: Processes,
) -> _Session:
    """Optimizer, scaler, random generator, counters (fresh or from the state), logs."""
    import torch
    from diffusers import DDPMScheduler

    # Only what is trained gets gradients; the VAE (and a frozen text encoder) never do.
    parts.unet.requires_grad_(True)
    parts.unet.train()
    parts.text_encoder.requires_grad_(config.train_text_encoder)
    parts.text_encoder.train(config.train_text_encoder)
    if config.gradient_checkpointing:
        parts.unet.enable_gradient_checkpointing()
        if config.train_text_encoder:
            parts.text_encoder.gradient_checkpointing_enable()
    trainable = list(parts.unet.parameters())
    if config.train_text_encoder:
        trainable += list(parts.text_encoder.parameters())
    optimizer, optimizer_name, fallback = build_optimizer(
        trainable, config, min_8bit_size=spec.min_8bit_size, device=spec.device
    )
    if fallback:
        warnings.append(fallback)
    if balance_warning(config.batch_size, group):
        warnings.append(balance_warning(config.batch_size, group))
    generator = torch.Generator(device="cpu").manual_seed(config.seed)
    counters = Counters()
    scaler = build_scaler(config, spec.device)
    records = read_checkpoint_records(folders.checkpoints_record)
    last_state_step = None
    if state is not None:
        counters = _restore(
            state,
            config=config,
            data=data,
            parts=parts,
            optimizer=optimizer,
            scaler=scaler,
            generator=generator,
            warnings=warnings,
        )
        last_state_step = counters.step
        records = [r for r in records if r.step <= counters.step]
        if group.is_main:
            # The logs of a session that died after its last saved state go: the resumed session
            # logs those steps again.
            truncate_loss_log(folders.loss_log, counters.step)
            trim_events(folders.tensorboard, counters.step)
    pool = sum(len(c.images) for c in data)
    per_epoch = steps_per_epoch(pool, config.batch_size)
    counts = [ConceptCounts(len(c.images), len(c.class_images), len(c.class_images)) for c in data]
    session = _Session(
        spec=spec,
        config=config,
        folders=folders,
        ctx=ctx,
        emit=emit,
        model=model,
        parts=parts,
        data=data,
        device=device,
        noise_scheduler=DDPMScheduler.from_config(parts.scheduler_config),
        optimizer=optimizer,
        optimizer_name=optimizer_name,
        scaler=scaler,
        trainable=trainable,
        generator=generator,
        counters=counters,
        per_epoch=per_epoch,
        target_step=counters.step + remaining_steps(counters, config, per_epoch),
        plan=plan_steps(config, counts),
        writer=EventWriter(folders.tensorboard) if group.is_main else _NoWriter(),
        warnings=warnings,
        records=records,
        last_state_step=last_state_step,
        last_checkpoint_step=records[-1].step if records else None,
        group=group,
        # Wrapped after the restore: DDP starts by copying rank 0's weights to the others.
        unet_forward=group.wrap(parts.unet, static_graph=config.gradient_checkpointing),
        te_forward=(
            group.wrap(parts.text_encoder, static_graph=config.gradient_checkpointing)
            if config.train_text_encoder
            else parts.text_encoder
        ),
    )
    if config.cache_latents:
        session.latents = _cache_latents(session)
    _announce(session)
    return session


def _restore(
    state: dict[str, Any],
    *,
    config: TrainConfig,
    data: Sequence[ConceptData],
    parts: Components,
    optimizer: Any,
    scaler: Any,
    generator: Any,
    warnings: list[str],
) -> Counters:
    """Load weights, optimizer, scaler and random state; a finished session starts a new one on top."""
    from lib_dbchar.checkpoint import match_text_encoder_keys

    saved = state["config"]
    changed = sorted(
        k for k, v in to_dict(config).items() if k not in RESUMABLE_CHANGES and saved.get(k, v) != v
    )
    if changed:
        warnings.append(
            f"Changed since the state was saved: {', '.join(changed)}; "
            "the resumed run differs from an uninterrupted one."
        )
    if state.get("dataset") != dataset_fingerprint(data):
        warnings.append("The pictures, captions or class images changed since the state was saved.")
    parts.unet.load_state_dict(state["unet"])
    if state.get("text_encoder") is not None:
        te = parts.text_encoder
        te.load_state_dict(match_text_encoder_keys(state["text_encoder"], te.state_dict().keys()))
    optimizer.load_state_dict(state["optimizer"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    generator.set_state(state["generator"])
    counters = counters_from(state)
    if state.get("status") == "finished":
        counters = replace(counters, session_step=counters.step, session_epoch=counters.epoch)
    return counters


def _cache_latents(session: _Session) -> dict[Path, tuple[Any, Any]]:
    """Encode every picture and class image once; keep the latent distribution (mean, std) on the CPU.

    The distribution, not a sample, is cached: each step still draws its own sample from the run's
    generator, as without caching. The VAE then leaves the GPU until previews need it.
    """
    import torch

    vae, config = session.parts.vae, session.config
    images = [i for c in session.data for i in (*c.images, *c.class_images)]
    cache: dict[Path, tuple[Any, Any]] = {}
    with torch.no_grad():
        for n, image in enumerate(images):
            pixels = torch.from_numpy(load_pixels(image.path, config.resolution)).unsqueeze(0)
            dist = vae.encode(pixels.to(session.device, vae.dtype)).latent_dist
            cache[image.path] = (dist.mean[0].float().cpu(), dist.std[0].float().cpu())
            session.ctx.report(n + 1, len(images), f"Caching latents {n + 1}/{len(images)}")
    vae.to("cpu")
    return cache


def _announce(session: _Session) -> None:
    """The startup summary, once, in the log and as a message event."""
    s, c = session, session.config
    lines = [
        f"Run {s.spec.name}: {s.plan.images} pictures, {s.plan.class_images} class images, "
        f"batch {c.batch_size}",
        f"{s.per_epoch} steps per epoch; this session: steps {s.counters.step} -> {s.target_step}",
        f"model {s.model.kind} ({s.model.prediction_type}), optimizer {s.optimizer_name}, "
        f"precision {c.mixed_precision}, device {s.device}, "
        f"text encoder {'trained' if c.train_text_encoder else 'frozen'}",
        *s.warnings,
    ]
    if s.group.is_main:
        for line in lines:
            log.info(line)
    s.emit(TrainEvent("message", s.counters.step, s.counters.epoch, {"text": "\n".join(lines)}))


# --- one step ----------------------------------------------------------------------------------


def _pixels(samples: Sequence[Sample], resolution: int) -> Any:
    import numpy as np
    import torch

    return torch.from_numpy(np.stack([load_pixels(s.image.path, resolution, flip=s.flip) for s in samples]))


def _latent_distribution(s: _Session, samples: Sequence[Sample]) -> tuple[Any, Any]:
    """Mean and std of each image's latent (from the cache, or the VAE now, without gradients)."""
    import torch

    if s.latents is not None:
        mean = torch.stack([s.latents[x.image.path][0] for x in samples]).to(s.device)
        std = torch.stack([s.latents[x.image.path][1] for x in samples]).to(s.device)
        return mean, std
    with torch.no_grad():
        pixels = _pixels(samples, s.config.resolution).to(s.device, s.parts.vae.dtype)
        dist = s.parts.vae.encode(pixels).latent_dist
        return dist.mean.float(), dist.std.float()


def _autocast(s: _Session) -> contextlib.AbstractContextManager:
    import torch

    dtype = _dtype(s.config.mixed_precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=s.device.type, dtype=dtype)


def _text_encoder_active(config: TrainConfig, step: int) -> bool:
    """Whether the text encoder trains in the step with 0-based index ``step``."""
    return config.train_text_encoder and (
        not config.text_encoder_stop_step or step < config.text_encoder_stop_step
    )


@dataclass(frozen=True)
class _Shard:
    """This process's part of a step's batch.

    Attributes:
        samples: ``[pictures..., class images...]`` trained here.
        rows: their rows in the whole batch (``None``: all of it, one process).
        size: samples in the whole batch.
        pictures: pictures in the whole batch (the global mean's divisor).
        weight: 0 for a placeholder (a process left without a picture), else 1.
    """

    samples: tuple[Sample, ...]
    rows: list[int] | None
    size: int
    pictures: int
    weight: float = 1.0


def _shard(group: Processes, batch: BatchPlan) -> _Shard:
    """The samples of ``batch`` this process trains (the whole batch for one process)."""
    pictures = len(batch.instance)
    size = pictures + len(batch.prior)
    positions = group.shard(pictures)
    if positions is None:
        return _Shard(batch.instance + batch.prior, None, size, pictures)
    weight = 1.0 if positions else 0.0
    positions = positions or [0]  # a placeholder: DDP needs every process to run the step
    samples = tuple(batch.instance[i] for i in positions)
    rows = list(positions)
    if batch.prior:
        samples += tuple(batch.prior[i] for i in positions)
        rows += [pictures + i for i in positions]
    return _Shard(samples, rows, size, pictures, weight)


def _training_step(s: _Session, batch: BatchPlan, lr: float) -> StepLosses:
    """One optimisation step on one batch: the diffusion training objective.

    The batch is ``[pictures..., class images...]`` (prior preservation puts both in one forward
    pass); the loss of each half is taken separately and summed with the prior loss weight. With
    several processes each trains its :func:`_shard` of the batch.
    """
    shard = _shard(s.group, batch)
    train_te = _text_encoder_active(s.config, s.counters.step)
    if s.config.train_text_encoder and not train_te and s.parts.text_encoder.training:
        s.parts.text_encoder.requires_grad_(False).eval()  # the stop-at step has passed
    latents, noise, timesteps = _diffusion_inputs(s, shard)
    prediction = _predict(s, shard.samples, latents, noise, timesteps, train_te=train_te)
    loss, losses = _loss(s, prediction, latents, noise, timesteps, prior=bool(batch.prior), shard=shard)
    _optimizer_step(s, loss, lr)
    return losses


def _rows(tensor: Any, rows: list[int] | None) -> Any:
    return tensor if rows is None else tensor[rows]


def _diffusion_inputs(s: _Session, shard: _Shard) -> tuple[Any, Any, Any]:
    """Latents x0, noise eps and timesteps t of a batch (every draw from the run's generator).

    The draws are made for the whole batch, in the same order whatever the number of processes,
    and each process keeps its rows: the numbers equal a one-process run's.
    """
    import torch

    gen = s.generator
    # 1. Latents x0: the VAE's distribution for each image, sampled with the run's generator (the
    #    draw belongs to the resumable random stream), scaled to unit variance as SD expects.
    mean, std = _latent_distribution(s, shard.samples)
    shape = (shard.size, *mean.shape[1:])
    draw = _rows(torch.randn(shape, generator=gen), shard.rows).to(s.device)
    latents = (mean + std * draw) * s.parts.vae.config.scaling_factor
    # 2. Noise eps ~ N(0, I), plus an optional per-channel offset so very dark or bright images can
    #    be learnt; and a random timestep t per sample. Drawn on the CPU: same numbers on any device.
    noise = torch.randn(shape, generator=gen)
    if s.config.offset_noise:
        noise = noise + s.config.offset_noise * torch.randn((*shape[:2], 1, 1), generator=gen)
    steps_total = s.noise_scheduler.config.num_train_timesteps
    timesteps = torch.randint(0, steps_total, (shape[0],), generator=gen)
    return latents, _rows(noise, shard.rows).to(s.device), _rows(timesteps, shard.rows).to(s.device)


def _predict(
    s: _Session, samples: Sequence[Sample], latents: Any, noise: Any, timesteps: Any, *, train_te: bool
) -> Any:
    """The UNet's prediction for the noised latents, conditioned on the prompts."""
    import torch

    config, parts = s.config, s.parts
    # 3. Forward diffusion: x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps.
    noisy = s.noise_scheduler.add_noise(latents, noise, timesteps)
    # 4. Conditioning: the prompts through the text encoder (75-token chunks, clip skip), with
    #    gradients only while the text encoder trains.
    prompts = [x.prompt for x in samples]
    tokens = text.tokenize(parts.tokenizer, prompts, max_chunks=config.max_token_length // text.CHUNK_TOKENS)
    with _autocast(s):
        with contextlib.nullcontext() if train_te else torch.no_grad():
            conditioning = text.encode(
                s.te_forward if train_te else parts.text_encoder,
                tokens,
                clip_skip=config.clip_skip,
                device=s.device,
            )
        # 5. The UNet predicts from (x_t, t, conditioning), under autocast; weights stay fp32.
        return s.unet_forward(noisy, timesteps, conditioning).sample


def _loss(
    s: _Session, prediction: Any, latents: Any, noise: Any, timesteps: Any, *, prior: bool, shard: _Shard
) -> tuple[Any, StepLosses]:
    """The loss to back-propagate and the step's losses; raises :class:`TrainingDiverged` on NaN/inf."""
    import torch.nn.functional as F

    config = s.config
    # 6. The target: the noise itself (epsilon models) or the velocity
    #    v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0 (v-prediction models, SD 2.x 768).
    if s.model.prediction_type == "v_prediction":
        target = s.noise_scheduler.get_velocity(latents, noise, timesteps)
    else:
        target = noise
    # 7. Loss in float32 (half-precision MSE loses the small differences late in training). With
    #    prior preservation the batch is [pictures..., class images...]: chunk(2) splits it.
    per_sample = F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    if config.min_snr_gamma:
        alphas = s.noise_scheduler.alphas_cumprod
        per_sample = per_sample * snr_weights(
            alphas, timesteps, config.min_snr_gamma, s.model.prediction_type
        )
    instance, prior_loss = per_sample.chunk(2) if prior else (per_sample, None)
    if shard.rows is None:
        loss = instance.mean()
        if prior_loss is not None:
            loss = loss + config.prior_loss_weight * prior_loss.mean()
        values = StepLosses(
            float(loss.detach()),
            float(instance.mean().detach()),
            float(prior_loss.mean().detach()) if prior_loss is not None else None,
        )
    else:
        loss, values = _shared_loss(s, instance, prior_loss, shard)
    # The one host sync of the step: the value is needed for the log and the NaN guard, and
    # checking before backward() means a bad step never reaches the weights.
    if not math.isfinite(values.loss):
        raise diverged(
            config,
            step=s.counters.step + 1,
            epoch=s.counters.epoch,
            last_state_step=s.last_state_step,
            weights_finite=_weights_finite(s),
        )
    return loss, values


def _shared_loss(s: _Session, instance: Any, prior: Any, shard: _Shard) -> tuple[Any, StepLosses]:
    """This process's share of the step's loss, and the step's losses over all processes.

    The one-process loss is ``sum(instance) / B + w * sum(prior) / B`` over the ``B`` pictures of
    the batch. Each process back-propagates ``N / B`` times its own sums (0 for a placeholder);
    DDP averages the N gradients, which gives the gradient of the one-process loss.
    """
    weight = s.config.prior_loss_weight
    local = instance.sum() if prior is None else instance.sum() + weight * prior.sum()
    loss = local * (shard.weight * s.group.world_size / shard.pictures)
    mine = [float(instance.sum().detach()), float(prior.sum().detach()) if prior is not None else 0.0]
    sums = s.group.sum(mine if shard.weight else [0.0, 0.0])
    mean_instance, mean_prior = sums[0] / shard.pictures, sums[1] / shard.pictures
    if prior is None:
        return loss, StepLosses(mean_instance, mean_instance, None)
    return loss, StepLosses(mean_instance + weight * mean_prior, mean_instance, mean_prior)


def _optimizer_step(s: _Session, loss: Any, lr: float) -> None:
    """8. Backward, clip the gradient norm, step, and clear the gradients (set to None: frees memory)."""
    import torch

    max_norm = s.config.max_grad_norm
    for group in s.optimizer.param_groups:
        group["lr"] = lr
    if isinstance(s.optimizer, StepInBackward):
        s.optimizer.backward(loss)  # each weight steps, and frees its gradient, as the gradient completes
        return
    if s.scaler is not None:
        s.scaler.scale(loss).backward()
        if max_norm:
            s.scaler.unscale_(s.optimizer)  # clip the true gradients, not the scaled ones
            torch.nn.utils.clip_grad_norm_(s.trainable, max_norm)
        s.scaler.step(s.optimizer)  # skipped by the scaler when the gradients overflowed
        s.scaler.update()
    else:
        loss.backward()
        if max_norm:
            torch.nn.utils.clip_grad_norm_(s.trainable, max_norm)
        s.optimizer.step()
    s.optimizer.zero_grad(set_to_none=True)


def _weights_finite(s: _Session) -> bool:
    import torch

    return all(bool(torch.isfinite(p).all()) for p in s.trainable)


# --- the loop ------------------------------------------------------------------------------------


def _run(s: _Session) -> TrainResult:
    """Train until the plan's end or a stop; checkpoints, previews and state at epoch ends."""
    config, counters = s.config, s.counters
    started = time.perf_counter()
    schedule_length = s.target_step - counters.session_step
    with _loss_log(s) as loss_log:
        while counters.step < s.target_step:
            if s.group.any(s.ctx.should_stop()):  # all processes stop at the same step
                _stop(s, started)
            batch = plan_batch(
                s.data,
                counters.epoch * s.per_epoch + counters.index,
                seed=config.seed,
                batch_size=config.batch_size,
                prior=config.prior_preservation,
                flip=config.random_flip,
            )
            lr = learning_rate_at(config, counters.step - counters.session_step, schedule_length)
            t0 = time.perf_counter()
            try:
                losses = _training_step(s, batch, lr)
            except Exception as exc:
                if _is_oom(exc):
                    raise out_of_memory(
                        config,
                        step=counters.step + 1,
                        last_state_step=s.last_state_step,
                        detail=str(exc).splitlines()[0],
                    ) from exc
                raise
            s.step_seconds.append(time.perf_counter() - t0)
            counters.step += 1
            counters.index += 1
            _record_step(s, loss_log, losses, lr)
            if counters.index >= s.per_epoch:
                counters.epoch += 1
                counters.index = 0
                _end_of_epoch(s)
    return _finish(s, started)


@contextlib.contextmanager
def _loss_log(s: _Session) -> Iterator[Any]:
    if not s.group.is_main:
        yield None
        return
    s.folders.loss_log.parent.mkdir(parents=True, exist_ok=True)
    with open(s.folders.loss_log, "a", encoding="utf-8") as handle:  # noqa: PTH123
        yield handle


def _record_step(s: _Session, loss_log: Any, losses: StepLosses, lr: float) -> None:
    """Log the step (JSONL + TensorBoard), report progress, emit the event."""
    c = s.counters
    s.last_loss = losses.loss
    record = {
        "step": c.step,
        "epoch": c.epoch,
        "loss": losses.loss,
        "instance_loss": losses.instance,
        "lr": lr,
    }
    scalars = {"loss": losses.loss, "loss_instance": losses.instance, "lr": lr}
    if losses.prior is not None:
        record["prior_loss"] = losses.prior
        scalars["loss_prior"] = losses.prior
    if loss_log is not None:
        loss_log.write(json.dumps(record) + "\n")
        loss_log.flush()
    s.writer.add_scalars(c.step, scalars)
    done, total = c.step - c.session_step, s.target_step - c.session_step
    s.ctx.report(done, total, f"Step {c.step} (epoch {c.epoch + 1}), loss {losses.loss:.4f}")
    s.emit(TrainEvent("step", c.step, c.epoch, dict(record)))


def _epochs_counted(s: _Session) -> int:
    return s.counters.epoch - (0 if s.config.lifetime_epochs else s.counters.session_epoch)


def _end_of_epoch(s: _Session) -> None:
    if not s.group.is_main:
        return  # the others go on to the next step and wait for rank 0 in its first collective
    config, counted = s.config, _epochs_counted(s)
    if config.save_every_epochs and counted % config.save_every_epochs == 0:
        _save_checkpoint(s)
        _save_state(s, "running")
    if config.preview_every_epochs and counted % config.preview_every_epochs == 0:
        _make_previews(s)


def _finish(s: _Session, started: float) -> TrainResult:
    if s.group.is_main:
        if s.last_checkpoint_step != s.counters.step:
            _save_checkpoint(s)
        if s.last_preview_step != s.counters.step and s.config.preview_every_epochs:
            _make_previews(s)
        _save_state(s, "finished")
    # A launcher ends every process once one has ended: the others wait for rank 0's last writes.
    s.group.barrier()
    return _result(s, "finished", started)


def _stop(s: _Session, started: float) -> None:
    """Save everything and raise :class:`TrainingStopped` (the user asked to stop)."""
    if s.group.is_main:
        if s.config.save_on_stop and s.counters.step and s.last_checkpoint_step != s.counters.step:
            _save_checkpoint(s)
        if s.counters.step:
            _save_state(s, "interrupted")
    s.group.barrier()
    result = _result(s, "stopped", started)
    raise TrainingStopped(f"Training stopped at step {s.counters.step}; resume to continue.", result)


# --- saving ------------------------------------------------------------------------------------


def _recipe(s: _Session) -> dict[str, Any]:
    return {
        "run": s.spec.name,
        "source": s.model.source.name,
        "step": s.counters.step,
        "epoch": s.counters.epoch,
        "config": to_dict(s.config),
        "concepts": [to_dict(c.concept) for c in s.data],
        "dbchar": __version__,
    }


def _save_checkpoint(s: _Session) -> None:
    """Export the current weights as ``<run>_<step>.safetensors`` in the checkpoint folder."""
    c = s.counters
    path = Path(s.spec.checkpoint_dir) / f"{s.spec.name}_{c.step}.safetensors"
    s.ctx.report(c.step - c.session_step, s.target_step - c.session_step, f"Saving {path.name}")
    parts = s.parts
    export_checkpoint(
        s.model,
        parts.unet.state_dict(),
        parts.vae.state_dict(),
        parts.text_encoder.state_dict(),
        path,
        recipe=_recipe(s),
    )
    s.records = [r for r in s.records if r.step != c.step] + [
        CheckpointRecord(str(path), c.step, c.epoch, s.last_loss)
    ]
    write_checkpoint_records(s.folders.checkpoints_record, s.records)
    s.last_checkpoint_step = c.step
    s.emit(TrainEvent("checkpoint", c.step, c.epoch, {"path": str(path)}))


def _save_state(s: _Session, status: str) -> None:
    parts = s.parts
    payload = {
        "status": status,
        "counters": s.counters.to_dict(),
        "config": to_dict(s.config),
        "concepts": [to_dict(c.concept) for c in s.data],
        "dataset": dataset_fingerprint(s.data),
        "unet": parts.unet.state_dict(),
        "text_encoder": parts.text_encoder.state_dict() if s.config.train_text_encoder else None,
        "optimizer": s.optimizer.state_dict(),
        "optimizer_name": s.optimizer_name,
        "scaler": s.scaler.state_dict() if s.scaler is not None else None,
        "generator": s.generator.get_state(),
        "saved": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "dbchar": __version__,
    }
    save_state(s.folders.state_file, payload)
    s.last_state_step = s.counters.step


def _make_previews(s: _Session) -> None:
    """Draw each concept's sample prompt with fixed seeds, so previews of different epochs compare."""
    from lib_dbchar.train.sampling import SampleRequest

    config, c = s.config, s.counters
    vae = s.parts.vae
    vae_device = vae.device
    if vae_device != s.device:
        vae.to(s.device)  # cached latents moved it off the GPU
    try:
        if s.sampler is None:
            s.sampler = _make_sampler(config, s.parts, s.device)
        paths = []
        for concept in s.data:
            first = concept.images[0].caption if concept.images else ""
            prompt = sample_prompt(concept.concept, first)
            negative = sample_negative_prompt(concept.concept)
            seeds = tuple(config.preview_seed + i for i in range(config.previews_per_concept))
            request = SampleRequest(
                (prompt,) * len(seeds), (negative,) * len(seeds), seeds, config.preview_steps,
                config.preview_guidance_scale, config.resolution,
            )  # fmt: skip
            for seed, image in zip(seeds, s.sampler(request), strict=True):
                paths.append(
                    _save_preview(s, concept.index, seed=seed, prompt=prompt, negative=negative, image=image)
                )
    finally:
        if vae_device != s.device:
            vae.to(vae_device)
    s.previews += paths
    s.last_preview_step = c.step
    s.ctx.report(c.step - c.session_step, s.target_step - c.session_step, f"Previews at step {c.step}", image)
    s.emit(TrainEvent("preview", c.step, c.epoch, {"paths": paths}))


def _save_preview(s: _Session, concept: int, *, seed: int, prompt: str, negative: str, image: Any) -> str:
    from lib_dbchar.train.sampling import png_parameters, save_png

    config, step = s.config, s.counters.step
    parameters = png_parameters(
        prompt,
        negative,
        steps=config.preview_steps,
        sampler=config.scheduler,
        cfg=config.preview_guidance_scale,
        seed=seed,
        size=config.resolution,
        extra=f"Model: {s.spec.name}_{step}",
    )
    return str(
        save_png(s.folders.samples / f"{s.spec.name}_{step:06d}_c{concept}_{seed}.png", image, parameters)
    )


def _result(s: _Session, status: str, started: float) -> TrainResult:
    f = s.folders
    result = TrainResult(
        run_dir=str(f.root),
        status=status,
        step=s.counters.step,
        epoch=s.counters.epoch,
        checkpoints=list(s.records),
        previews=list(s.previews),
        loss_log=str(f.loss_log),
        tensorboard_dir=str(f.tensorboard),
        state_file=str(f.state_file),
        optimizer=s.optimizer_name,
        seconds=time.perf_counter() - started,
        seconds_per_step=sum(s.step_seconds) / len(s.step_seconds) if s.step_seconds else 0.0,
        last_loss=s.last_loss,
        warnings=list(s.warnings),
    )
    if s.group.is_main:
        atomic_write(f.result_file, json.dumps(result.to_dict(), indent=2) + "\n")
    return result


__all__ = ["DbcharError", "learning_rate_at", "remaining_steps", "snr_weights", "train"]
