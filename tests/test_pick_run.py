"""run_pick and ``python -m lib_dbchar pick``: render (cached), score, rank and save, on a planted run
(a renderer double and a planted tagger) and on a real tiny run (the real renderer and the ONNX
tagger double)."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lib_dbchar.cli import main
from lib_dbchar.concept import Concept, save_concepts
from lib_dbchar.errors import JobStopped
from lib_dbchar.jobs import JobContext
from lib_dbchar.pick.grid import PickSettings
from lib_dbchar.pick.probes import Probe, load_probes
from lib_dbchar.pick.rank import load_ranking
from lib_dbchar.pick.run import PROGRESS_UNITS, run_pick
from lib_dbchar.tagger.runner import TaggerConfig
from lib_dbchar.train.config import TrainConfig
from lib_dbchar.train.run import CheckpointRecord, RunSpec, save_run_spec, write_checkpoint_records
from tests.kit.images import textured
from tests.kit.models import torch_threads
from tests.kit.tagger import TAGGER_V3_DIR

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CONCEPT = Concept(instance_token="sks", num_class_images=2)
SETTINGS = PickSettings(steps=2, size=64)


# --- a planted run --------------------------------------------------------------------------------


class TexturedRenderer:
    """Draws a textured picture per (checkpoint, prompt, seed); records what it drew."""

    def __init__(self):
        self.current = ""
        self.drawn: list[tuple[str, str, int]] = []

    def load(self, checkpoint: Path) -> None:
        self.current = Path(checkpoint).stem

    def sample(self, request):
        out = []
        for prompt, seed in zip(request.prompts, request.seeds, strict=True):
            self.drawn.append((self.current, prompt, seed))
            key = zlib.crc32(f"{self.current}|{prompt}|{seed}".encode())
            out.append(textured((request.size, request.size), seed=key % 100_000))
        return out


def planted_tags(paths):
    """The step-4 checkpoint draws 'from side' on its side cells; every trained one has red hair."""
    out = []
    for path in paths:
        column, probe = Path(path).parent.name, Path(path).stem.split("-")[0]
        tags = {"1girl": 0.9}
        if column != "source" and probe != "leak":
            tags["red_hair"] = 0.9
        if probe == "side" and column in ("source", "run1_4"):
            tags["from_side"] = 0.9
        out.append(tags)
    return out


def plant_run(root: Path) -> Path:
    project = root / "project"
    (project / "dataset").mkdir(parents=True)
    for i in range(3):
        textured((64, 64), seed=i).save(project / "dataset" / f"p{i}.png")
        (project / "dataset" / f"p{i}.txt").write_text("1girl, red hair, looking at viewer", encoding="utf-8")
    save_concepts(project / "concept.json", [CONCEPT])
    models = root / "models"
    models.mkdir()
    source = models / "source.safetensors"
    source.write_bytes(b"source")
    spec = RunSpec(project, "run1", TrainConfig(source_checkpoint=str(source)), (CONCEPT,), models)
    save_run_spec(spec)
    records = []
    for step in (2, 4):
        path = models / f"run1_{step}.safetensors"
        path.write_bytes(f"ckpt{step}".encode())
        records.append(CheckpointRecord(str(path), step, step))
    write_checkpoint_records(spec.run_dir / "checkpoints.json", records)
    log = spec.run_dir / "logging" / "loss.jsonl"
    log.parent.mkdir(parents=True)
    log.write_text("".join(json.dumps({"step": s, "loss": 0.5 / s}) + "\n" for s in range(1, 5)))
    return spec.run_dir


def test_run_pick_renders_scores_ranks_and_saves(tmp_path):
    run = plant_run(tmp_path)
    renderer = TexturedRenderer()
    reports = []
    result = run_pick(
        run,
        settings=SETTINGS,
        tag_fn=planted_tags,
        renderer=renderer,
        ctx=JobContext(progress=reports.append),
    )
    pick = run / "pick"
    assert result.grid_png == str(pick / "grid.png") and (pick / "grid.png").is_file()
    assert result.ranking_json == str(pick / "ranking.json")
    assert (pick / "grid.json").is_file() and (pick / "probes.json").is_file()
    ranking = load_ranking(run)
    assert ranking == result.ranking
    assert ranking.recommended == "run1_4"
    assert result.recommended_path() == str(tmp_path / "models" / "run1_4.safetensors")
    assert ranking.frontal in ("run1_2", "run1_4")
    assert ranking.traits == ["red hair"]
    assert ranking.column("run1_4").loss == pytest.approx(0.125)
    assert [c.key for c in result.grid.columns] == ["source", "run1_2", "run1_4"]
    # One bar for both phases: never backwards, ends full.
    done = [r.done for r in reports]
    assert done == sorted(done) and done[-1] == PROGRESS_UNITS
    assert all(r.total == PROGRESS_UNITS for r in reports)
    assert reports[0].text.startswith("Grid: ") and reports[-1].text.startswith("Scoring: ")
    json.dumps(result.to_dict())  # serialisable for the UI

    # Again: nothing drawn (the cache), the ranking rewritten the same.
    again = run_pick(run, settings=SETTINGS, tag_fn=planted_tags, renderer=renderer)
    assert again.grid.rendered == 0 and again.grid.cached == len(result.grid.cells)
    assert again.ranking.recommended == "run1_4"


def test_run_pick_saves_the_probes_it_is_given(tmp_path):
    run = plant_run(tmp_path)
    probes = [Probe("side", "side", "side", "sks, red hair, from side", "", (3,), ("from side",))]
    result = run_pick(run, settings=SETTINGS, tag_fn=planted_tags, renderer=TexturedRenderer(), probes=probes)
    assert load_probes(run) == probes
    assert len(result.grid.cells) == 3  # 1 probe x 1 seed x 3 columns


def test_run_pick_stop_writes_no_ranking(tmp_path):
    run = plant_run(tmp_path)
    with pytest.raises(JobStopped):
        run_pick(
            run,
            settings=SETTINGS,
            tag_fn=planted_tags,
            renderer=TexturedRenderer(),
            ctx=JobContext(should_stop=lambda: True),
        )
    assert not (run / "pick" / "ranking.json").exists()


def test_pick_cli_names_a_missing_run(tmp_path, capsys):
    assert main(["pick", str(tmp_path / "nowhere"), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "nowhere" in err and "run.json" in err


def test_pick_cli_rejects_bad_settings_by_field(tmp_path, capsys):
    run = plant_run(tmp_path)
    assert main(["pick", str(run), "--size", "60", "--device", "cpu"]) == 1
    assert "PickSettings.size" in capsys.readouterr().err


# --- a real tiny run ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(tiny_sd1, tmp_path_factory):
    """A real run of the tiny SD1 model: 2 pictures, checkpoints at steps 2 and 4."""
    from lib_dbchar.train.loop import train

    root = tmp_path_factory.mktemp("pick-run")
    rng = np.random.default_rng(0)
    (root / "dataset").mkdir()
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(
            root / "dataset" / f"p{i}.png"
        )
        (root / "dataset" / f"p{i}.txt").write_text("1girl, sks, red hair", encoding="utf-8")
    save_concepts(root / "concept.json", [CONCEPT])
    config = TrainConfig(
        source_checkpoint=str(tiny_sd1.single_file),
        epochs=2,
        max_steps=0,
        save_every_epochs=1,
        preview_every_epochs=0,
        resolution=64,
        mixed_precision="no",
        learning_rate=1e-2,
        class_steps=2,
        use_8bit_adam=False,
    )
    spec = RunSpec(root, "run1", config, (CONCEPT,), root / "models", model_config_dir=tiny_sd1.diffusers_dir)
    with torch_threads(1):  # module-scoped: runs before any test's own fixtures
        result = train(spec)
    assert len(result.checkpoints) == 2
    return spec.run_dir


@pytest.mark.slow
def test_run_pick_end_to_end_with_the_real_renderer_and_the_onnx_tagger(tiny_run):
    result = run_pick(tiny_run, settings=SETTINGS, tagger=TaggerConfig(model_dir=str(TAGGER_V3_DIR)))
    grid, ranking = result.grid, result.ranking
    assert [c.key for c in grid.columns] == ["source", "run1_2", "run1_4"]
    assert {p.kind for p in grid.probes} == {
        "frontal",
        "side",
        "behind",
        "outfit",
        "background",
        "leak",
        "drift",
    }
    assert len(grid.cells) == 3 * 7 * 2
    assert Image.open(result.grid_png).size[0] > 3 * 64
    assert ranking.recommended in ("run1_2", "run1_4")
    assert ranking.traits == ["red hair"]
    for column in ranking.columns:
        assert len(column.cells) == 14
        assert column.evidence
        if column.column != "source":
            assert column.loss is not None and column.loss_smoothed is not None
    # The ONNX double tags every cell: the constant tags are there.
    assert all("1girl" in cell.tags for column in ranking.columns for cell in column.cells)
    assert load_ranking(tiny_run) == ranking


@pytest.mark.slow
def test_pick_cli_prints_the_ranking_and_the_paths(tiny_run, capsys):
    code = main(
        [
            *("pick", str(tiny_run / "run.json"), "--steps", "2", "--size", "64", "--device", "cpu"),
            *("--tagger-model", str(TAGGER_V3_DIR)),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "checkpoint" in out.splitlines()[0] and "score" in out.splitlines()[0]
    assert "recommended (*): run1_" in out
    assert f"grid: {tiny_run / 'pick' / 'grid.png'}" in out
    assert f"ranking: {tiny_run / 'pick' / 'ranking.json'}" in out
