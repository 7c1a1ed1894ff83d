"""Values on disk that cannot run code or pass unchecked: checked files.

A checked file is one safetensors file whose tensors are the value's tensors and whose header holds the rest of
the value as JSON plus a sha256 of both (`write_checked`). `read_checked` rebuilds the value only from JSON types,
tensors and the dataclasses registered with `register_type`, and refuses (`CorruptFile`, one line) a file that
does not parse or does not match its sha256. Memos, resume states and stored circuits are checked files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, Callable

import torch
from jaxtyping import Shaped
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ioi_utils.storage import atomic_files


CHECKED_FORMAT = "ioi_utils.checked/1"  # the "format" entry of a checked file's header


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
                            "register it with checked_files.register_type")
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
    atomic_files.atomic_write(path, lambda tmp: save_file(enc.tensors, str(tmp), metadata=header))


def read_header(path: str | Path,
                tensors: bool = True) -> tuple[dict[str, str], dict[str, Shaped[torch.Tensor, "..."]]]:
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
