"""Benchmark: ``run_prep`` against a plain Pillow loop, on 2-12 MP pictures, in one run.

    python bench/prep.py                 # 200 pictures (generated once into /tmp/dbchar-bench-prep)
    python bench/prep.py --count 40      # quicker

The reference is what a script without any care for speed does per picture: open, convert to RGB,
cut the centre square, Lanczos-resize it to 512, save PNG (Pillow defaults), one after the other.
Each variant runs in its own child process, so its peak memory (ru_maxrss) is its own; the table
gives pictures per second, the ratio to the reference, peak memory, and how far the outputs of
``prep`` (center crop) are from the reference's (mean absolute difference in 8-bit levels).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESOLUTION = 512
VARIANTS = ("reference", "prep-center-1", "prep-center", "prep-focal")


def reference_loop(sources: list[Path], out: Path) -> int:
    """The plain way: open, RGB, centre square, Lanczos to 512, PNG; sequential."""
    from PIL import Image

    for path in sources:
        with Image.open(path) as image:
            rgb = image.convert("RGB")
        side = min(rgb.size)
        left, top = (rgb.width - side) // 2, (rgb.height - side) // 2
        square = rgb.crop((left, top, left + side, top + side)).resize(
            (RESOLUTION, RESOLUTION), Image.LANCZOS
        )
        square.save(out / f"{path.stem}.png")
    return len(sources)


def prep_variant(sources: list[Path], out: Path, crop: str, workers: int) -> int:
    from lib_dbchar.dataset.options import PrepConfig
    from lib_dbchar.dataset.prep import run_prep

    config = PrepConfig(crop=crop, face_detector=False, workers=workers, resolution=RESOLUTION)
    result = run_prep(config, sources, out)
    if result.skipped:
        raise SystemExit(f"unexpected skips: {result.skipped[:3]}")
    return len(result.prepared)


def child(variant: str, corpus: Path, count: int, out: Path, workers: int) -> None:
    """Run one variant and print its numbers as JSON (called in a fresh process)."""
    sources = sorted(corpus.glob("bench_*"))[:count]
    before = resource.getrusage(resource.RUSAGE_SELF)
    cpu_before = before.ru_utime + before.ru_stime
    started = time.perf_counter()
    if variant == "reference":
        done = reference_loop(sources, out)
    elif variant == "prep-center-1":
        done = prep_variant(sources, out, "center", 1)
    elif variant == "prep-center":
        done = prep_variant(sources, out, "center", workers)
    else:
        done = prep_variant(sources, out, "focal", workers)
    seconds = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage.ru_utime + usage.ru_stime - cpu_before
    report = {
        "variant": variant,
        "images": done,
        "seconds": seconds,
        "cpu": cpu,
        "peak_mb": usage.ru_maxrss / 1024,
    }
    print(json.dumps(report))


def mean_abs_difference(a_dir: Path, b_dir: Path) -> float:
    import numpy as np
    from PIL import Image

    diffs = []
    for a in sorted(a_dir.glob("bench_*.png")):
        b = b_dir / a.name
        x = np.asarray(Image.open(a).convert("RGB"), dtype=np.int16)
        y = np.asarray(Image.open(b).convert("RGB"), dtype=np.int16)
        diffs.append(float(np.abs(x - y).mean()))
    return sum(diffs) / max(1, len(diffs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--corpus", type=Path, default=Path(tempfile.gettempdir()) / "dbchar-bench-prep")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.corpus, args.count, args.out, args.workers)
        return

    from tests.kit.images import bench_corpus

    started = time.perf_counter()
    paths = bench_corpus(args.corpus, args.count)
    megapixels = []
    from PIL import Image

    for p in paths:
        with Image.open(p) as image:
            megapixels.append(image.width * image.height / 1e6)
    print(
        f"corpus: {len(paths)} pictures, {min(megapixels):.1f}-{max(megapixels):.1f} MP "
        f"(mean {sum(megapixels) / len(megapixels):.1f}), "
        f"{sum(p.suffix == '.jpg' for p in paths)} JPEG / {sum(p.suffix == '.png' for p in paths)} PNG "
        f"({time.perf_counter() - started:.0f} s to make or find); {os.cpu_count()} cores, "
        f"workers {args.workers}"
    )
    rows, outs = [], {}
    work = Path(tempfile.mkdtemp(prefix="dbchar-bench-out-"))
    try:
        for variant in VARIANTS:
            out = work / variant
            out.mkdir()
            command = [
                sys.executable,
                __file__,
                "--child",
                variant,
                "--corpus",
                str(args.corpus),
                "--count",
                str(args.count),
                "--out",
                str(out),
                "--workers",
                str(args.workers),
            ]
            done = subprocess.run(command, capture_output=True, text=True, check=True, cwd=ROOT)
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            outs[variant] = out
        quality = mean_abs_difference(outs["reference"], outs["prep-center"])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base = rows[0]["images"] / rows[0]["seconds"]
    base_cpu = rows[0]["cpu"] / rows[0]["images"]
    print()
    header = ["variant", "images", "wall s", "images/s", "vs reference", "CPU s/image", "CPU vs reference"]
    print("| " + " | ".join([*header, "peak RSS MB"]) + " |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        rate, cpu = r["images"] / r["seconds"], r["cpu"] / r["images"]
        cells = [
            r["variant"],
            r["images"],
            f"{r['seconds']:.1f}",
            f"{rate:.2f}",
            f"{rate / base:.2f}x",
            f"{cpu:.3f}",
            f"{base_cpu / cpu:.2f}x",
            f"{r['peak_mb']:.0f}",
        ]
        print("| " + " | ".join(str(c) for c in cells) + " |")
    print()
    load = os.getloadavg()
    print(f"load average during the run (1/5/15 min): {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}")
    print(f"prep-center vs reference outputs: mean absolute difference {quality:.2f} levels of 255")


if __name__ == "__main__":
    main()
