"""User presets in the Train tab: save the form, list beside the shipped ones, load back, no shadowing."""

from __future__ import annotations

import html
import json

import pytest

from lib_dbchar.config import to_dict
from lib_dbchar.train.config import MODEL_FIELDS, TrainConfig, builtin_presets, find_preset, user_presets
from tests import test_ui_concept_train as base

pytestmark = pytest.mark.filterwarnings("ignore:\\s*on_event is deprecated:DeprecationWarning")

MINE = {"learning_rate": 2e-6, "batch_size": 2, "gradient_checkpointing": True, "lr_scheduler": "cosine"}


@pytest.fixture
def host(tmp_path):
    return base.host.__wrapped__(tmp_path)  # the same host as the Concept/Train tab tests


@pytest.fixture
def tab(host):
    return base.build(host, base.train_tab)


def test_save_as_preset_writes_the_form_and_selects_it(tab):
    dropdown, message = tab.save_preset(" my 3060 ", False, *base.form_values(tab.form, **MINE))
    path = tab.presets_dir() / "my 3060.json"
    assert "dbchar-message-ok" in message and str(path) in message
    record = json.loads(path.read_text(encoding="utf-8"))
    assert record["name"] == "my 3060"
    expected = {k: v for k, v in to_dict(TrainConfig(**MINE)).items() if k not in MODEL_FIELDS}
    assert record["values"] == expected  # every training field, named as TrainConfig names it
    assert dropdown["value"] == "my 3060"
    assert dropdown["choices"][: len(builtin_presets())] == [p.name for p in builtin_presets()]
    assert dropdown["choices"][-1] == "my 3060" and tab.preset_names()[-1] == "my 3060"
    assert not list(tab.presets_dir().glob("*.tmp*"))  # written atomically, nothing left over


def test_saved_preset_loads_back_into_a_fresh_form(tab):
    tab.save_preset("mine", False, *base.form_values(tab.form, **MINE))
    # A new session: the form shows the defaults; applying the preset shows what was saved.
    out = tab.apply_preset("mine", to_dict(TrainConfig()), *base.form_values(tab.form))
    assert "Applied the preset 'mine'" in html.unescape(out[-1])
    shown = base.shown(tab.form, out)
    for name, value in MINE.items():
        assert shown[name] == value, name
    assert tab.form.parse(shown) == TrainConfig(**MINE)


def test_preset_names_are_checked(tab):
    values = base.form_values(tab.form)
    _, message = tab.save_preset("  ", False, *values)
    assert "dbchar-message-error" in message and "Type a name" in message
    _, message = tab.save_preset("character (GUIDE)", False, *values)
    assert "is a built-in preset" in message and not tab.presets_dir().exists()
    tab.save_preset("mine", False, *values)
    _, message = tab.save_preset("mine", False, *base.form_values(tab.form, batch_size=4))
    assert "exists" in message and "Replace my preset" in message
    assert json.loads((tab.presets_dir() / "mine.json").read_text())["values"]["batch_size"] == 1
    _, message = tab.save_preset("mine", True, *base.form_values(tab.form, batch_size=4))
    assert "dbchar-message-ok" in message
    assert json.loads((tab.presets_dir() / "mine.json").read_text())["values"]["batch_size"] == 4
    _, message = tab.save_preset("mine", False, *base.form_values(tab.form, resolution=70))
    assert "resolution" in message  # an invalid form is not saved


def test_a_user_file_never_shadows_a_shipped_preset(host, tab):
    folder = tab.presets_dir()
    folder.mkdir(parents=True)
    record = {"name": "Character (guide)", "description": "", "values": {"learning_rate": 9e-6}}
    (folder / "guide.json").write_text(json.dumps(record), encoding="utf-8")
    presets, problems = user_presets(folder)
    assert [p.name for p in presets] == ["Character (guide) (yours)"]
    assert (
        len(problems) == 1
        and "has the name of a shipped preset" in problems[0]
        and "guide.json" in problems[0]
    )
    assert find_preset("Character (guide)", folder).builtin
    assert find_preset("Character (guide) (yours)", folder).values == {"learning_rate": 9e-6}
    # The tab lists both and says why, when it opens and after a save.
    fresh = base.build(host, base.train_tab)
    assert "Character (guide) (yours)" in fresh.preset_names()
    assert "has the name of a shipped preset" in fresh.message.value
    _, message = fresh.save_preset("other", False, *base.form_values(fresh.form))
    assert (
        "Saved the preset 'other'" in html.unescape(message) and "has the name of a shipped preset" in message
    )
