"""Checkpoint analyses: what the chapters measure on a model, memoised by its weights.

Every function here takes models and prompts (or a `study.Study`, read only for its prompts and model name)
and returns numbers, rows or [L, H] maps; none loads a model or trains one (that is `study`'s and
`training`'s). Expensive ones are memoised with `results.memo`, keyed by the model's weights and the prompts'
fingerprints, so a chapter re-executed on the same checkpoints reads them back.

- Discovery on a checkpoint: `discover_cached` and `rediscover_cached` (circuits.discover: the mechanism, on all
  or the first n discovery prompts), `admission_cached` (a minimal faithful subset, admission.admit), memoised.
- One row per checkpoint: `checkpoint_row` (behaviour with a bootstrap interval, the base circuit's
  faithfulness, per-head DLA and END attention), `rows_table`, `series`, and the comparisons of two rows
  (`role_changes`, `recovered_share`, `faithfulness_gain_interval`, `logit_diff_change_interval`).
- Chapter 2's checks of the base circuit, memoised: `faithfulness_cached`, `completeness_cached`, ...
- Cross-model activation patching, the gain a circuit carries and localization live in `cmap_analyses`.
"""

from __future__ import annotations

from typing import Sequence

import torch
from jaxtyping import Float

from ioi_utils.circuits import admission, checks
from ioi_utils.mechanisms import attribution
from ioi_utils import circuits
from ioi_utils.prompts import data
from ioi_utils.measures import metrics
from ioi_utils.storage import results
from ioi_utils.mechanisms import activation_patching, knockouts, path_patching, scoring
from ioi_utils.mechanisms.scoring import Head
from ioi_utils.models import hook_names


def discover_cached(study: "Study", model, tag: str, thresholds: circuits.Thresholds = circuits.Thresholds(),
                    progress: bool = False) -> circuits.Discovery:
    """Circuit discovery on `model` (tagged e.g. 'base' or a run/epoch), computed once and memoised."""
    return results.memo("discovery", lambda: circuits.discover(model, study.disc, study.disc_abc, thresholds, progress),
                        model, model_name=study.model_name, tag=tag, data=study.disc.fingerprint(), thresholds=thresholds)


def _discovery_subset(study_: "Study", n: int | None) -> tuple[data.IOIDataset, data.IOIDataset]:
    """The first n discovery prompts and their p_ABC (all of them if n is None or too large)."""
    if n is None or n >= len(study_.disc):
        return study_.disc, study_.disc_abc
    idx = list(range(n))
    return study_.disc[idx], study_.disc_abc[idx]


def admission_cached(model, model_name: str, disc: data.IOIDataset, abc: data.IOIDataset,
                     thresholds: circuits.Thresholds = circuits.Thresholds()
                     ) -> tuple[list[circuits.Head], Float[torch.Tensor, "n_layers n_heads"]]:
    """Stage 1 of discovery (admission.admit) on `model` and these prompts, memoised: (admitted heads, each head's
    attributed share of F(M) in the whole model [n_layers, n_heads])."""
    def compute() -> dict:
        heads, _, attr, f_m = admission.admit(model, disc, abc, thresholds)
        return {"heads": [list(h) for h in heads], "attribution": attr / f_m}

    out = results.memo("admission", compute, model, model_name=model_name, data=disc.fingerprint(), thresholds=thresholds)
    return [tuple(h) for h in out["heads"]], out["attribution"]


def rediscover_cached(study_: "Study", model, tag: str, n: int | None = None,
                      thresholds: circuits.Thresholds = circuits.Thresholds()) -> circuits.Circuit:
    """The mechanism re-found in a (fine-tuned) model with the base model's method (`circuits.discover`) on the
    first n discovery prompts (all if n is None), memoised."""
    disc, abc = _discovery_subset(study_, n)
    found = results.memo("discovery", lambda: circuits.discover(model, disc, abc, thresholds), model,
                         model_name=study_.model_name, tag=tag, data=disc.fingerprint(), thresholds=thresholds)
    return found.circuit


# ---------------------------------------------------------------- Wang et al.'s checks of a circuit (memoised)
# Each on the study's held-out prompts (the minimal subset on its discovery prompts), by the model's weights and name.


def _memo_held_out(study_: "Study", name: str, fn, **key):
    """results.memo of one check of the base model on the held-out prompts."""
    return results.memo(name, fn, study_.model, model_name=study_.model_name, data=study_.test.fingerprint(), **key)


def faithfulness_cached(study_: "Study", circuit: circuits.Circuit) -> checks.Faithfulness:
    """checks.faithfulness of a circuit in the base model, held out."""
    return _memo_held_out(study_, "faithfulness", lambda: checks.faithfulness(study_.model, study_.test, study_.abc,
                                                                               circuit), circuit=circuit.to_json())


def faithfulness_curve_cached(study_: "Study", ranked) -> list[dict]:
    """checks.faithfulness_curve: F(C)/F(M) as the heads of `ranked` are added one by one, held out."""
    return _memo_held_out(study_, "faithfulness_curve", lambda: checks.faithfulness_curve(
        study_.model, study_.test, study_.abc, ranked), ranked=[list(h) for h in ranked])


def completeness_cached(study_: "Study", circuit: circuits.Circuit) -> list[dict]:
    """checks.completeness (Wang et al.'s completeness check) of a circuit, held out."""
    return _memo_held_out(study_, "completeness", lambda: checks.completeness(study_.model, study_.test, study_.abc,
                                                                               circuit), circuit=circuit.to_json())


def minimality_cached(study_: "Study", circuit: circuits.Circuit, threshold: float = 0.01) -> dict:
    """checks.minimality (Wang et al.'s minimality, `threshold` x |F(M)|) of a circuit's heads, held out."""
    return _memo_held_out(study_, "minimality", lambda: checks.minimality(
        study_.model, study_.test, study_.abc, circuit, threshold=threshold), circuit=circuit.to_json(),
        threshold=threshold)


def minimal_subset_cached(study_: "Study", thresholds: circuits.Thresholds) -> circuits.Discovery:
    """admission.minimal_subset on the study's discovery prompts (a second reading beside the mechanism)."""
    return results.memo("minimal_subset", lambda: admission.minimal_subset(study_.model, study_.disc, study_.disc_abc,
                                                                         thresholds), study_.model,
                        model_name=study_.model_name, data=study_.disc.fingerprint(), thresholds=thresholds)


def single_head_effects_cached(study_: "Study", heads) -> Float[torch.Tensor, "n_layers n_heads"]:
    """activation_patching.activation_patch_heads of each head alone (relative change of the logit diff), held out."""
    heads = [tuple(h) for h in heads]
    return _memo_held_out(study_, "single_head_effects", lambda: activation_patching.activation_patch_heads(
        study_.model, study_.test, study_.abc, heads=heads, progress=False), heads=[list(h) for h in heads])


def mlp_knockout_cached(study_: "Study", n_groups: int | None = None) -> Float[torch.Tensor, "n_groups"]:
    """knockouts.mlp_knockout: the held-out logit diff with each MLP layer mean-ablated, or with each of `n_groups`
    consecutive groups of layers (`mlp_layer_groups`) ablated together."""
    if n_groups is None:
        return _memo_held_out(study_, "mlp_knockout", lambda: knockouts.mlp_knockout(
            study_.model, study_.test, study_.abc, progress=False))
    groups = mlp_layer_groups(study_, n_groups)
    return _memo_held_out(study_, "mlp_group_knockout", lambda: knockouts.mlp_knockout(
        study_.model, study_.test, study_.abc, groups=groups), groups=[list(g) for g in groups])


def mlp_layer_groups(study_: "Study", n_groups: int) -> list[list[int]]:
    """The model's layers cut into `n_groups` consecutive groups (`knockouts.layer_groups`: early, middle, late)."""
    return knockouts.layer_groups(study_.model.cfg.n_layers, n_groups)


def attention_patterns(study_: "Study", heads: Sequence[Head], index: int = 0
                       ) -> tuple[list[str], Float[torch.Tensor, "n_heads_shown end end"]]:
    """One held-out prompt's tokens up to END and each head's attention pattern over them, for an attention view."""
    one = study_.test[[index]]
    cache = attribution.run_cache(study_.model, one, lambda n: n.endswith("attn.hook_pattern"))
    end = int(one.positions["END"][0]) + 1
    tokens = [study_.tokenizer.decode(t) for t in one.tokens[0, :end]]
    return tokens, torch.stack([cache[hook_names.pattern(l)][0, h, :end, :end] for l, h in heads])


def change_interval(after: Float[torch.Tensor, "n"], before: Float[torch.Tensor, "n"]) -> tuple[float, float]:
    """95% paired bootstrap interval over prompts of mean(after - before) (same prompts; `metrics.bootstrap_ci`)."""
    return metrics.bootstrap_ci(after - before)


def held_out_logit_diff(study_: "Study", model) -> Float[torch.Tensor, "n_eval"]:
    """The held-out prompts' logit differences of a model, [n_eval] on the CPU (memoised by its weights). Read from
    the final residual stream at END with the IO and S columns of the unembedding (`scoring.run_ld`, as every
    patching score is): the full [n, seq, vocab] logits would cost Gemma-3's 262k-token unembedding at every
    position (3.4 s against 10.6 s for 100 prompts on 2 cores)."""
    return results.memo("held_out_logit_diff", lambda: scoring.run_ld(model, study_.test)[0].float().cpu(), model,
                        model_name=study_.model_name, data=study_.test.fingerprint())


def _readouts(model, ds: data.IOIDataset) -> dict:
    """Per-head END readouts from one cached forward: DLA, END->IO and END->S (S1 + S2) attention ([L, H])."""
    dla_hooks = set(attribution.dla_hooks(model))
    cache = attribution.run_cache(model, ds, names_filter=lambda n: n.endswith("hook_pattern") or n in dla_hooks)
    att = {k: attribution.attention_to(model, ds, "END", k, cache=cache) for k in ("IO", "S1", "S2")}
    dla = attribution.head_dla_per_prompt(model, ds, cache=cache)  # [n, L, H]
    io = attribution.attention_to(model, ds, "END", "IO", cache=cache, per_prompt=True)  # [n, L, H]
    s = (attribution.attention_to(model, ds, "END", "S1", cache=cache, per_prompt=True)
         + attribution.attention_to(model, ds, "END", "S2", cache=cache, per_prompt=True))
    return {"dla": dla.mean(0), "dla_per_prompt": dla.half(), "attn_io": att["IO"], "attn_s": att["S1"] + att["S2"],
            "attn_io_per_prompt": io.half(), "attn_s_per_prompt": s.half()}


def checkpoint_row(study_: "Study", model, tag: str, base_circuit: circuits.Circuit, epoch: int,
                   rediscover: bool = False, n_rediscover: int | None = None) -> dict:
    """One checkpoint on the held-out prompts (memoised): behaviour (logit diff with a bootstrap interval,
    accuracy), the base circuit's faithfulness F(C)/F(M) with its interval, and per-head DLA / END->IO /
    END->S attention ([L, H] tensors). With rediscover=True also a circuit re-discovered in this model (on
    the first n_rediscover discovery prompts), its faithfulness, the share of the base circuit's heads it
    contains, each head's role transition (circuits.role_transitions) and, for reference, its Jaccard overlap."""
    shared: dict = {}  # the template means, when this call computes the row: the re-discovered circuit reuses them

    def compute() -> dict:
        shared["means"] = knockouts.template_means(model, study_.abc)
        f = checks.faithfulness(model, study_.test, study_.abc, base_circuit, shared["means"])
        ld = f.per_prompt_model  # F(M) keeps every head everywhere: the clean model's logit diff (one forward saved)
        row = {"epoch": epoch, "tag": tag, "logit_diff": ld.mean().item(), "accuracy": (ld > 0).float().mean().item(),
               "logit_diff_interval": metrics.bootstrap_ci(ld),
               "faithfulness_base_circuit": f.ratio, "faithfulness_base_interval": f.interval(),
               "f_model": f.f_model, "f_circuit": f.f_circuit, "logit_diff_per_prompt": ld,
               "f_per_prompt": (f.per_prompt_model, f.per_prompt_circuit)}
        return row | _readouts(model, study_.test)

    row = dict(results.memo("checkpoint_row", compute, model, model_name=study_.model_name, tag=tag,
                            data=study_.test.fingerprint(), base=base_circuit.to_json()))
    if rediscover:
        def own_part() -> dict:
            own = rediscover_cached(study_, model, tag, n_rediscover)
            f = checks.faithfulness(model, study_.test, study_.abc, own, shared.get("means"),
                                    f_model=row["f_per_prompt"][0])  # F(M) is the row's: same model, same prompts
            return {"circuit": own.to_json(), "circuit_size": len(own.heads), "faithfulness_own_circuit": f.ratio,
                    "faithfulness_own_interval": f.interval(), "jaccard_base": own.jaccard(base_circuit),
                    "containment_base": base_circuit.containment(own),
                    "transitions": circuits.role_transitions(base_circuit, own)}
        row |= results.memo("checkpoint_own", own_part, model, model_name=study_.model_name, tag=tag,
                            data=study_.test.fingerprint(), base=base_circuit.to_json(), n=n_rediscover)
    return row


def rows_table(rows: list[dict]) -> str:
    """A plain-text table of checkpoint rows (re-discovered columns where a row has them)."""
    pct = lambda x: f"{x:.1%}"  # noqa: E731
    head = (f"{'checkpoint':>12} {'logit diff [95% CI]':>22} {'accuracy':>9} {'F base circuit [95% CI]':>26} "
            f"{'F own':>7} {'heads':>6} {'base heads kept':>16}")
    lines = [head]
    for r in rows:
        lo, hi = r["logit_diff_interval"]
        flo, fhi = r["faithfulness_base_interval"]
        own = (f"{pct(r['faithfulness_own_circuit']):>7} {r['circuit_size']:>6} {pct(r['containment_base']):>16}"
               if "circuit" in r else f"{'-':>7} {'-':>6} {'-':>16}")
        lines.append(f"{str(r.get('label', r['epoch'])):>12} {r['logit_diff']:>7.2f} [{lo:>5.2f}, {hi:>5.2f}] "
                     f"{r['accuracy']:>9.1%} {pct(r['faithfulness_base_circuit']):>8} [{pct(flo):>6}, {pct(fhi):>6}] {own}")
    return "\n".join(lines)


def series(rows: list[dict], key: str, heads) -> dict[str, list[float]]:
    """'L.H' -> the per-head value `key` ('dla', 'attn_io', 'attn_s') of each head across rows."""
    return {f"{l}.{h}": [float(r[key][l, h]) for r in rows] for l, h in heads}


def dla_interval(row: dict, head) -> tuple[float, float]:
    """95% bootstrap interval over prompts of one head's mean DLA in a checkpoint row."""
    return metrics.bootstrap_ci(row["dla_per_prompt"][:, head[0], head[1]].float(), n_boot=500)


def role_changes(before: dict, after: dict, heads, min_dla: float = 0.05) -> list[dict]:
    """Per head: DLA and END attention before -> after, whether the DLA sign flipped (the 95% intervals of the
    mean DLA before and after both exclude 0, with opposite signs, and both |DLA| >= min_dla logits: noise
    around zero is no flip) and the size of the change; largest |DLA change| first."""
    out = []
    for l, h in heads:
        d0, d1 = float(before["dla"][l, h]), float(after["dla"][l, h])
        (a0, b0), (a1, b1) = dla_interval(before, (l, h)), dla_interval(after, (l, h))
        signs = (a0 > 0 and b1 < 0) or (b0 < 0 and a1 > 0)
        out.append({"head": (l, h), "dla_before": d0, "dla_after": d1, "dla_change": d1 - d0,
                    "flip": bool(signs and min(abs(d0), abs(d1)) >= min_dla),
                    "attn_io_before": float(before["attn_io"][l, h]), "attn_io_after": float(after["attn_io"][l, h]),
                    "attn_s_before": float(before["attn_s"][l, h]), "attn_s_after": float(after["attn_s"][l, h])})
    return sorted(out, key=lambda r: -abs(r["dla_change"]))


def summed_change(before: dict, after: dict, heads, key: str = "dla") -> tuple[float, tuple[float, float]]:
    """The change of a per-head readout summed over `heads` ('dla', 'attn_io' or 'attn_s'), after minus before,
    on the same held-out prompts: (mean over prompts, 95% paired bootstrap interval). nan without heads."""
    if not heads:
        return float("nan"), (float("nan"), float("nan"))
    ls, hs = [h[0] for h in heads], [h[1] for h in heads]
    per = lambda r: r[f"{key}_per_prompt"][:, ls, hs].float().sum(-1)  # noqa: E731  [n]
    diff = per(after) - per(before)
    return float(diff.mean()), metrics.bootstrap_ci(diff)


def transitions_between(row: dict, before: str | None, after: str | None) -> list:
    """Heads of a re-discovered row whose class went from `before` to `after` (None: not in that circuit)."""
    return [tuple(t["head"]) for t in row.get("transitions", []) if t["before"] == before and t["after"] == after]


def roles_kept(row: dict) -> float:
    """Share of the base circuit's heads that a re-discovered row finds again in the same class."""
    base = [t for t in row.get("transitions", []) if t["before"] is not None]
    return sum(t["transition"] == "kept" for t in base) / len(base) if base else float("nan")


def recovered_share(base: dict, corrupted: dict, retrained: dict, heads) -> tuple[float, list[bool]]:
    """Share of `heads` whose DLA after retraining is closer to the base model's than the corrupted model's
    was (|retrained - base| < |corrupted - base| / 2: at least half the corruption undone), and per head."""
    ok = [abs(float(retrained["dla"][h]) - float(base["dla"][h])) < 0.5 * abs(float(corrupted["dla"][h]) - float(base["dla"][h]))
          for h in heads]
    return (sum(ok) / len(ok) if ok else float("nan")), ok


def faithfulness_gain_interval(after: dict, before: dict, n_boot: int = 1000) -> tuple[float, float]:
    """95% paired bootstrap interval (same prompts resampled) of F(C)/F(M) of `after` minus that of `before`."""
    (am, ac), (bm, bc) = after["f_per_prompt"], before["f_per_prompt"]
    stat = lambda am, ac, bm, bc: ac.mean(-1) / am.mean(-1) - bc.mean(-1) / bm.mean(-1)  # noqa: E731
    return metrics.bootstrap_ci((am, ac, bm, bc), stat, n_boot=n_boot)


def logit_diff_change_interval(after: dict, before: dict) -> tuple[float, float]:
    """95% paired bootstrap interval of the mean logit difference of `after` minus `before` (same prompts)."""
    return change_interval(after["logit_diff_per_prompt"], before["logit_diff_per_prompt"])


def query_signal(model, ds: data.IOIDataset, abc: data.IOIDataset, movers, senders) -> path_patching.PathPatchPrompts:
    """Path patching from `senders` into the queries at END of `movers` in `model` (Wang et al.'s S-Inhibition
    step), per prompt, memoised: how much each sender's signal into the movers' queries carries the logit diff."""
    r = scoring.Receivers(tuple(tuple(h) for h in movers), "q", "END")

    def compute() -> dict:
        pp = path_patching.path_patch_prompts(model, ds, abc, r, senders=list(senders))
        return {"clean": pp.clean, "patched": pp.patched, "senders": [list(h) for h in pp.senders]}

    out = results.memo("query_signal", compute, model, data=ds.fingerprint(), movers=sorted(map(list, movers)),
                       senders=sorted(map(list, senders)))
    return path_patching.PathPatchPrompts(out["clean"], out["patched"], tuple(tuple(h) for h in out["senders"]))


def signal_change(before: path_patching.PathPatchPrompts, after: path_patching.PathPatchPrompts, heads,
                  n_boot: int = 1000, seed: int = 0) -> tuple[tuple[float, float], tuple[float, float]]:
    """Summed relative path-patching effect of `heads` in two models on the same prompts: ((before, after),
    95% paired bootstrap interval of after minus before)."""
    idx = [tuple(h) for h in heads]
    summed = lambda pp, rows: sum(((pp.patched[h][rows].mean(-1) - pp.clean[rows].mean(-1)) / pp.clean[rows].mean(-1))  # noqa: E731
                                  for h in idx)
    n = len(before.clean)
    g = torch.Generator().manual_seed(seed)
    rows = torch.randint(0, n, (n_boot, n), generator=g)
    diff = (summed(after, rows) - summed(before, rows)).sort().values
    lo, hi = diff[int(0.025 * (n_boot - 1))].item(), diff[int(0.975 * (n_boot - 1))].item()
    full = torch.arange(n)
    return (float(summed(before, full)), float(summed(after, full))), (lo, hi)


