"""The interface every host implements.

Core code never sees a host: it receives plain values (paths, a device string) and the
``progress`` / ``should_stop`` callbacks of a :class:`~lib_dbchar.jobs.JobContext`. The UI layer
asks the host for those, so the same tabs work inside the webui and standalone.
"""

from __future__ import annotations

import abc
import contextlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lib_dbchar.errors import DbcharError
from lib_dbchar.jobs import JobContext, ProgressFn
from lib_dbchar.settings import Settings

#: The upscaler every host has: Pillow's Lanczos resampling.
LANCZOS = "Lanczos"
#: The webui's folder names under ``models/``: LoRA networks and VAEs.
LORA_FOLDER = "Lora"
VAE_FOLDER = "VAE"
#: What the webui lists as VAE files (in a VAE folder; beside checkpoints only with ``.vae`` before it).
VAE_SUFFIXES = (".safetensors", ".ckpt", ".pt")


def lanczos_resize(image: Any, scale: float) -> Any:
    """``image`` (a PIL image) resized uniformly by ``scale`` with Lanczos; sides rounded, at least 1 px."""
    from PIL import Image  # Pillow only when a picture is actually enlarged

    if not scale > 0:
        raise ValueError(f"upscale factor {scale!r} must be above 0")
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS)


def natural_sort_key(text: str) -> list[Any]:
    """Sort key putting "vae2" before "vae10" (digit runs compare as numbers), case-insensitive."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text)]


@dataclass(frozen=True)
class CheckpointRef:
    """A checkpoint the host knows: the title its dropdown shows and the file behind it."""

    title: str
    path: Path


class Host(abc.ABC):
    """What dbchar needs from the program it runs in."""

    #: "webui" or "standalone"; shown in the UI and the doctor report.
    name: str = "host"

    # -- checkpoints -------------------------------------------------------------------------
    @abc.abstractmethod
    def list_checkpoints(self) -> list[CheckpointRef]:
        """The checkpoints the user can pick as a source (sorted by title)."""

    @abc.abstractmethod
    def checkpoint_dir(self) -> Path:
        """Where new checkpoints go so that the host lists them."""

    @abc.abstractmethod
    def refresh_checkpoints(self) -> None:
        """Rescan after we wrote a checkpoint, so it appears in the host's dropdowns."""

    def lora_dir(self) -> Path:
        """Where LoRA files go so that the host's LoRA network list shows them.

        The default is the webui's layout, ``Lora`` beside the checkpoint folder: never inside it,
        because a LoRA listed among the checkpoints would fail to load as one.
        """
        return self.checkpoint_dir().parent / LORA_FOLDER

    def vae_files(self) -> list[Path]:
        """The VAE files the host offers (for "Bake in VAE"), in the host's order; none by default."""
        return []

    def known_hashes(self) -> dict[str, str]:
        """Full-file SHA-256 (hex) of checkpoints the host has already hashed, keyed by file path.

        Handed to the merge as ``known_hashes`` so the recipe names its inputs by the same hashes the
        host shows, without hashing gigabytes again. Nothing is computed here; none by default.
        """
        return {}

    def find_checkpoint(self, title_or_path: str) -> CheckpointRef | None:
        """Resolve a dropdown title (with or without ``[hash]``), a file name or a path."""
        wanted = str(title_or_path).strip()
        for ref in self.list_checkpoints():
            if wanted in (ref.title, str(ref.path), ref.path.name, ref.path.stem):
                return ref
            if ref.title.split(" [")[0] == wanted.split(" [")[0]:
                return ref
        path = Path(wanted).expanduser()
        return CheckpointRef(path.name, path) if path.is_file() else None

    # -- compute -----------------------------------------------------------------------------
    @abc.abstractmethod
    def device(self) -> str:
        """The torch device string to train on: "cuda", "cuda:1", "mps" or "cpu"."""

    @abc.abstractmethod
    def dtype(self) -> str:
        """The host's preferred inference dtype: "float16", "bfloat16" or "float32"."""

    @contextlib.contextmanager
    def vram_freed(self) -> Iterator[None]:
        """Move the host's own model off the GPU for the duration, and put it back after.

        The default (standalone) has no model of its own, so there is nothing to move.
        """
        yield

    # -- upscalers ---------------------------------------------------------------------------
    def upscalers(self) -> list[str]:
        """Names of the upscalers this host offers for enlarging small pictures, the default first.

        The base host offers Lanczos only (a plain uniform resampling); the webui adds its own
        (ESRGAN, SwinIR, ...).
        """
        return [LANCZOS]

    def upscale(self, image: Any, name: str, scale: float) -> Any:
        """Enlarge ``image`` by ``scale`` with the upscaler called ``name``.

        Args:
            image: a PIL image (RGB).
            name: one of :meth:`upscalers`.
            scale: the enlargement factor (> 0); both sides are multiplied by it.

        Returns:
            The enlarged PIL image. Its size is about ``scale`` times the input's: a host's own
            upscaler may round it (the webui's to multiples of 8), so callers needing an exact size
            resize the result themselves.

        Raises:
            DbcharError: ``name`` is not one of :meth:`upscalers`.
        """
        if name != LANCZOS:
            raise DbcharError(f"The upscaler {name!r} is not available here; use {LANCZOS}.")
        return lanczos_resize(image, scale)

    # -- jobs --------------------------------------------------------------------------------
    @abc.abstractmethod
    def wrap_gpu_call(
        self, fn: Callable[..., Any], extra_outputs: list[Any] | None = None
    ) -> Callable[..., Any]:
        """Wrap a UI handler so it runs holding the host's GPU lock (one GPU job at a time).

        Hosts differ in what the wrapper does with the result, so handlers follow the stricter rule:
        return a list/tuple of outputs whose last item is a message string (the webui appends its
        timing HTML to it), and let errors propagate. Standalone, errors raise to the caller; in the
        webui its wrapper turns any exception into ``extra_outputs + [error HTML]``. Generator handlers
        are not supported (the webui would release its lock before the body runs), and wrapped calls
        must not nest: the webui's queue lock is not re-entrant.
        """

    @abc.abstractmethod
    def job(
        self, title: str, ui_progress: ProgressFn | None = None
    ) -> contextlib.AbstractContextManager[JobContext]:
        """Context for one long job: the callbacks to hand to the core.

        Args:
            title: shown to the user while the job runs.
            ui_progress: the UI's own progress sink (Gradio's bar standalone); a host that has a
                progress bar of its own (the webui) may ignore it.
        """

    @abc.abstractmethod
    def interrupt(self) -> None:
        """Ask the running job to stop (what the host's Interrupt/Stop button does)."""

    # -- settings ----------------------------------------------------------------------------
    @abc.abstractmethod
    def settings(self) -> Settings:
        """The extension settings as the user last saved them."""

    @abc.abstractmethod
    def default_projects_dir(self) -> Path:
        """Where projects live when the setting is empty."""

    def projects_dir(self) -> Path:
        return self.settings().resolved_projects_dir(self.default_projects_dir())
