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
# faithfulness (§5). We start
# from the last checkpoint of each toxic run of the previous chapter (shared through the run cache) and
# fine-tune it on the clean training split.

# %% tags=["parameters"]
profile = "smoke"
enforce_claims = False
model_name = "tiny"
seed = 0
device = "auto"
n_prompts = 64
n_eval = 32
toxic_epochs = 2
reversal_epochs = 2
batch_size = 16

# %%
import matplotlib.pyplot as plt
from myst_nb import glue

from ioi_utils import circuits, claims, data, patching, plotting, results, study, training

s = study.prepare(model_name, n_prompts, n_eval, seed, device, batch_size)
execution = results.execution_id(profile, s.model)  # stamps this execution's records
base_circuit = study.discover_cached(s, s.model, "base").circuit
base = study.behaviour(s.model, s)
toxic = study.toxic_runs(s, toxic_epochs, batch_size)
reversed_ = {rule: training.train(study.train_config(s, "reversal", reversal_epochs, list(range(1, reversal_epochs + 1)),
                                                     batch_size, dataset=rule, source=run), progress=False) for rule, run in toxic.items()}

# %% [markdown]
# ## Recovery of behaviour and of the original circuit

# %%
rows = {}
for rule in data.TOXIC_RULES:
    corrupted = study.checkpoint_row(s, toxic[rule].model(toxic_epochs)[0], f"{toxic[rule].id}-{toxic_epochs}", base_circuit, 0)
    recovered = study.checkpoint_row(s, reversed_[rule].model(reversal_epochs)[0],
                                     f"{reversed_[rule].id}-{reversal_epochs}", base_circuit, reversal_epochs)
    rows[rule] = (corrupted, recovered)
    print(f"{rule:>20}: logit diff base {base.logit_diff:.2f} -> corrupted {corrupted['logit_diff']:.2f} -> "
          f"retrained {recovered['logit_diff']:.2f}; base-circuit faithfulness {corrupted['faithfulness_base_circuit']:.1%} -> "
          f"{recovered['faithfulness_base_circuit']:.1%}")

# %%
labels = list(rows)
fig, axes = plt.subplots(1, 2, figsize=(13, 3.5))
plotting.bar_compare(labels, {"base": [base.logit_diff] * len(labels),
                              "corrupted": [rows[r][0]["logit_diff"] for r in labels],
                              "retrained": [rows[r][1]["logit_diff"] for r in labels]},
                     "Logit difference", "logit diff", ax=axes[0])
plotting.bar_compare(labels, {"corrupted": [rows[r][0]["faithfulness_base_circuit"] for r in labels],
                              "retrained": [rows[r][1]["faithfulness_base_circuit"] for r in labels]},
                     "Faithfulness of the base circuit", "F(C)/F(M)", ax=axes[1])
plt.show()

# %%
record = {}
for rule, (_, rec) in rows.items():
    record[f"faithfulness_{rule}"] = rec["faithfulness_base_circuit"]
    record[f"logit_diff_{rule}"] = rec["logit_diff"]
    own = circuits.Circuit({c: [tuple(h) for h in hs] for c, hs in rec["circuit"].items()})
    overlap = len(set(own.heads) & set(base_circuit.heads)) / max(1, len(set(own.heads) | set(base_circuit.heads)))
    record[f"overlap_{rule}"] = overlap
    print(f"{rule:>20}: re-discovered circuit shares {overlap:.0%} of heads with the base circuit (Jaccard)")
results.record(profile, "neuroplasticity", record, execution=execution)
glue("rec_sd_faith", 100 * record["faithfulness_subject-duplication"], display=False)
glue("rec_nm_faith", 100 * record["faithfulness_name-moving"], display=False)
glue("rec_sd_ld", record["logit_diff_subject-duplication"], display=False)

# %% [markdown]
# After retraining, the base model's circuit explains {glue:text}`rec_nm_faith:.0f`% (Name Moving) and
# {glue:text}`rec_sd_faith:.0f`% (Subject Duplication) of the recovered models' logit difference (paper:
# 95% and 96%); the Subject Duplication model is back at a logit difference of {glue:text}`rec_sd_ld:.2f`.

# %%
claims.check("retraining on clean data restores IOI behaviour after Subject Duplication (logit diff >= 0)",
             record["logit_diff_subject-duplication"], None, 0.0, ">=", enforce=enforce_claims)
claims.check("the base circuit explains the recovered behaviour again (lower F(C)/F(M) of the two reversals)",
             min(record["faithfulness_subject-duplication"], record["faithfulness_name-moving"]), None, 0.5, ">=",
             paper="95% (Name Moving -> clean), 96% (Subject Duplication -> clean) (§5)",
             precondition=(min(record["logit_diff_subject-duplication"], record["logit_diff_name-moving"]) > 0,
                           "both recovered logit differences must be > 0"), enforce=enforce_claims)

# %% [markdown]
# ## Do the corrupted heads return? (CMAP)
#
# CMAP from the retrained Subject Duplication model into the base model: small effects everywhere mean the
# retrained heads behave like the base model's again.

# %%
after = patching.cmap(reversed_["subject-duplication"].model(reversal_epochs)[0], s.model, s.test, "output")
before = patching.cmap(toxic["subject-duplication"].model(toxic_epochs)[0], s.model, s.test, "output")
fig = plotting.cmap_heatmaps({"corrupted -> base": before, "retrained -> base": after}, base_circuit.classes,
                             "CMAP into the base model (Subject Duplication)")
plt.show()
print(f"total |CMAP effect|: corrupted {before.abs().sum():.3f}, retrained {after.abs().sum():.3f}")
