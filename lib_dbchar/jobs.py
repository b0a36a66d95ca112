"""How long jobs talk to whoever runs them, without knowing who that is.

Every long job in the core (prep, tagging, class images, training, merging) takes two callables:

* ``progress(Progress)`` -- called as work advances; the host shows it (the webui's progress bar,
  Gradio's bar, a CLI line). It must be cheap; the job calls it once per unit of work.
* ``should_stop() -> bool`` -- polled between units of work; True means the user asked to stop.

A job that sees ``should_stop()`` finishes the unit it is on, leaves everything it wrote in a
consistent state and raises :class:`~lib_dbchar.errors.JobStopped` (or returns a partial result
when its docstring says so). Hosts implement both in ``lib_dbchar.host``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lib_dbchar.errors import JobStopped


@dataclass(frozen=True)
class Progress:
    """One progress report.

    Args:
        done: units finished so far (0..total).
        total: units in the whole job; 0 when unknown.
        text: one line for the user ("Tagging 12/40: hero_03.png").
        image: an optional preview (a PIL image), e.g. the latest sample.
    """

    done: int
    total: int
    text: str = ""
    image: Any = None

    @property
    def fraction(self) -> float:
        return min(1.0, self.done / self.total) if self.total > 0 else 0.0


ProgressFn = Callable[[Progress], None]
StopFn = Callable[[], bool]


def no_progress(_: Progress) -> None:
    """The default ``progress``: report nothing."""


def never_stop() -> bool:
    """The default ``should_stop``: run to the end."""
    return False


@dataclass
class JobContext:
    """The two callbacks a job receives, with the checks every job repeats."""

    progress: ProgressFn = no_progress
    should_stop: StopFn = never_stop

    def report(self, done: int, total: int, text: str = "", image: Any = None) -> None:
        self.progress(Progress(done=done, total=total, text=text, image=image))

    def check_stop(self, what: str = "job") -> None:
        """Raise :class:`JobStopped` if the user asked to stop; call between units of work."""
        if self.should_stop():
            raise JobStopped(f"{what} stopped by the user")
