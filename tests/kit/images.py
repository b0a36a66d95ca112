"""Generated picture corpora: the awkward files real collections hold, good and bad, with expectations.

``build_corpus(folder)`` writes a small corpus (fast to prepare: mostly under 1 MP) and returns a
:class:`Corpus` that says, for each file, what a correct dataset preparation must make of it:

* good pictures in every mode and container that matters (RGB/RGBA/LA/P+transparency/16-bit grey/
  32-bit grey/CMYK/1-bit/L, JPEG with EXIF orientation, animated GIF and WebP, a PNG named .jpg, a
  small one that needs enlarging, a near-duplicate pair), some with a planted magenta "face" (what
  the face double in ``tests/kit/face_double`` detects) and some with a caption beside them;
* twelve bad files (empty, text, truncated JPEG/PNG, broken PNG stream, broken PNG header, header-only
  JPEG, two decompression bombs, garbage WebP, SVG, a picture too small to use), each with the word
  its skip reason must contain.

``bench_corpus(folder, count)`` writes 2-12 MP JPEGs and PNGs for the speed benchmark.
Importing this module needs Pillow and numpy only.
"""

from __future__ import annotations

import hashlib
import io
import random
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

__all__ = [
    "FACE_RGB",
    "BadFile",
    "Corpus",
    "CorpusImage",
    "bench_corpus",
    "build_corpus",
    "dataset_corpus",
    "file_hashes",
    "plant_face",
    "png_header_only",
    "textured",
]

FACE_RGB = (255, 0, 255)  # magenta: the face double's "face"


@dataclass(frozen=True)
class CorpusImage:
    """A good picture and what preparing it must give.

    Attributes:
        name: file name in the corpus folder.
        out: the dataset file name when it is not ``<stem>.png`` (a stem collision).
        size: upright ``(width, height)`` (after EXIF orientation).
        notes: substrings that must appear among the decoding notes.
        face: the planted face ``(x0, y0, x1, y1)`` in upright pixels, if any.
        caption: the caption written beside it (``<stem>.txt``), if any.
        centre_rgb: the colour the middle of the output must have (within a tolerance), if fixed.
        corner_rgb: the colour the output's top-left corner must have, if fixed.
    """

    name: str
    size: tuple[int, int]
    out: str = ""
    notes: tuple[str, ...] = ()
    face: tuple[int, int, int, int] | None = None
    caption: str | None = None
    centre_rgb: tuple[int, int, int] | None = None
    corner_rgb: tuple[int, int, int] | None = None

    @property
    def stem(self) -> str:
        return Path(self.name).stem

    @property
    def output(self) -> str:
        """The dataset file name it must become (the stem, unless two sources share it)."""
        return self.out or f"{self.stem}.png"


@dataclass(frozen=True)
class BadFile:
    """A file preparation must skip; ``reason`` is a word its skip reason must contain."""

    name: str
    reason: str


@dataclass(frozen=True)
class Corpus:
    folder: Path
    good: tuple[CorpusImage, ...]
    bad: tuple[BadFile, ...]
    duplicates: tuple[tuple[str, str], ...]

    def image(self, name: str) -> CorpusImage:
        return next(g for g in self.good if g.name == name)


def file_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (relative path -> hex), to prove nothing changed."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(Path(folder).rglob("*"))
        if p.is_file()
    }


def textured(size: tuple[int, int], seed: int, *, shapes: int = 12) -> Image.Image:
    """A distinct, art-like RGB picture: smooth colour fields plus a few hard-edged shapes.

    Different seeds give pictures far apart in perceptual hash; the same seed gives the same picture.
    """
    rng = np.random.default_rng(seed)
    cells = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    cells[..., 1] = cells[..., 1] // 2 + 110  # green never low: no accidental magenta "face"
    field = Image.fromarray(cells, "RGB")
    image = field.resize(size, Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(image)
    pick = random.Random(seed)
    w, h = size
    for _ in range(shapes):
        x0, y0 = pick.randrange(w), pick.randrange(h)
        x1, y1 = x0 + pick.randrange(w // 8 + 1, w // 3 + 2), y0 + pick.randrange(h // 8 + 1, h // 3 + 2)
        colour = (pick.randrange(0, 256), pick.randrange(110, 256), pick.randrange(0, 256))  # never magenta
        (draw.ellipse if pick.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=colour)
    return image


def plant_face(image: Image.Image, box: tuple[int, int, int, int]) -> Image.Image:
    """Paint the face double's magenta patch over ``box`` (in place; returns the image)."""
    ImageDraw.Draw(image).rectangle((box[0], box[1], box[2] - 1, box[3] - 1), fill=FACE_RGB)
    return image


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` but holds no pixels (a decompression bomb's header)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IEND", b"")


def _encoded(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def _marked_frame(size: tuple[int, int], colour: tuple[int, int, int], seed: int) -> Image.Image:
    """A frame of one colour with a few white marks away from its centre (so it is not flat)."""
    frame = Image.new("RGB", size, colour)
    draw, pick = ImageDraw.Draw(frame), random.Random(seed)
    for _ in range(4):
        x, y = pick.randrange(size[0] // 6), pick.randrange(size[1] - 40)
        draw.rectangle((x, y, x + 30, y + 30), fill=(255, 255, 255))
    return frame


def _good_files(folder: Path) -> list[CorpusImage]:
    out: list[CorpusImage] = []

    def save(spec: CorpusImage, image: Image.Image, fmt: str, **kwargs: object) -> None:
        (folder / spec.name).write_bytes(_encoded(image, fmt, **kwargs))
        if spec.caption is not None:
            (folder / f"{spec.stem}.txt").write_text(spec.caption, encoding="utf-8")
        out.append(spec)

    # A landscape with its face near the right edge: focal must slide right to keep it.
    spec = CorpusImage(
        "landscape.jpg", (960, 640), face=(780, 120, 860, 200), caption="1girl, from side, upper body"
    )
    save(spec, plant_face(textured(spec.size, 1), spec.face), "JPEG", quality=92)
    # A portrait with its face in the middle: focal puts it on the square's upper third line.
    spec = CorpusImage(
        "portrait.png", (600, 1000), face=(260, 460, 340, 540), caption="1girl, from_behind, full_body"
    )
    save(spec, plant_face(textured(spec.size, 2), spec.face), "PNG")
    spec = CorpusImage("square.png", (512, 512), caption="1girl, upper body")
    save(spec, textured(spec.size, 3), "PNG")
    # Big enough for JPEG draft decoding at 1/2 scale (crop side 2100 / 2 >= 2 x 512).
    spec = CorpusImage("big.jpg", (2800, 2100), face=(2300, 300, 2500, 500))
    save(spec, plant_face(textured(spec.size, 4), spec.face), "JPEG", quality=90)
    # Transparency of every kind, on the white default background; any square keeps the left edge.
    rgba = textured((720, 540), 5).convert("RGBA")
    ImageDraw.Draw(rgba).rectangle((0, 0, 359, 539), fill=(10, 200, 10, 0))  # invisible green
    spec = CorpusImage("rgba.png", (720, 540), notes=("transparent",), corner_rgb=(255, 255, 255))
    save(spec, rgba, "PNG")
    la = Image.new("LA", (600, 600), (90, 255))
    ImageDraw.Draw(la).rectangle((0, 0, 599, 299), fill=(0, 0))
    spec = CorpusImage("la.png", (600, 600), notes=("transparent",), corner_rgb=(255, 255, 255))
    save(spec, la, "PNG")
    pal = textured((720, 540), 6).quantize(16)
    ImageDraw.Draw(pal).rectangle((0, 0, 200, 539), fill=15)
    spec = CorpusImage("palette_trns.png", (720, 540), notes=("transparent",), corner_rgb=(255, 255, 255))
    save(spec, pal, "PNG", transparency=15)
    # 16-bit grey, a gradient through half level at the centre: mid-grey out, not white (a naive
    # convert clips everything above 255).
    ramp16 = np.tile(np.linspace(0, 65535, 640).round().astype(np.uint16), (640, 1))
    spec = CorpusImage("grey16.png", (640, 640), notes=("16-bit",), centre_rgb=(128, 128, 128))
    save(spec, Image.fromarray(ramp16), "PNG")
    ramp32 = np.tile(np.linspace(0, 2000, 520).round().astype(np.int32)[:, None], (1, 560))
    spec = CorpusImage("int32.tif", (560, 520), notes=("32-bit",), centre_rgb=(4, 4, 4))
    save(spec, Image.fromarray(ramp32, "I"), "TIFF")
    spec = CorpusImage("cmyk.jpg", (720, 540), notes=("CMYK",))
    save(spec, textured((720, 540), 7).convert("CMYK"), "JPEG", quality=92)
    spec = CorpusImage("grey_l.png", (540, 700))
    save(spec, textured((540, 700), 8).convert("L"), "PNG")
    spec = CorpusImage("bilevel.png", (520, 600))
    save(spec, textured((520, 600), 9).convert("1"), "PNG")
    # Stored sideways with EXIF orientation 6: upright it is 720x540 with a red top-left corner that
    # any square of it keeps.
    upright = textured((720, 540), 10)
    ImageDraw.Draw(upright).rectangle((0, 0, 199, 199), fill=(255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6
    spec = CorpusImage("exif6.jpg", (720, 540), notes=("EXIF orientation 6",), corner_rgb=(255, 0, 0))
    save(spec, upright.transpose(Image.Transpose.ROTATE_90), "JPEG", quality=95, exif=exif.tobytes())
    # Animated: the first frame (red / blue in the middle) must be the one used. Both are named
    # "animated": the second by file name becomes animated-2.png.
    frames = [_marked_frame((520, 520), c, i) for i, c in enumerate(((255, 0, 0), (0, 255, 0), (0, 0, 255)))]
    spec = CorpusImage("animated.gif", (520, 520), notes=("animated (3 frames)",), centre_rgb=(255, 0, 0))
    save(spec, frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    frames = [_marked_frame((530, 530), c, 5 + i) for i, c in enumerate(((0, 0, 255), (255, 255, 0)))]
    spec = CorpusImage(
        "animated.webp",
        (530, 530),
        out="animated-2.png",
        notes=("animated (2 frames)",),
        centre_rgb=(0, 0, 255),
    )
    save(spec, frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=100, lossless=True)
    spec = CorpusImage("actually_png.jpg", (600, 520))
    save(spec, textured((600, 520), 11), "PNG")
    # Under the resolution: enlarged 512 / 200 = 2.56x and flagged.
    spec = CorpusImage("small.png", (200, 300), caption="1girl, smile")
    save(spec, textured((200, 300), 12), "PNG")
    # A near-duplicate pair: the same picture re-encoded smaller as JPEG.
    base = textured((800, 600), 13)
    save(CorpusImage("dup_a.png", (800, 600)), base, "PNG")
    save(
        CorpusImage("dup_b.jpg", (720, 540)),
        base.resize((720, 540), Image.Resampling.LANCZOS),
        "JPEG",
        quality=80,
    )
    return out


def _bad_files(folder: Path) -> list[BadFile]:
    jpeg = _encoded(textured((300, 200), 20), "JPEG", quality=90)
    png = _encoded(textured((300, 200), 21), "PNG")
    broken_stream = bytearray(png)
    idat = png.find(b"IDAT")
    for i in range(idat + 10, idat + 200):
        broken_stream[i] ^= 0x55  # scrambles the zlib stream: "broken data stream" on decoding
    bad_header = bytearray(png)
    bad_header[29] ^= 0xFF  # inside IHDR's CRC
    files = {
        "empty.png": (b"", "empty"),
        "notes_as.png": (b"these are my notes, not a picture\n", "not a picture"),
        "truncated.jpg": (jpeg[: len(jpeg) // 2], "truncated"),
        "truncated.png": (png[: len(png) // 2], "truncated"),
        "broken_stream.png": (bytes(broken_stream), "damaged"),
        "bad_header.png": (bytes(bad_header), "not a picture"),
        "header_only.jpg": (jpeg[:20], "not a picture"),
        "bomb.png": (png_header_only(9000, 9500), "decompression-bomb"),
        "huge_bomb.png": (png_header_only(20000, 20000), "decompression bomb"),
        "garbage.webp": (b"RIFF\x10\x00\x00\x00WEBPVP8 " + bytes(range(64)), "damaged"),
        "vector.svg": (b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', "SVG"),
        "tiny.png": (_encoded(textured((40, 40), 22), "PNG"), "minimum"),
    }
    for name, (data, _) in files.items():
        (folder / name).write_bytes(data)
    return [BadFile(name, reason) for name, (_, reason) in files.items()]


def build_corpus(folder: Path) -> Corpus:
    """Write the corpus into ``folder`` (created) and describe it.

    Also writes ``orphan.txt`` (a caption without a picture) and ``Thumbs.db`` (clutter): neither is
    a picture nor a skipped file.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    good = _good_files(folder)
    bad = _bad_files(folder)
    (folder / "orphan.txt").write_text("1girl", encoding="utf-8")
    (folder / "Thumbs.db").write_bytes(b"\x00" * 64)
    return Corpus(folder, tuple(good), tuple(bad), (("dup_a.png", "dup_b.png"),))


@pytest.fixture(scope="session")
def dataset_corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    """The corpus, built once per session. Treat it as read-only (tests check it is unchanged)."""
    return build_corpus(tmp_path_factory.mktemp("corpus"))


def bench_corpus(folder: Path, count: int = 200, *, seed: int = 0) -> list[Path]:
    """Write ``count`` pictures of 2-12 MP (70 % JPEG q90, 30 % PNG), reusing those already there.

    Returns:
        The files, in order.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    pick = random.Random(seed)
    paths = []
    for i in range(count):
        megapixels = pick.uniform(2.0, 12.0)
        aspect = pick.choice((4 / 3, 3 / 2, 16 / 9, 1.0, 3 / 4, 2 / 3))
        width = round((megapixels * 1e6 * aspect) ** 0.5)
        height = round(width / aspect)
        fmt = "JPEG" if pick.random() < 0.7 else "PNG"
        path = folder / f"bench_{i:03d}.{'jpg' if fmt == 'JPEG' else 'png'}"
        if not path.exists():
            image = textured((width, height), seed * 100_000 + i, shapes=40)
            path.write_bytes(_encoded(image, fmt, **({"quality": 90} if fmt == "JPEG" else {})))
        paths.append(path)
    return paths
