"""How long the book's chapters take: the record of an execution, what a run has left, durations for humans.

A successful run of the runner (`ioi_utils.book`) writes its record (`record_paths`: per-chapter seconds, commit,
profile); the next run of that profile reads it (`load_record`) to say what is left as each chapter starts
(`estimate_left`). A published notebook keeps its own chapter's timing in its metadata (`TIMING_KEY`,
`timing_of`), so that a first run elsewhere can estimate from the committed book (`published_timing`).
"""

from __future__ import annotations

import json
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from ioi_utils.storage import results


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


def record_paths(build: Path, profile: str) -> list[Path]:
    """Where a run's execution record is written (in the runner's build folder and the results root), the one
    read first for estimates first."""
    return [build / f"execution-{profile}.json", results.results_root() / f"execution-{profile}.json"]


def load_record(build: Path, profile: str) -> dict[str, Any]:
    """The last successful run's execution record of this profile, or {} if there is none."""
    for path in record_paths(build, profile):
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
