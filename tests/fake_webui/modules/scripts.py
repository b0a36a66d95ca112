"""Fake of modules/scripts.py: loading every extension's scripts/*.py, and ``basedir()``.

``load_scripts()`` does what the real one does for extensions: clear all callbacks, then run each
``<data>/extensions/<ext>/scripts/*.py`` with the extension root put in front of ``sys.path``
(a new list) only while that file runs, reporting (not raising) a script that fails.
"""

import os
import sys

from modules import errors, paths, script_callbacks, script_loading

current_basedir = paths.script_path


def basedir():
    """The folder of the extension whose script is running (the webui root otherwise)."""
    return current_basedir


def list_extension_scripts():
    """``(extension root, script path)`` for every extension, in the webui's order."""
    found = []
    if not os.path.isdir(paths.extensions_dir):
        return found
    for name in sorted(os.listdir(paths.extensions_dir)):
        root = os.path.join(paths.extensions_dir, name)
        folder = os.path.join(root, "scripts")
        if not os.path.isdir(folder):
            continue
        for filename in sorted(os.listdir(folder)):
            path = os.path.join(folder, filename)
            if filename.endswith(".py") and os.path.isfile(path):
                found.append((root, path))
    return found


def load_scripts():
    global current_basedir
    script_callbacks.clear_callbacks()
    syspath = sys.path
    for root, path in list_extension_scripts():
        try:
            sys.path = [root] + sys.path
            current_basedir = root
            script_loading.load_module(path)
        except Exception:
            errors.report(f"Error loading script: {os.path.basename(path)}", exc_info=True)
        finally:
            sys.path = syspath
            current_basedir = paths.script_path
