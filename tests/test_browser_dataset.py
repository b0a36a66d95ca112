"""The Dataset tab in a real browser: prep a folder, drag a crop square, accept, see the crop change.

Starts ``python -m lib_dbchar ui`` as tests/test_browser.py does (its helpers are reused), drives
Debian's Chromium through Playwright, and checks on disk what the page did: ``crops.json`` holds
the box that was dragged and the dataset picture was made again from it. A second test runs
``javascript/dbchar-crop.js`` on a bare page to check its geometry and key handling exactly.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.kit.browser import REPO_ROOT, chromium, standalone_ui
from tests.kit.images import file_hashes, textured
from tests.test_browser import Server

pytestmark = [pytest.mark.browser, pytest.mark.slow]

JOB_TIMEOUT_MS = 90_000
CROP_SCRIPT = REPO_ROOT / "javascript" / "dbchar-crop.js"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("browser-dataset")
    models, projects = root / "models", root / "projects"
    # Focal crops try the face detector; offline that must fail at once (saliency is used).
    offline = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(root / "hf")}
    with standalone_ui(root, models, projects, offline) as url:
        yield Server(url, models, projects, root / "ui.log")


@pytest.fixture(scope="module")
def browser():
    with chromium() as browser:
        yield browser


def stage_box(page) -> dict:
    """The square the page shows now, read from the stage's data attributes (original pixels)."""
    stage = page.locator(".dbchar-crop-stage")
    return {k: int(stage.get_attribute(f"data-{k}")) for k in ("x", "y", "side")}


def drag(page, source, dx: float, dy: float) -> None:
    """Press the mouse in the middle of ``source``, move by (dx, dy) screen pixels, release."""
    source.scroll_into_view_if_needed()
    box = source.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + dx / 2, y + dy / 2, steps=4)
    page.mouse.move(x + dx, y + dy, steps=4)
    page.mouse.up()


def test_drag_a_crop_square_and_accept_it(browser, server, tmp_path):
    from playwright.sync_api import expect

    src = tmp_path / "pictures"
    src.mkdir()
    textured((900, 600), 11).save(src / "hero_wide.png")
    textured((500, 700), 12).save(src / "hero_tall.jpg", quality=92)
    textured((640, 640), 13).save(src / "hero_square.png")
    originals = file_hashes(src)

    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    try:
        page.goto(server.url)
        page.wait_for_selector("#dbchar-tabs", timeout=30_000)
        # A project, then prep of the folder into it.
        page.locator("#dbchar-project-name textarea").fill("Neeko")
        page.locator("#dbchar-project-create").click()
        expect(page.locator("#dbchar-project-message .dbchar-message-ok")).to_contain_text("Created project")
        page.locator("#dbchar-dataset-folder textarea").fill(str(src))
        page.locator("#dbchar-dataset-prepare").click()
        status = page.locator("#dbchar-dataset-status .dbchar-message-ok")
        expect(status).to_contain_text("Prepared 3 pictures", timeout=JOB_TIMEOUT_MS)
        dataset = server.projects_dir / "Neeko" / "dataset"
        crops = dataset / "crops.json"
        before_png = (dataset / "hero_wide.png").read_bytes()
        before_box = json.loads(crops.read_text(encoding="utf-8"))["images"]["hero_wide.png"]["box"]

        # Open the nudge by clicking the picture in the gallery (sorted: square, tall, wide).
        thumbnails = page.locator("#dbchar-dataset-gallery .thumbnail-item")
        expect(thumbnails).to_have_count(3, timeout=20_000)
        thumbnails.nth(2).click()
        stage = page.locator('.dbchar-crop-stage[data-picture="hero_wide.png"]')
        expect(stage).to_be_visible(timeout=20_000)
        expect(page.locator(".dbchar-crop-stage[data-dbchar-bound]")).to_have_count(1)
        start = stage_box(page)
        assert start["side"] == 600 and [start["x"], start["y"]] == before_box[:2]

        # Shrink from the bottom-right corner, then move the square left: the mouse, in screen pixels.
        drag(page, page.locator(".dbchar-crop-se"), -120, -120)
        resized = stage_box(page)
        assert resized["side"] < start["side"] and (resized["x"], resized["y"]) == (start["x"], start["y"])
        drag(page, page.locator(".dbchar-crop-square"), -80, 40)
        moved = stage_box(page)
        assert moved["side"] == resized["side"]
        assert moved["x"] < resized["x"] and moved["y"] > resized["y"]
        # A key press nudges it once more (6 px: 1 % of the short side).
        page.locator(".dbchar-crop-stage").press("ArrowRight")
        final = stage_box(page)
        assert final == {**moved, "x": moved["x"] + 6}
        assert final["x"] >= 0 and final["y"] + final["side"] <= 600 and final["x"] + final["side"] <= 900
        sent = json.loads(page.locator("#dbchar-dataset-crop-box textarea").input_value())
        assert sent == {"picture": "hero_wide.png", **final}

        page.locator("#dbchar-dataset-crop-accept").click()
        done = page.locator("#dbchar-dataset-crop-status .dbchar-message-ok")
        expect(done).to_contain_text("Saved your square; hero_wide.png made again", timeout=JOB_TIMEOUT_MS)
        page.screenshot(path=str(tmp_path / "dataset-tab.png"), full_page=True)

        entry = json.loads(crops.read_text(encoding="utf-8"))["images"]["hero_wide.png"]
        expected = [final["x"], final["y"], final["x"] + final["side"], final["y"] + final["side"]]
        assert entry["user_box"] == expected and entry["box"] == expected and entry["box"] != before_box
        assert (dataset / "hero_wide.png").read_bytes() != before_png
        assert file_hashes(src) == originals
        # The page shows the new square for the picture, ready for another nudge.
        expect(page.locator(".dbchar-crop-stage")).to_have_attribute("data-x", str(final["x"]))
    finally:
        context.close()


def test_crop_script_keeps_a_square_inside_the_picture(browser):
    """dbchar-crop.js on a bare page: geometry invariants, keys, and what it writes for Python."""
    context = browser.new_context()
    page = context.new_page()
    try:
        page.set_content(
            '<div id="dbchar-t"><textarea></textarea></div>'
            '<div class="dbchar-crop-stage" tabindex="0" data-picture="p.png" data-width="400"'
            ' data-height="300" data-x="50" data-y="0" data-side="300" data-min="32" data-target="dbchar-t">'
            '<img class="dbchar-crop-image" style="width:200px;height:150px">'
            '<div class="dbchar-crop-square" style="position:absolute"></div></div>'
        )
        page.add_script_tag(content="window.inputs = 0;")
        page.evaluate("document.querySelector('textarea').addEventListener('input', () => window.inputs++)")
        page.add_script_tag(content=CROP_SCRIPT.read_text(encoding="utf-8"))
        broken = page.evaluate(
            """() => {
                const bad = [];
                let seed = 7;
                const rnd = (n) => {
                    seed = (seed * 1103515245 + 12345) % 2147483648;
                    return seed % n - n / 2;
                };
                const corners = ["nw", "ne", "sw", "se"];
                for (let i = 0; i < 2000; i++) {
                    const W = 50 + Math.abs(rnd(3000)), H = 50 + Math.abs(rnd(3000));
                    const min = 1 + Math.abs(rnd(200));
                    let b = dbcharCropFit({x: rnd(4000), y: rnd(4000), side: Math.abs(rnd(4000))}, W, H, min);
                    b = i % 3 === 0 ? dbcharCropMove(b, rnd(2000), rnd(2000), W, H, min)
                      : i % 3 === 1 ? dbcharCropResizeCentred(b, rnd(2000), W, H, min)
                      : dbcharCropResizeCorner(b, corners[i % 4], rnd(2000), rnd(2000), W, H, min);
                    const ok = [b.x, b.y, b.side].every(Number.isInteger) && b.side >= 1
                        && b.x >= 0 && b.y >= 0 && b.x + b.side <= W && b.y + b.side <= H;
                    if (!ok) bad.push([W, H, b]);
                }
                return bad.slice(0, 3);
            }"""
        )
        assert broken == []
        # A corner drag keeps the opposite corner fixed.
        fixed = page.evaluate("dbcharCropResizeCorner({x: 50, y: 0, side: 300}, 'nw', 100, 40, 400, 300, 32)")
        assert fixed == {"x": 150, "y": 100, "side": 200}
        # Keys: arrows move by 1 % of the short side (3 px), shift+arrows resize about the centre.
        stage = page.locator(".dbchar-crop-stage")
        stage.press("ArrowLeft")
        stage.press("Shift+ArrowDown")
        written = json.loads(page.locator("textarea").input_value())
        assert written == {"picture": "p.png", "x": 50, "y": 3, "side": 294}
        assert page.evaluate("window.inputs") == 2
        assert stage.get_attribute("data-side") == "294"
        # Bound once, however often the page changes.
        page.evaluate("dbcharCropScan(); dbcharCropInit(); dbcharCropScan();")
        stage.press("ArrowRight")
        assert json.loads(page.locator("textarea").input_value())["x"] == 53
    finally:
        context.close()
