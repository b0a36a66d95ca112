"""The Merge tab: the transfer wizard that moves the character onto other models.

The roles are named as the guide names them (Primary: the trained model, Secondary: the model(s)
to move the character onto, Tertiary: the source model), pre-filled from the current project's
runs when they are known. "Check" runs :func:`~lib_dbchar.merge.lineage.check_descent` and says in
plain words whether the Tertiary model is the one the Primary was trained from. "Merge" runs
:func:`~lib_dbchar.merge.run.run_merge` once per Secondary model (or
:func:`~lib_dbchar.merge.lora.run_extract_lora` once) as a job of the host, writes into the host's
checkpoint folder and refreshes the host's list. Naming rules and pre-filling live in
:mod:`lib_dbchar.ui.merge_wizard`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from lib_dbchar.errors import DbcharError
from lib_dbchar.jobs import JobContext, Progress
from lib_dbchar.merge.lineage import check_descent
from lib_dbchar.merge.lora import LoraConfig, run_extract_lora
from lib_dbchar.merge.run import MergeConfig, run_merge
from lib_dbchar.projects import open_project
from lib_dbchar.ui import compat
from lib_dbchar.ui.compat import gr
from lib_dbchar.ui.context import UiContext
from lib_dbchar.ui.forms import Form
from lib_dbchar.ui.ids import elem_class, elem_id
from lib_dbchar.ui.jobs import JobBinding, Outcome, bind_job, bind_stop, status_box
from lib_dbchar.ui.merge_wizard import (
    ADD_DIFFERENCE,
    LORA,
    METHOD_LABELS,
    WEIGHTED_SUM,
    Suggestion,
    check_choice,
    descent_text,
    method_from_label,
    output_paths,
    output_stems,
    read_runs,
    suggest_roles,
)

TITLE = "Merge"
#: The webui keeps LoRA files in ``models/Lora``, beside ``models/Stable-diffusion``.
LORA_FOLDER = "Lora"

INTRO = (
    "Move the character onto any other model with an **Add difference** merge, as the guide does in the "
    "webui's Checkpoint Merger: Primary + 1 x (Secondary - Tertiary), streamed one tensor at a time. "
    "Results are saved beside your other checkpoints."
)


def lora_folder(checkpoint_dir: Path) -> Path:
    """Where an extracted LoRA goes: ``Lora`` beside the checkpoint folder (the webui's ``models/Lora``).

    Outside the checkpoint folder on purpose: a LoRA listed among the checkpoints would fail to load.
    """
    return Path(checkpoint_dir).parent / LORA_FOLDER


def _form_without(name: str, cls: type, excluded: tuple[str, ...]) -> Form:
    """A :class:`Form` of ``cls`` minus ``excluded`` fields (set elsewhere in the tab)."""
    form = Form(name, cls)
    form.fields = {k: v for k, v in form.fields.items() if k not in excluded}
    return form


class _TargetProgress:
    """Prefix each progress report with "result i/n" so several merges read as one job."""

    def __init__(self, job: JobContext, index: int, count: int, name: str) -> None:
        self.job, self.index, self.count, self.name = job, index, count, name

    def context(self) -> JobContext:
        def report(p: Progress) -> None:
            text = f"{self.index}/{self.count} {self.name}: {p.text}" if self.count > 1 else p.text
            self.job.progress(Progress(p.done, p.total, text, p.image))

        return JobContext(progress=report, should_stop=self.job.should_stop)


class MergeTab:
    """Render the wizard, then bind its buttons.

    Attributes (after :meth:`render`): the role dropdowns ``primary``, ``secondary`` (several),
    ``tertiary``; ``method`` (radio), ``name``, ``vae``, ``overwrite``; ``form`` (MergeConfig
    minus method) and ``lora_form`` (LoraConfig minus fp16); ``check_output``, ``result``,
    ``recipe``, ``status``. After :meth:`register`: ``check_binding`` and ``merge_binding``.
    """

    def __init__(self, ctx: UiContext) -> None:
        self.ctx = ctx
        self.form: Form = _form_without("merge-config", MergeConfig, ("method",))
        self.lora_form: Form = _form_without("merge-lora", LoraConfig, ("fp16",))
        self.check_binding: JobBinding | None = None
        self.merge_binding: JobBinding | None = None

    # -- layout ---------------------------------------------------------------------------------
    def render(self) -> MergeTab:
        """Create the tab's widgets inside the current ``gr.Tab``."""
        gr.Markdown(INTRO, elem_id=elem_id("merge", "plan"), elem_classes=[elem_class("plan")])
        self._render_roles()
        self._render_settings()
        self._render_actions()
        return self

    def _render_roles(self) -> None:
        titles = self.titles()
        suggestion = self.suggest(getattr(self.ctx.project, "value", None))
        with gr.Row(elem_id=elem_id("merge", "roles")):
            self.primary = gr.Dropdown(
                choices=titles,
                value=suggestion.primary,
                label="Primary: your trained model",
                elem_id=elem_id("merge", "primary"),
            )
            self.secondary = gr.Dropdown(
                choices=titles,
                value=[],
                multiselect=True,
                label="Secondary: the model to move the character onto",
                info="Several allowed: one result per model.",
                elem_id=elem_id("merge", "secondary"),
            )
            self.tertiary = gr.Dropdown(
                choices=titles,
                value=suggestion.tertiary,
                label="Tertiary: the source model you trained from",
                elem_id=elem_id("merge", "tertiary"),
            )
            self.refresh_button = gr.Button("Refresh", elem_id=elem_id("merge", "refresh"))
        self.note = gr.Markdown(suggestion.note, elem_id=elem_id("merge", "note"))

    def _render_settings(self) -> None:
        with gr.Row(elem_id=elem_id("merge", "method-row")):
            self.method = gr.Radio(
                choices=list(METHOD_LABELS.values()),
                value=METHOD_LABELS[ADD_DIFFERENCE],
                label="Method",
                elem_id=elem_id("merge", "method"),
            )
        with gr.Row(elem_id=elem_id("merge", "name-row")):
            self.name = gr.Textbox(
                label="Custom name",
                placeholder="e.g. neeko-on-anything (empty: the webui's name, e.g. A + 1.0(B - C))",
                info="Saved as <name>.safetensors; with several Secondary models, <name>-<secondary>.",
                elem_id=elem_id("merge", "name"),
            )
            self.vae = gr.Textbox(
                label="Bake in VAE",
                placeholder="path to a VAE file (empty: keep the Primary model's VAE)",
                elem_id=elem_id("merge", "vae"),
            )
            self.overwrite = gr.Checkbox(
                value=False, label="Replace existing files", elem_id=elem_id("merge", "overwrite")
            )
        with gr.Accordion("Merge settings", open=True, elem_id=elem_id("merge", "settings")):
            self.form.render()
        with gr.Accordion("LoRA settings", open=True, visible=False, elem_id=elem_id("merge", "lora")) as acc:
            self.lora_box = acc
            self.lora_form.render()

    def _render_actions(self) -> None:
        with gr.Row(elem_id=elem_id("merge", "actions")):
            self.check_button = gr.Button("Check", elem_id=elem_id("merge", "check"))
            self.merge_button = gr.Button("Merge", variant="primary", elem_id=elem_id("merge", "run"))
            self.stop_button = gr.Button("Stop", elem_id=elem_id("merge", "stop"))
        self.check_output = gr.Markdown("", elem_id=elem_id("merge", "check-output"))
        self.result = gr.Textbox(
            label="Results", lines=4, interactive=False, elem_id=elem_id("merge", "result")
        )
        self.recipe = gr.JSON(label="Recipe", elem_id=elem_id("merge", "recipe"))
        self.status = status_box("merge")

    # -- events ---------------------------------------------------------------------------------
    def register(self) -> None:
        """Attach Refresh, the method switch, project change, Check, Merge and Stop."""
        roles = [self.primary, self.secondary, self.tertiary]
        refresh_inputs = [self.ctx.project, *roles] if self.ctx.project is not None else roles
        compat.listen(
            self.refresh_button.click, self.refresh, refresh_inputs, [*roles, self.note], show_progress=False
        )
        if self.ctx.project is not None:
            compat.listen(
                self.ctx.project.change,
                self.refresh,
                refresh_inputs,
                [*roles, self.note],
                show_progress=False,
            )
        compat.listen(
            self.method.change,
            self.switch_method,
            [self.method],
            [self.tertiary, self.lora_box, self.form.components["multiplier"]],
            show_progress=False,
        )
        self.check_binding = bind_job(
            self.ctx,
            self.check_button,
            title="merge check",
            handler=self.check,
            status=self.status,
            inputs={"primary": self.primary, "secondary": self.secondary, "tertiary": self.tertiary},
            outputs=[self.check_output],
        )
        self.merge_binding = bind_job(
            self.ctx,
            self.merge_button,
            title="merge",
            handler=self.merge,
            status=self.status,
            inputs={
                "primary": self.primary,
                "secondary": self.secondary,
                "tertiary": self.tertiary,
                "method": self.method,
                "name": self.name,
                "vae": self.vae,
                "overwrite": self.overwrite,
                "config": self.form,
                "lora": self.lora_form,
            },
            outputs=[self.result, self.recipe, *roles],
        )
        bind_stop(self.ctx, self.stop_button)

    # -- host look-ups --------------------------------------------------------------------------
    def titles(self) -> list[str]:
        """The host's checkpoint titles, read fresh."""
        return [ref.title for ref in self.ctx.host.list_checkpoints()]

    def suggest(self, project_name: str | None) -> Suggestion:
        """Roles pre-filled from the runs of ``project_name`` (nothing when unknown)."""
        if not project_name:
            return Suggestion(None, None, "")
        try:
            project = open_project(self.ctx.host.projects_dir(), project_name)
        except DbcharError:
            return Suggestion(None, None, "")
        return suggest_roles(self.ctx.host.list_checkpoints(), read_runs(project.runs_dir))

    def resolve(self, title: Any, role: str) -> Path:
        """The file behind a dropdown title.

        Raises:
            DbcharError: nothing chosen, or the checkpoint is gone; the message names the role.
        """
        text = check_choice(title, role)
        ref = self.ctx.host.find_checkpoint(text)
        if ref is None:
            raise DbcharError(f"{role}: {text} is not among the checkpoints any more; press Refresh.")
        return ref.path

    # -- handlers -------------------------------------------------------------------------------
    def refresh(self, *args: Any) -> tuple[Any, ...]:
        """Re-read the checkpoint list; fill empty roles from the project's runs; keep the choices made.

        Args:
            args: (project, primary, secondary, tertiary) or, without a project picker, the last three.

        Returns:
            Updates of the three dropdowns and the note.
        """
        *project, primary, secondary, tertiary = args
        titles = self.titles()
        suggestion = self.suggest(project[0] if project else None)

        def keep(value: Any, suggested: str | None) -> Any:
            return value if value in titles else (suggested if suggested in titles else None)

        kept_secondary = [s for s in (secondary or []) if s in titles]
        return (
            compat.update(choices=titles, value=keep(primary, suggestion.primary)),
            compat.update(choices=titles, value=kept_secondary),
            compat.update(choices=titles, value=keep(tertiary, suggestion.tertiary)),
            suggestion.note,
        )

    def switch_method(self, label: str) -> tuple[Any, Any, Any]:
        """Show what the method uses: Tertiary (not for weighted sum), LoRA settings, the multiplier."""
        method = method_from_label(label)
        return (
            compat.update(visible=method != WEIGHTED_SUM),
            compat.update(visible=method == LORA),
            compat.update(visible=method != LORA),
        )

    def check(self, values: dict[str, Any], job: JobContext) -> Outcome:
        """Compare Primary with Tertiary (and the Secondary models) and say whether it descends."""
        primary = self.resolve(values["primary"], "Primary")
        tertiary = self.resolve(values["tertiary"], "Tertiary")
        others = [self.resolve(s, "Secondary") for s in values.get("secondary") or []]
        report = _core(check_descent, primary, tertiary, others, ctx=job)
        text = descent_text(report, primary.name, tertiary.name)
        return Outcome(outputs=(text,), message=f"Checked {primary.name} against {tertiary.name}.")

    def merge(self, values: dict[str, Any], job: JobContext) -> Outcome:
        """Run the chosen method; several Secondary models give several results."""
        method = _core(method_from_label, values["method"])
        if method == LORA:
            lines, recipes = self._extract_lora(values, job)
        else:
            lines, recipes = self._merge_all(method, values, job)
        self.ctx.host.refresh_checkpoints()
        titles = self.titles()
        roles = [compat.update(choices=titles) for _ in range(3)]
        count = len(recipes)
        message = f"Saved {count} result{'s' if count != 1 else ''}."
        return Outcome(
            outputs=("\n\n".join(lines), recipes[0] if count == 1 else recipes, *roles), message=message
        )

    def _merge_all(self, method: str, values: dict[str, Any], job: JobContext) -> tuple[list[str], list[Any]]:
        config: MergeConfig = _core(dataclasses.replace, values["config"], method=method)
        primary = self.resolve(values["primary"], "Primary")
        secondaries = [self.resolve(s, "Secondary") for s in values.get("secondary") or []]
        if not secondaries:
            msg = "Choose at least one Secondary model: the model to move the character onto."
            raise DbcharError(msg)
        tertiary = self.resolve(values["tertiary"], "Tertiary") if method == ADD_DIFFERENCE else None
        vae = _optional_file(values.get("vae"), "Bake in VAE")
        stems = output_stems(
            values.get("name") or "",
            method,
            primary=primary,
            secondaries=secondaries,
            tertiary=tertiary,
            multiplier=config.multiplier,
        )
        overwrite = bool(values.get("overwrite"))
        outs = output_paths(self.ctx.host.checkpoint_dir(), stems, overwrite=overwrite)
        lines, recipes = [], []
        for index, (secondary, out) in enumerate(zip(secondaries, outs, strict=True), start=1):
            sub = _TargetProgress(job, index, len(outs), out.name).context()
            result = _core(
                run_merge, config, primary, secondary, tertiary, out, vae=vae, overwrite=overwrite, ctx=sub
            )
            lines.append(result.summary())
            recipes.append(result.recipe)
        return lines, recipes

    def _extract_lora(self, values: dict[str, Any], job: JobContext) -> tuple[list[str], list[Any]]:
        config: LoraConfig = _core(dataclasses.replace, values["lora"], fp16=values["config"].fp16)
        primary = self.resolve(values["primary"], "Primary")
        tertiary = self.resolve(values["tertiary"], "Tertiary")
        stems = output_stems(
            values.get("name") or "", LORA, primary=primary, secondaries=[], tertiary=tertiary, multiplier=1.0
        )
        overwrite = bool(values.get("overwrite"))
        (out,) = output_paths(lora_folder(self.ctx.host.checkpoint_dir()), stems, overwrite=overwrite)
        result = _core(run_extract_lora, config, primary, tertiary, out, overwrite=overwrite, ctx=job)
        line = (
            f"Saved the LoRA {result.output}: {result.unet_modules} UNet and {result.text_modules} text "
            f"encoder layers, keeps {result.retained:.1%} of the change."
        )
        return [line], [result.recipe]


def _optional_file(value: Any, label: str) -> Path | None:
    text = str(value or "").strip()
    if not text:
        return None
    path = Path(text).expanduser()
    if not path.is_file():
        raise DbcharError(f"{label}: {path} does not exist; give the path of a file or leave it empty.")
    return path


def _core(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call the core; its ValueError / FileNotFoundError (refused settings or inputs) become a
    :class:`DbcharError`, which the job binding shows as a message instead of a traceback."""
    try:
        return fn(*args, **kwargs)
    except DbcharError:
        raise
    except (ValueError, FileNotFoundError) as exc:
        raise DbcharError(str(exc)) from exc


def render(ctx: UiContext) -> MergeTab:
    """Show the tab's content inside the current ``gr.Tab`` and attach its handlers."""
    tab = MergeTab(ctx).render()
    tab.register()
    return tab
