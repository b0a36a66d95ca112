"""Tagging speed: dbchar's pipeline against the reference loop, same pictures, same model, one run.

    python bench/tagger.py [--images 200] [--repeat 2] [--seed 7]

* **Pictures**: ``--images`` generated pictures of 1 to 4 megapixels (random sizes and aspect ratios;
  70 % JPEG, 20 % PNG, 10 % PNG with transparency), cached in ``$TMPDIR/dbchar-bench-tagger-<seed>``.
* **Model**: the 10,861-tag bench double (``tests/kit/tagger_double/bench10k``), dynamic batch. It
  computes tags from the mean colour, so inference costs almost nothing here: the bench measures
  what surrounds inference (decoding, preparing, selecting tags, writing captions). With a real
  model (0.1-1 s per picture on a CPU) inference dominates and batching/overlap matter more.
* **Reference**: one onnxruntime session built once, then per picture: open, convert to RGBA (the
  demo's input), composite on white, pad, bicubic resize, BGR float32, run batch 1, zip the
  10,861 probabilities with the names, threshold, sort, write ``stem.txt``.
* **dbchar**: :func:`lib_dbchar.tagger.runner.run_tagging` with its defaults (worker threads,
  batches of 8, vectorised selection, atomic captions with a backup journal).

Each way runs ``--repeat`` times, alternating, and the best time counts. Both must select the same
tags with the same scores for every picture; the bench checks it and says so.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lib_dbchar.tagger.runner import TaggerConfig, run_tagging  # noqa: E402
from lib_dbchar.tagger.session import core_count  # noqa: E402
from tests.kit.tagger_double import build  # noqa: E402
from tests.kit.tagger_double.reference import reference_input, reference_labels, reference_tags  # noqa: E402

SIZE = 448


def make_picture(rng: np.random.Generator, megapixels: float, aspect: float) -> Image.Image:
    """A picture with smooth areas, edges and grain, so codecs work as on real art."""
    width = round((megapixels * 1e6 * aspect) ** 0.5)
    height = round(megapixels * 1e6 / width)
    ys = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    xs = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
    base = rng.uniform(0, 255, 3).astype(np.float32)
    tilt = rng.uniform(-120, 120, (2, 3)).astype(np.float32)
    img = base + ys[..., None] * tilt[0] + xs[..., None] * tilt[1]
    for _ in range(12):  # flat shapes with hard edges, like cel shading
        x0, y0 = rng.integers(0, width), rng.integers(0, height)
        w, h = rng.integers(width // 20, width // 3), rng.integers(height // 20, height // 3)
        img[y0 : y0 + h, x0 : x0 + w] = rng.uniform(0, 255, 3)
    grain = rng.normal(0.0, 6.0, (height, width, 1)).astype(np.float32)
    return Image.fromarray(np.clip(img + grain, 0, 255).astype(np.uint8), "RGB")


def make_set(folder: Path, count: int, seed: int) -> list[Path]:
    """Generate (once) and list the bench pictures."""
    folder.mkdir(parents=True, exist_ok=True)
    done = folder / "complete"
    if done.exists() and int(done.read_text()) == count:
        return sorted(p for p in folder.iterdir() if p.suffix in (".jpg", ".png"))
    rng = np.random.default_rng(seed)
    for i in range(count):
        picture = make_picture(
            rng, rng.uniform(1.0, 4.0), float(rng.choice([1.0, 0.75, 4 / 3, 0.5625, 16 / 9]))
        )
        kind = rng.uniform()
        if kind < 0.7:
            picture.save(folder / f"{i:04d}.jpg", quality=90)
        elif kind < 0.9:
            picture.save(folder / f"{i:04d}.png", compress_level=3)
        else:
            alpha = np.full(picture.size[::-1], 255, np.uint8)
            alpha[: picture.height // 3] = np.linspace(0, 255, picture.width, dtype=np.uint8)[None, :]
            picture.putalpha(Image.fromarray(alpha, "L"))
            picture.save(folder / f"{i:04d}.png", compress_level=3)
    done.write_text(str(count))
    return sorted(p for p in folder.iterdir() if p.suffix in (".jpg", ".png"))


def model_folder(tmp: Path) -> Path:
    folder = tmp / "bench10k"
    folder.mkdir()
    shutil.copy(ROOT / "tests" / "kit" / "tagger_double" / "bench10k" / "model.onnx", folder)
    (folder / "selected_tags.csv").write_text(build.bench_csv_text(), encoding="utf-8")
    return folder


def reference_run(pictures: list[Path], model: Path, out: Path) -> tuple[float, float, dict]:
    """The per-picture loop with one session; returns (seconds, CPU seconds, {name: selection})."""
    import onnxruntime as ort

    started, cpu = time.perf_counter(), time.process_time()
    session = ort.InferenceSession(str(model / "model.onnx"), providers=["CPUExecutionProvider"])
    labels = reference_labels(model / "selected_tags.csv")
    name_in, name_out = session.get_inputs()[0].name, session.get_outputs()[0].name
    selections = {}
    for path in pictures:
        image = Image.open(path)
        probs = session.run([name_out], {name_in: reference_input(image, SIZE)})[0][0]
        general, characters, _ = reference_tags(probs, labels)
        text = ", ".join([*characters, *(name for name, _ in general)])
        (out / f"{path.stem}.txt").write_text(text, encoding="utf-8")
        selections[path.name] = (general, characters)
    return time.perf_counter() - started, time.process_time() - cpu, selections


def ours_run(folder: Path, model: Path) -> tuple[float, float, dict, object]:
    for old in folder.glob("*.txt"):
        old.unlink()
    shutil.rmtree(folder / ".dbchar", ignore_errors=True)
    started, cpu = time.perf_counter(), time.process_time()
    result = run_tagging(TaggerConfig(model_dir=str(model)), folder, device="cpu")
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    selections = {
        Path(r.image).name: (
            [(t.name, t.score) for t in r.scores.general],
            {t.name: t.score for t in r.scores.character},
        )
        for r in result.images
    }
    return seconds, cpu, selections, result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    cache = Path(tempfile.gettempdir()) / f"dbchar-bench-tagger-{args.seed}-{args.images}"
    t0 = time.perf_counter()
    pictures = make_set(cache, args.images, args.seed)
    print(
        f"{len(pictures)} pictures in {cache} (ready in {time.perf_counter() - t0:.0f} s); "
        f"{sum(p.stat().st_size for p in pictures) / 1e6:.0f} MB"
    )
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        model = model_folder(tmp)
        ref_out = tmp / "reference-captions"
        ref_out.mkdir()
        ref_times, our_times, ref_cpu, our_cpu = [], [], [], []
        for _ in range(args.repeat):
            seconds, cpu, ref_sel = reference_run(pictures, model, ref_out)
            ref_times.append(seconds)
            ref_cpu.append(cpu)
            seconds, cpu, our_sel, result = ours_run(cache, model)
            our_times.append(seconds)
            our_cpu.append(cpu)
        same = sum(1 for name in ref_sel if our_sel.get(name) == ref_sel[name])
    ref_best, our_best = min(ref_times), min(our_times)
    n = len(pictures)
    # CPU time of the whole process (all threads) per picture: the work each way does, which the
    # other programs on a shared machine cannot change the way they change wall-clock time.
    ref_work, our_work = min(ref_cpu) / n * 1e3, min(our_cpu) / n * 1e3
    print()
    print(
        f"machine: {platform.processor() or platform.machine()}, {core_count()} cores, Python "
        f"{platform.python_version()}, {os.environ.get('DBCHAR_BENCH_NOTE', 'shared machine')}"
    )
    print(f"dbchar: provider {result.provider}, batch {result.batch_size}, {result.workers} loader threads")
    print()
    print("| way | best time (s) | pictures/s | all runs (s) | speed-up | CPU ms / picture |")
    print("| --- | ---: | ---: | --- | ---: | ---: |")
    print(
        f"| reference loop (one session, batch 1) | {ref_best:.1f} | {n / ref_best:.2f} | "
        f"{', '.join(f'{t:.1f}' for t in ref_times)} | 1.00x | {ref_work:.0f} |"
    )
    print(
        f"| dbchar run_tagging | {our_best:.1f} | {n / our_best:.2f} | "
        f"{', '.join(f'{t:.1f}' for t in our_times)} | {ref_best / our_best:.2f}x | {our_work:.0f} |"
    )
    print()
    print(f"identical tag selections (names and scores): {same}/{n}")
    return 0 if same == n else 1


if __name__ == "__main__":
    raise SystemExit(main())
