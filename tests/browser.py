"""Headless Chromium (Debian's package) for tests of HTML pages: the DOM after the page's
scripts ran, console messages, a screenshot. No driver or downloaded browser needed."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--enable-logging=stderr", "--v=0"]


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("Debian's chromium is needed for the HTML tests: `make test` installs it "
                    "(apt-get install -y chromium)")
    return path


def render(page: Path) -> tuple[str, list[str]]:
    """The DOM after the page's scripts ran, and the console messages (errors included)."""
    proc = subprocess.run([chromium(), *FLAGS, "--dump-dom", Path(page).resolve().as_uri()],
                          capture_output=True, text=True, timeout=120)
    console = re.findall(r":CONSOLE[^\]]*\] (.*)", proc.stderr)
    return proc.stdout, console


def screenshot(page: Path, png: Path, size: str = "1600,1000") -> Path:
    png.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([chromium(), *FLAGS, f"--window-size={size}", f"--screenshot={png}", Path(page).resolve().as_uri()],
                   capture_output=True, text=True, timeout=120, check=True)
    return png
