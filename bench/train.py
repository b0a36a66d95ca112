"""Benchmark: dbchar's training loop against a straightforward diffusers-style Dreambooth loop, in one run.

    python bench/train.py                      # 12 steps each, 2 rounds, 1 thread, + memory accounting
    python bench/train.py --steps 6 --rounds 1 # quicker

Part 1 -- the same run both ways: a 35 M-parameter UNet with the SD1 topology (widths 64-256), a small
VAE and a 4-layer CLIP text encoder, 4 pictures + 4 class images at 128 px, prior preservation, batch 1,
AdamW, fp32 on the CPU, text encoder frozen, gradient clipping 1.0. Each variant runs in its own child
process (its peak RSS is read from VmHWM, its own) from the same diffusers folder, rounds alternating:

* **reference**: the shape of diffusers' ``examples/dreambooth/train_dreambooth.py`` written plainly:
  a ``Dataset`` returning instance + class examples with padded token ids, a ``DataLoader``, the loop
  (VAE encode, noise, timesteps, ``add_noise``, text encoder, UNet, ``chunk(2)`` MSE, backward, clip,
  step), ``unet.save_pretrained`` at the end.
* **dbchar**: ``lib_dbchar.train.loop.train`` with ``max_steps``, no previews; it also writes the loss
  log, TensorBoard scalars, the resume state and an fp16 single-file checkpoint at the end.

The table gives the median wall and CPU time per step (steps 2..N; CPU time is the steadier number on
a shared machine), their ratio to the reference, and the peak RSS of each process.

Part 2 -- memory accounting for full-size SD1.5 at 512 px with prior preservation (batch 1 + 1) on a
GPU, per shipped preset: weights, gradients, optimizer states (from the real parameter counts of the
shipped configs) and activations (measured: the tensors autograd saves in a forward pass of the full
UNet on PyTorch's meta device, with attention counted as a memory-efficient kernel saves it, and the
gradient-checkpointing variant modelled block by block). CUDA context and allocator slack are not
included (add ~0.5-1 GB).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESOLUTION = 128
PICTURES = 4
SEED = 7
UNET = {
    "sample_size": RESOLUTION // 8,
    "block_out_channels": (64, 128, 256, 256),
    "layers_per_block": 2,
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    "cross_attention_dim": 256,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
}
VAE = {
    "sample_size": RESOLUTION,
    "block_out_channels": (32, 64, 128, 128),
    "layers_per_block": 2,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "latent_channels": 4,
    "norm_num_groups": 32,
}
TEXT = {"hidden_size": 256, "intermediate_size": 1024, "num_attention_heads": 4, "num_hidden_layers": 4,
        "max_position_embeddings": 77, "projection_dim": 256, "hidden_act": "quick_gelu"}  # fmt: skip
GB = 1024**3


# --- the shared model and data ---------------------------------------------------------------------


def build_workspace(root: Path) -> dict[str, str]:
    """The bench model (diffusers folder + single file) and a project with pictures and class images."""
    import numpy as np
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from PIL import Image
    from transformers import CLIPTextConfig, CLIPTextModel

    from lib_dbchar.checkpoint import diffusers_to_ldm, save_single_file
    from lib_dbchar.demo.tiny import _SCHEDULER, _vocab
    from lib_dbchar.train.tokenizer import write_vocab

    torch.manual_seed(SEED)
    vocab = _vocab()
    start, end = vocab["<|startoftext|>"], vocab["<|endoftext|>"]
    text_config = CLIPTextConfig(
        vocab_size=len(vocab), bos_token_id=start, eos_token_id=end, pad_token_id=end, **TEXT
    )
    unet, vae, text_encoder = UNet2DConditionModel(**UNET), AutoencoderKL(**VAE), CLIPTextModel(text_config)
    model_dir = root / "model"
    unet.save_pretrained(model_dir / "unet")
    vae.save_pretrained(model_dir / "vae")
    text_encoder.save_pretrained(model_dir / "text_encoder")
    DDIMScheduler(**_SCHEDULER).save_pretrained(model_dir / "scheduler")
    write_vocab(model_dir / "tokenizer", vocab, [], model_kind="sd1")
    single = save_single_file(
        diffusers_to_ldm(unet.state_dict(), vae.state_dict(), text_encoder.state_dict(), kind="sd1"),
        root / "bench-sd1.safetensors",
    )
    project = root / "project"
    rng = np.random.default_rng(SEED)
    for folder, prefix, count in (
        (project / "dataset", "img", PICTURES),
        (project / "classes" / "classifiers_0", "class_", PICTURES),
    ):
        folder.mkdir(parents=True)
        for i in range(count):
            # Smooth random pictures: noise at 1/8 size, enlarged.
            small = rng.integers(0, 255, (RESOLUTION // 8, RESOLUTION // 8, 3), dtype=np.uint8)
            image = Image.fromarray(small).resize((RESOLUTION, RESOLUTION), Image.BICUBIC)
            name = f"{prefix}{i:05d}" if prefix == "class_" else f"{prefix}{i}"
            image.save(folder / f"{name}.png")
            (folder / f"{name}.txt").write_text(f"1girl, red hair, pose {i}", encoding="utf-8")
    # dbchar converts the single file once into the run folder; do it here so both variants start
    # from the same diffusers folder and neither pays for the conversion in its numbers.
    from lib_dbchar.train.model import prepare_working_model

    working = prepare_working_model(single, project / "runs" / "bench" / "working", config_dir=model_dir)
    return {
        "model_dir": str(working.folder),
        "single": str(single),
        "project": str(project),
        "config_dir": str(model_dir),
    }


# --- the reference loop --------------------------------------------------------------------------


def reference(workspace: dict[str, str], steps: int) -> list[tuple[float, float]]:
    """A plain diffusers-style Dreambooth loop; returns (wall, cpu) seconds per step."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from PIL import Image
    from transformers import CLIPTextModel, CLIPTokenizer

    folder = Path(workspace["model_dir"])
    project = Path(workspace["project"])
    tokenizer = CLIPTokenizer.from_pretrained(str(folder / "tokenizer"))
    unet = UNet2DConditionModel.from_pretrained(folder / "unet")
    vae = AutoencoderKL.from_pretrained(folder / "vae")
    text_encoder = CLIPTextModel.from_pretrained(folder / "text_encoder")
    noise_scheduler = DDPMScheduler.from_pretrained(folder / "scheduler")
    vae.requires_grad_(False)
    text_encoder.requires_grad_(False)
    unet.train()

    class DreamBoothDataset(torch.utils.data.Dataset):
        def __init__(self) -> None:
            self.instances = sorted((project / "dataset").glob("*.png"))
            self.classes = sorted((project / "classes" / "classifiers_0").glob("*.png"))

        def __len__(self) -> int:
            return len(self.instances)

        def _example(self, path: Path, prompt: str) -> tuple:
            pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 127.5 - 1.0
            ids = tokenizer(
                prompt, padding="max_length", truncation=True, max_length=77, return_tensors="pt"
            ).input_ids
            return torch.from_numpy(pixels.transpose(2, 0, 1).copy()), ids[0]

        def __getitem__(self, index: int) -> dict:
            instance = self.instances[index % len(self.instances)]
            klass = self.classes[index % len(self.classes)]
            pixels, ids = self._example(instance, "sks, " + instance.with_suffix(".txt").read_text())
            class_pixels, class_ids = self._example(klass, klass.with_suffix(".txt").read_text())
            return {"pixels": pixels, "ids": ids, "class_pixels": class_pixels, "class_ids": class_ids}

    def collate(examples: list[dict]) -> dict:
        pixels = [e["pixels"] for e in examples] + [e["class_pixels"] for e in examples]
        ids = [e["ids"] for e in examples] + [e["class_ids"] for e in examples]
        return {"pixels": torch.stack(pixels), "ids": torch.stack(ids)}

    loader = torch.utils.data.DataLoader(DreamBoothDataset(), batch_size=1, shuffle=True, collate_fn=collate)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-6, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    torch.manual_seed(SEED)
    # Like dbchar's numbers, a step is the time between the ends of two steps: loading the batch
    # (decode, tokenize) is part of it.
    marks, done = [(time.perf_counter(), time.process_time())], 0
    while done < steps:
        for batch in loader:
            latents = vae.encode(batch["pixels"]).latent_dist.sample() * vae.config.scaling_factor
            noise = torch.randn_like(latents)
            timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],))
            noisy = noise_scheduler.add_noise(latents, noise, timesteps)
            with torch.no_grad():
                hidden = text_encoder(batch["ids"])[0]
            pred = unet(noisy, timesteps, hidden).sample
            pred, prior_pred = pred.chunk(2)
            target, prior_target = noise.chunk(2)
            loss = F.mse_loss(pred.float(), target.float()) + F.mse_loss(
                prior_pred.float(), prior_target.float()
            )
            loss.backward()
            torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            float(loss)
            marks.append((time.perf_counter(), time.process_time()))
            done += 1
            if done >= steps:
                break
    unet.save_pretrained(Path(tempfile.mkdtemp()) / "unet")
    return [(b[0] - a[0], b[1] - a[1]) for a, b in itertools.pairwise(marks)]


# --- dbchar ------------------------------------------------------------------------------------


def ours(workspace: dict[str, str], steps: int) -> list[tuple[float, float]]:
    """``lib_dbchar.train.loop.train`` on the same run; per-step times from its step events."""
    from lib_dbchar.concept import Concept
    from lib_dbchar.train.config import TrainConfig
    from lib_dbchar.train.loop import train
    from lib_dbchar.train.run import RunSpec

    config = TrainConfig(
        source_checkpoint=workspace["single"], epochs=1_000, max_steps=steps, save_every_epochs=0,
        preview_every_epochs=0, resolution=RESOLUTION, mixed_precision="no", use_8bit_adam=False,
        attention="sdpa", learning_rate=1e-6, seed=SEED,
    )  # fmt: skip
    concept = Concept(instance_token="sks", num_class_images=PICTURES)
    spec = RunSpec(Path(workspace["project"]), "bench", config, (concept,), Path(tempfile.mkdtemp()),
                   model_config_dir=Path(workspace["config_dir"]))  # fmt: skip
    marks: list[tuple[float, float]] = []

    def on_event(event) -> None:
        if event.kind == "step":
            marks.append((time.perf_counter(), time.process_time()))

    state = Path(workspace["project"]) / "runs" / "bench" / "state" / "state.pt"
    state.unlink(missing_ok=True)  # every round starts fresh
    start = (time.perf_counter(), time.process_time())
    train(spec, on_event=on_event)
    points = [start, *marks]
    return [(b[0] - a[0], b[1] - a[1]) for a, b in itertools.pairwise(points)]


def child(variant: str, workspace: dict[str, str], steps: int, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    times = (reference if variant == "reference" else ours)(workspace, steps)
    print(json.dumps({"variant": variant, "times": times, "peak_rss_mb": own_peak_mb()}))


def own_peak_mb() -> float:
    """This process's peak RSS in MB: VmHWM, which starts afresh at exec.

    Not ru_maxrss: Linux carries a parent's peak into the children it starts, and the parent here
    has built the bench model, so every child would report at least the parent's peak.
    """
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text(encoding="ascii").splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_child(variant: str, workspace_file: Path, steps: int, threads: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, __file__, "--child", variant, "--workspace", str(workspace_file),
         "--steps", str(steps), "--threads", str(threads)],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    if out.returncode:
        raise SystemExit(f"{variant} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def speed_table(rows: list[dict]) -> str:
    by_variant: dict[str, list[dict]] = {}
    for row in rows:
        by_variant.setdefault(row["variant"], []).append(row)
    stats = {}
    for variant, runs in by_variant.items():
        steps = [t for run in runs for t in run["times"][1:]]  # step 1 warms up
        stats[variant] = (
            statistics.median(w for w, _ in steps),
            statistics.median(c for _, c in steps),
            max(run["peak_rss_mb"] for run in runs),
        )
    ref = stats["reference"]
    lines = [
        "| variant | s/step (wall, median) | vs reference | CPU s/step (median) | vs reference "
        "| peak RSS MB | vs reference |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for variant in ("reference", "dbchar"):
        wall, cpu, rss = stats[variant]
        lines.append(
            f"| {variant} | {wall:.3f} | {wall / ref[0]:.2f}x | {cpu:.3f} | {cpu / ref[1]:.2f}x "
            f"| {rss:.0f} | {rss / ref[2]:.2f}x |"
        )
    return "\n".join(lines)


# --- memory accounting ---------------------------------------------------------------------------


class _EfficientAttention:
    """An attention processor for the meta device that saves what a memory-efficient kernel saves.

    Flash / memory-efficient attention (xformers, PyTorch SDPA on CUDA) keep q, k, v, the output and
    one float per query row for backward -- never the ``L x L`` score matrix the plain math path on the
    CPU would store.
    """

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **_):

        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        q, k, v = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)
        batch, length, width = q.shape
        heads = attn.heads

        def split(t):
            return t.view(batch, -1, heads, width // heads).transpose(1, 2)

        out = _Kernel.apply(split(q), split(k), split(v))
        out = out.transpose(1, 2).reshape(batch, length, width)
        return attn.to_out[1](attn.to_out[0](out)) / attn.rescale_output_factor


def _kernel_class():
    import torch

    class Kernel(torch.autograd.Function):
        @staticmethod
        def forward(ctx, q, k, v):
            out = torch.empty_like(q)
            lse = torch.empty(q.shape[:-1], dtype=torch.float32, device=q.device)
            ctx.save_for_backward(q, k, v, out, lse)
            return out

        @staticmethod
        def backward(ctx, grad):
            q, k, v, _, _ = ctx.saved_tensors
            return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)

    return Kernel


_Kernel = None


def unet_activation_bytes(
    config: dict, *, batch: int, latent: int, tokens: int, width: int
) -> tuple[int, int]:
    """Bytes autograd keeps for backward in one fp16 UNet forward: ``(no checkpointing, checkpointing)``.

    Checkpointing (diffusers wraps every ResNet and transformer block) keeps each block's input plus
    everything saved outside the blocks, and while a block is recomputed in backward, that block's own
    saved tensors; the largest block sets that peak.
    """
    global _Kernel  # noqa: PLW0603 - built lazily so importing this script needs no torch
    import torch
    from diffusers import UNet2DConditionModel
    from diffusers.models.resnet import ResnetBlock2D
    from diffusers.models.transformers.transformer_2d import Transformer2DModel

    _Kernel = _kernel_class()
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config).to(torch.float16)
    unet.set_attn_processor(_EfficientAttention())
    params = {id(p) for p in unet.parameters()}
    stack: list[str] = []
    saved: dict[str, int] = {}
    inputs: dict[str, int] = {}
    seen: set[int] = set()
    keep: list = []

    def nbytes(t) -> int:
        return t.numel() * t.element_size()

    def pack(t):
        base = t._base if t._base is not None else t
        if id(base) not in params and id(base) not in seen:
            seen.add(id(base))
            keep.append(base)
            unit = stack[-1] if stack else "outside"
            saved[unit] = saved.get(unit, 0) + nbytes(base)
        return t

    def enter(name):
        def hook(module, args):
            stack.append(name)
            inputs[name] = nbytes(args[0])

        return hook

    def leave(module, args, output):
        stack.pop()

    for name, module in unet.named_modules():
        if isinstance(module, ResnetBlock2D | Transformer2DModel):
            module.register_forward_pre_hook(enter(name))
            module.register_forward_hook(leave)
    sample = torch.empty((batch, 4, latent, latent), dtype=torch.float16, device="meta", requires_grad=True)
    context = torch.empty((batch, tokens, width), dtype=torch.float16, device="meta")
    timesteps = torch.zeros((batch,), dtype=torch.int64, device="meta")
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        unet(sample, timesteps, context)
    total = sum(saved.values())
    units = {k: v for k, v in saved.items() if k != "outside"}
    checkpointed = saved.get("outside", 0) + sum(inputs.values()) + max(units.values())
    return total, checkpointed


def memory_accounting() -> str:
    """The per-preset memory table for SD1.5 at 512 px with prior preservation."""
    import torch

    from lib_dbchar.train.config import TrainConfig, apply_preset, builtin_presets
    from lib_dbchar.train.model import _expected_shapes, component_configs

    configs = component_configs("sd1", "epsilon")
    shapes = {n: _expected_shapes(n, configs[n]) for n in ("unet", "vae", "text_encoder")}
    counts = {n: sum(torch.Size(s).numel() for s in shapes[n].values()) for n in shapes}
    counts["largest"] = max(
        torch.Size(s).numel() for n in ("unet", "text_encoder") for s in shapes[n].values()
    )
    plain, checkpointed = unet_activation_bytes(configs["unet"], batch=2, latent=64, tokens=77, width=768)
    lines = [
        f"Parameters: UNet {counts['unet'] / 1e6:.1f} M, text encoder {counts['text_encoder'] / 1e6:.1f} M, "
        f"VAE {counts['vae'] / 1e6:.1f} M. Measured UNet activations (fp16, batch 2 = picture + class image, "
        f"64x64 latents, memory-efficient attention): {plain / GB:.2f} GB, with gradient checkpointing "
        f"{checkpointed / GB:.2f} GB.",
        "",
        "| preset | weights | gradients | optimizer states | activations | autocast fp16 weight copies "
        "| total | <= 8 GB |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | :---: |",
    ]
    for preset in builtin_presets():
        c = apply_preset(TrainConfig(), preset)
        lines.append(_memory_row(preset.name, c, counts, plain, checkpointed))
    return "\n".join(lines)


def _memory_row(name: str, c, counts: dict[str, int], plain: int, checkpointed: int) -> str:
    unet, te, vae = counts["unet"], counts["text_encoder"], counts["vae"]
    half = c.mixed_precision in ("fp16", "bf16")
    trained = unet + (te if c.train_text_encoder else 0)
    # fp32 master weights for what trains; a frozen text encoder in the autocast dtype; the VAE in
    # fp32 on the GPU unless latents are cached (it then leaves the GPU).
    weights = (
        4 * trained
        + (0 if c.train_text_encoder else (2 if half else 4) * te)
        + (0 if c.cache_latents else 4 * vae)
    )
    # Stepping in backward frees each gradient as soon as it is used: at most about one tensor's
    # gradient exists at a time (the largest, a 1280x2560x3x3 conv, bounds it).
    grads = 4 * counts["largest"] if c.optimizer_in_backward else 4 * trained
    # AdamW keeps two fp32 moments; 8-bit AdamW two uint8 moments plus one fp32 scale per 256 values.
    optimizer = (2 + 8 / 256) * trained if c.use_8bit_adam else 8 * trained
    activations = checkpointed if c.gradient_checkpointing else plain
    activations = activations * (1 if half else 2)
    # Autocast keeps fp16 copies of the weights that forward used until backward; with checkpointing
    # they are recast per block during recomputation instead.
    copies = 0 if (not half or c.gradient_checkpointing) else 2 * trained
    total = weights + grads + optimizer + activations + copies
    cells = [weights, grads, optimizer, activations, copies, total]
    return (f"| {name} | " + " | ".join(f"{v / GB:.2f} GB" for v in cells)
            + f" | {'yes' if total <= 8 * GB else 'no'} |")  # fmt: skip


# --- main --------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--child", default=None)
    parser.add_argument("--workspace", default=None)
    parser.add_argument("--skip-memory", action="store_true")
    args = parser.parse_args()
    if args.child:
        child(args.child, json.loads(Path(args.workspace).read_text()), args.steps, args.threads)
        return
    root = Path(tempfile.mkdtemp(prefix="dbchar-bench-train-"))
    workspace_file = root / "workspace.json"
    workspace_file.write_text(json.dumps(build_workspace(root)))
    rows = []
    for _ in range(args.rounds):
        for variant in ("reference", "dbchar"):
            rows.append(run_child(variant, workspace_file, args.steps, args.threads))
    load = os.getloadavg()[0]
    print(
        f"Same run, {args.steps} steps x {args.rounds} rounds, {args.threads} thread(s), "
        f"load average {load:.1f}:\n"
    )
    print(speed_table(rows))
    if not args.skip_memory:
        print("\nMemory accounting, SD1.5 at 512 px with prior preservation, on a GPU:\n")
        print(memory_accounting())


if __name__ == "__main__":
    main()
