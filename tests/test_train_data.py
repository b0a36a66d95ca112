"""What each step trains on (pure functions of seed and step), image loading, class image planning."""

from collections import Counter

import numpy as np
import pytest
from PIL import Image

from lib_dbchar.concept import Concept
from lib_dbchar.train.classes import REJECTED_DIR, plan_class_images, reject_class_images
from lib_dbchar.train.data import (
    ConceptData,
    TrainImage,
    class_image_index,
    epoch_permutation,
    load_concept_data,
    load_pixels,
    plan_batch,
    scan_class_images,
    scan_pictures,
    steps_per_epoch,
)


def _concept_data(index, pictures, classes, token="sks"):
    images = tuple(TrainImage(f"p{index}_{i}.png", f"1girl, tag{i}", index) for i in range(pictures))
    class_images = tuple(TrainImage(f"c{index}_{i}.png", f"1girl, class{i}", index) for i in range(classes))
    return ConceptData(Concept(instance_token=token), index, None, None, images, class_images)


def test_epoch_permutations_are_seeded_and_complete():
    a = epoch_permutation(20, seed=5, epoch=0)
    assert sorted(a) == list(range(20))
    assert a == epoch_permutation(20, seed=5, epoch=0)
    assert a != epoch_permutation(20, seed=5, epoch=1)
    assert a != epoch_permutation(20, seed=6, epoch=0)


def test_every_picture_once_per_epoch_and_class_images_cycle_fully():
    data = [_concept_data(0, pictures=5, classes=7)]
    seen, partners = Counter(), []
    for step in range(10):  # two epochs at batch 1
        plan = plan_batch(data, step, seed=1, batch_size=1, prior=True, flip=False)
        assert plan.epoch == step // 5
        seen[(plan.epoch, plan.instance[0].image.path)] += 1
        partners.append(plan.prior[0].image.path)
        assert plan.instance[0].prompt.startswith("sks, 1girl, tag")
        assert plan.prior[0].prompt == plan.prior[0].image.caption
    assert set(seen.values()) == {1} and len(seen) == 10
    # All 7 class images before any repeats.
    assert len(set(partners[:7])) == 7
    assert plan_batch(data, 7, seed=1, batch_size=1, prior=True, flip=False) == plan_batch(
        data, 7, seed=1, batch_size=1, prior=True, flip=False
    )


def test_batches_and_several_concepts_pair_with_their_own_class_images():
    data = [_concept_data(0, 3, 4), _concept_data(1, 2, 3, token="other")]
    assert steps_per_epoch(5, 2) == 3
    sizes = []
    for step in range(3):
        plan = plan_batch(data, step, seed=0, batch_size=2, prior=True, flip=False)
        sizes.append(len(plan.instance))
        for picture, partner in zip(plan.instance, plan.prior, strict=True):
            assert picture.image.concept == partner.image.concept
            token = data[picture.image.concept].concept.instance_token
            assert picture.prompt.startswith(token)
    assert sizes == [2, 2, 1]  # the last batch of an epoch is smaller
    assert class_image_index(4, 0, 0, 4) in range(4)


def test_flips_are_seeded_and_optional():
    data = [_concept_data(0, 8, 8)]
    flips = [
        plan_batch(data, s, seed=3, batch_size=1, prior=False, flip=True).instance[0].flip for s in range(40)
    ]
    assert 5 < sum(flips) < 35
    assert not any(
        plan_batch(data, s, seed=3, batch_size=1, prior=False, flip=False).instance[0].flip for s in range(8)
    )


def test_load_pixels_crops_composites_and_flips(tmp_path):
    wide = np.zeros((40, 80, 3), dtype=np.uint8)
    wide[:, :20] = 255  # a white band on the far left is cropped away
    wide[:, 20:40] = (255, 0, 0)  # red just left of centre
    Image.fromarray(wide).save(tmp_path / "wide.png")
    pixels = load_pixels(tmp_path / "wide.png", 40)
    assert pixels.shape == (3, 40, 40) and pixels.dtype == np.float32
    assert pixels[:, 0, 0].tolist() == [1.0, -1.0, -1.0]  # red at the left edge after the centre crop
    assert pixels[:, 0, -1].tolist() == [-1.0, -1.0, -1.0]
    flipped = load_pixels(tmp_path / "wide.png", 40, flip=True)
    assert np.array_equal(flipped, pixels[:, :, ::-1])
    clear = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    clear.save(tmp_path / "clear.png")
    assert np.all(load_pixels(tmp_path / "clear.png", 8) == 1.0)  # transparent -> white, resized


def test_scan_reports_missing_captions_and_unreadable_images(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text("1girl, smile\n", encoding="utf-8")
    Image.new("RGB", (8, 8)).save(tmp_path / "b.jpg")
    (tmp_path / "c.png").write_bytes(b"not an image")
    (tmp_path / "notes.md").write_text("x", encoding="utf-8")
    images, warnings = scan_pictures(tmp_path, 0)
    assert [(i.path.name, i.caption) for i in images] == [("a.png", "1girl, smile"), ("b.jpg", "")]
    assert any("b.jpg has no caption" in w for w in warnings)
    assert any("c.png: not a readable image" in w for w in warnings)


def test_class_images_need_their_prompt_file(tmp_path):
    for name in ("class_00000", "class_00001", "other"):
        Image.new("RGB", (8, 8)).save(tmp_path / f"{name}.png")
    (tmp_path / "class_00000.txt").write_text("1girl", encoding="utf-8")
    (tmp_path / "other.txt").write_text("x", encoding="utf-8")
    assert [i.path.name for i in scan_class_images(tmp_path, 0)] == ["class_00000.png"]


def test_load_concept_data_uses_project_folders(tmp_path):
    (tmp_path / "dataset").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "dataset" / "a.png")
    data, _ = load_concept_data([Concept(instance_token="sks")], tmp_path)
    assert data[0].class_dir == tmp_path / "classes" / "classifiers_0"
    assert [i.path.name for i in data[0].images] == ["a.png"]


# --- class image planning --------------------------------------------------------------------


def _write(folder, job):
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4)).save(folder / f"class_{job.number:05d}.png")
    (folder / f"class_{job.number:05d}.txt").write_text(job.prompt, encoding="utf-8")


def test_class_images_spread_over_pictures_and_resume_exactly(tmp_path):
    prompts = ["a", "b", "c"]
    jobs = plan_class_images(prompts, tmp_path / "full", count=7, seed=100)
    assert [j.number for j in jobs] == list(range(7))
    assert [j.seed for j in jobs] == [100 + n for n in range(7)]
    assert Counter(j.prompt for j in jobs) == {"a": 3, "b": 2, "c": 2}
    # Stopped after 4 images: the plan for the rest is the rest of the original plan.
    folder = tmp_path / "partial"
    for job in jobs[:4]:
        _write(folder, job)
    assert plan_class_images(prompts, folder, count=7, seed=100) == jobs[4:]
    for job in jobs[4:]:
        _write(folder, job)
    assert plan_class_images(prompts, folder, count=7, seed=100) == []


def test_top_up_after_rejection_draws_new_images(tmp_path):
    prompts = ["a", "b"]
    for job in plan_class_images(prompts, tmp_path, count=4, seed=0):
        _write(tmp_path, job)
    moved = reject_class_images(tmp_path, ["class_00001.png"])
    assert moved == [tmp_path / REJECTED_DIR / "class_00001.png"]
    assert (tmp_path / REJECTED_DIR / "class_00001.txt").is_file()
    again = plan_class_images(prompts, tmp_path, count=4, seed=0)
    # The rejected image was for picture "b"; its replacement is too, with a new number and seed.
    assert [(j.number, j.prompt, j.seed) for j in again] == [(4, "b", 4)]
    # Asking for more tops up; asking for fewer never deletes.
    assert len(plan_class_images(prompts, tmp_path, count=6, seed=0)) == 3
    assert plan_class_images(prompts, tmp_path, count=2, seed=0) == []
    with pytest.raises(FileNotFoundError, match="not a class image"):
        reject_class_images(tmp_path, ["class_00001.png"])
