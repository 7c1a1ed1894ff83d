"""Activation patching of single heads, and cross-model activation patching (CMAP, Prakash et al. 2024).

Activation patching takes one head's activation from another run, puts it into the model's run and measures
the change of the score: the logit difference logit(IO) - logit(S) at END for IOI, or a dataset's own score
(e.g. Greater-Than's probability difference). The activation is the head's output z (hook_z: kind "z" or
"output") or its attention pattern (hook_pattern: kind "pattern"), at every position (positions=None) or only
at one query position (e.g. "END"). Heads are patched one at a time, `batch_heads` heads of a layer in one
forward of stacked copies, from that layer on.

- `activation_patch_heads(model, clean, corrupt, hook, positions)`: [n_layers, n_heads] relative change
  (patched - clean) / clean of the mean logit difference when one head's activation comes from the corrupt run.
- `cmap(model_x, model_y, ds, kind)`: [n_layers, n_heads] change of model_y's mean logit diff (patched -
  model_y's own, in logit units) when one head's output z (kind="output") or attention pattern (kind="pattern")
  comes from model_x on the same prompts (per_prompt: [batch, n_layers, n_heads]). Swap the models for the
  other direction.
- `cmap_group(model_x, model_y, ds, heads)`: model_y's mean logit diff with a whole set of heads' output z (or
  patterns) taken from model_x, at every position or at the (head, query position) pairs of a circuit knockout
  spec (`knockouts.keep_masks`): a float (per_prompt: [batch] on the CPU).
- `cmap_attribution(model_x, model_y, ds)`: first-order estimate of cmap(model_x, model_y, ds, "output") at
  every position, [n_layers, n_heads], from one forward of model_x and one forward and backward of model_y
  (`knockout_attribution` with model_x's z in place of the means).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from jaxtyping import Float
from tqdm.auto import tqdm

from ioi_utils.models import hook_names
from ioi_utils.prompts.data import IOIDataset
from ioi_utils.mechanisms import knockout_attribution, knockouts, scoring
from ioi_utils.mechanisms.scoring import Head

_HOOKS = {"z": ("hook_z", 2), "output": ("hook_z", 2), "pattern": ("hook_pattern", 1)}  # kind -> (hook, head axis)


def _hook_of(kind: str) -> tuple[str, int]:
    """(hook name, head axis) of an activation kind."""
    if kind not in _HOOKS:
        raise ValueError(f"unknown activation {kind!r}; choose 'z' / 'output' or 'pattern'")
    return _HOOKS[kind]


@torch.no_grad()
def _source(model, tokens: torch.Tensor, kind: str) -> dict[int, torch.Tensor]:
    """Every layer's z ([batch, seq, heads, d_head]) or attention pattern ([batch, heads, q, k]) on some tokens."""
    hook = _hook_of(kind)[0]
    cache = scoring.cache(model, tokens, {hook_names.attn(l, hook) for l in range(model.cfg.n_layers)})
    return {l: cache[hook_names.attn(l, hook)] for l in range(model.cfg.n_layers)}


def _one_head_hooks(model, ds: IOIDataset, source: Mapping[int, torch.Tensor], kind: str, chunk: Sequence[Head],
                    position: str | None) -> list:
    """Hooks on len(chunk) stacked copies of ds: copy i gets head chunk[i]'s activation from `source`.

    position=None: at every position; else only at that query position of each prompt.
    """
    hook, axis = _hook_of(kind)
    dev, b = scoring.device(model), len(ds)
    pos = None if position is None else ds.positions[position].to(dev)
    rows = torch.arange(b, device=dev)

    def fn(act, hook, layer):
        src = source[layer].to(act.device, act.dtype)
        for i, (l, h) in enumerate(chunk):
            if l != layer:
                continue
            mine = act[i * b : (i + 1) * b]  # a view: writes land in act
            if pos is None:
                mine.select(axis, h).copy_(src.select(axis, h))
            elif axis == 2:  # z: [batch, seq, heads, d_head]
                mine[rows, pos, h] = src[rows, pos, h]
            else:  # pattern: [batch, heads, query, key]
                mine[rows, h, pos] = src[rows, h, pos]
        return act

    layers = sorted({l for l, _ in chunk})
    return [(hook_names.attn(l, hook), lambda a, hook, l=l: fn(a, hook, l)) for l in layers]


@torch.no_grad()
def _patch_each_head(model, ds: IOIDataset, source: Mapping[int, torch.Tensor], kind: str, heads: Sequence[Head],
                     position: str | None, batch_heads: int | None, progress: bool, desc: str) -> dict[Head, torch.Tensor]:
    """Per-prompt logit diff ([batch] each) of `model` on ds with each head's activation (one head at a time) taken
    from `source`; one forward per `batch_heads` heads of a layer (None: all of a layer's heads), from that layer on."""
    out = {}
    by_layer = [[h for h in heads if h[0] == l] for l in sorted({l for l, _ in heads})]
    chunks = [c for hs in by_layer for c in scoring.chunks(hs, len(hs) if batch_heads is None else batch_heads)]
    for chunk in tqdm(chunks, desc=desc, disable=not progress, leave=False):
        hooks = _one_head_hooks(model, ds, source, kind, chunk, position)
        lds = scoring.run_ld(model, ds, len(chunk), hooks, start=chunk[0][0])  # [len(chunk), batch]
        out.update(zip(chunk, lds.float().cpu()))
    return out


def activation_patch_heads(model, clean: IOIDataset, corrupt: IOIDataset, hook: str = "z",
                           positions: str | None = None, heads: Sequence[Head] | None = None,
                           batch_heads: int | None = None, progress: bool = False) -> Float[torch.Tensor, "n_layers n_heads"]:
    """Per-head activation patching: [n_layers, n_heads] relative change (patched - clean) / clean of the logit
    difference when one head's z (hook="z") or attention pattern (hook="pattern") comes from the corrupt run,
    at every position (positions=None) or only at one query position (e.g. "END")."""
    scoring.check_pair(clean, corrupt)
    _hook_of(hook)
    if positions is not None:
        scoring.check_position(clean, positions)
    heads = scoring.heads(model, heads)
    ld_clean = scoring.run_ld(model, clean).mean().item()
    src = _source(model, corrupt.tokens, hook)
    out = torch.zeros(model.cfg.n_layers, model.cfg.n_heads)
    lds = _patch_each_head(model, clean, src, hook, heads, positions, batch_heads, progress, "activation patching")
    for h, ld in lds.items():
        out[h] = (ld.mean().item() - ld_clean) / ld_clean
    return out


# ---------------------------------------------------------------- cross-model activation patching (CMAP)


def _check_cmap(model_x, model_y, kind: str) -> None:
    """Raise if two models cannot exchange per-head activations of this kind."""
    if kind not in ("output", "pattern"):
        raise ValueError(f"CMAP kind must be 'output' or 'pattern', got {kind!r}")
    shape = lambda m: (m.cfg.n_layers, m.cfg.n_heads, m.cfg.d_head)  # noqa: E731
    if shape(model_x) != shape(model_y):
        raise ValueError(f"CMAP needs models of one shape (layers, heads, d_head): {shape(model_x)} vs {shape(model_y)}")


def cmap(model_x, model_y, ds: IOIDataset, kind: str = "output", heads: Sequence[Head] | None = None,
         progress: bool = False, batch_heads: int | None = None, positions: str | None = None,
         per_prompt: bool = False) -> Float[torch.Tensor, "n_layers n_heads"] | Float[torch.Tensor, "batch n_layers n_heads"]:
    """Cross-model activation patching (Prakash et al. 2024): [n_layers, n_heads] change of model_y's mean logit
    diff (patched - model_y's own, in logit units) when one head's output z (kind="output") or attention pattern
    (kind="pattern") comes from model_x on the same prompts, at every position (position=None) or only at one
    (query) position such as "END". Swap the models for the other direction. per_prompt: the change on each
    prompt instead, [batch, n_layers, n_heads] (its mean over prompts is the map; heads not patched are 0)."""
    _check_cmap(model_x, model_y, kind)
    if positions is not None:
        scoring.check_position(ds, positions)
    heads = scoring.heads(model_y, heads)
    src = _source(model_x, ds.tokens, kind)
    ld_y = scoring.run_ld(model_y, ds)[0].float().cpu()  # [batch]
    out = torch.zeros(len(ds), model_y.cfg.n_layers, model_y.cfg.n_heads)
    lds = _patch_each_head(model_y, ds, src, kind, heads, positions, batch_heads, progress, f"CMAP ({kind})")
    for (l, h), ld in lds.items():
        out[:, l, h] = ld - ld_y
    return out if per_prompt else out.mean(0)


@torch.no_grad()
def cmap_group(model_x, model_y, ds: IOIDataset, heads: Sequence[Head], kind: str = "output",
               positions: Mapping[Head, Sequence[str]] | None = None,
               per_prompt: bool = False) -> float | Float[torch.Tensor, "batch"]:
    """model_y's mean logit diff with a whole set of heads' output z (or patterns) taken from model_x (per_prompt:
    each prompt's, a [batch] tensor on the CPU).

    positions=None: every head at every position. Else a map head -> position names as in a circuit knockout
    ({(9, 9): ("END",), (5, 5): ("S2",)}; "ALL" = every position), which must name every head: only those
    (head, query position) pairs are patched, as in Prakash et al.'s output CMAP of a circuit.
    """
    _check_cmap(model_x, model_y, kind)
    heads = scoring.heads(model_y, heads)
    missing = [h for h in heads if positions is not None and h not in positions]
    if missing:
        raise ValueError(f"positions must name every patched head; missing {missing}")
    spec = {h: knockouts.ALL_POSITIONS if positions is None else tuple(positions[h]) for h in heads}
    masks = knockouts.keep_masks(model_y, ds, spec)  # layer -> [batch, seq, n_heads]: where x's activation goes
    src = _source(model_x, ds.tokens, kind)
    hook, _ = _hook_of(kind)

    def fn(act, hook, layer):
        m = masks[layer].to(act.device)
        m = m[..., None] if kind != "pattern" else m.transpose(1, 2)[..., None]  # z: [b, s, h, 1]; pattern: [b, h, q, 1]
        return torch.where(m, src[layer].to(act.device, act.dtype), act)

    hooks = [(hook_names.attn(l, hook), lambda a, hook, l=l: fn(a, hook, l)) for l in sorted({l for l, _ in heads})]
    lds = scoring.run_ld(model_y, ds, 1, hooks)[0].float().cpu()  # [batch]
    return lds if per_prompt else lds.mean().item()


def cmap_attribution(model_x, model_y, ds: IOIDataset, batch_size: int = 64) -> Float[torch.Tensor, "n_layers n_heads"]:
    """First-order estimate of cmap(model_x, model_y, ds, "output") at every position: [n_layers, n_heads]
    (z_x - z_y) . d(mean score of model_y)/dz_y per head (the change of model_y's score when the head's output
    comes from model_x), from one forward of model_x and one forward and backward of model_y
    (knockout_attribution.knockout_attribution with model_x's z in place of the means)."""
    _check_cmap(model_x, model_y, "output")
    z_x = _source(model_x, ds.tokens, "output")
    _, grad = knockout_attribution.knockout_attribution(model_y, ds, z_x, scoring.all_heads(model_y), batch_size)
    return -grad  # grad: d/d alpha of the mean score, z = z_x + alpha (z_y - z_x), at alpha = 1 (model_y itself)

