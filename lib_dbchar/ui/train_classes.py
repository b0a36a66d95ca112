"""The class images panel of the Train tab: generate them before training, look, reject, top up.

"Generate / top up" runs :func:`~lib_dbchar.train.classes.generate_for_run` as a job of the host
(progress per image, Stop between batches; a stopped generation continues where it stopped), with
the same run settings Start would use, so training later finds every image and starts at once.
The gallery shows one concept's class folder; ticking images (or clicking them in the gallery) and
"Reject selected" moves them to ``rejected/`` (never deletes), and the next top-up draws only the
missing ones, with new numbers and seeds.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from lib_dbchar.concept import Concept
from lib_dbchar.errors import DbcharError
from lib_dbchar.jobs import JobContext
from lib_dbchar.projects import Project
from lib_dbchar.train.classes import (
    ClassFolderStatus,
    class_folder_status,
    generate_for_run,
    reject_class_images,
)
from lib_dbchar.train.run import RunSpec
from lib_dbchar.ui import compat
from lib_dbchar.ui.compat import gr
from lib_dbchar.ui.context import UiContext
from lib_dbchar.ui.ids import elem_id
from lib_dbchar.ui.jobs import JobBinding, Outcome, bind_job, bind_stop, status_box
from lib_dbchar.ui.messages import message_html
from lib_dbchar.ui.train_logic import release_held_memory

INTRO = (
    "Class images teach the model what the class looks like without your character (prior "
    "preservation). Generate them before training to look them over: reject the broken ones, then "
    "**Generate / top up** draws only what is missing. Training tops the folder up by itself too."
)

#: What the panel's views return, in order: concept dropdown, summary, gallery, names (state), ticks.
VIEW_SIZE = 5

#: ``spec_for(values) -> (project, spec)``: the Train tab's way of turning inputs into a run spec.
SpecFor = Callable[[Mapping[str, Any]], tuple[Project, RunSpec]]
ConceptsFor = Callable[[str | None], tuple[Project, list[Concept]]]


def concept_label(status: ClassFolderStatus) -> str:
    """The dropdown label of a concept: ``"1 · star guardian neeko"``."""
    return f"{status.concept + 1} · {status.token or '(no token)'}"


def concept_index(label: str | None) -> int:
    """The concept index a dropdown label stands for (0 for an empty or foreign label)."""
    head = (label or "").split("·", 1)[0].strip()
    return int(head) - 1 if head.isdigit() and int(head) > 0 else 0


def summary_text(status: ClassFolderStatus) -> str:
    """One line on a concept's class folder: how many there are, wanted, missing, rejected."""
    text = (
        f"Concept {status.concept + 1}: {len(status.images)}/{status.wanted} class images in "
        f"{status.folder}; {status.missing} to draw"
    )
    return text + (f"; {status.rejected} rejected." if status.rejected else ".")


def toggle(names: Sequence[str], ticked: Sequence[str], index: int) -> list[str]:
    """Tick or untick the image at ``index`` of the gallery (a click in the gallery).

    Args:
        names: the gallery's file names, in gallery order.
        ticked: the names ticked now.
        index: the clicked image's position.

    Returns:
        The new ticked names, in gallery order.
    """
    chosen = set(ticked)
    if 0 <= index < len(names):
        chosen ^= {names[index]}
    return [name for name in names if name in chosen]


class ClassImagesPanel:
    """Render inside the Train tab, then :meth:`register` with the tab's job inputs.

    Args:
        ctx: the page context.
        spec_for: turns the job's input values into ``(project, run spec)`` (raises DbcharError).
        concepts_for: a project name -> ``(project, concepts)`` (raises DbcharError).

    Attributes (after :meth:`render`): ``generate_button``, ``stop_button``, ``show_button``,
    ``status``, ``concept``, ``summary``, ``gallery``, ``names`` (gr.State), ``ticked``,
    ``reject_button``, ``message``. After :meth:`register`: ``binding``.
    """

    def __init__(self, ctx: UiContext, spec_for: SpecFor, concepts_for: ConceptsFor) -> None:
        self.ctx = ctx
        self.spec_for = spec_for
        self.concepts_for = concepts_for
        self.binding: JobBinding | None = None

    def render(self) -> ClassImagesPanel:
        """Create the panel's widgets inside the current layout block."""
        with gr.Accordion("Class images", open=False, elem_id=elem_id("train", "classes")):
            gr.Markdown(INTRO)
            with gr.Row():
                self.generate_button = gr.Button(
                    "Generate / top up class images", elem_id=elem_id("train", "classes-generate")
                )
                self.stop_button = gr.Button("Stop", elem_id=elem_id("train", "classes-stop"))
                self.show_button = gr.Button("Show class images", elem_id=elem_id("train", "classes-show"))
            self.status = status_box("train-classes")
            with gr.Row():
                self.concept = gr.Dropdown(
                    choices=[],
                    value=None,
                    label="Concept",
                    interactive=True,
                    elem_id=elem_id("train", "classes-concept"),
                )
                self.summary = gr.Textbox(
                    label="Folder", interactive=False, elem_id=elem_id("train", "classes-summary")
                )
            self.gallery = gr.Gallery(
                label="Class images (click to tick)", columns=6, elem_id=elem_id("train", "classes-gallery")
            )
            self.names = gr.State([])
            self.ticked = gr.CheckboxGroup(
                choices=[],
                value=[],
                label="Ticked to reject",
                info="Rejected images move to rejected/ beside them (never deleted); a top-up replaces them.",
                elem_id=elem_id("train", "classes-ticked"),
            )
            self.reject_button = gr.Button("Reject ticked", elem_id=elem_id("train", "classes-reject"))
            self.message = gr.HTML(value="", elem_id=elem_id("train", "classes-message"))
        return self

    def view_outputs(self) -> list[Any]:
        return [self.concept, self.summary, self.gallery, self.names, self.ticked]

    def register(self, job_inputs: Mapping[str, Any]) -> None:
        """Bind Generate (a job with ``job_inputs`` plus the concept), Stop, Show, the gallery and Reject."""
        project = [self.ctx.project] if self.ctx.project is not None else []
        self.binding = bind_job(
            self.ctx,
            self.generate_button,
            title="class images",
            handler=self.generate,
            status=self.status,
            inputs={**job_inputs, "concept": self.concept},
            outputs=self.view_outputs(),
        )
        bind_stop(self.ctx, self.stop_button)
        view = [*self.view_outputs(), self.message]
        compat.listen(self.show_button.click, self.show_values, [*project, self.concept], view)
        # .select fires for the user's pick only; a .change would also fire for the view's own
        # update of the dropdown and clear ticks made meanwhile.
        compat.listen(self.concept.select, self.concept_picked, project, view, show_progress=False)
        compat.listen(self.gallery.select, self.gallery_clicked, [self.names, self.ticked], [self.ticked])
        compat.listen(
            self.reject_button.click, self.reject_values, [*project, self.concept, self.ticked], view
        )

    # -- handlers -------------------------------------------------------------------------------
    def view(self, project_name: str | None, label: str | None) -> list[Any]:
        """The concept dropdown, summary, gallery, names and (cleared) ticks of one concept's folder.

        Raises:
            DbcharError: no project or no concept saved yet.
        """
        project, concepts = self.concepts_for(project_name)
        statuses = class_folder_status(concepts, project.root)
        status = statuses[min(concept_index(label), len(statuses) - 1)]
        labels = [concept_label(s) for s in statuses]
        names = [Path(p).name for p in status.images]
        return [
            compat.update(choices=labels, value=concept_label(status)),
            summary_text(status),
            [(path, Path(path).name) for path in status.images],
            names,
            compat.update(choices=names, value=[]),
        ]

    def show(self, project_name: str | None, label: str | None) -> list[Any]:
        """:meth:`view` plus a message; a problem leaves the view and says why."""
        try:
            return [*self.view(project_name, label), ""]
        except DbcharError as exc:
            return [*[compat.no_change()] * VIEW_SIZE, message_html(str(exc), "error")]

    def show_values(self, *values: Any) -> list[Any]:
        """:meth:`show` as gradio calls it: (project, concept) or (concept)."""
        return self.show(*values) if self.ctx.project is not None else self.show(None, *values)

    def concept_picked(self, evt: gr.SelectData, *values: Any) -> list[Any]:
        """A concept was picked in the dropdown (its label is the event's value): show its folder."""
        project_name = values[0] if self.ctx.project is not None else None
        return self.show(project_name, str(evt.value))

    def gallery_clicked(self, names: list[str], ticked: list[str], evt: gr.SelectData) -> Any:
        """A click on a gallery image ticks (or unticks) it."""
        return compat.update(value=toggle(names or [], ticked or [], int(evt.index)))

    def reject(self, project_name: str | None, label: str | None, ticked: Sequence[str]) -> list[Any]:
        """Move the ticked images of the shown concept to ``rejected/`` and show the folder again.

        Returns:
            The view (:meth:`view`) and a message saying what moved where.
        """
        if not ticked:
            return [
                *[compat.no_change()] * VIEW_SIZE,
                message_html("Tick the images to reject first.", "error"),
            ]
        try:
            project, concepts = self.concepts_for(project_name)
            status = class_folder_status(concepts, project.root)[concept_index(label)]
            moved = reject_class_images(Path(status.folder), list(ticked))
            view = self.view(project_name, label)
        except (DbcharError, FileNotFoundError, IndexError) as exc:
            return [*[compat.no_change()] * VIEW_SIZE, message_html(str(exc), "error")]
        where = moved[0].parent if moved else ""
        text = f"Moved {len(moved)} image(s) to {where}; Generate / top up draws replacements."
        return [*view, message_html(text, "ok")]

    def reject_values(self, *values: Any) -> list[Any]:
        """:meth:`reject` as gradio calls it: (project, concept, ticked) or (concept, ticked)."""
        return self.reject(*values) if self.ctx.project is not None else self.reject(None, *values)

    def generate(self, values: dict[str, Any], job: JobContext) -> Outcome:
        """The Generate job: draw the missing class images with the source model, then show them.

        Raises:
            DbcharError: bad input, the source cannot be used, or JobStopped (images kept).
        """
        project, spec = self.spec_for(values)
        release_held_memory(self.ctx)
        try:
            with self.ctx.host.vram_freed():
                results = generate_for_run(spec, job)
        except (ValueError, FileNotFoundError) as exc:
            raise DbcharError(str(exc)) from exc
        drawn = sum(len(r.generated) for r in results)
        present = sum(r.existing + len(r.generated) for r in results)
        view = self.view(project.name, values.get("concept"))
        message = (
            f"Drew {drawn} class image(s); {present} in all." if drawn else "Nothing missing: no image drawn."
        )
        return Outcome(tuple(view), message)
