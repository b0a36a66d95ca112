"""The Merge tab's logic without gradio: output names, pre-filled roles, the lineage text.

The tab (:mod:`lib_dbchar.ui.tabs.merge`) only wires widgets to these functions, so each rule here
is testable on plain values:

* :func:`output_paths` -- one new file per Secondary model, named from the custom name (sanitised
  with :func:`lib_dbchar.paths.safe_name`) or the webui's proposal, all refused up front when one
  would replace an existing file or two would collide: a batch never half-runs into a clash.
* :func:`suggest_roles` -- the trained model (newest ``<run>_<step>.safetensors`` of the project's
  runs among the host's checkpoints) and the source model (from that run's ``run.json``).
* :func:`descent_text` -- :func:`~lib_dbchar.merge.lineage.check_descent`'s report in plain words.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lib_dbchar.errors import DbcharError, TargetExists
from lib_dbchar.host.base import CheckpointRef
from lib_dbchar.paths import child_path

ADD_DIFFERENCE = "add_difference"
WEIGHTED_SUM = "weighted_sum"
LORA = "lora"
#: The wizard's methods, the guide's first; the radio shows the labels.
METHODS = (ADD_DIFFERENCE, WEIGHTED_SUM, LORA)
METHOD_LABELS = {
    ADD_DIFFERENCE: "Add difference (move the character: Primary + M x (Secondary - Tertiary))",
    WEIGHTED_SUM: "Weighted sum ((1 - M) x Primary + M x Secondary)",
    LORA: "LoRA extraction (Primary - Tertiary as a small LoRA file)",
}
SAFETENSORS = ".safetensors"
#: The file name of a run's record in ``<project>/runs/<run>/`` (written by the training run).
RUN_RECORD = "run.json"

_VERDICT_WORDS = {
    "descends": "Looks right",
    "unrelated": "Probably the wrong Tertiary model",
    "unclear": "Not sure",
}


def method_from_label(label: str) -> str:
    """The method key of a radio label (a key itself is accepted too).

    Raises:
        ValueError: for anything else, naming the value.
    """
    for key, text in METHOD_LABELS.items():
        if label in (key, text):
            return key
    raise ValueError(f"Method: {label!r} is not one of {', '.join(METHOD_LABELS.values())}")


def model_stem(path: Path | str) -> str:
    """A model's name as the webui shows it: the file name without its suffix."""
    return Path(path).stem


def default_stem(method: str, primary: Path, secondary: Path | None, tertiary: Path | None, m: float) -> str:
    """The name used when no custom name is given: the webui merger's proposal (or ``<A>-lora``)."""
    from lib_dbchar.merge.run import webui_output_name

    if method == LORA or secondary is None:
        return f"{model_stem(primary)}-lora"
    third = model_stem(tertiary) if tertiary is not None else None
    return webui_output_name(method, model_stem(primary), model_stem(secondary), third, m)


def output_stems(
    custom: str,
    method: str,
    *,
    primary: Path,
    secondaries: Sequence[Path],
    tertiary: Path | None,
    multiplier: float,
) -> list[str]:
    """One file stem per result, in the order of ``secondaries`` (one stem for a LoRA).

    A custom name is used as is for a single result; with several Secondary models the
    Secondary's name is appended (``<custom>-<secondary>``) so the results stay apart.

    Args:
        custom: what the user typed ("" for the webui's proposal).
        method: one of :data:`METHODS`.
        primary, secondaries, tertiary: the chosen files.
        multiplier: M, for the proposed names.

    Returns:
        The stems, not yet sanitised.
    """
    custom = (custom or "").strip()
    if custom.lower().endswith(SAFETENSORS):
        custom = custom[: -len(SAFETENSORS)]
    if method == LORA:
        return [custom or default_stem(method, primary, None, tertiary, multiplier)]
    if custom:
        if len(secondaries) == 1:
            return [custom]
        return [f"{custom}-{model_stem(s)}" for s in secondaries]
    return [default_stem(method, primary, s, tertiary, multiplier) for s in secondaries]


def output_paths(folder: Path, stems: Sequence[str], *, overwrite: bool = False) -> list[Path]:
    """The new files in ``folder``, checked before anything is written.

    Args:
        folder: where the results go (the host's checkpoint folder, or the LoRA folder).
        stems: from :func:`output_stems`.
        overwrite: allow replacing existing files.

    Returns:
        ``folder / (safe stem + ".safetensors")`` per stem.

    Raises:
        NameRejected: a name that cannot be a file name.
        TargetExists: a file exists (and ``overwrite`` is off), or two results would get one name.
    """
    paths = [child_path(Path(folder), stem, suffix=SAFETENSORS, what="output name") for stem in stems]
    seen: set[str] = set()
    for path in paths:
        key = path.name.lower()  # case-insensitive file systems would merge "A" and "a"
        if key in seen:
            raise TargetExists(f"Two results would both be saved as {path.name}; choose another name.")
        seen.add(key)
        if path.exists() and not overwrite:
            raise TargetExists(f"{path} already exists; type another output name (nothing was overwritten).")
    return paths


# -- pre-filled roles ----------------------------------------------------------------------------
@dataclass(frozen=True)
class RunInfo:
    """What a training run's record tells the wizard.

    Attributes:
        name: the run's name (its checkpoints are ``<name>_<step>.safetensors``).
        source: the model the run trained from (a path or a checkpoint title), or "" if unknown.
    """

    name: str
    source: str


def read_runs(runs_dir: Path) -> list[RunInfo]:
    """The runs under ``runs_dir`` (``<project>/runs``) with their source model.

    A run folder without a readable ``run.json`` still counts (its checkpoints are found by
    name); its source is then unknown. Never raises for a damaged record: pre-filling is a
    convenience and the user picks the models anyway.
    """
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return []
    return [
        RunInfo(folder.name, _run_source(folder / RUN_RECORD))
        for folder in sorted(runs_dir.iterdir())
        if folder.is_dir()
    ]


def _run_source(record: Path) -> str:
    try:
        data = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    config = data.get("config") if isinstance(data, dict) else None
    source = config.get("source_checkpoint") if isinstance(config, dict) else None
    return str(source) if source else ""


def _step_of(ref: CheckpointRef, run: str) -> int | None:
    match = re.fullmatch(re.escape(run) + r"_(\d+)", ref.path.stem)
    return int(match.group(1)) if match and ref.path.suffix.lower() == SAFETENSORS else None


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def newest_trained(
    refs: Sequence[CheckpointRef], runs: Sequence[RunInfo]
) -> tuple[CheckpointRef, RunInfo] | None:
    """The newest ``<run>_<step>.safetensors`` among ``refs`` for any of ``runs`` (latest file, then
    highest step), with its run; None when no checkpoint comes from these runs."""
    found = [
        (ref, run, step) for ref in refs for run in runs if (step := _step_of(ref, run.name)) is not None
    ]
    if not found:
        return None
    ref, run, _ = max(found, key=lambda item: (_mtime(item[0].path), item[2]))
    return ref, run


def match_checkpoint(refs: Sequence[CheckpointRef], wanted: str) -> CheckpointRef | None:
    """The checkpoint a run's ``source_checkpoint`` names (a path, a file name or a title)."""
    if not wanted:
        return None
    wanted_path = Path(wanted)
    for ref in refs:
        if ref.path == wanted_path or ref.title == wanted or ref.path.name == wanted_path.name:
            return ref
    bare = wanted.split(" [", maxsplit=1)[0]
    return next((ref for ref in refs if ref.title.split(" [", maxsplit=1)[0] == bare), None)


@dataclass(frozen=True)
class Suggestion:
    """Pre-filled roles (titles from the host's list) and why, for the page."""

    primary: str | None
    tertiary: str | None
    note: str


def suggest_roles(refs: Sequence[CheckpointRef], runs: Sequence[RunInfo]) -> Suggestion:
    """Pick the trained model and its source from the project's runs, if they are known.

    Args:
        refs: the host's checkpoints.
        runs: from :func:`read_runs` for the current project.

    Returns:
        The :class:`Suggestion`; roles it cannot tell are None.
    """
    newest = newest_trained(refs, runs)
    if newest is None:
        return Suggestion(None, None, "")
    ref, run = newest
    source = match_checkpoint(refs, run.source)
    if source is None:
        note = f"Primary: {ref.title}, the newest checkpoint of run {run.name}."
        if run.source:
            note += f" Its source model {run.source} is not among the checkpoints; pick the Tertiary model."
        return Suggestion(ref.title, None, note)
    note = (
        f"Primary: {ref.title}, the newest checkpoint of run {run.name}; "
        f"Tertiary: {source.title}, its source."
    )
    return Suggestion(ref.title, source.title, note)


# -- the lineage check in words -----------------------------------------------------------------
def descent_text(report: Any, primary: str, tertiary: str) -> str:
    """A :class:`~lib_dbchar.merge.lineage.DescentReport` as a few plain sentences.

    Args:
        report: the report (``verdict``, ``message``).
        primary, tertiary: the names shown for the two roles.
    """
    head = _VERDICT_WORDS.get(report.verdict, report.verdict)
    advice = {
        "descends": f"{primary} was trained from {tertiary}: Add difference will move just the character.",
        "unrelated": f"Choose as Tertiary the model {primary} was trained from, or the merge will carry "
        "the differences between unrelated models and look broken.",
        "unclear": "The check cannot tell; if you know the source model, go ahead.",
    }.get(report.verdict, "")
    return f"{head}. {report.message} {advice}".strip()


def check_choice(value: Any, role: str) -> str:
    """A dropdown value that must be set, stripped.

    Raises:
        DbcharError: nothing chosen; the message names the role.
    """
    text = str(value or "").strip()
    if not text:
        raise DbcharError(f"Choose the {role} model.")
    return text
