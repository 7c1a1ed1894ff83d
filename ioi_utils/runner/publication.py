"""Publishing executed chapters: what a reader's notebook keeps, and putting a run's notebooks in place all at once.

- Outputs for readers (`scrub_outputs`, `strip_volatile`): progress bars and the machine's absolute paths go
  (`PUBLISHED_CLEANUP`, which tests/nbval_sanitize.cfg holds too, so stored and fresh outputs compare equal),
  consecutive stream outputs merge as a terminal shows them, volatile metadata is dropped.
- `publish`: every staged notebook replaces its destination, all or none, even across a hard kill: temps beside
  the destinations, then a journal (`PUBLISHING`), then the replacements under deferred signals; the next run
  completes a journal a kill left behind (`finish_publication`).
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import signal
import threading
from pathlib import Path
from typing import Any, Iterator, Sequence

from ioi_utils.storage import atomic_files

# What the published notebooks lose, for the reader: progress bars (their final line, e.g. "Loading weights:
# 100%|...| 272/272 [00:00<00:00, 9.1it/s]"; a line already turned into a placeholder by an older runner too) and
# the machine's absolute paths in warnings. No placeholder is written: the run-to-run noise that remains (temp
# paths, addresses) is replaced only when nbval compares, by tests/nbval_sanitize.cfg, which holds these pairs
# too, so stored and fresh outputs still compare equal (tests/test_book_runner.py checks both).
PROGRESS_BAR_LINE = r"(?m)^[^\n]*(?:\[\d+:\d+(?::\d+)?(?:<|, )[^\]\n]*\]|\[TQDM-TIME\])[^\n]*(?:\n|$)"


PUBLISHED_CLEANUP: list[tuple[str, str]] = [
    (PROGRESS_BAR_LINE, ""),
    (r"\S*/site-packages/", ""),  # a package's path in warnings: tqdm/auto.py
    (r"/\S*/(?=ioi_utils/[\w/]+\.py)", ""),  # the checkout's absolute path in warnings: ioi_utils/<layer>/<module>.py
]


_CARRIAGE_RETURN = re.compile(r"^.*\r(?=[^\n])", re.MULTILINE)  # as nbval: keep what a terminal would show


# the record of the last successful run: $IOI_UTILS_RESULTS/execution-<profile>.json, beside (not among) the
# chapters' records in $IOI_UTILS_RESULTS/<profile>/, which the summary chapter reads as one execution
PUBLISHING = ".publishing.json"  # in the target folder while a publication replaces its notebooks (publish)


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
    atomic_files.atomic_write_text(path, text if text.endswith("\n") else text + "\n")


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
            pairs.append((atomic_files.stage(dest, lambda tmp, src=src: shutil.copyfile(src, tmp)), dest))
    except BaseException:
        for tmp, _ in pairs:
            tmp.unlink(missing_ok=True)
        raise
    atomic_files.atomic_write_text(target / PUBLISHING, json.dumps([[t.name, d.name] for t, d in pairs]) + "\n")
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
                atomic_files.commit(target / tmp_name, target / dest_name)
                done += 1
        journal.unlink()
    atomic_files.clean_temp_files(target)
    return done


def _journal_pairs(journal: Path) -> list[tuple[str, str]]:
    """The (temp, destination) names a publication journal lists: plain names in its folder, temps hidden."""
    try:
        pairs = [(str(t), str(d)) for t, d in json.loads(journal.read_text())]
    except (OSError, ValueError, TypeError):
        return []  # written atomically: unreadable only if damaged afterwards; nothing can be completed
    plain = lambda name: name == Path(name).name and name not in ("", ".", "..")  # noqa: E731
    return [(t, d) for t, d in pairs if plain(t) and plain(d) and t.startswith(".") and t.endswith(".tmp")]
