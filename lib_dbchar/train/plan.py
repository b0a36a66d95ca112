"""The steps maths shown before a run starts, with the warnings the guide's users learn the hard way.

One epoch shows every picture once: ``ceil(pictures / batch)`` steps. With prior preservation each
step also carries as many class images as pictures (they are concatenated into one batch), so class
images add work per step, not steps. A run ends after ``epochs`` epochs or ``max_steps`` steps,
whichever comes first.

Pure functions on counts: the Train tab calls :func:`plan_steps` on every change.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from lib_dbchar.train.config import TrainConfig

# Beyond this many steps a run is one the user stops by hand (the guide's 10,000,000).
OPEN_ENDED_STEPS = 1_000_000
FEW_PICTURES = 5


@dataclass(frozen=True)
class ConceptCounts:
    """What one concept brings to a run.

    Attributes:
        images: pictures in its dataset.
        class_images: class images it will train with (wanted count, generated or not).
        class_images_present: class images already in its folder.
    """

    images: int
    class_images: int = 0
    class_images_present: int = 0


@dataclass(frozen=True)
class StepsPlan:
    """The steps maths of a run, ready to show.

    Attributes:
        images: pictures over all concepts.
        class_images: class images over all concepts (0 without prior preservation).
        batch_size: pictures per step.
        steps_per_epoch: ``ceil(images / batch_size)``.
        epochs: epochs this session will run (after ``max_steps`` is applied, rounded up).
        total_steps: steps this session will run.
        limited_by: ``"epochs"`` or ``"max_steps"``.
        checkpoint_every_steps: steps between checkpoints (0: only at the end).
        preview_every_steps: steps between previews (0: never).
        to_generate: class images to generate before training starts.
        formula: the sum in words, e.g. ``"20 pictures x 100 epochs / batch 1 = 2,000 steps"``.
        warnings: sentences for the user, most important first.
    """

    images: int
    class_images: int
    batch_size: int
    steps_per_epoch: int
    epochs: int
    total_steps: int
    limited_by: str
    checkpoint_every_steps: int
    preview_every_steps: int
    to_generate: int
    formula: str
    warnings: tuple[str, ...] = field(default_factory=tuple)

    def estimated_seconds(self, seconds_per_step: float, *, steps_done: int = 0) -> float:
        """Time left at ``seconds_per_step`` (measured on the first steps) after ``steps_done`` steps."""
        return max(0, self.total_steps - steps_done) * max(0.0, seconds_per_step)


def format_duration(seconds: float) -> str:
    """``5400`` -> ``"1 h 30 min"``; ``42`` -> ``"42 s"``; very long runs in days."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, _ = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    if hours < 1:
        return f"{minutes} min"
    days, hours = divmod(hours, 24)
    return f"{hours} h {minutes} min" if days < 1 else f"{days} d {hours} h"


def plan_steps(config: TrainConfig, concepts: Sequence[ConceptCounts], *, start_step: int = 0) -> StepsPlan:
    """Work out how long a run is and what to warn about.

    Args:
        config: the training settings.
        concepts: one entry per concept.
        start_step: steps already done in a resumed session (they count against ``max_steps``).

    Returns:
        The :class:`StepsPlan`.
    """
    images = sum(c.images for c in concepts)
    prior = config.prior_preservation
    class_images = sum(c.class_images for c in concepts) if prior else 0
    to_generate = sum(max(0, c.class_images - c.class_images_present) for c in concepts) if prior else 0
    batch = config.batch_size
    per_epoch = math.ceil(images / batch) if images else 0
    by_epochs = per_epoch * config.epochs
    limit = config.max_steps - start_step if config.max_steps else None
    if limit is not None and limit < by_epochs:
        total, limited_by = max(0, limit), "max_steps"
    else:
        total, limited_by = by_epochs, "epochs"
    epochs = math.ceil(total / per_epoch) if per_epoch else 0
    formula = (
        f"{images} pictures x {config.epochs:,} epochs / batch {batch} = {by_epochs:,} steps"
        + (f", capped at {total:,} by max steps" if limited_by == "max_steps" else "")
        + (f" (each step also trains {batch} class image{'s' if batch > 1 else ''})" if prior else "")
    )
    plan = StepsPlan(
        images=images,
        class_images=class_images,
        batch_size=batch,
        steps_per_epoch=per_epoch,
        epochs=epochs,
        total_steps=total,
        limited_by=limited_by,
        checkpoint_every_steps=per_epoch * config.save_every_epochs,
        preview_every_steps=per_epoch * config.preview_every_epochs,
        to_generate=to_generate,
        formula=formula,
    )
    return replace(plan, warnings=tuple(_warnings(config, concepts, plan)))


def _warnings(config: TrainConfig, concepts: Sequence[ConceptCounts], plan: StepsPlan) -> list[str]:
    images, total, epochs = plan.images, plan.total_steps, plan.epochs
    out: list[str] = []
    if images == 0:
        return ["No pictures found: add pictures (and their captions) in the Dataset tab first."]
    if images < FEW_PICTURES:
        out.append(f"Only {images} pictures: the guide uses about 20; expect a weaker or overfit character.")
    if config.prior_preservation:
        out += _prior_warnings(config, concepts, plan)
    else:
        out.append("Prior preservation is off: the model forgets its class quickly and overfits sooner.")
    if total >= OPEN_ENDED_STEPS:
        out.append(
            f"{total:,} steps: this run goes on until you stop it (the guide's way). Watch the previews; "
            "around 4,000 steps for 20 pictures the details appear."
        )
    if config.save_every_epochs == 0 or config.save_every_epochs > epochs:
        out.append("No checkpoint before the end of the run: lower 'Save checkpoint every N epochs'.")
    if config.lr_scheduler != "constant" and total >= OPEN_ENDED_STEPS:
        out.append(
            f"The {config.lr_scheduler} schedule decays over {total:,} steps, so it stays almost constant; "
            "set max steps to the length you want."
        )
    return out


def _prior_warnings(config: TrainConfig, concepts: Sequence[ConceptCounts], plan: StepsPlan) -> list[str]:
    to_generate, class_images, total = plan.to_generate, plan.class_images, plan.total_steps
    out: list[str] = []
    if to_generate:
        out.append(f"{to_generate:,} class images will be generated before training starts.")
    for i, c in enumerate(concepts):
        if c.images and c.class_images < c.images:
            out.append(
                f"Concept {i + 1}: {c.class_images} class images for {c.images} pictures: each class "
                "image is trained more often than each picture, so the class dominates; the guide uses 10 "
                "per picture."
            )
    if config.prior_loss_weight > 1:
        out.append(
            f"Prior loss weight {config.prior_loss_weight}: the class images weigh more than your character."
        )
    seen = total * config.batch_size
    if 0 < seen < class_images:
        out.append(f"Only {seen:,} of the {class_images:,} class images will be used in {total:,} steps.")
    return out
