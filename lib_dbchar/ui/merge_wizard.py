"""The Merge tab's logic without gradio: output names, pre-filled roles, the lineage text.

The tab (:mod:`lib_dbchar.ui.tabs.merge`) only wires widgets to these functions, so each rule here
is testable on plain values:

* :func:`output_paths` -- one new file per Secondary model, named from the custom name (sanitised
  with :func:`lib_dbchar.paths.safe_name`) or the webui's proposal, all refused up front when one
  would replace an existing file or two would collide: a batch never half-runs into a clash.
* :func:`suggest_roles` -- the trained model (newest ``<run>_<step>.safetensors`` of the project's
  runs among the host's checkpoints) and the source model (from that run's ``run.json``).
* :func:`descent_text` -- :func:`~lib_dbchar.merge.lineage.check_descent`'s report in plain words.
* :func:`chosen_vae` -- "Bake in VAE" from the host's VAE list or a path box.
* :func:`parse_handoff` / :func:`handoff_roles` -- a checkpoint sent by "Pick a checkpoint".
* :class:`PreviewSettings`, :func:`preview_prompts`, :func:`render_previews` -- the picture per
  result (and per Secondary model) drawn after a merge.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lib_dbchar.config import setting
from lib_dbchar.errors import DbcharError, TargetExists
from lib_dbchar.host.base import CheckpointRef
from lib_dbchar.jobs import JobContext
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


# -- "Bake in VAE": the host's list or a path ------------------------------------------------------
#: The VAE dropdown's first entry: keep the Primary model's own VAE.
NO_VAE = "None"


def vae_choices(files: Sequence[Path]) -> list[str]:
    """The VAE dropdown's entries: :data:`NO_VAE`, then the file names (the webui's dropdown shows names)."""
    return [NO_VAE, *(Path(f).name for f in files)]


def chosen_vae(choice: Any, path_text: Any, files: Sequence[Path]) -> Path | None:
    """The VAE to bake in, from the dropdown or the path box (at most one of them).

    Args:
        choice: the dropdown's value (a file name from :func:`vae_choices`, or :data:`NO_VAE`/empty).
        path_text: the "other VAE file" box (a path, or empty).
        files: the host's VAE files (:meth:`~lib_dbchar.host.base.Host.vae_files`).

    Returns:
        The file, or None to keep the Primary model's VAE.

    Raises:
        DbcharError: both given, a name no longer listed, or a path that is not a file.
    """
    name = str(choice or "").strip()
    text = str(path_text or "").strip()
    listed = name not in ("", NO_VAE)
    if listed and text:
        msg = f"Bake in VAE: choose {name} or type a path ({text}), not both."
        raise DbcharError(msg)
    if listed:
        found = next((Path(f) for f in files if Path(f).name == name), None)
        if found is None or not found.is_file():
            raise DbcharError(f"Bake in VAE: {name} is not among the VAE files any more; press Refresh.")
        return found
    if not text:
        return None
    path = Path(text).expanduser()
    if not path.is_file():
        raise DbcharError(f"Bake in VAE: {path} does not exist; give the path of a file or leave it empty.")
    return path


# -- the hand-off from "Pick a checkpoint" ---------------------------------------------------------
@dataclass(frozen=True)
class Handoff:
    """A checkpoint sent by "Pick a checkpoint" (the hidden ``dbchar-merge-handoff`` box's JSON).

    Attributes:
        checkpoint: the picked checkpoint's file.
        run: the training run it comes from.
        source: the run's source model (a file path; "" when unknown).
    """

    checkpoint: str
    run: str
    source: str


def parse_handoff(text: Any) -> Handoff | None:
    """Read the hand-off box's value; None when it is empty.

    Raises:
        ValueError: not a JSON object with a ``checkpoint`` (the message quotes what came).
    """
    raw = str(text or "").strip()
    if not raw:
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        data = None
    if not isinstance(data, dict) or not str(data.get("checkpoint") or "").strip():
        raise ValueError(f"The hand-off from Pick a checkpoint is not understood: {raw[:200]!r}")
    return Handoff(
        checkpoint=str(data["checkpoint"]).strip(),
        run=str(data.get("run") or "").strip(),
        source=str(data.get("source") or "").strip(),
    )


def find_ref(refs: Sequence[CheckpointRef], wanted: str) -> CheckpointRef | None:
    """The host's entry for ``wanted``: the same file first, else :func:`match_checkpoint`'s rules."""
    if not wanted:
        return None
    try:
        target = Path(wanted).expanduser().resolve()
    except (OSError, RuntimeError):
        target = None
    for ref in refs:
        if target is not None and ref.path.resolve() == target:
            return ref
    return match_checkpoint(refs, wanted)


@dataclass(frozen=True)
class HandoffRoles:
    """What the hand-off puts in the roles.

    Attributes:
        primary: the Primary dropdown's value (a title in the host's list, else the file's path).
        tertiary: the Tertiary dropdown's value, or None to leave it as it is.
        extra_choices: paths to add to the dropdowns because the host does not list them.
        note: the line saying where the roles came from.
    """

    primary: str
    tertiary: str | None
    extra_choices: tuple[str, ...]
    note: str


def handoff_roles(refs: Sequence[CheckpointRef], handoff: Handoff) -> HandoffRoles:
    """Fill Primary with the sent checkpoint and Tertiary with the run's source.

    Args:
        refs: the host's checkpoints (refreshed when the sent file was missing).
        handoff: from :func:`parse_handoff`.

    Returns:
        The :class:`HandoffRoles`. A file the host does not list (saved outside its checkpoint
        folders) is used by path, and the note says so; a missing file is reported, not used.
    """
    extra: list[str] = []
    lines: list[str] = []
    run = f"run {handoff.run}" if handoff.run else "a run"
    primary_ref = find_ref(refs, handoff.checkpoint)
    if primary_ref is not None:
        primary = primary_ref.title
    else:
        primary = handoff.checkpoint
        extra.append(primary)
        lines.append(f"{Path(primary).name} is not in the checkpoint list; it is used from {primary}.")
    head = f"From Pick a checkpoint: Primary = {Path(handoff.checkpoint).name} of {run}"
    tertiary: str | None = None
    if not handoff.source:
        lines.append("The run does not record its source model: choose the Tertiary model.")
    elif (source_ref := find_ref(refs, handoff.source)) is not None:
        tertiary = source_ref.title
        head += f"; Tertiary = {source_ref.title}, the model it was trained from"
    elif Path(handoff.source).is_file():
        tertiary = handoff.source
        extra.append(tertiary)
        head += f"; Tertiary = {Path(tertiary).name}, the model it was trained from"
        lines.append(f"{Path(tertiary).name} is not in the checkpoint list; it is used from {tertiary}.")
    else:
        lines.append(f"Its source model {handoff.source} was not found: choose the Tertiary model.")
    return HandoffRoles(primary, tertiary, tuple(extra), " ".join([head + ".", *lines]))


# -- the preview grid --------------------------------------------------------------------------------
#: The schedulers :class:`~lib_dbchar.train.sampling.Sampler` knows.
PREVIEW_SCHEDULERS = ("ddim", "euler_a", "dpmpp_2m")


@dataclass(frozen=True)
class PreviewSettings:
    """The preview drawn after a merge: one image per result and per Secondary model, same prompt and seed."""

    enabled: bool = setting(
        False,
        label="Preview",
        help="After merging, draw one picture with each result and with the Secondary model it came "
        "from, side by side (a few seconds to minutes per picture, on the GPU when there is one).",
    )
    prompt: str = setting(
        "",
        label="Preview prompt",
        help="Empty: the concept's sample prompt (your token and the first picture's caption).",
    )
    negative: str = setting(
        "", label="Preview negative prompt", help="Empty: the concept's sample negative prompt."
    )
    seed: int = setting(1234, label="Seed", minimum=0, maximum=2**32 - 1, step=1)
    steps: int = setting(20, label="Steps", minimum=1, maximum=150, step=1)
    cfg: float = setting(7.0, label="CFG scale", minimum=1.0, maximum=30.0, step=0.5)
    size: int = setting(
        512, label="Size", help="Width = height in pixels.", minimum=64, maximum=2048, step=64
    )
    scheduler: str = setting("ddim", label="Sampler", choices=PREVIEW_SCHEDULERS)

    def __post_init__(self) -> None:
        if self.size % 8:
            raise ValueError(f"PreviewSettings.size: {self.size} must be a multiple of 8 (the VAE's step).")


def preview_prompts(settings: PreviewSettings, concept: Any | None) -> tuple[str, str]:
    """The preview's prompt and negative prompt: the typed ones, else the concept's sample ones.

    Args:
        settings: the preview settings.
        concept: the current project's :class:`~lib_dbchar.concept.Concept` (dataset defaults
            filled in), or None without a project.

    Returns:
        ``(prompt, negative)``.

    Raises:
        DbcharError: no prompt typed and none to take from a concept.
    """
    from lib_dbchar.concept import sample_negative_prompt

    prompt = settings.prompt.strip() or (concept.sample_prompt.strip() if concept is not None else "")
    if not prompt:
        msg = "Preview prompt: type one (this project has no concept with a sample prompt to use)."
        raise DbcharError(msg)
    negative = settings.negative.strip() or (sample_negative_prompt(concept) if concept is not None else "")
    return prompt, negative


@dataclass
class Preview:
    """The pictures drawn after a merge, in gallery order: per result, its Secondary then the result.

    Attributes:
        prompt, negative, seed: what was drawn.
        images: PIL images (not serialised).
        captions: one per image ("Secondary: <name>" / "Result: <name>").
        stopped: the user stopped before all were drawn (those drawn are kept).
        problem: why the preview could not be drawn (the merge itself succeeded), or "".
    """

    prompt: str
    negative: str
    seed: int
    images: list[Any] = field(default_factory=list)
    captions: list[str] = field(default_factory=list)
    stopped: bool = False
    problem: str = ""

    def gallery(self) -> list[tuple[Any, str]]:
        """``[(image, caption), ...]`` for a ``gr.Gallery``."""
        return list(zip(self.images, self.captions, strict=True))

    def to_dict(self) -> dict[str, Any]:
        """Everything but the pixels, as JSON-ready values."""
        return {
            "prompt": self.prompt,
            "negative": self.negative,
            "seed": self.seed,
            "captions": list(self.captions),
            "stopped": self.stopped,
            "problem": self.problem,
        }

    def summary(self) -> str:
        """One line for the results box."""
        if self.problem:
            return f"No preview: {self.problem}"
        pairs = len(self.images) // 2
        plural = "s" if pairs != 1 else ""
        text = f"Preview: {pairs} result{plural} beside the Secondary model, seed {self.seed}"
        text += f", prompt: {self.prompt}"
        return text + (" Stopped before the end." if self.stopped else "")


def render_previews(
    pairs: Sequence[tuple[Path, Path]],
    request: Any,
    open_renderer: Any,
    preview: Preview,
    ctx: JobContext,
) -> Preview:
    """Draw ``request`` with each Secondary model and the result made from it, one model at a time.

    One renderer is opened for the first file and every other file is loaded into the same
    modules (one model in memory at a time).

    Args:
        pairs: ``(secondary, result)`` files, in the order of the results.
        request: a :class:`~lib_dbchar.train.sampling.SampleRequest` with one seed.
        open_renderer: ``open_renderer(checkpoint=path) -> Renderer`` (see
            :func:`lib_dbchar.pick.render.open_renderer`).
        preview: filled in place with the images and captions as they come.
        ctx: progress per picture; a stop request between pictures sets ``preview.stopped``.

    Returns:
        ``preview``.

    Raises:
        CheckpointError, UnsupportedCheckpoint, FileNotFoundError: a file the renderer cannot draw.
    """
    jobs = [(path, label) for s, r in pairs for path, label in ((s, "Secondary"), (r, "Result"))]
    renderer = None
    try:
        for done, (path, label) in enumerate(jobs):
            if ctx.should_stop():
                preview.stopped = True
                break
            ctx.report(done, len(jobs), f"Preview {done + 1}/{len(jobs)}: {Path(path).name}")
            if renderer is None:
                renderer = open_renderer(checkpoint=Path(path))
            else:
                renderer.load(Path(path))
            (image,) = renderer.sample(request)
            preview.images.append(image)
            preview.captions.append(f"{label}: {Path(path).stem}")
            ctx.report(done + 1, len(jobs), f"Preview {done + 1}/{len(jobs)}: {Path(path).name}", image)
    finally:
        if renderer is not None:
            renderer.close()
    return preview


#: The short hash the webui appends to a checkpoint's title: ``anime/x.safetensors [0123abcd45]``.
_TITLE_HASH = re.compile(r"\s\[[0-9a-fA-F]{8,10}\]$")


def host_names(refs: Sequence[CheckpointRef]) -> dict[str, str]:
    """Path -> the name the host lists each checkpoint under (its title without the short hash).

    The webui's merger records its inputs by that name (a path relative to the models folder), so
    our ``sd_merge_models`` entries match the ones it would write for the same files.
    """
    return {str(ref.path): _TITLE_HASH.sub("", ref.title) for ref in refs}
