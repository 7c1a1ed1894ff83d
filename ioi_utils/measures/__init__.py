"""Behavioural measures (nothing is re-exported here: import the module).

- `metrics`: logit difference, accuracy, P(IO), faithfulness, percentile bootstrap intervals.
- `behaviour`: a model's IOI behaviour on held-out prompts from its own logits (`evaluate`).
"""
