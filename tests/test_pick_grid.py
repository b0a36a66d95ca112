"""The grid of issue #7: columns of a run, the per-checkpoint cache, stops, the contact sheet, and the
renderer that loads checkpoints into one set of modules (on a real tiny run)."""

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lib_dbchar.checkpoint import CheckpointError
from lib_dbchar.concept import Concept
from lib_dbchar.config import from_dict
from lib_dbchar.errors import JobStopped
from lib_dbchar.jobs import JobContext
from lib_dbchar.pick.grid import (
    SHEET_HEADER,
    SHEET_LABEL_WIDTH,
    Grid,
    PickSettings,
    contact_sheet,
    load_grid,
    render_grid,
    run_columns,
    sheet_size,
)
from lib_dbchar.pick.probes import Probe
from lib_dbchar.train.config import TrainConfig
from lib_dbchar.train.run import CheckpointRecord, RunSpec, save_run_spec, write_checkpoint_records
from lib_dbchar.train.sampling import SampleRequest
from tests.kit.models import torch_threads

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CONCEPT = Concept(instance_token="sks", num_class_images=2)
PROBES = [
    Probe("side", "side", "from the side", "sks, red hair, from side", "lowres", (1, 2), ("from side",)),
    Probe("leak", "leak", "no token", "1girl", "lowres", (1, 2)),
]
ROWS = 4  # 2 probes x 2 seeds
SETTINGS = PickSettings(steps=2, size=64)


# --- a planted run and a renderer double ------------------------------------------------------


class CountingRenderer:
    """Draws a flat colour from the loaded file's bytes and the seed; counts loads and cells."""

    def __init__(self):
        self.loads: list[str] = []
        self.samples: list[tuple[str, str, int]] = []
        self.current: bytes | None = None

    def load(self, checkpoint: Path) -> None:
        data = Path(checkpoint).read_bytes()
        if data == b"broken":
            raise CheckpointError(f"{Path(checkpoint).name}: not a checkpoint")
        self.loads.append(Path(checkpoint).name)
        self.current = data

    def sample(self, request: SampleRequest) -> list[Image.Image]:
        out = []
        for prompt, seed in zip(request.prompts, request.seeds, strict=True):
            self.samples.append((self.loads[-1], prompt, seed))
            digest = hashlib.sha256(self.current + prompt.encode() + bytes([seed])).digest()
            out.append(Image.new("RGB", (request.size, request.size), tuple(digest[:3])))
        return out


def write_checkpoint(path: Path, content: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def plant_run(root: Path, steps=(2, 4)) -> Path:
    """A run folder with run.json and checkpoints.json pointing at small planted files."""
    models = root / "models"
    source = write_checkpoint(models / "source-model.safetensors", b"source")
    spec = RunSpec(root / "project", "run1", TrainConfig(source_checkpoint=str(source)), (CONCEPT,), models)
    save_run_spec(spec)
    records = [
        CheckpointRecord(str(write_checkpoint(models / f"run1_{s}.safetensors", f"ckpt{s}".encode())), s, s)
        for s in steps
    ]
    # Saved out of order: columns are sorted by step.
    write_checkpoint_records(spec.run_dir / "checkpoints.json", list(reversed(records)))
    return spec.run_dir


def add_checkpoint(run_dir: Path, step: int, content: bytes) -> Path:
    record_file = run_dir / "checkpoints.json"
    records = [CheckpointRecord(**r) for r in json.loads(record_file.read_text(encoding="utf-8"))]
    models = Path(records[0].path).parent
    path = write_checkpoint(models / f"run1_{step}.safetensors", content)
    write_checkpoint_records(record_file, [*records, CheckpointRecord(str(path), step, step)])
    return path


def grid_of(run_dir, renderer, ctx=None, probes=PROBES):
    return render_grid(run_dir, probes, run_columns(run_dir), SETTINGS, ctx, renderer=renderer)


# --- columns -----------------------------------------------------------------------------------


def test_columns_source_first_then_by_step_and_missing_files_warned(tmp_path):
    run = plant_run(tmp_path, steps=(2, 4, 6))
    (tmp_path / "models" / "run1_4.safetensors").unlink()
    warnings = []
    columns = run_columns(run, warnings=warnings)
    assert [(c.key, c.step, c.label) for c in columns] == [
        ("source", 0, "source (source-model.safetensors)"),
        ("run1_2", 2, "step 2"),
        ("run1_6", 6, "step 6"),
    ]
    assert len(warnings) == 1
    assert "run1_4.safetensors" in warnings[0]
    assert "missing" in warnings[0]


# --- the cache ---------------------------------------------------------------------------------


def test_second_render_draws_nothing_and_grid_json_round_trips(tmp_path):
    run = plant_run(tmp_path)
    first = CountingRenderer()
    grid = grid_of(run, first)
    assert (grid.rendered, grid.cached) == (3 * ROWS, 0)
    assert first.loads == ["source-model.safetensors", "run1_2.safetensors", "run1_4.safetensors"]
    assert len(grid.cells) == 3 * ROWS
    cell = grid.cell("side", "run1_2", 2)
    assert cell.image == "cells/run1_2/side-2.png"
    image = Image.open(grid.image_path(cell))
    assert "sks, red hair, from side" in image.text["parameters"]
    assert "Seed: 2" in image.text["parameters"]
    index = json.loads((run / "pick" / "cells" / "run1_2" / "cells.json").read_text(encoding="utf-8"))
    assert index == {f"{p.id}-{s}": grid.cell(p.id, "run1_2", s).fingerprint for p in PROBES for s in p.seeds}

    second = CountingRenderer()
    again = grid_of(run, second)
    assert (again.rendered, again.cached) == (0, 3 * ROWS)
    assert second.loads == [] and second.samples == []
    assert again.cells == grid.cells
    assert load_grid(run).to_dict() == again.to_dict()
    assert Grid.from_dict(again.to_dict()) == again


def test_adding_a_checkpoint_draws_only_its_column(tmp_path):
    run = plant_run(tmp_path)
    grid_of(run, CountingRenderer())
    add_checkpoint(run, 8, b"ckpt8")
    renderer = CountingRenderer()
    grid = grid_of(run, renderer)
    assert renderer.loads == ["run1_8.safetensors"]
    assert {s[0] for s in renderer.samples} == {"run1_8.safetensors"}
    assert (grid.rendered, grid.cached) == (ROWS, 3 * ROWS)
    assert [c.key for c in grid.columns] == ["source", "run1_2", "run1_4", "run1_8"]


def test_rewriting_a_checkpoint_draws_its_column_again(tmp_path):
    run = plant_run(tmp_path)
    before = grid_of(run, CountingRenderer())
    path = tmp_path / "models" / "run1_2.safetensors"
    old = np.asarray(Image.open(before.image_path(before.cell("side", "run1_2", 1))))
    stat = path.stat()
    path.write_bytes(b"ckpt2-retrained")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # coarse file system clocks
    renderer = CountingRenderer()
    after = grid_of(run, renderer)
    assert renderer.loads == ["run1_2.safetensors"]
    assert after.rendered == ROWS
    new = np.asarray(Image.open(after.image_path(after.cell("side", "run1_2", 1))))
    assert not np.array_equal(old, new)


def test_editing_a_probe_draws_only_its_rows(tmp_path):
    run = plant_run(tmp_path)
    grid_of(run, CountingRenderer())
    edited = [PROBES[0], Probe("leak", "leak", "no token", "1girl, solo", "lowres", (1, 2))]
    renderer = CountingRenderer()
    grid = grid_of(run, renderer, probes=edited)
    assert grid.rendered == 3 * 2
    assert {s[1] for s in renderer.samples} == {"1girl, solo"}


def test_a_stop_mid_grid_keeps_finished_cells(tmp_path):
    run = plant_run(tmp_path)
    reports = []
    # Stop once the first column and one cell of the second are done.
    ctx = JobContext(progress=reports.append, should_stop=lambda: len(reports) >= ROWS + 1)
    with pytest.raises(JobStopped, match=r"after 5 of 12 cells.*kept"):
        grid_of(run, CountingRenderer(), ctx)
    assert [r.done for r in reports] == [1, 2, 3, 4, 5]
    assert reports[-1].total == 3 * ROWS
    cells = run / "pick" / "cells"
    assert len(json.loads((cells / "source" / "cells.json").read_text(encoding="utf-8"))) == ROWS
    assert len(json.loads((cells / "run1_2" / "cells.json").read_text(encoding="utf-8"))) == 1
    assert not (run / "pick" / "grid.json").exists()
    renderer = CountingRenderer()
    grid = grid_of(run, renderer)
    assert (grid.rendered, grid.cached) == (3 * ROWS - 5, 5)
    assert renderer.loads == ["run1_2.safetensors", "run1_4.safetensors"]


def test_an_unreadable_checkpoint_is_left_out_and_the_rest_drawn(tmp_path):
    run = plant_run(tmp_path)
    (tmp_path / "models" / "run1_2.safetensors").write_bytes(b"broken")
    reports = []
    grid = grid_of(run, CountingRenderer(), JobContext(progress=reports.append))
    assert [c.key for c in grid.columns] == ["source", "run1_4"]
    assert len(grid.warnings) == 1
    assert "run1_2.safetensors" in grid.warnings[0]
    assert "not a checkpoint" in grid.warnings[0]
    assert (grid.rendered, grid.cached) == (2 * ROWS, 0)
    assert reports[-1].done == reports[-1].total == 3 * ROWS
    # Fixed (retrained) later: only its column is drawn.
    (tmp_path / "models" / "run1_2.safetensors").write_bytes(b"ckpt2")
    fixed = grid_of(run, CountingRenderer())
    assert (fixed.rendered, fixed.cached, fixed.warnings) == (ROWS, 2 * ROWS, [])


# --- settings, files, sheet --------------------------------------------------------------------


def test_settings_are_validated_by_field(tmp_path):
    with pytest.raises(ValueError, match=r"PickSettings\.scheduler"):
        from_dict(PickSettings, {"scheduler": "heun"})
    with pytest.raises(ValueError, match=r"PickSettings\.size .*multiple of 8"):
        PickSettings(size=100)
    run = plant_run(tmp_path)
    with pytest.raises(ValueError, match=r"PickSettings\.steps"):
        render_grid(run, PROBES, run_columns(run), PickSettings(steps=0), renderer=CountingRenderer())
    with pytest.raises(ValueError, match="used twice"):
        render_grid(run, [PROBES[0], PROBES[0]], run_columns(run), SETTINGS, renderer=CountingRenderer())
    with pytest.raises(ValueError, match="no checkpoint"):
        render_grid(run, PROBES, [], SETTINGS, renderer=CountingRenderer())


def test_damaged_grid_json_names_the_file(tmp_path):
    assert load_grid(tmp_path) is None
    (tmp_path / "pick").mkdir()
    (tmp_path / "pick" / "grid.json").write_text('{"run_dir": "x"}', encoding="utf-8")
    with pytest.raises(ValueError, match=r"grid\.json is damaged .*render the grid again"):
        load_grid(tmp_path)


def test_contact_sheet_is_rows_by_columns_with_cells_in_place(tmp_path):
    run = plant_run(tmp_path)
    grid = grid_of(run, CountingRenderer())
    sheet = Image.open(run / "pick" / "grid.png")
    assert sheet.size == sheet_size(ROWS, 3, 128) == (SHEET_LABEL_WIDTH + 3 * 128, SHEET_HEADER + ROWS * 128)
    # Row 3 = leak seed 1, column 2 = run1_2: its centre pixel is that cell's colour.
    cell = Image.open(grid.image_path(grid.cell("leak", "run1_2", 1)))
    x, y = SHEET_LABEL_WIDTH + 1 * 128 + 64, SHEET_HEADER + 2 * 128 + 64
    assert sheet.getpixel((x, y)) == cell.getpixel((0, 0))
    small = contact_sheet(grid, cell_size=32)
    assert small.size == sheet_size(ROWS, 3, 32)
    grid.cells = [c for c in grid.cells if c.column != "run1_4"]
    grey = contact_sheet(grid, cell_size=32)
    assert grey.getpixel((SHEET_LABEL_WIDTH + 2 * 32 + 16, SHEET_HEADER + 16)) == (200, 200, 200)


# --- the real renderer on a real tiny run ------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(tiny_sd1, tmp_path_factory):
    """A real training run of the tiny SD1 model with two checkpoints (steps 2 and 4)."""
    from lib_dbchar.train.loop import train

    root = tmp_path_factory.mktemp("pick-run")
    rng = np.random.default_rng(0)
    (root / "dataset").mkdir()
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(
            root / "dataset" / f"p{i}.png"
        )
        (root / "dataset" / f"p{i}.txt").write_text("1girl, sks, red hair", encoding="utf-8")
    config = TrainConfig(
        source_checkpoint=str(tiny_sd1.single_file),
        epochs=2,
        max_steps=0,
        save_every_epochs=1,
        preview_every_epochs=0,
        resolution=64,
        mixed_precision="no",
        learning_rate=1e-2,
        class_steps=2,
        use_8bit_adam=False,
    )
    spec = RunSpec(root, "run1", config, (CONCEPT,), root / "models", model_config_dir=tiny_sd1.diffusers_dir)
    with torch_threads(1):  # module-scoped: runs before any test's own fixtures
        result = train(spec)
    assert len(result.checkpoints) == 2
    return spec.run_dir


@pytest.mark.slow
def test_renderer_is_deterministic_and_tells_checkpoints_apart(tiny_run):
    from lib_dbchar.pick.render import open_renderer

    columns = run_columns(tiny_run)
    request = SampleRequest(("sks, red hair, from side",), ("lowres",), (1234,), 2, 7.0, 64)
    with open_renderer(model_folder=tiny_run / "working", checkpoint=Path(columns[1].path)) as renderer:
        first = np.asarray(renderer.sample(request)[0])
        assert first.shape == (64, 64, 3)
        assert np.array_equal(first, np.asarray(renderer.sample(request)[0]))
        renderer.load(Path(columns[2].path))
        other = np.asarray(renderer.sample(request)[0])
        assert not np.array_equal(first, other)
        renderer.load(Path(columns[1].path))
        assert np.array_equal(first, np.asarray(renderer.sample(request)[0]))
        renderer.load(Path(columns[0].path))
        assert not np.array_equal(first, np.asarray(renderer.sample(request)[0]))


@pytest.mark.slow
def test_renderer_refuses_what_does_not_fit(tiny_run, tiny_sd2):
    from lib_dbchar.pick.render import open_renderer

    with pytest.raises(ValueError, match="model_folder"):
        open_renderer()
    with pytest.raises(FileNotFoundError, match="not a diffusers model folder"):
        open_renderer(model_folder=tiny_run / "samples")
    with open_renderer(model_folder=tiny_run / "working") as renderer:
        with pytest.raises(RuntimeError, match="load"):
            renderer.sample(SampleRequest(("x",), ("",), (1,), 1, 7.0, 64))
        with pytest.raises(CheckpointError, match=r"tiny-sd2\.safetensors"):
            renderer.load(tiny_sd2.single_file)


@pytest.mark.slow
def test_render_grid_on_a_real_run_opens_the_run_renderer(tiny_run):
    reports = []
    probes = [PROBES[0].__class__("side", "side", "", "sks, red hair, from side", "lowres", (7,))]
    grid = render_grid(tiny_run, probes, run_columns(tiny_run), SETTINGS, JobContext(progress=reports.append))
    assert (grid.rendered, len(grid.columns)) == (3, 3)
    assert all(r.image is not None for r in reports)
    pixels = [np.asarray(Image.open(grid.image_path(c))) for c in grid.cells]
    assert pixels[0].shape == (64, 64, 3)
    assert not np.array_equal(pixels[0], pixels[2])
    assert "Model: run1_4" in Image.open(grid.image_path(grid.cells[2])).text["parameters"]
    again = render_grid(tiny_run, probes, run_columns(tiny_run), SETTINGS)
    assert (again.rendered, again.cached) == (0, 3)


def test_buffers_outside_the_state_dict_are_filled_or_refused():
    import torch

    from lib_dbchar.pick.render import _fill_unsaved_buffers

    module = torch.nn.Module()
    module.register_buffer("position_ids", torch.full((1, 5), -7), persistent=False)
    module.register_buffer("kept", torch.zeros(2))
    _fill_unsaved_buffers(module)
    assert module.position_ids.tolist() == [[0, 1, 2, 3, 4]]
    module.register_buffer("scale", torch.zeros(2), persistent=False)
    with pytest.raises(RuntimeError, match=r"Module\.scale: a buffer the renderer cannot fill"):
        _fill_unsaved_buffers(module)
