"""The tag editor of the Tags tab: the tags of the whole dataset, filtered pictures, captions, bulk edits.

Every handler reads the captions from disk again (a dataset is a few hundred small text files), so
what the page shows is never older than the last click and two browser tabs cannot overwrite each
other's work with stale captions. Writes go through the core: one caption with
:func:`~lib_dbchar.tagger.editor.save_caption`, bulk edits and trait drops with
:func:`~lib_dbchar.tagger.editor.apply_edit` (backed up first; Undo takes the last one back).

Handlers are plain methods taking the component values in a fixed order and returning the output
values, so tests call them directly. The "view" inputs come first everywhere:
``(project, require, exclude, min_share, checked traits, selected picture)``; see
:meth:`TagEditor.view_inputs` and :meth:`TagEditor.view_outputs`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from lib_dbchar.errors import DbcharError
from lib_dbchar.projects import Project, open_project
from lib_dbchar.tagger.captions import join_caption
from lib_dbchar.tagger.editor import (
    CaptionEntry,
    TagDataset,
    apply_edit,
    filter_entries,
    load_dataset,
    plan_drop_traits,
    save_caption,
    undo_last_edit,
)
from lib_dbchar.ui import compat
from lib_dbchar.ui.compat import gr
from lib_dbchar.ui.context import UiContext
from lib_dbchar.ui.ids import elem_class, elem_id
from lib_dbchar.ui.messages import message_html
from lib_dbchar.ui.tags_view import (
    BULK_OPERATIONS,
    FREQUENCY_HEADERS,
    PREVIEW_HEADERS,
    VIEW_SIDE,
    EditorView,
    Thumbnails,
    build_view,
    display_image,
    edit_message,
    filtered_gallery,
    plan_bulk,
    preview_message,
    preview_rows,
    project_tokens,
    table,
    tag_list,
    undo_message,
)

#: How many values :meth:`TagEditor.view_values` returns (one per :meth:`TagEditor.view_outputs`).
VIEW_SIZE = 9
DEFAULT_TRAIT_SHARE = 0.8


def open_named_project(host: Any, name: str | None) -> Project:
    """The project picked at the top of the page.

    Raises:
        DbcharError: none is picked, or it no longer exists.
    """
    if not (name or "").strip():
        msg = "Pick or create a project at the top of the page first."
        raise DbcharError(msg)
    return open_project(host.projects_dir(), name)


def find_entry(dataset: TagDataset, picture: str) -> CaptionEntry:
    """The dataset's entry for ``picture`` (a path or file name).

    Raises:
        DbcharError: the picture is not (or no longer) in the dataset.
    """
    try:
        return dataset.entry(picture)
    except KeyError:
        raise DbcharError(
            f"{picture} is not a picture of {dataset.folder} (moved or deleted?); click Reload"
        ) from None


class TagEditor:
    """Render the editor, then register its handlers.

    Attributes (after :meth:`render`): the components named in :meth:`render`; ``thumbnails`` keeps
    the gallery's previews between clicks.
    """

    def __init__(self, ctx: UiContext) -> None:
        self.ctx = ctx
        self.thumbnails = Thumbnails()

    # -- layout ---------------------------------------------------------------------------------
    def render(self) -> TagEditor:
        """Create the editor's widgets inside the current layout block."""
        with gr.Row(elem_id=elem_id("tags", "editor-top")):
            self.reload_button = gr.Button("Reload captions", elem_id=elem_id("tags", "reload"))
            self.backup = gr.HTML(value="", elem_id=elem_id("tags", "backup"))
        with gr.Row():
            with gr.Column(scale=1, min_width=260):
                self.table = gr.Dataframe(
                    value=table(FREQUENCY_HEADERS, []),
                    headers=FREQUENCY_HEADERS,
                    type="array",
                    interactive=False,
                    wrap=True,
                    label="Tags of all pictures (click a tag to filter by it)",
                    elem_id=elem_id("tags", "freq"),
                )
            with gr.Column(scale=2):
                self._render_filter()
        self._render_caption()
        self._render_bulk()
        self._render_traits()
        return self

    def _render_filter(self) -> None:
        with gr.Row():
            self.require = self._tag_menu("require", "Pictures with all of these tags")
            self.exclude = self._tag_menu("exclude", "...and none of these")
        self.count = gr.HTML(value="", elem_id=elem_id("tags", "count"))
        self.gallery = gr.Gallery(
            value=[],
            label="Filtered pictures (click one to edit its caption)",
            columns=5,
            height=420,
            allow_preview=False,
            object_fit="contain",
            elem_id=elem_id("tags", "gallery"),
        )
        # The pictures behind the gallery, in its order, to map a click to a file.
        self.shown = gr.State([])

    @staticmethod
    def _tag_menu(word: str, label: str) -> Any:
        # Refreshes keep the selected tags among the choices (see _keep): a tag a bulk edit just
        # removed everywhere stays in the filter, matching nothing, instead of failing gradio 4's
        # "value not in choices" check (gradio 3 has no custom values for multiselect menus).
        return gr.Dropdown(
            choices=[],
            value=[],
            multiselect=True,
            label=label,
            elem_id=elem_id("tags", word),
        )

    def _render_caption(self) -> None:
        with gr.Row(elem_id=elem_id("tags", "caption-row")):
            self.image = gr.Image(
                value=None, label="Picture", interactive=False, height=360, elem_id=elem_id("tags", "image")
            )
            with gr.Column():
                self.selected = gr.Textbox(
                    value="", label="Picture file", interactive=False, elem_id=elem_id("tags", "selected")
                )
                self.caption = gr.Textbox(
                    value="",
                    label="Caption",
                    lines=6,
                    info="Tags separated by commas; saved as the .txt file beside the picture.",
                    elem_id=elem_id("tags", "caption"),
                )
                self.save_button = gr.Button(
                    "Save caption", variant="primary", elem_id=elem_id("tags", "save")
                )
                self.message = gr.HTML(value="", elem_id=elem_id("tags", "editor-status"))

    def _render_bulk(self) -> None:
        with gr.Accordion("Bulk edit the filtered pictures", open=True, elem_id=elem_id("tags", "bulk")):
            with gr.Row():
                self.operation = gr.Dropdown(
                    choices=list(BULK_OPERATIONS),
                    value=BULK_OPERATIONS[0],
                    label="Edit",
                    elem_id=elem_id("tags", "bulk", "operation"),
                )
                self.bulk_tags = gr.Textbox(
                    value="",
                    label="Tags",
                    info="add / remove: tags separated by commas. replace: the tag to find; "
                    "regex: a Python regular expression matched against each tag.",
                    elem_id=elem_id("tags", "bulk", "tags"),
                )
                self.replacement = gr.Textbox(
                    value="",
                    label="Replace with",
                    info="replace only; empty removes the tag. regex: \\1 is the first group.",
                    elem_id=elem_id("tags", "bulk", "replacement"),
                )
            with gr.Row():
                self.preview_button = gr.Button("Preview", elem_id=elem_id("tags", "bulk", "preview"))
                self.apply_button = gr.Button(
                    "Apply", variant="primary", elem_id=elem_id("tags", "bulk", "apply")
                )
                self.undo_button = gr.Button("Undo last bulk edit", elem_id=elem_id("tags", "bulk", "undo"))
            self.bulk_message = gr.HTML(value="", elem_id=elem_id("tags", "bulk", "status"))
            self.preview = gr.Dataframe(
                value=table(PREVIEW_HEADERS, []),
                headers=PREVIEW_HEADERS,
                type="array",
                interactive=False,
                wrap=True,
                label="What changes",
                elem_id=elem_id("tags", "bulk", "changes"),
            )

    def _render_traits(self) -> None:
        with gr.Accordion("Character traits", open=True, elem_id=elem_id("tags", "traits")):
            gr.Markdown(
                "Tags on most pictures are usually the character's fixed traits (hair and eye colour, "
                "the signature outfit). Dropping them from the captions lets the instance token learn "
                "them, so the token alone calls up the full design.",
                elem_classes=[elem_class("hint")],
            )
            with gr.Row():
                self.min_share = gr.Slider(
                    minimum=0.5,
                    maximum=1.0,
                    step=0.05,
                    value=DEFAULT_TRAIT_SHARE,
                    label="On at least this share of the pictures",
                    elem_id=elem_id("tags", "traits", "share"),
                )
                self.traits = gr.CheckboxGroup(
                    choices=[],
                    value=[],
                    label="Tags on most pictures (tick the ones to drop)",
                    elem_id=elem_id("tags", "traits", "list"),
                )
            self.drop_button = gr.Button(
                "Drop the ticked traits from every caption", elem_id=elem_id("tags", "traits", "drop")
            )
            self.traits_message = gr.HTML(value="", elem_id=elem_id("tags", "traits", "status"))

    # -- wiring ---------------------------------------------------------------------------------
    def view_inputs(self) -> list[Any]:
        """The inputs every refreshing handler starts with, in its argument order."""
        return [self.ctx.project, self.require, self.exclude, self.min_share, self.traits, self.selected]

    def view_input_map(self) -> dict[str, Any]:
        """The same inputs by name (for :func:`~lib_dbchar.ui.jobs.bind_job`)."""
        names = ("project", "require", "exclude", "min_share", "checked", "selected")
        return dict(zip(names, self.view_inputs(), strict=True))

    def view_outputs(self) -> list[Any]:
        """The components :meth:`view_values` fills, in its order."""
        return [
            self.table,
            self.require,
            self.exclude,
            self.gallery,
            self.shown,
            self.count,
            self.traits,
            self.backup,
            self.caption,
        ]

    def register(self) -> None:
        """Attach every handler of the editor."""
        view_in, view_out = self.view_inputs(), self.view_outputs()
        listen = compat.listen
        listen(self.reload_button.click, self.reload, view_in, [*view_out, self.message])
        for menu in (self.require, self.exclude):
            listen(
                menu.change,
                self.refilter,
                [self.ctx.project, self.require, self.exclude],
                [self.gallery, self.shown, self.count],
                show_progress=False,
            )
        listen(
            self.table.select, self.pick_tag, [self.table, self.require], [self.require], show_progress=False
        )
        listen(
            self.gallery.select,
            self.select_picture,
            [self.ctx.project, self.shown],
            [self.image, self.selected, self.caption, self.message],
        )
        listen(self.save_button.click, self.save, [*view_in, self.caption], [*view_out, self.message])
        bulk_in = [self.operation, self.bulk_tags, self.replacement]
        listen(
            self.preview_button.click,
            self.preview_edit,
            [self.ctx.project, self.require, self.exclude, *bulk_in],
            [self.preview, self.bulk_message],
        )
        listen(
            self.apply_button.click,
            self.apply,
            [*view_in, *bulk_in],
            [*view_out, self.preview, self.bulk_message],
        )
        listen(self.undo_button.click, self.undo, view_in, [*view_out, self.preview, self.bulk_message])
        listen(
            self.min_share.release,
            self.retrait,
            [self.ctx.project, self.min_share, self.traits],
            [self.traits],
            show_progress=False,
        )
        listen(self.drop_button.click, self.drop_traits, view_in, [*view_out, self.traits_message])

    # -- the view -------------------------------------------------------------------------------
    def project(self, name: str | None) -> Project:
        """The picked project (raises DbcharError when there is none)."""
        return open_named_project(self.ctx.host, name)

    def dataset(self, project: Project) -> TagDataset:
        """The project's pictures with their ``.txt`` captions, read now."""
        return load_dataset(project.dataset_dir)

    def view(  # noqa: PLR0917 - gradio passes the view inputs positionally
        self,
        project_name: str | None,
        require: Any,
        exclude: Any,
        min_share: float,
        checked: Sequence[str] | None,
        selected: str | None,
    ) -> EditorView:
        """The editor's view of the picked project's dataset under the current filter."""
        project = self.project(project_name)
        return build_view(
            self.dataset(project),
            require=tag_list(require),
            exclude=tag_list(exclude),
            min_share=float(min_share or DEFAULT_TRAIT_SHARE),
            tokens=project_tokens(project),
            checked=list(checked or []),
            selected=selected or "",
            thumbnail=self.thumbnails.get,
        )

    def view_values(self, *view_args: Any) -> tuple[Any, ...]:
        """:meth:`view` as values for :meth:`view_outputs` (``view_args`` in :meth:`view_inputs` order)."""
        view = self.view(*view_args)
        require, exclude = tag_list(view_args[1]), tag_list(view_args[2])
        return (
            table(FREQUENCY_HEADERS, view.rows),
            # The value is sent with the new choices because gradio 4's menu remembers its
            # selection by position in the choices: without it the chips would shift to other tags.
            compat.update(choices=_keep(view.tags, require), value=require),
            compat.update(choices=_keep(view.tags, exclude), value=exclude),
            view.items,
            view.shown,
            message_html(view.summary, "info"),
            compat.update(choices=view.traits, value=view.checked),
            message_html(view.backup, "info"),
            compat.no_change() if view.caption is None else view.caption,
        )

    def _attempt(self, count: int, fn: Callable[[], tuple[Any, ...]]) -> tuple[Any, ...]:
        """``fn()``; on a user-facing problem, "no change" for ``count`` outputs and the message."""
        try:
            return fn()
        except (DbcharError, ValueError) as exc:
            return (*[compat.no_change() for _ in range(count)], message_html(str(exc), "error"))

    # -- handlers -------------------------------------------------------------------------------
    def reload(self, *view_args: Any) -> tuple[Any, ...]:
        """Read the captions again. Returns the view and a message."""
        return self._attempt(VIEW_SIZE, lambda: (*self.view_values(*view_args), ""))

    def refilter(self, project_name: str | None, require: Any, exclude: Any) -> tuple[Any, ...]:
        """The gallery for a new filter: ``(gallery items, shown paths, count HTML)``."""
        try:
            dataset = self.dataset(self.project(project_name))
        except DbcharError as exc:
            return compat.no_change(), compat.no_change(), message_html(str(exc), "error")
        items, shown, summary = filtered_gallery(
            dataset, tag_list(require), tag_list(exclude), self.thumbnails.get
        )
        return items, shown, message_html(summary, "info")

    def pick_tag(self, rows: Any, require: Any, evt: gr.SelectData) -> Any:
        """A click in the frequency table adds that row's tag to the "with all of" filter."""
        row = evt.index[0] if isinstance(evt.index, list | tuple) else evt.index
        data = rows.get("data", []) if isinstance(rows, dict) else rows
        if not isinstance(row, int) or not 0 <= row < len(data or []) or not data[row]:
            return compat.no_change()
        tag = str(data[row][0])
        current = tag_list(require)
        if not tag or tag in current:
            return compat.no_change()
        return compat.update(value=[*current, tag])

    def select_picture(
        self, project_name: str | None, shown: list[str] | None, evt: gr.SelectData
    ) -> tuple[Any, ...]:
        """A click in the gallery opens that picture: ``(image, file, caption, message)``."""
        index = evt.index[0] if isinstance(evt.index, list | tuple) else evt.index
        paths = list(shown or [])
        if not isinstance(index, int) or not 0 <= index < len(paths):
            return compat.no_change(), compat.no_change(), compat.no_change(), ""
        return self.open_picture(project_name, paths[index])

    def open_picture(self, project_name: str | None, picture: str) -> tuple[Any, ...]:
        """Show ``picture`` and its caption: ``(image, file, caption, message)``."""

        def run() -> tuple[Any, ...]:
            entry = find_entry(self.dataset(self.project(project_name)), picture)
            note = "" if entry.exists else message_html("No caption yet: type the tags and Save.", "info")
            return display_image(entry.image, VIEW_SIDE), str(entry.image), join_caption(entry.tags), note

        return self._attempt(3, run)

    def save(self, *args: Any) -> tuple[Any, ...]:
        """Save the caption box to the selected picture's caption file (atomically); then the view.

        Args:
            args: the view inputs, then the caption text.
        """
        *view_args, text = args
        selected = view_args[5]

        def run() -> tuple[Any, ...]:
            if not selected:
                msg = "Click a picture in the gallery first, then edit its caption and Save."
                raise DbcharError(msg)
            entry = find_entry(self.dataset(self.project(view_args[0])), selected)
            saved = save_caption(entry, text or "")
            note = f"Saved {len(saved.tags)} tags to {saved.caption}."
            return (*self.view_values(*view_args), message_html(note, "ok"))

        return self._attempt(VIEW_SIZE, run)

    def _filtered(
        self, project_name: str | None, require: Any, exclude: Any
    ) -> tuple[TagDataset, list[CaptionEntry]]:
        dataset = self.dataset(self.project(project_name))
        return dataset, filter_entries(dataset, require=tag_list(require), exclude=tag_list(exclude))

    def preview_edit(  # noqa: PLR0917 - a gradio handler: inputs arrive positionally
        self,
        project_name: str | None,
        require: Any,
        exclude: Any,
        operation: str,
        tags: str,
        replacement: str,
    ) -> tuple[Any, ...]:
        """What the bulk edit would change on the filtered pictures: ``(changes table, message)``."""

        def run() -> tuple[Any, ...]:
            _, entries = self._filtered(project_name, require, exclude)
            edit = plan_bulk(entries, operation, tags, replacement)
            kind = "info" if edit.changes else "stopped"
            return table(PREVIEW_HEADERS, preview_rows(edit)), message_html(
                preview_message(edit, len(entries)), kind
            )

        return self._attempt(1, run)

    def apply(self, *args: Any) -> tuple[Any, ...]:
        """Plan the bulk edit on the captions as they are now, back them up and write it.

        Args:
            args: the view inputs, then operation, tags and replacement.

        Returns:
            The view, the changes table (what was written) and the message.
        """
        *view_args, operation, tags, replacement = args

        def run() -> tuple[Any, ...]:
            dataset, entries = self._filtered(*view_args[:3])
            edit = plan_bulk(entries, operation, tags, replacement)
            result = apply_edit(dataset, edit)
            rows = table(PREVIEW_HEADERS, preview_rows(edit))
            kind = "ok" if result.written else "stopped"
            return (*self.view_values(*view_args), rows, message_html(edit_message(result), kind))

        return self._attempt(VIEW_SIZE + 1, run)

    def undo(self, *view_args: Any) -> tuple[Any, ...]:
        """Undo the last bulk write (a bulk edit, a trait drop or a tagging run).

        Returns:
            The view, the emptied changes table and the message.
        """

        def run() -> tuple[Any, ...]:
            result = undo_last_edit(self.project(view_args[0]).dataset_dir)
            kind = "stopped" if result.conflicts else "ok"
            empty = table(PREVIEW_HEADERS, [])
            return (*self.view_values(*view_args), empty, message_html(undo_message(result), kind))

        return self._attempt(VIEW_SIZE + 1, run)

    def retrait(self, project_name: str | None, min_share: float, checked: Sequence[str] | None) -> Any:
        """The traits list for a new share."""
        try:
            view = self.view(project_name, [], [], min_share, checked, "")
        except DbcharError:
            return compat.no_change()
        return compat.update(choices=view.traits, value=view.checked)

    def drop_traits(self, *view_args: Any) -> tuple[Any, ...]:
        """Remove the ticked traits from every caption (backed up; Undo takes it back); then the view."""
        checked = list(view_args[4] or [])

        def run() -> tuple[Any, ...]:
            if not checked:
                msg = "Tick the traits to drop first."
                raise DbcharError(msg)
            dataset = self.dataset(self.project(view_args[0]))
            result = apply_edit(dataset, plan_drop_traits(dataset, checked))
            after = (*view_args[:4], [], *view_args[5:])
            return (*self.view_values(*after), message_html(edit_message(result), "ok"))

        return self._attempt(VIEW_SIZE, run)


def _keep(choices: Sequence[str], selected: Sequence[str]) -> list[str]:
    """``choices`` plus the selected values no longer among them (so the menu still shows them)."""
    return [*choices, *[s for s in selected if s not in choices]]
