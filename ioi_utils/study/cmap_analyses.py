"""Where the difference between two models sits, for the chapters: cross-model activation patching (CMAP) memoised
by both models' weights, the share of a fine-tuning gain a circuit carries, and how localized a change is on a
circuit, with bootstrap intervals over prompts and a layer-matched random-set control.

Localization is the share of the total |CMAP effect| that falls on a head set divided by the share of heads the
set has (1: the set carries the change like any heads). Late layers carry more of any change, so the control
draws random sets with as many heads in each layer as the circuit (`localization_control`).
"""

from __future__ import annotations

import random

import torch
from jaxtyping import Float

from ioi_utils import circuits
from ioi_utils.measures import behaviour
from ioi_utils.prompts import data
from ioi_utils.measures import metrics
from ioi_utils.storage import results
from ioi_utils.mechanisms import activation_patching, scoring


def cmap_subset(ds: data.IOIDataset, n: int) -> data.IOIDataset:
    """The first n held-out prompts (CMAP is ~one forward per head: a subset keeps it affordable)."""
    return ds[list(range(min(n, len(ds))))]


def cmap_cached(model_x, model_y, ds: data.IOIDataset, kind: str, heads=None, tags: tuple[str, str] = ("", ""),
                per_prompt: bool = False
                ) -> Float[torch.Tensor, "n_layers n_heads"] | Float[torch.Tensor, "n n_layers n_heads"]:
    """activation_patching.cmap(model_x -> model_y) memoised by both models' weights (model_y's in the key, model_x's
    fingerprint in the extra key): the map [L, H], or each prompt's [n, L, H] (per_prompt; one memo serves both).
    `tags` name the two models for a reader of the call and are not part of the key: the same pair of weights under
    other names (chapter 3's fine-tuned model is chapter 4's benign source) is computed once."""
    del tags  # names only: the weights identify the models
    effects = results.memo("cmap_per_prompt", lambda: activation_patching.cmap(model_x, model_y, ds, kind, heads=heads,
                                                                                 per_prompt=True), model_y,
                           source=results.model_fingerprint(model_x), data=ds.fingerprint(), kind=kind,
                           heads=None if heads is None else sorted(map(list, heads)))
    return effects if per_prompt else effects.mean(0)


def top_heads(effects, k: int, exclude=()) -> list[tuple[int, int]]:
    """The k heads of a [L, H] map with the largest |value|, outside `exclude`."""
    skip = {tuple(h) for h in exclude}
    order = effects.abs().flatten().argsort(descending=True).tolist()
    n_h = effects.shape[1]
    return [h for h in ((i // n_h, i % n_h) for i in order) if h not in skip][:k]


def _gap_share(ld_patched: float, ld_x: float, ld_y: float) -> float:
    """(patched - y) / (x - y); nan when x and y do not differ."""
    return float("nan") if abs(ld_x - ld_y) < 1e-6 else (ld_patched - ld_y) / (ld_x - ld_y)


def gain_share(model_x, model_y, ds: data.IOIDataset, circuit: circuits.Circuit) -> float:
    """Share of the logit-difference gap between x and y that patching x's per-head z into y at the circuit's
    (head, position) pairs recovers (Prakash et al.'s output CMAP of a circuit)."""
    if not circuit.heads:
        return float("nan")
    ld_x, ld_y = behaviour.evaluate(model_x, ds).logit_diff, behaviour.evaluate(model_y, ds).logit_diff
    return _gap_share(activation_patching.cmap_group(model_x, model_y, ds, circuit.heads,
                                                     positions=circuit.positions()), ld_x, ld_y)


def _share_of_gap(patched: torch.Tensor, ld_x: torch.Tensor, ld_y: torch.Tensor) -> torch.Tensor:
    """(mean patched - mean y) / (mean x - mean y) along the last axis ([..., n] each -> [...])."""
    return (patched.mean(-1) - ld_y.mean(-1)) / (ld_x.mean(-1) - ld_y.mean(-1))


def gain_share_interval(model_x, model_y, ds: data.IOIDataset, circuit: circuits.Circuit,
                        n_boot: int = 1000) -> tuple[float, float]:
    """95% bootstrap interval over prompts of gain_share (patched, x and y resampled on the same prompts)."""
    if not circuit.heads:
        return float("nan"), float("nan")
    ld_x, ld_y = behaviour.evaluate(model_x, ds).per_prompt, behaviour.evaluate(model_y, ds).per_prompt
    patched = activation_patching.cmap_group(model_x, model_y, ds, circuit.heads, positions=circuit.positions(),
                                             per_prompt=True)
    return metrics.bootstrap_ci((patched, ld_x, ld_y), _share_of_gap, n_boot=n_boot)


def gain_share_ceiling(model_x, model_y, ds: data.IOIDataset) -> float:
    """gain_share of every head at every position: the most z-patching can carry (it cannot carry changes of
    W_O, the MLPs or the embeddings)."""
    ld_x, ld_y = behaviour.evaluate(model_x, ds).logit_diff, behaviour.evaluate(model_y, ds).logit_diff
    return _gap_share(activation_patching.cmap_group(model_x, model_y, ds, scoring.all_heads(model_y)), ld_x, ld_y)


def localization(effects, heads) -> float:
    """(share of total |CMAP effect| on `heads`) / (share of all heads that `heads` are): 1 = not localized."""
    total = effects.abs().sum().item()
    if total == 0 or not heads:
        return float("nan")
    inside = sum(abs(effects[h].item()) for h in heads)
    return (inside / total) / (len(heads) / effects.numel())


def _localizations(maps: torch.Tensor, heads: list) -> torch.Tensor:
    """`localization` of each of a stack of maps: [n_maps, L, H] -> [n_maps]."""
    m = maps.abs()
    rows, cols = zip(*heads)
    return m[:, list(rows), list(cols)].sum(-1) / m.flatten(1).sum(-1) / (len(heads) / m[0].numel())


def _prompt_resamples(n: int, n_boot: int, seed: int) -> torch.Tensor:
    """[n_boot, n] prompt indices drawn with replacement (deterministic in seed)."""
    return torch.randint(0, n, (n_boot, n), generator=torch.Generator().manual_seed(seed))


def _basic_interval(stats: torch.Tensor, point: float) -> tuple[float, float]:
    """95% basic (pivotal) bootstrap interval (2 point - q97.5, 2 point - q2.5) from statistics [n_boot].

    Localization is made of |mean effect| per head: resampling prompts adds noise to every head's mean, which
    |.| turns into extra mass outside the circuit, so resampled localizations sit below the point estimate.
    The percentile interval would inherit that bias (on few prompts the point lies at its top edge); the basic
    interval reflects it around the point estimate instead."""
    lo, hi = torch.quantile(stats, torch.tensor([0.025, 0.975], dtype=stats.dtype)).tolist()
    return 2 * point - hi, 2 * point - lo


def localization_interval(per_prompt_effects: Float[torch.Tensor, "n n_layers n_heads"], heads, n_boot: int = 1000,
                          seed: int = 0) -> tuple[float, float]:
    """95% basic bootstrap interval over prompts of `localization` ([n, L, H] per-prompt CMAP effects, cmap_cached
    with per_prompt=True): each resample's map is the mean of its prompts' effects (see _basic_interval)."""
    heads = [tuple(h) for h in heads]
    if not heads:
        return float("nan"), float("nan")
    idx = _prompt_resamples(per_prompt_effects.shape[0], n_boot, seed)
    point = _localizations(per_prompt_effects.double().mean(0)[None], heads).item()
    return _basic_interval(_localizations(per_prompt_effects.double()[idx].mean(1), heads), point)


def localization_difference_interval(a: Float[torch.Tensor, "n n_layers n_heads"],
                                     b: Float[torch.Tensor, "n n_layers n_heads"], heads, n_boot: int = 1000,
                                     seed: int = 0) -> tuple[float, float]:
    """95% paired basic bootstrap interval (the same prompts resampled in both) of localization(a) - localization(b),
    for two [n, L, H] per-prompt CMAP maps on the same prompts (a corrupted run against a benign one)."""
    heads = [tuple(h) for h in heads]
    if not heads or a.shape != b.shape:
        raise ValueError(f"need heads and per-prompt maps of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    idx = _prompt_resamples(a.shape[0], n_boot, seed)
    loc = lambda m: _localizations(m, heads)  # noqa: E731
    point = (loc(a.double().mean(0)[None]) - loc(b.double().mean(0)[None])).item()
    return _basic_interval(loc(a.double()[idx].mean(1)) - loc(b.double()[idx].mean(1)), point)


def localization_control(effects, heads, n_draws: int = 1000, seed: int = 0) -> tuple[float, float]:
    """The localization of random head sets of the circuit's size drawn within the circuit's layers (a control:
    late layers may carry more |effect| whatever the heads): (mean, 95th percentile) over n_draws sets."""
    heads = [tuple(h) for h in heads]
    if not heads:
        return float("nan"), float("nan")
    rng = random.Random(seed)
    layers = [l for l, _ in heads]
    pool = [(l, h) for l in range(effects.shape[0]) for h in range(effects.shape[1])]
    by_layer = {l: [p for p in pool if p[0] == l] for l in set(layers)}
    vals = []
    for _ in range(n_draws):
        draw: set = set()
        for l in layers:  # one random head per circuit head, from the same layer, without repeats
            free = [p for p in by_layer[l] if p not in draw]
            draw.add(rng.choice(free))
        vals.append(localization(effects, sorted(draw)))
    vals.sort()
    return sum(vals) / len(vals), vals[int(0.95 * (len(vals) - 1))]
