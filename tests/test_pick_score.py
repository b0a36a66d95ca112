"""Scoring and ranking of the checkpoint grid (issue #7) on planted grids.

The grids here are real ``Grid`` objects built by hand (no rendering): cells are image files
written by the test, and a planted TagFn says which tags each cell carries, so every test decides
what the tagger "sees". Pictures are textured shapes (tests.kit.images.textured): unrelated ones
are far below the copy threshold, and a copy is made by resizing and JPEG re-encoding a training picture.
"""

from __future__ import annotations

import io
import json
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lib_dbchar.config import from_dict
from lib_dbchar.errors import JobStopped
from lib_dbchar.jobs import JobContext
from lib_dbchar.pick.grid import Grid, GridCell, GridColumn
from lib_dbchar.pick.probes import Probe
from lib_dbchar.pick.rank import Ranking, jaccard, load_ranking, loss_at, save_ranking, weighted_harmonic
from lib_dbchar.pick.score import (
    ScoreSettings,
    nearest,
    score_grid,
    signatures,
    tagger_tag_fn,
    tags_above,
)
from tests.kit.images import textured
from tests.kit.tagger import TAGGER_V3_DIR, image_for_tags

TRAITS = ["red hair", "blue eyes"]
SEEDS = (1, 2)
PROBES = [
    Probe("frontal", "frontal", "facing the viewer", "sks, 1girl, red hair, blue eyes", "", SEEDS),
    Probe("side", "side", "from the side", "sks, red hair, blue eyes, from side", "", SEEDS, ("from side",)),
    Probe("leak", "leak", "without the token", "1girl, looking at viewer", "", SEEDS),
    Probe("drift", "drift", "the class prompt", "1girl, solo", "", SEEDS),
]
GOOD = {"1girl": 0.97, "red_hair": 0.9, "blue_eyes": 0.8}
SIDE = {**GOOD, "from_side": 0.8}
PLAIN = {"1girl": 0.97, "solo": 0.8}


class PlantedTags:
    """A TagFn: path -> the tags planted for that picture (every call is recorded)."""

    def __init__(self) -> None:
        self.tags: dict[str, dict[str, float]] = {}
        self.calls: list[list[str]] = []

    def __call__(self, paths):
        self.calls.append([str(p) for p in paths])
        return [dict(self.tags[str(p)]) for p in paths]


def _copy_of(picture: Path, *, mirror: bool = False) -> Image.Image:
    """A training picture as a model that memorised it would give it back: resized, re-encoded."""
    image = Image.open(picture).convert("RGB").resize((48, 48), Image.BICUBIC)
    if mirror:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=75)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


@dataclass
class Planted:
    grid: Grid
    tag_fn: PlantedTags
    training: list[Path]


def plant(tmp_path: Path, columns: dict[str, dict[str, dict]], copies=None, steps=None) -> Planted:
    """A grid whose column ``key`` tags every cell of probe ``p`` with ``columns[key][p]``.

    Args:
        columns: column key -> probe id -> tags (a probe left out gets PLAIN tags).
        copies: ``{(column, probe, seed): (training index, mirror)}`` cells drawn as a copy.
        steps: column key -> step (default: the order, times 10; source 0).
    """
    run = tmp_path / "run"
    training = []
    for i in range(6):
        path = tmp_path / "dataset" / f"pose_{i:02d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        textured((64, 64), seed=i).save(path)
        training.append(path)
    grid = Grid(str(run), list(PROBES), [], [], {})
    tag_fn = PlantedTags()
    copies = copies or {}
    for n, (key, by_probe) in enumerate(columns.items()):
        step = (steps or {}).get(key, 0 if key == "source" else n * 10)
        grid.columns.append(GridColumn(key, f"{key} (step {step})", f"/models/{key}.safetensors", step))
        for probe in PROBES:
            for seed in probe.seeds:
                rel = f"cells/{key}/{probe.id}-{seed}.png"
                path = run / "pick" / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                if (key, probe.id, seed) in copies:
                    index, mirror = copies[(key, probe.id, seed)]
                    _copy_of(training[index], mirror=mirror).save(path)
                else:
                    textured((64, 64), seed=1000 + zlib.crc32(rel.encode()) % 10_000).save(path)
                grid.cells.append(GridCell(probe.id, key, seed, rel, "planted"))
                tag_fn.tags[str(path)] = by_probe.get(probe.id, PLAIN)
    return Planted(grid, tag_fn, training)


def character(side=SIDE, frontal=GOOD, leak=PLAIN, drift=PLAIN):
    return {"frontal": frontal, "side": side, "leak": leak, "drift": drift}


SOURCE = character(side={"1girl": 0.9, "from_side": 0.9}, frontal=PLAIN)


def score(planted: Planted, **kwargs):
    return score_grid(planted.grid, TRAITS, planted.training, planted.tag_fn, **kwargs)


# --------------------------------------------------------------------------------------------------
# The must-show rankings


def test_a_checkpoint_that_draws_the_side_pose_ranks_above_one_that_cannot(tmp_path):
    columns = {"source": SOURCE, "run_10": character(side=SIDE), "run_20": character(side=GOOD)}
    planted = plant(tmp_path, columns)
    ranking = score(planted)
    keys = [c.column for c in ranking.columns]
    assert keys.index("run_10") < keys.index("run_20")
    flexible, stiff = ranking.column("run_10"), ranking.column("run_20")
    assert flexible.pose == 1.0 and stiff.pose == 0.0
    assert flexible.traits == stiff.traits == 1.0
    assert flexible.score > stiff.score
    assert ranking.recommended == "run_10"
    assert "side: 2/2 samples show 'from side'" in flexible.evidence
    assert "side: 0/2 samples show 'from side'" in stiff.evidence
    assert "run_10" in ranking.reasons["recommended"]


def test_a_copy_of_a_training_picture_is_flagged_and_lowers_the_score(tmp_path):
    copies = {("run_20", "frontal", 1): (3, False), ("run_20", "side", 2): (4, True)}
    planted = plant(tmp_path, {"source": SOURCE, "run_10": character(), "run_20": character()}, copies)
    ranking = score(planted)
    copying, clean = ranking.column("run_20"), ranking.column("run_10")
    flagged = [c for c in copying.cells if c.copied]
    assert [(c.probe_id, c.seed, Path(c.nearest_training).name) for c in flagged] == [
        ("frontal", 1, "pose_03.png"),
        ("side", 2, "pose_04.png"),  # mirrored: training flips pictures
    ]
    assert all(c.similarity >= 0.95 for c in flagged)
    assert copying.copies == 2 and clean.copies == 0
    assert not any(c.copied for c in clean.cells)
    assert max(c.similarity for c in clean.cells) < 0.8
    assert copying.score == pytest.approx(clean.score - 2 / 8)
    assert ranking.recommended == "run_10"
    assert any(e.startswith("copies: 2 samples look like training pictures") for e in copying.evidence)


def test_leak_lowers_the_score(tmp_path):
    leaking = character(leak={"1girl": 0.9, "red_hair": 0.9})
    planted = plant(tmp_path, {"source": SOURCE, "run_10": leaking, "run_20": character()})
    ranking = score(planted)
    assert ranking.column("run_10").leak == 0.5
    assert ranking.column("run_20").leak == 0.0
    assert ranking.column("run_10").score == pytest.approx(ranking.column("run_20").score - 0.5)
    assert ranking.recommended == "run_20"
    assert "leak: traits appear on 2/2 samples without the token (50% of the traits on average)" in (
        ranking.column("run_10").evidence
    )


def test_drift_from_the_source_lowers_the_score(tmp_path):
    drifted = character(drift={"1girl": 0.9, "red_hair": 0.9, "solo": 0.1})
    planted = plant(tmp_path, {"source": SOURCE, "run_10": drifted, "run_20": character()})
    ranking = score(planted)
    # source drift cell tags {1girl, solo}; drifted {1girl, red hair}: Jaccard 1/3.
    assert ranking.column("run_10").drift == pytest.approx(2 / 3, abs=1e-4)
    assert ranking.column("run_20").drift == 0.0
    assert ranking.column("source").drift == 0.0
    assert ranking.column("run_10").score < ranking.column("run_20").score
    assert ranking.recommended == "run_20"


def test_the_source_column_is_never_recommended_even_when_it_scores_best(tmp_path):
    source = character()  # the source already "knows" everything: best possible score
    poor = character(side=GOOD, leak={"red_hair": 0.9})
    planted = plant(tmp_path, {"source": source, "run_10": poor, "run_20": poor})
    ranking = score(planted)
    assert ranking.columns[0].column == "source"
    assert ranking.recommended == "run_10"  # tie: the earlier step
    assert ranking.frontal != "source"
    assert "does not beat the source model" in ranking.reasons["recommended"]
    assert ranking.column("source").evidence[0].startswith("the source model")


def test_a_grid_with_only_the_source_recommends_nothing(tmp_path):
    ranking = score(plant(tmp_path, {"source": SOURCE}))
    assert ranking.recommended is None and ranking.frontal is None
    assert "no trained checkpoint" in ranking.reasons["recommended"]


def test_the_frontal_pick_is_the_most_faithful_checkpoint_without_copies(tmp_path):
    # run_30 is the most faithful but copies a picture; run_20 wins the frontal pick although
    # run_10 (more flexible) is recommended.
    columns = {
        "source": SOURCE,
        "run_10": character(frontal={"1girl": 0.9, "red_hair": 0.9}),
        "run_20": character(side=GOOD),
        "run_30": character(side=GOOD),
    }
    planted = plant(tmp_path, columns, copies={("run_30", "side", 1): (0, False)})
    ranking = score(planted)
    assert ranking.column("run_10").score > ranking.column("run_20").score
    assert ranking.recommended == "run_10"
    assert ranking.frontal == "run_20"  # same fit as run_30 minus the copy; later than nothing else
    assert "overfit for frontal poses" in ranking.reasons["frontal"]


def test_quality_needs_both_pose_and_traits(tmp_path):
    # An underfit column (poses, no character) and an overfit one (character, no poses) both lose
    # to a balanced one, though their plain averages would tie with it.
    underfit = character(side={"from_side": 0.9}, frontal=PLAIN)
    balanced = character(side={"from_side": 0.9, "red_hair": 0.9}, frontal={"red_hair": 0.9})
    overfit = character(side=GOOD)
    planted = plant(tmp_path, {"source": SOURCE, "run_10": underfit, "run_20": balanced, "run_30": overfit})
    ranking = score(planted)
    assert [c.column for c in ranking.columns][:1] == ["run_20"]
    assert ranking.column("run_10").score <= 0.0 and ranking.column("run_30").score <= 0.0


# --------------------------------------------------------------------------------------------------
# Inputs, loss, settings, problems


def test_tags_are_matched_in_any_spelling_and_strictly_above_the_threshold():
    assert tags_above({"Red_Hair": 0.9, "from side": 0.35, "^_^": 0.5, "solo": 0.36}, 0.35) == [
        "red hair",
        "^_^",
        "solo",
    ]


def test_loss_at_the_checkpoint_step_comes_from_the_loss_log(tmp_path):
    planted = plant(tmp_path, {"source": SOURCE, "run_10": character(), "run_20": character()})
    log = Path(planted.grid.run_dir) / "logging" / "loss.jsonl"
    log.parent.mkdir(parents=True)
    log.write_text("".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in range(1, 21)) + '{"ste')
    ranking = score(planted)
    assert ranking.column("run_10").loss == pytest.approx(0.1)
    assert ranking.column("run_20").loss == pytest.approx(0.05)
    assert ranking.column("source").loss is None
    smoothed = ranking.column("run_10").loss_smoothed
    assert 0.1 < smoothed < 1.0  # the debiased average of 1/1 .. 1/10
    assert "loss at step 10: 0.1000" in " ".join(ranking.column("run_10").evidence)


def test_loss_at_smooths_like_tensorboard():
    records = [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 4.0}, {"step": 3, "loss": float("nan")}]
    raw, smoothed = loss_at(records, 3)
    assert raw == 4.0
    assert smoothed == pytest.approx((0.99 * 0.01 * 2 + 0.01 * 4) / (1 - 0.99**2))
    assert loss_at(records, 0) == (None, None)


def test_score_settings_validate_by_field_name():
    with pytest.raises(ValueError, match=r"ScoreSettings.copy_similarity"):
        from_dict(ScoreSettings, {"copy_similarity": 1.5})
    with pytest.raises(ValueError, match=r"pose_weight / trait_weight"):
        ScoreSettings(pose_weight=0, trait_weight=0)
    assert from_dict(ScoreSettings, {"tag_threshold": "0.5"}).tag_threshold == 0.5


def test_without_traits_only_pose_counts_and_the_ranking_says_so(tmp_path):
    columns = {"source": SOURCE, "run_10": character(side=SIDE), "run_20": character(side=GOOD)}
    planted = plant(tmp_path, columns)
    ranking = score_grid(planted.grid, [], planted.training, planted.tag_fn)
    assert ranking.recommended == "run_10"
    assert ranking.column("run_10").measured == ["pose", "drift"]
    assert any("no character traits known" in w for w in ranking.warnings)


def test_an_unreadable_cell_is_reported_and_the_rest_scored(tmp_path):
    planted = plant(tmp_path, {"source": SOURCE, "run_10": character()})
    broken = planted.grid.image_path(planted.grid.cells[-1])
    broken.write_bytes(b"not a png")
    ranking = score(planted)
    assert any(str(broken) in w and "left out" in w for w in ranking.warnings)
    assert len(ranking.column("run_10").cells) == len(PROBES) * len(SEEDS) - 1
    assert all(str(broken) not in call for call in planted.tag_fn.calls)


def test_stop_between_tagger_batches(tmp_path):
    planted = plant(tmp_path, {"source": SOURCE, "run_10": character()})
    seen = []
    ctx = JobContext(progress=seen.append, should_stop=lambda: True)
    with pytest.raises(JobStopped, match="scoring stopped"):
        score(planted, ctx=ctx)
    assert planted.tag_fn.calls == []
    assert seen and seen[-1].total >= len(planted.grid.cells)
    assert not (tmp_path / "run" / "pick" / "ranking.json").exists()


def test_ranking_json_round_trip(tmp_path):
    planted = plant(tmp_path, {"source": SOURCE, "run_10": character(), "run_20": character(side=GOOD)})
    ranking = score(planted)
    path = save_ranking(tmp_path / "run", ranking)
    assert path == tmp_path / "run" / "pick" / "ranking.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["version"] == 1 and data["recommended"] == "run_10"
    again = load_ranking(tmp_path / "run")
    assert again == ranking
    assert Ranking.from_dict(json.loads(json.dumps(ranking.to_dict()))) == ranking
    assert load_ranking(tmp_path / "elsewhere") is None
    path.write_text("{broken", encoding="utf-8")
    with pytest.raises(ValueError, match=r"ranking\.json is damaged.*score the grid again"):
        load_ranking(tmp_path / "run")


# --------------------------------------------------------------------------------------------------
# The pieces


def test_similarity_finds_resized_reencoded_brightened_and_mirrored_copies():
    training = [textured((64, 64), seed=s) for s in range(8)]
    others = [textured((64, 64), seed=100 + s) for s in range(12)]
    pixels = np.clip(np.asarray(training[5], dtype=float) * 0.9 + 20, 0, 255)
    brighter = Image.fromarray(pixels.astype(np.uint8))
    bigger = training[2].resize((512, 512), Image.BICUBIC)
    mirrored = training[7].transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    cells = signatures([*others, brighter, bigger, mirrored])
    index, sims = nearest(cells, signatures(training), signatures(training, mirrored=True))
    assert list(index[-3:]) == [5, 2, 7]
    assert (sims[-3:] > 0.97).all()
    assert (sims[:-3] < 0.6).all()
    # Without the mirrored signatures a mirror image is not a copy.
    _, plain = nearest(signatures([mirrored]), signatures(training))
    assert plain[0] < 0.9


def test_similarity_of_solid_pictures_compares_colour():
    red, red2, green = (Image.new("RGB", (32, 32), c) for c in ((250, 0, 0), (255, 0, 0), (0, 255, 0)))
    _, sims = nearest(signatures([red2, green]), signatures([red]))
    assert sims[0] > 0.97 and sims[1] < 0.0
    index, sims = nearest(signatures([red]), signatures([]))
    assert list(index) == [-1] and list(sims) == [0.0]


def test_helpers():
    assert jaccard(["a", "b"], ["b", "c"]) == pytest.approx(1 / 3)
    assert jaccard([], []) == 1.0
    assert weighted_harmonic({"pose": 1.0, "traits": 0.5}, {"pose": 1, "traits": 1}) == pytest.approx(2 / 3)
    assert weighted_harmonic({"pose": 1.0, "traits": 0.0}, {"pose": 1, "traits": 1}) == 0.0
    assert weighted_harmonic({"pose": 1.0, "traits": 0.0}, {"pose": 1, "traits": 0}) == 1.0


def test_tagger_tag_fn_runs_the_onnx_double(tmp_path):
    from lib_dbchar.tagger.runner import TaggerConfig

    red = tmp_path / "red.png"
    image_for_tags(["red_hair", "from_side"], absent=["blue_eyes"]).save(red)
    blue = tmp_path / "blue.png"
    image_for_tags(["blue_eyes", "from_behind"], absent=["red_hair"]).save(blue)
    config = TaggerConfig(model_dir=str(TAGGER_V3_DIR))
    with tagger_tag_fn(config, batch_size=1) as tag:
        red_tags, blue_tags = tag([red, blue])
    assert {"red hair", "from side"} <= set(tags_above(red_tags, 0.35))
    assert "blue eyes" not in tags_above(red_tags, 0.35)
    assert {"blue eyes", "from behind"} <= set(tags_above(blue_tags, 0.35))
    assert min(red_tags.values()) > 0.05  # the floor


def test_score_grid_with_the_onnx_double_ranks_by_colour(tmp_path):
    """Real tagger pipeline end to end: red cells carry 'from side' for the double, grey ones not."""
    from lib_dbchar.tagger.runner import TaggerConfig

    red = image_for_tags(["red_hair", "from_side"])
    grey = image_for_tags(["1girl"], absent=["red_hair", "from_side", "blue_eyes"])
    planted = plant(tmp_path, {"source": SOURCE, "run_10": character(), "run_20": character()})
    for cell in planted.grid.cells:
        trained = cell.column != "source" and cell.probe_id in ("side", "frontal")
        redden = trained and (cell.column == "run_10" or cell.probe_id == "frontal")
        (red if redden else grey).save(planted.grid.image_path(cell))
    with tagger_tag_fn(TaggerConfig(model_dir=str(TAGGER_V3_DIR))) as tag:
        ranking = score_grid(planted.grid, ["red hair"], planted.training, tag)
    assert ranking.column("run_10").pose == 1.0 and ranking.column("run_20").pose == 0.0
    assert ranking.recommended == "run_10"
