"""The Tags tab's handlers, called directly as gradio would call them (gradio 3.41 and 4.x alike).

Tagging runs the real pipeline on the test kit's ONNX double (a local model folder), whose tags
depend on each picture's colour; the editor works on a project dataset with hand-written captions.
tests/test_browser_tags.py drives the same tab in a browser.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lib_dbchar.concept import Concept, save_concepts
from lib_dbchar.host.standalone import StandaloneHost
from lib_dbchar.projects import create_project, list_projects
from lib_dbchar.settings import Settings
from lib_dbchar.tagger.backups import backup_root
from lib_dbchar.tagger.models import get_model
from lib_dbchar.ui import compat
from lib_dbchar.ui.compat import gr
from lib_dbchar.ui.context import UiContext
from lib_dbchar.ui.ids import elem_id
from lib_dbchar.ui.jobs import DIRECT_TASK_ID
from lib_dbchar.ui.tabs import tags
from lib_dbchar.ui.tags_view import (
    EditorView,
    Thumbnails,
    build_view,
    plan_bulk,
    prefill_always_first,
    preview_rows,
    tag_list,
)
from tests.kit.tagger import TAGGER_V2_DIR, TAGGER_V3_DIR, solid_image

NO_CHANGE = compat.no_change()

pytestmark = pytest.mark.filterwarnings("ignore:\\s*on_event is deprecated:DeprecationWarning")

CAPTIONS = {
    "01": "1girl, red hair, smile, school uniform",
    "02": "1girl, red_hair, closed eyes, school uniform",
    "03": "1girl, blue eyes, smile, school uniform",
    "04": "1girl, Red Hair, blue eyes, from side, school uniform",
}
# What the v3 double writes for a solid picture of each colour (tests/kit/tagger_double/README.md).
TAGGED = {
    "red": "1girl, red hair, solo, from side, upper body, long hair",
    "cyan": "hatsune miku, 1girl, solo, blue eyes, from behind, upper body, 0_0, green hair, long hair",
    "black": "1girl, >_<, solo, upper body, long hair",
}


# -- fixtures -------------------------------------------------------------------------------------
class RecordingHost(StandaloneHost):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.interrupts = 0

    def interrupt(self) -> None:
        self.interrupts += 1
        super().interrupt()


@pytest.fixture
def host(tmp_path: Path) -> RecordingHost:
    return RecordingHost(
        tmp_path / "models", Settings(projects_dir=str(tmp_path / "projects")), device="cpu", home=tmp_path
    )


def add_project(host, name: str = "neeko", captions: dict[str, str] | None = None, colours=()) -> Path:
    """A project whose dataset holds captioned pictures (``captions``) and uncaptioned ones (``colours``)."""
    project = create_project(host.projects_dir(), name)
    for stem, text in (captions or {}).items():
        solid_image("grey", (16, 16)).save(project.dataset_dir / f"{stem}.png")
        (project.dataset_dir / f"{stem}.txt").write_text(text, encoding="utf-8")
    for colour in colours:
        solid_image(colour, (64, 64)).save(project.dataset_dir / f"{colour}.png")
    return project.dataset_dir


def build(host) -> tags.TagsTab:
    """The tab inside a page with a project picker, as the app builds it."""
    with gr.Blocks(analytics_enabled=False):
        task_id = gr.Textbox(visible=False, elem_id=elem_id("task-id"))
        names = list_projects(host.projects_dir())
        picker = gr.Dropdown(choices=names, value=names[0] if names else None, elem_id=elem_id("project"))
        ctx = UiContext(host=host, project=picker, task_id=task_id)
        with gr.Tabs(), gr.Tab("Tags"):
            tab = tags.render(ctx)
    return tab


@pytest.fixture
def dataset(host) -> Path:
    return add_project(host, captions=CAPTIONS)


@pytest.fixture
def tab(host, dataset) -> tags.TagsTab:
    return build(host)


def view_args(require=(), exclude=(), min_share=0.8, checked=(), selected="", project="neeko"):
    return (project, list(require), list(exclude), min_share, list(checked), selected)


def caption(folder: Path, stem: str) -> str:
    return (folder / f"{stem}.txt").read_text(encoding="utf-8")


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.txt"))}


def select(index) -> gr.SelectData:
    return gr.SelectData(None, {"index": index, "value": None, "selected": True})


def named(values: tuple, editor) -> dict[str, object]:
    """The editor's view outputs by name (table, require, ..., caption)."""
    names = ["table", "require", "exclude", "gallery", "shown", "count", "traits", "backup", "caption"]
    assert len(editor.view_outputs()) == len(names)
    return dict(zip(names, values, strict=False))


# -- tagging --------------------------------------------------------------------------------------
def test_tagging_writes_captions_reports_progress_and_refreshes_the_editor(host, tmp_path):
    folder = add_project(host, colours=["red", "cyan", "black"])
    tab = build(host)
    calls = []
    outputs = tab.tagging.binding.call(
        {"config": {"model_dir": str(TAGGER_V3_DIR)}}, progress=lambda value, desc=None: calls.append(value)
    )
    provider, summary, *view, status = outputs
    for colour, text in TAGGED.items():
        assert caption(folder, colour) == text
    assert "dbchar-message-ok" in status
    assert "Tagged 3 pictures on CPUExecutionProvider" in status and "3 written" in status
    assert provider.startswith("Model v3 (folder) ran on CPUExecutionProvider, batch 8")
    assert "3 written, 0 problems" in summary
    assert calls[0] == (0, None) and calls[-1] == (3, 3)
    shown = named(tuple(view), tab.editor)
    assert ["1girl", 3, "100%"] in shown["table"]["data"]
    assert ["hatsune miku", 1, "33%"] in shown["table"]["data"]
    assert [c for _, c in shown["gallery"]] == [TAGGED["black"], TAGGED["cyan"], TAGGED["red"]]
    assert tab.tagging.holder.tagger is None  # released after the run: training needs the memory
    # Every picture's scores are kept beside the dataset: Pick a checkpoint finds the traits there.
    record = json.loads((folder.parent / "tags.json").read_text(encoding="utf-8"))
    assert len(record["images"]) == 3 and "1girl" in json.dumps(record["images"])


def test_always_first_is_the_projects_instance_token(host):
    folder = add_project(host, colours=["red"])
    project_root = folder.parent
    save_concepts(project_root / "concept.json", [Concept(instance_token="sg neeko")])
    tab = build(host)
    box = tab.tagging.form.components["always_first"]
    assert box.value == "sg neeko"
    *_, status = tab.tagging.binding.call(
        {"config": {"model_dir": str(TAGGER_V3_DIR), "always_first": "sg neeko"}}
    )
    assert "dbchar-message-ok" in status
    assert caption(folder, "red") == "sg neeko, " + TAGGED["red"]
    # The token is on every caption on purpose: it is never offered as a trait to drop.
    view = tab.editor.view(*view_args(min_share=0.5))
    assert [tag for _, tag in view.traits] == [
        "1girl",
        "from side",
        "long hair",
        "red hair",
        "solo",
        "upper body",
    ]


def test_switching_project_prefills_the_token_but_keeps_what_the_user_typed(host):
    add_project(host, "a", captions={"x": "1girl, smile"})
    b = add_project(host, "b", captions={"y": "1girl, red hair"})
    save_concepts(b.parent / "concept.json", [Concept(instance_token="bee")])
    tab = build(host)
    args = (*view_args(project="b", require=["smile"]), "", "")
    out = tab.switch_project(*args)
    view = named(out[:9], tab.editor)
    always_first, prefilled, message, image, selected = out[9:]
    assert (always_first, prefilled) == ("bee", "bee")
    assert view["require"] == compat.update(choices=["1girl", "red hair"], value=[])
    assert view["caption"] == "" and (image, selected) == (None, "")
    assert message == ""
    # Back to a project without a concept: the automatic token goes, a typed one stays.
    assert tab.switch_project(*view_args(project="a"), "bee", "bee")[9:11] == ("", "")
    assert tab.switch_project(*view_args(project="a"), "my token", "bee")[9:11] == ("my token", "bee")
    assert prefill_always_first("", "", []) == ("", "")


def test_keep_loaded_holds_the_session_until_freed(host):
    add_project(host, colours=["red"])
    tab = build(host)
    tab.tagging.binding.call({"config": {"model_dir": str(TAGGER_V3_DIR)}, "keep": True})
    held = tab.tagging.holder.tagger
    assert held is not None and held.session is not None
    tab.tagging.binding.call(
        {"config": {"model_dir": str(TAGGER_V3_DIR), "write_mode": "overwrite"}, "keep": True}
    )
    assert tab.tagging.holder.tagger is held  # same model: reused, not reloaded
    (status,) = tab.tagging.release_binding.call({})
    assert "Freed the tagger model v3" in status
    assert held.session is None and tab.tagging.holder.tagger is None
    assert "No tagger model is loaded" in tab.tagging.release_binding.call({})[0]


def test_stop_leaves_the_captions_untouched_and_says_so(host):
    folder = add_project(host, colours=["red", "black"])
    tab = build(host)
    *outputs, status = tab.tagging.binding.call(
        {"config": {"model_dir": str(TAGGER_V3_DIR)}}, progress=lambda value, desc=None: host.interrupt()
    )
    assert outputs == [NO_CHANGE] * len(outputs)
    assert "dbchar-message-stopped" in status and "Tagging stopped by the user." in status
    assert list(folder.glob("*.txt")) == []


def test_tagging_problems_are_messages(host, tmp_path):
    tab = build(host)  # no project yet
    *_, status = tab.tagging.binding.call({"config": {"model_dir": str(TAGGER_V3_DIR)}})
    assert "Pick or create a project" in status
    add_project(host, "empty")
    tab = build(host)
    *_, status = tab.tagging.binding.call({"config": {"model_dir": str(TAGGER_V3_DIR)}})
    assert "no pictures in" in status and "add pictures in the Dataset tab first" in status
    add_project(host, "neeko", colours=["red"])
    *_, status = tab.tagging.binding.call(
        {"project": "neeko", "config": {"model_dir": str(tmp_path / "nowhere")}}
    )
    assert "dbchar-message-error" in status and "does not exist" in status
    *_, status = tab.tagging.binding.call(
        {"project": "neeko", "config": {"general_threshold": 2.0, "model_dir": str(TAGGER_V3_DIR)}}
    )
    assert "general_threshold" in status and "dbchar-message-error" in status


def test_offline_without_the_model_shows_the_cores_message(host, fake_hf_cache):
    folder = add_project(host, colours=["red"])
    tab = build(host)
    info = tab.tagging.describe_model("wd-eva02-large-tagger-v3", "")
    assert "Not in the Hugging Face cache yet: the first run downloads it" in info
    *_, status = tab.tagging.binding.call({"config": {"model": "wd-eva02-large-tagger-v3"}})
    assert "dbchar-message-error" in status
    assert "wd-eva02-large-tagger-v3 is not in the Hugging Face cache" in status
    assert "local model folder" in status
    assert not (folder / "red.txt").exists()


def test_a_cached_registry_model_is_used_from_the_cache(host, fake_hf_cache):
    folder = add_project(host, colours=["red"])
    model = get_model("wd-v1-4-moat-tagger-v2")
    fake_hf_cache.add_repo(model.repo_id, TAGGER_V2_DIR, revision=model.revision)
    tab = build(host)
    info = tab.tagging.describe_model(model.key, "")
    assert "MOAT v2 (WD 1.4)" in info and "In the Hugging Face cache" in info
    provider, *_, status = tab.tagging.binding.call({"config": {"model": model.key}})
    assert "Tagged 1 picture on" in status
    assert provider.startswith(
        "Model wd-v1-4-moat-tagger-v2 (cache, 8452cddf28) ran on CPUExecutionProvider, batch 1"
    )
    assert caption(folder, "red") == TAGGED["red"]


def test_model_line_for_a_local_folder(host, tmp_path):
    tab = build(host)
    assert "model.onnx and selected_tags.csv found" in tab.tagging.describe_model("x", str(TAGGER_V3_DIR))
    assert "does not exist" in tab.tagging.describe_model("x", str(tmp_path / "nope"))


def test_tagging_in_the_webui_host(fake_webui):
    from lib_dbchar.host.webui import WebuiHost

    host = WebuiHost()
    folder = add_project(host, colours=["black"])
    tab = build(host)
    *_, status = tab.tagging.binding.call({"config": {"model_dir": str(TAGGER_V3_DIR)}})
    assert "Tagged 1 picture on" in status
    assert caption(folder, "black") == TAGGED["black"]
    assert DIRECT_TASK_ID in fake_webui.progress.finished_tasks


# -- the editor -----------------------------------------------------------------------------------
def test_frequency_table_counts_each_tag_once_per_picture(tab):
    view = named(tab.editor.reload(*view_args())[:9], tab.editor)
    assert view["table"] == {
        "headers": ["Tag", "Pictures", "Share"],
        "data": [
            ["1girl", 4, "100%"],
            ["school uniform", 4, "100%"],
            ["red hair", 3, "75%"],
            ["blue eyes", 2, "50%"],
            ["smile", 2, "50%"],
            ["closed eyes", 1, "25%"],
            ["from side", 1, "25%"],
        ],
    }
    assert view["require"]["choices"] == [row[0] for row in view["table"]["data"]]
    assert "4 of 4 pictures." in view["count"]
    assert "Nothing to undo yet" in view["backup"] and str(backup_root(Path("x")).name) in view["backup"]


def test_filter_with_and_not(tab, dataset):
    items, shown, count = tab.editor.refilter("neeko", ["red hair"], ["smile"])
    assert [Path(p).name for p in shown] == ["02.png", "04.png"]
    assert [c for _, c in items] == [CAPTIONS["02"], CAPTIONS["04"]]
    assert "2 of 4 pictures (with red hair; without smile)." in count
    _, shown, count = tab.editor.refilter("neeko", ["RED_HAIR", "smile"], [])
    assert [Path(p).name for p in shown] == ["01.png"]
    assert "with RED_HAIR and smile" in count


def test_clicking_a_tag_adds_it_to_the_filter(tab):
    rows = tab.editor.reload(*view_args())[0]
    assert tab.editor.pick_tag(rows, ["smile"], select([2, 1])) == compat.update(value=["smile", "red hair"])
    assert tab.editor.pick_tag(rows["data"], ["red hair"], select([2, 0])) == NO_CHANGE
    assert tab.editor.pick_tag(rows, [], select([99, 0])) == NO_CHANGE


def test_click_a_picture_edit_and_save_its_caption(tab, dataset):
    shown = tab.editor.reload(*view_args())[4]
    image, path, text, note = tab.editor.select_picture("neeko", shown, select(2))
    assert Path(path).name == "03.png" and text == CAPTIONS["03"] and note == ""
    assert image.size == (16, 16) and image.mode == "RGB"
    out = tab.editor.save(*view_args(selected=path), "1girl, blue eyes, blue eyes, smile,  ")
    assert caption(dataset, "03") == "1girl, blue eyes, smile"
    assert "Saved 3 tags to" in out[-1]
    assert ["school uniform", 3, "75%"] in named(out[:9], tab.editor)["table"]["data"]
    assert list(dataset.glob("*.tmp*")) == []  # atomic write left nothing behind


def test_saving_without_a_picture_or_project_says_what_to_do(tab, dataset):
    before = snapshot(dataset)
    out = tab.editor.save(*view_args(), "x")
    assert out[:9] == (NO_CHANGE,) * 9 and "Click a picture in the gallery first" in out[-1]
    out = tab.editor.save(*view_args(selected=str(dataset / "gone.png")), "x")
    assert "is not a picture of" in out[-1]
    assert "Pick or create a project" in tab.editor.reload(*view_args(project=None))[-1]
    assert snapshot(dataset) == before


def test_bulk_remove_on_the_filtered_set_changes_the_files_and_undo_restores_them(tab, dataset):
    before = snapshot(dataset)
    changes, message = tab.editor.preview_edit("neeko", ["red hair"], ["from side"], "remove", "red hair", "")
    assert changes["data"] == [
        ["01.png", "red hair", "", "1girl, smile, school uniform"],
        ["02.png", "red_hair", "", "1girl, closed eyes, school uniform"],
    ]
    assert "changes 2 of the 2 filtered pictures" in message
    assert snapshot(dataset) == before  # a preview writes nothing

    out = tab.editor.apply(*view_args(require=["red hair"], exclude=["from side"]), "remove", "red hair", "")
    view = named(out[:9], tab.editor)
    assert caption(dataset, "01") == "1girl, smile, school uniform"
    assert caption(dataset, "02") == "1girl, closed eyes, school uniform"
    assert caption(dataset, "04") == CAPTIONS["04"]  # outside the filter: untouched
    assert "remove: red hair: wrote 2 captions" in out[-1] and str(backup_root(dataset)) in out[-1]
    assert view["shown"] == []  # nothing has the filtered tag any more
    # 04's spelling is the one left; the filter's own spelling stays selectable beside it.
    assert ["Red Hair", 1, "25%"] in view["table"]["data"]
    tags_left = [r[0] for r in view["table"]["data"]]
    assert view["require"] == compat.update(choices=[*tags_left, "red hair"], value=["red hair"])
    assert view["exclude"] == compat.update(choices=tags_left, value=["from side"])
    assert "Undo takes back: remove: red hair." in view["backup"]

    out = tab.editor.undo(*view_args(require=["red hair"]))
    assert snapshot(dataset) == before
    assert "Undid remove: red hair: restored 2 captions." in out[-1]
    assert out[-2]["data"] == []
    assert len(named(out[:9], tab.editor)["shown"]) == 3
    assert "nothing to undo" in tab.editor.undo(*view_args())[-1]


def test_bulk_add_replace_and_regex(tab, dataset):
    tab.editor.apply(*view_args(require=["smile"]), "add at start", "sg neeko", "")
    assert caption(dataset, "01") == "sg neeko, " + CAPTIONS["01"]
    assert caption(dataset, "02") == CAPTIONS["02"]
    tab.editor.apply(*view_args(), "replace", "school uniform", "serafuku")
    assert all(
        "serafuku" in caption(dataset, s) and "school uniform" not in caption(dataset, s) for s in CAPTIONS
    )
    out = tab.editor.apply(*view_args(), "replace (regex)", r"(?i)^(\w+) (hair|eyes)$", r"\2 of \1")
    assert caption(dataset, "04") == "1girl, Hair of Red, eyes of blue, from side, serafuku"
    assert "wrote 4 captions" in out[-1]
    out = tab.editor.apply(*view_args(), "replace (regex)", "(", "x")
    assert "not a valid regular expression" in out[-1] and out[0] == NO_CHANGE
    out = tab.editor.preview_edit("neeko", [], [], "remove", " , ", "")
    assert "name at least one tag to remove" in out[-1]
    assert "nothing changes" in tab.editor.preview_edit("neeko", [], [], "remove", "absent", "")[-1]


def test_traits_are_listed_and_dropped_through_the_undoable_path(tab, dataset):
    view = named(tab.editor.reload(*view_args())[:9], tab.editor)
    assert view["traits"] == compat.update(
        choices=[("1girl (100%)", "1girl"), ("school uniform (100%)", "school uniform")], value=[]
    )
    assert tab.editor.retrait("neeko", 0.75, ["school uniform"]) == compat.update(
        choices=[
            ("1girl (100%)", "1girl"),
            ("school uniform (100%)", "school uniform"),
            ("red hair (75%)", "red hair"),
        ],
        value=["school uniform"],
    )
    before = snapshot(dataset)
    out = tab.editor.drop_traits(*view_args(min_share=0.75, checked=["school uniform", "red hair"]))
    assert caption(dataset, "04") == "1girl, blue eyes, from side"
    assert "drop traits: school uniform, red hair: wrote 4 captions" in out[-1]
    assert named(out[:9], tab.editor)["traits"]["value"] == []
    tab.editor.undo(*view_args())
    assert snapshot(dataset) == before
    assert "Tick the traits to drop first" in tab.editor.drop_traits(*view_args())[-1]


def test_opening_the_tab_reads_the_captions_again(tab, dataset):
    assert tab.tab is not None  # rendered inside a gr.Tab: its select event refreshes
    (dataset / "01.txt").write_text("1girl, smile", encoding="utf-8")
    out = tab.open_tab(*view_args(selected=str(dataset / "01.png")), "", "")
    view = named(out[:9], tab.editor)
    assert view["caption"] == "1girl, smile"
    assert ["school uniform", 3, "75%"] in view["table"]["data"]
    assert out[9:] == ("", "", "")


def test_unreadable_captions_and_pictures_do_not_stop_the_editor(tab, dataset):
    (dataset / "05.png").write_bytes(b"not a picture")
    (dataset / "06.png").write_bytes(solid_image("red", (8, 8)).tobytes())
    (dataset / "07.png").write_bytes((dataset / "01.png").read_bytes())
    (dataset / "07.txt").write_bytes(b"\xff\xfe\xfa broken")
    view = tab.editor.view(*view_args())
    assert len(view.shown) == 6  # 07 is left out: its caption cannot be read
    assert "6 of 6 pictures." in view.summary and "07.txt: not readable as UTF-8" in view.summary
    thumbs = dict(zip(view.shown, view.items, strict=True))
    assert thumbs[str(dataset / "05.png")][0].size == (256, 256)  # grey stand-in, the gallery goes on
    assert thumbs[str(dataset / "05.png")][1] == "(no caption)"


# -- the pure helpers -----------------------------------------------------------------------------
def test_tag_list_accepts_menus_text_and_nothing():
    assert tag_list(None) == []
    assert tag_list("a, b\nc ,") == ["a", "b", "c"]
    assert tag_list(["a", " ", "b "]) == ["a", "b"]


def test_plan_bulk_rejects_an_unknown_operation(dataset):
    from lib_dbchar.tagger.editor import load_dataset

    entries = load_dataset(dataset).entries
    with pytest.raises(ValueError, match="bulk edit 'rename' is not one of remove, add"):
        plan_bulk(entries, "rename", "x")
    assert preview_rows(plan_bulk(entries[:1], "add", "a, 1girl")) == [
        ["01.png", "", "a", CAPTIONS["01"] + ", a"]
    ]


def test_view_is_json_friendly_and_caps_the_gallery(dataset, monkeypatch):
    from lib_dbchar.tagger.editor import load_dataset
    from lib_dbchar.ui import tags_view

    monkeypatch.setattr(tags_view, "MAX_GALLERY", 2)
    view = build_view(load_dataset(dataset), require=["school uniform"])
    assert isinstance(view, EditorView)
    assert len(view.items) == 2 and view.items[0] == (str(dataset / "01.png"), CAPTIONS["01"])
    assert "4 of 4 pictures (with school uniform); the gallery shows the first 2." in view.summary
    json.dumps([view.rows, view.shown, view.traits, view.summary, view.backup])


def test_thumbnails_are_cached_until_the_file_changes(tmp_path):
    path = tmp_path / "a.png"
    solid_image("red", (600, 300)).save(path)
    thumbs = Thumbnails(side=64, capacity=1)
    first = thumbs.get(path)
    assert first.size == (64, 32) and thumbs.get(path) is first
    solid_image("blue", (300, 600)).save(path)
    second = thumbs.get(path)
    assert second.size == (32, 64) and second.getpixel((0, 0)) == (0, 0, 255)
    other = tmp_path / "b.png"
    solid_image("red", (8, 8)).save(other)
    thumbs.get(other)
    assert thumbs.get(path) is not second  # capacity 1: evicted
    assert thumbs.get(tmp_path / "missing.png").size == (64, 64)
