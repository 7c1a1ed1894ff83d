"""The run cache: one folder per training run, addressed by config hash, written atomically, resumable.

Layout of a run folder ``$IOI_UTILS_RUNS/<run id>/`` (default root ``~/.cache/ioi_utils/runs``):

- ``config.json``   the TrainConfig (every hyperparameter), written once
- ``run.json``      run id, dataset fingerprints, code version (package + git commit), torch, device
- ``metrics.jsonl`` one JSON line per epoch (epoch 0 = the starting model, before any step)
- ``epoch_XXX.safetensors`` model weights after epoch XXX (grid epochs and the final one), in config.dtype
- ``checkpoints.json`` each checkpoint's sha256 and size, recorded as it is written; a checkpoint is loaded only
  when it matches its record (`load_checkpoint`)
- ``resume.safetensors`` latest complete epoch: float32 weights, optimizer state, RNG states, epoch (a
  `results` checked file: no code, its own sha256; removed when done)
- ``complete.json`` written last; its presence marks a run complete, and `training.train` trusts the mark only
  once every file verifies (`run_checks`)

A run is addressed by its `TrainConfig` and the fingerprints of its datasets (`datasets_for`: the config's
clean prompts split with `data.twin_split`, toxic labels applied for the toxic scenario), so both live here, below
the training engine (`training`), and a run folder reads back (config, datasets, weights) without it.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from . import __version__, data, greater_than, models, results

RUNS_ENV = "IOI_UTILS_RUNS"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
SCENARIOS = ("clean", "toxic", "reversal")
DEFAULT_CHECKPOINT_EPOCHS = (1, 2, 3, 5, 10, 25, 50, 100)
DISK_MARGIN = 64 * 2**20  # bytes kept free beyond what a write needs
_WRAPPER = "._original_component"  # the bridge wraps each HF module; names without it are HF-like


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
    """ioi_utils.__version__ and, when the package sits in a git checkout, its commit and dirty flag."""
    out: dict[str, Any] = {"ioi_utils": __version__, "git_commit": None, "git_dirty": None}
    here = Path(__file__).resolve().parent
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


# ---------------------------------------------------------------- atomic writes (results.atomic_write)


def write_text(path: str | Path, text: str) -> None:
    """Atomically write a text file."""
    results.atomic_write_text(path, text)


def write_json(path: str | Path, obj: Any) -> None:
    """Atomically write a JSON file."""
    write_text(path, json.dumps(obj, indent=1, sort_keys=True) + "\n")


def write_jsonl(path: str | Path, rows: list[dict]) -> None:
    """Atomically (re)write a JSON-lines file."""
    write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


# ---------------------------------------------------------------- weights


def state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A model's parameters under HF-like names (the bridge's wrapper segments dropped), shared ones once."""
    return {name.replace(_WRAPPER, ""): p.detach() for name, p in _hf(model).named_parameters()}


def load_state_dict(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
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


# ---------------------------------------------------------------- tasks a run can train on


def _ioi_split(config: "TrainConfig", tokenizer, prepend_bos: bool) -> tuple[data.IOIDataset, data.IOIDataset]:
    """IOI: n_train + n_test clean prompts from make_ioi_dataset(seed=data_seed), split so that twins stay together."""
    ds = data.make_ioi_dataset(tokenizer, n=config.n_train + config.n_test, seed=config.data_seed,
                               prepend_bos=prepend_bos)
    train_idx, test_idx = data.twin_split(ds.prompts, config.n_test, config.data_seed)
    return ds[train_idx], ds[test_idx]


def _gt_split(config: "TrainConfig", tokenizer, prepend_bos: bool) -> tuple[greater_than.GreaterThanDataset, ...]:
    """Greater-Than: the first n_train + n_test prompts of make_gt_dataset(seed=data_seed), in that order."""
    ds = greater_than.make_gt_dataset(tokenizer, config.n_train + config.n_test, config.data_seed, prepend_bos)
    return tuple(greater_than.split(ds, [config.n_train, config.n_test]))


@dataclass(frozen=True)
class TaskSpec:
    """What fine-tuning knows of a task by its name in a config: its toxic rules, how a config's (train, test)
    prompts are drawn (clean labels; `datasets_for` relabels the toxic ones), and which toxic runs the chapters
    retrain on clean data (a sweep plans those reversals)."""

    toxic_rules: tuple[str, ...]
    draw: Any  # (config, tokenizer, prepend_bos) -> (train, test), both task.Task
    retrained_rules: tuple[str, ...]  # the toxic rules whose runs are retrained on clean data (reversals)


# IOI: the paper retrains the two corruptions it reports (Name Moving and Subject Duplication, §5); the Duplication
# run, which barely corrupts (chapter 4's control), is not retrained. Greater-Than: no retraining.
TASKS = {"ioi": TaskSpec(tuple(data.TOXIC_RULES), _ioi_split, retrained_rules=("subject-duplication", "name-moving")),
         greater_than.TASK: TaskSpec(tuple(greater_than.TOXIC_RULES), _gt_split, retrained_rules=())}
DEFAULT_TASK = "ioi"  # left out of a config's dict, so IOI run ids stay what they were before tasks had names


# ---------------------------------------------------------------- configs


@dataclass(frozen=True)
class TrainConfig:
    """Every hyperparameter of a run; its hash (with the dataset fingerprints) addresses the run folder."""

    model: str = "smollm2-135m"  # a models.load_model name
    scenario: str = "clean"  # clean | toxic | reversal
    dataset: str = "clean"  # training labels: "clean", or a data.TOXIC_RULES name for the toxic scenario
    epochs: int = 5
    lr: float = 1e-5  # the paper's (as its summary states it)
    weight_decay: float = 0.1  # the paper's (as its summary states it)
    batch_size: int = 16  # our choice; the paper states none
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    seed: int = 0  # torch seed and the shuffling generator
    n_train: int = 800
    n_test: int = 200
    data_seed: int = 0  # prompt generation and the train/test split
    checkpoint_epochs: tuple[int, ...] = DEFAULT_CHECKPOINT_EPOCHS  # stored epochs (the final one always is)
    dtype: str = "float32"  # dtype of stored checkpoints: float32 | bfloat16 (training is float32)
    source: str | None = None  # reversal: the id of the complete toxic run to start from
    task: str = DEFAULT_TASK  # a TASKS name: "ioi" | "greater-than"

    def __post_init__(self) -> None:
        if self.scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {self.scenario!r}; choose one of {', '.join(SCENARIOS)}")
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; choose one of {', '.join(TASKS)}")
        rules = TASKS[self.task].toxic_rules
        if self.scenario == "toxic" and self.dataset not in rules:
            raise ValueError(f"unknown toxic dataset {self.dataset!r}; choose one of {', '.join(rules)}")
        if self.scenario != "toxic" and self.dataset != "clean":
            raise ValueError(f"the {self.scenario} scenario trains on dataset 'clean', got {self.dataset!r}")
        if (self.scenario == "reversal") != (self.source is not None):
            raise ValueError("a reversal needs source=<toxic run id>, and only a reversal takes a source")
        for name in ("epochs", "batch_size", "n_train", "n_test"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.weight_decay < 0:
            raise ValueError(f"need lr > 0 and weight_decay >= 0, got lr={self.lr}, weight_decay={self.weight_decay}")
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown checkpoint dtype {self.dtype!r}; choose one of {', '.join(DTYPES)}")
        grid = tuple(sorted({int(e) for e in self.checkpoint_epochs}))
        if any(e < 1 for e in grid):
            raise ValueError(f"checkpoint epochs must be >= 1, got {self.checkpoint_epochs}")
        object.__setattr__(self, "checkpoint_epochs", grid)
        object.__setattr__(self, "adam_betas", tuple(float(b) for b in self.adam_betas))
        for name in ("epochs", "batch_size", "n_train", "n_test", "seed", "data_seed"):
            object.__setattr__(self, name, int(getattr(self, name)))
        for name in ("lr", "weight_decay", "adam_eps"):
            object.__setattr__(self, name, float(getattr(self, name)))

    @property
    def stored_epochs(self) -> tuple[int, ...]:
        """Epochs whose checkpoints are kept: the grid up to `epochs`, plus the final epoch."""
        return tuple(sorted({e for e in self.checkpoint_epochs if e <= self.epochs} | {self.epochs}))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field (task only when it is not IOI)."""
        d = dataclasses.asdict(self)
        return {k: v for k, v in d.items() if k != "task"} if self.task == DEFAULT_TASK else d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        """Inverse of to_dict (unknown keys are an error)."""
        known = {f.name for f in dataclasses.fields(cls)}
        if set(d) - known:
            raise ValueError(f"unknown TrainConfig fields {sorted(set(d) - known)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def datasets_for(config: TrainConfig, tokenizer, prepend_bos: bool) -> tuple[data.IOIDataset, data.IOIDataset]:
    """(train, test) of a config: train carries the scenario's labels, test is the held-out clean split (how each
    task draws them: `TASKS`)."""
    train, test = TASKS[config.task].draw(config, tokenizer, prepend_bos)
    return (train.relabel(config.dataset) if config.scenario == "toxic" else train), test


# ---------------------------------------------------------------- runs

CONFIG, INFO, METRICS, COMPLETE = "config.json", "run.json", "metrics.jsonl", "complete.json"
CHECKPOINTS = "checkpoints.json"  # checkpoint file -> {"epoch", "sha256", "bytes"}, rewritten with each checkpoint
RESUME = "resume.safetensors"  # a results checked file: the state training continues from
LEGACY_RESUME = "resume.pt"  # a pickle written before checked files: never read


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
        raise results.CorruptFile(f"{path.name} is unreadable") from None


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
        raise results.CorruptFile(f"{CHECKPOINTS} is unreadable") from None
    if any(r["file"] != checkpoint_name(e) for e, r in out.items()):
        raise results.CorruptFile(f"{CHECKPOINTS} names a file that is not its epoch's checkpoint")
    return out


def read_records_or_empty(folder: Path) -> dict[int, dict[str, Any]]:
    """read_records, or {} when checkpoints.json is unreadable."""
    try:
        return read_records(folder)
    except results.CorruptFile:
        return {}


def write_records(folder: Path, records: dict[int, dict[str, Any]]) -> None:
    """Atomically (re)write checkpoints.json."""
    write_json(folder / CHECKPOINTS, {r["file"]: {"epoch": e, "sha256": r["sha256"], "bytes": r["bytes"]}
                                      for e, r in sorted(records.items())})


def record_of(path: Path, payload: bytes | None = None) -> dict[str, Any]:
    """The record of a checkpoint file: its name, sha256 and size (of `payload` when given: the bytes written)."""
    if payload is None:
        return {"file": path.name, "sha256": results.sha256_file(path), "bytes": path.stat().st_size}
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
        """The TrainConfig of this run (CorruptFile if config.json is unreadable)."""
        d = read_json(self.dir / CONFIG)
        try:
            return TrainConfig.from_dict(d)
        except (TypeError, ValueError, AttributeError):
            raise results.CorruptFile(f"{CONFIG} does not hold a valid TrainConfig") from None

    @property
    def info(self) -> dict[str, Any]:
        """run.json: id, dataset fingerprints, code version, environment."""
        return read_json(self.dir / INFO)

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
            raise results.CorruptFile(f"{METRICS} is unreadable") from None

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
        files = set(checkpoint_files(self.dir))
        if (self.dir / CHECKPOINTS).exists():
            try:
                files &= set(read_records(self.dir))
            except results.CorruptFile:
                pass  # damaged: loading a checkpoint says what to do
        return [0] + sorted(files) if self.exists else sorted(files)

    def checkpoint_path(self, epoch: int) -> Path:
        """Path of an epoch's checkpoint file."""
        return self.dir / checkpoint_name(epoch)

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
        return datasets_for(config, tok, models.prepend_bos_for(config.model, tok))


def mark_complete(run: Run, metrics: list[dict[str, Any]], rewritten: bool = False) -> None:
    """Write complete.json, the mark of a complete run (written last)."""
    mark = {"epochs": metrics[-1]["epoch"], "seconds": sum(m["seconds"] for m in metrics),
            "finished": datetime.now(timezone.utc).isoformat()}
    write_json(run.dir / COMPLETE, mark | ({"rewritten": True} if rewritten else {}))


def save_checkpoint(run: Run, epoch: int, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write an epoch's checkpoint, then record its sha256 and size in checkpoints.json (each write atomic).

    The sha256 is that of the bytes meant for the disk, so a write that went wrong never verifies; a kill between
    the two writes leaves an unrecorded file, which is never loaded (training removes it).
    """
    from safetensors.torch import save

    ensure_free_space(run.dir, sum(t.numel() * t.element_size() for t in tensors.values()))
    # own, contiguous memory: the bridge's GPT-2 q/k/v weights are strided views of one qkv tensor
    tensors = {k: v.detach().cpu().clone(memory_format=torch.contiguous_format) for k, v in tensors.items()}
    payload = save(tensors, metadata=metadata)
    path = run.checkpoint_path(epoch)
    results.atomic_write_bytes(path, payload)
    write_records(run.dir, {**read_records(run.dir), epoch: record_of(path, payload)})


def _verified_bytes(run: Run, epoch: int) -> bytes:
    """The bytes of an epoch's checkpoint, once they match its record; CheckpointError (one line) otherwise."""
    path = run.checkpoint_path(epoch)
    try:
        record = read_records(run.dir).get(epoch)
    except results.CorruptFile as e:
        raise CheckpointError(f"run {run.id}: {e}; {retrain_hint(run.id)}") from None
    payload = path.read_bytes() if record is not None and path.exists() else None
    problem = checkpoint_problem(path, record, payload)
    if problem is not None:
        if record is None and not (run.dir / CHECKPOINTS).exists():
            problem += " (the run was written before checksums)"
        raise CheckpointError(f"run {run.id}: epoch {epoch} checkpoint {problem}; {retrain_hint(run.id)}")
    return payload


def load_checkpoint(model: torch.nn.Module, run: Run, epoch: int) -> torch.nn.Module:
    """Load a run's epoch checkpoint into a model (in place; also returned), once it matches its recorded sha256.

    CheckpointError, one line (the run, the epoch, what to do), if it is missing, unrecorded, corrupt or does not
    fit the model.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load

    if epoch not in checkpoint_files(run.dir) and epoch not in read_records_or_empty(run.dir):
        raise CheckpointError(f"run {run.id} has no checkpoint for epoch {epoch}; available: {run.epochs_available}")
    payload = _verified_bytes(run, epoch)
    try:
        tensors = load(payload)
    except SafetensorError as e:
        raise CheckpointError(f"run {run.id}: epoch {epoch} checkpoint does not load ({e}); "
                              f"{retrain_hint(run.id)}") from None
    try:
        load_state_dict(model, tensors)
    except ValueError as e:  # "checkpoint does not fit this model: ..." / "checkpoint tensor ... has shape ..."
        raise CheckpointError(f"run {run.id}: epoch {epoch} {e}; {retrain_hint(run.id)}") from None
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


def run_id(config: TrainConfig, train: data.IOIDataset, test: data.IOIDataset) -> str:
    """Folder name of a run: readable prefix plus a hash of config and dataset fingerprints."""
    digest = config_hash(config.to_dict(), {"train": train.fingerprint(), "test": test.fingerprint()})
    model = "".join(c if c.isalnum() or c in "-." else "_" for c in Path(config.model).name)
    return f"{model}-{config.scenario}-{config.dataset}-e{config.epochs}-{digest[:12]}"


def find_run(config: TrainConfig, root: str | Path | None = None, tokenizer=None) -> Run | None:
    """The run folder of a config if it exists (complete or not), else None."""
    tokenizer = tokenizer or models.load_tokenizer(config.model)
    train, test = datasets_for(config, tokenizer, models.prepend_bos_for(config.model, tokenizer))
    run = Run(Path(root or runs_root()) / run_id(config, train, test))
    return run if run.exists else None


def reversal_config(source: Run | TrainConfig | str, epochs: int = 5, root: str | Path | None = None,
                    **overrides) -> TrainConfig:
    """Config that retrains a toxic run's final model on clean data (same model, data and hyperparameters)."""
    if isinstance(source, TrainConfig):
        found = find_run(source, root)
        if found is None:
            raise ValueError(f"reversal source not found: no run for {source} under {root or runs_root()}")
        source = found
    run = source if isinstance(source, Run) else open_run(source, root)
    return reversal_of(run.config, run.id, epochs, **overrides)


def reversal_of(source_config: TrainConfig, source_id: str, epochs: int = 5, **overrides) -> TrainConfig:
    """The reversal config of a toxic run given its config and run id (the run need not exist yet: a sweep plans
    reversals before their sources are trained); `reversal_config` is this applied to a run on disk."""
    if source_config.scenario != "toxic":
        raise ValueError(f"a reversal starts from a toxic run; {source_id} is a {source_config.scenario} run")
    return dataclasses.replace(source_config, scenario="reversal", dataset="clean", source=source_id, epochs=epochs,
                               **overrides)


def toxic_rule(config: TrainConfig, root: str | Path | None = None) -> str | None:
    """The toxic rule a run trains on (toxic) or undoes (reversal); None for clean runs."""
    if config.scenario == "toxic":
        return config.dataset
    if config.scenario == "reversal":
        return open_run(config.source, root).config.dataset
    return None
