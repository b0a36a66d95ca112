"""The Concept tab: the token that names the character and the prompts built around it.

The form is built from :class:`~lib_dbchar.concept.Concept`. A project may train several
concepts in one run: the picker above the form chooses which one the form shows, "Add concept" /
"Remove concept" change the list, and the list lives in the page (a ``gr.State`` of
``{field: value}`` entries) until Save validates every concept and writes them all to
``concept.json`` atomically. Load reads the file (or the defaults, filled from the dataset). The
work lives in :mod:`lib_dbchar.ui.concept_logic`; this module only lays out the widgets and turns
errors into messages.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lib_dbchar.concept import Concept, load_concepts
from lib_dbchar.config import to_dict
from lib_dbchar.errors import DbcharError
from lib_dbchar.projects import Project, open_project
from lib_dbchar.ui import compat
from lib_dbchar.ui.compat import gr
from lib_dbchar.ui.concept_logic import (
    add_entry,
    concept_labels,
    label_index,
    load_project_concepts,
    remove_entry,
    save_project_concepts,
    stash,
)
from lib_dbchar.ui.context import UiContext
from lib_dbchar.ui.forms import Form
from lib_dbchar.ui.ids import elem_class, elem_id
from lib_dbchar.ui.messages import message_html

TITLE = "Concept"

INTRO = (
    "Name the character with an **instance token** (e.g. `star guardian neeko`). The instance prompt is "
    "the token plus each picture's tags (`<token>, [filewords]`); the class prompt is the tags alone "
    "(`[filewords]`) and must never contain the token. Class images: 10 per picture by default. "
    "Several characters in one run: **Add concept**, each with its own pictures folder."
)

#: Outputs after the form's widgets: the entries (state), the index (state), the picker.
LIST_OUTPUTS = 3


class ConceptTab:
    """The Concept form with the concept picker, Add / Remove, Load and Save.

    Attributes (after :meth:`render`): ``form`` (the :class:`Form` of :class:`Concept`),
    ``which`` (the concept picker), ``entries`` and ``index`` (gr.State), ``add_button``,
    ``remove_button``, ``load_button``, ``save_button``, ``message``.
    """

    def __init__(self, ctx: UiContext) -> None:
        self.ctx = ctx
        self.form: Form = Form("concept", Concept)

    def render(self) -> ConceptTab:
        """Create the tab's widgets inside the current ``gr.Tab``."""
        gr.Markdown(INTRO, elem_id=elem_id("concept", "plan"), elem_classes=[elem_class("plan")])
        with gr.Row(elem_id=elem_id("concept", "actions")):
            self.load_button = gr.Button("Load", elem_id=elem_id("concept", "load"))
            self.save_button = gr.Button("Save", variant="primary", elem_id=elem_id("concept", "save"))
        self.message = gr.HTML(value="", elem_id=elem_id("concept", "message"))
        first = [to_dict(Concept())]
        with gr.Row(elem_id=elem_id("concept", "list")):
            self.which = gr.Dropdown(
                choices=concept_labels(first),
                value=concept_labels(first)[0],
                label="Concept",
                info="A run trains every concept of the list.",
                # Only read through its select event, so gradio 3 would otherwise show it read-only.
                interactive=True,
                elem_id=elem_id("concept", "which"),
            )
            self.add_button = gr.Button("Add concept", elem_id=elem_id("concept", "add"))
            self.remove_button = gr.Button("Remove concept", elem_id=elem_id("concept", "remove"))
        self.entries = gr.State(first)
        self.index = gr.State(0)
        with gr.Group(elem_id=elem_id("concept", "form")):
            self.form.render()
        return self

    def register(self) -> None:
        """Attach Load (button and project change), the picker, Add, Remove and Save."""
        widgets = list(self.form.components.values())
        project = [self.ctx.project] if self.ctx.project is not None else []
        shown = [*widgets, self.entries, self.index, self.which, self.message]
        compat.listen(self.load_button.click, self.load, project, shown, show_progress=False)
        if self.ctx.project is not None:
            compat.listen(self.ctx.project.change, self.load, project, shown, show_progress=False)
        state = [self.entries, self.index, *widgets]
        # .select fires for the user's pick only: a .change would also fire for the handlers' own
        # updates of the picker, and its late answer could overwrite what the user types meanwhile.
        compat.listen(self.which.select, self.select_event, state, shown, show_progress=False)
        compat.listen(self.add_button.click, self.add, state, shown, show_progress=False)
        compat.listen(self.remove_button.click, self.remove, state, shown, show_progress=False)
        compat.listen(
            self.save_button.click,
            self.save,
            [*project, *state],
            [self.entries, self.which, self.message],
            show_progress=False,
        )

    # -- helpers --------------------------------------------------------------------------------
    def _form_entry(self, values: tuple[Any, ...]) -> dict[str, Any]:
        """The form's widget values as a ``{field: value}`` entry (not validated yet)."""
        return self.form.collect(dict(zip(self.form.components, values, strict=True)))

    def _show(self, entries: list[dict[str, Any]], index: int, message: str) -> list[Any]:
        """Outputs that show entry ``index``: form widgets, entries, index, picker, message."""
        defaults = to_dict(Concept())
        # Not validated: a half-typed entry is shown as it was left.
        entry = Concept(**{name: entries[index].get(name, value) for name, value in defaults.items()})
        labels = concept_labels(entries)
        widgets = self.form.show(entry)
        return [*widgets, entries, index, compat.update(choices=labels, value=labels[index]), message]

    def _unchanged(self, message: str) -> list[Any]:
        return [
            *[compat.no_change() for _ in self.form.components],
            *[compat.no_change()] * LIST_OUTPUTS,
            message,
        ]

    def _project(self, project_name: str | None) -> Project:
        if not project_name:
            msg = "Pick or create a project first."
            raise DbcharError(msg)
        try:
            return open_project(self.ctx.host.projects_dir(), project_name)
        except FileNotFoundError as exc:
            raise DbcharError(str(exc)) from exc

    # -- handlers -------------------------------------------------------------------------------
    def load(self, project_name: str | None) -> list[Any]:
        """Show the project's concepts (defaults filled from its dataset), the first in the form.

        Returns:
            One value per form widget, the entries, the index, the picker, then the message HTML;
            on a problem everything is left as it is and the message says why.
        """
        try:
            concepts, note = load_project_concepts(self._project(project_name))
        except DbcharError as exc:
            return self._unchanged(message_html(str(exc), "error"))
        return self._show([to_dict(c) for c in concepts], 0, message_html(note, "info"))

    def select(self, label: str | None, entries: list[dict[str, Any]], index: int, *values: Any) -> list[Any]:
        """The picker changed: keep the form's edits in the list, show the picked concept."""
        entries = stash(entries, int(index or 0), self._form_entry(values))
        return self._show(entries, label_index(label, len(entries)), "")

    def select_event(
        self, evt: gr.SelectData, entries: list[dict[str, Any]], index: int, *values: Any
    ) -> list[Any]:
        """:meth:`select` as gradio calls it on a pick in the picker (the label is the event's value)."""
        return self.select(str(evt.value), entries, index, *values)

    def add(self, entries: list[dict[str, Any]], index: int, *values: Any) -> list[Any]:
        """Keep the form's edits, append a new concept with the defaults and show it."""
        entries = add_entry(stash(entries, int(index or 0), self._form_entry(values)))
        note = f"Added concept {len(entries)}; fill in its token and pictures folder, then Save."
        return self._show(entries, len(entries) - 1, message_html(note, "info"))

    def remove(self, entries: list[dict[str, Any]], index: int, *values: Any) -> list[Any]:
        """Remove the shown concept (not saved until Save); the others keep their class folders."""
        index = int(index or 0)
        entries = stash(entries, index, self._form_entry(values))
        try:
            entries, shown = remove_entry(entries, index)
        except DbcharError as exc:
            return self._unchanged(message_html(str(exc), "error"))
        note = f"Removed concept {index + 1}; Save to write the list."
        return self._show(entries, shown, message_html(note, "info"))

    def save(
        self, project_name: str | None, entries: list[dict[str, Any]], index: int, *values: Any
    ) -> list[Any]:
        """Validate every concept and write the project's ``concept.json``.

        Args:
            project_name: the selected project.
            entries: the concepts as the page holds them.
            index: the one the form shows (its widget values replace that entry).
            values: the form's widget values, in :attr:`Form.components` order.

        Returns:
            The entries, the picker's update and the message HTML: where it was saved, or which
            concept and field are wrong and why.
        """
        entries = stash(entries, int(index or 0), self._form_entry(values))
        labels = concept_labels(entries)
        picker = compat.update(choices=labels, value=labels[min(int(index or 0), len(labels) - 1)])
        try:
            path = save_project_concepts(self._project(project_name), entries)
        except DbcharError as exc:
            return [entries, picker, message_html(str(exc), "error")]
        count = f" ({len(entries)} concepts)" if len(entries) > 1 else ""
        return [entries, picker, message_html(f"Saved {path}{count}.", "ok")]

    def save_values(self, project_name: str | None, values: Mapping[str, Any], *, index: int = 0) -> str:
        """Save as the page would with the file's concepts as the list and ``values`` in the form.

        For tests and scripts: fields missing from ``values`` take the widgets' values; the
        concept at ``index`` is replaced, the file's other concepts are kept.

        Returns:
            The message HTML.
        """
        current = {name: comp.value for name, comp in self.form.components.items()}
        current.update(values)
        entries: list[dict[str, Any]] = []
        try:
            path = self._project(project_name).concept_file
            entries = [to_dict(c) for c in load_concepts(path)] if path.is_file() else []
        except (DbcharError, ValueError):
            entries = []  # the save below reports the problem (and writes nothing over a broken file)
        while len(entries) <= index:
            entries.append(to_dict(Concept()))
        return self.save(project_name, entries, index, *[current[name] for name in self.form.components])[-1]


def render(ctx: UiContext) -> ConceptTab:
    """Show the tab's content inside the current ``gr.Tab`` and attach its handlers."""
    tab = ConceptTab(ctx).render()
    tab.register()
    return tab
