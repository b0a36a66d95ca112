"""The demo's HTML report: one section per step with its paths and pictures."""

from __future__ import annotations

import html
import os
from pathlib import Path

from lib_dbchar.paths import atomic_write

__all__ = ["render_report", "write_report"]


def _rel(path: str, base: Path) -> str:
    # Relative links keep the report working when the folder is moved or zipped.
    try:
        return Path(os.path.relpath(path, base)).as_posix()
    except ValueError:  # another drive on Windows
        return Path(path).as_uri()


def _table(rows: list[list[str]]) -> str:
    """A header row and data rows as an HTML table ("" without rows)."""
    if not rows:
        return ""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows[1:])
    return f"<table><tr>{head}</tr>{body}</table>"


def _figure(path: str, base: Path) -> str:
    if not path:
        return ""
    link, name = html.escape(_rel(path, base)), html.escape(Path(path).name)
    return f'<p><a href="{link}"><img class="figure" src="{link}" title="{name}"></a></p>'


def _section(step, base: Path) -> str:
    rows = "".join(
        f'<li><b>{html.escape(role)}</b>: <a href="{html.escape(_rel(p, base))}">{html.escape(p)}</a></li>'
        for role, p in step.paths.items()
    )
    images = "".join(
        f'<img src="{html.escape(_rel(p, base))}" title="{html.escape(Path(p).name)}" width="96">'
        for p in step.images
    )
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in getattr(step, "notes", []))
    return (
        f"<h2>{html.escape(step.name)}</h2><p>{html.escape(step.summary)} ({step.seconds:.1f} s)</p>"
        f"<ul>{rows}</ul>{_table(getattr(step, 'table', []))}{f'<ul>{notes}</ul>' if notes else ''}"
        f"{_figure(getattr(step, 'figure', ''), base)}<div>{images}</div>"
    )


def render_report(result, base: Path) -> str:
    """The report's HTML.

    Args:
        result: a :class:`~lib_dbchar.demo.run.DemoResult`.
        base: the folder the report sits in (links are relative to it).

    Returns:
        A complete HTML document as text.
    """
    skipped = "".join(f"<li>{html.escape(s)}</li>" for s in result.skipped)
    body = "".join(_section(step, base) for step in result.steps)
    return (
        '<!doctype html><html><head><meta charset="utf-8"><title>dbchar demo</title>'
        "<style>body{font-family:sans-serif;max-width:60em;margin:auto}img{margin:2px;image-rendering:pixelated}"
        "img.figure{max-width:100%}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 6px}"
        "</style></head><body><h1>dbchar end-to-end demo</h1>"
        "<p>Tiny random models and a tagger double: the pictures are noise and the ranking is of noise; "
        "the files and folders are real.</p>"
        f"{body}{f'<h2>Not in the demo</h2><ul>{skipped}</ul>' if skipped else ''}</body></html>\n"
    )


def write_report(out: Path, result) -> Path:
    """Write ``out/report.html`` atomically and return its path."""
    return atomic_write(Path(out) / "report.html", render_report(result, Path(out)))
