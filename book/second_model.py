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
# # Does it generalise? A second model
#
# The paper's first open question is whether its findings hold beyond GPT-2 small. The book's main model,
# SmolLM2-135M-Instruct, answers it for one other architecture, but it is *instruction-tuned*: its "base" has
# already been fine-tuned, a confound for a paper about what fine-tuning does to a circuit. This chapter runs the
# paper's three headline experiments on **Gemma-3-270M, the pretrained base model** of another family (18 layers
# of 4 query heads sharing one key/value head, q/k norms, sliding-window layers, a 262,144-token vocabulary) with
# the same code, statistics and thresholds as the chapters that run them on the main model:
#
# 1. **the base circuit**, found with chapter 2's method, with its roles and its faithfulness on held-out prompts;
# 2. **amplification**: clean fine-tuning repeated over training seeds (chapter 3's relative gain);
# 3. **corruption and neuroplasticity**: Subject Duplication over the same seeds (chapter 4), then clean
#    retraining judged against the clean run of the same seed after the same epochs (chapter 5).
#
# Each claim is checked with its chapter's statement and threshold (`ioi_utils.study.generalisation`), and the last
# table sets GPT-2 small (the paper), the main model (its chapters' records) and Gemma side by side. Gemma is
# larger than SmolLM2 and its vocabulary is eight times larger, so on two CPU cores its training is smaller:
# the *training* column states exactly how much (our choice, fixed in the profile before running).

# %% tags=["parameters", "remove-cell"]
profile = "smoke"
enforce_claims = False
model_name = "smollm2-135m"  # the main model, whose chapters' records fill its column
seed = 0
device = "auto"
threads = 2  # torch CPU threads (None: torch's default); fixed in the smoke profile so its outputs repeat exactly
batch_size = 16
second_model_name = "gemma3-270m"
second_n_prompts = 16
second_n_eval = 16
second_n_discovery = 16
second_clean_epochs = [1]
second_toxic_epochs = 1
second_reversal_epochs = 1
second_training_seeds = [0]

# %% tags=["hide-input"]
import matplotlib.pyplot as plt
from IPython.display import Markdown, display
from myst_nb import glue

from ioi_utils import analyses, generalisation, plotting, results, seeds, study, summary
from ioi_utils.profiles import Profile

setup = study.setup(Profile.of(globals()).second_model())  # the second model's sizes in the main model's places
s, base, found = setup.study, setup.base, setup.discovery
execution = study.book_execution(profile, model_name)  # stamps this chapter's record beside the main model's
circuit = found.circuit
claim_log: dict = {}
print(f"{second_model_name}: {base}; {len(s.disc)} discovery prompts, {len(s.test)} held-out prompts (disjoint); "
      f"a BOS token is prepended: {s.model.prepend_bos}")

# %% [markdown]
# ## The base circuit
#
# Path patching to the logits and the later steps, as in chapter 2; the circuit's heads are outlined in their
# class's colour.

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 0.3 * s.model.cfg.n_layers + 2))
plotting.head_heatmap(found.maps["direct"], "path patching: head -> logits", circuit.classes, ax=axes[0])
plotting.head_heatmap(found.maps["dla"], "direct logit attribution", circuit.classes, ax=axes[1])
plt.show()

# %%
counts = {c: len(hs) for c, hs in circuit.classes.items() if hs}
n_other = len(circuit.classes["OTH"])
other_share = n_other / max(1, len(circuit.heads))
display(Markdown("| role | heads |\n|---|---|\n" + "\n".join(
    f"| {circuit.role_name(c)} ({c}) | {', '.join(f'{l}.{h}' for l, h in hs)} |"
    for c, hs in circuit.classes.items() if hs)))
print(f"{len(circuit.heads)} of {s.model.cfg.n_layers * s.model.cfg.n_heads} heads; Other: {n_other} ({other_share:.0%})")
faith = analyses.faithfulness_cached(s, circuit)
lo, hi = faith.interval()
print(f"F(M) = {faith.f_model:.3f}, F(C) = {faith.f_circuit:.3f}, F(C)/F(M) = {faith.ratio:.1%} [95% CI {lo:.1%}, {hi:.1%}]")

# %%
generalisation.check("roles", other_share, None, claim_log, enforce=enforce_claims)
_ = generalisation.check("faithfulness", faith.ratio, (lo, hi), claim_log, enforce=enforce_claims,
                         precondition=(faith.f_model > 0, f"F(M) = {faith.f_model:.2f} must be > 0"))

# %% tags=["remove-cell"]
glue("g_ld", base.logit_diff, display=False)
glue("g_acc", 100 * base.accuracy, display=False)
glue("g_heads", len(circuit.heads), display=False)
glue("g_nm", len(circuit.classes["NM"]), display=False)
glue("g_nnm", len(circuit.classes["NNM"]), display=False)
glue("g_faith", 100 * faith.ratio, display=False)
glue("g_faith_lo", 100 * lo, display=False)
glue("g_faith_hi", 100 * hi, display=False)

# %% [markdown]
# The base model solves the task (held-out logit difference {glue:text}`g_ld:.2f`, accuracy
# {glue:text}`g_acc:.0f`%). Its circuit has {glue:text}`g_heads` heads, {glue:text}`g_nm` of them Name Movers
# and {glue:text}`g_nnm` Negative Name Movers, and keeps {glue:text}`g_faith:.0f`% (95% interval
# {glue:text}`g_faith_lo:.0f`–{glue:text}`g_faith_hi:.0f`%) of the model's logit difference on held-out prompts.

# %% [markdown]
# ## Amplification, corruption and recovery, over training seeds
#
# Clean fine-tuning, Subject Duplication and the clean retraining of each corrupted run, for every training seed
# (the same prompts, shuffled in another order), with the main model's optimizer settings (AdamW, learning rate
# 1e-5, weight decay 0.1, cross-entropy on the answer token at END). The control of a retraining is the clean run
# of the same seed after the same number of epochs.

# %%
runs = generalisation.headline_runs(s, second_clean_epochs, second_toxic_epochs, second_reversal_epochs, batch_size,
                                    second_training_seeds)
est = generalisation.headline_estimates(s, runs)
first = second_training_seeds[0]
print(f"clean: {seeds.units(runs.clean[first].config)}; Subject Duplication: {seeds.units(runs.corrupted[first].config)}; "
      f"retraining: {seeds.units(runs.retrained[first].config)} (batch {batch_size})")
print(f"{'seed':>5} {'base':>6} {'clean':>6} {'SD':>7} {'retrained':>10} {'control':>8}")
for sd in second_training_seeds:
    print(f"{sd:>5} {est.base.mean():>6.2f} {est.tuned[sd].mean():>6.2f} {est.corrupted[sd].mean():>7.2f} "
          f"{est.retrained[sd].mean():>10.2f} {est.control[sd].mean():>8.2f}")
print(f"relative clean gain: {est.clean_gain}")
print(f"logit difference after Subject Duplication: {est.sd_logit_diff}")
print(f"retrained / control: {est.recovery}")

# %%
curves = {f"clean, seed {sd}": c for sd, c in study.seed_curves(runs.clean).items()}
curves |= {f"Subject Duplication, seed {sd}": c for sd, c in study.seed_curves(runs.corrupted).items()}
paper_points = {"paper, GPT-2 small: clean (epochs 1, 100)": ([6360, 636000], list(summary.PAPER["clean_logit_diff"]["value"])),
                "paper, GPT-2 small: Subject Duplication (0, 5 epochs)": ([0, 5 * seeds.PAPER_EPOCH_SAMPLES],
                                                                           list(summary.PAPER["sd_logit_diff"]["value"]))}
fig = plotting.samples_seen(curves, paper_points, f"{second_model_name}: held-out logit difference", "logit(IO) − logit(S)")
plt.show()

# %%
clean_cfg, sd_cfg, rev_cfg = runs.clean[first].config, runs.corrupted[first].config, runs.retrained[first].config
generalisation.check("clean_gain", est.clean_gain.mean, est.clean_gain.interval, claim_log, enforce=enforce_claims,
                     per_seed=est.clean_gain.per_seed,
                     training=study.versus_paper(clean_cfg, max(second_clean_epochs), "1-100 epochs of 6,360 prompts"))
generalisation.check("sd_corrupts", est.sd_logit_diff.mean, est.sd_logit_diff.interval, claim_log,
                     enforce=enforce_claims, per_seed=est.sd_logit_diff.per_seed,
                     training=study.versus_paper(sd_cfg, second_toxic_epochs, "5 epochs of 6,360 prompts"))
corrupted_less = est.sd_logit_diff.interval[1] < est.base.mean().item()
_ = generalisation.check("sd_recovers", est.recovery.mean, est.recovery.interval, claim_log,
                         enforce=enforce_claims, per_seed=est.recovery.per_seed,
                         training=study.versus_paper(rev_cfg, second_reversal_epochs, "3-5 epochs of 6,360 prompts"),
                         precondition=(corrupted_less, "Subject Duplication must have lowered the logit difference "
                                       "below the base model's (upper end of its interval)"))

# %% tags=["remove-cell"]
glue("g_gain", 100 * est.clean_gain.mean, display=False)
glue("g_sd", est.sd_logit_diff.mean, display=False)
glue("g_rec", est.recovery.mean, display=False)
glue("g_seeds", len(second_training_seeds), display=False)

# %% [markdown]
# Over {glue:text}`g_seeds` training seeds, clean fine-tuning changes Gemma's held-out logit difference by
# {glue:text}`g_gain:.1f`% on average, Subject Duplication leaves it at {glue:text}`g_sd:.2f`, and clean retraining
# reaches {glue:text}`g_rec:.2f` times what the same clean training gives the uncorrupted model.

# %% [markdown]
# ## The mechanism head by head
#
# The paper explains amplification and corruption by what happens to particular heads (§4.1, §4.2): fine-tuning
# makes the Name Movers attend more to IO and write more of it, the Negative Name Movers amplify alongside, and
# Subject Duplication inverts Name Movers and Negative Name Movers together. The same checks as chapters 3 and 4,
# on Gemma's base-circuit heads of those roles, in the first training seed's runs (as the main model's chapters
# read theirs), with 95% paired bootstrap intervals over held-out prompts.

# %%
heads = generalisation.head_level(s, circuit, runs)
print(generalisation.head_lines(heads, circuit))
has = lambda c: (bool(heads.roles[c]), f"the base circuit has no {circuit.role_name(c)}")  # noqa: E731
generalisation.check("nm_attention", heads.nm_attention[0], heads.nm_attention[1], claim_log, enforce=enforce_claims,
                     precondition=has("NM"))
generalisation.check("nm_dla", heads.nm_dla[0], heads.nm_dla[1], claim_log, enforce=enforce_claims,
                     precondition=has("NM"))
generalisation.check("nnm_amplify", heads.nnm_dla[0], heads.nnm_dla[1], claim_log, enforce=enforce_claims,
                     precondition=has("NNM"))
_ = generalisation.check("twinning", min(len(heads.flipped["NM"]), len(heads.flipped["NNM"])), None, claim_log,
                         enforce=enforce_claims, precondition=(all(heads.roles.values()), "the base circuit needs "
                                                               "both Name Movers and Negative Name Movers"))

# %% tags=["remove-cell"]
glue("g_nm_flip", len(heads.flipped["NM"]), display=False)
glue("g_nnm_flip", len(heads.flipped["NNM"]), display=False)
glue("g_nm_dla", heads.nm_dla[0], display=False)
glue("g_nnm_dla", heads.nnm_dla[0], display=False)

# %% [markdown]
# After clean fine-tuning the Name Movers' summed DLA changes by {glue:text}`g_nm_dla:+.2f` logits and the
# Negative Name Movers' by {glue:text}`g_nnm_dla:+.2f`; under Subject Duplication {glue:text}`g_nm_flip` of
# {glue:text}`g_nm` Name Movers and {glue:text}`g_nnm_flip` of {glue:text}`g_nnm` Negative Name Movers flip the sign
# of their DLA.

# %% [markdown]
# ## Three models side by side
#
# One row per headline claim: the paper's value for GPT-2 small, then each model's value with its 95% interval and
# the verdict under the same threshold. The main model's column is read from its chapters' records of this
# profile, or where this execution has none, from the book's executed notebooks of the same profile (the source
# is named below the table).

# %%
main, sources = generalisation.main_model_claims(profile, model_name, published=".")  # "." is book/ when executed
display(Markdown(generalisation.side_by_side(main, claim_log, f"{model_name} (instruct)",
                                             f"{second_model_name} (base)")))
print(f"{model_name}'s column: {len(main)} of {len(generalisation.HEADLINES)} claims, "
      + ("none in this profile yet" if not sources else
         "from this execution's chapter records" if sources == {f"execution {execution}"} else
         "from " + "; ".join(sorted(sources))))
display(Markdown(generalisation.compare(main, claim_log, model_name, second_model_name)))

# %% tags=["remove-cell"]
results.record(profile, "second_model", {
    "model": second_model_name, "claims": claim_log, "n_heads": len(circuit.heads), "other_share": other_share,
    "faithfulness": faith.ratio, "faithfulness_ci": [lo, hi], "circuit": circuit.to_json(),
    "clean_gain": est.clean_gain.mean, "sd_logit_diff": est.sd_logit_diff.mean, "recovery": est.recovery.mean,
}, execution)
