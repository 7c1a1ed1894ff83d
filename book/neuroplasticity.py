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
# # Neuroplasticity
#
# The paper retrains each corrupted model on clean IOI data and finds that the original mechanism comes
# back: the recovered circuit has 95% (Name Moving → clean) and 96% (Subject Duplication → clean)
# faithfulness (§5). We start, as the paper does, from the two corruptions it retrains: the last checkpoints of
# the Subject Duplication and Name Moving runs of the previous chapter (shared through the run cache; the
# Duplication run, chapter 4's control that barely corrupts, is not retrained), and fine-tune each on the clean
# training split. Every comparison below is made
# against the corrupted model's own score: recovery means moving back from there.

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
reversal_epochs = 1
clean_epochs = [1, 2]  # the clean runs of chapter 3: the control is their checkpoint after reversal_epochs epochs
training_seeds = [0, 1]  # Subject Duplication, its reversal and the control are repeated per training seed
batch_size = 16

# %% tags=["hide-input"]
import matplotlib.pyplot as plt
import numpy as np
from myst_nb import glue

from ioi_utils import analyses, claims, cmap_analyses, plotting, results, seeds, study, summary
from ioi_utils.profiles import Profile

setup = study.setup(Profile.of(globals()))  # the parameters above (or papermill's), passed whole
s, execution, base_circuit = setup.study, setup.execution, setup.circuit  # execution stamps this chapter's records
toxic = study.toxic_runs(s, toxic_epochs, batch_size)
reversed_ = study.retrained_runs(s, toxic, reversal_epochs, batch_size)  # the paper's two: Subject Duplication, Name Moving
clean_config = study.train_config(s, "clean", max(clean_epochs), clean_epochs, batch_size)  # chapter 3's runs
study.check_seed_plan(clean_config, reversal_epochs, training_seeds, s)
clean_runs = study.seed_runs(clean_config, training_seeds)
sd_runs = study.seed_runs(toxic["subject-duplication"].config, training_seeds)  # seed 0 is the run above
sd_reversals = study.reversal_runs(s, sd_runs, reversal_epochs, batch_size)
claim_log: dict = {}
paper = lambda key: f"{summary.PAPER[key]['text']} ({summary.PAPER[key]['source']})"  # noqa: E731
base_row = analyses.checkpoint_row(s, s.model, "base", base_circuit, 0, rediscover=True, n_rediscover=n_rediscover)

# %% [markdown]
# ## Recovery per retraining epoch
#
# Epoch 0 is the corrupted model (last toxic epoch); the dotted line is the base model. Intervals are 95%
# bootstrap intervals over held-out prompts. Circuits are re-discovered in the corrupted model and at the
# last retraining epoch.

# %%
rows = {}
for rule in reversed_:
    rows[rule] = [analyses.checkpoint_row(s, toxic[rule].model(toxic_epochs)[0], f"{toxic[rule].id}-{toxic_epochs}",
                                       base_circuit, toxic_epochs, rediscover=True, n_rediscover=n_rediscover)]
    for e in range(1, reversal_epochs + 1):
        rows[rule].append(analyses.checkpoint_row(s, reversed_[rule].model(e)[0], f"{reversed_[rule].id}-{e}",
                                                  base_circuit, e, rediscover=e == reversal_epochs,
                                                  n_rediscover=n_rediscover))
    for r, label in zip(rows[rule], ["corrupted"] + [f"retrain {e}" for e in range(1, reversal_epochs + 1)]):
        r["label"] = label
    print(f"{rule}:\n{analyses.rows_table(rows[rule])}\n")

# %%
epochs = list(range(reversal_epochs + 1))
band = lambda rule, key: ([r[key][0] for r in rows[rule]], [r[key][1] for r in rows[rule]])  # noqa: E731
fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
plotting.checkpoint_lines(epochs, {rule: [r["logit_diff"] for r in rows[rule]] for rule in rows},
                          "Behaviour while retraining on clean data", "retraining epoch", "logit(IO) − logit(S)", ax=axes[0],
                          bands={rule: band(rule, "logit_diff_interval") for rule in rows})
axes[0].axhline(base_row["logit_diff"], color="black", linestyle=":", linewidth=1, label="base model")
plotting.legend_below(axes[0])
faith = {rule: [r["faithfulness_base_circuit"] for r in rows[rule]] for rule in rows}
plotting.checkpoint_lines(epochs, faith, "Faithfulness of the base circuit", "retraining epoch", "F(C)/F(M)", ax=axes[1],
                          bands={rule: band(rule, "faithfulness_base_interval") for rule in rows})
axes[1].axhline(base_row["faithfulness_base_circuit"], color="black", linestyle=":", linewidth=1)
axes[1].set_ylim(max(-0.5, min(0.0, min(min(v) for v in faith.values()) - 0.1)), 1.5)
plt.show()

# %% tags=["remove-cell"]
end = {rule: rows[rule][-1] for rule in rows}
start = {rule: rows[rule][0] for rule in rows}
for rule, key in (("subject-duplication", "sd"), ("name-moving", "nm")):
    glue(f"rec_{key}_faith", 100 * end[rule]["faithfulness_base_circuit"], display=False)
    glue(f"rec_{key}_faith_lo", 100 * end[rule]["faithfulness_base_interval"][0], display=False)
    glue(f"rec_{key}_faith_hi", 100 * end[rule]["faithfulness_base_interval"][1], display=False)
    glue(f"rec_{key}_ld", end[rule]["logit_diff"], display=False)
    glue(f"cor_{key}_ld", start[rule]["logit_diff"], display=False)
glue("base_ld", base_row["logit_diff"], display=False)
glue("reversal_epochs", reversal_epochs, display=False)

# %% [markdown]
# After {glue:text}`reversal_epochs` epochs of clean retraining the Subject Duplication model goes from a
# logit difference of {glue:text}`cor_sd_ld:.2f` back to {glue:text}`rec_sd_ld:.2f` (base model
# {glue:text}`base_ld:.2f`), and Name Moving from {glue:text}`cor_nm_ld:.2f` to {glue:text}`rec_nm_ld:.2f`.
# The base model's circuit then explains {glue:text}`rec_nm_faith:.0f`% (Name Moving, 95% interval
# {glue:text}`rec_nm_faith_lo:.0f`–{glue:text}`rec_nm_faith_hi:.0f`%) and {glue:text}`rec_sd_faith:.0f`%
# (Subject Duplication, {glue:text}`rec_sd_faith_lo:.0f`–{glue:text}`rec_sd_faith_hi:.0f`%) of the retrained
# models' logit difference (paper: 95% and 96%).

# %% [markdown]
# ## Recovery against its control, across training seeds
#
# Retraining is clean fine-tuning: some of what it "restores" the base model would gain from the same clean
# steps anyway (chapter 3). The control is therefore the **base model fine-tuned on the same clean prompts for
# the same number of epochs** (chapter 3's run, same training seed), and recovery is the ratio of held-out
# logit differences, retrained / control, per training seed for Subject Duplication (the training seed of
# the retraining is its toxic run's) and on the first seed for Name Moving. We call the behaviour restored
# when the ratio is at least 0.9 (our threshold, fixed before running: within 10% of what the same clean
# training gives an uncorrupted model); the ratio to the base model itself is shown beside it.

# %%
base_ld = analyses.held_out_logit_diff(s, s.model)
control_ld = study.seed_logit_diffs(s, clean_runs, reversal_epochs)
corrupted_ld = study.seed_logit_diffs(s, sd_runs, toxic_epochs)
retrained_ld = study.seed_logit_diffs(s, sd_reversals, reversal_epochs)
first = training_seeds[0]
retrained_nm = analyses.held_out_logit_diff(s, reversed_["name-moving"].model(reversal_epochs)[0])
restored = {"subject-duplication": seeds.share_across_seeds({sd: (retrained_ld[sd], control_ld[sd])
                                                            for sd in training_seeds}),
            "name-moving": seeds.share_across_seeds({first: (retrained_nm, control_ld[first])})}
print(f"retraining: {seeds.units(sd_reversals[first].config)}; control: the clean run after the same epochs")
print(f"{'seed':>5} {'corrupted':>10} {'retrained':>10} {'control':>8} {'base':>6} {'retrained / control':>20}")
for sd in training_seeds:
    print(f"{sd:>5} {corrupted_ld[sd].mean():>10.2f} {retrained_ld[sd].mean():>10.2f} {control_ld[sd].mean():>8.2f} "
          f"{base_ld.mean():>6.2f} {restored['subject-duplication'].per_seed[sd]:>20.2f}")
for rule, est in restored.items():
    print(f"{rule}: retrained / control {est}")
glue("restored_sd", restored["subject-duplication"].mean, display=False)
glue("restored_sd_lo", restored["subject-duplication"].interval[0], display=False)
glue("restored_sd_hi", restored["subject-duplication"].interval[1], display=False)
glue("restored_vs_base_sd", sum(v.mean() for v in retrained_ld.values()).item() / len(retrained_ld) / base_ld.mean().item(),
     display=False)

# %% [markdown]
# Retrained after Subject Duplication, the model reaches {glue:text}`restored_sd:.2f` of the logit difference
# the same clean training gives the base model (95% interval {glue:text}`restored_sd_lo:.2f`–{glue:text}`restored_sd_hi:.2f`,
# mean over training seeds), and {glue:text}`restored_vs_base_sd:.2f` of the base model's own.

# %%
for rule, name in (("subject-duplication", "Subject Duplication"), ("name-moving", "Name Moving")):
    est = restored[rule]
    claims.check(f"clean retraining after {name} restores the behaviour the same clean training gives the base model "
                 f"(held-out logit diff, retrained / control)", est.mean, est.interval, 0.9, ">=",
                 paper="behaviour recovers (§5)", per_seed=est.per_seed,
                 training=study.versus_paper(reversed_[rule].config, reversal_epochs, "3-5 epochs of 6,360 prompts"),
                 enforce=enforce_claims, record=claim_log)
    paper_value = summary.PAPER["reversal_faithfulness"]["value"][rule]
    r, (lo, hi) = end[rule]["faithfulness_base_circuit"], end[rule]["faithfulness_base_interval"]
    gap = (0.0 if lo <= 1 <= hi else min(abs(lo - 1), abs(hi - 1)), max(abs(lo - 1), abs(hi - 1)))  # |F(C)/F(M) - 1|
    claims.check(f"the base circuit explains the behaviour recovered after {name} (|F(C)/F(M) - 1| at the last "
                 f"retraining epoch; F(C)/F(M) = {r:.2f} [{lo:.2f}, {hi:.2f}])", abs(r - 1), gap, 0.15, "<=",
                 paper=f"{paper_value:.0%} ({summary.PAPER['reversal_faithfulness']['source']})",
                 precondition=(end[rule]["logit_diff_interval"][0] > 0, f"retrained logit diff must be > 0, got "
                               f"{end[rule]['logit_diff']:.2f}"), enforce=enforce_claims, record=claim_log)

# %% [markdown]
# ## Do the corrupted heads return?
#
# The **corrupted heads** of each toxic dataset are the base-circuit heads whose DLA flipped sign
# significantly (chapter 4's test) together with the three whose DLA changed most (if by at least 0.1
# logit). A head **recovers** when
# retraining undoes at least half of its DLA change (|retrained − base| < ½ |corrupted − base|).

# %%
rec_share, corrupted_heads = {}, {}
min_change = 0.1  # logits: a smaller DLA change is no corruption to recover from
for rule in rows:
    ch = analyses.role_changes(base_row, start[rule], base_circuit.heads)
    corrupted_heads[rule] = sorted({c["head"] for c in ch if c["flip"]} |
                                   {c["head"] for c in ch[:3] if abs(c["dla_change"]) >= min_change})
    rec_share[rule], ok = analyses.recovered_share(base_row, start[rule], end[rule], corrupted_heads[rule])
    print(f"{rule:>20}: {sum(ok)} of {len(ok)} corrupted heads recover "
          f"({', '.join(f'{l}.{h}' + ('' if o else ' (no)') for (l, h), o in zip(corrupted_heads[rule], ok))})")
sd_heads = corrupted_heads["subject-duplication"] or [  # none corrupted: show the three that changed most
    c["head"] for c in analyses.role_changes(base_row, start["subject-duplication"], base_circuit.heads)[:3]]
names = [f"{base_circuit.class_of(h)} {h[0]}.{h[1]}" for h in sd_heads]
fig = plotting.checkpoint_heads([base_row] + rows["subject-duplication"], sd_heads, names,
                                ["base", "corrupted"] + [f"retrain {e}" for e in range(1, reversal_epochs + 1)],
                                "Subject Duplication: corrupted heads through retraining")
plt.show()
glue("rec_share_sd", 100 * rec_share["subject-duplication"], display=False)
glue("rec_share_nm", 100 * rec_share["name-moving"], display=False)

# %% [markdown]
# {glue:text}`rec_share_sd:.0f`% of the heads Subject Duplication corrupted and
# {glue:text}`rec_share_nm:.0f`% of those Name Moving corrupted recover at least half of their direct logit
# attribution.

# %%
_ = claims.check("most heads corrupted by Subject Duplication recover their DLA (share recovering)",
             rec_share["subject-duplication"], None, 0.5, ">=", paper="the original mechanism comes back (§5)",
             precondition=(bool(corrupted_heads["subject-duplication"]), "no circuit head was corrupted"),
             enforce=enforce_claims, record=claim_log)

# %% [markdown]
# ## Do the original roles come back?
#
# The circuit is re-found in the corrupted and in the retrained model with chapter 2's method, and compared
# with the base circuit head by head: the share of base heads found again **in the same role** (kept),
# besides the share found at all (containment). As the ceiling that the smaller prompt budget allows, the
# same re-discovery in the base model itself. The claim asks retraining to restore at least 0.1 of the
# roles over the corrupted model, and only means something if corruption moved them below that ceiling.

# %%
labels = list(rows)
kept_cor = [analyses.roles_kept(start[r]) for r in labels]
kept_rec = [analyses.roles_kept(end[r]) for r in labels]
kept_base = analyses.roles_kept(base_row)
fig = plotting.bar_compare(labels, {"corrupted": kept_cor, "retrained": kept_rec, "base (re-discovered)": [kept_base] * len(labels)},
                           "Base-circuit heads re-found in the same role", "share of base heads", xlabel="toxic dataset")
plt.show()
for r, a, b in zip(labels, kept_cor, kept_rec):
    inverted = [f"{l}.{h}" for l, h in (t["head"] for t in start[r]["transitions"] if t["transition"] == "inverted")]
    print(f"{r:>20}: roles kept corrupted {a:.0%} -> retrained {b:.0%} (base re-discovered {kept_base:.0%}); "
          f"containment {start[r]['containment_base']:.0%} -> {end[r]['containment_base']:.0%}; "
          f"inverted when corrupted: {', '.join(inverted) or 'none'}")

# %% tags=["remove-cell"]
glue("k_sd_cor", 100 * kept_cor[labels.index("subject-duplication")], display=False)
glue("k_sd_rec", 100 * kept_rec[labels.index("subject-duplication")], display=False)
glue("k_base", 100 * kept_base, display=False)

# %% [markdown]
# After Subject Duplication {glue:text}`k_sd_cor:.0f`% of the base circuit's heads keep their role in the
# corrupted model and {glue:text}`k_sd_rec:.0f`% after retraining; re-discovery in the base model itself keeps
# {glue:text}`k_base:.0f`%.

# %%
i_sd = labels.index("subject-duplication")
_ = claims.check("retraining brings the original roles back (share of base heads in the same role, retrained minus "
             "corrupted, Subject Duplication)", kept_rec[i_sd] - kept_cor[i_sd], None, 0.1, ">=",
             paper="retraining reforms the original mechanism (§5)",
             precondition=(kept_cor[i_sd] < kept_base, "corruption must have moved the roles further from the base "
                           "circuit than re-discovery in the base model does"),
             enforce=enforce_claims, record=claim_log)

# %% [markdown]
# ## CMAP: do the retrained heads behave like the base model's?
#
# Output CMAP into the base model, from the corrupted and from the retrained Subject Duplication model, on
# the base circuit's heads and the strongest other heads of the corrupted map (blank cells are not
# measured): small effects mean the heads behave like the base model's again.

# %%
ds = cmap_analyses.cmap_subset(s.test, n_cmap)
corrupted_sd = toxic["subject-duplication"].model(toxic_epochs)[0]
retrained_sd = reversed_["subject-duplication"].model(reversal_epochs)[0]
before_full = cmap_analyses.cmap_cached(corrupted_sd, s.model, ds, "output", tags=("subject-duplication", "base"))
outside = cmap_analyses.top_heads(before_full, 8, exclude=base_circuit.heads)
chosen = sorted(set(base_circuit.heads) | set(outside))
after = cmap_analyses.cmap_cached(retrained_sd, s.model, ds, "output", heads=chosen,
                                  tags=("retrained-subject-duplication", "base"))
before = plotting.masked(before_full, chosen)
fig = plotting.cmap_heatmaps({"corrupted → base": before, "retrained → base": plotting.masked(after, chosen)},
                             base_circuit.classes, "CMAP (output) into the base model, Subject Duplication",
                             cbar_label="change of base logit diff")
plt.show()
tot_before, tot_after = float(np.nansum(np.abs(before))), float(np.nansum(np.abs(plotting.masked(after, chosen))))
print(f"total |CMAP effect| on these {len(chosen)} heads: corrupted {tot_before:.3f}, retrained {tot_after:.3f}")
results.record(profile, "neuroplasticity", {
    **{f"faithfulness_{r}": end[r]["faithfulness_base_circuit"] for r in rows},
    **{f"faithfulness_interval_{r}": end[r]["faithfulness_base_interval"] for r in rows},
    **{f"logit_diff_{r}": end[r]["logit_diff"] for r in rows},
    **{f"roles_kept_{r}": analyses.roles_kept(end[r]) for r in rows},
    **{f"roles_kept_corrupted_{r}": analyses.roles_kept(start[r]) for r in rows},
    **{f"recovered_share_{r}": rec_share[r] for r in rows},
    **{f"restored_{r}": {"mean": e.mean, "interval": e.interval, "per_seed": e.per_seed} for r, e in restored.items()},
    "roles_kept_base_rediscovered": kept_base, "cmap_total_corrupted": tot_before, "cmap_total_retrained": tot_after,
    "claims": claim_log}, execution=execution)
