"""Chapter results on disk: memoised computations and the numbers the summary chapter tabulates.

Nothing can mix executions: a memo key holds the model's weight fingerprint and the package's code version;
a chapter's record is one file per (profile, chapter), rewritten by each execution of the chapter and
stamped with the execution id (profile + weight fingerprint + code version), and `load` refuses a record
stamped by another execution.

Nothing read back from disk can run code or pass unchecked: a memo is a checked file (`checked_files`), and a
memo that is refused is recomputed, with a one-line warning. Old pickle memos (``*.pt``) are never opened. Every
file is written whole or not at all (`atomic_files`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable

import torch

from ioi_utils.storage import atomic_files, checked_files

FINGERPRINT_SAMPLES = 4096  # elements read from each parameter tensor for the weight fingerprint
MEMO_SUFFIX = ".safetensors"
LEGACY_MEMO_SUFFIX = ".pt"  # pickles written by torch.save before checked files: never read
_WRITTEN: set[Path] = set()  # record files this process has already (re)started


def results_root() -> Path:
    """Folder for memoised analyses and recorded results; $IOI_UTILS_RESULTS or ~/.cache/ioi_utils/results."""
    default = Path.home() / ".cache" / "ioi_utils" / "results"
    return Path(os.environ.get("IOI_UTILS_RESULTS", default)).expanduser()


# ---------------------------------------------------------------- atomic writes


def warn(message: str) -> None:
    """Say in one line on stderr what was found on disk and what is done about it (a chapter shows it too)."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- checked files: values without code


# ---------------------------------------------------------------- memos


def key_of(**parts: Any) -> str:
    """A stable short hash of JSON-able parts."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def sources_hash(folder: str | Path) -> str:
    """A short hash of every .py file under a folder, subfolders included: each file's path relative to the
    folder (POSIX form) and its content, in the sorted order of those paths."""
    folder = Path(folder)
    h = hashlib.sha256()
    for rel, p in sorted((p.relative_to(folder).as_posix(), p) for p in folder.rglob("*.py")):
        h.update(rel.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:16]


PACKAGE = Path(__file__).resolve().parents[1]  # ioi_utils/ (this module is ioi_utils/storage/results.py)


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """A short hash of the package's Python sources (every .py under ioi_utils/, subpackages included, by path
    and content): memo keys and execution ids hold it, so a change anywhere in the package misses old memos."""
    return sources_hash(PACKAGE)


@torch.no_grad()
def model_fingerprint(model: torch.nn.Module) -> str:
    """A short hash of a model's weights: every parameter's name, shape, dtype and FINGERPRINT_SAMPLES evenly
    strided elements (cheap; independent of the device; any fine-tuning step changes it)."""
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        flat = p.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // FINGERPRINT_SAMPLES)]
        h.update(f"{name}:{tuple(p.shape)}:{p.dtype}".encode())
        h.update(sample.float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def memo_folder() -> Path:
    """Where memos live: $IOI_UTILS_RESULTS/memo."""
    return results_root() / "memo"


def memo(name: str, fn: Callable[[], Any], model: torch.nn.Module, **key: Any) -> Any:
    """Return fn() computed once per (name, key, model weights, code version), stored as a checked file.

    A stored memo that does not load or verify is recomputed, with a one-line warning; so is one that cannot be
    written (a full disk): the value is returned all the same.
    """
    full = key_of(name=name, model_fingerprint=model_fingerprint(model), code=code_version(), **key)
    path = memo_folder() / f"{name}-{full}{MEMO_SUFFIX}"
    if path.exists():
        try:
            return checked_files.read_checked(path)
        except checked_files.CorruptFile as e:
            warn(f"memo {name}: {e}; recomputing it")
    elif path.with_suffix(LEGACY_MEMO_SUFFIX).exists():
        warn(f"memo {name}: {path.stem}.pt is an old pickle memo, never read; recomputing it")
    value = fn()
    try:
        checked_files.write_checked(path, value, {"name": name, "code": code_version()})
    except OSError as e:
        warn(f"memo {name} not stored ({e}); it will be recomputed next time")
    return value


def verify_memos(folder: str | Path | None = None) -> tuple[int, list[str]]:
    """(memo files seen, one line per memo a chapter would not use as it is): checked files that do not verify
    (recomputed when a chapter asks for them) and old pickle memos (never read; safe to delete)."""
    folder = Path(folder or memo_folder())
    checked, legacy = sorted(folder.glob(f"*{MEMO_SUFFIX}")), sorted(folder.glob(f"*{LEGACY_MEMO_SUFFIX}"))
    problems = []
    for path in checked:
        try:
            checked_files.read_checked(path)
        except checked_files.CorruptFile as e:
            problems.append(f"memo {e}; fix: recomputed when a chapter asks for it (or delete it)")
    problems += [f"memo {p.name} is an old pickle memo, never read; fix: delete it" for p in legacy]
    return len(checked) + len(legacy), problems


# ---------------------------------------------------------------- records of chapters


def execution_id(profile: str, model: torch.nn.Module) -> str:
    """The id of this execution of a profile: its name, the base model's weights and the code version."""
    return key_of(profile=profile, model_fingerprint=model_fingerprint(model), code=code_version())


def _record_path(profile: str, chapter: str) -> Path:
    """Where a profile's chapter record lives."""
    return results_root() / profile / f"{chapter}.json"


def record(profile: str, chapter: str, values: dict[str, Any], execution: str) -> None:
    """Store a chapter's headline numbers for the summary, stamped with the execution id.

    The first call of a process starts the chapter's file afresh (an older execution's numbers are dropped,
    never merged); later calls of the same process and execution add to it.
    """
    path = _record_path(profile, chapter)
    old: dict[str, Any] = {}
    if path in _WRITTEN and path.exists():
        stored = json.loads(path.read_text())
        old = stored["values"] if stored.get("execution") == execution else {}
    old.update(values)
    payload = {"execution": execution, "values": old}
    atomic_files.atomic_write_bytes(path, json.dumps(payload, indent=1, sort_keys=True, default=float).encode())
    _WRITTEN.add(path)


def verify_records() -> tuple[int, list[str]]:
    """(chapter records seen, one line per record that does not parse: the summary refuses it)."""
    paths = [p for p in sorted(results_root().glob("*/*.json")) if p.parent.name != "memo"]
    paths += sorted(results_root().glob("execution-*.json"))
    problems = []
    for p in paths:
        try:
            json.loads(p.read_text())
        except (OSError, ValueError):
            problems.append(f"record {p.relative_to(results_root())} is unreadable; fix: rerun its chapter")
    return len(paths), problems


class StaleRecord(ValueError):
    """A chapter's record was written by another execution than the one asking."""


def load(profile: str, execution: str) -> dict[str, dict[str, Any]]:
    """Every chapter's recorded numbers of this execution of a profile: chapter -> {key: value}.

    Raises StaleRecord if a chapter's record belongs to another execution or is unreadable (rerun that chapter).
    """
    out = {}
    for p in sorted((results_root() / profile).glob("*.json")):
        try:
            stored = json.loads(p.read_text())
        except (OSError, ValueError):
            raise StaleRecord(f"{p.name} of profile {profile!r} is unreadable: rerun chapter {p.stem!r}") from None
        if not isinstance(stored, dict) or stored.get("execution") != execution:
            got = stored.get("execution") if isinstance(stored, dict) else None
            raise StaleRecord(f"{p.name} of profile {profile!r} is from execution {got}, not the current {execution}: "
                              f"rerun chapter {p.stem!r}")
        out[p.stem] = stored["values"]
    return out
