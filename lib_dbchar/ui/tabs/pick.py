"""The "Pick a checkpoint" section of the Train tab: the guide's overfitting test, rendered and ranked.

For the run named in the Train tab, the section shows the probe set (editable; saved to the run's
``pick/probes.json``), renders every probe with every saved checkpoint -- the source model first --
as a job (progress, Stop; finished columns stay cached), scores the cells with our tagger and
ranks the checkpoints (:func:`lib_dbchar.pick.run.run_pick`). It shows the grid as a gallery (rows
= probe x seed, columns = checkpoints; a click enlarges a cell), the loss chart with the checkpoint
steps marked, the ranking with the recommended row marked and the evidence behind it. Two buttons
hand the recommended checkpoint, or the "overfit for frontal poses" pick, to the Merge wizard
through the page's hidden hand-off box and switch to the Merge tab.

Opening a run (the Open button, Enter or leaving the run name box, a project change) reads back
what the last render saved; nothing is rendered again. The display decisions live in
:mod:`lib_dbchar.ui.pick_logic`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lib_dbchar.errors import DbcharError
from lib_dbchar.jobs import JobContext
from lib_dbchar.projects import open_project
from lib_dbchar.ui import compat
from lib_dbchar.ui.compat import gr
from lib_dbchar.ui.context import UiContext
from lib_dbchar.ui.forms import Form
from lib_dbchar.ui.ids import elem_class, elem_id
from lib_dbchar.ui.jobs import JobBinding, Outcome, bind_job, bind_stop, status_box
from lib_dbchar.ui.messages import message_html
from lib_dbchar.ui.pick_logic import (
    PROBE_HEADERS,
    SavedPick,
    as_dict,
    column_name,
    evidence_markdown,
    gallery_view,
    handoff,
    handoff_json,
    probe_rows,
    probes_from_rows,
    ranking_html,
    read_saved,
    recommended_step,
)
from lib_dbchar.ui.train_chart import loss_chart
from lib_dbchar.ui.train_logic import DEFAULT_SMOOTHING, run_name_for

TITLE = "Pick a checkpoint"
SECTION = "pick"

INTRO = (
    "The guide's overfitting test, done for you: every probe below is drawn by the source model and by "
    "each checkpoint of the run named above, with fixed seeds. Poses and settings the dataset lacks show "
    "which checkpoints still generalise; the leak row (no token) must not show the character, the drift "
    "row (class prompt) should look like the source. Our tagger scores every cell and ranks the "
    "checkpoints; the evidence is below the ranking. Rendering again only draws new or changed cells."
)
#: The JS run after a send: switch to the Merge tab when the hand-off went out (the MERGE part of
#: the page defines ``dbcharOpenMergeTab``; a page without it just stays here).
OPEN_MERGE_JS = (
    "function(sent){"
    "if (sent && typeof dbcharOpenMergeTab === 'function') { dbcharOpenMergeTab(); }"
    "return [];"
    "}"
)
NOTHING_TO_SEND = "Nothing to send yet: press Render grid + rank first."
PLACEHOLDER_SIZE = 64
PLACEHOLDER_GREY = (200, 200, 200)


@dataclass(frozen=True)
class RunRequest:
    """The run a section event is about, as the page names it.

    Attributes:
        project: the project picker's value.
        run: the Train tab's run name.
    """

    project: str | None
    run: str | None


@dataclass(frozen=True)
class RunTarget:
    """A resolved run: its folder, its safe name and the project's folder."""

    project_dir: Path
    run_dir: Path
    run_name: str


@dataclass(frozen=True)
class SectionView:
    """Everything the section shows for a run, in the order of :meth:`PickSection.view_outputs`.

    Attributes:
        run_info: one Markdown line about the run and its saved pick.
        probes: the probe table's rows.
        gallery: a gallery update (items and column count).
        chart: the loss chart (PIL image) with the checkpoint steps marked.
        ranking: the ranking table (HTML; empty before the first render).
        evidence: the evidence panel (Markdown).
    """

    run_info: str
    probes: list[list[str]]
    gallery: Any
    chart: Any
    ranking: str
    evidence: str

    def values(self) -> tuple[Any, ...]:
        return (self.run_info, self.probes, self.gallery, self.chart, self.ranking, self.evidence)


def _placeholder() -> Any:
    """The grey square shown for a cell whose image is missing (a stopped render)."""
    from PIL import Image

    return Image.new("RGB", (PLACEHOLDER_SIZE, PLACEHOLDER_SIZE), PLACEHOLDER_GREY)


def checkpoint_steps_of_run(run_dir: Path) -> list[int]:
    """The steps of the checkpoints a run recorded (``checkpoints.json``), for the chart's markers."""
    from lib_dbchar.train.run import RunFolders, read_checkpoint_records

    try:
        records = read_checkpoint_records(RunFolders(run_dir).checkpoints_record)
    except (ValueError, TypeError) as exc:
        raise DbcharError(f"{RunFolders(run_dir).checkpoints_record} cannot be read: {exc}") from exc
    return sorted({r.step for r in records})


class PickSection:
    """The section's widgets and handlers (below the Train tab's own content).

    Attributes (after :meth:`render`): ``run_info``, ``open_button``, ``probes``,
    ``save_probes_button``, ``reset_probes_button``, ``form`` (PickSettings), ``render_button``,
    ``stop_button``, ``status``, ``gallery``, ``chart``, ``ranking``, ``evidence``,
    ``send_button``, ``send_frontal_button``, ``sent`` (hidden: "1" when a send went out).
    After :meth:`register`: ``render_binding``.

    Args:
        ctx: the page context (host, project picker, hand-off box).
        run_name: the Train tab's run name box (None: the section has its own, for tests).
        tag_fn_factory: makes the tagger for scoring (a context manager yielding a TagFn); None
            lets :func:`run_pick` load the default WD14 model from the tagger cache setting.
    """

    def __init__(
        self, ctx: UiContext, run_name: Any = None, *, tag_fn_factory: Callable[[], Any] | None = None
    ) -> None:
        from lib_dbchar.pick.grid import PickSettings

        self.ctx = ctx
        self.run_name = run_name
        self.tag_fn_factory = tag_fn_factory
        self.form: Form = Form(SECTION, PickSettings)
        self.render_binding: JobBinding | None = None

    # -- layout ---------------------------------------------------------------------------------
    def render(self) -> PickSection:
        """Create the section's widgets inside the current layout block."""
        with gr.Accordion(TITLE, open=True, elem_id=elem_id(SECTION, "section")):
            gr.Markdown(INTRO, elem_id=elem_id(SECTION, "intro"), elem_classes=[elem_class("plan")])
            self._render_run_row()
            self._render_probes()
            with gr.Accordion("Render settings", open=False, elem_id=elem_id(SECTION, "settings")):
                self.form.render()
            with gr.Row(elem_id=elem_id(SECTION, "actions")):
                self.render_button = gr.Button(
                    "Render grid + rank", variant="primary", elem_id=elem_id(SECTION, "render")
                )
                self.stop_button = gr.Button("Stop", elem_id=elem_id(SECTION, "stop"))
            self.status = status_box(SECTION)
            self._render_results()
        return self

    def _render_run_row(self) -> None:
        with gr.Row(elem_id=elem_id(SECTION, "run-row")):
            if self.run_name is None:
                self.run_name = gr.Textbox(label="Run name", elem_id=elem_id(SECTION, "run-name"))
            self.run_info = gr.Markdown(
                "Type the run's name above, then Open.", elem_id=elem_id(SECTION, "run")
            )
            self.open_button = gr.Button("Open run", elem_id=elem_id(SECTION, "open"))

    def _render_probes(self) -> None:
        self.probes = gr.Dataframe(
            headers=list(PROBE_HEADERS),
            datatype=["str", "str", "str"],
            col_count=(len(PROBE_HEADERS), "fixed"),
            row_count=(1, "dynamic"),
            type="array",
            interactive=True,
            wrap=True,
            label="Probes (kind, prompt, seeds); edit, add or remove rows",
            elem_id=elem_id(SECTION, "probes"),
        )
        with gr.Row(elem_id=elem_id(SECTION, "probe-actions")):
            self.save_probes_button = gr.Button("Save probes", elem_id=elem_id(SECTION, "save-probes"))
            self.reset_probes_button = gr.Button("Reset probes", elem_id=elem_id(SECTION, "reset-probes"))

    def _render_results(self) -> None:
        with gr.Row(elem_id=elem_id(SECTION, "results")):
            with gr.Column(scale=3):
                self.gallery = gr.Gallery(
                    label="Grid: rows = probe x seed, columns = source, then checkpoints",
                    columns=4,
                    allow_preview=True,
                    elem_id=elem_id(SECTION, "grid"),
                )
            with gr.Column(scale=2):
                self.chart = gr.Image(
                    label="Loss, checkpoint steps marked (red: recommended)",
                    type="pil",
                    interactive=False,
                    elem_id=elem_id(SECTION, "chart"),
                )
        # A plain HTML table: read-only, and its rows are rendered exactly as the handler made them.
        self.ranking = gr.HTML("", elem_id=elem_id(SECTION, "ranking"))
        self.evidence = gr.Markdown("", elem_id=elem_id(SECTION, "evidence"))
        with gr.Row(elem_id=elem_id(SECTION, "send-row")):
            self.send_button = gr.Button(
                "Send recommended to Merge", variant="primary", elem_id=elem_id(SECTION, "send")
            )
            self.send_frontal_button = gr.Button(
                "Send frontal pick to Merge", elem_id=elem_id(SECTION, "send-frontal")
            )
        self.sent = gr.Textbox(value="", visible=False, elem_id=elem_id(SECTION, "sent"))

    def view_outputs(self) -> list[Any]:
        """The components a :class:`SectionView` fills, in its order."""
        return [self.run_info, self.probes, self.gallery, self.chart, self.ranking, self.evidence]

    # -- events ---------------------------------------------------------------------------------
    def run_inputs(self) -> dict[str, Any]:
        """The inputs naming the run: ``project`` (when the page has a picker) and ``run``."""
        inputs = {"run": self.run_name}
        if self.ctx.project is not None:
            inputs["project"] = self.ctx.project
        return inputs

    def _on(self, event: Any, fn: Callable[..., Any], inputs: Mapping[str, Any], outputs: list[Any]) -> Any:
        """Listen with named inputs: gradio passes ``{component: value}``, ``fn`` gets ``{name: value}``."""
        names = {component: name for name, component in inputs.items()}

        def handler(data: dict[Any, Any]) -> Any:
            return fn({names[c]: v for c, v in data.items() if c in names})

        return compat.listen(event, handler, set(inputs.values()), outputs, show_progress=False)

    def register(self) -> None:
        """Attach Open (and the run name / project changes), the probe buttons, Render, Stop, Send."""
        run_inputs = self.run_inputs()
        view = [*self.view_outputs(), self.status]
        opening = [self.open_button.click, self.run_name.submit, self.run_name.blur]
        if self.ctx.project is not None:
            opening.append(self.ctx.project.change)
        for event in opening:
            self._on(event, lambda v: self.open_values(self.request(v)), run_inputs, view)
        self._on(
            self.save_probes_button.click,
            lambda v: self.save_probe_table(self.request(v), v.get("probes")),
            {**run_inputs, "probes": self.probes},
            [self.probes, self.status],
        )
        self._on(
            self.reset_probes_button.click,
            lambda v: self.reset_probe_table(self.request(v)),
            run_inputs,
            [self.probes, self.status],
        )
        self.render_binding = bind_job(
            self.ctx,
            self.render_button,
            title="pick a checkpoint",
            handler=self.render_job,
            status=self.status,
            inputs={**run_inputs, "probes": self.probes, "settings": self.form},
            outputs=self.view_outputs(),
        )
        bind_stop(self.ctx, self.stop_button)
        for button, which in ((self.send_button, "recommended"), (self.send_frontal_button, "frontal")):
            self._register_send(button, which, run_inputs)

    def _register_send(self, button: Any, which: str, run_inputs: Mapping[str, Any]) -> None:
        """Clear the hand-off, set it, then switch tabs: three steps of one click.

        The Merge tab listens to the box's *change*; sending the same checkpoint twice (after the
        user changed the Merge form by hand) would not change it, so it is emptied first -- the
        Merge tab ignores an empty hand-off.
        """
        if self.ctx.merge_handoff is None:
            return
        handoff_box = self.ctx.merge_handoff
        cleared = compat.listen(
            button.click, lambda: ("", ""), None, [handoff_box, self.sent], show_progress=False, queue=False
        )
        sent = self._on(
            cleared.then,
            lambda v: self.send_values(self.request(v), which),
            run_inputs,
            [handoff_box, self.sent, self.status],
        )
        compat.listen(sent.then, None, [self.sent], None, js=OPEN_MERGE_JS, show_progress=False)

    # -- look-ups -------------------------------------------------------------------------------
    @staticmethod
    def request(values: Mapping[str, Any]) -> RunRequest:
        """The :class:`RunRequest` of an event's named values."""
        return RunRequest(project=values.get("project"), run=values.get("run"))

    def target(self, request: RunRequest) -> RunTarget:
        """Resolve the project and the run folder.

        Raises:
            DbcharError: no project, no run name, or the run was never started.
        """
        if not request.project:
            msg = "Pick or create a project first."
            raise DbcharError(msg)
        name = run_name_for(request.run or "")
        try:
            project = open_project(self.ctx.host.projects_dir(), request.project or "")
            run_dir = project.run_dir(name)
        except (FileNotFoundError, ValueError) as exc:
            raise DbcharError(str(exc)) from exc
        if not (run_dir / "run.json").is_file():
            raise DbcharError(f"Project {project.name!r} has no run {name!r} yet: start it above first.")
        return RunTarget(project.root, run_dir, name)

    def shown_probes(self, target: RunTarget) -> list[Any]:
        """The run's saved probes, else the default set (saved, so the table and file agree).

        Raises:
            DbcharError: a broken ``probes.json`` or ``run.json`` (the message names the file).
        """
        from lib_dbchar.pick.probes import probes_for_run

        try:
            return probes_for_run(target.run_dir)
        except (FileNotFoundError, ValueError) as exc:
            raise DbcharError(str(exc)) from exc

    def probes_from_table(self, target: RunTarget, rows: Any) -> list[Any]:
        """The table's rows as validated Probes (ids kept from the saved set).

        Raises:
            DbcharError: naming the row or the probe field that is wrong.
        """
        from lib_dbchar.pick.probes import Probe, check_probe_set

        try:
            dicts = probes_from_rows(_table_rows(rows), self.shown_probes(target))
            probes = [Probe.from_dict(d) for d in dicts]
            check_probe_set(probes)
        except ValueError as exc:
            raise DbcharError(f"Probes not saved: {exc}") from exc
        return probes

    # -- what a run shows -----------------------------------------------------------------------
    def view(self, target: RunTarget, saved: SavedPick, probes: list[Any]) -> SectionView:
        """The section's view of a run: the probes, the saved (or fresh) grid and ranking, the chart."""
        from lib_dbchar.ui.train_logic import read_run

        grid, ranking = saved.grid, saved.ranking
        if grid:
            layout = gallery_view(grid, target.run_dir, _placeholder)
            gallery = compat.update(value=layout.items, columns=layout.columns)
        else:
            gallery = compat.update(value=[], columns=4)
        highlight = recommended_step(ranking) if ranking else None
        chart = loss_chart(
            read_run(target.run_dir).losses,
            DEFAULT_SMOOTHING,
            markers=checkpoint_steps_of_run(target.run_dir),
            highlight=highlight,
        )
        return SectionView(
            run_info=run_info(target, saved),
            probes=probe_rows(probes),
            gallery=gallery,
            chart=chart,
            ranking=ranking_html(ranking),
            evidence=evidence_markdown(ranking) if ranking else "",
        )

    # -- handlers -------------------------------------------------------------------------------
    def open_values(self, request: RunRequest) -> list[Any]:
        """Show a run as its last render left it (nothing is rendered).

        Returns:
            The :class:`SectionView` values, then the status HTML; on a problem, "no change"
            for the view and the problem as the status.
        """
        try:
            target = self.target(request)
            probes = self.shown_probes(target)
            saved = read_saved(target.run_dir)
            view = self.view(target, saved, probes)
        except (DbcharError, ValueError) as exc:
            return [*[compat.no_change() for _ in self.view_outputs()], message_html(str(exc), "info")]
        return [*view.values(), message_html(open_message(target, saved), "info")]

    def save_probe_table(self, request: RunRequest, rows: Any) -> list[Any]:
        """Save the edited probe table to ``pick/probes.json``.

        Returns:
            ``[probe rows as saved, status HTML]``.
        """
        from lib_dbchar.pick.probes import save_probes

        try:
            target = self.target(request)
            probes = self.probes_from_table(target, rows)
            path = save_probes(target.run_dir, probes)
        except (DbcharError, ValueError) as exc:
            return [compat.no_change(), message_html(str(exc), "error")]
        return [probe_rows(probes), message_html(f"Saved {len(probes)} probes to {path}.", "ok")]

    def reset_probe_table(self, request: RunRequest) -> list[Any]:
        """Replace the run's probes by the default set built from its concept and dataset.

        Returns:
            ``[probe rows, status HTML]``.
        """
        from lib_dbchar.pick.probes import default_probes, save_probes

        try:
            target = self.target(request)
            probes = default_probes(target.run_dir)
            path = save_probes(target.run_dir, probes)
        except (DbcharError, FileNotFoundError, ValueError) as exc:
            return [compat.no_change(), message_html(str(exc), "error")]
        return [probe_rows(probes), message_html(f"Reset the probes to the default set ({path}).", "ok")]

    def render_job(self, values: dict[str, Any], job: JobContext) -> Outcome:
        """Render the grid and rank the checkpoints: the job handler of "Render grid + rank".

        Args:
            values: by input name: ``project``, ``run``, ``probes`` (the table's rows),
                ``settings`` (a PickSettings).
            job: the host's job context (progress per cell, Stop between cells).

        Returns:
            The :class:`Outcome` with the section's view and a one-line summary.

        Raises:
            DbcharError: bad probes, a run without checkpoints, or a failure of the core.
        """
        from lib_dbchar.pick.probes import save_probes

        target = self.target(self.request(values))
        probes = self.probes_from_table(target, values.get("probes"))
        save_probes(target.run_dir, probes)
        result = self._run_pick(target, probes, values["settings"], job)
        saved = SavedPick(as_dict(result.grid), as_dict(result.ranking))
        view = self.view(target, saved, probes)
        return Outcome(view.values(), render_message(saved, list(getattr(result, "warnings", []))))

    def _run_pick(self, target: RunTarget, probes: list[Any], settings: Any, job: JobContext) -> Any:
        """:func:`run_pick` on the host's device, with the webui's model moved off the GPU meanwhile."""
        from lib_dbchar.pick.run import run_pick

        host = self.ctx.host
        options: dict[str, Any] = {
            "settings": settings,
            "probes": probes,
            "device": host.device(),
            "ctx": job,
            # The Tags tab's setting: where the WD14 model was downloaded (None: the HF cache).
            "tagger_cache": host.settings().tagger_cache_dir.strip() or None,
        }
        try:
            with host.vram_freed():
                if self.tag_fn_factory is None:
                    return run_pick(target.run_dir, **options)
                with self.tag_fn_factory() as tag_fn:
                    return run_pick(target.run_dir, tag_fn=tag_fn, **options)
        except (FileNotFoundError, ValueError) as exc:
            raise DbcharError(str(exc)) from exc

    def send_values(self, request: RunRequest, which: str) -> list[Any]:
        """Hand the ``which`` pick ("recommended" / "frontal") to the Merge wizard.

        Returns:
            ``[hand-off JSON, "1", status HTML]``; on a problem, no change to the hand-off, ""
            (the tab is not switched) and the problem as the status.
        """
        try:
            target = self.target(request)
            saved = read_saved(target.run_dir)
            ready = bool(saved.grid and saved.ranking)
            payload = handoff(saved.grid, saved.ranking, which, target.run_name) if ready else None
        except (DbcharError, ValueError) as exc:
            return [compat.no_change(), "", message_html(str(exc), "error")]
        if payload is None:
            return [compat.no_change(), "", message_html(NOTHING_TO_SEND, "error")]
        name = Path(payload["checkpoint"]).name
        return [handoff_json(payload), "1", message_html(f"Sent {name} to the Merge tab.", "ok")]


def _table_rows(value: Any) -> list[list[Any]]:
    """A Dataframe's value as rows: a list of lists, a pandas frame, or gradio 4's ``{"data": ...}``."""
    if value is None:
        return []
    if isinstance(value, Mapping):
        return [list(r) for r in value.get("data", [])]
    to_list = getattr(getattr(value, "values", None), "tolist", None)
    if callable(to_list):
        return [list(r) for r in to_list()]
    return [list(r) for r in value]


def run_info(target: RunTarget, saved: SavedPick) -> str:
    """One Markdown line: the run and what its saved pick holds."""
    text = f"**Run:** `{target.run_name}` in `{target.run_dir}`"
    if saved.grid:
        grid = saved.grid
        text += f" · grid of {len(grid.get('columns', []))} columns x {len(grid.get('cells', []))} cells"
    return text


def open_message(target: RunTarget, saved: SavedPick) -> str:
    """The status line after opening a run."""
    if saved.ranking and saved.grid:
        return f"Showing the saved grid and ranking of {target.run_name}; Render again after new checkpoints."
    return f"No grid for {target.run_name} yet: check the probes, then press Render grid + rank."


def render_message(saved: SavedPick, warnings: list[str]) -> str:
    """The status line after a render: cells drawn and reused, the picks, the warnings."""
    grid, ranking = saved.grid or {}, saved.ranking or {}
    labels = {c.get("column"): column_name(c) for c in ranking.get("columns", [])}
    text = f"Rendered {grid.get('rendered', 0)} cells, reused {grid.get('cached', 0)} from the cache."
    recommended, frontal = ranking.get("recommended"), ranking.get("frontal")
    text += f" Recommended: {labels.get(recommended, recommended)}." if recommended else " No recommendation."
    if frontal:
        text += f" Frontal pick: {labels.get(frontal, frontal)}."
    if warnings:
        text += " " + " ".join(warnings)
    return text


def render(ctx: UiContext, train_tab: Any = None) -> PickSection:
    """Show the section (inside the current layout block) for the run named in ``train_tab``.

    Args:
        ctx: the page context.
        train_tab: the :class:`~lib_dbchar.ui.tabs.train.TrainTab`; its ``run_name`` box names
            the run. None gives the section its own box.

    Returns:
        The rendered section; call :func:`register` (or its ``register``) once the page is built.
    """
    return PickSection(ctx, getattr(train_tab, "run_name", None)).render()


def register(section: PickSection) -> PickSection:
    """Attach the section's handlers."""
    section.register()
    return section
