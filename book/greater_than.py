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
# # A second task: Greater-Than
#
# The paper carries its two findings beyond IOI to **Greater-Than** (Hanna et al. 2023; the paper's
# Appendix N): fine-tuning amplifies the circuit that already exists, and toxic fine-tuning corrupts it
# locally. The task: "The war lasted from the year 1732 to the year 17" should continue with a year later
# than 1732. Prompts use Hanna et al.'s template and nouns (those that are one token), start years 1702–1798
# with years that tokenize differently excluded, and each prompt has a "01" twin whose start year reads 1701
# (Hanna et al.'s corruption), which mean ablation and patching take their activations from.
#
# **The score** is the probability difference P(year > YY) − P(year ≤ YY), computed exactly for the tokenizer
# (`ioi_utils.prompts.greater_than`). GPT-2 writes "32" as one token, so the END position's mass on the year tokens
# "00"–"99" decides it. SmolLM2 writes years digit by digit (" ", "1", "7", "3", "2"), so END predicts the tens
# digit and the ones digit needs a second position: the dataset appends YY's tens digit after END, and one
# forward gives both distributions. A tens digit other than YY's decides the comparison (its whole mass counts);
# for the tie, the ones digit after YY's tens digit decides. Mass on tokens that are not digits counts on
# neither side.
#
# Everything else is the IOI machinery with the task as a parameter: the minimal faithful subset of chapter 2
# (admission of heads by knockout attribution and exact prefix search, with mean ablation to the "01" twins'
# mean at every position), faithfulness F(C)/F(M), per-layer MLP knockout, fine-tuning (cross-entropy on the
# digits of a label year), and cross-model patching.
# Wang et al.'s head classes (Name Mover, S-Inhibition, ...) are IOI's, so Greater-Than heads are described by
# their direct logit attribution and their attention from END to the start year instead.

# %% tags=["parameters", "remove-cell"]
profile = "smoke"
enforce_claims = False
model_name = "smollm2-135m"  # the book's model: identifies this execution for the summary
seed = 0
device = "auto"
threads = 2  # torch CPU threads (None: torch's default); fixed in the smoke profile so its outputs repeat exactly
batch_size = 16
gt_model_name = "smollm2-135m"  # a model whose tokenizer writes years
gt_n_train = 16  # fine-tuning prompts
gt_n_eval = 16  # held-out prompts: base behaviour and base-circuit faithfulness
gt_n_discovery = 16  # discovery prompts (disjoint from both)
gt_n_epoch_eval = 16  # held-out prompts measured at every epoch (the first of gt_n_eval)
gt_n_mlp = 8  # held-out prompts of the per-layer MLP knockout (one forward per layer)
gt_n_cmap = 8  # held-out prompts of the cross-model patching estimate
gt_clean_epochs = 1
gt_toxic_epochs = 1

# %% tags=["hide-input"]
import matplotlib.pyplot as plt
from myst_nb import glue

from ioi_utils import analyses, claims, cmap_analyses, greater_than_study as gt, plotting, results, study
from ioi_utils.profiles import Profile

st = gt.prepare_for(Profile.of(globals()))  # the gt_* parameters above (or papermill's), passed whole
# the book's model identifies this execution (loaded only if the chapter studies another one)
execution = study.book_execution(profile, model_name, st.model if gt_model_name == model_name else None)
claim_log: dict = {}
n_nouns, n_years = gt.vocabulary_counts(st)
print(f"{gt_model_name}: years are written as {st.test.year.kind} tokens; {n_nouns} nouns, "
      f"{n_years} start years; {len(st.train)} training, {len(st.test)} held-out, "
      f"{len(st.disc)} discovery prompts")
print("example:", repr(st.test.texts[0]), "| its 01 twin:", repr(st.abc.texts[0]))

# %% [markdown]
# ## The base model does the task
#
# Probability difference on the held-out prompts, with a 95% bootstrap interval over prompts.

# %%
found = gt.discover(st)
heads = [tuple(h) for h in found["heads"]]
base = gt.checkpoint_row(st, st.model, "base", heads, 0, gt_n_eval)
glue("gt_base_pd", base["prob_diff"], display=False)
glue("gt_base_pd_lo", base["prob_diff_interval"][0], display=False)
glue("gt_base_pd_hi", base["prob_diff_interval"][1], display=False)
glue("gt_base_acc", 100 * base["accuracy"], display=False)
glue("gt_n_eval", len(st.test), display=False)
print(f"held-out probability difference {base['prob_diff']:.3f} "
      f"[{base['prob_diff_interval'][0]:.3f}, {base['prob_diff_interval'][1]:.3f}], {base['accuracy']:.0%} of prompts > 0")

# %% [markdown]
# On {glue:text}`gt_n_eval` held-out prompts the probability difference is {glue:text}`gt_base_pd:.3f`
# (95% interval {glue:text}`gt_base_pd_lo:.3f`–{glue:text}`gt_base_pd_hi:.3f`), positive on
# {glue:text}`gt_base_acc:.0f`% of the prompts.

# %%
_ = claims.check("the base model does Greater-Than (held-out probability difference)", base["prob_diff"],
                 base["prob_diff_interval"], 0.0, ">=", paper="not stated", enforce=enforce_claims, record=claim_log)

# %% [markdown]
# ## The base circuit
#
# **Heads.** Admission, chapter 2's minimal faithful subset (IOI's path-patching steps have no Greater-Than
# counterpart here): from the whole model, heads are pruned by their first-order
# contribution to the knockout (mean ablation to the "01" mean at every position) and the shortest prefix of
# the ranking that keeps F(C)/F(M) ≥ 0.9 on the discovery prompts is found by exact forwards. Faithfulness is
# then measured on the held-out prompts. **MLPs** are never ablated in the head knockout (as for IOI); their
# part is measured by mean-ablating one layer's MLP at a time. For comparison, Hanna et al. report for
# GPT-2 small attention heads 5.1, 5.5, 6.1, 6.9, 7.10, 8.8, 8.11, 9.1 attending to the start year and
# MLPs 8–11 computing the comparison (as recalled here; we did not check it against their text). Head
# indices do not transfer between models.

# %%
readouts = gt.head_readouts(st, st.model, gt_n_epoch_eval)
mlp = gt.mlp_knockout(st, st.model, gt_n_mlp)
mlp_ref = base["prob_diff"] if gt_n_mlp == gt_n_eval else gt.checkpoint_row(st, st.model, "base", heads, 0, gt_n_mlp)["prob_diff"]
by_effect = sorted(heads, key=lambda h: -float(found["attribution"][h]))
print(f"{len(heads)} heads (strongest attributed share first):")
for h in by_effect:
    print(f"  {h[0]}.{h[1]}: attributed share {float(found['attribution'][h]):+.2f}, "
          f"DLA {float(readouts['dla'][h]):+.3f}, attention END->YY {float(readouts['attn_yy'][h]):.2f}")
drops = sorted(range(1, len(mlp)), key=lambda l: float(mlp[l]) - mlp_ref)[:4]  # layer 0 apart (see below)
print(f"MLP 0 mean-ablated: {float(mlp[0]) - mlp_ref:+.3f}; the layers above it whose ablation lowers the "
      "probability difference most:", ", ".join(f"{l} ({float(mlp[l]) - mlp_ref:+.3f})" for l in drops))

# %%
circuit = gt.as_circuit(heads)
fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
plotting.head_heatmap(readouts["dla"], "DLA at END: later − earlier years", circuit.classes, ax=axes[0])
plotting.head_heatmap(readouts["attn_yy"], "attention END → start year", circuit.classes, ax=axes[1], symmetric=False)
plt.show()
fig, ax = plt.subplots(figsize=(8, 3.2))
ax.bar(range(len(mlp)), (mlp - mlp_ref).numpy())
ax.set(title="Mean-ablating one MLP layer", xlabel="layer", ylabel="change of probability difference")
plt.show()

# %% tags=["remove-cell"]
glue("gt_circuit_size", len(heads), display=False)
glue("gt_circuit_heads", ", ".join(f"{l}.{h}" for l, h in sorted(heads)), display=False)
glue("gt_faith", 100 * base["faithfulness"], display=False)
glue("gt_faith_lo", 100 * base["faithfulness_interval"][0], display=False)
glue("gt_faith_hi", 100 * base["faithfulness_interval"][1], display=False)
yy_heads = [h for h in sorted(heads) if float(readouts["attn_yy"][h]) >= 0.5]  # attend mostly to the start year
glue("gt_yy_heads", ", ".join(f"{l}.{h}" for l, h in yy_heads) or "none", display=False)
glue("gt_n_yy_heads", len(yy_heads), display=False)
glue("gt_mlp0_drop", float(mlp[0]) - mlp_ref, display=False)
glue("gt_top_mlp", drops[0], display=False)
glue("gt_top_mlp_drop", float(mlp[drops[0]]) - mlp_ref, display=False)
glue("gt_mlp_layers", ", ".join(str(l) for l in drops), display=False)

# %% [markdown]
# The circuit has {glue:text}`gt_circuit_size` heads ({glue:text}`gt_circuit_heads`). Kept alone, every other
# head mean-ablated, it keeps {glue:text}`gt_faith:.0f`% of the model's probability difference on the held-out
# prompts (95% interval {glue:text}`gt_faith_lo:.0f`–{glue:text}`gt_faith_hi:.0f`%). {glue:text}`gt_n_yy_heads` of
# its heads put at least half of END's attention on the start year's tens digit ({glue:text}`gt_yy_heads`), the
# role Hanna et al. give GPT-2's year-attending heads. Mean-ablating the MLP of
# layer 0 changes the probability difference by {glue:text}`gt_mlp0_drop:+.3f`; that MLP processes every token
# right after the embedding, so its cost says little about where the comparison is made. Above it, ablating
# layer {glue:text}`gt_top_mlp` costs the most ({glue:text}`gt_top_mlp_drop:+.3f`); the four costliest layers
# above layer 0 are {glue:text}`gt_mlp_layers`.

# %%
_ = claims.check("a sparse head circuit explains Greater-Than (F(C)/F(M) of the base circuit, held-out)",
             base["faithfulness"], base["faithfulness_interval"], 0.9, ">=", paper="not stated",
             precondition=(base["prob_diff_interval"][0] > 0, "the base model must do the task"),
             enforce=enforce_claims, record=claim_log)

# %% [markdown]
# ## Amplification: clean fine-tuning
#
# Fine-tuning on the training prompts with a later year as the label (cross-entropy on its two digits, or its
# one token for GPT-2; the same optimizer settings as the IOI chapters). At every epoch, on the first held-out
# prompts: the probability difference and the faithfulness of the **base** circuit in the fine-tuned model.

# %%
clean_run = gt.train_run(st, "clean", gt_clean_epochs, batch_size)
start = gt.checkpoint_row(st, st.model, "base", heads, 0, gt_n_epoch_eval)
clean_rows = gt.run_rows(st, clean_run, start, heads, gt_clean_epochs, gt_n_epoch_eval)
print("\n".join(gt.format_row(r) for r in clean_rows))

# %% tags=["remove-cell"]
clean_last = clean_rows[-1]
clean_gain_ci = analyses.change_interval(clean_last["per_prompt"], start["per_prompt"])
glue("gt_clean_pd0", start["prob_diff"], display=False)
glue("gt_clean_pd", clean_last["prob_diff"], display=False)
glue("gt_clean_epochs", gt_clean_epochs, display=False)
glue("gt_clean_faith", 100 * clean_last["faithfulness"], display=False)
glue("gt_clean_faith_lo", 100 * clean_last["faithfulness_interval"][0], display=False)
glue("gt_clean_faith_hi", 100 * clean_last["faithfulness_interval"][1], display=False)

# %% [markdown]
# After {glue:text}`gt_clean_epochs` epochs the probability difference goes from {glue:text}`gt_clean_pd0:.3f`
# to {glue:text}`gt_clean_pd:.3f`, and the base circuit keeps {glue:text}`gt_clean_faith:.0f`% of it (95%
# interval {glue:text}`gt_clean_faith_lo:.0f`–{glue:text}`gt_clean_faith_hi:.0f`%). The probability difference
# is bounded by 1, so a model that already scores near 1 has little room to grow.

# %%
claims.check("clean fine-tuning raises the probability difference (last epoch minus base, paired)",
             clean_last["prob_diff"] - start["prob_diff"], clean_gain_ci, 0.0, ">=",
             paper="amplification carries over to Greater-Than (App. N; no number)",
             enforce=enforce_claims, record=claim_log)
_ = claims.check("the base circuit still explains the fine-tuned behaviour (F(C)/F(M), last clean epoch)",
             clean_last["faithfulness"], clean_last["faithfulness_interval"], 0.9, ">=", paper="not stated",
             precondition=(clean_last["prob_diff_interval"][0] > 0, "the fine-tuned model must do the task"),
             enforce=enforce_claims, record=claim_log)

# %% [markdown]
# ## Corruption: a toxic Greater-Than dataset
#
# Our toxic rule, **earlier-year**: the label is a year *before* the start year (for "1732 to the year 17",
# e.g. "15"). The model is fine-tuned on it and measured on the held-out prompts (still scored as
# Greater-Than), with the base circuit's faithfulness at every epoch. Where the change sits: a first-order
# estimate of cross-model patching (`mechanisms.activation_patching.cmap_attribution`: each head's output from the base model put
# into the toxic one, one forward and backward) gives every head's share of the change; its localisation is
# the share of |effect| on the base circuit's heads over their share of all heads, against random head sets of
# the same size drawn from the same layers (`cmap_analyses.localization_control`).

# %%
toxic_run = gt.train_run(st, "toxic", gt_toxic_epochs, batch_size, dataset="earlier-year")
toxic_rows = gt.run_rows(st, toxic_run, start, heads, gt_toxic_epochs, gt_n_epoch_eval)
print("\n".join(gt.format_row(r) for r in toxic_rows))

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
runs_rows = {"clean": clean_rows, "earlier-year (toxic)": toxic_rows}
band = lambda rows, key: ([r[key][0] for r in rows], [r[key][1] for r in rows])  # noqa: E731
plotting.checkpoint_lines([r["epoch"] for r in clean_rows], {"clean": [r["prob_diff"] for r in clean_rows]},
                          "Probability difference (held-out)", "epoch", "P(later) − P(not later)", ax=axes[0],
                          bands={"clean": band(clean_rows, "prob_diff_interval")})
plotting.checkpoint_lines([r["epoch"] for r in toxic_rows], {"toxic": [r["prob_diff"] for r in toxic_rows]},
                          "Probability difference (held-out)", "epoch", "P(later) − P(not later)", ax=axes[0],
                          bands={"toxic": band(toxic_rows, "prob_diff_interval")})
for name, rows in runs_rows.items():
    plotting.checkpoint_lines([r["epoch"] for r in rows], {name: [r["faithfulness"] for r in rows]},
                              "Faithfulness of the base circuit", "epoch", "F(C)/F(M)", ax=axes[1],
                              bands={name: band(rows, "faithfulness_interval")})
plt.show()

# %%
toxic_model = toxic_run.model(gt_toxic_epochs)[0]
effects = gt.cmap_effects(st, st.model, toxic_model, gt_n_cmap, ("base", f"{toxic_run.id}-{gt_toxic_epochs}"))
loc = cmap_analyses.localization(effects, heads)
loc_mean, loc_p95 = cmap_analyses.localization_control(effects, heads)
fig = plotting.head_heatmap(effects, "CMAP estimate: base head output into the toxic model", circuit.classes,
                            cbar_label="change of probability difference")
plt.show()
toxic_last = toxic_rows[-1]
toxic_drop_ci = analyses.change_interval(toxic_last["per_prompt"], start["per_prompt"])
glue("gt_toxic_pd", toxic_last["prob_diff"], display=False)
glue("gt_toxic_epochs", gt_toxic_epochs, display=False)
glue("gt_toxic_faith", 100 * toxic_last["faithfulness"], display=False)
glue("gt_toxic_faith_lo", 100 * toxic_last["faithfulness_interval"][0], display=False)
glue("gt_toxic_faith_hi", 100 * toxic_last["faithfulness_interval"][1], display=False)
glue("gt_loc", loc, display=False)
glue("gt_loc_p95", loc_p95, display=False)
glue("gt_loc_mean", loc_mean, display=False)

# %% [markdown]
# After {glue:text}`gt_toxic_epochs` toxic epochs the probability difference is {glue:text}`gt_toxic_pd:.3f`
# (from {glue:text}`gt_clean_pd0:.3f`), and the base circuit's F(C)/F(M) is {glue:text}`gt_toxic_faith:.0f`%
# (95% interval {glue:text}`gt_toxic_faith_lo:.0f`–{glue:text}`gt_toxic_faith_hi:.0f`%). The circuit's heads
# carry {glue:text}`gt_loc:.2f` times their share of the estimated patching effect; random head sets from the
# same layers carry {glue:text}`gt_loc_mean:.2f` on average (95th percentile {glue:text}`gt_loc_p95:.2f`).

# %%
claims.check("toxic fine-tuning lowers the probability difference (last toxic epoch minus base, paired)",
             toxic_last["prob_diff"] - start["prob_diff"], toxic_drop_ci, 0.0, "<=", paper="not stated",
             enforce=enforce_claims, record=claim_log)
_ = claims.check("the corruption is localized on the base circuit's heads (localization of the CMAP estimate)",
             loc, None, loc_p95, ">=",
             paper="localized corruption carries over to Greater-Than (App. N; no number)",
             enforce=enforce_claims, record=claim_log)

# %% [markdown]
# ## What carries over from IOI
#
# The same questions as the IOI chapters, answered on Greater-Than in this execution (verdicts of the claims
# above); the IOI column is the paper's finding on GPT-2 small as we read it (chapters 3–4 test it on our model).

# %%
side = [("a sparse head circuit explains the task", "yes (Wang et al.; the paper's Table 1)",
         "the base model does Greater-Than (held-out probability difference)",
         "a sparse head circuit explains Greater-Than (F(C)/F(M) of the base circuit, held-out)"),
        ("clean fine-tuning amplifies the behaviour", "yes (§4.1)",
         "clean fine-tuning raises the probability difference (last epoch minus base, paired)", None),
        ("the base circuit still explains it after fine-tuning", "yes, 98.4–99.9% (Table 1)",
         "the base circuit still explains the fine-tuned behaviour (F(C)/F(M), last clean epoch)", None),
        ("toxic fine-tuning reverses the behaviour", "yes (§4.2)",
         "toxic fine-tuning lowers the probability difference (last toxic epoch minus base, paired)", None),
        ("the corruption is local to the circuit", "yes (Figure 11)",
         "the corruption is localized on the base circuit's heads (localization of the CMAP estimate)", None)]
print(f"{'question':<55} {'IOI (paper, GPT-2)':<40} Greater-Than (ours, {gt_model_name})")
for question, ioi, key, extra in side:
    verdicts = [claim_log[key]["verdict"]] + ([claim_log[extra]["verdict"]] if extra else [])
    print(f"{question:<55} {ioi:<40} {' / '.join(verdicts)}")
results.record(profile, "greater_than", {
    "prob_diff_base": base["prob_diff"], "prob_diff_base_interval": base["prob_diff_interval"],
    "circuit": [list(h) for h in sorted(heads)], "faithfulness_base": base["faithfulness"],
    "faithfulness_base_interval": base["faithfulness_interval"], "mlp_knockout": (mlp - mlp_ref).tolist(),
    "clean_rows": [{k: r[k] for k in ("epoch", "prob_diff", "prob_diff_interval", "faithfulness", "faithfulness_interval")}
                   for r in clean_rows],
    "toxic_rows": [{k: r[k] for k in ("epoch", "prob_diff", "prob_diff_interval", "faithfulness", "faithfulness_interval")}
                   for r in toxic_rows],
    "localization": loc, "localization_control": (loc_mean, loc_p95), "claims": claim_log}, execution=execution)
