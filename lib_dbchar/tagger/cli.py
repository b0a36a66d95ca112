"""``python -m lib_dbchar tag DIR``: write a WD14 caption beside every picture of a folder."""

from __future__ import annotations

import argparse
import sys

from lib_dbchar.tagger.captions import ORDERS, WRITE_MODES
from lib_dbchar.tagger.models import DEFAULT_MODEL, MODEL_KEYS

HELP = "tag every picture of a folder with a WD14 tagger (writes stem.txt captions)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``tag`` command's options (the CLI adds the common --models-dir, --tagger-cache, --device)."""
    parser.add_argument("dir", metavar="DIR", help="folder of pictures")
    parser.add_argument("--model", default=DEFAULT_MODEL, choices=MODEL_KEYS, help="default: %(default)s")
    parser.add_argument(
        "--model-dir",
        default="",
        help="a folder with model.onnx and selected_tags.csv (replaces --model; nothing is downloaded)",
    )
    parser.add_argument("--general-threshold", type=float, default=0.35, help="default: %(default)s")
    parser.add_argument("--character-threshold", type=float, default=0.85, help="default: %(default)s")
    parser.add_argument("--mcut", action="store_true", help="MCut thresholds for general and character tags")
    parser.add_argument("--escape", action="store_true", help="escape \\ ( ) for prompt use")
    parser.add_argument("--order", default="confidence", choices=ORDERS, help="default: %(default)s")
    parser.add_argument("--max-tags", type=int, default=0, help="keep the N most confident tags (0: all)")
    parser.add_argument("--exclude", default="", help="comma-separated tags never written")
    parser.add_argument("--always-first", default="", help="comma-separated tags put first (instance token)")
    parser.add_argument(
        "--replace", action="append", default=[], metavar="'OLD -> NEW'", help="replace a tag (repeatable)"
    )
    parser.add_argument(
        "--write",
        default="skip",
        choices=WRITE_MODES,
        help="what to do with existing captions (default: %(default)s)",
    )
    parser.add_argument(
        "--json",
        dest="json_out",
        default=None,
        metavar="OUT",
        help="also write every picture's scored tags to this JSON file",
    )
    parser.add_argument("--recursive", action="store_true", help="include sub-folders")
    parser.add_argument(
        "--ignore-exif",
        action="store_true",
        help="do not rotate by EXIF orientation (as the reference taggers)",
    )
    parser.add_argument("--batch-size", type=int, default=0, help="0: automatic")
    parser.add_argument("--workers", type=int, default=0, help="loader threads (0: one per core)")
    parser.add_argument("--offline", action="store_true", help="never download; use the cache or --model-dir")


def config_from_args(args: argparse.Namespace):  # -> TaggerConfig (imported lazily)
    """The :class:`TaggerConfig` the options describe.

    Raises:
        ValueError: an option is out of range; the message names the field.
    """
    from lib_dbchar.config import from_dict
    from lib_dbchar.tagger.runner import TaggerConfig

    return from_dict(
        TaggerConfig,
        {
            "model": args.model,
            "model_dir": args.model_dir or "",
            "general_threshold": args.general_threshold,
            "character_threshold": args.character_threshold,
            "general_mcut": args.mcut,
            "character_mcut": args.mcut,
            "escape": args.escape,
            "order": args.order,
            "max_tags": args.max_tags,
            "exclude": args.exclude,
            "always_first": args.always_first,
            "replacements": "\n".join(args.replace),
            "write_mode": args.write,
            "recursive": args.recursive,
            "exif_transpose": not args.ignore_exif,
            "batch_size": args.batch_size,
            "workers": args.workers,
            "allow_download": not args.offline,
        },
    )


def run(args: argparse.Namespace) -> int:
    """Tag the folder; exit 0 when every picture was handled, 1 when some were skipped, 2 on bad options."""
    from lib_dbchar.jobs import JobContext, Progress
    from lib_dbchar.tagger.runner import run_tagging

    try:
        config = config_from_args(args)
    except ValueError as exc:
        sys.stderr.write(f"dbchar tag: {exc}\n")
        return 2

    def show(p: Progress) -> None:
        sys.stderr.write(f"\r  {p.done}/{p.total} {p.text[:90]:<90}")
        sys.stderr.flush()

    result = run_tagging(
        config,
        args.dir,
        JobContext(progress=show),
        device=args.device or "auto",
        cache_dir=args.tagger_cache or None,
        json_out=args.json_out,
    )
    sys.stderr.write("\n")
    sys.stdout.write(result.summary() + "\n")
    return 1 if result.problems else 0
