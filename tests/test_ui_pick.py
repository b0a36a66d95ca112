"""The "Pick a checkpoint" section: pure helpers, chart markers, handlers called as gradio calls them.

The handlers run on a planted run folder (run.json, checkpoints.json, a loss log, cell PNGs and
the grid/ranking JSON the core writes); the render job's core call is replaced by a stand-in that
writes the same files, so these tests need neither a model nor a tagger.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lib_dbchar.ui import pick_logic
from lib_dbchar.ui.pick_logic import (
    SavedPick,
    evidence_markdown,
    gallery_view,
    handoff,
    handoff_json,
    parse_seeds,
    probe_rows,
    probes_from_rows,
    ranking_rows,
    read_saved,
)
from lib_dbchar.ui.train_chart import HEIGHT, HIGHLIGHT, MARKER, loss_chart

pytestmark = pytest.mark.filterwarnings("ignore:\\s*on_event is deprecated:DeprecationWarning")

PROBES = [
    {
        "id": "frontal",
        "kind": "frontal",
        "label": "as the dataset shows it",
        "prompt": "sks, 1girl, red hair",
        "negative": "lowres",
        "seeds": [1, 2],
        "expect_tags": [],
    },
    {
        "id": "side-view",
        "kind": "side",
        "label": "from the side (not in the dataset)",
        "prompt": "sks, 1girl, red hair, from side",
        "negative": "lowres",
        "seeds": [1],
        "expect_tags": ["from side"],
    },
]


# -- the probe table ----------------------------------------------------------------------------------
def test_probe_rows_round_trip_keeps_ids_and_hidden_fields():
    rows = probe_rows(PROBES)
    assert rows == [
        ["frontal", "sks, 1girl, red hair", "1, 2"],
        ["side", "sks, 1girl, red hair, from side", "1"],
    ]
    assert probes_from_rows(rows, PROBES) == PROBES
    # An edited prompt keeps the probe's id, label, negative and expected tags.
    rows[1][1] = "sks, 1girl, from side, forest"
    edited = probes_from_rows(rows, PROBES)[1]
    assert edited["id"] == "side-view" and edited["expect_tags"] == ["from side"]
    assert edited["prompt"] == "sks, 1girl, from side, forest" and edited["label"] == PROBES[1]["label"]


def test_new_rows_get_unique_ids_and_the_kinds_expected_tags():
    rows = [
        *probe_rows(PROBES),
        ["side", "sks, from side, smile", "7 8"],
        ["behind", "sks, from behind", 9.0],
        ["", "", ""],  # a blank row of the table
        ["LEAK", "1girl, red hair", "3"],
    ]
    probes = probes_from_rows(rows, PROBES)
    assert [p["id"] for p in probes] == ["frontal", "side-view", "side", "behind", "leak"]
    assert probes[2]["expect_tags"] == ["from side"] and probes[2]["seeds"] == [7, 8]
    assert probes[3]["expect_tags"] == ["from behind"] and probes[3]["seeds"] == [9]
    assert probes[4]["kind"] == "leak" and probes[4]["expect_tags"] == []
    assert all(p["negative"] == "lowres" for p in probes)  # the set's negative for new rows


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (["sideways", "sks", "1"], "probe row 3: kind 'sideways' is not one of frontal, side"),
        (["side", "  ", "1"], "probe row 3: the prompt is empty"),
        (["side", "sks", "1, x"], "probe row 3: seed 'x' is not a whole number"),
        (["side", "sks", ""], "probe row 3: give at least one seed"),
        (["side", "sks", "-4"], "probe row 3: seed '-4'"),
    ],
)
def test_bad_rows_are_named(row, message):
    with pytest.raises(ValueError, match=message):
        probes_from_rows([*probe_rows(PROBES), row], PROBES)


def test_empty_table_is_refused():
    with pytest.raises(ValueError, match="The probe table is empty"):
        probes_from_rows([["", "", ""]], PROBES)


def test_parse_seeds_accepts_numbers_from_the_table():
    assert parse_seeds(1234.0, 1) == (1234,)
    assert parse_seeds(" 1,2  3 ", 1) == (1, 2, 3)


# -- the grid, the ranking, the hand-off -------------------------------------------------------------
def plant_pick(run_dir: Path, checkpoint_dir: Path, *, frontal: str | None = "r_4", skip: str = "") -> dict:
    """Plant what run_pick leaves: cells, grid.json, ranking.json; checkpoint files for the columns."""
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    columns = [
        {"key": "source", "label": "source", "path": str(checkpoint_dir / "src.safetensors"), "step": 0}
    ]
    columns += [
        {"key": f"r_{s}", "label": f"r_{s}", "path": str(checkpoint_dir / f"r_{s}.safetensors"), "step": s}
        for s in (2, 4)
    ]
    for column in columns:
        Path(column["path"]).write_bytes(b"weights")
    cells = []
    for c, column in enumerate(columns):
        for probe in PROBES:
            for seed in probe["seeds"]:
                name = f"{probe['id']}-{seed}"
                image = f"cells/{column['key']}/{name}.png"
                cells.append(
                    {
                        "probe_id": probe["id"],
                        "column": column["key"],
                        "seed": seed,
                        "image": image,
                        "fingerprint": "f",
                    }
                )
                if name == skip and column["key"] == "r_2":
                    continue  # a cell a stopped render never drew
                path = run_dir / "pick" / image
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (8, 8), (40 * c, 100, 10 * seed)).save(path)
    grid = {
        "run_dir": str(run_dir),
        "probes": PROBES,
        "columns": columns,
        "cells": cells,
        "settings": {"steps": 2},
        "rendered": 9,
        "cached": 0,
    }

    def score(key, step, total, loss):
        return {
            "column": key,
            "label": key,
            "step": step,
            "score": total,
            "pose": 0.5,
            "traits": 0.75,
            "leak": 0.0,
            "drift": 0.1,
            "copies": 1 if key == "r_4" else 0,
            "loss": loss,
            "evidence": [f"{key}: side cells tagged *from side* 1/1"],
            "cells": [],
        }

    ranking = {
        "run_dir": str(run_dir),
        "columns": [score("r_2", 2, 0.8, 0.1234), score("r_4", 4, 0.6, 0.1), score("source", 0, 0.2, None)],
        "recommended": "r_2",
        "frontal": frontal,
        "reasons": {"recommended": "draws the side pose, keeps traits", "frontal": "latest, best traits"},
        "settings": {},
    }
    (run_dir / "pick" / "grid.json").write_text(json.dumps(grid), encoding="utf-8")
    (run_dir / "pick" / "ranking.json").write_text(json.dumps(ranking), encoding="utf-8")
    return {"grid": grid, "ranking": ranking}


def test_gallery_is_probe_rows_by_checkpoint_columns_source_first(tmp_path):
    plant_pick(tmp_path, tmp_path / "models", skip="frontal-2")
    saved = read_saved(tmp_path)
    view = gallery_view(saved.grid, tmp_path, placeholder=lambda: "grey")
    assert view.columns == 3 and view.missing == 1
    captions = [caption for _, caption in view.items]
    assert captions[:3] == ["frontal #1 · source", "frontal #1 · r_2", "frontal #1 · r_4"]
    assert captions[3:6] == ["frontal #2 · source", "frontal #2 · r_2", "frontal #2 · r_4"]
    assert captions[6:] == ["side-view #1 · source", "side-view #1 · r_2", "side-view #1 · r_4"]
    assert view.items[4][0] == "grey"  # the missing cell keeps its place in the grid
    assert view.items[0][0] == str(tmp_path / "pick" / "cells" / "source" / "frontal-1.png")


def test_ranking_rows_mark_the_picks_and_leave_the_source_unranked(tmp_path):
    ranking = plant_pick(tmp_path, tmp_path / "models")["ranking"]
    rows = ranking_rows(ranking)
    assert rows[0] == [1, "r_2 ★ recommended", 2, "0.80", "0.50", "0.75", "0.00", "0.10", 0, "0.1234"]
    assert rows[1][:2] == [2, "r_4 ◆ frontal pick"] and rows[1][8] == 1
    assert rows[2][:2] == ["—", "source"] and rows[2][9] == "—"
    ranking["columns"][0]["loss_smoothed"] = 0.25
    assert ranking_rows(ranking)[0][9] == "0.2500"  # the smoothed curve's value when there is one
    assert len(rows[0]) == len(pick_logic.RANKING_HEADERS)
    assert pick_logic.recommended_step(ranking) == 2
    # The page shows the same rows as an HTML table, the picks' rows marked by class, text escaped.
    table = pick_logic.ranking_html(ranking)
    assert table.count("<tr") == 1 + len(rows)
    assert '<tr class="dbchar-pick-recommended"><td>1</td><td>r_2 ★ recommended</td>' in table
    assert '<tr class="dbchar-pick-frontal"><td>2</td><td>r_4 ◆ frontal pick</td>' in table
    assert '<tr class="dbchar-pick-source"><td>—</td><td>source</td>' in table
    ranking["columns"][0]["label"] = "<b>x</b>"
    assert "<b>x</b>" not in pick_logic.ranking_html(ranking)
    assert pick_logic.ranking_html(None) == "" and pick_logic.ranking_html({"columns": []}) == ""
    assert pick_logic.column_name({"column": "neeko_200", "label": "step 200"}) == "neeko_200 (step 200)"
    assert (
        pick_logic.column_name({"column": "source", "label": "source (a.safetensors)"})
        == "source (a.safetensors)"
    )
    source_row = {"column": "source", "label": "sd15"}
    assert pick_logic.checkpoint_label(source_row, {}) == "source (sd15)"


def test_evidence_names_the_picks_with_reasons_escaped(tmp_path):
    ranking = plant_pick(tmp_path, tmp_path / "models")["ranking"]
    text = evidence_markdown(ranking)
    assert text.startswith("**★ Recommended:** r\\_2 (step 2) — draws the side pose, keeps traits")
    assert "Frontal pick (overfit for frontal poses):** r\\_4 (step 4) — latest, best traits" in text
    assert "- r\\_4: side cells tagged \\*from side\\* 1/1" in text
    assert "Warnings" not in text
    extra = evidence_markdown({**ranking, "traits": ["red hair"], "warnings": ["3.png cannot be read"]})
    assert "Traits looked for: red hair" in extra and "**Warnings:**\n- 3.png cannot be read" in extra
    none = evidence_markdown(
        {**ranking, "frontal": None, "reasons": {"frontal": "no checkpoint keeps traits"}}
    )
    assert "frontal poses):** none — no checkpoint keeps traits" in none


def test_handoff_payload_and_its_refusals(tmp_path):
    planted = plant_pick(tmp_path, tmp_path / "models", frontal=None)
    grid, ranking = planted["grid"], planted["ranking"]
    payload = handoff(grid, ranking, "recommended", "neeko")
    assert payload == {
        "checkpoint": str(tmp_path / "models" / "r_2.safetensors"),
        "run": "neeko",
        "source": str(tmp_path / "models" / "src.safetensors"),
    }
    assert json.loads(handoff_json(payload)) == payload
    with pytest.raises(ValueError, match="no frontal checkpoint: latest, best traits"):
        handoff(grid, ranking, "frontal", "neeko")
    (tmp_path / "models" / "r_2.safetensors").unlink()
    with pytest.raises(ValueError, match=r"recommended checkpoint 'r_2' .* is gone; render the grid again"):
        handoff(grid, ranking, "recommended", "neeko")


def test_read_saved_names_a_broken_file(tmp_path):
    assert read_saved(tmp_path) == SavedPick(None, None)
    (tmp_path / "pick").mkdir()
    (tmp_path / "pick" / "ranking.json").write_text("{oops", encoding="utf-8")
    with pytest.raises(ValueError, match=r"ranking\.json is not valid JSON"):
        read_saved(tmp_path)


# -- the chart's checkpoint markers ---------------------------------------------------------------------
def _columns_with(pixels: np.ndarray, colour: tuple[int, int, int]) -> set[int]:
    mask = (np.abs(pixels.astype(int) - colour).sum(axis=-1) < 10)[: HEIGHT - 30]
    return set(np.nonzero(mask.any(axis=0))[0].tolist())


def test_loss_chart_marks_checkpoint_steps_and_the_recommended_one():
    records = [{"step": s, "loss": 1.0 / s} for s in range(1, 101)]
    plain = np.asarray(loss_chart(records, 0.5))
    assert not _columns_with(plain, MARKER) and not _columns_with(plain, HIGHLIGHT)
    marked = np.asarray(loss_chart(records, 0.5, markers=[25, 50, 100], highlight=50))
    orange, red = _columns_with(marked, MARKER), _columns_with(marked, HIGHLIGHT)
    # Step s sits at 56 + (s - 1) / 99 * (640 - 68) pixels.
    x = {s: 56 + (s - 1) / 99 * 572 for s in (25, 50, 100)}
    assert any(abs(c - x[25]) <= 1 for c in orange) and any(abs(c - x[100]) <= 1 for c in orange)
    assert any(abs(c - x[50]) <= 1 for c in red)
    assert not any(abs(c - x[50]) <= 1 for c in orange - red)
    # Markers show on an empty log too (a run whose loss log was removed).
    assert _columns_with(np.asarray(loss_chart([], markers=[10, 20])), MARKER)


# -- the section's handlers ---------------------------------------------------------------------------
@pytest.fixture
def host(tmp_path):
    from lib_dbchar.host.standalone import StandaloneHost
    from lib_dbchar.settings import Settings

    models = tmp_path / "models" / "Stable-diffusion"
    models.mkdir(parents=True)
    return StandaloneHost(
        models, Settings(projects_dir=str(tmp_path / "projects")), device="cpu", home=tmp_path / "home"
    )


@pytest.fixture
def run_dir(host):
    """Project "neeko" with a captioned dataset and a run "r" (run.json, 2 checkpoints, a loss log)."""
    from lib_dbchar.concept import Concept, save_concepts
    from lib_dbchar.projects import create_project
    from lib_dbchar.train.config import TrainConfig
    from lib_dbchar.train.run import (
        CheckpointRecord,
        RunFolders,
        RunSpec,
        save_run_spec,
        write_checkpoint_records,
    )

    project = create_project(host.projects_dir(), "neeko")
    project.dataset_dir.mkdir(parents=True, exist_ok=True)
    for i in range(3):
        Image.new("RGB", (16, 16), (200, 30, 30)).save(project.dataset_dir / f"{i}.png")
        (project.dataset_dir / f"{i}.txt").write_text(
            "sks, 1girl, red hair, green eyes, smile", encoding="utf-8"
        )
    concept = Concept(instance_token="sks")
    save_concepts(project.concept_file, [concept])
    spec = RunSpec(project.root, "r", TrainConfig(), (concept,), host.checkpoint_dir())
    save_run_spec(spec)
    folders = RunFolders(spec.run_dir)
    folders.loss_log.parent.mkdir(parents=True)
    lines = [json.dumps({"step": s, "loss": 1.0 / s, "lr": 1e-6}) for s in range(1, 5)]
    folders.loss_log.write_text("\n".join(lines) + "\n", encoding="utf-8")
    records = [CheckpointRecord(str(host.checkpoint_dir() / f"r_{s}.safetensors"), s, s) for s in (2, 4)]
    write_checkpoint_records(folders.checkpoints_record, records)
    return spec.run_dir


def build(host):
    from lib_dbchar.ui.compat import gr
    from lib_dbchar.ui.context import UiContext
    from lib_dbchar.ui.ids import elem_id
    from lib_dbchar.ui.tabs import train as train_tab

    with gr.Blocks(analytics_enabled=False):
        task_id = gr.Textbox(visible=False, elem_id=elem_id("task-id"))
        picker = gr.Dropdown(choices=["neeko"], value="neeko", elem_id=elem_id("project"))
        handoff_box = gr.Textbox(visible=False, elem_id=elem_id("merge-handoff"))
        tab = train_tab.render(
            UiContext(host=host, project=picker, task_id=task_id, merge_handoff=handoff_box)
        )
    return tab.pick


REQUEST = {"project": "neeko", "run": "r"}


def saved_probes(run_dir: Path) -> list[dict]:
    return json.loads((run_dir / "pick" / "probes.json").read_text(encoding="utf-8"))["probes"]


def test_section_is_in_the_train_tab_with_the_contract_ids(host, run_dir):
    section = build(host)
    ids = {
        getattr(section, name).elem_id
        for name in ("probes", "render_button", "stop_button", "gallery", "chart", "ranking", "evidence")
    }
    assert ids == {
        "dbchar-pick-probes",
        "dbchar-pick-render",
        "dbchar-pick-stop",
        "dbchar-pick-grid",
        "dbchar-pick-chart",
        "dbchar-pick-ranking",
        "dbchar-pick-evidence",
    }
    assert section.send_button.elem_id == "dbchar-pick-send"
    assert section.send_frontal_button.elem_id == "dbchar-pick-send-frontal"
    assert section.status.elem_id == "dbchar-pick-status"
    assert set(section.form.components) >= {"steps", "cfg", "size", "scheduler"}


def test_open_shows_the_saved_grid_and_ranking_without_rendering(host, run_dir, monkeypatch):
    from lib_dbchar.pick import run as pick_run

    monkeypatch.setattr(pick_run, "run_pick", lambda *a, **k: pytest.fail("opening must not render"))
    section = build(host)
    out = section.open_values(section.request(REQUEST))
    assert "No grid for r yet" in out[-1]
    # No probes.json yet: the default set, built from the concept and the dataset, is shown and saved.
    probes = saved_probes(run_dir)
    assert out[1] == probe_rows(probes)
    assert {p["kind"] for p in probes} >= {"side", "behind", "leak", "drift"}
    assert any("sks" in p["prompt"] for p in probes if p["kind"] == "side")
    plant_pick(run_dir, host.checkpoint_dir())
    run_info, rows, gallery, chart, ranking, evidence, status = section.open_values(section.request(REQUEST))
    assert "Showing the saved grid and ranking of r" in status
    assert rows == probe_rows(probes)  # the saved set, not the planted grid's
    assert gallery["columns"] == 3 and len(gallery["value"]) == 9
    assert gallery["value"][1][1] == "frontal #1 · r_2"
    assert '<tr class="dbchar-pick-recommended"><td>1</td><td>r_2 ★ recommended</td>' in ranking
    assert "draws the side pose" in evidence
    assert "3 columns x 9 cells" in run_info
    red = _columns_with(np.asarray(chart), HIGHLIGHT)
    assert red and _columns_with(np.asarray(chart), MARKER)


def test_open_without_a_run_says_what_to_do(host, run_dir):
    section = build(host)
    status = html.unescape(section.open_values(section.request({**REQUEST, "run": "nope"}))[-1])
    assert "has no run 'nope' yet: start it above first" in status
    assert "Type a run name" in section.open_values(section.request({**REQUEST, "run": ""}))[-1]
    assert "Pick or create a project" in section.open_values(section.request({"run": "r"}))[-1]


def test_save_and_reset_probes(host, run_dir):
    section = build(host)
    rows = section.open_values(section.request(REQUEST))[1]
    before = saved_probes(run_dir)
    rows = [*rows, ["side", "sks, 1girl, from side, beach", "11, 12"]]
    rows[0][1] = rows[0][1] + ", looking at viewer"
    shown, status = section.save_probe_table(section.request(REQUEST), rows)
    assert "dbchar-message-ok" in status and f"Saved {len(rows)} probes" in status
    after = saved_probes(run_dir)
    assert [p["id"] for p in after[:-1]] == [p["id"] for p in before]
    assert after[0]["prompt"].endswith("looking at viewer") and after[-1]["seeds"] == [11, 12]
    assert after[-1]["id"] != "side" and after[-1]["id"].startswith("side")
    assert shown == probe_rows(after)
    # A bad row is refused naming it; the file stays as it was.
    bad = [*rows, ["side", "sks", "twelve"]]
    _, status = section.save_probe_table(section.request(REQUEST), bad)
    assert "dbchar-message-error" in status and f"probe row {len(bad)}: seed 'twelve'" in html.unescape(
        status
    )
    assert saved_probes(run_dir) == after
    shown, status = section.reset_probe_table(section.request(REQUEST))
    assert "Reset the probes" in status and saved_probes(run_dir) == before and shown == probe_rows(before)


class FakeResult:
    """What run_pick returns (grid and ranking with to_dict, the JSON paths, warnings)."""

    def __init__(self, planted: dict) -> None:
        self.grid = type("G", (), {"to_dict": lambda _self: planted["grid"]})()
        self.ranking = type("R", (), {"to_dict": lambda _self: planted["ranking"]})()
        self.warnings = ["r_6.safetensors is missing; its column was left out."]


def test_render_job_saves_the_table_runs_the_pick_and_shows_it(host, run_dir, monkeypatch):
    from lib_dbchar.pick import run as pick_run

    calls = []

    def fake_run_pick(path, *, settings=None, probes=None, device="cpu", ctx=None, **kwargs):
        calls.append((Path(path), settings, [p.id for p in probes], device))
        ctx.report(1, 2, "cell 1")
        ctx.check_stop()
        return FakeResult(plant_pick(Path(path), host.checkpoint_dir()))

    monkeypatch.setattr(pick_run, "run_pick", fake_run_pick)
    section = build(host)
    rows = section.open_values(section.request(REQUEST))[1]
    rows[1][2] = "99"
    out = section.render_binding.call({**REQUEST, "probes": rows, "settings": {"steps": 3, "size": 64}})
    status = out[-1]
    assert "dbchar-message-ok" in status, status
    assert (
        "Rendered 9 cells, reused 0" in status
        and "Recommended: r_2" in status
        and "Frontal pick: r_4" in status
    )
    assert "r_6.safetensors is missing" in status
    ((path, settings, ids, device),) = calls
    assert path == run_dir and settings.steps == 3 and settings.size == 64 and device == "cpu"
    assert ids == [p["id"] for p in saved_probes(run_dir)] and saved_probes(run_dir)[1]["seeds"] == [99]
    assert "<td>r_2 ★ recommended</td>" in out[4] and len(out[2]["value"]) == 9
    # Bad settings are refused naming the field, before anything runs.
    out = section.render_binding.call({**REQUEST, "probes": rows, "settings": {"steps": 0}})
    assert "dbchar-message-error" in out[-1] and "steps" in out[-1] and len(calls) == 1


def test_a_stopped_render_says_so_and_changes_nothing(host, run_dir, monkeypatch):
    from lib_dbchar.errors import JobStopped
    from lib_dbchar.pick import run as pick_run

    def stopped(*args, **kwargs):
        raise JobStopped("pick stopped after 3 of 9 cells")

    monkeypatch.setattr(pick_run, "run_pick", stopped)
    section = build(host)
    rows = section.open_values(section.request(REQUEST))[1]
    out = section.render_binding.call({**REQUEST, "probes": rows})
    assert "dbchar-message-stopped" in out[-1] and "Pick stopped after 3 of 9 cells" in out[-1]
    assert not (run_dir / "pick" / "ranking.json").exists()


def test_send_hands_the_picks_to_merge(host, run_dir):
    section = build(host)
    nothing = section.send_values(section.request(REQUEST), "recommended")
    assert nothing[1] == "" and "press Render grid + rank first" in nothing[2]
    plant_pick(run_dir, host.checkpoint_dir(), frontal=None)
    text, sent, status = section.send_values(section.request(REQUEST), "recommended")
    assert json.loads(text) == {
        "checkpoint": str(host.checkpoint_dir() / "r_2.safetensors"),
        "run": "r",
        "source": str(host.checkpoint_dir() / "src.safetensors"),
    }
    assert sent == "1" and "Sent r_2.safetensors to the Merge tab" in status
    _, sent, status = section.send_values(section.request(REQUEST), "frontal")
    assert sent == "" and "no frontal checkpoint" in status


def test_render_inside_the_webui_frees_vram_and_uses_its_task_id(fake_webui, monkeypatch):
    """The webui wiring: task id first, the GPU wrapper, the webui's model moved off meanwhile."""
    import contextlib

    from lib_dbchar.concept import Concept
    from lib_dbchar.host.webui import WebuiHost
    from lib_dbchar.pick import run as pick_run
    from lib_dbchar.projects import create_project
    from lib_dbchar.train.config import TrainConfig
    from lib_dbchar.train.run import RunSpec, save_run_spec
    from lib_dbchar.ui.compat import gr
    from lib_dbchar.ui.context import UiContext
    from lib_dbchar.ui.ids import elem_id
    from lib_dbchar.ui.jobs import DIRECT_TASK_ID
    from lib_dbchar.ui.tabs import train as train_tab

    host = WebuiHost()
    project = create_project(host.projects_dir(), "neeko")
    spec = RunSpec(project.root, "r", TrainConfig(), (Concept(instance_token="sks"),), fake_webui.models_dir)
    save_run_spec(spec)
    events = []

    @contextlib.contextmanager
    def freed():
        events.append("freed")
        yield
        events.append("restored")

    def fake_run_pick(path, **kwargs):
        events.append("pick")
        return FakeResult(plant_pick(Path(path), fake_webui.models_dir))

    monkeypatch.setattr(host, "vram_freed", freed)
    monkeypatch.setattr(pick_run, "run_pick", fake_run_pick)
    with gr.Blocks(analytics_enabled=False):
        task_id = gr.Textbox(visible=False, elem_id=elem_id("task-id"))
        picker = gr.Dropdown(choices=["neeko"], value="neeko", elem_id=elem_id("project"))
        section = train_tab.render(UiContext(host=host, project=picker, task_id=task_id)).pick
    binding = section.render_binding
    assert binding.gradio_inputs()[0] is task_id
    rows = probe_rows(PROBES)
    out = binding.call({"project": "neeko", "run": "r", "probes": rows})
    assert "Recommended: r_2" in out[-1], out[-1]
    assert events == ["freed", "pick", "restored"]
    assert DIRECT_TASK_ID in fake_webui.progress.finished_tasks
    # Without the page's hand-off box the send buttons stay unbound, and nothing fails.
    assert section.ctx.merge_handoff is None
