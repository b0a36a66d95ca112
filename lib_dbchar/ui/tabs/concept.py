"""The Concept tab: the token that names the character and the prompts built around it.

The form is built from :class:`~lib_dbchar.concept.Concept`; Load reads the selected project's
``concept.json`` (or the defaults, filled from the dataset), Save validates and writes it
atomically. The work lives in :mod:`lib_dbchar.ui.concept_logic`; this module only lays out the
widgets and turns errors into messages.
"""

from __future__ import annotations

from typing import Any

from lib_dbchar.concept import Concept
from lib_dbchar.errors import DbcharError
from lib_dbchar.projects import open_project
from lib_dbchar.ui import compat
from lib_dbchar.ui.compat import gr
from lib_dbchar.ui.concept_logic import load_project_concept, save_project_concept
from lib_dbchar.ui.context import UiContext
from lib_dbchar.ui.forms import Form
from lib_dbchar.ui.ids import elem_class, elem_id
from lib_dbchar.ui.messages import message_html

TITLE = "Concept"

INTRO = (
    "Name the character with an **instance token** (e.g. `star guardian neeko`). The instance prompt is "
    "the token plus each picture's tags (`<token>, [filewords]`); the class prompt is the tags alone "
    "(`[filewords]`) and must never contain the token. Class images: 10 per picture by default."
)


class ConceptTab:
    """The Concept form with Load and Save.

    Attributes (after :meth:`render`): ``form`` (the :class:`Form` of :class:`Concept`),
    ``load_button``, ``save_button``, ``message``.
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
        with gr.Group(elem_id=elem_id("concept", "form")):
            self.form.render()
        return self

    def register(self) -> None:
        """Attach Load (button and project change) and Save."""
        widgets = list(self.form.components.values())
        project = [self.ctx.project] if self.ctx.project is not None else []
        compat.listen(
            self.load_button.click, self.load, project, [*widgets, self.message], show_progress=False
        )
        if self.ctx.project is not None:
            compat.listen(
                self.ctx.project.change, self.load, project, [*widgets, self.message], show_progress=False
            )
        compat.listen(
            self.save_button.click, self.save, [*project, *widgets], [self.message], show_progress=False
        )

    # -- handlers -------------------------------------------------------------------------------
    def load(self, project_name: str | None) -> list[Any]:
        """Show the project's concept (defaults filled from its dataset).

        Returns:
            One value per form widget, then the message HTML; on a problem every widget is left
            as it is and the message says why.
        """
        keep = [compat.no_change() for _ in self.form.components]
        if not project_name:
            return [*keep, message_html("Pick or create a project first.", "error")]
        try:
            project = open_project(self.ctx.host.projects_dir(), project_name)
            concept, note = load_project_concept(project)
        except DbcharError as exc:
            return [*keep, message_html(str(exc), "error")]
        return [*self.form.show(concept), message_html(note, "info")]

    def save(self, project_name: str | None, *values: Any) -> str:
        """Validate the form and write the project's ``concept.json``.

        Args:
            project_name: the selected project.
            values: the form's widget values, in :attr:`Form.components` order.

        Returns:
            The message HTML: where it was saved, or which field is wrong and why.
        """
        if not project_name:
            return message_html("Pick or create a project first.", "error")
        try:
            concept = self.form.parse(dict(zip(self.form.components, values, strict=True)))
            project = open_project(self.ctx.host.projects_dir(), project_name)
            path = save_project_concept(project, concept)
        except (DbcharError, ValueError) as exc:
            return message_html(str(exc), "error")
        return message_html(f"Saved {path}.", "ok")

    def save_values(self, project_name: str | None, values: dict[str, Any]) -> str:
        """:meth:`save` from a ``{field: value}`` dict (missing fields take the widgets' values)."""
        current = {name: comp.value for name, comp in self.form.components.items()}
        current.update(values)
        return self.save(project_name, *[current[name] for name in self.form.components])


def render(ctx: UiContext) -> ConceptTab:
    """Show the tab's content inside the current ``gr.Tab`` and attach its handlers."""
    tab = ConceptTab(ctx).render()
    tab.register()
    return tab
