"""Merge inputs are recorded under the names the host lists them by, as the webui's merger does."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import safetensors

from lib_dbchar.checkpoint import load_single_file
from lib_dbchar.host.base import CheckpointRef
from lib_dbchar.merge import MergeConfig, run_merge
from lib_dbchar.ui.merge_wizard import host_names
from tests.kit.sdfiles import nudged, write_models


def test_host_names_drop_the_short_hash_and_keep_sub_folders():
    refs = [
        CheckpointRef("anime/trained_800.safetensors [0123abcd45]", Path("/m/anime/trained_800.safetensors")),
        CheckpointRef("sd15.safetensors [deadbeef]", Path("/m/sd15.safetensors")),
        CheckpointRef("plain [name].safetensors", Path("/m/plain [name].safetensors")),
    ]
    assert host_names(refs) == {
        "/m/anime/trained_800.safetensors": "anime/trained_800.safetensors",
        "/m/sd15.safetensors": "sd15.safetensors",
        "/m/plain [name].safetensors": "plain [name].safetensors",
    }


def test_known_names_name_the_inputs_in_sd_merge_models(tmp_path, tiny_sd1):
    base = load_single_file(tiny_sd1.single_file)
    paths = write_models(
        tmp_path / "anime", {"a": nudged(base, 0.01, 1), "b": nudged(base, 0.5, 2), "c": base}
    )
    out = tmp_path / "out.safetensors"
    result = run_merge(
        MergeConfig(method="add_difference", multiplier=1.0),
        paths["a"],
        paths["b"],
        paths["c"],
        out,
        known_names={str(paths["a"]): "anime/a.safetensors"},
    )
    with safetensors.safe_open(str(out), "pt") as handle:
        models = json.loads(handle.metadata()["sd_merge_models"])
    digest = {k: hashlib.sha256(p.read_bytes()).hexdigest() for k, p in paths.items()}
    assert models[digest["a"]]["name"] == "anime/a.safetensors"
    # Files the host does not name keep their file name.
    assert models[digest["b"]]["name"] == "b.safetensors" and models[digest["c"]]["name"] == "c.safetensors"
    assert result.recipe["primary"]["name"] == "anime/a.safetensors"
