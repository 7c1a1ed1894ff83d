"""A run's weights on disk: checkpoint files, the record of each one's sha256, and loading only what verifies.

A model's parameters are saved under HF-like names (`state_dict`: the bridge's wrapper segments dropped, tied
weights once) as `epoch_XXX.safetensors`; `checkpoints.json` records each file's sha256 and size (`read_records`,
`write_records`), and a checkpoint is loaded only when its bytes match that record (`checkpoint_problem`). What
is wrong is one line (`CheckpointError`), with the command that retrains the run (`retrain_hint`).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float

from ioi_utils.storage import atomic_files, checked_files


_WRAPPER = "._original_component"  # the bridge wraps each HF module; names without it are HF-like


def state_dict(model: torch.nn.Module) -> dict[str, Float[torch.Tensor, "..."]]:
    """A model's parameters under HF-like names (the bridge's wrapper segments dropped), shared ones once."""
    return {name.replace(_WRAPPER, ""): p.detach() for name, p in _hf(model).named_parameters()}


def load_state_dict(model: torch.nn.Module, tensors: dict[str, Float[torch.Tensor, "..."]]) -> None:
    """Copy saved tensors into a model's parameters (cast to each parameter's dtype); names must match."""
    params = {name.replace(_WRAPPER, ""): p for name, p in _hf(model).named_parameters()}
    missing, unexpected = set(params) - set(tensors), set(tensors) - set(params)
    if missing or unexpected:
        raise ValueError(f"checkpoint does not fit this model: missing {sorted(missing)[:3]}, "
                         f"unexpected {sorted(unexpected)[:3]}")
    with torch.no_grad():
        for name, p in params.items():
            if tensors[name].shape != p.shape:
                raise ValueError(f"checkpoint tensor {name} has shape {tuple(tensors[name].shape)}, "
                                 f"model has {tuple(p.shape)}")
            p.copy_(tensors[name].to(p.device, p.dtype))


def _hf(model: torch.nn.Module) -> torch.nn.Module:
    """The HF module under a TransformerBridge (or the module itself)."""
    return getattr(model, "original_model", model)


def parameter_bytes(model: torch.nn.Module, dtype: torch.dtype | None = None) -> int:
    """Bytes of a model's (unique) parameters, in their own dtype or in `dtype`."""
    size = torch.tensor([], dtype=dtype).element_size() if dtype is not None else None
    return sum(p.numel() * (size or p.element_size()) for p in _hf(model).parameters())


CHECKPOINTS = "checkpoints.json"  # checkpoint file -> {"epoch", "sha256", "bytes"}, rewritten with each checkpoint


class CheckpointError(ValueError):
    """A checkpoint that cannot be trusted (missing, unrecorded, not matching its sha256, not fitting the model)."""


def retrain_hint(run_id: str) -> str:
    """What to do about a run whose files do not verify."""
    return f"retrain it with `python -m ioi_utils.train --run {run_id}` (it resumes from its last good epoch)"


def checkpoint_name(epoch: int) -> str:
    """File name of an epoch's checkpoint."""
    return f"epoch_{epoch:03d}.safetensors"


_CHECKPOINT = re.compile(r"^epoch_(\d{3,})\.safetensors$")


def checkpoint_files(folder: Path) -> dict[int, Path]:
    """epoch -> checkpoint file, for every epoch_XXX.safetensors in a folder (recorded or not)."""
    return {int(m.group(1)): f for f in folder.glob("epoch_*.safetensors") if (m := _CHECKPOINT.match(f.name))}


def read_json(path: Path) -> Any:
    """A run file's JSON content; CorruptFile (one line) if it does not parse."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        raise checked_files.CorruptFile(f"{path.name} is unreadable") from None


def read_records(folder: Path) -> dict[int, dict[str, Any]]:
    """epoch -> {"file", "sha256", "bytes"}: the checkpoints recorded in a run's checkpoints.json ({} without one).

    CorruptFile if the file does not parse or an entry is malformed.
    """
    path = folder / CHECKPOINTS
    if not path.exists():
        return {}
    raw = read_json(path)
    try:
        out = {int(r["epoch"]): {"file": name, "sha256": str(r["sha256"]), "bytes": int(r["bytes"])}
               for name, r in raw.items()}
    except (AttributeError, KeyError, TypeError, ValueError):
        raise checked_files.CorruptFile(f"{CHECKPOINTS} is unreadable") from None
    if any(r["file"] != checkpoint_name(e) for e, r in out.items()):
        raise checked_files.CorruptFile(f"{CHECKPOINTS} names a file that is not its epoch's checkpoint")
    return out


def read_records_or_empty(folder: Path) -> dict[int, dict[str, Any]]:
    """read_records, or {} when checkpoints.json is unreadable."""
    try:
        return read_records(folder)
    except checked_files.CorruptFile:
        return {}


def write_records(folder: Path, records: dict[int, dict[str, Any]]) -> None:
    """Atomically (re)write checkpoints.json."""
    atomic_files.write_json(folder / CHECKPOINTS, {r["file"]: {"epoch": e, "sha256": r["sha256"], "bytes": r["bytes"]}
                                      for e, r in sorted(records.items())})


def record_of(path: Path, payload: bytes | None = None) -> dict[str, Any]:
    """The record of a checkpoint file: its name, sha256 and size (of `payload` when given: the bytes written)."""
    if payload is None:
        return {"file": path.name, "sha256": atomic_files.sha256_file(path), "bytes": path.stat().st_size}
    return {"file": path.name, "sha256": hashlib.sha256(payload).hexdigest(), "bytes": len(payload)}


def checkpoint_problem(path: Path, record: dict[str, Any] | None, payload: bytes | None = None) -> str | None:
    """What is wrong with a checkpoint file against its record, or None when it verifies (reads the whole file,
    unless its bytes are given)."""
    if record is None:
        return "has no recorded sha256"
    if payload is None and not path.exists():
        return "is missing"
    size = len(payload) if payload is not None else path.stat().st_size
    if size != record["bytes"]:
        return f"has {size} bytes, not the recorded {record['bytes']}"
    if record_of(path, payload)["sha256"] != record["sha256"]:
        return "does not match its recorded sha256"
    return None
