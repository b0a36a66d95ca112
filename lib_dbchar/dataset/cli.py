"""``python -m lib_dbchar prep SRC DST``: prepare a dataset from the command line.

The options are generated from :class:`~lib_dbchar.dataset.options.PrepConfig` (``--resolution``,
``--crop``, ``--flip/--no-flip``, ...), so the CLI, the UI form and the config validation share one
definition. The face detector is cached in ``--tagger-cache`` (the model cache; default: the
Hugging Face cache). Ctrl+C once stops after the pictures in progress and keeps what is done.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import typing
from pathlib import Path
from typing import Any

from lib_dbchar.config import FieldInfo, from_dict, specs
from lib_dbchar.dataset.options import PrepConfig

HELP = (
    "prepare a dataset: crop pictures to squares of the training size (never squashed), with a health report"
)


def _base_type(tp: Any) -> Any:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if len(args) == 1 else tp


def _add_field(parser: argparse.ArgumentParser, info: FieldInfo) -> None:
    flag = "--" + info.name.replace("_", "-")
    spec, tp = info.spec, _base_type(info.type)
    help_text = f"{spec.label}. {spec.help} (default: {info.default})".replace("%", "%%")
    if tp is bool:
        parser.add_argument(
            flag, dest=info.name, action=argparse.BooleanOptionalAction, default=None, help=help_text
        )
        return
    kwargs: dict[str, Any] = {"dest": info.name, "default": None, "help": help_text}
    if spec.choices:
        kwargs["choices"] = list(spec.choices)
    elif tp in (int, float):
        kwargs["type"] = tp
    parser.add_argument(flag, **kwargs)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The positional SRC... DST and one option per :class:`PrepConfig` field."""
    parser.add_argument(
        "src",
        nargs="+",
        metavar="SRC",
        help="a folder of pictures, or picture files (captions: same stem, .txt)",
    )
    parser.add_argument("dst", metavar="DST", help="the dataset folder to write (e.g. a project's dataset/)")
    for info in specs(PrepConfig):
        _add_field(parser, info)
    parser.add_argument("--json", action="store_true", help="print the result as JSON instead of a summary")


def config_from_args(args: argparse.Namespace) -> PrepConfig:
    """The validated config from the parsed options (only those given; the rest keep defaults).

    Raises:
        ValueError: naming the field, for an invalid value.
    """
    given = {
        i.name: getattr(args, i.name) for i in specs(PrepConfig) if getattr(args, i.name, None) is not None
    }
    return from_dict(PrepConfig, given)


def _source(args: argparse.Namespace) -> Path | list[Path]:
    paths = [Path(p) for p in args.src]
    return paths[0] if len(paths) == 1 and paths[0].is_dir() else paths


class _StopOnInterrupt:
    """The first Ctrl+C asks the job to stop gracefully; a second one interrupts at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> _StopOnInterrupt:
        # Signal handlers can only be set from the main thread (a test runner may call us elsewhere).
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def _handle(self, signum: int, frame: object) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        sys.stderr.write("\nStopping after the pictures in progress (Ctrl+C again to quit at once)...\n")

    def __call__(self) -> bool:
        return self.requested


def run(args: argparse.Namespace) -> int:
    """Run prep; exit 0 when pictures were prepared, 1 when none could be, 130 when stopped."""
    from lib_dbchar.dataset.prep import PrepStopped, run_prep
    from lib_dbchar.jobs import JobContext, Progress

    try:
        config = config_from_args(args)
    except ValueError as exc:
        sys.stderr.write(f"dbchar prep: {exc}\n")
        return 2

    def show(p: Progress) -> None:
        if p.text:
            sys.stderr.write(f"  {p.text}\n")

    cache = Path(args.tagger_cache) if getattr(args, "tagger_cache", None) else None
    with _StopOnInterrupt() as stop:
        try:
            result = run_prep(
                config, _source(args), Path(args.dst), JobContext(show, stop), model_cache=cache
            )
        except PrepStopped as stopped:
            result = stopped.result
    text = json.dumps(result.to_dict(), indent=1, ensure_ascii=False) if args.json else result.as_text()
    sys.stdout.write(text + "\n")
    if result.stopped:
        return 130
    return 0 if result.prepared else 1
