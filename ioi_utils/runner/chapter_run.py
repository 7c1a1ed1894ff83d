"""Executing one chapter: papermill runs its jupytext source into a notebook, saved after every cell.

The kernel's stdout and stderr and papermill's cell progress stream to the chapter's log (`LogStream`); the
runner is told as each cell starts (`CellProgress`: the cell's number, its first comment line, the elapsed time
and what the cell took in the published run); a failure is one line (`ChapterFailed`); the chapter's times go
into the notebook's metadata (`timings.TIMING_KEY`) and its outputs are cleaned for readers (`publication`).
"""

from __future__ import annotations

import copy
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence, TextIO

from ioi_utils.runner import publication
from ioi_utils.storage import timings


KERNEL = "python3"


def _describe(exc: BaseException) -> str:
    """One-line summary of an execution error."""
    ename = getattr(exc, "ename", None) or type(exc).__name__
    evalue = str(getattr(exc, "evalue", None) or exc).strip().splitlines()
    return f"{ename}: {evalue[0]}" if evalue else ename


def load_source(src: Path) -> Any:
    """Read a jupytext source as a notebook with a python3 kernelspec (papermill needs one)."""
    import jupytext

    nb = jupytext.read(src)
    nb.metadata.setdefault("kernelspec", {"name": KERNEL, "display_name": "Python 3", "language": "python"})
    return nb


class ChapterFailed(RuntimeError):
    """A chapter raised while executing; the message is one line."""


class LogStream:
    """A text file for tqdm bars and kernel output: text after a bar that is still drawing gets a new line."""

    def __init__(self, handle: Any) -> None:
        self.handle, self.bar_open = handle, False

    def write(self, text: str) -> int:
        """Write text, starting a new line if it would otherwise continue a progress bar's line."""
        if text and self.bar_open and not text.startswith(("\r", "\n")):
            self.handle.write("\n")
        self.handle.write(text)
        if text:
            self.bar_open = "\r" in text and not text.endswith("\n")
        return len(text)

    def flush(self) -> None:
        """Flush the file, so `tail -f` sees the text at once."""
        self.handle.flush()


def slowest_cells(nb: Any, n: int = 5) -> str:
    """'cell 4: 62.1 s, cell 9: 30.0 s, ...': the n longest cells of a papermill-executed notebook."""
    times = [(float(c.metadata.get("papermill", {}).get("duration") or 0.0), i) for i, c in enumerate(nb.cells)]
    return ", ".join(f"cell {i}: {d:.1f} s" for d, i in sorted(times, reverse=True)[:n]) or "none"


def cell_title(cell: Any, width: int = 72) -> str:
    """How a progress line names a cell: its first comment line, else its first line, cut to `width`."""
    lines = [line.strip() for line in cell.get("source", "").splitlines() if line.strip()]
    comments = [line.lstrip("#").strip() for line in lines if line.startswith("#") and line.lstrip("#").strip()]
    title = comments[0] if comments else (lines[0] if lines else "(empty)")
    return title if len(title) <= width else title[: width - 1] + "…"


@dataclass
class CellProgress:
    """Called by the engine as each cell starts; prints one line per code cell to the terminal: "[3/7] corruption:
    cell 5/19 at 2 min 10 s (published run: 41.0 s): <first comment line>". Parameters cells are counted, not
    shown. `hints` are the published execution's seconds per code cell (used only if the cell counts agree)."""

    tag: str
    hints: Sequence[float] | None = None
    out: TextIO | None = None
    start: float = field(default_factory=time.perf_counter)

    def __call__(self, nb: Any, cell: Any, index: int) -> None:
        """Report cell `index` of `nb` if it is a code cell."""
        code = [i for i, c in enumerate(nb.cells) if c.get("cell_type") == "code"]
        tags = set(cell.get("metadata", {}).get("tags", []))
        if index not in code or tags & {"parameters", "injected-parameters"}:
            return
        k = code.index(index)
        hint = ""
        if self.hints is not None and len(self.hints) == len(code):
            hint = f" (published run: {timings.fmt_seconds(self.hints[k])})"
        elapsed = timings.fmt_seconds(time.perf_counter() - self.start)
        print(f"{self.tag}: cell {k + 1}/{len(code)} at {elapsed}{hint}: {cell_title(cell)}",
              file=self.out or sys.stdout, flush=True)


_ENGINE = "ioi_utils"


def register_engine() -> str:
    """Register (once) and name the papermill engine that calls `on_cell(nb, cell, index)` as each cell starts:
    nbclient's engine with the execution manager's cell_start wrapped."""
    from papermill.engines import NBClientEngine, papermill_engines

    class ReportingEngine(NBClientEngine):
        """NBClientEngine reporting cell starts to an `on_cell` callback (a papermill engine keyword)."""

        @classmethod
        def execute_managed_notebook(cls, nb_man: Any, kernel_name: str, on_cell: Callable | None = None,
                                     **kwargs: Any) -> Any:
            if on_cell is not None:
                start = nb_man.cell_start

                def cell_start(cell: Any, cell_index: int | None = None, **kw: Any) -> Any:
                    on_cell(nb_man.nb, cell, cell_index)
                    return start(cell, cell_index, **kw)

                nb_man.cell_start = cell_start
            return super().execute_managed_notebook(nb_man, kernel_name, **kwargs)

    if _ENGINE not in papermill_engines._engines:
        papermill_engines.register(_ENGINE, ReportingEngine)
    return _ENGINE


def execute_chapter(src: Path, out: Path, params: dict[str, Any], log: Path,
                    on_cell: Callable[[Any, Any, int], None] | None = None) -> None:
    """Execute one jupytext source with papermill into `out` (saved after every cell), streaming to `log`;
    `on_cell(nb, cell, index)` is called as each cell starts; the chapter's times go into the notebook."""
    import papermill as pm

    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w", encoding="utf-8") as raw:
        handle = LogStream(raw)
        handle.write(f"# {src.name} -> {out}, started {timings.utc_now()}\n")
        handle.flush()
        try:
            nb = pm.execute_notebook(
                load_source(src), str(out), parameters=copy.deepcopy(params), cwd=str(src.parent),
                kernel_name=KERNEL, progress_bar={"file": handle, "ascii": True},
                stdout_file=handle, stderr_file=handle, engine_name=register_engine(), on_cell=on_cell,
            )
        except Exception as exc:
            handle.write(f"\n# FAILED: {_describe(exc)}\n")
            raise ChapterFailed(f"chapter '{src.stem}' failed: {_describe(exc)}") from exc
        handle.write(f"\n# done {timings.utc_now()}; slowest cells: {slowest_cells(nb)}\n")
    nb.metadata[timings.TIMING_KEY] = timings.timing_of(nb, params)
    publication.write_atomic(publication.scrub_outputs(publication.strip_volatile(nb)), out)
