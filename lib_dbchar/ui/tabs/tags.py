"""The Tags tab: WD14 tags for every picture, reviewed by the user."""

from __future__ import annotations

from lib_dbchar.ui.context import UiContext
from lib_dbchar.ui.tabs.common import plan

TITLE = "Tags"


def render(ctx: UiContext) -> None:
    """Show the tab's content inside the current ``gr.Tab``."""
    plan(
        "tags",
        "Describe every picture with tags, so the training learns what is the character and what is not.",
        [
            "Tag all pictures with a WD14 tagger on this machine (its model is downloaded once).",
            "Review each picture's tags: remove wrong ones, add what the tagger missed.",
            "The tags are saved as a `.txt` file beside each picture; `[filewords]` in the prompts "
            "stands for them.",
        ],
    )
