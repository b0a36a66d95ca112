"""The Concept tab: the token that names the character and the prompts built around it."""

from __future__ import annotations

from lib_dbchar.ui.context import UiContext
from lib_dbchar.ui.tabs.common import plan

TITLE = "Concept"


def render(ctx: UiContext) -> None:
    """Show the tab's content inside the current ``gr.Tab``."""
    plan(
        "concept",
        "Name the character with an instance token, e.g. `star guardian neeko`.",
        [
            "Instance prompt: the token followed by the tags, `star guardian neeko, [filewords]`.",
            "Class prompt: the tags alone, `[filewords]`; the token must never appear in it.",
            "Class (regularisation) images: 10 per dataset picture by default, generated from the "
            "source model before training; check that they look like the class.",
        ],
    )
