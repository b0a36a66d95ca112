"""Run a checkpoint merge: the settings, the job and its result.

A tab (or the CLI) builds a :class:`MergeConfig` with :func:`lib_dbchar.config.from_dict`, picks
the files and calls :func:`run_merge`; the returned :class:`MergeResult` names the new file (hand
it to ``host.refresh_checkpoints()``) and the recipe, and serialises to JSON.

The merge streams: all inputs are open at once, each output tensor is read, computed and written
before the next, and memory holds a few tensors (tens of MB for SD1.5) instead of three models.
The output is tensor-for-tensor what the webui 1.10.1 Checkpoint Merger writes for the same
settings (see :mod:`lib_dbchar.merge.plan` for the rules, and the one documented difference,
``fix_position_ids``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lib_dbchar.checkpoint.detect import config_beside
from lib_dbchar.checkpoint.io import SAFETENSORS_SUFFIX
from lib_dbchar.checkpoint.metadata import ModelIdentity, copied_metadata, identify, webui_merge_fields
from lib_dbchar.checkpoint.reader import CheckpointReader, open_checkpoint
from lib_dbchar.config import setting
from lib_dbchar.errors import DbcharError, TargetExists
from lib_dbchar.jobs import JobContext
from lib_dbchar.merge.execute import MergeMath, write_plan
from lib_dbchar.merge.methods import ADD_DIFFERENCE, METHODS, WEBUI_METHOD_NAMES, WEIGHTED_SUM
from lib_dbchar.merge.plan import (
    BAKE_VAE,
    COPY,
    MERGE,
    MERGE_CHANNELS,
    REPAIR_POSITION_IDS,
    RESULT_SUFFIX,
    MergeInputs,
    MergePlan,
    plan_merge,
)
from lib_dbchar.merge.stream import stream_safetensors
from lib_dbchar.version import __version__

CONFIG_SOURCES = ("any", "secondary", "tertiary", "none")
# The webui's config_source numbers for the same choices (its recipe records the number).
_WEBUI_CONFIG_SOURCE = {"any": 0, "secondary": 1, "tertiary": 2, "none": 3}
RECIPE_KEY = "dbchar_merge_recipe"


@dataclass(frozen=True)
class MergeConfig:
    """How to merge (the files themselves are arguments of :func:`run_merge`)."""

    method: str = setting(
        ADD_DIFFERENCE,
        label="Method",
        help="add_difference: A + M x (B - C), moves what training added to C onto B. "
        "weighted_sum: (1 - M) x A + M x B.",
        choices=METHODS,
    )
    multiplier: float = setting(
        1.0,
        label="Multiplier (M)",
        help="1 moves the whole character for add_difference; for weighted_sum, 0 is A and 1 is B.",
        minimum=0.0,
        maximum=1.0,
        step=0.05,
    )
    fp16: bool = setting(
        True,
        label="Save as float16",
        help="Halves float32 results (half the file size; what the webui's 'Save as float16' does).",
    )
    discard_weights: str = setting(
        "",
        label="Discard weights (regex)",
        help="Keys this regular expression finds are left out, e.g. ^model_ema to drop EMA copies.",
    )
    config_source: str = setting(
        "any",
        label="Copy config from",
        help="Copy the .yaml beside an input (needed by SD2-768-v models) next to the result: 'any' takes "
        "the first of A, B, C that has one.",
        choices=CONFIG_SOURCES,
    )
    fix_position_ids: bool = setting(
        True,
        label="Repair text position ids",
        help="If A carries float position_ids damaged by an old merge, write the correct 0..76 instead. "
        "Off: copy A's as the webui does.",
    )
    save_metadata: bool = setting(True, label="Save metadata", help="Write metadata into the file.")
    copy_metadata_fields: bool = setting(
        True, label="Copy metadata from inputs", help="Carry over A's, B's and C's metadata (later wins)."
    )
    add_merge_recipe: bool = setting(
        True,
        label="Add merge recipe",
        help="Record how the file was made (sd_merge_recipe / sd_merge_models, with each input's SHA-256).",
    )

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"MergeConfig.method: {self.method!r} is not one of {', '.join(METHODS)}")
        if self.config_source not in CONFIG_SOURCES:
            raise ValueError(
                f"MergeConfig.config_source: {self.config_source!r} is not one of {', '.join(CONFIG_SOURCES)}"
            )
        if not 0.0 <= float(self.multiplier) <= 1.0:
            raise ValueError(f"MergeConfig.multiplier: {self.multiplier!r} is outside 0..1")
        try:
            re.compile(self.discard_weights)
        except re.error as exc:
            raise ValueError(
                f"MergeConfig.discard_weights: {self.discard_weights!r} is not a valid regular expression "
                f"({exc})"
            ) from None


@dataclass(frozen=True)
class MergeResult:
    """What a merge wrote.

    Attributes:
        output: the new checkpoint (``.inpainting`` / ``.instruct-pix2pix`` inserted when A's extra
            input channels were kept, as the webui does).
        config_copied: the ``.yaml`` written beside it, if any.
        arch: the models' architecture (``"sd1"``, ``"sd2"``, ``"sdxl"``, ...).
        variant: ``"inpainting"`` / ``"instruct-pix2pix"`` or None.
        tensors: tensors in the file.
        merged: tensors computed from A and B (and C).
        passed_through: A's tensors copied unchanged (or with repaired position ids).
        vae_baked: tensors taken from the baked-in VAE.
        discarded, missing_in_secondary, missing_in_tertiary, dropped_from_secondary: see
            :class:`~lib_dbchar.merge.plan.MergePlan`.
        bytes_written: size of the file.
        seconds: wall time of the whole job.
        recipe: dbchar's recipe (also stored in the file as ``dbchar_merge_recipe``).
    """

    output: str
    config_copied: str | None
    arch: str
    variant: str | None
    tensors: int
    merged: int
    passed_through: int
    vae_baked: int
    bytes_written: int
    seconds: float
    recipe: dict[str, Any]
    discarded: list[str] = field(default_factory=list)
    missing_in_secondary: list[str] = field(default_factory=list)
    missing_in_tertiary: list[str] = field(default_factory=list)
    dropped_from_secondary: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return dataclasses.asdict(self)

    def summary(self) -> str:
        """A few lines for the UI or the terminal."""
        lines = [
            f"Saved {self.output} ({self.bytes_written / 2**30:.2f} GiB, {self.tensors} tensors, "
            f"{self.seconds:.1f} s).",
            f"{self.merged} merged, {self.passed_through} copied from A, {self.vae_baked} from the VAE, "
            f"{len(self.discarded)} discarded.",
        ]
        if self.missing_in_secondary:
            lines.append(
                f"{len(self.missing_in_secondary)} of A's weights are not in B and were kept as in A."
            )
        if self.missing_in_tertiary:
            lines.append(
                f"{len(self.missing_in_tertiary)} weights are not in C; B's change there counts as zero."
            )
        if self.config_copied:
            lines.append(f"Config copied to {self.config_copied}.")
        return "\n".join(lines)


def webui_output_name(
    method: str, primary: str, secondary: str, tertiary: str | None, multiplier: float
) -> str:
    """The file stem the webui's merger proposes, e.g. ``"trained + 1.0(anything - sd15)"``.

    Args:
        method: ``"weighted_sum"`` or ``"add_difference"``.
        primary, secondary, tertiary: model names (file names without suffix).
        multiplier: M.
    """
    if method == WEIGHTED_SUM:
        return f"{round(1 - multiplier, 2)}({primary}) + {round(multiplier, 2)}({secondary})"
    return f"{primary} + {round(multiplier, 2)}({secondary} - {tertiary})"


def with_variant_suffix(path: Path, variant: str | None) -> Path:
    """``x.safetensors`` -> ``x.inpainting.safetensors`` for an inpainting result (idem pix2pix)."""
    suffix = RESULT_SUFFIX.get(variant or "")
    if not suffix or path.stem.endswith(suffix):
        return path
    return path.with_name(path.stem + suffix + path.suffix)


def run_merge(
    config: MergeConfig,
    primary: Path | str,
    secondary: Path | str,
    tertiary: Path | str | None,
    out: Path | str,
    *,
    vae: Path | str | None = None,
    overwrite: bool = False,
    known_hashes: Mapping[str, str] | None = None,
    known_names: Mapping[str, str] | None = None,
    ctx: JobContext | None = None,
) -> MergeResult:
    """Merge A, B (and C) into a new ``.safetensors`` checkpoint, one tensor at a time.

    Args:
        config: the settings.
        primary: A (for the character transfer: the trained model).
        secondary: B (the model to move the character onto).
        tertiary: C (the model A was trained from); required by add difference, refused by
            weighted sum.
        out: the new file (``.safetensors``); never one of the inputs.
        vae: a VAE checkpoint to bake in, or None.
        overwrite: replace an existing ``out`` (and ``.yaml`` beside it) atomically.
        known_hashes: path -> SHA-256 the host already knows (the webui caches them); the others
            are computed when the recipe is recorded.
        known_names: path -> the name the host lists the file under (the webui names a file in a
            sub-folder ``anime/x.safetensors``); the others are named by their file name.
        ctx: progress per tensor (and per 4 MiB while hashing); stop requests between tensors.

    Returns:
        The :class:`MergeResult`.

    Raises:
        ValueError: settings that do not fit the files given (the message names which).
        FileNotFoundError: an input is missing.
        IncompatibleModels: the models cannot be merged (architecture/shape mismatch).
        TargetExists: ``out`` exists and ``overwrite`` is False.
        CheckpointError, UnsupportedCheckpoint: an unreadable input.
        JobStopped: the user stopped it; nothing was written.
    """
    started = time.perf_counter()
    ctx = ctx or JobContext()
    paths = _check_arguments(config, primary, secondary, tertiary, vae=vae, out=Path(out))
    with contextlib.ExitStack() as stack:
        readers = {
            role: stack.enter_context(open_checkpoint(p)) for role, p in paths.items() if role != "out"
        }
        inputs = MergeInputs(
            readers["primary"], readers["secondary"], readers.get("tertiary"), readers.get("vae")
        )
        plan = plan_merge(
            inputs,
            method=config.method,
            multiplier=config.multiplier,
            fp16=config.fp16,
            discard=config.discard_weights,
            fix_position_ids=config.fix_position_ids,
        )
        target = with_variant_suffix(paths["out"], plan.result_variant)
        config_file = _config_to_copy(config, paths)
        _check_target(target, config_file, paths, overwrite=overwrite)
        _check_free_space(target, plan.nbytes)
        identities = _identities(config, readers, known_hashes or {}, known_names or {}, ctx)
        recipe = dbchar_recipe(config, identities, paths.get("vae"), plan)
        metadata = _metadata(config, identities, recipe, plan, target, vae=paths.get("vae"))
        _write(plan, inputs, config, target, metadata, overwrite=overwrite, ctx=ctx)
    copied = _copy_config(config_file, target) if config_file else None
    return MergeResult(
        output=str(target),
        config_copied=str(copied) if copied else None,
        arch=plan.arch,
        variant=plan.result_variant,
        tensors=len(plan.tensors),
        merged=plan.count(MERGE, MERGE_CHANNELS),
        passed_through=plan.count(COPY, REPAIR_POSITION_IDS),
        vae_baked=plan.count(BAKE_VAE),
        bytes_written=target.stat().st_size,
        seconds=round(time.perf_counter() - started, 3),
        recipe=recipe,
        discarded=plan.discarded,
        missing_in_secondary=plan.missing_in_secondary,
        missing_in_tertiary=plan.missing_in_tertiary,
        dropped_from_secondary=plan.dropped_from_secondary,
    )


def _check_arguments(
    config: MergeConfig,
    primary: Path | str,
    secondary: Path | str,
    tertiary: Path | str | None,
    *,
    vae: Path | str | None,
    out: Path,
) -> dict[str, Path]:
    if config.method == ADD_DIFFERENCE and not tertiary:
        msg = "tertiary: Add difference needs C, the model A was trained from."
        raise ValueError(msg)
    if config.method == WEIGHTED_SUM and tertiary:
        msg = "tertiary: Weighted sum uses only A and B; leave C empty or choose add_difference."
        raise ValueError(msg)
    if config.config_source == "tertiary" and not tertiary:
        msg = "MergeConfig.config_source: 'tertiary' needs a tertiary model (C)."
        raise ValueError(msg)
    if out.suffix.lower() != SAFETENSORS_SUFFIX:
        raise ValueError(
            f"out: {out} must end in {SAFETENSORS_SUFFIX} (merges are always saved as safetensors)."
        )
    paths = {"primary": Path(primary), "secondary": Path(secondary)}
    if tertiary:
        paths["tertiary"] = Path(tertiary)
    if vae:
        paths["vae"] = Path(vae)
    for role, path in paths.items():
        if not path.is_file():
            raise FileNotFoundError(f"{role}: {path} does not exist.")
    paths["out"] = out
    return paths


def _check_target(
    target: Path, config_file: Path | None, paths: Mapping[str, Path], *, overwrite: bool
) -> None:
    resolved = target.resolve()
    for role, path in paths.items():
        if role != "out" and path.resolve() == resolved:
            raise ValueError(f"out: {target} is the {role} input; a merge never replaces its inputs.")
    if target.exists() and not overwrite:
        raise TargetExists(f"{target} already exists; choose another name or allow overwriting.")
    yaml = target.with_suffix(".yaml")
    if config_file is not None and yaml.exists() and not overwrite:
        raise TargetExists(
            f"{yaml} already exists (the config beside the result); remove it or allow overwriting."
        )


def _check_free_space(target: Path, nbytes: int) -> None:
    folder = target.parent
    while not folder.exists():
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    if free < nbytes:
        raise DbcharError(
            f"Not enough space for {target.name}: it needs {nbytes / 2**30:.2f} GiB, {folder} has "
            f"{free / 2**30:.2f} GiB free. Free some space or save elsewhere."
        )


def _identities(
    config: MergeConfig,
    readers: Mapping[str, CheckpointReader],
    known: Mapping[str, str],
    names: Mapping[str, str],
    ctx: JobContext,
) -> dict[str, ModelIdentity]:
    hashing = config.save_metadata and config.add_merge_recipe
    known_resolved = {str(Path(k).resolve()): v for k, v in known.items()}
    names_resolved = {str(Path(k).resolve()): v for k, v in names.items()}
    return {
        role: identify(
            reader.path,
            reader.metadata,
            sha256=known_resolved.get(str(reader.path.resolve())),
            compute_sha256=hashing,
            name=names_resolved.get(str(reader.path.resolve())),
            ctx=ctx,
        )
        for role, reader in readers.items()
    }


def dbchar_recipe(
    config: MergeConfig, identities: Mapping[str, ModelIdentity], vae: Path | None, plan: MergePlan
) -> dict[str, Any]:
    """dbchar's own record of a merge (stored as ``dbchar_merge_recipe``; also in the result)."""

    def model(role: str) -> dict[str, Any] | None:
        found = identities.get(role)
        return {"name": found.name, "sha256": found.sha256} if found else None

    return {
        "tool": "dbchar",
        "version": __version__,
        "method": config.method,
        "multiplier": config.multiplier,
        "fp16": config.fp16,
        "discard_weights": config.discard_weights,
        "fix_position_ids": config.fix_position_ids,
        "primary": model("primary"),
        "secondary": model("secondary"),
        "tertiary": model("tertiary"),
        "vae": model("vae") if vae else None,
        "arch": plan.arch,
        "variant": plan.result_variant,
    }


def webui_recipe(
    config: MergeConfig,
    identities: Mapping[str, ModelIdentity],
    plan: MergePlan,
    target: Path,
    vae: Path | None,
) -> dict[str, Any]:
    """``sd_merge_recipe`` with the webui's field names and values."""

    def sha(role: str) -> str | None:
        found = identities.get(role)
        return found.sha256 if found else None

    return {
        "type": "dbchar",
        "primary_model_hash": sha("primary"),
        "secondary_model_hash": sha("secondary"),
        "tertiary_model_hash": sha("tertiary"),
        "interp_method": WEBUI_METHOD_NAMES[config.method],
        "multiplier": config.multiplier,
        "save_as_half": config.fp16,
        "custom_name": target.stem,
        "config_source": _WEBUI_CONFIG_SOURCE[config.config_source],
        "bake_in_vae": vae.name if vae else "None",
        "discard_weights": config.discard_weights,
        "is_inpainting": plan.result_variant == "inpainting",
        "is_instruct_pix2pix": plan.result_variant == "instruct-pix2pix",
    }


def _metadata(
    config: MergeConfig,
    identities: Mapping[str, ModelIdentity],
    recipe: Mapping[str, Any],
    plan: MergePlan,
    target: Path,
    *,
    vae: Path | None,
) -> dict[str, str]:
    if not config.save_metadata:
        return {}
    models = [identities[r] for r in ("primary", "secondary", "tertiary") if r in identities]
    metadata = copied_metadata(models) if config.copy_metadata_fields else {}
    metadata["format"] = "pt"
    if config.add_merge_recipe:
        metadata.update(webui_merge_fields(webui_recipe(config, identities, plan, target, vae), models))
        metadata[RECIPE_KEY] = json.dumps(recipe)
    return metadata


def _write(
    plan: MergePlan,
    inputs: MergeInputs,
    config: MergeConfig,
    target: Path,
    metadata: Mapping[str, str],
    *,
    overwrite: bool,
    ctx: JobContext,
) -> None:
    entries = [(t.key, t.dtype, t.shape) for t in plan.tensors]
    math = MergeMath(config.method, config.multiplier, config.fp16)
    with stream_safetensors(target, entries, metadata, overwrite=overwrite) as writer:
        write_plan(plan, inputs, math, writer, ctx)


def _config_to_copy(config: MergeConfig, paths: Mapping[str, Path]) -> Path | None:
    roles = {
        "any": ("primary", "secondary", "tertiary"),
        "secondary": ("secondary",),
        "tertiary": ("tertiary",),
        "none": (),
    }[config.config_source]
    for role in roles:
        if role in paths:
            found = config_beside(paths[role])
            if found is not None:
                return found
    return None


def _copy_config(source: Path, target: Path) -> Path:
    from lib_dbchar.paths import atomic_write

    return atomic_write(target.with_suffix(".yaml"), source.read_bytes())
