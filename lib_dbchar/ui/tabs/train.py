"""The Train tab: Dreambooth with prior preservation from a source checkpoint, with presets,
the steps maths, Start/Stop/Resume and what the run has written (loss chart, checkpoints, previews).

Start runs :func:`~lib_dbchar.train.loop.train` as a job of the host (``bind_job``), inside
``host.vram_freed()`` so the webui's own model leaves the GPU for the run; checkpoints go to the
host's checkpoint folder and the host's list is refreshed afterwards. Stop asks the host to
interrupt; the run saves its state, and Resume continues it from the exact step. The run's files
are read back every few seconds while this page's run goes (a generator started beside the job,
which ends with the run; Refresh starts one after a page reload) and at the end of the job.

Also here: "Save as preset" (user presets in ``<projects>/presets``, listed after the shipped
ones; one named like a shipped preset is listed as "<name> (yours)" with a message), the class
images panel (:mod:`lib_dbchar.ui.train_classes`), a note under the source picker when the model
cannot be trained from (SDXL), and the release of memory other tabs hold (``UiContext.release_hooks``)
before a job starts. The decisions live in :mod:`lib_dbchar.ui.train_logic`; the chart in
:mod:`lib_dbchar.ui.train_chart`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from lib_dbchar.concept import Concept
from lib_dbchar.config import to_dict
from lib_dbchar.errors import DbcharError
from lib_dbchar.jobs import JobContext
from lib_dbchar.projects import Project, open_project
from lib_dbchar.train.config import TrainConfig, builtin_presets, find_preset, user_presets, validate_config
from lib_dbchar.train.run import RunSpec
from lib_dbchar.ui import compat
from lib_dbchar.ui.compat import gr
from lib_dbchar.ui.context import UiContext
from lib_dbchar.ui.forms import Form
from lib_dbchar.ui.ids import elem_class, elem_id
from lib_dbchar.ui.jobs import JobBinding, Outcome, bind_job, bind_stop, status_box
from lib_dbchar.ui.messages import message_html
from lib_dbchar.ui.tabs import pick
from lib_dbchar.ui.train_chart import loss_chart
from lib_dbchar.ui.train_classes import ClassImagesPanel
from lib_dbchar.ui.train_logic import (
    DEFAULT_SMOOTHING,
    LIVE_EVERY,
    LIVE_START_GRACE,
    STEPS_FIELDS,
    ActiveRuns,
    apply_preset_keeping,
    build_spec,
    checkpoints_text,
    live_views,
    loss_text,
    preset_message,
    project_concepts,
    read_run,
    refuse_unsupported_source,
    release_held_memory,
    run_name_for,
    save_user_preset,
    seconds_per_step,
    source_problem,
    steps_plan,
    steps_text,
)

TITLE = "Train"
#: User presets live beside the projects: ``<projects>/presets/*.json``.
PRESETS_FOLDER = "presets"

INTRO = (
    "Train a Dreambooth checkpoint from a source model, with prior preservation. Save the concept first "
    "(Concept tab). Checkpoints land beside your other models as `<run>_<step>.safetensors`; stop at any "
    "time and tick **Resume** to continue from the exact step. Pick the checkpoint with an overfitting "
    "test: prompt a pose the dataset lacks (side, back) and keep the latest checkpoint that still draws it."
)


class TrainTab:
    """The Train tab's widgets and handlers.

    Attributes (after :meth:`render`): ``source``, ``source_path``, ``refresh_sources``,
    ``preset``, ``apply_button``, ``baseline`` (gr.State), ``run_name``, ``resume``,
    ``model_config_dir``, ``form`` (TrainConfig minus the source), ``steps``, ``start_button``,
    ``stop_button``, ``refresh_button``, ``loss``, ``smoothing``, ``chart``, ``checkpoints``,
    ``gallery``, ``message``, ``status``. After :meth:`register`: ``start_binding``.
    """

    def __init__(self, ctx: UiContext) -> None:
        self.ctx = ctx
        self.form: Form = Form("train", TrainConfig)
        self.form.fields = {k: v for k, v in self.form.fields.items() if k != "source_checkpoint"}
        self.start_binding: JobBinding | None = None
        #: The runs this page's Start jobs are training now (the live view watches them).
        self.runs = ActiveRuns()
        #: Seconds between two refreshes of the live view.
        self.live_every = LIVE_EVERY
        self.classes = ClassImagesPanel(ctx, self.spec_for, self.concepts_for)

    # -- layout ---------------------------------------------------------------------------------
    def render(self) -> TrainTab:
        """Create the tab's widgets inside the current ``gr.Tab``."""
        gr.Markdown(INTRO, elem_id=elem_id("train", "plan"), elem_classes=[elem_class("plan")])
        self._render_model()
        self._render_settings()
        self.classes.render()
        self._render_run()
        return self

    def _render_model(self) -> None:
        titles = self.titles()
        with gr.Row(elem_id=elem_id("train", "source-row")):
            self.source = gr.Dropdown(
                choices=titles,
                value=titles[0] if titles else None,
                label="Source checkpoint",
                elem_id=elem_id("train", "source"),
            )
            self.source_path = gr.Textbox(
                label="or a path",
                placeholder="/path/to/model.safetensors",
                elem_id=elem_id("train", "source-path"),
            )
            self.refresh_sources = gr.Button("Refresh", elem_id=elem_id("train", "refresh-sources"))
        self.source_info = gr.HTML(
            value=self.source_note(titles[0] if titles else None, ""), elem_id=elem_id("train", "source-info")
        )
        with gr.Row(elem_id=elem_id("train", "preset-row")):
            names = self.preset_names()
            self.preset = gr.Dropdown(
                choices=names,
                value=names[0] if names else None,
                label="Preset",
                info="Applying one never changes a field you edited yourself.",
                elem_id=elem_id("train", "preset"),
            )
            self.apply_button = gr.Button("Apply preset", elem_id=elem_id("train", "apply-preset"))
        with gr.Row(elem_id=elem_id("train", "save-preset-row")):
            self.preset_name = gr.Textbox(
                label="Save the settings as a preset",
                placeholder="e.g. my 3060",
                info="Saved beside your projects (presets/<name>.json); the model is not part of it.",
                elem_id=elem_id("train", "preset-name"),
            )
            self.preset_overwrite = gr.Checkbox(
                value=False,
                label="Replace my preset of that name",
                elem_id=elem_id("train", "preset-overwrite"),
            )
            self.save_preset_button = gr.Button("Save as preset", elem_id=elem_id("train", "save-preset"))
        self.baseline = gr.State(to_dict(TrainConfig()))

    def _render_settings(self) -> None:
        with gr.Row(elem_id=elem_id("train", "run-row")):
            self.run_name = gr.Textbox(
                label="Run name",
                placeholder="e.g. neeko-wd13",
                info="Checkpoints are named <run>_<step>.safetensors.",
                elem_id=elem_id("train", "run-name"),
            )
            self.resume = gr.Checkbox(value=False, label="Resume", elem_id=elem_id("train", "resume"))
        with gr.Accordion("Settings", open=False, elem_id=elem_id("train", "settings")):
            self.form.render()
        with gr.Accordion("Advanced", open=False, elem_id=elem_id("train", "advanced")):
            self.model_config_dir = gr.Textbox(
                label="Model configs folder",
                info="Only for non-standard models: a diffusers folder whose configs describe the source.",
                elem_id=elem_id("train", "model-config-dir"),
            )
        self.steps = gr.Markdown("", elem_id=elem_id("train", "steps"))
        self.message = gr.HTML(value=self.preset_problems_html(), elem_id=elem_id("train", "message"))

    def _render_run(self) -> None:
        with gr.Row(elem_id=elem_id("train", "actions")):
            self.start_button = gr.Button("Start", variant="primary", elem_id=elem_id("train", "start"))
            self.stop_button = gr.Button("Stop", elem_id=elem_id("train", "stop"))
            self.refresh_button = gr.Button("Refresh progress", elem_id=elem_id("train", "refresh"))
        self.status = status_box("train")
        with gr.Row(elem_id=elem_id("train", "progress")):
            with gr.Column():
                self.chart = gr.Image(
                    label="Loss", type="pil", interactive=False, elem_id=elem_id("train", "chart")
                )
                self.smoothing = gr.Slider(
                    minimum=0.0,
                    maximum=0.999,
                    step=0.001,
                    value=DEFAULT_SMOOTHING,
                    label="Smoothing",
                    elem_id=elem_id("train", "smoothing"),
                )
            with gr.Column():
                self.loss = gr.Textbox(
                    label="Latest loss", lines=5, interactive=False, elem_id=elem_id("train", "loss")
                )
                self.checkpoints = gr.Textbox(
                    label="Checkpoints", lines=4, interactive=False, elem_id=elem_id("train", "checkpoints")
                )
        self.gallery = gr.Gallery(label="Previews", columns=4, elem_id=elem_id("train", "gallery"))

    # -- events ---------------------------------------------------------------------------------
    def register(self) -> None:
        """Attach Refresh, presets, the live steps maths, Start, Stop and the progress view."""
        widgets = list(self.form.components.values())
        project = [self.ctx.project] if self.ctx.project is not None else []
        compat.listen(
            self.refresh_sources.click,
            self.refresh_source_list,
            [self.source],
            [self.source],
            show_progress=False,
        )
        compat.listen(
            self.apply_button.click,
            self.apply_preset,
            [self.preset, self.baseline, *widgets],
            [*widgets, self.baseline, self.message],
            show_progress=False,
        )
        compat.listen(
            self.save_preset_button.click,
            self.save_preset,
            [self.preset_name, self.preset_overwrite, *widgets],
            [self.preset, self.message],
            show_progress=False,
        )
        for widget in (self.source, self.source_path):
            compat.listen(
                widget.change,
                self.source_note,
                [self.source, self.source_path],
                [self.source_info],
                show_progress=False,
            )
        steps_inputs = [*project, *widgets]
        triggers = [self.form.components[name] for name in STEPS_FIELDS if name in self.form.components]
        if self.ctx.project is not None:
            triggers.append(self.ctx.project)
        for widget in triggers:
            compat.listen(
                widget.change, self.steps_maths_values, steps_inputs, [self.steps], show_progress=False
            )
        view_outputs = [self.loss, self.chart, self.checkpoints, self.gallery]
        view_inputs = [*project, self.run_name, self.smoothing]
        compat.listen(
            self.smoothing.change,
            self.view_values,
            view_inputs,
            view_outputs,
            show_progress=False,
            queue=False,
        )
        # Refresh shows the run now and keeps it fresh while it trains (after a page reload too).
        compat.listen_background(self.refresh_button.click, self.watch_values, view_inputs, view_outputs)
        inputs: dict[str, Any] = {
            "source": self.source,
            "source_path": self.source_path,
            "run_name": self.run_name,
            "resume": self.resume,
            "model_config_dir": self.model_config_dir,
            "smoothing": self.smoothing,
            "config": self.form,
        }
        if self.ctx.project is not None:
            inputs["project"] = self.ctx.project
        self.classes.register({k: v for k, v in inputs.items() if k not in ("resume", "smoothing")})
        self.start_binding = bind_job(
            self.ctx,
            self.start_button,
            title="train",
            handler=self.start,
            status=self.status,
            inputs=inputs,
            outputs=view_outputs,
        )
        bind_stop(self.ctx, self.stop_button)
        # Beside the job: the chart, losses and checkpoints refresh every few seconds while it runs.
        compat.listen_background(self.start_button.click, self.watch_after_start, view_inputs, view_outputs)

    # -- host look-ups --------------------------------------------------------------------------
    def titles(self) -> list[str]:
        """The host's checkpoint titles, read fresh."""
        return [ref.title for ref in self.ctx.host.list_checkpoints()]

    def presets_dir(self) -> Path:
        """Where user presets are read from."""
        return self.ctx.host.projects_dir() / PRESETS_FOLDER

    def preset_names(self) -> list[str]:
        """Built-in presets first (the guide's on top), then the user's."""
        return [p.name for p in builtin_presets() + user_presets(self.presets_dir())[0]]

    def preset_problems_html(self) -> str:
        """The user presets folder's problems (broken files, shipped names) as a message, or ""."""
        problems = user_presets(self.presets_dir())[1]
        return message_html(" ".join(problems), "error") if problems else ""

    def project(self, name: str | None) -> Project:
        """The selected project.

        Raises:
            DbcharError: none selected or it does not exist.
        """
        if not name:
            msg = "Pick or create a project first."
            raise DbcharError(msg)
        try:
            return open_project(self.ctx.host.projects_dir(), name)
        except FileNotFoundError as exc:
            raise DbcharError(str(exc)) from exc

    def resolve_source(self, title: str | None, path: str | None) -> Path:
        """The source checkpoint file: the typed path when given, else the dropdown's choice.

        Raises:
            DbcharError: nothing picked, or it cannot be found.
        """
        wanted = (path or "").strip() or (title or "").strip()
        if not wanted:
            msg = "Pick the source checkpoint to train from (or type its path)."
            raise DbcharError(msg)
        ref = self.ctx.host.find_checkpoint(wanted)
        if ref is None:
            raise DbcharError(f"The source checkpoint {wanted!r} was not found; pick one from the list.")
        return Path(ref.path)

    # -- handlers -------------------------------------------------------------------------------
    def refresh_source_list(self, current: str | None) -> Any:
        """Re-read the host's checkpoints, keeping the choice when it still exists."""
        titles = self.titles()
        value = current if current in titles else (titles[0] if titles else None)
        return compat.update(choices=titles, value=value)

    def _config(self, values: tuple[Any, ...]) -> TrainConfig:
        return self.form.parse(dict(zip(self.form.components, values, strict=True)))

    def apply_preset(self, preset_name: str | None, baseline: dict[str, Any], *values: Any) -> list[Any]:
        """Apply a preset to the form, keeping the fields the user edited.

        Args:
            preset_name: the preset picked.
            baseline: the values the tab last put in the form (``gr.State``).
            values: the form's widget values, in :attr:`Form.components` order.

        Returns:
            One value per form widget, the new baseline, then the message HTML.
        """
        keep = [compat.no_change() for _ in self.form.components]
        try:
            current = self._config(values)
            preset = find_preset(preset_name or "", self.presets_dir())
        except ValueError as exc:
            return [*keep, baseline, message_html(str(exc), "error")]
        applied = apply_preset_keeping(current, baseline, preset)
        return [
            *self.form.show(applied.config),
            applied.baseline,
            message_html(preset_message(preset, applied), "ok"),
        ]

    def save_preset(self, name: str | None, overwrite: bool, *values: Any) -> list[Any]:
        """Save the form as a user preset and select it in the dropdown.

        Args:
            name: the preset's name (also its file name, made safe).
            overwrite: replace the user's preset of that name.
            values: the form's widget values, in :attr:`Form.components` order.

        Returns:
            The preset dropdown's update and the message HTML.
        """
        try:
            path = save_user_preset(
                self.presets_dir(),
                name or "",
                validate_config(self._config(values)),
                overwrite=bool(overwrite),
            )
        except (DbcharError, ValueError) as exc:
            return [compat.no_change(), message_html(str(exc), "error")]
        names = self.preset_names()
        text = f"Saved the preset {(name or '').strip()!r} in {path}."
        problems = user_presets(self.presets_dir())[1]
        if problems:
            text += " " + " ".join(problems)
        return [compat.update(choices=names, value=(name or "").strip()), message_html(text, "ok")]

    def source_note(self, title: str | None, path: str | None) -> str:
        """What the tab says under the source picker: why it cannot be trained from (SDXL), or ""."""
        wanted = (path or "").strip() or (title or "").strip()
        ref = self.ctx.host.find_checkpoint(wanted) if wanted else None
        problem = source_problem(Path(ref.path)) if ref is not None else None
        return message_html(problem, "error") if problem else ""

    def steps_maths(self, project_name: str | None, config: TrainConfig, run_name: str = "") -> str:
        """The steps maths text of ``config`` on the project as it is now (Markdown)."""
        try:
            project = self.project(project_name)
            plan, warnings = steps_plan(config, project)
        except DbcharError as exc:
            return f"Steps: {exc}"
        per_step = None
        if run_name.strip():
            try:
                per_step = seconds_per_step(project.run_dir(run_name))
            except DbcharError:
                per_step = None
        return steps_text(plan, scan_warnings=warnings, per_step=per_step)

    def steps_maths_values(self, *values: Any) -> str:
        """:meth:`steps_maths` as gradio calls it: (project, *form values) or (*form values)."""
        project_name = values[0] if self.ctx.project is not None else None
        widgets = values[1:] if self.ctx.project is not None else values
        try:
            # Full validation, so an impossible combination shows while the user types, not at Start.
            config = validate_config(self._config(widgets))
        except ValueError as exc:
            return f"Steps: {exc}"
        return self.steps_maths(project_name, config)

    def view(self, project_name: str | None, run_name: str | None, smoothing: float) -> list[Any]:
        """What the run has written so far: latest losses, chart, checkpoints, previews.

        Returns:
            ``[loss text, chart image, checkpoints text, preview paths]``; before a run exists,
            empty ones.
        """
        try:
            run_dir = self.project(project_name).run_dir(run_name_for(run_name or ""))
        except DbcharError as exc:
            return [str(exc), loss_chart([], smoothing), "", []]
        view = read_run(run_dir)
        return [
            loss_text(view),
            loss_chart(view.losses, smoothing),
            checkpoints_text(view),
            list(view.previews),
        ]

    def view_values(self, *values: Any) -> list[Any]:
        """:meth:`view` as gradio calls it: (project, run name, smoothing) or (run name, smoothing)."""
        if self.ctx.project is None:
            return self.view(None, *values)
        return self.view(*values)

    def concepts_for(self, project_name: str | None) -> tuple[Project, list[Concept]]:
        """The project and its saved concepts.

        Raises:
            DbcharError: no project, or no concept saved yet (the message says what to do).
        """
        project = self.project(project_name)
        return project, project_concepts(project)

    def spec_for(self, values: Mapping[str, Any]) -> tuple[Project, RunSpec]:
        """The project and the :class:`RunSpec` of the run the inputs describe (Start, class images).

        Args:
            values: by input name: ``project``, ``source``, ``source_path``, ``run_name``,
                ``model_config_dir``, ``config`` (a TrainConfig).

        Raises:
            DbcharError: bad input; the message names what to fix.
        """
        project = self.project(values.get("project"))
        name = run_name_for(values.get("run_name") or "")
        config_dir = (values.get("model_config_dir") or "").strip()
        project_concepts(project)  # a missing concept is the first thing to fix, before the source
        source = self.resolve_source(values.get("source"), values.get("source_path"))
        refuse_unsupported_source(source)
        spec = build_spec(
            project,
            name,
            values["config"],
            source=source,
            checkpoint_dir=self.ctx.host.checkpoint_dir(),
            device=self.ctx.host.device(),
            model_config_dir=Path(config_dir).expanduser() if config_dir else None,
        )
        return project, spec

    def watch(
        self, project_name: str | None, run_name: str | None, smoothing: float, *, start_grace: float = 0.0
    ) -> Iterator[list[Any]]:
        """The run's view (:meth:`view`), again every few seconds while this page trains it.

        Args:
            project_name, run_name, smoothing: as :meth:`view`.
            start_grace: seconds to wait for the run's job to begin (after a Start click).

        Yields:
            View outputs; the generator ends after the run does (or at once when nothing runs).
        """
        try:
            run_dir = self.project(project_name).run_dir(run_name_for(run_name or ""))
        except DbcharError:
            yield self.view(project_name, run_name, smoothing)
            return
        yield from live_views(
            lambda: self.view(project_name, run_name, smoothing),
            lambda: self.runs.active(run_dir),
            every=self.live_every,
            start_grace=start_grace,
        )

    def watch_values(self, *values: Any) -> Iterator[list[Any]]:
        """:meth:`watch` as gradio calls it: (project, run name, smoothing) or (run name, smoothing)."""
        if self.ctx.project is None:
            yield from self.watch(None, *values)
        else:
            yield from self.watch(*values)

    def watch_after_start(self, *values: Any) -> Iterator[list[Any]]:
        """:meth:`watch_values` for a Start click: waits for the job to begin before giving up."""
        args = (None, *values) if self.ctx.project is None else values
        yield from self.watch(*args, start_grace=LIVE_START_GRACE)

    def start(self, values: dict[str, Any], job: JobContext) -> Outcome:
        """Start (or resume) the run: the job handler of the Start button.

        Args:
            values: by input name: ``project``, ``source``, ``source_path``, ``run_name``,
                ``resume``, ``model_config_dir``, ``smoothing``, ``config`` (a TrainConfig).
            job: the host's job context (progress, stop).

        Returns:
            The :class:`Outcome` with the run view (:meth:`view`) and a one-line summary; a
            stopped run also returns its view, with how to resume.

        Raises:
            DbcharError: bad input (the message names the field) or a training failure.
        """
        from lib_dbchar.train.loop import train
        from lib_dbchar.train.run import TrainingStopped

        host = self.ctx.host
        project, spec = self.spec_for(values)
        name = spec.name
        release_held_memory(self.ctx)
        self.runs.begin(spec.run_dir)
        try:
            with host.vram_freed():
                result = train(spec, job, resume=bool(values.get("resume")))
            message = (
                f"Run {name} finished at step {result.step} (epoch {result.epoch}); "
                f"{len(result.checkpoints)} checkpoint(s) in {spec.checkpoint_dir}."
            )
        except TrainingStopped as exc:
            result = exc.result
            message = f"Run {name} stopped at step {result.step}; tick Resume and Start to continue."
        except (ValueError, FileNotFoundError) as exc:
            raise DbcharError(str(exc)) from exc
        finally:
            self.runs.end(spec.run_dir)
            host.refresh_checkpoints()
        if result.warnings:
            message += " " + " ".join(result.warnings)
        smoothing = values.get("smoothing")
        view = self.view(project.name, name, DEFAULT_SMOOTHING if smoothing is None else float(smoothing))
        return Outcome(tuple(view), message)


def render(ctx: UiContext) -> TrainTab:
    """Show the tab's content inside the current ``gr.Tab`` and attach its handlers."""
    tab = TrainTab(ctx).render()
    tab.pick = pick.render(ctx, tab)
    tab.register()
    pick.register(tab.pick)
    return tab
