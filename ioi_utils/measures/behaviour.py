"""A model's IOI behaviour on held-out prompts: the logit difference logit(IO) - logit(S) at END (mean and per
prompt), the accuracy (share of prompts with logit(IO) > logit(S)) and P(IO), from the bridge's own logits.

`evaluate(model, ds)` is what a chapter reports as "the model's behaviour" (`study.behaviour`) and what CMAP
compares two models by; `python -m ioi_utils.evaluate` prints it for one model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from tqdm.auto import tqdm

from ioi_utils.prompts import data
from ioi_utils.measures import metrics


@dataclass
class Evaluation:
    """Logit difference (mean and per prompt), accuracy and IO probability on a dataset."""

    logit_diff: float
    accuracy: float
    io_prob: float
    per_prompt: torch.Tensor  # [batch] logit(IO) - logit(S)

    def __str__(self) -> str:
        return f"logit diff {self.logit_diff:.3f}  accuracy {self.accuracy:.1%}  P(IO) {self.io_prob:.3f}"


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of a model's first parameter."""
    return next(model.parameters()).device


@torch.no_grad()
def collect_end_logits(model, ds: data.IOIDataset, batch_size: int = 32,
                       progress: bool = False) -> Float[torch.Tensor, "batch vocab"]:
    """Logits at END for every prompt, batched: [batch, vocab] on the CPU."""
    dev, out = model_device(model), []
    for start in tqdm(range(0, len(ds), batch_size), desc="evaluating", disable=not progress, leave=False):
        idx = slice(start, start + batch_size)
        logits = model(ds.tokens[idx].to(dev))  # [b, seq, vocab]
        end = ds.positions["END"][idx].to(dev)
        out.append(logits[torch.arange(len(end), device=dev), end].float().cpu())
    return torch.cat(out)


def evaluate(model, ds: data.IOIDataset, batch_size: int = 32, progress: bool = False) -> Evaluation:
    """Evaluate IOI behaviour of a model on a dataset."""
    end = collect_end_logits(model, ds, batch_size, progress)
    per_prompt = metrics.logit_diff(end, ds, per_prompt=True)
    return Evaluation(per_prompt.mean().item(), metrics.accuracy(end, ds).item(),
                      metrics.io_prob(end, ds).item(), per_prompt)
