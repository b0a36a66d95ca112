"""The dbchar page: a header, the project picker, the environment check and the five tabs.

:func:`build_ui` returns a ``gr.Blocks`` that a host embeds: the webui shows it as its top tab
"dbchar" (``on_ui_tabs``), :func:`launch` serves it alone. So :func:`build_ui` never calls
``launch``/``queue`` or anything that belongs to a top-level page; :func:`launch` adds those, and
the CSS and JS the webui would otherwise have injected.
"""

from __future__ import annotations

import html
import json
import logging
from pathlib import Path
from types import ModuleType
from typing import Any

from lib_dbchar.errors import DbcharError
from lib_dbchar.host.base import Host
from lib_dbchar.ui import compat
from lib_dbchar.ui.compat import gr
from lib_dbchar.ui.context import UiContext
from lib_dbchar.ui.environment import EnvironmentCheck
from lib_dbchar.ui.ids import elem_class, elem_id
from lib_dbchar.ui.projects import ProjectPicker
from lib_dbchar.ui.tabs import concept, dataset, merge, tags, train
from lib_dbchar.version import __version__

logger = logging.getLogger(__name__)

#: The sub-tabs in workflow order: (id word, module with TITLE and render(ctx)).
TABS: tuple[tuple[str, ModuleType], ...] = (
    ("dataset", dataset),
    ("tags", tags),
    ("concept", concept),
    ("train", train),
    ("merge", merge),
)

#: The extension's root folder, where the webui finds style.css and javascript/.
EXTENSION_ROOT = Path(__file__).resolve().parents[2]
STYLE_FILE = EXTENSION_ROOT / "style.css"
SCRIPT_DIR = EXTENSION_ROOT / "javascript"
SCRIPT_FILE = SCRIPT_DIR / "dbchar.js"

#: Events running at once in the standalone page; GPU jobs still run one at a time (host lock).
STANDALONE_WORKERS = 4


def header_text(host: Host, device: str) -> str:
    """The one-line header: version, host and device (escaped HTML)."""
    text = f"dbchar {__version__} · host: {host.name} · device: {device}"
    return f'<div class="{elem_class("header")}">{html.escape(text)}</div>'


def device_text(host: Host) -> str:
    """The host's device for the header, or why it is not known yet (the webui still starting)."""
    try:
        return host.device()
    except DbcharError as exc:
        logger.warning("dbchar: %s", exc)
        return "not known yet"


def _render_tabs(ctx: UiContext) -> None:
    with gr.Tabs(elem_id=elem_id("tabs")):
        for word, module in TABS:
            with gr.Tab(module.TITLE, elem_id=elem_id("tab", word)):
                module.render(ctx)


class DbcharUI:
    """The page's parts, kept after :meth:`build` so tests and hosts can reach the handlers.

    Attributes (after :meth:`build`):
        blocks: the built ``gr.Blocks``.
        ctx: the :class:`UiContext` the tabs received.
        picker: the :class:`ProjectPicker`.
        environment: the :class:`EnvironmentCheck` (its ``binding`` runs the check).
    """

    def __init__(self, host: Host) -> None:
        self.host = host

    def build(self) -> gr.Blocks:
        """Render everything into a new ``gr.Blocks``, then register the event handlers."""
        # Asking the device imports torch (a few seconds, once); only the header needs it now.
        device = device_text(self.host)
        with gr.Blocks(analytics_enabled=False) as self.blocks:
            # First, so it is the first input of every webui job (see lib_dbchar.ui.jobs).
            task_id = gr.Textbox(value="", visible=False, elem_id=elem_id("task-id"))
            gr.HTML(header_text(self.host, device), elem_id=elem_id("header"))
            self.picker = ProjectPicker(self.host).render()
            handoff = gr.Textbox(value="", visible=False, elem_id=elem_id("merge-handoff"))
            self.ctx = UiContext(
                host=self.host, project=self.picker.dropdown, task_id=task_id, merge_handoff=handoff
            )
            self.environment = EnvironmentCheck(self.ctx).render()
            _render_tabs(self.ctx)
            self.picker.register()
            self.environment.register()
        return self.blocks


def build_ui(host: Host) -> gr.Blocks:
    """Build the dbchar page for ``host`` (to embed; see :func:`launch` to serve it alone).

    Args:
        host: the webui or standalone host.

    Returns:
        A ``gr.Blocks`` holding the header, project picker, environment check and the tabs
        Dataset, Tags, Concept, Train, Merge. It is never launched or queued here.
    """
    return DbcharUI(host).build()


def _read_asset(path: Path) -> str:
    """A page asset's text, or "" with a warning when an install left it out (the page still works)."""
    if path.is_file():
        return path.read_text(encoding="utf-8")
    logger.warning("dbchar: %s is missing; the page works without it but looks plainer", path)
    return ""


def page_script() -> str:
    """Every ``javascript/*.js`` in file-name order, as one source: what the webui would load."""
    files = sorted({*SCRIPT_DIR.glob("*.js"), SCRIPT_FILE}, key=lambda p: p.name)
    return "\n".join(text for text in (_read_asset(p) for p in files) if text)


def script_loader(source: str) -> str:
    """A JS function that adds ``source`` to the page once as a global ``<script>``.

    Gradio 3 has no way to put a script in the page head, but both majors run a JS function on
    load; a ``<script>`` element built there defines its functions as globals, as the webui's
    injection would.
    """
    # The function travels inside the page's config, which gradio writes into an HTML <script>:
    # a "</" in it would end that script early, so it is written "<\/" (the same JS string).
    literal = json.dumps(source).replace("</", "<\\/")
    return (
        "function(){"
        "if (document.getElementById('dbchar-script')) { return; }"
        "var s = document.createElement('script'); s.id = 'dbchar-script';"
        f"s.textContent = {literal}; document.head.appendChild(s);"
        "}"
    )


def build_page(host: Host) -> Any:
    """The standalone top-level page: :func:`build_ui` plus title, CSS, JS and the queue."""
    ui = build_ui(host)
    # Built outside the page and rendered into it, exactly as the webui embeds it.
    with gr.Blocks(
        title="dbchar", css=_read_asset(STYLE_FILE), theme=compat.offline_theme(), analytics_enabled=False
    ) as page:
        ui.render()
        script = page_script()
        if script:
            compat.run_js_on_load(page, script_loader(script))
    return compat.enable_queue(page, STANDALONE_WORKERS)


def launch(host: Host, *, listen: str = "127.0.0.1", port: int = 7870, open_browser: bool = False) -> None:
    """Serve the dbchar page on ``listen:port`` until Ctrl+C (``python -m lib_dbchar ui``).

    It needs no network: no share link, no telemetry, no web fonts.

    Args:
        host: usually a :class:`~lib_dbchar.host.standalone.StandaloneHost`.
        listen: the address to serve on; the default serves this machine only.
        port: the TCP port.
        open_browser: open the page in the default browser once it is up.
    """
    page = build_page(host)
    compat.launch_blocking(page, listen_on=listen, port=port, open_browser=open_browser)
