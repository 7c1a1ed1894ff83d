"""Checks on the built book in _build/html: pages exist, no error output, figures, a rendered screenshot, and
what the reader sees: no code cell shown without an output unless its input is hidden, no object repr after a
printed verdict, no placeholder of the nbval sanitiser (in the page or in the published notebook).

Run after `python -m ioi_utils.book --profile smoke` (or `jupyter-book build book/ -W`):
`pytest -m book tests/test_book_html.py`. The screenshots need a `chromium` binary (Debian: `apt-get install -y
chromium`); the other checks read the HTML and run without it.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import pytest

from ioi_utils.book import TOC_FILE, toc_chapters
from ioi_utils.storage.timings import TIMING_KEY

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
# the nbval sanitiser's placeholders (tests/nbval_sanitize.cfg, and those older runners wrote into notebooks)
PLACEHOLDERS = sorted({r for r in re.findall(r"^replace: (.+)$", (ROOT / "tests" / "nbval_sanitize.cfg").read_text(),
                                              re.MULTILINE)} | {"[TQDM-TIME]", "SITE-PACKAGES/", "IPYKERNEL_CELL"})
OBJECT_REPR = re.compile(r"^\s*[A-Z]\w*\(\w+=")  # a dataclass's repr, e.g. Claim(statement='...', ...)
HIDDEN_INPUT = {"tag_hide-input", "tag_remove-input", "tag_hide-cell"}
MEDIA = {"img", "svg", "iframe", "script", "table", "video", "canvas"}
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


# ---------------------------------------------------------------- what the reader sees


@dataclass
class Cell:
    """A code cell of a built page: its classes (tag_<tag> for each cell tag), its input's text, its outputs'
    classes and text, and how many media elements (images, tables, scripts) its outputs hold."""

    classes: set[str]
    source: str = ""
    outputs: list[tuple[set[str], str]] = field(default_factory=list)
    media: int = 0

    def shows_output(self) -> bool:
        """Whether the reader sees anything under the cell (text or media)."""
        return self.media > 0 or any(text.strip() for _, text in self.outputs)


class CellParser(HTMLParser):
    """Collects the myst-nb code cells (div.cell) of a page with their inputs and outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: list[Cell] = []
        self.divs: list[set[str]] = []  # classes of the open divs
        self.cell_depth = self.input_depth = self.cell_output_depth = self.output_depth = None
        self.skip = 0  # inside <script>/<style>: not text

    def handle_starttag(self, tag: str, attrs: list) -> None:
        classes = set((dict(attrs).get("class") or "").split())
        if tag in MEDIA and self.cell_output_depth is not None:
            self.cells[-1].media += 1
        if tag in ("script", "style"):
            self.skip += 1
        if tag != "div":
            return
        self.divs.append(classes)
        depth = len(self.divs)
        if "cell" in classes and self.cell_depth is None:
            self.cells.append(Cell(classes))
            self.cell_depth = depth
        elif self.cell_depth is not None and "cell_input" in classes:
            self.input_depth = depth
        elif self.cell_depth is not None and "cell_output" in classes:
            self.cell_output_depth = depth
        elif self.cell_depth is not None and "output" in classes and self.output_depth is None:
            self.cells[-1].outputs.append((classes, ""))
            self.output_depth = depth

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style"):
            self.skip = max(0, self.skip - 1)
        if tag != "div" or not self.divs:
            return
        depth = len(self.divs)
        self.divs.pop()
        if depth == self.output_depth:
            self.output_depth = None
        elif depth == self.input_depth:
            self.input_depth = None
        elif depth == self.cell_output_depth:
            self.cell_output_depth = None
        elif depth == self.cell_depth:
            self.cell_depth = None

    def handle_data(self, data: str) -> None:
        if self.skip or self.cell_depth is None:
            return
        cell = self.cells[-1]
        if self.output_depth is not None:
            classes, text = cell.outputs[-1]
            cell.outputs[-1] = (classes, text + data)
        elif self.cell_output_depth is not None:  # markdown shown by the cell (display(Markdown(...)))
            cell.outputs.append(({"cell_output"}, data))
        elif self.input_depth is not None:
            cell.source += data


def cells(name: str) -> list[Cell]:
    """The code cells of a built page."""
    parser = CellParser()
    parser.feed(page(name).read_text(encoding="utf-8"))
    return parser.cells


def page_text(name: str) -> str:
    """The text of a built page, tags stripped (scripts included: placeholders must not hide there either)."""
    return html.unescape(re.sub(r"<[^>]+>", " ", page(name).read_text(encoding="utf-8")))


EXECUTED = [c for c in CHAPTERS if (ROOT / "book" / f"{c}.ipynb").is_file()]


def test_cell_parser_finds_inputs_outputs_and_hidden_cells() -> None:
    """The parser behind the checks below, on a page shaped like myst-nb's."""
    snippet = (
        '<div class="cell docutils container"><div class="cell_input docutils container"><pre>glue("x", 1)</pre>'
        '</div></div><p>prose</p>'
        '<div class="cell tag_hide-input docutils container"><details><div class="cell_input docutils container">'
        '<pre>import x</pre></div></details><div class="cell_output docutils container">'
        '<div class="output stream"><pre>loaded</pre></div></div></div>'
        '<div class="cell docutils container"><div class="cell_output docutils container"><div class="output '
        'text_plain"><pre>Claim(statement=\'s\')</pre></div><img src="a.png"/></div></div>')
    parser = CellParser()
    parser.feed(snippet)
    a, b, c = parser.cells
    assert a.source == 'glue("x", 1)' and not a.shows_output() and HIDDEN_INPUT.isdisjoint(a.classes)
    assert "tag_hide-input" in b.classes and b.outputs == [({"output", "stream"}, "loaded")]
    assert c.media == 1 and OBJECT_REPR.match(c.outputs[0][1])


def require_current_runner(name: str) -> None:
    """Skip, saying so, when book/<name>.ipynb was published by a runner older than the one that tags cells and
    keeps sanitiser placeholders out of the notebooks (its notebooks carry no TIMING_KEY metadata): these checks
    are about that runner's publication, and apply from the next re-publication on."""
    path = ROOT / "book" / f"{name}.ipynb"
    if path.is_file() and TIMING_KEY not in json.loads(path.read_text(encoding="utf-8")).get("metadata", {}):
        pytest.skip(f"book/{name}.ipynb predates the runner that tags cells and cleans outputs: re-publish it "
                    "(python -m ioi_utils.book --profile offline)")


@needs_html
@pytest.mark.parametrize("name", CHAPTERS)
def test_code_cells_show_an_output_or_hide_their_input(name: str) -> None:
    """Bookkeeping (parameters, glue-only cells) is not shown: a code cell the reader sees has an output, or only
    a toggle for its code (hide-input)."""
    require_current_runner(name)
    bare = [c.source.strip().splitlines()[0] for c in cells(name)
            if not c.shows_output() and HIDDEN_INPUT.isdisjoint(c.classes) and c.source.strip()]
    assert not bare, f"{name}: code cells shown without output (tag them remove-cell): {bare}"


@needs_html
@pytest.mark.parametrize("name", CHAPTERS)
def test_no_object_repr_follows_a_verdict(name: str) -> None:
    """A cell's value is not shown as an object repr (a cell ending in claims.check(...) assigns it to _)."""
    require_current_runner(name)
    reprs = [text.strip()[:60] for c in cells(name) for classes, text in c.outputs
             if "text_plain" in classes and OBJECT_REPR.match(text)]
    assert not reprs and "Claim(" not in page_text(name), f"{name}: object reprs in the page: {reprs}"


@needs_html
@pytest.mark.parametrize("name", CHAPTERS)
def test_page_shows_no_sanitiser_placeholder(name: str) -> None:
    """Placeholders of the nbval comparison ([TQDM-TIME], IPYKERNEL_CELL, ...) never reach the page."""
    text = page_text(name)
    assert not [p for p in PLACEHOLDERS if p in text], f"{name}: {[p for p in PLACEHOLDERS if p in text]}"


@needs_html
@pytest.mark.parametrize("name", EXECUTED)
def test_published_notebook_has_no_sanitiser_placeholder(name: str) -> None:
    """Nor the published notebook's outputs, stderr included (what GitHub shows of book/<name>.ipynb)."""
    require_current_runner(name)
    nb = json.loads((ROOT / "book" / f"{name}.ipynb").read_text(encoding="utf-8"))
    texts = ["".join(o.get("text", "")) + "".join(o.get("data", {}).get("text/plain", ""))
             for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])]
    found = sorted({p for t in texts for p in PLACEHOLDERS if p in t})
    assert not found, f"book/{name}.ipynb: sanitiser placeholders in the outputs: {found}"
