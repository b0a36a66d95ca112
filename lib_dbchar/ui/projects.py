"""The project picker shared by every tab: pick a character's project, or create one."""

from __future__ import annotations

from typing import Any

from lib_dbchar.errors import DbcharError
from lib_dbchar.projects import create_project, list_projects
from lib_dbchar.ui import compat
from lib_dbchar.ui.compat import gr
from lib_dbchar.ui.ids import elem_id
from lib_dbchar.ui.messages import message_html


class ProjectPicker:
    """A dropdown of the projects, a Refresh button, and a name box with a Create button.

    The dropdown is the page's "current project" (``UiContext.project``); tabs read its value.
    """

    def __init__(self, host: Any) -> None:
        self.host = host

    def choices(self) -> list[str]:
        """The project names in the host's projects folder (read fresh every time)."""
        return list_projects(self.host.projects_dir())

    def render(self) -> ProjectPicker:
        """Create the picker's widgets inside the current gradio layout block."""
        projects = self.choices()
        with gr.Row(elem_id=elem_id("project-row")):
            self.dropdown = gr.Dropdown(
                choices=projects,
                value=projects[0] if projects else None,
                label="Project",
                info=f"One folder per character, in {self.host.projects_dir()}",
                elem_id=elem_id("project"),
            )
            self.refresh_button = gr.Button("Refresh", elem_id=elem_id("project", "refresh"))
            self.name = gr.Textbox(
                label="New project",
                placeholder="character name, e.g. star guardian neeko",
                elem_id=elem_id("project", "name"),
            )
            self.create_button = gr.Button("Create", variant="primary", elem_id=elem_id("project", "create"))
        self.message = gr.HTML(value="", elem_id=elem_id("project", "message"))
        return self

    def register(self) -> None:
        """Attach the handlers: Create (button or Enter in the name box) and Refresh."""
        outputs = [self.dropdown, self.name, self.message]
        compat.listen(self.create_button.click, self.create, [self.name], outputs, show_progress=False)
        compat.listen(self.name.submit, self.create, [self.name], outputs, show_progress=False)
        compat.listen(
            self.refresh_button.click, self.refresh, [self.dropdown], [self.dropdown], show_progress=False
        )

    def create(self, name: str) -> tuple[Any, Any, str]:
        """Create the project ``name`` and select it.

        Returns:
            (dropdown update, name box update, message HTML). A rejected or existing name leaves
            the dropdown and the box as they are and says why.
        """
        if not (name or "").strip():
            return (
                compat.no_change(),
                compat.no_change(),
                message_html("Type a name for the new project.", "error"),
            )
        try:
            project = create_project(self.host.projects_dir(), name)
        except DbcharError as exc:
            return compat.no_change(), compat.no_change(), message_html(str(exc), "error")
        dropdown = compat.update(choices=self.choices(), value=project.name)
        return (
            dropdown,
            compat.update(value=""),
            message_html(f"Created project {project.name} in {project.root}.", "ok"),
        )

    def refresh(self, current: str | None) -> Any:
        """Re-read the projects folder, keeping the current choice when it still exists."""
        projects = self.choices()
        value = current if current in projects else (projects[0] if projects else None)
        return compat.update(choices=projects, value=value)
