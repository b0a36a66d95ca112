"""The Merge tab (transfer wizard): handlers called as gradio calls them, in gradio 3.41 and 4.x.

Inputs are small SD1-keyed files made from the test kit's tiny SD1 model: a source, a "trained"
model 1% away from it, two unrelated targets; the tiny SD2 model stands in for a wrong architecture.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import safetensors.torch
import torch

from lib_dbchar.checkpoint import load_single_file
from lib_dbchar.host.base import CheckpointRef
from lib_dbchar.host.standalone import StandaloneHost
from lib_dbchar.projects import create_project
from lib_dbchar.settings import Settings
from lib_dbchar.ui.compat import gr
from lib_dbchar.ui.context import UiContext
from lib_dbchar.ui.ids import elem_id
from lib_dbchar.ui.merge_wizard import (
    METHOD_LABELS,
    RunInfo,
    descent_text,
    method_from_label,
    output_paths,
    output_stems,
    read_runs,
    suggest_roles,
)
from lib_dbchar.ui.tabs import merge as merge_tab
from tests.kit.sdfiles import nudged, write_models

pytestmark = pytest.mark.filterwarnings("ignore:\\s*on_event is deprecated:DeprecationWarning")

ADD_DIFF = METHOD_LABELS["add_difference"]
WEIGHTED = METHOD_LABELS["weighted_sum"]
LORA = METHOD_LABELS["lora"]


@pytest.fixture(scope="module")
def inputs(tiny_sd1, tmp_path_factory) -> dict[str, dict]:
    """State dicts: the source, the trained model (1 % away) and two unrelated targets (80 % away)."""
    source = load_single_file(tiny_sd1.single_file)
    return {
        "sd15": source,
        "neeko_800": nudged(source, 0.01, 1),
        "anything": nudged(source, 0.8, 2),
        "counterfeit": nudged(source, 0.8, 3),
    }


class CountingHost(StandaloneHost):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.refreshes = 0

    def refresh_checkpoints(self) -> None:
        self.refreshes += 1


@pytest.fixture
def host(tmp_path, inputs, tiny_sd2) -> CountingHost:
    models = tmp_path / "models" / "Stable-diffusion"
    models.mkdir(parents=True)
    write_models(models, inputs)
    (models / "sd2.safetensors").write_bytes(Path(tiny_sd2.single_file).read_bytes())
    return CountingHost(
        models, Settings(projects_dir=str(tmp_path / "projects")), device="cpu", home=tmp_path / "home"
    )


def build_tab(host, project=None) -> tuple[gr.Blocks, merge_tab.MergeTab]:
    with gr.Blocks(analytics_enabled=False) as blocks:
        task_id = gr.Textbox(visible=False, elem_id=elem_id("task-id"))
        ctx = UiContext(host=host, project=project, task_id=task_id)
        tab = merge_tab.render(ctx)
    return blocks, tab


def status_of(outputs) -> str:
    return outputs[-1]


def merge_values(**values) -> dict:
    base = {
        "primary": "neeko_800.safetensors",
        "secondary": ["anything.safetensors"],
        "tertiary": "sd15.safetensors",
        "method": ADD_DIFF,
        "name": "",
        "vae": "",
        "overwrite": False,
        "config": {"add_merge_recipe": False},
    }
    base.update(values)
    return base


# -- the merge handler --------------------------------------------------------------------------------
def test_merge_writes_the_named_file_into_the_checkpoint_dir(host, inputs):
    _, tab = build_tab(host)
    out = tab.merge_binding.call(merge_values(name="neeko on anything"))
    target = host.checkpoint_dir() / "neeko on anything.safetensors"
    assert target.is_file(), status_of(out)
    assert "dbchar-message-ok" in status_of(out)
    assert "Saved 1 result" in status_of(out)
    assert str(target) in out[0]
    assert out[1]["method"] == "add_difference" and out[1]["multiplier"] == 1.0
    assert host.refreshes == 1
    # A + 1 x (B - C), computed in float32 then saved as float16 (fp16 is on by default).
    merged = safetensors.torch.load_file(str(target))
    key = "model.diffusion_model.out.2.weight"
    a, b, c = (inputs[n][key] for n in ("neeko_800", "anything", "sd15"))
    assert merged[key].dtype == torch.float16
    torch.testing.assert_close(merged[key], (a + (b - c)).half())


def test_several_targets_give_several_files(host):
    _, tab = build_tab(host)
    out = tab.merge_binding.call(
        merge_values(name="neeko", secondary=["anything.safetensors", "counterfeit.safetensors"])
    )
    folder = host.checkpoint_dir()
    assert (folder / "neeko-anything.safetensors").is_file(), status_of(out)
    assert (folder / "neeko-counterfeit.safetensors").is_file()
    assert "Saved 2 results" in status_of(out)
    assert [r["secondary"]["name"] for r in out[1]] == ["anything.safetensors", "counterfeit.safetensors"]


def test_without_a_name_the_webui_proposal_is_used(host):
    _, tab = build_tab(host)
    out = tab.merge_binding.call(merge_values())
    assert (host.checkpoint_dir() / "neeko_800 + 1.0(anything - sd15).safetensors").is_file(), status_of(out)


def test_a_name_clash_is_refused_and_nothing_is_overwritten(host):
    _, tab = build_tab(host)
    existing = host.checkpoint_dir() / "taken.safetensors"
    existing.write_bytes(b"the user's file")
    out = tab.merge_binding.call(merge_values(name="taken"))
    assert "dbchar-message-error" in status_of(out)
    assert "taken.safetensors already exists" in status_of(out)
    assert existing.read_bytes() == b"the user's file"
    assert host.refreshes == 0


def test_a_clash_in_the_second_target_refuses_the_whole_batch(host):
    _, tab = build_tab(host)
    (host.checkpoint_dir() / "neeko-counterfeit.safetensors").write_bytes(b"x")
    out = tab.merge_binding.call(
        merge_values(name="neeko", secondary=["anything.safetensors", "counterfeit.safetensors"])
    )
    assert "neeko-counterfeit.safetensors already exists" in status_of(out)
    assert not (host.checkpoint_dir() / "neeko-anything.safetensors").exists()


def test_a_name_that_leaves_the_folder_is_sanitised(host):
    _, tab = build_tab(host)
    out = tab.merge_binding.call(merge_values(name="../../escape"))
    assert not (host.checkpoint_dir().parent.parent / "escape.safetensors").exists()
    written = [p.name for p in host.checkpoint_dir().glob("*escape*")]
    assert written == ["_._escape.safetensors"], status_of(out)


def test_a_different_architecture_gives_the_cores_message(host):
    _, tab = build_tab(host)
    out = tab.merge_binding.call(merge_values(name="broken", secondary=["sd2.safetensors"]))
    status = status_of(out)
    assert "dbchar-message-error" in status
    assert "Stable Diffusion 1.x" in status and "Stable Diffusion 2.x" in status
    assert not (host.checkpoint_dir() / "broken.safetensors").exists()


def test_missing_roles_and_bad_settings_are_messages(host):
    _, tab = build_tab(host)
    assert "Choose the Tertiary model" in status_of(tab.merge_binding.call(merge_values(tertiary=None)))
    assert "at least one Secondary" in status_of(tab.merge_binding.call(merge_values(secondary=[])))
    bad_regex = tab.merge_binding.call(merge_values(config={"discard_weights": "("}))
    assert "discard_weights" in status_of(bad_regex)
    no_vae = tab.merge_binding.call(merge_values(vae="/nowhere/vae.safetensors"))
    assert "Bake in VAE: /nowhere/vae.safetensors does not exist" in status_of(no_vae)


def test_weighted_sum_ignores_the_hidden_tertiary(host, inputs):
    _, tab = build_tab(host)
    out = tab.merge_binding.call(
        merge_values(method=WEIGHTED, name="half", config={"multiplier": 0.5, "fp16": False})
    )
    merged = safetensors.torch.load_file(str(host.checkpoint_dir() / "half.safetensors"))
    key = "model.diffusion_model.out.2.weight"
    expected = 0.5 * inputs["neeko_800"][key] + 0.5 * inputs["anything"][key]
    torch.testing.assert_close(merged[key], expected)
    assert out[1]["tertiary"] is None


def test_lora_goes_to_the_lora_folder(host):
    _, tab = build_tab(host)
    out = tab.merge_binding.call(merge_values(method=LORA, name="neeko", secondary=[], lora={"rank": 4}))
    target = host.checkpoint_dir().parent / "Lora" / "neeko.safetensors"
    assert target.is_file(), status_of(out)
    assert "Saved the LoRA" in out[0]
    keys = safetensors.torch.load_file(str(target)).keys()
    assert any(k.startswith("lora_unet_") for k in keys)


def test_stop_before_the_first_tensor_writes_nothing(host):
    _, tab = build_tab(host)
    host.interrupt()  # a job clears the flag when it starts: stop from the progress callback instead
    calls = []

    def stop_on_progress(*args, **kwargs):
        calls.append(args)
        host.interrupt()

    out = tab.merge_binding.call(merge_values(name="stopped"), progress=stop_on_progress)
    assert "dbchar-message-stopped" in status_of(out)
    assert not list(host.checkpoint_dir().glob("stopped*"))


# -- check --------------------------------------------------------------------------------------------
def test_check_says_the_trained_model_descends_from_its_source(host):
    _, tab = build_tab(host)
    out = tab.check_binding.call(
        {
            "primary": "neeko_800.safetensors",
            "tertiary": "sd15.safetensors",
            "secondary": ["anything.safetensors"],
        }
    )
    assert out[0].startswith("Looks right."), out
    assert "Trained from sd15.safetensors" in out[0]
    assert "dbchar-message-ok" in status_of(out)


def test_check_warns_about_the_wrong_source(host):
    _, tab = build_tab(host)
    out = tab.check_binding.call(
        {
            "primary": "neeko_800.safetensors",
            "tertiary": "anything.safetensors",
            "secondary": ["sd15.safetensors"],
        }
    )
    assert out[0].startswith("Probably the wrong Tertiary model."), out
    assert "Choose as Tertiary the model neeko_800.safetensors was trained from" in out[0]


def test_check_reports_a_different_architecture(host):
    _, tab = build_tab(host)
    out = tab.check_binding.call({"primary": "neeko_800.safetensors", "tertiary": "sd2.safetensors"})
    assert "Stable Diffusion 1.x" in out[0] and "Stable Diffusion 2.x" in out[0]
    assert out[0].startswith("Probably the wrong Tertiary model.")


# -- layout, refresh, pre-filling -----------------------------------------------------------------------
def test_roles_are_named_as_the_guide_names_them(host):
    blocks, tab = build_tab(host)
    assert tab.primary.label == "Primary: your trained model"
    assert tab.secondary.label == "Secondary: the model to move the character onto"
    assert tab.tertiary.label == "Tertiary: the source model you trained from"
    assert tab.method.value == ADD_DIFF
    assert tab.form.components["multiplier"].value == 1.0
    assert tab.form.components["fp16"].value is True
    assert "method" not in tab.form.components
    ids = {c["props"].get("elem_id") for c in blocks.get_config_file()["components"]}
    assert {"dbchar-merge-plan", "dbchar-merge-primary", "dbchar-merge-run", "dbchar-merge-stop"} <= ids


def test_switching_method_shows_what_it_uses(host):
    _, tab = build_tab(host)
    tertiary, lora, multiplier = tab.switch_method(WEIGHTED)
    assert (tertiary["visible"], lora["visible"], multiplier["visible"]) == (False, False, True)
    tertiary, lora, multiplier = tab.switch_method(LORA)
    assert (tertiary["visible"], lora["visible"], multiplier["visible"]) == (True, True, False)
    with pytest.raises(ValueError, match="Method: 'median'"):
        method_from_label("median")


def write_run(project, run: str, source: str | None) -> None:
    folder = project.runs_dir / run
    folder.mkdir(parents=True)
    if source is not None:
        (folder / "run.json").write_text(
            json.dumps({"run_name": run, "config": {"source_checkpoint": source}})
        )


def test_roles_are_prefilled_from_the_projects_runs(host):
    project = create_project(host.projects_dir(), "neeko")
    write_run(project, "neeko", str(host.checkpoint_dir() / "sd15.safetensors"))
    for step in (400, 800):
        safetensors.torch.save_file(
            {"x": torch.zeros(1)}, str(host.checkpoint_dir() / f"neeko_{step}.safetensors")
        )
    picker = gr.Dropdown(choices=["neeko"], value="neeko")
    _, tab = build_tab(host, project=picker)
    assert tab.primary.value == "neeko_800.safetensors"
    assert tab.tertiary.value == "sd15.safetensors"
    # Refresh keeps what the user chose and fills only what is empty.
    primary, secondary, tertiary, note, _vaes = tab.refresh("neeko", "anything.safetensors", ["gone"], None)
    assert primary["value"] == "anything.safetensors"
    assert secondary["value"] == []
    assert tertiary["value"] == "sd15.safetensors"
    assert "newest checkpoint of run neeko" in note
    assert "neeko_400.safetensors" in primary["choices"]


def test_nothing_is_prefilled_without_runs(host):
    _, tab = build_tab(host)
    assert tab.primary.value is None and tab.tertiary.value is None


# -- the pure rules ------------------------------------------------------------------------------------
def stems(custom, method, secondaries, tertiary, m):
    return output_stems(
        custom,
        method,
        primary=Path("a.safetensors"),
        secondaries=secondaries,
        tertiary=tertiary,
        multiplier=m,
    )


def test_output_stems():
    b1, b2, c = Path("b1.ckpt"), Path("b2.safetensors"), Path("c.safetensors")
    assert stems("", "add_difference", [b1], c, 1.0) == ["a + 1.0(b1 - c)"]
    assert stems("", "weighted_sum", [b1], None, 0.3) == ["0.7(a) + 0.3(b1)"]
    assert stems("x.safetensors", "add_difference", [b1], c, 1.0) == ["x"]
    assert stems("x", "add_difference", [b1, b2], c, 1.0) == ["x-b1", "x-b2"]
    assert stems("", "lora", [], c, 1.0) == ["a-lora"]


def test_output_paths_refuse_collisions(tmp_path):
    assert output_paths(tmp_path, ["x", "y"]) == [tmp_path / "x.safetensors", tmp_path / "y.safetensors"]
    with pytest.raises(FileExistsError, match=r"Two results would both be saved as X\.safetensors"):
        output_paths(tmp_path, ["x", "X"])
    (tmp_path / "y.safetensors").write_bytes(b"")
    with pytest.raises(FileExistsError, match=r"y\.safetensors already exists"):
        output_paths(tmp_path, ["y"])
    assert output_paths(tmp_path, ["y"], overwrite=True) == [tmp_path / "y.safetensors"]


def test_suggestion_takes_the_newest_file_then_the_highest_step(tmp_path):
    old, new = tmp_path / "r_900.safetensors", tmp_path / "r_100.safetensors"
    for path, mtime in ((old, 1000), (new, 2000)):
        path.write_bytes(b"")
        import os

        os.utime(path, (mtime, mtime))
    refs = [
        CheckpointRef("r_900", old),
        CheckpointRef("r_100 [abcd]", new),
        CheckpointRef("other_5", tmp_path / "o"),
    ]
    found = suggest_roles(refs, [RunInfo("r", "missing.safetensors")])
    assert found.primary == "r_100 [abcd]" and found.tertiary is None
    assert "missing.safetensors is not among the checkpoints" in found.note
    assert suggest_roles(refs, [RunInfo("q", "")]).primary is None


def test_read_runs_survives_a_damaged_record(tmp_path):
    (tmp_path / "good").mkdir()
    (tmp_path / "good" / "run.json").write_text(json.dumps({"config": {"source_checkpoint": "sd15"}}))
    (tmp_path / "torn").mkdir()
    (tmp_path / "torn" / "run.json").write_text("{not json")
    assert read_runs(tmp_path) == [RunInfo("good", "sd15"), RunInfo("torn", "")]
    assert read_runs(tmp_path / "none") == []


def test_descent_text_in_plain_words():
    class Report:
        verdict, message = "unclear", "Not clearly apart (distance 0.1)."

    text = descent_text(Report(), "a.safetensors", "c.safetensors")
    assert text == (
        "Not sure. Not clearly apart (distance 0.1). "
        "The check cannot tell; if you know the source model, go ahead."
    )


# -- inside the (fake) webui ------------------------------------------------------------------------------
def test_merge_inside_the_webui_lands_in_its_checkpoint_list(fake_webui, inputs):
    from lib_dbchar.host.webui import WebuiHost

    for name in ("sd15", "neeko_800", "anything"):
        safetensors.torch.save_file(inputs[name], str(fake_webui.models_dir / f"{name}.safetensors"))
    fake_webui.sd_models.list_models()
    webui_host = WebuiHost()
    _, tab = build_tab(webui_host)
    assert tab.merge_binding.gradio_inputs()[0] is tab.ctx.task_id  # the webui's task-id convention
    out = tab.merge_binding.call(merge_values(name="neeko-on-anything"))
    assert "dbchar-message-ok" in status_of(out), status_of(out)
    target = fake_webui.models_dir / "neeko-on-anything.safetensors"
    assert target.is_file()
    assert any(ref.path == target for ref in webui_host.list_checkpoints())
    assert any("neeko-on-anything" in choice for choice in out[2]["choices"])
