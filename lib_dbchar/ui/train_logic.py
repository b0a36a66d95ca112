"""What the Train tab does, without gradio: presets that respect the user's edits, the steps maths,
the run's spec, and what a run has written so far (loss, checkpoints, previews).

"Changed by the user" is judged against a *baseline*: the values the tab itself last put in the
form (the defaults, a loaded ``train.json`` or an applied preset). A field whose widget differs
from the baseline was edited by hand, and :func:`apply_preset_keeping` passes it as ``keep=`` to
:func:`~lib_dbchar.train.config.apply_preset`, so a preset never silently overrides it. Comparing
values (rather than listening to every widget) also works for edits made before the first event.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lib_dbchar.concept import Concept, load_concepts
from lib_dbchar.config import to_dict
from lib_dbchar.errors import DbcharError
from lib_dbchar.paths import safe_name
from lib_dbchar.projects import Project
from lib_dbchar.train.config import Preset, TrainConfig, apply_preset
from lib_dbchar.train.data import concept_counts
from lib_dbchar.train.plan import StepsPlan, format_duration, plan_steps
from lib_dbchar.train.run import RunFolders, RunSpec, read_checkpoint_records, read_loss_log

#: The TrainConfig fields the steps maths depends on (the tab recomputes it when one changes).
STEPS_FIELDS = (
    "epochs",
    "max_steps",
    "batch_size",
    "save_every_epochs",
    "preview_every_epochs",
    "prior_preservation",
    "prior_loss_weight",
    "lr_scheduler",
)
DEFAULT_SMOOTHING = 0.99
PREVIEW_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


# --- presets -------------------------------------------------------------------------------------


def user_changed_fields(current: Mapping[str, Any], baseline: Mapping[str, Any]) -> list[str]:
    """Fields whose current value differs from what the tab last put there.

    Args:
        current: ``{field: value}`` of the form now (validated values).
        baseline: ``{field: value}`` the tab last showed.

    Returns:
        Field names, in ``current``'s order.
    """
    return [name for name, value in current.items() if name in baseline and baseline[name] != value]


@dataclass(frozen=True)
class PresetApplied:
    """The outcome of applying a preset in the tab.

    Attributes:
        config: what the form shows now.
        baseline: the new baseline (the preset's values, except the fields kept).
        kept: the fields the preset would have changed but the user had edited.
    """

    config: TrainConfig
    baseline: dict[str, Any]
    kept: tuple[str, ...]


def apply_preset_keeping(current: TrainConfig, baseline: Mapping[str, Any], preset: Preset) -> PresetApplied:
    """Apply ``preset`` to the form without touching the fields the user edited.

    Args:
        current: the form's settings now.
        baseline: the values the tab last showed (see the module docstring).
        preset: the preset picked.

    Returns:
        The :class:`PresetApplied`. The baseline of a kept field stays as it was, so the field
        still counts as edited when the next preset comes.
    """
    changed = user_changed_fields(to_dict(current), baseline)
    config = apply_preset(current, preset, keep=changed)
    new_baseline = to_dict(config)
    new_baseline.update({name: baseline[name] for name in changed})
    kept = tuple(name for name in changed if name in preset.values and preset.values[name] != baseline[name])
    return PresetApplied(config, new_baseline, kept)


def preset_message(preset: Preset, applied: PresetApplied) -> str:
    """One line for the status: what was applied and what was kept."""
    text = f"Applied the preset {preset.name!r}."
    if applied.kept:
        text += f" Kept your own values for: {', '.join(applied.kept)}."
    return text


# --- steps maths ---------------------------------------------------------------------------------


def project_concepts(project: Project) -> list[Concept]:
    """The concepts of the project's ``concept.json``.

    Raises:
        DbcharError: no concept saved yet, or a broken file (the message says what to do).
    """
    try:
        concepts = load_concepts(project.concept_file)
    except (FileNotFoundError, ValueError) as exc:
        raise DbcharError(str(exc)) from exc
    if not concepts:
        raise DbcharError(f"{project.concept_file} holds no concept; fill in the Concept tab and save it.")
    return concepts


def steps_plan(config: TrainConfig, project: Project) -> tuple[StepsPlan, list[str]]:
    """The steps maths of a run of ``config`` on the project's concepts and pictures as they are now.

    Returns:
        ``(plan, scan_warnings)``.

    Raises:
        DbcharError: the project has no concept yet.
    """
    counts, warnings = concept_counts(project_concepts(project), project.root)
    return plan_steps(config, counts), warnings


def seconds_per_step(run_dir: Path) -> float | None:
    """The measured time per step of a run's last session (``result.json``), when there is one."""
    result = RunFolders(Path(run_dir)).result_file
    if not result.is_file():
        return None
    try:
        value = json.loads(result.read_text(encoding="utf-8")).get("seconds_per_step")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return None
    return float(value) if isinstance(value, int | float) and value > 0 else None


def steps_text(plan: StepsPlan, *, scan_warnings: Sequence[str] = (), per_step: float | None = None) -> str:
    """The steps maths as Markdown: the sum, the saving cadence, the time estimate, the warnings.

    Args:
        plan: from :func:`steps_plan`.
        scan_warnings: problems found while reading the pictures.
        per_step: measured seconds per step (a previous session of the run), for an estimate.
    """
    lines = [f"**{plan.formula}**"]
    if plan.total_steps:
        save = f"every {plan.checkpoint_every_steps:,} steps" if plan.checkpoint_every_steps else "at the end"
        preview = f"every {plan.preview_every_steps:,} steps" if plan.preview_every_steps else "never"
        lines.append(f"{plan.steps_per_epoch:,} steps per epoch; checkpoints {save}; previews {preview}.")
    if plan.class_images:
        lines.append(f"{plan.class_images:,} class images ({plan.to_generate:,} still to generate).")
    if per_step:
        estimate = format_duration(plan.estimated_seconds(per_step))
        lines.append(f"At {per_step:.2f} s per step (measured): about {estimate}.")
    warnings = "\n".join(f"- {w}" for w in (*plan.warnings, *scan_warnings))
    return "\n\n".join([*lines, warnings] if warnings else lines)


# --- the run ------------------------------------------------------------------------------------


def run_name_for(name: str) -> str:
    """The run name as it will be used in folder and checkpoint names.

    Raises:
        DbcharError: nothing usable in the name.
    """
    if not (name or "").strip():
        msg = "Type a run name (it prefixes the checkpoints: <run>_<step>.safetensors)."
        raise DbcharError(msg)
    return safe_name(name, what="run name")


def build_spec(
    project: Project,
    run_name: str,
    config: TrainConfig,
    *,
    source: Path,
    checkpoint_dir: Path,
    device: str,
    model_config_dir: Path | None = None,
) -> RunSpec:
    """The :class:`RunSpec` of a Start click.

    Args:
        project: the selected project (its concepts are read from ``concept.json``).
        run_name: the sanitised run name.
        config: the form's settings; the source is set from ``source``.
        source: the source checkpoint file.
        checkpoint_dir: the host's checkpoint folder.
        device: the host's device.
        model_config_dir: a diffusers folder describing a non-standard source (advanced).
    """
    config = TrainConfig(**{**to_dict(config), "source_checkpoint": str(source)})
    return RunSpec(
        project.root,
        run_name,
        config,
        tuple(project_concepts(project)),
        Path(checkpoint_dir),
        device=device,
        model_config_dir=model_config_dir,
    )


# --- what a run has written ---------------------------------------------------------------------


@dataclass(frozen=True)
class RunView:
    """What the tab shows of a run, read from its folder (works while it runs).

    Attributes:
        losses: the loss log's records, in step order.
        checkpoints: checkpoint paths, oldest first.
        previews: preview image paths, oldest first.
    """

    losses: tuple[dict[str, Any], ...]
    checkpoints: tuple[str, ...]
    previews: tuple[str, ...]


def read_run(run_dir: Path) -> RunView:
    """Read a run folder's loss log, checkpoint list and previews (empty ones when absent)."""
    folders = RunFolders(Path(run_dir))
    previews = []
    if folders.samples.is_dir():
        previews = sorted(
            (p for p in folders.samples.iterdir() if p.suffix.lower() in PREVIEW_SUFFIXES),
            key=lambda p: (p.stat().st_mtime, p.name),
        )
    return RunView(
        tuple(read_loss_log(folders.loss_log)),
        tuple(r.path for r in read_checkpoint_records(folders.checkpoints_record)),
        tuple(str(p) for p in previews),
    )


def smooth(values: Sequence[float], weight: float) -> list[float]:
    """TensorBoard-style smoothing: an exponential moving average, debiased at the start.

    Args:
        values: the raw series.
        weight: 0 (none) to just under 1 (very smooth); the guide uses 0.99.

    Returns:
        A list as long as ``values``. Non-finite values pass through without entering the average.
    """
    out, last, count = [], 0.0, 0
    for value in values:
        if not math.isfinite(value):
            out.append(value)
            continue
        count += 1
        last = last * weight + (1 - weight) * value
        # Without the debias the curve would start near 0 (the average's initial value).
        out.append(last / (1 - weight**count) if weight < 1 else values[0])
    return out


def loss_text(view: RunView, *, last: int = 5) -> str:
    """The latest loss values, one line per step, newest last."""
    if not view.losses:
        return "No steps logged yet."
    lines = []
    for record in view.losses[-last:]:
        prior = record.get("prior_loss")
        extra = f", prior {prior:.4f}" if isinstance(prior, int | float) else ""
        lines.append(
            f"step {record.get('step')}: loss {record.get('loss', float('nan')):.4f}{extra}, "
            f"lr {record.get('lr', 0):.2e}"
        )
    return "\n".join(lines)


def checkpoints_text(view: RunView) -> str:
    """The checkpoints written, one path per line."""
    return "\n".join(view.checkpoints) if view.checkpoints else "No checkpoint written yet."
