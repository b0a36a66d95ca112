"""Binding a button to a long job, so that every tab runs its jobs the same way.

A job handler is ``handler(values, job) -> Outcome``: ``values`` is one dict keyed by input name
(a :class:`~lib_dbchar.ui.forms.Form` input arrives already validated into its dataclass) and
``job`` is the :class:`~lib_dbchar.jobs.JobContext` to hand to the core. :func:`bind_job` does the
rest, differently per host:

* **standalone** -- the inputs go to gradio as a *set*, so gradio passes one
  ``{component: value}`` dict, and a ``gr.Progress()`` default argument after it lets gradio's
  own bar show our :class:`~lib_dbchar.jobs.Progress` reports.
* **webui** -- the webui's convention: a hidden first input carries a task id that a JS function
  (``dbcharSubmitJob`` in ``javascript/dbchar.js``) fills in and hands to ``requestProgress``; the
  host's ``wrap_gpu_call`` (``wrap_gradio_gpu_call``) sees the id and drives the webui's bar. Its
  wrapper appends timing HTML to the *last* output, so the last output is always our status HTML.

Both take the host's GPU lock through ``host.wrap_gpu_call``. A :class:`~lib_dbchar.errors.DbcharError`
(including :class:`~lib_dbchar.errors.JobStopped`) or an invalid form value becomes a message in
the status box, never a traceback.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lib_dbchar.errors import DbcharError, JobStopped
from lib_dbchar.jobs import JobContext, Progress, ProgressFn
from lib_dbchar.ui import compat
from lib_dbchar.ui.compat import gr
from lib_dbchar.ui.context import UiContext
from lib_dbchar.ui.forms import Form
from lib_dbchar.ui.ids import elem_class, elem_id
from lib_dbchar.ui.messages import message_html

#: The task id sent when a caller outside the page (a test, a script) runs a webui-mode binding.
DIRECT_TASK_ID = "task(dbchar-direct)"


@dataclass(frozen=True)
class Outcome:
    """What a job handler returns.

    Attributes:
        outputs: one value per output component given to :func:`bind_job`, in that order.
        message: one line for the status box ("Checked 6 things: all fine.").
    """

    outputs: tuple[Any, ...] = ()
    message: str = "Done."


JobHandler = Callable[[dict[str, Any], JobContext], Outcome]


def status_box(name: str) -> Any:
    """The status line of a job (``dbchar-<name>-status``); the webui's progress bar appears above it."""
    return gr.HTML(value="", elem_id=elem_id(name, "status"), elem_classes=[elem_class("status")])


def gradio_progress_sink(progress: Any) -> ProgressFn:
    """Map our :class:`Progress` onto a ``gr.Progress`` (or anything called the same way)."""

    def sink(p: Progress) -> None:
        # (done, None) is gradio's "unknown total": it shows the text and a count, no fraction.
        progress((p.done, p.total if p.total > 0 else None), desc=p.text or None)

    return sink


class JobBinding:
    """One button bound to one job handler (built by :func:`bind_job`).

    Attributes:
        fn: the function registered with gradio (already wrapped by ``host.wrap_gpu_call``).
        components: the input components in the order the webui-mode ``fn`` receives them
            (after the task id).
    """

    def __init__(
        self,
        ctx: UiContext,
        *,
        title: str,
        handler: JobHandler,
        inputs: Mapping[str, Any],
        outputs: Sequence[Any],
    ) -> None:
        self.ctx = ctx
        self.title = title
        self.handler = handler
        self.inputs = dict(inputs)
        self.outputs = list(outputs)
        self.components = self._flatten(self.inputs)
        self.fn = self._make_fn()

    # -- what gradio calls --------------------------------------------------------------------
    def _make_fn(self) -> Callable[..., tuple[Any, ...]]:
        host = self.ctx.host
        extra_outputs = [compat.no_change() for _ in self.outputs]
        if self.ctx.in_webui:

            def run_in_webui(task_id: str, *values: Any) -> tuple[Any, ...]:
                # task_id is read by the webui's wrapper before we are called; we only skip it.
                return self.run(dict(zip(self.components, values, strict=True)), ui_progress=None)

            return host.wrap_gpu_call(run_in_webui, extra_outputs=extra_outputs)

        # Gradio finds the progress tracker by its default value, right after the one dict input.
        def run_standalone(data: dict[Any, Any], progress: Any = gr.Progress()) -> tuple[Any, ...]:  # noqa: B008
            return self.run(data, ui_progress=gradio_progress_sink(progress))

        return host.wrap_gpu_call(run_standalone, extra_outputs=extra_outputs)

    def gradio_inputs(self) -> Any:
        """The ``inputs=`` for the event: a list led by the task id (webui) or a set (standalone)."""
        if self.ctx.in_webui:
            return [self.ctx.task_id, *self.components]
        # The hidden task id keeps the set non-empty for jobs without inputs.
        return {self.ctx.task_id, *self.components}

    def js(self, status: Any) -> str | None:
        """The webui's front-end hook for this job (None standalone, where no webui JS exists)."""
        if not self.ctx.in_webui:
            return None
        count = len(self.gradio_inputs())
        return f"function(){{return dbcharSubmitJob({json.dumps(status.elem_id)}, {count}, arguments);}}"

    # -- the job itself -----------------------------------------------------------------------
    def run(self, data: Mapping[Any, Any], ui_progress: ProgressFn | None = None) -> tuple[Any, ...]:
        """Validate, run the handler inside ``host.job`` and turn the outcome into output values.

        Args:
            data: ``{component: value}`` for the input components (extra keys are ignored).
            ui_progress: where progress goes besides the host's own bar (standalone: gradio's).

        Returns:
            The handler's output values followed by the status HTML; on a user-facing problem,
            "no change" for every output and the problem as the status.
        """
        try:
            values = self._values_by_name(data)
        except ValueError as exc:
            return self._failure(str(exc), "error")
        try:
            with self.ctx.host.job(f"dbchar: {self.title}", ui_progress=ui_progress) as job:
                outcome = self.handler(values, job)
        except JobStopped as exc:
            text = str(exc) or f"{self.title} stopped"
            return self._failure(text[:1].upper() + text[1:] + ".", "stopped")
        except DbcharError as exc:
            return self._failure(str(exc), "error")
        if len(outcome.outputs) != len(self.outputs):
            got, want = len(outcome.outputs), len(self.outputs)
            raise TypeError(f"the {self.title!r} handler returned {got} outputs for {want} components")
        return (*outcome.outputs, message_html(outcome.message, "ok"))

    def call(self, values: Mapping[str, Any], progress: Any = None) -> tuple[Any, ...]:
        """Call :attr:`fn` as gradio would, from values keyed by input name (forms: a field dict).

        For tests and scripts: it exercises the same path as a click, lock and all. An input
        (or form field) missing from ``values`` sends its widget's current value, as the page
        would. ``progress`` stands in for ``gr.Progress`` standalone (any callable taking
        ``((done, total), desc=)``).
        """
        by_component: dict[Any, Any] = {c: c.value for c in self.components}
        for name, target in self.inputs.items():
            if isinstance(target, Form):
                by_component.update({target.components[f]: v for f, v in values.get(name, {}).items()})
            elif name in values:
                by_component[target] = values[name]
        if self.ctx.in_webui:
            return self.fn(DIRECT_TASK_ID, *[by_component[c] for c in self.components])
        if progress is None:
            return self.fn(by_component)
        return self.fn(by_component, progress)

    # -- helpers ------------------------------------------------------------------------------
    @staticmethod
    def _flatten(inputs: Mapping[str, Any]) -> list[Any]:
        flat: list[Any] = []
        for target in inputs.values():
            flat.extend(target.components.values() if isinstance(target, Form) else [target])
        return flat

    def _values_by_name(self, data: Mapping[Any, Any]) -> dict[str, Any]:
        """``{component: value}`` -> ``{input name: value}``; forms are validated into their dataclass.

        Raises:
            ValueError: from a form, naming the field.
        """
        values: dict[str, Any] = {}
        for name, target in self.inputs.items():
            if isinstance(target, Form):
                values[name] = target.parse(target.by_component(data))
            else:
                values[name] = data.get(target)
        return values

    def _failure(self, text: str, kind: str) -> tuple[Any, ...]:
        return (*[compat.no_change() for _ in self.outputs], message_html(text, kind))


def bind_job(
    ctx: UiContext,
    button: Any,
    *,
    title: str,
    handler: JobHandler,
    status: Any,
    inputs: Mapping[str, Any] | None = None,
    outputs: Sequence[Any] = (),
) -> JobBinding:
    """Make ``button`` run ``handler`` as a job of the host.

    Args:
        ctx: the page context (host, hidden task id).
        button: the button that starts the job.
        title: what the job is called in messages and in the host's job list.
        handler: ``handler(values, job) -> Outcome``.
        status: the job's :func:`status_box`; always the last output.
        inputs: input name -> a component or a :class:`Form`.
        outputs: the components the handler's ``Outcome.outputs`` fill, in order.

    Returns:
        The binding; its ``fn``/``call``/``run`` are the handler as gradio sees it.
    """
    binding = JobBinding(ctx, title=title, handler=handler, inputs=inputs or {}, outputs=outputs)
    compat.listen(
        button.click,
        binding.fn,
        binding.gradio_inputs(),
        [*binding.outputs, status],
        js=binding.js(status),
        # Inside the webui its own bar (above the status box) shows progress; gradio's would be a second one.
        show_progress=not ctx.in_webui,
    )
    return binding


def bind_stop(ctx: UiContext, button: Any) -> None:
    """Make ``button`` ask the running job to stop (``host.interrupt()``).

    It bypasses the queue: a Stop click must never wait behind the job it is meant to stop.
    """

    def stop() -> None:
        ctx.host.interrupt()

    compat.listen(button.click, stop, None, None, show_progress=False, queue=False)
