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
from ioi_utils.study import analyses


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


def _arguments(argv: list[str] | None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    """The parser (for one-line errors later) and the checked arguments."""
    ap = argparse.ArgumentParser(prog="python -m ioi_utils.circuits", description=main.__doc__)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--n", type=int, default=50, help="discovery prompts (and, by default, as many training and "
                                                       "held-out prompts)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the training/held-out split and its prompts")
    ap.add_argument("--seeds", type=int, nargs="+", default=None,
                    help="prompt seeds: discover once per seed on that seed's draw of --n discovery prompts, disjoint "
                         "from the split (chapter 2's stability check; memoised), and compare the circuits pairwise")
    ap.add_argument("--n-prompts", type=int, default=None, help="training prompts of the split (default: --n); "
                                                                  "320 and --n-eval 100 are the offline book's")
    ap.add_argument("--n-eval", type=int, default=None, help="held-out prompts of the split (default: --n)")
    ap.add_argument("--reference", type=Path, default=None,
                    help="a circuit.json (as this command writes) to compare every discovered circuit with")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--direct", type=float, default=circuits.Thresholds.direct,
                    help="least |path-patching effect| (share of F(M)) for a head to join the circuit at a step")
    ap.add_argument("--level", type=float, default=circuits.Thresholds.level,
                    help="bootstrap interval level; the interval of a kept head's effect excludes 0")
    ap.add_argument("--out", type=Path, default=None, help="folder for the heat maps (default: under $IOI_UTILS_RESULTS)")
    a = ap.parse_args(argv)
    for name in ("n", "n_prompts", "n_eval"):
        if getattr(a, name) is not None and getattr(a, name) < 2:
            ap.error(f"--{name.replace('_', '-')} must be >= 2")
    if a.reference is not None and not a.reference.is_file():
        ap.error(f"--reference {a.reference}: no such file (write one with --out)")
    return ap, a


def agreement(a: circuits.Circuit, b: circuits.Circuit) -> str:
    """One line: Jaccard overlap of two circuits, the share of a's heads b finds, and how many shared heads keep
    their role (what chapter 2's stability check prints)."""
    same, shared = a.same_roles(b)
    return f"Jaccard {a.jaccard(b):.2f}; finds {a.containment(b):.0%} of its heads; {same} of {shared} shared heads have the same role"


def compare_seeds(s: study.Study, a: argparse.Namespace, thresholds: circuits.Thresholds,
                  reference: circuits.Circuit | None, out: Path) -> None:
    """Discover on each prompt seed's draw (`study.discovery_seed_cached`), print each circuit with its held-out
    faithfulness (`analyses.faithfulness_cached`: both memoised, as in chapter 2) and time, then every pair's agreement and each circuit's agreement with the reference."""
    found = {}
    for sd in a.seeds:
        t = time.perf_counter()
        found[sd] = study.discovery_seed_cached(s, sd, a.n, thresholds).circuit
        faith = analyses.faithfulness_cached(s, found[sd])
        heads = ", ".join(f"{l}.{h} {found[sd].class_of((l, h))}" for l, h in found[sd].heads)
        print(f"seed {sd}: {len(found[sd].heads)} heads ({time.perf_counter() - t:.0f} s with its check; "
              f"F(C)/F(M) {faith.ratio:.1%} on {len(s.test)} held-out prompts): {heads}", flush=True)
        (out / f"seed{sd}").mkdir(parents=True, exist_ok=True)
        (out / f"seed{sd}" / "circuit.json").write_text(json.dumps(found[sd].to_json(), indent=1))
    for i, x in enumerate(a.seeds):
        for y in a.seeds[i + 1:]:
            print(f"seeds {x}, {y}: {agreement(found[x], found[y])}")
    for sd in a.seeds if reference is not None else ():
        print(f"seed {sd} against the reference: {agreement(reference, found[sd])}")
    print(f"circuits: {out}/seed*/circuit.json")


def main(argv: list[str] | None = None) -> None:
    """Command line: discover a model's IOI circuit on discovery prompts, measure it on held-out prompts,
    print it with its faithfulness and the time taken, save the heat maps. With --seeds: one discovery per prompt
    seed, compared pairwise (and with --reference): how much the circuit depends on the draw of --n prompts."""
    t0 = time.perf_counter()
    ap, a = _arguments(argv)
    try:
        thresholds = circuits.Thresholds(direct=a.direct, s_inhibition=a.direct, duplicate_induction=a.direct,
                                         previous_token=a.direct, level=a.level)
        reference = None if a.reference is None else circuits.Circuit.from_json(json.loads(a.reference.read_text()))
        s = study.prepare(a.model, n_prompts=a.n_prompts or a.n, n_eval=a.n_eval or a.n, seed=a.seed,
                          device=a.device, n_discovery=a.n)
    except (models.ModelUnavailableError, ValueError) as e:
        ap.exit(2, f"error: {e}\n")
    out = a.out or results.results_root() / "circuits" / Path(a.model).name
    print(f"{a.model} loaded in {time.perf_counter() - t0:.0f} s; discovering on {len(s.disc)} prompts", file=sys.stderr)
    if a.seeds is not None:
        compare_seeds(s, a, thresholds, reference, out)
        print(f"total {time.perf_counter() - t0:.0f} s")
        return
    found = circuits.discover(s.model, s.disc, s.disc_abc, thresholds, progress=True)
    faith = checks.faithfulness(s.model, s.test, s.abc, found.circuit)
    lo, hi = faith.interval()
    print(found.circuit)
    other = len(found.circuit.classes["OTH"])
    print(f"Other: {other} of {len(found.circuit.heads)} heads")
    print(f"{len(found.circuit.heads)} heads (discovered in {found.seconds:.0f} s on {len(s.disc)} prompts); "
          f"on {len(s.test)} held-out prompts F(M) = {faith.f_model:.3f}, F(C) = {faith.f_circuit:.3f}, "
          f"F(C)/F(M) = {faith.ratio:.1%} [95% CI {lo:.1%}, {hi:.1%}] (Wang's reading {faith.wang:.1%})")
    if reference is not None:
        print(f"against the reference: {agreement(reference, found.circuit)}")
    print(f"heat maps: {save_maps(found, out)[0].parent}")
    print(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
