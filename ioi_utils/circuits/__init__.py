"""Circuit discovery: which heads carry IOI, what each of them does, and how faithful the result is.

Method (`discover`, `describe`). Wang et al. (2022) found GPT-2 small's circuit by path patching backwards from
the logits: the heads whose direct path to the logits matters (Name Movers, and the Negative Name Movers that
write against them), then the heads whose output reaches those heads' queries at END (S-Inhibition), then the
heads that feed the S readers' keys and values at S2 (Induction, Duplicate Token), then the heads that
feed the Induction heads' keys at S1+1 (Previous Token). We run the same steps on every head of the model and
keep, at each step, every head whose effect is *significant in either direction*: at least a threshold share
of F(M) in size, with a bootstrap interval over prompts that excludes 0 (`_significant`). A head that lowers
the logit difference belongs to the mechanism as much as one that raises it; a search for the smallest head
set that keeps a target share of F(M) would drop such pairs together.

Roles are read from what a head does at its step: direct heads by the sign of their effect and what END
attends to (IO: NM / NNM; S: SS / NSS, the S-Suppression pair SmolLM2 needs; neither: DW / NDW); Backup Name
Movers attend IO and write IO over S without a significant direct effect; S-Inhibition heads attend END -> S2;
Induction and Duplicate Token heads by their scores; Previous Token heads attend S1+1 -> S1. Other is left for a
head a step finds that no rule describes, with its evidence (`Discovery.evidence`). Every threshold is a field
of `Thresholds`.

Faithfulness is measured, not searched for (`circuits.checks`: F(C)/F(M) under Wang's knockout on held-out
prompts, its build-up as heads are added, completeness and minimality). A second reading, a *minimal faithful
subset*, prunes heads under the knockout to the smallest set that keeps `Thresholds.target` of F(M); it and its
dependence on the prompts live in `admission`.

Heads are kept at every position (our choice: the class positions of Wang's convention are a GPT-2 finding);
`Circuit.everywhere` says so. MLPs are never ablated (Wang's convention); their role is measured separately
(`knockouts.mlp_knockout`). Fine-tuned checkpoints are compared with the base circuit by `containment` and
head by head by `role_transitions`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

import torch
from jaxtyping import Float

from ioi_utils.mechanisms import attribution
from ioi_utils.storage import checked_files
from ioi_utils.prompts import data
from ioi_utils.mechanisms import knockouts, path_patching, scoring
from ioi_utils.mechanisms.scoring import Head

CLASSES: dict[str, str] = {
    "NM": "Name Mover", "SS": "S-Suppression", "DW": "Direct Writer", "NNM": "Negative Name Mover",
    "NSS": "Negative S-Suppression", "NDW": "Negative Direct Writer", "BNM": "Backup Name Mover",
    "SIN": "S-Inhibition", "IND": "Induction", "DT": "Duplicate Token", "PT": "Previous Token", "OTH": "Other",
}
# what each class does, as the book explains it (GPT-2's classes from Wang et al.; SS, DW, NSS, NDW, OTH are ours).
# "helps" / "hurts": path patching the head's direct path to the logits significantly lowers / raises the logit
# difference; "attends X": END's attention to X is at least Thresholds.attention and at least the other name's.
CLASS_RULES: dict[str, str] = {
    "NM": "direct effect raising the logit difference; attends END -> IO",
    "SS": "direct effect raising the logit difference; attends END -> S (writes against S)",
    "DW": "direct effect raising the logit difference; attends neither name from END (e.g. END itself)",
    "NNM": "direct effect lowering the logit difference; attends END -> IO (writes against IO)",
    "NSS": "direct effect lowering the logit difference; attends END -> S (writes S)",
    "NDW": "direct effect lowering the logit difference; attends neither name from END",
    "BNM": "no significant direct effect, but attends END -> IO and writes IO over S (DLA >= 1% of F(M))",
    "SIN": "acts through the direct heads' queries at END; attends END -> S2",
    "IND": "acts through the keys/values at S2 of the heads that read S (SIN, SS, NSS); induction above duplicate-token score",
    "DT": "acts through the keys/values at S2 of the heads that read S (SIN, SS, NSS); duplicate-token score >= induction",
    "PT": "acts through the Induction keys at S1+1; attends S1+1 -> S1",
    "OTH": "a significant path-patching effect at some step, but none of the rules above describes it",
}
DIRECT_CLASSES = ("NM", "SS", "DW", "NNM", "NSS", "NDW")
POSITIVE_DIRECT, NEGATIVE_DIRECT = ("NM", "SS", "DW"), ("NNM", "NSS", "NDW")
# positions a head of each class keeps in a knockout (Wang et al. / ARENA convention; the direct classes like NM,
# OTH everywhere). Discovered circuits keep every head at every position (Circuit.everywhere).
CLASS_POSITIONS: dict[str, tuple[str, ...]] = {
    "NM": ("END",), "SS": ("END",), "DW": ("END",), "NNM": ("END",), "NSS": ("END",), "NDW": ("END",),
    "BNM": ("END",), "SIN": ("END",), "IND": ("S2",), "DT": ("S2",), "PT": ("S1+1",), "OTH": knockouts.ALL_POSITIONS,
}


@checked_files.register_type  # memos hold it (results.memo stores values without code)
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
            return {h: knockouts.ALL_POSITIONS for h in self.heads}
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

    # ------------------------------------------------ reading a circuit (the chapters read circuits through these)

    @staticmethod
    def role_name(c: str) -> str:
        """A class's name: "NM" -> "Name Mover" (CLASSES)."""
        return CLASSES[c]

    def direct_heads(self, sign: str = "either") -> list[Head]:
        """Heads of the direct classes ("either": NM, SS, DW, NNM, NSS, NDW, in that order; "positive": NM, SS, DW;
        "negative": NNM, NSS, NDW), class by class, one entry per class a head is in."""
        groups = {"either": DIRECT_CLASSES, "positive": POSITIVE_DIRECT, "negative": NEGATIVE_DIRECT}
        if sign not in groups:
            raise ValueError(f"sign must be one of {', '.join(groups)}, got {sign!r}")
        return [h for c in groups[sign] for h in self.classes[c]]

    def with_other_heads(self, heads: Sequence[Head]) -> "Circuit":
        """The circuit with `heads` added to class OTH, every head kept at every position (an undescribed head has
        no class positions to keep)."""
        return Circuit(self.classes | {"OTH": self.classes["OTH"] + list(heads)}, everywhere=True)  # tupled on init

    def containment(self, other: "Circuit") -> float:
        """Share of this circuit's heads that are also in `other` (1 for an empty circuit): unlike Jaccard, its
        ceiling does not depend on how many heads `other` adds."""
        x = set(self.heads)
        return len(x & set(other.heads)) / len(x) if x else 1.0

    def jaccard(self, other: "Circuit") -> float:
        """|heads in both| / |heads in either| (1 for two empty circuits)."""
        x, y = set(self.heads), set(other.heads)
        return len(x & y) / len(x | y) if x | y else 1.0

    def same_roles(self, other: "Circuit") -> tuple[int, int]:
        """(heads of both circuits that have the same class in each, heads of both circuits)."""
        shared = set(self.heads) & set(other.heads)
        return sum(self.class_of(h) == other.class_of(h) for h in shared), len(shared)

    def class_table(self, reference: "Circuit | None" = None) -> list[dict]:
        """Per class: its rule, how many heads this circuit and the reference (default: Wang et al.'s GPT-2 circuit,
        `wang_gpt2`) have in it."""
        ref = WANG_GPT2_CIRCUIT if reference is None else reference
        return [{"class": f"{CLASSES[c]} ({c})", "rule": CLASS_RULES[c], "ours": len(self.classes[c]),
                 "reference": len(ref.classes[c]),
                 "status": ("in both" if self.classes[c] and ref.classes[c] else
                            "ours only" if self.classes[c] else "reference only" if ref.classes[c] else "neither")}
                for c in CLASSES]

    def strong_heads_outside(self, effects: Float[torch.Tensor, "n_layers n_heads"],
                             share: float = 0.1) -> list[tuple[Head, float]]:
        """Heads outside the circuit whose single-head effect [n_layers, n_heads] (relative to F(M)) is >= share in
        size, largest first."""
        inside = set(self.heads)
        out = [((l, h), float(effects[l, h])) for l, h in (effects.abs() >= share).nonzero().tolist()
               if (l, h) not in inside]
        return sorted(out, key=lambda x: -abs(x[1]))

    @staticmethod
    def wang_gpt2() -> "Circuit":
        """Wang et al. (2022)'s IOI circuit in GPT-2 small (WANG_GPT2_CIRCUIT)."""
        return WANG_GPT2_CIRCUIT

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


@checked_files.register_type  # memos hold it (results.memo stores values without code)
@dataclass(frozen=True)
class Thresholds:
    """Every threshold of circuit discovery. Effects are relative changes of the clean logit difference, F(M)."""

    # the mechanism (path patching at every step; the values are ours, the steps Wang et al.'s)
    direct: float = 0.02  # |path patching to the logits| >= 2% of F(M) ...
    level: float = 0.95  # ... and its bootstrap interval over prompts (this level) excludes 0: significant
    n_boot: int = 1000  # bootstrap resamples of prompts for that interval
    attention: float = 0.1  # "attends X": END -> X attention at least this (and at least the other name's)
    s_inhibition: float = 0.02  # q step: |patching into the direct heads' queries at END| >= 2%, significant
    s_inhibition_attention: float = 0.1  # SIN: attends END -> S2 at least this much
    duplicate_induction: float = 0.02  # kv step: |patching into the S readers' keys/values at S2| >= 2%, significant
    previous_token: float = 0.02  # k step: |patching into the Induction keys at S1+1| >= 2%, significant
    previous_token_attention: float = 0.2  # PT: attends S1+1 -> S1 at least this much
    backup_attention: float = 0.2  # BNM: attends END -> IO at least this much ...
    backup_dla: float = 0.01  # ... and its DLA is at least this share of F(M)
    n_describe: int = 100  # path patching uses the first this many discovery prompts (all if fewer)
    # a minimal faithful subset (admission, `admission.admit`; a second reading, not the circuit; our choices)
    target: float = 0.9  # the smallest head set whose F(C)/F(M) on the discovery prompts is >= this
    max_heads: int = 30  # ... and never more heads than this (pruning goes on until it is reached)
    prune_fraction: float = 0.5  # share of the kept heads removed per attribution step while above max_heads
    search_rounds: int = 2  # re-rank-and-search rounds below max_heads (each: one attribution, ~log2(k) forwards)

    def __post_init__(self) -> None:
        if (not 0 < self.target <= 2 or self.max_heads < 1 or not 0 < self.prune_fraction < 1 or self.search_rounds < 1
                or self.n_describe < 1 or not 0 < self.level < 1 or self.n_boot < 10):
            raise ValueError(f"bad discovery thresholds: need 0 < target <= 2, max_heads >= 1, 0 < prune_fraction < 1, "
                             f"search_rounds >= 1, n_describe >= 1, 0 < level < 1, n_boot >= 10; got {self}")


@checked_files.register_type  # memos hold it (results.memo stores values without code)
@dataclass
class Discovery:
    """The discovered circuit, the maps it was found from, each head's evidence, and (admission only) a trace."""

    circuit: Circuit
    maps: dict[str, torch.Tensor]  # name -> [n_layers, n_heads]
    thresholds: Thresholds
    trace: list[dict] = field(default_factory=list)  # admission: per pruning step, heads and faithfulness
    seconds: float = 0.0
    evidence: dict[Head, dict] = field(default_factory=dict)  # head -> its step, effect, interval, readouts

    def ranked(self) -> list[Head]:
        """The circuit's heads by the size of their effect at the step that found them, largest first."""
        return sorted(self.circuit.heads, key=lambda h: (-abs(self.evidence.get(h, {}).get("effect", 0.0)), h))


def _significant(pp: path_patching.PathPatchPrompts, threshold: float, among: Sequence[Head], t: Thresholds,
                 step: str, evidence: dict[Head, dict]) -> list[Head]:
    """Heads of `among` whose path-patching effect is at least `threshold` in size, in either direction, with a
    bootstrap interval (t.level) that excludes 0; each one's evidence recorded under `step`. Largest first."""
    e, ci = pp.effect(), pp.interval(t.level, t.n_boot)
    out = [h for h in among if abs(float(e[h])) >= threshold and (float(ci[0][h]) > 0 or float(ci[1][h]) < 0)]
    for h in out:
        evidence[h] = {"step": step, "effect": float(e[h]), "interval": (float(ci[0][h]), float(ci[1][h]))}
    return sorted(out, key=lambda h: -abs(float(e[h])))


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


def attends(maps: dict[str, Float[torch.Tensor, "n_layers n_heads"]], head: Head, t: Thresholds) -> str:
    """What a head reads from END: "IO", "S" (either mention) or "neither" (module rules, Thresholds.attention)."""
    io, s = float(maps["attn_end_io"][head]), float(maps["attn_end_s"][head])
    if io >= t.attention and io >= s:
        return "IO"
    return "S" if s >= t.attention else "neither"


def direct_role(effect: float, reads: str) -> str:
    """The class of a head with a significant direct effect (relative change when patched: < 0 = it helps)."""
    helps = effect < 0
    return {"IO": "NM" if helps else "NNM", "S": "SS" if helps else "NSS",
            "neither": "DW" if helps else "NDW"}[reads]


def _classify_direct(maps: dict[str, torch.Tensor], heads: Sequence[Head], evidence: dict[Head, dict],
                     t: Thresholds) -> dict[str, list[Head]]:
    """The direct classes (NM, SS, DW, NNM, NSS, NDW) of heads with a significant direct effect."""
    c = {k: [] for k in DIRECT_CLASSES}
    for h in heads:
        c[direct_role(evidence[h]["effect"], attends(maps, h, t))].append(h)
    return c


def _backups(maps: dict[str, torch.Tensor], heads: Sequence[Head], f_m: float, t: Thresholds) -> list[Head]:
    """BNM: no significant direct effect, END -> IO attention >= t.backup_attention, DLA >= t.backup_dla x F(M)."""
    io, dla = maps["attn_end_io"], maps["dla"]
    return [h for h in heads if io[h] >= t.backup_attention and dla[h] >= t.backup_dla * abs(f_m)]


def _step(model, fw, receivers, among, threshold, t, name, evidence, maps, progress) -> list[Head]:
    """One path-patching step from the heads `among` into `receivers`, reading the discovery's two forwards `fw`:
    the significant senders (both signs)."""
    pp = path_patching.path_patch_prompts(model, fw.clean, fw.corrupt, receivers, senders=among, progress=progress,
                                          fw=fw)
    maps[name] = pp.effect()
    return _significant(pp, threshold, among, t, name, evidence)


def describe(model, clean: data.IOIDataset, abc: data.IOIDataset, heads: Sequence[Head] | None = None,
             t: Thresholds = Thresholds(), progress: bool = False
             ) -> tuple[Circuit, dict[str, Float[torch.Tensor, "n_layers n_heads"]], dict]:
    """The mechanism among `heads` (default: every head), found backwards from the logits as Wang et al. did.

    1. Path patching to the logits: every head with a significant direct effect of either sign is a direct
       head, sorted by sign and what it reads from END (NM, SS, DW; NNM, NSS, NDW). Heads that attend END -> IO
       and write IO over S without a significant direct effect are Backup Name Movers.
    2. Into the direct heads' queries at END: significant senders are S-Inhibition if they attend END -> S2.
    3. Into the keys and values at S2 of the heads that read S (SIN, SS, NSS): Induction or Duplicate Token by score.
    4. Into the Induction heads' keys at S1+1, from the heads that attend S1+1 -> S1: Previous Token heads.
       (Only this step pre-selects its senders by their attention: its window, S1+1 to END, makes it the
       costliest, and a sender without that attention could only be Other.)
    A head found by a step whose rule does not fit is Other, with its evidence. Returns (circuit kept at every
    position, maps [n_layers, n_heads] by name, evidence by head).
    """
    heads = sorted(tuple(h) for h in (heads if heads is not None else scoring.all_heads(model)))
    maps, ev, fw = _readouts(model, clean), {}, path_patching.forwards(model, clean, abc)
    run = lambda r, among, thr, name: _step(model, fw, r, among, thr, t, name, ev, maps, progress)  # noqa: E731
    direct = run(scoring.LOGITS, heads, t.direct, "direct")
    c = {x: [] for x in CLASSES} | _classify_direct(maps, direct, ev, t)
    f_m = fw.ld_clean(model).float().cpu().mean().item()
    rest = lambda: [h for h in heads if h not in ev]  # noqa: E731
    c["BNM"] = _backups(maps, rest(), f_m, t)
    for h in c["BNM"]:
        ev[h] = {"step": "backup", "effect": float(maps["direct"][h]), "interval": None}
    movers = [h for k in DIRECT_CLASSES for h in c[k]]  # every direct head, of either sign
    if movers and rest():
        found = run(scoring.Receivers(tuple(movers), "q", "END"), rest(), t.s_inhibition, "to_movers_q")
        c["SIN"] = [h for h in found if maps["attn_end_s2"][h] >= t.s_inhibition_attention]
        c["OTH"] += [h for h in found if h not in c["SIN"]]
    readers = c["SIN"] + c["SS"] + c["NSS"]  # heads that read S from END: S-Inhibition, S-Suppression (either sign)
    if readers and rest():
        found = run(scoring.Receivers(tuple(readers), "kv", "S2"), rest(), t.duplicate_induction, "to_s2_readers_kv")
        c["DT"] = [h for h in found if maps["duplicate_token"][h] >= maps["induction"][h]]
        c["IND"] = [h for h in found if maps["duplicate_token"][h] < maps["induction"][h]]
    attends_previous = [h for h in rest() if maps["previous_token"][h] >= t.previous_token_attention]
    if c["IND"] and attends_previous:  # senders: heads that attend S1+1 -> S1 (the only ones this step can name)
        c["PT"] = run(scoring.Receivers(tuple(c["IND"]), "k", "S1+1"), attends_previous, t.previous_token, "to_ind_k")
    circuit = Circuit(c, everywhere=True)
    for h in circuit.heads:
        ev[h] |= {"class": circuit.class_of(h), "attends": attends(maps, h, t), "dla": float(maps["dla"][h]),
                  "attn_io": float(maps["attn_end_io"][h]), "attn_s": float(maps["attn_end_s"][h])}
    return circuit, maps, ev


def discover(model, clean: data.IOIDataset, abc: data.IOIDataset, thresholds: Thresholds = Thresholds(),
             progress: bool = False) -> Discovery:
    """The model's IOI mechanism (`describe` on every head) on the first thresholds.n_describe of these
    discovery prompts; measure its faithfulness on other prompts."""
    t0 = time.perf_counter()
    first = list(range(min(len(clean), thresholds.n_describe)))
    circuit, maps, evidence = describe(model, clean[first], abc[first], None, thresholds, progress)
    return Discovery(circuit, maps, thresholds, [], time.perf_counter() - t0, evidence)


def circuit_of(heads: Sequence[Head]) -> Circuit:
    """A Circuit keeping these heads at every position, all in class "OTH" (a head set with no description)."""
    return Circuit({"OTH": [tuple(h) for h in heads]}, everywhere=True)


def role_transitions(base: Circuit, other: Circuit) -> list[dict]:
    """Head by head over both circuits: its class in each and what happened to it, one of
    "kept" (same class), "inverted" (a direct head whose effect changed sign: NM <-> NNM, SS <-> NSS, DW <-> NDW,
    or any positive <-> negative direct class), "changed" (another class), "lost" (only in base), "gained"."""
    out = []
    for h in sorted(set(base.heads) | set(other.heads)):
        a, b = base.class_of(h), other.class_of(h)
        if a is None or b is None:
            what = "lost" if b is None else "gained"
        elif a == b:
            what = "kept"
        elif {a, b} & set(POSITIVE_DIRECT) and {a, b} & set(NEGATIVE_DIRECT):
            what = "inverted"
        else:
            what = "changed"
        out.append({"head": h, "before": a, "after": b, "transition": what})
    return out
