"""Build the WD14 tagger doubles: two tiny ONNX models with the real v3 / v2.0 signatures.

Each model maps an image batch to tag probabilities through the image's mean colour only::

    input  float32 [N, 448, 448, 3]  (NHWC, BGR, raw 0..255, like SmilingWolf's exports)
    Cast(double) -> ReduceMean(H, W) -> Cast(float) -> Mul(1/255) -> MatMul(W[3, T]) -> Add(b[T]) -> Sigmoid
    output float32 [N, T]            (probabilities, in selected_tags.csv row order)

so a test plants tags by choosing a colour (see README.md beside this file for the mapping).

Run from the repository root, in a venv that has ``onnx`` and ``numpy`` (the shared test venvs must
not need ``onnx``: recent releases want protobuf >= 6 while the webui pins 3.20, so the built files
are committed)::

    python -m venv /tmp/tagger-venv && /tmp/tagger-venv/bin/pip install onnx numpy
    /tmp/tagger-venv/bin/python tests/kit/tagger_double/build.py

The tag table below is plain data (importing this module needs numpy only), so the test suite can
check that the committed ``weights.json`` and ``selected_tags.csv`` still match it.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
IMAGE_SIZE = 448
# opset 17 keeps ReduceMean's axes as an attribute; IR 8 is what onnxruntime releases older than the
# webui's usual one still load (the real v3 exports need onnxruntime >= 1.17 anyway).
OPSET = 17
IR_VERSION = 8

RATING, GENERAL, CHARACTER = 9, 0, 4


@dataclass(frozen=True)
class Variant:
    """How one double presents itself to onnxruntime.

    Attributes:
        folder: sub-folder of this directory the files go to.
        input_name / output_name: tensor names, as in the real exports.
        batch: ``None`` for a symbolic batch dimension (``batch_dim`` names it), else a fixed size.
        float_categories: write ``9.0`` instead of ``9`` in the CSV's category column.
    """

    folder: str
    input_name: str
    output_name: str
    batch: int | None
    batch_dim: str = "batch_size"
    float_categories: bool = False


# wd-*-tagger-v3 (and wd-v1-4-swinv2-tagger-v2 v2.1): input "input" / output "output", dynamic batch
# named "batch_size". wd-v1-4-moat/convnextv2-tagger-v2 (v2.0, tf2onnx): Keras tensor names, batch 1.
V3 = Variant("v3", "input", "output", batch=None)
V2 = Variant("v2", "input_1:0", "predictions_sigmoid", batch=1, float_categories=True)
VARIANTS = (V3, V2)

# Named colours (RGB, 0..255) the tag table is tuned against; tests import them from tests.kit.tagger.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "cyan": (0, 255, 255),
    "white": (255, 255, 255),
    "black": (0, 0, 0),
    "grey": (128, 128, 128),
}


@dataclass(frozen=True)
class TagSpec:
    """One row of selected_tags.csv and its column of the model's weights.

    Attributes:
        name / category / tag_id / count: the CSV row (ids and counts are invented).
        rgb: logit gained per unit of the image's mean R, G and B (each mean scaled to 0..1).
        bias: the logit of a black image.
    """

    name: str
    category: int
    tag_id: int
    count: int
    rgb: tuple[float, float, float]
    bias: float


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def constant(name: str, category: int, tag_id: int, count: int, p: float) -> TagSpec:
    """A tag whose probability is ``p`` whatever the image (padding and resizing cannot move it)."""
    return TagSpec(name, category, tag_id, count, (0.0, 0.0, 0.0), _logit(p))


def planted(
    name: str, category: int, tag_id: int, count: int, rgb: tuple[float, float, float], at: str, p: float
) -> TagSpec:
    """A colour-driven tag whose probability is exactly ``p`` on the palette colour ``at``.

    Args:
        rgb: logit weights per unit of mean R, G, B; the sign pattern says which colours raise the tag.
        at: a PALETTE name; the bias is solved so that this colour gives ``p``.
        p: the probability on that colour.

    Returns:
        The TagSpec.
    """
    x = [c / 255.0 for c in PALETTE[at]]
    return TagSpec(
        name, category, tag_id, count, rgb, _logit(p) - sum(w * v for w, v in zip(rgb, x, strict=True))
    )


# Row order is the CSV's and the output's: 4 ratings, then general tags, then characters.
TAGS: tuple[TagSpec, ...] = (
    # Ratings follow brightness: bright images look "general", dark ones "sensitive".
    planted("general", RATING, 9999999, 7_910_000, (1.5, 1.5, 1.5), "white", 0.93),
    planted("sensitive", RATING, 9999998, 2_290_000, (-1.5, -1.5, -1.5), "black", 0.66),
    constant("questionable", RATING, 9999997, 780_000, 0.04),
    constant("explicit", RATING, 9999996, 610_000, 0.01),
    # Constants around the default thresholds: strict ">" tests and MCut need values on both sides.
    constant("1girl", GENERAL, 470575, 5_200_000, 0.97),
    constant("solo", GENERAL, 212816, 4_300_000, 0.86),  # just above 0.85
    constant("long_hair", GENERAL, 16751, 3_400_000, 0.36),  # just above 0.35
    constant("smile", GENERAL, 1815, 2_700_000, 0.34),  # just below 0.35
    constant("upper_body", GENERAL, 515193, 900_000, 0.62),
    constant("full_body", GENERAL, 376002, 700_000, 0.12),
    # One primary colour each.
    planted("red_hair", GENERAL, 16581, 290_000, (6.0, -3.0, -3.0), "red", 0.96),
    planted("green_hair", GENERAL, 87676, 140_000, (-3.0, 6.0, -3.0), "green", 0.95),
    planted("blue_eyes", GENERAL, 16578, 1_100_000, (-3.0, -3.0, 6.0), "blue", 0.98),
    # Red against blue: a red image is seen from the side, a blue one from behind.
    planted("from_side", GENERAL, 403330, 190_000, (2.0, 0.0, -2.0), "red", 0.73),
    planted("from_behind", GENERAL, 470139, 150_000, (-2.0, 0.0, 2.0), "blue", 0.67),
    planted("white_background", GENERAL, 515329, 1_400_000, (6.0, 6.0, 6.0), "white", 0.99),  # 0.20 on cyan
    # Kaomoji keep their underscores: bright = ^_^, green = 0_0, dark = >_<.
    planted("^_^", GENERAL, 402217, 33_000, (3.0, 3.0, 3.0), "white", 0.82),
    planted("0_0", GENERAL, 1373574, 8_000, (-2.0, 4.0, -2.0), "green", 0.92),
    planted(">_<", GENERAL, 3749, 21_000, (-4.0, -4.0, -4.0), "black", 0.95),
    # Characters on both sides of the 0.85 default: cyan is Miku (above), red is Reimu (below).
    planted("hatsune_miku", CHARACTER, 15099, 110_000, (-6.0, 3.0, 3.0), "cyan", 0.87),
    planted("hakurei_reimu", CHARACTER, 427, 95_000, (3.0, -3.0, -3.0), "red", 0.84),
)


def weight_arrays(tags: tuple[TagSpec, ...] = TAGS) -> tuple[np.ndarray, np.ndarray]:
    """The weights as baked into the graph.

    Returns:
        ``(W, b)``: float32 ``W`` of shape ``[3, T]`` with rows in the model's **B, G, R** input
        order, and float32 ``b`` of shape ``[T]``.
    """
    rgb = np.array([t.rgb for t in tags], dtype=np.float64)  # [T, 3] in R, G, B
    w = rgb[:, ::-1].T.astype(np.float32)  # [3, T] in B, G, R
    b = np.array([t.bias for t in tags], dtype=np.float32)
    return np.ascontiguousarray(w), b


def weights_document(variant: Variant, tags: tuple[TagSpec, ...] = TAGS) -> dict:
    """What ``weights.json`` holds: the exact float32 weights and how to apply them."""
    w, b = weight_arrays(tags)
    return {
        "about": "probs = sigmoid((mean_bgr / 255) @ W + b); W rows are B, G, R; see README.md",
        "input_name": variant.input_name,
        "output_name": variant.output_name,
        "batch": variant.batch,
        "image_size": IMAGE_SIZE,
        "input_order": "BGR",
        "tags": [t.name for t in tags],
        # float32 -> Python float is exact, and JSON round-trips doubles exactly.
        "W": [[float(v) for v in row] for row in w],
        "b": [float(v) for v in b],
    }


def csv_text(variant: Variant, tags: tuple[TagSpec, ...] = TAGS) -> str:
    """The ``selected_tags.csv`` content (``tag_id,name,category,count``, LF line ends)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["tag_id", "name", "category", "count"])
    for t in tags:
        category = f"{t.category:.1f}" if variant.float_categories else str(t.category)
        writer.writerow([t.tag_id, t.name, category, t.count])
    return out.getvalue()


def build_model(variant: Variant, tags: tuple[TagSpec, ...] = TAGS):
    """Build the ONNX graph of one variant.

    Args:
        variant: names and batch dimension to present.
        tags: the tag table (its order is the output order).

    Returns:
        A checked ``onnx.ModelProto`` with IR version 8 and opset 17.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w, b = weight_arrays(tags)
    batch = variant.batch if variant.batch is not None else variant.batch_dim
    inp = helper.make_tensor_value_info(
        variant.input_name, TensorProto.FLOAT, [batch, IMAGE_SIZE, IMAGE_SIZE, 3]
    )
    out = helper.make_tensor_value_info(variant.output_name, TensorProto.FLOAT, [batch, len(tags)])
    inits = [
        numpy_helper.from_array(np.array(1.0 / 255.0, dtype=np.float32), "scale"),
        numpy_helper.from_array(w, "tag_weights"),
        numpy_helper.from_array(b, "tag_bias"),
    ]
    nodes = [
        helper.make_node("Cast", [variant.input_name], ["pixels_f64"], to=TensorProto.DOUBLE),
        # A float32 sum of 448*448 values up to 255 passes 2**24 and starts rounding; float64 keeps
        # the mean exact enough for tests to compare against numpy at 1e-6.
        helper.make_node("ReduceMean", ["pixels_f64"], ["mean_f64"], axes=[1, 2], keepdims=0),
        helper.make_node("Cast", ["mean_f64"], ["mean_bgr"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["mean_bgr", "scale"], ["mean_unit"]),
        helper.make_node("MatMul", ["mean_unit", "tag_weights"], ["logits_nobias"]),
        helper.make_node("Add", ["logits_nobias", "tag_bias"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], [variant.output_name]),
    ]
    graph = helper.make_graph(nodes, f"dbchar_wd14_double_{variant.folder}", [inp], [out], inits)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="dbchar-tagger-double",
        doc_string="Test double of a WD14 tagger: tag probabilities from the mean colour (see README.md).",
    )
    model.ir_version = IR_VERSION
    helper.set_model_props(model, {"dbchar_double": variant.folder})
    onnx.checker.check_model(model, full_check=True)
    return model


def write_variant(variant: Variant, out_dir: Path) -> list[Path]:
    """Write ``model.onnx``, ``selected_tags.csv`` and ``weights.json`` of one variant.

    Returns:
        The written paths.
    """
    folder = out_dir / variant.folder
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / "model.onnx", folder / "selected_tags.csv", folder / "weights.json"]
    paths[0].write_bytes(build_model(variant).SerializeToString())
    paths[1].write_text(csv_text(variant), encoding="utf-8", newline="")
    paths[2].write_text(json.dumps(weights_document(variant), indent=1) + "\n", encoding="utf-8")
    return paths


# --------------------------------------------------------------------------------------------------
# The bench double: the small double's 21 tags plus generated filler, 10,861 outputs like the real v3
# models (4 ratings, 8,106 general, 2,751 characters). Only its model.onnx is committed (bench10k/,
# ~175 KB); its selected_tags.csv is rebuilt by bench_csv_text() because names, ids and categories
# depend on the row index alone. Filler tags are mostly improbable; about 0.5 % of the general ones
# sit near the 0.35 threshold and cross it depending on the colour, so a picture gets a few dozen
# tags (about 30 for mid-tone colours) and postprocessing sees real-sized outputs.

BENCH = Variant("bench10k", "input", "output", batch=None)
BENCH_GENERAL = 8_106
BENCH_CHARACTERS = 2_751
BENCH_SEED = 20240228


def bench_tags(seed: int = BENCH_SEED) -> tuple[TagSpec, ...]:
    """The bench double's rows: ratings, general tags, characters (the small double's first in each group).

    Args:
        seed: seeds the filler weights (names, ids, categories and counts do not depend on it).

    Returns:
        10,861 TagSpecs in output order.
    """
    rng = np.random.default_rng(seed)
    ratings = [t for t in TAGS if t.category == RATING]
    general = [t for t in TAGS if t.category == GENERAL]
    characters = [t for t in TAGS if t.category == CHARACTER]

    def filler(kind: str, category: int, count: int, near: float, low: float) -> list[TagSpec]:
        out = []
        for i in range(count):
            weights = tuple(float(w) for w in rng.normal(0.0, 2.0, 3))
            p = rng.uniform(0.2, 0.6) if rng.uniform() < near else 10 ** rng.uniform(-5.0, low)
            tag_id = 10_000_000 + category * 100_000 + i
            out.append(
                TagSpec(
                    f"bench_{kind}_{i:05d}",
                    category,
                    tag_id,
                    1_000_000 - i,
                    weights,
                    _logit(float(p)) - sum(weights) / 2.0,
                )
            )
        return out

    return (
        *ratings,
        *general,
        *filler("general", GENERAL, BENCH_GENERAL - len(general), near=0.005, low=-1.5),
        *characters,
        *filler("character", CHARACTER, BENCH_CHARACTERS - len(characters), near=0.0, low=-2.0),
    )


def bench_csv_text() -> str:
    """The bench double's ``selected_tags.csv`` (names, ids and categories follow the row index)."""
    return csv_text(BENCH, bench_tags())


def write_bench(out_dir: Path = HERE, *, with_csv: bool = False) -> list[Path]:
    """Write ``bench10k/model.onnx`` (and, when asked, its CSV; the committed folder has none)."""
    folder = out_dir / BENCH.folder
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / "model.onnx"]
    paths[0].write_bytes(build_model(BENCH, bench_tags()).SerializeToString())
    if with_csv:
        paths.append(folder / "selected_tags.csv")
        paths[1].write_text(bench_csv_text(), encoding="utf-8", newline="")
    return paths


def palette_table(threshold: float = 0.35, character_threshold: float = 0.85) -> str:
    """A Markdown table of which tags each palette colour yields at the given thresholds (for README.md)."""
    w, b = weight_arrays()
    lines = ["| colour (RGB) | tags above the thresholds (probability) |", "| --- | --- |"]
    for name, rgb in PALETTE.items():
        x = np.array(rgb[::-1], dtype=np.float64) / 255.0
        probs = 1.0 / (1.0 + np.exp(-(x @ w.astype(np.float64) + b)))
        shown = [
            f"`{t.name}` {p:.3f}"
            for t, p in zip(TAGS, probs, strict=True)
            if t.category != RATING and p > (character_threshold if t.category == CHARACTER else threshold)
        ]
        lines.append(f"| {name} {rgb} | {', '.join(shown)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Command line: build both variants into ``--out`` (default: this folder)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE, help="folder that receives v3/ and v2/")
    parser.add_argument("--table", action="store_true", help="also print the colour -> tags table")
    parser.add_argument("--bench", action="store_true", help="build only the 10,861-tag bench double")
    args = parser.parse_args(argv)
    if args.bench:
        written = write_bench(args.out)
    else:
        written = [path for variant in VARIANTS for path in write_variant(variant, args.out)]
    for path in written:
        print(f"{path} ({path.stat().st_size} bytes)")
    if args.table:
        print(palette_table())


if __name__ == "__main__":
    main()
