"""The streaming writer, and the proof that a merge holds a few tensors in memory, not the models."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import safetensors.torch
import torch

from lib_dbchar.errors import TargetExists
from lib_dbchar.merge.stream import stream_safetensors

ROOT = Path(__file__).resolve().parents[1]


def test_streamed_file_reads_back_with_safetensors(tmp_path):
    tensors = {
        "a": torch.randn(3, 5),
        "b": torch.randn(7).half(),
        "c": torch.randn(2, 2).bfloat16(),
        "d": torch.arange(4, dtype=torch.int64),
        "e": torch.tensor(True),
        "f": torch.zeros(0, 3),
    }
    entries = [(k, str(v.dtype).removeprefix("torch."), tuple(v.shape)) for k, v in tensors.items()]
    path = tmp_path / "s.safetensors"
    with stream_safetensors(path, entries, {"format": "pt", "x": "1"}) as writer:
        for key, tensor in tensors.items():
            writer.write(key, tensor)
    loaded = safetensors.torch.load_file(str(path))
    assert set(loaded) == set(tensors)
    for key, tensor in tensors.items():
        assert loaded[key].dtype == tensor.dtype and torch.equal(loaded[key], tensor), key
    with safetensors.safe_open(str(path), "pt") as handle:
        assert handle.metadata() == {"format": "pt", "x": "1"}
    (length,) = struct.unpack("<Q", path.read_bytes()[:8])
    assert (8 + length) % 8 == 0  # data starts aligned


@pytest.mark.parametrize(
    ("tensor", "message"),
    [(torch.zeros(2, dtype=torch.float16), "should be 'a' float32"), (torch.zeros(3), r"\[2\]")],
)
def test_a_tensor_unlike_the_header_is_refused_and_nothing_is_left(tmp_path, tensor, message):
    path = tmp_path / "bad.safetensors"
    with (
        pytest.raises(ValueError, match=message),
        stream_safetensors(path, [("a", "float32", (2,))]) as writer,
    ):
        writer.write("a", tensor)
    assert list(tmp_path.iterdir()) == []


def test_missing_tensors_or_extra_ones_are_refused(tmp_path):
    path = tmp_path / "short.safetensors"
    with (
        pytest.raises(ValueError, match="only 1 of 2 tensors"),
        stream_safetensors(path, [("a", "float32", (1,)), ("b", "float32", (1,))]) as writer,
    ):
        writer.write("a", torch.zeros(1))
    with pytest.raises(ValueError, match="one tensor more"), stream_safetensors(path, []) as writer:
        writer.write("a", torch.zeros(1))
    assert list(tmp_path.iterdir()) == []


def test_existing_file_is_replaced_only_when_asked(tmp_path):
    path = tmp_path / "x.safetensors"
    path.write_bytes(b"old")
    with pytest.raises(TargetExists), stream_safetensors(path, []):
        pass
    assert path.read_bytes() == b"old"
    with stream_safetensors(path, [("a", "float32", (1,))], overwrite=True) as writer:
        writer.write("a", torch.ones(1))
    assert torch.equal(safetensors.torch.load_file(str(path))["a"], torch.ones(1))
    with pytest.raises(ValueError, match=r"\.safetensors"), stream_safetensors(tmp_path / "x.ckpt", []):
        pass


# --- one tensor at a time: peak memory on multi-GB inputs -----------------------------------------------

_TENSOR_SHAPE = (2048, 4096)  # 16 MiB in fp16
_TENSOR_BYTES = 2048 * 4096 * 2
_COUNT = 32  # 512 MiB per input: 1.5 GiB read, 0.5 GiB written


def _sparse_checkpoint(path: Path) -> int:
    """A safetensors file of 32 x 16 MiB fp16 UNet-named tensors whose data is a hole (all zeros)."""
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    names = ["cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"]
    names += [f"model.diffusion_model.input_blocks.{i}.0.in_layers.2.weight" for i in range(_COUNT)]
    for name in names:
        shape = (8, 4) if name.startswith("cond") else _TENSOR_SHAPE
        size = shape[0] * shape[1] * 2
        header[name] = {"dtype": "F16", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(raw)) + raw)
        handle.truncate(8 + len(raw) + offset)  # sparse: no disk blocks, reads give zeros
    return offset


_CHILD = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import torch  # imported before measuring, as in a running webui
    from lib_dbchar.merge import MergeConfig, run_merge

    def status(field):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024

    folder = Path(sys.argv[1])
    baseline = status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to now
    a, b, c, out = (folder / f"{name}.safetensors" for name in ("a", "b", "c", "out"))
    result = run_merge(MergeConfig(add_merge_recipe=False), a, b, c, out)
    print(json.dumps({"baseline": baseline, "peak": status("VmHWM"), "written": result.bytes_written}))
    print("peak grew by", (status("VmHWM") - baseline) / 2**20, "MiB", file=sys.stderr)
    """
)


@pytest.mark.slow
@pytest.mark.skipif(
    not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc to measure peak memory"
)
def test_merge_of_multi_gb_inputs_holds_a_few_tensors_not_the_models(tmp_path):
    data = sum(_sparse_checkpoint(tmp_path / f"{n}.safetensors") for n in "abc")
    try:
        done = subprocess.run(
            [sys.executable, "-c", _CHILD, str(tmp_path)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=300,
        )
        found = json.loads(done.stdout.strip().splitlines()[-1])
        assert found["written"] > data / 3  # the whole 512 MiB model was written
        grown = found["peak"] - found["baseline"]
        # Buffers for A (two, alternating), B and C: 4 tensors, plus slack. Loading the three
        # models would take 1.5 GiB, holding one whole model 512 MiB.
        assert grown < 8 * _TENSOR_BYTES, f"peak grew by {grown / 2**20:.0f} MiB"
        assert grown < data / 12
    finally:
        for path in tmp_path.glob("*.safetensors"):
            path.unlink()
