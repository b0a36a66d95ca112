"""The class images panel in a real browser: reject one image, see the file move, top up, count back;
and the Concept tab's list of concepts (add, switch, remove, save).

``python -m lib_dbchar ui`` runs as a subprocess on a projects folder holding one project with two
pictures, a saved concept wanting 3 class images and a user preset for the tiny model (64 px, two
steps, no fp16 on a CPU); the test kit's tiny SD1 model is the only checkpoint. Debian's Chromium
picks the preset, generates, rejects and tops up; the test reads the class folder on disk.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lib_dbchar.concept import Concept, load_concepts, save_concepts
from lib_dbchar.projects import create_project
from lib_dbchar.train.classes import REJECTED_DIR, list_class_images
from tests.kit.browser import chromium, standalone_ui

pytestmark = [pytest.mark.browser, pytest.mark.slow]

STEP_TIMEOUT_MS = 120_000  # the first generation imports torch and diffusers in the server
PRESET = {
    "name": "Tiny test model",
    "description": "The test kit's tiny model on a CPU.",
    "values": {"resolution": 64, "mixed_precision": "no", "class_steps": 2, "use_8bit_adam": False},
}


@dataclass
class Server:
    url: str
    classes: Path
    model_configs: Path
    pair_concepts: Path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_sd1) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("browser-train")
    projects, models = root / "projects", root / "models"
    models.mkdir()
    shutil.copy(tiny_sd1.single_file, models / "tiny-sd1.safetensors")
    project = create_project(projects, "neeko")
    rng = np.random.default_rng(0)
    for i in range(2):
        pixels = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(project.dataset_dir / f"img{i}.png")
        (project.dataset_dir / f"img{i}.txt").write_text(f"1girl, sks, pose{i}", encoding="utf-8")
    save_concepts(project.concept_file, [Concept(instance_token="sks", num_class_images=3)])
    other = create_project(projects, "pair")  # after "neeko": the picker opens on neeko
    save_concepts(other.concept_file, [Concept(instance_token="sks")])
    (projects / "presets").mkdir()
    (projects / "presets" / "tiny.json").write_text(json.dumps(PRESET), encoding="utf-8")
    with standalone_ui(root, models, projects, {"HF_HUB_OFFLINE": "1"}) as url:
        yield Server(
            url, project.root / "classes" / "classifiers_0", tiny_sd1.diffusers_dir, other.concept_file
        )


def open_accordion(page, elem: str) -> None:
    page.locator(f"#dbchar-train-{elem} .label-wrap").first.click()


def pick(page, dropdown: str, choice: str) -> None:
    page.locator(f"#{dropdown} input").first.click()
    page.locator("li").filter(has_text=choice).first.click()


def test_reject_a_class_image_then_top_up(server, tmp_path):
    from playwright.sync_api import expect

    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(server.url)
        page.wait_for_selector("#dbchar-tabs", timeout=STEP_TIMEOUT_MS)
        page.locator("#dbchar-tabs .tab-nav button").filter(has_text=re.compile("^Train")).click()

        # The tiny model's settings come from the user preset, which the dropdown lists.
        preset = page.locator("#dbchar-train-preset input")
        preset.click()
        page.locator("li").filter(has_text=PRESET["name"]).first.click()
        page.locator("#dbchar-train-apply-preset").click()
        expect(page.locator("#dbchar-train-message").first).to_contain_text(
            f"Applied the preset '{PRESET['name']}'", timeout=STEP_TIMEOUT_MS
        )
        page.locator("#dbchar-train-run-name textarea, #dbchar-train-run-name input").first.fill("neeko")
        open_accordion(page, "advanced")
        page.locator(
            "#dbchar-train-model-config-dir textarea, #dbchar-train-model-config-dir input"
        ).first.fill(str(server.model_configs))

        open_accordion(page, "classes")
        page.locator("#dbchar-train-classes-generate").click()
        status = page.locator("#dbchar-train-classes-status").first
        expect(status).to_contain_text("Drew 3 class image(s)", timeout=STEP_TIMEOUT_MS)
        assert [p.name for p in list_class_images(server.classes)] == [
            "class_00000.png",
            "class_00001.png",
            "class_00002.png",
        ]
        summary = page.locator("#dbchar-train-classes-summary textarea")
        expect(summary).to_have_value(re.compile(r"^Concept 1: 3/3 class images"))
        expect(page.locator("#dbchar-train-classes-gallery img")).to_have_count(3)

        # Tick one image by clicking it in the gallery, then reject it.
        page.locator("#dbchar-train-classes-gallery button").nth(1).click()
        ticked = page.locator("#dbchar-train-classes-ticked input[type=checkbox]")
        expect(ticked.nth(1)).to_be_checked(timeout=STEP_TIMEOUT_MS)
        page.locator("#dbchar-train-classes-reject").click()
        message = page.locator("#dbchar-train-classes-message").first
        expect(message).to_contain_text("Moved 1 image(s)", timeout=STEP_TIMEOUT_MS)
        assert (server.classes / REJECTED_DIR / "class_00001.png").is_file()
        assert len(list_class_images(server.classes)) == 2
        expect(summary).to_have_value(re.compile(r"2/3 class images.*1 to draw; 1 rejected"))

        # Top up: one new image, under a new number; the count is back to 3.
        page.locator("#dbchar-train-classes-generate").click()
        expect(status).to_contain_text("Drew 1 class image(s); 3 in all", timeout=STEP_TIMEOUT_MS)
        assert [p.name for p in list_class_images(server.classes)] == [
            "class_00000.png",
            "class_00002.png",
            "class_00003.png",
        ]
        expect(summary).to_have_value(re.compile(r"^Concept 1: 3/3 class images"))
        page.screenshot(path=str(tmp_path / "train-classes.png"), full_page=True)


def test_concept_list_add_switch_remove(server):
    from playwright.sync_api import expect

    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(server.url)
        page.wait_for_selector("#dbchar-tabs", timeout=STEP_TIMEOUT_MS)
        pick(page, "dbchar-project", "pair")
        page.locator("#dbchar-tabs .tab-nav button").filter(has_text=re.compile("^Concept")).click()
        page.locator("#dbchar-concept-load").click()
        token = page.locator(
            "#dbchar-concept-instance_token textarea, #dbchar-concept-instance_token input"
        ).first
        expect(token).to_have_value("sks", timeout=STEP_TIMEOUT_MS)
        message = page.locator("#dbchar-concept-message").first

        # Add a second concept, type at once (nothing may overwrite it), save both.
        page.locator("#dbchar-concept-add").click()
        expect(token).to_have_value("", timeout=STEP_TIMEOUT_MS)
        token.fill("ahri")
        page.locator("#dbchar-concept-save").click()
        expect(message).to_contain_text("(2 concepts)", timeout=STEP_TIMEOUT_MS)
        assert [c.instance_token for c in load_concepts(server.pair_concepts)] == ["sks", "ahri"]

        # Back to the first, then remove it: the second keeps its own class folder.
        pick(page, "dbchar-concept-which", "1 · sks")
        expect(token).to_have_value("sks", timeout=STEP_TIMEOUT_MS)
        page.locator("#dbchar-concept-remove").click()
        expect(token).to_have_value("ahri", timeout=STEP_TIMEOUT_MS)
        page.locator("#dbchar-concept-save").click()
        expect(message).to_contain_text("Saved", timeout=STEP_TIMEOUT_MS)
        saved = load_concepts(server.pair_concepts)
        assert [(c.instance_token, c.class_dir) for c in saved] == [("ahri", "classes/classifiers_1")]
