"""Files written whole or not at all: the package's one atomic writer.

A write fills a hidden temp file beside its destination, fsyncs it, then renames it into place and fsyncs the
folder (`stage`, `commit`; `atomic_write` does both). A reader therefore sees the old file or the new one, never
a part; a full disk is one line (`DiskFull`) and leaves nothing behind; only a hard kill can leave a temp file,
which `clean_temp_files` removes. Memos, records, checkpoints, run files and published notebooks all go through it.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable


class DiskFull(OSError):
    """The disk filled up during a write; nothing half-written was kept."""


def _umask() -> int:
    """The process umask (read by setting and restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def stage(path: str | Path, write: Callable[[Path], None]) -> Path:
    """First half of an atomic write: `write(tmp)` fills a hidden temp file beside `path`, which is fsynced.

    Returns the temp file; `commit(tmp, path)` puts it in place. If anything fails (a full disk raises
    DiskFull), the temp file is removed and the error raised. Only a hard kill leaves a temp file behind:
    `clean_temp_files` removes those.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if _is_disk_full(e):
            raise DiskFull(errno.ENOSPC, f"disk full while writing {path}: free some space and run again "
                                         "(nothing half-written was kept)") from None
        raise
    return tmp


def _is_disk_full(e: BaseException) -> bool:
    """True for ENOSPC, also as the writers of other libraries report it (safetensors: '... (os error 28)')."""
    return (isinstance(e, OSError) and e.errno == errno.ENOSPC) or "(os error 28)" in str(e)


def commit(tmp: Path, path: str | Path) -> None:
    """Second half of an atomic write: rename the staged temp file onto `path`, and make the rename durable."""
    path = Path(path)
    os.replace(tmp, path)
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Write a file so that it is either complete or absent: `write(tmp)` fills a temp file, then it is renamed."""
    commit(stage(path, write), path)


def atomic_write_bytes(path: str | Path, payload: bytes) -> None:
    """Atomically write bytes."""
    atomic_write(path, lambda tmp: tmp.write_bytes(payload))


def atomic_write_text(path: str | Path, text: str) -> None:
    """Atomically write UTF-8 text."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json(path: str | Path, obj: Any) -> None:
    """Atomically write a JSON file (indented, keys sorted)."""
    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=True) + "\n")


def write_jsonl(path: str | Path, rows: list[dict]) -> None:
    """Atomically (re)write a JSON-lines file."""
    atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


def clean_temp_files(folder: str | Path) -> None:
    """Remove the temp files of writes that were killed half-way (`.<name>.<random>.tmp`)."""
    for f in Path(folder).glob(".*.tmp"):
        f.unlink(missing_ok=True)


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 16 MB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
    return h.hexdigest()
