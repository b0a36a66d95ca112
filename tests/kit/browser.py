"""The standalone UI in a real browser: start ``python -m lib_dbchar ui``, drive Debian's Chromium.

The server starts as a user would start it (a subprocess of this Python, a free port, fresh
folders, no network); Playwright's own browser download does not work offline, so it drives
/usr/bin/chromium, and a test skips only when that is missing.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
START_TIMEOUT = 120  # seconds: gradio + torch imports on a slow 2-core machine


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_up(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the UI exited with {process.returncode}:\n{log.read_text(errors='replace')}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    pytest.fail(
        f"the UI did not answer on {url} within {START_TIMEOUT} s:\n{log.read_text(errors='replace')}"
    )


@contextlib.contextmanager
def standalone_ui(
    root: Path, models: Path, projects: Path, env: Mapping[str, str] | None = None
) -> Iterator[str]:
    """Run ``python -m lib_dbchar ui`` on a free port until the block ends; yields its URL.

    Args:
        root: a scratch folder for the log (``ui.log``) and the server's HOME.
        models: the checkpoints folder (created if missing).
        projects: the projects folder.
        env: extra environment (e.g. ``HF_HUB_OFFLINE``).
    """
    models.mkdir(parents=True, exist_ok=True)
    log, port = root / "ui.log", free_port()
    full_env = {
        **os.environ,
        "GRADIO_ANALYTICS_ENABLED": "False",
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        "HOME": str(root / "home"),
        **(env or {}),
    }
    command = [sys.executable, "-m", "lib_dbchar", "ui", "--models-dir", str(models)]
    command += ["--projects-dir", str(projects), "--port", str(port)]
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            command, cwd=REPO_ROOT, env=full_env, stdout=log_file, stderr=subprocess.STDOUT
        )
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_until_up(url, process, log)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)


@contextlib.contextmanager
def chromium() -> Iterator[object]:
    """A Playwright Chromium browser on Debian's binary (skips the test when it is missing)."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing (Debian: apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()
