"""Circuit discovery: which heads carry IOI, what each of them does, and how faithful the result is.

Method. Wang et al. (2022) found GPT-2 small's circuit by path patching backwards from the logits and sorting
heads into classes by fixed rules (a Name Mover attends END -> IO, ...). Those rules are GPT-2's: SmolLM2's
strongest head attends S2 and pushes the logit difference up by *suppressing S*, and a rule-first circuit
keeps about none of its logit difference. So discovery here is effect-first, in two stages:

1. **Admission by effect** (`admit`): start from the whole model and prune heads under Wang's knockout
   (per-template mean over p_ABC, at every position). A first-order estimate of every kept head's
   contribution (`patching.knockout_attribution`: one forward and backward) ranks them; the weakest are removed
   and the ranking is recomputed, down to `max_heads`. Then the shortest prefix of the ranking whose *measured*
   F(C)/F(M) on the discovery prompts reaches `Thresholds.target` is found by binary search (exact forwards),
   re-ranked and searched again until it no longer shrinks. Heads that push the logit difference the wrong way
   rank last (removing them raises F(C)): the circuit is what carries the behaviour.
2. **Description** (`describe`): the admitted heads are sorted into classes by Wang's measurements, restricted to
   them: path patching to the logits (direct effect) with END attention and direct logit attribution, then path
   patching into the direct heads' queries at END (S-Inhibition), into the keys/values at S2 of the heads that
   read S2 from END (S-Inhibition and S-Suppression: Induction / Duplicate Token) and into the Induction keys
   at S1+1 (Previous Token). Classes Wang did not need are added:
   S-Suppression (SS: attends S from END and writes against it) and Other (admitted, no rule describes it).

How stable the admitted set is across draws of prompts is measured, not assumed: `selection_frequency` repeats
admission on random halves of the prompts (stability selection, Meinshausen & Bühlmann 2010) and `stable_core`
keeps the heads that every draw selects almost always. They describe the circuit; they do not define it.

Admitted heads are kept at every position (our choice: the class positions of Wang's convention are a
GPT-2 finding, and a head's role must be known before its positions can be); `Circuit.everywhere` says so.
MLPs are never ablated (Wang's convention); their role is measured separately (`attribution.mlp_knockout`).
Faithfulness, completeness and minimality are meant to be measured on prompts the discovery did not see.
"""

from __future__ import annotations

import random
import sys
import time
from dataclasses import dataclass, field
from typing import Sequence

import torch
from tqdm.auto import tqdm

from . import attribution, data, metrics, patching, results
from .patching import Head, Receivers, all_heads

CLASSES: dict[str, str] = {
    "NM": "Name Mover", "SS": "S-Suppression", "NNM": "Negative Name Mover", "BNM": "Backup Name Mover",
    "SIN": "S-Inhibition", "IND": "Induction", "DT": "Duplicate Token", "PT": "Previous Token", "OTH": "Other",
}
# what each class does, as the book explains it (GPT-2's classes from Wang et al.; SS and OTH are ours)
CLASS_RULES: dict[str, str] = {
    "NM": "direct effect raising the logit difference; attends END -> IO more than END -> S",
    "SS": "direct effect raising the logit difference; attends END -> S more than END -> IO (writes against S)",
    "NNM": "direct effect lowering the logit difference; attends END -> IO",
    "BNM": "no strong direct effect, but attends END -> IO and writes IO over S (positive DLA)",
    "SIN": "acts through the direct heads' queries at END; attends END -> S2",
    "IND": "acts through the keys/values at S2 of the heads that read S2 (SIN, SS); induction above duplicate-token score",
    "DT": "acts through the keys/values at S2 of the heads that read S2 (SIN, SS); duplicate-token score >= induction",
    "PT": "acts through the Induction keys at S1+1; attends S1+1 -> S1",
    "OTH": "admitted by its effect on the knockout; none of the rules above describes it",
}
# positions a head of each class keeps in a knockout (Wang et al. / ARENA convention; SS like NM, OTH everywhere)
CLASS_POSITIONS: dict[str, tuple[str, ...]] = {
    "NM": ("END",), "SS": ("END",), "NNM": ("END",), "BNM": ("END",), "SIN": ("END",),
    "IND": ("S2",), "DT": ("S2",), "PT": ("S1+1",), "OTH": patching.ALL_POSITIONS,
}


@results.register_type  # memos hold it (results.memo stores values without code)
@dataclass
class Circuit:
    """Heads per class; kept at their class positions in a knockout, or at every position if `everywhere`."""

    classes: dict[str, list[Head]] = field(default_factory=lambda: {c: [] for c in CLASSES})
    everywhere: bool = False

    def __post_init__(self) -> None:
        unknown = set(self.classes) - set(CLASSES)
        if unknown:
            raise ValueError(f"unknown head classes {sorted(unknown)}; known: {', '.join(CLASSES)}")
        self.classes = {c: sorted(tuple(h) for h in self.classes.get(c, [])) for c in CLASSES}

    @property
    def heads(self) -> list[Head]:
        """Every head of the circuit, sorted."""
        return sorted({h for hs in self.classes.values() for h in hs})

    def class_of(self, head: Head) -> str | None:
        """The class a head belongs to (first match), or None."""
        return next((c for c, hs in self.classes.items() if tuple(head) in hs), None)

    def positions(self) -> dict[Head, tuple[str, ...]]:
        """Head -> positions it keeps in a knockout (union over its classes; every position if everywhere)."""
        if self.everywhere:
            return {h: patching.ALL_POSITIONS for h in self.heads}
        out: dict[Head, set[str]] = {}
        for c, hs in self.classes.items():
            for h in hs:
                out.setdefault(h, set()).update(CLASS_POSITIONS[c])
        return {h: ("ALL",) if "ALL" in p else tuple(sorted(p)) for h, p in out.items()}

    def without(self, heads: Sequence[Head]) -> "Circuit":
        """The circuit with some heads removed."""
        drop = {tuple(h) for h in heads}
        return Circuit({c: [h for h in hs if h not in drop] for c, hs in self.classes.items()}, self.everywhere)

    def validate(self, n_layers: int, n_heads: int) -> "Circuit":
        """Raise if a head does not exist in a model of this shape."""
        bad = [h for h in self.heads if not (0 <= h[0] < n_layers and 0 <= h[1] < n_heads)]
        if bad:
            raise ValueError(f"circuit names heads that do not exist in a {n_layers}x{n_heads} model: {bad}")
        return self

    def __str__(self) -> str:
        return "\n".join(f"{CLASSES[c]:>20} ({c}): " + (", ".join(f"{l}.{h}" for l, h in hs) or "-")
                         for c, hs in self.classes.items())

    def to_json(self) -> dict[str, list[list[int]]]:
        """A JSON-able dict (classes, plus "everywhere": [[1]] when heads are kept at every position)."""
        out = {c: [list(h) for h in hs] for c, hs in self.classes.items()}
        return out | ({"everywhere": [[1]]} if self.everywhere else {})

    @classmethod
    def from_json(cls, d: dict) -> "Circuit":
        """Inverse of to_json."""
        return cls({c: [tuple(h) for h in hs] for c, hs in d.items() if c != "everywhere"}, bool(d.get("everywhere")))


def _heads(spec: str) -> list[Head]:
    """'9.9 10.0' -> [(9, 9), (10, 0)]."""
    return [tuple(int(x) for x in s.split(".")) for s in spec.split()]


# Wang et al. (2022)'s IOI circuit in GPT-2 small, as used by ARENA and ACDC (26 heads).
WANG_GPT2_CIRCUIT = Circuit({
    "NM": _heads("9.9 10.0 9.6"),
    "BNM": _heads("10.10 10.6 10.2 10.1 11.2 9.7 9.0 11.9"),
    "NNM": _heads("10.7 11.10"),
    "SIN": _heads("7.3 7.9 8.6 8.10"),
    "IND": _heads("5.5 5.8 5.9 6.9"),
    "DT": _heads("0.1 0.10 3.0"),
    "PT": _heads("2.2 4.11"),
})


@results.register_type  # memos hold it (results.memo stores values without code)
@dataclass(frozen=True)
class Thresholds:
    """Every threshold of circuit discovery. Effects are relative changes of the clean logit difference."""

    # admission (our choices)
    target: float = 0.9  # keep the smallest circuit whose F(C)/F(M) on the discovery prompts is >= this
    max_heads: int = 30  # ... and never more heads than this (pruning goes on until it is reached)
    prune_fraction: float = 0.5  # share of the kept heads removed per attribution step while above max_heads
    search_rounds: int = 2  # re-rank-and-search rounds below max_heads (each: one attribution, ~log2(k) forwards)
    n_describe: int = 100  # description (path patching) uses the first this many discovery prompts (all if fewer)
    # description (Wang et al.'s measurements; the values are ours)
    direct: float = 0.02  # |path patching to the logits| >= 2%: the head writes to the logits directly
    attention: float = 0.1  # END -> IO (NM, NNM) or END -> S (SS) attention at least this
    s_inhibition: float = 0.02  # SIN: patching into the direct heads' queries at END lowers the logit diff >= 2%
    s_inhibition_attention: float = 0.1  # SIN: attends END -> S2 at least this much
    duplicate_induction: float = 0.02  # IND/DT: patching into the SIN/SS keys/values at S2 lowers it by >= 2%
    previous_token: float = 0.02  # PT: patching into the IND keys at S1+1 lowers it by >= 2%
    previous_token_attention: float = 0.2  # PT: attends S1+1 -> S1 at least this much
    backup_attention: float = 0.2  # BNM: attends END -> IO at least this much and has DLA > 0

    def __post_init__(self) -> None:
        if (not 0 < self.target <= 2 or self.max_heads < 1 or not 0 < self.prune_fraction < 1 or self.search_rounds < 1
                or self.n_describe < 1):
            raise ValueError(f"bad discovery thresholds: need 0 < target <= 2, max_heads >= 1, "
                             f"0 < prune_fraction < 1, search_rounds >= 1, n_describe >= 1; got {self}")


@results.register_type  # memos hold it (results.memo stores values without code)
@dataclass
class Discovery:
    """The discovered circuit, the maps it was described from, and the pruning trajectory."""

    circuit: Circuit
    maps: dict[str, torch.Tensor]  # name -> [n_layers, n_heads]
    thresholds: Thresholds
    trace: list[dict] = field(default_factory=list)  # per pruning step: heads, faithfulness on discovery prompts
    seconds: float = 0.0


def _measure(model, clean, abc, means, heads: Sequence[Head], f_m: float) -> float:
    """F(C)/F(M) of a head set kept at every position (exact, forward only)."""
    ld = patching.circuit_logit_diff(model, clean, abc, {h: patching.ALL_POSITIONS for h in heads}, means)
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
          progress: bool = False) -> tuple[list[Head], list[dict], torch.Tensor, float]:
    """Stage 1: the smallest head set whose knockout keeps F(C)/F(M) >= t.target on these prompts.

    Coarse: from the whole model, remove the prune_fraction of kept heads with the lowest attributed
    contribution (recomputed after each removal) until max_heads remain. Fine: rank the remaining heads by
    their attribution there, binary-search the shortest prefix that reaches the target (exact forwards),
    re-rank within it and repeat until it no longer shrinks (at most search_rounds times). Returns (heads, trace, attribution of every
    head in the whole model [n_layers, n_heads], F(M)).
    """
    means = patching.template_means(model, abc)
    keep, trace, first, f_m, rounds = sorted(all_heads(model)), [], None, None, 0
    bar = tqdm(desc="discovery: pruning heads", disable=not progress, leave=False, file=sys.stderr)
    while True:
        ld, attr = patching.knockout_attribution(model, clean, means, keep)
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
                        resamples: int = 6, seed: int = 0, progress: bool = False) -> torch.Tensor:
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


def stable_core(frequencies: Sequence[torch.Tensor], share: float = 0.8) -> list[Head]:
    """Heads whose selection frequency is at least `share` in every one of several draws ([n_layers, n_heads] each)."""
    least = torch.stack(list(frequencies)).min(0).values
    return [(l, h) for l, h in torch.nonzero(least >= share).tolist()]


def _pick(score: torch.Tensor, threshold: float, among: Sequence[Head], gate: torch.Tensor | None = None) -> list[Head]:
    """Heads of `among` with score >= threshold (and gate true), strongest first."""
    ok = [h for h in among if score[h] >= threshold and (gate is None or bool(gate[h]))]
    return sorted(ok, key=lambda h: -float(score[h]))


def _readouts(model, clean: data.IOIDataset) -> dict[str, torch.Tensor]:
    """Attention readouts and direct logit attribution of every head: name -> [n_layers, n_heads]."""
    cache = attribution.run_cache(model, clean, names_filter=lambda n: n.endswith("hook_pattern"))
    maps = {f"attn_end_{k.lower()}": attribution.attention_to(model, clean, "END", k, cache=cache)
            for k in ("IO", "S1", "S2")}
    maps["attn_end_s"] = maps["attn_end_s1"] + maps["attn_end_s2"]
    maps["previous_token"] = attribution.previous_token_scores(model, clean, cache=cache)
    maps["duplicate_token"] = attribution.duplicate_token_scores(model, clean, cache=cache)
    maps["induction"] = attribution.induction_scores(model, clean, cache=cache)
    maps["dla"] = attribution.head_dla(model, clean)
    return maps


def _classify_direct(maps: dict[str, torch.Tensor], heads: Sequence[Head], t: Thresholds) -> dict[str, list[Head]]:
    """NM / SS / NNM / BNM among heads, from the direct path, END attention and DLA."""
    io, s, dla = maps["attn_end_io"], maps["attn_end_s"], maps["dla"]
    helps, hurts = _pick(-maps["direct"], t.direct, heads), _pick(maps["direct"], t.direct, heads)
    c = {"NM": [h for h in helps if io[h] >= t.attention and io[h] >= s[h]],
         "SS": [h for h in helps if s[h] >= t.attention and s[h] > io[h]],
         "NNM": [h for h in hurts if io[h] >= t.attention]}
    direct = set(helps) | set(hurts)
    c["BNM"] = [h for h in heads if h not in direct and io[h] >= t.backup_attention and dla[h] > 0]
    return c


def describe(model, clean: data.IOIDataset, abc: data.IOIDataset, heads: Sequence[Head],
             t: Thresholds = Thresholds(), progress: bool = False) -> tuple[Circuit, dict[str, torch.Tensor]]:
    """Stage 2: sort admitted heads into classes with Wang et al.'s path-patching steps, restricted to them."""
    heads = sorted(tuple(h) for h in heads)
    maps = _readouts(model, clean)
    pp = lambda receivers, senders: patching.path_patch(model, clean, abc, receivers, senders=senders,  # noqa: E731
                                                          progress=progress)
    maps["direct"] = pp(patching.LOGITS, heads)
    c = {x: [] for x in CLASSES} | _classify_direct(maps, heads, t)
    used = set(c["NM"]) | set(c["SS"]) | set(c["NNM"]) | set(c["BNM"])
    movers = c["NM"] + c["SS"]
    rest = lambda: [h for h in heads if h not in used]  # noqa: E731
    if movers and rest():
        maps["to_movers_q"] = pp(Receivers(tuple(movers), "q", "END"), rest())
        c["SIN"] = _pick(-maps["to_movers_q"], t.s_inhibition, rest(), maps["attn_end_s2"] >= t.s_inhibition_attention)
        used |= set(c["SIN"])
    readers = c["SIN"] + c["SS"]  # heads that read S2 from END: GPT-2's S-Inhibition, SmolLM2's S-Suppression
    if readers and rest():
        maps["to_s2_readers_kv"] = pp(Receivers(tuple(readers), "kv", "S2"), rest())
        dup_or_ind = _pick(-maps["to_s2_readers_kv"], t.duplicate_induction, rest())
        c["DT"] = [h for h in dup_or_ind if maps["duplicate_token"][h] >= maps["induction"][h]]
        c["IND"] = [h for h in dup_or_ind if maps["duplicate_token"][h] < maps["induction"][h]]
        used |= set(c["DT"]) | set(c["IND"])
    if c["IND"] and rest():
        maps["to_ind_k"] = pp(Receivers(tuple(c["IND"]), "k", "S1+1"), rest())
        c["PT"] = _pick(-maps["to_ind_k"], t.previous_token, rest(), maps["previous_token"] >= t.previous_token_attention)
        used |= set(c["PT"])
    c["OTH"] = rest()
    return Circuit(c, everywhere=True), maps


def discover(model, clean: data.IOIDataset, abc: data.IOIDataset, thresholds: Thresholds = Thresholds(),
             progress: bool = False) -> Discovery:
    """Admit heads by their effect on the mean-ablation knockout, then describe them (see the module doc).

    `clean` / `abc` are the discovery prompts (admission uses all of them, description the first
    thresholds.n_describe); measure the result on other prompts.
    """
    t0 = time.perf_counter()
    heads, trace, attr, f_m = admit(model, clean, abc, thresholds, progress)
    first = list(range(min(len(clean), thresholds.n_describe)))
    circuit, maps = describe(model, clean[first], abc[first], heads, thresholds, progress)
    maps["attribution"] = attr / f_m  # each head's attributed share of F(M) in the whole model
    return Discovery(circuit, maps, thresholds, trace, time.perf_counter() - t0)


def circuit_of(heads: Sequence[Head]) -> Circuit:
    """A Circuit keeping these heads at every position, all in class "OTH" (a head set with no description)."""
    return Circuit({"OTH": [tuple(h) for h in heads]}, everywhere=True)


def jaccard(a: Circuit, b: Circuit) -> float:
    """|heads in both| / |heads in either| (1 for two empty circuits)."""
    x, y = set(a.heads), set(b.heads)
    return len(x & y) / len(x | y) if x | y else 1.0


def class_table(circuit: Circuit, reference: Circuit = WANG_GPT2_CIRCUIT) -> list[dict]:
    """Per class: its rule, how many heads the circuit and the reference (Wang et al.'s GPT-2) have in it."""
    return [{"class": f"{CLASSES[c]} ({c})", "rule": CLASS_RULES[c], "ours": len(circuit.classes[c]),
             "reference": len(reference.classes[c]),
             "status": ("in both" if circuit.classes[c] and reference.classes[c] else
                        "ours only" if circuit.classes[c] else "reference only" if reference.classes[c] else "neither")}
            for c in CLASSES]


def strong_heads_outside(effects: torch.Tensor, circuit: Circuit, share: float = 0.1) -> list[tuple[Head, float]]:
    """Heads outside the circuit whose single-head effect [n_layers, n_heads] (relative to F(M)) is >= share in size."""
    inside = set(circuit.heads)
    out = [((l, h), float(effects[l, h])) for l, h in (effects.abs() >= share).nonzero().tolist() if (l, h) not in inside]
    return sorted(out, key=lambda x: -abs(x[1]))


@results.register_type  # memos hold it (results.memo stores values without code)
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
            raise ValueError("no per-prompt values: compute with circuits.faithfulness(...) to get an interval")
        return metrics.bootstrap_ci((self.per_prompt_circuit, self.per_prompt_model), metrics.ratio_of_means,
                                    n_boot=n_boot, level=level, seed=seed)


def _model_minus(model, heads: Sequence[Head]) -> dict[Head, tuple[str, ...]]:
    """A knockout spec keeping every head at every position except `heads` (M \\ K)."""
    drop = {tuple(h) for h in heads}
    return {h: patching.ALL_POSITIONS for h in all_heads(model) if h not in drop}


def faithfulness(model, clean, abc, circuit: Circuit, means=None) -> Faithfulness:
    """Mean-ablation faithfulness of a circuit: F(C) with everything outside it ablated vs F(M)."""
    circuit.validate(model.cfg.n_layers, model.cfg.n_heads)
    means = means if means is not None else patching.template_means(model, abc)
    f_m = patching.circuit_logit_diff(model, clean, abc, _model_minus(model, []), means, per_prompt=True)
    f_c = patching.circuit_logit_diff(model, clean, abc, circuit.positions(), means, per_prompt=True)
    return Faithfulness(f_m.mean().item(), f_c.mean().item(), f_m, f_c)


def completeness(model, clean, abc, circuit: Circuit, n_random: int = 3, seed: int = 0, means=None) -> list[dict]:
    """Wang's completeness check: for sets K (each class, the empty set, random halves), F(C\\K) vs F(M\\K)."""
    means = means if means is not None else patching.template_means(model, abc)
    rng = random.Random(seed)
    sets = {"empty": []} | {c: hs for c, hs in circuit.classes.items() if hs}
    for i in range(n_random):
        sets[f"random half {i + 1}"] = [h for h in circuit.heads if rng.random() < 0.5]
    rows = []
    for name, k in sets.items():
        f_c = patching.circuit_logit_diff(model, clean, abc, circuit.without(k).positions(), means)
        f_m = patching.circuit_logit_diff(model, clean, abc, _model_minus(model, k), means)
        rows.append({"K": name, "heads": len(k), "F(C\\K)": f_c, "F(M\\K)": f_m, "gap": abs(f_c - f_m)})
    return rows


def minimality(model, clean, abc, circuit: Circuit, threshold: float = 0.01, means=None) -> dict[Head, dict]:
    """Wang's minimality: for each head v, |F(C\\(K∪{v})) - F(C\\K)| with K = the rest of v's class.

    A head passes when that score is at least `threshold` x |F(M)| (Wang et al. use 1%).
    """
    means = means if means is not None else patching.template_means(model, abc)
    f_m = patching.circuit_logit_diff(model, clean, abc, _model_minus(model, []), means)
    out = {}
    for c, hs in circuit.classes.items():
        without_class = patching.circuit_logit_diff(model, clean, abc, circuit.without(hs).positions(), means) if hs else 0.0
        for v in hs:  # K ∪ {v} is the whole class: one forward per class serves every v
            with_v = patching.circuit_logit_diff(model, clean, abc, circuit.without([h for h in hs if h != v]).positions(),
                                                 means)
            score = abs(with_v - without_class)
            out[v] = {"class": c, "score": score, "relative": score / abs(f_m), "passes": score >= threshold * abs(f_m)}
    return out


if __name__ == "__main__":  # `python -m ioi_utils.circuits`: the command line lives in circuits_cli (it needs study)
    from .circuits_cli import main

    main()
