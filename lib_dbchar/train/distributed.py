"""One run in several processes: ``torchrun`` / ``accelerate launch`` data-parallel training.

``accelerate launch --num_processes N -m lib_dbchar train ...`` (or ``torchrun --nproc_per_node N
-m lib_dbchar train ...``) starts N copies of the CLI with ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``
set; :func:`from_environ` reads them and :func:`process_group` joins the copies (NCCL on CUDA, gloo
on the CPU). Only ``torch.distributed`` is used: the accelerate 0.21 of the webui's venv and the
current one share no state API worth depending on, and the launcher's environment is all we need.

How a step is shared, so that N processes train what one process would:

* the batch of a step is the one :func:`~lib_dbchar.train.data.plan_batch` gives a one-process run
  with the same settings (``batch_size`` is the global batch); process ``r`` takes pictures ``r, r +
  N, r + 2N, ...`` of it with their class images (:meth:`Processes.shard`);
* every process draws the random numbers of the whole batch (latent samples, noise, timesteps) from
  the same generator and keeps its rows: each draw equals the one-process run's, and the
  generators of all processes stay equal -- the one rank 0 saves is every rank's, so resume is exact
  (and a run may even be resumed with another number of processes);
* each process's loss is its samples' share of the global mean, scaled by N, so DDP's gradient
  average is the gradient of the one-process loss. A process left without a picture (the last, short
  batch of an epoch) runs a placeholder sample with weight 0: DDP needs every process in every step.

The result equals the one-process run up to floating-point rounding (gradients summed in another
order). Rank 0 alone writes: checkpoints, previews, logs, the state; it also converts the source and
draws the class images while the others wait at a barrier. ``optimizer_in_backward`` steps on the
local gradient before DDP averages it, so it is refused here.
"""

from __future__ import annotations

import contextlib
import datetime
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

# Rank 0 alone draws the class images and writes checkpoints and previews while the others wait in
# a collective; the default timeouts (10-30 min) are shorter than drawing a few hundred class images.
COLLECTIVE_TIMEOUT = datetime.timedelta(hours=4)
ENV_WORLD_SIZE, ENV_RANK, ENV_LOCAL_RANK = "WORLD_SIZE", "RANK", "LOCAL_RANK"


@dataclass(frozen=True)
class Processes:
    """Which of the run's processes this is, and the collectives the loop needs.

    One process (the default, the webui's case) makes every collective the identity.

    Attributes:
        world_size: number of processes.
        rank: this process's index, 0 = the one that writes.
        local_rank: its index on this machine (picks the GPU).
        backend: ``"nccl"`` or ``"gloo"`` once :func:`process_group` joined them, else ``""``.
    """

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    backend: str = ""

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, requested: str) -> str:
        """The device of this process: each process of a CUDA run gets the GPU ``cuda:LOCAL_RANK``."""
        if self.distributed and requested.startswith("cuda"):
            return f"cuda:{self.local_rank}"
        return requested

    def shard(self, count: int) -> list[int] | None:
        """The positions of a step's ``count`` pictures this process trains (``None``: all, one process)."""
        if not self.distributed:
            return None
        return list(range(self.rank, count, self.world_size))

    def _tensor(self, values: Sequence[float]) -> Any:
        import torch

        device = f"cuda:{self.local_rank}" if self.backend == "nccl" else "cpu"
        return torch.tensor(list(values), dtype=torch.float64, device=device)

    def sum(self, values: Sequence[float]) -> list[float]:
        """Each value summed over all processes (float64)."""
        if not self.distributed:
            return [float(v) for v in values]
        import torch.distributed as dist

        tensor = self._tensor(values)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return [float(v) for v in tensor.cpu()]

    def any(self, flag: bool) -> bool:
        """True on every process when ``flag`` is True on one (e.g. a stop asked in one terminal)."""
        return self.sum([1.0 if flag else 0.0])[0] > 0 if self.distributed else bool(flag)

    def barrier(self) -> None:
        """Wait until every process got here."""
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()

    def wrap(self, module: Any, *, static_graph: bool = False) -> Any:
        """``module`` whose calls go through DDP (gradients averaged in backward); the module itself alone.

        Args:
            module: a module on this process's device, its trained parameters requiring grad.
            static_graph: tell DDP the graph is the same every step (needed with reentrant
                gradient checkpointing, which runs parts of the forward again in backward).

        Returns:
            An object called like ``module`` whose other attributes are the module's.
        """
        if not self.distributed:
            return module
        from torch.nn.parallel import DistributedDataParallel

        device = next(module.parameters()).device
        ddp = DistributedDataParallel(
            module, device_ids=[device.index] if device.type == "cuda" else None, static_graph=static_graph
        )
        return DataParallelModule(ddp, module)


class DataParallelModule:
    """A DDP-wrapped module that still looks like the module (``unet.config``, ``text_model``, ...)."""

    def __init__(self, ddp: Any, module: Any) -> None:
        self._ddp = ddp
        self._module = module

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._ddp(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)


SINGLE = Processes()


def balance_warning(batch_size: int, processes: Processes) -> str:
    """A warning when the batch does not split evenly among the processes (empty when it does).

    ``batch_size`` is the whole step's batch: with fewer pictures than processes some processes
    train a weight-0 placeholder every step; with a remainder some train one picture more and the
    others wait for them.
    """
    n = processes.world_size
    if n <= 1 or batch_size % n == 0:
        return ""
    fix = f"Set batch_size to a multiple of {n} (the batch is split among the processes, not multiplied)."
    if batch_size < n:
        return (
            f"TrainConfig.batch_size {batch_size} is smaller than the {n} processes: {n - batch_size} of "
            f"them train a weight-0 placeholder in every step and add nothing. {fix}"
        )
    return (
        f"TrainConfig.batch_size {batch_size} does not split evenly among {n} processes: some train "
        f"{batch_size // n + 1} pictures per step, the others {batch_size // n} and wait. {fix}"
    )


def _int(environ: Mapping[str, str], name: str, default: int) -> int:
    raw = environ.get(name, "")
    if not raw.strip():
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r}: the launcher's process variables must be whole numbers.") from None


def from_environ(environ: Mapping[str, str]) -> Processes:
    """The processes a launcher (``torchrun``, ``accelerate launch``) started, from its environment.

    Args:
        environ: ``os.environ`` (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``).

    Returns:
        :data:`SINGLE` without a launcher (or with one process), else this process's place.

    Raises:
        ValueError: values that are not numbers or out of range, naming the variable.
    """
    world = _int(environ, ENV_WORLD_SIZE, 1)
    if world <= 1:
        return SINGLE
    rank = _int(environ, ENV_RANK, -1)
    local = _int(environ, ENV_LOCAL_RANK, rank)
    if not 0 <= rank < world:
        raise ValueError(f"{ENV_RANK}={rank}: must be from 0 to {world - 1} ({ENV_WORLD_SIZE}={world}).")
    if local < 0:
        raise ValueError(f"{ENV_LOCAL_RANK}={local}: must be 0 or more.")
    return Processes(world_size=world, rank=rank, local_rank=local)


@contextlib.contextmanager
def process_group(processes: Processes, device: str) -> Iterator[Processes]:
    """Join the launcher's processes for the duration of a run (nothing to do for one process).

    Args:
        processes: from :func:`from_environ`.
        device: the requested device; ``cuda*`` picks NCCL (and this process's GPU), else gloo.
            ``MASTER_ADDR``/``MASTER_PORT`` come from the launcher's environment.

    Yields:
        ``processes`` with its ``backend`` set.
    """
    if not processes.distributed:
        yield processes
        return
    import torch
    import torch.distributed as dist

    backend = "nccl" if device.startswith("cuda") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(processes.local_rank)
    owned = not dist.is_initialized()
    if owned:
        dist.init_process_group(
            backend,
            rank=processes.rank,
            world_size=processes.world_size,
            timeout=COLLECTIVE_TIMEOUT,
        )
    else:
        backend = str(dist.get_backend())  # joined by the caller already
    try:
        yield replace(processes, backend=backend)
    finally:
        if owned:
            dist.destroy_process_group()
