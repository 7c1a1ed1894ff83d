"""Chapter results on disk: memoised computations and the numbers the summary chapter tabulates.

Nothing can mix executions: a memo key holds the model's weight fingerprint and the package's code version;
a chapter's record is one file per (profile, chapter), rewritten by each execution of the chapter and
stamped with the execution id (profile + weight fingerprint + code version), and `load` refuses a record
stamped by another execution.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

FINGERPRINT_SAMPLES = 4096  # elements read from each parameter tensor for the weight fingerprint
_WRITTEN: set[Path] = set()  # record files this process has already (re)started


def results_root() -> Path:
    """Folder for memoised analyses and recorded results; $IOI_UTILS_RESULTS or ~/.cache/ioi_utils/results."""
    default = Path.home() / ".cache" / "ioi_utils" / "results"
    return Path(os.environ.get("IOI_UTILS_RESULTS", default)).expanduser()


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write a file so that it is either complete or absent."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".tmp")
    with os.fdopen(fd, "wb") as f:
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def key_of(**parts: Any) -> str:
    """A stable short hash of JSON-able parts."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """A short hash of the package's Python sources (every ioi_utils/*.py, by name and content)."""
    h = hashlib.sha256()
    for p in sorted(Path(__file__).resolve().parent.glob("*.py")):
        h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:16]


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


def memo(name: str, fn: Callable[[], Any], model: torch.nn.Module, **key: Any) -> Any:
    """Return fn() computed once per (name, key, model weights, code version), stored with torch.save."""
    full = key_of(name=name, model_fingerprint=model_fingerprint(model), code=code_version(), **key)
    path = results_root() / "memo" / f"{name}-{full}.pt"
    if path.exists():
        return torch.load(path, weights_only=False)
    value = fn()
    buf = io.BytesIO()
    torch.save(value, buf)
    atomic_write_bytes(path, buf.getvalue())
    return value


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
    atomic_write_bytes(path, json.dumps(payload, indent=1, sort_keys=True, default=float).encode())
    _WRITTEN.add(path)


class StaleRecord(ValueError):
    """A chapter's record was written by another execution than the one asking."""


def load(profile: str, execution: str) -> dict[str, dict[str, Any]]:
    """Every chapter's recorded numbers of this execution of a profile: chapter -> {key: value}.

    Raises StaleRecord if a chapter's record belongs to another execution (rerun that chapter).
    """
    out = {}
    for p in sorted((results_root() / profile).glob("*.json")):
        stored = json.loads(p.read_text())
        if not isinstance(stored, dict) or stored.get("execution") != execution:
            got = stored.get("execution") if isinstance(stored, dict) else None
            raise StaleRecord(f"{p.name} of profile {profile!r} is from execution {got}, not the current {execution}: "
                              f"rerun chapter {p.stem!r}")
        out[p.stem] = stored["values"]
    return out
