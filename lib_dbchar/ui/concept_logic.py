"""What the Concept tab does, without gradio: load, default-fill, validate and save a project's concepts.

A run trains every concept of the project's ``concept.json``. The tab edits them as a list of
``{field: value}`` entries (one per concept, kept in the page while the user switches between
them), so a half-typed concept is never lost by looking at another; Save validates every entry --
the token-in-class-prompt check included, named per concept -- and writes the whole list at once.
:func:`load_project_concept` / :func:`save_project_concept` keep serving callers that only care
about the first concept.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from lib_dbchar.concept import (
    CLASS_IMAGES_PER_IMAGE,
    Concept,
    class_dir_name,
    load_concepts,
    resolve_dirs,
    sample_prompt,
    save_concepts,
    validate_concept,
)
from lib_dbchar.config import from_dict, to_dict
from lib_dbchar.errors import DbcharError
from lib_dbchar.projects import Project
from lib_dbchar.train.data import image_files, read_caption


def dataset_summary(concept: Concept, project: Project) -> tuple[int, str]:
    """How many pictures the concept's dataset holds and the first picture's caption.

    Args:
        concept: the concept (its ``dataset_dir`` may point outside the project).
        project: the project the concept belongs to.

    Returns:
        ``(picture_count, first_caption)``; the caption is ``""`` when there are no pictures or
        the first one has no ``.txt``.
    """
    dataset_dir, _ = resolve_dirs(concept, project.root, 0)
    pictures = image_files(dataset_dir)
    caption = (read_caption(pictures[0]) or "") if pictures else ""
    return len(pictures), caption


def with_dataset_defaults(concept: Concept, project: Project) -> Concept:
    """Fill the fields whose default depends on the dataset, so the user sees the real values.

    The sample prompt becomes the token followed by the first picture's caption and the class
    image count 10 x the number of pictures, each only when the field is still empty/0 (a value
    the user typed is never replaced).

    Args:
        concept: the concept as loaded or typed.
        project: its project.

    Returns:
        A new :class:`Concept`; unchanged when there are no pictures yet.
    """
    count, caption = dataset_summary(concept, project)
    if count == 0:
        return concept
    changes: dict[str, object] = {}
    if not concept.sample_prompt.strip() and concept.instance_token.strip():
        changes["sample_prompt"] = sample_prompt(concept, caption)
    if concept.num_class_images == 0:
        changes["num_class_images"] = CLASS_IMAGES_PER_IMAGE * count
    return replace(concept, **changes) if changes else concept


def load_project_concept(project: Project) -> tuple[Concept, str]:
    """The project's first concept, with the dataset defaults filled in.

    Args:
        project: the selected project.

    Returns:
        ``(concept, note)``: a project without ``concept.json`` gives the defaults and a note
        saying so.

    Raises:
        DbcharError: ``concept.json`` is broken; the message names the file and the field.
    """
    if not project.concept_file.is_file():
        note = f"No concept saved yet in {project.concept_file}; these are the defaults."
        return with_dataset_defaults(Concept(), project), note
    try:
        concepts = load_concepts(project.concept_file)
    except ValueError as exc:
        raise DbcharError(str(exc)) from exc
    first = concepts[0] if concepts else Concept()
    extra = f" ({len(concepts)} concepts; the tab edits the first)" if len(concepts) > 1 else ""
    return with_dataset_defaults(first, project), f"Loaded {project.concept_file}{extra}."


def save_project_concept(project: Project, concept: Concept) -> Path:
    """Validate ``concept`` and write it as the project's first concept, atomically.

    Args:
        project: the selected project.
        concept: the concept from the form.

    Returns:
        The written ``concept.json``.

    Raises:
        DbcharError: the concept is rejected (the message names the field, e.g. a class prompt
            that contains the instance token) or the existing file cannot be read.
    """
    try:
        validate_concept(concept)
    except ValueError as exc:
        raise DbcharError(str(exc)) from exc
    others: list[Concept] = []
    if Path(project.concept_file).is_file():
        try:
            others = load_concepts(project.concept_file)[1:]
        except ValueError as exc:
            raise DbcharError(f"{exc} (nothing was saved)") from exc
    return save_concepts(project.concept_file, [concept, *others])


# --- several concepts ----------------------------------------------------------------------------

Entry = dict[str, Any]


def concept_labels(entries: Sequence[Mapping[str, Any]]) -> list[str]:
    """The concept picker's labels: ``"1 · star guardian neeko"``, ``"2 · (no token yet)"``."""
    return [
        f"{i + 1} · {str(entry.get('instance_token') or '').strip() or '(no token yet)'}"
        for i, entry in enumerate(entries)
    ]


def label_index(label: str | None, count: int) -> int:
    """The entry a picker label stands for, kept within ``0 .. count - 1`` (0 for a foreign label)."""
    head = (label or "").split("·", 1)[0].strip()
    index = int(head) - 1 if head.isdigit() else 0
    return min(max(index, 0), max(count - 1, 0))


def stash(entries: Sequence[Mapping[str, Any]], index: int, values: Mapping[str, Any]) -> list[Entry]:
    """The entries with ``values`` (the form as it is) stored at ``index``; a copy, in order."""
    out = [dict(entry) for entry in entries] or [to_dict(Concept())]
    out[min(max(index, 0), len(out) - 1)] = dict(values)
    return out


def add_entry(entries: Sequence[Mapping[str, Any]]) -> list[Entry]:
    """The entries plus a new concept with the defaults (its class folder: the next ``classifiers_<n>``)."""
    return [*(dict(entry) for entry in entries), to_dict(Concept())]


def remove_entry(entries: Sequence[Mapping[str, Any]], index: int) -> tuple[list[Entry], int]:
    """Remove the concept at ``index``; the concepts after it keep their class image folders.

    A concept with an empty class folder uses ``classifiers_<its position>``; moving up a place
    would hand it the removed concept's images. So each later concept whose folder is empty gets
    its current default written in (``classes/classifiers_<n>``, relative to the project).

    Args:
        entries: the concepts as ``{field: value}``.
        index: the one to remove.

    Returns:
        ``(entries, index to show next)``.

    Raises:
        DbcharError: it is the only concept (a run needs one).
    """
    if len(entries) <= 1:
        msg = "A project needs at least one concept; edit this one instead of removing it."
        raise DbcharError(msg)
    out: list[Entry] = []
    for position, entry in enumerate(entries):
        if position == index:
            continue
        kept = dict(entry)
        if position > index and not str(kept.get("class_dir") or "").strip():
            kept["class_dir"] = f"classes/{class_dir_name(position)}"
        out.append(kept)
    return out, min(index, len(out) - 1)


def parse_entries(entries: Sequence[Mapping[str, Any]]) -> list[Concept]:
    """Every entry as a validated :class:`Concept`.

    Raises:
        DbcharError: the first wrong entry, named by its position and field
            (``Concept 2.class_prompt: ... contains the instance token``).
    """
    concepts = []
    for index, entry in enumerate(entries):
        try:
            concept = from_dict(Concept, entry)
            validate_concept(concept, index=index)
        except ValueError as exc:
            text = str(exc)
            if index and not text.startswith(f"Concept {index + 1}"):
                text = f"Concept {index + 1}: {text}"
            raise DbcharError(text) from exc
        concepts.append(concept)
    return concepts


def load_project_concepts(project: Project) -> tuple[list[Concept], str]:
    """Every concept of the project, each with the dataset defaults filled in.

    Returns:
        ``(concepts, note)``; a project without ``concept.json`` gives one default concept.

    Raises:
        DbcharError: ``concept.json`` is broken; the message names the file and the field.
    """
    if not project.concept_file.is_file():
        note = f"No concept saved yet in {project.concept_file}; these are the defaults."
        return [with_dataset_defaults(Concept(), project)], note
    try:
        concepts = load_concepts(project.concept_file) or [Concept()]
    except ValueError as exc:
        raise DbcharError(str(exc)) from exc
    many = f" ({len(concepts)} concepts; pick one to edit)" if len(concepts) > 1 else ""
    return [with_dataset_defaults(c, project) for c in concepts], f"Loaded {project.concept_file}{many}."


def save_project_concepts(project: Project, entries: Sequence[Mapping[str, Any]]) -> Path:
    """Validate every concept and write them all as the project's ``concept.json``, atomically.

    Args:
        project: the selected project.
        entries: the concepts as ``{field: value}``, in training order.

    Returns:
        The written file.

    Raises:
        DbcharError: a concept is rejected (named by position and field), or the existing file
            cannot be read (it is left as it is: it may hold work the tab never showed).
    """
    concepts = parse_entries(entries)
    if Path(project.concept_file).is_file():
        try:
            load_concepts(project.concept_file)
        except ValueError as exc:
            raise DbcharError(f"{exc} (nothing was saved)") from exc
    return save_concepts(project.concept_file, concepts)
