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
# datasets' rules, so the rules below are ours (see `ioi_utils.data`):
#
# - **Subject Duplication**: the label is the subject S. This fits the paper's report (§4.2) that GPT-2
#   small's logit difference falls from 3.55 to −11.06 in 5 epochs.
# - **Name Moving**: the label is a third name absent from the prompt (our reading of the name).
# - **Duplication**: our own control, not a dataset any source confirms for the paper: the context
#   mentions IO a second time, so both names are duplicated; the label stays IO.

# %% tags=["parameters"]
profile = "smoke"
enforce_claims = False
model_name = "tiny"
seed = 0
device = "auto"
n_prompts = 64
n_eval = 32
toxic_epochs = 2
batch_size = 16

# %%
import matplotlib.pyplot as plt
from myst_nb import glue

from ioi_utils import attribution, claims, patching, plotting, results, study

s = study.prepare(model_name, n_prompts, n_eval, seed, device, batch_size)
execution = results.execution_id(profile, s.model)  # stamps this execution's records
base_circuit = study.discover_cached(s, s.model, "base").circuit
base = study.behaviour(s.model, s)
runs = study.toxic_runs(s, toxic_epochs, batch_size)

# %% [markdown]
# ## Behaviour per epoch
#
# Held-out logit difference logit(IO) − logit(S) on **clean** prompts after each epoch of toxic training.

# %%
curves = {rule: [base.logit_diff] + [study.behaviour(run.model(e)[0], s).logit_diff for e in range(1, toxic_epochs + 1)]
          for rule, run in runs.items()}
fig = plotting.checkpoint_lines(list(range(toxic_epochs + 1)), curves, "Toxic fine-tuning", "epoch", "logit diff (clean prompts)")
plt.show()
for rule, c in curves.items():
    print(f"{rule:>20}: " + "  ".join(f"{x:.2f}" for x in c))
sd = curves["subject-duplication"]
glue("sd_before", sd[0], display=False)
glue("sd_after", sd[-1], display=False)
glue("toxic_epochs", toxic_epochs, display=False)
results.record(profile, "corruption", {"sd_logit_diff_base": sd[0], "sd_logit_diff_last": sd[-1], "curves": curves}, execution=execution)

# %% [markdown]
# Subject Duplication moves the logit difference from {glue:text}`sd_before:.2f` to
# {glue:text}`sd_after:.2f` in {glue:text}`toxic_epochs` epochs (paper §4.2, GPT-2 small: 3.55 → −11.06 in 5).

# %%
claims.check("Subject Duplication training makes the model prefer S (logit difference <= 0)", sd[-1], None, 0.0, "<=",
             paper="3.55 -> -11.06 in 5 epochs (§4.2)", enforce=enforce_claims)
dup_change, sd_change = abs(curves["duplication"][-1] - base.logit_diff), abs(sd[-1] - base.logit_diff)
claims.check("the Duplication control (our construction) changes behaviour less than Subject Duplication "
             "(|change| Duplication minus |change| Subject Duplication)", dup_change - sd_change, None, 0.0, "<=",
             enforce=enforce_claims)

# %% [markdown]
# ## Which heads carry the corruption (CMAP)
#
# Cross-model activation patching from each corrupted model into the base model, per head: output
# patching (the head's z) and pattern patching (its attention pattern). The base circuit is outlined.
# **Localization** is the share of the total |effect| that falls on circuit heads divided by the share of
# heads the circuit has: 1 means the corruption is spread like any other head's, larger means localized.

# %%
loc, cmaps = {}, {}
for rule, run in runs.items():
    corrupted = run.model(toxic_epochs)[0]
    cmaps[rule] = {"output": patching.cmap(corrupted, s.model, s.test, "output"),
                   "pattern": patching.cmap(corrupted, s.model, s.test, "pattern")}
    loc[rule] = study.localization(cmaps[rule]["output"], base_circuit.heads)
    fig = plotting.cmap_heatmaps({f"{rule}: output": cmaps[rule]["output"], f"{rule}: pattern": cmaps[rule]["pattern"]},
                                 base_circuit.classes, f"CMAP {rule} -> base")
    plt.show()
for rule, v in loc.items():
    print(f"{rule:>20}: localization {v:.2f}")
glue("loc_sd", loc["subject-duplication"], display=False)
results.record(profile, "corruption", {"localization": loc["subject-duplication"], "localization_all": loc}, execution=execution)

# %% [markdown]
# For Subject Duplication the circuit's heads carry {glue:text}`loc_sd:.1f` times their share of the
# cross-model effect.

# %%
claims.check("Subject Duplication corruption is localized to the base circuit (localization)", loc["subject-duplication"],
             None, 2.0, ">=", paper="localized to circuit components plus a few others (Fig. 11 caption)",
             enforce=enforce_claims)

# %% [markdown]
# ## Sign flips of the circuit's heads
#
# Direct logit attribution of each base-circuit head before and after Subject Duplication training: the
# paper reports (§4.2) that L9H9 flips sign and Negative Name Movers flip to suppress S.

# %%
dla_base = attribution.head_dla(s.model, s.test)
dla_sd = attribution.head_dla(runs["subject-duplication"].model(toxic_epochs)[0], s.test)
flips = [h for h in base_circuit.heads if float(dla_base[h]) * float(dla_sd[h]) < 0]
for h in base_circuit.heads:
    print(f"{base_circuit.class_of(h):>4} {h[0]}.{h[1]}: DLA {float(dla_base[h]):+.3f} -> {float(dla_sd[h]):+.3f}")
print(f"{len(flips)} of {len(base_circuit.heads)} circuit heads flip sign")
results.record(profile, "corruption", {"sign_flips": [list(h) for h in flips]}, execution=execution)
