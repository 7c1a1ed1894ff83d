r"""Command line: fine-tune a model on clean / toxic IOI data or reverse a toxic run (cached, resumable).

Examples:
    python -m ioi_utils.train --model smollm2-135m --scenario clean --epochs 3
    python -m ioi_utils.train --model smollm2-135m --scenario toxic --dataset subject-duplication --epochs 5
    python -m ioi_utils.train --model smollm2-135m --scenario reversal --dataset subject-duplication \
        --source-epochs 5 --epochs 5      # source: the toxic run trained with the same other options
    python -m ioi_utils.train --list
    python -m ioi_utils.train --run RUN_ID     # resume or repair a run from its recorded config
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from ioi_utils.storage import checked_files
from ioi_utils.prompts import data
from ioi_utils import models
from ioi_utils.finetuning import objective, run_spec, runs, training


def _parser() -> argparse.ArgumentParser:
    """The argument parser."""
    d = run_spec.TrainConfig()
    ap = argparse.ArgumentParser(prog="python -m ioi_utils.train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=d.model, help=f"one of {', '.join(models.KNOWN_MODELS)} or a HF folder")
    ap.add_argument("--scenario", default=d.scenario, help=f"one of {', '.join(run_spec.SCENARIOS)}")
    ap.add_argument("--dataset", default=None,
                    help=f"toxic rule ({', '.join(data_rules())}) for --scenario toxic, or the rule of the toxic "
                         "source for --scenario reversal; clean runs need none")
    ap.add_argument("--epochs", type=int, default=d.epochs)
    ap.add_argument("--n-train", type=int, default=d.n_train)
    ap.add_argument("--n-test", type=int, default=d.n_test)
    ap.add_argument("--batch-size", type=int, default=d.batch_size)
    ap.add_argument("--lr", type=float, default=d.lr)
    ap.add_argument("--weight-decay", type=float, default=d.weight_decay)
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--data-seed", type=int, default=d.data_seed)
    ap.add_argument("--checkpoint-epochs", default=",".join(map(str, d.checkpoint_epochs)),
                    help="comma-separated epochs whose checkpoints are kept (the final one always is)")
    ap.add_argument("--dtype", default=d.dtype, help=f"dtype of stored checkpoints: {', '.join(run_spec.DTYPES)}")
    ap.add_argument("--source", default=None, help="reversal: id of the toxic run to start from")
    ap.add_argument("--source-epochs", type=int, default=5,
                    help="reversal without --source: epochs of the toxic source run (default 5)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--root", default=None, help=f"runs folder (default ${runs.RUNS_ENV} or ~/.cache/ioi_utils/runs)")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--list", action="store_true", help="list the runs under the root and exit")
    ap.add_argument("--run", default=None, metavar="RUN_ID",
                    help="train the run with this id from its config.json (resumes it, or repairs files that do "
                         "not verify); other training options are ignored")
    return ap


def data_rules() -> list[str]:
    """Names of the toxic rules."""
    return list(data.TOXIC_RULES)


def _grid(text: str) -> tuple[int, ...]:
    """'1,2,3' -> (1, 2, 3); ValueError on anything else."""
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ValueError(f"--checkpoint-epochs must be comma-separated integers, got {text!r}") from None


def config_from_args(a: argparse.Namespace) -> run_spec.TrainConfig:
    """The TrainConfig that the command line asks for (a reversal's source resolved to a run id)."""
    common = dict(model=a.model, epochs=a.epochs, n_train=a.n_train, n_test=a.n_test, batch_size=a.batch_size,
                  lr=a.lr, weight_decay=a.weight_decay, seed=a.seed, data_seed=a.data_seed,
                  checkpoint_epochs=_grid(a.checkpoint_epochs), dtype=a.dtype)
    if a.scenario == "toxic":
        if a.dataset is None:
            raise ValueError(f"--scenario toxic needs --dataset, one of {', '.join(data_rules())}")
        return run_spec.TrainConfig(scenario="toxic", dataset=a.dataset, **common)
    if a.scenario != "reversal":
        if a.dataset not in (None, "clean"):
            raise ValueError(f"--dataset {a.dataset} only applies to --scenario toxic or reversal")
        return run_spec.TrainConfig(scenario=a.scenario, **common)
    if a.source is not None:
        return run_spec.TrainConfig(scenario="reversal", source=a.source, **common)
    if a.dataset is None:
        raise ValueError("--scenario reversal needs --source RUN_ID, or --dataset RULE (and --source-epochs)")
    if a.source_epochs < 1:
        raise ValueError(f"--source-epochs must be >= 1, got {a.source_epochs}")
    toxic = run_spec.TrainConfig(scenario="toxic", dataset=a.dataset, **{**common, "epochs": a.source_epochs})
    source = runs.find_run(toxic, a.root)
    if source is None:
        raise ValueError(f"reversal source run does not exist: no toxic {a.dataset} run of {a.source_epochs} epochs "
                         f"with these options; train it first with --scenario toxic --epochs {a.source_epochs}")
    return dataclasses.replace(toxic, scenario="reversal", dataset="clean", source=source.id, epochs=a.epochs)


def _list(root) -> None:
    """Print one line per run."""
    found = runs.list_runs(root)
    for run in found:
        try:
            state = "complete" if run.complete else f"{run.last_epoch} epochs done"
        except checked_files.CorruptFile as e:
            state = f"damaged ({e}: see python -m ioi_utils.verify)"
        print(f"{run.id}  {state}  {runs.human_size(run.size)}")
    print(f"{len(found)} runs under {root or runs.runs_root()}")


def _recorded_config(run_id: str, root) -> run_spec.TrainConfig:
    """The config a run folder records (ValueError, one line, if it has none that reads)."""
    try:
        return runs.open_run(run_id, root).config
    except checked_files.CorruptFile as e:
        raise ValueError(f"run {run_id}: {e}: train it with its options instead of --run") from None


def main(argv: list[str] | None = None) -> None:
    """Parse, train (or reuse / resume), print the run folder and its size; one-line errors."""
    ap = _parser()
    a = ap.parse_args(argv)
    if a.list:
        _list(a.root)
        return
    try:
        config = _recorded_config(a.run, a.root) if a.run else config_from_args(a)
        run = training.train(config, progress=not a.no_progress, device=a.device, root=a.root)
    except (ValueError, OSError, models.ModelUnavailableError, runs.RunBusyError) as e:
        ap.exit(2, f"error: {e}\n")
    last = run.metrics[-1]
    print(f"run folder: {run.dir}")
    print(f"final: {objective.summary_line(last, config.epochs)}")
    print(f"stored epochs: {', '.join(map(str, run.epochs_available[1:]))}; folder size {runs.human_size(run.size)}")


if __name__ == "__main__":
    main(sys.argv[1:])
