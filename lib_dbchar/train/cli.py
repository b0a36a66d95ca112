"""``python -m lib_dbchar train PROJECT_OR_CONFIG [--resume]``.

``PROJECT_OR_CONFIG`` is one of:

* a run's ``run.json`` or run folder -- train (or ``--resume``) exactly that run;
* a project folder, or a project name under ``--projects-dir`` -- its ``concept.json`` and, if
  present, its ``train.json`` settings, then ``--preset`` and ``--set field=value`` on top.

Ctrl+C stops cleanly: the state (and a checkpoint) is saved and ``--resume`` continues. A second
Ctrl+C ends the process at once.

Several GPUs (data parallel, one process per GPU; :mod:`~lib_dbchar.train.distributed`)::

    accelerate launch --multi_gpu --num_processes 2 -m lib_dbchar train PROJECT_OR_CONFIG
    torchrun --nproc_per_node 2 -m lib_dbchar train PROJECT_OR_CONFIG

``batch_size`` stays the whole step's batch (split among the processes), so the run trains what one
process would, to rounding, and writes the same files (rank 0 writes them). Under a launcher Ctrl+C
and SIGTERM both stop cleanly and a repeat is ignored: the launcher passes the signal on, and kills
the processes itself if they take too long. The processes then exit with 130, which the launcher
reports as a failure; the state is saved and ``--resume`` (with any number of processes) continues.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HELP = (
    "train a Dreambooth checkpoint of a project's character (or resume a run); "
    "several GPUs: accelerate launch --multi_gpu --num_processes N -m lib_dbchar train ..."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "target", metavar="PROJECT_OR_CONFIG", help="a project (folder or name), or a run.json / run folder"
    )
    parser.add_argument("--resume", action="store_true", help="continue the run from its saved state")
    parser.add_argument("--run", default=None, help="run name (default: the project's name)")
    parser.add_argument(
        "--source", default=None, help="source checkpoint: a title/file under --models-dir, or a path"
    )
    parser.add_argument(
        "--preset", default=None, help="a preset name (e.g. 'Character (guide)') or preset file"
    )
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
        help="override one setting, e.g. --set epochs=100 (repeatable; names as in train.json)",
    )  # fmt: skip
    parser.add_argument(
        "--model-config", default=None, help="a diffusers folder whose configs match the source"
    )
    parser.add_argument(
        "--tokenizer", default=None, help="a CLIP tokenizer folder (default: found on this machine)"
    )
    parser.add_argument("--plan", action="store_true", help="print the steps plan and warnings, and stop")


def parse_overrides(items: Sequence[str]) -> dict[str, str]:
    """``["epochs=100", "learning_rate=2e-6"]`` -> ``{"epochs": "100", ...}``.

    Raises:
        ValueError: an item without ``=``.
    """
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set {item!r}: write FIELD=VALUE, e.g. --set epochs=100")
        out[key.strip()] = value.strip()
    return out


def _project_root(args: argparse.Namespace, host: Any) -> Path:
    target = Path(args.target).expanduser()
    if target.is_dir():
        return target
    from lib_dbchar.projects import open_project

    return open_project(host.projects_dir(), args.target).root


def build_spec(args: argparse.Namespace, host: Any) -> Any:
    """The :class:`~lib_dbchar.train.run.RunSpec` the arguments describe.

    Raises:
        ValueError, FileNotFoundError, DbcharError: with a message naming what to fix.
    """
    from dataclasses import replace

    from lib_dbchar.concept import load_concepts
    from lib_dbchar.config import from_dict, to_dict
    from lib_dbchar.train.config import (
        TRAIN_CONFIG_FILE,
        TrainConfig,
        apply_preset,
        find_preset,
        load_train_config,
    )
    from lib_dbchar.train.run import RUN_FILE, RunSpec, load_run_spec

    target = Path(args.target).expanduser()
    if target.name == RUN_FILE or (target / RUN_FILE).is_file():
        spec = load_run_spec(target)
    else:
        root = _project_root(args, host)
        train_file = root / TRAIN_CONFIG_FILE
        config = load_train_config(train_file) if train_file.is_file() else TrainConfig()
        spec = RunSpec(
            project_dir=root,
            run_name=args.run or root.name,
            config=config,
            concepts=tuple(load_concepts(root / "concept.json")),
            checkpoint_dir=host.checkpoint_dir(),
            device=host.device(),
        )
    config = spec.config
    if args.preset:
        config = apply_preset(config, find_preset(args.preset, host.projects_dir() / "presets"))
    overrides = parse_overrides(args.overrides)
    if overrides:
        config = from_dict(TrainConfig, {**to_dict(config), **overrides})
    if args.source:
        config = replace(config, source_checkpoint=args.source)
    config = replace(config, source_checkpoint=_resolve_source(config.source_checkpoint, host))
    return replace(
        spec,
        config=config,
        device=args.device or spec.device,
        model_config_dir=Path(args.model_config) if args.model_config else spec.model_config_dir,
        tokenizer_dir=Path(args.tokenizer) if args.tokenizer else spec.tokenizer_dir,
    )


def _resolve_source(source: str, host: Any) -> str:
    if not source.strip():
        msg = "TrainConfig.source_checkpoint: name the model to train from (--source FILE)."
        raise ValueError(msg)
    ref = host.find_checkpoint(source)
    if ref is None:
        raise FileNotFoundError(
            f"Source checkpoint {source!r} is neither a file nor listed under {host.checkpoint_dir()}."
        )
    return str(ref.path)


def _print_plan(spec: Any) -> None:
    from lib_dbchar.train.data import concept_counts
    from lib_dbchar.train.plan import plan_steps

    counts, warnings = concept_counts(spec.concepts, spec.project_dir)
    plan = plan_steps(spec.config, counts)
    sys.stdout.write(plan.formula + "\n")
    for line in (*warnings, *plan.warnings):
        sys.stdout.write(f"  - {line}\n")


def _stop_on_ctrl_c(*, launched: bool = False) -> threading.Event:
    """First Ctrl+C asks the loop to stop (state saved); the second one interrupts at once.

    Under a launcher (``launched``) each process gets the terminal's Ctrl+C and then the same
    signal again from the launcher, and a launcher stops its processes with SIGTERM: both signals
    ask to stop, and repeats are ignored (the launcher kills processes that do not end in time).
    """
    stop = threading.Event()

    def handler(signum: int, frame: Any) -> None:
        if stop.is_set():
            return
        stop.set()
        if not launched:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            sys.stderr.write("\nStopping after this step (Ctrl+C again to abort without saving)...\n")

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, handler)
        if launched:
            signal.signal(signal.SIGTERM, handler)
    return stop


def run(args: argparse.Namespace) -> int:
    """Train; exit 0 when the run finished, 130 when stopped (resumable), 1 on an error, 2 on bad options."""
    from lib_dbchar.cli import _host
    from lib_dbchar.jobs import JobContext, Progress, no_progress
    from lib_dbchar.train.distributed import from_environ, process_group
    from lib_dbchar.train.loop import train
    from lib_dbchar.train.run import TrainingStopped

    host = _host(args)
    try:
        processes = from_environ(os.environ)
        spec = build_spec(args, host)
    except (ValueError, FileNotFoundError) as exc:
        sys.stderr.write(f"dbchar train: {exc}\n")
        return 2
    if args.plan:
        if processes.is_main:
            _print_plan(spec)
        return 0

    def show(p: Progress) -> None:
        sys.stderr.write(f"\r  {p.done}/{p.total} {p.text[:90]:<90}")
        sys.stderr.flush()

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    stop = _stop_on_ctrl_c(launched=processes.distributed)
    try:
        with process_group(processes, spec.device) as group:
            ctx = JobContext(progress=show if group.is_main else no_progress, should_stop=stop.is_set)
            result = train(spec, ctx, resume=args.resume, processes=group)
    except TrainingStopped as stopped:
        if processes.is_main:
            sys.stderr.write(f"\n{stopped}\nState: {stopped.result.state_file}\n")
        return 130
    finally:
        if threading.current_thread() is threading.main_thread():
            for sig, handler in previous.items():
                fallback = signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL
                signal.signal(sig, handler if handler is not None else fallback)
    if not processes.is_main:
        return 0
    host.refresh_checkpoints()
    sys.stderr.write("\n")
    for line in result.warnings:
        sys.stdout.write(f"warning: {line}\n")
    sys.stdout.write(
        f"Finished at step {result.step} (epoch {result.epoch}); checkpoints:\n"
        + "".join(f"  {c.path}\n" for c in result.checkpoints)
        + f"Loss curve: tensorboard --logdir {result.tensorboard_dir}\n"
    )
    return 0
