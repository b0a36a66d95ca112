"""Generating images with the model being trained: class images before training, previews during it.

A thin layer over diffusers' ``StableDiffusionPipeline`` built from components already in memory (no
second copy of the weights). Prompts are encoded by :mod:`~lib_dbchar.train.text` (75-token chunks,
clip skip, the webui's emphasis syntax), and every image has its own seeded CPU generator, so an
image depends on its seed only -- not on the batch size, the device or what was generated before.
The VAE decodes in float32 outside autocast: fp16 VAEs are a known source of black/NaN images.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lib_dbchar.paths import atomic_writer
from lib_dbchar.train import text

SAMPLE_MAX_CHUNKS = 8  # prompts up to 600 tokens, like the webui's practical limit


@dataclass(frozen=True)
class SampleRequest:
    """What to draw: one image per seed.

    Attributes:
        prompts: one prompt per image.
        negative: one negative prompt per image.
        seeds: one seed per image.
        steps: sampling steps.
        guidance_scale: CFG scale.
        size: width = height in pixels.
    """

    prompts: tuple[str, ...]
    negative: tuple[str, ...]
    seeds: tuple[int, ...]
    steps: int
    guidance_scale: float
    size: int


def scheduler_for(name: str, config: dict[str, Any]) -> Any:
    """A diffusers scheduler by our short name (``ddim``, ``euler_a``, ``dpmpp_2m``) from a config dict."""
    import diffusers

    classes = {
        "ddim": diffusers.DDIMScheduler,
        "euler_a": diffusers.EulerAncestralDiscreteScheduler,
        "dpmpp_2m": diffusers.DPMSolverMultistepScheduler,
    }
    if name not in classes:
        raise ValueError(f"TrainConfig.scheduler: {name!r} is not one of {', '.join(classes)}")
    return classes[name].from_config(config)


def png_parameters(
    prompt: str, negative: str, *, steps: int, sampler: str, cfg: float, seed: int, size: int, extra: str = ""
) -> str:
    """The webui's ``parameters`` PNG text, so its PNG Info tab shows how an image was made."""
    settings = f"Steps: {steps}, Sampler: {sampler}, CFG scale: {cfg}, Seed: {seed}, Size: {size}x{size}"
    return f"{prompt}\nNegative prompt: {negative}\n{settings}" + (f", {extra}" if extra else "")


def save_png(path: Path, image: Any, parameters: str) -> Path:
    """Write ``image`` as a PNG with its ``parameters`` text, atomically; returns ``path``."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("parameters", parameters)
    with atomic_writer(Path(path), "wb") as handle:
        image.save(handle, format="PNG", pnginfo=info)
    return Path(path)


class Sampler:
    """Draws images with given modules.

    Args:
        unet, vae, text_encoder, tokenizer: the model's modules (on ``device``).
        scheduler_config: the model's scheduler config (prediction type included).
        scheduler: our scheduler name.
        device: where the modules are.
        autocast_dtype: run the UNet and text encoder under autocast in this dtype (``None``: no autocast).
        clip_skip: as in training.
    """

    def __init__(
        self,
        *,
        unet: Any,
        vae: Any,
        text_encoder: Any,
        tokenizer: Any,
        scheduler_config: dict[str, Any],
        scheduler: str = "ddim",
        device: str = "cpu",
        autocast_dtype: Any = None,
        clip_skip: int = 1,
    ) -> None:
        from diffusers import StableDiffusionPipeline

        self.device = device
        self.autocast_dtype = autocast_dtype
        self.clip_skip = clip_skip
        self.tokenizer = tokenizer
        self.pipe = StableDiffusionPipeline(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=scheduler_for(scheduler, scheduler_config),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        self.pipe.set_progress_bar_config(disable=True)

    def _autocast(self) -> contextlib.AbstractContextManager:
        import torch

        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=str(self.device).split(":")[0], dtype=self.autocast_dtype)

    def _embeddings(self, prompts: Sequence[str], negative: Sequence[str]) -> tuple[Any, Any]:
        """Prompt and negative embeddings padded to the same number of chunks."""
        pipe = self.pipe
        positive = text.tokenize(self.tokenizer, prompts, max_chunks=SAMPLE_MAX_CHUNKS, emphasis=True)
        negative_t = text.tokenize(
            self.tokenizer, negative, max_chunks=SAMPLE_MAX_CHUNKS, emphasis=True, min_chunks=positive.chunks
        )
        if negative_t.chunks > positive.chunks:
            positive = text.tokenize(
                self.tokenizer,
                prompts,
                max_chunks=SAMPLE_MAX_CHUNKS,
                emphasis=True,
                min_chunks=negative_t.chunks,
            )
        encode = text.encode
        return (
            encode(pipe.text_encoder, positive, clip_skip=self.clip_skip, device=self.device),
            encode(pipe.text_encoder, negative_t, clip_skip=self.clip_skip, device=self.device),
        )

    def __call__(self, request: SampleRequest) -> list[Any]:
        """Draw the images of ``request``.

        Returns:
            PIL images, one per seed, in order.
        """
        import torch

        pipe = self.pipe
        was_training = pipe.unet.training, pipe.text_encoder.training
        pipe.unet.eval()
        pipe.text_encoder.eval()
        try:
            with torch.no_grad(), self._autocast():
                cond, uncond = self._embeddings(request.prompts, request.negative)
                generators = [torch.Generator(device="cpu").manual_seed(int(s)) for s in request.seeds]
                latents = pipe(
                    prompt_embeds=cond,
                    negative_prompt_embeds=uncond,
                    num_inference_steps=request.steps,
                    guidance_scale=request.guidance_scale,
                    height=request.size,
                    width=request.size,
                    generator=generators,
                    output_type="latent",
                ).images
            with torch.no_grad():
                return self._decode(latents)
        finally:
            pipe.unet.train(was_training[0])
            pipe.text_encoder.train(was_training[1])

    def _decode(self, latents: Any) -> list[Any]:
        import numpy as np
        import torch
        from PIL import Image

        vae = self.pipe.vae
        scaled = latents.to(device=vae.device, dtype=vae.dtype) / vae.config.scaling_factor
        pixels = vae.decode(scaled).sample.float()
        pixels = ((pixels.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().permute(0, 2, 3, 1).numpy()
        return [Image.fromarray(np.ascontiguousarray(p)) for p in pixels]
