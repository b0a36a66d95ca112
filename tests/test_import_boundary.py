"""The core never imports the webui or gradio, and importing it does no work."""

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "lib_dbchar"
# The adapter layers: the only places allowed to import gradio / the webui.
ADAPTERS = {PKG / "ui", PKG / "host" / "webui.py"}


def core_modules() -> list[str]:
    names = []
    for path in sorted(PKG.rglob("*.py")):
        if any(path == a or a in path.parents for a in ADAPTERS) or path.name == "__main__.py":
            continue
        rel = path.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        names.append(".".join(parts))
    return names


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_no_core_source_imports_gradio_or_modules():
    offenders = []
    for path in PKG.rglob("*.py"):
        if any(path == a or a in path.parents for a in ADAPTERS):
            continue
        bad = imported_roots(path) & {"gradio", "modules", "launch"}
        if bad:
            offenders.append(f"{path.relative_to(ROOT)} imports {sorted(bad)}")
    assert offenders == []


def test_core_imports_with_gradio_and_webui_unimportable(tmp_path):
    # A meta-path finder that refuses gradio and the webui makes "not installed" real for this process,
    # whatever the venv holds; every core module must still import, and importing must not create files.
    script = textwrap.dedent(
        f"""
        import importlib, importlib.abc, os, sys
        class Refuse(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name.split(".")[0] in ("gradio", "modules", "launch"):
                    raise ModuleNotFoundError(f"blocked: {{name}}")
                return None
        sys.meta_path.insert(0, Refuse())
        before = set(os.listdir("."))
        for name in {core_modules()!r}:
            importlib.import_module(name)
        assert set(os.listdir(".")) == before, "importing created files"
        heavy = sorted(m for m in ("torch", "diffusers", "onnxruntime", "transformers") if m in sys.modules)
        print("heavy:", heavy)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "heavy:" in out.stdout


def test_plain_import_is_light(tmp_path):
    # `import lib_dbchar` (what scripts/dbchar.py does first inside the webui) must not pull in torch.
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    code = "import sys, lib_dbchar, lib_dbchar.host, lib_dbchar.cli; print(sorted(m for m in ('torch','gradio') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
