import os
import stat

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lib_dbchar.errors import NameRejected, TargetExists
from lib_dbchar.paths import MAX_NAME_LENGTH, atomic_write, atomic_writer, child_path, new_path, safe_name


@pytest.mark.parametrize(
    ("typed", "expected"),
    [
        ("Star Guardian Neeko", "Star Guardian Neeko"),
        ("star/guardian\\neeko", "star_guardian_neeko"),
        ("../../etc/passwd", "_._etc_passwd"),
        ("  .hidden  ", "hidden"),
        ("a:b*c?d\"e<f>g|h", "a_b_c_d_e_f_g_h"),
        ("run...1", "run.1"),
        ("tab\tname\n", "tab_name_"),
    ],
)
def test_safe_name_examples(typed, expected):
    assert safe_name(typed) == expected


@pytest.mark.parametrize("typed", ["", "   ", "..", "/", "///", "...", "CON", "nul.txt", "LPT1"])
def test_safe_name_rejects(typed):
    with pytest.raises(NameRejected) as info:
        safe_name(typed, what="project name")
    assert "project name" in str(info.value)


@given(st.text(min_size=1, max_size=300))
def test_safe_name_is_one_harmless_component(typed):
    try:
        name = safe_name(typed)
    except NameRejected:
        return
    assert "/" not in name and "\\" not in name and "\x00" not in name
    assert ".." not in name
    assert name not in {".", ""}
    assert not name.startswith(".") and not name.endswith((".", " "))
    assert len(name) <= MAX_NAME_LENGTH


def test_child_path_stays_inside(tmp_path):
    assert child_path(tmp_path, "../x").parent == tmp_path
    assert child_path(tmp_path, "a/b", suffix=".safetensors").name == "a_b.safetensors"


def test_new_path_refuses_existing(tmp_path):
    (tmp_path / "hero.safetensors").write_bytes(b"x")
    with pytest.raises(TargetExists) as info:
        new_path(tmp_path, "hero", suffix=".safetensors", what="output model name")
    assert "hero.safetensors" in str(info.value) and "output model name" in str(info.value)
    assert new_path(tmp_path, "hero", suffix=".safetensors", overwrite=True).name == "hero.safetensors"
    assert new_path(tmp_path, "hero2", suffix=".safetensors").name == "hero2.safetensors"


def test_atomic_write_replaces_and_keeps_mode(tmp_path):
    target = tmp_path / "sub" / "a.txt"
    atomic_write(target, "one")
    os.chmod(target, 0o640)
    atomic_write(target, b"two")
    assert target.read_bytes() == b"two"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert [p.name for p in target.parent.iterdir()] == ["a.txt"]


def test_atomic_write_failure_keeps_old_content(tmp_path):
    target = tmp_path / "caption.txt"
    target.write_text("good caption")

    class Boom(Exception):
        pass

    with pytest.raises(Boom), atomic_writer(target, "w", encoding="utf-8") as handle:
        handle.write("half a capt")
        raise Boom
    assert target.read_text() == "good caption"
    assert [p.name for p in tmp_path.iterdir()] == ["caption.txt"]
