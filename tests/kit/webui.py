"""A fake stable-diffusion-webui for adapter tests: the ``fake_webui`` fixture and the script loader.

``tests/fake_webui`` holds a small fake of the webui's ``modules`` package (v1.10.1) and its
``launch.py``. The fixture puts that folder on ``sys.path``, points the fake at fresh folders under
``tmp_path`` and removes every ``modules*`` entry from ``sys.modules`` before and after the test, so
each test starts from a newly "started" webui. Read the fake modules through the
:class:`FakeWebui` handle (its properties re-import them, so they are always the current ones).
"""

from __future__ import annotations

import importlib
import json
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

__all__ = [
    "EXTENSION_ROOT",
    "FAKE_WEBUI_DIR",
    "FakeWebui",
    "fake_webui",
    "load_extension_script",
    "write_dummy_safetensors",
]

FAKE_WEBUI_DIR = Path(__file__).resolve().parents[1] / "fake_webui"
#: The repository root is the extension's root (it holds scripts/dbchar.py).
EXTENSION_ROOT = Path(__file__).resolve().parents[2]

# Top-level names the fake provides; purged from sys.modules around every test.
_FAKE_ROOTS = ("modules", "launch")


def _purge_fake_modules() -> None:
    for name in [n for n in sys.modules if n.split(".")[0] in _FAKE_ROOTS]:
        del sys.modules[name]


def write_dummy_safetensors(path: Path, metadata: dict[str, str] | None = None) -> Path:
    """Write a valid, tiny safetensors file: one float32 tensor ``dummy.weight`` = [1.0].

    Args:
        path: where to write; parent folders are created.
        metadata: the ``__metadata__`` strings to store in the header.

    Returns:
        ``path``.
    """
    header: dict[str, Any] = {"dummy.weight": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}
    if metadata:
        header["__metadata__"] = dict(metadata)
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # the format pads the header to a multiple of 8 bytes
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + struct.pack("<f", 1.0))
    return path


@dataclass
class FakeWebui:
    """Handle on a started fake webui.

    Attributes:
        data_dir: the webui's ``--data-dir`` (``paths_internal.data_path``).
        models_dir: ``<data>/models/Stable-diffusion`` (``sd_models.model_path``).
        checkpoints: the dummy checkpoints written there, in title order.
    """

    data_dir: Path
    models_dir: Path
    checkpoints: list[Path] = field(default_factory=list)

    @staticmethod
    def module(name: str) -> ModuleType:
        """``modules.<name>`` of the current fake (imported on first use, like the webui does)."""
        return importlib.import_module(f"modules.{name}")

    @property
    def shared(self) -> ModuleType:
        return self.module("shared")

    @property
    def sd_models(self) -> ModuleType:
        return self.module("sd_models")

    @property
    def devices(self) -> ModuleType:
        return self.module("devices")

    @property
    def script_callbacks(self) -> ModuleType:
        return self.module("script_callbacks")

    @property
    def call_queue(self) -> ModuleType:
        return self.module("call_queue")

    @property
    def progress(self) -> ModuleType:
        return self.module("progress")

    @property
    def errors(self) -> list[tuple[str, BaseException | None]]:
        """What the fake webui reported (callback failures it swallowed, failed scripts, ...)."""
        return list(self.module("errors").reported)

    def build_settings(self) -> dict[str, str]:
        """Build the Settings page as the webui does: fire ``on_ui_settings``, reorder, pick widgets.

        Returns:
            option key -> widget kind ("Textbox", "Number", "Checkbox" or the component's name).
        """
        return self.module("ui_settings").UiSettings().create_ui()

    def build_tabs(self) -> list[tuple[Any, str, str]]:
        """Fire ``on_ui_tabs`` and return the ``(blocks, title, elem_id)`` tuples the webui would show."""
        return self.script_callbacks.ui_tabs_callback()

    def start_app(self, app: Any, demo: Any = None) -> None:
        """Fire ``on_app_started(demo, app)`` as the webui does once its FastAPI app is up."""
        self.script_callbacks.app_started_callback(demo, app)

    def reload_ui(self, ext_dir: Path = EXTENSION_ROOT) -> ModuleType:
        """What "Reload UI" does to one extension: unload, clear callbacks, run the script again."""
        self.script_callbacks.script_unloaded_callback()
        self.script_callbacks.clear_callbacks()
        return load_extension_script(ext_dir)


def load_extension_script(ext_dir: Path = EXTENSION_ROOT, name: str = "dbchar.py") -> ModuleType:
    """Run ``<ext_dir>/scripts/<name>`` the way the webui loads an extension's script.

    A fresh module object each call (``spec_from_file_location``, never put in ``sys.modules``);
    ``sys.path`` is replaced by ``[ext_dir] + sys.path`` only while the file runs, then the original
    list object is put back; ``modules.scripts.basedir()`` answers ``ext_dir`` meanwhile. Unlike the
    webui, an exception in the script propagates (the webui would print it and carry on).
    Needs the ``fake_webui`` fixture.

    Returns:
        The executed script module.
    """
    scripts = importlib.import_module("modules.scripts")
    script_loading = importlib.import_module("modules.script_loading")
    paths = importlib.import_module("modules.paths")
    saved = sys.path
    try:
        sys.path = [str(ext_dir), *sys.path]
        scripts.current_basedir = str(ext_dir)
        return script_loading.load_module(str(Path(ext_dir) / "scripts" / name))
    finally:
        sys.path = saved
        scripts.current_basedir = paths.script_path


@pytest.fixture
def fake_webui(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A freshly started fake webui with two dummy checkpoints; yields a :class:`FakeWebui`.

    Folders: ``tmp_path/webui`` is the data dir, ``models/Stable-diffusion`` holds ``base.safetensors``
    and ``anime/waifu.safetensors``. The checkpoint list is scanned as at start-up; no model is
    loaded. ``COMMANDLINE_ARGS`` is cleared: change flags through ``webui.shared.cmd_opts``.
    """
    data_dir = tmp_path / "webui"
    models_dir = data_dir / "models" / "Stable-diffusion"
    checkpoints = [
        write_dummy_safetensors(models_dir / "anime" / "waifu.safetensors", {"recipe": '{"type": "x"}'}),
        write_dummy_safetensors(models_dir / "base.safetensors", {"modelspec.title": "base"}),
    ]
    monkeypatch.setenv("DBCHAR_FAKE_WEBUI_DATA", str(data_dir))
    monkeypatch.delenv("DBCHAR_FAKE_WEBUI_MODELS", raising=False)
    monkeypatch.delenv("COMMANDLINE_ARGS", raising=False)
    _purge_fake_modules()
    monkeypatch.syspath_prepend(str(FAKE_WEBUI_DIR))
    webui = FakeWebui(data_dir, models_dir, checkpoints)
    webui.sd_models.list_models()
    try:
        yield webui
    finally:
        _purge_fake_modules()
