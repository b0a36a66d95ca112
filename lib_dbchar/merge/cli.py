"""``python -m lib_dbchar merge``: the webui's Checkpoint Merger on the command line, streamed.

    python -m lib_dbchar merge --primary trained.safetensors --secondary anything.safetensors \\
        --tertiary sd15.safetensors --method add_difference --multiplier 1 --out result.safetensors

prints the path of the new checkpoint on stdout (progress and a summary go to stderr). With
``--method lora`` it writes (primary - tertiary) as a LoRA file instead; ``--check-lineage``
first checks that the primary was trained from the tertiary.
"""

from __future__ import annotations

import argparse
import sys

from lib_dbchar.errors import DbcharError
from lib_dbchar.jobs import JobContext, Progress

HELP = "merge checkpoints like the webui's Checkpoint Merger (streamed), or transfer a character as a LoRA"
LORA = "lora"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The merge command's options."""
    from lib_dbchar.merge.methods import METHODS
    from lib_dbchar.merge.run import CONFIG_SOURCES

    parser.add_argument("--primary", required=True, help="A: the trained model")
    parser.add_argument("--secondary", help="B: the model to move the character onto")
    parser.add_argument("--tertiary", help="C: the model A was trained from (add_difference, lora)")
    parser.add_argument(
        "--method",
        choices=(*METHODS, LORA),
        default="add_difference",
        help="A + M(B - C), (1-M)A + MB, or a LoRA of A - C (default: %(default)s)",
    )
    parser.add_argument("--multiplier", type=float, default=1.0, help="M, 0..1 (default: %(default)s)")
    parser.add_argument(
        "--fp16",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="save float32 results as float16 (default: on)",
    )
    parser.add_argument("--discard", default="", metavar="REGEX", help="leave out keys this regex finds")
    parser.add_argument("--bake-vae", default=None, metavar="VAE", help="a VAE file to bake into the result")
    parser.add_argument(
        "--config-source",
        choices=CONFIG_SOURCES,
        default="any",
        help="copy the .yaml beside this input next to the result (default: %(default)s)",
    )
    parser.add_argument(
        "--keep-position-ids",
        action="store_true",
        help="copy A's text position ids as they are, even if damaged (the webui's way)",
    )
    parser.add_argument("--no-metadata", action="store_true", help="write no metadata")
    parser.add_argument(
        "--no-recipe", action="store_true", help="no sd_merge_recipe (skips hashing the inputs)"
    )
    parser.add_argument(
        "--rank", type=int, default=32, help="LoRA rank (--method lora; default: %(default)s)"
    )
    parser.add_argument(
        "--conv-rank",
        type=int,
        default=0,
        help="LoRA rank of the UNet's convolutions, 0 for none (default: %(default)s)",
    )
    parser.add_argument(
        "--check-lineage",
        action="store_true",
        help="first check that the primary was trained from the tertiary; stop if not",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument("--out", required=True, help="the new .safetensors file")


def _progress() -> JobContext:
    last = {"step": -1, "total": -1}

    def show(p: Progress) -> None:
        # A line per 5 % is enough on a terminal and cheap for 1000+ tensors.
        step = int(p.fraction * 20)
        if step != last["step"] or p.total != last["total"]:
            last.update(step=step, total=p.total)
            sys.stderr.write(f"  {p.fraction * 100:3.0f}% {p.text}\n")

    return JobContext(progress=show)


def run(args: argparse.Namespace) -> int:
    """Run the command; 0 on success, 1 when the inputs or settings are refused."""
    try:
        if args.check_lineage and not _lineage_ok(args):
            return 1
        return _lora(args) if args.method == LORA else _merge(args)
    except (DbcharError, ValueError, FileNotFoundError) as exc:
        sys.stderr.write(f"dbchar merge: {exc}\n")
        return 1


def _lineage_ok(args: argparse.Namespace) -> bool:
    from lib_dbchar.merge.lineage import check_descent

    if not args.tertiary:
        msg = "--check-lineage needs --tertiary (the model the primary was trained from)"
        raise ValueError(msg)
    others = [args.secondary] if args.secondary else []
    report = check_descent(args.primary, args.tertiary, others, ctx=_progress())
    sys.stderr.write(f"lineage: {report.verdict}: {report.message}\n")
    return report.verdict != "unrelated"


def _merge(args: argparse.Namespace) -> int:
    from lib_dbchar.config import from_dict
    from lib_dbchar.merge.run import MergeConfig, run_merge

    if not args.secondary:
        msg = "--secondary is required for a merge"
        raise ValueError(msg)
    config = from_dict(
        MergeConfig,
        {
            "method": args.method,
            "multiplier": args.multiplier,
            "fp16": args.fp16,
            "discard_weights": args.discard,
            "config_source": args.config_source,
            "fix_position_ids": not args.keep_position_ids,
            "save_metadata": not args.no_metadata,
            "add_merge_recipe": not args.no_recipe,
        },
    )
    result = run_merge(
        config,
        args.primary,
        args.secondary,
        args.tertiary,
        args.out,
        vae=args.bake_vae,
        overwrite=args.overwrite,
        ctx=_progress(),
    )
    sys.stderr.write(result.summary() + "\n")
    sys.stdout.write(result.output + "\n")
    return 0


def _lora(args: argparse.Namespace) -> int:
    from lib_dbchar.config import from_dict
    from lib_dbchar.merge.lora import LoraConfig, run_extract_lora

    if not args.tertiary:
        msg = "--method lora needs --tertiary: the model the primary was trained from"
        raise ValueError(msg)
    if args.secondary:
        msg = "--method lora uses --primary and --tertiary only; drop --secondary"
        raise ValueError(msg)
    config = from_dict(LoraConfig, {"rank": args.rank, "conv_rank": args.conv_rank, "fp16": args.fp16})
    result = run_extract_lora(
        config, args.primary, args.tertiary, args.out, overwrite=args.overwrite, ctx=_progress()
    )
    sys.stderr.write(
        f"LoRA with {result.unet_modules} UNet and {result.text_modules} text encoder layers "
        f"({result.unchanged} unchanged left out), keeps {result.retained:.1%} of the change.\n"
    )
    sys.stdout.write(result.output + "\n")
    return 0
