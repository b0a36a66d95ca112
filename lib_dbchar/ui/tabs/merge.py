"""The Merge tab: move the character onto other models with an add-difference merge."""

from __future__ import annotations

from lib_dbchar.ui.context import UiContext
from lib_dbchar.ui.tabs.common import plan

TITLE = "Merge"


def render(ctx: UiContext) -> None:
    """Show the tab's content inside the current ``gr.Tab``."""
    plan(
        "merge",
        "Move the character onto any other model with an **Add difference** merge.",
        [
            "A: your trained checkpoint; B: the model to move the character onto; C: the source "
            "model you trained from.",
            "Multiplier 1: the result is A + 1 x (B - C), the character on B's style.",
            "The result is saved as a new checkpoint beside the others, named so you remember what it is.",
        ],
    )
