"""The 10,861-tag bench double: its committed model matches build.py's table and tags like the real size."""

from __future__ import annotations

import shutil

from lib_dbchar.tagger.labels import read_tag_table
from lib_dbchar.tagger.runner import TaggerConfig, run_tagging
from tests.kit.tagger import TAGGER_DOUBLE_DIR, solid_image
from tests.kit.tagger_double import build


def test_bench_double_has_the_real_v3_shape_and_the_palette_tags(tmp_path):
    model_dir = tmp_path / "bench10k"
    model_dir.mkdir()
    shutil.copy(TAGGER_DOUBLE_DIR / "bench10k" / "model.onnx", model_dir)
    (model_dir / "selected_tags.csv").write_text(build.bench_csv_text(), encoding="utf-8")
    table = read_tag_table(model_dir / "selected_tags.csv")
    assert (len(table), len(table.rating), len(table.general), len(table.character)) == (
        10_861,
        4,
        8_106,
        2_751,
    )
    assert table.names[4] == "1girl" and table.display[-1] == "bench character 02748"

    pictures = tmp_path / "pics"
    pictures.mkdir()
    solid_image("red", (40, 40)).save(pictures / "red.png")
    solid_image((150, 120, 100), (40, 40)).save(pictures / "tan.png")
    result = run_tagging(TaggerConfig(model_dir=str(model_dir)), pictures, device="cpu")
    red, tan = result.images
    # The 21 small-double tags behave as in the small double; filler tags add a few dozen more.
    assert red.tags[:2] == ["1girl", "red hair"] and "blue eyes" not in red.tags
    assert 20 <= len(tan.tags) <= 60
    assert any(t.startswith("bench general") for t in tan.tags)
