"""Tag tables, tag selection (thresholds, MCut) and caption formatting."""

from __future__ import annotations

import numpy as np
import pytest

from lib_dbchar.tagger.captions import (
    CaptionStyle,
    caption_tags,
    dedupe,
    escape_tag,
    merge_caption,
    parse_replacements,
    split_caption,
    tag_key,
    unescape_tag,
)
from lib_dbchar.tagger.errors import TaggerModelError
from lib_dbchar.tagger.labels import display_name, read_tag_table
from lib_dbchar.tagger.postprocess import ImageTags, ScoredTag, Thresholds, mcut_threshold, select_tags
from tests.kit.tagger import TAGGER_V2_DIR, TAGGER_V3_DIR, expected_tag_probs
from tests.kit.tagger_double.reference import reference_labels, reference_tags


def probs_for(colour) -> np.ndarray:
    return np.array(list(expected_tag_probs(colour).values()), dtype=np.float32)


@pytest.fixture(scope="module")
def table():
    return read_tag_table(TAGGER_V3_DIR / "selected_tags.csv")


# --------------------------------------------------------------------------------------------------
# selected_tags.csv


def test_table_reads_integer_and_float_categories_alike(table):
    v2 = read_tag_table(TAGGER_V2_DIR / "selected_tags.csv")  # writes 9.0 / 0.0 / 4.0
    assert v2.names == table.names
    assert table.rating.tolist() == [0, 1, 2, 3]
    assert v2.general.tolist() == table.general.tolist() == list(range(4, 19))
    assert v2.character.tolist() == [19, 20]
    assert table.display[table.names.index("long_hair")] == "long hair"
    assert table.display[table.names.index("^_^")] == "^_^"


def test_kaomoji_keep_their_underscores():
    assert display_name("0_0") == "0_0" and display_name(">_<") == ">_<"
    assert display_name("from_side") == "from side" and display_name("a_0_0") == "a 0 0"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tag_id,name,count\n1,x,3\n", "no category column"),
        ("tag_id,name,category,count\n1,x,nine,3\n", r"line 2: category 'nine' is not a number"),
        ("tag_id,name,category,count\n1,x,4.5,3\n", "not a whole number"),
        ("tag_id,name,category,count\n", "lists no tags"),
    ],
)
def test_bad_csvs_are_named_with_the_line(tmp_path, text, message):
    path = tmp_path / "selected_tags.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(TaggerModelError, match=message) as info:
        read_tag_table(path)
    assert str(path) in str(info.value)


# --------------------------------------------------------------------------------------------------
# Selection


def names(tags) -> list[str]:
    return [t.name for t in tags]


def test_red_at_default_thresholds(table):
    tags = select_tags(probs_for("red"), table)
    # Strict ">": long hair 0.36 in, smile 0.34 out; hakurei reimu 0.84 is below 0.85.
    assert names(tags.general) == ["1girl", "red hair", "solo", "from side", "upper body", "long hair"]
    assert tags.character == ()
    assert [round(t.score, 3) for t in tags.general] == [0.97, 0.96, 0.86, 0.73, 0.62, 0.36]
    assert list(tags.rating) == ["general", "sensitive", "questionable", "explicit"]
    assert tags.rating["questionable"] == pytest.approx(0.04, abs=1e-6)


def test_cyan_selects_the_character(table):
    tags = select_tags(probs_for("cyan"), table)
    assert names(tags.character) == ["hatsune miku"]
    assert "0_0" in names(tags.general)


def test_threshold_is_strict_in_float64(table):
    probs = np.zeros(len(table), dtype=np.float32)
    probs[table.names.index("smile")] = np.float32(0.35)  # 0.3499999940... in float64: not above
    probs[table.names.index("solo")] = np.nextafter(np.float32(0.35), np.float32(1))
    assert names(select_tags(probs, table).general) == ["solo"]
    # float32(0.85) is 0.8500000238... > 0.85: kept, as the reference's Python floats keep it
    # (a float32 comparison would round the threshold up to the same value and drop it).
    probs[table.names.index("hatsune_miku")] = np.float32(0.85)
    assert names(select_tags(probs, table).character) == ["hatsune miku"]


def test_mcut_matches_the_documented_cuts(table):
    red = select_tags(probs_for("red"), table, Thresholds(general_mcut=True))
    assert names(red.general) == ["1girl", "red hair", "solo", "from side", "upper body"]
    cyan = select_tags(probs_for("cyan"), table, Thresholds(general_mcut=True))
    assert names(cyan.general) == ["1girl", "solo"]
    assert mcut_threshold(np.array([0.97, 0.96, 0.86, 0.73, 0.62, 0.36, 0.34])) == pytest.approx(0.49)


def test_character_mcut_is_floored(table):
    # Red: characters 0.84 (reimu) and ~0.0x (miku): MCut puts the cut in between, above the floor.
    red = select_tags(probs_for("red"), table, Thresholds(character_mcut=True))
    assert names(red.character) == ["hakurei reimu"]
    low = np.zeros(len(table), dtype=np.float32)
    low[table.character] = [0.14, 0.01]
    # MCut alone would be 0.075 and keep the 0.14 tag; the 0.15 floor removes it.
    assert select_tags(low, table, Thresholds(character_mcut=True)).character == ()


def test_mcut_edge_cases():
    assert mcut_threshold(np.array([0.7])) == 0.0
    assert mcut_threshold(np.array([])) == 0.0
    assert mcut_threshold(np.array([0.9, 0.5, 0.1])) == pytest.approx(0.7)  # equal gaps: the higher one


def test_equal_scores_keep_csv_order(table):
    probs = np.zeros(len(table), dtype=np.float32)
    for tag in ("upper_body", "1girl", "red_hair"):
        probs[table.names.index(tag)] = 0.5
    assert names(select_tags(probs, table).general) == ["1girl", "upper body", "red hair"]


def test_selection_equals_the_reference_on_random_outputs(table):
    labels = reference_labels(TAGGER_V3_DIR / "selected_tags.csv")
    rng = np.random.default_rng(11)
    for case in range(200):
        probs = rng.uniform(0, 1, len(table)).astype(np.float32)
        if case % 3 == 0:
            probs[rng.integers(0, len(table), 6)] = np.float32(0.35)  # ties at the threshold
        rule = Thresholds(0.35, 0.85, general_mcut=case % 2 == 1, character_mcut=case % 4 == 1)
        ours = select_tags(probs, table, rule)
        general, characters, ratings = reference_tags(
            probs, labels, general_mcut=rule.general_mcut, character_mcut=rule.character_mcut
        )
        assert [(t.name, t.score) for t in ours.general] == general
        assert {t.name: t.score for t in ours.character} == characters
        assert ours.rating == ratings


def test_wrong_output_length_is_refused(table):
    with pytest.raises(ValueError, match="expected 21 probabilities"):
        select_tags(np.zeros(20, dtype=np.float32), table)


# --------------------------------------------------------------------------------------------------
# Captions


def scored(*items: tuple[str, float]) -> tuple[ScoredTag, ...]:
    return tuple(ScoredTag(display_name(raw), raw, p) for raw, p in items)


SAMPLE = ImageTags(
    general=scored(("1girl", 0.99), ("red_hair", 0.9), ("ganyu_(genshin_impact)", 0.8), ("^_^", 0.5)),
    character=scored(("hatsune_miku", 0.87)),
    rating={"general": 0.9},
)


def test_default_caption_is_characters_first_unescaped_without_ratings():
    assert caption_tags(SAMPLE) == ["hatsune miku", "1girl", "red hair", "ganyu (genshin impact)", "^_^"]


def test_escape_alphabetical_and_max_tags():
    style = CaptionStyle(escape=True, order="alphabetical")
    assert caption_tags(SAMPLE, style) == [
        "hatsune miku", "1girl", "^_^", "ganyu \\(genshin impact\\)", "red hair",
    ]  # fmt: skip
    # The 3 most confident (of either kind), then in caption order.
    assert caption_tags(SAMPLE, CaptionStyle(max_tags=3)) == ["hatsune miku", "1girl", "red hair"]


def test_exclusions_match_raw_and_display_forms_ignoring_case():
    style = CaptionStyle(exclude=("RED_HAIR", "Ganyu (Genshin Impact)", "^_^", "Hatsune Miku"))
    assert caption_tags(SAMPLE, style) == ["1girl"]
    assert caption_tags(SAMPLE, CaptionStyle(exclude=("red hair",))) == [
        "hatsune miku", "1girl", "ganyu (genshin impact)", "^_^",
    ]  # fmt: skip


def test_always_first_and_replacements():
    style = CaptionStyle(
        always_first=("sg neeko", "1girl"),
        replacements=parse_replacements("red hair -> crimson hair, ^_^ -> , hatsune_miku -> miku"),
    )
    assert caption_tags(SAMPLE, style) == [
        "sg neeko",
        "1girl",
        "miku",
        "crimson hair",
        "ganyu (genshin impact)",
    ]


def test_replacements_must_have_an_arrow():
    with pytest.raises(ValueError, match="'red hair' is not 'old -> new'"):
        parse_replacements("red hair")


def test_escaping_round_trips_and_keys_ignore_case_escapes_and_underscores():
    assert escape_tag("a\\b (c)") == "a\\\\b \\(c\\)"
    assert unescape_tag(escape_tag("a\\b (c)")) == "a\\b (c)"
    assert tag_key("Long_Hair") == tag_key(" long  hair ") == tag_key("long\\ hair".replace("\\", ""))
    assert tag_key("ganyu \\(genshin impact\\)") == "ganyu (genshin impact)"
    assert tag_key("^_^") == "^_^"


def test_split_and_dedupe():
    assert split_caption(" a, b ,,c\nd ") == ["a", "b", "c", "d"]
    assert dedupe(["Red hair", "red_hair", "x", "X"]) == ["Red hair", "x"]


@pytest.mark.parametrize(
    ("existing", "mode", "expected"),
    [
        (None, "skip", ["a", "b"]),
        (["old"], "skip", None),
        (["old", "a"], "overwrite", ["a", "b"]),
        (["old", "A"], "append", ["old", "A", "b"]),
        (["old", "b"], "prepend", ["a", "b", "old"]),
    ],
)
def test_write_modes(existing, mode, expected):
    assert merge_caption(existing, ["a", "b"], mode) == expected


def test_unknown_write_mode_is_refused():
    with pytest.raises(ValueError, match="'replace' is not one of skip, overwrite, append, prepend"):
        merge_caption([], ["a"], "replace")
