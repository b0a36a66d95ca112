"""The host for ``python -m lib_dbchar``: a models folder, the best local device, a plain lock."""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from lib_dbchar.host.base import (
    LORA_FOLDER,
    VAE_FOLDER,
    VAE_SUFFIXES,
    CheckpointRef,
    Host,
    natural_sort_key,
)
from lib_dbchar.jobs import JobContext, Progress, ProgressFn
from lib_dbchar.settings import Settings

CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt")
#: The webui's checkpoint folder name: a models dir called so sits in a webui-style ``models/``.
WEBUI_CHECKPOINT_FOLDER = "Stable-diffusion"


def is_vae_beside_checkpoints(path: Path) -> bool:
    """``x.vae.safetensors`` / ``.vae.ckpt`` / ``.vae.pt``: a VAE kept with the checkpoints (not one)."""
    return path.suffix.lower() in VAE_SUFFIXES and path.stem.lower().endswith(".vae")


def best_device() -> str:
    """CUDA if usable, else Apple's MPS, else the CPU. Imports torch only when asked."""
    import torch

    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


class StandaloneHost(Host):
    """Checkpoints are the files under ``models_dir``; new ones are written there too.

    Upscalers: Lanczos only, the base host's :meth:`~lib_dbchar.host.base.Host.upscalers` (no
    model-based upscalers without the webui).
    """

    name = "standalone"

    def __init__(
        self,
        models_dir: Path,
        settings: Settings | None = None,
        *,
        device: str | None = None,
        home: Path | None = None,
    ) -> None:
        self.models_dir = Path(models_dir).expanduser()
        self._settings = settings or Settings()
        self._device = device
        self._home = Path(home) if home is not None else Path.home()
        # One GPU job at a time, like the webui's queue lock.
        self._lock = threading.Lock()
        # Set by interrupt(); cleared when the next job starts.
        self._stop = threading.Event()

    def list_checkpoints(self) -> list[CheckpointRef]:
        """Every ``.safetensors`` / ``.ckpt`` under the models dir, by title (the relative path).

        Left out, as the webui leaves them out: ``*.vae.*`` files, and the LoRA and VAE folders when
        they sit inside the models dir (see :meth:`lora_dir`).
        """
        if not self.models_dir.is_dir():
            return []
        skipped = [d for d in (self.lora_dir(), self.vae_dir()) if d.is_relative_to(self.models_dir)]
        files = [
            p
            for p in self.models_dir.rglob("*")
            if p.suffix.lower() in CHECKPOINT_SUFFIXES
            and not is_vae_beside_checkpoints(p)
            and not any(p.is_relative_to(d) for d in skipped)
            and p.is_file()
        ]
        refs = [CheckpointRef(str(p.relative_to(self.models_dir)), p) for p in files]
        return sorted(refs, key=lambda r: r.title.lower())

    def checkpoint_dir(self) -> Path:
        return self.models_dir

    def _models_root(self) -> Path:
        # Pointed at a webui's models/Stable-diffusion, share the webui's models/Lora and models/VAE
        # (folders inside Stable-diffusion would make the webui list LoRAs as checkpoints); any
        # other models dir keeps everything inside it.
        if self.models_dir.name == WEBUI_CHECKPOINT_FOLDER:
            return self.models_dir.parent
        return self.models_dir

    def lora_dir(self) -> Path:
        """``<models>/Lora``; beside the checkpoint folder when that is a webui's ``Stable-diffusion``."""
        return self._models_root() / LORA_FOLDER

    def vae_dir(self) -> Path:
        """``<models>/VAE``; beside the checkpoint folder when that is a webui's ``Stable-diffusion``."""
        return self._models_root() / VAE_FOLDER

    def vae_files(self) -> list[Path]:
        """Every VAE the webui would list here, by file name (natural order).

        Returns:
            The ``.safetensors`` / ``.ckpt`` / ``.pt`` files under :meth:`vae_dir`, then the
            ``*.vae.*`` files among the checkpoints; one per file name (a later one wins, as in the
            webui's VAE dropdown, which is keyed by file name).
        """
        found: dict[str, Path] = {}
        if self.vae_dir().is_dir():
            found.update(
                (p.name, p)
                for p in sorted(self.vae_dir().rglob("*"))
                if p.suffix.lower() in VAE_SUFFIXES and p.is_file()
            )
        if self.models_dir.is_dir():
            found.update(
                (p.name, p)
                for p in sorted(self.models_dir.rglob("*"))
                if is_vae_beside_checkpoints(p) and p.is_file()
            )
        return [found[name] for name in sorted(found, key=natural_sort_key)]

    def refresh_checkpoints(self) -> None:
        """Nothing cached: :meth:`list_checkpoints` scans the folder every time."""

    def device(self) -> str:
        if self._device is None:
            self._device = best_device()
        return self._device

    def dtype(self) -> str:
        return "float32" if self.device() == "cpu" else "float16"

    def wrap_gpu_call(
        self, fn: Callable[..., Any], extra_outputs: list[Any] | None = None
    ) -> Callable[..., Any]:
        @functools.wraps(fn)
        def locked(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                return fn(*args, **kwargs)

        return locked

    @contextlib.contextmanager
    def job(self, title: str, ui_progress: ProgressFn | None = None) -> Iterator[JobContext]:
        self._stop.clear()

        def progress(p: Progress) -> None:
            if ui_progress is not None:
                ui_progress(Progress(p.done, p.total, p.text or title, p.image))

        yield JobContext(progress=progress, should_stop=self._stop.is_set)

    def interrupt(self) -> None:
        self._stop.set()

    def settings(self) -> Settings:
        return self._settings

    def default_projects_dir(self) -> Path:
        return self._home / "dbchar"
