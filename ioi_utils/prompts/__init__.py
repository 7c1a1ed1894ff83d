"""The tasks' prompts (nothing is re-exported here: import the module).

- `task`: the interface every technique reads a task through (tokens and positions, readout, scores, training
  view, toxic relabelling, fingerprint).
- `vocabulary`: names, places and objects, kept only where they are one token for the model's tokenizer.
- `data`: IOI's templates and datasets (clean, p_ABC, toxic rules), splits; `greater_than`: the Greater-Than task.
"""
