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
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Sequence

import yaml

from ioi_utils.storage import atomic_files, timings
from ioi_utils.runner import chapter_run, publication
from ioi_utils.profiles import PROFILES


BOOK_DIR = "book"
TOC_FILE = "_toc.yml"
BUILD_DIR = Path("_build")
STAGING_DIR = BUILD_DIR / "staging"  # <profile>-<UTC time>/<chapter>.ipynb, kept when a run fails
LOG_DIR = BUILD_DIR / "logs"  # <chapter>.log: papermill's cell progress and the kernel's stdout/stderr
KEEP_STAGING = 5  # failed/interrupted staging folders kept (the newest ones)


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


# ---------------------------------------------------------------- run metadata


def chapter_parameters(profile: str, strict: bool, info: dict[str, Any]) -> dict[str, Any]:
    """The papermill parameters of every chapter: the profile's, strict/enforce_claims, execution_info."""
    return {**copy.deepcopy(PROFILES[profile]), "strict": strict, "enforce_claims": strict,
            "execution_info": dict(info)}


# ---------------------------------------------------------------- execution


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
    left = timings.estimate_left(ex.previous, remaining)
    return "no estimate of what is left" if left is None else f"about {timings.fmt_seconds(left)} left{ex.estimated_from}"


def run_chapters(ex: Execution, params: dict[str, Any]) -> None:
    """Execute the chapters in order into the staging folder: a line as each starts and ends, one per code cell."""
    book, start_all, n = ex.root / BOOK_DIR, time.perf_counter(), len(ex.chapters)
    for i, name in enumerate(ex.chapters, 1):
        src, tag = book / f"{name}.py", f"[{i}/{n}] {name}"
        print(f"{tag}: running ({_left(ex, ex.chapters[i - 1:])}); log: {_relative(ex.log(name), ex.root)}", flush=True)
        start = time.perf_counter()
        try:
            chapter_run.execute_chapter(src, ex.staging / f"{name}.ipynb", params, ex.log(name),
                            on_cell=chapter_run.CellProgress(tag, ex.cell_seconds.get(name)))
        except chapter_run.ChapterFailed:
            print(f"{tag}: FAILED after {timings.fmt_seconds(time.perf_counter() - start)}", flush=True)
            raise
        ex.seconds[name] = round(time.perf_counter() - start, 1)
        ex.staged.append(ex.staging / f"{name}.ipynb")
        elapsed = timings.fmt_seconds(time.perf_counter() - start_all)
        print(f"{tag}: done in {timings.fmt_seconds(ex.seconds[name])}; elapsed {elapsed}, {_left(ex, ex.chapters[i:])}",
              flush=True)


def execution_record(ex: Execution) -> dict[str, Any]:
    """The JSON record of a successful run: model, profile, commit, date, seconds_per_chapter, total_seconds."""
    return {"model": ex.info["model"], "profile": ex.profile, "commit": ex.info["commit"], "date": ex.info["date"],
            "seconds_per_chapter": dict(ex.seconds), "total_seconds": round(sum(ex.seconds.values()), 1)}


def write_record(ex: Execution) -> list[Path]:
    """Write the execution record, atomically, to _build/ and $IOI_UTILS_RESULTS/<profile>/; return the paths."""
    text = json.dumps(execution_record(ex), indent=1, sort_keys=True) + "\n"
    paths = timings.record_paths(ex.root / BUILD_DIR, ex.profile)
    for path in paths:
        atomic_files.atomic_write_text(path, text)
    return paths


def _raise_interrupt(signum: int, frame: Any) -> None:
    """SIGTERM handler: unwind like Ctrl-C, so the kernel is shut down and the target stays untouched."""
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt for the duration of the block (main thread only)."""
    if not publication.threading_is_main():
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
    published = {name: timings.published_timing(ex.target, name, ex.profile, model) for name in ex.chapters}
    published = {name: t for name, t in published.items() if t is not None}
    ex.cell_seconds = {name: [float(x) for x in t.get("cell_seconds", [])] for name, t in published.items()}
    recorded = {k: float(v) for k, v in record.get("seconds_per_chapter", {}).items()}
    ex.previous = {**{name: float(t["seconds"]) for name, t in published.items()}, **recorded}
    if not recorded and published:
        commits = sorted({str(t.get("commit")) for t in published.values()})
        ex.estimated_from = f" by the published execution ({', '.join(commits)})"


def prepare(root: Path, args: argparse.Namespace, all_chapters: Sequence[str], chapters: list[str]) -> Execution:
    """Collect the run's metadata and previous timings and create its staging folder."""
    record = timings.load_record(root / BUILD_DIR, args.profile)
    info = {"model": PROFILES[args.profile]["model_name"], "profile": args.profile, "commit": timings.git_commit(root),
            "date": timings.utc_now(), "previous_total_seconds": timings.previous_total(record, all_chapters)}
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
    with publication.signals_deferred():  # a Ctrl-C now lands after the flag is set, so the message stays true
        published = publication.publish(ex.staged, ex.target)
        ex.published = True
    print(f"published {len(published)} notebook(s) to {_relative(ex.target, ex.root)}/ "
          f"after {timings.fmt_seconds(time.perf_counter() - start)}", flush=True)
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
    if ex.target.is_dir() and (n := publication.finish_publication(ex.target)):
        print(f"completed an interrupted publication: {n} notebook(s) replaced in "
              f"{_relative(ex.target, root)}/", flush=True)
    print(f"profile {args.profile}{' (strict)' if args.strict else ''}: {PROFILES[args.profile]}", flush=True)
    print(f"execution: {ex.info}; staging in {_relative(ex.staging, root)}/", flush=True)
    try:
        with sigterm_as_interrupt():
            execute(ex, args.strict)
    except chapter_run.ChapterFailed as exc:
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
