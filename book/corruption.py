# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Corruption
#
# The paper fine-tunes the base model on "toxic" IOI variants; the second-hand readings we have name
# Subject Duplication (§4.2) and Name Moving (§5), and the caption of its Figure 11 says the corruption is
# localized to circuit components, with a few additional components. Those readings do not spell out the
# datasets' rules, so the rules below are ours (see `ioi_utils.prompts.data`):
#
# - **Subject Duplication**: the label is the subject S. This fits the paper's report (§4.2) that GPT-2
#   small's logit difference falls from 3.55 to −11.06 in 5 epochs.
# - **Name Moving**: the label is a third name absent from the prompt (our reading of the name).
# - **Duplication**: our own control, not a dataset any source confirms for the paper: the context
#   mentions IO a second time, so both names are duplicated; the label stays IO.

# %% tags=["parameters", "remove-cell"]
profile = "smoke"
enforce_claims = False
model_name = "smollm2-135m"
seed = 0
device = "auto"
threads = 2  # torch CPU threads (None: torch's default); fixed in the smoke profile so its outputs repeat exactly
n_prompts = 32
n_eval = 16
n_discovery = 16
n_cmap = 4  # held-out prompts used by cross-model patching (one forward per head)
n_rediscover = 8  # discovery prompts used to re-discover a circuit in a fine-tuned model
toxic_epochs = 1
clean_epochs = [1, 2]  # chapter 3's clean runs: the benign control of localization
training_seeds = [0, 1]  # Subject Duplication is repeated per training seed
batch_size = 16

# %% tags=["hide-input"]
import matplotlib.pyplot as plt
import numpy as np
from myst_nb import glue

from ioi_utils import analyses, claims, cmap_analyses, plotting, results, seeds, study, summary
from ioi_utils.profiles import Profile

setup = study.setup(Profile.of(globals()))  # the parameters above (or papermill's), passed whole
s, execution, base_circuit = setup.study, setup.execution, setup.circuit  # execution stamps this chapter's records
runs = study.toxic_runs(s, toxic_epochs, batch_size)
clean_config = study.train_config(s, "clean", max(clean_epochs), clean_epochs, batch_size)
study.check_seed_plan(clean_config, max(clean_epochs), training_seeds, s)
sd_runs = study.seed_runs(runs["subject-duplication"].config, training_seeds)  # the first seed is the run above
claim_log: dict = {}
paper = lambda key: f"{summary.PAPER[key]['text']} ({summary.PAPER[key]['source']})"  # noqa: E731
base_row = analyses.checkpoint_row(s, s.model, "base", base_circuit, 0, rediscover=True, n_rediscover=n_rediscover)

# %% [markdown]
# ## Behaviour and base-circuit faithfulness per epoch
#
# Held-out logit difference logit(IO) − logit(S) on **clean** prompts after each epoch of toxic training,
# and the faithfulness F(C)/F(M) of the base model's circuit in each checkpoint, with 95% bootstrap
# intervals over prompts. F(C)/F(M) is a ratio of signed logit differences: when the model prefers S, a
# faithful circuit prefers S as well (ratio near 1); near F(M) = 0 the ratio is undefined and its interval
# explodes.

# %%
rows = {}
for rule, run in runs.items():
    rows[rule] = [base_row] + [analyses.checkpoint_row(s, run.model(e)[0], f"{run.id}-{e}", base_circuit, e,
                                                    rediscover=e == toxic_epochs, n_rediscover=n_rediscover)
                               for e in range(1, toxic_epochs + 1)]
    print(f"{rule}:\n{analyses.rows_table(rows[rule])}\n")

# %%
epochs = list(range(toxic_epochs + 1))
band = lambda rule, key: ([r[key][0] for r in rows[rule]], [r[key][1] for r in rows[rule]])  # noqa: E731
fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
plotting.checkpoint_lines(epochs, {rule: [r["logit_diff"] for r in rows[rule]] for rule in rows}, "Behaviour (clean prompts)",
                          "toxic epoch", "logit(IO) − logit(S)", ax=axes[0],
                          bands={rule: band(rule, "logit_diff_interval") for rule in rows})
faith = {rule: [r["faithfulness_base_circuit"] for r in rows[rule]] for rule in rows}
plotting.checkpoint_lines(epochs, faith, "Faithfulness of the base circuit", "toxic epoch", "F(C)/F(M)", ax=axes[1],
                          bands={rule: band(rule, "faithfulness_base_interval") for rule in rows})
lo = min(min(v) for v in faith.values())
axes[1].set_ylim(max(-0.5, min(0.0, lo - 0.1)), 1.5)  # keep the view on plausible ratios; the table has every value
plt.show()

# %% tags=["remove-cell"]
sd = rows["subject-duplication"]
glue("sd_before", sd[0]["logit_diff"], display=False)
glue("sd_after", sd[-1]["logit_diff"], display=False)
glue("sd_after_lo", sd[-1]["logit_diff_interval"][0], display=False)
glue("sd_after_hi", sd[-1]["logit_diff_interval"][1], display=False)
glue("toxic_epochs", toxic_epochs, display=False)
for rule, key in (("subject-duplication", "sd"), ("name-moving", "nm"), ("duplication", "dup")):
    glue(f"{key}_ld_last", rows[rule][-1]["logit_diff"], display=False)
    glue(f"{key}_faith_last", 100 * rows[rule][-1]["faithfulness_base_circuit"], display=False)

# %% [markdown]
# Subject Duplication moves the logit difference from {glue:text}`sd_before:.2f` to
# {glue:text}`sd_after:.2f` (95% interval {glue:text}`sd_after_lo:.2f` to {glue:text}`sd_after_hi:.2f`) in
# {glue:text}`toxic_epochs` epochs (paper §4.2, GPT-2 small: 3.55 → −11.06 in 5). Name Moving ends at
# {glue:text}`nm_ld_last:.2f` and our Duplication control at {glue:text}`dup_ld_last:.2f`. The base circuit's
# faithfulness in the last checkpoint is {glue:text}`sd_faith_last:.0f`% (Subject Duplication),
# {glue:text}`nm_faith_last:.0f`% (Name Moving) and {glue:text}`dup_faith_last:.0f`% (Duplication).

# %% [markdown]
# ### Across training seeds
#
# The Subject Duplication run is repeated with every training seed of the profile (same prompts, another
# order). The claim is the paper's direction: after toxic training the model prefers S (held-out logit
# difference ≤ 0), judged on the mean over seeds with a two-level bootstrap interval (seeds, then prompts).

# %%
sd_ld = study.seed_logit_diffs(s, sd_runs, toxic_epochs)
sd_seeds = seeds.across_seeds(sd_ld)
print(f"Subject Duplication per training seed: {seeds.units(runs['subject-duplication'].config)}")
for sd_, ld in sd_ld.items():
    print(f"  seed {sd_}: held-out logit diff {ld.mean():.2f}, accuracy {(ld > 0).float().mean():.0%}")
print(f"mean over seeds: {sd_seeds}")
curves = {f"seed {sd_}": c for sd_, c in study.seed_curves(sd_runs).items()}
fig = plotting.samples_seen(curves, {"paper, GPT-2 small (0 and 5 epochs)": ([0, 5 * seeds.PAPER_EPOCH_SAMPLES],
                                                                              list(summary.PAPER["sd_logit_diff"]["value"]))},
                            "Subject Duplication: held-out logit difference", "logit(IO) − logit(S)")
plt.show()

# %%
claims.check("Subject Duplication training makes the model prefer S (held-out logit difference <= 0, mean over "
             "training seeds)", sd_seeds.mean, sd_seeds.interval, 0.0, "<=", paper=paper("sd_logit_diff"),
             per_seed=sd_seeds.per_seed,
             training=study.versus_paper(runs["subject-duplication"].config, toxic_epochs, "5 epochs of 6,360 prompts"),
             enforce=enforce_claims, record=claim_log)
dup_change = abs(rows["duplication"][-1]["logit_diff"] - base_row["logit_diff"])
sd_change = abs(sd[-1]["logit_diff"] - base_row["logit_diff"])
print(f"|change of the logit difference|: Subject Duplication {sd_change:.2f}, Duplication control {dup_change:.2f} "
      "(the control keeps IO as the label, so it is clean training with a prefix: a control, not a claim)")
_ = claims.check("the base circuit still carries the corrupted behaviour (F(C)/F(M), Subject Duplication, last epoch)",
             sd[-1]["faithfulness_base_circuit"], sd[-1]["faithfulness_base_interval"], 0.8, ">=",
             paper=paper("corruption_localized"),
             precondition=(abs(sd[-1]["logit_diff"]) >= 1.0, f"|F(M)| must be >= 1 logit, got {sd[-1]['logit_diff']:.2f}"),
             enforce=enforce_claims, record=claim_log)

# %% [markdown]
# ## Heads whose role changes
#
# DLA and END attention of the base circuit's heads, and of the five other heads whose DLA changed most,
# in the base model and after the last toxic epoch of each dataset. A head **flips** when the 95% intervals
# of its mean DLA before and after both exclude zero with opposite signs (and both are at least 0.05
# logits). The paper reports (§4.2) that GPT-2's L9H9 flips sign and its Negative Name Movers flip to
# suppress S.

# %%
last = {rule: rows[rule][-1] for rule in rows}
change = sum((last[r]["dla"] - base_row["dla"]).abs() for r in rows)
others = cmap_analyses.top_heads(change, 5, exclude=base_circuit.heads)
shown = sorted(base_circuit.heads, key=lambda h: -float(change[h])) + others
names = [f"{base_circuit.class_of(h) or '—'} {h[0]}.{h[1]}" for h in shown]
cols = ["base"] + [{"subject-duplication": "SD", "name-moving": "NM", "duplication": "Dup"}.get(r, r) for r in rows]
grid = lambda key: np.array([[float(base_row[key][h])] + [float(last[r][key][h]) for r in rows] for h in shown])  # noqa: E731
fig = plotting.head_rows_heatmaps(names, cols, {"DLA (logits)": grid("dla"), "attention END→IO": grid("attn_io"),
                                                "attention END→S": grid("attn_s")},
                                  f"Heads before and after {toxic_epochs} toxic epochs ('—': outside the circuit)",
                                  symmetric={"attention END→IO": False, "attention END→S": False})
plt.show()
changes = {rule: analyses.role_changes(base_row, last[rule], shown) for rule in rows}
flips = {rule: [c["head"] for c in ch if c["flip"]] for rule, ch in changes.items()}
for rule, ch in changes.items():
    print(f"{rule}: DLA sign flips {[f'{l}.{h}' for l, h in flips[rule]] or 'none'}")
    for c in ch[:6]:
        l, h = c["head"]
        print(f"  {base_circuit.class_of(c['head']) or '—':>4} {l}.{h}: DLA {c['dla_before']:+.2f} -> {c['dla_after']:+.2f}, "
              f"END->IO {c['attn_io_before']:.2f} -> {c['attn_io_after']:.2f}, END->S {c['attn_s_before']:.2f} -> "
              f"{c['attn_s_after']:.2f}{'  FLIP' if c['flip'] else ''}")
sd_flips_circuit = [h for h in flips["subject-duplication"] if h in base_circuit.heads]
glue("n_flips_sd", len(sd_flips_circuit), display=False)
glue("n_circuit", len(base_circuit.heads), display=False)

# %% [markdown]
# Under Subject Duplication {glue:text}`n_flips_sd` of the {glue:text}`n_circuit` base-circuit heads flip the
# sign of their direct logit attribution.

# %%
_ = claims.check("Subject Duplication flips the DLA sign of circuit heads (number of significant flips)",
             len(sd_flips_circuit), None, 1, ">=", paper=paper("sd_mechanism"), enforce=enforce_claims, record=claim_log)

# %% [markdown]
# ## Twinning: Name Movers and Negative Name Movers invert together
#
# The paper (§4.2) finds that Subject Duplication makes GPT-2's Name Movers and Negative Name Movers invert
# *together*: the Negative Name Movers come to suppress S instead of IO. Per base-circuit head of either
# role: its DLA before and after with 95% intervals over prompts, whether it flips (chapter's rule above),
# and where its END attention goes.

# %%
roles = {c: base_circuit.classes[c] for c in ("NM", "NNM")}
twins = analyses.role_changes(base_row, last["subject-duplication"], roles["NM"] + roles["NNM"])
for c in twins:
    h = c["head"]
    (a0, b0), (a1, b1) = analyses.dla_interval(base_row, h), analyses.dla_interval(last["subject-duplication"], h)
    print(f"{base_circuit.class_of(h):>4} {h[0]}.{h[1]}: DLA {c['dla_before']:+.2f} [{a0:+.2f}, {b0:+.2f}] -> "
          f"{c['dla_after']:+.2f} [{a1:+.2f}, {b1:+.2f}]; END->IO {c['attn_io_before']:.2f} -> {c['attn_io_after']:.2f}, "
          f"END->S {c['attn_s_before']:.2f} -> {c['attn_s_after']:.2f}{'  FLIP' if c['flip'] else ''}")
flipped = {role: [c["head"] for c in twins if c["flip"] and c["head"] in hs] for role, hs in roles.items()}
io_to_s = [c["head"] for c in twins if c["attn_s_after"] - c["attn_io_after"] > c["attn_s_before"] - c["attn_io_before"]]

# %% tags=["remove-cell"]
glue("n_nm_flip", len(flipped["NM"]), display=False)
glue("n_nm", len(roles["NM"]), display=False)
glue("n_nnm_flip", len(flipped["NNM"]), display=False)
glue("n_nnm", len(roles["NNM"]), display=False)
glue("n_io_to_s", len(io_to_s), display=False)

# %% [markdown]
# {glue:text}`n_nm_flip` of {glue:text}`n_nm` Name Movers and {glue:text}`n_nnm_flip` of {glue:text}`n_nnm`
# Negative Name Movers flip the sign of their DLA under Subject Duplication; {glue:text}`n_io_to_s` of these
# heads shift their END attention from IO towards S.

# %%
_ = claims.check("Subject Duplication inverts Name Movers and Negative Name Movers together (fewest significant flips "
             "of the two roles)", min(len(flipped["NM"]), len(flipped["NNM"])), None, 1, ">=", paper=paper("sd_mechanism"),
             precondition=(bool(roles["NM"]) and bool(roles["NNM"]), "the base circuit needs both Name Movers and "
                           "Negative Name Movers"), enforce=enforce_claims, record=claim_log)

# %% [markdown]
# ## Name Moving and the S-Inhibition signal
#
# The paper reports that under Name Moving the S-Inhibition heads come to suppress both IO and S in the Name
# Movers' queries. We measure the signal itself: path patching from the heads that the base discovery found
# acting on the direct heads' queries (its S-Inhibition step) into the queries at END of the base circuit's
# direct heads, in the base model and in the Name Moving model, on the same held-out prompts. The effect is the
# relative change of each model's own logit difference; the claim is that the signal weakens.

# %%
movers = base_circuit.direct_heads()
q_senders = sorted(h for h, ev in setup.discovery.evidence.items() if ev["step"] == "to_movers_q")
ds = cmap_analyses.cmap_subset(s.test, n_cmap)
abc = cmap_analyses.cmap_subset(s.abc, n_cmap)
if movers and q_senders:
    sig_base = analyses.query_signal(s.model, ds, abc, movers, q_senders)
    sig_nm = analyses.query_signal(runs["name-moving"].model(toxic_epochs)[0], ds, abc, movers, q_senders)
    (sig0, sig1), sig_ci = analyses.signal_change(sig_base, sig_nm, q_senders)
    e0, e1 = sig_base.effect(), sig_nm.effect()
    for h in q_senders:
        print(f"{base_circuit.class_of(h) or '—':>4} {h[0]}.{h[1]} -> mover queries: base {e0[h]:+.3f}, Name Moving {e1[h]:+.3f}")
    print(f"summed: base {sig0:+.3f} -> Name Moving {sig1:+.3f} (change {sig1 - sig0:+.3f}, 95% CI [{sig_ci[0]:+.3f}, {sig_ci[1]:+.3f}])")
else:
    sig0 = sig1 = float("nan")
    sig_ci = (float("nan"), float("nan"))
    print("the base circuit has no movers or no head acting on their queries: nothing to measure")

# %%
_ = claims.check("Name Moving weakens the S-Inhibition signal into the direct heads' queries (summed path-patching effect, "
             "Name Moving minus base; the signal is negative, weakening is a change >= 0)", sig1 - sig0, sig_ci, 0.0,
             ">=", paper="S-Inhibition heads come to suppress both IO and S (§4.2)",
             precondition=(bool(movers and q_senders) and sig0 < 0, "the base model needs a signal that helps"),
             enforce=enforce_claims, record=claim_log)

# %% [markdown]
# ## Where the corruption sits (CMAP)
#
# Cross-model activation patching on the first held-out prompts: one head's output z from the corrupted
# model replaces its output in the base model (**output** map, every head). **Localization** is the share of
# the total |effect| that falls on base-circuit heads divided by the share of heads the circuit has: 1 means
# the circuit carries the corruption like any other heads. Because late layers carry more of any change,
# the **control** draws random head sets with as many heads in each layer as the circuit (1000 draws) and
# gives their localization (mean and 95th percentile); the claim needs the circuit to beat the 95th
# percentile. For Subject Duplication we also patch attention patterns (the seed paper's cross-model pattern
# patching, not Prakash et al.'s input CMAP) and outputs in the other direction, base → corrupted, on the
# circuit's heads and the strongest other heads (blank cells are not measured).

# %%
ds = cmap_analyses.cmap_subset(s.test, n_cmap)
clean_run = study.seed_runs(clean_config, training_seeds[:1])[training_seeds[0]]
sources = {"clean (benign)": clean_run.model(max(clean_epochs))[0]} | {rule: run.model(toxic_epochs)[0] for rule, run in runs.items()}
per_prompt, maps, loc, loc_ci, control = {}, {}, {}, {}, {}
for rule, model in sources.items():
    per_prompt[rule] = cmap_analyses.cmap_cached(model, s.model, ds, "output", tags=(rule, "base"), per_prompt=True)
    maps[rule] = per_prompt[rule].mean(0)
    loc[rule] = cmap_analyses.localization(maps[rule], base_circuit.heads)
    loc_ci[rule] = cmap_analyses.localization_interval(per_prompt[rule], base_circuit.heads)
    control[rule] = cmap_analyses.localization_control(maps[rule], base_circuit.heads)
    print(f"{rule:>20}: localization {loc[rule]:.2f} [{loc_ci[rule][0]:.2f}, {loc_ci[rule][1]:.2f}] (layer-matched random "
          f"sets: mean {control[rule][0]:.2f}, 95th percentile {control[rule][1]:.2f}); total |effect| {maps[rule].abs().sum():.2f}")
fig = plotting.cmap_heatmaps({f"{rule} → base": m for rule, m in maps.items()}, base_circuit.classes,
                             f"CMAP (output), corrupted → base, {toxic_epochs} toxic epochs", cbar_label="change of base logit diff")
plt.show()

# %%
corrupted_sd = runs["subject-duplication"].model(toxic_epochs)[0]
outside = cmap_analyses.top_heads(maps["subject-duplication"], 8, exclude=base_circuit.heads)
chosen = sorted(set(base_circuit.heads) | set(outside))
pat = cmap_analyses.cmap_cached(corrupted_sd, s.model, ds, "pattern", heads=chosen,
                                tags=("subject-duplication", "base"))
back = cmap_analyses.cmap_cached(s.model, corrupted_sd, ds, "output", heads=chosen,
                                 tags=("base", "subject-duplication"))
fig = plotting.cmap_heatmaps({"pattern: corrupted → base": plotting.masked(pat, chosen),
                              "output: base → corrupted": plotting.masked(back, chosen)}, base_circuit.classes,
                             "Subject Duplication: pattern patching and the reverse direction", cbar_label="change of Y's logit diff")
plt.show()
glue("loc_sd", loc["subject-duplication"], display=False)
glue("loc_sd_control", control["subject-duplication"][1], display=False)
glue("loc_sd_control_mean", control["subject-duplication"][0], display=False)
glue("loc_clean", loc["clean (benign)"], display=False)
glue("loc_dup", loc["duplication"], display=False)

# %% [markdown]
# For Subject Duplication the circuit's heads carry {glue:text}`loc_sd:.1f` times their share of the
# cross-model effect; random head sets with the circuit's layer profile carry {glue:text}`loc_sd_control_mean:.1f`
# times on average ({glue:text}`loc_sd_control:.1f` at their 95th percentile). Benign clean fine-tuning gives
# {glue:text}`loc_clean:.1f` and the Duplication run {glue:text}`loc_dup:.1f`.

# %% [markdown]
# Localization above 1 is not specific to corruption: any fine-tuning changes the heads that compute the task.
# The claim is therefore judged against **benign fine-tuning**, the same statistic for chapter 3's clean run
# (first training seed, last epoch), on the same prompts: Subject Duplication's localization minus the clean
# run's, with a paired bootstrap interval over prompts. The Duplication run, which barely corrupts, is shown
# beside them (the paper's "ineffective" corruption plays that role there).

# %%
benign = "clean (benign)"
diff_ci = cmap_analyses.localization_difference_interval(per_prompt["subject-duplication"], per_prompt[benign],
                                                         base_circuit.heads)
print(f"localization, Subject Duplication minus clean fine-tuning: {loc['subject-duplication'] - loc[benign]:+.2f} "
      f"[{diff_ci[0]:+.2f}, {diff_ci[1]:+.2f}]; Duplication minus clean: {loc['duplication'] - loc[benign]:+.2f}")
_ = claims.check("Subject Duplication corruption is more localized to the base circuit than benign clean fine-tuning "
                 "(localization, Subject Duplication minus clean, same prompts)", loc["subject-duplication"] - loc[benign],
                 diff_ci, 0.0, ">=", paper=paper("corruption_localized"), enforce=enforce_claims, record=claim_log)
results.record(profile, "corruption", {
    "sd_logit_diff_base": sd[0]["logit_diff"], "sd_logit_diff_last": sd[-1]["logit_diff"],
    "sd_logit_diff_last_interval": sd[-1]["logit_diff_interval"],
    "curves": {rule: [r["logit_diff"] for r in rows[rule]] for rule in rows},
    "faithfulness_curves": {rule: [r["faithfulness_base_circuit"] for r in rows[rule]] for rule in rows},
    "localization": loc["subject-duplication"], "localization_control_p95": control["subject-duplication"][1],
    "localization_all": loc, "localization_intervals": loc_ci, "localization_control_all": control,
    "localization_minus_clean_interval": diff_ci,
    "sd_logit_diff_seeds": {"mean": sd_seeds.mean, "interval": sd_seeds.interval, "per_seed": sd_seeds.per_seed},
    "sign_flips": {rule: [list(h) for h in f] for rule, f in flips.items()},
    "containment_corrupted": {rule: rows[rule][-1]["containment_base"] for rule in rows},
    "twin_flips": {role: [list(h) for h in hs] for role, hs in flipped.items()}, "query_signal": [sig0, sig1],
    "claims": claim_log}, execution=execution)
