from dataclasses import dataclass
from pathlib import Path

import pytest

from lib_dbchar.config import from_dict, setting, specs, to_dict
from lib_dbchar.settings import WEBUI_OPTION_KEYS, Settings


@dataclass(frozen=True)
class Form:
    steps: int = setting(10, label="Steps", minimum=1, maximum=100)
    lr: float = setting(1e-6, label="Learning rate", minimum=0.0)
    mode: str = setting("ddim", label="Scheduler", choices=("ddim", "euler"))
    cache: bool = setting(False, label="Cache latents")
    out: Path = setting(Path("x"), label="Output")
    seed: int | None = setting(None, label="Seed")
    tags: list = setting([], label="Tags")


def test_specs_carry_labels_ranges_and_defaults():
    info = {i.name: i for i in specs(Form)}
    assert list(info) == ["steps", "lr", "mode", "cache", "out", "seed", "tags"]
    assert info["steps"].spec.label == "Steps" and info["steps"].spec.maximum == 100
    assert info["mode"].spec.choices == ("ddim", "euler")
    assert info["tags"].default == []


def test_from_dict_coerces_ui_values():
    form = from_dict(Form, {"steps": 20.0, "lr": "2e-6", "cache": "yes", "out": "/tmp/o", "seed": None})
    assert form == Form(steps=20, lr=2e-6, cache=True, out=Path("/tmp/o"), seed=None)
    assert to_dict(form)["out"] == "/tmp/o"


def test_list_defaults_are_not_shared():
    a, b = Form(), Form()
    a.tags.append("x")
    assert b.tags == []


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"steps": 0}, "Form.steps (Steps): 0 is below the minimum 1"),
        ({"steps": 101}, "above the maximum 100"),
        ({"steps": 2.5}, "Form.steps (Steps): 2.5 is not a valid int"),
        ({"mode": "dpm"}, "Form.mode (Scheduler): 'dpm' is not one of ddim, euler"),
        ({"cache": "maybe"}, "Form.cache (Cache latents)"),
        ({"stepz": 3}, "unknown field(s) stepz"),
        ({"steps": None}, "Form.steps (Steps): a value is required"),
    ],
)
def test_from_dict_names_the_field(data, message):
    with pytest.raises(ValueError, match=None) as info:
        from_dict(Form, data)
    assert message in str(info.value)


def test_from_dict_strict_requires_all():
    with pytest.raises(ValueError, match=r"Form\.lr: missing"):
        from_dict(Form, {"steps": 1}, partial=False)


def test_settings_option_table_matches_dataclass():
    # A renamed field without its table entry would silently drop what users saved in the webui.
    assert set(WEBUI_OPTION_KEYS) == {i.name for i in specs(Settings)}
    assert all(key.startswith("dbchar_") for key in WEBUI_OPTION_KEYS.values())


def test_settings_projects_dir_fallback(tmp_path):
    assert Settings().resolved_projects_dir(tmp_path) == tmp_path
    assert Settings(projects_dir=str(tmp_path / "p")).resolved_projects_dir(Path("/x")) == tmp_path / "p"
