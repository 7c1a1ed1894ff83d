"""Command line of circuit discovery: `python -m ioi_utils.circuits --model smollm2-135m --n 50`.

Discovers a model's IOI circuit on discovery prompts (`circuits.discover`), measures its faithfulness on
held-out prompts, prints both with the time taken, and saves one heat map per discovery map. It sits above
`study` (which prepares the same prompts the chapters use), so `circuits` itself never imports `study`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ioi_utils.circuits import checks
from ioi_utils import circuits, models, study
from ioi_utils.report import plotting
from ioi_utils.storage import results


def save_maps(found: circuits.Discovery, folder: Path) -> list[Path]:
    """Write one heat map per discovery map (PNG) and the circuit (JSON) into a folder."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, values in found.maps.items():
        fig = plotting.head_heatmap(values, name, found.circuit.classes)
        paths.append(folder / f"{name}.png")
        fig.savefig(paths[-1], dpi=120, bbox_inches="tight")
        plt.close(fig)
    (folder / "circuit.json").write_text(json.dumps(found.circuit.to_json(), indent=1))
    return paths


def main(argv: list[str] | None = None) -> None:
    """Command line: discover a model's IOI circuit on discovery prompts, measure it on held-out prompts,
    print it with its faithfulness and the time taken, save the heat maps."""
    t0 = time.perf_counter()
    ap = argparse.ArgumentParser(prog="python -m ioi_utils.circuits", description=main.__doc__)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--n", type=int, default=50, help="discovery prompts (and as many held-out prompts)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--direct", type=float, default=circuits.Thresholds.direct,
                    help="least |path-patching effect| (share of F(M)) for a head to join the circuit at a step")
    ap.add_argument("--level", type=float, default=circuits.Thresholds.level,
                    help="bootstrap interval level; the interval of a kept head's effect excludes 0")
    ap.add_argument("--out", type=Path, default=None, help="folder for the heat maps (default: under $IOI_UTILS_RESULTS)")
    a = ap.parse_args(argv)
    if a.n < 2:
        ap.error("--n must be >= 2")
    try:
        thresholds = circuits.Thresholds(direct=a.direct, s_inhibition=a.direct, duplicate_induction=a.direct,
                                         previous_token=a.direct, level=a.level)
        s = study.prepare(a.model, n_prompts=a.n, n_eval=a.n, seed=a.seed, device=a.device)
    except (models.ModelUnavailableError, ValueError) as e:
        ap.exit(2, f"error: {e}\n")
    print(f"{a.model} loaded in {time.perf_counter() - t0:.0f} s; discovering on {len(s.disc)} prompts", file=sys.stderr)
    found = circuits.discover(s.model, s.disc, s.disc_abc, thresholds, progress=True)
    faith = checks.faithfulness(s.model, s.test, s.abc, found.circuit)
    lo, hi = faith.interval()
    print(found.circuit)
    other = len(found.circuit.classes["OTH"])
    print(f"Other: {other} of {len(found.circuit.heads)} heads")
    print(f"{len(found.circuit.heads)} heads (discovered in {found.seconds:.0f} s on {len(s.disc)} prompts); "
          f"on {len(s.test)} held-out prompts F(M) = {faith.f_model:.3f}, F(C) = {faith.f_circuit:.3f}, "
          f"F(C)/F(M) = {faith.ratio:.1%} [95% CI {lo:.1%}, {hi:.1%}] (Wang's reading {faith.wang:.1%})")
    out = a.out or results.results_root() / "circuits" / Path(a.model).name
    print(f"heat maps: {save_maps(found, out)[0].parent}")
    print(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
