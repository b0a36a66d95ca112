"""The environment check: what a user runs first when something does not work.

Each check is small and independent; the job reports one unit of progress per check and honours
``should_stop`` between checks, so it doubles as the smallest real job that exercises a host's
progress bar and Interrupt button.
"""

from __future__ import annotations

import platform
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from lib_dbchar import deps
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


# The requirement with a CPU and GPU distributions (see pyproject's [tool.dbchar.install.gpu_builds]):
# it gets its own check, because two builds installed side by side is a problem of its own.
_BUILDS = "onnxruntime"
_GPU_BUILD = "onnxruntime-gpu"


def check_packages(installed: Mapping[str, str] | None = None) -> Check:
    """Every dependency but onnxruntime is present at a version that fits.

    The list and the version ranges are pyproject.toml's, judged by :mod:`lib_dbchar.deps` (the
    rules install.py follows), so this check and install.py never disagree.

    Args:
        installed: ``{canonical name: version}``; default: what this interpreter has.
    """
    found = deps.read_installed() if installed is None else dict(installed)
    try:
        problems = deps.problems_by_name(installed=found)
        names = deps.requirement_names()
    except (OSError, ValueError) as exc:
        return Check("packages", False, f"cannot read dbchar's dependency list: {exc}. Reinstall dbchar.")
    problems.pop(_BUILDS, None)
    detail = ", ".join(f"{name} {found[name]}" for name in names if name in found and name != _BUILDS)
    if problems:
        return Check("packages", False, " ".join(problems.values()) + f" Found: {detail or 'none'}")
    return Check("packages", True, detail)


def check_onnxruntime_builds(installed: Mapping[str, str] | None = None) -> Check:
    """onnxruntime (the tagger's runtime) is present, fits, and only one of its builds is installed.

    Args:
        installed: ``{canonical name: version}``; default: what this interpreter has.
    """
    found = deps.read_installed() if installed is None else dict(installed)
    try:
        problem = deps.problems_by_name(installed=found).get(_BUILDS)
    except (OSError, ValueError) as exc:
        return Check("onnxruntime", False, f"cannot read dbchar's dependency list: {exc}. Reinstall dbchar.")
    if problem:
        return Check("onnxruntime", False, problem)
    gpu = found.get(_GPU_BUILD)
    return Check("onnxruntime", True, f"{_GPU_BUILD} {gpu}" if gpu else f"{_BUILDS} {found.get(_BUILDS)}")


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
