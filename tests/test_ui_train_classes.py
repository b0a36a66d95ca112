"""The Train tab's class images panel: generate as a job, stop and continue, look, reject, top up.

Generation runs the test kit's tiny SD1 model on CPU (64 px, 2 sampling steps).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from lib_dbchar.concept import Concept, save_concepts
from lib_dbchar.jobs import JobContext
from lib_dbchar.train.classes import REJECTED_DIR, class_folder_status, generate_for_run, list_class_images
from lib_dbchar.ui.train_classes import concept_index, concept_label, summary_text, toggle
from tests import test_ui_concept_train as base

pytestmark = pytest.mark.filterwarnings("ignore:\\s*on_event is deprecated:DeprecationWarning")

#: Settings for a class-image job on the tiny model (64 px, 2 steps, no half precision on CPU).
CLASS_CONFIG = {**base.TINY}


@pytest.fixture
def host(tmp_path):
    return base.host.__wrapped__(tmp_path)


@pytest.fixture
def project(host):
    return base.project.__wrapped__(host)


@pytest.fixture
def tab(host, project, tiny_sd1):
    shutil.copy(tiny_sd1.single_file, host.checkpoint_dir() / "tiny-sd1.safetensors")
    save_concepts(project.concept_file, [Concept(instance_token="sks", num_class_images=4)])
    return base.build(host, base.train_tab)


def job_values(tiny_sd1, **extra) -> dict:
    return {
        "source": "tiny-sd1.safetensors",
        "run_name": "neeko",
        "model_config_dir": str(tiny_sd1.diffusers_dir),
        "config": CLASS_CONFIG,
        **extra,
    }


def class_folder(project) -> Path:
    return project.root / "classes" / "classifiers_0"


# -- pure helpers -----------------------------------------------------------------------------------
def test_toggle_ticks_and_unticks_in_gallery_order():
    names = ["a.png", "b.png", "c.png"]
    assert toggle(names, [], 2) == ["c.png"]
    assert toggle(names, ["c.png"], 0) == ["a.png", "c.png"]
    assert toggle(names, ["a.png", "c.png"], 0) == ["c.png"]
    assert toggle(names, ["a.png"], 7) == ["a.png"]  # a stale click changes nothing


def test_concept_labels_round_trip(project):
    concepts = [Concept(instance_token="sks"), Concept(instance_token="ahri")]
    statuses = class_folder_status(concepts, project.root)
    labels = [concept_label(s) for s in statuses]
    assert labels == ["1 · sks", "2 · ahri"]
    assert [concept_index(label) for label in labels] == [0, 1]
    assert concept_index(None) == 0 and concept_index("junk") == 0
    assert statuses[1].folder.endswith("classifiers_1") and statuses[0].wanted == 20
    assert summary_text(statuses[0]).startswith("Concept 1: 0/20 class images in ")


# -- the job ----------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
def test_generate_reject_and_top_up(host, project, tab, tiny_sd1):
    released = []
    tab.ctx.release_hooks.append(lambda: released.append("tagger"))
    reports = []
    out = tab.classes.binding.call(job_values(tiny_sd1), progress=lambda p, desc=None: reports.append(desc))
    status = out[-1]
    assert "dbchar-message-ok" in status and "Drew 4 class image(s)" in status, status
    assert released == ["tagger"] and host.freed == 1
    assert any(d and d.startswith("Class image 4/4") for d in reports)
    folder = class_folder(project)
    images = list_class_images(folder)
    assert [p.name for p in images] == [f"class_{n:05d}.png" for n in range(4)]
    # Each .txt holds the prompt the image was drawn with: the caption without the token.
    assert images[0].with_suffix(".txt").read_text(encoding="utf-8") == "1girl, red hair, pose0"
    assert images[1].with_suffix(".txt").read_text(encoding="utf-8") == "1girl, red hair, pose1"
    _, summary, gallery, names, ticked = out[:5]
    assert summary.startswith("Concept 1: 4/4 class images") and "0 to draw" in summary
    assert [Path(p).name for p, _ in gallery] == names == [p.name for p in images]
    assert ticked["value"] == [] and ticked["choices"] == names
    # The conversion went into the run's working folder, which training reuses.
    assert (project.run_dir("neeko") / "working" / "unet").is_dir()

    # Reject one: it moves (with its prompt) to rejected/, never deleted; the view shows 3.
    view = tab.classes.reject("neeko", "1 · sks", ["class_00001.png"])
    assert "dbchar-message-ok" in view[-1] and "Moved 1 image(s)" in view[-1]
    assert (folder / REJECTED_DIR / "class_00001.png").is_file()
    assert (folder / REJECTED_DIR / "class_00001.txt").is_file()
    assert not (folder / "class_00001.png").exists()
    assert "3/4 class images" in view[1] and "1 to draw; 1 rejected." in view[1]

    # Top up: only the missing one is drawn, under a new number (and so a new seed).
    out = tab.classes.binding.call(job_values(tiny_sd1))
    assert "Drew 1 class image(s); 4 in all" in out[-1], out[-1]
    assert [p.name for p in list_class_images(folder)] == [
        "class_00000.png",
        "class_00002.png",
        "class_00003.png",
        "class_00004.png",
    ]
    # Nothing missing: nothing drawn, and the model is not even loaded.
    again = tab.classes.binding.call(job_values(tiny_sd1))
    assert "Nothing missing" in again[-1]


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
def test_stopped_generation_continues_with_the_same_images(host, project, tab, tiny_sd1):
    def stop_after_two(progress, desc=None):
        if desc and desc.startswith("Class image 2/"):
            host.interrupt()

    out = tab.classes.binding.call(job_values(tiny_sd1), progress=stop_after_two)
    assert "dbchar-message-stopped" in out[-1] and "stopped" in out[-1], out[-1]
    folder = class_folder(project)
    assert len(list_class_images(folder)) == 2
    first_two = [p.read_bytes() for p in list_class_images(folder)]
    out = tab.classes.binding.call(job_values(tiny_sd1))
    assert "Drew 2 class image(s); 4 in all" in out[-1]
    images = list_class_images(folder)
    assert [p.name for p in images] == [f"class_{n:05d}.png" for n in range(4)]
    assert [p.read_bytes() for p in images[:2]] == first_two
    # An uninterrupted generation elsewhere draws the same 4 images (seed + number).
    other = project.root / "other"
    spec = tab.spec_for({**job_values(tiny_sd1), "project": "neeko", "config": _config()})[1]
    concept = Concept(instance_token="sks", num_class_images=4, class_dir=str(other))
    generate_for_run(_with_concepts(spec, concept), JobContext())
    assert [p.read_bytes() for p in list_class_images(other)] == [p.read_bytes() for p in images]


def _config():
    from lib_dbchar.config import from_dict
    from lib_dbchar.train.config import TrainConfig

    return from_dict(TrainConfig, CLASS_CONFIG)


def _with_concepts(spec, *concepts):
    import dataclasses

    return dataclasses.replace(spec, concepts=tuple(concepts))


def test_generate_refuses_bad_input_with_messages(host, project, tab, tiny_sd1):
    no_run = tab.classes.binding.call(job_values(tiny_sd1, run_name=" "))
    assert "dbchar-message-error" in no_run[-1] and "Type a run name" in no_run[-1]
    fp16 = tab.classes.binding.call(job_values(tiny_sd1, config={**CLASS_CONFIG, "mixed_precision": "fp16"}))
    assert "mixed_precision" in fp16[-1] and "fp16" in fp16[-1]
    save_concepts(project.concept_file, [Concept(instance_token="sks", class_prompt="sks, [filewords]")])
    token = tab.classes.binding.call(job_values(tiny_sd1))
    assert "class_prompt" in token[-1] and "contains the instance token" in token[-1]
    assert not class_folder(project).exists() and host.freed == 2


def test_reject_needs_ticks_and_real_class_images(host, project, tab):
    assert "Tick the images" in tab.classes.reject("neeko", "1 · sks", [])[-1]
    folder = class_folder(project)
    folder.mkdir(parents=True)
    (folder / "mine.png").write_bytes(b"x")
    out = tab.classes.reject("neeko", "1 · sks", ["mine.png"])
    assert "dbchar-message-error" in out[-1] and "is not a class image" in out[-1]
    assert (folder / "mine.png").is_file()  # a user's own file is never moved
    shown = tab.classes.show("neeko", None)
    assert shown[1].startswith("Concept 1: 0/4 class images") and shown[2] == []
