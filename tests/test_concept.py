"""The concept: token, prompts, [filewords], the class-prompt rule, caption handling, concept.json."""

import json
import random

import pytest

from lib_dbchar.concept import (
    FILEWORDS,
    GUIDE_NEGATIVE_PROMPT,
    Concept,
    arrange_tags,
    class_dir_name,
    class_image_count,
    class_prompt,
    contains_token,
    effective_instance_prompt,
    instance_prompt,
    load_concepts,
    resolve_dirs,
    sample_negative_prompt,
    sample_prompt,
    save_concepts,
    split_tags,
    strip_token,
    tidy_prompt,
    validate_concept,
)
from lib_dbchar.config import specs

NEEKO = Concept(instance_token="star guardian neeko")


def test_defaults_follow_the_guide():
    concept = Concept()
    assert concept.class_prompt == FILEWORDS
    assert concept.negative_prompt == GUIDE_NEGATIVE_PROMPT
    assert GUIDE_NEGATIVE_PROMPT.startswith("multiple girls, 2girls, 3girls, 4girls, (ugly:1.3)")
    assert GUIDE_NEGATIVE_PROMPT.endswith("partial faces, hair not attached to head")
    assert effective_instance_prompt(NEEKO) == "star guardian neeko, [filewords]"
    assert class_image_count(concept, 20) == 200
    assert class_image_count(Concept(num_class_images=37), 20) == 37
    assert class_dir_name(0) == "classifiers_0"
    # Every field carries a label for the UI form.
    assert all(info.spec.label for info in specs(Concept))


def test_instance_prompt_fills_filewords_and_never_repeats_the_token():
    caption = "1girl, star guardian neeko, smile"
    assert instance_prompt(NEEKO, caption) == "star guardian neeko, 1girl, smile"
    assert instance_prompt(NEEKO, "") == "star guardian neeko"


def test_instance_prompt_without_token_in_template_keeps_caption_token():
    concept = Concept(instance_token="sks", instance_prompt="[filewords], masterpiece")
    assert instance_prompt(concept, "sks, 1girl") == "sks, 1girl, masterpiece"


def test_class_prompt_strips_the_token_from_captions():
    assert class_prompt(NEEKO, "1girl, star guardian neeko, smile") == "1girl, smile"
    # Booru spelling with underscores and any case is the same token.
    assert class_prompt(NEEKO, "Star_Guardian_Neeko, solo") == "solo"
    # Inside a longer tag only the token's words go.
    assert class_prompt(Concept(instance_token="sks"), "sks person, red hair") == "person, red hair"
    # Whole words only: "sksa" is not the token.
    assert class_prompt(Concept(instance_token="sks"), "sksa, sks") == "sksa"


@pytest.mark.parametrize(
    "class_template",
    [
        "star guardian neeko, [filewords]",
        "a photo of Star Guardian Neeko",
        "[filewords], star_guardian_neeko",
    ],
)
def test_token_in_class_prompt_is_rejected_naming_the_field(class_template):
    concept = Concept(instance_token="star guardian neeko", class_prompt=class_template)
    with pytest.raises(ValueError, match=r"Concept\.class_prompt: .* contains the instance token"):
        validate_concept(concept)


def test_validation_accepts_the_guide_and_names_other_fields():
    validate_concept(NEEKO)
    validate_concept(Concept(instance_token="sks", class_prompt="a photo of a person"))
    with pytest.raises(ValueError, match=r"Concept\.instance_token"):
        validate_concept(Concept())
    with pytest.raises(ValueError, match=r"Concept 2\.instance_prompt: .*neither the token"):
        validate_concept(Concept(instance_token="sks", instance_prompt="a photo"), index=1)


def test_contains_token_is_word_bounded():
    assert contains_token("a sks dog", "sks")
    assert not contains_token("asks", "sks")
    assert not contains_token("anything", "")


def test_strip_token_and_tidy():
    assert strip_token("sks, , 1girl,", "sks") == "1girl"
    assert tidy_prompt("neeko, , smile,") == "neeko, smile"
    assert tidy_prompt("a photo of sks person") == "a photo of sks person"
    assert split_tags("1girl, long hair,\nsmile") == ["1girl", "long hair", "smile"]


def test_keep_first_n_and_shuffle_are_seeded():
    tags = ["a", "b", "c", "d", "e", "f"]
    shuffled = arrange_tags(tags, keep_first=2, shuffle=True, rng=random.Random(3))
    assert shuffled[:2] == ["a", "b"]
    assert sorted(shuffled) == tags and shuffled != tags
    assert shuffled == arrange_tags(tags, keep_first=2, shuffle=True, rng=random.Random(3))
    assert arrange_tags(tags, keep_first=2, shuffle=False, rng=random.Random(3)) == tags


def test_caption_dropout_and_shuffle_apply_only_with_a_random_source():
    concept = Concept(instance_token="sks", shuffle_tags=True, keep_tokens=1, caption_dropout=0.5)
    caption = "1girl, red hair, smile, sword, armor"
    assert instance_prompt(concept, caption) == "sks, 1girl, red hair, smile, sword, armor"
    prompts = [instance_prompt(concept, caption, rng=random.Random(i)) for i in range(200)]
    dropped = sum(p == "sks" for p in prompts)
    assert 60 < dropped < 140  # about half
    kept = [p for p in prompts if p != "sks"]
    assert all(p.startswith("sks, 1girl, ") for p in kept)
    assert len(set(kept)) > 10


def test_sample_prompt_defaults_to_token_and_first_caption():
    assert sample_prompt(NEEKO, "1girl, star guardian neeko, smile") == "star guardian neeko, 1girl, smile"
    assert sample_prompt(Concept(instance_token="x", sample_prompt="x, from side"), "a") == "x, from side"
    assert sample_negative_prompt(NEEKO) == GUIDE_NEGATIVE_PROMPT
    assert sample_negative_prompt(Concept(sample_negative_prompt="lowres")) == "lowres"


def test_resolve_dirs_defaults_to_project_folders(tmp_path):
    dataset, classes = resolve_dirs(NEEKO, tmp_path, 1)
    assert dataset == tmp_path / "dataset"
    assert classes == tmp_path / "classes" / "classifiers_1"
    dataset, classes = resolve_dirs(Concept(dataset_dir="pics", class_dir="/abs/c"), tmp_path, 0)
    assert dataset == tmp_path / "pics"
    assert str(classes) == "/abs/c"


def test_concepts_round_trip_through_concept_json(tmp_path):
    path = tmp_path / "concept.json"
    concepts = [
        NEEKO,
        Concept(instance_token="sks", num_class_images=50, shuffle_tags=True, caption_dropout=0.1),
    ]
    save_concepts(path, concepts)
    assert load_concepts(path) == concepts
    record = json.loads(path.read_text(encoding="utf-8"))
    assert record["version"] == 1
    assert record["concepts"][1]["num_class_images"] == 50
    # A single concept object (no list) reads as one concept.
    path.write_text(json.dumps({"instance_token": "solo"}), encoding="utf-8")
    assert load_concepts(path) == [Concept(instance_token="solo")]


def test_broken_concept_json_names_the_file_and_field(tmp_path):
    path = tmp_path / "concept.json"
    with pytest.raises(FileNotFoundError, match="Concept tab"):
        load_concepts(path)
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match=r"concept\.json is not valid JSON"):
        load_concepts(path)
    path.write_text(
        json.dumps({"concepts": [{"instance_token": "a", "caption_dropout": 3}]}), encoding="utf-8"
    )
    with pytest.raises(ValueError, match=r"concept 1: Concept\.caption_dropout .* above the maximum"):
        load_concepts(path)
