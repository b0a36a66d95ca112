"""The Tags tab: WD14 tags for every picture, then the tag editor to review them.

Two parts (see :mod:`lib_dbchar.ui.tags_tagging` and :mod:`lib_dbchar.ui.tags_editor`) plus the
wiring between them and the page: a tagging run refreshes the editor; picking another project or
opening the tab reads the captions again and prefills "Always first" with the project's instance
token (unless the user typed something of their own there).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from lib_dbchar.errors import DbcharError
from lib_dbchar.tagger.runner import TaggerConfig
from lib_dbchar.ui import compat
from lib_dbchar.ui.compat import gr
from lib_dbchar.ui.context import UiContext
from lib_dbchar.ui.ids import elem_id
from lib_dbchar.ui.messages import message_html
from lib_dbchar.ui.tabs.common import plan
from lib_dbchar.ui.tags_editor import VIEW_SIZE, TagEditor, open_named_project
from lib_dbchar.ui.tags_tagging import TaggingPanel
from lib_dbchar.ui.tags_view import prefill_always_first, project_tokens

TITLE = "Tags"


def initial_tokens(ctx: UiContext) -> list[str]:
    """The instance tokens of the project the picker shows when the page is built."""
    name = getattr(ctx.project, "value", None)
    try:
        return project_tokens(open_named_project(ctx.host, name))
    except DbcharError:
        return []


class TagsTab:
    """The tab's two parts and the handlers that tie them to the page.

    Attributes (after :meth:`render`): ``tagging`` (:class:`TaggingPanel`), ``editor``
    (:class:`TagEditor`), ``prefilled`` (a ``gr.State``: what "Always first" was last set to
    automatically), ``tab`` (the ``gr.Tab`` rendered into, or None).
    """

    def __init__(self, ctx: UiContext) -> None:
        self.ctx = ctx

    def render(self) -> TagsTab:
        """Create the tab's content inside the current ``gr.Tab``."""
        # render() runs inside `with gr.Tab(...)`: opening that tab re-reads the captions. The
        # current layout block is gradio's Context.block (the same in gradio 3 and 4); gradio is
        # reached through compat, which must be imported before gradio itself.
        block = gr.context.Context.block
        self.tab = block if hasattr(block, "select") else None
        plan(
            "tags",
            "Describe every picture with tags, so the training learns what is the character and what is not.",
            [
                "Tag all pictures with a WD14 tagger on this machine (its model is downloaded once).",
                "Review the tags: filter the pictures, fix single captions, bulk add / remove / replace "
                "(Undo takes a bulk edit back).",
                "Drop the character's fixed traits so the instance token learns them.",
            ],
        )
        token = ", ".join(initial_tokens(self.ctx))
        self.prefilled = gr.State(token)
        gr.Markdown("### 1. Tag the pictures", elem_id=elem_id("tags", "step-tag"))
        initial = dataclasses.replace(TaggerConfig(), always_first=token)
        self.tagging = TaggingPanel(self.ctx, initial=initial).render()
        gr.Markdown("### 2. Review and edit the tags", elem_id=elem_id("tags", "step-edit"))
        self.editor = TagEditor(self.ctx).render()
        return self

    def register(self) -> None:
        """Attach the parts' handlers and the page-level ones (project change, tab opened)."""
        self.editor.register()
        self.tagging.register(self.editor)
        always_first = self.tagging.form.components["always_first"]
        editor = self.editor
        inputs = [*editor.view_inputs(), always_first, self.prefilled]
        outputs = [*editor.view_outputs(), always_first, self.prefilled, editor.message]
        if self.ctx.project is not None:
            switch_outputs = [*outputs, editor.image, editor.selected]
            compat.listen(self.ctx.project.change, self.switch_project, inputs, switch_outputs)
        if self.tab is not None:
            compat.listen(self.tab.select, self.open_tab, inputs, outputs)

    # -- handlers -------------------------------------------------------------------------------
    def _prefill(self, project_name: str | None, current: str, prefilled: str) -> tuple[str, str]:
        try:
            tokens = project_tokens(open_named_project(self.ctx.host, project_name))
        except DbcharError:
            tokens = []
        return prefill_always_first(current or "", prefilled or "", tokens)

    def open_tab(self, *args: Any) -> tuple[Any, ...]:
        """The tab was opened: read the captions again, keeping the filter and the open picture.

        Args:
            args: the editor's view inputs, then "Always first" and the prefilled state.

        Returns:
            The view, "Always first", the prefilled state and a message.
        """
        *view_args, current, prefilled = args
        first = self._prefill(view_args[0], current, prefilled)
        try:
            view = self.editor.view_values(*view_args)
        except DbcharError as exc:
            return (*[compat.no_change()] * VIEW_SIZE, *first, message_html(str(exc), "error"))
        return (*view, *first, "")

    def switch_project(self, *args: Any) -> tuple[Any, ...]:
        """Another project was picked: its captions, an empty filter, no open picture.

        Returns:
            As :meth:`open_tab`, then the picture (cleared) and its file name (cleared).
        """
        *view_args, current, prefilled = args
        project, min_share = view_args[0], view_args[3]
        first = self._prefill(project, current, prefilled)
        cleared = (None, "")
        try:
            view = list(self.editor.view_values(project, [], [], min_share, [], ""))
        except DbcharError as exc:
            return (*[compat.no_change()] * VIEW_SIZE, *first, message_html(str(exc), "error"), *cleared)
        view[1] = compat.update(choices=view[1]["choices"], value=[])
        view[2] = compat.update(choices=view[2]["choices"], value=[])
        view[-1] = ""  # the caption box belonged to the previous project's picture
        return (*view, *first, "", *cleared)


def render(ctx: UiContext) -> TagsTab:
    """Show the tab's content inside the current ``gr.Tab`` and attach its handlers."""
    tab = TagsTab(ctx).render()
    tab.register()
    return tab
