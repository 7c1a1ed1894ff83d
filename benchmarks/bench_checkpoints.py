"""Benchmark: writing a checkpoint (`finetuning.runs.save_checkpoint`) vs the plain way, same tensors, same process.

Ours: safetensors streams the tensors into a staged temp file beside the checkpoint, which is fsynced, read back
for its sha256 and renamed into place (`storage.atomic_files.stage` / `commit`), then the record is written.
Plain: safetensors serialises the tensors to one bytes object, which is written to a temp file, fsynced and
renamed (`atomic_write_bytes`), and hashed from memory (what `save_checkpoint` did before 2026-12-01).
Both write the same bytes: the benchmark checks that the two files' sha256 agree. The writes alternate (ours,
plain / plain, ours) so that load from other processes and the page cache hit both alike.

    python benchmarks/bench_checkpoints.py --model smollm2-135m --repeats 3
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save

from ioi_utils import models
from ioi_utils.finetuning import checkpoints, runs
from ioi_utils.storage import atomic_files


def plain_save(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> str:
    """The plain write: serialise to bytes, write them atomically, hash them from memory; the sha256."""
    tensors = {k: v.detach().cpu().clone(memory_format=torch.contiguous_format) for k, v in tensors.items()}
    payload = save(tensors, metadata=metadata)
    atomic_files.atomic_write_bytes(path, payload)
    return hashlib.sha256(payload).hexdigest()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python benchmarks/bench_checkpoints.py", description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dir", default=None, help="folder for the files (default: a temp folder)")
    a = ap.parse_args(argv)
    if a.repeats < 1:
        ap.error("--repeats must be >= 1")
    model, _ = models.load_model(a.model, device="cpu")
    tensors = checkpoints.state_dict(model)
    size = sum(t.numel() * t.element_size() for t in tensors.values())
    with tempfile.TemporaryDirectory(dir=a.dir) as d:
        run = runs.Run(Path(d) / "run")
        run.dir.mkdir()
        times: dict[str, list[float]] = {"ours": [], "plain": []}
        for i in range(a.repeats):
            for who in (("ours", "plain") if i % 2 == 0 else ("plain", "ours")):
                t = time.perf_counter()
                if who == "ours":
                    runs.save_checkpoint(run, 1, tensors, {"run": "bench"})
                else:
                    plain = plain_save(Path(d) / "plain.safetensors", tensors, {"run": "bench"})
                times[who].append(time.perf_counter() - t)
        ours = checkpoints.read_records(run.dir)[1]["sha256"]
    if ours != plain:
        raise SystemExit(f"the two writes differ: sha256 {ours[:12]} vs {plain[:12]}")
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{a.model}: {size / 1e9:.2f} GB of parameters, {a.repeats} writes each, same sha256 {ours[:12]}")
    print(f"ours  median {med['ours']:.2f} s  ({', '.join(f'{x:.2f}' for x in times['ours'])})")
    print(f"plain median {med['plain']:.2f} s  ({', '.join(f'{x:.2f}' for x in times['plain'])})")
    print(f"speed-up {med['plain'] / med['ours']:.2f}x")


if __name__ == "__main__":
    main()
