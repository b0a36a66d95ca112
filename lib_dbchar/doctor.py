"""The environment check: what a user runs first when something does not work.

Each check is small and independent; the job reports one unit of progress per check and honours
``should_stop`` between checks, so it doubles as the smallest real job that exercises a host's
progress bar and Interrupt button.
"""

from __future__ import annotations

import importlib.metadata
import platform
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from lib_dbchar.jobs import JobContext
from lib_dbchar.version import __version__


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class Facts:
    """What the host tells the checks (plain values: the checks never see the host)."""

    host: str
    device: str
    checkpoint_dir: Path
    checkpoints: int
    projects_dir: Path


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def as_text(self) -> str:
        lines = [f"dbchar {__version__} on Python {platform.python_version()} ({sys.platform})"]
        lines += [f"[{'ok' if c.ok else 'PROBLEM'}] {c.name}: {c.detail}" for c in self.checks]
        return "\n".join(lines)


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def check_packages() -> Check:
    wanted = [
        "torch",
        "diffusers",
        "transformers",
        "accelerate",
        "safetensors",
        "onnxruntime",
        "numpy",
        "Pillow",
    ]
    found = {name: _version(name) for name in wanted}
    missing = [n for n, v in found.items() if v is None]
    detail = ", ".join(f"{n} {v}" for n, v in found.items() if v)
    if missing:
        return Check(
            "packages",
            False,
            f"missing {', '.join(missing)} (restart the webui to let install.py add "
            f"them, or run `pip install -e .`); found {detail}",
        )
    return Check("packages", True, detail)


def check_onnxruntime_builds() -> Check:
    cpu, gpu = _version("onnxruntime"), _version("onnxruntime-gpu")
    if cpu and gpu:
        return Check(
            "onnxruntime",
            False,
            f"both onnxruntime {cpu} and onnxruntime-gpu {gpu} are installed; they "
            "overwrite each other and CUDA is lost. Fix: pip uninstall -y onnxruntime onnxruntime-gpu, "
            "then pip install onnxruntime-gpu",
        )
    return Check("onnxruntime", True, f"onnxruntime-gpu {gpu}" if gpu else f"onnxruntime {cpu}")


def check_device(device: str) -> Check:
    """Run one small matrix product on the device: proves the driver and torch agree."""
    import torch

    try:
        x = torch.ones(64, 64, device=device)
        value = float((x @ x).sum().item())
    except (RuntimeError, AssertionError) as exc:
        return Check("device", False, f"{device}: {exc}")
    ok = value == 64.0 * 64 * 64
    return Check(
        "device", ok, f"{device}, torch {torch.__version__}" + ("" if ok else f", wrong result {value}")
    )


def check_folder(name: str, folder: Path) -> Check:
    folder = Path(folder)
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    import os

    writable = os.access(probe, os.W_OK)
    state = "exists" if folder.is_dir() else "will be created"
    return Check(
        name, writable, f"{folder} ({state}{'' if writable else ', NOT writable: pick another in Settings'})"
    )


def run_checks(facts: Facts, ctx: JobContext | None = None) -> Report:
    """Run every check, reporting progress and stopping between checks if asked.

    Raises:
        JobStopped: when ``ctx.should_stop()`` turns True between two checks.
    """
    ctx = ctx or JobContext()
    steps: list[tuple[str, Callable[[], Check]]] = [
        ("packages", check_packages),
        ("onnxruntime", check_onnxruntime_builds),
        ("device", lambda: check_device(facts.device)),
        (
            "checkpoints",
            lambda: Check(
                "checkpoints", True, f"{facts.checkpoints} in the list; new ones go to {facts.checkpoint_dir}"
            ),
        ),
        ("checkpoint folder", lambda: check_folder("checkpoint folder", facts.checkpoint_dir)),
        ("projects folder", lambda: check_folder("projects folder", facts.projects_dir)),
    ]
    report = Report()
    for i, (label, run) in enumerate(steps):
        ctx.check_stop("environment check")
        ctx.report(i, len(steps), f"Checking {label}")
        report.checks.append(run())
    ctx.report(len(steps), len(steps), "Environment check done")
    return report


def facts_from(host) -> Facts:
    """Collect the plain facts the checks need from a host."""
    return Facts(
        host=host.name,
        device=host.device(),
        checkpoint_dir=host.checkpoint_dir(),
        checkpoints=len(host.list_checkpoints()),
        projects_dir=host.projects_dir(),
    )
