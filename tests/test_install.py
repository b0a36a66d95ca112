"""install.py run the way the webui runs it, with a fake ``launch``; and tests/envs/freeze_diff.py.

Each test copies install.py and lib_dbchar/deps.py (without the rest of the package, as install.py
must cope with) into a temporary extension folder beside a small pyproject.toml whose requirements
are either present in the test venv (pytest) or made up (dbchar-probe-*), so nothing real is
installed. The fake ``launch.run_pip`` records its calls and "installs" by writing a dist-info folder.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

PYPROJECT = """\
[project]
name = "probe"
dependencies = ["pytest>=7", "dbchar-probe-missing>=1.0", "dbchar-probe-other>=2"]

[tool.dbchar.install]
host_owned = ["pytest"]
when_missing = { dbchar-probe-missing = "dbchar-probe-missing>=1.0,<1.1" }

[tool.dbchar.install.features]
pytest = "the tests"
dbchar-probe-missing = "the probe feature"
dbchar-probe-other = "the other feature"
"""

FAKE_LAUNCH = '''\
"""A stand-in for the webui's launch.py: records run_pip calls, installs into FAKE_SITE."""
import json
import os
import re
import shlex
from pathlib import Path
from types import SimpleNamespace

args = SimpleNamespace(skip_install=os.environ.get("FAKE_SKIP_INSTALL") == "1")
index_url = ""


def run_pip(command, desc=None, live=False):
    words = shlex.split(command)
    record = {"command": command, "desc": desc}
    if "-c" in words:
        record["constraints"] = Path(words[words.index("-c") + 1]).read_text()
    with open(os.environ["FAKE_PIP_LOG"], "a") as log:
        log.write(json.dumps(record) + "\\n")
    spec = words[-1]
    name = re.split(r"[<>=!~;\\[ ]", spec)[0]
    if name in os.environ.get("FAKE_PIP_FAIL", "").split(","):
        raise RuntimeError(f"Couldn't install {desc}.\\nCommand: {command}\\nError code: 1\\n"
                           f"stderr: ERROR: ResolutionImpossible: {name} needs something pinned")
    if os.environ.get("FAKE_PIP_NOOP") != "1":
        info = Path(os.environ["FAKE_SITE"]) / f"{name.replace('-', '_')}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\\nName: {name}\\nVersion: 1.0\\n")
    return ""
'''


def make_extension(where: Path, pyproject: str = PYPROJECT) -> Path:
    """install.py + lib_dbchar/deps.py (no __init__.py) + a pyproject.toml, as a fresh extension."""
    ext = where / "extensions" / "dbchar"
    (ext / "lib_dbchar").mkdir(parents=True)
    shutil.copy(ROOT / "install.py", ext / "install.py")
    shutil.copy(ROOT / "lib_dbchar" / "deps.py", ext / "lib_dbchar" / "deps.py")
    (ext / "pyproject.toml").write_text(pyproject, encoding="utf-8")
    return ext


@pytest.fixture
def webui(tmp_path):
    """A webui folder with the fake launch.py, a site folder on the path, and the pip log."""
    root = tmp_path / "webui"
    root.mkdir()
    (root / "launch.py").write_text(FAKE_LAUNCH, encoding="utf-8")
    site = tmp_path / "site"
    site.mkdir()
    temp = tmp_path / "temp"
    temp.mkdir()
    return {"root": root, "site": site, "log": tmp_path / "pip.jsonl", "ext": make_extension(tmp_path),
            "tmp": temp}


def run_install(webui: dict, *args: str, **env: str) -> subprocess.CompletedProcess:
    """Run install.py as the webui does: its python, cwd = webui root, PYTHONPATH = webui root."""
    environ = dict(os.environ)
    environ.update(PYTHONPATH=os.pathsep.join([str(webui["root"]), str(webui["site"])]),
                   FAKE_PIP_LOG=str(webui["log"]), FAKE_SITE=str(webui["site"]), **env)
    # install.py keeps the constraints file after a failure: keep it inside the test's folder.
    environ.update(TMPDIR=str(webui["tmp"]), TEMP=str(webui["tmp"]), TMP=str(webui["tmp"]))
    return subprocess.run([sys.executable, str(webui["ext"] / "install.py"), *args], cwd=webui["root"],
                          env=environ, capture_output=True, text=True, timeout=120, check=False)


def pip_calls(webui: dict) -> list[dict]:
    log = webui["log"]
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def add_dist(site: Path, name: str, version: str) -> None:
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")


# ---------------------------------------------------------------- install.py under a fake webui


def test_importing_install_py_does_nothing(capsys):
    spec = importlib.util.spec_from_file_location("dbchar_install_probe", ROOT / "install.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    assert capsys.readouterr() == ("", "")
    assert "_dbchar_install_deps" not in sys.modules
    assert callable(module.main)


def test_skip_install_calls_no_pip_and_prints_the_plan(webui):
    result = run_install(webui, FAKE_SKIP_INSTALL="1")

    assert result.returncode == 0, result.stderr
    assert pip_calls(webui) == []
    out = result.stdout
    pytest_version = importlib.metadata.version("pytest")
    assert f"[dbchar]   pytest: host-owned, present at {pytest_version}: left alone" in out
    assert '[dbchar]   dbchar-probe-missing: install "dbchar-probe-missing>=1.0,<1.1" (missing; needed for ' \
           "the probe feature)" in out
    assert "--skip-install is set: would install dbchar-probe-missing>=1.0,<1.1" in out
    assert "--skip-install is set: would install dbchar-probe-other>=2" in out


def test_installs_through_run_pip_with_every_installed_distribution_pinned(webui):
    result = run_install(webui)

    assert result.returncode == 0, result.stderr
    calls = pip_calls(webui)
    assert [c["desc"] for c in calls] == ["dbchar-probe-missing>=1.0,<1.1 for dbchar",
                                          "dbchar-probe-other>=2 for dbchar"]
    first = calls[0]
    # The constraints path and the requirement are quoted: run_pip goes through a shell.
    path = first["command"].split('"')[1]
    assert first["command"] == f'install -c "{path}" "dbchar-probe-missing>=1.0,<1.1"'
    pins = set(first["constraints"].splitlines())
    assert f"pytest=={importlib.metadata.version('pytest')}" in pins
    assert f"pip=={importlib.metadata.version('pip')}" in pins
    # The second run pins what the first one added.
    assert "dbchar-probe-missing==1.0" in calls[1]["constraints"].splitlines()
    assert not Path(path).exists()  # removed after success
    assert "[dbchar]   added: dbchar-probe-missing 1.0" in result.stdout
    assert "[dbchar]   added: dbchar-probe-other 1.0" in result.stdout
    assert "[dbchar] done: everything dbchar needs is installed" in result.stdout


def test_nothing_missing_prints_one_line_and_never_imports_launch(webui):
    add_dist(webui["site"], "dbchar-probe-missing", "1.0.3")
    add_dist(webui["site"], "dbchar-probe-other", "2.1")
    (webui["root"] / "launch.py").write_text("raise RuntimeError('launch imported')\n")

    result = run_install(webui)

    assert result.returncode == 0, result.stderr
    assert result.stdout == "[dbchar] dependencies: all 3 in place, nothing to install\n"


def test_failed_install_is_reported_with_what_it_disables_and_exits_zero(webui):
    result = run_install(webui, FAKE_PIP_FAIL="dbchar-probe-missing")

    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert ("[dbchar]   FAILED: could not add dbchar-probe-missing>=1.0,<1.1, so the probe feature will not "
            "work.") in out
    assert "[dbchar]     | stderr: ERROR: ResolutionImpossible: dbchar-probe-missing needs something" in out
    kept = out.split("The pins are kept in ")[1].split(". To try by hand")[0]
    assert Path(kept).parent == webui["tmp"]
    assert Path(kept).is_file() and "pytest==" in Path(kept).read_text()
    assert f'-m pip install -c "{kept}" "dbchar-probe-missing>=1.0,<1.1" --prefer-binary' in out
    # One failure does not block the next package, and nothing is retried without the pins.
    calls = pip_calls(webui)
    assert len(calls) == 2 and all(" -c " in c["command"] for c in calls)
    assert "[dbchar]   added: dbchar-probe-other 1.0" in out
    assert ("[dbchar] done, but could not add 1 package(s); not working until fixed: "
            "dbchar-probe-missing: the probe feature") in out
    assert [p.name for p in webui["tmp"].iterdir()] == [Path(kept).name]  # the successful one's is gone


def test_pip_success_without_the_package_is_a_failure(webui):
    result = run_install(webui, FAKE_PIP_NOOP="1")

    assert result.returncode == 0
    assert "pip reported success, but dbchar-probe-missing is still missing." in result.stdout


def test_present_but_too_old_is_left_alone(webui):
    add_dist(webui["site"], "dbchar-probe-other", "1.5")

    result = run_install(webui, FAKE_SKIP_INSTALL="1")

    assert "dbchar-probe-other: present at 1.5, needs >=2: left alone" in result.stdout
    assert ("WARNING: dbchar-probe-other 1.5 is installed but dbchar needs dbchar-probe-other>=2: left "
            "alone, the other feature may not work") in result.stdout
    assert "would install dbchar-probe-other" not in result.stdout


def test_dry_run_of_the_real_install_py_standalone(tmp_path):
    """The repository's own install.py, outside any webui: plans and installs nothing."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, str(ROOT / "install.py"), "--dry-run"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120, check=False)

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("[dbchar] dependencies (torch ")
    for name in ("torch", "numpy", "pillow", "safetensors", "transformers", "accelerate", "huggingface-hub",
                 "diffusers", "onnxruntime"):
        assert any(line.startswith(f"[dbchar]   {name}: ") for line in lines), name


# ---------------------------------------------------------------- the real pip, standalone


def build_wheel(folder: Path, name: str, version: str, requires: tuple[str, ...] = ()) -> Path:
    """A minimal pure-Python wheel, enough for pip to install offline."""
    stem = f"{name.replace('-', '_')}-{version}"
    files = {
        f"{name.replace('-', '_')}_mod.py": "VALUE = 1\n",
        f"{stem}.dist-info/METADATA": "Metadata-Version: 2.1\n"
        f"Name: {name}\nVersion: {version}\n" + "".join(f"Requires-Dist: {r}\n" for r in requires),
        f"{stem}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: dbchar-tests\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    record.append(f"{stem}.dist-info/RECORD,,")
    files[f"{stem}.dist-info/RECORD"] = "\n".join(record) + "\n"
    wheel = folder / f"{stem}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    return wheel


@pytest.mark.slow
def test_standalone_install_with_real_pip_changes_nothing_installed(tmp_path):
    """A real venv and real pip, offline: a package that would need an upgrade is refused, the
    other one is added, and the installed one keeps its version although a newer one is offered."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    build_wheel(wheels, "dbchar-probe-base", "1.0")
    build_wheel(wheels, "dbchar-probe-base", "2.0")
    build_wheel(wheels, "dbchar-probe-needs-new", "1.0", ("dbchar-probe-base>=2",))
    build_wheel(wheels, "dbchar-probe-easy", "1.0", ("dbchar-probe-base",))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("PIP_")}
    # Offline, and away from this machine's pip configuration.
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_NO_INDEX="1", PIP_FIND_LINKS=str(wheels),
               PIP_DISABLE_PIP_VERSION_CHECK="1", TMPDIR=str(tmp_path), TEMP=str(tmp_path), TMP=str(tmp_path))
    subprocess.run([str(python), "-m", "pip", "install", "-q", "dbchar-probe-base==1.0"], env=env, check=True,
                   timeout=120)
    ext = make_extension(tmp_path, textwrap.dedent("""\
        [project]
        name = "probe"
        dependencies = ["dbchar-probe-needs-new>=1", "dbchar-probe-easy>=1"]
        [tool.dbchar.install.features]
        dbchar-probe-needs-new = "the new feature"
        """))

    result = subprocess.run([str(python), str(ext / "install.py")], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300, check=False)

    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "FAILED: could not add dbchar-probe-needs-new>=1, so the new feature will not work." in out
    assert "ResolutionImpossible" in out  # pip's own words, passed on
    assert "added: dbchar-probe-easy 1.0" in out
    freeze = subprocess.run([str(python), "-m", "pip", "freeze"], env=env, capture_output=True, text=True,
                            check=True, timeout=120).stdout.splitlines()
    assert "dbchar-probe-base==1.0" in freeze
    assert "dbchar-probe-easy==1.0" in freeze
    assert not any(line.startswith("dbchar-probe-needs-new") for line in freeze)


# ---------------------------------------------------------------- tests/envs/freeze_diff.py


def run_freeze_diff(tmp_path: Path, before: str, after: str) -> subprocess.CompletedProcess:
    (tmp_path / "before.txt").write_text(before)
    (tmp_path / "after.txt").write_text(after)
    return subprocess.run([sys.executable, str(ROOT / "tests" / "envs" / "freeze_diff.py"),
                           str(tmp_path / "before.txt"), str(tmp_path / "after.txt")],
                          capture_output=True, text=True, timeout=60, check=False)


BEFORE = """\
huggingface_hub==0.36.2
protobuf==3.20.0
torch==2.13.0+cpu
typing_extensions==4.16.0
# Editable install with no version control (probe-a==1.0)
-e /src/probe-a
local-thing @ file:///wheels/local_thing-1.0-py3-none-any.whl
"""


def test_freeze_diff_only_additions_pass(tmp_path):
    # pip versions spell names differently; that is not a change.
    after = BEFORE.replace("typing_extensions", "typing-extensions")
    after += "diffusers==0.31.0\nonnxruntime==1.26.0\n"

    result = run_freeze_diff(tmp_path, BEFORE, after)

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines() == ["added: diffusers 0.31.0", "added: onnxruntime 1.26.0",
                                          "OK: nothing installed was changed (2 added)"]


def test_freeze_diff_names_every_changed_or_removed_package(tmp_path):
    after = (BEFORE.replace("protobuf==3.20.0", "protobuf==7.36.2")
             .replace("huggingface_hub==0.36.2\n", "")
             .replace("-e /src/probe-a", "-e /src/elsewhere")
             + "onnxruntime==1.32.0\n")

    result = run_freeze_diff(tmp_path, BEFORE, after)

    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        "added: onnxruntime 1.32.0",
        "removed: huggingface-hub 0.36.2",
        "changed: probe-a -e /src/probe-a -> -e /src/elsewhere",
        "changed: protobuf 3.20.0 -> 7.36.2",
    ]
    assert "FAIL: 3 installed package(s) changed or disappeared" in result.stderr


def test_freeze_diff_parses_every_line_shape():
    path = ROOT / "tests" / "envs" / "freeze_diff.py"
    spec = importlib.util.spec_from_file_location("freeze_diff_probe", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    parsed = module.parse_freeze(BEFORE + "-e git+https://example.org/x.git@abc#egg=Some_Pkg\n")

    assert parsed == {
        "huggingface-hub": "0.36.2",
        "protobuf": "3.20.0",
        "torch": "2.13.0+cpu",
        "typing-extensions": "4.16.0",
        "probe-a": "-e /src/probe-a",
        "local-thing": "@ file:///wheels/local_thing-1.0-py3-none-any.whl",
        "some-pkg": "-e git+https://example.org/x.git@abc#egg=Some_Pkg",
    }


def test_freeze_diff_usage_error(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "tests" / "envs" / "freeze_diff.py"), "only-one"],
                            capture_output=True, text=True, timeout=60, check=False)

    assert result.returncode == 2
    assert "freeze_diff.py BEFORE AFTER" in result.stderr
