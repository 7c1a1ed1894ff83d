"""Knockout attribution: a first-order estimate of every head's mean-ablation knockout effect at once
(attribution patching, Nanda 2023 / Syed et al. 2023, applied to Wang et al.'s knockout of `knockouts`).

A head h's output is mean + a_h (z - mean) with a_h = 1 for kept heads and 0 for ablated ones, at every
position (means: layer -> [batch, seq, n_heads, d_head], e.g. `knockouts.template_means`). The metric is the
mean logit difference logit(IO) - logit(S) at END (or the dataset's own score); the attribution of a head is
d(mean logit diff)/d a_h, i.e. sum over prompts and positions of (z - mean) . dLD/dz. For a kept head it
estimates what ablating it would cost, for an ablated head what keeping it would add. One forward and backward
per `batch_size` prompts, the model's weights taking no gradient meanwhile (`_frozen_weights`).

`knockout_attribution(model, clean, means, keep)` returns ([batch] logit diff of the model with every head
outside `keep` mean-ablated at every position, [n_layers, n_heads] the attribution of every head).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Mapping, Sequence

import torch
from jaxtyping import Float

from ioi_utils.models import hook_names
from ioi_utils.prompts.data import IOIDataset
from ioi_utils.mechanisms import scoring
from ioi_utils.mechanisms.scoring import Head


def _scaled_z_hooks(means: Mapping[int, torch.Tensor], alpha: Sequence[torch.Tensor], rows: slice) -> list:
    """hook_z hooks giving mean + alpha * (z - mean) per head (alpha[l]: [n_heads]) on prompts `rows`."""
    def fn(z, hook, layer):
        m = means[layer][rows].to(z.device, z.dtype)
        return m + alpha[layer].to(z.dtype).view(1, 1, -1, 1) * (z - m)

    return [(hook_names.z(l), lambda z, hook, l=l: fn(z, hook, l)) for l in range(len(alpha))]


def knockout_attribution(model, clean: IOIDataset,
                         means: Mapping[int, Float[torch.Tensor, "batch seq n_heads d_head"]], keep: Sequence[Head],
                         batch_size: int = 64) -> tuple[Float[torch.Tensor, "batch"], Float[torch.Tensor, "n_layers n_heads"]]:
    """Knockout with attribution: ([batch] logit diff of the model with every head outside `keep` mean-ablated at
    every position, [n_layers, n_heads] first-order change of the mean logit diff per head if its z were scaled
    from its mean (0) to its clean value (1), at the current knockout).

    A head h's output is mean + a_h (z - mean) with a_h = 1 for kept heads and 0 for ablated ones; the second
    output is d(mean logit diff)/d a_h, i.e. sum over prompts and positions of (z - mean) . dLD/dz. For a kept
    head it estimates what ablating it would cost, for an ablated head what keeping it would add (attribution
    patching, Nanda 2023 / Syed et al. 2023, applied to the mean-ablation knockout). One forward and backward.
    """
    n_l, n_h, dev = model.cfg.n_layers, model.cfg.n_heads, scoring.device(model)
    kept = {tuple(h) for h in scoring.heads(model, keep, "kept head")}
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
    n_l, dev = model.cfg.n_layers, scoring.device(model)
    last = hook_names.resid(n_l - 1, "post")
    tokens = clean.tokens[rows].to(dev)  # [b, seq]
    alpha = [init[l].clone().requires_grad_(True) for l in range(n_l)]
    got = {}

    def grab(resid, hook):
        got["end"] = scoring.readout(resid, clean, torch.arange(len(clean))[rows])  # [b, (k,) d_model]
        raise scoring.Stop

    with torch.enable_grad():
        try:
            model.run_with_hooks(tokens, fwd_hooks=_scaled_z_hooks(means, alpha, rows) + [(last, grab)])
        except scoring.Stop:
            pass
        ld = scoring.ld_from_resid(model, got["end"], clean, rows)  # [b]
        g = torch.autograd.grad(ld.sum(), alpha)
    grad += torch.stack(g).cpu()
    return ld.detach().float().cpu()

