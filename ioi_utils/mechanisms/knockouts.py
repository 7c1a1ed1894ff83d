"""Mean ablation (Wang et al.'s knockout) of heads outside a circuit, and of MLPs.

An ablated activation is replaced, position by position, by its mean over the p_ABC prompts of the same template
(p_ABC: the same templates, places and objects with three fresh distinct names at IO, S1 and S2,
`data.make_abc_dataset`; `template_means` is the one helper serving heads and MLPs). The metric is the logit
difference logit(IO) - logit(S) at END of the ablated model (or the dataset's own score), its forward stopped at
the final residual.

- `circuit_logit_diff(model, clean, abc, circuit)`: the mean logit difference of the model reduced to a circuit:
  every (head, position) the circuit does not claim has its z mean-ablated (MLPs are never ablated). The circuit
  maps a head to the position names it keeps ("END", "S2", "S1+1", ... or "ALL": `ALL_POSITIONS`). A float, or
  per_prompt the [batch] values on the CPU. `run_with_circuit` gives that knockout's END logits [batch, vocab].
- `template_means(model, abc)`: layer -> [batch, seq, ...] (hook_z: [batch, seq, n_heads, d_head]), row i the
  mean over the ABC prompts that share prompt i's template, position by position; per_template=True (MLPs,
  hook="hook_mlp_out"): [n_templates, seq, ...] indexed by template id.
- `mlp_knockout(model, clean, abc)`: [n_groups] mean logit diff on clean when the MLPs of a group of layers
  (default: each layer alone; `layer_groups` cuts the layers into k consecutive groups) have their output
  (blocks.{l}.hook_mlp_out, every position) replaced by its per-template mean over abc. The unablated value is
  `scoring.full_logit_diff(model, clean)`.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from jaxtyping import Bool, Float
from tqdm.auto import tqdm

from ioi_utils.models import hook_names
from ioi_utils.prompts.data import TEMPLATES, IOIDataset
from ioi_utils.mechanisms import scoring
from ioi_utils.mechanisms.scoring import Head

ALL_POSITIONS: tuple[str, ...] = ("ALL",)  # a knockout spec that keeps a head at every position


# ---------------------------------------------------------------- heads: mean ablation (circuit knockout)


@torch.no_grad()
def template_means(model, abc: IOIDataset, batch_size: int = 64, hook: str = "attn.hook_z",
                   per_template: bool = False
                   ) -> dict[int, Float[torch.Tensor, "batch seq ..."] | Float[torch.Tensor, "n_templates seq ..."]]:
    """Wang et al.'s per-template mean over p_ABC of one hook of every layer (the one helper serving heads and
    MLPs): layer -> the mean of blocks.{layer}.{hook} over the ABC prompts of each template.

    - per_template=False (heads, the default hook_z): [batch, seq, ...] (hook_z: [batch, seq, n_heads, d_head]);
      row i holds the mean over the ABC prompts that share prompt i's template, position by position. Should
      one template tokenize to different positions, prompts are grouped by template and positions.
    - per_template=True (MLPs, hook="hook_mlp_out"): [n_templates, seq, ...] indexed by template id, grouped by
      template alone (rows of templates absent from abc are NaN).
    """
    names = {hook_names.block(l, hook) for l in range(model.cfg.n_layers)}
    parts = [scoring.cache(model, abc.tokens[i : i + batch_size], names) for i in range(0, len(abc), batch_size)]
    if per_template:
        group, n_groups = abc.template_ids, len(TEMPLATES)  # [batch]
    else:
        keys = torch.stack([abc.template_ids] + [abc.positions[k] for k in sorted(abc.positions)], 1)  # [batch, 6]
        _, group = torch.unique(keys, dim=0, return_inverse=True)  # [batch]
        n_groups = int(group.max()) + 1
    means = {}
    for l in range(model.cfg.n_layers):
        z = torch.cat([p[hook_names.block(l, hook)] for p in parts])  # [batch, seq, ...]
        g = group.to(z.device)
        sums = z.new_zeros((n_groups,) + z.shape[1:]).index_add_(0, g, z)
        counts = torch.bincount(g, minlength=n_groups).to(z.dtype).view(-1, *[1] * (z.dim() - 1))
        means[l] = sums / counts if per_template else (sums / counts)[g]  # empty groups: 0 / 0 = NaN
    return means


def keep_masks(model, ds: IOIDataset,
               circuit: Mapping[Head, Sequence[str]]) -> dict[int, Bool[torch.Tensor, "batch seq n_heads"]]:
    """layer -> [batch, seq, n_heads] bool: which (prompt, position, head) keep their clean z."""
    scoring.heads(model, list(circuit), "circuit head")
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
                     means: Mapping[int, Float[torch.Tensor, "batch seq n_heads d_head"]] | None = None
                     ) -> Float[torch.Tensor, "batch vocab"]:
    """END logits [batch, vocab] of the circuit knockout (see _knockout_hooks)."""
    dev = scoring.device(model)
    logits = model.run_with_hooks(clean.tokens.to(dev), fwd_hooks=_knockout_hooks(model, clean, abc, circuit, means))
    return logits[torch.arange(len(clean), device=dev), clean.positions["END"].to(dev)]


def _knockout_hooks(model, clean: IOIDataset, abc: IOIDataset, circuit: Mapping[Head, Sequence[str]],
                    means: Mapping[int, torch.Tensor] | None = None) -> list:
    """hook_z hooks mean-ablating every (head, position) the circuit does not claim to its per-template ABC mean
    (Wang et al.'s knockout; MLPs are never ablated). The circuit maps a head to the position names it keeps
    ("END", "S2", "S1+1", ... or "ALL")."""
    scoring.check_pair(clean, abc)
    if not torch.equal(clean.template_ids, abc.template_ids):
        raise ValueError("clean and ABC prompts must share templates row by row (use data.make_abc_dataset)")
    means = template_means(model, abc) if means is None else means
    if any(tuple(means[l].shape[:2]) != tuple(clean.tokens.shape) for l in range(model.cfg.n_layers)):
        raise ValueError(f"means must be [batch, seq, ...] = {tuple(clean.tokens.shape)} (template_means of abc)")
    dev, masks = scoring.device(model), keep_masks(model, clean, circuit)

    def fn(z, hook, layer):
        return torch.where(masks[layer].to(dev)[..., None], z, means[layer].to(z.device, z.dtype))

    return [(hook_names.z(l), lambda z, hook, l=l: fn(z, hook, l)) for l in range(model.cfg.n_layers)]


def circuit_logit_diff(model, clean: IOIDataset, abc: IOIDataset, circuit: Mapping[Head, Sequence[str]],
                       means: Mapping[int, Float[torch.Tensor, "batch seq n_heads d_head"]] | None = None,
                       per_prompt: bool = False) -> float | Float[torch.Tensor, "batch"]:
    """Mean logit difference of the model reduced to a circuit by mean ablation (see _knockout_hooks), or
    the per-prompt values ([batch] float tensor on the CPU) if per_prompt. A dataset with `score` is scored by it.
    The forward stops at the final residual: only the readout positions are unembedded."""
    ld = scoring.hooked_logit_diff(model, clean, _knockout_hooks(model, clean, abc, circuit, means))  # [batch]
    return ld if per_prompt else ld.mean().item()


# ---------------------------------------------------------------- MLPs: mean ablation


def _means_for(means: torch.Tensor, ds: IOIDataset) -> torch.Tensor:
    """Per-prompt rows of per-template means, padded/cut to ds's width: [batch, seq, d_model]."""
    rows = means[ds.template_ids]  # [b, s_abc, d]
    width = ds.tokens.shape[1]
    if rows.shape[1] < width:
        rows = torch.cat([rows, rows.new_zeros(len(ds), width - rows.shape[1], rows.shape[2])], 1)
    rows = rows[:, :width]
    live = torch.arange(width)[None, :] <= ds.positions["END"][:, None]
    if rows[live].isnan().any():
        raise ValueError("the ABC dataset lacks some templates of the clean dataset (or is shorter)")
    return rows


def layer_groups(n_layers: int, k: int = 3) -> list[list[int]]:
    """0..n_layers-1 in k consecutive groups as equal as possible (empty groups dropped)."""
    bounds = [round(i * n_layers / k) for i in range(k + 1)]
    return [list(range(a, b)) for a, b in zip(bounds, bounds[1:]) if b > a]


def mlp_knockout(model, clean: IOIDataset, abc: IOIDataset,
                 means: Mapping[int, Float[torch.Tensor, "n_templates seq d_model"]] | None = None,
                 batch_size: int = 32, progress: bool = False,
                 groups: Sequence[Sequence[int]] | None = None) -> Float[torch.Tensor, "n_groups"]:
    """[n_groups] mean logit diff on clean when the MLPs of a group of layers (default: each layer alone) have
    their output (blocks.{l}.hook_mlp_out, every position) replaced by its per-template mean over abc.
    The unablated value is scoring.full_logit_diff(model, clean)."""
    if means is None:
        means = template_means(model, abc, batch_size, hook="hook_mlp_out", per_template=True)
    if set(means) != set(range(model.cfg.n_layers)):
        raise ValueError("means must map every layer 0..n_layers-1 to [n_templates, seq, d_model]")
    groups = [[l] for l in range(model.cfg.n_layers)] if groups is None else [list(g) for g in groups]
    bad = [l for g in groups for l in g if not 0 <= l < model.cfg.n_layers]
    if bad:
        raise ValueError(f"MLP layers {bad} do not exist in a model with {model.cfg.n_layers} layers")
    dev, out = scoring.device(model), torch.zeros(len(groups))
    for i, group in enumerate(tqdm(groups, desc="MLP knockout", disable=not progress, leave=False)):
        hooks = []
        for l in group:
            rows_all = _means_for(means[l], clean).to(dev)

            def ablate(act, hook, rows, m=rows_all):
                return m[rows, : act.shape[1]].to(act.dtype)  # a batch may be cut to its longest prompt

            hooks.append((hook_names.mlp_out(l), ablate))
        out[i] = scoring.full_logit_diff(model, clean, batch_size, hooks)
    return out

