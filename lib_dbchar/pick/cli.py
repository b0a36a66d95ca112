"""``python -m lib_dbchar pick RUN_DIR``: the overfitting-test grid of a run, scored and ranked.

    python -m lib_dbchar pick ~/dbchar/hero/runs/hero --steps 20 --size 512

draws every probe with the source model and each checkpoint (cached: a second call draws only new
checkpoints), tags the cells with the WD14 tagger (``--tagger-model DIR`` for a local model
folder), and prints the ranking, the recommended and frontal checkpoints with the evidence, and
where ``grid.png`` and ``ranking.json`` are. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lib_dbchar.jobs import JobContext, Progress

HELP = "render a run's overfitting-test grid, score it with the tagger and rank its checkpoints"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The pick command's options."""
    parser.add_argument(
        "run_dir", metavar="RUN_DIR", help="the run folder (<project>/runs/<run>) or its run.json"
    )
    parser.add_argument("--steps", type=int, default=None, help="sampling steps per cell (default: 20)")
    parser.add_argument("--size", type=int, default=None, help="cell size in pixels (default: 512)")
    parser.add_argument("--cfg", type=float, default=None, help="CFG scale (default: 7)")
    parser.add_argument("--scheduler", default=None, help="ddim, euler_a or dpmpp_2m (default: ddim)")
    parser.add_argument(
        "--tagger-model",
        default=None,
        metavar="DIR",
        help="a local WD14 model folder (model.onnx + selected_tags.csv)",
    )
    parser.add_argument(
        "--copy-similarity", type=float, default=None, help="copy threshold 0..1 (default: 0.95)"
    )
    parser.add_argument(
        "--json", action="store_true", help="print the whole result as JSON instead of a table"
    )


def _say(text: str = "") -> None:
    sys.stdout.write(text + "\n")


def _progress(p: Progress) -> None:
    every = max(1, p.total // 20) if p.total else 1
    if p.text and (p.done % every == 0 or p.done == p.total):
        sys.stderr.write(f"  [{p.done * 100 // max(1, p.total)}%] {p.text}\n")


def _settings(args: argparse.Namespace):
    from lib_dbchar.config import from_dict
    from lib_dbchar.pick.grid import PickSettings
    from lib_dbchar.pick.score import ScoreSettings

    render = {
        k: getattr(args, k) for k in ("steps", "size", "cfg", "scheduler") if getattr(args, k) is not None
    }
    score = {"copy_similarity": args.copy_similarity} if args.copy_similarity is not None else {}
    return from_dict(PickSettings, render), from_dict(ScoreSettings, score)


def _pct(value: float) -> str:
    return f"{value:.0%}"


def format_ranking(result) -> list[str]:
    """The ranking as table lines, then the picks with their evidence and the files.

    Args:
        result: a :class:`~lib_dbchar.pick.run.PickResult`.

    Returns:
        Lines of text (no newlines).
    """
    ranking = result.ranking
    header = f"{'#':>2}  {'checkpoint':<28} {'step':>6} {'score':>7} {'pose':>5} {'traits':>6} "
    header += f"{'leak':>5} {'drift':>5} {'copies':>6} {'loss':>8}"
    lines = [header]
    for n, c in enumerate(ranking.columns, 1):
        mark = " *" if c.column == ranking.recommended else (" f" if c.column == ranking.frontal else "")
        loss = f"{c.loss:.4f}" if c.loss is not None else "-"
        lines.append(
            f"{n:>2}  {(c.column + mark):<28} {c.step:>6} {c.score:>7.3f} {_pct(c.pose):>5} "
            f"{_pct(c.traits):>6} {_pct(c.leak):>5} {_pct(c.drift):>5} {c.copies:>6} {loss:>8}"
        )
    lines.append("")
    for role, key, path in (
        ("recommended (*)", ranking.recommended, result.recommended_path()),
        ("frontal poses (f)", ranking.frontal, result.frontal_path()),
    ):
        lines.append(f"{role}: {key or 'none'}{f' -> {path}' if path else ''}")
        reason = ranking.reasons.get("recommended" if role.startswith("rec") else "frontal", "")
        if reason:
            lines.append(f"    {reason}")
        column = ranking.column(key)
        if column is not None and not (role.startswith("frontal") and key == ranking.recommended):
            lines += [f"    - {e}" for e in column.evidence]
    lines += ["", f"grid: {result.grid_png}", f"ranking: {result.ranking_json}"]
    lines += [f"warning: {w}" for w in result.warnings]
    return lines


def run(args: argparse.Namespace) -> int:
    """Render, score and rank; 0 on success, 1 on a problem the message explains."""
    import json

    from lib_dbchar.errors import DbcharError
    from lib_dbchar.host.standalone import best_device
    from lib_dbchar.pick.run import run_pick
    from lib_dbchar.tagger.runner import TaggerConfig

    run_dir = Path(args.run_dir)
    if run_dir.name == "run.json":
        run_dir = run_dir.parent
    try:
        settings, score = _settings(args)
        tagger = TaggerConfig(model_dir=args.tagger_model) if args.tagger_model else None
        result = run_pick(
            run_dir,
            settings=settings,
            score=score,
            device=args.device or best_device(),
            ctx=JobContext(progress=_progress),
            tagger=tagger,
            tagger_cache=args.tagger_cache,
        )
    except (DbcharError, ValueError, FileNotFoundError) as exc:
        sys.stderr.write(f"pick: {exc}\n")
        return 1
    if args.json:
        _say(json.dumps(result.to_dict(), indent=2))
    else:
        for line in format_ranking(result):
            _say(line)
    return 0
