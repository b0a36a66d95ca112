"""The end-to-end demo: drawn pictures -> prep -> tags -> concept -> class images -> training ->
grid + ranking -> merge.

Everything runs offline on CPU in a few minutes: the models are tiny random SD1 models built on
the spot (:mod:`lib_dbchar.demo.tiny`) and the tagger is the bundled WD14 double (``assets/``),
which tags by mean colour. The results are meaningless as pictures; the point is to show every
file each step leaves and where it goes.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lib_dbchar.errors import JobStopped
from lib_dbchar.jobs import JobContext
from lib_dbchar.paths import atomic_write

__all__ = ["ASSETS_DIR", "DemoResult", "DemoStep", "default_out_dir", "run_demo"]

ASSETS_DIR = Path(__file__).parent / "assets"
TOKEN = "sks"
PICTURES = 10
RUN_NAME = "demo-run"


@dataclass
class DemoStep:
    """One step of the demo: what it made and where.

    Attributes:
        name: the step ("pictures", "prep", "tags", "concept", "class images", "training",
            "grid + ranking", "merge").
        summary: one line for people.
        paths: the files and folders it left, by role.
        images: pictures worth showing in the report.
        seconds: wall time.
        figure: one large picture shown at its own size (the grid's contact sheet).
        table: a small table for the report, header row first (the ranking).
        notes: more lines for people (the recommendation and its evidence).
    """

    name: str
    summary: str
    paths: dict[str, str] = field(default_factory=dict)
    images: list[str] = field(default_factory=list)
    seconds: float = 0.0
    figure: str = ""
    table: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class DemoResult:
    """What the demo did (JSON through :meth:`to_dict`).

    Attributes:
        out_dir: the demo folder.
        steps: the steps in order.
        report: the HTML report.
        skipped: steps of the guide the demo leaves out, with why.
    """

    out_dir: str
    steps: list[DemoStep] = field(default_factory=list)
    report: str = ""
    skipped: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def default_out_dir(base: Path, name: str = "dbchar-demo") -> Path:
    """The first of ``base/name``, ``base/name-2``, ... that does not exist (never reuse a folder).

    Args:
        base: the parent folder (usually the current directory).
        name: the folder name to start from.

    Returns:
        A path that does not exist yet.
    """
    candidate = Path(base) / name
    n = 2
    while candidate.exists():
        candidate = Path(base) / f"{name}-{n}"
        n += 1
    return candidate


def _timed(name: str, started: float, summary: str, **kwargs) -> DemoStep:
    return DemoStep(name, summary, seconds=round(time.perf_counter() - started, 2), **kwargs)


def _step_pictures(out: Path) -> DemoStep:
    from lib_dbchar.demo.figures import write_pictures

    started = time.perf_counter()
    paths = write_pictures(out / "pictures", PICTURES)
    return _timed(
        "pictures",
        started,
        f"drew {len(paths)} pictures of one red-haired character in varied poses",
        paths={"pictures": str(out / "pictures")},
        images=[str(p) for p in paths],
    )


def _step_prep(out: Path, project, ctx: JobContext) -> DemoStep:
    from lib_dbchar.dataset.options import PrepConfig
    from lib_dbchar.dataset.prep import run_prep

    started = time.perf_counter()
    # Centre crops and no face detector: nothing to download, and the figures are centred anyway.
    config = PrepConfig(resolution=64, crop="center", face_detector=False, allow_download=False, min_side=64)
    result = run_prep(config, out / "pictures", project.dataset_dir, ctx)
    prepared = sorted(project.dataset_dir.glob("*.png"))
    return _timed(
        "prep",
        started,
        f"{len(prepared)} square 64 px pictures, {len(result.skipped)} skipped",
        paths={"dataset": str(project.dataset_dir), "report": str(project.dataset_dir / "prep-report.json")},
        images=[str(p) for p in prepared],
    )


def _step_tags(project, ctx: JobContext) -> DemoStep:
    from lib_dbchar.tagger.runner import TaggerConfig, run_tagging

    started = time.perf_counter()
    config = TaggerConfig(model_dir=str(ASSETS_DIR), write_mode="overwrite")
    json_out = project.root / "tags.json"
    result = run_tagging(config, project.dataset_dir, ctx, device="cpu", json_out=json_out)
    captions = sorted(project.dataset_dir.glob("*.txt"))
    first = captions[0].read_text(encoding="utf-8") if captions else ""
    return _timed(
        "tags",
        started,
        f"{len(captions)} captions by the WD14 tagger DOUBLE (not a real tagger; it tags by mean colour), "
        f"{len(result.problems)} problems; e.g. {first!r}",
        paths={"captions": str(project.dataset_dir), "scores": str(json_out)},
    )


def _step_concept(project):
    from lib_dbchar.concept import Concept, effective_instance_prompt, save_concepts

    started = time.perf_counter()
    concept = Concept(instance_token=TOKEN, num_class_images=PICTURES)
    save_concepts(project.concept_file, [concept])
    step = _timed(
        "concept",
        started,
        f"token {TOKEN!r}, instance prompt {effective_instance_prompt(concept)!r}, {PICTURES} class images",
        paths={"concept": str(project.concept_file)},
    )
    return concept, step


def _train_config(source: Path):
    from lib_dbchar.train.config import TrainConfig

    # Two epochs of 10 pictures at 64 px: seconds on a CPU, yet every artefact of a real run.
    return TrainConfig(
        source_checkpoint=str(source),
        epochs=2,
        max_steps=0,
        save_every_epochs=1,
        preview_every_epochs=1,
        resolution=64,
        mixed_precision="no",
        learning_rate=1e-3,
        preview_steps=2,
        class_steps=2,
        use_8bit_adam=False,
    )


def _step_training(
    project, concept, source, models_dir: Path, ctx: JobContext
) -> tuple[DemoStep, DemoStep, Path, Path]:
    from lib_dbchar.train.loop import train
    from lib_dbchar.train.run import RunSpec

    started = time.perf_counter()
    spec = RunSpec(
        project.root,
        RUN_NAME,
        _train_config(source.single_file),
        (concept,),
        models_dir,
        model_config_dir=source.diffusers_dir,
    )
    result = train(spec, ctx)
    if result.status != "finished" or not result.checkpoints:
        # Nothing to merge: the run was stopped (its files stay in the run folder).
        raise JobStopped(f"training {result.status} at step {result.step}; the merge was not run.")
    class_dir = project.classes_dir / "classifiers_0"
    class_images = sorted(class_dir.glob("*.png"))
    classes = DemoStep(
        "class images",
        f"{len(class_images)} class images from the source model (made by the training run first; "
        "its time is in the training step's)",
        paths={"class images": str(class_dir)},
        images=[str(p) for p in class_images],
    )
    training = _timed(
        "training",
        started,
        f"{result.status}: {result.step} steps, {result.epoch} epochs, "
        f"{len(result.checkpoints)} checkpoints, last loss {result.last_loss}",
        paths={
            "run folder": result.run_dir,
            "samples": str(Path(result.run_dir) / "samples"),
            "tensorboard": result.tensorboard_dir,
            "loss log": result.loss_log,
            **{f"checkpoint (step {c.step})": c.path for c in result.checkpoints},
        },
        images=list(result.previews),
    )
    return classes, training, Path(result.run_dir), Path(result.checkpoints[-1].path)


def _ranking_table(ranking) -> list[list[str]]:
    rows = [["checkpoint", "step", "score", "pose", "traits", "leak", "drift", "copies", "loss"]]
    for c in ranking.columns:
        mark = " (recommended)" if c.column == ranking.recommended else ""
        mark += " (frontal)" if c.column == ranking.frontal else ""
        rows.append(
            [
                c.column + mark,
                str(c.step),
                f"{c.score:.3f}",
                f"{c.pose:.0%}",
                f"{c.traits:.0%}",
                f"{c.leak:.0%}",
                f"{c.drift:.0%}",
                str(c.copies),
                f"{c.loss:.4f}" if c.loss is not None else "-",
            ]
        )
    return rows


def _step_pick(run_dir: Path, trained_last: Path, ctx: JobContext) -> tuple[DemoStep, Path]:
    from lib_dbchar.pick.grid import PickSettings
    from lib_dbchar.pick.run import run_pick
    from lib_dbchar.tagger.runner import TaggerConfig

    started = time.perf_counter()
    # The cells are as small and quick as the training previews: the point is the files and
    # the ranking's evidence, not pictures (the models are random).
    result = run_pick(
        run_dir,
        settings=PickSettings(steps=2, size=64),
        tagger=TaggerConfig(model_dir=str(ASSETS_DIR)),
        ctx=ctx,
    )
    ranking = result.ranking
    chosen = Path(result.recommended_path() or trained_last)
    best = ranking.column(ranking.recommended)
    notes = [f"recommended: {ranking.reasons.get('recommended', '')}"]
    notes += [f"  {e}" for e in (best.evidence if best else [])]
    notes.append(f"frontal poses: {ranking.reasons.get('frontal', '')}")
    notes += [f"warning: {w}" for w in result.warnings]
    step = _timed(
        "grid + ranking",
        started,
        f"{len(result.grid.probes)} probes x {len(result.grid.columns)} columns "
        f"({len(result.grid.cells)} cells) drawn, tagged by the tagger DOUBLE and ranked: "
        f"recommended {ranking.recommended}, frontal pick {ranking.frontal}",
        paths={
            "grid": result.grid_png,
            "ranking": result.ranking_json,
            "probes": str(run_dir / "pick" / "probes.json"),
            "cells": str(run_dir / "pick" / "cells"),
        },
        figure=result.grid_png,
        table=_ranking_table(ranking),
        notes=notes,
    )
    return step, chosen


def _step_merge(trained: Path, other: Path, source: Path, out: Path, ctx: JobContext) -> DemoStep:
    from lib_dbchar.merge.run import MergeConfig, run_merge

    started = time.perf_counter()
    result = run_merge(MergeConfig(fp16=False), trained, other, source, out, ctx=ctx)
    return _timed(
        "merge",
        started,
        f"add difference: {trained.name} (the recommended checkpoint) + (other - source) -> "
        f"{result.merged} tensors merged, "
        f"{result.passed_through} passed through",
        paths={
            "trained (A)": str(trained),
            "other (B)": str(other),
            "source (C)": str(source),
            "merged": str(result.output),
        },
    )


def run_demo(out_dir: Path, ctx: JobContext | None = None) -> DemoResult:
    """Run the whole chain on a drawn character inside ``out_dir``.

    Args:
        out_dir: a folder that must not exist yet (or be empty); everything goes inside it.
        ctx: progress (each step reports its own units) and stop requests (checked between steps
            and inside each step).

    Returns:
        The :class:`DemoResult`; also written as ``demo.json`` and ``report.html`` in ``out_dir``.

    Raises:
        TargetExists: ``out_dir`` exists and is not empty.
        JobStopped: the user stopped; finished steps' files stay.
    """
    from lib_dbchar.demo.report import write_report
    from lib_dbchar.demo.tiny import build_tiny_sd
    from lib_dbchar.errors import TargetExists
    from lib_dbchar.projects import create_project

    ctx = ctx or JobContext()
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise TargetExists(f"{out} exists and is not empty; pick another --out (the demo never overwrites).")
    out.mkdir(parents=True, exist_ok=True)
    result = DemoResult(str(out.resolve()))
    models = out / "models"

    started = time.perf_counter()
    source = build_tiny_sd("sd1", out / "tiny-models" / "source", seed=1)
    other = build_tiny_sd("sd1", out / "tiny-models" / "other", seed=7)
    result.steps.append(
        _timed(
            "models",
            started,
            "built two tiny random SD1 models (source, and 'other' with another seed)",
            paths={"source": str(source.single_file), "other": str(other.single_file)},
        )
    )
    project = create_project(out, "demo-character")
    ctx.check_stop("demo")
    result.steps.append(_step_pictures(out))
    ctx.check_stop("demo")
    result.steps.append(_step_prep(out, project, ctx))
    ctx.check_stop("demo")
    result.steps.append(_step_tags(project, ctx))
    concept, step = _step_concept(project)
    result.steps.append(step)
    ctx.check_stop("demo")
    classes, training, run_dir, last = _step_training(project, concept, source, models, ctx)
    result.steps.extend([classes, training])
    ctx.check_stop("demo")
    # The grid ranks the checkpoints; the recommended one is moved onto the other model.
    pick, trained = _step_pick(run_dir, last, ctx)
    result.steps.append(pick)
    ctx.check_stop("demo")
    merged = models / f"{RUN_NAME}-on-other.safetensors"
    result.steps.append(_step_merge(trained, other.single_file, source.single_file, merged, ctx))
    result.report = str(write_report(out, result))
    atomic_write(out / "demo.json", json.dumps(result.to_dict(), indent=2) + "\n")
    return result
