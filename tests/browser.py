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


def measure(page: Path, script: str, size: str = "1400,900") -> dict:
    """Run ``script`` (JavaScript: a function body receiving the page's ``document`` and
    ``window`` as ``doc`` and ``win``, returning a JSON-able value) against ``page`` laid out in a
    window of ``size``, after the page's own scripts ran. The page is loaded in a full-window
    iframe of a harness page beside it, so the numbers are those of a real layout."""
    import json
    import tempfile

    page = Path(page).resolve()
    with tempfile.TemporaryDirectory(dir=page.parent) as tmp:
        harness = Path(tmp) / "harness.html"
        harness.write_text(
            "<!DOCTYPE html><html><head><style>html,body{margin:0;height:100%}iframe{border:0;width:100%;"
            "height:100%}</style></head><body><iframe id='f' src='" + page.as_uri() + "'></iframe><script>"
            "document.getElementById('f').addEventListener('load', function(){ var r; try { r = JSON.stringify("
            "(function(doc, win){" + script + "})(this.contentDocument, this.contentWindow)); } catch (e) {"
            " r = JSON.stringify({error: String(e)}); } document.body.setAttribute('data-measured', r); });"
            "</script></body></html>", encoding="utf-8")
        proc = subprocess.run([chromium(), *FLAGS, "--allow-file-access-from-files", f"--window-size={size}",
                               "--dump-dom", harness.as_uri()], capture_output=True, text=True, timeout=120)
    found = re.search(r"data-measured=\"([^\"]*)\"", proc.stdout)
    assert found, proc.stdout[-2000:] + proc.stderr[-2000:]
    import html

    return json.loads(html.unescape(found.group(1)))
