"""Class (regularisation) images: made once with the source model, reused by every run, topped up.

Each picture's class prompt (its caption without the token, see
:func:`~lib_dbchar.concept.class_prompt`) gets ``count / pictures`` images, so the class images look
like the dataset without the character. They live in ``classes/classifiers_<n>/`` as
``class_00000.png`` + ``class_00000.txt`` (the prompt); the ``.txt`` is written last and marks a
finished image, so a stop or a crash never leaves a half-written image in use.

The folder is never regenerated: only the shortfall is drawn, per picture. Image ``i`` is drawn
with seed ``seed + i`` and new images take numbers after every number ever used (rejected images,
moved to ``rejected/``, keep theirs), so a stopped generation resumed later produces exactly the
images an uninterrupted one would have, and a rejected image is replaced by a new one.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lib_dbchar.concept import Concept, class_image_count, class_prompt, validate_concept
from lib_dbchar.jobs import JobContext
from lib_dbchar.paths import atomic_write
from lib_dbchar.train.config import TrainConfig, validate_config, validate_for_device
from lib_dbchar.train.data import CLASS_IMAGE_PREFIX, ConceptData, load_concept_data, read_caption

REJECTED_DIR = "rejected"
_NUMBERED = re.compile(rf"^{CLASS_IMAGE_PREFIX}(\d+)\.png$")


@dataclass(frozen=True)
class ClassImageJob:
    """One class image to draw.

    Attributes:
        number: its file number (``class_<number>.png``).
        picture: index of the picture whose class prompt it uses.
        prompt: the class prompt.
        seed: the seed it is drawn with.
    """

    number: int
    picture: int
    prompt: str
    seed: int


@dataclass
class ClassImagesResult:
    """What generation did for one concept (JSON-serialisable through :meth:`to_dict`)."""

    concept: int
    folder: str
    wanted: int
    existing: int
    generated: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _numbers(folder: Path, *, complete_only: bool) -> dict[int, Path]:
    """``number -> png`` for ``class_<n>.png`` in ``folder`` (with its ``.txt`` when ``complete_only``)."""
    out = {}
    if folder.is_dir():
        for path in folder.iterdir():
            match = _NUMBERED.match(path.name)
            if match and (not complete_only or path.with_suffix(".txt").is_file()):
                out[int(match.group(1))] = path
    return out


def _targets(count: int, pictures: int) -> list[int]:
    """Spread ``count`` images over ``pictures`` as evenly as possible, earlier pictures first."""
    base, extra = divmod(count, pictures)
    return [base + (1 if k < extra else 0) for k in range(pictures)]


def plan_class_images(prompts: Sequence[str], folder: Path, *, count: int, seed: int) -> list[ClassImageJob]:
    """The class images still to draw for one concept.

    Args:
        prompts: the class prompt of each picture, in dataset order.
        folder: the concept's class image folder (may not exist yet).
        count: how many class images the concept wants in total.
        seed: the run's seed; image ``n`` is drawn with ``seed + n``.

    Returns:
        Jobs in drawing order: round by round over the pictures, so a partial run still covers
        every picture.
    """
    folder = Path(folder)
    if not prompts or count <= 0:
        return []
    existing = _numbers(folder, complete_only=True)
    targets = _targets(count, len(prompts))
    have = [0] * len(prompts)
    for number in sorted(existing):
        prompt = read_caption(existing[number])
        for k, wanted in enumerate(prompts):
            if wanted == prompt and have[k] < targets[k]:
                have[k] += 1
                break
    missing = max(0, count - len(existing))
    used = set(existing) | set(_numbers(folder / REJECTED_DIR, complete_only=False))
    next_number = max(used) + 1 if used else 0
    jobs: list[ClassImageJob] = []
    for round_ in range(max(targets)):
        for k, prompt in enumerate(prompts):
            if len(jobs) < missing and have[k] <= round_ < targets[k]:
                number = next_number + len(jobs)
                jobs.append(ClassImageJob(number, k, prompt, seed + number))
    return jobs


def auto_batch_size(device: str) -> int:
    """Images per generation batch: by free GPU memory (about 2 GB each at 512 px), 1 on CPU."""
    if not str(device).startswith("cuda"):
        return 1
    import torch

    free, _ = torch.cuda.mem_get_info(torch.device(device))
    return max(1, min(8, int(free // (2 * 1024**3))))


def save_class_image(
    folder: Path, job: ClassImageJob, image: Any, *, negative: str, config: TrainConfig
) -> Path:
    """Write ``class_<n>.png`` (with how it was made in its PNG info), then its ``.txt`` (the prompt)."""
    from lib_dbchar.train.sampling import png_parameters, save_png

    parameters = png_parameters(
        job.prompt,
        negative,
        steps=config.class_steps,
        sampler=config.scheduler,
        cfg=config.class_guidance_scale,
        seed=job.seed,
        size=config.resolution,
    )
    path = save_png(Path(folder) / f"{CLASS_IMAGE_PREFIX}{job.number:05d}.png", image, parameters)
    atomic_write(path.with_suffix(".txt"), job.prompt)
    return path


def missing_class_images(concept: ConceptData, seed: int) -> list[ClassImageJob]:
    """The class images one concept still lacks: its class prompt per picture, its count in all.

    Args:
        concept: a concept with its pictures (from :func:`~lib_dbchar.train.data.load_concept_data`).
        seed: the run's seed (each image's seed derives from it).

    Returns:
        :func:`plan_class_images` for the concept (empty when its folder is full).
    """
    prompts = [class_prompt(concept.concept, image.caption) for image in concept.images]
    count = class_image_count(concept.concept, len(concept.images))
    return plan_class_images(prompts, concept.class_dir, count=count, seed=seed)


def generate_class_images(
    data: Sequence[ConceptData],
    sampler: Any,
    config: TrainConfig,
    *,
    device: str = "cpu",
    ctx: JobContext | None = None,
) -> list[ClassImagesResult]:
    """Draw the missing class images of every concept.

    Args:
        data: the run's concepts with their pictures (from :func:`~lib_dbchar.train.data.load_concept_data`).
        sampler: a :class:`~lib_dbchar.train.sampling.Sampler` on the source model.
        config: seed, steps, CFG scale, size, batch size, sampler name.
        device: for the automatic batch size.
        ctx: progress (one unit per image) and stop (checked between batches).

    Returns:
        One :class:`ClassImagesResult` per concept.

    Raises:
        JobStopped: the user stopped; every finished image is kept and the next call continues.
    """
    from lib_dbchar.train.sampling import SampleRequest

    ctx = ctx or JobContext()
    plans = [
        (c, class_image_count(c.concept, len(c.images)), missing_class_images(c, config.seed)) for c in data
    ]
    total = sum(len(jobs) for _, _, jobs in plans)
    batch = config.class_batch_size or auto_batch_size(device)
    done = 0
    results = []
    for concept, count, jobs in plans:
        result = ClassImagesResult(concept.index, str(concept.class_dir), count, count - len(jobs))
        negative = concept.concept.negative_prompt
        for start in range(0, len(jobs), batch):
            ctx.check_stop("class image generation")
            chunk = jobs[start : start + batch]
            request = SampleRequest(
                prompts=tuple(j.prompt for j in chunk),
                negative=(negative,) * len(chunk),
                seeds=tuple(j.seed for j in chunk),
                steps=config.class_steps,
                guidance_scale=config.class_guidance_scale,
                size=config.resolution,
            )
            for job, image in zip(chunk, sampler(request), strict=True):
                path = save_class_image(concept.class_dir, job, image, negative=negative, config=config)
                result.generated.append(str(path))
                done += 1
                ctx.report(done, total, f"Class image {done}/{total}: {path.name}", image)
        results.append(result)
    return results


def reject_class_images(folder: Path, names: Sequence[str]) -> list[Path]:
    """Move rejected class images (and their prompts) to ``rejected/``; the next top-up replaces them.

    Args:
        folder: the class image folder.
        names: file names (``class_00012.png``) or stems.

    Returns:
        The new paths of the moved images.

    Raises:
        FileNotFoundError: a name is not a class image in ``folder``.
    """
    folder = Path(folder)
    moved = []
    for name in names:
        png = folder / (Path(name).stem + ".png")
        if not _NUMBERED.match(png.name) or not png.is_file():
            raise FileNotFoundError(f"{png} is not a class image of {folder}.")
        target = folder / REJECTED_DIR
        target.mkdir(exist_ok=True)
        for path in (png, png.with_suffix(".txt")):
            if path.exists():
                path.replace(target / path.name)
        moved.append(target / png.name)
    return moved


def class_images_summary(results: Sequence[ClassImagesResult]) -> str:
    """One line per concept for logs and the CLI."""
    return "\n".join(
        f"concept {r.concept + 1}: {r.existing + len(r.generated)}/{r.wanted} class images in {r.folder}"
        f" ({len(r.generated)} new)"
        for r in results
    )


def results_json(results: Sequence[ClassImagesResult]) -> str:
    """The results as JSON text."""
    return json.dumps([r.to_dict() for r in results], indent=2)


# --- what the Train tab shows and runs -------------------------------------------------------


def list_class_images(folder: Path) -> list[Path]:
    """The finished class images of a folder (``class_<n>.png`` with its ``.txt``), by number."""
    found = _numbers(Path(folder), complete_only=True)
    return [found[n] for n in sorted(found)]


@dataclass
class ClassFolderStatus:
    """One concept's class image folder as it is on disk (JSON-serialisable through :meth:`to_dict`).

    Attributes:
        concept: the concept's index in the project.
        token: its instance token (for labels).
        folder: the class image folder.
        wanted: how many class images the concept wants.
        images: the finished class images, by number.
        rejected: how many images were moved to ``rejected/``.
    """

    concept: int
    token: str
    folder: str
    wanted: int
    images: list[str] = field(default_factory=list)
    rejected: int = 0

    @property
    def missing(self) -> int:
        """How many images a top-up would draw."""
        return max(0, self.wanted - len(self.images))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "missing": self.missing}


def class_folder_status(concepts: Sequence[Concept], project_root: Path) -> list[ClassFolderStatus]:
    """The class image folders of a project's concepts: wanted, finished and rejected counts.

    Args:
        concepts: the project's concepts, in order (the index picks the default folder).
        project_root: the project folder.

    Returns:
        One :class:`ClassFolderStatus` per concept.
    """
    data, _ = load_concept_data(concepts, Path(project_root))
    out = []
    for item in data:
        rejected = _numbers(item.class_dir / REJECTED_DIR, complete_only=False)
        out.append(
            ClassFolderStatus(
                item.index,
                item.concept.instance_token,
                str(item.class_dir),
                class_image_count(item.concept, len(item.images)),
                [str(p) for p in list_class_images(item.class_dir)],
                len(rejected),
            )
        )
    return out


def _pending(data: Sequence[ConceptData], config: TrainConfig) -> int:
    """How many class images are still to draw over all concepts."""
    return sum(len(missing_class_images(c, config.seed)) for c in data)


def _source_sampler(spec: Any, config: TrainConfig) -> Any:
    """A sampler on the run's source model (converted once into the run's working folder)."""
    import torch

    from lib_dbchar.train.config import resolved_attention, xformers_available
    from lib_dbchar.train.loop import set_attention
    from lib_dbchar.train.model import load_components, prepare_working_model
    from lib_dbchar.train.run import RunFolders
    from lib_dbchar.train.sampling import Sampler

    model = prepare_working_model(
        Path(config.source_checkpoint).expanduser(),
        RunFolders(spec.run_dir).working,
        prediction_type=config.prediction_type,
        config_dir=spec.model_config_dir,
        tokenizer_dir=spec.tokenizer_dir,
    )
    parts = load_components(model)
    device = torch.device(spec.device)
    for module in (parts.unet, parts.vae, parts.text_encoder):
        module.to(device).requires_grad_(False)
    on_cuda = device.type == "cuda"
    set_attention(
        parts.unet, parts.vae, resolved_attention(config, have_xformers=xformers_available() and on_cuda)
    )
    half = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(config.mixed_precision)
    return Sampler(
        unet=parts.unet,
        vae=parts.vae,
        text_encoder=parts.text_encoder,
        tokenizer=parts.tokenizer,
        scheduler_config=parts.scheduler_config,
        scheduler=config.scheduler,
        device=str(device),
        autocast_dtype=half,
        clip_skip=config.clip_skip,
    )


def generate_for_run(spec: Any, ctx: JobContext | None = None) -> list[ClassImagesResult]:
    """Draw a run's missing class images before training, as a job of its own.

    The same images the run would draw at its start (same seeds, same folders), so training
    later finds them and goes straight to its first step. The source model is converted into the
    run's working folder, which training then reuses. Nothing is loaded when no image is missing.

    Args:
        spec: the :class:`~lib_dbchar.train.run.RunSpec` of the run to come.
        ctx: progress (one unit per image) and stop (between batches).

    Returns:
        One :class:`ClassImagesResult` per concept.

    Raises:
        ValueError: invalid settings or concepts, or no pictures (the message names the field).
        CheckpointError: the source cannot be used (SDXL: not supported yet).
        JobStopped: the user stopped; finished images stay and the next call continues.
    """
    ctx = ctx or JobContext()
    config = validate_config(spec.config)
    validate_for_device(config, spec.device)
    for index, concept in enumerate(spec.concepts):
        validate_concept(concept, index=index)
    data, _ = load_concept_data(spec.concepts, Path(spec.project_dir))
    if not any(c.images for c in data):
        folders = ", ".join(str(c.dataset_dir) for c in data)
        raise ValueError(f"Concept: no pictures in {folders}; add them in the Dataset tab.")
    if _pending(data, config) == 0:
        return generate_class_images(data, None, config, device=spec.device, ctx=ctx)
    if not config.source_checkpoint.strip():
        msg = "TrainConfig.source_checkpoint: pick the model to draw the class images with."
        raise ValueError(msg)
    ctx.report(0, 0, "Preparing the source model")
    sampler = _source_sampler(spec, config)
    return generate_class_images(data, sampler, config, device=spec.device, ctx=ctx)
