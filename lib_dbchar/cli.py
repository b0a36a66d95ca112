"""The command line: ``python -m lib_dbchar <command>``.

Each command is a small function taking the parsed arguments; heavy imports happen inside it, so
``--help`` is instant. Commands that need a host build a :class:`StandaloneHost` from the common
options.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable
from pathlib import Path

from lib_dbchar.errors import DbcharError
from lib_dbchar.version import __version__


def _host(args: argparse.Namespace):
    from lib_dbchar.host.standalone import StandaloneHost
    from lib_dbchar.settings import Settings

    settings = Settings(
        projects_dir=str(args.projects_dir or ""), tagger_cache_dir=str(args.tagger_cache or "")
    )
    return StandaloneHost(Path(args.models_dir), settings, device=args.device)


def cmd_ui(args: argparse.Namespace) -> int:
    """Start the five tabs in a browser page on this machine."""
    from lib_dbchar.ui.app import launch

    launch(_host(args), listen=args.listen, port=args.port, open_browser=args.open)
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    """Check packages, device and folders; exit 1 when something needs fixing."""
    from lib_dbchar.doctor import facts_from, run_checks
    from lib_dbchar.jobs import JobContext, Progress

    def show(p: Progress) -> None:
        print(f"  {p.done}/{p.total} {p.text}", file=sys.stderr)

    report = run_checks(facts_from(_host(args)), JobContext(progress=show))
    print(report.as_text())
    return 0 if report.ok else 1


# name -> (handler, one-line help, extra-arguments adder or None), for the commands defined here.
COMMANDS: dict[
    str, tuple[Callable[[argparse.Namespace], int], str, Callable[[argparse.ArgumentParser], None] | None]
] = {}

# name -> module for the commands that live beside their feature. Each such module defines
# HELP (one line), add_arguments(parser) and run(args) -> exit code; it is imported only when the
# parser is built, and must itself import heavy packages (torch, onnxruntime) inside run().
COMMAND_MODULES: dict[str, str] = {
    "demo": "lib_dbchar.demo.cli",
    "tag": "lib_dbchar.tagger.cli",
    "prep": "lib_dbchar.dataset.cli",
    "merge": "lib_dbchar.merge.cli",
    "train": "lib_dbchar.train.cli",
    "pick": "lib_dbchar.pick.cli",
}


def _ui_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--listen", default="127.0.0.1", help="address to serve on (default: %(default)s, this machine only)"
    )
    p.add_argument(
        "--port", type=int, default=int(os.environ.get("DBCHAR_PORT", "7870")), help="default: %(default)s"
    )
    p.add_argument("--open", action="store_true", help="open the page in the default browser")


COMMANDS["ui"] = (cmd_ui, "start the dbchar tabs standalone in your browser", _ui_args)
COMMANDS["doctor"] = (cmd_doctor, "check packages, device and folders", None)


def _all_commands() -> dict[str, tuple]:
    commands = dict(COMMANDS)
    for name, module_name in COMMAND_MODULES.items():
        module = importlib.import_module(module_name)
        commands[name] = (module.run, module.HELP, module.add_arguments)
    return commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lib_dbchar",
        description="dbchar: from ~20 pictures of a character to a Dreambooth checkpoint, "
        "and onto any model.",
    )
    parser.add_argument("--version", action="version", version=f"dbchar {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--models-dir",
        default=os.environ.get("DBCHAR_MODELS_DIR", "models"),
        help="checkpoints folder (default: %(default)s)",
    )
    common.add_argument("--projects-dir", default=None, help="projects folder (default: ~/dbchar)")
    common.add_argument("--tagger-cache", default=None, help="tagger model cache (default: Hugging Face's)")
    common.add_argument(
        "--device", default=None, help="cuda, cuda:1, mps or cpu (default: the best available)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name, (handler, help_text, add_args) in _all_commands().items():
        p = sub.add_parser(name, help=help_text, description=help_text, parents=[common])
        if add_args is not None:
            add_args(p)
        p.set_defaults(handler=handler)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return args.handler(args)
    except DbcharError as exc:
        print(f"dbchar: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("dbchar: stopped", file=sys.stderr)
        return 130
