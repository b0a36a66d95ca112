"""The end-to-end demo, run the way a user runs it: ``python -m lib_dbchar demo --out DIR``."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lib_dbchar.demo.run import ASSETS_DIR, default_out_dir

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
DOUBLE = REPO / "tests" / "kit" / "tagger_double" / "v3"


def test_shipped_tagger_double_matches_the_kit():
    for name in ("model.onnx", "selected_tags.csv"):
        assert (ASSETS_DIR / name).read_bytes() == (DOUBLE / name).read_bytes(), name


def test_default_out_dir_never_reuses_a_folder(tmp_path):
    assert default_out_dir(tmp_path) == tmp_path / "dbchar-demo"
    (tmp_path / "dbchar-demo").mkdir()
    (tmp_path / "dbchar-demo-2").write_text("x", encoding="utf-8")
    assert default_out_dir(tmp_path) == tmp_path / "dbchar-demo-3"


def test_demo_refuses_a_folder_with_files(tmp_path):
    (tmp_path / "keep.txt").write_text("mine", encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-m", "lib_dbchar", "demo", "--out", str(tmp_path)],
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert "not empty" in proc.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "lib_dbchar", "demo", "--out", str(out)],
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc.stdout


def test_demo_prints_where_everything_is(demo):
    out, stdout = demo
    assert "tagger double" in stdout and "not a real tagger" in stdout
    for label in (
        "dataset:",
        "captions:",
        "class images:",
        "run folder:",
        "samples:",
        "tensorboard:",
        "merged:",
        "Report:",
        "grid:",
        "ranking:",
    ):
        assert label in stdout, label
    assert str(out / "report.html") in stdout
    assert "Skipped" not in stdout


def test_demo_dataset_captions_and_class_images(demo):
    out, _ = demo
    dataset = out / "demo-character" / "dataset"
    pictures = sorted(dataset.glob("pose_*.png"))
    assert 8 <= len(pictures) <= 12
    for picture in pictures:
        tags = [t.strip() for t in picture.with_suffix(".txt").read_text(encoding="utf-8").split(",")]
        assert {"1girl", "solo", "red hair"} <= set(tags), (picture.name, tags)
    # The originals stay where they were drawn.
    assert len(list((out / "pictures").glob("pose_*.png"))) == len(pictures)
    classes = sorted((out / "demo-character" / "classes" / "classifiers_0").glob("class_*.png"))
    assert len(classes) == len(pictures)
    concept = json.loads((out / "demo-character" / "concept.json").read_text(encoding="utf-8"))
    assert "sks" in json.dumps(concept)


def test_demo_training_leaves_a_run_and_checkpoints(demo):
    out, _ = demo
    run = out / "demo-character" / "runs" / "demo-run"
    assert list((run / "samples").rglob("*.png"))
    assert list((run / "logging" / "dreambooth").iterdir())
    assert sorted(p.name for p in (out / "models").glob("demo-run_*.safetensors")) == [
        "demo-run_10.safetensors",
        "demo-run_20.safetensors",
    ]


def test_demo_grid_and_ranking(demo):
    from PIL import Image

    from lib_dbchar.pick.rank import load_ranking

    out, _ = demo
    run = out / "demo-character" / "runs" / "demo-run"
    grid = json.loads((run / "pick" / "grid.json").read_text(encoding="utf-8"))
    assert [c["key"] for c in grid["columns"]] == ["source", "demo-run_10", "demo-run_20"]
    assert len(grid["cells"]) == 3 * sum(len(p["seeds"]) for p in grid["probes"])
    assert Image.open(run / "pick" / "grid.png").size[0] > 3 * 64
    ranking = load_ranking(run)
    assert ranking.recommended in ("demo-run_10", "demo-run_20")
    assert {c.column for c in ranking.columns} == {"source", "demo-run_10", "demo-run_20"}
    assert all(c.evidence for c in ranking.columns)
    assert ranking.column("demo-run_20").loss is not None


def test_demo_merged_model_loads_and_differs_from_the_source(demo):
    from safetensors.torch import load_file

    from lib_dbchar.pick.rank import load_ranking

    out, _ = demo
    recommended = load_ranking(out / "demo-character" / "runs" / "demo-run").recommended
    merged = load_file(str(out / "models" / "demo-run-on-other.safetensors"))
    source = load_file(str(out / "tiny-models" / "source" / "tiny-sd1.safetensors"))
    # The merge moves the checkpoint the ranking recommends.
    trained = load_file(str(out / "models" / f"{recommended}.safetensors"))
    other = load_file(str(out / "tiny-models" / "other" / "tiny-sd1.safetensors"))
    key = "model.diffusion_model.input_blocks.1.1.proj_in.weight"
    assert key in merged and merged[key].shape == source[key].shape
    assert not merged[key].float().equal(source[key].float())
    # Add difference: A + (B - C) with multiplier 1.
    expected = trained[key].float() + (other[key].float() - source[key].float())
    assert (merged[key].float() - expected).abs().max() < 1e-5


def test_demo_report_and_result(demo):
    out, _ = demo
    report = (out / "report.html").read_text(encoding="utf-8")
    for step in (
        "pictures",
        "prep",
        "tags",
        "concept",
        "class images",
        "training",
        "grid + ranking",
        "merge",
    ):
        assert f"<h2>{step}</h2>" in report
    assert 'src="pictures/pose_00.png"' in report
    assert "demo-run-on-other.safetensors" in report
    assert 'src="demo-character/runs/demo-run/pick/grid.png"' in report
    assert 'href="demo-character/runs/demo-run/pick/ranking.json"' in report
    assert "<th>checkpoint</th>" in report and "(recommended)" in report
    assert "Not in the demo" not in report
    result = json.loads((out / "demo.json").read_text(encoding="utf-8"))
    names = [s["name"] for s in result["steps"]]
    assert names[-2:] == ["grid + ranking", "merge"]
    assert result["skipped"] == []
