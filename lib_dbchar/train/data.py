"""What the loop trains on: the pictures, the class images, and which of them each step sees.

The order is a pure function of ``(seed, step)``: epoch ``e`` visits the pictures in a permutation
drawn from ``(seed, e)``, and the class image paired with a picture is the next one in its concept's
own shuffled cycle. Nothing is kept in a data loader's hidden state, so a run resumed at step ``n``
sees exactly the batches an uninterrupted run would have seen -- and the state to save is one int.

Images are read with Pillow and turned into arrays with numpy (torchvision does not import beside
every torch build users have).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lib_dbchar.concept import Concept, instance_prompt, resolve_dirs

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
CLASS_IMAGE_PREFIX = "class_"
# Seeds of the different random streams are kept apart by these salts, so e.g. adding caption
# shuffling never changes the data order.
_ORDER, _CLASS_ORDER, _SAMPLE = 1, 2, 3


@dataclass(frozen=True)
class TrainImage:
    """One picture or class image.

    Attributes:
        path: the image file.
        caption: for a picture, its caption (``stem.txt``, may be empty); for a class image, the
            prompt it was generated from (its ``.txt``).
        concept: index of the concept it belongs to.
    """

    path: Path
    caption: str
    concept: int


@dataclass(frozen=True)
class ConceptData:
    """A concept with its files found on disk."""

    concept: Concept
    index: int
    dataset_dir: Path
    class_dir: Path
    images: tuple[TrainImage, ...]
    class_images: tuple[TrainImage, ...]


@dataclass(frozen=True)
class Sample:
    """One image of a batch with the prompt and flip it is trained with."""

    image: TrainImage
    prompt: str
    flip: bool


@dataclass(frozen=True)
class BatchPlan:
    """The images of one step: ``instance[i]`` goes with ``prior[i]`` (empty without prior preservation)."""

    epoch: int
    instance: tuple[Sample, ...]
    prior: tuple[Sample, ...]


def image_files(folder: Path) -> list[Path]:
    """Image files directly in ``folder`` (not in sub-folders), sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def read_caption(image: Path) -> str | None:
    """The text of ``stem.txt`` beside an image, or ``None`` when there is none."""
    txt = Path(image).with_suffix(".txt")
    if not txt.is_file():
        return None
    return txt.read_text(encoding="utf-8", errors="replace").strip()


def check_image(path: Path) -> str | None:
    """``None`` when Pillow can read the image header, else a message naming the file and the fix."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.size  # noqa: B018 - reading the header is the check
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        return f"{path}: not a readable image ({exc}); it is left out. Re-save or remove it."
    return None


def scan_pictures(folder: Path, concept: int) -> tuple[list[TrainImage], list[str]]:
    """The pictures of a dataset folder with their captions.

    Args:
        folder: the dataset folder.
        concept: the concept index recorded on each image.

    Returns:
        ``(images, warnings)``: unreadable images are left out and missing captions read as empty,
        each with one warning naming the file.
    """
    images, warnings = [], []
    for path in image_files(folder):
        problem = check_image(path)
        if problem:
            warnings.append(problem)
            continue
        caption = read_caption(path)
        if caption is None:
            warnings.append(
                f"{path.name} has no caption ({path.stem}.txt); [filewords] is empty for it. Tag it."
            )
        images.append(TrainImage(path, caption or "", concept))
    return images, warnings


def scan_class_images(folder: Path, concept: int) -> list[TrainImage]:
    """The class images of a concept: ``class_*.png`` files whose prompt ``.txt`` exists.

    A PNG without its ``.txt`` is an unfinished write (or a user's file) and is not used.
    """
    out = []
    for path in image_files(folder):
        if not path.name.startswith(CLASS_IMAGE_PREFIX):
            continue
        prompt = read_caption(path)
        if prompt is not None:
            out.append(TrainImage(path, prompt, concept))
    return out


def load_concept_data(concepts: Sequence[Concept], project_root: Path) -> tuple[list[ConceptData], list[str]]:
    """Find every concept's pictures and class images.

    Args:
        concepts: the run's concepts.
        project_root: the project folder (for default folders).

    Returns:
        ``(data, warnings)``.
    """
    data, warnings = [], []
    for i, concept in enumerate(concepts):
        dataset_dir, class_dir = resolve_dirs(concept, project_root, i)
        images, problems = scan_pictures(dataset_dir, i)
        warnings += problems
        data.append(
            ConceptData(
                concept, i, dataset_dir, class_dir, tuple(images), tuple(scan_class_images(class_dir, i))
            )
        )
    return data, warnings


def concept_counts(concepts: Sequence[Concept], project_root: Path) -> tuple[list[Any], list[str]]:
    """What :func:`~lib_dbchar.train.plan.plan_steps` needs, read from disk (the Train tab's live maths).

    Returns:
        ``(counts, warnings)``: one :class:`~lib_dbchar.train.plan.ConceptCounts` per concept (pictures,
        class images wanted, class images present) and the scan's warnings.
    """
    from lib_dbchar.concept import class_image_count
    from lib_dbchar.train.plan import ConceptCounts

    data, warnings = load_concept_data(concepts, project_root)
    counts = [
        ConceptCounts(len(c.images), class_image_count(c.concept, len(c.images)), len(c.class_images))
        for c in data
    ]
    return counts, warnings


# --- order -----------------------------------------------------------------------------------


def _rng(seed: int, *parts: int) -> random.Random:
    """A random source determined by ``seed`` and ``parts`` only (ints seed ``random`` portably)."""
    value = seed
    for part in (*parts,):
        value = value * 1_000_003 + part
    return random.Random(value)


def epoch_permutation(count: int, seed: int, epoch: int) -> list[int]:
    """The order in which epoch ``epoch`` visits ``count`` pictures."""
    order = list(range(count))
    _rng(seed, _ORDER, epoch).shuffle(order)
    return order


def class_image_index(count: int, seed: int, concept: int, occurrence: int) -> int:
    """Which of a concept's ``count`` class images goes with its ``occurrence``-th picture sample.

    The class images are used in a shuffled cycle (a new shuffle per cycle), so all are used
    before any repeats.
    """
    cycle, position = divmod(occurrence, count)
    order = list(range(count))
    _rng(seed, _CLASS_ORDER, concept, cycle).shuffle(order)
    return order[position]


def steps_per_epoch(picture_count: int, batch_size: int) -> int:
    """``ceil(pictures / batch)``; the last batch of an epoch may be smaller."""
    return -(-picture_count // batch_size)


def plan_batch(
    data: Sequence[ConceptData], step: int, *, seed: int, batch_size: int, prior: bool, flip: bool
) -> BatchPlan:
    """The images and prompts of training step ``step`` (0-based), as a pure function.

    Args:
        data: the run's concepts with their files (pictures of all concepts form one pool).
        step: the global step index.
        seed: the run's seed.
        batch_size: pictures per step.
        prior: pair each picture with a class image of its concept.
        flip: random horizontal flips.

    Returns:
        The :class:`BatchPlan`.
    """
    pool = [image for concept in data for image in concept.images]
    per_epoch = steps_per_epoch(len(pool), batch_size)
    epoch, index = divmod(step, per_epoch)
    order = epoch_permutation(len(pool), seed, epoch)
    positions = range(index * batch_size, min(len(pool), (index + 1) * batch_size))
    instance, class_samples = [], []
    for position in positions:
        image = pool[order[position]]
        concept = data[image.concept]
        rng = _rng(seed, _SAMPLE, epoch, position)
        prompt = instance_prompt(concept.concept, image.caption, rng=rng)
        instance.append(Sample(image, prompt, flip and rng.random() < 0.5))
        if prior:
            occurrence = _occurrence(pool, order, epoch, position, image.concept)
            count = len(concept.class_images)
            partner = concept.class_images[class_image_index(count, seed, image.concept, occurrence)]
            class_samples.append(Sample(partner, partner.caption, flip and rng.random() < 0.5))
    return BatchPlan(epoch, tuple(instance), tuple(class_samples))


def _occurrence(
    pool: Sequence[TrainImage], order: Sequence[int], epoch: int, position: int, concept: int
) -> int:
    """How many samples of ``concept`` came before this one in the whole run."""
    per_epoch = sum(1 for image in pool if image.concept == concept)
    earlier = sum(1 for i in order[:position] if pool[i].concept == concept)
    return epoch * per_epoch + earlier


# --- pixels ----------------------------------------------------------------------------------


def load_pixels(path: Path, resolution: int, *, flip: bool = False) -> Any:
    """Read an image as the VAE's input.

    The image is turned upright (EXIF), composited on white if it has transparency, centre-cropped
    to a square and resized to ``resolution`` with Lanczos (only when its size differs). The guide
    crops pictures to 512x512 beforehand, so usually nothing is resized.

    Args:
        path: the image file.
        resolution: the side of the square in pixels.
        flip: mirror horizontally.

    Returns:
        A float32 numpy array ``[3, resolution, resolution]`` in ``[-1, 1]``.
    """
    import numpy as np
    from PIL import Image, ImageOps

    with Image.open(path) as opened:
        image = ImageOps.exif_transpose(opened)
        if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
            rgba = image.convert("RGBA")
            image = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            image.alpha_composite(rgba)
        image = image.convert("RGB")
    side = min(image.size)
    if image.size != (side, side):
        left, top = (image.width - side) // 2, (image.height - side) // 2
        image = image.crop((left, top, left + side, top + side))
    if side != resolution:
        image = image.resize((resolution, resolution), Image.LANCZOS)
    if flip:
        image = ImageOps.mirror(image)
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return np.ascontiguousarray(array.transpose(2, 0, 1))
