"""The README is the user's door: what it says about the commands must stay true."""

from __future__ import annotations

import re
from pathlib import Path

from lib_dbchar import cli

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_lists_every_command_and_no_other():
    text = README.read_text(encoding="utf-8")
    line = re.search(r"lists the commands: (.+?)\n\(each has", text, re.S)
    assert line, "README: the sentence listing the commands is gone"
    listed = re.findall(r"`(\w+)`", line.group(1))
    assert sorted(listed) == sorted([*cli.COMMANDS, *cli.COMMAND_MODULES])


def test_every_command_the_readme_shows_exists():
    text = README.read_text(encoding="utf-8")
    shown = set(re.findall(r"python -m lib_dbchar (\w+)", text))
    assert shown <= {*cli.COMMANDS, *cli.COMMAND_MODULES}, shown
    assert {"demo", "train", "pick", "merge"} <= shown
