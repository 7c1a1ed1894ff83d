"""What the package keeps on disk, and how it is kept (nothing is re-exported here: import the module).

- `atomic_files`: the one atomic writer (a temp file beside the destination, fsynced, renamed into place).
- `checked_files`: values on disk that hold no code (tensors and plain data in safetensors) and carry their sha256.
- `results`: memos keyed by model weights, code and parameters, and each chapter's records of one execution.
- `timings`: the seconds each chapter and cell took in the published execution, for estimates and progress.
"""
