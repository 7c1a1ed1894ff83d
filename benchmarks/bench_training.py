"""Benchmark: the training loop of ioi_utils.finetuning.training vs a plain loop, same batches, same process.

Ours: END-only vocabulary projection (HF body to the final norm, gather END, unembed those rows), batches
trimmed to their longest prompt, data on the device, fused AdamW where available.
Plain: the bridge's full logits at every position of the full-width padded batch, pick END, cross-entropy;
torch's default AdamW (or --plain-optimizer fused to isolate the forward/backward savings).
Both start from the same weights with the same hyperparameters and see the same batches in the same order.
The steps alternate (ours, plain / plain, ours) so that load from other processes hits both alike.

    python benchmarks/bench_training.py --model smollm2-135m --n 640 --epochs 1
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from ioi_utils.prompts import data
from ioi_utils import models
from ioi_utils.finetuning import objective, run_spec


def plain_step(model, optimizer, tokens: torch.Tensor, end: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """One step of the plain loop: full logits [b, seq, vocab] from the bridge, loss at END."""
    optimizer.zero_grad(set_to_none=True)
    logits = model(tokens)  # [b, seq, vocab]
    loss = F.cross_entropy(logits[torch.arange(len(end), device=end.device), end].float(), labels)
    loss.backward()
    optimizer.step()
    return loss.detach()


def _timed(fn) -> tuple[float, float]:
    """(loss, seconds) of a step, synchronising CUDA if present."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t = time.perf_counter()
    loss = fn().item()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return loss, time.perf_counter() - t


def main(argv: list[str] | None = None) -> None:
    """Run both loops over the same batches and print samples/s, speed ratio and loss agreement."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--n", type=int, default=640, help="training prompts")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--plain-optimizer", choices=("default", "fused"), default="default",
                    help="AdamW of the plain loop: torch's default (foreach) or fused like ours")
    a = ap.parse_args(argv)
    if min(a.n, a.epochs, a.batch_size) < 1:
        ap.error("--n, --epochs and --batch-size must be >= 1")

    config = run_spec.TrainConfig(model=a.model, lr=a.lr, batch_size=a.batch_size, seed=a.seed)
    ours, tok = models.load_model(a.model, device=a.device)
    plain, _ = models.load_model(a.model, device=a.device)
    dev = next(ours.parameters()).device
    ds = data.make_ioi_dataset(tok, n=a.n, seed=a.seed, prepend_bos=ours.prepend_bos)
    split = objective.DeviceData(ds, dev)
    full_tokens = ds.tokens.to(dev)  # [n, full width]: the plain loop does not trim
    opt_ours = objective.make_optimizer(ours, config)
    kwargs = dict(lr=config.lr, betas=config.adam_betas, eps=config.adam_eps, weight_decay=config.weight_decay)
    opt_plain = torch.optim.AdamW(plain.parameters(), fused=a.plain_optimizer == "fused" or None, **kwargs)
    print(f"{a.model} on {dev} ({torch.get_num_threads()} threads): {a.n} prompts x {a.epochs} epochs, "
          f"batch {a.batch_size}, lr {a.lr}; full width {ds.tokens.shape[1]}, "
          f"mean prompt length {ds.lengths.float().mean():.1f}")
    print(f"ours: END-only unembedding, trimmed batches, AdamW fused={opt_ours.defaults.get('fused')}; "
          f"plain: full logits, full width, AdamW {a.plain_optimizer}")

    generator = torch.Generator().manual_seed(a.seed)
    losses = {"ours": [], "plain": []}
    seconds = {"ours": 0.0, "plain": 0.0}
    step_times: dict[str, list[float]] = {"ours": [], "plain": []}
    step = 0
    for epoch in range(a.epochs):
        order = torch.randperm(a.n, generator=generator)
        for start in range(0, a.n, a.batch_size):
            idx = order[start : start + a.batch_size]
            tokens, end, labels = split.batch(idx)
            runs_ = {"ours": lambda: objective.train_step(ours, opt_ours, tokens, end, labels),
                     "plain": lambda: plain_step(plain, opt_plain, full_tokens[idx.to(dev)], end, labels)}
            for name in (("ours", "plain") if step % 2 == 0 else ("plain", "ours")):
                loss, dt = _timed(runs_[name])
                losses[name].append(loss)
                seconds[name] += dt
                step_times[name].append(dt)
            step += 1
            print(f"  step {step}: loss ours {losses['ours'][-1]:.6f} plain {losses['plain'][-1]:.6f}  "
                  f"time ours {seconds['ours']:.1f} s plain {seconds['plain']:.1f} s", flush=True)

    samples = a.n * a.epochs
    rate = {k: samples / v for k, v in seconds.items()}
    diff = max(abs(x - y) for x, y in zip(losses["ours"], losses["plain"]))
    with torch.no_grad():
        w_diff = max((p - q).abs().max().item() for p, q in zip(ours.parameters(), plain.parameters()))
    print(f"ours:  {rate['ours']:.2f} samples/s ({seconds['ours']:.1f} s)")
    print(f"plain: {rate['plain']:.2f} samples/s ({seconds['plain']:.1f} s)")
    print(f"ratio: {rate['ours'] / rate['plain']:.2f}x")
    med = {k: statistics.median(v) for k, v in step_times.items()}
    paired = statistics.median(p / o for o, p in zip(step_times["ours"], step_times["plain"]))
    print(f"median step: ours {med['ours']:.2f} s ({a.batch_size / med['ours']:.2f} samples/s), plain "
          f"{med['plain']:.2f} s ({a.batch_size / med['plain']:.2f} samples/s); median paired ratio {paired:.2f}x "
          "(robust to load from other processes)")
    print(f"max |loss difference| over {step} steps: {diff:.2e} ({'ok' if diff <= 1e-4 else 'ABOVE'} 1e-4); "
          f"max |weight difference| after training: {w_diff:.2e}")


if __name__ == "__main__":
    main()
