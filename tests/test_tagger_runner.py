"""Tagging folders end to end with the ONNX doubles: captions, batching, bad files, stop, JSON, CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import onnxruntime as ort
import pytest
from PIL import Image

from lib_dbchar.cli import main
from lib_dbchar.errors import JobStopped
from lib_dbchar.jobs import JobContext
from lib_dbchar.tagger.backups import undo_last
from lib_dbchar.tagger.models import get_model
from lib_dbchar.tagger.runner import TaggerConfig, run_tagging
from lib_dbchar.tagger.session import onnxruntime_session
from tests.kit.tagger import TAGGER_V2_DIR, TAGGER_V3_DIR, expected_tag_probs, solid_image
from tests.kit.tagger_double.reference import reference_input, reference_labels, reference_tags

ROOT = Path(__file__).resolve().parents[1]


def make_folder(folder: Path) -> Path:
    """Pictures whose tags depend on colour, alpha, padding and bit depth."""
    folder.mkdir(parents=True, exist_ok=True)
    solid_image("red", (96, 96)).save(folder / "a_red.png")
    solid_image("cyan", (50, 50)).save(folder / "b_cyan.png")
    solid_image((0, 0, 255, 0), (64, 64), mode="RGBA").save(folder / "c_clear.png")  # fully transparent
    solid_image("black", (64, 64)).save(folder / "d_black.png")
    solid_image("black", (64, 32)).save(folder / "e_black_wide.png")  # padded with white
    solid_image((128, 128, 128), (40, 40), mode="I;16").save(folder / "f_grey16.png")
    return folder


def config(folder: Path = TAGGER_V3_DIR, **kw) -> TaggerConfig:
    return TaggerConfig(model_dir=str(folder), **kw)


def caption(folder: Path, stem: str) -> str:
    return (folder / f"{stem}.txt").read_text(encoding="utf-8")


def test_captions_depend_on_colour_alpha_and_padding(tmp_path):
    folder = make_folder(tmp_path / "set")
    result = run_tagging(config(), folder, device="cpu")
    assert result.counts() == {"written": 6, "problems": 0}
    assert caption(folder, "a_red") == "1girl, red hair, solo, from side, upper body, long hair"
    # A BGR swap would read red as blue: no blue eyes.
    assert "blue eyes" not in caption(folder, "a_red")
    assert caption(folder, "b_cyan").startswith("hatsune miku, 1girl, solo, blue eyes")
    # Lost alpha would make it blue (or black); composited on white it is white.
    assert caption(folder, "c_clear") == "white background, 1girl, solo, ^_^, upper body, long hair"
    assert ">_<" in caption(folder, "d_black")
    # Padding with white makes the wide black picture grey: no >_<, and no white background either.
    wide = caption(folder, "e_black_wide")
    assert ">_<" not in wide and "white background" not in wide
    # 16-bit grey is scaled, not clipped to white.
    assert "white background" not in caption(folder, "f_grey16") and "^_^" not in caption(folder, "f_grey16")
    assert not (folder / "a_red.txt").read_text(encoding="utf-8").endswith("\n")


def test_scores_are_the_models_probabilities_not_sigmoided_twice(tmp_path):
    folder = make_folder(tmp_path / "set")
    result = run_tagging(config(), folder, device="cpu")
    red = next(r for r in result.images if r.image.endswith("a_red.png"))
    expected = expected_tag_probs("red")
    for tag in red.scores.general:
        assert tag.score == pytest.approx(expected[tag.raw], abs=1e-6)
    assert red.scores.rating["general"] == pytest.approx(expected["general"], abs=1e-6)
    # A second sigmoid would lift every tag above 0.5: smile (0.34) and full body (0.12) stay out.
    assert not {"smile", "full body"} & set(red.tags)


@pytest.mark.parametrize("model_dir", [TAGGER_V3_DIR, TAGGER_V2_DIR], ids=["v3", "v2"])
def test_pipeline_equals_the_reference_loop(tmp_path, model_dir):
    folder = make_folder(tmp_path / "set")
    solid_image((200, 30, 90), (333, 120)).save(folder / "g_odd.jpg", quality=90)
    result = run_tagging(config(model_dir), folder, device="cpu")
    session = ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    labels = reference_labels(model_dir / "selected_tags.csv")
    assert len(result.images) == 7
    for item in result.images:
        image = Image.open(item.image)
        if image.mode.startswith("I"):
            continue  # the reference clips 16-bit grey to white (our documented correction)
        probs = session.run(None, {session.get_inputs()[0].name: reference_input(image, 448)})[0][0]
        general, characters, ratings = reference_tags(probs, labels)
        assert [(t.name, t.score) for t in item.scores.general] == general
        assert {t.name: t.score for t in item.scores.character} == characters
        assert item.scores.rating == ratings


def recording_factory(batches: list[int]):
    def make(path, providers, threads):
        real = onnxruntime_session(path, providers, threads)

        class Recorder:
            def __getattr__(self, name):
                return getattr(real, name)

            def run(self, names, feed):
                batches.append(len(next(iter(feed.values()))))
                return real.run(names, feed)

        return Recorder()

    return make


def test_dynamic_models_run_real_batches_fixed_ones_one_by_one(tmp_path):
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(10):
        solid_image((i * 25, 100, 200), (32, 32)).save(folder / f"p{i:02d}.png")
    batches: list[int] = []
    result = run_tagging(
        config(batch_size=4), folder, device="cpu", session_factory=recording_factory(batches)
    )
    assert batches == [4, 4, 2] and result.batch_size == 4
    fixed: list[int] = []
    result = run_tagging(
        config(TAGGER_V2_DIR, write_mode="overwrite", batch_size=4), folder, device="cpu",
        session_factory=recording_factory(fixed),
    )  # fmt: skip
    assert fixed == [1] * 10 and result.batch_size == 1 and result.counts()["overwritten"] == 10


def test_bad_pictures_are_reported_and_the_batch_goes_on(tmp_path):
    folder = make_folder(tmp_path / "set")
    (folder / "c_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    solid_image("red", (20, 20)).save(folder / "a_red.jpg")  # same stem as a_red.png: same caption file
    result = run_tagging(config(), folder, device="cpu")
    assert result.counts() == {"written": 6, "problems": 2}
    messages = " | ".join(p.message for p in result.problems)
    assert "c_broken.png: the picture is damaged" in messages or "c_broken.png: not a picture" in messages
    assert "a_red.png: shares the caption file a_red.txt with a_red.jpg" in messages
    assert not (folder / "c_broken.txt").exists()
    assert "skipped:" in result.summary()


def test_write_modes_backup_and_undo(tmp_path):
    folder = make_folder(tmp_path / "set")
    (folder / "a_red.txt").write_text("my tag, red hair", encoding="utf-8")
    batches: list[int] = []
    result = run_tagging(config(), folder, device="cpu", session_factory=recording_factory(batches))
    assert caption(folder, "a_red") == "my tag, red hair"  # skip: untouched, and not even run
    assert sum(batches) == 5 and result.counts()["kept"] == 1
    run_tagging(config(write_mode="append", always_first="sg neeko"), folder, device="cpu")
    assert (
        caption(folder, "a_red")
        == "my tag, red hair, sg neeko, 1girl, solo, from side, upper body, long hair"
    )
    undo = undo_last(folder)
    assert "a_red.txt" in undo.restored and caption(folder, "a_red") == "my tag, red hair"
    run_tagging(config(write_mode="prepend", max_tags=2), folder, device="cpu")
    assert caption(folder, "a_red") == "1girl, red hair, my tag"
    run_tagging(config(write_mode="overwrite", escape=True, exclude="1GIRL"), folder, device="cpu")
    assert caption(folder, "a_red") == "red hair, solo, from side, upper body, long hair"
    assert undo_last(folder).restored and caption(folder, "a_red") == "1girl, red hair, my tag"


def test_stop_between_batches_leaves_complete_captions_and_a_partial_json(tmp_path):
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(6):
        solid_image((i * 40, 60, 90), (32, 32)).save(folder / f"p{i}.png")
    reports = []

    def stop_after_first_batch() -> bool:
        return any(r.done >= 2 for r in reports)

    ctx = JobContext(progress=reports.append, should_stop=stop_after_first_batch)
    with pytest.raises(JobStopped, match="tagging stopped"):
        run_tagging(config(batch_size=2), folder, ctx, device="cpu", json_out=tmp_path / "out.json")
    written = sorted(p.name for p in folder.glob("*.txt"))
    assert written == ["p0.txt", "p1.txt"]
    doc = json.loads((tmp_path / "out.json").read_text(encoding="utf-8"))
    assert doc["stopped"] is True and [Path(i["image"]).name for i in doc["images"]] == ["p0.png", "p1.png"]
    assert [r.done for r in reports if r.text.startswith("Tagged")] == [1, 2]
    assert sorted(undo_last(folder).removed) == ["p0.txt", "p1.txt"]
    assert not list(folder.glob("*.txt"))


def test_json_report_lists_ordered_scores_per_picture(tmp_path):
    folder = make_folder(tmp_path / "set")
    (folder / "a_red.txt").write_text("kept", encoding="utf-8")
    out = tmp_path / "report.json"
    result = run_tagging(config(general_mcut=True), folder, device="cpu", json_out=out)
    doc = json.loads(out.read_text(encoding="utf-8"))
    assert result.json_path == str(out) and doc["thresholds"]["general_mcut"] is True
    red = next(i for i in doc["images"] if i["image"].endswith("a_red.png"))
    assert [name for name, _ in red["general"]] == ["1girl", "red hair", "solo", "from side", "upper body"]
    assert red["general"][0][1] == pytest.approx(0.97, abs=1e-6)
    assert red["character"] == [] and set(red["rating"]) == {
        "general",
        "sensitive",
        "questionable",
        "explicit",
    }
    assert red["action"] == "kept" and red["tags"] == ["kept"]  # scored for the report, caption untouched
    cyan = next(i for i in doc["images"] if i["image"].endswith("b_cyan.png"))
    assert cyan["character"][0][0] == "hatsune miku"
    assert json.loads(json.dumps(result.to_dict()))["counts"]["written"] == 5


# --------------------------------------------------------------------------------------------------
# The CLI


def test_cli_tag_writes_captions_and_json(tmp_path, capsys):
    folder = make_folder(tmp_path / "set")
    out = tmp_path / "out.json"
    code = main([
        "tag", str(folder), "--model-dir", str(TAGGER_V3_DIR), "--general-threshold", "0.5",
        "--character-threshold", "0.8", "--escape", "--write", "overwrite", "--json", str(out),
        "--device", "cpu",
    ])  # fmt: skip
    assert code == 0
    assert caption(folder, "a_red") == "hakurei reimu, 1girl, red hair, solo, from side, upper body"
    assert json.loads(out.read_text(encoding="utf-8"))["images"][0]["image"].endswith("a_red.png")
    assert "6 written" in capsys.readouterr().out


def test_cli_mcut_and_bad_options(tmp_path, capsys):
    folder = make_folder(tmp_path / "set")
    assert main(["tag", str(folder), "--model-dir", str(TAGGER_V3_DIR), "--mcut"]) == 0
    assert caption(folder, "b_cyan") == "hatsune miku, 1girl, solo"
    assert main(["tag", str(folder), "--model-dir", str(TAGGER_V3_DIR), "--general-threshold", "2"]) == 2
    assert "general_threshold" in capsys.readouterr().err


def test_cli_uses_the_cache_offline_and_explains_a_miss(tmp_path, fake_hf_cache, capsys):
    folder = make_folder(tmp_path / "set")
    model = get_model("wd-v1-4-moat-tagger-v2")
    fake_hf_cache.add_repo(model.repo_id, TAGGER_V2_DIR, revision=model.revision)
    assert main(["tag", str(folder), "--model", model.key, "--offline"]) == 0
    assert "wd-v1-4-moat-tagger-v2 (cache, 8452cddf28)" in capsys.readouterr().out
    assert main(["tag", str(folder), "--model", "wd-eva02-large-tagger-v3", "--write", "overwrite"]) == 1
    err = capsys.readouterr().err
    assert "wd-eva02-large-tagger-v3 is not in the Hugging Face cache" in err and "--model-dir" in err


def test_cli_exits_1_when_pictures_were_skipped(tmp_path):
    folder = make_folder(tmp_path / "set")
    (folder / "zz.png").write_bytes(b"nope")
    assert main(["tag", str(folder), "--model-dir", str(TAGGER_V3_DIR)]) == 1


def test_python_m_lib_dbchar_tag(tmp_path):
    folder = tmp_path / "set"
    folder.mkdir()
    solid_image("green", (30, 30)).save(folder / "g.webp", lossless=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "lib_dbchar", "tag", str(folder), "--model-dir", str(TAGGER_V3_DIR)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (folder / "g.txt").read_text(
        encoding="utf-8"
    ) == "1girl, green hair, 0_0, solo, upper body, long hair"
    assert "CPUExecutionProvider" in done.stdout


def test_a_passed_tagger_is_reused_and_left_open(tmp_path):
    from lib_dbchar.tagger.runner import load_tagger
    from lib_dbchar.tagger.session import TaggerHolder

    folder = make_folder(tmp_path / "set")
    holder = TaggerHolder()
    cfg = config(write_mode="overwrite")
    tagger = load_tagger(cfg, device="cpu", holder=holder)
    for _ in range(2):
        result = run_tagging(cfg, folder, tagger=tagger)
        assert result.counts()["problems"] == 0 and result.load_seconds < 0.5
    assert tagger.session is not None  # the UI's holder owns it
    holder.release()
    assert tagger.session is None
