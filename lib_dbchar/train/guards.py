"""The two ways a run dies that users meet most -- NaN loss and out of memory -- turned into advice.

Both stop the run with a message that says at which step, the likely cause for *these* settings and
the setting to change. The last saved state is untouched, so the run can be resumed after the change.
"""

from __future__ import annotations

from lib_dbchar.errors import DbcharError
from lib_dbchar.train.config import TrainConfig

HIGH_LEARNING_RATE = 1e-5


class TrainingDiverged(DbcharError):
    """The loss became NaN or infinite. Attributes: ``step`` (1-based), ``cause``, ``fix``."""

    def __init__(self, message: str, *, step: int, cause: str, fix: str) -> None:
        super().__init__(message)
        self.step, self.cause, self.fix = step, cause, fix


class TrainingOutOfMemory(DbcharError):
    """The GPU ran out of memory; the message lists the memory switches still available."""


def nan_cause(config: TrainConfig, *, weights_finite: bool) -> tuple[str, str]:
    """The likely cause of a NaN/inf loss under ``config`` and the fix, most specific first.

    Args:
        config: the run's settings.
        weights_finite: whether every trainable weight was still finite when the loss went bad.

    Returns:
        ``(cause, fix)`` sentences.
    """
    if not weights_finite:
        return (
            "the model's weights contain NaN/inf (a damaged or badly merged source model, or an earlier "
            "blow-up)",
            "train from another source checkpoint, or resume an earlier state with a lower learning rate",
        )
    if config.mixed_precision == "fp16" and config.train_text_encoder:
        return (
            "fp16 overflow while training the text encoder",
            "set mixed_precision to bf16 (if your GPU has it) or no, or turn train_text_encoder off",
        )
    if config.learning_rate > HIGH_LEARNING_RATE:
        return (
            f"the learning rate {config.learning_rate:g} is high for Dreambooth",
            "lower learning_rate (the guide: 1e-6)",
        )
    if config.mixed_precision == "fp16":
        return "fp16 overflow", "set mixed_precision to bf16 (if your GPU has it) or no"
    return "a numerical blow-up", "lower learning_rate, or turn on min_snr_gamma (5)"


def diverged(
    config: TrainConfig, *, step: int, epoch: int, last_state_step: int | None, weights_finite: bool
) -> TrainingDiverged:
    """The error to raise when the loss of ``step`` (1-based) is not finite."""
    cause, fix = nan_cause(config, weights_finite=weights_finite)
    kept = (
        f" The last saved state (step {last_state_step}) is kept: change the setting and resume."
        if last_state_step
        else " Nothing was saved yet: change the setting and start again."
    )
    where = f"at step {step} (epoch {epoch + 1})"
    message = f"The loss became NaN/inf {where}. Likely cause: {cause}. Fix: {fix}.{kept}"
    return TrainingDiverged(message, step=step, cause=cause, fix=fix)


def memory_switches(config: TrainConfig) -> list[str]:
    """The settings that would lower GPU memory and are not yet at their frugal value, biggest first."""
    switches = [
        (not config.use_8bit_adam, "use_8bit_adam on (about 5 GB less for SD1.5)"),
        (
            not config.optimizer_in_backward,
            "optimizer_in_backward on (no full set of gradients: about 3.4 GB less)",
        ),
        (config.train_text_encoder, "train_text_encoder off (about 1.2 GB less)"),
        (
            not config.gradient_checkpointing,
            "gradient_checkpointing on (activations recomputed: GBs less, ~30% slower)",
        ),
        (config.mixed_precision == "no", "mixed_precision fp16 or bf16"),
        (config.batch_size > 1, f"batch_size 1 (now {config.batch_size})"),
        (not config.cache_latents, "cache_latents on (the VAE leaves the GPU)"),
        (config.attention == "default", "attention sdpa or xformers"),
        (config.resolution > 512, f"resolution 512 (now {config.resolution})"),
    ]
    return [text for applies, text in switches if applies]


def out_of_memory(
    config: TrainConfig, *, step: int, last_state_step: int | None, detail: str = ""
) -> TrainingOutOfMemory:
    """The error to raise when the GPU runs out of memory at ``step`` (1-based, 0 = while loading)."""
    switches = memory_switches(config)
    advice = (
        "Memory switches still available: " + "; ".join(switches) + "."
        if switches
        else "Every memory switch is already on: close other programs using the GPU, or lower the resolution."
    )
    where = f"at step {step}" if step else "while preparing the run"
    kept = (
        f" The last saved state (step {last_state_step}) is kept; resume after the change."
        if last_state_step
        else ""
    )
    return TrainingOutOfMemory(
        f"The GPU ran out of memory {where}. {advice}{kept}" + (f" ({detail})" if detail else "")
    )
