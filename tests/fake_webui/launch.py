"""Fake of the webui's launch.py, as an extension's install.py sees it (``import launch``).

``is_installed`` checks distribution metadata (then importability), like the real one.
``run_pip`` never runs pip: it returns at once under --skip-install (like the real one); otherwise it
prints what it would do and, when ``DBCHAR_FAKE_PIP_LOG`` names a file, appends the pip arguments to
it, one call per line. With ``DBCHAR_FAKE_PIP_FAIL`` set it raises like a failed pip run.
Flags come from ``sys.argv`` plus ``COMMANDLINE_ARGS``, as in the real launcher.
"""

import argparse
import importlib.metadata
import importlib.util
import os
import shlex
import sys

python = sys.executable
index_url = os.environ.get("INDEX_URL", "")

_parser = argparse.ArgumentParser(add_help=False)
_parser.add_argument("--skip-install", action="store_true")
_parser.add_argument("--ui-settings-file", default="config.json")
args, _ = _parser.parse_known_args(sys.argv[1:] + shlex.split(os.environ.get("COMMANDLINE_ARGS", "")))


def is_installed(package):
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        try:
            spec = importlib.util.find_spec(package)
        except ModuleNotFoundError:
            return False
        return spec is not None
    return dist is not None


def run(command, desc=None, errdesc=None, custom_env=None, live=True):
    if desc is not None:
        print(desc)
    if os.environ.get("DBCHAR_FAKE_PIP_FAIL"):
        raise RuntimeError(f"{errdesc or 'Error running command'}.\nCommand: {command}\nError code: 1")
    log = os.environ.get("DBCHAR_FAKE_PIP_LOG")
    if log:
        with open(log, "a", encoding="utf8") as file:
            file.write(command + "\n")
    return ""


def run_pip(command, desc=None, live=True):
    if args.skip_install:
        return None
    index_url_line = f" --index-url {index_url}" if index_url != "" else ""
    return run(f"{command} --prefer-binary{index_url_line}", desc=f"Installing {desc}",
               errdesc=f"Couldn't install {desc}", live=live)
