"""The book's profiles: every parameter a chapter takes, by profile name, and the `Profile` a chapter passes whole.

`PROFILES[name]` is a plain dict, the papermill parameters the runner (`ioi_utils.book`) injects into every chapter
and the sweep (`ioi_utils.sweep`) plans its runs from. Inside a chapter, `Profile.of(globals())` reads them back
as one object (the chapter's parameter cell gives the defaults; papermill's injected cell overrides them), which
the chapters' layer takes whole: `study.setup(p)`, `study.setup(p.second_model())`, `greater_than_study.setup(p)`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

# Papermill parameters injected into every chapter. Keep this a plain literal: edit values here.
# Every profile reports claims that do not hold (a finding, not a crash); `--strict` makes them raise.
# The runner adds `strict`, `enforce_claims` (both = --strict) and `execution_info` (see chapter_parameters).
PROFILES: dict[str, dict[str, Any]] = {
    "smoke": {
        "profile": "smoke",
        "enforce_claims": False,
        "model_name": "smollm2-135m",
        "seed": 0,
        "device": "auto",
        "threads": 2,
        "n_prompts": 32,
        "n_eval": 16,
        "n_discovery": 16,
        "stability_seeds": [0, 1],
        "training_seeds": [0, 1],
        "clean_epochs": [1, 2],
        "toxic_epochs": 1,
        "reversal_epochs": 1,
        "batch_size": 16,
        "n_cmap": 4,
        "n_rediscover": 8,
        "gt_model_name": "smollm2-135m",
        "gt_n_train": 16,
        "gt_n_eval": 16,
        "gt_n_discovery": 16,
        "gt_n_epoch_eval": 16,
        "gt_n_mlp": 8,
        "gt_n_cmap": 8,
        "gt_clean_epochs": 1,
        "gt_toxic_epochs": 1,
        "second_model_name": "gemma3-270m",
        "second_n_prompts": 16,
        "second_n_eval": 16,
        "second_n_discovery": 16,
        "second_clean_epochs": [1],
        "second_toxic_epochs": 1,
        "second_reversal_epochs": 1,
        "second_training_seeds": [0],  # one seed: CI's time (the main model's smoke chapters run two)
    },
    "offline": {
        "profile": "offline",
        "enforce_claims": False,
        "model_name": "smollm2-135m",
        "seed": 0,
        "device": "auto",
        "threads": None,
        "n_prompts": 320,
        "n_eval": 100,
        "n_discovery": 100,
        "stability_seeds": [0, 1, 2],
        "training_seeds": [0, 1, 2],
        "clean_epochs": [1, 2, 3],
        "toxic_epochs": 3,
        "reversal_epochs": 3,
        "batch_size": 16,
        "n_cmap": 32,
        "n_rediscover": 50,
        "gt_model_name": "smollm2-135m",
        "gt_n_train": 48,
        "gt_n_eval": 200,
        "gt_n_discovery": 32,
        "gt_n_epoch_eval": 48,
        "gt_n_mlp": 8,
        "gt_n_cmap": 24,
        "gt_clean_epochs": 2,
        "gt_toxic_epochs": 2,
        "second_model_name": "gemma3-270m",
        "second_n_prompts": 48,  # 3 optimizer steps per epoch: a Gemma step costs ~8 s on 2 cores
        # (270M parameters, 170M of them the tied 262k-token embedding: forward, backward, AdamW; END-only unembedding)
        "second_n_eval": 100,
        "second_n_discovery": 50,
        "second_clean_epochs": [1, 2],
        "second_toxic_epochs": 2,
        "second_reversal_epochs": 2,
        "second_training_seeds": [0, 1, 2],
    },
    "paper": {
        "profile": "paper",
        "enforce_claims": False,
        "model_name": "gpt2",
        "seed": 0,
        "device": "auto",
        "threads": None,
        "n_prompts": 6360,
        "n_eval": 1000,
        "n_discovery": 500,
        "stability_seeds": [0, 1, 2],
        "training_seeds": [0, 1, 2],
        "clean_epochs": [1, 2, 3, 5, 10, 25, 50, 100],
        "toxic_epochs": 5,
        "reversal_epochs": 5,
        "batch_size": 32,
        "n_cmap": 200,
        "n_rediscover": 250,
        "gt_model_name": "gpt2",
        "gt_n_train": 800,
        "gt_n_eval": 500,
        "gt_n_discovery": 200,
        "gt_n_epoch_eval": 200,
        "gt_n_mlp": 100,
        "gt_n_cmap": 100,
        "gt_clean_epochs": 5,
        "gt_toxic_epochs": 5,
        "second_model_name": "gemma3-270m",
        "second_n_prompts": 6360,
        "second_n_eval": 1000,
        "second_n_discovery": 500,
        "second_clean_epochs": [1, 2, 3, 5],
        "second_toxic_epochs": 5,
        "second_reversal_epochs": 5,
        "second_training_seeds": [0, 1, 2],
    },
}


@dataclass(frozen=True)
class Profile:
    """One profile's parameters (the keys of `PROFILES[name]`), passed whole to the chapters' layer."""

    profile: str
    model_name: str
    seed: int
    device: str
    threads: int | None  # torch CPU threads (None: torch's default)
    n_prompts: int  # training prompts
    n_eval: int  # held-out prompts
    n_discovery: int | None  # discovery prompts (None: n_eval)
    batch_size: int
    enforce_claims: bool
    stability_seeds: tuple[int, ...]
    training_seeds: tuple[int, ...]
    clean_epochs: tuple[int, ...]
    toxic_epochs: int
    reversal_epochs: int
    n_cmap: int
    n_rediscover: int
    gt_model_name: str
    gt_n_train: int
    gt_n_eval: int
    gt_n_discovery: int
    gt_n_epoch_eval: int
    gt_n_mlp: int
    gt_n_cmap: int
    gt_clean_epochs: int
    gt_toxic_epochs: int
    second_model_name: str
    second_n_prompts: int
    second_n_eval: int
    second_n_discovery: int
    second_clean_epochs: tuple[int, ...]
    second_toxic_epochs: int
    second_reversal_epochs: int
    second_training_seeds: tuple[int, ...]

    @classmethod
    def of(cls, params: Mapping[str, Any]) -> "Profile":
        """The profile a chapter runs under, from its namespace (`globals()`) or any mapping of parameters holding
        `profile`: the fields it holds are read (lists as tuples), the others come from `PROFILES[profile]` (a
        chapter's parameter cell names only what it uses), the rest of the mapping is ignored. An unknown profile
        is a one-line ValueError."""
        name = params.get("profile")
        if name not in PROFILES:
            raise ValueError(f"unknown profile {name!r}; choose one of {', '.join(sorted(PROFILES))}")
        names = {f.name for f in dataclasses.fields(cls)}
        merged = {**PROFILES[name], **{k: v for k, v in params.items() if k in names}}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in merged.items() if k in names})

    def second_model(self) -> "Profile":
        """This profile with the second model's sizes in the main model's places (what `study.setup` reads)."""
        return dataclasses.replace(self, model_name=self.second_model_name, n_prompts=self.second_n_prompts,
                                   n_eval=self.second_n_eval, n_discovery=self.second_n_discovery)
