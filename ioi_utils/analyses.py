"""Checkpoint analyses: what the chapters measure on a model, memoised by its weights.

Every function here takes models and prompts (or a `study.Study`, read only for its prompts and model name)
and returns numbers, rows or [L, H] maps; none loads a model or trains one (that is `study`'s and
`training`'s). Expensive ones are memoised with `results.memo`, keyed by the model's weights and the prompts'
fingerprints, so a chapter re-executed on the same checkpoints reads them back.

- Discovery on a checkpoint: `discover_cached` (circuits.discover), `rediscover_cached` (its head set, by
  `admission_cached`), memoised.
- One row per checkpoint: `checkpoint_row` (behaviour with a bootstrap interval, the base circuit's
  faithfulness, per-head DLA and END attention), `rows_table`, `series`, and the comparisons of two rows
  (`role_changes`, `recovered_share`, `faithfulness_gain_interval`, `logit_diff_change_interval`).
- Cross-model activation patching (Prakash et al.'s CMAP): `cmap_cached`, `top_heads`, `gain_share`,
  `gain_share_ceiling`, `localization` and its random-head control `localization_control`.
"""

from __future__ import annotations

import random

import torch

from . import attribution, circuits, data, evaluate, metrics, patching, results


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
    """The circuit re-discovered in a (fine-tuned) model on the first n discovery prompts (memoised; n=None: all,
    by discover_cached). Below all prompts only admission runs: it alone decides discovery's heads, kept at every
    position, and nothing reads a re-discovered circuit's classes, so the description is skipped (all "OTH")."""
    if n is None or n >= len(study_.disc):
        return discover_cached(study_, model, tag, thresholds).circuit
    heads, _ = admission_cached(model, study_.model_name, *_discovery_subset(study_, n), thresholds)
    return circuits.circuit_of(heads)


def _readouts(model, ds: data.IOIDataset) -> dict:
    """Per-head END readouts from one cached forward: DLA, END->IO and END->S (S1 + S2) attention ([L, H])."""
    dla_hooks = set(attribution._dla_hooks(model))
    cache = attribution.run_cache(model, ds, names_filter=lambda n: n.endswith("hook_pattern") or n in dla_hooks)
    att = {k: attribution.attention_to(model, ds, "END", k, cache=cache) for k in ("IO", "S1", "S2")}
    dla = attribution.head_dla_per_prompt(model, ds, cache=cache)  # [n, L, H]
    return {"dla": dla.mean(0), "dla_per_prompt": dla.half(), "attn_io": att["IO"], "attn_s": att["S1"] + att["S2"]}


def checkpoint_row(study_: "Study", model, tag: str, base_circuit: circuits.Circuit, epoch: int,
                   rediscover: bool = False, n_rediscover: int | None = None) -> dict:
    """One checkpoint on the held-out prompts (memoised): behaviour (logit diff with a bootstrap interval,
    accuracy), the base circuit's faithfulness F(C)/F(M) with its interval, and per-head DLA / END->IO /
    END->S attention ([L, H] tensors). With rediscover=True also a circuit re-discovered in this model (on
    the first n_rediscover discovery prompts), its faithfulness and its Jaccard overlap with the base circuit."""
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
                    "faithfulness_own_interval": f.interval(), "jaccard_base": circuits.jaccard(own, base_circuit)}
        row |= results.memo("checkpoint_own", own_part, model, model_name=study_.model_name, tag=tag,
                            data=study_.test.fingerprint(), base=base_circuit.to_json(), n=n_rediscover)
    return row


def rows_table(rows: list[dict]) -> str:
    """A plain-text table of checkpoint rows (re-discovered columns where a row has them)."""
    pct = lambda x: f"{x:.1%}"  # noqa: E731
    head = (f"{'checkpoint':>12} {'logit diff [95% CI]':>22} {'accuracy':>9} {'F base circuit [95% CI]':>26} "
            f"{'F own':>7} {'heads':>6} {'Jaccard':>8}")
    lines = [head]
    for r in rows:
        lo, hi = r["logit_diff_interval"]
        flo, fhi = r["faithfulness_base_interval"]
        own = (f"{pct(r['faithfulness_own_circuit']):>7} {r['circuit_size']:>6} {r['jaccard_base']:>8.2f}"
               if "circuit" in r else f"{'-':>7} {'-':>6} {'-':>8}")
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


def cmap_subset(ds: data.IOIDataset, n: int) -> data.IOIDataset:
    """The first n held-out prompts (CMAP is ~one forward per head: a subset keeps it affordable)."""
    return ds[list(range(min(n, len(ds))))]


def cmap_cached(model_x, model_y, ds: data.IOIDataset, kind: str, heads=None, tags: tuple[str, str] = ("", "")):
    """patching.cmap(model_x -> model_y) memoised by both models' weights (model_y's in the key, model_x's
    fingerprint in the extra key)."""
    return results.memo("cmap", lambda: patching.cmap(model_x, model_y, ds, kind, heads=heads), model_y,
                        source=results.model_fingerprint(model_x), data=ds.fingerprint(), kind=kind,
                        heads=None if heads is None else sorted(map(list, heads)), tags=list(tags))


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
    return _gap_share(patching.cmap_group(model_x, model_y, ds, circuit.heads, positions=circuit.positions()), ld_x, ld_y)


def gain_share_ceiling(model_x, model_y, ds: data.IOIDataset) -> float:
    """gain_share of every head at every position: the most z-patching can carry (it cannot carry changes of
    W_O, the MLPs or the embeddings)."""
    ld_x, ld_y = evaluate.evaluate(model_x, ds).logit_diff, evaluate.evaluate(model_y, ds).logit_diff
    return _gap_share(patching.cmap_group(model_x, model_y, ds, patching.all_heads(model_y)), ld_x, ld_y)


def localization(effects, heads) -> float:
    """(share of total |CMAP effect| on `heads`) / (share of all heads that `heads` are): 1 = not localized."""
    total = effects.abs().sum().item()
    if total == 0 or not heads:
        return float("nan")
    inside = sum(abs(effects[h].item()) for h in heads)
    return (inside / total) / (len(heads) / effects.numel())


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
