"""run_prep end to end over the generated corpus, and its behaviours one by one on small inputs."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

import tests.kit.images as kit_images
from lib_dbchar.dataset.boxes import CropStore
from lib_dbchar.dataset.crop import center_box, contains
from lib_dbchar.dataset.dedupe import exclude_images, restore_images
from lib_dbchar.dataset.focal import ANIME_FACE_DETECTOR, FaceDetector
from lib_dbchar.dataset.options import PrepConfig
from lib_dbchar.dataset.prep import REPORT_FILE, PrepStopped, propose_crop, run_prep
from lib_dbchar.errors import DbcharError
from lib_dbchar.jobs import JobContext
from tests.kit.face_double import FACE_DOUBLE_MODEL, lay_out_face_detector
from tests.kit.images import file_hashes, plant_face, textured

dataset_corpus = kit_images.dataset_corpus  # the session fixture (until conftest imports tests.kit.images)


@pytest.fixture(scope="module")
def double():
    return FaceDetector.from_file(FACE_DOUBLE_MODEL, threads=1, name="face double")


@pytest.fixture(scope="module")
def run(dataset_corpus, double, tmp_path_factory):
    """One focal run over the whole corpus, with the originals hashed before and after."""
    before = file_hashes(dataset_corpus.folder)
    dst = tmp_path_factory.mktemp("dataset")
    events = []
    result = run_prep(
        PrepConfig(workers=2), dataset_corpus.folder, dst, JobContext(events.append), detector=double
    )
    return {
        "result": result,
        "dst": dst,
        "before": before,
        "after": file_hashes(dataset_corpus.folder),
        "events": events,
    }


def _prepared(run):
    return {p.name: p for p in run["result"].prepared}


def _magenta(image):
    a = np.asarray(image.convert("RGB")).astype(int)
    return (a[..., 0] > 200) & (a[..., 1] < 60) & (a[..., 2] > 200)


# --------------------------------------------------------------------------------------------------
# The corpus run


def test_every_good_picture_becomes_a_square_png_of_the_resolution(run, dataset_corpus):
    prepared = _prepared(run)
    assert sorted(prepared) == sorted(s.output for s in dataset_corpus.good)
    for spec in dataset_corpus.good:
        with Image.open(run["dst"] / spec.output) as out:
            assert (out.format, out.mode, out.size) == ("PNG", "RGB", (512, 512)), spec.name


def test_cropped_regions_are_squares_inside_the_originals(run, dataset_corpus):
    for spec in dataset_corpus.good:
        p = _prepared(run)[spec.output]
        left, top, right, bottom = p.box
        assert p.source == spec.name and p.source_size == spec.size
        assert abs((right - left) - (bottom - top)) <= 1, (spec.name, p.box)  # 1:1 within a pixel
        assert right - left == min(spec.size)  # the largest square, nothing squashed
        assert left >= 0 and top >= 0 and right <= spec.size[0] and bottom <= spec.size[1]


def test_focal_crop_contains_the_planted_face(run, dataset_corpus):
    faced = [s for s in dataset_corpus.good if s.face]
    assert len(faced) == 3
    for spec in faced:
        p = _prepared(run)[spec.output]
        assert p.method == "face", spec.name
        assert contains(p.box, spec.face), (spec.name, p.box, spec.face)
        # And the face really is in the output, where the box puts it.
        with Image.open(run["dst"] / spec.output) as out:
            ys, xs = np.nonzero(_magenta(out))
        scale = 512 / (p.box[2] - p.box[0])
        expected_x = ((spec.face[0] + spec.face[2]) / 2 - p.box[0]) * scale
        expected_y = ((spec.face[1] + spec.face[3]) / 2 - p.box[1]) * scale
        assert abs(xs.mean() - expected_x) < 3 and abs(ys.mean() - expected_y) < 3


def test_portrait_face_is_on_the_upper_third(run):
    assert _prepared(run)["portrait.png"].box == (0, 300, 600, 900)
    with Image.open(run["dst"] / "portrait.png") as out:
        ys, _ = np.nonzero(_magenta(out))
    assert abs(ys.mean() - 512 / 3) < 3


def test_pictures_without_a_face_fall_back_to_saliency(run):
    prepared = _prepared(run)
    assert prepared["dup_a.png"].method == "saliency"
    assert "no face found" in " ".join(prepared["dup_a.png"].notes)
    assert run["result"].focal == "face double"


def test_every_bad_file_is_skipped_by_name_with_its_reason(run, dataset_corpus):
    skipped = {s.file: s.reason for s in run["result"].skipped}
    assert len(dataset_corpus.bad) >= 8
    assert sorted(skipped) == sorted(b.name for b in dataset_corpus.bad)
    for bad in dataset_corpus.bad:
        assert bad.reason in skipped[bad.name], (bad.name, skipped[bad.name])
    # Neither the orphan caption nor Windows clutter is a picture or a skipped file.
    assert "orphan.txt" not in skipped and "Thumbs.db" not in skipped


def test_originals_are_unchanged(run, dataset_corpus):
    assert run["after"] == run["before"]
    assert not any(name.endswith(".png.tmp") for name in run["after"])


def test_captions_travel_with_their_pictures(run, dataset_corpus):
    dst = run["dst"]
    for spec in dataset_corpus.good:
        caption = dst / f"{spec.output[:-4]}.txt"
        if spec.caption is None:
            assert not caption.exists(), spec.name
        else:
            assert caption.read_text(encoding="utf-8") == spec.caption
            assert _prepared(run)[spec.output].caption == "copied"
    assert not (dst / "orphan.txt").exists()


def test_decoding_is_visible_in_outputs_and_notes(run, dataset_corpus):
    for spec in dataset_corpus.good:
        p = _prepared(run)[spec.output]
        for note in spec.notes:
            assert any(note in n for n in p.notes), (spec.name, p.notes)
        with Image.open(run["dst"] / spec.output) as out:
            if spec.centre_rgb:
                assert np.abs(np.subtract(out.getpixel((256, 256)), spec.centre_rgb)).max() <= 3, spec.name
            if spec.corner_rgb:
                assert np.abs(np.subtract(out.getpixel((3, 3)), spec.corner_rgb)).max() <= 12, spec.name


def test_small_picture_is_enlarged_and_flagged(run):
    p = _prepared(run)["small.png"]
    assert p.upscale == pytest.approx(512 / 200)
    assert [(s.name, s.factor) for s in run["result"].health.too_small] == [("small.png", 2.56)]
    assert all(q.upscale is None for q in run["result"].prepared if q.name != "small.png")


def test_near_duplicates_are_paired(run, dataset_corpus):
    pairs = [(d.first, d.second) for d in run["result"].duplicates]
    assert pairs == list(dataset_corpus.duplicates)


def test_health_report_counts_and_poses(run):
    health = run["result"].health
    assert health.count == 19
    assert health.poses.tagged == 4
    assert (health.poses.from_side, health.poses.from_behind) == (1, 1)
    assert (health.poses.full_body, health.poses.upper_body) == (1, 2)
    assert health.level == "check"
    assert "dup_a.png ~ dup_b.png" in " ".join(f.text for f in health.findings)
    assert health.resolution.smallest_side == 200 and health.resolution.largest_side == 2100


def test_report_and_store_are_written(run):
    dst = run["dst"]
    report = json.loads((dst / REPORT_FILE).read_text(encoding="utf-8"))
    assert report == json.loads(json.dumps(run["result"].to_dict()))
    assert report["health"]["count"] == 19 and len(report["skipped"]) == 12
    store = CropStore.for_dataset(dst)
    assert sorted(store) == sorted(p.name for p in run["result"].prepared)
    entry = store.get("landscape.png")
    assert (
        entry.box == _prepared(run)["landscape.png"].box and entry.method == "face" and len(entry.phash) == 16
    )


def test_progress_reports_each_picture_with_a_preview(run):
    events = [e for e in run["events"] if e.total]
    total = events[-1].total
    assert total == 31  # 19 pictures + 12 bad files (decoded and refused)
    assert [e.done for e in events[1:]] == list(range(1, total + 1))
    previews = [e.image for e in events if e.image is not None]
    assert len(previews) == 19 and all(i.size == (512, 512) for i in previews)
    assert any("skipped empty.png" in e.text for e in events)


# --------------------------------------------------------------------------------------------------
# Behaviours on small inputs


def _copy(corpus, names, folder):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy2(corpus.folder / name, folder / name)
    return folder


def test_center_crop_from_an_upload_list(dataset_corpus, tmp_path):
    files = [dataset_corpus.folder / n for n in ("landscape.jpg", "landscape.txt", "exif6.jpg", "rgba.png")]
    result = run_prep(PrepConfig(crop="center", resolution=256), files, tmp_path / "ds")
    boxes = {p.name: p.box for p in result.prepared}
    assert boxes == {
        "landscape.png": center_box(960, 640),
        "exif6.png": center_box(720, 540),
        "rgba.png": center_box(720, 540),
    }
    assert (tmp_path / "ds" / "landscape.txt").read_text(encoding="utf-8") == "1girl, from side, upper body"
    with Image.open(tmp_path / "ds" / "exif6.png") as out:
        assert out.size == (256, 256)
        r, g, b = out.getpixel((2, 2))
        assert r > 200 and g < 60 and b < 60


def test_a_box_you_set_is_reapplied_and_dropped_when_the_source_changes(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    textured((1000, 600), 5).save(src / "hero.png")
    dst = tmp_path / "ds"
    first = run_prep(PrepConfig(crop="center", resolution=128), src, dst)
    assert first.prepared[0].method == "center"
    store = CropStore.for_dataset(dst)
    store.set_user_box("hero.png", (0, 100, 400, 500))
    store.save()
    second = run_prep(PrepConfig(crop="focal", face_detector=False, resolution=128), src, dst)
    assert (second.prepared[0].method, second.prepared[0].box) == ("your box", (0, 100, 400, 500))
    with Image.open(dst / "hero.png") as out, Image.open(src / "hero.png") as original:
        expected = original.crop((0, 100, 400, 500)).resize((128, 128), Image.Resampling.LANCZOS)
        assert np.abs(np.asarray(out, float) - np.asarray(expected, float)).mean() < 1.0
    assert CropStore.for_dataset(dst).get("hero.png").user_box == (0, 100, 400, 500)
    # The source is replaced by a smaller picture: the box no longer fits and is dropped, with a note.
    textured((300, 200), 6).save(src / "hero.png")
    third = run_prep(PrepConfig(crop="center", resolution=128), src, dst)
    assert third.prepared[0].method == "center"
    assert "no longer fits" in " ".join(third.prepared[0].notes)
    assert CropStore.for_dataset(dst).get("hero.png").user_box is None


def test_manual_mode_skips_pictures_without_a_box(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    textured((700, 500), 1).save(src / "a.png")
    result = run_prep(PrepConfig(crop="manual"), src, tmp_path / "ds")
    assert result.prepared == []
    assert "no crop box is set" in result.skipped[0].reason


def test_mirrored_copies_with_captions(dataset_corpus, tmp_path):
    src = _copy(dataset_corpus, ["square.png", "square.txt"], tmp_path / "src")
    result = run_prep(PrepConfig(crop="center", flip=True), src, tmp_path / "ds")
    assert result.prepared[0].flip == "square-flipped.png"
    with (
        Image.open(tmp_path / "ds" / "square.png") as a,
        Image.open(tmp_path / "ds" / "square-flipped.png") as b,
    ):
        assert np.array_equal(np.asarray(a)[:, ::-1], np.asarray(b))
    assert (tmp_path / "ds" / "square-flipped.txt").read_text(encoding="utf-8") == "1girl, upper body"
    # Mirroring switched off later: the old mirror leaves the dataset (kept aside, not deleted).
    again = run_prep(PrepConfig(crop="center"), src, tmp_path / "ds")
    assert again.prepared[0].flip is None
    assert (
        "mirroring is off: moved the earlier mirrored copy square-flipped.png to excluded/"
        in again.prepared[0].notes
    )
    assert sorted(p.name for p in (tmp_path / "ds" / "excluded").iterdir()) == [
        "square-flipped.png",
        "square-flipped.txt",
    ]
    assert not (tmp_path / "ds" / "square-flipped.png").exists()


def test_pluggable_upscaler_is_used_only_for_small_crops(dataset_corpus, tmp_path):
    src = _copy(dataset_corpus, ["small.png", "square.png"], tmp_path / "src")
    calls = []

    def nearest(image, side):
        calls.append(image.size)
        return image.resize((side, side), Image.Resampling.NEAREST)

    result = run_prep(PrepConfig(crop="center"), src, tmp_path / "ds", upscaler=nearest)
    assert calls == [(200, 200)]
    assert {p.name: p.upscale for p in result.prepared} == {"small.png": 2.56, "square.png": None}


def test_failing_upscaler_falls_back_to_lanczos_with_a_note(dataset_corpus, tmp_path):
    src = _copy(dataset_corpus, ["small.png"], tmp_path / "src")

    def broken(image, side):
        raise RuntimeError("CUDA out of memory")

    result = run_prep(PrepConfig(crop="center"), src, tmp_path / "ds", upscaler=broken)
    assert "the upscaler failed (CUDA out of memory); used Lanczos" in result.prepared[0].notes
    with Image.open(tmp_path / "ds" / "small.png") as out:
        assert out.size == (512, 512)


@pytest.mark.parametrize(
    ("returned", "note"),
    [((300, 300), "returned 300x300; resized uniformly with Lanczos"), ((512, 400), "returned 512x400")],
)
def test_upscaler_returning_the_wrong_size_is_corrected(dataset_corpus, tmp_path, returned, note):
    src = _copy(dataset_corpus, ["small.png"], tmp_path / "src")

    def sloppy(image, side):
        return image.resize(returned)

    result = run_prep(PrepConfig(crop="center"), src, tmp_path / "ds", upscaler=sloppy)
    assert any(note in n for n in result.prepared[0].notes)
    with Image.open(tmp_path / "ds" / "small.png") as out:
        assert out.size == (512, 512)


def test_small_pictures_can_be_skipped_instead(dataset_corpus, tmp_path):
    src = _copy(dataset_corpus, ["small.png", "square.png"], tmp_path / "src")
    result = run_prep(PrepConfig(crop="center", small_images="skip"), src, tmp_path / "ds")
    assert [p.name for p in result.prepared] == ["square.png"]
    assert "under the 512 px resolution" in result.skipped[0].reason


def test_stop_keeps_what_is_done_and_a_rerun_finishes(dataset_corpus, tmp_path):
    names = ["square.png", "grey_l.png", "la.png", "bilevel.png", "actually_png.jpg", "cmyk.jpg"]
    src = _copy(dataset_corpus, names, tmp_path / "src")
    dst = tmp_path / "ds"
    seen = []

    def stop_after_two():
        return len([p for p in seen if p.image is not None]) >= 2

    with pytest.raises(PrepStopped) as info:
        run_prep(PrepConfig(crop="center", workers=1), src, dst, JobContext(seen.append, stop_after_two))
    done = info.value.result
    assert done.stopped and 2 <= len(done.prepared) <= 3  # at most what was in flight (2 per worker)
    assert sorted(CropStore.for_dataset(dst)) == sorted(p.name for p in done.prepared)
    assert sorted(p.name for p in dst.glob("*.png")) == sorted(p.name for p in done.prepared)
    assert json.loads((dst / REPORT_FILE).read_text(encoding="utf-8"))["stopped"] is True
    again = run_prep(PrepConfig(crop="center"), src, dst)
    assert len(again.prepared) == len(names) and not again.stopped


def test_a_different_caption_in_the_dataset_is_kept(dataset_corpus, tmp_path):
    src = _copy(dataset_corpus, ["square.png", "square.txt"], tmp_path / "src")
    dst = tmp_path / "ds"
    dst.mkdir()
    (dst / "square.txt").write_text("my edited tags", encoding="utf-8")
    result = run_prep(PrepConfig(crop="center"), src, dst)
    assert result.prepared[0].caption == "kept"
    assert (dst / "square.txt").read_text(encoding="utf-8") == "my edited tags"


def test_a_dataset_file_prep_did_not_make_is_never_replaced(dataset_corpus, tmp_path):
    src = _copy(dataset_corpus, ["square.png"], tmp_path / "src")
    dst = tmp_path / "ds"
    dst.mkdir()
    (dst / "square.png").write_bytes(b"my own file")
    result = run_prep(PrepConfig(crop="center"), src, dst)
    assert result.prepared == [] and "prep did not make" in result.skipped[0].reason
    assert (dst / "square.png").read_bytes() == b"my own file"


def test_destination_must_not_be_the_source_folder(dataset_corpus, tmp_path):
    src = _copy(dataset_corpus, ["square.png"], tmp_path / "src")
    before = file_hashes(src)
    with pytest.raises(DbcharError, match="could replace your originals"):
        run_prep(PrepConfig(), src, src)
    assert file_hashes(src) == before


def test_unreadable_crops_file_stops_before_writing(dataset_corpus, tmp_path):
    src = _copy(dataset_corpus, ["square.png"], tmp_path / "src")
    dst = tmp_path / "ds"
    dst.mkdir()
    (dst / "crops.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(DbcharError, match=r"crops\.json is not a readable crops file"):
        run_prep(PrepConfig(), src, dst)
    assert sorted(p.name for p in dst.iterdir()) == ["crops.json"]


def test_detector_from_the_cache_or_saliency_when_missing(tmp_path, fake_hf_cache):
    src = tmp_path / "src"
    src.mkdir()
    plant_face(textured((1200, 600), 7), (1050, 200, 1150, 300)).save(src / "hero.png")
    config = PrepConfig(allow_download=False, resolution=128)
    missing = run_prep(config, src, tmp_path / "a", model_cache=fake_hf_cache.hub_cache)
    assert missing.focal.startswith("saliency, because: The face detector deepghs/anime_face_detection")
    assert missing.prepared[0].method == "saliency"
    spec = ANIME_FACE_DETECTOR
    lay_out_face_detector(fake_hf_cache.hub_cache, spec.repo_id, spec.filename, spec.revision)
    found = run_prep(config, src, tmp_path / "b", model_cache=fake_hf_cache.hub_cache)
    assert spec.repo_id in found.focal
    assert found.prepared[0].method == "face" and contains(found.prepared[0].box, (1050, 200, 1150, 300))
    off = run_prep(PrepConfig(face_detector=False, resolution=128), src, tmp_path / "c")
    assert off.focal == "saliency (the face detector is switched off)"


def test_excluding_a_duplicate_moves_it_aside_and_prep_does_not_remake_it(dataset_corpus, tmp_path):
    src = _copy(dataset_corpus, ["dup_a.png", "dup_b.jpg", "square.png", "square.txt"], tmp_path / "src")
    dst = tmp_path / "ds"
    first = run_prep(PrepConfig(crop="center"), src, dst)
    assert [(d.first, d.second) for d in first.duplicates] == [("dup_a.png", "dup_b.png")]
    moved = exclude_images(dst, ["dup_b.png", "square.png"])
    assert sorted(p.name for p in moved) == ["dup_b.png", "square.png", "square.txt"]
    assert not (dst / "dup_b.png").exists() and (dst / "excluded" / "dup_b.png").is_file()
    again = run_prep(PrepConfig(crop="center"), src, dst)
    assert sorted(again.excluded) == ["dup_b.png", "square.png"]
    assert [p.name for p in again.prepared] == ["dup_a.png"] and again.duplicates == []
    assert not (dst / "dup_b.png").exists()
    restore_images(dst, ["dup_b.png"])
    assert (dst / "dup_b.png").is_file() and CropStore.for_dataset(dst).get("dup_b.png").excluded is False
    with pytest.raises(DbcharError, match="nothing was excluded"):
        exclude_images(dst, ["unknown.png"])


def test_propose_crop_for_the_nudge(double, dataset_corpus):
    config = PrepConfig()
    face = propose_crop(dataset_corpus.folder / "landscape.jpg", config, detector=double)
    assert face.method == "face" and face.source_size == (960, 640)
    assert contains(face.box, dataset_corpus.image("landscape.jpg").face)
    assert face.faces and face.upscale is None
    assert json.loads(json.dumps(face.to_dict()))["box"] == list(face.box)
    mine = propose_crop(dataset_corpus.folder / "landscape.jpg", config, user_box=(0, 0, 640, 640))
    assert (mine.method, mine.box) == ("your box", (0, 0, 640, 640))
    small = propose_crop(dataset_corpus.folder / "small.png", PrepConfig(crop="center"))
    assert small.upscale == 2.56


def test_config_rejects_bad_values_naming_the_field():
    from lib_dbchar.config import from_dict

    with pytest.raises(ValueError, match=r"PrepConfig\.resolution: 500 is not a multiple of 64 \(try 512\)"):
        PrepConfig(resolution=500)
    with pytest.raises(ValueError, match=r"PrepConfig\.background"):
        PrepConfig(background="purple")
    with pytest.raises(ValueError, match=r"PrepConfig\.crop"):
        from_dict(PrepConfig, {"crop": "squash"})
    with pytest.raises(ValueError, match=r"PrepConfig\.resolution"):
        from_dict(PrepConfig, {"resolution": 4096})
    assert from_dict(PrepConfig, {"background": "#FF8800", "flip": "yes"}).background_rgb == (255, 136, 0)


def test_a_second_import_never_replaces_another_sources_picture(tmp_path):
    first, second, dst = tmp_path / "first", tmp_path / "second", tmp_path / "ds"
    first.mkdir()
    second.mkdir()
    textured((600, 600), 1).save(first / "hero.jpg")
    textured((600, 600), 2).save(second / "hero.png")
    run_prep(PrepConfig(crop="center", resolution=64, min_side=16), first, dst)
    made_first = (dst / "hero.png").read_bytes()
    result = run_prep(PrepConfig(crop="center", resolution=64, min_side=16), second, dst)
    assert [p.name for p in result.prepared] == ["hero-2.png"]
    assert (dst / "hero.png").read_bytes() == made_first
    again = run_prep(PrepConfig(crop="center", resolution=64, min_side=16), first, dst)
    assert [p.name for p in again.prepared] == ["hero.png"]  # the same source is re-made in place
    assert sorted(CropStore.for_dataset(dst)) == ["hero-2.png", "hero.png"]
