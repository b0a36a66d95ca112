"""The Dataset tab: about twenty pictures of the character, cropped to 512 px squares."""

from __future__ import annotations

from lib_dbchar.ui.context import UiContext
from lib_dbchar.ui.tabs.common import plan

TITLE = "Dataset"


def render(ctx: UiContext) -> None:
    """Show the tab's content inside the current ``gr.Tab``."""
    plan(
        "dataset",
        "Collect about 20 good pictures of the character in the current project.",
        [
            "Add the pictures: the more poses and outfits of the one design, the better.",
            "Each picture is **cropped** to a 512x512 square (cropped, never squashed); move the crop "
            "where the automatic one cuts the character.",
            "The squares are saved as PNG in the project's `dataset/` folder, ready for tagging.",
        ],
    )
