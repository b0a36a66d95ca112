"""Several concepts per run in the Concept tab: pick, add, remove, validate each, save the list."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from lib_dbchar.concept import Concept, load_concepts, resolve_dirs, save_concepts
from lib_dbchar.config import to_dict
from lib_dbchar.ui.compat import no_change
from lib_dbchar.ui.concept_logic import concept_labels, label_index, remove_entry
from lib_dbchar.ui.tabs import concept as concept_tab
from tests import test_ui_concept_train as base

pytestmark = pytest.mark.filterwarnings("ignore:\\s*on_event is deprecated:DeprecationWarning")


@pytest.fixture
def host(tmp_path):
    return base.host.__wrapped__(tmp_path)  # the same host as the Concept/Train tab tests


@pytest.fixture
def project(host):
    return base.project.__wrapped__(host)


@pytest.fixture
def tab(host, project):
    return base.build(host, concept_tab)


def split(tab, out):
    """(form values by field, entries, index, picker update, message) of a handler's outputs."""
    n = len(tab.form.components)
    return base.shown(tab.form, out), out[n], out[n + 1], out[n + 2], out[-1]


def widgets(tab, form: dict) -> list:
    return [form[name] for name in tab.form.components]


def two_concepts(project) -> None:
    save_concepts(
        project.concept_file,
        [
            Concept(instance_token="sks", num_class_images=4),
            Concept(instance_token="ahri", dataset_dir="ahri"),
        ],
    )


def test_labels_and_indices():
    entries = [to_dict(Concept(instance_token="sks")), to_dict(Concept())]
    assert concept_labels(entries) == ["1 · sks", "2 · (no token yet)"]
    assert [label_index(label, 2) for label in concept_labels(entries)] == [0, 1]
    assert label_index("9 · gone", 2) == 1 and label_index(None, 2) == 0 and label_index("x", 0) == 0


def test_pick_another_concept_keeps_the_edits(tab, project):
    two_concepts(project)
    form, entries, index, picker, message = split(tab, tab.load("neeko"))
    assert "2 concepts" in message and index == 0 and form["instance_token"] == "sks"
    assert picker["choices"] == ["1 · sks", "2 · ahri"] and picker["value"] == "1 · sks"
    # The user edits concept 1 (not saved) and picks concept 2.
    edited = widgets(tab, {**form, "caption_dropout": 0.25})
    form2, entries, index, picker, _ = split(tab, tab.select("2 · ahri", entries, 0, *edited))
    assert index == 1 and form2["instance_token"] == "ahri" and form2["dataset_dir"] == "ahri"
    assert entries[0]["caption_dropout"] == 0.25  # kept in the list
    # Back to concept 1 (as gradio calls it on a pick): the edit is still there.
    event = SimpleNamespace(value="1 · sks")
    form1, entries, index, _, _ = split(tab, tab.select_event(event, entries, 1, *widgets(tab, form2)))
    assert index == 0 and form1["caption_dropout"] == 0.25
    assert load_concepts(project.concept_file)[0].caption_dropout == 0.0  # nothing written yet


def test_add_validate_each_and_save_the_list(tab, project):
    two_concepts(project)
    before = project.concept_file.read_text(encoding="utf-8")
    form, entries, index, _, _ = split(tab, tab.load("neeko"))
    form3, entries, index, picker, message = split(tab, tab.add(entries, index, *widgets(tab, form)))
    assert index == 2 and len(entries) == 3 and picker["value"] == "3 · (no token yet)"
    assert form3["instance_token"] == "" and "Added concept 3" in message
    # Concept 3 has no token: Save names it and writes nothing.
    _, _, message = tab.save("neeko", entries, index, *widgets(tab, form3))
    assert "dbchar-message-error" in message and "Concept 3.instance_token" in message
    assert project.concept_file.read_text(encoding="utf-8") == before
    # The token-in-class-prompt check runs per concept.
    bad = {**form3, "instance_token": "neeko", "class_prompt": "Neeko, [filewords]"}
    _, _, message = tab.save("neeko", entries, index, *widgets(tab, bad))
    assert "Concept 3.class_prompt" in message and "contains the instance token" in message
    good = {**form3, "instance_token": "neeko", "dataset_dir": "neeko"}
    entries, picker, message = tab.save("neeko", entries, index, *widgets(tab, good))
    assert "dbchar-message-ok" in message and "(3 concepts)" in message
    assert picker["choices"] == ["1 · sks", "2 · ahri", "3 · neeko"]
    saved = load_concepts(project.concept_file)
    assert [c.instance_token for c in saved] == ["sks", "ahri", "neeko"]
    assert saved[0].num_class_images == 4 and saved[2].dataset_dir == "neeko"
    _, entries, _, picker, _ = split(tab, tab.load("neeko"))
    assert len(entries) == 3 and picker["choices"][2] == "3 · neeko"


def test_remove_keeps_the_class_folders_of_the_concepts_after_it(tab, project):
    two_concepts(project)
    form, entries, _, _, _ = split(tab, tab.load("neeko"))
    _, ahri_dir = resolve_dirs(load_concepts(project.concept_file)[1], project.root, 1)
    out = tab.remove(entries, 0, *widgets(tab, form))
    form, entries, index, picker, message = split(tab, out)
    assert "Removed concept 1" in message and index == 0 and form["instance_token"] == "ahri"
    assert form["class_dir"] == "classes/classifiers_1" and picker["choices"] == ["1 · ahri"]
    tab.save("neeko", entries, 0, *widgets(tab, form))
    saved = load_concepts(project.concept_file)
    assert [c.instance_token for c in saved] == ["ahri"]
    # Now first in the list, it still uses its own class images, not concept 1's old folder.
    assert resolve_dirs(saved[0], project.root, 0)[1] == ahri_dir
    # The last concept cannot go.
    out = tab.remove(entries, 0, *widgets(tab, form))
    assert "at least one concept" in out[-1] and out[len(tab.form.components)] == no_change()


def test_remove_entry_leaves_explicit_folders_alone():
    entries = [to_dict(Concept(instance_token=t)) for t in ("a", "b", "c")]
    entries[2]["class_dir"] = "/data/c-classes"
    out, index = remove_entry(entries, 1)
    assert [e["instance_token"] for e in out] == ["a", "c"] and index == 1
    assert out[0]["class_dir"] == "" and out[1]["class_dir"] == "/data/c-classes"
