"""Pieces several tabs share."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lib_dbchar.ui.compat import gr
from lib_dbchar.ui.ids import elem_class, elem_id


def plan(tab: str, summary: str, steps: Sequence[str]) -> Any:
    """What a tab will do, as a short numbered list (``dbchar-<tab>-plan``) until the tab is built.

    Args:
        tab: the tab's id word ("dataset", ...).
        summary: one sentence: what the tab is for.
        steps: the steps the tab will walk the user through, in order (Markdown).
    """
    lines = [summary, "", *[f"{i}. {step}" for i, step in enumerate(steps, start=1)]]
    return gr.Markdown("\n".join(lines), elem_id=elem_id(tab, "plan"), elem_classes=[elem_class("plan")])
