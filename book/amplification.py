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
# # Circuit amplification
#
# The paper fine-tunes GPT-2 small on clean IOI data for 1 to 100 epochs and finds that the logit
# difference grows (6.32 → 26.83) while the circuit keeps explaining the behaviour (faithfulness 98.4% to
# 99.9% across those epochs, Table 1) and grows only a little (1.92% → 2.68% of the components); heads
# get stronger (L10H10's logit attribution 0.4 → 1.8, §4.1): "circuit amplification". We fine-tune the
# base model on our clean training split with our own choices, since the paper states no optimizer,
# learning rate, weight decay, batch size or dataset size (AdamW, learning rate 1e-5, weight decay 0.1,
# cross-entropy on the answer token at END) and analyse each checkpoint of the epoch grid on the held-out
# prompts.

# %% tags=["parameters"]
profile = "smoke"
enforce_claims = False
model_name = "tiny"
seed = 0
device = "auto"
n_prompts = 64
n_eval = 32
clean_epochs = [1, 2]
batch_size = 16

# %%
import matplotlib.pyplot as plt
from myst_nb import glue

from ioi_utils import attribution, circuits, claims, patching, plotting, results, study, training

s = study.prepare(model_name, n_prompts, n_eval, seed, device, batch_size)
execution = results.execution_id(profile, s.model)  # stamps this execution's records
base_circuit = study.discover_cached(s, s.model, "base").circuit
run = training.train(study.train_config(s, "clean", max(clean_epochs), clean_epochs, batch_size), progress=False)
print(run)

# %% [markdown]
# ## Behaviour and faithfulness across epochs
#
# For every checkpoint: the held-out logit difference, the faithfulness of the **base model's circuit**
# inside the fine-tuned model (does the old mechanism still explain the new behaviour?), and the size and
# faithfulness of a circuit **re-discovered** in the fine-tuned model.

# %%
rows = [study.checkpoint_row(s, s.model, "base", base_circuit, epoch=0)]
for epoch in clean_epochs:
    rows.append(study.checkpoint_row(s, run.model(epoch)[0], f"{run.id}-{epoch}", base_circuit, epoch))
print(study.rows_table(rows))

# %%
epochs = [r["epoch"] for r in rows]
fig, axes = plt.subplots(1, 3, figsize=(15, 3.5))
plotting.checkpoint_lines(epochs, {"logit difference": [r["logit_diff"] for r in rows]}, "Behaviour", "epoch", "logit diff", ax=axes[0])
plotting.checkpoint_lines(epochs, {"base circuit": [r["faithfulness_base_circuit"] for r in rows],
                                   "re-discovered circuit": [r["faithfulness_own_circuit"] for r in rows]},
                          "Faithfulness F(C)/F(M)", "epoch", "faithfulness", ax=axes[1])
plotting.checkpoint_lines(epochs, {"heads in circuit": [r["circuit_size"] for r in rows]}, "Circuit size", "epoch", "heads", ax=axes[2])
plt.show()

# %%
first, last = rows[0], rows[-1]
glue("ld_base", first["logit_diff"], display=False)
glue("ld_last", last["logit_diff"], display=False)
glue("last_epoch", last["epoch"], display=False)
glue("faith_last", 100 * last["faithfulness_base_circuit"], display=False)
results.record(profile, "amplification", {"logit_diff_base": first["logit_diff"], "logit_diff_first": rows[1]["logit_diff"],
                                          "logit_diff_last": last["logit_diff"], "faithfulness_last": last["faithfulness_base_circuit"],
                                          "rows": rows}, execution=execution)

# %% [markdown]
# Fine-tuning moves the held-out logit difference from {glue:text}`ld_base:.2f` (base model) to
# {glue:text}`ld_last:.2f` after {glue:text}`last_epoch` epochs, and the base model's circuit keeps
# {glue:text}`faith_last:.0f`% of the fine-tuned model's logit difference.

# %%
claims.check("clean fine-tuning raises the logit difference (last epoch minus base)",
             last["logit_diff"] - first["logit_diff"], None, 0.0, ">=", paper="6.32 -> 26.83 (1 -> 100 epochs)",
             enforce=enforce_claims)
claims.check("the base circuit still explains at least half of the fine-tuned behaviour (F(C)/F(M), last epoch)",
             last["faithfulness_base_circuit"], None, 0.5, ">=", paper="98.4-99.9% across 1-100 epochs (Table 1)",
             precondition=(last["logit_diff"] > 0, f"logit diff {last['logit_diff']:.2f} must be > 0"), enforce=enforce_claims)

# %% [markdown]
# ## Which heads grew
#
# Direct logit attribution of every head at END, base model against the last checkpoint; the circuit's
# heads are outlined.

# %%
tuned = run.model(clean_epochs[-1])[0]
dla_base, dla_tuned = attribution.head_dla(s.model, s.test), attribution.head_dla(tuned, s.test)
fig = plotting.cmap_heatmaps({"base": dla_base, f"epoch {clean_epochs[-1]}": dla_tuned,
                              "change": dla_tuned - dla_base}, base_circuit.classes, "Direct logit attribution per head")
plt.show()

# %% [markdown]
# ## Is the gain carried by the original circuit? (CMAP)
#
# Cross-model activation patching puts the fine-tuned model's head outputs into the base model on the same
# prompts. If amplification lives in the base circuit's heads, patching only those heads should recover most
# of the fine-tuned logit difference.

# %%
effects = patching.cmap(tuned, s.model, s.test, "output")
fig = plotting.head_heatmap(effects, "CMAP: fine-tuned head output -> base model", base_circuit.classes,
                            cbar_label="change of base logit diff")
plt.show()
share = study.gain_share(tuned, s.model, s.test, base_circuit)
ceiling = study.gain_share_ceiling(tuned, s.model, s.test)
glue("gain_share", 100 * share, display=False)
results.record(profile, "amplification", {"gain_share_circuit": share, "gain_share_ceiling": ceiling}, execution=execution)
print(f"patching the {len(base_circuit.heads)} circuit heads at their positions recovers {share:.1%} of the fine-tuning gain "
      f"(every head at every position: {ceiling:.1%}, the most z-patching can carry)")

# %% [markdown]
# Patching the base circuit's heads alone carries {glue:text}`gain_share:.0f`% of the gain in logit difference.

# %%
claims.check("most of the fine-tuning gain is carried by the base circuit's heads (gain share)", share, None, 0.5, ">=",
             enforce=enforce_claims)
