"""Path patching (ARENA's 3-step form of Wang et al. 2022): the effect of one sender head's output on the logit
difference through one path only, to the logits or into some receiver heads' queries, keys or values.

The metric is the relative change of the clean logit difference logit(IO) - logit(S) at END, (patched - clean) /
clean, of the mean over prompts. `path_patch` returns it per sender head, [n_layers, n_heads];
`path_patch_prompts` keeps the per-prompt values, a `PathPatchPrompts` (clean [batch], patched
[n_layers, n_heads, batch]) whose `effect()` is that map and whose `interval()` is a paired percentile bootstrap
over prompts, [2, n_layers, n_heads] (a head's effect is significant when its interval excludes 0).

Step 1-2: one sender's z (all positions) comes from `corrupt`, every other head's z is frozen at its clean
value, MLPs recompute. To the logits (receivers=LOGITS) the logit diff of that run is the result. For head
receivers (`scoring.Receivers`) their q / k / v / k and v at `receivers.position` are read from that run and
patched into a fresh clean run (everything else free), whose logit diff is the result (step 3). A sender changes
no receiver at or before its own layer: such entries, and senders not asked for, are 0.
Heads are query heads (layer, head); under grouped-query attention (SmolLM2: 9 query heads share 3
key/value heads) a head's output is its slice of hook_z, its query its slice of hook_q, and its keys and
values are those of its key/value group (hook_k / hook_v head h // (n_heads // n_kv_heads)): patching a k/v
receiver changes every query head sharing it. hook_q / hook_k are the projections before any q/k norm
(Gemma-3), so a patched query or key is normed as the clean one is.

`path_patch_reference` does it plainly, full forwards per sender with hooks. `path_patch` equals it up to float
error, but step 2 needs no forward per sender: with every z frozen, attention does not mix positions, so only
the residual at the receiver position changes, through the MLPs; it is propagated for all senders at once
(`_sweep`). Blocks that norm a sublayer's output before adding it to the residual (Gemma-3's ln1_post /
ln2_post, `scoring.post_norm`) are modelled by this residual sweep. Step 3 recomputes only the positions from
the receiver position to END (`path_patching_window`); architectures that module does not model fall back to
hooked forwards from the first receiver layer, `batch_heads` senders at a time (`_step3_generic`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch
from jaxtyping import Float
from tqdm.auto import tqdm

from ioi_utils.models import hook_names
from ioi_utils.prompts.data import IOIDataset
from ioi_utils.mechanisms import path_patching_window, scoring
from ioi_utils.mechanisms.scoring import LOGITS, Head, Receivers

SWEEP_ROWS = 16384  # most (sender, prompt) rows the fast path propagates at once


# ---------------------------------------------------------------- path patching: reference


def _freeze_hooks(model, clean_z: Mapping[int, torch.Tensor], corrupt_z: Mapping[int, torch.Tensor],
                  sender: Head) -> list:
    """hook_z hooks: every head's z at its clean value, the sender's from the corrupt run (all positions)."""
    def fn(z, hook, layer):
        z = clean_z[layer].clone()
        if layer == sender[0]:
            z[:, :, sender[1]] = corrupt_z[layer][:, :, sender[1]]
        return z

    return [(hook_names.z(l), lambda z, hook, l=l: fn(z, hook, l)) for l in range(model.cfg.n_layers)]


def _patch_sites_hooks(model, ds: IOIDataset, r: Receivers, values: Mapping[str, torch.Tensor], reps: int) -> list:
    """Hooks writing values[site] ([reps * batch, n_idx, d_head]) into the receivers' inputs at r.position."""
    dev = scoring.device(model)
    rows, pos = scoring.rows_at(ds, r.position, reps, dev)
    sites = scoring.receiver_sites(model, r)

    def put(act, hook, site):
        idx = torch.tensor(sites[site], device=dev)
        act[rows[:, None], pos[:, None], idx] = values[site].to(act.dtype)
        return act

    return [(s, lambda act, hook, s=s: put(act, hook, s)) for s in sites]


@torch.no_grad()
def _all_z(model, ds: IOIDataset) -> dict[int, torch.Tensor]:
    """hook_z of every layer: layer -> [batch, seq, n_heads, d_head]."""
    cache = scoring.cache(model, ds.tokens, {hook_names.z(l) for l in range(model.cfg.n_layers)})
    return {l: cache[hook_names.z(l)] for l in range(model.cfg.n_layers)}


def _validate(model, clean: IOIDataset, corrupt: IOIDataset, receivers: Receivers,
              senders: Sequence[Head] | None) -> list[Head]:
    """Check the arguments of path patching; return the senders as a list."""
    scoring.check_pair(clean, corrupt)
    scoring.check_receivers(model, clean, receivers)
    return scoring.heads(model, senders, "sender")


@torch.no_grad()
def path_patch_reference(model, clean: IOIDataset, corrupt: IOIDataset, receivers: Receivers = LOGITS,
                         senders: Sequence[Head] | None = None, batch_heads: int = 1,
                         progress: bool = False) -> Float[torch.Tensor, "n_layers n_heads"]:
    """Path patching done plainly, full forwards per sender with hooks: [n_layers, n_heads] (see path_patch).

    batch_heads is accepted for signature parity and ignored (one sender per forward).
    """
    senders = _validate(model, clean, corrupt, receivers, senders)
    dev = scoring.device(model)
    clean_z, corrupt_z = _all_z(model, clean), _all_z(model, corrupt)
    ld_clean = scoring.ld_from_logits(model(clean.tokens.to(dev)), clean).mean().item()
    out = torch.zeros(model.cfg.n_layers, model.cfg.n_heads)
    rows, pos = scoring.rows_at(clean, receivers.position, 1, dev)
    for s in tqdm(senders, desc="path patching (reference)", disable=not progress, leave=False):
        freeze = _freeze_hooks(model, clean_z, corrupt_z, s)
        if not receivers.heads:
            logits = model.run_with_hooks(clean.tokens.to(dev), fwd_hooks=freeze)
        else:
            got = {}
            sites = scoring.receiver_sites(model, receivers)

            def grab(act, hook, site):
                got[site] = act[rows, pos][:, sites[site]].clone()  # [batch, n_idx, d_head]
                return act

            model.run_with_hooks(clean.tokens.to(dev), fwd_hooks=freeze + [
                (site, lambda a, hook, site=site: grab(a, hook, site)) for site in sites])
            logits = model.run_with_hooks(clean.tokens.to(dev),
                                          fwd_hooks=_patch_sites_hooks(model, clean, receivers, got, 1))
        out[s] = (scoring.ld_from_logits(logits, clean).mean().item() - ld_clean) / ld_clean
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


@dataclass
class Forwards:
    """One clean and one corrupt forward, kept whole, from which every step of a discovery reads.

    Path patching reads, per step, the clean run's residuals and z and the corrupt run's z at the receiver
    position (`_frozen`), the clean logit difference, and for the windowed step 3 the clean keys and values
    (`path_patching_window.clean_kv`). Reading them from these two forwards instead of from new ones gives the
    same tensors (the same forward on the same batch) and saves two to four forwards per step.
    """

    clean: IOIDataset
    corrupt: IOIDataset
    acts: dict[str, Float[torch.Tensor, "batch seq ..."]]  # clean run, by hook name
    corrupt_z: dict[int, Float[torch.Tensor, "batch seq n_heads d_head"]]  # corrupt run, by layer

    def at(self, position: str, names: Sequence[str]) -> dict[str, Float[torch.Tensor, "batch ..."]]:
        """Clean activations at one position of each prompt: name -> [batch, ...] (as scoring.at_position)."""
        rows, pos = scoring.rows_at(self.clean, position, 1, self.acts[names[0]].device)
        return {n: self.acts[n][rows, pos] for n in names}

    def ld_clean(self, model) -> Float[torch.Tensor, "batch"]:
        """The clean per-prompt score [batch] at the task's readout positions (as scoring.run_ld)."""
        resid = scoring.readout(self.acts[hook_names.final_resid(model)], self.clean, torch.arange(len(self.clean)))
        return scoring.ld_from_resid(model, resid.view(1, *resid.shape), self.clean)[0]


def _frozen_names(model) -> list[str]:
    """The clean hooks the fast path reads: every layer's residual before and after attention, z, the last output."""
    n_l = model.cfg.n_layers
    return ([hook_names.resid(l, w) for l in range(n_l) for w in ("pre", "mid")]
            + [hook_names.z(l) for l in range(n_l)] + [hook_names.resid(n_l - 1, "post")])


@torch.no_grad()
def forwards(model, clean: IOIDataset, corrupt: IOIDataset) -> Forwards:
    """The two forwards (`Forwards`) every path-patching step on this pair of datasets can read from."""
    scoring.check_pair(clean, corrupt)
    names = set(_frozen_names(model))
    if path_patching_window.windowed_supported(model):
        names |= path_patching_window.clean_kv_names(model, 0)
    acts = scoring.activations(model, clean, names)
    z = scoring.activations(model, corrupt, {hook_names.z(l) for l in range(model.cfg.n_layers)})
    return Forwards(clean, corrupt, acts, {l: z[hook_names.z(l)] for l in range(model.cfg.n_layers)})


def _frozen(model, clean: IOIDataset, corrupt: IOIDataset, position: str, fw: Forwards | None = None) -> _Frozen:
    """Read what the fast path needs at one position: two forwards, or none when `fw` holds them."""
    n_l = model.cfg.n_layers
    last = hook_names.resid(n_l - 1, "post")
    names = _frozen_names(model)
    zs = [hook_names.z(l) for l in range(n_l)]
    if fw is None:
        c = scoring.at_position(model, clean, position, names)
        x = scoring.at_position(model, corrupt, position, zs)
    else:
        c = fw.at(position, names)
        rows, pos = scoring.rows_at(clean, position, 1, c[last].device)
        x = {hook_names.z(l): fw.corrupt_z[l][rows, pos] for l in range(n_l)}
    return _Frozen([c[hook_names.resid(l, "pre")] for l in range(n_l)],
                   [c[hook_names.resid(l, "mid")] for l in range(n_l)], [c[hook_names.z(l)] for l in range(n_l)],
                   [x[hook_names.z(l)] - c[hook_names.z(l)] for l in range(n_l)], c[last])


def _mlp_add(block, x: torch.Tensor) -> torch.Tensor:
    """What a block's MLP adds to the residual x [..., d_model]: mlp(ln2(x)), post-normed where the block does."""
    out = block.mlp(block.ln2(x))
    post = scoring.post_norm(block, "ln2_post")
    return out if post is None else post(out)


def _sender_resid_mid(model, fr: _Frozen, layer: int, heads: list[int]) -> torch.Tensor:
    """The residual after a layer's attention, row i with head heads[i]'s z corrupted and every other z clean:
    [len(heads), batch, d_model]. The attention output is linear in z (z @ W_O + b_O), so the corrupted head
    shifts it by dz @ W_O; a post-attention norm (Gemma's ln1_post) is applied to the whole output, so there
    the normed clean output is replaced by the normed shifted one."""
    block = model.blocks[layer]
    w_o = block.attn.W_O[heads]  # [k, d_head, d_model]
    delta = torch.einsum("bkd,kdm->kbm", fr.dz[layer][:, heads], w_o)  # [k, batch, d_model]
    post = scoring.post_norm(block, "ln1_post")
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
    for chunk in tqdm(scoring.chunks(senders, max(1, SWEEP_ROWS // len(clean))), desc="path patching",
                      disable=not progress, leave=False):
        _sweep(model, fr, chunk, [n_l], lambda j, x: out.append(scoring.ld_from_resid(model, x, clean)))
    return torch.cat(out)


@torch.no_grad()
def _receiver_values(model, fr: _Frozen, senders: list[Head], r: Receivers,
                     progress: bool = False) -> dict[str, torch.Tensor]:
    """Step 2: each receiver input at r.position with one sender patched: site -> [n_senders, batch, n_idx, d_head]."""
    sites = scoring.receiver_sites(model, r)
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

    chunks = scoring.chunks(senders, max(1, SWEEP_ROWS // fr.resid_pre[0].shape[0]))
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

    clean: Float[torch.Tensor, "batch"]  # clean logit difference
    patched: Float[torch.Tensor, "n_layers n_heads batch"]  # a head not patched holds the clean values
    senders: tuple[Head, ...]

    def effect(self) -> Float[torch.Tensor, "n_layers n_heads"]:
        """[n_layers, n_heads] relative change of the mean logit difference (0 for heads not patched)."""
        m = self.clean.mean()
        return (self.patched.mean(-1) - m) / m

    def interval(self, level: float = 0.95, n_boot: int = 1000, seed: int = 0) -> Float[torch.Tensor, "2 n_layers n_heads"]:
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
                       progress: bool = False, fw: Forwards | None = None) -> PathPatchPrompts:
    """`path_patch` before the mean over prompts (see there for the method): per-prompt logit differences.
    fw: the clean and corrupt forwards of these datasets (`forwards`), read instead of running new ones."""
    senders = _validate(model, clean, corrupt, receivers, senders)
    scoring.chunks([], batch_heads)  # raises on batch_heads < 1 whichever route step 3 takes
    if fw is not None and (fw.clean is not clean or fw.corrupt is not corrupt):
        raise ValueError("fw holds the forwards of other datasets")
    if not receivers.heads:
        fr = _frozen(model, clean, corrupt, "END", fw)
        ld_clean = scoring.ld_from_resid(model, fr.final, clean)  # [batch]
        lds = _direct_fast(model, clean, fr, senders, progress) if senders else None
    else:
        last = max(l for l, _ in receivers.heads)
        senders = [s for s in senders if s[0] < last]
        ld_clean = scoring.run_ld(model, clean)[0] if fw is None else fw.ld_clean(model)  # [batch]
        lds = None
        if senders:
            fr = _frozen(model, clean, corrupt, receivers.position, fw)
            values = _receiver_values(model, fr, senders, receivers, progress)  # site -> [n_senders, batch, n_idx, d_head]
            lds = path_patching_window.step3_windowed(model, clean, receivers, senders, values, ld_clean, progress,
                                                      None if fw is None else fw.acts)
            if lds is None:
                lds = _step3_generic(model, clean, receivers, senders, values, batch_heads, progress)
    ld_clean = ld_clean.float().cpu()
    patched = ld_clean.expand(model.cfg.n_layers, model.cfg.n_heads, -1).clone()
    for i, s in enumerate(senders if lds is not None else []):
        patched[s] = lds[i].float().cpu()
    return PathPatchPrompts(ld_clean, patched, tuple(senders))


def path_patch(model, clean: IOIDataset, corrupt: IOIDataset, receivers: Receivers = LOGITS,
               senders: Sequence[Head] | None = None, batch_heads: int = 8,
               progress: bool = False) -> Float[torch.Tensor, "n_layers n_heads"]:
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
    the clean run's cached keys and values (path_patching_window.step3_windowed). Architectures it does not
    model fall back to hooked forwards from the first receiver layer, `batch_heads` senders at a time
    (_step3_generic).
    `path_patch_prompts` keeps the per-prompt values (for intervals).
    """
    return path_patch_prompts(model, clean, corrupt, receivers, senders, batch_heads, progress).effect()


@torch.no_grad()
def _step3_generic(model, clean: IOIDataset, r: Receivers, senders: list[Head],
                   values: Mapping[str, torch.Tensor], batch_heads: int, progress: bool) -> torch.Tensor:
    """Step 3 by hooked forwards from the first receiver layer, batch_heads senders at a time: per-prompt logit
    diff [n_senders, batch]."""
    first, out = min(l for l, _ in r.heads), []
    for chunk in tqdm(scoring.chunks(list(range(len(senders))), batch_heads), desc="path patching (generic step 3)",
                      disable=not progress, leave=False):
        idx = torch.tensor(chunk)
        vals = {site: v[idx.to(v.device)].flatten(0, 1) for site, v in values.items()}
        hooks = _patch_sites_hooks(model, clean, r, vals, len(chunk))
        out.append(scoring.run_ld(model, clean, len(chunk), hooks, start=first))
    return torch.cat(out)

