"""Near-duplicate pictures: a perceptual hash per picture, pairs within a Hamming distance.

The hash is the classic DCT one: the picture shrunk to 32x32 grey, its 2-D DCT, the 8x8 lowest
frequencies compared with their median -> 64 bits. Re-encoding, resizing, mild colour changes and
small crops move few bits; different pictures differ in about half of them.

Dropping one of a pair is the user's choice: :func:`exclude_images` moves the dataset picture (with
its caption and mirrored copy) into ``<dataset>/excluded/`` and marks it in ``crops.json`` so prep
does not make it again. :func:`restore_images` undoes that. Originals are never touched.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image

from lib_dbchar.dataset.boxes import CropStore
from lib_dbchar.errors import DbcharError, TargetExists

HASH_SIDE = 32
HASH_BITS_SIDE = 8
EXCLUDED_DIR = "excluded"
DEDUPE_BLOCK = 256


@dataclass(frozen=True)
class DuplicatePair:
    """Two dataset pictures that look alike: ``distance`` differing bits of 64 (0 = same hash)."""

    first: str
    second: str
    distance: int


def _dct_matrix(n: int) -> np.ndarray:
    """The orthonormal DCT-II matrix ``[n, n]`` (float64); ``M @ x`` transforms a column."""
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    m = np.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    m[0] /= math.sqrt(2.0)
    return m


def phash(image: Image.Image) -> int:
    """The 64-bit DCT perceptual hash of a picture.

    Args:
        image: any Pillow image (converted to grey internally).

    Returns:
        The hash as a non-negative int below 2**64.
    """
    # Shrink first, then drop colour: converting a 12 MP picture to grey costs more than the hash.
    small = image.resize((HASH_SIDE, HASH_SIDE), Image.Resampling.BOX, reducing_gap=2.0)
    pixels = np.asarray(small.convert("L"), dtype=np.float64)
    m = _dct_matrix(HASH_SIDE)
    low = (m @ pixels @ m.T)[:HASH_BITS_SIDE, :HASH_BITS_SIDE].ravel()
    # The DC term is the mean brightness: leaving it out of the median keeps the bits about shape.
    bits = low > np.median(low[1:])
    return int("".join("1" if b else "0" for b in bits), 2)


def hash_hex(value: int) -> str:
    """A 64-bit hash as the 16 hex digits ``crops.json`` stores."""
    return f"{value:016x}"


def hamming(a: int, b: int) -> int:
    """Number of differing bits between two hashes."""
    return bin(a ^ b).count("1")


def find_duplicates(hashes: Mapping[str, int], max_distance: int) -> list[DuplicatePair]:
    """Every pair of pictures whose hashes differ in at most ``max_distance`` bits.

    Args:
        hashes: picture name -> 64-bit hash.
        max_distance: 0..64.

    Returns:
        Pairs sorted by distance, then names; each pair once, names in sorted order.
    """
    names = sorted(hashes)
    if len(names) < 2:
        return []
    values = np.array([hashes[n] for n in names], dtype=np.uint64)
    pairs = []
    # Pairwise XORs a block of rows at a time, bits counted with unpackbits: memory stays bounded
    # (block x N x 64 bytes) whatever the dataset's size.
    for start in range(0, len(names), DEDUPE_BLOCK):
        rows = values[start : start + DEDUPE_BLOCK]
        xor = rows[:, None] ^ values[None, :]
        counts = np.unpackbits(xor.view(np.uint8).reshape(len(rows), len(names), 8), axis=2).sum(axis=2)
        for i, j in zip(*np.nonzero(counts <= max_distance), strict=True):
            if start + i < j:
                pairs.append(DuplicatePair(names[start + i], names[j], int(counts[i, j])))
    return sorted(pairs, key=lambda p: (p.distance, p.first, p.second))


def _companions(dataset_dir: Path, name: str, flip: str | None) -> list[Path]:
    """The files that belong to one dataset picture: itself, its caption, its mirror and caption."""
    files = [dataset_dir / name, (dataset_dir / name).with_suffix(".txt")]
    if flip:
        files += [dataset_dir / flip, (dataset_dir / flip).with_suffix(".txt")]
    return files


def move_files(files: Iterable[Path], target_dir: Path) -> list[Path]:
    """Move the existing ones of ``files`` into ``target_dir``, all or none.

    Raises:
        TargetExists: a file of the same name is already there (nothing is moved).
    """
    present = [f for f in files if f.exists()]
    clashes = [target_dir / f.name for f in present if (target_dir / f.name).exists()]
    if clashes:
        raise TargetExists(f"{clashes[0]} already exists; move it away first (nothing was moved)")
    target_dir.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.move(str(f), str(target_dir / f.name))) for f in present]


def exclude_images(dataset_dir: Path, names: Iterable[str]) -> list[Path]:
    """Take pictures out of the dataset (the one of a near-duplicate pair you do not keep).

    Each picture, its caption and its mirrored copy move to ``<dataset>/excluded/``; ``crops.json``
    marks it so later prep runs skip it. Nothing is deleted.

    Args:
        dataset_dir: the dataset folder prep wrote.
        names: dataset picture names ("hero_03.png").

    Returns:
        The moved files' new paths.

    Raises:
        DbcharError: a name prep does not know (nothing is moved or marked).
    """
    dataset_dir = Path(dataset_dir)
    store = CropStore.for_dataset(dataset_dir)
    wanted = list(dict.fromkeys(names))
    unknown = [n for n in wanted if store.get(n) is None]
    if unknown:
        raise DbcharError(
            f"{', '.join(unknown)}: not prepared pictures of {dataset_dir}; nothing was excluded"
        )
    moved: list[Path] = []
    for name in wanted:
        entry = store.get(name)
        moved += move_files(_companions(dataset_dir, name, entry.flip), dataset_dir / EXCLUDED_DIR)
        store.put(name, replace(entry, excluded=True))
        store.save()  # after each picture: the store always matches the files
    return moved


def restore_images(dataset_dir: Path, names: Iterable[str]) -> list[Path]:
    """Put excluded pictures back into the dataset (undo :func:`exclude_images`).

    Returns:
        The restored files' paths.
    """
    dataset_dir = Path(dataset_dir)
    store = CropStore.for_dataset(dataset_dir)
    restored: list[Path] = []
    for name in dict.fromkeys(names):
        entry = store.get(name)
        if entry is None:
            raise DbcharError(f"{name}: not a prepared picture of {dataset_dir}")
        files = _companions(dataset_dir / EXCLUDED_DIR, name, entry.flip)
        restored += move_files(files, dataset_dir)
        store.put(name, replace(entry, excluded=False))
        store.save()
    return restored
