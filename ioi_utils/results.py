"""Chapter results on disk: memoised computations and the numbers the summary chapter tabulates."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch


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


def memo(name: str, fn: Callable[[], Any], **key: Any) -> Any:
    """Return fn() computed once per (name, key) and stored with torch.save; later calls load it."""
    path = results_root() / "memo" / f"{name}-{key_of(name=name, **key)}.pt"
    if path.exists():
        return torch.load(path, weights_only=False)
    value = fn()
    import io

    buf = io.BytesIO()
    torch.save(value, buf)
    atomic_write_bytes(path, buf.getvalue())
    return value


def record(profile: str, chapter: str, values: dict[str, Any]) -> None:
    """Store a chapter's headline numbers (merged with what it stored before) for the summary."""
    path = results_root() / profile / f"{chapter}.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    old.update(values)
    atomic_write_bytes(path, json.dumps(old, indent=1, sort_keys=True, default=float).encode())


def load(profile: str) -> dict[str, dict[str, Any]]:
    """Every chapter's recorded numbers for a profile: chapter -> {key: value}."""
    folder = results_root() / profile
    return {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}
