"""``python -m lib_dbchar demo``: run the whole chain on a drawn character, offline, on CPU."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "run the whole chain (pictures -> tags -> training -> grid + ranking -> merge) on a built-in example"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the demo's options to its sub-parser."""
    parser.add_argument(
        "--out",
        default=None,
        help="folder for everything the demo makes; must not exist or be empty "
        "(default: a new dbchar-demo[-N] folder in the current directory)",
    )


def _say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()  # a subprocess' output is block-buffered; show progress as it happens


def _print_progress(progress) -> None:
    # About ten lines per job: a merge reports every tensor, which would flood the terminal.
    every = max(1, progress.total // 10) if progress.total else 1
    if progress.text and (progress.done % every == 0 or progress.done == progress.total):
        _say(f"  [{progress.done}/{progress.total}] {progress.text}")


def print_summary(result) -> None:
    """Print where every step's files are."""
    _say(f"\nThe demo is in {result.out_dir}")
    for step in result.steps:
        _say(f"\n{step.name}: {step.summary} ({step.seconds:.1f} s)")
        for role, path in step.paths.items():
            _say(f"    {role}: {path}")
    for note in result.skipped:
        _say(f"\nSkipped: {note}")
    _say(f"\nReport: {result.report}")


def run(args: argparse.Namespace) -> int:
    """Run the demo; 0 on success, 1 when the output folder is taken or the user stopped."""
    import torch

    from lib_dbchar.demo.run import default_out_dir, run_demo
    from lib_dbchar.errors import DbcharError
    from lib_dbchar.jobs import JobContext

    out = Path(args.out) if args.out else default_out_dir(Path.cwd())
    # Tiny models gain nothing from threads; on a busy 2-core machine OpenMP waits dominate.
    torch.set_num_threads(1)
    _say(f"dbchar demo -> {out}")
    _say(
        "Tagging uses the bundled WD14 tagger double (a 1 KB stand-in that tags by mean colour), "
        "not a real tagger: the demo stays offline."
    )
    try:
        result = run_demo(out, JobContext(progress=_print_progress))
    except DbcharError as exc:  # JobStopped and TargetExists are DbcharErrors
        _say(f"demo: {exc}")
        return 1
    print_summary(result)
    return 0
