"""Benchmark: add-difference merge of three full-size SD1.5-shaped fp16 checkpoints.

Rows, in one run, each in its own fresh process (so peak RSS is that job's alone):

* ``naive``: the webui 1.10.1 merger's way -- load A, B and C whole (``safetensors.torch.load_file``),
  B - C over B's keys, A + M * (B - C) over A's, ``save_file`` -- written here from the rules.
* ``dbchar``: :func:`lib_dbchar.merge.run_merge`, streamed, with the inputs' SHA-256 handed in as
  the webui's hash cache does (the recipe metadata is written; no re-hashing).
* ``dbchar+hash``: the same, hashing the three inputs itself (first merge of never-hashed files).

The inputs are random fp16 tensors with every key and shape of SD1.5 (UNet, VAE, CLIP ViT-L, the
noise-schedule buffers), generated once (~2.1 GB each) and kept in ``--dir``. Both methods read
them from the page cache (generated just before; ``--cold`` evicts them before each run with
posix_fadvise). The outputs of ``naive`` and ``dbchar`` are compared tensor for tensor at the end.

    python bench/merge.py                      # table on stdout
    python bench/merge.py --write-results      # also bench/results/merge.md
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "bench" / "results" / "merge.md"
# The schedule buffers every ldm SD1 checkpoint carries beside the weights (float32, 1000 steps).
SCHEDULE_BUFFERS = (
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
)
SD15_UNET = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280, 1280),
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
}
SD15_VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "sample_size": 512,
    "block_out_channels": (128, 256, 512, 512),
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
}
SD15_TEXT = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "projection_dim": 768,
}


def sd15_shapes() -> dict[str, tuple[tuple[int, ...], str]]:
    """Every ldm key of an SD1.5 checkpoint -> (shape, dtype), from the real configs on the meta device."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from lib_dbchar.checkpoint import diffusers_to_ldm

    with torch.device("meta"):
        unet = UNet2DConditionModel(**SD15_UNET)
        vae = AutoencoderKL(**SD15_VAE)
        text = CLIPTextModel(CLIPTextConfig(**SD15_TEXT))
    ldm = diffusers_to_ldm(unet.state_dict(), vae.state_dict(), text.state_dict(), kind="sd1")
    shapes = {k: (tuple(v.shape), "float16") for k, v in ldm.items()}
    shapes["cond_stage_model.transformer.text_model.embeddings.position_ids"] = ((1, 77), "int64")
    shapes.update({name: ((1000,), "float32") for name in SCHEDULE_BUFFERS})
    return shapes


def generate(path: Path, shapes: dict, seed: int) -> None:
    """A random checkpoint with these shapes, written tensor by tensor (slices of one random block)."""
    import torch

    from lib_dbchar.checkpoint.stformat import itemsize
    from lib_dbchar.merge.stream import stream_safetensors

    gen = torch.Generator().manual_seed(seed)
    block = torch.randn(1 << 26, generator=gen, dtype=torch.float32).half()
    block = torch.cat([block, block])  # any start offset then has room for the largest tensor
    entries = sorted(((k, d, s) for k, (s, d) in shapes.items()), key=lambda e: (-itemsize(e[1]), e[0]))
    with stream_safetensors(path, entries, {"format": "pt"}, overwrite=True) as writer:
        for key, dtype, shape in entries:
            count = 1
            for n in shape:
                count *= n
            if dtype == "int64":
                tensor = torch.arange(count, dtype=torch.int64).reshape(shape)
            elif dtype == "float32":
                tensor = torch.rand(shape, generator=gen)
            else:
                start = int(torch.randint(0, 1 << 26, (1,), generator=gen))
                tensor = block[start : start + count].reshape(shape).clone()
            writer.write(key, tensor)


# --- the two ways, each run in a child process ---------------------------------------------------


def naive_merge(a: str, b: str, c: str, out: str, multiplier: float) -> None:
    """Load all three, two passes, save: the webui merger's memory profile (written from its rules)."""
    import safetensors.torch
    import torch

    skip = {"cond_stage_model.transformer.text_model.embeddings.position_ids"}
    theta_1 = safetensors.torch.load_file(b)
    theta_2 = safetensors.torch.load_file(c)
    for key in theta_1:
        if key in skip or "model" not in key:
            continue
        theta_1[key] = theta_1[key] - theta_2[key] if key in theta_2 else torch.zeros_like(theta_1[key])
    del theta_2
    theta_0 = safetensors.torch.load_file(a)
    for key in theta_0:
        if "model" in key and key in theta_1 and key not in skip:
            theta_0[key] = theta_0[key] + multiplier * theta_1[key]
            if theta_0[key].dtype == torch.float32:
                theta_0[key] = theta_0[key].half()
    del theta_1
    safetensors.torch.save_file(theta_0, out, metadata={"format": "pt"})


def dbchar_merge(a: str, b: str, c: str, out: str, multiplier: float, *, hashed: bool) -> None:
    from lib_dbchar.merge import MergeConfig, run_merge

    known = {} if hashed else {p: "0" * 64 for p in (a, b, c)}
    config = MergeConfig(method="add_difference", multiplier=multiplier, fp16=True)
    run_merge(config, a, b, c, out, overwrite=True, known_hashes=known)


def child(args: argparse.Namespace) -> None:
    import torch  # noqa: F401 - imported before the clock starts, as in a running webui

    files = [str(args.dir / f"{n}.safetensors") for n in "abc"]
    if args.cold:
        for name in files:
            _evict(name)
    out = str(args.dir / f"out-{args.child}.safetensors")
    baseline = _status("VmRSS") or _maxrss_bytes()
    with contextlib.suppress(OSError):
        _reset_peak()
    cpu = os.times()
    started = time.perf_counter()
    if args.child == "naive":
        naive_merge(*files, out, 1.0)
    else:
        dbchar_merge(*files, out, 1.0, hashed=args.child == "dbchar+hash")
    seconds = time.perf_counter() - started
    now = os.times()
    cpu_seconds = now.user - cpu.user + now.system - cpu.system  # all threads of the job
    print(json.dumps({"seconds": seconds, "cpu": cpu_seconds, "peak": _maxrss_bytes(), "baseline": baseline}))


def _status(field: str) -> int | None:
    """A memory line of /proc/self/status in bytes (Linux), or None."""
    try:
        for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_peak() -> None:
    # Linux: writing 5 to clear_refs resets VmHWM (the peak) to the current RSS.
    Path("/proc/self/clear_refs").write_text("5", encoding="ascii")


def _maxrss_bytes() -> int:
    # VmHWM, not ru_maxrss: after fork+exec ru_maxrss still carries the parent's peak.
    peak = _status("VmHWM")
    if peak is not None:
        return peak
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def _evict(name: str) -> None:
    fd = os.open(name, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def run_child(method: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--child", method, "--dir", str(args.dir)] + (
        ["--cold"] if args.cold else []
    )
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def same_tensors(x: Path, y: Path) -> tuple[bool, int]:
    """(every tensor equal, number of tensors), one pair in memory at a time."""
    import torch
    from safetensors import safe_open

    with safe_open(str(x), "pt") as fx, safe_open(str(y), "pt") as fy:
        keys = set(fx.keys())
        if keys != set(fy.keys()):
            return False, len(keys)
        return all(torch.equal(fx.get_tensor(k), fy.get_tensor(k)) for k in sorted(keys)), len(keys)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path("/tmp/dbchar-bench-merge"))
    parser.add_argument(
        "--cold", action="store_true", help="evict the inputs from the page cache before each run"
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs per method (the best is shown)")
    parser.add_argument("--write-results", action="store_true", help=f"write {RESULTS.relative_to(ROOT)}")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    args.dir.mkdir(parents=True, exist_ok=True)
    shapes = sd15_shapes()
    for seed, name in enumerate("abc"):
        path = args.dir / f"{name}.safetensors"
        if not path.exists():
            print(f"generating {path} ...", file=sys.stderr)
            generate(path, shapes, seed)
    size = (args.dir / "a.safetensors").stat().st_size
    methods = ("naive", "dbchar", "dbchar+hash")
    runs: dict[str, list[dict]] = {m: [] for m in methods}
    # Interleaved, so a burst of load from other jobs hits every method alike.
    for _ in range(args.repeat):
        for method in methods:
            runs[method].append(run_child(method, args))
            print(f"{method}: {runs[method][-1]}", file=sys.stderr)
    rows = {m: _summary(r) for m, r in runs.items()}
    equal, count = same_tensors(args.dir / "out-naive.safetensors", args.dir / "out-dbchar.safetensors")
    table = _table(rows, size, len(shapes), equal=equal, count=count, args=args)
    print(table)
    if args.write_results:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(table + "\n", encoding="utf-8")


def _summary(runs: list[dict]) -> dict:
    return {
        "seconds": statistics.median(r["seconds"] for r in runs),
        "best": min(r["seconds"] for r in runs),
        "cpu": statistics.median(r["cpu"] for r in runs),
        "peak": max(r["peak"] for r in runs),
        "baseline": min(r["baseline"] for r in runs),
        "runs": len(runs),
    }


def _table(rows: dict, size: int, keys: int, *, equal: bool, count: int, args: argparse.Namespace) -> str:
    gib = 2**30
    naive = rows["naive"]
    lines = [
        "## Merge: add difference of three SD1.5-shaped fp16 checkpoints",
        "",
        f"Inputs: 3 x {size / gib:.2f} GiB ({keys} tensors each), random fp16, "
        f"{'cold (evicted from the page cache)' if args.cold else 'warm page cache'}; M = 1, save as fp16. "
        f"Machine: {os.cpu_count()} cores, Python {platform.python_version()}, torch "
        f"{__import__('torch').__version__}; other jobs were running on the machine.",
        "",
        f"Wall and CPU time: median of {naive['runs']} interleaved runs (best wall time in brackets).",
        "",
        "| method | wall time (s) | x naive | CPU time (s) | x naive | peak RSS (GiB) | x naive "
        "| RSS before (GiB) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for method, row in rows.items():
        lines.append(
            f"| {method} | {row['seconds']:.2f} ({row['best']:.2f}) | "
            f"{row['seconds'] / naive['seconds']:.2f} | "
            f"{row['cpu']:.2f} | {row['cpu'] / naive['cpu']:.2f} | "
            f"{row['peak'] / gib:.2f} | {row['peak'] / naive['peak']:.2f} | {row['baseline'] / gib:.2f} |"
        )
    lines += [
        "",
        f"Outputs of naive and dbchar identical tensor for tensor: **{'yes' if equal else 'NO'}** "
        f"({count} tensors).",
        "",
        f"Command: `python bench/merge.py{' --cold' if args.cold else ''}"
        f"{f' --repeat {args.repeat}' if args.repeat != 1 else ''} --write-results`",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
