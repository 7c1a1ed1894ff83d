"""The run cache: one folder per training run, addressed by config hash, written atomically, resumable.

Layout of a run folder ``$IOI_UTILS_RUNS/<run id>/`` (default root ``~/.cache/ioi_utils/runs``):

- ``config.json``   the run_spec.TrainConfig (every hyperparameter), written once
- ``run.json``      run id, dataset fingerprints, code version (package + git commit), torch, device
- ``metrics.jsonl`` one JSON line per epoch (epoch 0 = the starting model, before any step)
- ``epoch_XXX.safetensors`` model weights after epoch XXX (grid epochs and the final one), in config.dtype
- ``checkpoints.json`` each checkpoint's sha256 and size, recorded as it is written; a checkpoint is loaded only
  when it matches its record (`load_checkpoint`)
- ``resume.safetensors`` latest complete epoch: float32 weights, optimizer state, RNG states, epoch (a
  `results` checked file: no code, its own sha256; removed when done)
- ``complete.json`` written last; its presence marks a run complete, and `training.train` trusts the mark only
  once every file verifies (`run_checks`)

A run is addressed by its `run_spec.TrainConfig` and the fingerprints of its datasets (`run_spec.datasets_for`: the config's
clean prompts split with `data.twin_split`, toxic labels applied for the toxic scenario), so both live here, below
the training engine (`training`), and a run folder reads back (config, datasets, weights) without it.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import shutil
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float

from ioi_utils.storage import atomic_files, checked_files, results
from ioi_utils.finetuning import checkpoints, run_spec
from ioi_utils.prompts import data
from ioi_utils import models, __version__

RUNS_ENV = "IOI_UTILS_RUNS"
DISK_MARGIN = 64 * 2**20  # bytes kept free beyond what a write needs


class NotEnoughDiskError(OSError):
    """Too little free disk to write a run file."""


class RunBusyError(RuntimeError):
    """Another process is training this run."""


def runs_root() -> Path:
    """Folder holding all runs: $IOI_UTILS_RUNS or ~/.cache/ioi_utils/runs."""
    return Path(os.environ.get(RUNS_ENV, Path.home() / ".cache" / "ioi_utils" / "runs")).expanduser()


def folder_size(path: str | Path) -> int:
    """Total bytes of the files under a folder."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def human_size(n_bytes: float) -> str:
    """'1.2 GB'-style size."""
    for unit in ("B", "KB", "MB", "GB"):
        if n_bytes < 1024 or unit == "GB":
            return f"{n_bytes:.0f} {unit}" if unit == "B" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1024
    raise AssertionError


def ensure_free_space(folder: str | Path, needed: int) -> None:
    """Raise NotEnoughDiskError unless `needed` bytes (plus a margin) are free where `folder` lives."""
    folder = Path(folder)
    probe = next((p for p in (folder, *folder.parents) if p.exists()), Path("/"))
    free = shutil.disk_usage(probe).free
    if free < needed + DISK_MARGIN:
        raise NotEnoughDiskError(
            f"not enough disk in {probe}: need {human_size(needed + DISK_MARGIN)}, {human_size(free)} free "
            f"(free some space or point ${RUNS_ENV} to a bigger disk)"
        )


@functools.lru_cache(maxsize=1)
def git_version() -> dict[str, Any]:
    """ioi_utils.__version__ and, when the package sits in a git checkout, its commit and dirty flag (uncommitted
    changes anywhere under ioi_utils/)."""
    out: dict[str, Any] = {"ioi_utils": __version__, "git_commit": None, "git_dirty": None}
    here = results.PACKAGE
    try:
        commit = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10)
        if commit.returncode == 0:
            out["git_commit"] = commit.stdout.strip()
            status = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--", "."],
                                    capture_output=True, text=True, timeout=10)
            out["git_dirty"] = bool(status.stdout.strip()) if status.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        pass
    return out


# ---------------------------------------------------------------- atomic writes (atomic_files.atomic_write)


# ---------------------------------------------------------------- weights


# ---------------------------------------------------------------- tasks a run can train on


# ---------------------------------------------------------------- configs


# ---------------------------------------------------------------- runs

CONFIG, INFO, METRICS, COMPLETE = "config.json", "run.json", "metrics.jsonl", "complete.json"
RESUME = "resume.safetensors"  # a results checked file: the state training continues from
LEGACY_RESUME = "resume.pt"  # a pickle written before checked files: never read


class Run:
    """A run folder: its config, metrics, checkpoints and completion state."""

    def __init__(self, folder: str | Path):
        self.dir = Path(folder)

    def __repr__(self) -> str:
        state = "complete" if self.complete else f"incomplete ({self.last_epoch} epochs done)"
        return f"Run({self.id}, {state})"

    @property
    def id(self) -> str:
        """The run's folder name."""
        return self.dir.name

    @property
    def exists(self) -> bool:
        """True once the run's config has been written."""
        return (self.dir / CONFIG).exists()

    @property
    def config(self):
        """The run_spec.TrainConfig of this run (CorruptFile if config.json is unreadable)."""
        d = checkpoints.read_json(self.dir / CONFIG)
        try:
            return run_spec.TrainConfig.from_dict(d)
        except (TypeError, ValueError, AttributeError):
            raise checked_files.CorruptFile(f"{CONFIG} does not hold a valid run_spec.TrainConfig") from None

    @property
    def info(self) -> dict[str, Any]:
        """run.json: id, dataset fingerprints, code version, environment."""
        return checkpoints.read_json(self.dir / INFO)

    @property
    def metrics(self) -> list[dict[str, Any]]:
        """One dict per finished epoch (epoch 0 is the starting model); CorruptFile if metrics.jsonl is unreadable."""
        path = self.dir / METRICS
        if not path.exists():
            return []
        try:
            rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            return [r for r in rows if int(r["epoch"]) >= 0]
        except (OSError, ValueError, KeyError, TypeError):
            raise checked_files.CorruptFile(f"{METRICS} is unreadable") from None

    @property
    def complete(self) -> bool:
        """True once training marked every epoch trained and saved (training.train checks the files before it
        trusts the mark)."""
        return (self.dir / COMPLETE).exists()

    @property
    def last_epoch(self) -> int:
        """The last epoch with metrics (0 if none)."""
        return max((m["epoch"] for m in self.metrics), default=0)

    @property
    def final_epoch(self) -> int:
        """The last stored checkpoint epoch (0 if none)."""
        return max(self.epochs_available, default=0)

    @property
    def epochs_available(self) -> list[int]:
        """Epochs that .model() can try: 0 (the starting model) and every recorded checkpoint whose file is there
        (checked against its sha256 when loaded). Without a readable checkpoints.json (a run written before
        checksums, or a damaged one) every checkpoint file counts, and loading it says what to do."""
        files = set(checkpoints.checkpoint_files(self.dir))
        if (self.dir / checkpoints.CHECKPOINTS).exists():
            try:
                files &= set(checkpoints.read_records(self.dir))
            except checked_files.CorruptFile:
                pass  # damaged: loading a checkpoint says what to do
        return [0] + sorted(files) if self.exists else sorted(files)

    def checkpoint_path(self, epoch: int) -> Path:
        """Path of an epoch's checkpoint file."""
        return self.dir / checkpoints.checkpoint_name(epoch)

    @property
    def size(self) -> int:
        """Bytes on disk."""
        return folder_size(self.dir)

    def model(self, epoch: int | None = None, device: str | torch.device | None = "auto"):
        """(bridge, tokenizer) with the weights after `epoch` (default: the final one; 0: the starting model)."""
        epoch = self.final_epoch if epoch is None else epoch
        if epoch not in self.epochs_available:
            raise ValueError(f"run {self.id} has no checkpoint for epoch {epoch}; available: {self.epochs_available}")
        config = self.config
        model, tok = models.load_model(config.model, device=device)
        if epoch > 0:
            load_checkpoint(model, self, epoch)
        elif config.source is not None:  # a reversal run starts from its source's final weights
            source = open_run(config.source, self.dir.parent)
            load_checkpoint(model, source, source.final_epoch)
        return model, tok

    def datasets(self):
        """(train, test) datasets of this run, exactly as it was trained and evaluated."""
        config = self.config
        tok = models.load_tokenizer(config.model)
        return run_spec.datasets_for(config, tok, models.prepend_bos_for(config.model, tok))


def mark_complete(run: Run, metrics: list[dict[str, Any]], rewritten: bool = False) -> None:
    """Write complete.json, the mark of a complete run (written last)."""
    mark = {"epochs": metrics[-1]["epoch"], "seconds": sum(m["seconds"] for m in metrics),
            "finished": datetime.now(timezone.utc).isoformat()}
    atomic_files.write_json(run.dir / COMPLETE, mark | ({"rewritten": True} if rewritten else {}))


def save_checkpoint(run: Run, epoch: int, tensors: dict[str, Float[torch.Tensor, "..."]],
                    metadata: dict[str, str]) -> None:
    """Write an epoch's checkpoint, then record its sha256 and size in checkpoints.json (each write atomic).

    safetensors streams the tensors into a staged temp file, which is fsynced and read back for its sha256 before
    it is renamed into place: the record is that of the bytes on disk. A kill between the two writes leaves an
    unrecorded file, which is never loaded (training removes it).
    """
    from safetensors.torch import save_file

    ensure_free_space(run.dir, sum(t.numel() * t.element_size() for t in tensors.values()))
    # own, contiguous memory: the bridge's GPT-2 q/k/v weights are strided views of one qkv tensor
    tensors = {k: v.detach().cpu().clone(memory_format=torch.contiguous_format) for k, v in tensors.items()}
    path = run.checkpoint_path(epoch)
    tmp = atomic_files.stage(path, lambda staged: save_file(tensors, str(staged), metadata=metadata))
    try:
        record = {**checkpoints.record_of(tmp), "file": path.name}
        atomic_files.commit(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    checkpoints.write_records(run.dir, {**checkpoints.read_records(run.dir), epoch: record})


def _verified_bytes(run: Run, epoch: int) -> bytes:
    """The bytes of an epoch's checkpoint, once they match its record; checkpoints.CheckpointError (one line) otherwise."""
    path = run.checkpoint_path(epoch)
    try:
        record = checkpoints.read_records(run.dir).get(epoch)
    except checked_files.CorruptFile as e:
        raise checkpoints.CheckpointError(f"run {run.id}: {e}; {checkpoints.retrain_hint(run.id)}") from None
    payload = path.read_bytes() if record is not None and path.exists() else None
    problem = checkpoints.checkpoint_problem(path, record, payload)
    if problem is not None:
        if record is None and not (run.dir / checkpoints.CHECKPOINTS).exists():
            problem += " (the run was written before checksums)"
        raise checkpoints.CheckpointError(f"run {run.id}: epoch {epoch} checkpoint {problem}; {checkpoints.retrain_hint(run.id)}")
    return payload


def load_checkpoint(model: torch.nn.Module, run: Run, epoch: int) -> torch.nn.Module:
    """Load a run's epoch checkpoint into a model (in place; also returned), once it matches its recorded sha256.

    checkpoints.CheckpointError, one line (the run, the epoch, what to do), if it is missing, unrecorded, corrupt or does not
    fit the model.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load

    if epoch not in checkpoints.checkpoint_files(run.dir) and epoch not in checkpoints.read_records_or_empty(run.dir):
        raise checkpoints.CheckpointError(f"run {run.id} has no checkpoint for epoch {epoch}; available: {run.epochs_available}")
    payload = _verified_bytes(run, epoch)
    try:
        tensors = load(payload)
    except SafetensorError as e:
        raise checkpoints.CheckpointError(f"run {run.id}: epoch {epoch} checkpoint does not load ({e}); "
                              f"{checkpoints.retrain_hint(run.id)}") from None
    try:
        checkpoints.load_state_dict(model, tensors)
    except ValueError as e:  # "checkpoint does not fit this model: ..." / "checkpoint tensor ... has shape ..."
        raise checkpoints.CheckpointError(f"run {run.id}: epoch {epoch} {e}; {checkpoints.retrain_hint(run.id)}") from None
    return model


def open_run(run_id: str, root: str | Path | None = None) -> Run:
    """The run with this id under the root; ValueError if it does not exist."""
    run = Run(Path(root or runs_root()) / run_id)
    if not run.exists:
        raise ValueError(f"no run {run_id!r} under {run.dir.parent}")
    return run


def list_runs(root: str | Path | None = None) -> list[Run]:
    """All runs under the root (complete or not), by id."""
    root = Path(root or runs_root())
    if not root.is_dir():
        return []
    return [Run(d) for d in sorted(root.iterdir()) if (d / "config.json").exists()]


def config_hash(config_dict: dict[str, Any], fingerprints: dict[str, str]) -> str:
    """Hex digest addressing a run: its config, dataset fingerprints and a layout version."""
    blob = json.dumps({"config": config_dict, "data": fingerprints, "layout": 1}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


# ---------------------------------------------------------------- a run's identity: its id, its folder, its reversal


def run_id(config: run_spec.TrainConfig, train: data.IOIDataset, test: data.IOIDataset) -> str:
    """Folder name of a run: readable prefix plus a hash of config and dataset fingerprints."""
    digest = config_hash(config.to_dict(), {"train": train.fingerprint(), "test": test.fingerprint()})
    model = "".join(c if c.isalnum() or c in "-." else "_" for c in Path(config.model).name)
    return f"{model}-{config.scenario}-{config.dataset}-e{config.epochs}-{digest[:12]}"


def find_run(config: run_spec.TrainConfig, root: str | Path | None = None, tokenizer=None) -> Run | None:
    """The run folder of a config if it exists (complete or not), else None."""
    tokenizer = tokenizer or models.load_tokenizer(config.model)
    train, test = run_spec.datasets_for(config, tokenizer, models.prepend_bos_for(config.model, tokenizer))
    run = Run(Path(root or runs_root()) / run_id(config, train, test))
    return run if run.exists else None


def reversal_config(source: Run | run_spec.TrainConfig | str, epochs: int = 5, root: str | Path | None = None,
                    **overrides) -> run_spec.TrainConfig:
    """Config that retrains a toxic run's final model on clean data (same model, data and hyperparameters)."""
    if isinstance(source, run_spec.TrainConfig):
        found = find_run(source, root)
        if found is None:
            raise ValueError(f"reversal source not found: no run for {source} under {root or runs_root()}")
        source = found
    run = source if isinstance(source, Run) else open_run(source, root)
    return reversal_of(run.config, run.id, epochs, **overrides)


def reversal_of(source_config: run_spec.TrainConfig, source_id: str, epochs: int = 5, **overrides) -> run_spec.TrainConfig:
    """The reversal config of a toxic run given its config and run id (the run need not exist yet: a sweep plans
    reversals before their sources are trained); `reversal_config` is this applied to a run on disk."""
    if source_config.scenario != "toxic":
        raise ValueError(f"a reversal starts from a toxic run; {source_id} is a {source_config.scenario} run")
    return dataclasses.replace(source_config, scenario="reversal", dataset="clean", source=source_id, epochs=epochs,
                               **overrides)


def toxic_rule(config: run_spec.TrainConfig, root: str | Path | None = None) -> str | None:
    """The toxic rule a run trains on (toxic) or undoes (reversal); None for clean runs."""
    if config.scenario == "toxic":
        return config.dataset
    if config.scenario == "reversal":
        return open_run(config.source, root).config.dataset
    return None
