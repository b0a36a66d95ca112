"""The whole chain in a real browser, as a user clicks it (issue #7's must-show).

``python -m lib_dbchar ui`` runs as a subprocess (tests/kit/browser.py) on a models folder holding
two tiny SD1 models (the source and a second model to move the character onto) and an empty
projects folder; the WD14 tagger is the test kit's ONNX double, laid out in a fake Hugging Face
cache at the default model's pinned revision, so the Tags tab finds it offline exactly as it would
find the real one. Debian's Chromium then goes through

    Dataset (create a project, prepare a folder of drawn pictures) -> Tags (tag them) -> Concept
    (token, class image count, save) -> Train (source, "Fast test" preset at 64 px, class images,
    Start) -> Pick a checkpoint (render the grid, rank, send the pick to Merge) -> Merge (add
    difference onto the other model)

and after each step the test reads what the step left on disk: square pictures, captions,
``concept.json``, class images, checkpoints and the run record, the grid and the ranking JSON,
the merged model.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lib_dbchar.demo.figures import write_pictures
from tests.kit.browser import chromium, standalone_ui
from tests.kit.images import file_hashes
from tests.kit.tagger import TAGGER_V3_DIR

pytestmark = [pytest.mark.browser, pytest.mark.slow]

STEP_MS = 30_000  # a click's answer
JOB_MS = 120_000  # a job's end (prep, tagging, class images, training, grid, merge)
PICTURES = 4
TOKEN = "sks"
RUN = "neeko-e2e"
CLASS_IMAGES = 4
# The "Fast test" preset (2 epochs, a checkpoint after each) at the tiny model's size.
TINY_TRAINING = {"resolution": 64, "preview_steps": 2, "class_steps": 2, "learning_rate": 0.001}
TINY_RENDER = {"steps": 2, "size": 64}


@dataclass(frozen=True)
class World:
    """The server and the folders it works in.

    Attributes:
        url: the page.
        models: the checkpoints folder (``tiny-sd1`` and ``other`` inside).
        projects: the projects folder.
        pictures: the user's pictures (never changed).
        model_configs: the tiny source model's diffusers folder (the Train tab's "Model configs").
    """

    url: str
    models: Path
    projects: Path
    pictures: Path
    model_configs: Path


@pytest.fixture
def world(tmp_path: Path, tiny_sd1, fake_hf_cache) -> Iterator[World]:
    from lib_dbchar.demo.tiny import build_tiny_sd
    from lib_dbchar.tagger.models import DEFAULT_MODEL, get_model

    model = get_model(DEFAULT_MODEL)
    fake_hf_cache.add_repo(model.repo_id, TAGGER_V3_DIR, revision=model.revision)
    models, projects = tmp_path / "models", tmp_path / "projects"
    models.mkdir()
    shutil.copyfile(tiny_sd1.single_file, models / "tiny-sd1.safetensors")
    other = build_tiny_sd("sd1", tmp_path / "other-model", seed=7)
    shutil.copyfile(other.single_file, models / "other.safetensors")
    pictures = tmp_path / "pictures"
    write_pictures(pictures, PICTURES, size=128)
    # fake_hf_cache put HF_HOME / HF_HUB_CACHE / HF_HUB_OFFLINE in os.environ: the server inherits them.
    # One torch thread in the server: tiny models gain nothing from threads, and on a loaded 2-core
    # machine OpenMP's spinning waits dominate (tests/test_ui_concept_train.py does the same).
    with standalone_ui(tmp_path, models, projects, {"OMP_NUM_THREADS": "1"}) as url:
        yield World(url, models, projects, pictures, tiny_sd1.diffusers_dir)


# -- what a user does with gradio's widgets --------------------------------------------------------
def open_tab(page, label: str) -> None:
    page.locator("#dbchar-tabs .tab-nav button").filter(has_text=re.compile(f"^{label}")).click()


def open_accordion(page, elem: str) -> None:
    """Open a closed accordion (a click on an open one would close it)."""
    accordion = page.locator(f"#{elem}")
    body_visible = accordion.locator(".label-wrap.open").count() > 0
    if not body_visible:
        accordion.locator(".label-wrap").first.click()


def type_number(page, elem: str, value: float) -> None:
    """Type into a slider's or number box's field and leave it (which commits the value)."""
    field = page.locator(f"#{elem} input[type=number]")
    field.fill(str(value))
    field.press("Tab")


def type_text(page, elem: str, text: str) -> None:
    box = page.locator(f"#{elem} textarea, #{elem} input[type=text]").first
    box.fill(text)
    box.press("Tab")


def choose(page, elem: str, option: str) -> None:
    """Pick ``option`` in a dropdown: type it into the box, take the first match."""
    box = page.locator(f"#{elem} input").first
    box.click()
    box.fill(option)
    page.locator(f"#{elem} .options li, ul.options li").filter(has_text=option).first.click()


def expect_ok(page, box: str, text, timeout: int = STEP_MS) -> None:
    """Wait until the message in ``#<box>`` says ``text`` (a str or a pattern), then check it is an
    ok message. Any kind is awaited, so a failure shows the error the page gave instead.
    (.first: gradio 3 repeats an HTML component's id on its inner element.)"""
    from playwright.sync_api import expect

    message = page.locator(f"#{box} .dbchar-message").first
    expect(message).to_contain_text(text, timeout=timeout)
    assert "dbchar-message-ok" in (message.get_attribute("class") or ""), message.inner_text()


def html(page, elem: str):
    return page.locator(f"#{elem}").first


# -- the steps --------------------------------------------------------------------------------------
def step_dataset(page, world: World) -> Path:
    page.locator("#dbchar-project-name textarea").fill("Neeko")
    page.locator("#dbchar-project-create").click()
    expect_ok(page, "dbchar-project-message", "Created project")
    open_tab(page, "Dataset")
    type_text(page, "dbchar-dataset-folder", str(world.pictures))
    open_accordion(page, "dbchar-dataset-options")
    type_number(page, "dbchar-prep-resolution", 64)
    page.locator("#dbchar-dataset-prepare").click()
    expect_ok(page, "dbchar-dataset-status", f"Prepared {PICTURES} pictures", JOB_MS)

    dataset = world.projects / "Neeko" / "dataset"
    from PIL import Image

    squares = sorted(dataset.glob("*.png"))
    assert len(squares) == PICTURES
    for square in squares:
        with Image.open(square) as image:
            assert image.size == (64, 64)
    assert json.loads((dataset / "crops.json").read_text(encoding="utf-8"))["images"]
    return dataset


def step_tags(page, dataset: Path) -> dict[str, str]:
    from playwright.sync_api import expect

    open_tab(page, "Tags")
    page.locator("#dbchar-tags-run").click()
    expect_ok(page, "dbchar-tags-status", f"Tagged {PICTURES} pictures", JOB_MS)
    captions = {p.stem: p.read_text(encoding="utf-8") for p in sorted(dataset.glob("*.txt"))}
    assert sorted(captions) == sorted(p.stem for p in dataset.glob("*.png"))
    # The double tags by mean colour: the drawn character's red hair and skin on a salmon background.
    for text in captions.values():
        tags = [t.strip() for t in text.split(",")]
        assert {"1girl", "solo", "red hair"} <= set(tags), text
    expect(page.locator("#dbchar-tags-freq")).to_contain_text("1girl", timeout=STEP_MS)
    return captions


def step_concept(page, project: Path) -> dict:
    from playwright.sync_api import expect

    open_tab(page, "Concept")
    # The form was loaded when the project was picked (its message is there); a second Load now
    # could answer after the typing below and undo it, so none is clicked.
    expect(page.locator("#dbchar-concept-message .dbchar-message-info").first).to_be_visible(timeout=STEP_MS)
    type_text(page, "dbchar-concept-instance_token", TOKEN)
    type_number(page, "dbchar-concept-num_class_images", CLASS_IMAGES)
    page.locator("#dbchar-concept-save").click()
    expect_ok(page, "dbchar-concept-message", "Saved")
    concepts = json.loads((project / "concept.json").read_text(encoding="utf-8"))["concepts"]
    assert len(concepts) == 1
    assert concepts[0]["instance_token"] == TOKEN and concepts[0]["num_class_images"] == CLASS_IMAGES
    assert concepts[0]["class_prompt"] == "[filewords]"
    return concepts[0]


def step_train(page, world: World, project: Path) -> list[Path]:
    from playwright.sync_api import expect

    open_tab(page, "Train")
    choose(page, "dbchar-train-source", "tiny-sd1")
    choose(page, "dbchar-train-preset", "Fast test")
    page.locator("#dbchar-train-apply-preset").click()
    expect(html(page, "dbchar-train-message")).to_contain_text(
        "Applied the preset 'Fast test'", timeout=STEP_MS
    )
    type_text(page, "dbchar-train-run-name", RUN)
    open_accordion(page, "dbchar-train-settings")
    for field, value in TINY_TRAINING.items():
        type_number(page, f"dbchar-train-{field}", value)
    page.locator("#dbchar-train-use_8bit_adam input[type=checkbox]").uncheck()
    open_accordion(page, "dbchar-train-advanced")
    type_text(page, "dbchar-train-model-config-dir", str(world.model_configs))

    # Class images first (as the guide says: look at them before training).
    open_accordion(page, "dbchar-train-classes")
    page.locator("#dbchar-train-classes-generate").click()
    expect_ok(page, "dbchar-train-classes-status", f"{CLASS_IMAGES} in all", JOB_MS)
    class_dir = project / "classes" / "classifiers_0"
    class_images = sorted(class_dir.glob("*.png"))
    assert len(class_images) == CLASS_IMAGES
    for image in class_images:  # each with its class prompt: the dataset's tags, never the token
        prompt = image.with_suffix(".txt").read_text(encoding="utf-8")
        assert "red hair" in prompt and TOKEN not in prompt.split(", "), prompt

    page.locator("#dbchar-train-start").click()
    expect_ok(page, "dbchar-train-status", "finished at step", JOB_MS)
    checkpoints = sorted(
        world.models.glob(f"{RUN}_*.safetensors"), key=lambda p: int(p.stem.rsplit("_", 1)[1])
    )
    steps = [int(p.stem.rsplit("_", 1)[1]) for p in checkpoints]
    assert steps == [PICTURES, 2 * PICTURES]  # one checkpoint per epoch, one step per picture
    run_dir = project / "runs" / RUN
    recorded = json.loads((run_dir / "checkpoints.json").read_text(encoding="utf-8"))
    assert [(Path(r["path"]), r["step"]) for r in recorded] == list(zip(checkpoints, steps, strict=True))
    assert len(list((run_dir / "samples").glob("*.png"))) == 2  # a preview after each epoch
    expect(page.locator("#dbchar-train-checkpoints textarea")).to_have_value(
        re.compile(re.escape(str(checkpoints[-1]))), timeout=STEP_MS
    )
    return checkpoints


def step_pick(page, project: Path) -> str:
    """Render the grid, rank, and send the recommended checkpoint to Merge; returns its stem."""
    from playwright.sync_api import expect

    open_tab(page, "Train")
    section = page.locator("#dbchar-pick-section")
    section.scroll_into_view_if_needed()
    pick_run = page.locator("#dbchar-pick-run-name textarea, #dbchar-pick-run-name input")
    if pick_run.count():  # the section's own run box (else it follows the Train tab's)
        type_text(page, "dbchar-pick-run-name", RUN)
    page.locator("#dbchar-pick-open").click()
    expect(page.locator("#dbchar-pick-probes")).to_contain_text(TOKEN, timeout=STEP_MS)
    open_accordion(page, "dbchar-pick-settings")
    for field, value in TINY_RENDER.items():
        type_number(page, f"dbchar-pick-{field}", value)
    page.locator("#dbchar-pick-render").click()
    expect_ok(page, "dbchar-pick-status", re.compile(r"Rendered \d+ cells.*Recommended: "), JOB_MS)

    pick = project / "runs" / RUN / "pick"
    grid = json.loads((pick / "grid.json").read_text(encoding="utf-8"))
    ranking = json.loads((pick / "ranking.json").read_text(encoding="utf-8"))
    columns = [c["key"] for c in grid["columns"]]
    assert columns == ["source", f"{RUN}_{PICTURES}", f"{RUN}_{2 * PICTURES}"]
    probes = json.loads((pick / "probes.json").read_text(encoding="utf-8"))["probes"]
    cells = len(probes) and sum(len(p["seeds"]) for p in probes) * len(columns)
    assert cells and len(grid["cells"]) == cells
    assert all((pick / c["image"]).is_file() for c in grid["cells"])
    from PIL import Image

    with Image.open(pick / "grid.png") as sheet:
        assert sheet.width > 64 * len(columns) and sheet.height > 64
    assert {c["column"] for c in ranking["columns"]} == set(columns)
    recommended = ranking["recommended"]
    assert recommended in columns[1:]  # a trained checkpoint, never the source
    # The table names checkpoints by their label ("step 4") and marks the recommended row.
    label = next(c["label"] for c in ranking["columns"] if c["column"] == recommended)
    row = page.locator("#dbchar-pick-ranking tr").filter(has_text="recommended").first
    expect(row).to_contain_text(label, timeout=STEP_MS)
    expect(page.locator("#dbchar-pick-grid img").first).to_be_visible()  # the grid is shown

    page.locator("#dbchar-pick-send").click()
    expect_ok(page, "dbchar-pick-status", "Sent", STEP_MS)
    handoff = json.loads(page.locator("#dbchar-merge-handoff textarea").input_value())
    assert Path(handoff["checkpoint"]).stem == recommended
    return recommended


def step_merge(page, primary: Path) -> Path:
    """Move the picked checkpoint onto the other model: the hand-off filled Primary and Tertiary."""
    from playwright.sync_api import expect

    open_tab(page, "Merge")
    expect_ok(page, "dbchar-merge-status", f"Received {primary.name} from Pick a checkpoint.")
    expect(page.locator("#dbchar-merge-primary input").first).to_have_value(re.compile(primary.stem))
    expect(page.locator("#dbchar-merge-tertiary input").first).to_have_value(re.compile("tiny-sd1"))
    choose(page, "dbchar-merge-secondary", "other")
    type_text(page, "dbchar-merge-name", "neeko-on-other")
    page.locator("#dbchar-merge-run").click()
    expect_ok(page, "dbchar-merge-status", "Saved 1 result.", JOB_MS)
    merged = primary.parent / "neeko-on-other.safetensors"
    assert merged.is_file()
    expect(page.locator("#dbchar-merge-result textarea")).to_have_value(re.compile("neeko-on-other"))
    return merged


def check_merged(merged: Path, primary: Path, other: Path, source: Path) -> None:
    """Add difference, multiplier 1: merged = primary + (other - source), for every tensor."""
    import safetensors.torch
    import torch

    a, b, c = (safetensors.torch.load_file(str(p)) for p in (primary, other, source))
    out = safetensors.torch.load_file(str(merged))
    assert set(out) == set(a)
    for key, value in out.items():
        # Computed in float32, stored in the trained file's dtype (fp16 checkpoints): one fp16 step.
        expected = (a[key].float() + (b[key].float() - c[key].float())).to(value.dtype)
        assert torch.allclose(value.float(), expected.float(), rtol=1e-3, atol=1e-5), key
    key = "model.diffusion_model.input_blocks.0.0.weight"
    assert not torch.equal(out[key], a[key])  # the other model's difference really was added


@contextlib.contextmanager
def timed(seconds: dict[str, float], name: str) -> Iterator[None]:
    """Record a step's wall time (printed at the end: where the two minutes go)."""
    started = time.monotonic()
    try:
        yield
    finally:
        seconds[name] = round(time.monotonic() - started, 1)


def test_dataset_to_merge_through_the_page(world, tmp_path):
    originals = file_hashes(world.pictures)
    seconds: dict[str, float] = {}
    picked = None
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.set_default_timeout(STEP_MS)
        page.goto(world.url)
        page.wait_for_selector("#dbchar-tabs", timeout=STEP_MS)
        try:
            with timed(seconds, "dataset"):
                dataset = step_dataset(page, world)
            project = dataset.parent
            with timed(seconds, "tags"):
                step_tags(page, dataset)
            with timed(seconds, "concept"):
                step_concept(page, project)
            with timed(seconds, "train"):
                checkpoints = step_train(page, world, project)
            with timed(seconds, "pick"):
                picked = step_pick(page, project)
            primary = world.models / f"{picked}.safetensors"
            assert primary in checkpoints
            with timed(seconds, "merge"):
                merged = step_merge(page, primary)
        finally:
            page.screenshot(path=str(tmp_path / "e2e-last.png"), full_page=True)
            print("seconds per step:", seconds)
    check_merged(merged, primary, world.models / "other.safetensors", world.models / "tiny-sd1.safetensors")
    assert file_hashes(world.pictures) == originals  # the user's pictures were only read
