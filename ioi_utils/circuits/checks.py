"""Wang et al.'s checks of a circuit: how much of the model's behaviour it carries, and whether it is complete and
minimal.

Method. A circuit C is run alone by mean-ablating every head outside it (Wang's knockout: each ablated head's
output replaced, position by position, by its mean over the p_ABC prompts of the same template,
`knockouts.template_means`); its logit difference F(C) is compared with the model's own F(M) on held-out prompts.

- `faithfulness`: F(C) and F(M) with per-prompt values, read as F(C)/F(M) with a bootstrap interval (`Faithfulness`).
- `faithfulness_curve`: F(C)/F(M) of the first k heads of a ranking, k = 0..n: how faithfulness builds up.
- `completeness`: for sets K (each class, the empty set, random halves), F(C \\ K) against F(M \\ K); a complete
  circuit loses as much as the model when K is knocked out of both.
- `minimality`: for each head v, |F(C \\ (K ∪ {v})) - F(C \\ K)| with K the rest of v's class, against a share of
  |F(M)| (Wang et al. use 1%).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Sequence

import torch
from jaxtyping import Float

from ioi_utils.storage import checked_files
from ioi_utils.measures import metrics
from ioi_utils.circuits import Circuit
from ioi_utils.mechanisms import knockouts
from ioi_utils.mechanisms.scoring import Head, all_heads


@checked_files.register_type  # memos hold it (results.memo stores values without code)
@dataclass
class Faithfulness:
    """F(M), F(C) under mean ablation, the two faithfulness readings, and (optionally) per-prompt values."""

    f_model: float
    f_circuit: float
    per_prompt_model: torch.Tensor | None = None  # [batch] logit diff of the full model under the knockout hooks
    per_prompt_circuit: torch.Tensor | None = None  # [batch] logit diff of the circuit alone

    @property
    def ratio(self) -> float:
        """F(C)/F(M) (see metrics.faithfulness)."""
        return metrics.faithfulness(self.f_circuit, self.f_model, "ratio")

    @property
    def wang(self) -> float:
        """1 - |F(M) - F(C)| / |F(M)|."""
        return metrics.faithfulness(self.f_circuit, self.f_model, "wang")

    def interval(self, level: float = 0.95, n_boot: int = 1000, seed: int = 0) -> tuple[float, float]:
        """Bootstrap interval of F(C)/F(M) over prompts (ratio of means of paired per-prompt values)."""
        if self.per_prompt_model is None or self.per_prompt_circuit is None:
            raise ValueError("no per-prompt values: compute with checks.faithfulness(...) to get an interval")
        return metrics.bootstrap_ci((self.per_prompt_circuit, self.per_prompt_model), metrics.ratio_of_means,
                                    n_boot=n_boot, level=level, seed=seed)


def _model_minus(model, heads: Sequence[Head]) -> dict[Head, tuple[str, ...]]:
    """A knockout spec keeping every head at every position except `heads` (M \\ K)."""
    drop = {tuple(h) for h in heads}
    return {h: knockouts.ALL_POSITIONS for h in all_heads(model) if h not in drop}


def faithfulness(model, clean, abc, circuit: Circuit, means=None,
                 f_model: Float[torch.Tensor, "batch"] | None = None) -> Faithfulness:
    """Mean-ablation faithfulness of a circuit: F(C) with everything outside it ablated vs F(M). `means` (the
    template means of `abc`) and `f_model` (F(M) per prompt of this model on `clean`, e.g. from an earlier call's
    `per_prompt_model`) are computed when not given: a second circuit of the same model needs neither again."""
    circuit.validate(model.cfg.n_layers, model.cfg.n_heads)
    means = means if means is not None else knockouts.template_means(model, abc)
    f_m = (f_model if f_model is not None
           else knockouts.circuit_logit_diff(model, clean, abc, _model_minus(model, []), means, per_prompt=True))
    f_c = knockouts.circuit_logit_diff(model, clean, abc, circuit.positions(), means, per_prompt=True)
    return Faithfulness(f_m.mean().item(), f_c.mean().item(), f_m, f_c)


def faithfulness_curve(model, clean, abc, ranked: Sequence[Head], means=None) -> list[dict]:
    """F(C)/F(M) of the first k heads of `ranked` (kept at every position), for k = 0..len(ranked): how
    faithfulness builds up as heads are added in order of their effect. One knockout forward per k."""
    means = means if means is not None else knockouts.template_means(model, abc)
    f_m = knockouts.circuit_logit_diff(model, clean, abc, _model_minus(model, []), means)
    out = []
    for k in range(len(ranked) + 1):
        f_c = knockouts.circuit_logit_diff(model, clean, abc, {h: knockouts.ALL_POSITIONS for h in ranked[:k]}, means)
        out.append({"heads": k, "added": tuple(ranked[k - 1]) if k else None, "faithfulness": f_c / f_m})
    return out


def completeness(model, clean, abc, circuit: Circuit, n_random: int = 3, seed: int = 0, means=None) -> list[dict]:
    """Wang's completeness check: for sets K (each class, the empty set, random halves), F(C\\K) vs F(M\\K)."""
    means = means if means is not None else knockouts.template_means(model, abc)
    rng = random.Random(seed)
    sets = {"empty": []} | {c: hs for c, hs in circuit.classes.items() if hs}
    for i in range(n_random):
        sets[f"random half {i + 1}"] = [h for h in circuit.heads if rng.random() < 0.5]
    rows = []
    for name, k in sets.items():
        f_c = knockouts.circuit_logit_diff(model, clean, abc, circuit.without(k).positions(), means)
        f_m = knockouts.circuit_logit_diff(model, clean, abc, _model_minus(model, k), means)
        rows.append({"K": name, "heads": len(k), "F(C\\K)": f_c, "F(M\\K)": f_m, "gap": abs(f_c - f_m)})
    return rows


def minimality(model, clean, abc, circuit: Circuit, threshold: float = 0.01, means=None) -> dict[Head, dict]:
    """Wang's minimality: for each head v, |F(C\\(K∪{v})) - F(C\\K)| with K = the rest of v's class.

    A head passes when that score is at least `threshold` x |F(M)| (Wang et al. use 1%).
    """
    means = means if means is not None else knockouts.template_means(model, abc)
    f_m = knockouts.circuit_logit_diff(model, clean, abc, _model_minus(model, []), means)
    out = {}
    for c, hs in circuit.classes.items():
        without_class = (knockouts.circuit_logit_diff(model, clean, abc, circuit.without(hs).positions(), means)
                         if hs else 0.0)
        for v in hs:  # K ∪ {v} is the whole class: one forward per class serves every v
            with_v = knockouts.circuit_logit_diff(model, clean, abc,
                                                  circuit.without([h for h in hs if h != v]).positions(), means)
            score = abs(with_v - without_class)
            out[v] = {"class": c, "score": score, "relative": score / abs(f_m), "passes": score >= threshold * abs(f_m)}
    return out
