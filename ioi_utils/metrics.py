"""Behavioural metrics: logit difference, accuracy, IO probability, faithfulness."""

from __future__ import annotations

import math

import torch

from .data import IOIDataset


def end_logits(logits: torch.Tensor, ds: IOIDataset) -> torch.Tensor:
    """Logits at each prompt's END position: [batch, seq, vocab] -> [batch, vocab]."""
    end = ds.positions["END"].to(logits.device)
    return logits[torch.arange(len(end), device=logits.device), end]


def _pick(end: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """end[i, tokens[i]] for [batch, vocab] and [batch] -> [batch]."""
    return end.gather(-1, tokens.to(end.device)[:, None])[:, 0]


def logit_diff(end: torch.Tensor, ds: IOIDataset, per_prompt: bool = False) -> torch.Tensor:
    """logit(IO) - logit(S) at END; end is [batch, vocab]; mean, or [batch] if per_prompt."""
    diff = _pick(end, ds.io_tokens) - _pick(end, ds.s_tokens)
    return diff if per_prompt else diff.mean()


def accuracy(end: torch.Tensor, ds: IOIDataset) -> torch.Tensor:
    """Share of prompts where IO gets a higher logit than S."""
    return (logit_diff(end, ds, per_prompt=True) > 0).float().mean()


def io_prob(end: torch.Tensor, ds: IOIDataset) -> torch.Tensor:
    """Mean softmax probability of the IO token at END."""
    return _pick(end.float().softmax(-1), ds.io_tokens).mean()


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
