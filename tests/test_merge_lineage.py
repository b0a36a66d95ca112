"""Does the trained model descend from the chosen source? And the merge command line."""

from __future__ import annotations

import argparse
import math

import pytest
import safetensors.torch
import torch

from lib_dbchar.checkpoint import load_single_file
from lib_dbchar.checkpoint.reader import open_checkpoint
from lib_dbchar.errors import JobStopped
from lib_dbchar.jobs import JobContext
from lib_dbchar.merge import LineageConfig, check_descent, lineage_distance
from lib_dbchar.merge import cli as merge_cli
from lib_dbchar.merge.lineage import compared_keys, relative_distance
from tests.kit.sdfiles import nudged, shuffled, write_models


@pytest.fixture(scope="module")
def family(tiny_sd1, tmp_path_factory):
    """source, trained (1% away), halfway (10%), unrelated (the source's values shuffled)."""
    folder = tmp_path_factory.mktemp("lineage")
    source = load_single_file(tiny_sd1.single_file)
    relatives = {
        "trained": nudged(source, 0.01, 1),
        "halfway": nudged(source, 0.1, 2),
        "unrelated": shuffled(source, 9),
    }
    return {"source": tiny_sd1.single_file, **write_models(folder, relatives)}


def test_distance_is_the_median_relative_change(family):
    distance = lineage_distance(family["trained"], family["source"])
    assert distance.median == pytest.approx(0.01, rel=0.2)
    assert set(distance.by_component) == {"unet", "text_encoder"}
    assert lineage_distance(family["source"], family["source"]).median == 0.0
    assert relative_distance(torch.tensor([3.0, 4.0]), torch.tensor([0.0, 0.0])) is None
    assert relative_distance(torch.tensor([3.0, 4.0]), torch.tensor([3.0, 0.0])) == pytest.approx(4 / 3)


def test_descends_against_an_unrelated_model(family):
    report = check_descent(family["trained"], family["source"], [family["unrelated"]])
    assert report.verdict == "descends"
    assert report.other_distances["unrelated.safetensors"] > 10 * report.source_distance
    wrong = check_descent(family["trained"], family["unrelated"], [family["source"]])
    assert wrong.verdict == "unrelated" and "probably not" in wrong.message


def test_verdict_alone_uses_the_documented_thresholds(family):
    assert check_descent(family["trained"], family["source"]).verdict == "descends"
    assert check_descent(family["halfway"], family["source"]).verdict == "unclear"
    assert check_descent(family["unrelated"], family["source"]).verdict == "unrelated"
    same = check_descent(family["source"], family["source"])
    assert same.verdict == "descends" and "untrained" in same.message


def test_other_architecture_is_unrelated_without_reading_weights(family, tiny_sd2):
    report = check_descent(family["trained"], tiny_sd2.single_file)
    assert report.verdict == "unrelated" and math.isnan(report.source_distance)
    assert "Stable Diffusion 2.x" in report.message


def test_sampling_and_stop(family):
    with open_checkpoint(family["trained"]) as a, open_checkpoint(family["source"]) as b:
        every = compared_keys(a, b)
        sample = compared_keys(a, b, max_tensors=10)
    assert len(sample) == 10 and sample[0] == every[0] and sample[-1] == every[-1]
    assert (
        lineage_distance(family["trained"], family["source"], config=LineageConfig(max_tensors=10)).tensors
        == 10
    )
    with pytest.raises(JobStopped):
        lineage_distance(family["trained"], family["source"], ctx=JobContext(should_stop=lambda: True))


# --- the command line -------------------------------------------------------------------------------


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    merge_cli.add_arguments(parser)
    return merge_cli.run(parser.parse_args(argv))


def test_cli_merge_prints_the_output_path(family, tmp_path, capsys):
    out = tmp_path / "cli.safetensors"
    code = run_cli(
        [
            "--primary",
            str(family["trained"]),
            "--secondary",
            str(family["halfway"]),
            "--tertiary",
            str(family["source"]),
            "--method",
            "add_difference",
            "--multiplier",
            "1",
            "--discard",
            "^model_ema",
            "--out",
            str(out),
        ]
    )
    captured = capsys.readouterr()
    assert code == 0 and captured.out.strip() == str(out) and out.is_file()
    assert "merged" in captured.err and "100%" in captured.err
    assert safetensors.torch.load_file(str(out))["model.diffusion_model.out.2.weight"].dtype == torch.float16


def test_cli_refusals_are_messages_not_tracebacks(family, tmp_path, capsys):
    out = str(tmp_path / "x.safetensors")
    assert (
        run_cli(["--primary", str(family["trained"]), "--tertiary", str(family["source"]), "--out", out]) == 1
    )
    assert "--secondary is required" in capsys.readouterr().err
    assert (
        run_cli(["--primary", str(family["trained"]), "--secondary", str(family["source"]), "--out", out])
        == 1
    )
    assert "tertiary: Add difference needs C" in capsys.readouterr().err
    assert (
        run_cli(
            [
                "--primary",
                str(family["trained"]),
                "--secondary",
                str(family["source"]),
                "--method",
                "weighted_sum",
                "--multiplier",
                "3",
                "--out",
                out,
            ]
        )
        == 1
    )
    assert "MergeConfig.multiplier" in capsys.readouterr().err


def test_cli_check_lineage_stops_an_unrelated_tertiary(family, tmp_path, capsys):
    out = tmp_path / "x.safetensors"
    code = run_cli(
        [
            "--primary",
            str(family["trained"]),
            "--secondary",
            str(family["source"]),
            "--tertiary",
            str(family["unrelated"]),
            "--check-lineage",
            "--out",
            str(out),
        ]
    )
    assert code == 1 and "lineage: unrelated" in capsys.readouterr().err and not out.exists()


def test_cli_lora(family, tmp_path, capsys):
    out = tmp_path / "char.safetensors"
    code = run_cli(
        [
            "--primary",
            str(family["trained"]),
            "--tertiary",
            str(family["source"]),
            "--method",
            "lora",
            "--rank",
            "4",
            "--out",
            str(out),
        ]
    )
    captured = capsys.readouterr()
    assert code == 0 and captured.out.strip() == str(out)
    assert any(k.startswith("lora_unet_") for k in safetensors.torch.load_file(str(out)))


def test_merge_is_registered_with_the_main_cli():
    from lib_dbchar.cli import COMMAND_MODULES

    assert COMMAND_MODULES["merge"] == "lib_dbchar.merge.cli"
    assert merge_cli.HELP and "\n" not in merge_cli.HELP
