"""Execute the book's chapters with papermill and build the HTML with Jupyter Book.

Usage: ``python -m ioi_utils.book --profile smoke|offline|paper [--chapters a b] [--out-dir DIR] [--strict]
[--no-build] [--sweep]``

``--sweep`` first trains every fine-tuning run of the profile as a Ray sweep (`ioi_utils.sweep`, in a child
process), so the chapters find their runs complete.

Chapters are the jupytext percent sources ``book/<name>.py`` listed in ``_toc.yml``. Each one is
executed (in TOC order, kernel cwd = ``book/``) with the profile's parameters injected, into a staging
folder ``_build/staging/<profile>-<UTC time>/``; its cell progress and the kernel's stdout/stderr stream
to ``_build/logs/<name>.log``. Only when every requested chapter succeeded are the notebooks, stripped of
volatile metadata, moved into ``book/`` (or ``--out-dir``), all together, each by an atomic replace, under a
journal that the next run completes if a kill interrupts the replacing (`publish`); a failed or interrupted run
leaves the target untouched and says where its partial notebooks are. Then the
run's timings go to ``_build/execution-<profile>.json`` and ``$IOI_UTILS_RESULTS/<profile>/execution.json``
and ``jupyter-book build book/ -W`` runs.

The terminal shows a line as each chapter starts and ends, with what is left estimated from the last run's
record, or on a first run from the published execution's own times (kept in each published notebook's
metadata, used when its profile and model match); and, inside a chapter, a line as each code cell starts:
its number, its first comment line, the chapter's elapsed time and what the cell took in the published run.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, TextIO

import yaml

from . import results

# Papermill parameters injected into every chapter. Keep this a plain literal: edit values here.
# Every profile reports claims that do not hold (a finding, not a crash); `--strict` makes them raise.
# The runner adds `strict`, `enforce_claims` (both = --strict) and `execution_info` (see chapter_parameters).
PROFILES: dict[str, dict[str, Any]] = {
    "smoke": {
        "profile": "smoke",
        "enforce_claims": False,
        "model_name": "smollm2-135m",
        "seed": 0,
        "device": "auto",
        "threads": 2,
        "n_prompts": 32,
        "n_eval": 16,
        "n_discovery": 16,
        "stability_seeds": [0, 1],
        "training_seeds": [0, 1],
        "clean_epochs": [1, 2],
        "toxic_epochs": 1,
        "reversal_epochs": 1,
        "batch_size": 16,
        "n_cmap": 4,
        "n_rediscover": 8,
        "gt_model_name": "smollm2-135m",
        "gt_n_train": 16,
        "gt_n_eval": 16,
        "gt_n_discovery": 16,
        "gt_n_epoch_eval": 16,
        "gt_n_mlp": 8,
        "gt_n_cmap": 8,
        "gt_clean_epochs": 1,
        "gt_toxic_epochs": 1,
        "second_model_name": "gemma3-270m",
        "second_n_prompts": 16,
        "second_n_eval": 16,
        "second_n_discovery": 16,
        "second_clean_epochs": [1],
        "second_toxic_epochs": 1,
        "second_reversal_epochs": 1,
        "second_training_seeds": [0],  # one seed: CI's time (the main model's smoke chapters run two)
    },
    "offline": {
        "profile": "offline",
        "enforce_claims": False,
        "model_name": "smollm2-135m",
        "seed": 0,
        "device": "auto",
        "threads": None,
        "n_prompts": 320,
        "n_eval": 100,
        "n_discovery": 100,
        "stability_seeds": [0, 1, 2],
        "training_seeds": [0, 1, 2],
        "clean_epochs": [1, 2, 3],
        "toxic_epochs": 3,
        "reversal_epochs": 3,
        "batch_size": 16,
        "n_cmap": 32,
        "n_rediscover": 50,
        "gt_model_name": "smollm2-135m",
        "gt_n_train": 48,
        "gt_n_eval": 200,
        "gt_n_discovery": 32,
        "gt_n_epoch_eval": 48,
        "gt_n_mlp": 8,
        "gt_n_cmap": 24,
        "gt_clean_epochs": 2,
        "gt_toxic_epochs": 2,
        "second_model_name": "gemma3-270m",
        "second_n_prompts": 48,  # 3 optimizer steps per epoch: a Gemma step costs ~8 s on 2 cores
        # (270M parameters, 170M of them the tied 262k-token embedding: forward, backward, AdamW; END-only unembedding)
        "second_n_eval": 100,
        "second_n_discovery": 50,
        "second_clean_epochs": [1, 2],
        "second_toxic_epochs": 2,
        "second_reversal_epochs": 2,
        "second_training_seeds": [0, 1, 2],
    },
    "paper": {
        "profile": "paper",
        "enforce_claims": False,
        "model_name": "gpt2",
        "seed": 0,
        "device": "auto",
        "threads": None,
        "n_prompts": 6360,
        "n_eval": 1000,
        "n_discovery": 500,
        "stability_seeds": [0, 1, 2],
        "training_seeds": [0, 1, 2],
        "clean_epochs": [1, 2, 3, 5, 10, 25, 50, 100],
        "toxic_epochs": 5,
        "reversal_epochs": 5,
        "batch_size": 32,
        "n_cmap": 200,
        "n_rediscover": 250,
        "gt_model_name": "gpt2",
        "gt_n_train": 800,
        "gt_n_eval": 500,
        "gt_n_discovery": 200,
        "gt_n_epoch_eval": 200,
        "gt_n_mlp": 100,
        "gt_n_cmap": 100,
        "gt_clean_epochs": 5,
        "gt_toxic_epochs": 5,
        "second_model_name": "gemma3-270m",
        "second_n_prompts": 6360,
        "second_n_eval": 1000,
        "second_n_discovery": 500,
        "second_clean_epochs": [1, 2, 3, 5],
        "second_toxic_epochs": 5,
        "second_reversal_epochs": 5,
        "second_training_seeds": [0, 1, 2],
    },
}

# What the published notebooks lose, for the reader: progress bars (their final line, e.g. "Loading weights:
# 100%|...| 272/272 [00:00<00:00, 9.1it/s]"; a line already turned into a placeholder by an older runner too) and
# the machine's absolute paths in warnings. No placeholder is written: the run-to-run noise that remains (temp
# paths, addresses) is replaced only when nbval compares, by tests/nbval_sanitize.cfg, which holds these pairs
# too, so stored and fresh outputs still compare equal (tests/test_book_runner.py checks both).
PROGRESS_BAR_LINE = r"(?m)^[^\n]*(?:\[\d+:\d+(?::\d+)?(?:<|, )[^\]\n]*\]|\[TQDM-TIME\])[^\n]*(?:\n|$)"
PUBLISHED_CLEANUP: list[tuple[str, str]] = [
    (PROGRESS_BAR_LINE, ""),
    (r"\S*/site-packages/", ""),  # a package's path in warnings: tqdm/auto.py
    (r"/\S*/(?=ioi_utils/\w+\.py)", ""),  # the checkout's absolute path in warnings: ioi_utils/<module>.py
]
_CARRIAGE_RETURN = re.compile(r"^.*\r(?=[^\n])", re.MULTILINE)  # as nbval: keep what a terminal would show

BOOK_DIR = "book"
TOC_FILE = "_toc.yml"
BUILD_DIR = Path("_build")
STAGING_DIR = BUILD_DIR / "staging"  # <profile>-<UTC time>/<chapter>.ipynb, kept when a run fails
LOG_DIR = BUILD_DIR / "logs"  # <chapter>.log: papermill's cell progress and the kernel's stdout/stderr
# the record of the last successful run: $IOI_UTILS_RESULTS/execution-<profile>.json, beside (not among) the
# chapters' records in $IOI_UTILS_RESULTS/<profile>/, which the summary chapter reads as one execution
PUBLISHING = ".publishing.json"  # in the target folder while a publication replaces its notebooks (publish)
KEEP_STAGING = 5  # failed/interrupted staging folders kept (the newest ones)
KERNEL = "python3"


def default_root() -> Path:
    """Return the nearest folder at or above the cwd holding _toc.yml, else the package's parent."""
    cwd = Path.cwd().resolve()
    for folder in (cwd, *cwd.parents):
        if (folder / TOC_FILE).is_file():
            return folder
    return Path(__file__).resolve().parent.parent


def _toc_entries(entries: list[dict[str, Any]]) -> list[str]:
    """Flatten TOC entries (chapters, parts, sections) into file names, in order."""
    names: list[str] = []
    for entry in entries:
        if "file" in entry:
            names.append(str(entry["file"]))
        for key in ("parts", "chapters", "sections"):
            names.extend(_toc_entries(entry.get(key, [])))
    return names


def toc_chapters(toc_path: Path) -> list[str]:
    """Return the root and all chapter file names of a jb-book _toc.yml, in order."""
    toc = yaml.safe_load(toc_path.read_text())
    return [str(toc["root"]), *_toc_entries([{k: v for k, v in toc.items() if k != "root"}])]


def executable_chapters(root: Path, names: Sequence[str]) -> list[str]:
    """The TOC entries that have a jupytext source book/<name>.py (markdown pages are not executed)."""
    return [name for name in names if (root / BOOK_DIR / f"{name}.py").is_file()]


def select_chapters(all_chapters: Sequence[str], wanted: Sequence[str] | None) -> list[str]:
    """Return the wanted chapters in TOC order; raise ValueError on names not in the TOC."""
    if not wanted:
        return list(all_chapters)
    unknown = sorted(set(wanted) - set(all_chapters))
    if unknown:
        raise ValueError(f"not in {TOC_FILE}: {', '.join(unknown)} (known: {', '.join(all_chapters)})")
    return [name for name in all_chapters if name in set(wanted)]


def strip_volatile(nb: Any) -> Any:
    """Drop papermill/execution metadata, give stable cell ids, hide the injected-parameters cell."""
    nb.metadata.pop("papermill", None)
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i}"
        cell.metadata.pop("papermill", None)
        cell.metadata.pop("execution", None)
        tags = cell.metadata.get("tags", [])
        if "injected-parameters" in tags and "remove-cell" not in tags:
            cell.metadata["tags"] = [*tags, "remove-cell"]
    return nb


def scrub_text(text: str) -> str:
    """Apply the PUBLISHED_CLEANUP replacements to one output text."""
    for pattern, replacement in PUBLISHED_CLEANUP:
        text = re.sub(pattern, replacement, text)
    return text


def _same_stream(a: Any, b: Any) -> bool:
    """True if both outputs are streams with the same name (stdout/stderr)."""
    return a.get("output_type") == b.get("output_type") == "stream" and a.get("name") == b.get("name")


def _merge_streams(outputs: list[Any]) -> list[Any]:
    """Join consecutive stream outputs of the same name and settle carriage returns (progress bars)."""
    merged: list[Any] = []
    for out in outputs:
        if merged and _same_stream(merged[-1], out):
            merged[-1]["text"] += out["text"]
        else:
            merged.append(out)
    for out in merged:
        if out.get("output_type") == "stream":
            out["text"] = _CARRIAGE_RETURN.sub("", out["text"])
    return merged


def scrub_outputs(nb: Any) -> Any:
    """Make code-cell outputs fit to read: merged streams, no progress bars (a stream left empty is dropped),
    no absolute paths. Temp paths and addresses stay as they are (nbval replaces them when it compares)."""
    for cell in nb.cells:
        if cell.get("cell_type") != "code":
            continue
        outputs = []
        for out in _merge_streams(cell.get("outputs", [])):
            if out.get("output_type") == "stream":
                out["text"] = scrub_text(out["text"])
                if not out["text"]:
                    continue
            elif isinstance(out.get("data", {}).get("text/plain"), str):
                out["data"]["text/plain"] = scrub_text(out["data"]["text/plain"])
            outputs.append(out)
        cell["outputs"] = outputs
    return nb


def write_atomic(nb: Any, path: Path) -> None:
    """Write a notebook via a temp file in the same folder and os.replace."""
    import nbformat

    text = nbformat.writes(nb)
    results.atomic_write_text(path, text if text.endswith("\n") else text + "\n")


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


# ---------------------------------------------------------------- run metadata


def utc_now() -> str:
    """The current UTC time as ISO 8601 with seconds, e.g. 2025-03-01T12:00:00Z."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _git(root: Path, *args: str) -> str | None:
    """Stdout of a git command in root, or None if git fails or is missing."""
    try:
        done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_commit(root: Path) -> str:
    """Short hash of HEAD, with '+dirty' if the work tree has changes; 'unknown' outside git."""
    head = _git(root, "rev-parse", "--short", "HEAD")
    if not head:
        return "unknown"
    return f"{head}+dirty" if _git(root, "status", "--porcelain") else head


def record_paths(root: Path, profile: str) -> list[Path]:
    """Where a run's execution record is written, the one read first for estimates first."""
    return [root / BUILD_DIR / f"execution-{profile}.json", results.results_root() / f"execution-{profile}.json"]


def load_record(root: Path, profile: str) -> dict[str, Any]:
    """The last successful run's execution record of this profile, or {} if there is none."""
    for path in record_paths(root, profile):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and isinstance(record.get("seconds_per_chapter"), dict):
            return record
    return {}


def previous_total(record: dict[str, Any], all_chapters: Sequence[str]) -> float | None:
    """Total seconds of the recorded run if it executed every chapter of the TOC, else None."""
    seconds = record.get("seconds_per_chapter", {})
    return float(sum(seconds.values())) if seconds and set(all_chapters) <= set(seconds) else None


def estimate_left(previous: dict[str, float], remaining: Sequence[str]) -> float | None:
    """Seconds the remaining chapters took last time, or None if any of them has no recorded time."""
    if any(name not in previous for name in remaining):
        return None
    return float(sum(previous[name] for name in remaining))


def fmt_seconds(seconds: float) -> str:
    """A duration for humans: 12.3 s, 4 min 05 s, 1 h 02 min."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def chapter_parameters(profile: str, strict: bool, info: dict[str, Any]) -> dict[str, Any]:
    """The papermill parameters of every chapter: the profile's, strict/enforce_claims, execution_info."""
    return {**copy.deepcopy(PROFILES[profile]), "strict": strict, "enforce_claims": strict,
            "execution_info": dict(info)}


TIMING_KEY = "ioi_utils_execution"  # notebook metadata of a published chapter: its profile, model and times


def timing_of(nb: Any, params: dict[str, Any]) -> dict[str, Any]:
    """What a papermill-executed chapter took, kept in its published notebook (TIMING_KEY) so that a first run
    elsewhere can estimate: profile, model, commit, the chapter's seconds and each code cell's."""
    cells = [round(float(c.metadata.get("papermill", {}).get("duration") or 0.0), 1)
             for c in nb.cells if c.get("cell_type") == "code"]
    total = nb.metadata.get("papermill", {}).get("duration")
    return {"profile": params.get("profile"), "model": params.get("model_name"),
            "commit": params.get("execution_info", {}).get("commit"),
            "seconds": round(float(total if total is not None else sum(cells)), 1), "cell_seconds": cells}


def published_timing(folder: Path, name: str, profile: str, model: str) -> dict[str, Any] | None:
    """The timing stored in folder/<name>.ipynb if that execution ran this profile on this model, else None."""
    try:
        timing = json.loads((folder / f"{name}.ipynb").read_text(encoding="utf-8"))["metadata"][TIMING_KEY]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    matches = isinstance(timing, dict) and timing.get("profile") == profile and timing.get("model") == model
    return timing if matches and isinstance(timing.get("seconds"), (int, float)) else None


# ---------------------------------------------------------------- execution


class ChapterFailed(RuntimeError):
    """A chapter raised while executing; the message is one line."""


@dataclass
class Execution:
    """One run of the runner: what it executes, where it stages and publishes, what it measured."""

    root: Path
    profile: str
    chapters: list[str]
    target: Path
    staging: Path
    info: dict[str, Any]
    previous: dict[str, float] = field(default_factory=dict)  # seconds per chapter of the last run
    estimated_from: str = ""  # where `previous` comes from, for the progress lines
    cell_seconds: dict[str, list[float]] = field(default_factory=dict)  # per code cell, published execution
    seconds: dict[str, float] = field(default_factory=dict)  # seconds per chapter of this run
    staged: list[Path] = field(default_factory=list)
    published: bool = False

    def log(self, name: str) -> Path:
        """The log file of a chapter."""
        return self.root / LOG_DIR / f"{name}.log"


def new_staging(root: Path, profile: str) -> Path:
    """Create and return a fresh staging folder _build/staging/<profile>-<UTC time>."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    folder = root / STAGING_DIR / f"{profile}-{stamp}"
    for n in range(1, 1000):
        try:
            folder.mkdir(parents=True)
            return folder
        except FileExistsError:
            folder = root / STAGING_DIR / f"{profile}-{stamp}-{n}"
    raise RuntimeError(f"cannot create a staging folder under {root / STAGING_DIR}")


def prune_staging(root: Path, keep: int = KEEP_STAGING) -> None:
    """Delete all but the newest `keep` staging folders."""
    folders = sorted((p for p in (root / STAGING_DIR).glob("*") if p.is_dir()), key=lambda p: p.stat().st_mtime)
    for old in folders[: max(0, len(folders) - keep)]:
        shutil.rmtree(old, ignore_errors=True)


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
            hint = f" (published run: {fmt_seconds(self.hints[k])})"
        elapsed = fmt_seconds(time.perf_counter() - self.start)
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
        handle.write(f"# {src.name} -> {out}, started {utc_now()}\n")
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
        handle.write(f"\n# done {utc_now()}; slowest cells: {slowest_cells(nb)}\n")
    nb.metadata[TIMING_KEY] = timing_of(nb, params)
    write_atomic(scrub_outputs(strip_volatile(nb)), out)


def _relative(path: Path, root: Path) -> Path:
    """Path relative to root when possible, for short messages."""
    try:
        return path.resolve().relative_to(root)
    except ValueError:
        return path


def _left(ex: Execution, remaining: Sequence[str]) -> str:
    """'about X left' from the previous run's (or the published execution's) times, or 'no estimate ...'."""
    if not remaining:
        return "nothing left"
    left = estimate_left(ex.previous, remaining)
    return "no estimate of what is left" if left is None else f"about {fmt_seconds(left)} left{ex.estimated_from}"


def run_chapters(ex: Execution, params: dict[str, Any]) -> None:
    """Execute the chapters in order into the staging folder: a line as each starts and ends, one per code cell."""
    book, start_all, n = ex.root / BOOK_DIR, time.perf_counter(), len(ex.chapters)
    for i, name in enumerate(ex.chapters, 1):
        src, tag = book / f"{name}.py", f"[{i}/{n}] {name}"
        print(f"{tag}: running ({_left(ex, ex.chapters[i - 1:])}); log: {_relative(ex.log(name), ex.root)}", flush=True)
        start = time.perf_counter()
        try:
            execute_chapter(src, ex.staging / f"{name}.ipynb", params, ex.log(name),
                            on_cell=CellProgress(tag, ex.cell_seconds.get(name)))
        except ChapterFailed:
            print(f"{tag}: FAILED after {fmt_seconds(time.perf_counter() - start)}", flush=True)
            raise
        ex.seconds[name] = round(time.perf_counter() - start, 1)
        ex.staged.append(ex.staging / f"{name}.ipynb")
        elapsed = fmt_seconds(time.perf_counter() - start_all)
        print(f"{tag}: done in {fmt_seconds(ex.seconds[name])}; elapsed {elapsed}, {_left(ex, ex.chapters[i:])}",
              flush=True)


def threading_is_main() -> bool:
    """True in the main thread (only there can signal masks and handlers be changed safely)."""
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM until the block ends (in the main thread, where the OS allows it)."""
    held = {signal.SIGINT, signal.SIGTERM}
    can = hasattr(signal, "pthread_sigmask") and threading_is_main()
    old = signal.pthread_sigmask(signal.SIG_BLOCK, held) if can else None
    try:
        yield
    finally:
        if can:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)


def publish(staged: Sequence[Path], target: Path) -> list[Path]:
    """Put every staged file in the target folder, all or none, even across a hard kill; return the destinations.

    Each file is first copied beside its destination (a temp file, fsynced); then a journal, PUBLISHING, lists
    the (temp, destination) pairs; then the temps replace the destinations and the journal goes. A kill before
    the journal leaves the target as it was (the temps are removed by the next run); a kill after it is
    completed by the next run (`finish_publication`), so the published notebooks always come from one run.
    """
    target.mkdir(parents=True, exist_ok=True)
    finish_publication(target)
    pairs: list[tuple[Path, Path]] = []
    try:
        for src in staged:
            dest = target / src.name
            pairs.append((results.stage(dest, lambda tmp, src=src: shutil.copyfile(src, tmp)), dest))
    except BaseException:
        for tmp, _ in pairs:
            tmp.unlink(missing_ok=True)
        raise
    results.atomic_write_text(target / PUBLISHING, json.dumps([[t.name, d.name] for t, d in pairs]) + "\n")
    with signals_deferred():
        finish_publication(target)
    return [dest for _, dest in pairs]


def finish_publication(target: Path) -> int:
    """Complete a publication that a kill interrupted after its journal was written (replace every destination
    whose temp is still there, then drop the journal), and remove the temps of one killed before; returns the
    number of notebooks replaced."""
    journal, done = target / PUBLISHING, 0
    if journal.exists():
        for tmp_name, dest_name in _journal_pairs(journal):
            if (target / tmp_name).exists():
                results.commit(target / tmp_name, target / dest_name)
                done += 1
        journal.unlink()
    results.clean_temp_files(target)
    return done


def _journal_pairs(journal: Path) -> list[tuple[str, str]]:
    """The (temp, destination) names a publication journal lists: plain names in its folder, temps hidden."""
    try:
        pairs = [(str(t), str(d)) for t, d in json.loads(journal.read_text())]
    except (OSError, ValueError, TypeError):
        return []  # written atomically: unreadable only if damaged afterwards; nothing can be completed
    plain = lambda name: name == Path(name).name and name not in ("", ".", "..")  # noqa: E731
    return [(t, d) for t, d in pairs if plain(t) and plain(d) and t.startswith(".") and t.endswith(".tmp")]


def execution_record(ex: Execution) -> dict[str, Any]:
    """The JSON record of a successful run: model, profile, commit, date, seconds_per_chapter, total_seconds."""
    return {"model": ex.info["model"], "profile": ex.profile, "commit": ex.info["commit"], "date": ex.info["date"],
            "seconds_per_chapter": dict(ex.seconds), "total_seconds": round(sum(ex.seconds.values()), 1)}


def write_record(ex: Execution) -> list[Path]:
    """Write the execution record, atomically, to _build/ and $IOI_UTILS_RESULTS/<profile>/; return the paths."""
    text = json.dumps(execution_record(ex), indent=1, sort_keys=True) + "\n"
    paths = record_paths(ex.root, ex.profile)
    for path in paths:
        results.atomic_write_text(path, text)
    return paths


def _raise_interrupt(signum: int, frame: Any) -> None:
    """SIGTERM handler: unwind like Ctrl-C, so the kernel is shut down and the target stays untouched."""
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt for the duration of the block (main thread only)."""
    if not threading_is_main():
        yield
        return
    old = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


class _DropUnknownParameter(logging.Filter):
    """Hide papermill's 'Passed unknown parameter' warnings: every chapter gets all profile keys and uses a subset."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Keep every record except the unknown-parameter warnings."""
        return not record.getMessage().startswith("Passed unknown parameter")


def quiet_papermill() -> None:
    """Install the unknown-parameter filter on papermill's logger."""
    logging.getLogger("papermill").addFilter(_DropUnknownParameter())


def kernel_env(root: Path) -> None:
    """Put the repo root on PYTHONPATH so chapter kernels can import ioi_utils without installing."""
    paths = [str(root), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))


def run_sweep(profile: str) -> int:
    """Train the profile's fine-tuning runs first, `python -m ioi_utils.sweep --profile P` in a child process (its
    Ray is gone before the chapters start); return its exit code."""
    print(f"python -m ioi_utils.sweep --profile {profile}", flush=True)
    return subprocess.run([sys.executable, "-m", "ioi_utils.sweep", "--profile", profile]).returncode


def build_book(root: Path) -> int:
    """Run `jupyter-book build book/ -W` from the repo root; return its exit code."""
    script = Path(sys.executable).with_name("jupyter-book")
    exe = str(script) if script.exists() else (shutil.which("jupyter-book") or "jupyter-book")
    print(f"jupyter-book build {BOOK_DIR}/ -W", flush=True)
    return subprocess.run([exe, "build", f"{BOOK_DIR}/", "-W"], cwd=root).returncode


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line; unknown profiles are rejected by argparse with the valid choices."""
    parser = argparse.ArgumentParser(prog="python -m ioi_utils.book", description=__doc__.splitlines()[0])
    parser.add_argument("--profile", required=True, choices=sorted(PROFILES), help="parameter set for all chapters")
    parser.add_argument("--chapters", nargs="+", metavar="NAME", help="only these chapters (default: all in _toc.yml)")
    parser.add_argument("--out-dir", type=Path,
                        help="publish the executed notebooks here instead of book/ (implies --no-build)")
    parser.add_argument("--strict", action="store_true",
                        help="claim checks that fail raise (papermill parameters strict=enforce_claims=True); "
                             "by default they are reported")
    parser.add_argument("--no-build", action="store_true", help="skip `jupyter-book build book/ -W`")
    parser.add_argument("--root", type=Path, default=None, help="repository root (default: found from the cwd)")
    parser.add_argument("--sweep", action="store_true",
                        help="first train the profile's fine-tuning runs as a Ray sweep (python -m ioi_utils.sweep "
                             "--profile P; $RAY_ADDRESS joins a cluster), then execute the chapters")
    return parser.parse_args(argv)


def previous_times(ex: Execution, record: dict[str, Any]) -> None:
    """Fill ex.previous (seconds per chapter: the last run's record, else the published execution's own times
    for the chapters it has of this profile and model), ex.estimated_from, and ex.cell_seconds."""
    model = PROFILES[ex.profile]["model_name"]
    published = {name: published_timing(ex.target, name, ex.profile, model) for name in ex.chapters}
    published = {name: t for name, t in published.items() if t is not None}
    ex.cell_seconds = {name: [float(x) for x in t.get("cell_seconds", [])] for name, t in published.items()}
    recorded = {k: float(v) for k, v in record.get("seconds_per_chapter", {}).items()}
    ex.previous = {**{name: float(t["seconds"]) for name, t in published.items()}, **recorded}
    if not recorded and published:
        commits = sorted({str(t.get("commit")) for t in published.values()})
        ex.estimated_from = f" by the published execution ({', '.join(commits)})"


def prepare(root: Path, args: argparse.Namespace, all_chapters: Sequence[str], chapters: list[str]) -> Execution:
    """Collect the run's metadata and previous timings and create its staging folder."""
    record = load_record(root, args.profile)
    info = {"model": PROFILES[args.profile]["model_name"], "profile": args.profile, "commit": git_commit(root),
            "date": utc_now(), "previous_total_seconds": previous_total(record, all_chapters)}
    target = args.out_dir.resolve() if args.out_dir else root / BOOK_DIR
    ex = Execution(root=root, profile=args.profile, chapters=chapters, target=target,
                   staging=new_staging(root, args.profile), info=info)
    previous_times(ex, record)
    return ex


def _unpublished(ex: Execution, why: str) -> None:
    """Tell the user that the target is untouched and where the partial notebooks are."""
    print(f"{why}: {ex.target} was not changed; the notebooks of this run (the last one partial) are in "
          f"{_relative(ex.staging, ex.root)}/", file=sys.stderr, flush=True)


def execute(ex: Execution, strict: bool) -> None:
    """Run the chapters into staging, publish them all, write the execution record, drop the staging folder."""
    start = time.perf_counter()
    run_chapters(ex, chapter_parameters(ex.profile, strict, ex.info))
    with signals_deferred():  # a Ctrl-C now lands after the flag is set, so the message stays true
        published = publish(ex.staged, ex.target)
        ex.published = True
    print(f"published {len(published)} notebook(s) to {_relative(ex.target, ex.root)}/ "
          f"after {fmt_seconds(time.perf_counter() - start)}", flush=True)
    for path in write_record(ex):
        print(f"execution record: {_relative(path, ex.root)}", flush=True)
    shutil.rmtree(ex.staging, ignore_errors=True)
    prune_staging(ex.root)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the process exit code."""
    args = parse_args(argv)
    root = (args.root or default_root()).resolve()
    try:
        all_chapters = executable_chapters(root, toc_chapters(root / TOC_FILE))
        chapters = select_chapters(all_chapters, args.chapters)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    kernel_env(root)
    if args.sweep and (code := run_sweep(args.profile)) != 0:
        print(f"error: the sweep of the {args.profile} profile's runs failed (exit {code}); no chapter was run",
              file=sys.stderr)
        return code
    quiet_papermill()
    ex = prepare(root, args, all_chapters, chapters)
    if ex.target.is_dir() and (n := finish_publication(ex.target)):
        print(f"completed an interrupted publication: {n} notebook(s) replaced in "
              f"{_relative(ex.target, root)}/", flush=True)
    print(f"profile {args.profile}{' (strict)' if args.strict else ''}: {PROFILES[args.profile]}", flush=True)
    print(f"execution: {ex.info}; staging in {_relative(ex.staging, root)}/", flush=True)
    try:
        with sigterm_as_interrupt():
            execute(ex, args.strict)
    except ChapterFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        _unpublished(ex, "failed")
        return 1
    except KeyboardInterrupt:
        if ex.published:
            print("interrupted after publishing; the execution record may be missing", file=sys.stderr)
        else:
            _unpublished(ex, "interrupted")
        return 130
    if args.no_build or args.out_dir is not None:
        return 0
    return build_book(root)


if __name__ == "__main__":
    sys.exit(main())
