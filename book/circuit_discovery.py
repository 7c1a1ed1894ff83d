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
# # Circuit discovery
#
# Before fine-tuning anything we need the base model's IOI circuit. We follow Wang et al. (2022),
# automated: **path patching** (each head's output taken from an ABC run while all other heads are frozen
# and MLPs recompute) finds the heads that write the answer directly to the logits; path patching into
# *their queries* finds the heads that tell them where to look; and so on backwards. Attention patterns
# then separate the classes: Name Movers (NM) copy the IO name, Negative Name Movers (NNM) write against
# it, S-Inhibition heads (SIN) move "S is duplicated" to END, Induction (IND) and Duplicate Token (DT)
# heads detect the repeated S, Previous Token heads (PT) feed induction, and Backup Name Movers (BNM)
# attend to and copy IO without being needed while the Name Movers work. Every threshold is a named
# parameter of `ioi_utils.circuits.Thresholds`.

# %% tags=["parameters"]
profile = "smoke"
enforce_claims = False
model_name = "tiny"
seed = 0
device = "auto"
n_prompts = 64
n_eval = 32

# %%
import matplotlib.pyplot as plt
from myst_nb import glue

from ioi_utils import attribution, circuits, claims, display, plotting, results, study

s = study.prepare(model_name, n_prompts, n_eval, seed, device)
execution = results.execution_id(profile, s.model)  # stamps this execution's records
base = study.behaviour(s.model, s)
print(f"{model_name}: {base}")

# %% [markdown]
# ## Path patching
#
# The effect of each head is the relative change of the clean logit difference when its output comes
# from the ABC prompts: −0.1 means the logit difference fell by 10%.

# %%
found = study.discover_cached(s, s.model, "base")
circuit = found.circuit
classes = circuit.classes
fig = plotting.head_heatmap(found.maps["direct"], "Path patching: head -> logits", classes,
                            cbar_label="relative change of logit diff")
plt.show()

# %%
print(circuit)
print(f"{len(circuit.heads)} heads of {s.model.cfg.n_layers * s.model.cfg.n_heads}")

# %% [markdown]
# The later steps of the pipeline, each restricted to the heads found before it:

# %%
later = {k: v for k, v in found.maps.items() if k.startswith("to_")}
titles = {"to_nm_q": "-> Name Mover queries (END)", "to_sin_kv": "-> S-Inhibition keys/values (S2)",
          "to_ind_k": "-> Induction keys (S1+1)"}
if later:
    fig = plotting.cmap_heatmaps({titles[k]: v for k, v in later.items()}, classes, "Path patching into heads")
    plt.show()
else:
    print("no Name Movers were found, so the later path-patching steps did not run")

# %% [markdown]
# ## What the heads attend to
#
# Name Movers should attend from END to the IO name; S-Inhibition heads to S2. The interactive view
# shows the attention pattern of the circuit's END-position heads on one prompt.

# %%
fig, axes = plt.subplots(1, 2, figsize=(12, 0.25 * s.model.cfg.n_layers + 2))
plotting.head_heatmap(found.maps["attn_end_io"], "attention END -> IO", classes, ax=axes[0], symmetric=False)
plotting.head_heatmap(found.maps["attn_end_s2"], "attention END -> S2", classes, ax=axes[1], symmetric=False)
plt.show()

# %%
late_heads = (circuit.classes["NM"] + circuit.classes["SIN"] + circuit.classes["BNM"])[:6] or [(s.model.cfg.n_layers - 1, 0)]
one = s.test[[0]]
cache = attribution.run_cache(s.model, one, lambda n: n.endswith("attn.hook_pattern"))
end = int(one.positions["END"][0]) + 1
tokens = [s.tokenizer.decode(t) for t in one.tokens[0, :end]]
import torch
attn = torch.stack([cache[f"blocks.{l}.attn.hook_pattern"][0, h, :end, :end] for l, h in late_heads])
display.attention_view(tokens, attn, [f"{l}.{h}" for l, h in late_heads])

# %% [markdown]
# ## Faithfulness under mean ablation
#
# Every (head, position) outside the circuit is replaced by its mean over ABC prompts of the same
# template (MLPs are kept); circuit heads keep their own positions only (END for the name movers and
# S-Inhibition, S2 for induction and duplicate-token heads, S1+1 for previous-token heads). Faithfulness
# is F(C)/F(M); Wang et al. report 87% for GPT-2 small.

# %%
faith = results.memo("faithfulness", lambda: circuits.faithfulness(s.model, s.test, s.abc, circuit), s.model,
                     model_name=model_name, data=s.test.fingerprint(), circuit=circuit.to_json())
glue("f_model", faith.f_model, display=False)
glue("f_circuit", faith.f_circuit, display=False)
glue("faithfulness", 100 * faith.ratio, display=False)
glue("n_heads", len(circuit.heads), display=False)
results.record(profile, "circuit_discovery", {"f_model": faith.f_model, "f_circuit": faith.f_circuit,
                                              "faithfulness": faith.ratio, "circuit": circuit.to_json()}, execution=execution)
print(f"F(M) = {faith.f_model:.3f}, F(C) = {faith.f_circuit:.3f}, F(C)/F(M) = {faith.ratio:.1%}")

# %% [markdown]
# The discovered circuit has {glue:text}`n_heads` heads. With everything else mean-ablated it keeps a
# logit difference of {glue:text}`f_circuit:.2f` against the full model's {glue:text}`f_model:.2f`:
# a faithfulness of {glue:text}`faithfulness:.0f`%.

# %%
claims.check("the discovered circuit contains Name Movers (number of NM heads)", len(circuit.classes["NM"]), None,
             1, ">=", enforce=enforce_claims)
claims.check("the discovered circuit keeps at least half of the model's logit difference (F(C)/F(M))",
             faith.ratio, faith.interval(), 0.5, ">=", paper="Wang et al., GPT-2 small: 87%",
             precondition=(faith.f_model > 0, f"F(M) = {faith.f_model:.2f} must be > 0"), enforce=enforce_claims)

# %% [markdown]
# ## Completeness and minimality
#
# Completeness (Wang et al.): removing a set K of heads should hurt the circuit as much as the model, so
# F(C\K) ≈ F(M\K). Minimality: each head should matter given the rest of its class.

# %%
complete = circuits.completeness(s.model, s.test, s.abc, circuit)
for row in complete:
    f_c, f_m = row["F(C\\K)"], row["F(M\\K)"]
    print(f"K = {row['K']:>16} ({row['heads']:2d} heads): F(C minus K) = {f_c:6.2f}  F(M minus K) = {f_m:6.2f}  gap {row['gap']:.2f}")
minimal = circuits.minimality(s.model, s.test, s.abc, circuit, threshold=0.01)
passing = sum(v["passes"] for v in minimal.values())
print(f"{passing} of {len(minimal)} heads pass minimality at 1% of F(M)")

# %% [markdown]
# ## The role of the MLPs
#
# Replacing one MLP's output by its per-template ABC mean:

# %%
mlp = attribution.mlp_knockout(s.model, s.test, s.abc)
fig = plotting.bar_compare([str(l) for l in range(len(mlp))], {"logit diff with MLP ablated": mlp.tolist()},
                           "MLP knockouts", "logit difference")
plt.axhline(base.logit_diff, color="k", ls="--", lw=1)
plt.show()
worst = int(mlp.argmin())
glue("worst_mlp", worst, display=False)
glue("worst_mlp_ld", float(mlp[worst]), display=False)
results.record(profile, "circuit_discovery", {"mlp_knockout": mlp.tolist(), "worst_mlp": worst}, execution=execution)

# %% [markdown]
# The most important MLP is MLP {glue:text}`worst_mlp`: without it the logit difference drops to
# {glue:text}`worst_mlp_ld:.2f`. In GPT-2 small MLP0 acts as an extended embedding that the circuit
# reads; knocking it out breaks the task.

# %%
claims.check(f"one MLP is essential: ablating MLP {worst} removes more than half of the logit difference "
             "(logit diff with it ablated / without)", float(mlp[worst]) / base.logit_diff, None, 0.5, "<=",
             paper="not stated (MLP0 in Wang et al.)",
             precondition=(base.logit_diff > 0, f"base logit diff {base.logit_diff:.2f} must be > 0"), enforce=enforce_claims)

# %% [markdown]
# ## Against Wang et al.'s circuit (GPT-2 small only)

# %%
if model_name == "gpt2":
    ref = circuits.WANG_GPT2_CIRCUIT
    found_heads, ref_heads = set(circuit.heads), set(ref.heads)
    print(f"found {len(found_heads)} heads, Wang et al. {len(ref_heads)}; shared {len(found_heads & ref_heads)}")
    for c in circuits.CLASSES:
        print(f"{c:>4}: found {circuit.classes[c]}  Wang {ref.classes[c]}")
else:
    print(f"{model_name} is not GPT-2 small: there is no published circuit to compare with")
