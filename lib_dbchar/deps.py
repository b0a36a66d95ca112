"""Which packages dbchar needs, which ones it may add, and how it adds them without touching the host's.

The webui's venv is shared by every extension, and breaking it is the complaint users have about
the tools they use today. So the policy is strict:

1. **Nothing installed is ever upgraded, downgraded or removed.** A requirement that is present at
   a version we do not like is left alone and reported ("feature Z may not work").
2. **Missing requirements are added** with the ``[project].dependencies`` range, or with the
   narrower one ``[tool.dbchar.install].when_missing`` gives (diffusers: the releases that import
   beside the webui's transformers 4.30.2).
3. **Host-owned packages** (torch, transformers, gradio, ...) are only added when missing altogether;
   ``never_install`` ones (torch: the launcher picks the CUDA/ROCm build) are never added.
4. **onnxruntime or onnxruntime-gpu**, never both: either present satisfies the requirement. When
   neither is present, ``onnxruntime-gpu`` is added only when torch is a CUDA build that a PyPI
   onnxruntime-gpu matches (see :func:`detect_torch_build` and ``gpu_builds``), else ``onnxruntime``.
5. **pip runs with a constraints file pinning every installed distribution** (``name==version``), so
   it can only pick versions of the new packages that fit what is there, or fail. A failure is
   reported with what it disables; it is never retried without the pins.

The planner (:func:`make_plan`) is pure: installed versions and the torch build come in as values.
This module uses only the standard library plus ``packaging`` (or pip's vendored copy), and no other
``lib_dbchar`` module: ``install.py`` loads it by file path before anything else is importable.
"""

from __future__ import annotations

import importlib.metadata
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

try:
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name
    from packaging.version import InvalidVersion, Version
except ImportError:  # pragma: no cover - packaging is everywhere transformers is; pip always vendors it
    from pip._vendor.packaging.requirements import InvalidRequirement, Requirement
    from pip._vendor.packaging.utils import canonicalize_name
    from pip._vendor.packaging.version import InvalidVersion, Version

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"
INSTALL_PY = PYPROJECT.parent / "install.py"

# Plan actions.
INSTALL = "install"
OK = "ok"
LEFT_ALONE = "left alone"
SKIP = "skip"

# PEP 508 distribution names: what pip accepts on the left of "==" in a constraints file.
_VALID_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?$")


# --------------------------------------------------------------------------------------------------
# pyproject.toml


def read_toml(path: Path | str) -> dict[str, Any]:
    """Parse a TOML file: ``tomllib`` on Python 3.11+, :func:`parse_toml_subset` on 3.10.

    Args:
        path: the file, normally dbchar's ``pyproject.toml``.

    Returns:
        The document as nested dicts.
    """
    text = Path(path).read_text(encoding="utf-8")
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10, which the webui runs
        return parse_toml_subset(text)
    return tomllib.loads(text)


def parse_toml_subset(text: str) -> dict[str, Any]:
    """Parse the TOML subset our ``pyproject.toml`` uses (for Python 3.10, which has no tomllib).

    Supported: comments, ``[dotted.table]`` headers, bare/quoted/dotted keys, basic and literal
    strings, integers, floats, booleans, arrays (multi-line, trailing commas, comments) and inline
    tables. Not supported (a ``ValueError`` names the line): multi-line strings, dates, arrays of
    tables. A test checks that the result equals ``tomllib``'s on the real file.

    Args:
        text: the TOML document.

    Returns:
        The document as nested dicts.

    Raises:
        ValueError: on syntax outside the subset, or a duplicate key or table.
    """
    return _TomlSubset(text).parse()


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_NUMBER = re.compile(r"[+-]?\d[\d_]*(\.\d[\d_]*)?([eE][+-]?\d+)?")
_ESCAPES = {"b": "\b", "t": "\t", "n": "\n", "f": "\f", "r": "\r", '"': '"', "\\": "\\"}


class _TomlSubset:
    """A small recursive-descent reader; each method consumes one construct at ``self.pos``."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.root: dict[str, Any] = {}
        self.headers: set[tuple[str, ...]] = set()

    def parse(self) -> dict[str, Any]:
        table = self.root
        while True:
            self._skip_space(newlines=True)
            if self.pos >= len(self.text):
                return self.root
            if self._peek() == "[":
                table = self._table_header()
            else:
                self._key_value(table)
            self._end_of_line()

    def _fail(self, message: str) -> NoReturn:
        line = self.text.count("\n", 0, self.pos) + 1
        raise ValueError(f"TOML line {line}: {message} (the Python 3.10 fallback reads a subset of TOML)")

    def _peek(self, size: int = 1) -> str:
        return self.text[self.pos : self.pos + size]

    def _expect(self, char: str) -> None:
        if self._peek() != char:
            self._fail(f"expected {char!r}, found {self._peek()!r}")
        self.pos += 1

    def _skip_space(self, newlines: bool = False) -> None:
        """Skip blanks; with ``newlines`` also line breaks and comments (between lines, in arrays)."""
        while self.pos < len(self.text):
            char = self.text[self.pos]
            if char in " \t" or (newlines and char in "\r\n"):
                self.pos += 1
            elif newlines and char == "#":
                self._skip_comment()
            else:
                return

    def _skip_comment(self) -> None:
        end = self.text.find("\n", self.pos)
        self.pos = len(self.text) if end < 0 else end

    def _end_of_line(self) -> None:
        self._skip_space()
        if self._peek() == "#":
            self._skip_comment()
        if self._peek(2) == "\r\n":
            self.pos += 1
        if self.pos < len(self.text) and self._peek() != "\n":
            self._fail(f"expected the end of the line, found {self._peek()!r}")

    def _table_header(self) -> dict[str, Any]:
        self._expect("[")
        if self._peek() == "[":
            self._fail("arrays of tables ([[...]]) are not supported")
        self._skip_space()
        keys = self._key_path()
        self._expect("]")
        if tuple(keys) in self.headers:
            self._fail(f"table [{'.'.join(keys)}] defined twice")
        self.headers.add(tuple(keys))
        return self._descend(self.root, keys)

    def _descend(self, table: dict[str, Any], keys: Sequence[str]) -> dict[str, Any]:
        for key in keys:
            table = table.setdefault(key, {})
            if not isinstance(table, dict):
                self._fail(f"{key!r} is a value, not a table")
        return table

    def _key_path(self) -> list[str]:
        keys = [self._simple_key()]
        self._skip_space()
        while self._peek() == ".":
            self.pos += 1
            self._skip_space()
            keys.append(self._simple_key())
            self._skip_space()
        return keys

    def _simple_key(self) -> str:
        if self._peek() == '"':
            return self._basic_string()
        if self._peek() == "'":
            return self._literal_string()
        match = _BARE_KEY.match(self.text, self.pos)
        if not match:
            self._fail(f"expected a key, found {self._peek()!r}")
        self.pos = match.end()
        return match.group()

    def _key_value(self, table: dict[str, Any]) -> None:
        keys = self._key_path()
        self._expect("=")
        self._skip_space()
        value = self._value()
        target = self._descend(table, keys[:-1])
        if keys[-1] in target:
            self._fail(f"key {'.'.join(keys)!r} defined twice")
        target[keys[-1]] = value

    def _value(self) -> Any:
        char = self._peek()
        if self._peek(3) in ('"""', "'''"):
            self._fail("multi-line strings are not supported")
        if char == '"':
            return self._basic_string()
        if char == "'":
            return self._literal_string()
        if char == "[":
            return self._array()
        if char == "{":
            return self._inline_table()
        for word, value in (("true", True), ("false", False)):
            if self.text.startswith(word, self.pos):
                self.pos += len(word)
                return value
        return self._number()

    def _basic_string(self) -> str:
        self._expect('"')
        out = []
        while True:
            char = self._peek()
            if char in ("", "\n"):
                self._fail("unterminated string")
            self.pos += 1
            if char == '"':
                return "".join(out)
            out.append(self._escape() if char == "\\" else char)

    def _escape(self) -> str:
        code = self._peek()
        self.pos += 1
        if code in _ESCAPES:
            return _ESCAPES[code]
        width = {"u": 4, "U": 8}.get(code)
        digits = self.text[self.pos : self.pos + (width or 0)]
        if width is None or not re.fullmatch(r"[0-9A-Fa-f]+", digits) or len(digits) != width:
            self._fail(f"unsupported escape \\{code}")
        self.pos += width
        return chr(int(digits, 16))

    def _literal_string(self) -> str:
        self._expect("'")
        end = self.text.find("'", self.pos)
        newline = self.text.find("\n", self.pos)
        if end < 0 or 0 <= newline < end:
            self._fail("unterminated string")
        value = self.text[self.pos : end]
        self.pos = end + 1
        return value

    def _array(self) -> list[Any]:
        self._expect("[")
        items = []
        while True:
            self._skip_space(newlines=True)
            if self._peek() == "]":
                self.pos += 1
                return items
            items.append(self._value())
            self._skip_space(newlines=True)
            if self._peek() == ",":
                self.pos += 1
            elif self._peek() != "]":
                self._fail(f"expected ',' or ']' in an array, found {self._peek()!r}")

    def _inline_table(self) -> dict[str, Any]:
        self._expect("{")
        table: dict[str, Any] = {}
        self._skip_space()
        if self._peek() == "}":
            self.pos += 1
            return table
        while True:
            self._key_value(table)
            self._skip_space()
            if self._peek() == "}":
                self.pos += 1
                return table
            self._expect(",")
            self._skip_space()

    def _number(self) -> int | float:
        match = _NUMBER.match(self.text, self.pos)
        if not match:
            self._fail(f"unsupported value starting with {self._peek()!r}")
        self.pos = match.end()
        digits = match.group().replace("_", "")
        return float(digits) if match.group(1) or match.group(2) else int(digits)


# --------------------------------------------------------------------------------------------------
# The policy read from pyproject.toml


@dataclass(frozen=True)
class InstallRules:
    """The ``[tool.dbchar.install]`` table, names canonicalised (``huggingface-hub``, ``pillow``).

    Args:
        host_owned: packages the host owns: added only when missing altogether.
        when_missing: name -> the pip requirement to add when it is missing (narrower than
            ``[project].dependencies``).
        never_install: names install.py reports but never adds.
        gpu_builds: requirement name -> {torch build key ``cu<CUDA>-cudnn<cuDNN>`` -> the pip
            requirement of the GPU distribution to add for that build}.
        features: name -> what it is for, used in messages.
    """

    host_owned: frozenset[str] = frozenset()
    when_missing: Mapping[str, str] = field(default_factory=dict)
    never_install: frozenset[str] = frozenset()
    gpu_builds: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    features: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_table(cls, table: Mapping[str, Any]) -> InstallRules:
        """Validate the TOML table into rules.

        Raises:
            ValueError: naming the key that is unknown or holds an invalid requirement.
        """
        known = {"host_owned", "when_missing", "never_install", "gpu_builds", "features"}
        unknown = sorted(set(table) - known)
        if unknown:
            raise ValueError(f"[tool.dbchar.install]: unknown key(s) {', '.join(unknown)}; "
                             f"known: {', '.join(sorted(known))}")
        when_missing = {canonicalize_name(k): _checked_spec(v, k, "when_missing")
                        for k, v in table.get("when_missing", {}).items()}
        gpu_builds = {
            canonicalize_name(name): {key: _checked_spec(spec, None, f"gpu_builds.{name}")
                                      for key, spec in builds.items()}
            for name, builds in table.get("gpu_builds", {}).items()
        }
        return cls(
            host_owned=frozenset(canonicalize_name(n) for n in table.get("host_owned", [])),
            when_missing=when_missing,
            never_install=frozenset(canonicalize_name(n) for n in table.get("never_install", [])),
            gpu_builds=gpu_builds,
            features={canonicalize_name(k): str(v) for k, v in table.get("features", {}).items()},
        )

    def feature(self, name: str) -> str:
        """What ``name`` is for ("the WD14 tagger"), or a generic phrase."""
        return self.features.get(canonicalize_name(name), f"what needs {name}")


def _checked_spec(spec: str, name: str | None, where: str) -> str:
    try:
        req = Requirement(spec)
    except InvalidRequirement as exc:
        raise ValueError(f"[tool.dbchar.install] {where}: {spec!r} is not a requirement ({exc})") from None
    if name is not None and canonicalize_name(req.name) != canonicalize_name(name):
        raise ValueError(f"[tool.dbchar.install] {where}: {spec!r} does not install {name}")
    return spec


@dataclass(frozen=True)
class Policy:
    """What dbchar needs (``[project].dependencies``) and how install.py may add it."""

    requirements: tuple[str, ...]
    rules: InstallRules


def load_policy(pyproject: Path | str | None = None) -> Policy:
    """Read the requirements and install rules from ``pyproject.toml``.

    Args:
        pyproject: the file; default: the one beside the ``lib_dbchar`` folder.

    Returns:
        The policy.
    """
    doc = read_toml(pyproject or PYPROJECT)
    requirements = tuple(doc.get("project", {}).get("dependencies", []))
    table = doc.get("tool", {}).get("dbchar", {}).get("install", {})
    return Policy(requirements, InstallRules.from_table(table))


# --------------------------------------------------------------------------------------------------
# What is installed


def read_installed(path: Sequence[str] | None = None) -> dict[str, str]:
    """Every installed distribution, as ``{canonical name: version}``.

    Args:
        path: the folders to scan; default ``sys.path`` (what imports and pip see). When a name is
            installed twice, the first one on the path wins, as it does for imports.

    Returns:
        E.g. ``{"torch": "2.1.2+cu121", "huggingface-hub": "0.36.2", ...}``.
    """
    found: dict[str, str] = {}
    if path is None:
        dists = importlib.metadata.distributions()
    else:
        dists = importlib.metadata.distributions(path=list(path))
    for dist in dists:
        # A half-removed install can leave metadata without a name or version; pip ignores those too.
        # (.get: indexing a missing field is deprecated and will raise in newer Pythons.)
        meta = dist.metadata
        name, version = (meta.get("Name"), meta.get("Version")) if meta is not None else (None, None)
        if name and version:
            found.setdefault(canonicalize_name(name), version)
    return found


@dataclass(frozen=True)
class TorchBuild:
    """Which torch build is installed, decided from metadata alone (torch is never imported here).

    Args:
        version: torch's version, or None when torch is missing.
        cuda_major: 11, 12, 13 ... for a CUDA build, else None (CPU, ROCm, XPU, macOS).
        cudnn_major: the cuDNN major a CUDA build ships with, else None.
        how: how it was decided, one phrase for the plan.
    """

    version: str | None
    cuda_major: int | None = None
    cudnn_major: int | None = None
    how: str = ""

    @property
    def key(self) -> str | None:
        """``cu12-cudnn9`` for a CUDA build (the ``gpu_builds`` key), else None."""
        if self.cuda_major is None or self.cudnn_major is None:
            return None
        return f"cu{self.cuda_major}-cudnn{self.cudnn_major}"


_NVIDIA_RUNTIME = re.compile(r"^nvidia-cuda-runtime(-cu\d+)?$")
_NVIDIA_CUDNN = re.compile(r"^nvidia-cudnn(-cu\d+)?$")


def detect_torch_build(installed: Mapping[str, str]) -> TorchBuild:
    """Tell a CUDA torch from a CPU one using only installed versions.

    The rule:

    * a local version ``+cuXYZ`` (the pytorch.org wheels: ``2.1.2+cu121``) is CUDA ``XY`` (the last
      digit is the minor: cu118 -> 11, cu121 -> 12, cu130 -> 13);
    * any other local version (``+cpu``, ``+rocm6.0``, ``+xpu``) is not CUDA;
    * no local version (PyPI's wheels): CUDA when NVIDIA's runtime wheel (``nvidia-cuda-runtime-cu12``,
      ``nvidia-cuda-runtime``) is installed, with its major version -- PyPI's Linux torch depends on
      it; its Windows and macOS wheels are CPU-only and have none.

    The cuDNN major is the installed ``nvidia-cudnn-cu*`` wheel's when there is one, else 9 for
    torch 2.4 and later and 8 before (what the official builds bundle).

    Args:
        installed: ``{canonical name: version}``, e.g. from :func:`read_installed`.

    Returns:
        The build.
    """
    version = installed.get("torch")
    if version is None:
        return TorchBuild(None, how="torch is not installed")
    try:
        parsed = Version(version)
    except InvalidVersion:
        return TorchBuild(version, how=f"torch {version} has an unreadable version, taken as not CUDA")
    cuda_major, how = _cuda_major(parsed.local, installed)
    if cuda_major is None:
        return TorchBuild(version, how=f"torch {version} is not a CUDA build{how}")
    cudnn_major, cudnn_how = _cudnn_major(parsed, installed)
    how = f"torch {version} is a CUDA {cuda_major} build{how} with cuDNN {cudnn_major} ({cudnn_how})"
    return TorchBuild(version, cuda_major, cudnn_major, how)


def _cuda_major(local: str | None, installed: Mapping[str, str]) -> tuple[int | None, str]:
    if local:
        match = re.fullmatch(r"cu(\d{2,})", local)
        if match:
            return int(match.group(1)[:-1]), ""
        return None, ""
    runtimes = [_major(v) for n, v in installed.items() if _NVIDIA_RUNTIME.match(n)]
    runtimes = [m for m in runtimes if m is not None]
    if runtimes:
        return max(runtimes), " (NVIDIA's CUDA runtime wheel is installed)"
    return None, " (no NVIDIA CUDA runtime wheel beside it)"


def _cudnn_major(torch_version: Version, installed: Mapping[str, str]) -> tuple[int, str]:
    wheels = [_major(v) for n, v in installed.items() if _NVIDIA_CUDNN.match(n)]
    wheels = [m for m in wheels if m is not None]
    if wheels:
        return max(wheels), "NVIDIA's cuDNN wheel is installed"
    if torch_version.release[:2] >= (2, 4):
        return 9, "torch 2.4+ bundles cuDNN 9"
    return 8, "torch before 2.4 bundles cuDNN 8"


def _major(version: str) -> int | None:
    try:
        return Version(version).major
    except InvalidVersion:
        return None


# --------------------------------------------------------------------------------------------------
# The plan


@dataclass(frozen=True)
class PlanItem:
    """What install.py does about one requirement, and why.

    Args:
        name: the requirement's canonical name (``onnxruntime`` also stands for onnxruntime-gpu).
        action: ``install``, ``ok`` (present, fine), ``left alone`` (present, not ours to change;
            maybe with a warning) or ``skip`` (missing but not ours to add, or not for this platform).
        reason: one phrase for the plan line.
        spec: the exact pip requirement to install (only for ``install``).
        warning: something the user should act on or know, else None.
        feature: what the requirement is for.
        missing: True when no distribution satisfying the name is installed.
    """

    name: str
    action: str
    reason: str
    spec: str | None = None
    warning: str | None = None
    feature: str = ""
    missing: bool = False

    def line(self) -> str:
        """One line for the plan, e.g. ``diffusers: install "diffusers>=0.31.0,<0.32" (missing; ...)``.

        A warning follows on a second, indented line.
        """
        text = f'{self.name}: install "{self.spec}" ({self.reason})' if self.action == INSTALL else \
            f"{self.name}: {self.reason}"
        return f"{text}\n    WARNING: {self.warning}" if self.warning else text


@dataclass(frozen=True)
class Plan:
    """The plan for every requirement, in ``[project].dependencies`` order."""

    items: tuple[PlanItem, ...]
    torch: TorchBuild

    @property
    def installs(self) -> list[PlanItem]:
        return [i for i in self.items if i.action == INSTALL]

    @property
    def warnings(self) -> list[str]:
        return [i.warning for i in self.items if i.warning]

    def item(self, name: str) -> PlanItem | None:
        """The item for requirement ``name`` (any spelling), or None."""
        wanted = canonicalize_name(name)
        return next((i for i in self.items if i.name == wanted), None)


def make_plan(
    requirements: Iterable[str],
    rules: InstallRules,
    installed: Mapping[str, str],
    *,
    torch: TorchBuild | None = None,
    marker_env: Mapping[str, str] | None = None,
    python: str = "python",
) -> Plan:
    """Decide, for each requirement, whether to install it, and the exact pip requirement if so.

    Pure: no metadata is read, nothing runs. It never returns an ``install`` for a distribution that
    is present (nor for one onnxruntime build when the other is present).

    Args:
        requirements: PEP 508 strings, i.e. ``[project].dependencies``.
        rules: the install rules.
        installed: ``{name: version}`` of what is installed (any name spelling).
        torch: the torch build; default: :func:`detect_torch_build` on ``installed``.
        marker_env: environment for requirement markers; default: this interpreter's.
        python: the interpreter to name in fix commands.

    Returns:
        The plan.
    """
    present = {canonicalize_name(n): v for n, v in installed.items()}
    build = torch if torch is not None else detect_torch_build(present)
    items = []
    for text in requirements:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate(dict(marker_env) if marker_env else None):
            reason = f"skipped: not needed here ({req.marker})"
            items.append(PlanItem(canonicalize_name(req.name), SKIP, reason, feature=rules.feature(req.name)))
            continue
        items.append(_plan_one(req, rules, present, build, python))
    return Plan(_hold_until_host_packages(items, rules), build)


def _hold_until_host_packages(items: list[PlanItem], rules: InstallRules) -> tuple[PlanItem, ...]:
    """Install nothing while a ``never_install`` package is missing.

    Any new package may depend on it (accelerate and diffusers depend on torch), and pip would then
    fetch whatever build PyPI offers, which is exactly what ``never_install`` forbids.
    """
    absent = [i.name for i in items if i.action == SKIP and i.name in rules.never_install]
    if not absent:
        return tuple(items)
    wait = f"skipped until {' and '.join(absent)} is installed (pip could pull in the wrong build)"
    return tuple(PlanItem(i.name, SKIP, wait, feature=i.feature, missing=True) if i.action == INSTALL else i
                 for i in items)


def _plan_one(req: Requirement, rules: InstallRules, present: Mapping[str, str], build: TorchBuild,
              python: str) -> PlanItem:
    name = canonicalize_name(req.name)
    if name in rules.gpu_builds:
        return _plan_builds(req, rules, present, build, python)
    if name in present:
        return _plan_present(req, name, name, present[name], rules)
    return _plan_missing(req, rules)


def _plan_present(req: Requirement, name: str, dist: str, version: str, rules: InstallRules) -> PlanItem:
    """A present requirement: never touched; a warning when its version does not fit."""
    feature = rules.feature(name)
    where = f"present at {version}" if dist == name else f"present as {dist} {version}"
    fits = _satisfies(req, version)
    warning = None
    if fits is False:
        warning = (f"{dist} {version} is installed but dbchar needs {req.name}{req.specifier}: left alone, "
                   f"{feature} may not work")
    elif fits is None:
        warning = f"{dist} {version} has a version pip cannot read: left alone, {feature} may not work"
    if name in rules.host_owned:
        return PlanItem(name, LEFT_ALONE, f"host-owned, {where}: left alone", warning=warning,
                        feature=feature)
    if warning:
        return PlanItem(name, LEFT_ALONE, f"{where}, needs {req.specifier}: left alone", warning=warning,
                        feature=feature)
    return PlanItem(name, OK, where, feature=feature)


def _plan_missing(req: Requirement, rules: InstallRules, spec: str | None = None, why: str = "") -> PlanItem:
    """A missing requirement: added with the narrowest spec we know, unless it is never ours to add."""
    name = canonicalize_name(req.name)
    feature = rules.feature(name)
    if name in rules.never_install:
        warning = (f"{req.name} is missing and dbchar never installs it (the webui's launcher picks the "
                   f"build that fits your GPU): {feature} unavailable until it is installed")
        return PlanItem(name, SKIP, "skipped: missing, and never installed by dbchar", warning=warning,
                        feature=feature, missing=True)
    spec = spec or rules.when_missing.get(name) or _requirement_spec(req)
    owner = "host-owned but missing altogether" if name in rules.host_owned else "missing"
    return PlanItem(name, INSTALL, f"{owner}{why}; needed for {feature}", spec=spec, feature=feature,
                    missing=True)


def _plan_builds(req: Requirement, rules: InstallRules, present: Mapping[str, str], build: TorchBuild,
                 python: str) -> PlanItem:
    """onnxruntime-style requirements: a CPU distribution and GPU ones that provide the same module."""
    name = canonicalize_name(req.name)
    builds = rules.gpu_builds[name]
    gpu_names = sorted({canonicalize_name(Requirement(s).name) for s in builds.values()} - {name})
    found = {n: present[n] for n in [name, *gpu_names] if n in present}
    if len(found) > 1:
        return _plan_both_builds(name, found, gpu_names, build, rules=rules, python=python)
    if found:
        dist, version = next(iter(found.items()))
        return _plan_present(req, name, dist, version, rules)
    gpu_spec = builds.get(build.key or "")
    if gpu_spec:
        return _plan_missing(req, rules, gpu_spec, f"; {build.how}, so the GPU build")
    if build.cuda_major is not None:
        why = f"; {build.how}; no {'/'.join(gpu_names)} on PyPI is built for that, so the CPU build"
    else:
        why = f"; {build.how}, so the CPU build"
    return _plan_missing(req, rules, None, why)


def _plan_both_builds(name: str, found: Mapping[str, str], gpu_names: Sequence[str], build: TorchBuild,
                      *, rules: InstallRules, python: str) -> PlanItem:
    """Two builds of one module overwrite each other's files; say exactly how to keep one."""
    gpu_found = [n for n in gpu_names if n in found]
    keep = gpu_found[0] if build.cuda_major is not None and gpu_found else name
    listed = " and ".join(f"{n} {v}" for n, v in found.items())
    py = _quote_command(python)
    fix = (f"{py} -m pip uninstall -y {' '.join(found)} then {py} -m pip install --no-deps "
           f"{keep}=={found[keep]}")
    warning = (f"{listed} are both installed; they overwrite each other's files and the GPU build is lost. "
               f"Fix (keeps {keep}, changes nothing else): {fix}")
    return PlanItem(name, LEFT_ALONE, f"present as {listed}: left alone", warning=warning,
                    feature=rules.feature(name))


def _satisfies(req: Requirement, version: str) -> bool | None:
    """True/False, or None when ``version`` is not PEP 440 (old eggs, broken metadata)."""
    try:
        parsed = Version(version)
    except InvalidVersion:
        return None
    # An installed pre-release inside the range counts: the user chose it, and it is not ours to judge.
    return req.specifier.contains(parsed, prereleases=True)


def _requirement_spec(req: Requirement) -> str:
    """``name[extras]specifier`` without the marker (already evaluated)."""
    extras = f"[{','.join(sorted(req.extras))}]" if req.extras else ""
    return f"{req.name}{extras}{req.specifier}"


def _quote_command(word: str) -> str:
    """Quote a path for a command line the user copies (both cmd.exe and POSIX shells)."""
    return f'"{word}"' if re.search(r"[^A-Za-z0-9_./:\\+-]", word) else word


# --------------------------------------------------------------------------------------------------
# The constraints file


@dataclass(frozen=True)
class Constraints:
    """A pip constraints file that pins every installed distribution.

    Args:
        text: the file's content, one ``name==version`` a line.
        pinned: how many distributions it pins.
        unpinnable: ``"name version"`` of those pip cannot express as ``name==version`` (not a
            PEP 440 version or name); pip may change these if a new package depends on them.
    """

    text: str
    pinned: int
    unpinnable: tuple[str, ...]


def make_constraints(installed: Mapping[str, str]) -> Constraints:
    """Pin every installed distribution so that pip can add packages but change none.

    Local versions are pinned as they are (``torch==2.1.2+cu121`` matches only that build), and
    editable or direct-URL installs are pinned by their version too: pip keeps an installed
    distribution that satisfies a constraint instead of fetching it.

    Args:
        installed: ``{name: version}``, e.g. from :func:`read_installed`.

    Returns:
        The constraints.
    """
    lines = ["# Written by dbchar's install.py: every installed distribution, pinned, so that pip may add",
             "# packages but never upgrade, downgrade or replace one that is installed."]
    unpinnable = []
    for name in sorted(installed, key=canonicalize_name):
        version = installed[name]
        if _VALID_NAME.match(name) and _major(version) is not None:
            lines.append(f"{name}=={version}")
        else:
            unpinnable.append(f"{name} {version}")
    return Constraints("\n".join(lines) + "\n", len(lines) - 2, tuple(unpinnable))


# --------------------------------------------------------------------------------------------------
# At runtime


def check_installed(pyproject: Path | str | None = None,
                    installed: Mapping[str, str] | None = None) -> list[str]:
    """Human-readable problems with dbchar's dependencies, for the UI and the environment check.

    Args:
        pyproject: default: dbchar's own ``pyproject.toml``.
        installed: ``{name: version}``; default: :func:`read_installed`.

    Returns:
        One sentence per problem (missing, wrong version, both onnxruntime builds), each saying
        what does not work and how to fix it; empty when everything is in order.
    """
    return list(problems_by_name(pyproject, installed).values())


def requirement_names(pyproject: Path | str | None = None) -> list[str]:
    """The canonical names of ``[project].dependencies``, in order (``pillow``, ``huggingface-hub``).

    Args:
        pyproject: default: dbchar's own ``pyproject.toml``.
    """
    return [canonicalize_name(Requirement(text).name) for text in load_policy(pyproject).requirements]


def problems_by_name(pyproject: Path | str | None = None,
                     installed: Mapping[str, str] | None = None) -> dict[str, str]:
    """:func:`check_installed`'s sentences keyed by requirement, for checks that report a subset.

    Args:
        pyproject: default: dbchar's own ``pyproject.toml``.
        installed: ``{name: version}``; default: :func:`read_installed`.

    Returns:
        ``{canonical requirement name: problem}`` in ``[project].dependencies`` order; the
        ``onnxruntime`` entry also covers a second onnxruntime build installed beside it.
    """
    policy = load_policy(pyproject)
    plan = make_plan(policy.requirements, policy.rules, read_installed() if installed is None else installed,
                     python=sys.executable)
    problems = {}
    for item in plan.items:
        if item.warning:
            problems[item.name] = item.warning
        elif item.missing:
            problems[item.name] = (
                f"{item.name} is missing: {item.feature} unavailable. Restart the webui (dbchar's install.py "
                f"adds it without changing installed packages) or run: "
                f"{_quote_command(sys.executable)} {_quote_command(str(INSTALL_PY))}")
    return problems
