"""The tag editor's core: frequencies, filters, bulk edits with backup and undo, traits."""

from __future__ import annotations

import json

import pytest

from lib_dbchar.errors import DbcharError, JobStopped
from lib_dbchar.jobs import JobContext
from lib_dbchar.tagger.backups import backup_root, last_backup_label
from lib_dbchar.tagger.editor import (
    apply_edit,
    common_traits,
    filter_entries,
    load_dataset,
    plan_add,
    plan_drop_traits,
    plan_remove,
    plan_replace,
    save_caption,
    tag_frequencies,
    undo_last_edit,
)
from tests.kit.tagger import solid_image

CAPTIONS = {
    "01": "1girl, pink hair, green eyes, smile, school uniform",
    "02": "1girl, pink_hair, green eyes, closed eyes, school uniform",
    "03": "1girl, Pink Hair, green eyes, smile, from side",
    "04": "1girl, pink hair, green eyes, school uniform, ganyu \\(genshin impact\\)",
    "05": "1girl, pink hair, blue eyes, smile, school uniform",
}


@pytest.fixture
def dataset_dir(tmp_path):
    folder = tmp_path / "dataset"
    folder.mkdir()
    for stem, text in CAPTIONS.items():
        solid_image("grey", (8, 8)).save(folder / f"{stem}.png")
        (folder / f"{stem}.txt").write_text(text, encoding="utf-8")
    solid_image("grey", (8, 8)).save(folder / "06.png")  # no caption yet
    return folder


def read(folder, stem):
    return (folder / f"{stem}.txt").read_text(encoding="utf-8")


def test_load_and_frequencies(dataset_dir):
    ds = load_dataset(dataset_dir)
    assert [e.image.name for e in ds.entries] == ["01.png", "02.png", "03.png", "04.png", "05.png", "06.png"]
    assert ds.entries[-1].tags == () and not ds.entries[-1].exists
    rows = {r.tag: (r.count, r.share) for r in tag_frequencies(ds)}
    # pink hair / pink_hair / Pink Hair are one tag, shown in its most frequent spelling.
    assert rows["pink hair"] == (5, pytest.approx(5 / 6))
    assert rows["1girl"] == (5, pytest.approx(5 / 6))
    assert rows["smile"][0] == 3 and rows["ganyu \\(genshin impact\\)"][0] == 1
    top = tag_frequencies(ds)[:2]
    assert [r.tag for r in top] == ["1girl", "pink hair"]  # ties A-Z


def test_filter_with_and_not(dataset_dir):
    ds = load_dataset(dataset_dir)
    stems = lambda entries: [e.image.stem for e in entries]  # noqa: E731
    assert stems(filter_entries(ds, require=["smile", "school uniform"])) == ["01", "05"]
    assert stems(filter_entries(ds, require=["PINK_HAIR"], exclude=["smile"])) == ["02", "04"]
    assert stems(filter_entries(ds, any_of=["closed eyes", "from side"])) == ["02", "03"]
    assert len(filter_entries(ds)) == 6


def test_per_image_editing(dataset_dir):
    ds = load_dataset(dataset_dir)
    entry = save_caption(ds.entry("06.png"), "1girl, solo, solo, pink hair")
    assert entry.tags == ("1girl", "solo", "pink hair") and entry.exists
    assert read(dataset_dir, "06") == "1girl, solo, pink hair"


def test_bulk_add_remove_replace_on_the_filtered_set_with_backup(dataset_dir):
    ds = load_dataset(dataset_dir)
    smiling = filter_entries(ds, require=["smile"])
    edit = plan_add(smiling, ["sg neeko"], at_start=True)
    assert [c.entry.image.stem for c in edit.changes] == ["01", "03", "05"]
    assert edit.changes[0].after[0] == "sg neeko"
    result = apply_edit(ds, edit)
    assert read(dataset_dir, "01").startswith("sg neeko, 1girl") and read(dataset_dir, "02") == CAPTIONS["02"]
    backup = backup_root(dataset_dir) / result.backup.rsplit("/", 1)[-1]
    assert sorted(p.name for p in backup.glob("*.txt")) == ["01.txt", "03.txt", "05.txt"]
    assert (backup / "01.txt").read_text(encoding="utf-8") == CAPTIONS["01"]
    manifest = json.loads((backup / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["label"] == "add at start: sg neeko" and not manifest["undone"]

    ds = load_dataset(dataset_dir)
    apply_edit(ds, plan_remove(ds.entries, ["PINK_HAIR", "smile"]))
    assert read(dataset_dir, "03") == "sg neeko, 1girl, green eyes, from side"
    ds = load_dataset(dataset_dir)
    apply_edit(ds, plan_replace(ds.entries, "green eyes", "emerald eyes"))
    assert read(dataset_dir, "02") == "1girl, emerald eyes, closed eyes, school uniform"
    assert "emerald eyes" not in read(dataset_dir, "05")


def test_regex_replace_and_invalid_patterns(dataset_dir):
    ds = load_dataset(dataset_dir)
    edit = plan_replace(ds.entries, r"^(\w+) eyes$", r"\1_eyes", regex=True)
    apply_edit(ds, edit)
    assert read(dataset_dir, "02") == "1girl, pink_hair, green_eyes, closed_eyes, school uniform"
    ds = load_dataset(dataset_dir)
    apply_edit(ds, plan_replace(ds.entries, r"^school .*", "", regex=True))  # empty result drops the tag
    assert "school" not in read(dataset_dir, "01")
    with pytest.raises(ValueError, match=r"pattern '\(unclosed' is not a valid regular expression"):
        plan_replace(ds.entries, "(unclosed", "x", regex=True)
    with pytest.raises(ValueError, match="name at least one tag"):
        plan_remove(ds.entries, [" "])


def test_undo_restores_the_last_bulk_edit_only(dataset_dir):
    ds = load_dataset(dataset_dir)
    apply_edit(ds, plan_remove(ds.entries, ["smile"]))
    ds = load_dataset(dataset_dir)
    apply_edit(ds, plan_add(ds.entries, ["solo"]))
    assert read(dataset_dir, "06") == "solo"  # created for the picture without a caption
    assert last_backup_label(dataset_dir) == "add: solo"
    undo = undo_last_edit(dataset_dir)
    assert undo.label == "add: solo" and undo.removed == ["06.txt"] and len(undo.restored) == 5
    assert not (dataset_dir / "06.txt").exists()
    assert "smile" not in read(dataset_dir, "01")
    undo = undo_last_edit(load_dataset(dataset_dir))
    assert undo.label == "remove: smile" and read(dataset_dir, "01") == CAPTIONS["01"]
    with pytest.raises(DbcharError, match="nothing to undo"):
        undo_last_edit(dataset_dir)


def test_undo_never_overwrites_later_changes(dataset_dir):
    ds = load_dataset(dataset_dir)
    apply_edit(ds, plan_remove(ds.entries, ["1girl"]))
    (dataset_dir / "02.txt").write_text("edited by hand afterwards", encoding="utf-8")
    undo = undo_last_edit(dataset_dir)
    assert undo.conflicts == ["02.txt"] and "01.txt" in undo.restored
    assert read(dataset_dir, "02") == "edited by hand afterwards"
    assert read(dataset_dir, "01") == CAPTIONS["01"]


def test_stopping_a_bulk_edit_keeps_what_was_written_undoable(dataset_dir):
    ds = load_dataset(dataset_dir)
    calls = []
    ctx = JobContext(progress=calls.append, should_stop=lambda: len(calls) >= 2)
    with pytest.raises(JobStopped):
        apply_edit(ds, plan_add(ds.entries, ["solo"]), ctx)
    assert read(dataset_dir, "01").endswith("solo") and read(dataset_dir, "02").endswith("solo")
    assert not read(dataset_dir, "03").endswith("solo")
    assert sorted(undo_last_edit(dataset_dir).restored) == ["01.txt", "02.txt"]
    assert read(dataset_dir, "01") == CAPTIONS["01"]


def test_traits_over_80_percent_and_dropping_them(dataset_dir):
    (dataset_dir / "06.png").unlink()
    ds = load_dataset(dataset_dir)
    traits = common_traits(ds)
    # 4 of 5 is exactly 80 %: the signature outfit counts.
    assert [(t.tag, t.count) for t in traits] == [
        ("1girl", 5), ("pink hair", 5), ("green eyes", 4), ("school uniform", 4),
    ]  # fmt: skip
    assert [t.tag for t in common_traits(ds, 0.6)][-1] == "smile"
    edit = plan_drop_traits(ds, ["pink hair", "green eyes"])
    assert edit.label == "drop traits: pink hair, green eyes" and len(edit.changes) == 5
    apply_edit(ds, edit)
    assert read(dataset_dir, "01") == "1girl, smile, school uniform"
    assert read(dataset_dir, "05") == "1girl, blue eyes, smile, school uniform"
    with pytest.raises(ValueError, match="min_share"):
        common_traits(ds, 1.5)


def test_unreadable_caption_is_reported_and_never_rewritten(dataset_dir):
    (dataset_dir / "03.txt").write_bytes(b"\xff\xfe\x00bad")
    ds = load_dataset(dataset_dir)
    assert "03.png" not in [e.image.name for e in ds.entries]
    assert "03.txt: not readable as UTF-8" in ds.problems[0]
    apply_edit(ds, plan_add(ds.entries, ["solo"]))
    assert (dataset_dir / "03.txt").read_bytes() == b"\xff\xfe\x00bad"


def test_missing_folder_and_plan_preview(tmp_path, dataset_dir):
    with pytest.raises(DbcharError, match="is not a folder"):
        load_dataset(tmp_path / "nope")
    ds = load_dataset(dataset_dir)
    preview = plan_remove(ds.entries, ["closed eyes"]).to_dict()
    assert preview["label"] == "remove: closed eyes" and len(preview["changes"]) == 1
    assert (
        preview["changes"][0]["before"][3] == "closed eyes"
        and "closed eyes" not in preview["changes"][0]["after"]
    )
    assert read(dataset_dir, "02") == CAPTIONS["02"]  # planning writes nothing
