"""The crops store, perceptual hashes and the dataset health report."""

import json

import pytest
from PIL import Image

from lib_dbchar.dataset.boxes import CropEntry, CropStore
from lib_dbchar.dataset.dedupe import DuplicatePair, find_duplicates, hamming, phash
from lib_dbchar.dataset.report import (
    FEW_PICTURES,
    MANY_PICTURES,
    ImageFacts,
    assess,
    caption_tags,
    dataset_health,
)
from lib_dbchar.errors import DbcharError
from tests.kit.images import textured

# --------------------------------------------------------------------------------------------------
# Store


def test_store_round_trips_and_validates_boxes(tmp_path):
    store = CropStore.for_dataset(tmp_path)
    assert list(store) == []
    store.put("a.png", CropEntry("a.jpg", (800, 600), box=(100, 0, 700, 600), method="center", phash="00ff"))
    assert store.set_user_box("a.png", [50, 0, 650, 600]) == (50, 0, 650, 600)
    with pytest.raises(ValueError, match="not a square"):
        store.set_user_box("a.png", (0, 0, 600, 500))
    with pytest.raises(ValueError, match="outside"):
        store.set_user_box("a.png", (300, 0, 900, 600))
    with pytest.raises(DbcharError, match="run prep first"):
        store.set_user_box("b.png", (0, 0, 10, 10))
    store.save()
    doc = json.loads((tmp_path / "crops.json").read_text(encoding="utf-8"))
    assert doc["images"]["a.png"]["user_box"] == [50, 0, 650, 600]
    again = CropStore.for_dataset(tmp_path)
    assert again.get("a.png") == store.get("a.png")
    assert again.user_boxes() == {"a.png": (50, 0, 650, 600)}
    again.clear_user_box("a.png")
    assert again.user_boxes() == {}
    again.set_excluded("a.png")
    assert again.get("a.png").excluded


@pytest.mark.parametrize(
    ("content", "why"),
    [
        ("{not json", "Expecting"),
        ('{"images": []}', "no 'images'"),
        ('{"version": 99, "images": {}}', "newer"),
    ],
)
def test_unreadable_store_says_which_file_and_what_to_do(tmp_path, content, why):
    (tmp_path / "crops.json").write_text(content, encoding="utf-8")
    with pytest.raises(DbcharError) as info:
        CropStore.for_dataset(tmp_path)
    assert str(tmp_path / "crops.json") in str(info.value) and why in str(info.value)
    assert "move it away" in str(info.value)


# --------------------------------------------------------------------------------------------------
# Perceptual hash


def test_phash_is_stable_under_reencoding_and_resizing(tmp_path):
    original = textured((800, 600), 1)
    original.resize((400, 300), Image.Resampling.LANCZOS).save(tmp_path / "small.jpg", quality=70)
    with Image.open(tmp_path / "small.jpg") as copy:
        assert hamming(phash(original), phash(copy)) <= 4
    assert phash(original) == phash(original.copy())
    others = [hamming(phash(original), phash(textured((800, 600), seed))) for seed in range(2, 8)]
    assert min(others) > 12


def test_find_duplicates_lists_each_close_pair_once_by_distance():
    hashes = {"c.png": 0b1111, "a.png": 0b0000, "b.png": 0b0001, "far.png": (1 << 64) - 1}
    assert (
        find_duplicates(hashes, 2)
        == [DuplicatePair("a.png", "b.png", 1), DuplicatePair("b.png", "c.png", 3)][:1]
    )
    assert find_duplicates(hashes, 4) == [
        DuplicatePair("a.png", "b.png", 1),
        DuplicatePair("b.png", "c.png", 3),
        DuplicatePair("a.png", "c.png", 4),
    ]
    assert find_duplicates({"only.png": 5}, 10) == []


def test_find_duplicates_over_many_blocks():
    hashes = {f"p{i:03d}.png": i * 0x9E3779B97F4A7C15 % (1 << 64) for i in range(600)}
    hashes["twin.png"] = hashes["p123.png"] ^ 0b1
    pairs = find_duplicates(hashes, 1)
    assert DuplicatePair("p123.png", "twin.png", 1) in pairs


# --------------------------------------------------------------------------------------------------
# Health report


def _facts(n, *, caption="1girl, solo", size=(800, 600)):
    return [ImageFacts(f"p{i:02d}.png", size, min(size), None, caption) for i in range(n)]


@pytest.mark.parametrize(
    ("n", "warned"),
    [(FEW_PICTURES - 1, "Only 14 pictures"), (FEW_PICTURES, None), (MANY_PICTURES + 1, "far more")],
)
def test_count_warnings(n, warned):
    report = assess(_facts(n), [], resolution=512)
    warnings = [f.text for f in report.findings if f.level == "warning"]
    if warned:
        assert any(warned in w for w in warnings)
        assert report.level == "check"
    else:
        assert warnings == [] and report.level == "good"
        assert report.verdict == f"{n} pictures, nothing to fix: ready for training."


def test_empty_dataset():
    report = assess([], [], resolution=512)
    assert (report.count, report.level) == (0, "empty")


def test_pose_counts_and_the_overfitting_advice():
    facts = _facts(20, caption="1girl, upper_body")
    facts[0] = ImageFacts("side.png", (800, 600), 600, None, "1girl, from_side, full body")
    report = assess(facts, [], resolution=512)
    assert (report.poses.tagged, report.poses.from_side, report.poses.from_behind) == (20, 1, 0)
    assert (report.poses.full_body, report.poses.upper_body) == (1, 19)
    texts = " ".join(f.text for f in report.findings)
    assert "1 side and 0 back views" in texts
    front_only = assess(_facts(20, caption="1girl, upper body"), [], resolution=512)
    front_texts = " ".join(f.text for f in front_only.findings)
    assert "No picture is tagged 'from side' or 'from behind'" in front_texts
    assert "None is tagged 'full body'" in front_texts


def test_missing_captions_before_and_after_tagging():
    untagged = assess(_facts(20, caption=None), [], resolution=512)
    assert untagged.poses is None and untagged.level == "good"
    assert "No captions yet" in untagged.findings[0].text
    assert untagged.verdict.endswith("ready for tagging.")
    partly = _facts(20)
    partly[3] = ImageFacts("p03.png", (800, 600), 600, None, None)
    report = assess(partly, [], resolution=512)
    assert report.missing_captions == ["p03.png"] and report.level == "check"
    assert "1 of 20 pictures have no caption yet" in report.findings[0].text


def test_too_small_duplicates_and_spread():
    tiny = ImageFacts("tiny.png", (200, 300), 200, 2.56, "1girl")
    wide = ImageFacts("wide.png", (3000, 1000), 1000, None, "1girl")
    facts = [*_facts(18), tiny, wide]
    report = assess(facts, [DuplicatePair("p00.png", "p01.png", 2)], resolution=512)
    assert [(s.name, s.factor) for s in report.too_small] == [("tiny.png", 2.56)]
    text = " ".join(f.text for f in report.findings)
    assert "1 pictures were smaller than 512 px and were enlarged (up to 2.6x): tiny.png" in text
    assert "p00.png ~ p01.png" in text
    assert (report.aspect.portrait, report.aspect.square, report.aspect.landscape) == (1, 0, 19)
    assert report.aspect.widest == 3.0 and report.resolution.smallest_side == 200
    assert "Resolutions vary a lot (short sides 200 to 1000 px)" in text
    assert json.loads(json.dumps(report.to_dict()))["too_small"] == [
        {"name": "tiny.png", "crop_side": 200, "factor": 2.56}
    ]


def test_caption_tags_normalise_underscores_and_case():
    assert caption_tags("1girl, From_Side ,  full body,, ") == {"1girl", "from side", "full body"}


def test_dataset_health_reads_the_folder_as_it_is_now(tmp_path):
    store = CropStore.for_dataset(tmp_path)
    for i, bits in enumerate((0x0, 0x1, 0xFF)):
        name = f"p{i}.png"
        Image.new("RGB", (8, 8)).save(tmp_path / name)
        store.put(
            name,
            CropEntry(f"p{i}.jpg", (800, 600), box=(0, 0, 600, 600), method="center", phash=f"{bits:016x}"),
        )
    store.put("gone.png", CropEntry("gone.jpg", (800, 600), box=(0, 0, 600, 600)))  # file deleted by hand
    store.save()
    before = dataset_health(tmp_path)
    assert before.count == 3 and before.poses is None
    (tmp_path / "p0.txt").write_text("1girl, from behind", encoding="utf-8")
    after = dataset_health(tmp_path, max_distance=1)
    assert after.poses.tagged == 1 and after.poses.from_behind == 1
    assert [(d.first, d.second) for d in after.duplicates] == [("p0.png", "p1.png")]
