"""The ONNX session: which provider runs it, what it expects, and one object that owns it.

Everything about the model's input is read from the session, never assumed: the tensor names
(``input`` / ``output`` for v3 exports, ``input_1:0`` / ``predictions_sigmoid`` for v2.0 ones),
the square side (448 today) and whether the batch axis is dynamic (a symbolic dimension) or fixed
(v2.0 exports refuse anything but 1).

Sessions are built by a *session factory* ``(model_path, providers, threads) -> session``; the
default one imports onnxruntime, tests pass their own. A :class:`Tagger` is made once per model
and reused for every batch; :class:`TaggerHolder` keeps one alive between UI clicks and releases
it (``release()``) before training needs the memory.
"""

from __future__ import annotations

import importlib.metadata
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lib_dbchar.tagger.errors import TaggerModelError
from lib_dbchar.tagger.labels import TagTable, read_tag_table
from lib_dbchar.tagger.models import ModelFiles

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"

# (model_path, providers, intra-op threads) -> an object with onnxruntime's session interface.
SessionFactory = Callable[[str, Sequence[Any], int], Any]


def core_count() -> int:
    """CPU cores this process may use (respects taskset/cgroup affinity where the OS reports it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def onnxruntime_errors() -> tuple[type[BaseException], ...]:
    """onnxruntime's own exception classes (they derive from ``Exception`` directly, so they are
    caught by name); ``()`` when onnxruntime is not installed, which an ``except`` accepts."""
    try:
        from onnxruntime.capi import onnxruntime_pybind11_state as state
    except ImportError:
        return ()
    names = (
        "Fail",
        "InvalidArgument",
        "NoSuchFile",
        "NoModel",
        "EngineError",
        "RuntimeException",
        "InvalidProtobuf",
        "ModelLoaded",
        "NotImplemented",
        "InvalidGraph",
        "EPFail",
    )
    found = (getattr(state, name, None) for name in names)
    return tuple(c for c in found if isinstance(c, type) and issubclass(c, BaseException))


def onnxruntime_session(model_path: str, providers: Sequence[Any], threads: int) -> Any:
    """The default :data:`SessionFactory`: an ``onnxruntime.InferenceSession``.

    Args:
        model_path: the ``.onnx`` file.
        providers: onnxruntime provider names or ``(name, options)`` pairs, best first.
        threads: intra-op threads (the cores: the session works while the next batch is prepared).

    Raises:
        TaggerModelError: onnxruntime cannot load the file.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, int(threads))
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: provider fall-backs are detected and reported by us
    # onnxruntime's idle threads spin for a while after each run by default; here the loader
    # threads need those cycles to prepare the next batch, so idle session threads sleep instead.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(model_path), sess_options=options, providers=list(providers))
    except onnxruntime_errors() as exc:
        raise TaggerModelError(
            f"onnxruntime cannot load {model_path}: {exc}. Download the model again "
            "or choose another model folder"
        ) from exc


def available_providers() -> list[str]:
    """onnxruntime's providers on this machine (``[]`` when onnxruntime is not installed)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return []
    return list(ort.get_available_providers())


def _installed(dist: str) -> bool:
    try:
        importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def install_warnings() -> list[str]:
    """Known-bad onnxruntime installs, as messages with the fix."""
    if _installed("onnxruntime") and _installed("onnxruntime-gpu"):
        return [
            "onnxruntime and onnxruntime-gpu are both installed; they overwrite each other and CUDA is "
            "lost. Fix: pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu"
        ]
    return []


def choose_providers(device: str | None, available: Sequence[str]) -> tuple[list[Any], list[str]]:
    """Providers to ask for, best first, and warnings about what the user will not get.

    Args:
        device: ``"auto"``/``None`` (CUDA when onnxruntime has it), ``"cpu"``, ``"cuda"`` or
            ``"cuda:N"``; anything else (``"mps"``) runs on the CPU.
        available: :func:`available_providers`.

    Returns:
        ``(providers, warnings)``; CPU is always last, as the fall-back.
    """
    wanted = (device or "auto").strip().lower()
    warnings: list[str] = []
    if wanted in ("auto", "") or wanted.startswith("cuda"):
        if CUDA in available:
            index = int(wanted.split(":", 1)[1]) if wanted.startswith("cuda:") else 0
            return [(CUDA, {"device_id": index}), CPU], warnings
        if wanted.startswith("cuda"):
            warnings.append(
                f"device {device} asked for, but onnxruntime offers no CUDA provider here "
                f"(available: {', '.join(available) or 'none'}); tagging on the CPU. For the GPU: "
                "pip uninstall -y onnxruntime && pip install onnxruntime-gpu"
            )
    return [CPU], warnings


def _provider_name(entry: Any) -> str:
    return entry[0] if isinstance(entry, tuple) else str(entry)


@dataclass(frozen=True)
class SessionInfo:
    """What the session told us.

    Attributes:
        input_name / output_name: tensor names.
        image_size: the square side ``S`` of the input ``[N, S, S, 3]``.
        fixed_batch: the batch size the model insists on, or ``None`` when the batch is dynamic.
        num_outputs: tags per picture, or ``None`` when the export leaves it symbolic.
        providers: the providers actually in use, best first (``providers[0]`` runs the model).
        requested: the providers asked for.
    """

    input_name: str
    output_name: str
    image_size: int
    fixed_batch: int | None
    num_outputs: int | None
    providers: tuple[str, ...]
    requested: tuple[str, ...]

    @property
    def provider(self) -> str:
        return self.providers[0] if self.providers else "unknown"

    def batch_size(self, wanted: int) -> int:
        """The batch to run: the model's fixed one, else ``wanted`` (>= 1)."""
        return self.fixed_batch if self.fixed_batch is not None else max(1, int(wanted))


def inspect_session(session: Any, model_path: Path, requested: Sequence[Any] = ()) -> SessionInfo:
    """Read names, input side and batch behaviour from a session.

    Raises:
        TaggerModelError: the model does not take one ``[N, S, S, 3]`` float image batch.
    """
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or not outputs:
        raise TaggerModelError(
            f"{model_path} has {len(inputs)} inputs and {len(outputs)} outputs; "
            "a WD14 tagger has one image input and one output"
        )
    shape = list(inputs[0].shape)
    square = len(shape) == 4 and isinstance(shape[1], int) and shape[1] == shape[2] and shape[3] == 3
    if not square:
        raise TaggerModelError(
            f"{model_path} expects input {inputs[0].name} of shape {shape}; a WD14 tagger "
            "takes [batch, side, side, 3] (channels last). Choose a WD14 model.onnx"
        )
    fixed = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
    out_shape = list(outputs[0].shape)
    num_outputs = out_shape[-1] if out_shape and isinstance(out_shape[-1], int) else None
    return SessionInfo(
        input_name=inputs[0].name,
        output_name=outputs[0].name,
        image_size=int(shape[1]),
        fixed_batch=fixed,
        num_outputs=num_outputs,
        providers=tuple(session.get_providers()),
        requested=tuple(_provider_name(p) for p in requested),
    )


@dataclass
class Tagger:
    """One loaded model: its session, what the session expects, and its tag table.

    Build it with :meth:`load`; run batches with :meth:`predict`; :meth:`close` (or ``with``)
    drops the session so its memory (VRAM on CUDA) is free for training.

    Attributes:
        files: where the model came from.
        table: the tag table.
        info: the session's signature and providers.
        warnings: provider fall-backs and install problems to show the user.
    """

    files: ModelFiles
    table: TagTable
    info: SessionInfo
    session: Any = field(repr=False)
    warnings: list[str] = field(default_factory=list)
    device: str = "auto"

    @classmethod
    def load(
        cls,
        files: ModelFiles,
        *,
        device: str | None = "auto",
        threads: int = 0,
        session_factory: SessionFactory | None = None,
    ) -> Tagger:
        """Read the tag table and create the session.

        Args:
            files: the model's two files.
            device: see :func:`choose_providers`.
            threads: intra-op threads; 0 = all cores.
            session_factory: builds the session (default: onnxruntime).

        Raises:
            TaggerModelError: unreadable CSV, a model onnxruntime cannot load, a non-WD14 input, or
                a CSV whose row count differs from the model's outputs.
        """
        table = read_tag_table(files.tags_path)
        providers, warnings = choose_providers(device, available_providers())
        warnings = install_warnings() + warnings
        factory = session_factory or onnxruntime_session
        session = factory(str(files.model_path), providers, threads or core_count())
        info = inspect_session(session, files.model_path, providers)
        if info.num_outputs is not None and info.num_outputs != len(table):
            raise TaggerModelError(
                f"{files.model_path} outputs {info.num_outputs} scores but {files.tags_path} lists "
                f"{len(table)} tags; the two files come from different models"
            )
        if CUDA in info.requested and info.provider != CUDA:
            warnings.append(
                f"onnxruntime could not start CUDA and runs the tagger on {info.provider} (CUDA and cuDNN "
                "libraries missing or mismatched for this onnxruntime-gpu build)"
            )
        return cls(files, table, info, session, warnings, str(device or "auto"))

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities for a batch of prepared pictures.

        Runs the batch in chunks of the model's fixed batch size when it has one.

        Args:
            batch: float32 ``[N, S, S, 3]`` from :func:`~lib_dbchar.tagger.preprocess.prepare_image`.

        Returns:
            float32 ``[N, T]`` probabilities in tag-table order.

        Raises:
            TaggerModelError: the session is closed, or the model returned something other than
                ``T`` probabilities per picture (logits would be outside 0..1).
        """
        if self.session is None:
            msg = "this tagger was closed (released for training); load it again"
            raise TaggerModelError(msg)
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        step = self.info.fixed_batch or len(batch)
        try:
            parts = [
                self.session.run([self.info.output_name], {self.info.input_name: batch[i : i + step]})[0]
                for i in range(0, len(batch), step)
            ]
        except onnxruntime_errors() as exc:
            message = f"{self.files.model_path} failed on a batch of {len(batch)}: {exc}"
            raise TaggerModelError(message) from exc
        empty = np.zeros((0, len(self.table)), dtype=np.float32)
        probs = np.concatenate(parts).astype(np.float32, copy=False) if parts else empty
        if probs.shape != (len(batch), len(self.table)):
            raise TaggerModelError(
                f"{self.files.model_path} returned shape {probs.shape} for {len(batch)} "
                f"pictures; expected ({len(batch)}, {len(self.table)})"
            )
        if probs.size and (float(probs.min()) < 0.0 or float(probs.max()) > 1.0):
            raise TaggerModelError(
                f"{self.files.model_path} returns values outside 0..1: not probabilities, "
                "so not a WD14 tagger export"
            )
        return probs

    def close(self) -> None:
        """Drop the session (idempotent); onnxruntime frees its memory when the object goes."""
        self.session = None

    def __enter__(self) -> Tagger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class TaggerHolder:
    """Keeps one :class:`Tagger` between calls (a UI tab owns one) and releases it on demand."""

    tagger: Tagger | None = None

    def get(
        self,
        files: ModelFiles,
        *,
        device: str | None = "auto",
        session_factory: SessionFactory | None = None,
    ) -> Tagger:
        """The held tagger when it is for the same model file and device, else a new one."""
        current = self.tagger
        if (
            current is not None
            and current.session is not None
            and current.files.model_path == files.model_path
            and current.device == str(device or "auto")
        ):
            return current
        self.release()
        self.tagger = Tagger.load(files, device=device, session_factory=session_factory)
        return self.tagger

    def release(self) -> None:
        """Close the held session (before training, or when switching models)."""
        if self.tagger is not None:
            self.tagger.close()
        self.tagger = None
