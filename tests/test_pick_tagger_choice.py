"""Pick a checkpoint scores with the tagger the project was tagged with, when it is still there."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from lib_dbchar.pick.run import recorded_tagger
from lib_dbchar.tagger.models import DEFAULT_MODEL, MODEL_KEYS
from lib_dbchar.tagger.runner import TaggerConfig, run_tagging
from tests.kit.tagger import TAGGER_V3_DIR


def _record(project: Path, tagger: object) -> None:
    project.mkdir(parents=True, exist_ok=True)
    (project / "tags.json").write_text(json.dumps({"model": "x", "tagger": tagger}), encoding="utf-8")


def test_the_tags_json_of_a_tagging_run_names_its_model_and_pick_reuses_it(tmp_path):
    project = tmp_path / "neeko"
    dataset = project / "dataset"
    dataset.mkdir(parents=True)
    Image.new("RGB", (32, 32), (220, 30, 30)).save(dataset / "a.png")
    run_tagging(
        TaggerConfig(model_dir=str(TAGGER_V3_DIR)), dataset, device="cpu", json_out=project / "tags.json"
    )
    record = json.loads((project / "tags.json").read_text(encoding="utf-8"))
    assert record["tagger"]["model_dir"] == str(TAGGER_V3_DIR)
    chosen = recorded_tagger(project)
    assert isinstance(chosen, TaggerConfig) and chosen.model_dir == str(TAGGER_V3_DIR)


def test_a_registry_model_is_reused_by_name(tmp_path):
    other = next(k for k in MODEL_KEYS if k != DEFAULT_MODEL)
    _record(tmp_path, {"model": other, "model_dir": ""})
    chosen = recorded_tagger(tmp_path)
    assert chosen.model == other and chosen.model_dir == ""


def test_no_usable_record_means_the_default_model(tmp_path):
    assert recorded_tagger(tmp_path) is None  # never tagged here
    _record(tmp_path, {"model": DEFAULT_MODEL, "model_dir": str(tmp_path / "gone")})
    assert recorded_tagger(tmp_path) is None  # the local folder was removed
    _record(tmp_path, {"model": "no-such-tagger", "model_dir": ""})
    assert recorded_tagger(tmp_path) is None  # a model this version does not know
    (tmp_path / "tags.json").write_text("{not json", encoding="utf-8")
    assert recorded_tagger(tmp_path) is None
    _record(tmp_path, None)  # a record from before the tagger was written down
    assert recorded_tagger(tmp_path).model == DEFAULT_MODEL
