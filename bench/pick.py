"""Benchmark: the overfitting-test grid (issue #7) against an X/Y-plot-style grid, in one run.

    python bench/pick.py                  # 2 probes x 2 seeds, source + 3 checkpoints, 4 steps, 128 px
    python bench/pick.py --checkpoints 2  # quicker

The model: an SD1-shaped model with a 35 M-parameter UNet (widths 64-256, cross-attention 256, the
size of bench/train.py's), a 3.9 M VAE and a 4-layer CLIP text encoder, built offline by
``lib_dbchar.demo.tiny.build_tiny_sd`` with its sizes scaled up; a run folder for it (``run.json``,
``working/`` converted by ``prepare_working_model`` as training does, ``checkpoints.json``) whose
checkpoints are the source model nudged by noise, written as ldm single-file safetensors.

Three scenarios, each variant in its own child process (so ``ru_maxrss`` is that scenario's peak):

1. **full**: every cell of P probe rows x (source + K checkpoints).
2. **add**: one more checkpoint appears in the run (a training run went on).
3. **again**: the same grid is asked for once more (the tab reopened, a re-render clicked).

* **dbchar**: ``lib_dbchar.pick.grid.render_grid`` -- one set of modules, each checkpoint's tensors
  converted in memory and copied into it; per-cell fingerprints, so scenario 2 draws only the new
  column and scenario 3 draws nothing.
* **reference**: what a user's X/Y-plot-style workflow does: for every checkpoint, a whole new
  pipeline (fresh UNet/VAE/text encoder built from the model's configs, the checkpoint converted
  with dbchar's converter and loaded into them, a ``StableDiffusionPipeline``), then every cell
  drawn with it; nothing is kept between runs, so scenarios 2 and 3 draw the whole grid again.

Both draw the same cells (prompt, negative, seed, DDIM, steps, CFG, size) and save one PNG per cell.
Wall time is measured in the child from after the shared imports (torch, diffusers, transformers)
to the end; the import-only RSS is printed too, since both peaks include it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESOLUTION = 128
SEED = 7
RUN = "bench"
# Sizes of bench/train.py's model, put over tiny.py's so its builder (vocab, tokenizer, single file)
# makes the bench model.
UNET = {
    "sample_size": RESOLUTION // 8,
    "block_out_channels": (64, 128, 256, 256),
    "cross_attention_dim": 256,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
}
VAE = {"sample_size": RESOLUTION, "block_out_channels": (32, 64, 128, 128), "norm_num_groups": 32}
TEXT = {"hidden_size": 256, "intermediate_size": 1024, "num_attention_heads": 4, "projection_dim": 256}
PROBE_PROMPTS = [
    ("side", "sks, 1girl, red hair, from side, simple background"),
    ("behind", "sks, 1girl, red hair, from behind, outdoors"),
    ("outfit", "sks, 1girl, red hair, kimono, standing"),
    ("leak", "1girl, red hair, standing"),
]
NEGATIVE = "lowres, bad anatomy"


# --- the shared model and run ------------------------------------------------------------------


def build_model(root: Path):
    """The bench model through tiny.py's builder with bench/train.py's sizes."""
    from lib_dbchar.demo import tiny

    with contextlib.ExitStack() as stack:
        for target, values in ((tiny._UNET, UNET), (tiny._VAE, VAE), (tiny._TEXT, TEXT)):
            stack.enter_context(mock.patch.dict(target, values))
        return tiny.build_tiny_sd("sd1", root / "model", seed=SEED)


def nudged_checkpoint(source: Path, path: Path, seed: int, scale: float = 1e-3) -> Path:
    """The source model with small Gaussian noise on every float tensor (a stand-in for training)."""
    import torch

    from lib_dbchar.checkpoint import load_checkpoint, save_single_file

    state = load_checkpoint(source)
    generator = torch.Generator().manual_seed(seed)
    nudged = {
        key: (t + scale * torch.randn(t.shape, generator=generator, dtype=t.dtype))
        if t.is_floating_point()
        else t
        for key, t in state.items()
    }
    return save_single_file(nudged, path, overwrite=True)


def build_workspace(root: Path, checkpoints: int) -> dict:
    """Model, run folder (run.json, working/, ``checkpoints`` in checkpoints.json) and one more file."""
    from lib_dbchar.concept import Concept
    from lib_dbchar.train.config import TrainConfig
    from lib_dbchar.train.model import prepare_working_model
    from lib_dbchar.train.run import CheckpointRecord, RunSpec, save_run_spec, write_checkpoint_records

    model = build_model(root)
    models = root / "models"
    config = TrainConfig(
        source_checkpoint=str(model.single_file), resolution=RESOLUTION, mixed_precision="no"
    )
    spec = RunSpec(root / "project", RUN, config, (Concept(instance_token="sks"),), models,
                   model_config_dir=model.diffusers_dir)  # fmt: skip
    save_run_spec(spec)
    # Training converts the source into working/ once; the grid reads configs and tokenizer there.
    prepare_working_model(model.single_file, spec.run_dir / "working", config_dir=model.diffusers_dir)
    steps = [100 * (i + 1) for i in range(checkpoints + 1)]
    paths = [nudged_checkpoint(model.single_file, models / f"{RUN}_{s}.safetensors", s) for s in steps]
    records = [CheckpointRecord(str(p), s, s) for p, s in zip(paths, steps, strict=True)]
    write_checkpoint_records(spec.run_dir / "checkpoints.json", records[:-1])
    return {
        "run_dir": str(spec.run_dir),
        "diffusers": str(model.diffusers_dir),
        "records": [[r.path, r.step] for r in records],
        "scratch": str(root / "reference"),
    }


def add_last_checkpoint(workspace: dict) -> None:
    """Scenario 2: the run's checkpoints.json gains the last checkpoint."""
    from lib_dbchar.train.run import CheckpointRecord, write_checkpoint_records

    records = [CheckpointRecord(path, step, step) for path, step in workspace["records"]]
    write_checkpoint_records(Path(workspace["run_dir"]) / "checkpoints.json", records)


def make_probes(count: int, seeds: int) -> list:
    from lib_dbchar.pick.probes import Probe

    chosen = PROBE_PROMPTS[:count]
    return [
        Probe(pid, pid, pid, prompt, NEGATIVE, tuple(1000 + s for s in range(seeds)))
        for pid, prompt in chosen
    ]


# --- the two ways --------------------------------------------------------------------------------


def ours(workspace: dict, probes: list, settings) -> dict:
    """``render_grid`` on the run: cached cells are not drawn, checkpoints load into one module set."""
    from lib_dbchar.pick.grid import render_grid, run_columns

    run_dir = Path(workspace["run_dir"])
    grid = render_grid(run_dir, probes, run_columns(run_dir), settings)
    per_column = sum(len(p.seeds) for p in probes)
    # A column is loaded only when it has a cell to draw (here every drawn column draws all its rows).
    loads = -(-grid.rendered // per_column)
    return {"drawn": grid.rendered, "cached": grid.cached, "loads": loads, "columns": len(grid.columns)}


def _fresh_pipeline(diffusers_dir: Path, checkpoint: Path):
    """A whole new pipeline for one checkpoint: modules from configs, the converted tensors loaded."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from lib_dbchar.checkpoint import detect_kind, ldm_to_diffusers, load_checkpoint, match_text_encoder_keys

    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(diffusers_dir / "unet"))
    vae = AutoencoderKL.from_config(AutoencoderKL.load_config(diffusers_dir / "vae"))
    text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(str(diffusers_dir / "text_encoder")))
    state = load_checkpoint(checkpoint, ema="drop")
    parts = ldm_to_diffusers(state, kind=detect_kind(state), text_model_prefix=True)
    unet.load_state_dict(parts.unet)
    vae.load_state_dict(parts.vae)
    text = match_text_encoder_keys(parts.text_encoder, text_encoder.state_dict().keys())
    text_encoder.load_state_dict(dict(text))
    del state, parts, text
    pipe = StableDiffusionPipeline(
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=CLIPTokenizer.from_pretrained(str(diffusers_dir / "tokenizer")),
        unet=unet.eval(),
        scheduler=DDIMScheduler.from_pretrained(diffusers_dir / "scheduler"),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    torch.manual_seed(0)
    return pipe


def reference(workspace: dict, probes: list, settings, scenario: str) -> dict:
    """Every column drawn with its own new pipeline; every cell drawn (no cache)."""
    import gc

    import torch

    from lib_dbchar.pick.grid import run_columns

    run_dir = Path(workspace["run_dir"])
    out = Path(workspace["scratch"]) / scenario
    drawn = loads = 0
    columns = run_columns(run_dir)
    for column in columns:
        pipe = _fresh_pipeline(Path(workspace["diffusers"]), Path(column.path))
        loads += 1
        folder = out / column.key
        folder.mkdir(parents=True, exist_ok=True)
        for probe in probes:
            for seed in probe.seeds:
                with torch.no_grad():
                    image = pipe(
                        probe.prompt,
                        negative_prompt=probe.negative,
                        num_inference_steps=settings.steps,
                        guidance_scale=settings.cfg,
                        height=settings.size,
                        width=settings.size,
                        generator=torch.Generator().manual_seed(seed),
                    ).images[0]
                image.save(folder / f"{probe.id}-{seed}.png")
                drawn += 1
        del pipe
        gc.collect()
    return {"drawn": drawn, "cached": 0, "loads": loads, "columns": len(columns)}


# --- child processes and the table -------------------------------------------------------------


def child(args: argparse.Namespace) -> None:
    # The shared imports happen before the clock starts, for both variants: diffusers imports its
    # classes lazily, and the first model class pulls in accelerate, bitsandbytes and torch._dynamo
    # (10-20 s on a loaded machine) -- the same for both and paid once per webui session anyway.
    import torch
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel  # noqa: F401
    from transformers import CLIPTextModel, CLIPTokenizer  # noqa: F401

    from lib_dbchar.pick.grid import PickSettings
    from lib_dbchar.pick.render import open_renderer  # noqa: F401

    torch.set_num_threads(args.threads)
    import_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    workspace = json.loads(Path(args.workspace).read_text(encoding="utf-8"))
    probes = make_probes(args.probes, args.seeds)
    settings = PickSettings(steps=args.steps, cfg=7.0, size=RESOLUTION, scheduler="ddim")
    start, cpu = time.perf_counter(), time.process_time()
    if args.child == "dbchar":
        result = ours(workspace, probes, settings)
    else:
        result = reference(workspace, probes, settings, args.scenario)
    result["wall"] = time.perf_counter() - start
    # CPU seconds are the steadier figure when other jobs share the cores.
    result["cpu"] = time.process_time() - cpu
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["import_rss_mb"] = import_rss
    print(json.dumps(result))


def run_child(variant: str, scenario: str, workspace_file: Path, args: argparse.Namespace) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, __file__, "--child", variant, "--scenario", scenario,
               "--workspace", str(workspace_file), "--threads", str(args.threads), "--steps", str(args.steps),
               "--probes", str(args.probes), "--seeds", str(args.seeds)]  # fmt: skip
    out = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if out.returncode:
        raise SystemExit(f"{variant} / {scenario} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


SCENARIOS = {
    "full": "1. full grid",
    "add": "2. one checkpoint added",
    "again": "3. unchanged, asked again",
}


def table(results: dict[tuple[str, str], dict]) -> str:
    lines = [
        "| scenario | cells drawn (dbchar / ref) | checkpoint loads (dbchar / ref) | wall s dbchar "
        "| wall s ref | wall dbchar/ref | CPU s dbchar | CPU s ref | CPU dbchar/ref | peak RSS MB dbchar "
        "| peak RSS MB ref | RSS dbchar/ref |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for scenario, label in SCENARIOS.items():
        a, b = results[("dbchar", scenario)], results[("reference", scenario)]
        lines.append(
            f"| {label} | {a['drawn']} / {b['drawn']} | {a['loads']} / {b['loads']} | {a['wall']:.1f} "
            f"| {b['wall']:.1f} | {a['wall'] / b['wall']:.2f}x | {a['cpu']:.1f} | {b['cpu']:.1f} "
            f"| {a['cpu'] / b['cpu']:.2f}x | {a['peak_rss_mb']:.0f} | {b['peak_rss_mb']:.0f} "
            f"| {a['peak_rss_mb'] / b['peak_rss_mb']:.2f}x |"
        )
    wall, cpu = ({v: sum(results[(v, s)][k] for s in SCENARIOS) for v in ("dbchar", "reference")}
                 for k in ("wall", "cpu"))  # fmt: skip
    lines.append(
        f"| all three | | | {wall['dbchar']:.1f} | {wall['reference']:.1f} "
        f"| {wall['dbchar'] / wall['reference']:.2f}x "
        f"| {cpu['dbchar']:.1f} | {cpu['reference']:.1f} | {cpu['dbchar'] / cpu['reference']:.2f}x | | | |"
    )
    return "\n".join(lines)


def full_size_construction(repeats: int) -> dict:
    """Seconds to build SD 1.5-sized modules (UNet, VAE, text encoder; 1.07 B parameters), both ways.

    What differs per column between the two ways, before the checkpoint's tensors are copied in
    (that copy is the same work for both): the reference builds new modules from the configs,
    which draws random initial weights; dbchar builds its modules once, without initialising them
    (``meta`` device, then empty storage). No checkpoint file is needed for this.
    """
    import gc

    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from lib_dbchar.pick.render import _build_modules
    from lib_dbchar.train.model import component_configs

    configs = component_configs("sd1", "epsilon")
    text = {k: v for k, v in configs["text_encoder"].items() if k != "architectures"}
    fresh = []
    for _ in range(repeats):
        start = time.perf_counter()
        modules = (
            UNet2DConditionModel.from_config(configs["unet"]),
            AutoencoderKL.from_config(configs["vae"]),
            CLIPTextModel(CLIPTextConfig(**text)),
        )
        fresh.append(time.perf_counter() - start)
        del modules
        gc.collect()
    start = time.perf_counter()
    modules = _build_modules(configs, "cpu")
    once = time.perf_counter() - start
    params = sum(p.numel() for m in modules for p in m.parameters())
    return {"fresh": fresh, "once": once, "params": params}


def same_cells(workspace: dict) -> tuple[int, int, float]:
    """(identical, compared, largest mean abs difference) of the full grid's cells, dbchar vs reference.

    Run after the children (numpy and Pillow would raise this process's RSS, which they inherit).
    """
    import numpy as np
    from PIL import Image

    ours_dir = Path(workspace["run_dir"]) / "pick" / "cells"
    same = compared = 0
    worst = 0.0
    for theirs in sorted((Path(workspace["scratch"]) / "full").glob("*/*.png")):
        mine = ours_dir / theirs.parent.name / theirs.name
        a = np.asarray(Image.open(mine), dtype=np.float32)
        b = np.asarray(Image.open(theirs), dtype=np.float32)
        difference = float(np.abs(a - b).mean())
        compared += 1
        same += difference == 0.0
        worst = max(worst, difference)
    return same, compared, worst


def full_size_line(threads: int) -> str:
    """Run :func:`full_size_construction` in a child and describe it."""
    command = [sys.executable, __file__, "--child", "full-size", "--threads", str(threads)]
    out = subprocess.run(command, capture_output=True, text=True, check=False,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    if out.returncode:
        raise SystemExit(f"full-size construction failed:\n{out.stderr[-3000:]}")
    full = json.loads(out.stdout.strip().splitlines()[-1])
    fresh = ", ".join(f"{t:.1f}" for t in full["fresh"])
    return (
        f"\nSD 1.5 size ({full['params'] / 1e9:.2f} B parameters), building the modules: reference, new "
        f"modules from the configs per column: {fresh} s; dbchar, once per grid, uninitialised: "
        f"{full['once']:.2f} s."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probes", type=int, default=2, help="probe prompts (rows = probes x seeds), <= 4")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--checkpoints", type=int, default=3, help="K: checkpoints before one is added")
    parser.add_argument("--steps", type=int, default=4, help="sampling steps per cell")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-full-size", action="store_true", help="skip the SD 1.5-size module build")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (about 1.2 GB)")
    parser.add_argument("--child", default=None)
    parser.add_argument("--scenario", default=None)
    parser.add_argument("--workspace", default=None)
    args = parser.parse_args()
    if args.child == "build":
        workspace = build_workspace(Path(args.workspace).parent, args.checkpoints)
        Path(args.workspace).write_text(json.dumps(workspace), encoding="utf-8")
        return
    if args.child == "full-size":
        import torch

        torch.set_num_threads(args.threads)
        print(json.dumps(full_size_construction(repeats=2)))
        return
    if args.child:
        child(args)
        return
    if not 1 <= args.probes <= len(PROBE_PROMPTS):
        parser.error(f"--probes must be 1..{len(PROBE_PROMPTS)}")
    root = Path(tempfile.mkdtemp(prefix="dbchar-bench-pick-"))
    started = time.perf_counter()
    workspace_file = root / "workspace.json"
    # Built in a child too: Linux hands a parent's peak RSS to the children it starts (ru_maxrss
    # survives fork and exec), so this process must stay small for the children's peaks to be theirs.
    build = [sys.executable, __file__, "--child", "build", "--workspace", str(workspace_file),
             "--checkpoints", str(args.checkpoints)]  # fmt: skip
    out = subprocess.run(build, capture_output=True, text=True, check=False,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    if out.returncode:
        raise SystemExit(f"building the bench model failed:\n{out.stderr[-3000:]}")
    workspace = json.loads(workspace_file.read_text(encoding="utf-8"))
    results: dict[tuple[str, str], dict] = {}
    loads = []
    for scenario in SCENARIOS:
        if scenario == "add":
            add_last_checkpoint(workspace)
        for variant in ("reference", "dbchar"):
            results[(variant, scenario)] = run_child(variant, scenario, workspace_file, args)
            loads.append(os.getloadavg()[0])
    rows = args.probes * args.seeds
    print(
        f"Grid of {args.probes} probes x {args.seeds} seeds = {rows} rows; source + {args.checkpoints} "
        f"checkpoints, then + 1; {args.steps} DDIM steps, CFG 7, {RESOLUTION} px; "
        f"{args.threads} torch thread(s); "
        f"load average {min(loads):.1f}-{max(loads):.1f}; whole run {time.perf_counter() - started:.0f} s.\n"
    )
    print(table(results))
    imports = {v: results[(v, "again")]["import_rss_mb"] for v in ("dbchar", "reference")}
    print(
        f"\nRSS after the shared imports alone (in every peak): dbchar {imports['dbchar']:.0f} MB, "
        f"reference {imports['reference']:.0f} MB."
    )
    if not args.skip_full_size:
        print(full_size_line(args.threads))
    same, compared, worst = same_cells(workspace)
    print(
        f"Same pictures: {same} of {compared} cells of the full grid are pixel-identical between the two "
        f"(largest mean abs difference {worst:.3f} of 255)."
    )
    if args.keep:
        print(f"Work folder: {root}")
    else:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
