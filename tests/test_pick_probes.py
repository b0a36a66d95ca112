"""The probe set of issue #7 on planted datasets: traits, poses the dataset lacks, leak/drift, JSON."""

import json
from pathlib import Path

import pytest

from lib_dbchar.concept import Concept, class_prompt, contains_token, save_concepts
from lib_dbchar.pick.probes import (
    PROBE_KINDS,
    InvalidProbe,
    Probe,
    build_probes,
    character_traits,
    dataset_tag_counts,
    is_trait_tag,
    load_probes,
    probes_for_run,
    probes_path,
    save_probes,
)
from lib_dbchar.train.config import TrainConfig
from lib_dbchar.train.run import RunSpec, save_run_spec

CONCEPT = Concept(instance_token="sks", sample_negative_prompt="lowres, bad hands")
CAPTION = "1girl, solo, sks, red hair, school uniform, looking at viewer, white background, smile"


def plant_project(root: Path, pictures: int = 5, caption: str = CAPTION) -> Path:
    """A project whose captions all share ``caption`` plus one tag of their own."""
    dataset = root / "dataset"
    dataset.mkdir(parents=True)
    for i in range(pictures):
        (dataset / f"p{i}.png").write_bytes(b"")  # only the names matter to the caption reader
        (dataset / f"p{i}.txt").write_text(f"{caption}, pose{i}", encoding="utf-8")
    save_concepts(root / "concept.json", [CONCEPT])
    return root


def plant_manifest(dataset: Path, name: str, label: str, *, undone: bool = False) -> None:
    folder = dataset / ".dbchar" / "caption-backups" / name
    folder.mkdir(parents=True)
    doc = {"label": label, "created": name, "root": str(dataset), "undone": undone, "files": []}
    (folder / "manifest.json").write_text(json.dumps(doc), encoding="utf-8")


# --- traits ------------------------------------------------------------------------------------


def test_traits_come_from_captions_without_token_pose_framing_or_background(tmp_path):
    project = plant_project(tmp_path / "p")
    traits = character_traits(project)
    assert traits == ["red hair", "school uniform"]


def test_traits_dropped_from_captions_are_found_in_backups_and_tagger_json(tmp_path):
    project = plant_project(tmp_path / "p")
    plant_manifest(project / "dataset", "20260101-000000", "drop traits: blue eyes, ahoge")
    plant_manifest(project / "dataset", "20260101-000001", "drop traits: green skin", undone=True)
    plant_manifest(project / "dataset", "20260101-000002", "remove: smile")
    images = [
        {"image": f"p{i}.png", "general": [["long hair", 0.9], ["from side", 0.8], [f"x{i}", 0.5]]}
        for i in range(5)
    ]
    (project / "tags.json").write_text(json.dumps({"images": images}), encoding="utf-8")
    traits = character_traits(project)
    assert traits == ["red hair", "school uniform", "long hair", "blue eyes", "ahoge"]


def test_traits_share_threshold_and_bad_tagger_json(tmp_path):
    project = plant_project(tmp_path / "p")
    assert "pose0" in character_traits(project, min_share=0.2)
    with pytest.raises(ValueError, match="min_share"):
        character_traits(project, min_share=0)
    (project / "tags.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match=r"tags\.json.*tag the dataset again"):
        character_traits(project)


@pytest.mark.parametrize(
    ("tag", "trait"),
    [
        ("red hair", True),
        ("Looking_At_Viewer", False),
        ("from behind", False),
        ("simple background", False),
        ("1girl", False),
        ("smile", False),
    ],
)
def test_is_trait_tag(tag, trait):
    assert is_trait_tag(tag) is trait


# --- building probes ---------------------------------------------------------------------------


def _by_id(probes):
    return {p.id: p for p in probes}


def test_probes_pick_what_the_dataset_lacks(tmp_path):
    project = plant_project(tmp_path / "p")
    counts = dataset_tag_counts(project / "dataset")
    probes = _by_id(build_probes(CONCEPT, character_traits(project), counts, seeds=(1, 2)))
    assert list(probes) == list(PROBE_KINDS)
    # The dataset wears a school uniform: the outfit probe takes the next candidate.
    assert probes["outfit"].expect_tags == ("kimono",)
    assert probes["background"].expect_tags == ("beach",)
    assert probes["side"].expect_tags == ("from side",)
    assert probes["behind"].expect_tags == ("from behind",)
    assert "not in the dataset" in probes["side"].label
    for kind in ("frontal", "side", "behind", "outfit", "background"):
        assert probes[kind].prompt.startswith("sks, 1girl, solo, red hair, school uniform")
    assert probes["side"].prompt.endswith("from side")
    assert probes["frontal"].prompt.endswith("looking at viewer")
    assert all(p.seeds == (1, 2) and p.negative == "lowres, bad hands" for p in probes.values())


def test_related_tags_count_as_present_and_a_present_pose_is_labelled():
    counts = {"1girl": 4, "serafuku": 4, "kimono": 1, "ocean": 2, "profile": 3}
    probes = _by_id(build_probes(CONCEPT, ["red hair"], counts))
    assert probes["outfit"].expect_tags == ("maid",)  # serafuku = school uniform, kimono present
    assert probes["background"].expect_tags == ("forest",)  # ocean = beach
    assert probes["side"].expect_tags == ("from side",)
    assert "the dataset has 'profile' too" in probes["side"].label


def test_leak_has_no_token_and_no_traits_and_drift_is_the_class_prompt(tmp_path):
    project = plant_project(tmp_path / "p")
    counts = dataset_tag_counts(project / "dataset")
    probes = _by_id(build_probes(CONCEPT, ["red hair", "school uniform"], counts))
    leak, drift = probes["leak"], probes["drift"]
    assert not contains_token(leak.prompt, "sks")
    assert leak.prompt == "1girl, solo, looking at viewer"
    # Default class prompt "[filewords]": the dataset's frequent tags (ties A-Z), the token stripped.
    typical = "1girl, looking at viewer, red hair, school uniform, sks, smile, solo, white background"
    assert drift.prompt == class_prompt(CONCEPT, typical)
    assert not contains_token(drift.prompt, "sks")
    custom = Concept(instance_token="sks", class_prompt="a photo of a girl")
    assert _by_id(build_probes(custom, [], counts))["drift"].prompt == "a photo of a girl"


def test_pose_tags_passed_as_traits_stay_out_of_the_prompts():
    probes = _by_id(build_probes(CONCEPT, ["red hair", "from side", "sks", "white background"], {}))
    assert probes["frontal"].prompt == "sks, red hair, looking at viewer"
    assert probes["behind"].prompt == "sks, red hair, from behind"


def test_build_probes_needs_a_token():
    with pytest.raises(ValueError, match="instance_token"):
        build_probes(Concept(), ["red hair"], {})


# --- the probe and its file --------------------------------------------------------------------


def test_probe_validation_names_the_field():
    good = {"id": "side", "kind": "side", "prompt": "sks, from side", "seeds": [1, 2]}
    assert Probe.from_dict(good).seeds == (1, 2)
    cases = [
        ({"kind": "sideways"}, r"\.kind: 'sideways' is not one of"),
        ({"id": "Side View"}, r"\.id: use lower-case"),
        ({"seeds": [1, 1]}, r"\.seeds: .* repeats"),
        ({"seeds": "12"}, r"\.seeds: expected a list"),
        ({"seeds": [-3]}, r"\.seeds: -3 is not a seed"),
        ({"prompt": "  "}, r"\.prompt: must not be empty"),
        ({"colour": "red"}, "unknown field"),
    ]
    for change, message in cases:
        with pytest.raises(InvalidProbe, match=message):
            Probe.from_dict({**good, **change})
    with pytest.raises(ValueError, match=r"\.prompt: missing"):
        Probe.from_dict({k: v for k, v in good.items() if k != "prompt"})


def test_probes_json_round_trip_and_user_edits_are_kept(tmp_path):
    run = tmp_path / "run"
    assert load_probes(run) is None
    probes = build_probes(CONCEPT, ["red hair"], {"1girl": 3})
    path = save_probes(run, probes)
    assert path == run / "pick" / "probes.json"
    assert load_probes(run) == probes
    doc = json.loads(path.read_text(encoding="utf-8"))
    doc["probes"][1]["prompt"] = "sks, red hair, from side, sitting"
    path.write_text(json.dumps(doc), encoding="utf-8")
    assert load_probes(run)[1].prompt == "sks, red hair, from side, sitting"


def test_bad_probes_file_says_which_file_probe_and_field(tmp_path):
    run = tmp_path / "run"
    path = probes_path(run)
    path.parent.mkdir(parents=True)
    path.write_text("{oops", encoding="utf-8")
    with pytest.raises(ValueError, match=r"probes\.json is not valid JSON .*delete it"):
        load_probes(run)
    path.write_text(json.dumps({"probes": {"id": "x"}}), encoding="utf-8")
    with pytest.raises(ValueError, match=r"probes\.json: expected"):
        load_probes(run)
    probe = {"id": "side", "kind": "side", "prompt": "p", "seeds": [1]}
    path.write_text(json.dumps({"probes": [probe, {**probe, "seeds": ["x"]}]}), encoding="utf-8")
    with pytest.raises(ValueError, match=r"probes\.json, probe 2: Probe 'side'\.seeds"):
        load_probes(run)
    path.write_text(json.dumps({"probes": [probe, probe]}), encoding="utf-8")
    with pytest.raises(ValueError, match="used twice"):
        load_probes(run)
    with pytest.raises(ValueError, match="empty"):
        save_probes(run, [])


def test_probes_for_run_builds_once_then_keeps_the_file(tmp_path):
    project = plant_project(tmp_path / "p")
    config = TrainConfig(source_checkpoint=str(tmp_path / "source.safetensors"))
    spec = RunSpec(project, "run1", config, (CONCEPT,), tmp_path / "models")
    save_run_spec(spec)
    probes = probes_for_run(spec.run_dir, seeds=(7,))
    assert [p.id for p in probes] == list(PROBE_KINDS)
    assert probes[0].prompt == "sks, 1girl, solo, red hair, school uniform, looking at viewer"
    save_probes(spec.run_dir, probes[:2])
    assert probes_for_run(spec.run_dir) == probes[:2]
