"""What the "Pick a checkpoint" section shows, without gradio: the probe table, the grid as
gallery items, the ranking table, the evidence text and the hand-off to the Merge wizard.

Everything here works on the JSON forms the core writes (``Probe.to_dict()``, ``Grid.to_dict()``,
``Ranking.to_dict()``, see :mod:`lib_dbchar.pick`): the section reads ``pick/grid.json`` and
``pick/ranking.json`` back when a run is re-opened, so the same functions serve a fresh result and
a saved one. A core object with ``to_dict()`` is accepted wherever a dict is.
"""

from __future__ import annotations

import html
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: The folder of a run that holds the pick's files (``<run>/pick/``).
PICK_DIR = "pick"
GRID_FILE = "grid.json"
RANKING_FILE = "ranking.json"
#: The key of the source model's column (always the first column of a grid).
SOURCE_KEY = "source"
#: The probe kinds, as :data:`lib_dbchar.pick.probes.PROBE_KINDS` (repeated so this module stays pure).
PROBE_KINDS = ("frontal", "side", "behind", "outfit", "background", "leak", "drift")
#: Tags a new probe of a kind is expected to show when the user adds a row by hand.
DEFAULT_EXPECT: Mapping[str, tuple[str, ...]] = {"side": ("from side",), "behind": ("from behind",)}
PROBE_HEADERS = ("kind", "prompt", "seeds")
RANKING_HEADERS = ("rank", "checkpoint", "step", "score", "pose", "traits", "leak", "drift", "copies", "loss")
#: Which pick a "send" button hands to the Merge wizard: the Ranking field holding its column key.
PICKS = {"recommended": "recommended", "frontal": "frontal"}
RECOMMENDED_MARK = "★"
FRONTAL_MARK = "◆"

_SEED_SPLIT = re.compile(r"[,\s]+")


def as_dict(obj: Any) -> dict[str, Any]:
    """A core result as its JSON dict: ``obj.to_dict()`` when it has one, else ``dict(obj)``."""
    to_dict = getattr(obj, "to_dict", None)
    return to_dict() if callable(to_dict) else dict(obj)


# --- saved results --------------------------------------------------------------------------------


def pick_dir(run_dir: Path) -> Path:
    """The ``pick/`` folder of a run."""
    return Path(run_dir) / PICK_DIR


def _read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object file, None when absent.

    Raises:
        ValueError: naming the file, when it is not a JSON object.
    """
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(
            f"{path} is not valid JSON ({exc}); press Render grid + rank to write it again."
        ) from None
    if not isinstance(data, dict):
        msg = f"{path} does not hold a JSON object; press Render grid + rank to write it again."
        raise ValueError(msg)  # noqa: TRY004 - a user's file, reported like every other bad file
    return data


@dataclass(frozen=True)
class SavedPick:
    """The grid and ranking a run's folder holds (either may be missing).

    Attributes:
        grid: ``pick/grid.json`` as a dict, or None.
        ranking: ``pick/ranking.json`` as a dict, or None.
    """

    grid: dict[str, Any] | None = None
    ranking: dict[str, Any] | None = None


def read_saved(run_dir: Path) -> SavedPick:
    """Read what an earlier "Render grid + rank" left in ``<run>/pick/``.

    Raises:
        ValueError: naming a file that exists but cannot be read.
    """
    folder = pick_dir(run_dir)
    return SavedPick(_read_json(folder / GRID_FILE), _read_json(folder / RANKING_FILE))


# --- the probe table ------------------------------------------------------------------------------


def seeds_text(seeds: Sequence[int]) -> str:
    """Seeds as the table shows them: ``"1234, 5678"``."""
    return ", ".join(str(int(s)) for s in seeds)


def parse_seeds(text: Any, row: int) -> tuple[int, ...]:
    """The seeds typed in a table cell (commas or spaces between them).

    Args:
        text: the cell's value (text, or a number when the table typed it so).
        row: the 1-based row, for the message.

    Raises:
        ValueError: naming the row, when a seed is not a whole number >= 0 or none is given.
    """
    if isinstance(text, int | float) and not isinstance(text, bool):
        text = str(int(text)) if math.isfinite(text) and float(text).is_integer() else str(text)
    parts = [p for p in _SEED_SPLIT.split(str(text or "").strip()) if p]
    if not parts:
        raise ValueError(f"probe row {row}: give at least one seed (e.g. 1234, 5678).")
    seeds = []
    for part in parts:
        if not part.isdigit():
            raise ValueError(f"probe row {row}: seed {part!r} is not a whole number >= 0.")
        seeds.append(int(part))
    return tuple(seeds)


def probe_rows(probes: Sequence[Any]) -> list[list[str]]:
    """The probe table's rows ``[kind, prompt, seeds]`` of a probe set (dicts or Probe objects)."""
    rows = []
    for probe in probes:
        data = as_dict(probe)
        rows.append(
            [str(data.get("kind", "")), str(data.get("prompt", "")), seeds_text(data.get("seeds", ()))]
        )
    return rows


def _cell(row: Sequence[Any], index: int) -> str:
    value = row[index] if index < len(row) else ""
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)


def _unique_id(kind: str, taken: set[str]) -> str:
    candidate, n = kind, 2
    while candidate in taken:
        candidate, n = f"{kind}-{n}", n + 1
    return candidate


def _take_previous(kind: str, prompt: str, pool: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The previous probe an edited row continues: same kind and prompt, else the first of that kind."""
    same_kind = [p for p in pool if p.get("kind") == kind]
    match = next((p for p in same_kind if p.get("prompt") == prompt), same_kind[0] if same_kind else None)
    if match is not None:
        pool.remove(match)
    return match


def probes_from_rows(rows: Sequence[Sequence[Any]], previous: Sequence[Any]) -> list[dict[str, Any]]:
    """Turn the edited table back into probe dicts (``Probe.from_dict`` input).

    A row keeps the id, label, negative prompt and expected tags of the previous probe it continues
    (same kind; same prompt preferred), so editing a prompt re-renders only that probe's cells. A
    new row gets a fresh id from its kind, the set's negative prompt and the kind's usual expected
    tags. Rows with neither a kind nor a prompt are blank rows of the table and are skipped.

    Args:
        rows: the table's rows ``[kind, prompt, seeds]``.
        previous: the probe set the table was filled from (dicts or Probe objects).

    Returns:
        One dict per row: ``id, kind, label, prompt, negative, seeds, expect_tags``.

    Raises:
        ValueError: naming the row, for an unknown kind, an empty prompt or bad seeds; or when no
            probe is left.
    """
    pool = [as_dict(p) for p in previous]
    negative = str(pool[0].get("negative", "")) if pool else ""
    taken: set[str] = set()
    out = []
    for number, row in enumerate(rows, start=1):
        kind, prompt = _cell(row, 0).strip().lower(), _cell(row, 1).strip()
        if not kind and not prompt:
            continue
        if kind not in PROBE_KINDS:
            raise ValueError(f"probe row {number}: kind {kind!r} is not one of {', '.join(PROBE_KINDS)}.")
        if not prompt:
            raise ValueError(f"probe row {number}: the prompt is empty.")
        seeds = parse_seeds(row[2] if len(row) > 2 else "", number)
        base = _take_previous(kind, prompt, pool)
        probe_id = str(base["id"]) if base and base.get("id") and base["id"] not in taken else None
        probe_id = probe_id or _unique_id(kind, taken)
        taken.add(probe_id)
        out.append(
            {
                "id": probe_id,
                "kind": kind,
                "label": str(base.get("label", kind)) if base else kind,
                "prompt": prompt,
                "negative": str(base.get("negative", negative)) if base else negative,
                "seeds": list(seeds),
                "expect_tags": list(base.get("expect_tags", ()))
                if base
                else list(DEFAULT_EXPECT.get(kind, ())),
            }
        )
    if not out:
        msg = "The probe table is empty: add a row, or press Reset probes."
        raise ValueError(msg)
    return out


# --- the grid -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GalleryView:
    """The grid as a gallery: row-major, one gallery row per probe and seed.

    Attributes:
        items: ``(image, caption)`` pairs; the image is a path, or the placeholder's result for a
            cell that has no file (a stopped render); the caption is ``"probe #seed · checkpoint"``.
        columns: gallery columns (one per checkpoint, the source first).
        missing: cells that have no image file.
    """

    items: list[tuple[Any, str]]
    columns: int
    missing: int


def gallery_view(grid: Any, run_dir: Path, placeholder: Callable[[], Any] | None = None) -> GalleryView:
    """Lay out a grid as gallery items: rows = probe x seed (probe order), columns = checkpoints.

    Args:
        grid: ``Grid.to_dict()`` (or the Grid).
        run_dir: the run folder (cell images are relative to its ``pick/``).
        placeholder: makes the image shown for a missing cell; without it the cell's path is used.

    Returns:
        The :class:`GalleryView`; no items for a grid without cells.
    """
    data = as_dict(grid)
    columns = [c for c in data.get("columns", [])]
    cells = {(c["probe_id"], int(c["seed"]), c["column"]): c for c in data.get("cells", [])}
    folder = pick_dir(run_dir)
    items: list[tuple[Any, str]] = []
    missing = 0
    for probe in data.get("probes", []):
        for seed in probe.get("seeds", ()):
            for column in columns:
                cell = cells.get((probe["id"], int(seed), column["key"]))
                path = folder / cell["image"] if cell else None
                caption = f"{probe['id']} #{seed} · {column.get('label') or column['key']}"
                if path is None or not path.is_file():
                    missing += 1
                    items.append((placeholder() if placeholder else str(path or ""), caption))
                else:
                    items.append((str(path), caption))
    return GalleryView(items, max(1, len(columns)), missing)


# --- the ranking ----------------------------------------------------------------------------------


def _number(value: Any, digits: int = 2) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return "—"
    return f"{value:.{digits}f}"


def column_name(column: Mapping[str, Any]) -> str:
    """A ranking column as people find it: the checkpoint's file stem, its label beside it when
    the label says something else (``"neeko_200 (step 200)"``)."""
    key, label = str(column.get("column") or ""), str(column.get("label") or "")
    if not label or label == key:
        return key or label
    return label if label.startswith(key) else f"{key} ({label})"


def checkpoint_label(column: Mapping[str, Any], ranking: Mapping[str, Any]) -> str:
    """A ranking row's checkpoint text with the marks: ★ recommended, ◆ frontal pick, (source)."""
    key = column.get("column")
    text = column_name(column)
    if key == SOURCE_KEY and not text.startswith(SOURCE_KEY):
        text += " (source)"
    if key == ranking.get("recommended"):
        text += f" {RECOMMENDED_MARK} recommended"
    if key == ranking.get("frontal"):
        text += f" {FRONTAL_MARK} frontal pick"
    return text


def ranking_rows(ranking: Any) -> list[list[Any]]:
    """The ranking table's rows, best first, in :data:`RANKING_HEADERS` order.

    The source column is listed (as the baseline) but gets no rank: it is never recommended.
    Scores are shown with 2 decimals, the loss (smoothed when the ranking has it) with 4; a missing
    value shows as "—".
    """
    data = as_dict(ranking)
    rows, rank = [], 0
    for column in data.get("columns", []):
        is_source = column.get("column") == SOURCE_KEY
        if not is_source:
            rank += 1
        rows.append(
            [
                "—" if is_source else rank,
                checkpoint_label(column, data),
                int(column.get("step", 0)),
                _number(column.get("score")),
                _number(column.get("pose")),
                _number(column.get("traits")),
                _number(column.get("leak")),
                _number(column.get("drift")),
                int(column.get("copies", 0) or 0),
                _number(_loss(column), 4),
            ]
        )
    return rows


def ranking_html(ranking: Any) -> str:
    """The ranking as a read-only HTML table: :func:`ranking_rows` with the picks' rows marked.

    A plain table rather than an editable grid widget: nothing in it is meant to be edited, and
    the recommended row gets a class (``dbchar-pick-recommended``) the page highlights. An empty
    string when there is no ranking yet.
    """
    data = as_dict(ranking) if ranking else {}
    if not data.get("columns"):
        return ""
    classes = {
        data.get("recommended"): "dbchar-pick-recommended",
        data.get("frontal"): "dbchar-pick-frontal",
    }
    head = "".join(f"<th>{html.escape(h)}</th>" for h in RANKING_HEADERS)
    body = []
    for column, row in zip(data["columns"], ranking_rows(data), strict=True):
        key = column.get("column")
        marks = [name for pick, name in classes.items() if pick is not None and pick == key]
        if key == SOURCE_KEY:
            marks.append("dbchar-pick-source")
        cells = "".join(f"<td>{html.escape(str(value))}</td>" for value in row)
        css = f' class="{" ".join(marks)}"' if marks else ""
        body.append(f"<tr{css}>{cells}</tr>")
    return (
        '<table class="dbchar-pick-table"><caption>Ranking (best first; the source is the baseline)</caption>'
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
    )


def _loss(column: Mapping[str, Any]) -> Any:
    """The loss shown for a column: the smoothed curve's value when the ranking has it (a single
    step's raw loss is mostly the noise of its random timestep), else the raw one."""
    smoothed = column.get("loss_smoothed")
    return smoothed if smoothed is not None else column.get("loss")


def _column(data: Mapping[str, Any], key: str | None) -> dict[str, Any] | None:
    return next((c for c in data.get("columns", []) if key is not None and c.get("column") == key), None)


def _md(text: Any) -> str:
    """Text safe inside Markdown: the characters that would format it are escaped."""
    return re.sub(r"([\\`*_\[\]<>#|])", r"\\\1", str(text))


def _pick_line(title: str, data: Mapping[str, Any], which: str) -> str:
    column = _column(data, data.get(which))
    reason = (data.get("reasons") or {}).get(which, "")
    if column is None:
        return f"**{title}:** none{f' — {_md(reason)}' if reason else ''}"
    name = _md(column.get("column") or column.get("label"))
    return f"**{title}:** {name} (step {int(column.get('step', 0))}){f' — {_md(reason)}' if reason else ''}"


def evidence_markdown(ranking: Any) -> str:
    """The evidence panel: the two picks with their reasons, the traits looked for, the ranking's
    warnings, then each checkpoint's evidence.

    Args:
        ranking: ``Ranking.to_dict()`` (or the Ranking).

    Returns:
        Markdown; names and evidence lines are escaped (they come from file names and tags).
    """
    data = as_dict(ranking)
    lines = [
        _pick_line(f"{RECOMMENDED_MARK} Recommended", data, "recommended"),
        "",
        _pick_line(f"{FRONTAL_MARK} Frontal pick (overfit for frontal poses)", data, "frontal"),
    ]
    if data.get("traits"):
        lines += ["", f"Traits looked for: {_md(', '.join(data['traits']))}"]
    if data.get("warnings"):
        lines += ["", "**Warnings:**", *[f"- {_md(w)}" for w in data["warnings"]]]
    for column in data.get("columns", []):
        name = _md(column_name(column))
        lines += ["", f"**{name}** — step {int(column.get('step', 0))}, score {_number(column.get('score'))}"]
        lines += [f"- {_md(line)}" for line in column.get("evidence", [])] or ["- no evidence recorded"]
    return "\n".join(lines)


def recommended_step(ranking: Any) -> int | None:
    """The recommended checkpoint's step (highlighted on the chart), None when there is none."""
    data = as_dict(ranking)
    column = _column(data, data.get("recommended"))
    return int(column.get("step", 0)) if column else None


# --- hand-off to the Merge wizard -----------------------------------------------------------------


def handoff(grid: Any, ranking: Any, which: str, run_name: str) -> dict[str, str]:
    """What a "send" button gives the Merge wizard: ``{"checkpoint", "run", "source"}`` (paths).

    Args:
        grid: ``Grid.to_dict()``: the columns' files.
        ranking: ``Ranking.to_dict()``: which column is the pick.
        which: ``"recommended"`` or ``"frontal"`` (see :data:`PICKS`).
        run_name: the run's name.

    Raises:
        ValueError: no such pick in this ranking, or its file is gone (the message says what to do).
    """
    if which not in PICKS:
        raise ValueError(f"unknown pick {which!r}; use one of {', '.join(PICKS)}")
    ranking_data, grid_data = as_dict(ranking), as_dict(grid)
    key = ranking_data.get(PICKS[which])
    if not key:
        reason = (ranking_data.get("reasons") or {}).get(which, "")
        text = f"This ranking has no {which} checkpoint"
        raise ValueError(
            f"{text}{f': {reason}' if reason else '.'} Train longer or edit the probes, then render again."
        )
    paths = {c.get("key"): str(c.get("path", "")) for c in grid_data.get("columns", [])}
    checkpoint = paths.get(key, "")
    if not checkpoint or not Path(checkpoint).is_file():
        raise ValueError(
            f"The {which} checkpoint {key!r} ({checkpoint or 'no path'}) is gone; render the grid again."
        )
    return {"checkpoint": checkpoint, "run": run_name, "source": paths.get(SOURCE_KEY, "")}


def handoff_json(payload: Mapping[str, str]) -> str:
    """The hand-off as the text the hidden ``dbchar-merge-handoff`` box carries."""
    return json.dumps(dict(payload), sort_keys=True)
