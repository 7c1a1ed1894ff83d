"""What every technique needs from a task's prompts: one interface, which IOI and Greater-Than implement.

A task is a batch of tokenized prompts that knows how it is read out and scored, so that path patching, knockouts,
attribution and fine-tuning run on any task with the same code:

- ``tokens`` [batch, seq] and ``positions`` (name -> [batch] token index of a role, e.g. "END", "S2", "YY");
- ``readout``: the positions the score reads (IOI: ("END",); Greater-Than with a digit tokenizer: ("END", "TIE"));
- ``score_resid(model, resid, rows)``: the per-prompt score from the final residual at the readout positions,
  [..., b, (k,) d_model] -> [..., b] (IOI: logit(IO) - logit(S); Greater-Than: the probability difference);
- ``readout_metrics(logits)``: held-out metrics from the logits at the readout positions, [b, k, vocab] -> a dict
  (IOI: logit_diff, accuracy, io_prob; Greater-Than: prob_diff, accuracy), what fine-tuning records each epoch;
- ``dla_pairs(token)``: the readout as (weight, token ids) pairs, for direct logit attribution;
- ``training_view()``: (tokens, trained positions, label tokens) fine-tuning trains on;
- ``relabel(rule)``: the same prompts with a toxic rule's labels;
- ``template_ids`` (means for mean ablation are taken within a template) and ``fingerprint()`` (memo keys, run ids).

`ioi_utils.prompts.data.IOIDataset` and `ioi_utils.prompts.greater_than.GreaterThanDataset` implement it; the techniques call these
methods and never ask which task they hold.
"""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import torch
from jaxtyping import Float, Int


@runtime_checkable
class Task(Protocol):
    """The interface of a task's prompts (see the module docstring)."""

    tokens: torch.Tensor  # [batch, seq]
    positions: dict[str, torch.Tensor]  # role -> [batch]
    template_ids: torch.Tensor  # [batch]
    readout: tuple[str, ...]

    def __len__(self) -> int: ...

    def __getitem__(self, idx: slice | Sequence[int]) -> "Task": ...

    def fingerprint(self) -> str: ...

    def score_resid(self, model,
                    resid: Float[torch.Tensor, "*lead batch d_model"] | Float[torch.Tensor, "*lead batch k d_model"],
                    rows: slice | Int[torch.Tensor, "batch"] = slice(None)) -> Float[torch.Tensor, "*lead batch"]: ...

    def readout_metrics(self, logits: Float[torch.Tensor, "batch k vocab"]) -> dict[str, float]: ...

    def dla_pairs(self, token: str = ...
                  ) -> list[tuple[int | Float[torch.Tensor, "batch"], Int[torch.Tensor, "batch"]]]: ...

    def training_view(self
                      ) -> tuple[Int[torch.Tensor, "n seq"], Int[torch.Tensor, "n *k"], Int[torch.Tensor, "n *k"]]: ...

    def relabel(self, rule: str) -> "Task": ...
