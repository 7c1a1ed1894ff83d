"""Chapter results on disk: memoised computations and the numbers the summary chapter tabulates.

Nothing can mix executions: a memo key holds the model's weight fingerprint and the package's code version;
a chapter's record is one file per (profile, chapter), rewritten by each execution of the chapter and
stamped with the execution id (profile + weight fingerprint + code version), and `load` refuses a record
stamped by another execution.

Nothing read back from disk can run code or pass unchecked. A memo is a *checked file* (`write_checked`): one
safetensors file whose tensors are the value's tensors and whose header holds the rest of the value as JSON plus
a sha256 of both; `read_checked` rebuilds the value only from JSON types, tensors and the dataclasses registered
with `register_type`, and refuses (`CorruptFile`) a file that does not parse or match its sha256. A memo that
is refused is recomputed, with a one-line warning. Old pickle memos (``*.pt``) are never opened.

This module is also the package's one atomic-write helper (`atomic_write`, `stage` + `commit`): a file is
either complete or absent, and a full disk is one line (`DiskFull`).
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

FINGERPRINT_SAMPLES = 4096  # elements read from each parameter tensor for the weight fingerprint
CHECKED_FORMAT = "ioi_utils.checked/1"  # the "format" entry of a checked file's header
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


# ---------------------------------------------------------------- checked files: values without code


class CorruptFile(ValueError):
    """A file on disk that does not load, or does not match its recorded sha256; the message is one line."""


_TYPES: dict[str, tuple[type, Callable[[Any], Any], Callable[[Any], Any]]] = {}


def _type_name(cls: type) -> str:
    """'ioi_utils.circuits.Circuit'."""
    return f"{cls.__module__}.{cls.__qualname__}"


def register_type(cls: type, to_state: Callable[[Any], Any] | None = None,
                  from_state: Callable[[Any], Any] | None = None) -> type:
    """Allow instances of `cls` in checked files (memos); returns cls, so it also works as a class decorator.

    A dataclass needs no functions: its init fields are stored and `cls(**fields)` rebuilds it. Any other class
    gives `to_state(obj)` (a storable value) and `from_state(state)` (the object again).
    """
    if to_state is None or from_state is None:
        if not dataclasses.is_dataclass(cls):
            raise TypeError(f"{_type_name(cls)} is no dataclass: give to_state and from_state")
        names = [f.name for f in dataclasses.fields(cls) if f.init]
        to_state = lambda obj: {n: getattr(obj, n) for n in names}  # noqa: E731
        from_state = lambda state: cls(**state)  # noqa: E731
    _TYPES[_type_name(cls)] = (cls, to_state, from_state)
    return cls


class _Encoder:
    """A value -> (JSON skeleton, tensors): tensors become {"$tensor": name}, tuples {"$tuple": [...]}, dicts
    with keys other than plain strings {"$items": [[key, value], ...]}, registered types {"$type", "state"}.
    The same tensor object met twice is stored once (and read back as one object)."""

    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}
        self._names: dict[int, str] = {}

    def __call__(self, v: Any) -> Any:
        """The JSON skeleton of a value (its tensors are collected in self.tensors)."""
        t = type(v)
        if v is None or t in (bool, int, float, str):
            return v
        if t is list:
            return [self(x) for x in v]
        if t is tuple:
            return {"$tuple": [self(x) for x in v]}
        if t is dict:
            if all(type(k) is str and not k.startswith("$") for k in v):
                return {k: self(x) for k, x in v.items()}
            return {"$items": [[self(k), self(x)] for k, x in v.items()]}
        if t is torch.Tensor:
            return self._tensor(v)
        entry = _TYPES.get(_type_name(t))
        if entry is None or entry[0] is not t:
            raise TypeError(f"a value of type {_type_name(t)} cannot be stored without code: "
                            "register it with results.register_type")
        return {"$type": _type_name(t), "state": self(entry[1](v))}

    def _tensor(self, v: torch.Tensor) -> dict[str, Any]:
        """Store a tensor (once per object): its own contiguous CPU copy; device and requires_grad noted."""
        if id(v) not in self._names:
            self._names[id(v)] = name = f"t{len(self._names)}"
            self.tensors[name] = v.detach().to("cpu", copy=True).contiguous()
        out: dict[str, Any] = {"$tensor": self._names[id(v)]}
        if v.device.type != "cpu":
            out["device"] = str(v.device)
        if v.requires_grad:
            out["requires_grad"] = True
        return out


def _decode(node: Any, tensors: dict[str, torch.Tensor], made: dict[str, torch.Tensor]) -> Any:
    """Inverse of _Encoder (made: tensors already rebuilt, so one stored tensor stays one object)."""
    if type(node) is list:
        return [_decode(x, tensors, made) for x in node]
    if type(node) is not dict:
        return node
    if "$tuple" in node:
        return tuple(_decode(x, tensors, made) for x in node["$tuple"])
    if "$items" in node:
        return {_decode(k, tensors, made): _decode(x, tensors, made) for k, x in node["$items"]}
    if "$tensor" in node:
        return _rebuild_tensor(node, tensors, made)
    if "$type" in node:
        if node["$type"] not in _TYPES:
            raise TypeError(f"it holds a {node['$type']}, which is no registered type")
        return _TYPES[node["$type"]][2](_decode(node["state"], tensors, made))
    return {k: _decode(x, tensors, made) for k, x in node.items()}


def _rebuild_tensor(node: dict, tensors: dict[str, torch.Tensor], made: dict[str, torch.Tensor]) -> torch.Tensor:
    """A stored tensor on its recorded device (the CPU if that device is absent here), with its requires_grad."""
    key = json.dumps(node, sort_keys=True)
    if key not in made:
        t = tensors[node["$tensor"]]
        if "device" in node:
            try:
                t = t.to(node["device"])
            except (RuntimeError, AssertionError):
                pass  # no such device here: keep it on the CPU
        made[key] = t.requires_grad_(True) if node.get("requires_grad") else t
    return made[key]


def _raw_bytes(t: torch.Tensor) -> memoryview:
    """A CPU tensor's bytes, without a copy when it is contiguous."""
    return memoryview(t.contiguous().reshape(-1).view(torch.uint8).numpy())


def _digest(text: str, tensors: dict[str, torch.Tensor]) -> str:
    """sha256 of a checked file's content: the JSON skeleton and every tensor's name, dtype, shape and bytes."""
    h = hashlib.sha256(text.encode())
    for name in sorted(tensors):
        t = tensors[name]
        h.update(f"\0{name}:{t.dtype}:{tuple(t.shape)}\0".encode())
        h.update(_raw_bytes(t))
    return h.hexdigest()


def write_checked(path: str | Path, value: Any, info: dict[str, str] | None = None) -> None:
    """Atomically store a value made of None, bool, int, float, str, lists, tuples, dicts, tensors and registered
    types (TypeError for anything else) as a checked file; `info` adds strings to its header."""
    enc = _Encoder()
    text = json.dumps(enc(value), separators=(",", ":"))  # key order kept: it is the value's
    header = {**(info or {}), "format": CHECKED_FORMAT, "value": text, "sha256": _digest(text, enc.tensors)}
    atomic_write(path, lambda tmp: save_file(enc.tensors, str(tmp), metadata=header))


def read_header(path: str | Path, tensors: bool = True) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """(header, tensors) of a safetensors file (tensors=False: the header alone, {}); CorruptFile if it does not
    parse (safetensors also refuses a file shorter or longer than its header says)."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {}), ({k: f.get_tensor(k) for k in f.keys()} if tensors else {})
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CorruptFile(f"{path.name} does not load ({first})") from None


def read_checked(path: str | Path) -> Any:
    """The value stored by write_checked; CorruptFile (one line) if the file does not load, is no checked file,
    does not match its sha256 or names a type that is not registered."""
    path = Path(path)
    header, tensors = read_header(path)
    if header.get("format") != CHECKED_FORMAT:
        raise CorruptFile(f"{path.name} is not a checked file (format {header.get('format')!r})")
    if _digest(header.get("value", ""), tensors) != header.get("sha256"):
        raise CorruptFile(f"{path.name} does not match its sha256")
    try:
        return _decode(json.loads(header["value"]), tensors, {})
    except (ValueError, KeyError, TypeError) as e:
        raise CorruptFile(f"{path.name} does not decode ({e})") from None


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


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """A short hash of the package's Python sources (every .py under ioi_utils/, subpackages included, by path
    and content): memo keys and execution ids hold it."""
    return sources_hash(Path(__file__).resolve().parent)


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
            return read_checked(path)
        except CorruptFile as e:
            warn(f"memo {name}: {e}; recomputing it")
    elif path.with_suffix(LEGACY_MEMO_SUFFIX).exists():
        warn(f"memo {name}: {path.stem}.pt is an old pickle memo, never read; recomputing it")
    value = fn()
    try:
        write_checked(path, value, {"name": name, "code": code_version()})
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
            read_checked(path)
        except CorruptFile as e:
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
    atomic_write_bytes(path, json.dumps(payload, indent=1, sort_keys=True, default=float).encode())
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
