"""Training settings, presets, the steps plan, schedules, guards and the pure pieces of the loop."""

import json
import math
import random
import struct

import pytest

from lib_dbchar.config import from_dict, specs, to_dict
from lib_dbchar.train.config import (
    MODEL_FIELDS,
    TrainConfig,
    apply_preset,
    builtin_presets,
    changed_fields,
    find_preset,
    load_preset_file,
    load_train_config,
    save_preset,
    save_train_config,
    user_presets,
    validate_config,
    validate_for_device,
)
from lib_dbchar.train.guards import diverged, memory_switches, nan_cause, out_of_memory
from lib_dbchar.train.loop import learning_rate_at, remaining_steps
from lib_dbchar.train.plan import ConceptCounts, format_duration, plan_steps
from lib_dbchar.train.state import Counters
from lib_dbchar.train.tbevents import EventWriter, crc32c, encode_event, frame, read_scalars, records
from lib_dbchar.train.text import parse_emphasis

GUIDE = {
    "scheduler": "ddim",
    "epochs": 10_000_000,
    "max_steps": 10_000_000,
    "lifetime_epochs": False,
    "save_every_epochs": 10,
    "preview_every_epochs": 10,
    "learning_rate": 1e-6,
    "resolution": 512,
    "use_8bit_adam": True,
    "mixed_precision": "fp16",
    "cache_latents": False,
    "train_text_encoder": False,
}


# --- settings -----------------------------------------------------------------------------------


def test_defaults_are_the_guides_settings():
    config = TrainConfig()
    assert {k: getattr(config, k) for k in GUIDE} == GUIDE
    assert config.prior_preservation and config.prior_loss_weight == 1.0
    assert config.lr_scheduler == "constant" and config.max_grad_norm == 1.0
    assert all(info.spec.label for info in specs(TrainConfig))
    validate_config(config)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"resolution": 500}, "TrainConfig.resolution: 500 is not a multiple of 64"),
        (
            {"cache_latents": True, "random_flip": True},
            "TrainConfig.cache_latents: cached latents cannot be flipped",
        ),
        (
            {"text_encoder_stop_step": 100},
            "TrainConfig.text_encoder_stop_step: set, but train_text_encoder is off",
        ),
        ({"max_steps": 10, "lr_warmup_steps": 10}, "TrainConfig.lr_warmup_steps: 10 warmup steps do not fit"),
        ({"prior_loss_weight": 0.0}, "TrainConfig.prior_loss_weight: 0 with prior preservation on"),
        ({"learning_rate": 0.0}, "TrainConfig.learning_rate: 0.0 must be above 0"),
        ({"max_token_length": 100}, "TrainConfig.max_token_length: 100 must be 75, 150 or 225"),
    ],
)
def test_impossible_combinations_are_rejected_naming_the_field(changes, message):
    with pytest.raises(ValueError, match=None) as info:
        validate_config(TrainConfig(**changes))
    assert message in str(info.value)


def test_device_checks():
    validate_for_device(TrainConfig(mixed_precision="fp16"), "cuda", have_xformers=False)
    validate_for_device(TrainConfig(mixed_precision="bf16"), "cpu", have_xformers=False)
    with pytest.raises(ValueError, match=r"TrainConfig\.mixed_precision: fp16 needs a CUDA GPU"):
        validate_for_device(TrainConfig(mixed_precision="fp16"), "cpu", have_xformers=False)
    with pytest.raises(ValueError, match=r"TrainConfig\.attention: xformers is not installed"):
        validate_for_device(TrainConfig(attention="xformers"), "cuda", have_xformers=False)
    with pytest.raises(ValueError, match=r"xformers runs on CUDA only"):
        validate_for_device(
            TrainConfig(attention="xformers", mixed_precision="no"), "cpu", have_xformers=True
        )
    # "auto" never fails: it is xformers where that works, else SDPA.
    validate_for_device(TrainConfig(attention="auto", mixed_precision="no"), "cpu", have_xformers=True)


def test_train_json_round_trip(tmp_path):
    config = TrainConfig(source_checkpoint="/m/wd13.safetensors", epochs=40, learning_rate=2e-6, clip_skip=2)
    path = save_train_config(tmp_path / "train.json", config)
    assert load_train_config(path) == config
    path.write_text(json.dumps({"epochs": 0}), encoding="utf-8")
    with pytest.raises(ValueError, match=r"train\.json: TrainConfig\.epochs .*below the minimum 1"):
        load_train_config(path)


# --- presets ------------------------------------------------------------------------------------


def test_builtin_presets_are_shipped_valid_and_in_order():
    presets = builtin_presets()
    assert [p.name for p in presets] == ["Character (guide)", "Low VRAM (8 GB)", "Fast test"]
    for preset in presets:
        assert preset.builtin and preset.description
        assert not MODEL_FIELDS & set(preset.values)
        validate_config(apply_preset(TrainConfig(), preset))
    guide = apply_preset(TrainConfig(learning_rate=5e-5, epochs=3), presets[0])
    assert {k: getattr(guide, k) for k in GUIDE} == GUIDE
    low = apply_preset(TrainConfig(), presets[1])
    assert (
        low.gradient_checkpointing and low.cache_latents and low.use_8bit_adam and not low.train_text_encoder
    )
    assert memory_switches(low) == []  # nothing left to switch on at 512 px, batch 1
    fast = apply_preset(TrainConfig(), presets[2])
    assert fast.epochs == 2 and fast.mixed_precision == "no"


def test_preset_field_names_are_the_dataclass_fields():
    names = {info.name for info in specs(TrainConfig)}
    for preset in builtin_presets():
        raw = json.loads(preset.path.read_text(encoding="utf-8"))
        assert set(raw["values"]) <= names


def test_user_preset_round_trip_and_keeps_user_changed_fields(tmp_path):
    config = TrainConfig(
        source_checkpoint="/m/a.safetensors", learning_rate=3e-6, epochs=50, clip_skip=2, offset_noise=0.05
    )
    path = save_preset(tmp_path, "My: preset", config, description="mine")
    assert path.name == "My_ preset.json"
    preset = load_preset_file(path)
    assert preset.name == "My: preset" and preset.description == "mine"
    assert "source_checkpoint" not in preset.values
    assert apply_preset(TrainConfig(source_checkpoint="/m/a.safetensors"), preset) == config
    assert find_preset("my: PRESET", tmp_path).values == preset.values
    # A field the user changed in this session survives a preset.
    session = TrainConfig(learning_rate=9e-6)
    applied = apply_preset(session, builtin_presets()[0], keep=changed_fields(session))
    assert applied.learning_rate == 9e-6 and applied.save_every_epochs == 10
    with pytest.raises(FileExistsError, match="exists"):
        save_preset(tmp_path, "My: preset", config)
    save_preset(tmp_path, "My: preset", TrainConfig(epochs=7), overwrite=True)
    assert load_preset_file(path).values["epochs"] == 7
    with pytest.raises(ValueError, match="built-in preset"):
        save_preset(tmp_path, "fast test", config)


def test_broken_user_preset_is_reported_and_skipped(tmp_path):
    save_preset(tmp_path, "good", TrainConfig(epochs=3))
    (tmp_path / "bad.json").write_text(json.dumps({"name": "bad", "values": {"epochz": 3}}), encoding="utf-8")
    (tmp_path / "model.json").write_text(
        json.dumps({"name": "m", "values": {"source_checkpoint": "x"}}), encoding="utf-8"
    )
    presets, problems = user_presets(tmp_path)
    assert [p.name for p in presets] == ["good"]
    assert len(problems) == 2
    assert any("bad.json" in p and "unknown field(s) epochz" in p for p in problems)
    assert any("model.json" in p and "do not set the model" in p for p in problems)
    with pytest.raises(ValueError, match="No preset named 'nope'; known: Character"):
        find_preset("nope", tmp_path)


# --- steps plan ---------------------------------------------------------------------------------


def test_plan_counts_steps_per_epoch_and_caps_by_max_steps():
    config = TrainConfig(epochs=100, max_steps=0, batch_size=3, save_every_epochs=10, preview_every_epochs=5)
    plan = plan_steps(config, [ConceptCounts(images=20, class_images=200, class_images_present=200)])
    assert (plan.steps_per_epoch, plan.total_steps, plan.limited_by) == (7, 700, "epochs")
    assert plan.checkpoint_every_steps == 70 and plan.preview_every_steps == 35
    assert plan.formula.startswith("20 pictures x 100 epochs / batch 3 = 700 steps")
    assert "class images" in plan.formula
    assert plan.warnings == ()
    capped = plan_steps(replace_config(config, max_steps=100), [ConceptCounts(20, 200, 200)])
    assert (capped.total_steps, capped.limited_by, capped.epochs) == (100, "max_steps", 15)
    assert plan.estimated_seconds(0.5, steps_done=100) == 300.0
    assert format_duration(5400) == "1 h 30 min" and format_duration(42) == "42 s"


def replace_config(config, **changes):
    return from_dict(TrainConfig, {**to_dict(config), **changes})


def test_plan_warns_about_class_images_dominating_and_open_ended_runs():
    plan = plan_steps(TrainConfig(), [ConceptCounts(images=3, class_images=2, class_images_present=0)])
    text = "\n".join(plan.warnings)
    assert plan.to_generate == 2
    assert "Only 3 pictures" in text
    assert "2 class images will be generated" in text
    assert "2 class images for 3 pictures" in text and "class dominates" in text
    assert "goes on until you stop it" in text
    empty = plan_steps(TrainConfig(), [ConceptCounts(0)])
    assert empty.total_steps == 0 and "No pictures" in empty.warnings[0]
    unused = plan_steps(
        TrainConfig(epochs=1, max_steps=0, save_every_epochs=1), [ConceptCounts(20, 200, 200)]
    ).warnings
    assert any("Only 20 of the 200 class images" in w for w in unused)


# --- schedules and counters ---------------------------------------------------------------------


def test_learning_rate_schedules():
    constant = TrainConfig(learning_rate=1e-6)
    assert [learning_rate_at(constant, p, 10) for p in (0, 5, 9)] == [1e-6] * 3
    warm = TrainConfig(learning_rate=1e-6, lr_warmup_steps=4)
    assert [learning_rate_at(warm, p, 10) for p in range(5)] == pytest.approx(
        [2.5e-7, 5e-7, 7.5e-7, 1e-6, 1e-6]
    )
    cosine = TrainConfig(learning_rate=1e-6, lr_scheduler="cosine")
    assert learning_rate_at(cosine, 0, 10) == pytest.approx(1e-6)
    assert learning_rate_at(cosine, 5, 10) == pytest.approx(0.5e-6 * (1 + math.cos(math.pi * 0.5)))
    assert learning_rate_at(cosine, 9, 10) == pytest.approx(0.5e-6 * (1 + math.cos(math.pi * 0.9)))
    linear = TrainConfig(learning_rate=1e-6, lr_scheduler="linear")
    assert learning_rate_at(linear, 5, 10) == pytest.approx(0.5e-6)


def test_remaining_steps_counts_session_or_lifetime():
    config = TrainConfig(epochs=3, max_steps=0)
    assert remaining_steps(Counters(), config, 4) == 12
    assert remaining_steps(Counters(step=5, epoch=1, index=1), config, 4) == 7
    # A new session on top of a finished run: epochs count from the session start...
    continued = Counters(step=12, epoch=3, session_step=12, session_epoch=3)
    assert remaining_steps(continued, config, 4) == 12
    # ... or from the run's start with lifetime epochs.
    assert remaining_steps(continued, replace_config(config, lifetime_epochs=True), 4) == 0
    assert remaining_steps(Counters(step=5, epoch=1, index=1), replace_config(config, max_steps=6), 4) == 1


# --- guards -------------------------------------------------------------------------------------


def test_nan_message_names_step_cause_and_fix():
    error = diverged(TrainConfig(mixed_precision="fp16", train_text_encoder=True), step=7, epoch=2,
                     last_state_step=4, weights_finite=True)  # fmt: skip
    text = str(error)
    assert "at step 7 (epoch 3)" in text
    assert "fp16 overflow while training the text encoder" in text
    assert "bf16" in text and "last saved state (step 4) is kept" in text
    assert error.step == 7
    cause, fix = nan_cause(TrainConfig(), weights_finite=False)
    assert "weights contain NaN" in cause and "another source checkpoint" in fix
    assert (
        "learning rate"
        in nan_cause(TrainConfig(mixed_precision="no", learning_rate=1e-4), weights_finite=True)[0]
    )


def test_oom_message_lists_the_switches_still_off():
    config = TrainConfig(use_8bit_adam=False, train_text_encoder=True, batch_size=2, resolution=768)
    text = str(out_of_memory(config, step=3, last_state_step=None))
    assert "at step 3" in text
    for switch in ("use_8bit_adam on", "train_text_encoder off", "gradient_checkpointing on", "batch_size 1",
                   "cache_latents on", "resolution 512"):  # fmt: skip
        assert switch in text
    assert "mixed_precision" not in text  # fp16 is already on


# --- tensorboard files --------------------------------------------------------------------------


def test_crc32c_and_framing():
    assert crc32c(b"123456789") == 0xE3069283  # the standard check value
    payload = encode_event(1.5, 3, scalars={"loss": 0.25})
    framed = frame(payload)
    assert struct.unpack("<Q", framed[:8])[0] == len(payload)


def test_event_files_read_back(tmp_path):
    with EventWriter(tmp_path) as writer:
        for step in range(1, 4):
            writer.add_scalars(step, {"loss": 1 / step, "lr": 1e-6})
    scalars = read_scalars(tmp_path)
    assert [s for s, _ in scalars["loss"]] == [1, 2, 3]
    assert [v for _, v in scalars["loss"]] == pytest.approx([1.0, 0.5, 1 / 3])
    # A record torn by a kill is ignored, the ones before it are kept.
    data = writer.path.read_bytes()
    writer.path.write_bytes(data[:-5])
    assert len(list(records(writer.path))) == 3  # file version + 2 complete scalars


def test_event_files_are_read_by_tensorboard(tmp_path):
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    with EventWriter(tmp_path) as writer:
        for step in range(1, 6):
            writer.add_scalars(step, {"loss": 0.1 * step, "loss_prior": 0.5})
    acc = accumulator.EventAccumulator(str(tmp_path))
    acc.Reload()
    assert set(acc.Tags()["scalars"]) == {"loss", "loss_prior"}
    assert [(e.step, round(e.value, 5)) for e in acc.Scalars("loss")] == [
        (s, round(0.1 * s, 5)) for s in range(1, 6)
    ]


# --- emphasis -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("a (b) c", [("a ", 1.0), ("b", 1.1), (" c", 1.0)]),
        ("(ugly:1.3), x", [("ugly", 1.3), (", x", 1.0)]),
        ("[x]", [("x", 1 / 1.1)]),
        (r"\(y\)", [("(y)", 1.0)]),
        ("((a))", [("a", 1.1 * 1.1)]),
        ("(open", [("open", 1.1)]),
        ("", [("", 1.0)]),
    ],
)
def test_parse_emphasis(prompt, expected):
    got = parse_emphasis(prompt)
    assert [t for t, _ in got] == [t for t, _ in expected]
    assert [w for _, w in got] == pytest.approx([w for _, w in expected])


def test_parse_emphasis_never_loses_text():
    rng = random.Random(0)
    alphabet = "ab ()[]:1.\\,"
    for _ in range(300):
        prompt = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 20)))
        letters = "".join(ch for ch in prompt if ch in "ab ,")
        assert "".join(ch for t, _ in parse_emphasis(prompt) for ch in t if ch in "ab ,") == letters
