"""Checks on the built book in _build/html: pages exist, no error output, figures, a rendered screenshot.

Run after `python -m ioi_utils.book --profile smoke` (or `jupyter-book build book/ -W`):
`pytest -m book tests/test_book_html.py`. Needs a `chromium` binary (Debian: `apt-get install -y chromium`).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from ioi_utils.book import TOC_FILE, toc_chapters

pytestmark = pytest.mark.book

ROOT = Path(__file__).resolve().parent.parent
HTML_DIR = ROOT / "_build" / "html"
SHOT_DIR = ROOT / "_build" / "screenshots"
CHAPTERS = toc_chapters(ROOT / TOC_FILE)
ROOT_PAGE = CHAPTERS[0]
PAGES_WITHOUT_FIGURES = {ROOT_PAGE, "summary", "paper"}
MIN_SCREENSHOT_BYTES = 20_000
ERROR_MARKERS = re.compile(
    r'class="[^"]*\b(traceback|output_error|output error)\b|\bename\b|Traceback \(most recent call last\)'
)
EXTERNAL_SCRIPT = re.compile(r'<script[^>]*\bsrc="(https?:)?//')
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--virtual-time-budget=8000", "--window-size=1280,2400",
]


def chromium() -> str | None:
    """Path of the chromium binary ($CHROMIUM, else chromium/chromium-browser on PATH), or None."""
    return os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


def page(name: str) -> Path:
    """The built HTML page of a TOC entry."""
    return HTML_DIR / f"{name}.html"


def screenshot(html: Path, png: Path) -> subprocess.CompletedProcess:
    """Render an HTML file with headless Chromium into a PNG."""
    png.parent.mkdir(parents=True, exist_ok=True)
    png.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        cmd = [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--screenshot={png}", html.as_uri()]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


needs_html = pytest.mark.skipif(not HTML_DIR.is_dir(), reason=f"no built book at {HTML_DIR}: run "
                                "`python -m ioi_utils.book --profile smoke` (or `jupyter-book build book/ -W`) first")
needs_chromium = pytest.mark.skipif(chromium() is None, reason="no chromium binary (apt-get install -y chromium)")


@needs_html
@pytest.mark.parametrize("name", CHAPTERS)
def test_page_exists_without_errors(name: str) -> None:
    """Each TOC page was built and shows no error output."""
    assert page(name).is_file(), f"{page(name)} missing"
    match = ERROR_MARKERS.search(page(name).read_text(encoding="utf-8"))
    assert match is None, f"{name}: error output in the page ({match.group(0)!r})"


@needs_html
@pytest.mark.parametrize("name", CHAPTERS)
def test_page_loads_no_external_scripts(name: str) -> None:
    """Pages must render offline: no script from http(s) (e.g. the MathJax CDN)."""
    match = EXTERNAL_SCRIPT.search(page(name).read_text(encoding="utf-8"))
    assert match is None, f"{name}: external script {match.group(0)!r}"


@needs_html
@pytest.mark.parametrize("name", [c for c in CHAPTERS if c not in PAGES_WITHOUT_FIGURES])
def test_chapter_has_figure(name: str) -> None:
    """Every chapter except the intro and summary shows at least one image."""
    assert "<img" in page(name).read_text(encoding="utf-8"), f"{name}: no <img> in the page"


@needs_html
@needs_chromium
@pytest.mark.parametrize("name", CHAPTERS)
def test_screenshot(name: str) -> None:
    """Headless Chromium renders each page into a non-trivial PNG under _build/screenshots/."""
    png = SHOT_DIR / f"{name}.png"
    result = screenshot(page(name), png)
    assert png.is_file(), f"no screenshot (rc={result.returncode}): {result.stderr[-2000:]}"
    assert png.stat().st_size > MIN_SCREENSHOT_BYTES, f"{png} is only {png.stat().st_size} bytes"
