"""The Dataset tab: import with prep, results, the crop nudge, duplicates, health, upscalers.

Handlers are called directly as gradio would call them (jobs through their binding, so the host's
lock and the form validation are exercised too); runs with gradio 3.41 and 4.x alike. The browser
side of the crop nudge is in tests/test_browser_dataset.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from lib_dbchar.dataset.boxes import CropStore
from lib_dbchar.dataset.options import PrepConfig
from lib_dbchar.dataset.prep import REPORT_FILE, lanczos_upscale
from lib_dbchar.errors import DbcharError
from lib_dbchar.host.base import LANCZOS
from lib_dbchar.host.standalone import StandaloneHost
from lib_dbchar.projects import create_project
from lib_dbchar.settings import Settings
from lib_dbchar.ui import compat
from lib_dbchar.ui.app import SCRIPT_DIR, page_script
from lib_dbchar.ui.compat import gr
from lib_dbchar.ui.context import UiContext
from lib_dbchar.ui.dataset_actions import HostUpscaler, parse_box, prep_upscaler
from lib_dbchar.ui.dataset_files import (
    SOURCES_FILE,
    SourceRecord,
    import_uploads,
    merge_report,
    upload_paths,
)
from lib_dbchar.ui.dataset_render import box_text, pair_names, stage_html
from lib_dbchar.ui.ids import elem_id
from lib_dbchar.ui.jobs import DIRECT_TASK_ID
from lib_dbchar.ui.tabs import dataset
from tests.kit.images import file_hashes, textured
from tests.test_ui import js_globals

pytestmark = pytest.mark.filterwarnings("ignore:\\s*on_event is deprecated:DeprecationWarning")

NO_CHANGE = compat.no_change()
# Small and quick: center crops at 128 px; the 100 px picture is enlarged 1.28x.
PREP = {"crop": "center", "resolution": 128, "min_side": 32, "workers": 1}
CONFIG = PrepConfig(crop="center", resolution=128, min_side=32, workers=1)


def make_host(root: Path) -> StandaloneHost:
    host = StandaloneHost(
        root / "models", Settings(projects_dir=str(root / "projects")), device="cpu", home=root / "home"
    )
    create_project(host.projects_dir(), "hero")
    return host


@pytest.fixture
def host(tmp_path: Path) -> StandaloneHost:
    return make_host(tmp_path)


def build_tab(host) -> dataset.DatasetTab:
    """The tab inside a page with a project dropdown, as build_ui would make it."""
    with gr.Blocks(analytics_enabled=False):
        task_id = gr.Textbox(visible=False, elem_id=elem_id("task-id"))
        project = gr.Dropdown(choices=["hero"], value="hero", elem_id=elem_id("project"))
        tab = dataset.render(UiContext(host=host, project=project, task_id=task_id))
    return tab


@pytest.fixture
def tab(host) -> dataset.DatasetTab:
    return build_tab(host)


@pytest.fixture
def src(tmp_path: Path) -> Path:
    """Three usable pictures (one small), a caption, and an empty file."""
    folder = tmp_path / "pictures"
    folder.mkdir()
    textured((400, 300), 1).save(folder / "a.png")
    (folder / "a.txt").write_text("1girl, from side", encoding="utf-8")
    textured((300, 500), 2).save(folder / "b.jpg", quality=92)
    textured((100, 100), 3).save(folder / "small.png")
    (folder / "empty.png").write_bytes(b"")
    return folder


def progress_recorder(on_call=None):
    calls = []

    def progress(value, desc=None):
        calls.append((value, desc))
        if on_call is not None:
            on_call(value, desc)

    return progress, calls


def prepare(tab, **values):
    progress, _ = progress_recorder()
    return tab.prepare_binding.call({"project": "hero", "prep": PREP, **values}, progress=progress)


def dataset_dir(host) -> Path:
    return host.projects_dir() / "hero" / "dataset"


def view(outputs) -> dict:
    names = ["results", "gallery", "names", "picture", "pair", "excluded", "health"]
    return dict(zip(names, outputs, strict=False))


# -- import ---------------------------------------------------------------------------------------
def test_prepare_a_folder_into_the_project(tab, host, src):
    before = file_hashes(src)
    *outputs, status = prepare(tab, folder=str(src))
    shown = view(outputs)
    ds = dataset_dir(host)
    assert sorted(p.name for p in ds.glob("*.png")) == ["a.png", "b.png", "small.png"]
    for name in ("a.png", "b.png", "small.png"):
        with Image.open(ds / name) as out:
            assert out.size == (128, 128)
    assert (ds / "a.txt").read_text(encoding="utf-8") == "1girl, from side"
    assert file_hashes(src) == before  # originals only read
    # Gallery: every picture with its caption; the enlarged one flagged with its factor.
    assert shown["gallery"] == [
        (str(ds / "a.png"), "a.png"),
        (str(ds / "b.png"), "b.png"),
        (str(ds / "small.png"), "small.png · enlarged 1.28x"),
    ]
    assert shown["names"] == ["a.png", "b.png", "small.png"]
    assert shown["picture"]["choices"] == ["a.png", "b.png", "small.png"]
    # Results: the skipped file with its reason, the enlarged one with its factor.
    results = shown["results"]
    assert "Prepared 3 pictures into" in results
    assert re.search(r"<td>empty\.png</td><td>the file is empty \(0 bytes\)", results)
    assert "<b>small.png</b>: enlarged 1.28x with Lanczos (its square was 100 px)" in results
    assert "dbchar-message-ok" in status
    assert "Prepared 3 pictures, skipped 1 (reasons below), enlarged 1." in status
    assert "Only 3 pictures" in shown["health"]
    # Where each original is, for the crop nudge.
    record = SourceRecord.for_dataset(ds)
    assert record.original("b.png") == (src / "b.jpg").resolve()
    assert json.loads((ds / SOURCES_FILE).read_text(encoding="utf-8"))["version"] == 1


def test_prepare_reports_progress_per_picture(tab, src):
    progress, calls = progress_recorder()
    tab.prepare_binding.call({"project": "hero", "folder": str(src), "prep": PREP}, progress=progress)
    assert calls[0] == ((0, 4), "Preparing 4 pictures")
    assert calls[-1][0] == (4, 4)


def test_uploads_are_copied_into_the_project_and_prepared(tab, host, src, tmp_path):
    other = tmp_path / "elsewhere"
    other.mkdir()
    textured((200, 200), 9).save(other / "a.png")  # another picture of the same name
    # The shapes gradio delivers: a path (gradio 4), a temp-file object (gradio 3), a FileData dict.
    uploads = [str(src / "a.png"), SimpleNamespace(name=str(src / "a.txt")), {"path": str(other / "a.png")}]
    *outputs, status = prepare(tab, uploads=uploads)
    originals = host.projects_dir() / "hero" / "originals"
    assert sorted(p.name for p in originals.iterdir()) == ["a-2.png", "a.png", "a.txt"]
    assert (originals / "a.png").read_bytes() == (src / "a.png").read_bytes()
    assert (originals / "a-2.png").read_bytes() == (other / "a.png").read_bytes()
    assert view(outputs)["names"] == ["a-2.png", "a.png"]
    assert (dataset_dir(host) / "a.txt").read_text(encoding="utf-8") == "1girl, from side"
    assert SourceRecord.for_dataset(dataset_dir(host)).original("a.png") == (originals / "a.png").resolve()
    assert "Prepared 2 pictures." in status
    # The same upload again is the same original: no third copy.
    prepare(tab, uploads=[str(src / "a.png")])
    assert sorted(p.name for p in originals.iterdir()) == ["a-2.png", "a.png", "a.txt"]


def test_upload_paths_and_import_keep_captions_with_their_picture(tmp_path):
    assert upload_paths(None) == []
    assert upload_paths("x.png") == [Path("x.png")]
    assert upload_paths([{"name": "y.png"}, SimpleNamespace(name="z.png")]) == [Path("y.png"), Path("z.png")]
    first, second, originals = tmp_path / "1", tmp_path / "2", tmp_path / "originals"
    for folder, seed in ((first, 1), (second, 2)):
        folder.mkdir()
        textured((64, 64), seed).save(folder / "hero.png")
        (folder / "hero.txt").write_text(f"caption {seed}", encoding="utf-8")
    import_uploads([first / "hero.png", first / "hero.txt"], originals)
    copies = import_uploads([second / "hero.png", second / "hero.txt"], originals)
    assert [c.name for c in copies] == ["hero-2.png", "hero-2.txt"]
    assert (originals / "hero-2.txt").read_text(encoding="utf-8") == "caption 2"
    assert (originals / "hero.txt").read_text(encoding="utf-8") == "caption 1"
    with pytest.raises(DbcharError, match=r"gone\.png are gone; upload them again"):
        import_uploads([tmp_path / "gone.png"], originals)


@pytest.mark.parametrize(
    ("values", "needle"),
    [
        ({}, "Give the folder that holds the pictures, or upload them"),
        ({"folder": "/no/such/folder"}, "/no/such/folder is not a folder"),
        ({"folder": "x", "uploads": ["y.png"]}, "not both at once"),
        ({"prep": {**PREP, "resolution": 100}}, "PrepConfig.resolution"),
        ({"project": ""}, "Pick a project at the top of the page"),
    ],
)
def test_prepare_says_what_is_wrong(tab, host, values, needle):
    progress, _ = progress_recorder()
    *outputs, status = tab.prepare_binding.call(
        {"project": "hero", "prep": PREP, **values}, progress=progress
    )
    assert outputs == [NO_CHANGE] * 7
    assert "dbchar-message-error" in status
    assert needle in status
    assert not dataset_dir(host).joinpath("crops.json").exists()


def test_a_quoted_folder_path_is_accepted(tab, host, src):
    *_, status = prepare(tab, folder=f' "{src}" ')
    assert "Prepared 3 pictures" in status


def test_stop_keeps_what_is_done_and_shows_it(tab, host, src):
    progress, _ = progress_recorder(on_call=lambda value, desc: value[0] >= 1 and host.interrupt())
    *outputs, status = tab.prepare_binding.call(
        {"project": "hero", "folder": str(src), "prep": PREP}, progress=progress
    )
    assert "Stopped: Prepared" in status and "Press Prepare again to finish." in status
    assert "Stopped before the end" in view(outputs)["results"]
    assert 1 <= len(view(outputs)["names"]) < 3


def test_refresh_shows_the_project_as_it_is_on_disk(tab, host, src):
    prepare(tab, folder=str(src))
    shown = view(tab.refresh("hero", 128, 6))
    assert shown["names"] == ["a.png", "b.png", "small.png"]
    assert "empty.png" in shown["results"]  # the last report is read back from prep-report.json
    nothing = view(tab.refresh(None))
    assert nothing["gallery"] == [] and "No project picked" in nothing["results"]
    # A new tab built on a prepared project starts with its pictures.
    assert build_tab(host).gallery.value is not None


# -- the crop nudge -------------------------------------------------------------------------------
def open_a(tab):
    return tab.open_picture("hero", "a.png", *tab.form.show(CONFIG))


def test_open_picture_shows_the_original_with_its_square(tab, src):
    prepare(tab, folder=str(src))
    stage, box, status = open_a(tab)
    assert status == ""
    for attr in (
        'data-picture="a.png"',
        'data-width="400"',
        'data-height="300"',
        'data-x="50"',
        'data-y="0"',
    ):
        assert attr in stage
    assert 'data-side="300"' in stage and 'data-min="32"' in stage
    assert f'data-target="{elem_id("dataset", "crop", "box")}"' in stage
    assert 'src="data:image/jpeg;base64,' in stage
    assert "square of 300 px chosen by center" in stage
    assert json.loads(box) == {"picture": "a.png", "x": 50, "y": 0, "side": 300}
    closed, cleared, _ = tab.open_picture("hero", None)
    assert "Pick a picture above" in closed and cleared == ""


def test_open_picture_says_when_the_original_is_gone(tab, src):
    prepare(tab, folder=str(src))
    (src / "a.png").rename(src / "moved.png")
    stage, box, status = open_a(tab)
    assert box == ""
    assert "The original of a.png is no longer at" in status and "no longer at" in stage
    assert "dbchar-message-error" in status


def accept(tab, box, picture="a.png"):
    progress, _ = progress_recorder()
    return tab.accept_binding.call(
        {"project": "hero", "picture": picture, "box": box, "prep": PREP}, progress=progress
    )


def test_accepting_a_box_stores_it_and_remakes_the_picture(tab, host, src):
    prepare(tab, folder=str(src))
    ds = dataset_dir(host)
    before = (ds / "a.png").read_bytes()
    *outputs, stage, box, status = accept(tab, json.dumps({"picture": "a.png", "x": 0, "y": 50, "side": 250}))
    assert "Saved your square; a.png made again from a 250 px square at (0, 50)." in status
    stored = json.loads((ds / "crops.json").read_text(encoding="utf-8"))["images"]["a.png"]
    assert stored["user_box"] == [0, 50, 250, 300] and stored["method"] == "your box"
    after = (ds / "a.png").read_bytes()
    assert after != before
    with Image.open(ds / "a.png") as out, Image.open(src / "a.png") as original:
        expected = (
            original.convert("RGB").crop((0, 50, 250, 300)).resize((128, 128), Image.Resampling.LANCZOS)
        )
        assert np.abs(np.asarray(out, float) - np.asarray(expected, float)).mean() < 1.0
    assert 'data-x="0"' in stage and 'data-y="50"' in stage and 'data-side="250"' in stage
    assert json.loads(box)["side"] == 250
    shown = view(outputs)
    assert (str(ds / "a.png"), "a.png · your crop") in shown["gallery"]
    assert shown["picture"]["value"] == "a.png"
    # The earlier run's skipped list survives the one-picture run.
    report = json.loads((ds / REPORT_FILE).read_text(encoding="utf-8"))
    assert [s["file"] for s in report["skipped"]] == ["empty.png"]
    assert sorted(p["name"] for p in report["prepared"]) == ["a.png", "b.png", "small.png"]
    # Every later run applies the box too, whatever the crop mode.
    progress, _ = progress_recorder()
    tab.prepare_binding.call(
        {"project": "hero", "folder": str(src), "prep": {**PREP, "crop": "focal", "face_detector": False}},
        progress=progress,
    )
    assert CropStore.for_dataset(ds).get("a.png").box == (0, 50, 250, 300)
    assert (ds / "a.png").read_bytes() == after


@pytest.mark.parametrize(
    ("box", "needle"),
    [
        ({"picture": "a.png", "x": 300, "y": 0, "side": 250}, "reaches outside the 400x300 picture"),
        ({"picture": "b.png", "x": 0, "y": 0, "side": 100}, "belongs to b.png, not a.png"),
        ({"picture": "a.png", "x": 0, "y": 0, "side": 20}, "under the smallest usable crop (32 px)"),
        ({"picture": "a.png", "x": 0.5, "y": 0, "side": 100}, "not three whole numbers"),
        ("not json", "No crop square came from the page"),
    ],
)
def test_accept_refuses_a_bad_box_and_stores_nothing(tab, host, src, box, needle):
    prepare(tab, folder=str(src))
    crops = (dataset_dir(host) / "crops.json").read_bytes()
    *outputs, stage, box_out, status = accept(tab, box if isinstance(box, str) else json.dumps(box))
    assert needle in status and "dbchar-message-error" in status
    assert [*outputs, stage, box_out] == [NO_CHANGE] * 9
    assert (dataset_dir(host) / "crops.json").read_bytes() == crops


def test_back_to_automatic_forgets_the_box(tab, host, src):
    prepare(tab, folder=str(src))
    accept(tab, box_text("a.png", (0, 0, 200, 200)))
    progress, _ = progress_recorder()
    *_, stage, _, status = tab.reset_binding.call(
        {"project": "hero", "picture": "a.png", "prep": PREP}, progress=progress
    )
    assert "Back to an automatic square; a.png made again from a 300 px square at (50, 0)." in status
    entry = CropStore.for_dataset(dataset_dir(host)).get("a.png")
    assert entry.user_box is None and entry.method == "center"
    assert 'data-x="50"' in stage


def test_gallery_click_picks_the_picture(tab):
    names = ["a.png", "b.png"]
    assert tab.select_picture(names, SimpleNamespace(index=1)) == compat.update(value="b.png")
    assert tab.select_picture(names, SimpleNamespace(index=[0, 0])) == compat.update(value="a.png")
    assert tab.select_picture([], SimpleNamespace(index=0)) == NO_CHANGE


def test_box_text_round_trips_and_names_are_escaped():
    text = box_text("a.png", (10, 20, 110, 120))
    assert parse_box(text, "a.png") == (10, 20, 110, 120)
    html = stage_html(
        'x"<b>.png', "data:image/jpeg;base64,AA", (400, 300), (0, 0, 300, 300), min_side=500, target_id="t"
    )
    assert "<b>" not in html and "x&quot;&lt;b&gt;.png" in html
    assert 'data-min="300"' in html  # never more than the picture's short side


# -- duplicates -----------------------------------------------------------------------------------
@pytest.fixture
def with_duplicates(tab, src):
    picture = textured((400, 300), 1)
    picture.resize((360, 270)).save(src / "a_copy.jpg", quality=90)
    *outputs, _ = prepare(tab, folder=str(src))
    return view(outputs)


def test_near_duplicates_are_listed_and_shown_side_by_side(tab, host, with_duplicates):
    label = "a.png ~ a_copy.png (0 bits apart)"
    pairs = with_duplicates["pair"]
    assert pairs["choices"] and pairs["choices"][0].startswith("a.png ~ a_copy.png (")
    label = pairs["choices"][0]
    assert pairs["value"] == label
    first, second = tab.show_pair("hero", label)
    assert first["value"] == str(dataset_dir(host) / "a.png") and first["label"] == "First: a.png"
    assert second["value"] == str(dataset_dir(host) / "a_copy.png")
    assert "near-duplicate pairs: a.png ~ a_copy.png" in with_duplicates["health"]


def duplicate_job(binding, **values):
    progress, _ = progress_recorder()
    return binding.call({"project": "hero", "prep": PREP, **values}, progress=progress)


def test_keep_one_of_a_pair_then_restore_the_other(tab, host, with_duplicates):
    ds = dataset_dir(host)
    label = with_duplicates["pair"]["choices"][0]
    *outputs, status = duplicate_job(tab.keep_first_binding, pair=label)
    assert "Kept a.png; moved a_copy.png (with its caption) to excluded/." in status
    assert not (ds / "a_copy.png").exists() and (ds / "excluded" / "a_copy.png").is_file()
    assert CropStore.for_dataset(ds).get("a_copy.png").excluded is True
    shown = view(outputs)
    assert shown["excluded"]["choices"] == ["a_copy.png"]
    assert shown["pair"]["choices"] == [] and "a_copy.png" not in shown["names"]
    *outputs, status = duplicate_job(tab.restore_binding, picture="a_copy.png")
    assert "Restored a_copy.png to the dataset." in status
    assert (ds / "a_copy.png").is_file() and view(outputs)["excluded"]["choices"] == []
    *outputs, status = duplicate_job(tab.keep_second_binding, pair=label)
    assert "Kept a_copy.png; moved a.png" in status and not (ds / "a.png").exists()
    *outputs, status = duplicate_job(tab.keep_second_binding, pair="gone ~ pair (1 bits apart)")
    assert "Pick a pair first" in status and outputs == [NO_CHANGE] * 7


def test_moving_a_duplicate_holds_the_host_lock(tab, host, with_duplicates, monkeypatch):
    """A move while prep writes the dataset would be forgotten by its crops.json: it is a locked job."""
    seen = []
    real = dataset.drop_duplicate

    def recording(*args, **kwargs):
        seen.append(host._lock.locked())
        return real(*args, **kwargs)

    monkeypatch.setattr(dataset, "drop_duplicate", recording)
    duplicate_job(tab.keep_first_binding, pair=with_duplicates["pair"]["choices"][0])
    assert seen == [True]


def test_pair_names_offers_every_split():
    assert pair_names("a ~ b ~ c.png (3 bits apart)") == [("a", "b ~ c.png"), ("a ~ b", "c.png")]


# -- health ---------------------------------------------------------------------------------------
def test_health_report_is_shown_plainly_and_refreshes(tab, host, src):
    prepare(tab, folder=str(src))
    ds = dataset_dir(host)
    health = view(tab.refresh("hero", 128, 6))["health"]
    assert "dbchar-health-check" in health
    assert "3 pictures, " in health and "thing(s) to check before training." in health
    assert "<th>Too small, enlarged</th><td>small.png 1.28x (square of 100 px)</td>" in health
    assert "<th>Missing captions</th><td>2: b.png, small.png</td>" in health
    assert "Shapes</th><td>1 portrait, 1 square, 1 landscape" in health
    assert (
        "<th>Poses</th><td>of 1 captioned: from side 1, from behind 0, full body 0, upper body 0</td>"
        in health
    )
    (ds / "b.txt").write_text("1girl, from behind, full body", encoding="utf-8")
    health = view(tab.refresh("hero", 128, 6))["health"]
    assert "of 2 captioned: from side 1, from behind 1, full body 1" in health


# -- upscalers ------------------------------------------------------------------------------------
def test_standalone_host_offers_lanczos_only(host):
    assert host.upscalers() == [LANCZOS]
    image = textured((100, 100), 1)
    assert host.upscale(image, LANCZOS, 1.28).size == (128, 128)
    with pytest.raises(DbcharError, match="'ESRGAN' is not available here"):
        host.upscale(image, "ESRGAN", 2)
    assert prep_upscaler(host, None) is lanczos_upscale
    with pytest.raises(DbcharError, match="No upscaler called 'ESRGAN'"):
        prep_upscaler(host, "ESRGAN")


def test_host_upscaler_lands_on_the_exact_side(host, monkeypatch):
    # The webui rounds down to a multiple of 8: a 120 px square comes back for 130 px.
    monkeypatch.setattr(host, "upscalers", lambda: [LANCZOS, "Rounding"])
    monkeypatch.setattr(host, "upscale", lambda image, name, scale: image.resize((120, 120)))
    out = HostUpscaler(host, "Rounding")(textured((100, 100), 1), 130)
    assert out.size == (130, 130)


@pytest.fixture
def webui_host(fake_webui):
    from lib_dbchar.host.webui import WebuiHost

    return WebuiHost()


def test_webui_host_lists_and_runs_its_upscalers(fake_webui, webui_host):
    assert webui_host.upscalers() == ["Lanczos", "Nearest", "Fake 4x"]
    image = textured((100, 100), 1)
    out = webui_host.upscale(image, "Fake 4x", 1.28)
    assert out.size == (128, 128)
    assert fake_webui.module("upscaler").calls == [((100, 100), "models/Fake/fake-4x.pth")]
    assert webui_host.upscale(image, "Lanczos", 2).size == (200, 200)
    for missing in ("None", "LDSR"):
        with pytest.raises(DbcharError, match=f"no upscaler called '{missing}'"):
            webui_host.upscale(image, missing, 2)


def test_webui_prepare_uses_the_chosen_upscaler_and_the_webui_job(fake_webui, webui_host, src, tmp_path):
    fake_webui.shared.opts.data["dbchar_projects_dir"] = str(tmp_path / "projects")
    create_project(webui_host.projects_dir(), "hero")
    tab = build_tab(webui_host)
    assert tab.upscaler.choices in (
        ["Lanczos", "Nearest", "Fake 4x"],
        [(n, n) for n in ["Lanczos", "Nearest", "Fake 4x"]],
    )
    *outputs, status = tab.prepare_binding.call(
        {"project": "hero", "folder": str(src), "prep": PREP, "upscaler": "Fake 4x"}
    )
    assert "Prepared 3 pictures" in status
    assert "<b>small.png</b>: enlarged 1.28x with Fake 4x" in view(outputs)["results"]
    assert fake_webui.module("upscaler").calls == [((100, 100), "models/Fake/fake-4x.pth")]
    assert DIRECT_TASK_ID in fake_webui.progress.finished_tasks
    assert ("job_count", 4) in fake_webui.shared.state.trace  # 4 files tried, one of them empty


# -- the page's script and the report merge ---------------------------------------------------------
def test_crop_script_defines_only_dbchar_globals_and_is_on_the_page():
    source = (SCRIPT_DIR / "dbchar-crop.js").read_text(encoding="utf-8")
    names = js_globals(source)
    assert {"dbcharCropInit", "dbcharCropBind", "dbcharCropInitDone"} <= set(names)
    assert [n for n in names if not n.startswith("dbchar")] == []
    # The standalone page carries every javascript/*.js, as the webui does.
    script = page_script()
    assert "function dbcharSubmitJob(" in script and "function dbcharCropInit(" in script
    # The classes it binds to are the ones the Python side renders.
    rendered = stage_html("a.png", "data:,", (10, 10), (0, 0, 10, 10), min_side=1, target_id="t")
    for css_class in re.findall(r'querySelector(?:All)?\("\.(dbchar-[\w-]+)"\)', source):
        assert f'class="{css_class}' in rendered or f" {css_class}" in rendered, css_class


def test_merge_report_keeps_the_earlier_skipped_files():
    from lib_dbchar.dataset.prep import PreparedImage, PrepResult, SkippedFile

    previous = PrepResult(
        Path("/ds"),
        prepared=[PreparedImage("a.png", "a.jpg", (4, 4), (0, 0, 4, 4), "center")],
        skipped=[SkippedFile("bad.png", "empty"), SkippedFile("a.jpg", "was broken")],
        stopped=True,
    ).to_dict()
    fresh = PrepResult(
        Path("/ds"), prepared=[PreparedImage("a.png", "a.jpg", (4, 4), (0, 0, 2, 2), "your box")]
    )
    merged = merge_report(previous, fresh)
    assert [p["box"] for p in merged["prepared"]] == [[0, 0, 2, 2]]
    assert merged["skipped"] == [{"file": "bad.png", "reason": "empty"}]
    assert merged["stopped"] is True
    assert merge_report(None, fresh) == fresh.to_dict()


def test_boolean_json_schemas_are_described_as_any(monkeypatch):
    """gradio 4's client cannot describe File/Image/Gallery data under pydantic >= 2.11 without the shim."""
    import sys
    import types

    def dict_only(schema, defs):
        if "const" in schema:  # what gradio_client 1.2 does first: fails on True
            return "const"
        inner = schema.get("additionalProperties")
        return "Dict()" if inner is None else f"Dict(str, {fake._json_schema_to_python_type(inner, defs)})"

    fake = types.ModuleType("gradio_client.utils")
    fake._json_schema_to_python_type = dict_only
    package = types.ModuleType("gradio_client")
    package.utils = fake
    monkeypatch.setitem(sys.modules, "gradio_client", package)
    monkeypatch.setitem(sys.modules, "gradio_client.utils", fake)
    with pytest.raises(TypeError):
        dict_only({"additionalProperties": True}, {})
    compat._accept_boolean_json_schemas()
    assert fake._json_schema_to_python_type({"additionalProperties": True}, {}) == "Dict(str, Any)"
    patched = fake._json_schema_to_python_type
    compat._accept_boolean_json_schemas()  # twice changes nothing
    assert fake._json_schema_to_python_type is patched

    def copes(schema, defs):
        return "Any" if schema is True else "x"

    fake._json_schema_to_python_type = copes
    compat._accept_boolean_json_schemas()
    assert fake._json_schema_to_python_type is copes
