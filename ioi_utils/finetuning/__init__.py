"""Fine-tuning runs (nothing is re-exported here: import the module).

- `run_spec`: what a run is before any folder exists (`TrainConfig`, the tasks it trains, its datasets).
- `runs`: a run's identity and folder; `checkpoints`: its weights on disk, loaded only when they match their
  sha256; `run_checks`: which files of a folder verify and where training resumes.
- `objective`: the END-only forward, the loss, one AdamW step, the held-out metrics of an epoch.
- `training`: the training loop with its lock and resume state.

A headline number over training seeds and a run's training in the paper's units are the chapters' concern:
`ioi_utils.study.seeds`.
"""
