"""Pick a checkpoint of a run: render the probe grid, score it with the tagger, rank, save.

A UI section (or ``python -m lib_dbchar pick``) calls :func:`run_pick` with the run folder and
shows the :class:`PickResult`: the grid (``pick/grid.png``), the ranking (``pick/ranking.json``)
and the recommended checkpoint with its evidence. Rendering is cached per checkpoint, so running
it again after training on only draws the new checkpoints' columns; scoring is cheap and always
redone (it depends on the whole grid: drift compares with the source column).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lib_dbchar.jobs import JobContext, Progress
from lib_dbchar.pick.grid import SHEET_FILE, Grid, PickSettings, render_grid, run_columns
from lib_dbchar.pick.probes import PICK_DIR, Probe, character_traits, probes_for_run, save_probes
from lib_dbchar.pick.rank import Ranking, save_ranking
from lib_dbchar.pick.score import ScoreSettings, TagFn, score_grid, tagger_tag_fn
from lib_dbchar.train.run import RUN_FILE

# Share of the progress bar given to rendering (by far the slower half on real models).
RENDER_SHARE = 0.8
PROGRESS_UNITS = 1000


@dataclass
class PickResult:
    """What :func:`run_pick` did (JSON through :meth:`to_dict`).

    Attributes:
        grid: the rendered grid.
        ranking: the scored, ranked columns and the picks.
        grid_png: the contact sheet.
        ranking_json: the saved ranking.
        warnings: columns left out, unreadable pictures, checks that could not run.
    """

    grid: Grid
    ranking: Ranking
    grid_png: str
    ranking_json: str
    warnings: list[str] = field(default_factory=list)

    def recommended_path(self) -> str | None:
        """The recommended checkpoint's file (what "send to Merge" sends), or ``None``."""
        return self._path(self.ranking.recommended)

    def frontal_path(self) -> str | None:
        """The frontal pick's file, or ``None``."""
        return self._path(self.ranking.frontal)

    def _path(self, key: str | None) -> str | None:
        return next((c.path for c in self.grid.columns if c.key == key), None) if key else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "grid": self.grid.to_dict(),
            "ranking": self.ranking.to_dict(),
            "grid_png": self.grid_png,
            "ranking_json": self.ranking_json,
            "recommended_path": self.recommended_path(),
            "frontal_path": self.frontal_path(),
            "warnings": list(self.warnings),
        }


def phase_context(ctx: JobContext, start: float, span: float, label: str) -> JobContext:
    """A context whose progress fills ``[start, start + span]`` of ``ctx``'s bar (both 0..1).

    Args:
        ctx: the caller's context (its ``should_stop`` is shared).
        start / span: where this phase sits on the whole job's bar.
        label: prefixed to each line ("Grid", "Scoring").

    Returns:
        A :class:`JobContext` reporting in :data:`PROGRESS_UNITS` of the whole job.
    """

    def report(p: Progress) -> None:
        done = round((start + span * p.fraction) * PROGRESS_UNITS)
        ctx.progress(Progress(done, PROGRESS_UNITS, f"{label}: {p.text}" if p.text else label, p.image))

    return JobContext(progress=report, should_stop=ctx.should_stop)


@dataclass(frozen=True)
class RunDataset:
    """The pictures a run trained on and whose they are.

    Attributes:
        project_dir: the project folder.
        dataset_dir: the first concept's pictures folder.
        token: the instance token.
        pictures: the pictures in it (the copy check's references), sorted.
        warnings: why there are none, if so.
    """

    project_dir: Path
    dataset_dir: Path
    token: str
    pictures: list[Path]
    warnings: list[str]


def run_dataset(run_dir: Path) -> RunDataset:
    """The dataset of a run's first concept.

    Raises:
        FileNotFoundError, ValueError: no or a bad ``run.json`` (naming it), or a run without concept.
    """
    from lib_dbchar.concept import resolve_dirs
    from lib_dbchar.tagger.preprocess import is_image_file
    from lib_dbchar.train.run import load_run_spec

    spec = load_run_spec(run_dir)
    if not spec.concepts:
        raise ValueError(f"{Path(run_dir) / 'run.json'}: the run has no concept; it cannot be scored.")
    concept = spec.concepts[0]
    dataset_dir = resolve_dirs(concept, spec.project_dir, 0)[0]
    pictures, warnings = [], []
    if dataset_dir.is_dir():
        pictures = sorted(p for p in dataset_dir.iterdir() if is_image_file(p))
    else:
        warnings.append(f"{dataset_dir}: the dataset folder is gone; the copy check cannot run")
    return RunDataset(Path(spec.project_dir), dataset_dir, concept.instance_token, pictures, warnings)


def recorded_tagger(project_dir: Path) -> Any:
    """The tagger the project was tagged with (``<project>/tags.json``), as a ``TaggerConfig``.

    Scoring with the model that made the captions keeps the trait tags in the same vocabulary and
    needs no second model on the disk. ``None`` when the project has no record (or an unusable one:
    a local model folder that is gone, a model name this version does not know); the default model
    is used then.
    """
    from lib_dbchar.pick.probes import TAGGER_JSON
    from lib_dbchar.tagger.runner import TaggerConfig

    path = Path(project_dir) / TAGGER_JSON
    try:
        record = json.loads(path.read_text(encoding="utf-8")).get("tagger") or {}
    except (OSError, ValueError, AttributeError):
        return None
    model_dir = str(record.get("model_dir") or "").strip()
    if model_dir and not Path(model_dir).is_dir():
        return None
    try:
        return TaggerConfig(model=str(record.get("model") or TaggerConfig().model), model_dir=model_dir)
    except ValueError:
        return None


def run_pick(
    run_dir: Path,
    *,
    settings: PickSettings | None = None,
    score: ScoreSettings | None = None,
    tag_fn: TagFn | None = None,
    probes: Sequence[Probe] | None = None,
    device: str = "cpu",
    ctx: JobContext | None = None,
    tagger: Any = None,
    tagger_cache: Path | str | None = None,
    renderer: Any = None,
) -> PickResult:
    """Render the run's probe grid (cached per checkpoint), score it and save the ranking.

    Args:
        run_dir: the run folder (``run.json``, ``checkpoints.json``).
        settings: how cells are drawn.
        score: thresholds and weights.
        tag_fn: tags pictures (tests, or a UI holding a tagger); default :func:`tagger_tag_fn`
            with ``tagger``.
        probes: the probe set; given, it is saved as the run's ``pick/probes.json`` (the UI's
            edits); default the saved set, or the default set built (and saved) from the concept.
        device: where the grid is drawn and the tagger runs.
        ctx: progress (the grid's cells, then scoring, on one bar) and stop.
        tagger: a :class:`~lib_dbchar.tagger.runner.TaggerConfig` (a local model folder, the model,
            downloads); default: the one the project was tagged with (:func:`recorded_tagger`),
            else the default model.
        tagger_cache: the tagger model cache folder.
        renderer: draw with this renderer instead of opening one (tests, the UI).

    Returns:
        The :class:`PickResult`; ``pick/grid.png``, ``pick/grid.json`` and
        ``pick/ranking.json`` are written.

    Raises:
        JobStopped: the user stopped; finished cells stay cached, no ranking is written.
        FileNotFoundError, ValueError: a missing/bad ``run.json``, bad probes or settings (named).
        TaggerModelError / ModelUnavailable: the tagger model cannot be loaded (the grid is kept).
    """
    run_dir = Path(run_dir)
    if not (run_dir / RUN_FILE).is_file():
        msg = f"{run_dir} is not a run folder (no {RUN_FILE}); give <project>/runs/<run> of a trained run"
        raise FileNotFoundError(msg)
    ctx = ctx or JobContext()
    settings = settings or PickSettings()
    score = score or ScoreSettings()
    if probes is not None:
        save_probes(run_dir, probes)
    probes = list(probes) if probes is not None else probes_for_run(run_dir)
    warnings: list[str] = []
    columns = run_columns(run_dir, warnings=warnings)
    grid = render_grid(
        run_dir,
        probes,
        columns,
        settings,
        phase_context(ctx, 0.0, RENDER_SHARE, "Grid"),
        device=device,
        renderer=renderer,
    )
    warnings += [w for w in grid.warnings if w not in warnings]
    dataset = run_dataset(run_dir)
    warnings += dataset.warnings
    traits = character_traits(
        dataset.project_dir,
        min_share=score.trait_min_share,
        dataset_dir=dataset.dataset_dir,
        token=dataset.token,
    )
    scoring = phase_context(ctx, RENDER_SHARE, 1.0 - RENDER_SHARE, "Scoring")
    if tag_fn is not None:
        ranking = score_grid(grid, traits, dataset.pictures, tag_fn, score, scoring)
    else:
        chosen = tagger if tagger is not None else recorded_tagger(dataset.project_dir)
        with tagger_tag_fn(chosen, device=device, cache_dir=tagger_cache) as own:
            ranking = score_grid(grid, traits, dataset.pictures, own, score, scoring)
    ranking.warnings = warnings + ranking.warnings
    path = save_ranking(run_dir, ranking)
    return PickResult(grid, ranking, str(run_dir / PICK_DIR / SHEET_FILE), str(path), ranking.warnings)
