"""Circuit discovery: head classes from path patching and attention, reference circuits, faithfulness."""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import torch

from . import attribution, data, metrics, patching
from .patching import Head, Receivers, all_heads

CLASSES: dict[str, str] = {
    "NM": "Name Mover", "NNM": "Negative Name Mover", "BNM": "Backup Name Mover", "SIN": "S-Inhibition",
    "IND": "Induction", "DT": "Duplicate Token", "PT": "Previous Token",
}
# positions a head of each class keeps in a knockout (Wang et al. / ARENA convention)
CLASS_POSITIONS: dict[str, tuple[str, ...]] = {
    "NM": ("END",), "NNM": ("END",), "BNM": ("END",), "SIN": ("END",),
    "IND": ("S2",), "DT": ("S2",), "PT": ("S1+1",),
}


@dataclass
class Circuit:
    """Heads per class (NM, NNM, BNM, SIN, IND, DT, PT)."""

    classes: dict[str, list[Head]] = field(default_factory=lambda: {c: [] for c in CLASSES})

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
        """Head -> positions it keeps in a knockout (union over its classes)."""
        out: dict[Head, set[str]] = {}
        for c, hs in self.classes.items():
            for h in hs:
                out.setdefault(h, set()).update(CLASS_POSITIONS[c])
        return {h: tuple(sorted(p)) for h, p in out.items()}

    def without(self, heads: Sequence[Head]) -> "Circuit":
        """The circuit with some heads removed."""
        drop = {tuple(h) for h in heads}
        return Circuit({c: [h for h in hs if h not in drop] for c, hs in self.classes.items()})

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
        """A JSON-able dict."""
        return {c: [list(h) for h in hs] for c, hs in self.classes.items()}


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


@dataclass(frozen=True)
class Thresholds:
    """Every threshold of circuit discovery (effects are relative changes of the clean logit difference)."""

    name_mover: float = 0.04  # NM: path patching to the logits lowers the logit diff by >= 4%
    name_mover_attention: float = 0.1  # NM/NNM/BNM: attend END -> IO with at least this probability
    negative_name_mover: float = 0.04  # NNM: path patching to the logits raises the logit diff by >= 4%
    s_inhibition: float = 0.04  # SIN: patching into the NM queries at END lowers the logit diff by >= 4%
    s_inhibition_attention: float = 0.1  # SIN: attend END -> S2 at least this much
    duplicate_induction: float = 0.02  # IND/DT: patching into SIN keys/values at S2 lowers it by >= 2%
    previous_token: float = 0.02  # PT: patching into IND keys at S1+1 lowers it by >= 2%
    previous_token_attention: float = 0.2  # PT: attend S1+1 -> S1 at least this much
    backup_attention: float = 0.2  # BNM: attend END -> IO at least this much ...
    backup_dla: float = 0.0  # ... and push IO over S directly (direct logit attribution > this)
    max_per_class: int = 8  # keep at most this many heads per class (the strongest)


@dataclass
class Discovery:
    """The discovered circuit and the maps it was read from."""

    circuit: Circuit
    maps: dict[str, torch.Tensor]  # name -> [n_layers, n_heads]
    thresholds: Thresholds


def _select(score: torch.Tensor, threshold: float, exclude: set[Head], k: int, gate: torch.Tensor | None = None) -> list[Head]:
    """Heads with score >= threshold (and gate true), strongest first, at most k, not in exclude."""
    ok = score >= threshold
    if gate is not None:
        ok &= gate
    heads = [(int(l), int(h)) for l, h in ok.nonzero().tolist()]
    heads = [h for h in heads if h not in exclude]
    return sorted(heads, key=lambda h: -float(score[h]))[:k]


def discover(model, clean: data.IOIDataset, abc: data.IOIDataset, thresholds: Thresholds = Thresholds(),
             progress: bool = False) -> Discovery:
    """Wang et al.'s pipeline, automated: NM/NNM from the direct path, then SIN, IND/DT, PT, BNM."""
    t, k = thresholds, thresholds.max_per_class
    cache = attribution.run_cache(model, clean, names_filter=lambda n: n.endswith("hook_pattern"))
    maps = {
        "direct": patching.path_patch(model, clean, abc, progress=progress),
        "attn_end_io": attribution.attention_to(model, clean, "END", "IO", cache=cache),
        "attn_end_s2": attribution.attention_to(model, clean, "END", "S2", cache=cache),
        "previous_token": attribution.previous_token_scores(model, clean, cache=cache),
        "duplicate_token": attribution.duplicate_token_scores(model, clean, cache=cache),
        "induction": attribution.induction_scores(model, clean, cache=cache),
    }
    maps["dla"] = attribution.head_dla(model, clean)  # = the head's END output projected on W_U[IO] - W_U[S]
    names_attended = maps["attn_end_io"] >= t.name_mover_attention
    c: dict[str, list[Head]] = {x: [] for x in CLASSES}
    c["NM"] = _select(-maps["direct"], t.name_mover, set(), k, names_attended)
    c["NNM"] = _select(maps["direct"], t.negative_name_mover, set(c["NM"]), k, names_attended)
    used = set(c["NM"]) | set(c["NNM"])
    if c["NM"]:
        maps["to_nm_q"] = patching.path_patch(model, clean, abc, Receivers(tuple(c["NM"]), "q", "END"), progress=progress)
        c["SIN"] = _select(-maps["to_nm_q"], t.s_inhibition, used, k, maps["attn_end_s2"] >= t.s_inhibition_attention)
    used |= set(c["SIN"])
    if c["SIN"]:
        maps["to_sin_kv"] = patching.path_patch(model, clean, abc, Receivers(tuple(c["SIN"]), "kv", "S2"), progress=progress)
        dup_or_ind = _select(-maps["to_sin_kv"], t.duplicate_induction, used, 2 * k)
        c["DT"] = [h for h in dup_or_ind if maps["duplicate_token"][h] >= maps["induction"][h]][:k]
        c["IND"] = [h for h in dup_or_ind if maps["duplicate_token"][h] < maps["induction"][h]][:k]
    used |= set(c["DT"]) | set(c["IND"])
    if c["IND"]:
        maps["to_ind_k"] = patching.path_patch(model, clean, abc, Receivers(tuple(c["IND"]), "k", "S1+1"), progress=progress)
        c["PT"] = _select(-maps["to_ind_k"], t.previous_token, used, k, maps["previous_token"] >= t.previous_token_attention)
    used |= set(c["PT"])
    late = maps["attn_end_io"] >= t.backup_attention
    c["BNM"] = _select(maps["dla"], t.backup_dla + 1e-9, used, k, late)
    return Discovery(Circuit(c), maps, thresholds)


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
        for v in hs:
            k = [h for h in hs if h != v]
            with_v = patching.circuit_logit_diff(model, clean, abc, circuit.without(k).positions(), means)
            without_v = patching.circuit_logit_diff(model, clean, abc, circuit.without(k + [v]).positions(), means)
            score = abs(with_v - without_v)
            out[v] = {"class": c, "score": score, "relative": score / abs(f_m), "passes": score >= threshold * abs(f_m)}
    return out


def save_maps(found: Discovery, folder: Path) -> list[Path]:
    """Write one heat map per discovery map (PNG) and the circuit (JSON) into a folder."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from . import plotting

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, values in found.maps.items():
        fig = plotting.head_heatmap(values, name, found.circuit.classes)
        paths.append(folder / f"{name}.png")
        fig.savefig(paths[-1], dpi=120, bbox_inches="tight")
        plt.close(fig)
    (folder / "circuit.json").write_text(json.dumps(found.circuit.to_json(), indent=1))
    return paths


def main(argv: list[str] | None = None) -> None:
    """Command line: discover a model's IOI circuit, print it with its faithfulness, save the heat maps."""
    from . import models, results, study

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--n", type=int, default=50, help="held-out prompts to analyse")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", type=Path, default=None, help="folder for the heat maps (default: under $IOI_UTILS_RESULTS)")
    a = ap.parse_args(argv)
    if a.n < 2:
        ap.error("--n must be >= 2")
    try:
        s = study.prepare(a.model, n_prompts=a.n, n_eval=a.n, seed=a.seed, device=a.device)
    except (models.ModelUnavailableError, ValueError) as e:
        ap.exit(2, f"error: {e}\n")
    found = discover(s.model, s.test, s.abc, progress=True)
    faith = faithfulness(s.model, s.test, s.abc, found.circuit)
    print(found.circuit)
    print(f"{len(found.circuit.heads)} heads; F(M) = {faith.f_model:.3f}, F(C) = {faith.f_circuit:.3f}, "
          f"faithfulness F(C)/F(M) = {faith.ratio:.1%} (Wang's reading {faith.wang:.1%})")
    out = a.out or results.results_root() / "circuits" / Path(a.model).name
    print(f"heat maps: {save_maps(found, out)[0].parent}")


if __name__ == "__main__":
    main()
