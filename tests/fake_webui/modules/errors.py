"""Fake of modules/errors.py: the webui prints errors and carries on.

Fake only: every report is also kept in ``reported`` so a test can assert that nothing failed
silently inside a callback the webui guards.
"""

import sys
import traceback

reported = []


def report(message, *, exc_info=False):
    """Print ``message`` (and the current exception) to stderr, as the webui does."""
    exc = sys.exc_info()[1] if exc_info else None
    reported.append((message, exc))
    print(f"*** {message}", file=sys.stderr)
    if exc is not None:
        traceback.print_exc(file=sys.stderr)


def display(e, task, *, full_traceback=False):
    reported.append((f"Error {task}", e))
    print(f"{task or 'error'}: {type(e).__name__}", file=sys.stderr)
    print(e, file=sys.stderr)


def record_exception():
    exc = sys.exc_info()[1]
    if exc is not None:
        reported.append(("recorded exception", exc))
