"""The settings of dataset preparation, as one frozen dataclass the Dataset tab and the CLI build from.

Kept free of Pillow and numpy so that ``python -m lib_dbchar prep --help`` and the UI's form can read
it without importing the image stack.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lib_dbchar.config import setting

CROP_MODES = ("focal", "center", "manual")
SMALL_IMAGE_POLICIES = ("upscale", "skip")
NAMED_BACKGROUNDS = {"white": (255, 255, 255), "black": (0, 0, 0), "grey": (128, 128, 128)}
_HEX_COLOUR = re.compile(r"^#[0-9a-fA-F]{6}$")
RESOLUTION_STEP = 64


def parse_colour(text: str) -> tuple[int, int, int]:
    """``"white"`` / ``"black"`` / ``"grey"`` or ``"#rrggbb"`` -> an RGB triple (0..255).

    Raises:
        ValueError: for anything else; the message lists what is accepted.
    """
    value = str(text).strip().lower()
    if value in NAMED_BACKGROUNDS:
        return NAMED_BACKGROUNDS[value]
    if _HEX_COLOUR.match(value):
        return int(value[1:3], 16), int(value[3:5], 16), int(value[5:7], 16)
    raise ValueError(f"{text!r} is not a colour; use white, black, grey or #rrggbb")


@dataclass(frozen=True)
class PrepConfig:
    """How pictures become the training squares.

    Every crop is the largest square the picture holds (or the box you set), resized uniformly to
    ``resolution``: the aspect ratio of what you see never changes.
    """

    resolution: int = setting(
        512,
        label="Resolution",
        help="Side of the output squares in pixels, a multiple of 64. SD 1.x models train at 512.",
        minimum=64,
        maximum=2048,
        step=RESOLUTION_STEP,
    )
    crop: str = setting(
        "focal",
        label="Crop",
        help="focal: find the face (or the busiest region) and keep it, a portrait's face in the upper "
        "third; center: the middle square; manual: only pictures you set a crop box for. A box you set "
        "always wins.",
        choices=CROP_MODES,
    )
    face_detector: bool = setting(
        True,
        label="Use the anime face detector",
        help="For focal crops: an ONNX model fetched once from Hugging Face (about 12 MB) and cached. "
        "Off, or when it cannot be had, focal crops use an edge/contrast heuristic.",
    )
    allow_download: bool = setting(
        True,
        label="Download the face detector when missing",
        help="Off: use only a copy already in the model cache (for offline machines).",
    )
    detection_threshold: float = setting(
        0.3,
        label="Face score threshold",
        help="Detections scoring below this are ignored (0.3 suits deepghs' face_detect_v1.4 models).",
        minimum=0.05,
        maximum=0.95,
        step=0.05,
    )
    background: str = setting(
        "white",
        label="Background for transparent pictures",
        help="Transparent pixels are painted on this colour: white, black, grey or #rrggbb.",
    )
    small_images: str = setting(
        "upscale",
        label="Pictures smaller than the resolution",
        help="upscale: enlarge the crop (Lanczos, or the host's upscaler) and flag it in the report; "
        "skip: leave them out.",
        choices=SMALL_IMAGE_POLICIES,
    )
    min_side: int = setting(
        128,
        label="Smallest usable crop (px)",
        help="Pictures whose square crop is smaller than this are skipped: an 8x enlargement teaches "
        "the model blur.",
        minimum=16,
        maximum=4096,
    )
    flip: bool = setting(
        False,
        label="Add mirrored copies",
        help="Also write a horizontally flipped copy of each picture (captions copied). Off by default: "
        "mirroring breaks asymmetric designs (a scar, a side ponytail, an emblem).",
    )
    duplicate_distance: int = setting(
        6,
        label="Near-duplicate distance",
        help="Two pictures whose 64-bit perceptual hashes differ in at most this many bits are listed as "
        "near-duplicates (0 = identical only).",
        minimum=0,
        maximum=24,
    )
    max_megapixels: float = setting(
        80.0,
        label="Largest picture (megapixels)",
        help="Bigger files are refused before decoding (a decompression-bomb guard; Pillow itself "
        "refuses anything over about 179 MP).",
        minimum=1.0,
        maximum=178.0,
    )
    workers: int = setting(
        0,
        label="Parallel workers",
        help="Pictures prepared at once; 0 = one per CPU core (at most 4). Memory grows with it.",
        minimum=0,
        maximum=16,
    )

    def __post_init__(self) -> None:
        # from_dict checks ranges; these are the rules a range cannot say.
        if self.resolution % RESOLUTION_STEP:
            raise ValueError(
                f"PrepConfig.resolution: {self.resolution} is not a multiple of {RESOLUTION_STEP} "
                f"(try {max(RESOLUTION_STEP, round(self.resolution / RESOLUTION_STEP) * RESOLUTION_STEP)})"
            )
        if self.crop not in CROP_MODES:
            raise ValueError(f"PrepConfig.crop: {self.crop!r} is not one of {', '.join(CROP_MODES)}")
        if self.small_images not in SMALL_IMAGE_POLICIES:
            choices = ", ".join(SMALL_IMAGE_POLICIES)
            raise ValueError(f"PrepConfig.small_images: {self.small_images!r} is not one of {choices}")
        try:
            parse_colour(self.background)
        except ValueError as exc:
            raise ValueError(f"PrepConfig.background: {exc}") from None

    @property
    def background_rgb(self) -> tuple[int, int, int]:
        """``background`` as an RGB triple."""
        return parse_colour(self.background)

    @property
    def max_pixels(self) -> int:
        """``max_megapixels`` in pixels."""
        return int(self.max_megapixels * 1_000_000)
