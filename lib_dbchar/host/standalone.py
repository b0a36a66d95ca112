"""The host for ``python -m lib_dbchar``: a models folder, the best local device, a plain lock."""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from lib_dbchar.host.base import CheckpointRef, Host
from lib_dbchar.jobs import JobContext, Progress, ProgressFn
from lib_dbchar.settings import Settings

CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt")


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
        if not self.models_dir.is_dir():
            return []
        files = [
            p for p in self.models_dir.rglob("*") if p.suffix.lower() in CHECKPOINT_SUFFIXES and p.is_file()
        ]
        refs = [CheckpointRef(str(p.relative_to(self.models_dir)), p) for p in files]
        return sorted(refs, key=lambda r: r.title.lower())

    def checkpoint_dir(self) -> Path:
        return self.models_dir

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
