"""The Tags tab in a real browser: filter by a tag, bulk-remove it, see the files change, undo.

``python -m lib_dbchar ui`` runs as a subprocess (as in tests/test_browser.py) on a projects folder
holding one project whose dataset has a few generated pictures with captions; Debian's Chromium
clicks through the editor and the test reads the caption files on disk after each step.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lib_dbchar.projects import create_project
from tests.kit.browser import chromium, standalone_ui
from tests.kit.tagger import solid_image

pytestmark = [pytest.mark.browser, pytest.mark.slow]

STEP_TIMEOUT_MS = 30_000
CAPTIONS = {
    "01": "1girl, red hair, smile, school uniform",
    "02": "1girl, red hair, closed eyes, school uniform",
    "03": "1girl, blue eyes, smile, school uniform",
    "04": "1girl, red hair, blue eyes, from side, school uniform",
}
COLOURS = ("red", "green", "blue", "cyan")


@dataclass
class Server:
    url: str
    dataset: Path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("browser-tags")
    projects, models = root / "projects", root / "models"
    dataset = create_project(projects, "neeko").dataset_dir
    for (stem, text), colour in zip(CAPTIONS.items(), COLOURS, strict=True):
        solid_image(colour, (96, 96)).save(dataset / f"{stem}.png")
        (dataset / f"{stem}.txt").write_text(text, encoding="utf-8")
    with standalone_ui(root, models, projects, {"HF_HUB_OFFLINE": "1"}) as url:
        yield Server(url, dataset)


@pytest.fixture(scope="module")
def page(server):
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(server.url)
        page.wait_for_selector("#dbchar-tabs", timeout=STEP_TIMEOUT_MS)
        yield page


def captions_on_disk(dataset: Path) -> dict[str, str]:
    return {p.stem: p.read_text(encoding="utf-8") for p in sorted(dataset.glob("*.txt"))}


def html_box(page, name: str):
    # .first: gradio 3 repeats an HTML component's id on its inner element.
    return page.locator(f"#dbchar-tags-{name}").first


def test_filter_bulk_remove_and_undo(page, server, tmp_path):
    from playwright.sync_api import expect

    # Opening the tab reads the project's captions.
    page.locator("#dbchar-tabs .tab-nav button").filter(has_text=re.compile("^Tags")).click()
    count = html_box(page, "count")
    expect(count).to_contain_text("4 of 4 pictures.", timeout=STEP_TIMEOUT_MS)
    expect(page.locator("#dbchar-tags-freq")).to_contain_text("school uniform")

    # Filter: pictures with "red hair".
    menu = page.locator("#dbchar-tags-require input")
    menu.click()
    menu.type("red hair")
    page.keyboard.press("Enter")
    page.keyboard.press("Escape")
    expect(count).to_contain_text("3 of 4 pictures (with red hair).", timeout=STEP_TIMEOUT_MS)

    # Preview, then apply a bulk remove of that tag on the filtered set.
    page.locator("#dbchar-tags-bulk-tags textarea").fill("red hair")
    page.locator("#dbchar-tags-bulk-preview").click()
    status = html_box(page, "bulk-status")
    expect(status).to_contain_text("changes 3 of the 3 filtered pictures", timeout=STEP_TIMEOUT_MS)
    expect(page.locator("#dbchar-tags-bulk-changes")).to_contain_text("02.png")
    assert captions_on_disk(server.dataset) == CAPTIONS  # a preview writes nothing
    page.locator("#dbchar-tags-bulk-apply").click()
    expect(status).to_contain_text("remove: red hair: wrote 3 captions", timeout=STEP_TIMEOUT_MS)
    expect(count).to_contain_text("0 of 4 pictures (with red hair).")
    # The menu still shows the tag the filter holds, though no caption has it any more.
    expect(page.locator("#dbchar-tags-require .token")).to_have_text(["red hair"])
    expect(html_box(page, "backup")).to_contain_text("Undo takes back: remove: red hair.")
    on_disk = captions_on_disk(server.dataset)
    assert on_disk["01"] == "1girl, smile, school uniform"
    assert on_disk["04"] == "1girl, blue eyes, from side, school uniform"
    assert on_disk["03"] == CAPTIONS["03"]
    assert not any("red hair" in text for text in on_disk.values())
    page.screenshot(path=str(tmp_path / "tags-after-remove.png"), full_page=True)

    # Undo puts every caption back as it was.
    page.locator("#dbchar-tags-bulk-undo").click()
    expect(status).to_contain_text("Undid remove: red hair: restored 3 captions.", timeout=STEP_TIMEOUT_MS)
    expect(count).to_contain_text("3 of 4 pictures (with red hair).")
    assert captions_on_disk(server.dataset) == CAPTIONS

    # A click in the gallery opens that picture's caption beside it.
    page.locator("#dbchar-tags-gallery button").first.click()
    caption_box = page.locator("#dbchar-tags-caption textarea")
    expect(caption_box).to_have_value(CAPTIONS["01"], timeout=STEP_TIMEOUT_MS)
    expect(page.locator("#dbchar-tags-selected textarea")).to_have_value(str(server.dataset / "01.png"))

    # A click on a tag in the frequency table adds it to the filter.
    page.locator("#dbchar-tags-freq td").filter(has_text=re.compile(r"^\s*smile\s*$")).first.click()
    expect(count).to_contain_text("1 of 4 pictures (with red hair and smile).", timeout=STEP_TIMEOUT_MS)
    expect(page.locator("#dbchar-tags-require .token")).to_have_text(["red hair", "smile"])
    shot = tmp_path / "tags.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
