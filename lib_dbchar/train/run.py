"""A training run: what it is given (:class:`RunSpec`), where it writes, and what it returns.

Folder of a run (``<project>/runs/<run>/``)::

    run.json              the RunSpec (re-run or resume it from the CLI)
    working/              the source model as a diffusers folder (converted once)
    state/state.pt        resume state: weights, optimizer, scaler, random state, step
    samples/              previews, <run>_<step>_c<concept>_<n>.png with the prompt in PNG info
    logging/loss.jsonl    one line per step: step, epoch, loss, instance/prior loss, lr
    logging/dreambooth/   TensorBoard event files (loss, lr, prior loss)
    checkpoints.json      the checkpoints written, with step and epoch
    result.json           the last TrainResult

Checkpoints themselves go to the host's checkpoint folder as ``<run>_<step>.safetensors``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lib_dbchar.concept import Concept
from lib_dbchar.config import from_dict, to_dict
from lib_dbchar.errors import JobStopped
from lib_dbchar.paths import atomic_write, safe_name
from lib_dbchar.train.config import TrainConfig

RUN_FILE = "run.json"
DEFAULT_MIN_8BIT_SIZE = 4096  # bitsandbytes' own default: smaller tensors keep 32-bit state


@dataclass(frozen=True)
class RunSpec:
    """Everything a run needs, as plain values (the UI and the CLI build it; the host resolves names).

    Attributes:
        project_dir: the project folder (``dataset/``, ``classes/``, ``runs/``).
        run_name: the run's name; also the checkpoints' name prefix.
        config: the training settings; ``config.source_checkpoint`` must be a file path here.
        concepts: one or more concepts.
        checkpoint_dir: where checkpoints go (the host's checkpoint folder).
        device: ``"cuda"``, ``"cuda:1"``, ``"cpu"``, ...
        model_config_dir: a diffusers folder whose configs (and tokenizer) describe the source,
            for models that are not standard SD sizes; ``None`` uses the shipped SD1/SD2 configs.
        tokenizer_dir: a CLIP tokenizer folder to use instead of searching the machine.
        min_8bit_size: bitsandbytes keeps tensors smaller than this in 32-bit state; tests on tiny
            models set 0 to exercise the 8-bit path.
    """

    project_dir: Path
    run_name: str
    config: TrainConfig
    concepts: tuple[Concept, ...]
    checkpoint_dir: Path
    device: str = "cpu"
    model_config_dir: Path | None = None
    tokenizer_dir: Path | None = None
    min_8bit_size: int = DEFAULT_MIN_8BIT_SIZE

    @property
    def name(self) -> str:
        """The run name made safe for file names."""
        return safe_name(self.run_name, what="run name")

    @property
    def run_dir(self) -> Path:
        return Path(self.project_dir) / "runs" / self.name

    def to_dict(self) -> dict[str, Any]:
        return {
            "project_dir": str(self.project_dir),
            "run_name": self.run_name,
            "config": to_dict(self.config),
            "concepts": [to_dict(c) for c in self.concepts],
            "checkpoint_dir": str(self.checkpoint_dir),
            "device": self.device,
            "model_config_dir": str(self.model_config_dir) if self.model_config_dir else None,
            "tokenizer_dir": str(self.tokenizer_dir) if self.tokenizer_dir else None,
            "min_8bit_size": self.min_8bit_size,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunSpec:
        """Rebuild a spec saved by :meth:`to_dict`; field errors name the field.

        Raises:
            ValueError: a missing key or an invalid setting.
        """
        try:
            return cls(
                project_dir=Path(data["project_dir"]),
                run_name=str(data["run_name"]),
                config=from_dict(TrainConfig, data.get("config", {})),
                concepts=tuple(from_dict(Concept, c) for c in data.get("concepts", [])),
                checkpoint_dir=Path(data["checkpoint_dir"]),
                device=str(data.get("device", "cpu")),
                model_config_dir=Path(data["model_config_dir"]) if data.get("model_config_dir") else None,
                tokenizer_dir=Path(data["tokenizer_dir"]) if data.get("tokenizer_dir") else None,
                min_8bit_size=int(data.get("min_8bit_size", DEFAULT_MIN_8BIT_SIZE)),
            )
        except KeyError as exc:
            raise ValueError(f"run spec: missing {exc.args[0]!r}") from None


def save_run_spec(spec: RunSpec) -> Path:
    """Write ``run.json`` in the run folder (atomically)."""
    return atomic_write(spec.run_dir / RUN_FILE, json.dumps(spec.to_dict(), indent=2) + "\n")


def load_run_spec(path: Path) -> RunSpec:
    """Read a ``run.json`` (or the ``run.json`` of a run folder).

    Raises:
        FileNotFoundError, ValueError: naming the file.
    """
    path = Path(path)
    if path.is_dir():
        path = path / RUN_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; start the run once before resuming it.")
    try:
        return RunSpec.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from None


@dataclass(frozen=True)
class RunFolders:
    """The paths inside a run folder."""

    root: Path

    @property
    def working(self) -> Path:
        return self.root / "working"

    @property
    def state_file(self) -> Path:
        return self.root / "state" / "state.pt"

    @property
    def samples(self) -> Path:
        return self.root / "samples"

    @property
    def loss_log(self) -> Path:
        return self.root / "logging" / "loss.jsonl"

    @property
    def tensorboard(self) -> Path:
        return self.root / "logging" / "dreambooth"

    @property
    def checkpoints_record(self) -> Path:
        return self.root / "checkpoints.json"

    @property
    def result_file(self) -> Path:
        return self.root / "result.json"


@dataclass(frozen=True)
class CheckpointRecord:
    """A checkpoint a run wrote."""

    path: str
    step: int
    epoch: int
    loss: float | None = None


@dataclass(frozen=True)
class TrainEvent:
    """What ``on_event`` receives while a run goes.

    Attributes:
        kind: ``"step"``, ``"checkpoint"``, ``"preview"``, ``"class_images"`` or ``"message"``.
        step: the global step (steps done so far).
        epoch: epochs done so far.
        data: per kind: ``loss``/``instance_loss``/``prior_loss``/``lr`` (step), ``path``
            (checkpoint), ``paths`` (preview), ``text`` (message).
    """

    kind: str
    step: int
    epoch: int
    data: dict[str, Any] = field(default_factory=dict)


EventFn = Callable[[TrainEvent], None]


@dataclass
class TrainResult:
    """What a run did (JSON through :meth:`to_dict`).

    Attributes:
        run_dir: the run folder.
        status: ``"finished"`` or ``"stopped"``.
        step: global steps done.
        epoch: epochs done.
        checkpoints: the checkpoints written (all sessions).
        previews: preview images written in this session.
        loss_log: the JSONL loss log.
        tensorboard_dir: the TensorBoard folder (``logging/dreambooth``).
        state_file: the resume state.
        optimizer: ``"AdamW8bit"`` or ``"AdamW"``.
        seconds: wall time of this session.
        seconds_per_step: mean time of this session's steps.
        last_loss: the loss of the last step.
        warnings: things the user should know (missing captions, fallbacks, changed settings).
    """

    run_dir: str
    status: str
    step: int
    epoch: int
    checkpoints: list[CheckpointRecord] = field(default_factory=list)
    previews: list[str] = field(default_factory=list)
    loss_log: str = ""
    tensorboard_dir: str = ""
    state_file: str = ""
    optimizer: str = ""
    seconds: float = 0.0
    seconds_per_step: float = 0.0
    last_loss: float | None = None
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class TrainingStopped(JobStopped):
    """The user stopped the run; the state is saved. ``result`` says what was done and written."""

    def __init__(self, message: str, result: TrainResult) -> None:
        super().__init__(message)
        self.result = result


def read_checkpoint_records(path: Path) -> list[CheckpointRecord]:
    """The ``checkpoints.json`` of a run (empty when there is none)."""
    path = Path(path)
    if not path.is_file():
        return []
    return [CheckpointRecord(**item) for item in json.loads(path.read_text(encoding="utf-8"))]


def write_checkpoint_records(path: Path, records: Sequence[CheckpointRecord]) -> None:
    atomic_write(Path(path), json.dumps([asdict(r) for r in records], indent=2) + "\n")


def read_loss_log(path: Path) -> list[dict[str, Any]]:
    """The records of a ``loss.jsonl`` (a torn last line from a kill is skipped)."""
    path = Path(path)
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def truncate_loss_log(path: Path, step: int) -> None:
    """Drop records after ``step`` (written by a session that died before saving its state)."""
    path = Path(path)
    if path.is_file():
        kept = [r for r in read_loss_log(path) if int(r.get("step", 0)) <= step]
        atomic_write(path, "".join(json.dumps(r) + "\n" for r in kept))
