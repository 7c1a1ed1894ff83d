"""Path patching's step 3 for all senders at once, recomputing only the window of positions a patch can change.

Step 3 of path patching (see `path_patching`) patches each sender's values of the receivers' q / k / v at the
receiver position (read in step 2) into a fresh clean run, and reads the logit difference logit(IO) - logit(S) at
END. Under causal attention a patch at position p changes nothing before p, so from the first receiver layer on
only the slots p..END are recomputed, attending to the clean run's keys and values before p (one clean forward,
`clean_kv`). Slot i of prompt b is position start[b] + i; slots past END are not live. Per-token work (norms,
projections, MLPs) runs on the live (prompt, slot) pairs only, packed in one axis (`_Window`), at most
`WINDOW_TOKENS` (sender, prompt, position) token rows at once.

`step3_windowed` returns the per-prompt logit diff per sender, [n_senders, batch], or None where the
architecture is not covered or the clean recompute disagrees with the clean forward (a RuntimeWarning says so);
path patching then takes hooked forwards. Covered (`windowed_supported`): plain causal softmax attention,
learned positions or llama-style rotate-half RoPE over the whole head, optional GQA; no q/k norms and no norm on
a sublayer's output, so not Gemma-3.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping
import warnings

import torch
from jaxtyping import Float
from tqdm.auto import tqdm

from ioi_utils.models import hook_names
from ioi_utils.prompts.data import IOIDataset
from ioi_utils.mechanisms import scoring
from ioi_utils.mechanisms.scoring import Head, Receivers

WINDOW_TOKENS = 16384  # most (sender, prompt, position) token rows step 3's windowed recompute holds at once


@dataclass
class _Window:
    """The token positions step 3 recomputes: from the receiver position to END of each prompt.

    Slot i of prompt b is position start[b] + i; slots past END are not live. Per-token work (norms,
    projections, MLPs) runs on the live (prompt, slot) pairs only, packed in one axis of length n_live.
    """

    tok: torch.Tensor  # [batch, width] position of each slot (clamped to the sequence)
    start: torch.Tensor  # [batch] the receiver position (slot 0)
    live: torch.Tensor  # [batch, width] bool: the slot is at or before END
    read: torch.Tensor  # [batch] index into the packed live tokens of each prompt's END


@dataclass
class _CleanKV:
    """What the windowed recompute reads from the clean run, for layers >= first."""

    first: int
    resid: torch.Tensor  # [batch, seq, d_model] the residual entering block `first`
    keys: dict[int, torch.Tensor]  # layer -> [batch, seq, n_kv, d_head], rotated where the model uses RoPE
    values: dict[int, torch.Tensor]  # layer -> [batch, seq, n_kv, d_head]
    rope: dict[int, tuple[torch.Tensor, torch.Tensor]]  # layer -> (cos, sin) [seq, d_head]; empty without RoPE


def windowed_supported(model) -> bool:
    """Whether the windowed recompute models this architecture's attention (plain causal softmax attention,
    learned positions or llama-style rotate-half RoPE over the whole head, optional GQA; no q/k norms and no
    norm on a sublayer's output, so not Gemma-3)."""
    cfg = model.cfg
    if cfg.positional_embedding_type not in ("standard", "rotary"):
        return False
    flags = ("use_split_qkv_input", "use_attn_in", "use_attn_result", "parallel_attn_mlp", "gated_q_proj",
             "rotary_adjacent_pairs", "rotary_interleaved_cos_sin", "qk_norm_after_rope")
    if any(getattr(cfg, f, False) for f in flags):
        return False
    for block in model.blocks:
        attn = block.attn
        if not all(hasattr(attn, c) for c in ("q", "k", "v", "o")) or "q_norm" in getattr(attn, "submodules", {}):
            return False
        if scoring.post_norm(block, "ln1_post") is not None or scoring.post_norm(block, "ln2_post") is not None:
            return False
        hf = attn.original_component
        if any(getattr(hf, a, None) is not None for a in ("attn_logit_softcapping", "sinks", "key_multiplier")):
            return False
        if getattr(getattr(hf, "config", None), "clip_qkv", None) is not None:
            return False
        if cfg.positional_embedding_type == "rotary" and not hasattr(attn, "hook_rot_k"):
            return False
    return True


def _attn_scale(model, layer: int) -> float:
    """The factor attention scores are multiplied by in one layer."""
    hf = model.blocks[layer].attn.original_component
    if model.cfg.positional_embedding_type == "rotary":
        return float(getattr(hf, "scaling", model.cfg.d_head ** -0.5))
    scale = model.cfg.d_head ** -0.5
    return scale / (layer + 1) if getattr(model.cfg, "scale_attn_by_inverse_layer_idx", False) else scale


def _window(ds: IOIDataset, position: str, dev) -> _Window:
    """Slots from each prompt's receiver position to its END."""
    start, end = ds.positions[position].to(dev), ds.positions["END"].to(dev)
    if (end < start).any():
        raise ValueError(f"position {position} comes after END in some prompt")
    slot = torch.arange(int((end - start).max()) + 1, device=dev)[None]  # [1, width]
    live = slot <= (end - start)[:, None]
    read = live.flatten().cumsum(0).view(live.shape)[torch.arange(len(ds), device=dev), end - start] - 1
    return _Window((start[:, None] + slot).clamp(max=ds.tokens.shape[1] - 1), start, live, read)


def clean_kv_names(model, first: int) -> set[str]:
    """The clean hooks the windowed recompute reads from layer `first` on: the residual entering it, every later
    layer's keys (rotated where the model uses RoPE) and values, and RoPE's cos / sin."""
    rot = model.cfg.positional_embedding_type == "rotary"
    layers = range(first, model.cfg.n_layers)
    names = {hook_names.resid(first, "pre")} | {_key(model, l) for l in layers} | {hook_names.attn(l, "hook_v") for l in layers}
    if rot:
        names |= {hook_names.attn(l, f"hook_{w}") for l in layers for w in ("cos", "sin")}
    return names


def _key(model, layer: int) -> str:
    """The hook of a layer's keys as attention reads them (after RoPE where the model uses it)."""
    return hook_names.attn(layer, "hook_rot_k" if model.cfg.positional_embedding_type == "rotary" else "hook_k")


@torch.no_grad()
def clean_kv(model, clean: IOIDataset, first: int,
             acts: Mapping[str, Float[torch.Tensor, "batch seq ..."]] | None = None) -> _CleanKV:
    """What the recompute reads from the clean run, for layers >= first: from `acts` (full clean activations by
    hook name, e.g. path_patching.Forwards.acts) where given, else from one clean forward."""
    layers = range(first, model.cfg.n_layers)
    c = scoring.cache(model, clean.tokens, clean_kv_names(model, first)) if acts is None else acts
    keys = {l: c[_key(model, l)] for l in layers}  # the bridge's hook_rot_k is [batch, seq, n_kv, d_head] like hook_k
    rope = ({l: (c[hook_names.attn(l, "hook_cos")][0], c[hook_names.attn(l, "hook_sin")][0]) for l in layers}
            if model.cfg.positional_embedding_type == "rotary" else {})
    return _CleanKV(first, c[hook_names.resid(first, "pre")], keys, {l: c[hook_names.attn(l, "hook_v")] for l in layers},
                    rope)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) over the last axis halves (llama's RoPE)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE on x [n, batch, width, heads, d_head] with cos/sin [batch, width, d_head] of each slot."""
    cos, sin = cos[:, :, None], sin[:, :, None]
    return x * cos + _rotate_half(x) * sin


def _window_attention(model, layer: int, x: torch.Tensor, kv: _CleanKV, win: _Window,
                      patch: Mapping[str, tuple[list[int], torch.Tensor]]) -> torch.Tensor:
    """One layer's attention output at the live window tokens: x [n, n_live, d_model] -> same shape.

    Slot queries attend to the clean keys/values before the receiver position and to the window's own
    recomputed keys/values (causally). patch: component ("q" / "k" / "v") -> (head indices, values
    [n, batch, n_idx, d_head]) written at slot 0 (the receiver position) before RoPE, as hook_q/k/v would.
    """
    attn, cfg = model.blocks[layer].attn, model.cfg
    (b, w), n, d, n_h, n_kv = win.live.shape, x.shape[0], cfg.d_head, cfg.n_heads, scoring.n_kv(model)
    h = model.blocks[layer].ln1(x)
    qkv = {}
    for comp, heads in (("q", n_h), ("k", n_kv), ("v", n_kv)):
        full = x.new_zeros(n, b, w, heads, d)  # dead slots stay 0: no live query sees them
        full[:, win.live] = getattr(attn, comp)(h).view(n, -1, heads, d)
        qkv[comp] = full
    for comp, (idx, vals) in patch.items():
        qkv[comp][:, :, 0, idx] = vals.to(x.dtype)
    q, k, v = qkv["q"], qkv["k"], qkv["v"]
    if layer in kv.rope:
        cos, sin = (t[win.tok] for t in kv.rope[layer])  # [batch, width, d_head]
        q, k = _rope(q, cos, sin), _rope(k, cos, sin)
    q = q.view(n, b, w, n_kv, n_h // n_kv, d) * _attn_scale(model, layer)
    seq = kv.keys[layer].shape[1]
    before = torch.arange(seq, device=x.device)[None] < win.start[:, None]  # [batch, seq]
    causal = torch.ones(w, w, dtype=torch.bool, device=x.device).tril()  # [slot, slot]
    s_old = torch.einsum("nbwkgd,bskd->nbkgws", q, kv.keys[layer])
    s_new = torch.einsum("nbwkgd,nbukd->nbkgwu", q, k)
    s_old = s_old.masked_fill(~before[None, :, None, None, None], float("-inf"))
    s_new = s_new.masked_fill(~causal, float("-inf"))
    p = torch.softmax(torch.cat([s_old, s_new], -1), dim=-1, dtype=torch.float32).to(x.dtype)
    z = (torch.einsum("nbkgws,bskd->nbwkgd", p[..., :seq], kv.values[layer])
         + torch.einsum("nbkgwu,nbukd->nbwkgd", p[..., seq:], v))  # [n, batch, width, n_kv, group, d_head]
    return attn.o(z[:, win.live].reshape(n, -1, n_h * d))


def _window_patches(model, r: Receivers, values: Mapping[str, torch.Tensor],
                    idx: torch.Tensor) -> dict[int, dict[str, tuple[list[int], torch.Tensor]]]:
    """layer -> component -> (head indices, patched values [n, batch, n_idx, d_head]) for senders idx."""
    sites, out = scoring.receiver_sites(model, r), {}
    for site, v in values.items():
        layer, comp = int(site.split(".")[1]), site.rsplit("_", 1)[1]
        out.setdefault(layer, {})[comp] = (sites[site], v[idx.to(v.device)])
    return out


def _window_ld(model, clean: IOIDataset, kv: _CleanKV, win: _Window, n: int,
               patches: Mapping[int, Mapping[str, tuple[list[int], torch.Tensor]]]) -> torch.Tensor:
    """Per-prompt logit diff of n patched copies of the clean run, recomputing only the window: [n, batch]."""
    rows = torch.arange(len(clean), device=win.tok.device)[:, None].expand_as(win.tok)
    x = kv.resid[rows[win.live], win.tok[win.live]].expand(n, -1, -1)  # [n, n_live, d_model]
    for j in range(kv.first, model.cfg.n_layers):
        block = model.blocks[j]
        x = x + _window_attention(model, j, x, kv, win, patches.get(j, {}))
        x = x + block.mlp(block.ln2(x))
    return scoring.ld_from_resid(model, x[:, win.read], clean)


@torch.no_grad()
def step3_windowed(model, clean: IOIDataset, r: Receivers, senders: list[Head],
                    values: Mapping[str, Float[torch.Tensor, "n_senders batch n_idx d_head"]],
                    ld_clean: Float[torch.Tensor, "batch"], progress: bool,
                    acts: Mapping[str, Float[torch.Tensor, "batch seq ..."]] | None = None
                    ) -> Float[torch.Tensor, "n_senders batch"] | None:
    """Step 3 recomputing only positions from the receiver position to END, all senders batched: per-prompt logit
    diff per sender [n_senders, batch], or None where the architecture is not covered or the clean recompute disagrees
    with the clean forward (ld_clean [batch]). acts: full clean activations to read the keys and values from (see
    clean_kv).

    Under causal attention a patch at position p changes nothing before p, so from the first receiver layer on
    only the slots p..END are recomputed, attending to the clean run's keys and values before p.
    """
    if not windowed_supported(model):
        return None
    dev, first = scoring.device(model), min(l for l, _ in r.heads)
    kv, win = clean_kv(model, clean, first, acts), _window(clean, r.position, dev)
    check = _window_ld(model, clean, kv, win, 1, {})[0]
    if not torch.allclose(check, ld_clean.to(check.device), rtol=1e-4, atol=1e-4):
        warnings.warn("windowed path patching disagrees with the model's own forward; using hooked forwards",
                      RuntimeWarning, stacklevel=3)
        return None
    per_chunk = max(1, WINDOW_TOKENS // int(win.live.sum()))
    out = []
    for chunk in tqdm(scoring.chunks(list(range(len(senders))), per_chunk), desc="path patching (windowed step 3)",
                      disable=not progress, leave=False):
        idx = torch.tensor(chunk)
        out.append(_window_ld(model, clean, kv, win, len(chunk), _window_patches(model, r, values, idx)))
    return torch.cat(out)

