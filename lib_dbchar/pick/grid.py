"""The overfitting-test grid: every probe drawn by the source model and by every checkpoint of a run.

Rows are probe x seed, columns are checkpoints: ``source`` (the run's source model) first, then
the run's checkpoints by step. Each cell is a PNG in ``<run>/pick/cells/<column>/<probe>-<seed>.png``
with the webui's ``parameters`` text, and each column folder has a ``cells.json``: cell name ->
fingerprint. The fingerprint covers the checkpoint file (resolved path, size, modification time),
the prompt, negative prompt, seed and the render settings, so

* an unchanged checkpoint is never drawn again (a second render draws nothing),
* adding a checkpoint draws only its column,
* a rewritten checkpoint (or an edited probe, other settings) draws its cells again,
* a stop keeps every finished cell: ``cells.json`` is written after each one.

The grid is saved as ``pick/grid.json`` (:class:`Grid`) and as a labelled contact sheet
``pick/grid.png``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from lib_dbchar.checkpoint import CheckpointError, UnsupportedCheckpoint
from lib_dbchar.config import from_dict, setting, to_dict
from lib_dbchar.errors import JobStopped
from lib_dbchar.jobs import JobContext
from lib_dbchar.paths import atomic_write, atomic_writer, safe_name
from lib_dbchar.pick.probes import PICK_DIR, Probe, check_probe_set
from lib_dbchar.train.config import SCHEDULERS
from lib_dbchar.train.run import RunFolders, load_run_spec, read_checkpoint_records
from lib_dbchar.train.sampling import SampleRequest, png_parameters, save_png

log = logging.getLogger(__name__)

SOURCE_KEY = "source"
CELLS_DIR = "cells"
CELLS_INDEX = "cells.json"
GRID_FILE = "grid.json"
SHEET_FILE = "grid.png"
GRID_VERSION = 1
# Contact sheet layout: a header row for column labels, a left margin for row labels.
SHEET_HEADER = 20
SHEET_LABEL_WIDTH = 140
_SHEET_BACKGROUND = (255, 255, 255)
_MISSING_CELL = (200, 200, 200)


@dataclass(frozen=True)
class PickSettings:
    """How the grid's cells are drawn (part of every cell's fingerprint)."""

    steps: int = setting(
        20,
        label="Sampling steps",
        help="Steps per cell. More is slower; 20 is enough to judge poses and traits.",
        minimum=1,
        maximum=150,
    )
    cfg: float = setting(
        7.0,
        label="CFG scale",
        help="How closely each cell follows its prompt.",
        minimum=1.0,
        maximum=30.0,
    )
    size: int = setting(
        512,
        label="Size",
        help="Width = height of a cell in pixels (a multiple of 8); the size the model was trained at.",
        minimum=64,
        maximum=1024,
        step=8,
    )
    scheduler: str = setting(
        "ddim",
        label="Sampler",
        help="The sampler of every cell (the training previews' default is ddim).",
        choices=SCHEDULERS,
    )

    def __post_init__(self) -> None:
        if isinstance(self.size, int) and self.size % 8:
            raise ValueError(f"PickSettings.size (Size): {self.size} is not a multiple of 8")


def check_settings(settings: PickSettings) -> PickSettings:
    """``settings`` validated field by field (ranges, choices).

    Raises:
        ValueError: naming the field.
    """
    return from_dict(PickSettings, to_dict(settings))


@dataclass(frozen=True)
class GridColumn:
    """One checkpoint of the grid.

    Attributes:
        key: ``"source"`` or the checkpoint file's stem (``<run>_<step>``); names its cell folder.
        label: column header (``"source (model.safetensors)"``, ``"step 400"``).
        path: the single-file checkpoint.
        step: training steps behind it (0 for the source).
    """

    key: str
    label: str
    path: str
    step: int


@dataclass(frozen=True)
class GridCell:
    """One drawn cell.

    Attributes:
        probe_id: the probe (row group).
        column: the column key.
        seed: the seed (row within the group).
        image: the PNG, relative to ``<run>/pick/``.
        fingerprint: what it was drawn from (see the module docstring).
    """

    probe_id: str
    column: str
    seed: int
    image: str
    fingerprint: str


@dataclass
class Grid:
    """A rendered grid (JSON through :meth:`to_dict`).

    Attributes:
        run_dir: the run folder.
        probes: the rows (probe x seed).
        columns: source first, then checkpoints by step.
        cells: every cell drawn or found in the cache, column by column.
        settings: the :class:`PickSettings` as a dict.
        rendered: cells drawn by this call.
        cached: cells taken from the cache.
        warnings: columns left out, with why (unreadable or missing checkpoints).
    """

    run_dir: str
    probes: list[Probe]
    columns: list[GridColumn]
    cells: list[GridCell]
    settings: dict[str, Any]
    rendered: int = 0
    cached: int = 0
    warnings: list[str] = field(default_factory=list)

    def cells_of(self, column_key: str) -> list[GridCell]:
        """The cells of one column, in row order."""
        return [c for c in self.cells if c.column == column_key]

    def cell(self, probe_id: str, column_key: str, seed: int) -> GridCell | None:
        """One cell, or ``None`` when it was not drawn."""
        for c in self.cells:
            if (c.probe_id, c.column, c.seed) == (probe_id, column_key, seed):
                return c
        return None

    def image_path(self, cell: GridCell) -> Path:
        """The absolute path of a cell's PNG."""
        return Path(self.run_dir) / PICK_DIR / cell.image

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": GRID_VERSION,
            "run_dir": self.run_dir,
            "probes": [p.to_dict() for p in self.probes],
            "columns": [asdict(c) for c in self.columns],
            "cells": [asdict(c) for c in self.cells],
            "settings": dict(self.settings),
            "rendered": self.rendered,
            "cached": self.cached,
            "warnings": list(self.warnings),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Grid:
        """Rebuild a grid saved by :meth:`to_dict`.

        Raises:
            ValueError: a missing or malformed field (named).
        """
        try:
            return cls(
                run_dir=str(data["run_dir"]),
                probes=[Probe.from_dict(p) for p in data["probes"]],
                columns=[GridColumn(**c) for c in data["columns"]],
                cells=[GridCell(**c) for c in data["cells"]],
                settings=dict(data.get("settings", {})),
                rendered=int(data.get("rendered", 0)),
                cached=int(data.get("cached", 0)),
                warnings=[str(w) for w in data.get("warnings", [])],
            )
        except KeyError as exc:
            raise ValueError(f"grid: missing {exc.args[0]!r}") from None
        except TypeError as exc:
            raise ValueError(f"grid: malformed column or cell ({exc})") from None


# --- columns -----------------------------------------------------------------------------------


def _column_key(path: Path) -> str:
    key = safe_name(path.stem, what="checkpoint name")
    # A checkpoint called "source" must not share the source model's folder.
    return f"{key}-checkpoint" if key == SOURCE_KEY else key


def _skip(warnings: list[str] | None, message: str) -> None:
    log.warning(message)
    if warnings is not None:
        warnings.append(message)


def run_columns(run_dir: Path, *, warnings: list[str] | None = None) -> list[GridColumn]:
    """The columns of a run: its source checkpoint, then every saved checkpoint by step.

    Args:
        run_dir: the run folder (``run.json``, ``checkpoints.json``).
        warnings: a list that receives one message per file left out (also logged).

    Returns:
        The columns; files that no longer exist are left out (not an error: a user may delete
        checkpoints they do not want).

    Raises:
        FileNotFoundError, ValueError: no or a bad ``run.json`` (naming the file).
    """
    spec = load_run_spec(run_dir)
    columns = []
    source = Path(spec.config.source_checkpoint)
    if source.is_file():
        columns.append(GridColumn(SOURCE_KEY, f"source ({source.name})", str(source), 0))
    else:
        _skip(warnings, f"{source}: the run's source model is missing; the grid has no source column.")
    records = read_checkpoint_records(RunFolders(Path(run_dir)).checkpoints_record)
    latest = {Path(r.path).resolve(): r for r in records}  # a resumed run may record a file twice
    for record in sorted(latest.values(), key=lambda r: r.step):
        path = Path(record.path)
        if not path.is_file():
            _skip(warnings, f"{path}: listed in checkpoints.json but missing (moved or deleted?); left out.")
            continue
        columns.append(GridColumn(_column_key(path), f"step {record.step}", str(path), record.step))
    return columns


# --- fingerprints and the per-column cache -----------------------------------------------------


def fingerprint(checkpoint: Path, probe: Probe, seed: int, settings: PickSettings) -> str:
    """What a cell is drawn from, as 16 hex digits of a SHA-256.

    Args:
        checkpoint: the column's file (its resolved path, size and ``mtime_ns`` count).
        probe: the probe (prompt and negative count; label and id do not).
        seed: the cell's seed.
        settings: the render settings.

    Raises:
        FileNotFoundError: the checkpoint does not exist.
    """
    path = Path(checkpoint).resolve()
    stat = path.stat()
    payload = [str(path), stat.st_size, stat.st_mtime_ns, probe.prompt, probe.negative, int(seed)]
    payload.append(to_dict(settings))
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8"))
    return digest.hexdigest()[:16]


def cell_name(probe_id: str, seed: int) -> str:
    """``"<probe id>-<seed>"``: the cell's key in ``cells.json`` and its file stem."""
    return f"{probe_id}-{seed}"


def _read_index(path: Path) -> dict[str, str]:
    """A column's ``cells.json``; a damaged one only costs a redraw, so it counts as empty."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        log.warning("%s is unreadable (%s); its cells will be drawn again", path, exc)
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def _write_index(path: Path, index: dict[str, str]) -> None:
    atomic_write(path, json.dumps(index, indent=1, sort_keys=True) + "\n")


# --- rendering ---------------------------------------------------------------------------------


class RendererLike(Protocol):
    """What :func:`render_grid` needs of a renderer (:class:`~lib_dbchar.pick.render.Renderer`)."""

    def load(self, checkpoint: Path) -> None: ...

    def sample(self, request: SampleRequest) -> list[Any]: ...


@dataclass
class _Planned:
    probe: Probe
    seed: int
    name: str
    fingerprint: str
    image: Path
    cached: bool


@dataclass
class _Progress:
    """Counts shared by the columns of one :func:`render_grid` call."""

    total: int
    done: int = 0
    rendered: int = 0
    cached: int = 0


def _plan_column(
    pick_dir: Path, column: GridColumn, probes: Sequence[Probe], settings: PickSettings
) -> tuple[Path, dict[str, str], list[_Planned]]:
    """The column's cell folder, its ``cells.json`` and every cell with whether the cache holds it."""
    folder = pick_dir / CELLS_DIR / column.key
    index = _read_index(folder / CELLS_INDEX)
    planned = []
    for probe in probes:
        for seed in probe.seeds:
            name = cell_name(probe.id, seed)
            stamp = fingerprint(Path(column.path), probe, seed, settings)
            image = folder / f"{name}.png"
            planned.append(
                _Planned(probe, seed, name, stamp, image, index.get(name) == stamp and image.is_file())
            )
    return folder, index, planned


def _grid_cell(pick_dir: Path, column: GridColumn, planned: _Planned) -> GridCell:
    image = planned.image.relative_to(pick_dir).as_posix()
    return GridCell(planned.probe.id, column.key, planned.seed, image, planned.fingerprint)


def _draw(renderer: RendererLike, planned: _Planned, column: GridColumn, settings: PickSettings) -> Any:
    probe, seed = planned.probe, planned.seed
    request = SampleRequest(
        (probe.prompt,), (probe.negative,), (seed,), settings.steps, settings.cfg, settings.size
    )
    image = renderer.sample(request)[0]
    parameters = png_parameters(
        probe.prompt,
        probe.negative,
        steps=settings.steps,
        sampler=settings.scheduler,
        cfg=settings.cfg,
        seed=seed,
        size=settings.size,
        extra=f"Model: {Path(column.path).stem}, dbchar probe: {probe.id}",
    )
    save_png(planned.image, image, parameters)
    return image


def _render_column(
    pick_dir: Path,
    column: GridColumn,
    *,
    probes: Sequence[Probe],
    settings: PickSettings,
    get_renderer: Callable[[], RendererLike],
    ctx: JobContext,
    counts: _Progress,
) -> list[GridCell]:
    """Draw the missing cells of one column; returns its cells (cached and new).

    Raises:
        JobStopped: between cells; every finished cell is in ``cells.json``.
        FileNotFoundError, CheckpointError, UnsupportedCheckpoint: the column's file cannot be loaded.
    """
    folder, index, planned = _plan_column(pick_dir, column, probes, settings)
    cells = []
    loaded = False
    for item in planned:
        text = f"{column.label}: {item.probe.id}, seed {item.seed}"
        image = None
        if item.cached:
            counts.cached += 1
        else:
            ctx.check_stop("grid")
            if not loaded:
                # Loading costs a whole checkpoint read: only for columns with something to draw.
                get_renderer().load(Path(column.path))
                loaded = True
            image = _draw(get_renderer(), item, column, settings)
            index[item.name] = item.fingerprint
            _write_index(folder / CELLS_INDEX, index)
            counts.rendered += 1
        counts.done += 1
        ctx.report(counts.done, counts.total, text, image)
        cells.append(_grid_cell(pick_dir, column, item))
    return cells


def _half_dtype(mixed_precision: str, device: str) -> Any:
    """The run's half precision on a GPU (as its previews were drawn); float32 on the CPU."""
    if not str(device).startswith("cuda"):
        return None
    import torch

    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mixed_precision)


def _renderer_factory(run_dir: Path, columns: Sequence[GridColumn], settings: PickSettings, device: str):
    """A function opening the run's renderer on first use, and one closing it if it was opened."""
    opened: list[Any] = []

    def get() -> Any:
        if not opened:
            from lib_dbchar.pick.render import open_renderer

            folders = RunFolders(Path(run_dir))
            spec = load_run_spec(run_dir) if (Path(run_dir) / "run.json").is_file() else None
            working = folders.working if (folders.working / "source.json").is_file() else None
            opened.append(
                open_renderer(
                    # The run's working folder describes its model (configs, tokenizer) exactly.
                    model_folder=working,
                    checkpoint=None if working else Path(columns[0].path),
                    device=device,
                    dtype=_half_dtype(spec.config.mixed_precision if spec else "no", device),
                    scheduler=settings.scheduler,
                    clip_skip=spec.config.clip_skip if spec else 1,
                )
            )
        return opened[0]

    def close() -> None:
        for renderer in opened:
            renderer.close()

    return get, close


def render_grid(
    run_dir: Path,
    probes: Sequence[Probe],
    columns: Sequence[GridColumn],
    settings: PickSettings,
    ctx: JobContext | None = None,
    *,
    device: str = "cpu",
    renderer: RendererLike | None = None,
) -> Grid:
    """Draw every cell not in the cache, then write ``grid.json`` and the contact sheet.

    Args:
        run_dir: the run folder; everything goes into its ``pick/``.
        probes: the rows (ids unique).
        columns: the checkpoints (:func:`run_columns`); the source first.
        settings: the render settings.
        ctx: one progress unit per cell (cached ones too; drawn ones carry the image); stop is
            checked before each drawn cell.
        device: where a renderer opened here runs.
        renderer: draw with this (a :class:`~lib_dbchar.pick.render.Renderer` opened with
            ``settings.scheduler``); default: one opened from the run's ``working/`` folder, or
            from the first column's file, on the first cell to draw.

    Returns:
        The :class:`Grid`; a column whose checkpoint cannot be loaded is left out with a warning
        (the other columns go on).

    Raises:
        ValueError: invalid settings, no probes or repeated ids, no columns (naming the field).
        JobStopped: the user stopped; finished cells stay cached (the next call goes on from there).
    """
    ctx = ctx or JobContext()
    settings = check_settings(settings)
    check_probe_set(probes)
    if not columns:
        msg = "columns: the run has no checkpoint to draw yet; train it (or check its checkpoints folder)"
        raise ValueError(msg)
    run_dir = Path(run_dir)
    pick_dir = run_dir / PICK_DIR
    per_column = sum(len(p.seeds) for p in probes)
    counts = _Progress(total=len(columns) * per_column)
    if renderer is not None:
        get_renderer, close = (lambda: renderer), (lambda: None)
    else:
        get_renderer, close = _renderer_factory(run_dir, columns, settings, device)
    cells: list[GridCell] = []
    kept: list[GridColumn] = []
    warnings: list[str] = []
    try:
        for column in columns:
            before = replace(counts)
            try:
                cells += _render_column(
                    pick_dir,
                    column,
                    probes=probes,
                    settings=settings,
                    get_renderer=get_renderer,
                    ctx=ctx,
                    counts=counts,
                )
                kept.append(column)
            except (FileNotFoundError, CheckpointError, UnsupportedCheckpoint) as exc:
                # One bad file must not cost the user the other columns.
                _skip(warnings, f"{column.label} ({column.path}) left out: {exc}")
                # Its cells count as done (progress moves on) but neither drawn nor cached.
                counts.done = before.done + per_column
                counts.cached = before.cached
    except JobStopped:
        raise JobStopped(
            f"grid stopped by the user after {counts.done} of {counts.total} cells; the finished cells "
            "are kept and will not be drawn again"
        ) from None
    finally:
        close()
    grid = Grid(
        str(run_dir), list(probes), kept, cells, to_dict(settings), counts.rendered, counts.cached, warnings
    )
    atomic_write(pick_dir / GRID_FILE, json.dumps(grid.to_dict(), indent=1, ensure_ascii=False) + "\n")
    sheet = contact_sheet(grid)
    with atomic_writer(pick_dir / SHEET_FILE, "wb") as handle:
        sheet.save(handle, format="PNG")
    return grid


def load_grid(run_dir: Path) -> Grid | None:
    """The grid last rendered for a run, or ``None`` when there is none.

    Raises:
        ValueError: ``grid.json`` is damaged (naming it; rendering again rewrites it).
    """
    path = Path(run_dir) / PICK_DIR / GRID_FILE
    if not path.is_file():
        return None
    try:
        return Grid.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError) as exc:
        raise ValueError(f"{path} is damaged ({exc}); render the grid again to rewrite it.") from None


# --- contact sheet -----------------------------------------------------------------------------


def sheet_size(rows: int, columns: int, cell_size: int) -> tuple[int, int]:
    """(width, height) of a contact sheet: label margin + columns x cell, header + rows x cell."""
    return SHEET_LABEL_WIDTH + columns * cell_size, SHEET_HEADER + rows * cell_size


def _fit(text: str, width: int, char_width: int = 6) -> str:
    """Cut a label to what fits ``width`` pixels in the default bitmap font."""
    room = max(1, width // char_width)
    return text if len(text) <= room else text[: max(1, room - 1)] + "~"


def _cell_image(grid: Grid, cell: GridCell | None, cell_size: int) -> Any:
    from PIL import Image, UnidentifiedImageError

    if cell is not None:
        path = grid.image_path(cell)
        try:
            with Image.open(path) as image:
                return image.convert("RGB").resize((cell_size, cell_size), Image.LANCZOS)
        except (OSError, UnidentifiedImageError) as exc:
            log.warning("%s cannot be read (%s); shown as a grey cell", path, exc)
    return Image.new("RGB", (cell_size, cell_size), _MISSING_CELL)


def contact_sheet(grid: Grid, cell_size: int = 128) -> Any:
    """One labelled picture of the whole grid.

    Args:
        grid: the grid.
        cell_size: pixels per cell side.

    Returns:
        A PIL RGB image of :func:`sheet_size` (rows = probe x seed, columns = checkpoints); cells
        not drawn are grey.
    """
    from PIL import Image, ImageDraw

    rows = [(probe, seed) for probe in grid.probes for seed in probe.seeds]
    sheet = Image.new("RGB", sheet_size(len(rows), len(grid.columns), cell_size), _SHEET_BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    for c, column in enumerate(grid.columns):
        x = SHEET_LABEL_WIDTH + c * cell_size
        draw.text((x + 4, 4), _fit(column.label, cell_size - 8), fill=(0, 0, 0))
    for r, (probe, seed) in enumerate(rows):
        y = SHEET_HEADER + r * cell_size
        draw.text((4, y + 4), _fit(probe.id, SHEET_LABEL_WIDTH - 8), fill=(0, 0, 0))
        draw.text((4, y + 18), f"seed {seed}", fill=(90, 90, 90))
        if probe.expect_tags:  # what the row asks for: "kimono", "beach", ...
            draw.text(
                (4, y + 32), _fit(", ".join(probe.expect_tags), SHEET_LABEL_WIDTH - 8), fill=(90, 90, 90)
            )
        for c, column in enumerate(grid.columns):
            image = _cell_image(grid, grid.cell(probe.id, column.key, seed), cell_size)
            sheet.paste(image, (SHEET_LABEL_WIDTH + c * cell_size, y))
    return sheet
