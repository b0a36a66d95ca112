"""``python -m lib_dbchar prep SRC DST``."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from PIL import Image

from lib_dbchar import cli
from lib_dbchar.dataset import cli as prep_cli
from tests.kit.images import file_hashes, textured

ROOT = Path(__file__).resolve().parents[1]


def _source(folder):
    folder.mkdir()
    textured((900, 600), 1).save(folder / "a.jpg", quality=90)
    (folder / "a.txt").write_text("1girl, from side", encoding="utf-8")
    textured((500, 800), 2).save(folder / "b.png")
    (folder / "broken.png").write_bytes(b"")
    return folder


def test_prep_is_registered_and_its_options_come_from_the_config():
    assert cli.COMMAND_MODULES["prep"] == "lib_dbchar.dataset.cli"
    help_text = cli.build_parser()._subparsers._group_actions[0].choices["prep"].format_help()
    for flag in (
        "--resolution",
        "--crop",
        "--flip, --no-flip",
        "--small-images",
        "--max-megapixels",
        "--json",
    ):
        assert flag in help_text


def test_prep_command_writes_the_dataset_and_a_summary(tmp_path, capsys):
    src = _source(tmp_path / "src")
    before = file_hashes(src)
    code = cli.main(
        ["prep", str(src), str(tmp_path / "ds"), "--crop", "center", "--resolution", "256", "--flip"]
    )
    out = capsys.readouterr()
    assert code == 0
    assert "Prepared 2 pictures" in out.out
    assert "skipped broken.png: the file is empty (0 bytes)" in out.out
    assert "1/3" in out.err  # progress lines go to stderr
    names = sorted(p.name for p in (tmp_path / "ds").glob("*.png"))
    assert names == ["a-flipped.png", "a.png", "b-flipped.png", "b.png"]
    with Image.open(tmp_path / "ds" / "a.png") as image:
        assert image.size == (256, 256)
    assert file_hashes(src) == before


def test_prep_command_json_output(tmp_path, capsys):
    src = _source(tmp_path / "src")
    code = cli.main(["prep", str(src / "a.jpg"), str(src / "a.txt"), str(tmp_path / "ds"), "--json"])
    result = json.loads(capsys.readouterr().out)
    assert code == 0
    assert [p["name"] for p in result["prepared"]] == ["a.png"]
    assert result["prepared"][0]["caption"] == "copied"


def test_invalid_option_names_the_field(tmp_path, capsys):
    src = _source(tmp_path / "src")
    code = cli.main(["prep", str(src), str(tmp_path / "ds"), "--resolution", "500"])
    assert code == 2
    assert "PrepConfig.resolution: 500 is not a multiple of 64" in capsys.readouterr().err
    assert not (tmp_path / "ds").exists()


def test_nothing_usable_exits_1(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    (src / "x.png").write_bytes(b"")
    assert cli.main(["prep", str(src), str(tmp_path / "ds")]) == 1
    assert "skipped x.png" in capsys.readouterr().out


def test_config_from_args_keeps_defaults_for_options_not_given():
    parser = cli.build_parser()
    args = parser.parse_args(["prep", "s", "d", "--no-face-detector", "--background", "black"])
    config = prep_cli.config_from_args(args)
    assert (config.face_detector, config.background, config.resolution, config.crop) == (
        False,
        "black",
        512,
        "focal",
    )


def test_module_entry_point_runs_in_a_fresh_process(tmp_path):
    src = _source(tmp_path / "src")
    # An empty model cache and offline mode: the detector cannot be had, focal falls back to saliency.
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    done = subprocess.run(
        [sys.executable, "-m", "lib_dbchar", "prep", str(src), str(tmp_path / "ds"), "--no-allow-download"],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "Focal crops: saliency, because:" in done.stdout
    assert sorted(p.name for p in (tmp_path / "ds").glob("*.png")) == ["a.png", "b.png"]
    shutil.rmtree(tmp_path / "ds")
