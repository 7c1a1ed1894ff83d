"""A second reading beside the mechanism: the minimal faithful subset, and how much it depends on the prompts.

`admit` ranks every head by a first-order estimate of its knockout effect (`knockout_attribution`), then keeps
the shortest prefix of that ranking whose knockout (Wang's mean ablation) keeps `Thresholds.target` of F(M).
`minimal_subset` wraps it as a `circuits.Discovery`. A search of this kind drops a head and its opposite
together (a Name Mover and a Negative Name Mover cancel), which is why the mechanism itself is found by path
patching (`circuits.discover`) and this set is only a second reading. `selection_frequency` / `stable_core`
measure how much it depends on the prompts (stability selection, Meinshausen & Bühlmann 2010).
"""

from __future__ import annotations

import sys
import time
from typing import Sequence

import torch
from jaxtyping import Float
from tqdm.auto import tqdm

from ioi_utils.prompts import data
from ioi_utils.circuits import Discovery, Thresholds, circuit_of
from ioi_utils.mechanisms import knockout_attribution, knockouts
from ioi_utils.mechanisms.scoring import Head, all_heads


def _measure(model, clean, abc, means, heads: Sequence[Head], f_m: float) -> float:
    """F(C)/F(M) of a head set kept at every position (exact, forward only)."""
    ld = knockouts.circuit_logit_diff(model, clean, abc, {h: knockouts.ALL_POSITIONS for h in heads}, means)
    return ld / f_m


def _smallest_prefix(model, clean, abc, means, ranked: list[Head], f_m: float, target: float,
                     trace: list[dict]) -> int:
    """Smallest k such that the top-k of `ranked` keeps F(C)/F(M) >= target (binary search; len if none)."""
    lo, hi = 1, len(ranked)  # hi always passes or is len(ranked)
    while lo < hi:
        k = (lo + hi) // 2
        ratio = _measure(model, clean, abc, means, ranked[:k], f_m)
        trace.append({"heads": k, "faithfulness": ratio, "step": "search"})
        lo, hi = (lo, k) if ratio >= target else (k + 1, hi)
    return hi


def admit(model, clean: data.IOIDataset, abc: data.IOIDataset, t: Thresholds = Thresholds(),
          progress: bool = False) -> tuple[list[Head], list[dict], Float[torch.Tensor, "n_layers n_heads"], float]:
    """Stage 1: the smallest head set whose knockout keeps F(C)/F(M) >= t.target on these prompts.

    Coarse: from the whole model, remove the prune_fraction of kept heads with the lowest attributed
    contribution (recomputed after each removal) until max_heads remain. Fine: rank the remaining heads by
    their attribution there, binary-search the shortest prefix that reaches the target (exact forwards),
    re-rank within it and repeat until it no longer shrinks (at most search_rounds times). Returns (heads, trace, attribution of every
    head in the whole model [n_layers, n_heads], F(M)).
    """
    means = knockouts.template_means(model, abc)
    keep, trace, first, f_m, rounds = sorted(all_heads(model)), [], None, None, 0
    bar = tqdm(desc="discovery: pruning heads", disable=not progress, leave=False, file=sys.stderr)
    while True:
        ld, attr = knockout_attribution.knockout_attribution(model, clean, means, keep)
        f = ld.mean().item()
        if f_m is None:
            if abs(f) < 1e-6:
                raise ValueError(f"the model's logit difference is {f:.2g}: there is no behaviour to find a circuit for")
            f_m, first = f, attr
        ranked = sorted(keep, key=lambda h: (-attr[h].item(), h))
        trace.append({"heads": len(keep), "faithfulness": f / f_m, "step": "attribution"})
        bar.update()
        bar.set_postfix(heads=len(keep), faithfulness=f"{f / f_m:.0%}")
        if len(keep) > t.max_heads:
            keep = sorted(ranked[: max(t.max_heads, round(len(keep) * (1 - t.prune_fraction)))])
            continue
        if f / f_m < t.target:
            break  # max_heads cannot reach the target: report it as it is
        k = _smallest_prefix(model, clean, abc, means, ranked, f_m, t.target, trace)
        bar.update()
        rounds += 1
        if k >= len(keep) or rounds >= t.search_rounds:
            keep = sorted(ranked[:k])
            break
        keep = sorted(ranked[:k])
    bar.close()
    return keep, trace, first, f_m


def selection_frequency(model, clean: data.IOIDataset, abc: data.IOIDataset, t: Thresholds = Thresholds(),
                        resamples: int = 6, seed: int = 0,
                        progress: bool = False) -> Float[torch.Tensor, "n_layers n_heads"]:
    """Stability selection (Meinshausen & Bühlmann 2010): the share of `resamples` random halves of these prompts
    whose admission (`admit`) contains each head, [n_layers, n_heads]. Heads near 1 do not depend on the draw."""
    if resamples < 1 or len(clean) < 2:
        raise ValueError(f"stability selection needs resamples >= 1 and >= 2 prompts, got {resamples} and {len(clean)}")
    g, freq = torch.Generator().manual_seed(seed), torch.zeros(model.cfg.n_layers, model.cfg.n_heads)
    for _ in tqdm(range(resamples), desc="stability selection", disable=not progress, leave=False, file=sys.stderr):
        half = torch.randperm(len(clean), generator=g)[: len(clean) // 2].tolist()
        for h in admit(model, clean[half], abc[half], t)[0]:
            freq[h] += 1
    return freq / resamples


def stable_core(frequencies: Sequence[Float[torch.Tensor, "n_layers n_heads"]], share: float = 0.8) -> list[Head]:
    """Heads whose selection frequency is at least `share` in every one of several draws ([n_layers, n_heads] each)."""
    least = torch.stack(list(frequencies)).min(0).values
    return [(l, h) for l, h in torch.nonzero(least >= share).tolist()]


def minimal_subset(model, clean: data.IOIDataset, abc: data.IOIDataset, thresholds: Thresholds = Thresholds(),
                   progress: bool = False) -> Discovery:
    """A second reading, not the mechanism: the smallest head set whose knockout keeps thresholds.target of
    F(M) (`admit`), unclassified ("OTH"), with admission's trace and each head's attributed share of F(M)."""
    t0 = time.perf_counter()
    heads, trace, attr, f_m = admit(model, clean, abc, thresholds, progress)
    return Discovery(circuit_of(heads), {"attribution": attr / f_m}, thresholds, trace, time.perf_counter() - t0)
