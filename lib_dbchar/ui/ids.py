"""DOM ids and classes: every one dbchar puts on a page starts with ``dbchar``.

The webui puts every extension's components, CSS and JS on one shared page, so an unprefixed id or
class can collide with another extension's. Python builds ids only through :func:`elem_id`;
``style.css`` and ``javascript/dbchar.js`` use the same prefix (a test checks all three).
"""

from __future__ import annotations

import re

PREFIX = "dbchar"

_PART = re.compile(r"[^A-Za-z0-9_-]+")


def elem_id(*parts: str) -> str:
    """``elem_id("tab", "dataset")`` -> ``"dbchar-tab-dataset"``.

    Args:
        parts: the words after the prefix; characters that are not letters, digits, ``_`` or ``-``
            become ``-`` so a field or form name can be passed as is.

    Returns:
        The id, always starting with ``dbchar-``.
    """
    cleaned = [_PART.sub("-", str(p)).strip("-") for p in parts]
    return "-".join([PREFIX, *[p for p in cleaned if p]])


def elem_class(*parts: str) -> str:
    """The same scheme for CSS classes: ``elem_class("message")`` -> ``"dbchar-message"``."""
    return elem_id(*parts)
