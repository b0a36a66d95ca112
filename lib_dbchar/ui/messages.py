"""One-line messages shown in the page (success, problem, stopped), as escaped HTML."""

from __future__ import annotations

import html

from lib_dbchar.ui.ids import elem_class

#: The kinds of message; each has a CSS class ``dbchar-message-<kind>`` in style.css.
KINDS = ("info", "ok", "error", "stopped")


def message_html(text: str, kind: str = "info") -> str:
    """``text`` as a ``<div>`` styled by kind; the text is escaped (names come from users).

    Args:
        text: the message; newlines are kept (the CSS uses ``white-space: pre-wrap``).
        kind: one of :data:`KINDS`.

    Raises:
        ValueError: for an unknown kind (a programming error, caught by the tests).
    """
    if kind not in KINDS:
        raise ValueError(f"message kind {kind!r} is not one of {', '.join(KINDS)}")
    classes = f"{elem_class('message')} {elem_class('message', kind)}"
    return f'<div class="{classes}">{html.escape(text)}</div>'
