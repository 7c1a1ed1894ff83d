"""What a fine-tuning run is, before any folder exists: its hyperparameters (`TrainConfig`), the tasks it can train
on (`TASKS`: toxic rules, how a config's prompts are drawn, which toxic runs the chapters retrain) and the
datasets a config stands for (`datasets_for`: the config's clean prompts split with `data.twin_split`, toxic
labels applied for the toxic scenario). `runs` addresses a run folder by this config and the datasets'
fingerprints.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from ioi_utils.prompts import data, greater_than


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


SCENARIOS = ("clean", "toxic", "reversal")


DEFAULT_CHECKPOINT_EPOCHS = (1, 2, 3, 5, 10, 25, 50, 100)


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
