"""The training loop on the kit's tiny SD1/SD2 models, on CPU.

Class images, checkpoints, previews, logs, exact resume, the NaN guard and the CLI.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lib_dbchar.checkpoint import ldm_to_diffusers, load_single_file, read_metadata, save_single_file
from lib_dbchar.cli import main
from lib_dbchar.concept import Concept, save_concepts
from lib_dbchar.errors import JobStopped, TargetExists
from lib_dbchar.jobs import JobContext
from lib_dbchar.train.classes import generate_class_images
from lib_dbchar.train.config import TrainConfig
from lib_dbchar.train.data import load_concept_data
from lib_dbchar.train.guards import TrainingDiverged
from lib_dbchar.train.loop import _make_sampler, train
from lib_dbchar.train.model import load_components, prepare_working_model
from lib_dbchar.train.run import RunSpec, TrainingStopped, read_loss_log
from lib_dbchar.train.state import load_state
from lib_dbchar.train.tbevents import read_scalars

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

CONCEPT = Concept(instance_token="sks", num_class_images=4)


def make_project(root: Path, pictures: int = 2) -> Path:
    """A project with ``pictures`` 64 px pictures and captions that mention the token."""
    rng = np.random.default_rng(0)
    (root / "dataset").mkdir(parents=True)
    for i in range(pictures):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(
            root / "dataset" / f"img{i}.png"
        )
        (root / "dataset" / f"img{i}.txt").write_text(f"1girl, sks, red hair, pose{i}", encoding="utf-8")
    return root


def tiny_config(tiny, **changes) -> TrainConfig:
    values = {
        "source_checkpoint": str(tiny.single_file),
        "epochs": 3,
        "max_steps": 0,
        "save_every_epochs": 1,
        "preview_every_epochs": 2,
        "resolution": 64,
        "mixed_precision": "no",
        "learning_rate": 1e-3,
        "preview_steps": 2,
        "class_steps": 2,
        **changes,
    }
    return TrainConfig(**values)


def spec_for(project, tiny, name, config, concept=CONCEPT) -> RunSpec:
    return RunSpec(
        project,
        name,
        config,
        (concept,),
        project / "models",
        model_config_dir=tiny.diffusers_dir,
        min_8bit_size=0,
    )


def _uint8_tensors(obj) -> int:
    if isinstance(obj, torch.Tensor):
        return int(obj.dtype == torch.uint8)
    if isinstance(obj, dict):
        return sum(_uint8_tensors(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(_uint8_tensors(v) for v in obj)
    return 0


def test_class_images_generation_is_resumable_and_exact(tiny_sd1, tmp_path):
    config = tiny_config(tiny_sd1)
    model = prepare_working_model(
        tiny_sd1.single_file, tmp_path / "working", config_dir=tiny_sd1.diffusers_dir
    )
    parts = load_components(model)
    sampler = _make_sampler(config, parts, torch.device("cpu"))
    results = {}
    for name, stop_after in (("straight", None), ("stopped", 2)):
        project = make_project(tmp_path / name)
        data, _ = load_concept_data([CONCEPT], project)
        done = []
        ctx = JobContext(
            progress=lambda p, d=done: d.append(p), should_stop=lambda d=done, n=stop_after: n and len(d) >= n
        )
        if stop_after:
            with pytest.raises(JobStopped):
                generate_class_images(data, sampler, config, ctx=ctx)
            assert len(list((project / "classes" / "classifiers_0").glob("*.txt"))) == 2
        results[name] = generate_class_images(data, sampler, config)
    folder = tmp_path / "straight" / "classes" / "classifiers_0"
    names = sorted(p.name for p in folder.glob("class_*.png"))
    assert names == [f"class_{n:05d}.png" for n in range(4)]
    for name in names:
        other = tmp_path / "stopped" / "classes" / "classifiers_0" / name
        assert np.array_equal(np.asarray(Image.open(folder / name)), np.asarray(Image.open(other)))
        prompt = (folder / name).with_suffix(".txt").read_text(encoding="utf-8")
        assert prompt.startswith("1girl, red hair, pose") and "sks" not in prompt  # token stripped
        assert "Seed: " in Image.open(folder / name).text["parameters"]
    assert len(results["stopped"][0].generated) == 2 and results["stopped"][0].existing == 2
    # Enough images exist: nothing is regenerated.
    assert (
        generate_class_images(load_concept_data([CONCEPT], tmp_path / "straight")[0], sampler, config)[
            0
        ].generated
        == []
    )


def test_six_step_run_with_prior_8bit_adam_and_text_encoder(tiny_sd1, tmp_path):
    project = make_project(tmp_path / "project")
    config = tiny_config(tiny_sd1, use_8bit_adam=True, train_text_encoder=True)
    events = []
    result = train(spec_for(project, tiny_sd1, "hero", config), on_event=events.append)

    assert (result.status, result.step, result.epoch, result.optimizer) == ("finished", 6, 3, "AdamW8bit")
    # Class images were made first (4 of them, per the concept).
    assert len(list((project / "classes" / "classifiers_0").glob("class_*.txt"))) == 4
    # A checkpoint every epoch (2 steps), named <run>_<step>, in the checkpoint folder.
    models = project / "models"
    assert [c.step for c in result.checkpoints] == [2, 4, 6]
    assert sorted(p.name for p in models.glob("*.safetensors")) == [
        f"hero_{s}.safetensors" for s in (2, 4, 6)
    ]
    assert json.loads((project / "runs" / "hero" / "checkpoints.json").read_text())[-1]["step"] == 6
    # Previews every 2 epochs (step 4) and at the end (step 6), with fixed seeds.
    assert sorted(Path(p).name for p in result.previews) == ["hero_000004_c0_1.png", "hero_000006_c0_1.png"]
    assert [e.step for e in events if e.kind == "preview"] == [4, 6]
    assert [e.step for e in events if e.kind == "step"] == [1, 2, 3, 4, 5, 6]

    # The last checkpoint holds the trained weights (fp16) of the saved state, text encoder included.
    state = load_state(project / "runs" / "hero" / "state" / "state.pt")
    assert state["status"] == "finished" and state["counters"]["step"] == 6
    assert _uint8_tensors(state["optimizer"]) > 0  # 8-bit optimizer state really in use
    saved = ldm_to_diffusers(load_single_file(models / "hero_6.safetensors"), kind="sd1")
    assert all(torch.equal(saved.unet[k], v.half()) for k, v in state["unet"].items())
    te_state = {
        k if k.startswith("text_model.") else f"text_model.{k}": v for k, v in state["text_encoder"].items()
    }
    assert all(
        torch.equal(saved.text_encoder[k], te_state[k].half()) for k in te_state if k in saved.text_encoder
    )
    source = ldm_to_diffusers(load_single_file(tiny_sd1.single_file), kind="sd1")
    key = "text_model.encoder.layers.0.mlp.fc1.weight"
    assert not torch.equal(
        saved.text_encoder[key], source.text_encoder[key].half()
    )  # the text encoder trained
    recipe = json.loads(read_metadata(models / "hero_6.safetensors")["dbchar.recipe"])
    assert (
        recipe["step"] == 6
        and recipe["config"]["learning_rate"] == 1e-3
        and recipe["source"] == "tiny-sd1.safetensors"
    )

    # Loss log and TensorBoard scalars under logging/dreambooth.
    log = read_loss_log(project / "runs" / "hero" / "logging" / "loss.jsonl")
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5, 6]
    assert all(np.isfinite(r["loss"]) and "prior_loss" in r for r in log)
    scalars = read_scalars(project / "runs" / "hero" / "logging" / "dreambooth")
    assert [s for s, _ in scalars["loss"]] == [1, 2, 3, 4, 5, 6]
    assert [v for _, v in scalars["loss"]] == pytest.approx([r["loss"] for r in log])
    assert set(scalars) == {"loss", "loss_instance", "loss_prior", "lr"}


def test_stop_at_step_3_and_resume_equals_an_uninterrupted_run(tiny_sd2, tmp_path):
    project = make_project(tmp_path / "project")
    concept = Concept(instance_token="sks", num_class_images=4, shuffle_tags=True, caption_dropout=0.3)
    config = tiny_config(
        tiny_sd2, use_8bit_adam=True, offset_noise=0.05, min_snr_gamma=5.0,
        preview_every_epochs=0, save_every_epochs=3,
    )  # fmt: skip
    straight = train(spec_for(project, tiny_sd2, "straight", config, concept))

    steps = []
    ctx = JobContext(progress=lambda p: steps.append(p) if p.text.startswith("Step") else None,
                     should_stop=lambda: len(steps) >= 3)  # fmt: skip
    spec = spec_for(project, tiny_sd2, "resumed", config, concept)
    with pytest.raises(TrainingStopped) as stopped:
        train(spec, ctx)
    assert (stopped.value.result.status, stopped.value.result.step) == ("stopped", 3)
    assert (project / "runs" / "resumed" / "state" / "state.pt").is_file()
    assert (project / "models" / "resumed_3.safetensors").is_file()  # save_on_stop
    with pytest.raises(TargetExists, match="resume it"):
        train(spec)
    resumed = train(spec, resume=True)

    assert resumed.step == straight.step == 6
    a = load_state(Path(straight.state_file))
    b = load_state(Path(resumed.state_file))
    assert all(torch.equal(a["unet"][k], b["unet"][k]) for k in a["unet"])
    losses = [r["loss"] for r in read_loss_log(Path(straight.loss_log))]
    assert [r["loss"] for r in read_loss_log(Path(resumed.loss_log))] == losses
    assert [c.step for c in resumed.checkpoints] == [3, 6]
    # The v-prediction target was used (SD2-v): recorded in the checkpoint.
    assert read_metadata(project / "models" / "resumed_6.safetensors")["modelspec.prediction_type"] == "v"
    # Changing what shapes the optimizer state is refused on resume, naming the field.
    with pytest.raises(ValueError, match=r"TrainConfig\.use_8bit_adam: was True when the state was saved"):
        train(spec_for(project, tiny_sd2, "resumed", tiny_config(tiny_sd2, use_8bit_adam=False)), resume=True)


def test_optimizer_in_backward_trains_and_resumes_exactly(tiny_sd1, tmp_path):
    project = make_project(tmp_path / "project")
    config = tiny_config(
        tiny_sd1, epochs=2, optimizer_in_backward=True, use_8bit_adam=False, prior_preservation=False,
        train_text_encoder=True,
        gradient_checkpointing=True, preview_every_epochs=0, save_every_epochs=2,
    )  # fmt: skip
    straight = train(spec_for(project, tiny_sd1, "straight", config))
    assert straight.optimizer == "AdamW, stepped in backward"
    steps = []
    ctx = JobContext(progress=lambda p: steps.append(p) if p.text.startswith("Step") else None,
                     should_stop=lambda: len(steps) >= 1)  # fmt: skip
    spec = spec_for(project, tiny_sd1, "resumed", config)
    with pytest.raises(TrainingStopped):
        train(spec, ctx)
    resumed = train(spec, resume=True)
    a, b = load_state(Path(straight.state_file)), load_state(Path(resumed.state_file))
    assert all(torch.equal(a["unet"][k], b["unet"][k]) for k in a["unet"])
    assert all(torch.equal(a["text_encoder"][k], b["text_encoder"][k]) for k in a["text_encoder"])
    source = ldm_to_diffusers(load_single_file(tiny_sd1.single_file), kind="sd1")
    key = "conv_in.weight"
    assert not torch.equal(a["unet"][key], source.unet[key])  # it did train


def test_planted_nan_stops_with_step_cause_and_fix(tiny_sd1, tmp_path):
    state_dict = load_single_file(tiny_sd1.single_file)
    state_dict["model.diffusion_model.out.2.bias"][0] = float("nan")
    source = save_single_file(
        state_dict, tmp_path / "broken.safetensors", read_metadata(tiny_sd1.single_file)
    )
    project = make_project(tmp_path / "project")
    config = tiny_config(tiny_sd1, source_checkpoint=str(source), prior_preservation=False)
    with pytest.raises(TrainingDiverged) as error:
        train(spec_for(project, tiny_sd1, "nan", config))
    text = str(error.value)
    assert "The loss became NaN/inf at step 1 (epoch 1)" in text
    assert "weights contain NaN/inf" in text and "Fix: train from another source checkpoint" in text
    assert not (project / "runs" / "nan" / "state" / "state.pt").exists()
    assert not list(project.glob("models/*.safetensors"))


def test_cli_plans_and_trains_a_project(tiny_sd1, tmp_path, capsys):
    project = make_project(tmp_path / "hero")
    save_concepts(project / "concept.json", [Concept(instance_token="sks", num_class_images=2)])
    common = ["--models-dir", str(tmp_path / "models"), "--device", "cpu"]
    sets = [
        "--set",
        "resolution=64",
        "--set",
        "epochs=1",
        "--set",
        "preview_steps=2",
        "--set",
        "class_steps=2",
    ]
    source = ["--source", str(tiny_sd1.single_file), "--preset", "Fast test"]
    plan = main(["train", str(project), *common, *source, *sets, "--plan"])
    out = capsys.readouterr().out
    assert (
        plan == 0
        and "2 pictures x 1 epochs / batch 1 = 2 steps" in out
        and "2 class images will be generated" in out
    )
    code = main(
        ["train", str(project), *common, *source, "--model-config", str(tiny_sd1.diffusers_dir), *sets]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert (tmp_path / "models" / "hero_2.safetensors").is_file()
    assert "Finished at step 2 (epoch 1)" in out and "tensorboard --logdir" in out
    # The run folder's run.json trains again; a finished run resumed starts a new session on top.
    code = main(["train", str(project / "runs" / "hero"), *common, "--resume"])
    assert code == 0 and (tmp_path / "models" / "hero_4.safetensors").is_file()
    assert main(["train", str(project), *common, "--set", "epochz=3"]) == 2
    assert "unknown field(s) epochz" in capsys.readouterr().err
