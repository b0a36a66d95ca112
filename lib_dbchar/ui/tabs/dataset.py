"""The Dataset tab: about twenty pictures of the character, cropped to squares of the training size.

Four sections, top to bottom, each a ``_render_*`` method followed by its ``_register_*`` method:

* **Import** -- a folder path or uploads, the :class:`~lib_dbchar.dataset.options.PrepConfig` form,
  the upscaler for small pictures, Prepare/Stop (a job of the host: progress bar, Stop/Interrupt),
  then the results (enlarged pictures with their factor, skipped files with their reason) and a
  gallery of the dataset;
* **Adjust a crop** -- pick a picture (or click it in the gallery): its original appears with its
  square, which ``javascript/dbchar-crop.js`` lets the user drag, resize and nudge with the keys;
  Accept stores the square in ``crops.json`` and makes that picture again;
* **Near-duplicates** -- each pair side by side; keep one (the other moves to ``excluded/``), or
  restore an excluded picture;
* **Health** -- the health report, refreshable.

The handlers are methods taking plain values (the project name, a ``PrepConfig``, ...) so tests
call them directly; what they do lives in :mod:`lib_dbchar.ui.dataset_actions`.
"""

from __future__ import annotations

from typing import Any

from lib_dbchar.dataset.options import PrepConfig
from lib_dbchar.dataset.prep import PrepResult
from lib_dbchar.dataset.report import assess
from lib_dbchar.errors import DbcharError
from lib_dbchar.jobs import JobContext
from lib_dbchar.ui import compat
from lib_dbchar.ui.compat import gr
from lib_dbchar.ui.context import UiContext
from lib_dbchar.ui.dataset_actions import (
    DatasetLook,
    accept_box,
    drop_duplicate,
    find_pair,
    look,
    open_nudge,
    prepare,
    project_for,
    reset_box,
    restore_picture,
    view_config,
)
from lib_dbchar.ui.dataset_files import upload_paths
from lib_dbchar.ui.dataset_render import (
    box_text,
    empty_stage,
    gallery_items,
    health_html,
    jpeg_data_uri,
    pair_label,
    pair_names,
    results_html,
    stage_html,
)
from lib_dbchar.ui.forms import Form
from lib_dbchar.ui.ids import elem_class, elem_id
from lib_dbchar.ui.jobs import JobBinding, Outcome, bind_job, bind_stop, status_box
from lib_dbchar.ui.messages import message_html

TITLE = "Dataset"

INTRO = (
    "Put about 20 good pictures of the character into the current project. Each becomes a **512x512** "
    "square PNG (the resolution below) in the project's `dataset/` folder: **cropped, never squashed**. "
    "Your originals are only read. Then check the crops, keep one of each near-duplicate pair and read "
    "the health report."
)
NO_PICTURE = "Pick a picture above (or click one in the gallery) to see its original and move its square."
BOX_FIELD_ID = elem_id("dataset", "crop", "box")


class DatasetTab:
    """The Dataset tab's widgets and handlers (``render()`` then ``register()``)."""

    def __init__(self, ctx: UiContext) -> None:
        self.ctx = ctx
        self.form: Form[PrepConfig] = Form("prep", PrepConfig)
        self.prepare_binding: JobBinding | None = None
        self.accept_binding: JobBinding | None = None
        self.reset_binding: JobBinding | None = None
        self.keep_first_binding: JobBinding | None = None
        self.keep_second_binding: JobBinding | None = None
        self.restore_binding: JobBinding | None = None

    # -- rendering ------------------------------------------------------------------------------
    def render(self) -> DatasetTab:
        """Create the tab's widgets inside the current ``gr.Tab``."""
        gr.Markdown(INTRO, elem_id=elem_id("dataset", "plan"), elem_classes=[elem_class("plan")])
        # What the selected project holds when the page is built; later views come from the handlers.
        self._initial = self._initial_look()
        self._render_import()
        self._render_results()
        self._render_nudge()
        self._render_duplicates()
        self._render_health()
        return self

    def _render_import(self) -> None:
        with gr.Row(elem_id=elem_id("dataset", "sources")):
            self.folder = gr.Textbox(
                label="Folder of pictures",
                placeholder="/path/to/pictures (only read, never changed)",
                info="Every picture in it (not in sub-folders); a caption beside a picture (same name, "
                ".txt) comes along.",
                elem_id=elem_id("dataset", "folder"),
            )
            self.uploads = gr.File(
                label="...or upload pictures (and their .txt captions)",
                file_count="multiple",
                elem_id=elem_id("dataset", "uploads"),
            )
        with gr.Accordion("Preparation options", open=False, elem_id=elem_id("dataset", "options")):
            with gr.Row():
                self.form.render()
            choices = self.ctx.host.upscalers()
            self.upscaler = gr.Dropdown(
                choices=choices,
                value=choices[0],
                label="Upscaler for small pictures",
                info="Enlarges squares smaller than the resolution (they are flagged in the results).",
                elem_id=elem_id("dataset", "upscaler"),
            )
        with gr.Row():
            self.prepare_button = gr.Button(
                "Prepare", variant="primary", elem_id=elem_id("dataset", "prepare")
            )
            self.stop_button = gr.Button("Stop", elem_id=elem_id("dataset", "stop"))
            self.refresh_button = gr.Button("Refresh", elem_id=elem_id("dataset", "refresh"))
        self.status = status_box("dataset")

    def _render_results(self) -> None:
        initial = self._initial
        self.results = gr.HTML(
            value=results_html(initial.report if initial else None), elem_id=elem_id("dataset", "results")
        )
        pictures = initial.pictures if initial else []
        self.gallery = gr.Gallery(
            value=gallery_items(pictures),
            label="The dataset",
            columns=6,
            object_fit="contain",
            elem_id=elem_id("dataset", "gallery"),
        )
        # The gallery's names in display order: a click on the gallery gives an index.
        self.names = gr.State([p.name for p in pictures])

    def _render_nudge(self) -> None:
        names = [p.name for p in self._initial.pictures] if self._initial else []
        with gr.Accordion("Adjust a crop", open=True, elem_id=elem_id("dataset", "nudge")):
            self.picture = gr.Dropdown(
                choices=names,
                value=None,
                label="Picture",
                info="Or click it in the gallery.",
                elem_id=elem_id("dataset", "picture"),
            )
            self.stage = gr.HTML(value=empty_stage(NO_PICTURE), elem_id=elem_id("dataset", "crop", "stage"))
            # Written by dbchar-crop.js after every move: {"picture", "x", "y", "side"} in original pixels.
            self.box = gr.Textbox(value="", visible=False, elem_id=BOX_FIELD_ID)
            with gr.Row():
                self.accept_button = gr.Button(
                    "Accept this square", variant="primary", elem_id=elem_id("dataset", "crop", "accept")
                )
                self.reset_button = gr.Button(
                    "Back to automatic", elem_id=elem_id("dataset", "crop", "reset")
                )
            self.crop_status = status_box("dataset-crop")

    def _render_duplicates(self) -> None:
        pairs = [pair_label(p) for p in self._initial.pairs] if self._initial else []
        excluded = self._initial.excluded if self._initial else []
        with gr.Accordion("Near-duplicates", open=False, elem_id=elem_id("dataset", "duplicates")):
            self.pair = gr.Dropdown(
                choices=pairs, value=None, label="Pair", elem_id=elem_id("dataset", "pair")
            )
            with gr.Row():
                self.first = gr.Image(
                    label="First", interactive=False, elem_id=elem_id("dataset", "pair", "first")
                )
                self.second = gr.Image(
                    label="Second", interactive=False, elem_id=elem_id("dataset", "pair", "second")
                )
            with gr.Row():
                self.keep_first = gr.Button("Keep the first", elem_id=elem_id("dataset", "keep", "first"))
                self.keep_second = gr.Button("Keep the second", elem_id=elem_id("dataset", "keep", "second"))
            with gr.Row():
                self.excluded = gr.Dropdown(
                    choices=excluded,
                    value=None,
                    label="Excluded pictures",
                    elem_id=elem_id("dataset", "excluded"),
                )
                self.restore_button = gr.Button("Restore", elem_id=elem_id("dataset", "restore"))
            self.duplicate_status = status_box("dataset-duplicates")

    def _render_health(self) -> None:
        with gr.Accordion("Health", open=True, elem_id=elem_id("dataset", "health", "panel")):
            initial = self._initial.health if self._initial else assess([], [], resolution=512)
            self.health = gr.HTML(value=health_html(initial), elem_id=elem_id("dataset", "health"))
            self.health_button = gr.Button(
                "Refresh the report", elem_id=elem_id("dataset", "health", "refresh")
            )

    def _initial_look(self) -> DatasetLook | None:
        """The dataset of the project selected when the page is built (None without one)."""
        name = getattr(self.ctx.project, "value", None)
        try:
            return look(project_for(self.ctx.host, name).dataset_dir, PrepConfig())
        except DbcharError:
            return None

    # -- registration ---------------------------------------------------------------------------
    @property
    def view_outputs(self) -> list[Any]:
        """The components every refresh of the dataset view fills, in :meth:`view_values` order."""
        return [self.results, self.gallery, self.names, self.picture, self.pair, self.excluded, self.health]

    def register(self) -> DatasetTab:
        """Attach every handler."""
        self._register_import()
        self._register_nudge()
        self._register_duplicates()
        return self

    def _view_inputs(self) -> list[Any]:
        return [
            self.ctx.project,
            self.form.components["resolution"],
            self.form.components["duplicate_distance"],
        ]

    def _register_import(self) -> None:
        self.prepare_binding = bind_job(
            self.ctx,
            self.prepare_button,
            title="dataset preparation",
            handler=self.run_prepare,
            status=self.status,
            inputs={
                "project": self.ctx.project,
                "folder": self.folder,
                "uploads": self.uploads,
                "prep": self.form,
                "upscaler": self.upscaler,
            },
            outputs=self.view_outputs,
        )
        bind_stop(self.ctx, self.stop_button)
        for button in (self.refresh_button, self.health_button):
            compat.listen(
                button.click, self.refresh, self._view_inputs(), self.view_outputs, show_progress=False
            )
        if self.ctx.project is not None:
            compat.listen(
                self.ctx.project.change,
                self.refresh,
                self._view_inputs(),
                self.view_outputs,
                show_progress=False,
            )

    def _register_nudge(self) -> None:
        form_inputs = list(self.form.components.values())
        compat.listen(
            self.picture.change,
            self.open_picture,
            [self.ctx.project, self.picture, *form_inputs],
            [self.stage, self.box, self.crop_status],
            show_progress=False,
        )
        compat.listen(
            self.gallery.select, self.select_picture, [self.names], [self.picture], show_progress=False
        )
        inputs = {
            "project": self.ctx.project,
            "picture": self.picture,
            "box": self.box,
            "prep": self.form,
            "upscaler": self.upscaler,
        }
        outputs = [*self.view_outputs, self.stage, self.box]
        self.accept_binding = bind_job(
            self.ctx,
            self.accept_button,
            title="crop",
            handler=self.run_accept,
            status=self.crop_status,
            inputs=inputs,
            outputs=outputs,
        )
        self.reset_binding = bind_job(
            self.ctx,
            self.reset_button,
            title="automatic crop",
            handler=self.run_reset,
            status=self.crop_status,
            inputs=inputs,
            outputs=outputs,
        )

    def _register_duplicates(self) -> None:
        compat.listen(
            self.pair.change,
            self.show_pair,
            [self.ctx.project, self.pair],
            [self.first, self.second],
            show_progress=False,
        )
        # Jobs, like Prepare: they take the host's lock, so a picture is never moved aside while a
        # run is writing the dataset (its crops.json would forget the move).
        common = {"project": self.ctx.project, "prep": self.form}
        self.keep_first_binding, self.keep_second_binding = (
            bind_job(
                self.ctx,
                button,
                title="near-duplicates",
                handler=handler,
                status=self.duplicate_status,
                inputs={**common, "pair": self.pair},
                outputs=self.view_outputs,
            )
            for button, handler in (
                (self.keep_first, self.run_keep_first),
                (self.keep_second, self.run_keep_second),
            )
        )
        self.restore_binding = bind_job(
            self.ctx,
            self.restore_button,
            title="restore",
            handler=self.run_restore,
            status=self.duplicate_status,
            inputs={**common, "picture": self.excluded},
            outputs=self.view_outputs,
        )

    # -- the view -------------------------------------------------------------------------------
    def view_values(
        self, seen: DatasetLook | None, *, picture: str | None = None, upscaler: str | None = None
    ) -> tuple[Any, ...]:
        """Values for :attr:`view_outputs` showing ``seen`` (``None``: no project picked).

        Args:
            seen: the dataset as read by :func:`~lib_dbchar.ui.dataset_actions.look`.
            picture: the picture to keep selected in the nudge, if it is still in the dataset.
            upscaler: the upscaler to name beside enlarged pictures in the results.
        """
        if seen is None:
            empty = assess([], [], resolution=512)
            return (
                results_html(None, empty="No project picked: pick or create one at the top of the page."),
                [],
                [],
                compat.update(choices=[], value=None),
                compat.update(choices=[], value=None),
                compat.update(choices=[], value=None),
                health_html(empty),
            )
        names = [p.name for p in seen.pictures]
        pairs = [pair_label(p) for p in seen.pairs]
        return (
            results_html(seen.report, upscaler),
            gallery_items(seen.pictures),
            names,
            compat.update(choices=names, value=picture if picture in names else None),
            compat.update(choices=pairs, value=pairs[0] if pairs else None),
            compat.update(choices=seen.excluded, value=None),
            health_html(seen.health),
        )

    def _look(self, project: str | None, resolution: Any, duplicate_distance: Any) -> DatasetLook:
        return look(
            project_for(self.ctx.host, project).dataset_dir, view_config(resolution, duplicate_distance)
        )

    def refresh(
        self, project: str | None, resolution: Any = 512, duplicate_distance: Any = 6
    ) -> tuple[Any, ...]:
        """Re-read the dataset of ``project`` (project change, Refresh buttons).

        Returns:
            Values for :attr:`view_outputs`.
        """
        try:
            seen = self._look(project, resolution, duplicate_distance)
        except DbcharError:
            seen = None  # no project (yet): an empty view that says so
        return self.view_values(seen)

    # -- import ---------------------------------------------------------------------------------
    def run_prepare(self, values: dict[str, Any], job: JobContext) -> Outcome:
        """The Prepare job: the folder or the uploads into the project's dataset.

        Args:
            values: ``project``, ``folder``, ``uploads`` (what gr.File gave), ``prep`` (a PrepConfig),
                ``upscaler`` (a name).
            job: from the host.

        Returns:
            The refreshed view and a one-line summary.
        """
        project = project_for(self.ctx.host, values["project"])
        config: PrepConfig = values["prep"]
        result = prepare(
            self.ctx.host,
            project,
            config,
            job,
            folder=values.get("folder") or "",
            uploads=upload_paths(values.get("uploads")),
            upscaler=values.get("upscaler"),
        )
        seen = look(project.dataset_dir, config)
        return Outcome(self.view_values(seen, upscaler=values.get("upscaler")), _summary(result))

    # -- the crop nudge ---------------------------------------------------------------------------
    def open_picture(
        self, project: str | None, picture: str | None, *form_values: Any
    ) -> tuple[Any, str, str]:
        """Show ``picture``'s original with its square (the picture dropdown's change).

        Args:
            project: the project name.
            picture: the dataset picture's name, or None/"" to close the nudge.
            form_values: the prep form's widget values, in its field order.

        Returns:
            ``(stage HTML, box text, status HTML)``.
        """
        if not picture:
            return empty_stage(NO_PICTURE), "", ""
        try:
            config = self.form.parse(dict(zip(self.form.components, form_values, strict=False)))
            view = open_nudge(project_for(self.ctx.host, project).dataset_dir, picture, config)
        except (DbcharError, ValueError) as exc:
            return empty_stage(str(exc)), "", message_html(str(exc), "error")
        stage = stage_html(
            picture,
            jpeg_data_uri(view.preview),
            view.size,
            view.box,
            min_side=config.min_side,
            target_id=BOX_FIELD_ID,
            caption=view.caption,
        )
        return stage, box_text(picture, view.box), ""

    def select_picture(self, names: list[str], evt: gr.SelectData) -> Any:
        """A click in the gallery picks that picture for the nudge."""
        index = evt.index if isinstance(evt.index, int) else evt.index[0]
        if not names or not 0 <= index < len(names):
            return compat.no_change()
        return compat.update(value=names[index])

    def _remade_outputs(self, project: Any, remade: Any, config: PrepConfig, upscaler: str | None) -> Outcome:
        seen = look(project.dataset_dir, config)
        stage, box, _ = self.open_picture(project.name, remade.picture, *self.form.show(config))
        return Outcome(
            (*self.view_values(seen, picture=remade.picture, upscaler=upscaler), stage, box), remade.message
        )

    def run_accept(self, values: dict[str, Any], job: JobContext) -> Outcome:
        """The Accept job: store the square from the page and make the picture again with it."""
        project = project_for(self.ctx.host, values["project"])
        picture = values.get("picture") or ""
        if not picture:
            msg = "Pick a picture first."
            raise DbcharError(msg)
        remade = accept_box(
            self.ctx.host,
            project,
            picture,
            values.get("box") or "",
            config=values["prep"],
            job=job,
            upscaler=values.get("upscaler"),
        )
        return self._remade_outputs(project, remade, values["prep"], values.get("upscaler"))

    def run_reset(self, values: dict[str, Any], job: JobContext) -> Outcome:
        """The "Back to automatic" job: forget the user's square and let prep choose again."""
        project = project_for(self.ctx.host, values["project"])
        picture = values.get("picture") or ""
        if not picture:
            msg = "Pick a picture first."
            raise DbcharError(msg)
        remade = reset_box(
            self.ctx.host, project, picture, config=values["prep"], job=job, upscaler=values.get("upscaler")
        )
        return self._remade_outputs(project, remade, values["prep"], values.get("upscaler"))

    # -- duplicates -----------------------------------------------------------------------------
    def show_pair(self, project: str | None, label: str | None) -> tuple[Any, Any]:
        """The two pictures of the pair ``label`` side by side (each labelled with its name)."""
        none = compat.update(value=None, label="First"), compat.update(value=None, label="Second")
        if not label:
            return none
        try:
            dataset_dir = project_for(self.ctx.host, project).dataset_dir
        except DbcharError:
            return none
        splits = pair_names(label)
        first, second = next(
            ((a, b) for a, b in splits if (dataset_dir / a).is_file() and (dataset_dir / b).is_file()),
            splits[0] if splits else ("", ""),
        )
        return (
            compat.update(value=str(dataset_dir / first), label=f"First: {first}"),
            compat.update(value=str(dataset_dir / second), label=f"Second: {second}"),
        )

    def _keep(self, values: dict[str, Any], keep: str) -> Outcome:
        project = project_for(self.ctx.host, values["project"])
        config: PrepConfig = values["prep"]
        pair = find_pair(look(project.dataset_dir, config).pairs, values.get("pair"))
        message = drop_duplicate(project.dataset_dir, pair, keep)
        return Outcome(self.view_values(look(project.dataset_dir, config)), message)

    def run_keep_first(self, values: dict[str, Any], job: JobContext) -> Outcome:
        """Keep the pair's first picture; the second moves to ``excluded/``.

        Args:
            values: ``project``, ``prep`` (a PrepConfig: duplicate distance, resolution) and ``pair``
                (the pair's label).
            job: from the host (unused: one quick move).
        """
        return self._keep(values, "first")

    def run_keep_second(self, values: dict[str, Any], job: JobContext) -> Outcome:
        """Keep the pair's second picture; the first moves to ``excluded/``."""
        return self._keep(values, "second")

    def run_restore(self, values: dict[str, Any], job: JobContext) -> Outcome:
        """Put the excluded picture ``values["picture"]`` back into the dataset."""
        project = project_for(self.ctx.host, values["project"])
        message = restore_picture(project.dataset_dir, values.get("picture") or "")
        return Outcome(self.view_values(look(project.dataset_dir, values["prep"])), message)


def _summary(result: PrepResult) -> str:
    """The status line after Prepare: counts of prepared, skipped and enlarged pictures."""
    parts = [f"Prepared {len(result.prepared)} pictures"]
    if result.skipped:
        parts.append(f"skipped {len(result.skipped)} (reasons below)")
    enlarged = sum(1 for p in result.prepared if p.upscale)
    if enlarged:
        parts.append(f"enlarged {enlarged}")
    text = ", ".join(parts) + "."
    if result.stopped:
        text = "Stopped: " + text + " Press Prepare again to finish."
    return text


def render(ctx: UiContext) -> DatasetTab:
    """Show the tab inside the current ``gr.Tab`` and attach its handlers.

    Returns:
        The :class:`DatasetTab` (tests and hosts reach its handlers through it).
    """
    return DatasetTab(ctx).render().register()
