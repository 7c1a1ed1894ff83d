"""Benchmark: a discovery's path-patching steps reading one pair of shared forwards (`path_patching.forwards`, what
`circuits.describe` does) against the same steps each running their own clean and corrupt forwards.

Discovers the circuit once (`circuits.discover`, timed), then replays its path-patching steps (to the logits; into
the direct heads' queries at END; into the S-readers' keys and values at S2; into the Induction heads' keys at
S1+1, with the senders each step had) both ways in one process, and checks both give the same per-prompt values.

    python benchmarks/bench_discovery.py --model smollm2-135m --n 50
    python benchmarks/bench_discovery.py --model tiny --n 12
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from ioi_utils import circuits, models
from ioi_utils.prompts import data
from ioi_utils.mechanisms import path_patching, scoring


def _timed(fn):
    """(result, seconds) of a call."""
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def replay_steps(model, found: circuits.Discovery) -> list[tuple[scoring.Receivers, list[scoring.Head]]]:
    """(receivers, senders) of each path-patching step `circuits.describe` ran, read from a discovery's circuit,
    evidence and maps: a step's senders are the heads no earlier step named (the last step: those of them that
    attend S1+1 -> S1)."""
    c, ev, t = found.circuit.classes, found.evidence, found.thresholds
    named_by = lambda *steps: {h for h, e in ev.items() if e["step"] in steps}  # noqa: E731
    rest = lambda named: [h for h in scoring.all_heads(model) if h not in named]  # noqa: E731
    movers = tuple(h for k in circuits.DIRECT_CLASSES for h in c[k])
    readers = tuple(c["SIN"] + c["SS"] + c["NSS"])
    steps = [(scoring.LOGITS, scoring.all_heads(model))]
    if movers:
        steps.append((scoring.Receivers(movers, "q", "END"), rest(named_by("direct", "backup"))))
    if readers:
        steps.append((scoring.Receivers(readers, "kv", "S2"), rest(named_by("direct", "backup", "to_movers_q"))))
    if c["IND"]:
        before = rest(named_by("direct", "backup", "to_movers_q", "to_s2_readers_kv"))
        steps.append((scoring.Receivers(tuple(c["IND"]), "k", "S1+1"),
                      [h for h in before if found.maps["previous_token"][h] >= t.previous_token_attention]))
    return steps


def main(argv: list[str] | None = None) -> dict:
    """Command line; returns the measurements."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m", help=f"one of {', '.join(models.KNOWN_MODELS)}")
    ap.add_argument("--n", type=int, default=50, help="discovery prompts (the ABC set has as many)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--json", default=None, help="also write the measurements to this file")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    model, tok = models.load_model(a.model, device="cpu")
    clean = data.make_ioi_dataset(tok, n=a.n, seed=a.seed, prepend_bos=model.prepend_bos)
    abc = data.make_abc_dataset(clean)
    print(f"{a.model}: {a.n} prompts x {clean.tokens.shape[1]} tokens, {torch.get_num_threads()} threads, "
          f"load {os.getloadavg()[0]:.1f}", flush=True)
    found, t_discover = _timed(lambda: circuits.discover(model, clean, abc))
    print(f"discovery {t_discover:8.2f} s ({len(found.circuit.heads)} heads)", flush=True)
    jobs = replay_steps(model, found)

    def own():
        return [path_patching.path_patch_prompts(model, clean, abc, r, senders=s) for r, s in jobs]

    def shared():
        fw = path_patching.forwards(model, clean, abc)
        return [path_patching.path_patch_prompts(model, clean, abc, r, senders=s, fw=fw) for r, s in jobs]

    ref, t_own = _timed(own)
    print(f"steps, own forwards    {t_own:8.2f} s", flush=True)
    fast, t_shared = _timed(shared)
    print(f"steps, shared forwards {t_shared:8.2f} s", flush=True)
    same = all(torch.equal(x.patched, y.patched) and torch.equal(x.clean, y.clean) for x, y in zip(ref, fast))
    result = {"model": a.model, "n": a.n, "seq": clean.tokens.shape[1], "threads": torch.get_num_threads(),
              "load": os.getloadavg()[0], "discovery_s": t_discover, "steps": len(jobs), "own_forwards_s": t_own,
              "shared_forwards_s": t_shared, "speedup": t_own / t_shared, "bitwise_equal": same}
    print(f"speedup {t_own / t_shared:.2f} x over {len(jobs)} steps; per-prompt values bitwise equal: {same}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
