"""Build the anime face detector double: a tiny ONNX model with the real YOLOv8 export's signature.

The real model (``deepghs/anime_face_detection``, ``face_detect_v1.4_n/model.onnx``, an Ultralytics
YOLOv8 export without NMS) looks like this to onnxruntime::

    input  images   float32 [batch, 3, height, width]   NCHW, RGB, 0..1 (pixels / 255), dynamic H and W
    output output0  float32 [batch, 5, anchors]         rows: centre x, centre y, width, height (input
                                                         pixels), face score; one column per anchor
    metadata        imgsz "[640, 640]", names "{0: 'face'}", stride "32", task "detect"

The double has the same names, layout and metadata. Its "face" is any **magenta** pixel
(R > 0.8, G < 0.2, B > 0.8 after scaling): it answers three anchors per image::

    anchor 0: the bounding box of all magenta pixels, score 0.9 (0 when there are none)
    anchor 1: the same box shifted right by 5 % of its width, score 0.8 (a duplicate NMS must drop)
    anchor 2: a decoy box in the top-left corner (10 % of the input), score 0.05 (under any threshold)

so a test plants a face by painting a magenta patch. Run from the repository root in a venv that has
``onnx`` and ``numpy`` (the test venvs must not need ``onnx``; the built file is committed)::

    python -m venv /tmp/face-venv && /tmp/face-venv/bin/pip install onnx numpy
    /tmp/face-venv/bin/python tests/kit/face_double/build.py
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
MODEL_FILE = HERE / "model.onnx"
OPSET = 17  # Reduce* keep their axes as attributes up to opset 17
IR_VERSION = 8  # loads in every onnxruntime the webui or the latest releases ship
FACE_SCORE = 0.9
DUPLICATE_SCORE = 0.8
DECOY_SCORE = 0.05
# A large coordinate for "no magenta in this row/column": min/max over it stays finite.
FAR = 1.0e6
METADATA = {
    "imgsz": "[640, 640]",
    "names": "{0: 'face'}",
    "stride": "32",
    "task": "detect",
    "batch": "1",
    "dbchar_double": "anime face detector (magenta patch = face); see README.md",
}


def _const(name: str, value: float | list[int], dtype: type = np.float32):
    from onnx import numpy_helper

    return numpy_helper.from_array(np.array(value, dtype=dtype), name)


def _span_nodes(helper, prefix: str, present: str, dim_index: int) -> list:
    """Nodes giving ``<prefix>_lo`` / ``<prefix>_hi`` [N, 1]: first and one-past-last magenta index.

    Args:
        present: a float [N, L] tensor, 1 where the row (or column) holds a magenta pixel.
        dim_index: 2 for rows (height), 3 for columns (width) of the input.
    """
    p = prefix
    return [
        helper.make_node("Gather", ["shape", f"idx{dim_index}"], [f"{p}_len"], axis=0),
        helper.make_node("Range", ["zero_i", f"{p}_len", "one_i"], [f"{p}_range"]),
        helper.make_node("Cast", [f"{p}_range"], [f"{p}_pos"], to=1),  # float
        helper.make_node("Add", [f"{p}_pos", "one_f"], [f"{p}_end"]),
        helper.make_node("Greater", [present, "half"], [f"{p}_on"]),
        helper.make_node("Where", [f"{p}_on", f"{p}_pos", "far"], [f"{p}_lo_all"]),
        helper.make_node("Where", [f"{p}_on", f"{p}_end", "near"], [f"{p}_hi_all"]),
        helper.make_node("ReduceMin", [f"{p}_lo_all"], [f"{p}_lo"], axes=[1], keepdims=1),
        helper.make_node("ReduceMax", [f"{p}_hi_all"], [f"{p}_hi"], axes=[1], keepdims=1),
    ]


def build_model():
    """The double as an ``onnx.ModelProto`` (checked)."""
    import onnx
    from onnx import TensorProto, helper

    images = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, "height", "width"])
    output = helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["batch", 5, "anchors"])
    inits = [
        _const("split3", [1, 1, 1], np.int64),
        _const("hi_level", 0.8),
        _const("lo_level", 0.2),
        _const("half", 0.5),
        _const("far", FAR),
        _const("near", -FAR),
        _const("one_f", 1.0),
        _const("two_f", 2.0),
        _const("zero_i", 0, np.int64),
        _const("one_i", 1, np.int64),
        _const("idx2", 2, np.int64),
        _const("idx3", 3, np.int64),
        _const("face_score", FACE_SCORE),
        _const("dup_score", DUPLICATE_SCORE),
        _const("decoy_score", DECOY_SCORE),
        _const("shift_frac", 0.05),
        _const("decoy_frac", 0.1),
        _const("decoy_centre", 0.1),
        _const("unsq_axes", [2], np.int64),
    ]
    nodes = [
        helper.make_node("Split", ["images", "split3"], ["r", "g", "b"], axis=1),
        helper.make_node("Greater", ["r", "hi_level"], ["r_on"]),
        helper.make_node("Less", ["g", "lo_level"], ["g_off"]),
        helper.make_node("Greater", ["b", "hi_level"], ["b_on"]),
        helper.make_node("And", ["r_on", "g_off"], ["rg"]),
        helper.make_node("And", ["rg", "b_on"], ["magenta_b"]),
        helper.make_node("Cast", ["magenta_b"], ["magenta"], to=1),  # [N, 1, H, W] float
        helper.make_node("ReduceMax", ["magenta"], ["cols"], axes=[1, 2], keepdims=0),  # [N, W]
        helper.make_node("ReduceMax", ["magenta"], ["rows"], axes=[1, 3], keepdims=0),  # [N, H]
        helper.make_node("ReduceMax", ["cols"], ["found"], axes=[1], keepdims=1),  # [N, 1]
        helper.make_node("Shape", ["images"], ["shape"]),
    ]
    nodes += _span_nodes(helper, "x", "cols", 3)
    nodes += _span_nodes(helper, "y", "rows", 2)
    nodes += [
        # anchor 0: the magenta bounding box as centre + size
        helper.make_node("Add", ["x_lo", "x_hi"], ["x_sum"]),
        helper.make_node("Div", ["x_sum", "two_f"], ["cx"]),
        helper.make_node("Sub", ["x_hi", "x_lo"], ["w"]),
        helper.make_node("Add", ["y_lo", "y_hi"], ["y_sum"]),
        helper.make_node("Div", ["y_sum", "two_f"], ["cy"]),
        helper.make_node("Sub", ["y_hi", "y_lo"], ["h"]),
        helper.make_node("Mul", ["found", "face_score"], ["s0"]),
        helper.make_node("Concat", ["cx", "cy", "w", "h", "s0"], ["a0_2d"], axis=1),
        # anchor 1: shifted duplicate with a lower score
        helper.make_node("Mul", ["w", "shift_frac"], ["shift"]),
        helper.make_node("Add", ["cx", "shift"], ["cx1"]),
        helper.make_node("Mul", ["found", "dup_score"], ["s1"]),
        helper.make_node("Concat", ["cx1", "cy", "w", "h", "s1"], ["a1_2d"], axis=1),
        # anchor 2: a faint decoy in the top-left corner of the input
        helper.make_node("Cast", ["x_len"], ["width_f"], to=1),
        helper.make_node("Cast", ["y_len"], ["height_f"], to=1),
        helper.make_node("Mul", ["width_f", "decoy_frac"], ["dw"]),
        helper.make_node("Mul", ["height_f", "decoy_frac"], ["dh"]),
        helper.make_node("Mul", ["width_f", "decoy_centre"], ["dcx"]),
        helper.make_node("Mul", ["height_f", "decoy_centre"], ["dcy"]),
        helper.make_node("Mul", ["found", "zero_f"], ["zeros"]),  # [N, 1] zeros, to broadcast scalars
        helper.make_node("Add", ["zeros", "dcx"], ["dcx_n"]),
        helper.make_node("Add", ["zeros", "dcy"], ["dcy_n"]),
        helper.make_node("Add", ["zeros", "dw"], ["dw_n"]),
        helper.make_node("Add", ["zeros", "dh"], ["dh_n"]),
        helper.make_node("Add", ["zeros", "decoy_score"], ["s2"]),
        helper.make_node("Concat", ["dcx_n", "dcy_n", "dw_n", "dh_n", "s2"], ["a2_2d"], axis=1),
        helper.make_node("Unsqueeze", ["a0_2d", "unsq_axes"], ["a0"]),
        helper.make_node("Unsqueeze", ["a1_2d", "unsq_axes"], ["a1"]),
        helper.make_node("Unsqueeze", ["a2_2d", "unsq_axes"], ["a2"]),
        helper.make_node("Concat", ["a0", "a1", "a2"], ["output0"], axis=2),
    ]
    inits.append(_const("zero_f", 0.0))
    graph = helper.make_graph(nodes, "dbchar_anime_face_double", [images], [output], inits)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="dbchar-face-double",
        doc_string="Test double of an anime face detector (YOLOv8 export signature); magenta = face.",
    )
    model.ir_version = IR_VERSION
    helper.set_model_props(model, METADATA)
    onnx.checker.check_model(model, full_check=True)
    return model


def main(argv: list[str] | None = None) -> None:
    """Command line: write ``model.onnx`` beside this file (or to ``--out``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=MODEL_FILE, help="where to write the model")
    args = parser.parse_args(argv)
    args.out.write_bytes(build_model().SerializeToString())
    print(f"{args.out} ({args.out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
