"""The standalone page in a real browser: ``python -m lib_dbchar ui`` driven by Debian's Chromium.

Starts the server as a user would (a subprocess of this Python, free port, fresh folders, no
network), then clicks through the tabs, creates a project and runs the environment check.
Playwright's own browser download does not work offline, so it drives /usr/bin/chromium; the tests
skip only when that is missing.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.kit.browser import REPO_ROOT, chromium, standalone_ui

pytestmark = [pytest.mark.browser, pytest.mark.slow]

JOB_TIMEOUT_MS = 90_000
TABS = [
    ("Dataset", "dataset", "512x512"),
    ("Tags", "tags", "WD14"),
    ("Concept", "concept", "[filewords]"),
    ("Train", "train", "overfitting test"),
    ("Merge", "merge", "Add difference"),
]


@dataclass
class Server:
    url: str
    models_dir: Path
    projects_dir: Path
    log: Path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("browser")
    models, projects = root / "models", root / "projects"
    with standalone_ui(root, models, projects) as url:
        yield Server(url, models, projects, root / "ui.log")


@pytest.fixture(scope="module")
def browser():
    with chromium() as browser:
        yield browser


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    page.goto(server.url)
    page.wait_for_selector("#dbchar-tabs", timeout=30_000)
    try:
        yield page
    finally:
        context.close()


def test_five_tabs_show_their_content(page):
    from playwright.sync_api import expect

    buttons = page.locator("#dbchar-tabs .tab-nav button")
    expect(buttons).to_have_count(5)
    assert [t.strip() for t in buttons.all_inner_texts()] == [label for label, _, _ in TABS]
    for label, word, needle in TABS:
        buttons.filter(has_text=re.compile(f"^{label}")).click()
        # .first: gradio 3 repeats an HTML/Markdown component's id on its inner element.
        plan = page.locator(f"#dbchar-{word}-plan").first
        expect(plan).to_be_visible()
        expect(plan).to_contain_text(needle)
        for _, other, _ in TABS:
            if other != word:
                expect(page.locator(f"#dbchar-{other}-plan").first).to_be_hidden()


def test_page_has_our_script_and_style(page):
    from playwright.sync_api import expect

    # dbchar.js adds this class once it ran (style.css is checked by the project test).
    expect(page.locator("#dbchar-tabs")).to_have_class(re.compile(r"\bdbchar-ready\b"))
    expect(page.locator(".dbchar-header")).to_contain_text("host: standalone")
    assert page.title() == "dbchar"


def test_create_a_project_through_the_picker(page, server):
    from playwright.sync_api import expect

    page.locator("#dbchar-project-name textarea").fill("Star Guardian Neeko")
    page.locator("#dbchar-project-create").click()
    message = page.locator("#dbchar-project-message .dbchar-message-ok")
    expect(message).to_contain_text("Created project Star Guardian Neeko", timeout=20_000)
    assert (server.projects_dir / "Star Guardian Neeko" / "project.json").is_file()
    expect(page.locator("#dbchar-project input")).to_have_value("Star Guardian Neeko")
    # The same name again is refused with a message, not a traceback.
    page.locator("#dbchar-project-name textarea").fill("Star Guardian Neeko")
    page.locator("#dbchar-project-create").click()
    expect(page.locator("#dbchar-project-message .dbchar-message-error")).to_contain_text("already exists")
    border = page.locator("#dbchar-project-message .dbchar-message-error").evaluate(
        "e => getComputedStyle(e).borderLeftColor"
    )
    assert border == "rgb(212, 63, 58)"  # style.css reached the page


def test_environment_check_shows_its_report(page, server, tmp_path):
    from playwright.sync_api import expect

    page.locator("#dbchar-env .label-wrap").click()
    page.locator("#dbchar-env-run").click()
    status = page.locator("#dbchar-env-status .dbchar-message-ok")
    expect(status).to_contain_text(re.compile("checks passed|Problems found"), timeout=JOB_TIMEOUT_MS)
    report = page.locator("#dbchar-env-report textarea").input_value()
    assert report.startswith("dbchar ")
    assert "[ok] device: cpu" in report
    assert f"projects folder: {server.projects_dir}" in report
    shot = tmp_path / "dbchar.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000


def test_webui_job_hook_sends_the_task_id_and_the_inputs_only(browser):
    """dbcharSubmitJob against stand-ins for the webui's page helpers (no webui needed)."""
    context = browser.new_context()
    page = context.new_page()
    try:
        page.set_content('<div><div id="dbchar-x-status"></div></div><div id="dbchar-tabs"></div>')
        page.add_script_tag(
            content="""
            window.progressCalls = [];
            function gradioApp() { return document; }
            window.uiLoaded = [];
            function onUiLoaded(fn) { window.uiLoaded.push(fn); }
            function randomId() { return "task(abc)"; }
            function requestProgress(id, container, gallery, atEnd) {
                window.progressCalls.push([id, container.id, gallery]);
            }
        """
        )
        page.add_script_tag(content=(REPO_ROOT / "javascript" / "dbchar.js").read_text(encoding="utf-8"))
        sent = page.evaluate(
            """() => (function() { return dbcharSubmitJob("dbchar-x-status", 3, arguments); })(
                "", "a", ["b1", "b2"], "report text", "<div>status</div>")"""
        )
        assert sent == ["task(abc)", "a", ["b1", "b2"]]
        assert page.evaluate("window.progressCalls") == [["task(abc)", "dbchar-x-status", None]]
        # The init waits for the webui's onUiLoaded, and a second call changes nothing.
        assert page.evaluate("document.getElementById('dbchar-tabs').className") == ""
        page.evaluate("() => { window.uiLoaded.forEach(f => f()); window.uiLoaded.forEach(f => f()); }")
        assert page.evaluate("window.uiLoaded.length") == 1
        assert page.evaluate("document.getElementById('dbchar-tabs').className") == "dbchar-ready"
        assert page.evaluate("window.dbcharInitDone") is True
    finally:
        context.close()
