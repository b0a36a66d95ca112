"""The Train tab: Dreambooth with prior preservation, and picking the right checkpoint."""

from __future__ import annotations

from lib_dbchar.ui.context import UiContext
from lib_dbchar.ui.tabs.common import plan

TITLE = "Train"


def render(ctx: UiContext) -> None:
    """Show the tab's content inside the current ``gr.Tab``."""
    plan(
        "train",
        "Train a Dreambooth checkpoint from a source model, with prior preservation.",
        [
            "Pick the source checkpoint (e.g. Waifu Diffusion 1.3); defaults: learning rate 1e-6, 512 px, "
            "8-bit Adam, fp16, a checkpoint and samples every 10 epochs.",
            "Watch the samples and the loss; around 4000 steps for 20 pictures the fine details appear. "
            "Stop at any time and resume later.",
            "Pick the checkpoint with an overfitting test: prompt a pose the dataset lacks (side, back); "
            "keep the latest checkpoint that can still draw it.",
        ],
    )
