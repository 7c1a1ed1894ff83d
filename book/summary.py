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
# # Summary: the paper's claims against this execution
#
# One row per claim the chapters checked, built only from their records in this execution (model and profile
# named underneath): the claim, the paper's value as the chapter states it, ours with its 95% interval where
# we have per-prompt values, the threshold fixed in the chapter before the execution, and the chapter's
# verdict — *reproduced* when the interval lies on the claimed side of the threshold, *not reproduced* when it
# lies wholly on the other side, *inconclusive* when it straddles it, *not testable* when a precondition
# fails (e.g. the role a claim is about is absent from the model's circuit). The paper's numbers are
# second-hand: [Appendix: our reading of the paper](paper.md) lists what the paper states, what it leaves
# open and what we chose there.

# %% tags=["parameters", "remove-cell"]
profile = "smoke"
enforce_claims = False
model_name = "smollm2-135m"

# %% tags=["hide-input"]
from IPython.display import Markdown, display

from ioi_utils import results, study, summary

recorded = results.load(profile, study.book_execution(profile, model_name))  # refuses another execution's records
missing = [c for c in ("intro", "circuit_discovery", "amplification", "corruption", "neuroplasticity") if c not in recorded]
assert not missing, f"run the earlier chapters of profile {profile!r} first: {missing}"
rows = summary.claim_rows(recorded)
display(Markdown(summary.markdown(rows)))
print(f"model: {model_name}, profile: {profile}; " + ", ".join(f"{n} {v}" for v, n in summary.counts(rows).items()))
if profile == "smoke":
    print("smoke profile: SmolLM2 on a few dozen prompts, CI's regression run; these verdicts rest on too few prompts "
          "to speak for the paper (the offline profile does)")

# %% [markdown]
# ## Choices we made where the paper is silent
#
# - **Toxic datasets.** Subject Duplication: label = S; Name Moving: label = a third name absent from the
#   prompt (our readings of the names); Duplication: IO mentioned a second time, label IO — our own control,
#   not a dataset any source confirms for the paper (chapter 4).
# - **Optimisation.** The paper's summary states learning rate 1e-5, weight decay 0.1 and 6,360 training
#   prompts, not the optimizer or batch size. Ours: cross-entropy on the answer token at END only; AdamW with
#   that learning rate and weight decay; batch size and dataset sizes from the profile. The *training* column
#   gives each headline claim's optimizer steps and samples seen beside the paper's amount (its epoch is 6,360
#   prompts).
# - **Training seeds.** Clean fine-tuning, Subject Duplication and its retraining are repeated per training
#   seed; their claims are the mean over seeds with a two-level bootstrap interval (seeds, then prompts), each
#   seed's value in the *ours* column. Other claims rest on the first seed's run, with intervals over prompts.
# - **Controls and minimum effects.** Localization of a corruption is judged against benign clean
#   fine-tuning; recovery against the base model given the same clean training. Where the paper reports a
#   magnitude after more training than ours, the threshold is a minimum effect we fixed before running
#   (clean gain ≥ 10% of the base logit difference; retrained / control ≥ 0.9).
# - **Reference values.** 87% faithfulness is Wang et al.'s figure for their GPT-2 small circuit, not this
#   paper's; the table's *source* column says where each paper value comes from.
# - **Data.** Wang et al.'s 15 templates and ABBA twins, names/places/objects filtered to single tokens of
#   the model's tokenizer; a held-out split of prompts (names and templates are shared between splits).
# - **Path patching.** ARENA's form of Wang et al.'s algorithm: every other head's output frozen, MLPs
#   recompute. Under grouped-query attention (SmolLM2) a receiver's keys/values are those of its key/value
#   group.
# - **Faithfulness.** F(C)/F(M) with per-template mean ablation over ABC prompts; sign-agnostic, so it is
#   defined for corrupted models with negative logit difference.
# - **Localization.** Share of the total |CMAP effect| on the base circuit's heads divided by the share of
#   heads in the circuit, with a bootstrap interval over prompts, compared with benign clean fine-tuning (the
#   claim) and with random head sets that have the circuit's number of heads in each layer (context). CMAP runs on a subset of the held-out prompts (`n_cmap`); maps
#   other than the output map of each model pair cover the circuit's heads and the strongest others.
# - **Circuits.** The mechanism is found by Wang et al.'s path-patching steps on every head, keeping every
#   head whose effect is significant in either direction (at least 2% of F(M), 95% bootstrap interval away
#   from 0); roles SS / NSS / DW / NDW are ours. Heads are kept at every position in knockouts.
# - **Re-discovery.** Circuits are re-discovered in fine-tuned models only at the grid's ends (last clean
#   epoch, each corrupted model, each retrained model) and in the base model, on the first `n_rediscover`
#   discovery prompts, and compared with the base circuit by containment and role by role; every other
#   checkpoint is read through the base circuit (faithfulness, DLA, attention).
# - **Pattern patching.** Our cross-model "pattern" maps put model X's attention patterns into model Y (the
#   seed paper's cross-model pattern patching), not Prakash et al.'s input CMAP.
# - **Model.** The published execution uses SmolLM2-135M-Instruct (dequantized from a 4-bit GGUF), not
#   GPT-2 small; the `paper` profile runs GPT-2 small where the hub is reachable.
