"""The Concept and Train tabs: handlers called as gradio calls them, in gradio 3.41 and 4.x.

The training run uses the test kit's tiny SD1 model on CPU (2 pictures, 64 px, 2 steps).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lib_dbchar.concept import Concept, load_concepts, save_concepts
from lib_dbchar.config import to_dict
from lib_dbchar.host.standalone import StandaloneHost
from lib_dbchar.projects import create_project
from lib_dbchar.settings import Settings
from lib_dbchar.train.config import Preset, TrainConfig
from lib_dbchar.ui.compat import gr
from lib_dbchar.ui.context import UiContext
from lib_dbchar.ui.ids import elem_id
from lib_dbchar.ui.tabs import concept as concept_tab
from lib_dbchar.ui.tabs import train as train_tab
from lib_dbchar.ui.train_chart import HEIGHT, WIDTH, loss_chart
from lib_dbchar.ui.train_logic import apply_preset_keeping, read_run, smooth

pytestmark = pytest.mark.filterwarnings("ignore:\\s*on_event is deprecated:DeprecationWarning")


class CountingHost(StandaloneHost):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.refreshes = 0
        self.freed = 0

    def refresh_checkpoints(self) -> None:
        self.refreshes += 1

    def vram_freed(self):
        self.freed += 1
        return super().vram_freed()


@pytest.fixture
def host(tmp_path) -> CountingHost:
    models = tmp_path / "models" / "Stable-diffusion"
    models.mkdir(parents=True)
    return CountingHost(
        models, Settings(projects_dir=str(tmp_path / "projects")), device="cpu", home=tmp_path / "home"
    )


@pytest.fixture
def project(host):
    """A project "neeko" with 2 pictures of 64 px and captions naming the token."""
    proj = create_project(host.projects_dir(), "neeko")
    proj.dataset_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(
            proj.dataset_dir / f"img{i}.png"
        )
        (proj.dataset_dir / f"img{i}.txt").write_text(f"1girl, sks, red hair, pose{i}", encoding="utf-8")
    return proj


def build(host, module):
    with gr.Blocks(analytics_enabled=False):
        task_id = gr.Textbox(visible=False, elem_id=elem_id("task-id"))
        picker = gr.Dropdown(choices=["neeko"], value="neeko", elem_id=elem_id("project"))
        tab = module.render(UiContext(host=host, project=picker, task_id=task_id))
    return tab


def form_values(form, **changes) -> list:
    """The form's widget values (their initial values) with ``changes``, in component order."""
    values = {name: comp.value for name, comp in form.components.items()}
    values.update(changes)
    return [values[name] for name in form.components]


def shown(form, outputs) -> dict:
    return dict(zip(form.components, outputs[: len(form.components)], strict=True))


# -- Concept tab ------------------------------------------------------------------------------------
def test_concept_defaults_are_filled_from_the_dataset(host, project):
    tab = build(host, concept_tab)
    out = tab.load("neeko")
    values = shown(tab.form, out)
    assert "No concept saved yet" in out[-1]
    assert values["num_class_images"] == 20  # 10 x 2 pictures
    assert values["sample_prompt"] == ""  # no token yet: nothing to build it from
    save_concepts(project.concept_file, [Concept(instance_token="sks")])
    values = shown(tab.form, tab.load("neeko"))
    # The token, then the first caption without the token.
    assert values["sample_prompt"] == "sks, 1girl, red hair, pose0"


def test_concept_save_load_round_trip(host, project):
    tab = build(host, concept_tab)
    message = tab.save_values(
        "neeko", {"instance_token": "star guardian neeko", "num_class_images": 30, "shuffle_tags": True}
    )
    assert "dbchar-message-ok" in message and str(project.concept_file) in message
    saved = load_concepts(project.concept_file)
    assert saved[0].instance_token == "star guardian neeko"
    assert saved[0].num_class_images == 30 and saved[0].shuffle_tags is True
    values = shown(tab.form, tab.load("neeko"))
    assert values["instance_token"] == "star guardian neeko"
    assert values["num_class_images"] == 30 and values["shuffle_tags"] is True
    # Saving from the tab keeps a second concept added to the file by hand.
    save_concepts(project.concept_file, [*saved, Concept(instance_token="ahri")])
    tab.save_values("neeko", {"instance_token": "neeko"})
    assert [c.instance_token for c in load_concepts(project.concept_file)] == ["neeko", "ahri"]


def test_token_in_class_prompt_is_rejected_naming_the_field(host, project):
    tab = build(host, concept_tab)
    message = tab.save_values("neeko", {"instance_token": "sks", "class_prompt": "sks, [filewords]"})
    assert "dbchar-message-error" in message
    assert "class_prompt" in message and "contains the instance token" in message
    assert not project.concept_file.exists()


def test_concept_without_project_or_with_broken_file(host, project):
    tab = build(host, concept_tab)
    assert "Pick or create a project" in tab.load(None)[-1]
    project.concept_file.write_text("{not json", encoding="utf-8")
    out = tab.load("neeko")
    assert "dbchar-message-error" in out[-1] and "not valid JSON" in out[-1]
    # A save must not replace a file it could not read (the user's other concepts may be in it).
    assert "nothing was saved" in tab.save_values("neeko", {"instance_token": "sks"})
    assert project.concept_file.read_text(encoding="utf-8") == "{not json"


# -- Train tab: presets and steps maths ------------------------------------------------------------
def test_preset_keeps_a_field_the_user_changed(host, project):
    tab = build(host, train_tab)
    baseline = to_dict(TrainConfig())
    # The user typed a learning rate; the "Fast test" preset sets one too (and a resolution).
    values = form_values(tab.form, learning_rate=5e-6)
    out = tab.apply_preset("Fast test", baseline, *values)
    after = shown(tab.form, out)
    assert "dbchar-message-ok" in out[-1] and "learning_rate" in out[-1]
    assert after["learning_rate"] == 5e-6
    fast = json.loads((Path(train_tab.__file__).parents[2] / "presets" / "fast-test.json").read_text())
    assert fast["values"]["learning_rate"] != 5e-6
    assert after["epochs"] == fast["values"]["epochs"] == 2
    assert after["mixed_precision"] == "no"
    # The kept field still counts as the user's for the next preset.
    new_baseline = out[len(tab.form.components)]
    out = tab.apply_preset("Character (guide)", new_baseline, *[after[n] for n in tab.form.components])
    assert shown(tab.form, out)["learning_rate"] == 5e-6
    assert shown(tab.form, out)["mixed_precision"] == "fp16"  # the guide's, over Fast test's "no"


def test_preset_applies_over_untouched_fields():
    preset = Preset("p", "", {"learning_rate": 2e-6, "batch_size": 2})
    applied = apply_preset_keeping(TrainConfig(), to_dict(TrainConfig()), preset)
    assert applied.config.learning_rate == 2e-6 and applied.config.batch_size == 2
    assert applied.kept == ()
    assert applied.baseline["learning_rate"] == 2e-6


def test_unknown_preset_is_a_message(host, project):
    tab = build(host, train_tab)
    out = tab.apply_preset("Nope", to_dict(TrainConfig()), *form_values(tab.form))
    assert "dbchar-message-error" in out[-1] and "No preset named" in out[-1]


def test_steps_maths_text(host, project):
    tab = build(host, train_tab)
    no_concept = tab.steps_maths_values("neeko", *form_values(tab.form))
    assert "concept.json does not exist" in no_concept
    save_concepts(project.concept_file, [Concept(instance_token="sks")])
    text = tab.steps_maths_values(
        "neeko", *form_values(tab.form, epochs=100, max_steps=0, batch_size=1, save_every_epochs=10)
    )
    assert "2 pictures x 100 epochs / batch 1 = 200 steps" in text
    assert "checkpoints every 20 steps" in text
    assert "20 class images (20 still to generate)" in text
    assert "Only 2 pictures" in text
    capped = tab.steps_maths_values("neeko", *form_values(tab.form, epochs=100, max_steps=50, batch_size=2))
    assert "capped at 50 by max steps" in capped
    bad = tab.steps_maths_values("neeko", *form_values(tab.form, resolution=70))
    assert "Steps:" in bad and "resolution" in bad


# -- the chart --------------------------------------------------------------------------------------
def test_smoothing_matches_tensorboard_debiased_ema():
    assert smooth([1.0, 1.0, 1.0], 0.99) == pytest.approx([1.0, 1.0, 1.0])
    values = smooth([0.0, 1.0], 0.5)
    assert values == pytest.approx([0.0, (0.5 * 0.0 * 0.5 + 0.5) / (1 - 0.25)])
    assert smooth([1.0, 3.0], 0.0) == [1.0, 3.0]


def test_loss_chart_draws_the_curve():
    image = loss_chart([{"step": i, "loss": 1.0 / (i + 1)} for i in range(20)], 0.5)
    assert image.size == (WIDTH, HEIGHT)
    pixels = np.asarray(image)
    blue = (pixels[..., 2] > 150) & (pixels[..., 0] < 100)
    assert blue.sum() > 100  # the smoothed line is there
    empty = np.asarray(loss_chart([], 0.99))
    assert not ((empty[..., 2] > 150) & (empty[..., 0] < 100)).any()


# -- Train tab: a tiny run through the Start handler ----------------------------------------------
TINY = {
    "epochs": 1,
    "max_steps": 0,
    "save_every_epochs": 1,
    "preview_every_epochs": 1,
    "resolution": 64,
    "mixed_precision": "no",
    "learning_rate": 1e-3,
    "preview_steps": 2,
    "class_steps": 2,
    "use_8bit_adam": False,
}


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
def test_start_writes_run_checkpoint_into_the_host_folder(host, project, tiny_sd1):
    shutil.copy(tiny_sd1.single_file, host.checkpoint_dir() / "tiny-sd1.safetensors")
    save_concepts(project.concept_file, [Concept(instance_token="sks", num_class_images=2)])
    tab = build(host, train_tab)
    assert "tiny-sd1.safetensors" in tab.titles()
    values = {
        "source": "tiny-sd1.safetensors",
        "run_name": "neeko/test",
        "resume": False,
        "model_config_dir": str(tiny_sd1.diffusers_dir),
        "smoothing": 0.5,
        "config": TINY,
    }
    out = tab.start_binding.call(values)
    status = out[-1]
    assert "dbchar-message-ok" in status, status
    assert "finished at step 2" in status
    # The run name is sanitised: "neeko/test" -> "neeko_test".
    written = sorted(p.name for p in host.checkpoint_dir().glob("neeko_test_*.safetensors"))
    assert written == ["neeko_test_2.safetensors"]
    assert host.refreshes == 1 and host.freed == 1
    loss, chart, checkpoints, gallery = out[:4]
    assert str(host.checkpoint_dir() / "neeko_test_2.safetensors") in checkpoints
    assert loss.startswith("step 1: loss ") and "step 2: loss" in loss and "prior" in loss
    assert chart.size == (WIDTH, HEIGHT)
    assert gallery and all(Path(p).is_file() for p in gallery)
    # Refresh shows the same view; starting again without Resume is refused, nothing lost.
    view = tab.view_values("neeko", "neeko/test", 0.99)
    assert view[2] == checkpoints and view[0] == loss
    again = tab.start_binding.call(values)
    assert "dbchar-message-error" in again[-1]
    assert read_run(project.run_dir("neeko_test")).checkpoints == (
        str(host.checkpoint_dir() / "neeko_test_2.safetensors"),
    )


def test_start_rejects_bad_input_with_messages(host, project):
    tab = build(host, train_tab)
    base = {"source": None, "run_name": "r", "config": TINY}
    assert "concept.json does not exist" in tab.start_binding.call(base)[-1]
    save_concepts(project.concept_file, [Concept(instance_token="sks")])
    assert "Pick the source checkpoint" in tab.start_binding.call(base)[-1]
    missing = tab.start_binding.call({**base, "source_path": "/nowhere/x.safetensors"})[-1]
    assert "was not found" in missing
    assert "Type a run name" in tab.start_binding.call({**base, "run_name": " "})[-1]
    assert host.refreshes == 0


# -- inside the (fake) webui ------------------------------------------------------------------------
def test_start_inside_the_webui_frees_vram_and_lists_the_checkpoint(fake_webui, tmp_path, monkeypatch):
    """The webui wiring (task id, GPU wrapper, vram_freed, refresh) with the loop replaced by a stand-in."""
    import contextlib

    import safetensors.torch
    import torch

    from lib_dbchar.host.webui import WebuiHost
    from lib_dbchar.train import loop
    from lib_dbchar.train.run import CheckpointRecord, RunFolders, TrainResult, write_checkpoint_records
    from lib_dbchar.ui.jobs import DIRECT_TASK_ID

    def tiny_file(path: Path) -> None:
        safetensors.torch.save_file({"x": torch.zeros(1)}, str(path))

    tiny_file(fake_webui.models_dir / "source.safetensors")
    fake_webui.sd_models.list_models()
    host = WebuiHost()
    proj = create_project(host.projects_dir(), "neeko")
    save_concepts(proj.concept_file, [Concept(instance_token="sks")])
    events = []

    @contextlib.contextmanager
    def freed():
        events.append("freed")
        yield
        events.append("restored")

    monkeypatch.setattr(host, "vram_freed", freed)

    def fake_train(spec, job, *, resume=False, on_event=None):
        events.append(("train", spec.name, spec.config.source_checkpoint, spec.device, resume))
        target = spec.checkpoint_dir / f"{spec.name}_2.safetensors"
        tiny_file(target)
        folders = RunFolders(spec.run_dir)
        folders.loss_log.parent.mkdir(parents=True)
        folders.loss_log.write_text('{"step": 1, "loss": 0.5, "lr": 1e-6}\n', encoding="utf-8")
        write_checkpoint_records(folders.checkpoints_record, [CheckpointRecord(str(target), 2, 1)])
        return TrainResult(str(spec.run_dir), "finished", 2, 1, [CheckpointRecord(str(target), 2, 1)])

    monkeypatch.setattr(loop, "train", fake_train)
    with gr.Blocks(analytics_enabled=False):
        task_id = gr.Textbox(visible=False, elem_id=elem_id("task-id"))
        picker = gr.Dropdown(choices=["neeko"], value="neeko", elem_id=elem_id("project"))
        tab = train_tab.render(UiContext(host=host, project=picker, task_id=task_id))
    assert tab.start_binding.gradio_inputs()[0] is task_id
    out = tab.start_binding.call(
        {"source": "source.safetensors", "run_name": "neeko run", "resume": True, "config": TINY}
    )
    assert "finished at step 2" in out[-1], out[-1]
    assert events[0] == "freed" and events[-1] == "restored"
    assert events[1] == ("train", "neeko run", str(fake_webui.models_dir / "source.safetensors"), "cpu", True)
    target = fake_webui.models_dir / "neeko run_2.safetensors"
    assert any(ref.path == target for ref in host.list_checkpoints())
    assert str(target) in out[2] and "step 1: loss 0.5000" in out[0]
    assert DIRECT_TASK_ID in fake_webui.progress.finished_tasks


def test_start_turns_training_errors_and_stops_into_messages(host, project, tiny_sd1, monkeypatch):
    from lib_dbchar.train import loop
    from lib_dbchar.train.run import TrainingStopped, TrainResult

    shutil.copy(tiny_sd1.single_file, host.checkpoint_dir() / "tiny-sd1.safetensors")
    save_concepts(project.concept_file, [Concept(instance_token="sks")])
    tab = build(host, train_tab)
    values = {
        "source": "tiny-sd1.safetensors",
        "run_name": "r",
        "config": {**TINY, "mixed_precision": "fp16"},
    }
    # The core's own validation (fp16 on a CPU) reaches the status box, naming the field.
    status = tab.start_binding.call(values)[-1]
    assert "dbchar-message-error" in status and "mixed_precision" in status and "fp16" in status

    def stopped(spec, job, *, resume=False, on_event=None):
        raise TrainingStopped("training stopped", TrainResult(str(spec.run_dir), "stopped", 3, 1))

    monkeypatch.setattr(loop, "train", stopped)
    status = tab.start_binding.call({**values, "config": TINY})[-1]
    assert "dbchar-message-ok" in status and "stopped at step 3" in status and "Resume" in status
    assert host.refreshes == 2  # a stopped run may have saved a checkpoint: the list is re-read anyway
