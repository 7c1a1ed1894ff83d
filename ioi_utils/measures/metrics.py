"""Behavioural metrics: logit difference, accuracy, IO probability, faithfulness, bootstrap intervals.

Everything is read at END from [batch, vocab] logits (`select_end_logits`). The logit difference logit(IO) - logit(S)
is the measure every analysis shares: > 0 when the model prefers the indirect object. A circuit C is judged by
F(C)/F(M), the logit difference with everything outside C knocked out over the model's own (`faithfulness`).
Intervals are percentile bootstraps over prompts (`bootstrap_ci`), paired when two statistics share prompts.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from jaxtyping import Float

from ioi_utils.prompts.data import IOIDataset


def select_end_logits(logits: Float[torch.Tensor, "batch seq vocab"],
                      ds: IOIDataset) -> Float[torch.Tensor, "batch vocab"]:
    """Logits at each prompt's END position: [batch, seq, vocab] -> [batch, vocab]."""
    end = ds.positions["END"].to(logits.device)
    return logits[torch.arange(len(end), device=logits.device), end]


def logit_diff(end: Float[torch.Tensor, "batch vocab"], ds: IOIDataset,
               per_prompt: bool = False) -> Float[torch.Tensor, ""] | Float[torch.Tensor, "batch"]:
    """logit(IO) - logit(S) at END; end is [batch, vocab]; mean, or [batch] if per_prompt."""
    diff = ds.end_logit_diff(end)
    return diff if per_prompt else diff.mean()


def accuracy(end: Float[torch.Tensor, "batch vocab"], ds: IOIDataset) -> Float[torch.Tensor, ""]:
    """Share of prompts where IO gets a higher logit than S."""
    return (logit_diff(end, ds, per_prompt=True) > 0).float().mean()


def io_prob(end: Float[torch.Tensor, "batch vocab"], ds: IOIDataset) -> Float[torch.Tensor, ""]:
    """Mean softmax probability of the IO token at END."""
    return ds.end_io_prob(end).mean()


def faithfulness(f_circuit: float, f_model: float, kind: str = "ratio", eps: float = 1e-6) -> float:
    """How much of the model's logit difference the circuit keeps.

    kind="ratio": F(C)/F(M). It is sign-agnostic: for a corrupted model with F(M) < 0 it is the share
    of the model's (negative) preference for S that the circuit reproduces, so 1.0 means "the circuit
    alone does what the model does" in either regime. kind="wang": 1 - |F(M) - F(C)| / |F(M)|, Wang et
    al.'s reading (87% for GPT-2 small). Both give nan when |F(M)| < eps (no behaviour to explain).
    """
    if abs(f_model) < eps:
        return math.nan
    if kind == "ratio":
        return f_circuit / f_model
    if kind == "wang":
        return 1 - abs(f_model - f_circuit) / abs(f_model)
    raise ValueError(f"unknown faithfulness kind {kind!r}; choose 'ratio' or 'wang'")


def _mean(*values: torch.Tensor) -> torch.Tensor:
    """Mean of the first tensor along its last axis (the default bootstrap statistic)."""
    return values[0].mean(-1)


def ratio_of_means(num: Float[torch.Tensor, "*lead n"],
                   den: Float[torch.Tensor, "*lead n"]) -> Float[torch.Tensor, "*lead"]:
    """mean(num) / mean(den) along the last axis: [..., n], [..., n] -> [...] (F(C)/F(M) from per-prompt values)."""
    return num.mean(-1) / den.mean(-1)


def bootstrap_ci(values: Float[torch.Tensor, "n"] | tuple[Float[torch.Tensor, "n"], ...],
                 stat: Callable[..., Float[torch.Tensor, "n_boot"]] = _mean,
                 n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of stat over prompts resampled with replacement (deterministic in seed).

    values: one [n] tensor, or a tuple of paired [n] tensors resampled with the same indices. stat gets the
    resampled tensors as [n_boot, n] each and returns [n_boot] (it must work along the last axis).
    """
    vals = (values,) if torch.is_tensor(values) else tuple(values)
    n = len(vals[0])
    if n < 2 or any(v.ndim != 1 or len(v) != n for v in vals):
        raise ValueError(f"need paired 1-d tensors of one length >= 2, got shapes {[tuple(v.shape) for v in vals]}")
    if not 0 < level < 1 or n_boot < 1:
        raise ValueError(f"need 0 < level < 1 and n_boot >= 1, got level={level}, n_boot={n_boot}")
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, n, (n_boot, n), generator=g)  # [n_boot, n]
    stats = stat(*(v.detach().double().cpu()[idx] for v in vals)).flatten()  # [n_boot]
    alpha = (1 - level) / 2
    lo, hi = torch.quantile(stats, torch.tensor([alpha, 1 - alpha], dtype=stats.dtype)).tolist()
    return lo, hi
