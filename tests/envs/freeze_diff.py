"""Compare two ``pip freeze`` outputs: did installing dbchar change anything that was installed?

Usage: ``python tests/envs/freeze_diff.py BEFORE AFTER``

Exit 0 when AFTER only adds packages (the additions are printed); exit 1 naming every package whose
version changed or that disappeared; exit 2 on a usage error. Standard library only: it runs with
whatever Python CI has.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

# "# Editable install with no version control (probe-a==1.0)" -- pip's comment above an "-e" line.
_EDITABLE_COMMENT = re.compile(r"^#.*\(([A-Za-z0-9._-]+)==([^)\s]+)\)\s*$")
_EGG = re.compile(r"[#&]egg=([A-Za-z0-9._-]+)")
_PINNED = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?\s*===?\s*(\S+)")
_DIRECT = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?\s*@\s*(\S+)")


def canonical(name: str) -> str:
    """PEP 503 name normalisation: ``Typing_Extensions`` -> ``typing-extensions``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_freeze(text: str) -> dict[str, str]:
    """Read ``pip freeze`` output into ``{canonical name: version or "@ url" or "-e location"}``.

    Args:
        text: the output of ``pip freeze`` (any pip version).

    Returns:
        One entry per distribution; comments and blank lines are skipped, except pip's comment that
        names an editable install, which gives the following ``-e`` line its name.
    """
    found: dict[str, str] = {}
    editable_name = None
    for raw in text.splitlines():
        line = raw.strip()
        comment = _EDITABLE_COMMENT.match(line)
        if comment:
            editable_name = comment.group(1)
            continue
        if not line or line.startswith("#"):
            continue
        if line.startswith(("-e ", "--editable")):
            location = line.split(None, 1)[1] if " " in line else line
            egg = _EGG.search(location)
            name = editable_name or (egg.group(1) if egg else location)
            found[canonical(name)] = f"-e {location}"
        elif match := _PINNED.match(line):
            found[canonical(match.group(1))] = match.group(2)
        elif match := _DIRECT.match(line):
            found[canonical(match.group(1))] = f"@ {match.group(2)}"
        else:
            found[line] = line  # unknown shape: compared as a whole line
        editable_name = None
    return found


def compare(before: dict[str, str], after: dict[str, str]) -> tuple[list[str], list[str]]:
    """Return (problems, additions), each as sorted human-readable lines."""
    problems = []
    for name, version in sorted(before.items()):
        if name not in after:
            problems.append(f"removed: {name} {version}")
        elif after[name] != version:
            problems.append(f"changed: {name} {version} -> {after[name]}")
    additions = [f"added: {name} {after[name]}" for name in sorted(set(after) - set(before))]
    return problems, additions


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    before, after = (parse_freeze(Path(a).read_text(encoding="utf-8")) for a in args)
    problems, additions = compare(before, after)
    for line in additions:
        print(line)
    for line in problems:
        print(line)
    if problems:
        print(f"FAIL: {len(problems)} installed package(s) changed or disappeared", file=sys.stderr)
        return 1
    print(f"OK: nothing installed was changed ({len(additions)} added)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
