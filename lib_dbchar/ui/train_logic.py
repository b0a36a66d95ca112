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
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lib_dbchar.checkpoint.errors import CheckpointError
from lib_dbchar.concept import Concept, load_concepts
from lib_dbchar.config import to_dict
from lib_dbchar.errors import DbcharError
from lib_dbchar.paths import safe_name
from lib_dbchar.projects import Project
from lib_dbchar.train.config import Preset, TrainConfig, apply_preset, save_preset
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


def save_user_preset(folder: Path, name: str, config: TrainConfig, *, overwrite: bool = False) -> Path:
    """Save the form's settings as a user preset (``<folder>/<name>.json``, atomic).

    Args:
        folder: the user presets folder (created when missing).
        name: the preset's name, as typed.
        config: the form's settings; the model fields are left out of presets.
        overwrite: replace the user's own preset of that name.

    Returns:
        The written file.

    Raises:
        DbcharError: no name, a shipped preset's name, or a preset of that name exists and
            ``overwrite`` is off; the message says what to do.
    """
    if not name.strip():
        msg = "Type a name for the preset."
        raise DbcharError(msg)
    try:
        return save_preset(Path(folder), name, config, overwrite=overwrite)
    except FileExistsError as exc:
        raise DbcharError(f"{str(exc).rstrip('.')}: tick 'Replace my preset of that name'.") from None
    except ValueError as exc:
        raise DbcharError(str(exc)) from None


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


# --- memory held by other tabs -------------------------------------------------------------------


def release_held_memory(ctx: Any) -> int:
    """Call every release hook on the page context before a job that needs the memory.

    Args:
        ctx: the :class:`~lib_dbchar.ui.context.UiContext`; its ``release_hooks`` are called in
            order (a page without the attribute has none).

    Returns:
        How many hooks were called.
    """
    hooks = list(getattr(ctx, "release_hooks", ()))
    for hook in hooks:
        hook()
    return len(hooks)


# --- the source model ----------------------------------------------------------------------------

#: Architectures the checkpoint reader recognises but training cannot use yet.
UNSUPPORTED_ARCHS = ("sdxl", "sdxl_refiner")


def source_problem(path: Path) -> str | None:
    """Why training cannot start from ``path``, told before any time is spent; None when it can.

    Only a ``.safetensors`` header is read (milliseconds, even for a 7 GB SDXL file); other
    formats are checked by the conversion when the run starts, with the same message.

    Args:
        path: the source checkpoint file.

    Returns:
        A message naming the file and what to do, or None (also for a file that cannot be read
        here: the conversion reports that at Start with the reader's own message).
    """
    from lib_dbchar.checkpoint.detect import inspect_checkpoint

    path = Path(path)
    if path.suffix.lower() != ".safetensors" or not path.is_file():
        return None
    try:
        info = inspect_checkpoint(path)
    except (CheckpointError, OSError, ValueError):
        return None
    if info.arch in UNSUPPORTED_ARCHS:
        return (
            f"SDXL is not supported for training yet: {path.name} is {info.label}. "
            "Pick a Stable Diffusion 1.x or 2.x model (the guide trains from Waifu Diffusion 1.3)."
        )
    return None


def refuse_unsupported_source(path: Path) -> None:
    """Raise when :func:`source_problem` finds one.

    Raises:
        DbcharError: the source is an SDXL model (the message says to pick an SD1/SD2 one).
    """
    problem = source_problem(path)
    if problem:
        raise DbcharError(problem)


# --- the live view of a running run --------------------------------------------------------------

#: Seconds between two refreshes of the chart, the latest losses and the checkpoint list.
LIVE_EVERY = 3.0
#: How long the live view waits, after a Start click, for the job to begin (it may be queued behind
#: another GPU job; Refresh progress picks a later start up).
LIVE_START_GRACE = 30.0


class ActiveRuns:
    """The run folders a training job of this page is working on now (thread-safe).

    The Start job marks its run between :meth:`begin` and :meth:`end`; the live view refreshes
    while :meth:`active` says so.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count: dict[str, int] = {}

    @staticmethod
    def _key(run_dir: Path) -> str:
        return str(Path(run_dir).resolve())

    def begin(self, run_dir: Path) -> None:
        with self._lock:
            key = self._key(run_dir)
            self._count[key] = self._count.get(key, 0) + 1

    def end(self, run_dir: Path) -> None:
        with self._lock:
            key = self._key(run_dir)
            left = self._count.get(key, 0) - 1
            if left > 0:
                self._count[key] = left
            else:
                self._count.pop(key, None)

    def active(self, run_dir: Path | None = None) -> bool:
        """Whether ``run_dir`` (any run when None) is being trained now."""
        with self._lock:
            return bool(self._count) if run_dir is None else self._key(run_dir) in self._count


def live_views(
    view: Callable[[], Any],
    active: Callable[[], bool],
    *,
    every: float = LIVE_EVERY,
    start_grace: float = 0.0,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[Any]:
    """Yield a fresh view every ``every`` seconds while a run is active, then a last one, then stop.

    A generator handler ends by itself, so nothing keeps polling once the run is over (gradio's
    ``every=`` would go on for as long as the page is open).

    Args:
        view: reads the run's files and returns the outputs (see ``TrainTab.view``).
        active: whether the run is still going.
        every: seconds between two views.
        start_grace: how long to wait for the run to become active first (a Start click's job
            may wait for the GPU lock); 0 gives one view at once when nothing runs.
        sleep, clock: injectable for tests.

    Yields:
        ``view()``'s result: one per tick while active, and a final one.
    """
    deadline = clock() + start_grace
    while not active() and clock() < deadline:
        sleep(min(every, 0.5))
    while active():
        yield view()
        sleep(every)
    yield view()
