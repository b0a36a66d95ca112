"""The "Environment check" accordion: the first thing to run when something does not work.

It is also the smallest real job, so it shows the pattern every later tab follows: a
:class:`~lib_dbchar.ui.forms.Form` as input, :func:`~lib_dbchar.ui.jobs.bind_job` for the Run
button, :func:`~lib_dbchar.ui.jobs.bind_stop` for the Stop button.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from lib_dbchar.doctor import facts_from, run_checks
from lib_dbchar.jobs import JobContext
from lib_dbchar.settings import Settings
from lib_dbchar.ui.compat import gr
from lib_dbchar.ui.context import UiContext
from lib_dbchar.ui.forms import Form
from lib_dbchar.ui.ids import elem_id
from lib_dbchar.ui.jobs import JobBinding, Outcome, bind_job, bind_stop, status_box

TITLE = "environment check"


def check_environment(host: Any, settings: Settings, job: JobContext) -> tuple[str, str]:
    """Run :func:`lib_dbchar.doctor.run_checks` for ``host``, with the folders of ``settings``.

    Args:
        host: the :class:`~lib_dbchar.host.Host`.
        settings: whose projects folder is checked (the host's own, or one the user typed).
        job: progress and stop callbacks from ``host.job``.

    Returns:
        (the report text, a one-line verdict).

    Raises:
        JobStopped: the user pressed Stop between two checks.
    """
    facts = facts_from(host)
    projects_dir = settings.resolved_projects_dir(host.default_projects_dir())
    report = run_checks(dataclasses.replace(facts, projects_dir=projects_dir), job)
    problems = [c.name for c in report.checks if not c.ok]
    if problems:
        return report.as_text(), f"Problems found: {', '.join(problems)}. The report says what to do."
    return report.as_text(), f"All {len(report.checks)} checks passed."


class EnvironmentCheck:
    """Render the accordion, then register its two buttons."""

    def __init__(self, ctx: UiContext) -> None:
        self.ctx = ctx
        # Settings are edited in the webui's Settings page there; standalone they come from the
        # command line and may be changed here to check another folder before using it.
        self.form = Form("settings", Settings, interactive=not ctx.in_webui, initial=ctx.host.settings())
        self.binding: JobBinding | None = None

    def render(self) -> EnvironmentCheck:
        """Create the accordion: intro, settings form, Run/Stop buttons, status line and report."""
        with gr.Accordion("Environment check", open=False, elem_id=elem_id("env")):
            where = "Settings > dbchar" if self.ctx.in_webui else "--projects-dir / --tagger-cache"
            gr.Markdown(
                f"Checks packages, the device, and the folders below. The folders are set in {where}.",
                elem_id=elem_id("env", "intro"),
            )
            with gr.Row():
                self.form.render()
            with gr.Row():
                self.run_button = gr.Button("Run check", variant="primary", elem_id=elem_id("env", "run"))
                self.stop_button = gr.Button("Stop", elem_id=elem_id("env", "stop"))
            self.status = status_box("env")
            self.report = gr.Textbox(
                label="Report", lines=8, max_lines=30, interactive=False, elem_id=elem_id("env", "report")
            )
        return self

    def register(self) -> JobBinding:
        """Bind Run to the check as a job of the host and Stop to ``host.interrupt()``."""
        self.binding = bind_job(
            self.ctx,
            self.run_button,
            title=TITLE,
            handler=self.run,
            status=self.status,
            inputs={"settings": self.form},
            outputs=[self.report, *self.form.components.values()],
        )
        bind_stop(self.ctx, self.stop_button)
        return self.binding

    def run(self, values: dict[str, Any], job: JobContext) -> Outcome:
        """The job: check the typed settings (standalone) or the saved ones (webui), then show
        the settings that were checked, so the form never shows older values than the report."""
        # Read-only in the webui: the user may have saved new settings since the page was built.
        settings = values["settings"] if self.form.interactive else self.ctx.host.settings()
        report, verdict = check_environment(self.ctx.host, settings, job)
        return Outcome((report, *self.form.show(settings)), verdict)
