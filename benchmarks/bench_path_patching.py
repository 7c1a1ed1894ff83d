"""Benchmark: fast path patching (ioi_utils.mechanisms.path_patching.path_patch) against the plain per-sender
reference.

Runs both on the same prompts and the same senders in one process and prints wall times, their ratio and
the largest difference between the two [n_layers, n_heads] maps. Senders are the heads that can reach the
receivers (layers before the last receiver layer; every head for the logits). The reference costs two
forwards per sender, so --max-senders K times both on K of them, spread evenly over the layers; the fast
path is then also timed on all senders.

    python benchmarks/bench_path_patching.py --model smollm2-135m --n 50
    python benchmarks/bench_path_patching.py --model smollm2-135m --n 20 --threads 1 --max-senders 40 \
        --receivers 23.3 --component q --position END
    python benchmarks/bench_path_patching.py --model tiny --receivers "1.1 1.2" --component kv --position S2
    python benchmarks/bench_path_patching.py --model gemma3-270m --n 8 --threads 1 --receivers 11.3 --component kv \
        --position S2 --max-senders 24
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from ioi_utils.prompts import data
from ioi_utils import models
from ioi_utils.mechanisms import path_patching, scoring


def _heads(spec: str) -> tuple[scoring.Head, ...]:
    """'20.1 22.3' -> ((20, 1), (22, 3))."""
    try:
        return tuple((int(l), int(h)) for l, h in (s.split(".") for s in spec.split()))
    except ValueError:
        raise argparse.ArgumentTypeError(f"heads must look like '20.1 22.3', got {spec!r}") from None


def _timed(fn):
    """(result, seconds) of a call."""
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def _senders(model, receivers: scoring.Receivers, k: int | None) -> list[scoring.Head]:
    """The senders that can reach the receivers; with k, k of them evenly spread (deterministic)."""
    last = max((l for l, _ in receivers.heads), default=model.cfg.n_layers)
    heads = [h for h in scoring.all_heads(model) if h[0] < last]
    if k is None or k >= len(heads):
        return heads
    return [heads[(i * len(heads)) // k] for i in range(k)]


def main(argv: list[str] | None = None) -> dict:
    """Command line; returns the measurements."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m", help=f"one of {', '.join(models.KNOWN_MODELS)} or a HF folder")
    ap.add_argument("--n", type=int, default=50, help="number of clean prompts (the ABC set has as many)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--receivers", type=_heads, default=(), help="receiver heads, e.g. '20.1 22.3' (default: logits)")
    ap.add_argument("--component", default="q", choices=scoring.COMPONENTS)
    ap.add_argument("--position", default="END", choices=data.POSITIONS)
    ap.add_argument("--batch-heads", type=int, default=8,
                    help="senders per forward where step 3 falls back to hooked forwards")
    ap.add_argument("--max-senders", type=int, default=None,
                    help="time both on this many senders (evenly spread), and the fast path on all")
    ap.add_argument("--json", default=None, help="also write the measurements to this file")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    model, tok = models.load_model(a.model, device=a.device)
    clean = data.make_ioi_dataset(tok, n=a.n, seed=a.seed, prepend_bos=model.prepend_bos)
    abc = data.make_abc_dataset(clean)
    receivers = scoring.Receivers(a.receivers, a.component, a.position) if a.receivers else scoring.LOGITS
    every = _senders(model, receivers, None)
    senders = _senders(model, receivers, a.max_senders)
    heads = " ".join(f"{l}.{h}" for l, h in a.receivers)
    what = f"{a.component} of {heads} at {a.position}" if a.receivers else "logits"
    print(f"{a.model}: {a.n} prompts x {clean.tokens.shape[1]} tokens, {len(senders)} of {len(every)} senders -> "
          f"{what}; device {scoring.device(model)}, {torch.get_num_threads()} threads, "
          f"load {os.getloadavg()[0]:.1f}")
    with torch.no_grad():
        model(clean.tokens[:2].to(scoring.device(model)))  # warm-up
    def fast_on(heads):
        return path_patching.path_patch(model, clean, abc, receivers, heads, a.batch_heads, progress=True)

    fast, t_fast = _timed(lambda: fast_on(senders))
    print(f"fast      {t_fast:9.2f} s", flush=True)
    ref, t_ref = _timed(lambda: path_patching.path_patch_reference(model, clean, abc, receivers, senders,
                                                                  progress=True))
    print(f"reference {t_ref:9.2f} s", flush=True)
    diff = (fast - ref).abs().max().item()
    result = {"model": a.model, "n": a.n, "seq": clean.tokens.shape[1], "receivers": what, "senders": len(senders),
              "senders_all": len(every), "threads": torch.get_num_threads(), "load": os.getloadavg()[0],
              "fast_s": t_fast, "reference_s": t_ref, "speedup": t_ref / t_fast, "max_abs_diff": diff,
              "max_abs_effect": ref.abs().max().item()}
    print(f"speedup   {t_ref / t_fast:9.1f} x   max |fast - reference| {diff:.2e}   "
          f"(largest |effect| {result['max_abs_effect']:.3f})")
    if len(senders) < len(every):
        fast, t_all = _timed(lambda: fast_on(every))
        est = t_ref / len(senders) * len(every)
        result.update(fast_all_s=t_all, reference_all_estimate_s=est, speedup_all_estimate=est / t_all)
        print(f"fast, all {len(every)} senders {t_all:.2f} s; reference estimated at {est:.0f} s "
              f"({t_ref / len(senders):.2f} s per sender): speedup ~{est / t_all:.0f} x")
    top = sorted(scoring.all_heads(model), key=lambda h: fast[h].item())[:5]
    result["most_negative"] = {f"{l}.{h}": round(fast[l, h].item(), 4) for l, h in top}
    print("most negative effects:", ", ".join(f"{k} {v:+.3f}" for k, v in result["most_negative"].items()))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
