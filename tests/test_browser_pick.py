""" "Pick a checkpoint" in a real browser: open a tiny run, render the grid, rank, send to Merge.

The run is prepared on disk as training leaves it (run.json, the source as a diffusers folder in
``working/``, two checkpoints in the models folder, ``checkpoints.json``, a loss log) from the
test kit's tiny SD1 models, with two one-seed probes so the grid has 2 x 3 cells. The server runs
offline with the WD14 tagger double laid out as a Hugging Face cache. Debian's Chromium opens the
Train tab, names the run, renders at 64 px in 2 steps, and checks the gallery, the ranking, the
files the render wrote, and the hand-off to the Merge tab.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from tests.kit.browser import chromium, standalone_ui
from tests.kit.tagger import TAGGER_DOUBLE_FILES, TAGGER_V3_DIR, lay_out_hf_repo

pytestmark = [pytest.mark.browser, pytest.mark.slow]

STEP_TIMEOUT_MS = 30_000
RENDER_TIMEOUT_MS = 240_000  # 6 cells of a tiny model plus tagging, on a loaded 2-core machine
RUN = "neeko-run"
PROBES = [
    {"id": "frontal", "kind": "frontal", "label": "frontal", "prompt": "sks, 1girl, red hair", "seeds": [1]},
    {
        "id": "side",
        "kind": "side",
        "label": "from the side",
        "prompt": "sks, 1girl, red hair, from side",
        "seeds": [2],
        "expect_tags": ["from side"],
    },
]


@dataclass
class Server:
    url: str
    run_dir: Path
    models: Path


def prepare_run(projects: Path, models: Path, tiny, other) -> Path:
    """A project "neeko" with a finished 4-step run: what lib_dbchar.train leaves behind."""
    from lib_dbchar.concept import Concept, save_concepts
    from lib_dbchar.projects import create_project
    from lib_dbchar.train.config import TrainConfig
    from lib_dbchar.train.model import prepare_working_model
    from lib_dbchar.train.run import (
        CheckpointRecord,
        RunFolders,
        RunSpec,
        save_run_spec,
        write_checkpoint_records,
    )

    project = create_project(projects, "neeko")
    project.dataset_dir.mkdir(parents=True, exist_ok=True)
    for i, colour in enumerate(("red", "darkred", "firebrick")):
        Image.new("RGB", (64, 64), colour).save(project.dataset_dir / f"{i}.png")
        (project.dataset_dir / f"{i}.txt").write_text("sks, 1girl, red hair, smile", encoding="utf-8")
    concept = Concept(instance_token="sks")
    save_concepts(project.concept_file, [concept])
    source = shutil.copy(tiny.single_file, models / "tiny-sd1.safetensors")
    config = TrainConfig(source_checkpoint=str(source), resolution=64, mixed_precision="no")
    spec = RunSpec(project.root, RUN, config, (concept,), models, model_config_dir=tiny.diffusers_dir)
    save_run_spec(spec)
    folders = RunFolders(spec.run_dir)
    # As training does: the source converted once into the run's working folder (configs, tokenizer).
    prepare_working_model(
        Path(source),
        folders.working,
        config_dir=tiny.diffusers_dir,
        tokenizer_dir=tiny.diffusers_dir / "tokenizer",
    )
    records = []
    for step, model in ((2, tiny), (4, other)):
        target = models / f"{RUN}_{step}.safetensors"
        shutil.copy(model.single_file, target)
        records.append(CheckpointRecord(str(target), step, step, 0.5 / step))
    write_checkpoint_records(folders.checkpoints_record, records)
    folders.loss_log.parent.mkdir(parents=True)
    lines = [json.dumps({"step": s, "epoch": s, "loss": 0.4 / s, "lr": 1e-6}) for s in range(1, 5)]
    folders.loss_log.write_text("\n".join(lines) + "\n", encoding="utf-8")
    pick = spec.run_dir / "pick"
    pick.mkdir()
    record = {"version": 1, "probes": [{"negative": "", "expect_tags": [], **p} for p in PROBES]}
    (pick / "probes.json").write_text(json.dumps(record), encoding="utf-8")
    return spec.run_dir


def hub_cache(root: Path) -> Path:
    """The tagger doubles laid out as the Hugging Face cache leaves a download."""
    from lib_dbchar.tagger.models import DEFAULT_MODEL, get_model

    model = get_model(DEFAULT_MODEL)  # the tagger asks for the commit it is pinned to
    cache = root / "hf" / "hub"
    files = {f: TAGGER_V3_DIR / f for f in TAGGER_DOUBLE_FILES}
    lay_out_hf_repo(cache, model.repo_id, files, revision=model.revision)
    return cache


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_sd1) -> Iterator[Server]:
    from lib_dbchar.demo.tiny import build_tiny_sd

    root = tmp_path_factory.mktemp("browser-pick")
    projects, models = root / "projects", root / "models"
    models.mkdir()
    other = build_tiny_sd("sd1", root / "other", seed=7)
    run_dir = prepare_run(projects, models, tiny_sd1, other)
    cache = hub_cache(root)
    env = {
        "HF_HOME": str(cache.parent),
        "HF_HUB_CACHE": str(cache),
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        # Tiny models gain nothing from threads; on a loaded machine OpenMP waits dominate.
        "OMP_NUM_THREADS": "1",
    }
    with standalone_ui(root, models, projects, env) as url:
        yield Server(url, run_dir, models)


def html_box(page, name: str):
    # .first: gradio 3 repeats an HTML component's id on its inner element.
    return page.locator(f"#dbchar-pick-{name}").first


def set_number(page, elem_id: str, value: int) -> None:
    """Type into a form widget's number box (a Slider's or a Number's) and leave it."""
    box = page.locator(f"#{elem_id} input[type=number]").first
    box.fill(str(value))
    box.press("Tab")


def test_open_render_rank_and_send(server, tmp_path):
    from playwright.sync_api import expect

    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.goto(server.url)
        page.wait_for_selector("#dbchar-tabs", timeout=STEP_TIMEOUT_MS)
        page.locator("#dbchar-tabs .tab-nav button").filter(has_text=re.compile("^Train")).click()
        expect(page.locator("#dbchar-pick-section")).to_be_visible(timeout=STEP_TIMEOUT_MS)

        # Naming the run opens it: the probes from its probes.json, no grid yet.
        page.locator("#dbchar-train-run-name textarea, #dbchar-train-run-name input").first.fill(RUN)
        page.locator("#dbchar-pick-open").click()
        status = html_box(page, "status")
        expect(status).to_contain_text(f"No grid for {RUN} yet", timeout=STEP_TIMEOUT_MS)
        expect(page.locator("#dbchar-pick-probes")).to_contain_text("from side")

        # A 64 px grid in 2 steps.
        page.locator("#dbchar-pick-settings").get_by_text("Render settings").click()
        set_number(page, "dbchar-pick-size", 64)
        set_number(page, "dbchar-pick-steps", 2)
        page.locator("#dbchar-pick-render").click()
        expect(status).to_contain_text("Rendered 6 cells, reused 0", timeout=RENDER_TIMEOUT_MS)
        expect(status).to_contain_text(f"Recommended: {RUN}_")

        # The grid (2 probes x 3 columns, the source first) and the ranking with its mark.
        expect(page.locator("#dbchar-pick-grid img")).to_have_count(6, timeout=STEP_TIMEOUT_MS)
        ranking = html_box(page, "ranking")
        expect(ranking).to_contain_text("★ recommended")
        expect(ranking).to_contain_text("source (tiny-sd1")
        expect(html_box(page, "evidence")).to_contain_text("Recommended")
        pick = server.run_dir / "pick"
        grid = json.loads((pick / "grid.json").read_text(encoding="utf-8"))
        assert [c["key"] for c in grid["columns"]] == ["source", f"{RUN}_2", f"{RUN}_4"]
        assert len(list((pick / "cells").glob("*/*.png"))) == 6
        ranking_file = json.loads((pick / "ranking.json").read_text(encoding="utf-8"))
        assert ranking_file["recommended"] in (f"{RUN}_2", f"{RUN}_4")
        page.screenshot(path=str(tmp_path / "pick.png"), full_page=True)

        # A click on a cell enlarges it.
        page.locator("#dbchar-pick-grid button").first.click()
        expect(page.locator("#dbchar-pick-grid img").first).to_be_visible()
        page.keyboard.press("Escape")

        # Re-opening shows the saved grid without rendering again.
        page.locator("#dbchar-pick-open").click()
        expect(status).to_contain_text(
            f"Showing the saved grid and ranking of {RUN}", timeout=STEP_TIMEOUT_MS
        )

        # Send: the hand-off box holds the checkpoint, and the Merge tab opens with it.
        page.locator("#dbchar-pick-send").click()
        expect(status).to_contain_text("to the Merge tab", timeout=STEP_TIMEOUT_MS)
        chosen = server.models / f"{ranking_file['recommended']}.safetensors"
        handoff = page.locator("#dbchar-merge-handoff textarea, #dbchar-merge-handoff input").first
        expect(handoff).to_have_value(re.compile(re.escape(json.dumps(str(chosen)))), timeout=STEP_TIMEOUT_MS)
        merge_tab = page.locator("#dbchar-tabs .tab-nav button").filter(has_text=re.compile("^Merge"))
        expect(merge_tab).to_have_class(re.compile("selected"), timeout=STEP_TIMEOUT_MS)
        expect(page.locator("#dbchar-tab-merge")).to_contain_text(chosen.name, timeout=STEP_TIMEOUT_MS)
        page.screenshot(path=str(tmp_path / "merge.png"), full_page=True)
