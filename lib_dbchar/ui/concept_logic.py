"""What the Concept tab does, without gradio: load, default-fill, validate and save a project's concept.

The tab shows the first concept of the project's ``concept.json`` (a run may hold several; the
CLI and the file keep them all). Saving replaces only that first concept, so concepts added by
hand in the file survive a save from the tab.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from lib_dbchar.concept import (
    CLASS_IMAGES_PER_IMAGE,
    Concept,
    load_concepts,
    resolve_dirs,
    sample_prompt,
    save_concepts,
    validate_concept,
)
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
