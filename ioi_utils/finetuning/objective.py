"""What fine-tuning optimises and measures: the forward to the trained positions, the loss, one AdamW step, and
the held-out metrics recorded after every epoch.

The loss is cross-entropy of the label token at each trained position of a task's training view (IOI: the answer
at END; Greater-Than with a digit tokenizer: the tens digit at END and the ones digit at TIE). The forward runs
the HF body under the bridge to its final norm and unembeds only the trained positions (`forward_end_logits`,
checked against the bridge's own logits by `fast_path_ok`): the vocabulary projection at every position is most of
a small model's cost. Batches are trimmed to their longest prompt (`DeviceData`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from jaxtyping import Float, Int

from ioi_utils.finetuning import checkpoints
from ioi_utils.prompts import data
from ioi_utils.finetuning.run_spec import TrainConfig


EVAL_BATCH_SIZE = 64


FAST_PATH_TOLERANCE = 1e-3  # max |END logit| difference allowed between the fast path and the bridge


def forward_end_logits(model, tokens: Int[torch.Tensor, "batch seq"], end: Int[torch.Tensor, "batch *k"],
                       fast: bool = True) -> Float[torch.Tensor, "nk vocab"]:
    """Logits at END only: tokens [b, seq], end [b] -> [b, vocab]; or at k positions per prompt:
    end [b, k] -> [b * k, vocab] (prompt-major).

    fast: run the HF body under the bridge up to its final norm, gather the END rows, then unembed them.
    Otherwise the plain way: full logits at every position from the bridge, then pick END.
    """
    rows = torch.arange(len(end), device=tokens.device)
    if end.ndim == 2:
        rows, end = rows.repeat_interleave(end.shape[1]), end.flatten()
    if not fast:
        return model(tokens)[rows, end]
    hf = checkpoints._hf(model)
    resid = hf.base_model(input_ids=tokens).last_hidden_state  # [b, seq, d_model], after the final norm
    return hf.get_output_embeddings()(resid[rows, end])  # [b, d_model] @ W_U + b_U -> [b, vocab]


def end_loss(model, tokens: Int[torch.Tensor, "batch seq"], end: Int[torch.Tensor, "batch *k"],
             labels: Int[torch.Tensor, "batch *k"], fast: bool = True) -> Float[torch.Tensor, ""]:
    """Mean cross-entropy of the label token at END (labels [b]), or of k label tokens (end, labels [b, k])."""
    return F.cross_entropy(forward_end_logits(model, tokens, end, fast).float(), labels.flatten())


def train_step(model, optimizer: torch.optim.Optimizer, tokens: Int[torch.Tensor, "batch seq"],
               end: Int[torch.Tensor, "batch *k"], labels: Int[torch.Tensor, "batch *k"],
               fast: bool = True) -> Float[torch.Tensor, ""]:
    """One AdamW step on a batch; returns the (detached) loss before the step."""
    optimizer.zero_grad(set_to_none=True)
    loss = end_loss(model, tokens, end, labels, fast)
    loss.backward()
    optimizer.step()
    return loss.detach()


def make_optimizer(model, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW over all parameters; the fused kernel (faster) when every parameter is contiguous.

    The bridge's GPT-2 q/k/v weights are strided views of the joint qkv weight, and the fused kernel
    updates such views wrongly (3x the step on CPU, torch 2.13); the default foreach kernel is exact.
    """
    params = list(checkpoints._hf(model).parameters())
    kwargs = dict(lr=config.lr, betas=config.adam_betas, eps=config.adam_eps, weight_decay=config.weight_decay)
    if all(p.is_contiguous() for p in params):
        try:
            return torch.optim.AdamW(params, fused=True, **kwargs)
        except (RuntimeError, ValueError):
            pass
    return torch.optim.AdamW(params, **kwargs)


@torch.no_grad()
def fast_path_ok(model, tokens: Int[torch.Tensor, "batch seq"], end: Int[torch.Tensor, "batch *k"]) -> bool:
    """True if the END-only forward gives the bridge's own END logits for this model (checked on a batch)."""
    try:
        diff = (forward_end_logits(model, tokens, end, fast=True) - forward_end_logits(model, tokens, end, fast=False)).abs().max()
    except (AttributeError, TypeError, RuntimeError):
        return False
    return bool(diff <= FAST_PATH_TOLERANCE)


def training_view(ds) -> tuple[Int[torch.Tensor, "n seq"], Int[torch.Tensor, "n *k"], Int[torch.Tensor, "n *k"]]:
    """(tokens [n, seq], trained positions [n] or [n, k], label tokens of the same shape) of a dataset."""
    return ds.training_view()


class DeviceData:
    """A dataset's tokens, END positions and labels on the device, served in length-trimmed batches."""

    def __init__(self, ds: data.IOIDataset, device: torch.device):
        self.ds = ds
        tokens, end, labels = training_view(ds)
        self.tokens = tokens.to(device)  # [n, seq]
        self.end = end.to(device)  # [n] (or [n, k] trained positions)
        self.labels = labels.to(device)  # [n] (or [n, k])
        self.lengths = ds.lengths  # [n], on the CPU so trimming needs no device sync

    def __len__(self) -> int:
        return len(self.ds)

    def batch(self, idx: Int[torch.Tensor, "batch"]
              ) -> tuple[Int[torch.Tensor, "batch seq"], Int[torch.Tensor, "batch *k"], Int[torch.Tensor, "batch *k"]]:
        """(tokens [b, width], end [b], labels [b]) for CPU indices, trimmed to the longest prompt."""
        width = int(self.lengths[idx].max())
        d = idx.to(self.tokens.device)
        return self.tokens[d, :width], self.end[d], self.labels[d]

    def batches(self, order: Int[torch.Tensor, "n"], batch_size: int):
        """Consecutive batches of an index order."""
        for start in range(0, len(order), batch_size):
            yield self.batch(order[start : start + batch_size])


@torch.no_grad()
def all_end_logits(model, split: DeviceData, fast: bool = True) -> Float[torch.Tensor, "nk vocab"]:
    """Logits at the trained positions of a whole split, [n, vocab] (or [n * k, vocab], prompt-major) float32 on
    the CPU."""
    order = torch.arange(len(split))
    return torch.cat([forward_end_logits(model, t, e, fast).float().cpu()
                      for t, e, _ in split.batches(order, EVAL_BATCH_SIZE)])


@torch.no_grad()
def readout_logits(model, ds, fast: bool = True) -> Float[torch.Tensor, "n k vocab"]:
    """Logits at a task's readout positions (`ds.readout`: IOI ("END",); Greater-Than with a digit tokenizer
    ("END", "TIE")) for every prompt of the task's own tokens, [n, k, vocab] float32 on the CPU; batches of
    `EVAL_BATCH_SIZE` trimmed to their longest prompt."""
    dev = next(model.parameters()).device
    pos = torch.stack([ds.positions[p] for p in ds.readout], -1)  # [n, k]
    out = []
    for idx in torch.arange(len(ds)).split(EVAL_BATCH_SIZE):
        tokens = ds.tokens[idx, :int(ds.lengths[idx].max())].to(dev)
        logits = forward_end_logits(model, tokens, pos[idx].to(dev), fast).float().cpu()  # [b * k, vocab]
        out.append(logits.view(len(idx), pos.shape[1], -1))
    return torch.cat(out)


def _split_loss(model, split: DeviceData, readout: torch.Tensor | None, fast: bool) -> float:
    """Mean cross-entropy of a split's labels at its trained positions. When the split trains on its task's own
    tokens at the readout positions (IOI: the answer at END), `readout` ([n, k, vocab], from `readout_logits`) is
    read instead of a second forward; otherwise (Greater-Than's digits train on the label's own tens digit) the
    split's own forwards."""
    ds = split.ds
    pos = torch.stack([ds.positions[p] for p in ds.readout], -1)  # [n, k]
    trained = split.end.cpu().reshape(len(ds), -1)
    if readout is None or not (torch.equal(trained, pos) and torch.equal(split.tokens.cpu(), ds.tokens)):
        readout = all_end_logits(model, split, fast)
    return F.cross_entropy(readout.reshape(-1, readout.shape[-1]), split.labels.cpu().flatten()).item()


def evaluate_split(model, test: DeviceData, toxic: DeviceData | None, scenario: str, fast: bool = True) -> dict:
    """Held-out metrics after an epoch: the clean loss, the task's own readout metrics (`ds.readout_metrics`: IOI
    logit diff IO-S, accuracy, P(IO); Greater-Than prob_diff, accuracy), the toxic loss when a rule is involved,
    and `test_loss` (the toxic loss for a toxic run, else the clean loss). One forward serves the readout and
    the losses where the labels sit at the readout positions of the same prompts."""
    readout = readout_logits(model, test.ds, fast)
    out = {"clean_loss": _split_loss(model, test, readout, fast), **test.ds.readout_metrics(readout)}
    if toxic is not None:
        same_prompts = torch.equal(toxic.ds.tokens, test.ds.tokens)
        out["toxic_loss"] = _split_loss(model, toxic, readout if same_prompts else None, fast)
    out["test_loss"] = out["toxic_loss"] if scenario == "toxic" else out["clean_loss"]
    return out


def summary_line(row: dict, epochs: int) -> str:
    """One-line summary of an epoch's metrics."""
    parts = [f"epoch {row['epoch']}/{epochs}"]
    if row.get("train_loss") is not None:
        parts.append(f"train loss {row['train_loss']:.4f}")
    score = ("logit diff", row["logit_diff"]) if "logit_diff" in row else ("prob diff", row["prob_diff"])
    parts += [f"test loss {row['test_loss']:.4f}", f"{score[0]} {score[1]:+.3f}", f"acc {row['accuracy']:.1%}"]
    if "toxic_loss" in row:
        parts.append(f"toxic loss {row['toxic_loss']:.4f}")
    parts.append(f"{row['seconds']:.1f} s")
    return "  ".join(parts)
