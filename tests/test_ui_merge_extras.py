"""The Merge tab's host look-ups, the hand-off from "Pick a checkpoint" and the preview pictures.

Handlers are called as gradio calls them. Models are small SD1-keyed files made from the test
kit's tiny SD1 model; the preview draws them for real (64 px, 2 steps) through
:func:`lib_dbchar.pick.render.open_renderer`, given the tiny model's diffusers folder for its configs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import safetensors
import safetensors.torch
import torch

from lib_dbchar.checkpoint import load_single_file
from lib_dbchar.concept import Concept, save_concepts
from lib_dbchar.errors import DbcharError
from lib_dbchar.host.standalone import StandaloneHost
from lib_dbchar.pick.render import open_renderer
from lib_dbchar.projects import create_project
from lib_dbchar.settings import Settings
from lib_dbchar.train.sampling import SampleRequest
from lib_dbchar.ui import compat
from lib_dbchar.ui.compat import gr
from lib_dbchar.ui.context import UiContext
from lib_dbchar.ui.ids import elem_id
from lib_dbchar.ui.merge_wizard import (
    METHOD_LABELS,
    NO_VAE,
    Preview,
    PreviewSettings,
    chosen_vae,
    parse_handoff,
    preview_prompts,
    vae_choices,
)
from lib_dbchar.ui.tabs import merge as merge_tab
from tests.kit.sdfiles import nudged, write_models

pytestmark = pytest.mark.filterwarnings("ignore:\\s*on_event is deprecated:DeprecationWarning")

ADD_DIFF = METHOD_LABELS["add_difference"]
LORA = METHOD_LABELS["lora"]
VAE_KEY = "first_stage_model.decoder.conv_out.weight"


@pytest.fixture(scope="module")
def inputs(tiny_sd1) -> dict[str, dict]:
    """The source, the trained model (1 % away) and two unrelated targets (80 % away)."""
    source = load_single_file(tiny_sd1.single_file)
    return {
        "sd15": source,
        "neeko_800": nudged(source, 0.01, 1),
        "anything": nudged(source, 0.8, 2),
        "counterfeit": nudged(source, 0.8, 3),
    }


@pytest.fixture(scope="module")
def a_vae(inputs) -> dict:
    """A VAE file's tensors: the source's first-stage weights, changed."""
    return {
        k.removeprefix("first_stage_model."): v + 1.0
        for k, v in inputs["sd15"].items()
        if k.startswith("first_stage_model.")
    }


class RecordingHost(StandaloneHost):
    """A standalone host that records refreshes and when the GPU is handed over."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.refreshes = 0
        self.freed = False
        self.events: list[str] = []

    def refresh_checkpoints(self) -> None:
        self.refreshes += 1

    @contextlib.contextmanager
    def vram_freed(self):
        self.events.append("free")
        self.freed = True
        try:
            yield
        finally:
            self.freed = False
            self.events.append("restore")


@pytest.fixture
def host(tmp_path, inputs) -> RecordingHost:
    models = tmp_path / "models" / "Stable-diffusion"
    write_models(models, inputs)
    return RecordingHost(
        models, Settings(projects_dir=str(tmp_path / "projects")), device="cpu", home=tmp_path / "home"
    )


def build_tab(host, project=None, with_handoff=True):
    with gr.Blocks(analytics_enabled=False) as blocks:
        task_id = gr.Textbox(visible=False, elem_id=elem_id("task-id"))
        handoff = gr.Textbox(value="", visible=False) if with_handoff else None
        ctx = UiContext(host=host, project=project, task_id=task_id, merge_handoff=handoff)
        tab = merge_tab.render(ctx)
    return blocks, tab


def merge_values(**values) -> dict:
    base = {
        "primary": "neeko_800.safetensors",
        "secondary": ["anything.safetensors"],
        "tertiary": "sd15.safetensors",
        "method": ADD_DIFF,
        "name": "",
        "vae_choice": NO_VAE,
        "vae": "",
        "overwrite": False,
        "config": {"add_merge_recipe": False},
        "preview": {"enabled": False},
    }
    base.update(values)
    return base


def status_of(outputs) -> str:
    return outputs[-1]


# -- "Bake in VAE" from the host's list ---------------------------------------------------------------
def test_vae_dropdown_lists_the_hosts_vaes_and_bakes_the_chosen_one(host, inputs, a_vae):
    vae_folder = host.checkpoint_dir().parent / "VAE"
    vae_folder.mkdir()
    safetensors.torch.save_file(a_vae, str(vae_folder / "kl-f8-anime.safetensors"))
    _, tab = build_tab(host)
    assert tab.vae_choice.choices in (
        ["None", "kl-f8-anime.safetensors"],
        [("None", "None"), ("kl-f8-anime.safetensors", "kl-f8-anime.safetensors")],  # gradio 4
    )
    out = tab.merge_binding.call(
        merge_values(name="baked", vae_choice="kl-f8-anime.safetensors", config={"fp16": False})
    )
    assert "dbchar-message-ok" in status_of(out), status_of(out)
    merged = safetensors.torch.load_file(str(host.checkpoint_dir() / "baked.safetensors"))
    torch.testing.assert_close(merged[VAE_KEY], a_vae[VAE_KEY.removeprefix("first_stage_model.")])
    assert not torch.equal(merged[VAE_KEY], inputs["neeko_800"][VAE_KEY])


def test_vae_choice_and_path_rules(tmp_path):
    listed = tmp_path / "VAE" / "a.vae.pt"
    listed.parent.mkdir()
    listed.write_bytes(b"x")
    other = tmp_path / "elsewhere.safetensors"
    other.write_bytes(b"x")
    assert vae_choices([listed]) == ["None", "a.vae.pt"]
    assert chosen_vae("None", "", [listed]) is None
    assert chosen_vae("", "  ", [listed]) is None
    assert chosen_vae("a.vae.pt", "", [listed]) == listed
    assert chosen_vae(NO_VAE, str(other), [listed]) == other
    with pytest.raises(DbcharError, match=r"choose a\.vae\.pt or type a path"):
        chosen_vae("a.vae.pt", str(other), [listed])
    with pytest.raises(DbcharError, match=r"gone\.pt is not among the VAE files any more; press Refresh"):
        chosen_vae("gone.pt", "", [listed])
    with pytest.raises(DbcharError, match=r"Bake in VAE: /nowhere/v\.pt does not exist"):
        chosen_vae(None, "/nowhere/v.pt", [listed])


def test_lora_goes_to_the_hosts_lora_dir(tmp_path, inputs):
    models = tmp_path / "mymodels"
    write_models(models, inputs)
    host = RecordingHost(models, Settings(projects_dir=str(tmp_path / "p")), device="cpu", home=tmp_path)
    _, tab = build_tab(host)
    out = tab.merge_binding.call(merge_values(method=LORA, name="neeko", secondary=[], lora={"rank": 4}))
    assert (models / "Lora" / "neeko.safetensors").is_file(), status_of(out)
    assert "Lora/neeko.safetensors" not in [r.title for r in host.list_checkpoints()]


# -- inside the (fake) webui: --lora-dir and the webui's own hashes ---------------------------------------
def test_webui_merge_records_the_hashes_the_webui_knows(fake_webui, inputs, tmp_path):
    from lib_dbchar.host.webui import WebuiHost

    paths = write_models(fake_webui.models_dir, {n: inputs[n] for n in ("sd15", "neeko_800", "anything")})
    # The webui hashed sd15 earlier: its cache vouches for this value (as long as the file is unchanged).
    planted = "5d" * 32
    fake_webui.module("cache").cache("hashes")["checkpoint/sd15.safetensors"] = {
        "mtime": os.path.getmtime(paths["sd15"]),
        "sha256": planted,
    }
    fake_webui.sd_models.list_models()
    host = WebuiHost()
    assert host.known_hashes() == {str(paths["sd15"]): planted}
    _, tab = build_tab(host)
    out = tab.merge_binding.call(merge_values(name="transfer", config={"add_merge_recipe": True}))
    assert "dbchar-message-ok" in status_of(out), status_of(out)
    with safetensors.safe_open(str(fake_webui.models_dir / "transfer.safetensors"), "pt") as f:
        metadata = f.metadata()
    models = json.loads(metadata["sd_merge_models"])
    sha = {n: hashlib.sha256(paths[n].read_bytes()).hexdigest() for n in ("neeko_800", "anything")}
    # What the webui's merger would write: its cached hash for sd15, computed ones for the others.
    assert set(models) == {sha["neeko_800"], sha["anything"], planted}
    assert models[planted]["name"] == "sd15.safetensors"
    recipe = json.loads(metadata["sd_merge_recipe"])
    assert recipe["tertiary_model_hash"] == planted
    assert recipe["primary_model_hash"] == sha["neeko_800"]


def test_webui_lora_lands_in_the_lora_dir_flag(fake_webui, inputs, tmp_path):
    from lib_dbchar.host.webui import WebuiHost

    write_models(fake_webui.models_dir, {n: inputs[n] for n in ("sd15", "neeko_800")})
    fake_webui.sd_models.list_models()
    fake_webui.shared.cmd_opts.lora_dir = str(tmp_path / "loras")
    _, tab = build_tab(WebuiHost())
    out = tab.merge_binding.call(merge_values(method=LORA, name="neeko", secondary=[], lora={"rank": 4}))
    assert (tmp_path / "loras" / "neeko.safetensors").is_file(), status_of(out)


# -- the hand-off from "Pick a checkpoint" --------------------------------------------------------------
def handoff(checkpoint, source="", run="neeko") -> str:
    return json.dumps({"checkpoint": str(checkpoint), "run": run, "source": str(source)}, sort_keys=True)


def test_handoff_fills_primary_and_tertiary(host):
    _, tab = build_tab(host)
    folder = host.checkpoint_dir()
    primary, tertiary, note, status = tab.receive_handoff(
        handoff(folder / "neeko_800.safetensors", folder / "sd15.safetensors")
    )
    assert primary["value"] == "neeko_800.safetensors"
    assert tertiary["value"] == "sd15.safetensors"
    assert note == (
        "From Pick a checkpoint: Primary = neeko_800.safetensors of run neeko; "
        "Tertiary = sd15.safetensors, the model it was trained from."
    )
    assert "Received neeko_800.safetensors" in status and "dbchar-message-ok" in status
    assert host.refreshes == 0  # both were listed: no rescan


def test_handoff_of_a_file_outside_the_list_is_used_by_path(host, tmp_path, inputs):
    run_ckpt = write_models(tmp_path / "runs" / "neeko", {"neeko_1200": inputs["neeko_800"]})["neeko_1200"]
    _, tab = build_tab(host)
    primary, tertiary, note, _ = tab.receive_handoff(handoff(run_ckpt, tmp_path / "gone.safetensors"))
    assert host.refreshes == 1  # rescanned once before falling back to the path
    assert primary["value"] == str(run_ckpt) and str(run_ckpt) in primary["choices"]
    assert "choices" in tertiary and "value" not in tertiary  # Tertiary left as the user had it
    assert f"neeko_1200.safetensors is not in the checkpoint list; it is used from {run_ckpt}." in note
    assert (
        f"Its source model {tmp_path / 'gone.safetensors'} was not found: choose the Tertiary model." in note
    )
    # The merge resolves that path, and Refresh keeps it while the file exists.
    assert tab.resolve(primary["value"], "Primary") == run_ckpt
    refreshed = tab.refresh(primary["value"], [], "sd15.safetensors")
    assert refreshed[0]["value"] == str(run_ckpt)


def test_handoff_refreshes_the_webui_list_when_the_checkpoint_is_new(fake_webui, inputs):
    from lib_dbchar.host.webui import WebuiHost

    paths = write_models(fake_webui.models_dir, {"sd15": inputs["sd15"]})
    fake_webui.sd_models.list_models()
    host = WebuiHost()
    _, tab = build_tab(host)
    # Saved by the run after the webui scanned its folder.
    new = write_models(fake_webui.models_dir, {"neeko_800": inputs["neeko_800"]})["neeko_800"]
    primary, tertiary, note, _ = tab.receive_handoff(handoff(new, paths["sd15"]))
    assert primary["value"] == "neeko_800.safetensors"
    assert "neeko_800.safetensors" in fake_webui.sd_models.checkpoints_list
    assert tertiary["value"] == "sd15.safetensors"
    assert "not in the checkpoint list" not in note


def test_handoff_empty_or_garbled(host):
    _, tab = build_tab(host)
    nothing = tab.receive_handoff("")
    assert all(update == compat.no_change() for update in nothing)
    *unchanged, status = tab.receive_handoff("{not json")
    assert all(update == compat.no_change() for update in unchanged)
    assert "dbchar-message-error" in status and "not understood" in status
    assert parse_handoff('{"checkpoint": "a.safetensors"}').source == ""
    with pytest.raises(ValueError, match="not understood"):
        parse_handoff('{"run": "x"}')


def test_the_handoff_box_change_is_wired_to_the_roles(host):
    blocks, tab = build_tab(host)
    handoff_id = tab.ctx.merge_handoff._id
    wired = [
        dep
        for dep in blocks.config["dependencies"]
        if any(t == handoff_id or (isinstance(t, list | tuple) and t[0] == handoff_id) for t in _targets(dep))
    ]
    assert len(wired) == 1
    outputs = wired[0]["outputs"]
    assert outputs == [tab.primary._id, tab.tertiary._id, tab.note._id, tab.status._id]


def _targets(dep):
    # gradio 3.41: "targets": [id]; gradio 4: "targets": [[id, "change"]]
    return dep.get("targets", [])


# -- the preview -------------------------------------------------------------------------------------
@pytest.fixture
def preview_tab(host, tiny_sd1):
    _, tab = build_tab(host)
    opened = []

    def opener(**kwargs):
        # Drawn inside the job: the host's model is off the GPU and its GPU lock is held.
        opened.append((host.freed, host._lock.locked(), kwargs["device"], kwargs["dtype"]))
        return open_renderer(model_folder=tiny_sd1.diffusers_dir, **kwargs)

    tab.open_renderer = opener
    tab.opened = opened
    return tab


PREVIEW = {"enabled": True, "prompt": "sks, red hair", "seed": 7, "steps": 2, "size": 64}


def test_preview_draws_each_result_beside_its_secondary(preview_tab, host, tiny_sd1):
    out = preview_tab.merge_binding.call(
        merge_values(
            name="neeko",
            secondary=["anything.safetensors", "counterfeit.safetensors"],
            preview=PREVIEW,
        )
    )
    assert "dbchar-message-ok" in status_of(out), status_of(out)
    gallery = out[-2]
    assert [caption for _, caption in gallery] == [
        "Secondary: anything",
        "Result: neeko-anything",
        "Secondary: counterfeit",
        "Result: neeko-counterfeit",
    ]
    assert all(image.size == (64, 64) for image, _ in gallery)
    assert preview_tab.opened == [(True, True, "cpu", None)]  # one renderer, opened inside vram_freed
    assert host.events == ["free", "restore"]
    assert "Preview: 2 results beside the Secondary model, seed 7, prompt: sks, red hair" in out[0]
    # Each picture is what that file draws with this prompt and seed, and the files differ.
    request = SampleRequest(("sks, red hair",), ("",), (7,), 2, 7.0, 64)
    folder = host.checkpoint_dir()
    with open_renderer(
        model_folder=tiny_sd1.diffusers_dir, checkpoint=folder / "neeko-anything.safetensors"
    ) as r:
        expected = np.asarray(r.sample(request)[0])
    assert np.array_equal(np.asarray(gallery[1][0]), expected)
    assert not np.array_equal(np.asarray(gallery[0][0]), np.asarray(gallery[1][0]))


class FakeRenderer:
    """Records what it is asked to draw; draws grey squares. ``on_sample`` runs at each picture."""

    def __init__(self, on_sample=None):
        self.requests = []
        self.loaded = []
        self.on_sample = on_sample or (lambda: None)

    def load(self, path):
        self.loaded.append(Path(path).name)

    def sample(self, request):
        from PIL import Image

        self.requests.append(request)
        self.on_sample()
        return [Image.new("RGB", (request.size, request.size), (128, 128, 128))]

    def close(self):
        pass


def test_preview_takes_the_concepts_sample_prompt(host):
    project = create_project(host.projects_dir(), "neeko")
    concept = Concept(
        instance_token="sks", sample_prompt="sks, 1girl, smile", sample_negative_prompt="lowres"
    )
    save_concepts(project.concept_file, [concept])
    picker = gr.Dropdown(choices=["neeko"], value="neeko")
    _, tab = build_tab(host, project=picker)
    renderer = FakeRenderer()
    tab.open_renderer = lambda **kwargs: renderer
    out = tab.merge_binding.call(merge_values(name="from-concept", preview={**PREVIEW, "prompt": ""}))
    assert "dbchar-message-ok" in status_of(out), status_of(out)
    assert [(r.prompts, r.negative, r.seeds, r.steps, r.size) for r in renderer.requests] == [
        (("sks, 1girl, smile",), ("lowres",), (7,), 2, 64)
    ] * 2
    assert renderer.loaded == ["from-concept.safetensors"]  # the Secondary was opened, the result loaded
    # A typed prompt wins; without a concept there is nothing to fall back on.
    assert preview_prompts(PreviewSettings(enabled=True, prompt="typed"), concept)[0] == "typed"
    with pytest.raises(DbcharError, match="Preview prompt: type one"):
        preview_prompts(PreviewSettings(enabled=True), None)


def test_preview_without_a_prompt_is_refused_before_merging(host):
    _, tab = build_tab(host)
    out = tab.merge_binding.call(merge_values(name="nope", preview={"enabled": True, "prompt": ""}))
    assert "Preview prompt: type one" in status_of(out)
    assert not (host.checkpoint_dir() / "nope.safetensors").exists()


def test_a_preview_that_cannot_be_drawn_keeps_the_merge(host):
    _, tab = build_tab(host)

    def refusing(**kwargs):
        raise DbcharError("anything.safetensors is an sdxl model; the grid draws SD 1.x/2.x.")

    tab.open_renderer = refusing
    out = tab.merge_binding.call(merge_values(name="kept", preview=PREVIEW))
    assert (host.checkpoint_dir() / "kept.safetensors").is_file()
    assert "dbchar-message-ok" in status_of(out) and "preview was not finished" in status_of(out)
    assert "No preview: anything.safetensors is an sdxl model" in out[0]
    assert out[-2] == []
    assert host.events == ["free", "restore"]  # the host's model went back despite the failure


def test_stopping_the_preview_keeps_what_was_drawn(host):
    _, tab = build_tab(host)
    # The user presses Stop while the first picture is drawn.
    tab.open_renderer = lambda **kwargs: FakeRenderer(on_sample=host.interrupt)
    out = tab.merge_binding.call(merge_values(name="stopped", preview=PREVIEW))
    assert (host.checkpoint_dir() / "stopped.safetensors").is_file()
    assert [caption for _, caption in out[-2]] == ["Secondary: anything"]
    assert "Stopped before the end" in out[0]


def test_lora_has_no_preview(host):
    _, tab = build_tab(host)
    out = tab.merge_binding.call(
        merge_values(method=LORA, name="neeko", secondary=[], lora={"rank": 4}, preview=PREVIEW)
    )
    assert "No preview: a LoRA file is drawn with a model in txt2img" in out[0]


def test_preview_settings_are_validated():
    with pytest.raises(ValueError, match=r"PreviewSettings\.size: 100 must be a multiple of 8"):
        PreviewSettings(size=100)
    preview = Preview("p", "n", 3, images=["img"], captions=["Result: x"], stopped=True)
    assert preview.to_dict() == {
        "prompt": "p",
        "negative": "n",
        "seed": 3,
        "captions": ["Result: x"],
        "stopped": True,
        "problem": "",
    }
    assert json.loads(json.dumps(preview.to_dict()))["captions"] == ["Result: x"]


def test_dtype_for_the_renderer():
    assert merge_tab.torch_dtype("cpu", "float16") is None
    assert merge_tab.torch_dtype("cuda", "float32") is None
    assert merge_tab.torch_dtype("cuda", "float16") is torch.float16
