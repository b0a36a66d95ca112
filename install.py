"""dbchar's installer: adds what dbchar needs and is missing, and changes nothing that is installed.

The webui runs it at every start as ``python <extension>/install.py`` (cwd: the webui folder, which
is on PYTHONPATH so that ``import launch`` works) and prints what it prints. The rules live in
``pyproject.toml`` (``[project].dependencies`` and ``[tool.dbchar.install]``) and are applied by
``lib_dbchar/deps.py``, which this file loads by path: nothing else of dbchar is imported here.

Every pip run pins every installed distribution through a constraints file, one package at a time.
A package that cannot be added that way is reported with what it disables and the command to try
by hand; the script still exits 0, so the webui starts anyway. Under the webui's ``--skip-install``
it only prints what it would install.

By hand: ``python install.py --dry-run`` prints the plan and installs nothing; ``python install.py``
outside the webui installs with this interpreter's pip.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any

EXTENSION_DIR = Path(__file__).resolve().parent
TAG = "[dbchar]"
# Characters that a double-quoted word cannot carry safely through both cmd.exe and a POSIX shell
# (launch.run_pip runs its command through the shell).
_SHELL_UNSAFE = set('"$`%\r\n') | (set() if os.name == "nt" else {"\\"})


def load_deps(path: Path | None = None) -> ModuleType:
    """Load ``lib_dbchar/deps.py`` by file path, without importing the ``lib_dbchar`` package.

    Args:
        path: default: the copy beside this file.

    Returns:
        The module.
    """
    path = path or EXTENSION_DIR / "lib_dbchar" / "deps.py"
    spec = importlib.util.spec_from_file_location("_dbchar_install_deps", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    # dataclasses look the defining module up in sys.modules while the class is built.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def webui_launch() -> ModuleType | None:
    """The webui's ``launch`` module when we run inside the webui, else None (standalone)."""
    try:
        import launch
    except ModuleNotFoundError as exc:
        if exc.name != "launch":  # a webui whose launch is broken must show its own error
            raise
        return None
    return launch if hasattr(launch, "run_pip") else None


def skip_install(launch: ModuleType | None) -> bool:
    """True under the webui's ``--skip-install`` (also given through COMMANDLINE_ARGS)."""
    return bool(getattr(getattr(launch, "args", None), "skip_install", False))


def quote(word: str) -> str:
    """Double-quote a word for a shell command line, unless it is plainly safe."""
    plain = word and all(c.isalnum() or c in "_./:+-=" for c in word)
    return word if plain else f'"{word}"'


def shell_line(pip_args: list[str]) -> str:
    """pip arguments for ``launch.run_pip``, which runs them through a shell: every value is
    double-quoted (a path may hold spaces; ``<`` and ``>`` in a requirement would redirect)."""
    return " ".join(a if a == "install" or a.startswith("-") else f'"{a}"' for a in pip_args)


def manual_command(pip_args: list[str]) -> str:
    """The pip command line a user can paste, for this interpreter."""
    return " ".join([quote(sys.executable), "-m", "pip", shell_line(pip_args), "--prefer-binary"])


def run_pip(launch: ModuleType | None, pip_args: list[str], desc: str) -> tuple[bool, str]:
    """Run ``pip <pip_args>``: through ``launch.run_pip`` in the webui, else as a subprocess.

    Args:
        launch: the webui's launch module, or None.
        pip_args: e.g. ``["install", "-c", "/tmp/x.txt", "diffusers>=0.31.0,<0.32"]``.
        desc: what is installed, for the webui's "Installing ..." line.

    Returns:
        (success, pip's output or the error text).
    """
    if launch is not None and not any(_SHELL_UNSAFE & set(a) for a in pip_args):
        try:
            output = launch.run_pip(shell_line(pip_args), desc)
        except RuntimeError as exc:  # launch.run raises it with pip's stdout and stderr on failure
            return False, str(exc)
        return True, output or ""
    command = [sys.executable, "-m", "pip", *pip_args, "--prefer-binary"]
    index_url = getattr(launch, "index_url", "") if launch is not None else ""
    if index_url:  # the webui's INDEX_URL, which launch.run_pip would have passed
        command += ["--index-url", index_url]
    result = subprocess.run(command, capture_output=True, text=True, encoding="utf-8", errors="replace",
                            check=False)
    return result.returncode == 0, f"{result.stdout}\n{result.stderr}".strip()


def write_constraints(text: str) -> Path:
    """Write the constraints to a new temporary file (kept on failure, for the manual command)."""
    handle, name = tempfile.mkstemp(prefix="dbchar-constraints-", suffix=".txt")
    with os.fdopen(handle, "w", encoding="utf-8") as file:
        file.write(text)
    return Path(name)


def current_plan(deps: ModuleType, policy: Any) -> Any:
    """The plan for what is installed right now."""
    importlib.invalidate_caches()  # pip has just added folders that import caches may not list
    return deps.make_plan(policy.requirements, policy.rules, deps.read_installed(), python=sys.executable)


def print_plan(plan: Any, *, verbose: bool) -> None:
    """One line per requirement; a single line when nothing needs doing or saying."""
    if not verbose and not plan.installs and not plan.warnings:
        print(f"{TAG} dependencies: all {len(plan.items)} in place, nothing to install")
        return
    print(f"{TAG} dependencies ({plan.torch.how}):")
    for item in plan.items:
        for line in item.line().splitlines():
            print(f"{TAG}   {line}")


def print_changes(before: dict[str, str], after: dict[str, str]) -> None:
    """Say exactly what pip added, and shout if it changed anything that was there."""
    added = [f"{n} {v}" for n, v in sorted(after.items()) if n not in before]
    changed = [f"{n} {v} -> {after.get(n, 'removed')}" for n, v in sorted(before.items())
               if after.get(n) != v]
    if added:
        print(f"{TAG}   added: {', '.join(added)}")
    if changed:
        print(f"{TAG}   WARNING: pip changed installed packages despite the pins: {', '.join(changed)}")


def print_failure(item: Any, pip_args: list[str], output: str, constraints: Path) -> None:
    """Why a package could not be added, what that disables, and how to try by hand."""
    print(f"{TAG}   FAILED: could not add {item.spec}, so {item.feature} will not work. Installed packages "
          f"stay pinned (pip fails rather than change one); pip's last lines:")
    tail = [line for line in output.splitlines() if line.strip()][-12:]
    for line in tail:
        print(f"{TAG}     | {line}")
    print(f"{TAG}   The pins are kept in {constraints}. To try by hand (it will not change installed "
          f"packages either): {manual_command(pip_args)}")


def install_one(deps: ModuleType, policy: Any, item: Any, launch: ModuleType | None) -> bool:
    """Install one planned item with every installed distribution pinned.

    Returns:
        True when the requirement is in place afterwards.
    """
    before = deps.read_installed()
    constraints = deps.make_constraints(before)
    path = write_constraints(constraints.text)
    pip_args = ["install", "-c", str(path), item.spec]
    print(f"{TAG} installing {item.spec} with the {constraints.pinned} installed distributions pinned")
    if constraints.unpinnable:
        print(f"{TAG}   not pinned (no version pip can express): {', '.join(constraints.unpinnable)}")
    ok, output = run_pip(launch, pip_args, f"{item.spec} for dbchar")
    after_plan = current_plan(deps, policy)
    print_changes(before, deps.read_installed())
    done = after_plan.item(item.name)
    if ok and done is not None and done.action != deps.INSTALL:
        path.unlink(missing_ok=True)
        return True
    if ok:
        output = f"pip reported success, but {item.name} is still missing.\n{output}"
    print_failure(item, pip_args, output, path)
    return False


def install_all(deps: ModuleType, policy: Any, names: list[str], launch: ModuleType | None) -> list[Any]:
    """Install the planned items one by one, so that one failure does not block the others.

    Returns:
        The items that could not be added.
    """
    failed = []
    for name in names:
        item = current_plan(deps, policy).item(name)  # an earlier install may have pulled it in
        if item is None or item.action != deps.INSTALL:
            print(f"{TAG} {name}: already added as a dependency of an earlier package")
            continue
        if not install_one(deps, policy, item, launch):
            failed.append(item)
    return failed


def print_would_install(plan: Any, why: str) -> None:
    """Under --skip-install or --dry-run: each package and the command that would add it."""
    for item in plan.installs:
        command = manual_command(["install", "-c", "<every installed distribution pinned>", item.spec])
        print(f"{TAG} {why}: would install {item.spec}: {command}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line; the webui passes none."""
    parser = argparse.ArgumentParser(
        description="Add the packages dbchar needs and is missing, without changing installed ones.")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and install nothing")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Plan, print, install what is missing. Returns 0 even when an install failed (reported)."""
    args = parse_args(argv)
    deps = load_deps()
    policy = deps.load_policy(EXTENSION_DIR / "pyproject.toml")
    plan = current_plan(deps, policy)
    print_plan(plan, verbose=args.dry_run)
    if not plan.installs:
        return 0
    if args.dry_run:
        print_would_install(plan, "dry run")
        return 0
    launch = webui_launch()
    if skip_install(launch):
        print_would_install(plan, "--skip-install is set")
        return 0
    failed = install_all(deps, policy, [i.name for i in plan.installs], launch)
    if failed:
        lost = "; ".join(f"{i.name}: {i.feature}" for i in failed)
        print(f"{TAG} done, but could not add {len(failed)} package(s); not working until fixed: {lost}")
    else:
        print(f"{TAG} done: everything dbchar needs is installed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
