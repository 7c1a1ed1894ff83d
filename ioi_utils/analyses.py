"""Checkpoint analyses: what the chapters measure on a model, memoised by its weights.

Every function here takes models and prompts (or a `study.Study`, read only for its prompts and model name)
and returns numbers, rows or [L, H] maps; none loads a model or trains one (that is `study`'s and
`training`'s). Expensive ones are memoised with `results.memo`, keyed by the model's weights and the prompts'
fingerprints, so a chapter re-executed on the same checkpoints reads them back.

- Discovery on a checkpoint: `discover_cached` and `rediscover_cached` (circuits.discover: the mechanism, on all
  or the first n discovery prompts), `admission_cached` (a minimal faithful subset, circuits.admit), memoised.
- One row per checkpoint: `checkpoint_row` (behaviour with a bootstrap interval, the base circuit's
  faithfulness, per-head DLA and END attention), `rows_table`, `series`, and the comparisons of two rows
  (`role_changes`, `recovered_share`, `faithfulness_gain_interval`, `logit_diff_change_interval`).
- Cross-model activation patching (Prakash et al.'s CMAP): `cmap_cached`, `top_heads`, `gain_share`,
  `gain_share_ceiling`, `localization` and its random-head control `localization_control`.
"""

from __future__ import annotations

import random

import torch

from . import attribution, circuits, data, evaluate, metrics, results
from .mechanisms import activation_patching, path_patching, scoring


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
                     thresholds: circuits.Thresholds = circuits.Thresholds()) -> tuple[list[circuits.Head], torch.Tensor]:
    """Stage 1 of discovery (circuits.admit) on `model` and these prompts, memoised: (admitted heads, each head's
    attributed share of F(M) in the whole model [n_layers, n_heads])."""
    def compute() -> dict:
        heads, _, attr, f_m = circuits.admit(model, disc, abc, thresholds)
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


def held_out_logit_diff(study_: "Study", model) -> torch.Tensor:
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
    def compute() -> dict:
        f = circuits.faithfulness(model, study_.test, study_.abc, base_circuit)
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
            f = circuits.faithfulness(model, study_.test, study_.abc, own)
            return {"circuit": own.to_json(), "circuit_size": len(own.heads), "faithfulness_own_circuit": f.ratio,
                    "faithfulness_own_interval": f.interval(), "jaccard_base": circuits.jaccard(own, base_circuit),
                    "containment_base": circuits.containment(base_circuit, own),
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
    return metrics.bootstrap_ci(after["logit_diff_per_prompt"] - before["logit_diff_per_prompt"])


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


def cmap_subset(ds: data.IOIDataset, n: int) -> data.IOIDataset:
    """The first n held-out prompts (CMAP is ~one forward per head: a subset keeps it affordable)."""
    return ds[list(range(min(n, len(ds))))]


def cmap_cached(model_x, model_y, ds: data.IOIDataset, kind: str, heads=None, tags: tuple[str, str] = ("", ""),
                per_prompt: bool = False) -> torch.Tensor:
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
    ld_x, ld_y = evaluate.evaluate(model_x, ds).logit_diff, evaluate.evaluate(model_y, ds).logit_diff
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
    ld_x, ld_y = evaluate.evaluate(model_x, ds).per_prompt, evaluate.evaluate(model_y, ds).per_prompt
    patched = activation_patching.cmap_group(model_x, model_y, ds, circuit.heads, positions=circuit.positions(),
                                             per_prompt=True)
    return metrics.bootstrap_ci((patched, ld_x, ld_y), _share_of_gap, n_boot=n_boot)


def gain_share_ceiling(model_x, model_y, ds: data.IOIDataset) -> float:
    """gain_share of every head at every position: the most z-patching can carry (it cannot carry changes of
    W_O, the MLPs or the embeddings)."""
    ld_x, ld_y = evaluate.evaluate(model_x, ds).logit_diff, evaluate.evaluate(model_y, ds).logit_diff
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


def localization_interval(per_prompt_effects: torch.Tensor, heads, n_boot: int = 1000,
                          seed: int = 0) -> tuple[float, float]:
    """95% basic bootstrap interval over prompts of `localization` ([n, L, H] per-prompt CMAP effects, cmap_cached
    with per_prompt=True): each resample's map is the mean of its prompts' effects (see _basic_interval)."""
    heads = [tuple(h) for h in heads]
    if not heads:
        return float("nan"), float("nan")
    idx = _prompt_resamples(per_prompt_effects.shape[0], n_boot, seed)
    point = _localizations(per_prompt_effects.double().mean(0)[None], heads).item()
    return _basic_interval(_localizations(per_prompt_effects.double()[idx].mean(1), heads), point)


def localization_difference_interval(a: torch.Tensor, b: torch.Tensor, heads, n_boot: int = 1000,
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
