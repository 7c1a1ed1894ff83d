"""Running the model and scoring it: the measurement every technique of `ioi_utils.mechanisms` shares.

Every effect is measured on the task's per-prompt score, averaged over prompts: for IOI the logit difference
logit(IO) - logit(S) at END; a dataset that defines `score_resid` / `score` and `readout` (the positions it
reads, e.g. Greater-Than's probability difference) is scored by them instead (knockouts, knockout attribution,
activation patching and CMAP; path patching's fast paths read END only and are IOI's). `run_ld`, and so
`hooked_logit_diff` and `full_logit_diff`, stops the forward at the final residual stream: only the readout
positions are unembedded, and only the IO and S columns of the unembedding are used (no [batch, seq, vocab]
logits).

- `hooked_logit_diff(model, ds, hooks)`: per-prompt logit diff (or the dataset's own score) under some forward
  hooks, one batch: [batch] on the CPU.
- `full_logit_diff(model, ds, batch_size, fwd_hooks)`: its mean over ds, batched, optionally under hooks
  (name, fn(act, hook, rows)): a float.
- `run_ld(model, ds, reps, hooks, start)`: per-prompt logit diff of `reps` stacked copies of ds under some hooks,
  [reps, batch]; from block `start` on the block inputs are stacked `reps` times (the other techniques run many
  patched copies in one forward this way).
- `ld_from_resid` (final residual [..., batch, d_model] -> [..., batch]) and `ld_from_logits`
  (logits [reps * batch, seq, vocab] -> [reps, batch]): the score from what a forward read.
- `cache` / `at_position`: activations of some hooks, full or at one position of each prompt.

Heads are query heads (layer, head) (`all_heads`; `heads` checks a list against the model); under grouped-query
attention (SmolLM2: 9 query heads share 3 key/value heads, `n_kv`) a head's output is its slice of hook_z (`z`
names a layer's hook). `Receivers` (with `LOGITS`, `COMPONENTS`, `check_receivers`, `receiver_sites`) says what
path patching measures the effect on; it is here because both path-patching modules read it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from jaxtyping import Float, Int

from ioi_utils.models import hook_names
from ioi_utils.prompts.data import IOIDataset

Head = tuple[int, int]  # (layer, query head)
COMPONENTS = ("q", "k", "v", "kv")


@dataclass(frozen=True)
class Receivers:
    """What path patching measures the effect on: the logits, or q/k/v of some heads at one position."""

    heads: tuple[Head, ...] = ()  # empty -> the logits (the direct path)
    component: str = "q"  # "q" | "k" | "v" | "kv"  (only for head receivers)
    position: str = "END"  # a key of ds.positions (only for head receivers)


LOGITS = Receivers()


class Stop(Exception):
    """Raised from a hook to end a forward pass once what is needed has been read."""


# ---------------------------------------------------------------- small helpers and checks


def device(model) -> torch.device:
    """Device of a model's parameters."""
    return next(model.parameters()).device


def n_kv(model) -> int:
    """Number of key/value heads per layer (= n_heads without grouped-query attention)."""
    return getattr(model.cfg, "n_key_value_heads", None) or model.cfg.n_heads


def all_heads(model) -> list[Head]:
    """Every (layer, head) of a model."""
    return [(l, h) for l in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)]


def heads(model, heads: Sequence[Head] | None, what: str = "head") -> list[Head]:
    """heads as a list of (int, int) tuples (all heads if None); raise if one is not in the model."""
    if heads is None:
        return all_heads(model)
    heads = [(int(h[0]), int(h[1])) for h in heads]
    n_l, n_h = model.cfg.n_layers, model.cfg.n_heads
    bad = [h for h in heads if not (0 <= h[0] < n_l and 0 <= h[1] < n_h)]
    if bad:
        raise ValueError(f"{what}s {bad} do not exist in a model with {n_l} layers x {n_h} heads")
    return heads


def check_position(ds: IOIDataset, position: str) -> None:
    """Raise if a position name is not one of the dataset's."""
    if position not in ds.positions:
        raise ValueError(f"unknown position {position!r}; known: {', '.join(ds.positions)}")


def check_pair(clean: IOIDataset, corrupt: IOIDataset) -> None:
    """Raise if two datasets cannot be patched into each other token by token."""
    if clean.tokens.shape != corrupt.tokens.shape:
        raise ValueError(f"clean {tuple(clean.tokens.shape)} and corrupt {tuple(corrupt.tokens.shape)} differ in shape")
    if not torch.equal(clean.positions["END"], corrupt.positions["END"]):
        raise ValueError("clean and corrupt prompts end at different positions (END)")


def check_receivers(model, ds: IOIDataset, r: Receivers) -> None:
    """Raise on receivers that do not exist or are of an unknown kind."""
    if not isinstance(r, Receivers):
        raise ValueError(f"receivers must be a Receivers, got {type(r).__name__}")
    heads(model, r.heads, "receiver head")
    if r.heads and r.component not in COMPONENTS:
        raise ValueError(f"receiver component must be one of {', '.join(COMPONENTS)}, got {r.component!r}")
    check_position(ds, r.position)


def receiver_sites(model, r: Receivers) -> dict[str, list[int]]:
    """hook name -> indices on its head axis of the receivers' inputs (k/v: the receivers' kv groups)."""
    per_group = model.cfg.n_heads // n_kv(model)
    comps = ["k", "v"] if r.component == "kv" else [r.component]
    sites: dict[str, set[int]] = {}
    for l, h in r.heads:
        for c in comps:
            sites.setdefault(hook_names.attn(l, f"hook_{c}"), set()).add(h if c == "q" else h // per_group)
    return {s: sorted(i) for s, i in sorted(sites.items())}


def chunks(items: Sequence, size: int) -> list[list]:
    """Consecutive pieces of at most `size` items."""
    if size < 1:
        raise ValueError(f"batch_heads must be >= 1, got {size}")
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


def rows_at(ds: IOIDataset, position: str, reps: int, dev) -> tuple[Int[torch.Tensor, "rows"], Int[torch.Tensor, "rows"]]:
    """(row index, token index) of a position in `reps` stacked copies of ds: two [reps * batch] tensors."""
    pos = ds.positions[position].to(dev).repeat(reps)
    return torch.arange(len(pos), device=dev), pos


# ---------------------------------------------------------------- running the model


def ld_from_logits(logits: Float[torch.Tensor, "rows seq vocab"], ds: IOIDataset, reps: int = 1) -> Float[torch.Tensor, "rows"]:
    """Per-prompt logit diff of `reps` stacked copies of ds from logits [reps * batch, seq, vocab]: [reps, batch]."""
    rows, end = rows_at(ds, "END", reps, logits.device)
    e = logits[rows, end]  # [reps * batch, vocab]
    io, s = ds.io_tokens.to(logits.device).repeat(reps), ds.s_tokens.to(logits.device).repeat(reps)
    return (e[rows, io] - e[rows, s]).view(reps, len(ds))


def readout(resid: Float[torch.Tensor, "rows seq d_model"], ds: IOIDataset, rows: Int[torch.Tensor, "batch"],
            reps: int = 1) -> Float[torch.Tensor, "rows *k d_model"]:
    """The residual at the positions the score reads: [B, seq, d] -> [B, d] (END) or [B, k, d] (k readouts),
    for B = reps stacked copies of ds's prompts `rows` ([b] indices)."""
    names = ds.readout
    dev = resid.device
    pos = torch.stack([ds.positions[p][rows.cpu()] for p in names], -1).to(dev).repeat(reps, 1)  # [B, k]
    idx = torch.arange(len(pos), device=dev)
    return resid[idx, pos[:, 0]] if len(names) == 1 else resid[idx[:, None], pos]


def ld_from_resid(model, resid: Float[torch.Tensor, "*lead batch *k d_model"], ds: IOIDataset,
                  rows: slice = slice(None)) -> Float[torch.Tensor, "*lead batch"]:
    """Per-prompt logit diff from the final residual at END, [..., batch, d_model] -> [..., batch]
    (prompts `rows` of ds when resid holds only those): the task's own score (`ds.score_resid`; IOI: logit(IO) -
    logit(S), Greater-Than: the probability difference)."""
    return ds.score_resid(model, resid, rows)


def _replicate(v, reps: int, batch: int):
    """v with every tensor whose leading axis is the batch (and ndim >= 2) stacked `reps` times, recursively."""
    if torch.is_tensor(v) and v.ndim >= 2 and v.shape[0] == batch:
        return v.repeat(reps, *[1] * (v.ndim - 1))
    if isinstance(v, tuple):
        return tuple(_replicate(u, reps, batch) for u in v)
    return v


@torch.no_grad()
def run_ld(model, ds: IOIDataset, reps: int = 1, hooks: Sequence = (), start: int = 0) -> Float[torch.Tensor, "reps batch"]:
    """Per-prompt logit diff of `reps` stacked copies of ds under some hooks: [reps, batch].

    Layers before `start` run once on ds (no hook may touch them); from block `start` on, the block inputs
    (residual, attention mask, ...) are stacked `reps` times. The forward stops at the final residual
    stream: only the IO and S columns of the unembedding are used.
    """
    dev, b, last = device(model), len(ds), hook_names.final_resid(model)
    got = {}

    def grab(resid, hook):
        got["end"] = readout(resid, ds, torch.arange(b), reps)  # [reps * batch, (k,) d_model]
        raise Stop

    def stack(module, args, kwargs):
        return _replicate(args, reps, b), {k: _replicate(v, reps, b) for k, v in kwargs.items()}

    handles = [blk.register_forward_pre_hook(stack, with_kwargs=True)
               for blk in list(model.blocks)[start:]] if reps > 1 else []
    try:
        model.run_with_hooks(ds.tokens.to(dev), fwd_hooks=list(hooks) + [(last, grab)])
    except Stop:
        pass
    finally:
        for h in handles:
            h.remove()
    return ld_from_resid(model, got["end"].view(reps, b, *got["end"].shape[1:]), ds)


def hooked_logit_diff(model, ds: IOIDataset, hooks: Sequence = ()) -> Float[torch.Tensor, "batch"]:
    """Per-prompt logit diff (or the dataset's own score) under some forward hooks, one batch: [batch] on the
    CPU. Stops at the final residual and unembeds only the readout positions (no [batch, seq, vocab] logits)."""
    return run_ld(model, ds, hooks=hooks)[0].float().cpu()


@torch.no_grad()
def full_logit_diff(model, ds: IOIDataset, batch_size: int = 32, fwd_hooks=()) -> float:
    """Mean logit(IO) - logit(S) at END (or the dataset's own score), batched, optionally under hooks
    (name, fn(act, hook, rows)); the forward stops at the final residual (hooked_logit_diff)."""
    total = 0.0
    for start in range(0, len(ds), batch_size):
        rows = slice(start, start + batch_size)
        hooks = [(n, lambda a, hook, f=f, r=rows: f(a, hook, r)) for n, f in fwd_hooks]
        total += hooked_logit_diff(model, ds[rows], hooks).sum().item()
    return total / len(ds)


@torch.no_grad()
def cache(model, tokens: Int[torch.Tensor, "batch seq"], names: set[str]) -> dict[str, Float[torch.Tensor, "batch ..."]]:
    """Full activations of some hooks on a batch of tokens."""
    _, cache = model.run_with_cache(tokens.to(device(model)), names_filter=lambda n: n in names)
    return {k: cache[k] for k in names}


@torch.no_grad()
def activations(model, ds: IOIDataset, names: set[str]) -> dict[str, Float[torch.Tensor, "batch ..."]]:
    """Full activations of some hooks on a dataset's tokens, name -> [batch, seq, ...]; the forward stops after the
    last block (no unembedding). KeyError naming a hook the forward never reached."""
    got = {}

    def grab(act, name):
        got[name] = act.clone()
        return act

    def stop(act, hook):
        raise Stop

    last = hook_names.final_resid(model)
    hooks = [(n, lambda a, hook, n=n: grab(a, n)) for n in sorted(names)] + [(last, stop)]
    try:
        model.run_with_hooks(ds.tokens.to(device(model)), fwd_hooks=hooks)
    except Stop:
        pass
    if set(names) - got.keys():
        raise KeyError(f"no activation for hooks {sorted(set(names) - got.keys())}")
    return got


@torch.no_grad()
def at_position(model, ds: IOIDataset, position: str, names: Sequence[str]) -> dict[str, Float[torch.Tensor, "batch ..."]]:
    """Activations of some hooks at one position of each prompt: name -> [batch, ...]."""
    dev = device(model)
    rows, pos = rows_at(ds, position, 1, dev)
    got = {}

    def grab(act, name):
        got[name] = act[rows, pos].clone()
        return act

    model.run_with_hooks(ds.tokens.to(dev), fwd_hooks=[(n, lambda a, hook, n=n: grab(a, n)) for n in names])
    return got


def post_norm(block, name: str) -> torch.nn.Module | None:
    """The norm a block applies to a sublayer's output before the residual add ("ln1_post": attention,
    "ln2_post": MLP; Gemma-2/3), or None where the output is added as it is (GPT-2, Llama)."""
    return getattr(block, name, None)

