"""The Merge tab in a real browser: a hand-off from "Pick a checkpoint" opens it with the roles filled.

The hand-off box is filled the way "send" fills it (its value changes, then ``dbcharOpenMergeTab()``
runs), without rendering a grid first: that path is covered by tests/test_browser_pick.py.
"""

from __future__ import annotations

import json
import re

import pytest

from tests.kit.browser import chromium, standalone_ui
from tests.kit.webui import write_dummy_safetensors

pytestmark = [pytest.mark.browser, pytest.mark.slow]

TIMEOUT_MS = 60_000

SET_HANDOFF = """(text) => {
    const box = document.querySelector("#dbchar-merge-handoff textarea, #dbchar-merge-handoff input");
    box.value = text;
    box.dispatchEvent(new Event("input", {bubbles: true}));
    return true;
}"""


def test_handoff_opens_the_merge_tab_with_primary_and_tertiary(tmp_path):
    from playwright.sync_api import expect

    models, projects = tmp_path / "models", tmp_path / "projects"
    trained = write_dummy_safetensors(models / "neeko_800.safetensors")
    source = write_dummy_safetensors(models / "sd15.safetensors")
    with standalone_ui(tmp_path, models, projects) as url, chromium() as browser:
        page = browser.new_context(viewport={"width": 1280, "height": 1000}).new_page()
        page.goto(url)
        page.wait_for_selector("#dbchar-tabs", timeout=TIMEOUT_MS)
        nav = page.locator("#dbchar-tabs .tab-nav button")
        merge_button = nav.filter(has_text=re.compile("^Merge"))
        expect(merge_button).not_to_have_class(re.compile("selected"))

        payload = json.dumps({"checkpoint": str(trained), "run": "neeko", "source": str(source)})
        page.evaluate(SET_HANDOFF, payload)
        assert page.evaluate("dbcharOpenMergeTab()") is True

        expect(merge_button).to_have_class(re.compile("selected"), timeout=TIMEOUT_MS)
        expect(page.locator("#dbchar-merge-plan").first).to_be_visible()
        note = page.locator("#dbchar-merge-note").first
        expect(note).to_contain_text("From Pick a checkpoint: Primary = neeko_800.safetensors of run neeko")
        expect(note).to_contain_text("Tertiary = sd15.safetensors")
        primary = page.locator("#dbchar-merge-primary input").first
        tertiary = page.locator("#dbchar-merge-tertiary input").first
        expect(primary).to_have_value("neeko_800.safetensors", timeout=TIMEOUT_MS)
        expect(tertiary).to_have_value("sd15.safetensors", timeout=TIMEOUT_MS)
        page.screenshot(path=str(tmp_path / "merge-handoff.png"), full_page=True)
