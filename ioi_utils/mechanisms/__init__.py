"""Interventions that locate a mechanism in a model, one technique a module (nothing is re-exported here:
import the module, `from ioi_utils.mechanisms import path_patching`).

- `scoring`: running the model and scoring it: the per-prompt logit difference logit(IO) - logit(S) at END (or a
  dataset's own score) that every technique measures, forwards that stop at the final residual, head lists and
  argument checks, and what path patching's receivers are (`Receivers`, `LOGITS`).
- `path_patching`: path patching (ARENA's 3-step form of Wang et al.), plain (`path_patch_reference`) and fast
  (`path_patch`, `path_patch_prompts` with per-prompt values and bootstrap intervals).
- `path_patching_window`: path patching's step 3 recomputing, for all senders at once, only the positions from
  the receiver position to END.
- `activation_patching`: single-head activation patching (`activation_patch_heads`) and cross-model activation
  patching, CMAP (`cmap`, `cmap_group`, `cmap_attribution`).
- `knockouts`: mean ablation over p_ABC per template: heads outside a circuit (`circuit_logit_diff`,
  `template_means`) and MLPs (`mlp_knockout`).
- `knockout_attribution`: the first-order estimate of every head's knockout effect in one forward and backward.
- `attribution`: direct logit attribution (DLA) of every head through the final norm, attention readouts, OV copy
  scores.

Imports run one way: `scoring` <- `path_patching_window` <- `path_patching`; `scoring` <- `knockouts`,
`knockout_attribution` <- `activation_patching`; `attribution` imports none of them.
"""
