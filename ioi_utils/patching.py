"""Path patching, activation patching, mean-ablation knockouts and cross-model activation patching (CMAP).

Every effect is measured on the task's per-prompt score, averaged over prompts: for IOI the logit difference
logit(IO) - logit(S) at END; a dataset that defines `score_resid` / `score` and `readout` (the positions it
reads, e.g. Greater-Than's probability difference) is scored by them instead (knockouts, knockout attribution,
activation patching and CMAP; path patching's fast paths read END only and are IOI's).
Heads are query heads (layer, head); under grouped-query attention (SmolLM2: 9 query heads share 3
key/value heads) a head's output is its slice of hook_z, its query its slice of hook_q, and its keys and
values are those of its key/value group (hook_k / hook_v head h // (n_heads // n_kv_heads)). hook_q / hook_k
are the projections before any q/k norm (Gemma-3), so a patched query or key is normed as the clean one is.
Blocks that norm a sublayer's output before adding it to the residual (Gemma-3's ln1_post / ln2_post,
`_post_norm`) are modelled by the fast path patching's residual sweep.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping, Sequence
import warnings

import torch
from tqdm.auto import tqdm

from .data import TEMPLATES, IOIDataset

Head = tuple[int, int]  # (layer, query head)
ALL_POSITIONS: tuple[str, ...] = ("ALL",)  # a knockout spec that keeps a head at every position
COMPONENTS = ("q", "k", "v", "kv")
SWEEP_ROWS = 16384  # most (sender, prompt) rows the fast path propagates at once
WINDOW_TOKENS = 16384  # most (sender, prompt, position) token rows step 3's windowed recompute holds at once


@dataclass(frozen=True)
class Receivers:
    """What path patching measures the effect on: the logits, or q/k/v of some heads at one position."""

    heads: tuple[Head, ...] = ()  # empty -> the logits (the direct path)
    component: str = "q"  # "q" | "k" | "v" | "kv"  (only for head receivers)
    position: str = "END"  # a key of ds.positions (only for head receivers)


LOGITS = Receivers()


class _Stop(Exception):
    """Raised from a hook to end a forward pass once what is needed has been read."""


# ---------------------------------------------------------------- small helpers and checks


def _z(layer: int) -> str:
    """Name of a layer's per-head output hook."""
    return f"blocks.{layer}.attn.hook_z"


def _device(model) -> torch.device:
    """Device of a model's parameters."""
    return next(model.parameters()).device


def _n_kv(model) -> int:
    """Number of key/value heads per layer (= n_heads without grouped-query attention)."""
    return getattr(model.cfg, "n_key_value_heads", None) or model.cfg.n_heads


def all_heads(model) -> list[Head]:
    """Every (layer, head) of a model."""
    return [(l, h) for l in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)]


def _heads(model, heads: Sequence[Head] | None, what: str = "head") -> list[Head]:
    """heads as a list of (int, int) tuples (all heads if None); raise if one is not in the model."""
    if heads is None:
        return all_heads(model)
    heads = [(int(h[0]), int(h[1])) for h in heads]
    n_l, n_h = model.cfg.n_layers, model.cfg.n_heads
    bad = [h for h in heads if not (0 <= h[0] < n_l and 0 <= h[1] < n_h)]
    if bad:
        raise ValueError(f"{what}s {bad} do not exist in a model with {n_l} layers x {n_h} heads")
    return heads


def _check_position(ds: IOIDataset, position: str) -> None:
    """Raise if a position name is not one of the dataset's."""
    if position not in ds.positions:
        raise ValueError(f"unknown position {position!r}; known: {', '.join(ds.positions)}")


def _check_pair(clean: IOIDataset, corrupt: IOIDataset) -> None:
    """Raise if two datasets cannot be patched into each other token by token."""
    if clean.tokens.shape != corrupt.tokens.shape:
        raise ValueError(f"clean {tuple(clean.tokens.shape)} and corrupt {tuple(corrupt.tokens.shape)} differ in shape")
    if not torch.equal(clean.positions["END"], corrupt.positions["END"]):
        raise ValueError("clean and corrupt prompts end at different positions (END)")


def _check_receivers(model, ds: IOIDataset, r: Receivers) -> None:
    """Raise on receivers that do not exist or are of an unknown kind."""
    if not isinstance(r, Receivers):
        raise ValueError(f"receivers must be a Receivers, got {type(r).__name__}")
    _heads(model, r.heads, "receiver head")
    if r.heads and r.component not in COMPONENTS:
        raise ValueError(f"receiver component must be one of {', '.join(COMPONENTS)}, got {r.component!r}")
    _check_position(ds, r.position)


def _chunks(items: Sequence, size: int) -> list[list]:
    """Consecutive pieces of at most `size` items."""
    if size < 1:
        raise ValueError(f"batch_heads must be >= 1, got {size}")
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


def _rows_at(ds: IOIDataset, position: str, reps: int, dev) -> tuple[torch.Tensor, torch.Tensor]:
    """(row index, token index) of a position in `reps` stacked copies of ds: two [reps * batch] tensors."""
    pos = ds.positions[position].to(dev).repeat(reps)
    return torch.arange(len(pos), device=dev), pos


# ---------------------------------------------------------------- running the model


def _ld_from_logits(logits: torch.Tensor, ds: IOIDataset, reps: int = 1) -> torch.Tensor:
    """Per-prompt logit diff of `reps` stacked copies of ds from logits [reps * batch, seq, vocab]: [reps, batch]."""
    rows, end = _rows_at(ds, "END", reps, logits.device)
    e = logits[rows, end]  # [reps * batch, vocab]
    io, s = ds.io_tokens.to(logits.device).repeat(reps), ds.s_tokens.to(logits.device).repeat(reps)
    return (e[rows, io] - e[rows, s]).view(reps, len(ds))


def _readout(resid: torch.Tensor, ds: IOIDataset, rows: torch.Tensor, reps: int = 1) -> torch.Tensor:
    """The residual at the positions the score reads: [B, seq, d] -> [B, d] (END) or [B, k, d] (k readouts),
    for B = reps stacked copies of ds's prompts `rows` ([b] indices)."""
    names = getattr(ds, "readout", ("END",))
    dev = resid.device
    pos = torch.stack([ds.positions[p][rows.cpu()] for p in names], -1).to(dev).repeat(reps, 1)  # [B, k]
    idx = torch.arange(len(pos), device=dev)
    return resid[idx, pos[:, 0]] if len(names) == 1 else resid[idx[:, None], pos]


def _ld_from_resid(model, resid: torch.Tensor, ds: IOIDataset, rows: slice = slice(None)) -> torch.Tensor:
    """Per-prompt logit diff from the final residual at END, [..., batch, d_model] -> [..., batch]
    (prompts `rows` of ds when resid holds only those); a dataset with score_resid is scored by it."""
    if hasattr(ds, "score_resid"):
        return ds.score_resid(model, resid, rows)
    dev = resid.device
    io, s = ds.io_tokens[rows].to(dev), ds.s_tokens[rows].to(dev)
    w = model.W_U[:, io] - model.W_U[:, s]  # [d_model, batch]
    ld = torch.einsum("...bm,mb->...b", model.ln_final(resid), w)
    b_u = getattr(model, "b_U", None)
    return ld if b_u is None else ld + (b_u[io] - b_u[s])


def _replicate(v, reps: int, batch: int):
    """v with every tensor whose leading axis is the batch (and ndim >= 2) stacked `reps` times, recursively."""
    if torch.is_tensor(v) and v.ndim >= 2 and v.shape[0] == batch:
        return v.repeat(reps, *[1] * (v.ndim - 1))
    if isinstance(v, tuple):
        return tuple(_replicate(u, reps, batch) for u in v)
    return v


@torch.no_grad()
def _run_ld(model, ds: IOIDataset, reps: int = 1, hooks: Sequence = (), start: int = 0) -> torch.Tensor:
    """Per-prompt logit diff of `reps` stacked copies of ds under some hooks: [reps, batch].

    Layers before `start` run once on ds (no hook may touch them); from block `start` on, the block inputs
    (residual, attention mask, ...) are stacked `reps` times. The forward stops at the final residual
    stream: only the IO and S columns of the unembedding are used.
    """
    dev, b, last = _device(model), len(ds), f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    rows, end = _rows_at(ds, "END", reps, dev)
    got = {}

    def grab(resid, hook):
        if hasattr(ds, "readout"):
            got["end"] = _readout(resid, ds, torch.arange(b), reps)  # [reps * batch, (k,) d_model]
        else:
            got["end"] = resid[rows, end]  # [reps * batch, d_model]
        raise _Stop

    def stack(module, args, kwargs):
        return _replicate(args, reps, b), {k: _replicate(v, reps, b) for k, v in kwargs.items()}

    handles = [blk.register_forward_pre_hook(stack, with_kwargs=True)
               for blk in list(model.blocks)[start:]] if reps > 1 else []
    try:
        model.run_with_hooks(ds.tokens.to(dev), fwd_hooks=list(hooks) + [(last, grab)])
    except _Stop:
        pass
    finally:
        for h in handles:
            h.remove()
    return _ld_from_resid(model, got["end"].view(reps, b, *got["end"].shape[1:]), ds)


def hooked_logit_diff(model, ds: IOIDataset, hooks: Sequence = ()) -> torch.Tensor:
    """Per-prompt logit diff (or the dataset's own score) under some forward hooks, one batch: [batch] on the
    CPU. Stops at the final residual and unembeds only the readout positions (no [batch, seq, vocab] logits)."""
    return _run_ld(model, ds, hooks=hooks)[0].float().cpu()


@torch.no_grad()
def _cache(model, tokens: torch.Tensor, names: set[str]) -> dict[str, torch.Tensor]:
    """Full activations of some hooks on a batch of tokens."""
    _, cache = model.run_with_cache(tokens.to(_device(model)), names_filter=lambda n: n in names)
    return {k: cache[k] for k in names}


@torch.no_grad()
def _at_position(model, ds: IOIDataset, position: str, names: Sequence[str]) -> dict[str, torch.Tensor]:
    """Activations of some hooks at one position of each prompt: name -> [batch, ...]."""
    dev = _device(model)
    rows, pos = _rows_at(ds, position, 1, dev)
    got = {}

    def grab(act, name):
        got[name] = act[rows, pos].clone()
        return act

    model.run_with_hooks(ds.tokens.to(dev), fwd_hooks=[(n, lambda a, hook, n=n: grab(a, n)) for n in names])
    return got


# ---------------------------------------------------------------- path patching: reference


def _freeze_hooks(model, clean_z: Mapping[int, torch.Tensor], corrupt_z: Mapping[int, torch.Tensor],
                  sender: Head) -> list:
    """hook_z hooks: every head's z at its clean value, the sender's from the corrupt run (all positions)."""
    def fn(z, hook, layer):
        z = clean_z[layer].clone()
        if layer == sender[0]:
            z[:, :, sender[1]] = corrupt_z[layer][:, :, sender[1]]
        return z

    return [(_z(l), lambda z, hook, l=l: fn(z, hook, l)) for l in range(model.cfg.n_layers)]


def _receiver_sites(model, r: Receivers) -> dict[str, list[int]]:
    """hook name -> indices on its head axis of the receivers' inputs (k/v: the receivers' kv groups)."""
    per_group = model.cfg.n_heads // _n_kv(model)
    comps = ["k", "v"] if r.component == "kv" else [r.component]
    sites: dict[str, set[int]] = {}
    for l, h in r.heads:
        for c in comps:
            sites.setdefault(f"blocks.{l}.attn.hook_{c}", set()).add(h if c == "q" else h // per_group)
    return {s: sorted(i) for s, i in sorted(sites.items())}


def _patch_sites_hooks(model, ds: IOIDataset, r: Receivers, values: Mapping[str, torch.Tensor], reps: int) -> list:
    """Hooks writing values[site] ([reps * batch, n_idx, d_head]) into the receivers' inputs at r.position."""
    dev = _device(model)
    rows, pos = _rows_at(ds, r.position, reps, dev)
    sites = _receiver_sites(model, r)

    def put(act, hook, site):
        idx = torch.tensor(sites[site], device=dev)
        act[rows[:, None], pos[:, None], idx] = values[site].to(act.dtype)
        return act

    return [(s, lambda act, hook, s=s: put(act, hook, s)) for s in sites]


@torch.no_grad()
def _all_z(model, ds: IOIDataset) -> dict[int, torch.Tensor]:
    """hook_z of every layer: layer -> [batch, seq, n_heads, d_head]."""
    cache = _cache(model, ds.tokens, {_z(l) for l in range(model.cfg.n_layers)})
    return {l: cache[_z(l)] for l in range(model.cfg.n_layers)}


def _validate(model, clean: IOIDataset, corrupt: IOIDataset, receivers: Receivers,
              senders: Sequence[Head] | None) -> list[Head]:
    """Check the arguments of path patching; return the senders as a list."""
    _check_pair(clean, corrupt)
    _check_receivers(model, clean, receivers)
    return _heads(model, senders, "sender")


@torch.no_grad()
def path_patch_reference(model, clean: IOIDataset, corrupt: IOIDataset, receivers: Receivers = LOGITS,
                         senders: Sequence[Head] | None = None, batch_heads: int = 1,
                         progress: bool = False) -> torch.Tensor:
    """Path patching done plainly, full forwards per sender with hooks: [n_layers, n_heads] (see path_patch).

    batch_heads is accepted for signature parity and ignored (one sender per forward).
    """
    senders = _validate(model, clean, corrupt, receivers, senders)
    dev = _device(model)
    clean_z, corrupt_z = _all_z(model, clean), _all_z(model, corrupt)
    ld_clean = _ld_from_logits(model(clean.tokens.to(dev)), clean).mean().item()
    out = torch.zeros(model.cfg.n_layers, model.cfg.n_heads)
    rows, pos = _rows_at(clean, receivers.position, 1, dev)
    for s in tqdm(senders, desc="path patching (reference)", disable=not progress, leave=False):
        freeze = _freeze_hooks(model, clean_z, corrupt_z, s)
        if not receivers.heads:
            logits = model.run_with_hooks(clean.tokens.to(dev), fwd_hooks=freeze)
        else:
            got = {}
            sites = _receiver_sites(model, receivers)

            def grab(act, hook, site):
                got[site] = act[rows, pos][:, sites[site]].clone()  # [batch, n_idx, d_head]
                return act

            model.run_with_hooks(clean.tokens.to(dev), fwd_hooks=freeze + [
                (site, lambda a, hook, site=site: grab(a, hook, site)) for site in sites])
            logits = model.run_with_hooks(clean.tokens.to(dev),
                                          fwd_hooks=_patch_sites_hooks(model, clean, receivers, got, 1))
        out[s] = (_ld_from_logits(logits, clean).mean().item() - ld_clean) / ld_clean
    return out


# ---------------------------------------------------------------- path patching: fast


@dataclass
class _Frozen:
    """Clean activations at one position, and each layer's corrupt-minus-clean z there (all [batch, ...])."""

    resid_pre: list[torch.Tensor]  # per layer [batch, d_model]
    resid_mid: list[torch.Tensor]  # per layer [batch, d_model]
    z: list[torch.Tensor]  # per layer [batch, n_heads, d_head] the clean z
    dz: list[torch.Tensor]  # per layer [batch, n_heads, d_head]
    final: torch.Tensor  # [batch, d_model] the clean residual after the last block


def _frozen(model, clean: IOIDataset, corrupt: IOIDataset, position: str) -> _Frozen:
    """Read what the fast path needs at one position: two forwards."""
    n_l = model.cfg.n_layers
    last = f"blocks.{n_l - 1}.hook_resid_post"
    names = [f"blocks.{l}.hook_resid_{w}" for l in range(n_l) for w in ("pre", "mid")] + [_z(l) for l in range(n_l)]
    c = _at_position(model, clean, position, names + [last])
    x = _at_position(model, corrupt, position, [_z(l) for l in range(n_l)])
    return _Frozen([c[f"blocks.{l}.hook_resid_pre"] for l in range(n_l)],
                   [c[f"blocks.{l}.hook_resid_mid"] for l in range(n_l)], [c[_z(l)] for l in range(n_l)],
                   [x[_z(l)] - c[_z(l)] for l in range(n_l)], c[last])


def _post_norm(block, name: str) -> torch.nn.Module | None:
    """The norm a block applies to a sublayer's output before the residual add ("ln1_post": attention,
    "ln2_post": MLP; Gemma-2/3), or None where the output is added as it is (GPT-2, Llama)."""
    return getattr(block, name, None)


def _mlp_add(block, x: torch.Tensor) -> torch.Tensor:
    """What a block's MLP adds to the residual x [..., d_model]: mlp(ln2(x)), post-normed where the block does."""
    out = block.mlp(block.ln2(x))
    post = _post_norm(block, "ln2_post")
    return out if post is None else post(out)


def _sender_resid_mid(model, fr: _Frozen, layer: int, heads: list[int]) -> torch.Tensor:
    """The residual after a layer's attention, row i with head heads[i]'s z corrupted and every other z clean:
    [len(heads), batch, d_model]. The attention output is linear in z (z @ W_O + b_O), so the corrupted head
    shifts it by dz @ W_O; a post-attention norm (Gemma's ln1_post) is applied to the whole output, so there
    the normed clean output is replaced by the normed shifted one."""
    block = model.blocks[layer]
    w_o = block.attn.W_O[heads]  # [k, d_head, d_model]
    delta = torch.einsum("bkd,kdm->kbm", fr.dz[layer][:, heads], w_o)  # [k, batch, d_model]
    post = _post_norm(block, "ln1_post")
    if post is None:
        return fr.resid_mid[layer] + delta
    out = torch.einsum("bhd,hdm->bm", fr.z[layer], block.attn.W_O)  # the clean attention output before its norm
    b_o = getattr(block.attn, "b_O", None)
    out = out if b_o is None else out + b_o
    return fr.resid_mid[layer] - post(out) + post(out + delta)


def _sweep(model, fr: _Frozen, senders: Sequence[Head], stops: Sequence[int],
           at_stop: Callable[[int, torch.Tensor], None]) -> None:
    """Propagate each sender's effect on the residual at one position with every head's z frozen.

    With all z frozen attention no longer mixes positions, so the residual at a position changes only by
    the sender's own (corrupt - clean) output there and the recomputed MLPs of later layers. For each layer
    j in `stops` (j == n_layers: after the last block) calls at_stop(j, x) with x [n_senders, batch, d_model]
    the residual entering block j; senders at layers >= j give their clean residual.
    """
    n_l, n = model.cfg.n_layers, len(senders)
    order = sorted(range(n), key=lambda i: senders[i][0])  # rows of x join in layer order
    back = torch.argsort(torch.tensor(order))
    x = fr.resid_pre[0].new_zeros((0,) + tuple(fr.resid_pre[0].shape))  # [active, batch, d_model]
    for j in range(max(stops) + 1):
        if j in stops:
            rest = [fr.resid_pre[j].expand(n - len(x), -1, -1)] if j < n_l else []
            at_stop(j, torch.cat([x] + rest)[back])
        if j == max(stops):
            break
        new = [senders[i][1] for i in order if senders[i][0] == j]
        x = x + (fr.resid_mid[j] - fr.resid_pre[j])  # frozen attention: its clean output
        if new:
            x = torch.cat([x, _sender_resid_mid(model, fr, j, new)])
        if len(x):
            x = x + _mlp_add(model.blocks[j], x)


@torch.no_grad()
def _direct_fast(model, clean: IOIDataset, fr: _Frozen, senders: list[Head], progress: bool) -> torch.Tensor:
    """Per-prompt logit diff per sender with the sender patched and every head's z frozen: [n_senders, batch]."""
    n_l, out = model.cfg.n_layers, []
    for chunk in tqdm(_chunks(senders, max(1, SWEEP_ROWS // len(clean))), desc="path patching",
                      disable=not progress, leave=False):
        _sweep(model, fr, chunk, [n_l], lambda j, x: out.append(_ld_from_resid(model, x, clean)))
    return torch.cat(out)


@torch.no_grad()
def _receiver_values(model, fr: _Frozen, senders: list[Head], r: Receivers,
                     progress: bool = False) -> dict[str, torch.Tensor]:
    """Step 2: each receiver input at r.position with one sender patched: site -> [n_senders, batch, n_idx, d_head]."""
    sites = _receiver_sites(model, r)
    by_layer: dict[int, list[str]] = {}
    for s in sites:
        by_layer.setdefault(int(s.split(".")[1]), []).append(s)
    parts: dict[str, list[torch.Tensor]] = {s: [] for s in sites}

    def read(j, x):
        block = model.blocks[j]
        h = block.ln1(x)  # [n, batch, d_model]
        for s in by_layer[j]:
            proj = getattr(block.attn, s.rsplit("_", 1)[1])(h)  # [n, batch, heads * d_head]
            parts[s].append(proj.view(*proj.shape[:2], -1, model.cfg.d_head)[:, :, sites[s]])

    chunks = _chunks(senders, max(1, SWEEP_ROWS // fr.resid_pre[0].shape[0]))
    for chunk in tqdm(chunks, desc="path patching: receiver inputs", disable=not progress, leave=False):
        _sweep(model, fr, chunk, sorted(by_layer), read)
    return {s: torch.cat(v) for s, v in parts.items()}


@dataclass
class PathPatchPrompts:
    """Path patching kept per prompt: the clean logit difference and, per sender, the patched one.

    `effect()` is the relative change of the mean, (mean patched - mean clean) / mean clean, per head (what
    `path_patch` returns); `interval()` bootstraps it over prompts (paired: the same prompts resampled for clean
    and patched), so a head's effect can be called significant when its interval excludes 0.
    """

    clean: torch.Tensor  # [batch] clean logit difference
    patched: torch.Tensor  # [n_layers, n_heads, batch]; a head not patched holds the clean values
    senders: tuple[Head, ...]

    def effect(self) -> torch.Tensor:
        """[n_layers, n_heads] relative change of the mean logit difference (0 for heads not patched)."""
        m = self.clean.mean()
        return (self.patched.mean(-1) - m) / m

    def interval(self, level: float = 0.95, n_boot: int = 1000, seed: int = 0) -> torch.Tensor:
        """[2, n_layers, n_heads] percentile bootstrap interval of effect() over prompts."""
        g = torch.Generator().manual_seed(seed)
        n = len(self.clean)
        idx = torch.randint(0, n, (n_boot, n), generator=g)
        m = self.clean[idx].mean(-1)  # [n_boot]
        p = self.patched[..., idx].mean(-1)  # [n_layers, n_heads, n_boot]
        boot = (p - m) / m
        q = torch.tensor([(1 - level) / 2, (1 + level) / 2])
        return torch.quantile(boot, q, dim=-1)


@torch.no_grad()
def path_patch_prompts(model, clean: IOIDataset, corrupt: IOIDataset, receivers: Receivers = LOGITS,
                       senders: Sequence[Head] | None = None, batch_heads: int = 8,
                       progress: bool = False) -> PathPatchPrompts:
    """`path_patch` before the mean over prompts (see there for the method): per-prompt logit differences."""
    senders = _validate(model, clean, corrupt, receivers, senders)
    _chunks([], batch_heads)  # raises on batch_heads < 1 whichever route step 3 takes
    if not receivers.heads:
        fr = _frozen(model, clean, corrupt, "END")
        ld_clean = _ld_from_resid(model, fr.final, clean)  # [batch]
        lds = _direct_fast(model, clean, fr, senders, progress) if senders else None
    else:
        last = max(l for l, _ in receivers.heads)
        senders = [s for s in senders if s[0] < last]
        ld_clean = _run_ld(model, clean)[0]  # [batch]
        lds = None
        if senders:
            fr = _frozen(model, clean, corrupt, receivers.position)
            values = _receiver_values(model, fr, senders, receivers, progress)  # site -> [n_senders, batch, n_idx, d_head]
            lds = _step3_windowed(model, clean, receivers, senders, values, ld_clean, progress)
            if lds is None:
                lds = _step3_generic(model, clean, receivers, senders, values, batch_heads, progress)
    ld_clean = ld_clean.float().cpu()
    patched = ld_clean.expand(model.cfg.n_layers, model.cfg.n_heads, -1).clone()
    for i, s in enumerate(senders if lds is not None else []):
        patched[s] = lds[i].float().cpu()
    return PathPatchPrompts(ld_clean, patched, tuple(senders))


def path_patch(model, clean: IOIDataset, corrupt: IOIDataset, receivers: Receivers = LOGITS,
               senders: Sequence[Head] | None = None, batch_heads: int = 8, progress: bool = False) -> torch.Tensor:
    """Path patching (ARENA's 3-step form of Wang et al.): [n_layers, n_heads] relative change of the clean
    logit difference, (patched - clean) / clean.

    Step 1-2: one sender's z (all positions) comes from `corrupt`, every other head's z is frozen at its clean
    value, MLPs recompute. To the logits (receivers=LOGITS) the logit diff of that run is the result. For head
    receivers their q / k / v / k and v at `receivers.position` are read from that run and patched into a
    fresh clean run (everything else free), whose logit diff is the result. k/v receivers are key/value
    groups under grouped-query attention (patching one changes every query head sharing it).
    A sender changes no receiver at or before its own layer: such entries, and senders not asked for, are 0.

    Equals path_patch_reference up to float error, but step 2 needs no forward per sender: with every z
    frozen, attention does not mix positions, so only the residual at the receiver position changes, through
    the MLPs; it is propagated for all senders at once. Step 3 recomputes, for all senders at once, only the
    positions from the receiver position to END (causal attention: nothing before it changes), attending to
    the clean run's cached keys and values (_step3_windowed). Architectures it does not model fall back to
    hooked forwards from the first receiver layer, `batch_heads` senders at a time (_step3_generic).
    `path_patch_prompts` keeps the per-prompt values (for intervals).
    """
    return path_patch_prompts(model, clean, corrupt, receivers, senders, batch_heads, progress).effect()


@torch.no_grad()
def _step3_generic(model, clean: IOIDataset, r: Receivers, senders: list[Head],
                   values: Mapping[str, torch.Tensor], batch_heads: int, progress: bool) -> torch.Tensor:
    """Step 3 by hooked forwards from the first receiver layer, batch_heads senders at a time: per-prompt logit
    diff [n_senders, batch]."""
    first, out = min(l for l, _ in r.heads), []
    for chunk in tqdm(_chunks(list(range(len(senders))), batch_heads), desc="path patching (generic step 3)",
                      disable=not progress, leave=False):
        idx = torch.tensor(chunk)
        vals = {site: v[idx.to(v.device)].flatten(0, 1) for site, v in values.items()}
        hooks = _patch_sites_hooks(model, clean, r, vals, len(chunk))
        out.append(_run_ld(model, clean, len(chunk), hooks, start=first))
    return torch.cat(out)


# ---------------------------------------------------------------- path patching: windowed step 3


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


def _windowed_supported(model) -> bool:
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
        if _post_norm(block, "ln1_post") is not None or _post_norm(block, "ln2_post") is not None:
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


@torch.no_grad()
def _clean_kv(model, clean: IOIDataset, first: int) -> _CleanKV:
    """One clean forward: the residual entering `first` and every later layer's keys, values (and RoPE)."""
    rot = model.cfg.positional_embedding_type == "rotary"
    layers = range(first, model.cfg.n_layers)
    key = lambda l: f"blocks.{l}.attn.hook_{'rot_k' if rot else 'k'}"  # noqa: E731
    names = {f"blocks.{first}.hook_resid_pre"} | {key(l) for l in layers} | {f"blocks.{l}.attn.hook_v" for l in layers}
    if rot:
        names |= {f"blocks.{l}.attn.hook_{w}" for l in layers for w in ("cos", "sin")}
    c = _cache(model, clean.tokens, names)
    keys = {l: c[key(l)] for l in layers}  # the bridge's hook_rot_k is [batch, seq, n_kv, d_head] like hook_k
    rope = {l: (c[f"blocks.{l}.attn.hook_cos"][0], c[f"blocks.{l}.attn.hook_sin"][0]) for l in layers} if rot else {}
    return _CleanKV(first, c[f"blocks.{first}.hook_resid_pre"], keys, {l: c[f"blocks.{l}.attn.hook_v"] for l in layers},
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
    (b, w), n, d, n_h, n_kv = win.live.shape, x.shape[0], cfg.d_head, cfg.n_heads, _n_kv(model)
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
    sites, out = _receiver_sites(model, r), {}
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
    return _ld_from_resid(model, x[:, win.read], clean)


@torch.no_grad()
def _step3_windowed(model, clean: IOIDataset, r: Receivers, senders: list[Head],
                    values: Mapping[str, torch.Tensor], ld_clean: torch.Tensor,
                    progress: bool) -> torch.Tensor | None:
    """Step 3 recomputing only positions from the receiver position to END, all senders batched: per-prompt logit
    diff per sender [n_senders, batch], or None where the architecture is not covered or the clean recompute disagrees
    with the clean forward (ld_clean [batch]).

    Under causal attention a patch at position p changes nothing before p, so from the first receiver layer on
    only the slots p..END are recomputed, attending to the clean run's keys and values before p.
    """
    if not _windowed_supported(model):
        return None
    dev, first = _device(model), min(l for l, _ in r.heads)
    kv, win = _clean_kv(model, clean, first), _window(clean, r.position, dev)
    check = _window_ld(model, clean, kv, win, 1, {})[0]
    if not torch.allclose(check, ld_clean.to(check.device), rtol=1e-4, atol=1e-4):
        warnings.warn("windowed path patching disagrees with the model's own forward; using hooked forwards",
                      RuntimeWarning, stacklevel=3)
        return None
    per_chunk = max(1, WINDOW_TOKENS // int(win.live.sum()))
    out = []
    for chunk in tqdm(_chunks(list(range(len(senders))), per_chunk), desc="path patching (windowed step 3)",
                      disable=not progress, leave=False):
        idx = torch.tensor(chunk)
        out.append(_window_ld(model, clean, kv, win, len(chunk), _window_patches(model, r, values, idx)))
    return torch.cat(out)


# ---------------------------------------------------------------- activation patching and CMAP


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
    cache = _cache(model, tokens, {f"blocks.{l}.attn.{hook}" for l in range(model.cfg.n_layers)})
    return {l: cache[f"blocks.{l}.attn.{hook}"] for l in range(model.cfg.n_layers)}


def _one_head_hooks(model, ds: IOIDataset, source: Mapping[int, torch.Tensor], kind: str, chunk: Sequence[Head],
                    position: str | None) -> list:
    """Hooks on len(chunk) stacked copies of ds: copy i gets head chunk[i]'s activation from `source`.

    position=None: at every position; else only at that query position of each prompt.
    """
    hook, axis = _hook_of(kind)
    dev, b = _device(model), len(ds)
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
    return [(f"blocks.{l}.attn.{hook}", lambda a, hook, l=l: fn(a, hook, l)) for l in layers]


@torch.no_grad()
def _patch_each_head(model, ds: IOIDataset, source: Mapping[int, torch.Tensor], kind: str, heads: Sequence[Head],
                     position: str | None, batch_heads: int | None, progress: bool, desc: str) -> dict[Head, torch.Tensor]:
    """Per-prompt logit diff ([batch] each) of `model` on ds with each head's activation (one head at a time) taken
    from `source`; one forward per `batch_heads` heads of a layer (None: all of a layer's heads), from that layer on."""
    out = {}
    by_layer = [[h for h in heads if h[0] == l] for l in sorted({l for l, _ in heads})]
    chunks = [c for hs in by_layer for c in _chunks(hs, len(hs) if batch_heads is None else batch_heads)]
    for chunk in tqdm(chunks, desc=desc, disable=not progress, leave=False):
        hooks = _one_head_hooks(model, ds, source, kind, chunk, position)
        lds = _run_ld(model, ds, len(chunk), hooks, start=chunk[0][0])  # [len(chunk), batch]
        out.update(zip(chunk, lds.float().cpu()))
    return out


def activation_patch_heads(model, clean: IOIDataset, corrupt: IOIDataset, hook: str = "z",
                           positions: str | None = None, heads: Sequence[Head] | None = None,
                           batch_heads: int | None = None, progress: bool = False) -> torch.Tensor:
    """Per-head activation patching: [n_layers, n_heads] relative change (patched - clean) / clean of the logit
    difference when one head's z (hook="z") or attention pattern (hook="pattern") comes from the corrupt run,
    at every position (positions=None) or only at one query position (e.g. "END")."""
    _check_pair(clean, corrupt)
    _hook_of(hook)
    if positions is not None:
        _check_position(clean, positions)
    heads = _heads(model, heads)
    ld_clean = _run_ld(model, clean).mean().item()
    src = _source(model, corrupt.tokens, hook)
    out = torch.zeros(model.cfg.n_layers, model.cfg.n_heads)
    lds = _patch_each_head(model, clean, src, hook, heads, positions, batch_heads, progress, "activation patching")
    for h, ld in lds.items():
        out[h] = (ld.mean().item() - ld_clean) / ld_clean
    return out


def _check_cmap(model_x, model_y, kind: str) -> None:
    """Raise if two models cannot exchange per-head activations of this kind."""
    if kind not in ("output", "pattern"):
        raise ValueError(f"CMAP kind must be 'output' or 'pattern', got {kind!r}")
    shape = lambda m: (m.cfg.n_layers, m.cfg.n_heads, m.cfg.d_head)  # noqa: E731
    if shape(model_x) != shape(model_y):
        raise ValueError(f"CMAP needs models of one shape (layers, heads, d_head): {shape(model_x)} vs {shape(model_y)}")


def cmap(model_x, model_y, ds: IOIDataset, kind: str = "output", heads: Sequence[Head] | None = None,
         progress: bool = False, batch_heads: int | None = None, positions: str | None = None,
         per_prompt: bool = False) -> torch.Tensor:
    """Cross-model activation patching (Prakash et al. 2024): [n_layers, n_heads] change of model_y's mean logit
    diff (patched - model_y's own, in logit units) when one head's output z (kind="output") or attention pattern
    (kind="pattern") comes from model_x on the same prompts, at every position (position=None) or only at one
    (query) position such as "END". Swap the models for the other direction. per_prompt: the change on each
    prompt instead, [batch, n_layers, n_heads] (its mean over prompts is the map; heads not patched are 0)."""
    _check_cmap(model_x, model_y, kind)
    if positions is not None:
        _check_position(ds, positions)
    heads = _heads(model_y, heads)
    src = _source(model_x, ds.tokens, kind)
    ld_y = _run_ld(model_y, ds)[0].float().cpu()  # [batch]
    out = torch.zeros(len(ds), model_y.cfg.n_layers, model_y.cfg.n_heads)
    lds = _patch_each_head(model_y, ds, src, kind, heads, positions, batch_heads, progress, f"CMAP ({kind})")
    for (l, h), ld in lds.items():
        out[:, l, h] = ld - ld_y
    return out if per_prompt else out.mean(0)


@torch.no_grad()
def cmap_group(model_x, model_y, ds: IOIDataset, heads: Sequence[Head], kind: str = "output",
               positions: Mapping[Head, Sequence[str]] | None = None, per_prompt: bool = False) -> float | torch.Tensor:
    """model_y's mean logit diff with a whole set of heads' output z (or patterns) taken from model_x (per_prompt:
    each prompt's, a [batch] tensor on the CPU).

    positions=None: every head at every position. Else a map head -> position names as in a circuit knockout
    ({(9, 9): ("END",), (5, 5): ("S2",)}; "ALL" = every position), which must name every head: only those
    (head, query position) pairs are patched, as in Prakash et al.'s output CMAP of a circuit.
    """
    _check_cmap(model_x, model_y, kind)
    heads = _heads(model_y, heads)
    missing = [h for h in heads if positions is not None and h not in positions]
    if missing:
        raise ValueError(f"positions must name every patched head; missing {missing}")
    spec = {h: ALL_POSITIONS if positions is None else tuple(positions[h]) for h in heads}
    masks = _keep_masks(model_y, ds, spec)  # layer -> [batch, seq, n_heads]: where x's activation goes
    src = _source(model_x, ds.tokens, kind)
    hook, _ = _hook_of(kind)

    def fn(act, hook, layer):
        m = masks[layer].to(act.device)
        m = m[..., None] if kind != "pattern" else m.transpose(1, 2)[..., None]  # z: [b, s, h, 1]; pattern: [b, h, q, 1]
        return torch.where(m, src[layer].to(act.device, act.dtype), act)

    hooks = [(f"blocks.{l}.attn.{hook}", lambda a, hook, l=l: fn(a, hook, l)) for l in sorted({l for l, _ in heads})]
    lds = _run_ld(model_y, ds, 1, hooks)[0].float().cpu()  # [batch]
    return lds if per_prompt else lds.mean().item()


def cmap_attribution(model_x, model_y, ds: IOIDataset, batch_size: int = 64) -> torch.Tensor:
    """First-order estimate of cmap(model_x, model_y, ds, "output") at every position: [n_layers, n_heads]
    (z_x - z_y) . d(mean score of model_y)/dz_y per head (the change of model_y's score when the head's output
    comes from model_x), from one forward of model_x and one forward and backward of model_y
    (knockout_attribution with model_x's z in place of the means)."""
    _check_cmap(model_x, model_y, "output")
    z_x = _source(model_x, ds.tokens, "output")
    _, grad = knockout_attribution(model_y, ds, z_x, all_heads(model_y), batch_size)
    return -grad  # grad: d/d alpha of the mean score, z = z_x + alpha (z_y - z_x), at alpha = 1 (model_y itself)


# ---------------------------------------------------------------- mean ablation (circuit knockout)


@torch.no_grad()
def template_means(model, abc: IOIDataset, batch_size: int = 64, hook: str = "attn.hook_z",
                   per_template: bool = False) -> dict[int, torch.Tensor]:
    """Wang et al.'s per-template mean over p_ABC of one hook of every layer (the one helper serving heads and
    MLPs): layer -> the mean of blocks.{layer}.{hook} over the ABC prompts of each template.

    - per_template=False (heads, the default hook_z): [batch, seq, ...] (hook_z: [batch, seq, n_heads, d_head]);
      row i holds the mean over the ABC prompts that share prompt i's template, position by position. Should
      one template tokenize to different positions, prompts are grouped by template and positions.
    - per_template=True (MLPs, hook="hook_mlp_out"): [n_templates, seq, ...] indexed by template id, grouped by
      template alone (rows of templates absent from abc are NaN).
    """
    names = {f"blocks.{l}.{hook}" for l in range(model.cfg.n_layers)}
    parts = [_cache(model, abc.tokens[i : i + batch_size], names) for i in range(0, len(abc), batch_size)]
    if per_template:
        group, n_groups = abc.template_ids, len(TEMPLATES)  # [batch]
    else:
        keys = torch.stack([abc.template_ids] + [abc.positions[k] for k in sorted(abc.positions)], 1)  # [batch, 6]
        _, group = torch.unique(keys, dim=0, return_inverse=True)  # [batch]
        n_groups = int(group.max()) + 1
    means = {}
    for l in range(model.cfg.n_layers):
        z = torch.cat([p[f"blocks.{l}.{hook}"] for p in parts])  # [batch, seq, ...]
        g = group.to(z.device)
        sums = z.new_zeros((n_groups,) + z.shape[1:]).index_add_(0, g, z)
        counts = torch.bincount(g, minlength=n_groups).to(z.dtype).view(-1, *[1] * (z.dim() - 1))
        means[l] = sums / counts if per_template else (sums / counts)[g]  # empty groups: 0 / 0 = NaN
    return means


def _keep_masks(model, ds: IOIDataset, circuit: Mapping[Head, Sequence[str]]) -> dict[int, torch.Tensor]:
    """layer -> [batch, seq, n_heads] bool: which (prompt, position, head) keep their clean z."""
    _heads(model, list(circuit), "circuit head")
    b, s = ds.tokens.shape
    masks = {l: torch.zeros(b, s, model.cfg.n_heads, dtype=torch.bool) for l in range(model.cfg.n_layers)}
    rows = torch.arange(b)
    for (l, h), positions in circuit.items():
        if isinstance(positions, str):
            raise ValueError(f"positions of head {l}.{h} must be a sequence of names, got the string {positions!r}")
        for p in positions:
            if p == "ALL":
                masks[l][:, :, h] = True
            elif p in ds.positions:
                masks[l][rows, ds.positions[p], h] = True
            else:
                raise ValueError(f"unknown position {p!r} for head {l}.{h}; known: ALL, {', '.join(ds.positions)}")
    return masks


@torch.no_grad()
def run_with_circuit(model, clean: IOIDataset, abc: IOIDataset, circuit: Mapping[Head, Sequence[str]],
                     means: Mapping[int, torch.Tensor] | None = None) -> torch.Tensor:
    """END logits [batch, vocab] of the circuit knockout (see _knockout_hooks)."""
    dev = _device(model)
    logits = model.run_with_hooks(clean.tokens.to(dev), fwd_hooks=_knockout_hooks(model, clean, abc, circuit, means))
    return logits[torch.arange(len(clean), device=dev), clean.positions["END"].to(dev)]


def _knockout_hooks(model, clean: IOIDataset, abc: IOIDataset, circuit: Mapping[Head, Sequence[str]],
                    means: Mapping[int, torch.Tensor] | None = None) -> list:
    """hook_z hooks mean-ablating every (head, position) the circuit does not claim to its per-template ABC mean
    (Wang et al.'s knockout; MLPs are never ablated). The circuit maps a head to the position names it keeps
    ("END", "S2", "S1+1", ... or "ALL")."""
    _check_pair(clean, abc)
    if not torch.equal(clean.template_ids, abc.template_ids):
        raise ValueError("clean and ABC prompts must share templates row by row (use data.make_abc_dataset)")
    means = template_means(model, abc) if means is None else means
    if any(tuple(means[l].shape[:2]) != tuple(clean.tokens.shape) for l in range(model.cfg.n_layers)):
        raise ValueError(f"means must be [batch, seq, ...] = {tuple(clean.tokens.shape)} (template_means of abc)")
    dev, masks = _device(model), _keep_masks(model, clean, circuit)

    def fn(z, hook, layer):
        return torch.where(masks[layer].to(dev)[..., None], z, means[layer].to(z.device, z.dtype))

    return [(_z(l), lambda z, hook, l=l: fn(z, hook, l)) for l in range(model.cfg.n_layers)]


def circuit_logit_diff(model, clean: IOIDataset, abc: IOIDataset, circuit: Mapping[Head, Sequence[str]],
                       means: Mapping[int, torch.Tensor] | None = None,
                       per_prompt: bool = False) -> float | torch.Tensor:
    """Mean logit difference of the model reduced to a circuit by mean ablation (see _knockout_hooks), or
    the per-prompt values ([batch] float tensor on the CPU) if per_prompt. A dataset with `score` is scored by it.
    The forward stops at the final residual: only the readout positions are unembedded."""
    ld = hooked_logit_diff(model, clean, _knockout_hooks(model, clean, abc, circuit, means))  # [batch]
    return ld if per_prompt else ld.mean().item()


# ---------------------------------------------------------------- knockout attribution (circuit discovery)


def _scaled_z_hooks(means: Mapping[int, torch.Tensor], alpha: Sequence[torch.Tensor], rows: slice) -> list:
    """hook_z hooks giving mean + alpha * (z - mean) per head (alpha[l]: [n_heads]) on prompts `rows`."""
    def fn(z, hook, layer):
        m = means[layer][rows].to(z.device, z.dtype)
        return m + alpha[layer].to(z.dtype).view(1, 1, -1, 1) * (z - m)

    return [(_z(l), lambda z, hook, l=l: fn(z, hook, l)) for l in range(len(alpha))]


def knockout_attribution(model, clean: IOIDataset, means: Mapping[int, torch.Tensor], keep: Sequence[Head],
                         batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Knockout with attribution: ([batch] logit diff of the model with every head outside `keep` mean-ablated at
    every position, [n_layers, n_heads] first-order change of the mean logit diff per head if its z were scaled
    from its mean (0) to its clean value (1), at the current knockout).

    A head h's output is mean + a_h (z - mean) with a_h = 1 for kept heads and 0 for ablated ones; the second
    output is d(mean logit diff)/d a_h, i.e. sum over prompts and positions of (z - mean) . dLD/dz. For a kept
    head it estimates what ablating it would cost, for an ablated head what keeping it would add (attribution
    patching, Nanda 2023 / Syed et al. 2023, applied to the mean-ablation knockout). One forward and backward.
    """
    n_l, n_h, dev = model.cfg.n_layers, model.cfg.n_heads, _device(model)
    kept = {tuple(h) for h in _heads(model, keep, "kept head")}
    init = torch.tensor([[float((l, h) in kept) for h in range(n_h)] for l in range(n_l)], device=dev)
    grad, lds = torch.zeros(n_l, n_h), []
    with _frozen_weights(model):
        for start in range(0, len(clean), batch_size):
            lds.append(_attribution_batch(model, clean, means, init, slice(start, start + batch_size), grad))
    return torch.cat(lds), grad / len(clean)


@contextmanager
def _frozen_weights(model) -> Iterator[None]:
    """The model's parameters do not require grad inside (restored after), so backward skips weight grads."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def _attribution_batch(model, clean: IOIDataset, means: Mapping[int, torch.Tensor], init: torch.Tensor, rows: slice,
                       grad: torch.Tensor) -> torch.Tensor:
    """knockout_attribution on prompts `rows`: adds sum over them of dLD/da to grad [n_layers, n_heads]; returns LD [b]."""
    n_l, dev = model.cfg.n_layers, _device(model)
    last = f"blocks.{n_l - 1}.hook_resid_post"
    tokens, end = clean.tokens[rows].to(dev), clean.positions["END"][rows].to(dev)  # [b, seq], [b]
    alpha = [init[l].clone().requires_grad_(True) for l in range(n_l)]
    got = {}

    def grab(resid, hook):
        if hasattr(clean, "readout"):
            got["end"] = _readout(resid, clean, torch.arange(len(clean))[rows])  # [b, (k,) d_model]
        else:
            got["end"] = resid[torch.arange(len(end), device=dev), end]  # [b, d_model]
        raise _Stop

    with torch.enable_grad():
        try:
            model.run_with_hooks(tokens, fwd_hooks=_scaled_z_hooks(means, alpha, rows) + [(last, grab)])
        except _Stop:
            pass
        ld = _ld_from_resid(model, got["end"], clean, rows)  # [b]
        g = torch.autograd.grad(ld.sum(), alpha)
    grad += torch.stack(g).cpu()
    return ld.detach().float().cpu()
