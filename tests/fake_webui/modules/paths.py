"""Fake of modules/paths.py: re-exports the paths (the real one also wires up repositories)."""

from modules.paths_internal import cwd, data_path, extensions_builtin_dir, extensions_dir, models_path, script_path  # noqa: F401
