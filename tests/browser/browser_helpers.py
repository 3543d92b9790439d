"""Shared by the browser tests: where Chromium is and how it is started, `segany serve` in a
subprocess, and one page in headless Chromium.

A module of helpers (like ``tests/engine_helpers.py``) rather than conftest fixtures: each test
file builds its own images and database and decides its own server options in plain sight.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from engine_helpers import free_port

REPO = Path(__file__).resolve().parents[2]
DATA = REPO.parent / "shared" / "data" / "bsds500" / "images" / "train"
CHROMIUM = os.environ.get("SEGANY_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def browser_missing() -> str | None:
    """Why no browser test can run here (Chromium or the playwright package missing), or None."""
    if not Path(CHROMIUM).is_file():
        return f"Chromium not found at {CHROMIUM} (apt-get install chromium; .ci/setup-extra.sh does)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright Python package is not installed (pip install playwright)"
    return None


@contextmanager
def segany_server(args: list[str], timeout: float = 120.0) -> Iterator[str]:
    """``segany serve ARGS --port P`` in a subprocess; yields its URL once it answers, stops it after.

    A server that exits or does not answer within ``timeout`` fails the test with its output.
    """
    port = free_port()
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="2")
    proc = subprocess.Popen(
        [sys.executable, "-m", "segany.cli", "serve", *args, "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + timeout
    while True:
        try:
            urllib.request.urlopen(url + "/favicon.ico", timeout=2)
            break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                pytest.fail("server did not start: " + (proc.stdout.read() if proc.stdout else ""))
            time.sleep(0.2)
    try:
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


@contextmanager
def chromium_page(url: str, viewport: dict[str, int] | None = None) -> Iterator[Any]:
    """A page of a fresh headless Chromium opened at ``url``; ``page.errors`` collects the
    page's uncaught JavaScript errors."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        # Playwright gives every launch a fresh, empty profile directory
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=viewport or {"width": 1280, "height": 760})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.errors = errors
            page.goto(url)
            yield page
        finally:
            browser.close()
