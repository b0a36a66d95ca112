"""The Merge tab: the transfer wizard that moves the character onto other models.

The roles are named as the guide names them (Primary: the trained model, Secondary: the model(s)
to move the character onto, Tertiary: the source model), pre-filled from the current project's
runs when they are known. "Check" runs :func:`~lib_dbchar.merge.lineage.check_descent` and says in
plain words whether the Tertiary model is the one the Primary was trained from. "Merge" runs
:func:`~lib_dbchar.merge.run.run_merge` once per Secondary model (or
:func:`~lib_dbchar.merge.lora.run_extract_lora` once) as a job of the host, writes into the host's
checkpoint folder (a LoRA into the host's LoRA folder) and refreshes the host's list; with
"Preview" ticked it then draws one picture per result beside its Secondary model (same prompt and
seed) with :func:`lib_dbchar.pick.render.open_renderer`, the host's model moved off the GPU
meanwhile. A checkpoint sent by "Pick a checkpoint" (the page's hidden hand-off box) fills Primary
and Tertiary. Naming rules, pre-filling, the hand-off and the preview's logic live in
:mod:`lib_dbchar.ui.merge_wizard`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from lib_dbchar.errors import DbcharError
from lib_dbchar.jobs import JobContext, Progress
from lib_dbchar.merge.lineage import check_descent
from lib_dbchar.merge.lora import LoraConfig, run_extract_lora
from lib_dbchar.merge.run import MergeConfig, run_merge
from lib_dbchar.projects import Project, open_project
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
    NO_VAE,
    WEIGHTED_SUM,
    Preview,
    PreviewSettings,
    Suggestion,
    check_choice,
    chosen_vae,
    descent_text,
    handoff_roles,
    host_names,
    method_from_label,
    output_paths,
    output_stems,
    parse_handoff,
    preview_prompts,
    read_runs,
    render_previews,
    suggest_roles,
    vae_choices,
)
from lib_dbchar.ui.messages import message_html

TITLE = "Merge"

INTRO = (
    "Move the character onto any other model with an **Add difference** merge, as the guide does in the "
    "webui's Checkpoint Merger: Primary + 1 x (Secondary - Tertiary), streamed one tensor at a time. "
    "Results are saved beside your other checkpoints."
)


def default_open_renderer(**kwargs: Any) -> Any:
    """:func:`lib_dbchar.pick.render.open_renderer`, imported when a preview is drawn (torch, diffusers)."""
    from lib_dbchar.pick.render import open_renderer

    return open_renderer(**kwargs)


def torch_dtype(device: str, dtype: str) -> Any:
    """The renderer's dtype for the host's: None (float32) on the CPU, else ``torch.<dtype>``."""
    if device == "cpu" or dtype == "float32":
        return None
    import torch

    return getattr(torch, dtype)


def with_choices(titles: Sequence[str], *values: Any) -> list[str]:
    """``titles`` plus any value that is a file path outside them (a hand-off used by path)."""
    extra = [
        str(v)
        for v in values
        if isinstance(v, str) and v and v not in titles and Path(v).expanduser().is_file()
    ]
    return [*titles, *dict.fromkeys(extra)]


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
    ``tertiary``; ``method`` (radio), ``name``, ``vae_choice`` (the host's VAE files) and ``vae``
    (a path box for any other file), ``overwrite``; ``form`` (MergeConfig minus method),
    ``lora_form`` (LoraConfig minus fp16) and ``preview_form`` (:class:`PreviewSettings`);
    ``check_output``, ``result``, ``recipe``, ``gallery`` (the preview), ``status``. After
    :meth:`register`: ``check_binding`` and ``merge_binding``.

    ``open_renderer`` is what draws the preview (``open_renderer(checkpoint=, device=, dtype=,
    scheduler=)``, :func:`lib_dbchar.pick.render.open_renderer` by default); tests give it a model
    folder describing their tiny models.
    """

    def __init__(self, ctx: UiContext) -> None:
        self.ctx = ctx
        self.form: Form = _form_without("merge-config", MergeConfig, ("method",))
        self.lora_form: Form = _form_without("merge-lora", LoraConfig, ("fp16",))
        self.preview_form: Form = Form("merge-preview", PreviewSettings)
        self.open_renderer: Callable[..., Any] = default_open_renderer
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
            self.vae_choice = gr.Dropdown(
                choices=vae_choices(self.ctx.host.vae_files()),
                value=NO_VAE,
                label="Bake in VAE",
                info="None: keep the Primary model's VAE.",
                elem_id=elem_id("merge", "vae-choice"),
            )
            self.vae = gr.Textbox(
                label="Other VAE file",
                placeholder="path to a VAE file not in the list (empty: use the list)",
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
        with gr.Accordion("Preview", open=False, elem_id=elem_id("merge", "preview")) as acc:
            self.preview_box = acc
            self.preview_form.render()

    def _render_actions(self) -> None:
        with gr.Row(elem_id=elem_id("merge", "actions")):
            self.check_button = gr.Button("Check", elem_id=elem_id("merge", "check"))
            self.merge_button = gr.Button("Merge", variant="primary", elem_id=elem_id("merge", "run"))
            self.stop_button = gr.Button("Stop", elem_id=elem_id("merge", "stop"))
        self.check_output = gr.Markdown("", elem_id=elem_id("merge", "check-output"))
        self.result = gr.Textbox(
            label="Results", lines=4, interactive=False, elem_id=elem_id("merge", "result")
        )
        self.gallery = gr.Gallery(
            label="Preview: each Secondary model, then the result made from it",
            columns=2,
            elem_id=elem_id("merge", "gallery"),
        )
        self.recipe = gr.JSON(label="Recipe", elem_id=elem_id("merge", "recipe"))
        self.status = status_box("merge")

    # -- events ---------------------------------------------------------------------------------
    def register(self) -> None:
        """Attach Refresh, the method switch, project change, the hand-off, Check, Merge and Stop."""
        roles = [self.primary, self.secondary, self.tertiary]
        refresh_inputs = [self.ctx.project, *roles] if self.ctx.project is not None else roles
        refresh_outputs = [*roles, self.note, self.vae_choice]
        compat.listen(
            self.refresh_button.click, self.refresh, refresh_inputs, refresh_outputs, show_progress=False
        )
        if self.ctx.project is not None:
            compat.listen(
                self.ctx.project.change,
                self.refresh,
                refresh_inputs,
                refresh_outputs,
                show_progress=False,
            )
        if self.ctx.merge_handoff is not None:
            compat.listen(
                self.ctx.merge_handoff.change,
                self.receive_handoff,
                [self.ctx.merge_handoff],
                [self.primary, self.tertiary, self.note, self.status],
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
        merge_inputs = {
            "primary": self.primary,
            "secondary": self.secondary,
            "tertiary": self.tertiary,
            "method": self.method,
            "name": self.name,
            "vae_choice": self.vae_choice,
            "vae": self.vae,
            "overwrite": self.overwrite,
            "config": self.form,
            "lora": self.lora_form,
            "preview": self.preview_form,
        }
        if self.ctx.project is not None:
            merge_inputs["project"] = self.ctx.project
        self.merge_binding = bind_job(
            self.ctx,
            self.merge_button,
            title="merge",
            handler=self.merge,
            status=self.status,
            inputs=merge_inputs,
            outputs=[self.result, self.recipe, *roles, self.gallery],
        )
        bind_stop(self.ctx, self.stop_button)

    # -- host look-ups --------------------------------------------------------------------------
    def titles(self) -> list[str]:
        """The host's checkpoint titles, read fresh."""
        return [ref.title for ref in self.ctx.host.list_checkpoints()]

    def project(self, project_name: Any) -> Project | None:
        """The project called ``project_name``, or None (none chosen, or it is gone)."""
        if not project_name:
            return None
        try:
            return open_project(self.ctx.host.projects_dir(), str(project_name))
        except DbcharError:
            return None

    def suggest(self, project_name: str | None) -> Suggestion:
        """Roles pre-filled from the runs of ``project_name`` (nothing when unknown)."""
        project = self.project(project_name)
        if project is None:
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
        # A role filled by path (a hand-off of a file the host does not list) stays while it exists.
        choices = with_choices(titles, primary, tertiary)

        def keep(value: Any, suggested: str | None) -> Any:
            return value if value in choices else (suggested if suggested in titles else None)

        kept_secondary = [s for s in (secondary or []) if s in titles]
        return (
            compat.update(choices=choices, value=keep(primary, suggestion.primary)),
            compat.update(choices=titles, value=kept_secondary),
            compat.update(choices=choices, value=keep(tertiary, suggestion.tertiary)),
            suggestion.note,
            compat.update(choices=vae_choices(self.ctx.host.vae_files())),
        )

    def receive_handoff(self, text: Any) -> tuple[Any, ...]:
        """Fill Primary and Tertiary from a checkpoint sent by "Pick a checkpoint".

        The host's list is refreshed first when it does not hold the sent checkpoint (or its
        source): the run may have saved it after the list was last read.

        Args:
            text: the hand-off box's value (JSON ``{"checkpoint", "run", "source"}``; "" = nothing).

        Returns:
            Updates of Primary, Tertiary, the note and the status box.
        """
        try:
            handoff = parse_handoff(text)
        except ValueError as exc:
            return (
                compat.no_change(),
                compat.no_change(),
                compat.no_change(),
                message_html(str(exc), "error"),
            )
        if handoff is None:
            return (compat.no_change(), compat.no_change(), compat.no_change(), compat.no_change())
        roles = handoff_roles(self.ctx.host.list_checkpoints(), handoff)
        if roles.extra_choices:
            self.ctx.host.refresh_checkpoints()
            roles = handoff_roles(self.ctx.host.list_checkpoints(), handoff)
        choices = [*self.titles(), *roles.extra_choices]
        tertiary = (
            compat.update(choices=choices, value=roles.tertiary)
            if roles.tertiary is not None
            else compat.update(choices=choices)
        )
        return (
            compat.update(choices=choices, value=roles.primary),
            tertiary,
            roles.note,
            message_html(f"Received {Path(handoff.checkpoint).name} from Pick a checkpoint.", "ok"),
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
        settings: PreviewSettings = values.get("preview") or PreviewSettings()
        # Checked before merging: a preview that cannot be drawn must not cost a merge first.
        preview = self._preview_plan(settings, values.get("project")) if method != LORA else None
        if method == LORA:
            lines, recipes = self._extract_lora(values, job)
            pairs: list[tuple[Path, Path]] = []
            if settings.enabled:
                lines.append("No preview: a LoRA file is drawn with a model in txt2img, not here.")
        else:
            lines, recipes, pairs = self._merge_all(method, values, job)
        self.ctx.host.refresh_checkpoints()
        titles = self.titles()
        choices = with_choices(titles, values.get("primary"), values.get("tertiary"))
        roles = [compat.update(choices=c) for c in (choices, titles, choices)]
        gallery: Any = compat.no_change()
        if preview is not None:
            self._draw_preview(preview, pairs, settings, job)
            lines.append(preview.summary())
            gallery = preview.gallery()
        count = len(recipes)
        message = f"Saved {count} result{'s' if count != 1 else ''}."
        if preview is not None and (preview.problem or preview.stopped):
            message += " The preview was not finished (see Results)."
        return Outcome(
            outputs=("\n\n".join(lines), recipes[0] if count == 1 else recipes, *roles, gallery),
            message=message,
        )

    # -- preview --------------------------------------------------------------------------------
    def _preview_plan(self, settings: PreviewSettings, project_name: Any) -> Preview | None:
        """The preview to draw (prompts resolved now), or None when "Preview" is off.

        Raises:
            DbcharError: no prompt typed and no concept to take one from; a broken concept.json.
        """
        if not settings.enabled:
            return None
        from lib_dbchar.ui.concept_logic import load_project_concept

        project = self.project(project_name)
        concept = load_project_concept(project)[0] if project is not None else None
        prompt, negative = preview_prompts(settings, concept)
        return Preview(prompt=prompt, negative=negative, seed=settings.seed)

    def _draw_preview(
        self, preview: Preview, pairs: Sequence[tuple[Path, Path]], settings: PreviewSettings, job: JobContext
    ) -> None:
        """Draw the pictures with the host's model off the GPU; a failure is noted, the results stay."""
        from lib_dbchar.train.sampling import SampleRequest

        host = self.ctx.host
        request = SampleRequest(
            prompts=(preview.prompt,),
            negative=(preview.negative,),
            seeds=(settings.seed,),
            steps=settings.steps,
            guidance_scale=settings.cfg,
            size=settings.size,
        )
        device = host.device()
        opener = functools.partial(
            self.open_renderer,
            device=device,
            dtype=torch_dtype(device, host.dtype()),
            scheduler=settings.scheduler,
        )
        try:
            with host.vram_freed():
                render_previews(pairs, request, opener, preview, job)
        except (DbcharError, ValueError, FileNotFoundError) as exc:
            # The merged files are saved and listed already; say why there is no picture instead
            # of turning the whole job into an error.
            preview.problem = str(exc)

    def _merge_all(
        self, method: str, values: dict[str, Any], job: JobContext
    ) -> tuple[list[str], list[Any], list[tuple[Path, Path]]]:
        config: MergeConfig = _core(dataclasses.replace, values["config"], method=method)
        primary = self.resolve(values["primary"], "Primary")
        secondaries = [self.resolve(s, "Secondary") for s in values.get("secondary") or []]
        if not secondaries:
            msg = "Choose at least one Secondary model: the model to move the character onto."
            raise DbcharError(msg)
        tertiary = self.resolve(values["tertiary"], "Tertiary") if method == ADD_DIFFERENCE else None
        vae = chosen_vae(values.get("vae_choice"), values.get("vae"), self.ctx.host.vae_files())
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
        # The hashes the host already computed name the inputs in the recipe as the host does,
        # without reading gigabytes again.
        known = self.ctx.host.known_hashes()
        names = host_names(self.ctx.host.list_checkpoints())
        lines, recipes, pairs = [], [], []
        for index, (secondary, out) in enumerate(zip(secondaries, outs, strict=True), start=1):
            sub = _TargetProgress(job, index, len(outs), out.name).context()
            result = _core(
                run_merge,
                config,
                primary,
                secondary,
                tertiary,
                out,
                vae=vae,
                overwrite=overwrite,
                known_hashes=known,
                known_names=names,
                ctx=sub,
            )
            lines.append(result.summary())
            recipes.append(result.recipe)
            pairs.append((secondary, Path(result.output)))
        return lines, recipes, pairs

    def _extract_lora(self, values: dict[str, Any], job: JobContext) -> tuple[list[str], list[Any]]:
        config: LoraConfig = _core(dataclasses.replace, values["lora"], fp16=values["config"].fp16)
        primary = self.resolve(values["primary"], "Primary")
        tertiary = self.resolve(values["tertiary"], "Tertiary")
        stems = output_stems(
            values.get("name") or "", LORA, primary=primary, secondaries=[], tertiary=tertiary, multiplier=1.0
        )
        overwrite = bool(values.get("overwrite"))
        (out,) = output_paths(self.ctx.host.lora_dir(), stems, overwrite=overwrite)
        result = _core(run_extract_lora, config, primary, tertiary, out, overwrite=overwrite, ctx=job)
        line = (
            f"Saved the LoRA {result.output}: {result.unet_modules} UNet and {result.text_modules} text "
            f"encoder layers, keeps {result.retained:.1%} of the change."
        )
        return [line], [result.recipe]


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
