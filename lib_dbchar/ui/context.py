"""What every tab receives: the host and the components shared between tabs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lib_dbchar.host.base import Host


@dataclass
class UiContext:
    """The host plus the page-wide components a tab may read or update.

    Attributes:
        host: the program we run in (webui or standalone).
        project: the project picker's dropdown; its value is the current project's name.
        task_id: a hidden textbox that carries the webui's task id as the first input of every
            job (see :mod:`lib_dbchar.ui.jobs`); unused standalone.
        merge_handoff: a hidden textbox through which "Pick a checkpoint" hands a checkpoint to
            the Merge wizard: its value is JSON ``{"checkpoint": path, "run": name, "source": path}``
            and the Merge tab fills its roles when it changes. ``None`` when a page has no such box.
        release_hooks: callables that free memory a tab holds on purpose between jobs (the Tags
            tab's "Keep the model loaded" tagger); jobs that need the memory (training, class
            images) call them all first (:func:`lib_dbchar.ui.train_logic.release_held_memory`).
    """

    host: Host
    project: Any
    task_id: Any
    merge_handoff: Any = None
    release_hooks: list[Callable[[], Any]] = field(default_factory=list)

    @property
    def in_webui(self) -> bool:
        """True inside AUTOMATIC1111/Forge, whose own progress bar and Interrupt button we use."""
        return self.host.name == "webui"
