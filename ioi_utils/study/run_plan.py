"""The fine-tuning runs a profile's chapters ask for, and what they cost: the plan a sweep trains.

`planned_runs` builds each run's config with the functions the chapters call (`study.base_config`,
`study.run_config`, `study.toxic_configs`, `runs.reversal_of`, `greater_than_study.split_config`), so its run ids
are the ones the chapters compute; only tokenizers are loaded (the ids fingerprint the data), never a model. A
reversal names its toxic run as `source`. `describe` prints the plan with optimizer steps, samples seen and an
estimated cost (`estimate_seconds`: a rough per-model constant, replaced by the seconds per sample of the runs of
the same model already in the run cache, `calibrate`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ioi_utils.study import greater_than_study as gt
from ioi_utils import models, profiles, study
from ioi_utils.finetuning import run_spec, runs
from ioi_utils.study import seeds
from ioi_utils.storage import timings
from ioi_utils.finetuning.run_spec import TrainConfig


# Rough seconds per training sample (forward + backward + AdamW, batch as configured), per model and device kind:
# an estimate for --dry-run, not a measurement. Replaced by the runs of the same model already in the run cache
# when there are any (their metrics.jsonl seconds per sample, `calibrate`).
ROUGH_SECONDS_PER_SAMPLE: dict[str, dict[str, float]] = {
    "gpu": {"gpt2": 0.002, "smollm2-135m": 0.004, "gemma3-270m": 0.006, "tiny": 0.001, "tiny-digits": 0.001},
    "cpu": {"gpt2": 0.15, "smollm2-135m": 0.25, "gemma3-270m": 0.5, "tiny": 0.002, "tiny-digits": 0.002},
}


EVAL_COST = 1 / 3  # an evaluated prompt (forward only) costs about a third of a trained one


class SweepError(ValueError):
    """Bad input for a sweep (unknown profile, bad worker count, ...): said in one line."""


@dataclass(frozen=True)
class PlannedRun:
    """A fine-tuning run a profile's chapters ask for: its config, run id and the run it starts from."""

    config: TrainConfig
    id: str
    chapters: tuple[str, ...]  # the chapters that train or open it
    source: str | None = None  # a reversal's toxic run id: trained first

    @property
    def steps(self) -> int:
        """Optimizer steps: epochs x ceil(n_train / batch_size)."""
        return self.config.epochs * math.ceil(self.config.n_train / self.config.batch_size)

    @property
    def samples(self) -> int:
        """Training samples seen: epochs x n_train."""
        return self.config.epochs * self.config.n_train


def profile_params(profile: str, model: str | None = None, gt_model: str | None = None) -> dict[str, Any]:
    """A profile's chapter parameters (profiles.PROFILES), with `model` replacing both model names when given and
    `gt_model` the Greater-Than one."""
    if profile not in profiles.PROFILES:
        raise SweepError(f"unknown profile {profile!r}; choose one of {', '.join(sorted(profiles.PROFILES))}")
    params = dict(profiles.PROFILES[profile])
    if model is not None:
        params["model_name"] = params["gt_model_name"] = model
    if gt_model is not None:
        params["gt_model_name"] = gt_model
    return params


SECOND_MODEL = "second_model"  # the chapter that runs the headline experiments on a second model


def chapter_configs(p: dict[str, Any]) -> list[tuple[str, TrainConfig]]:
    """(chapter, config) of every clean and toxic run, as the chapters build them from their parameters."""
    base = study.base_config(p["model_name"], p["n_prompts"], p["n_eval"], p["seed"], p["batch_size"])
    training_seeds = seeds.check_seeds(p.get("training_seeds", [p["seed"]]))
    clean = study.run_config(base, "clean", max(p["clean_epochs"]), p["clean_epochs"], p["batch_size"])
    out = [(chapter, seeds.seeded(clean, sd)) for sd in training_seeds
           for chapter in ("amplification", "corruption", "neuroplasticity")]  # study.seed_runs: the clean runs
    toxic = study.toxic_configs(base, p["toxic_epochs"], p["batch_size"])
    for cfg in toxic.values():
        out += [("corruption", cfg), ("neuroplasticity", cfg)]
    for sd in training_seeds:  # Subject Duplication per training seed (its reversals follow in planned_runs)
        out += [("corruption", seeds.seeded(toxic["subject-duplication"], sd)),
                ("neuroplasticity", seeds.seeded(toxic["subject-duplication"], sd))]
    if "second_model_name" in p:  # generalisation.headline_runs: clean and Subject Duplication per training seed
        second = study.base_config(p["second_model_name"], p["second_n_prompts"], p["second_n_eval"], p["seed"],
                                   p["batch_size"])
        clean2 = study.run_config(second, "clean", max(p["second_clean_epochs"]), p["second_clean_epochs"],
                                  p["batch_size"])
        sd2 = study.toxic_configs(second, p["second_toxic_epochs"], p["batch_size"])["subject-duplication"]
        out += [(SECOND_MODEL, seeds.seeded(cfg, sd)) for sd in seeds.check_seeds(p["second_training_seeds"])
                for cfg in (clean2, sd2)]
    if not 1 <= p["gt_n_epoch_eval"] <= p["gt_n_eval"]:
        raise SweepError(f"need 1 <= gt_n_epoch_eval <= gt_n_eval, got {p['gt_n_epoch_eval']} and {p['gt_n_eval']}")
    gt_base = gt.split_config(p["gt_model_name"], p["gt_n_train"], p["gt_n_epoch_eval"], p["seed"], p["batch_size"])
    out.append(("greater_than", gt.run_config(gt_base, "clean", p["gt_clean_epochs"], p["batch_size"])))
    out.append(("greater_than", gt.run_config(gt_base, "toxic", p["gt_toxic_epochs"], p["batch_size"],
                                              dataset=gt.TOXIC_DATASET)))
    return out


def config_id(config: TrainConfig, tokenizers: dict[str, Any], need_ids: bool = True) -> str:
    """runs.run_id of a config: its datasets are built from the tokenizer alone (no model is loaded).

    Without the tokenizer (models.ModelUnavailableError, e.g. a hub model offline) and need_ids False, the id's
    readable prefix, then '?' and a hash of the config alone (the data are not hashed): enough for a dry run."""
    if config.model not in tokenizers:
        try:
            tokenizers[config.model] = models.load_tokenizer(config.model)
        except models.ModelUnavailableError:
            if need_ids:
                raise
            tokenizers[config.model] = None
    tok = tokenizers[config.model]
    if tok is None:
        model = "".join(c if c.isalnum() or c in "-." else "_" for c in Path(config.model).name)
        return f"{model}-{config.scenario}-{config.dataset}-e{config.epochs}-?{runs.config_hash(config.to_dict(), {})[:6]}"
    return runs.run_id(config, *run_spec.datasets_for(config, tok, models.prepend_bos_for(config.model, tok)))


def planned_runs(params: dict[str, Any], need_ids: bool = True) -> list[PlannedRun]:
    """Every fine-tuning run the chapters ask for under a profile's parameters, sources before their reversals.

    Raises models.ModelUnavailableError when a model's tokenizer cannot be loaded (the run ids need it), unless
    need_ids is False (`config_id`)."""
    tokenizers: dict[str, Any] = {}
    by_id: dict[str, PlannedRun] = {}
    for chapter, cfg in chapter_configs(params):
        rid = config_id(cfg, tokenizers, need_ids)
        old = by_id.get(rid)
        by_id[rid] = PlannedRun(cfg, rid, (*old.chapters, chapter) if old else (chapter,))
    toxic = [r for r in by_id.values()
             if r.config.scenario == "toxic" and r.config.dataset in run_spec.TASKS[r.config.task].retrained_rules]
    # neuroplasticity (and the second model's chapter): study.train_config(s, "reversal", ...), i.e.
    # runs.reversal_config(run, ...), of each toxic run the chapter trained
    for src in toxic:
        for chapter, key in (("neuroplasticity", "reversal_epochs"), (SECOND_MODEL, "second_reversal_epochs")):
            if chapter not in src.chapters:
                continue
            epochs = params[key]
            cfg = runs.reversal_of(src.config, src.id, epochs=epochs, checkpoint_epochs=tuple(range(1, epochs + 1)))
            rid = config_id(cfg, tokenizers, need_ids)
            old = by_id.get(rid)
            by_id[rid] = PlannedRun(cfg, rid, (*old.chapters, chapter) if old else (chapter,), source=src.id)
    return list(by_id.values())


def is_complete(run: PlannedRun, root: Path) -> bool:
    """Whether the run's folder is marked complete (training.train verifies its files before reusing it)."""
    return runs.Run(root / run.id).complete


def calibrate(root: Path) -> dict[str, float]:
    """model -> measured seconds per training sample, from the complete runs in the run cache (metrics.jsonl)."""
    totals: dict[str, list[float]] = {}
    for run in runs.list_runs(root):
        try:
            cfg, rows = run.config, run.metrics
        except (OSError, ValueError):
            continue
        if not run.complete or len(rows) < 2:
            continue
        cost = sum(_sample_cost(cfg) for _ in rows[1:]) + _eval_cost(cfg)
        t = totals.setdefault(cfg.model, [0.0, 0.0])
        t[0] += sum(float(r["seconds"]) for r in rows)
        t[1] += cost
    return {m: s / n for m, (s, n) in totals.items() if n > 0}


def _sample_cost(cfg: TrainConfig) -> float:
    """Trained-sample equivalents of one epoch: n_train trained, n_test evaluated."""
    return cfg.n_train + EVAL_COST * cfg.n_test


def _eval_cost(cfg: TrainConfig) -> float:
    """Trained-sample equivalents of the epoch-0 evaluation."""
    return EVAL_COST * cfg.n_test


def estimate_seconds(run: PlannedRun, kind: str, measured: dict[str, float]) -> tuple[float, str]:
    """(estimated seconds of a run on a device kind, 'measured' or 'rough'): trained-sample equivalents
    (epochs x (n_train + n_test/3) + n_test/3) x seconds per sample (`measured` per model, else the rough one)."""
    cost = run.config.epochs * _sample_cost(run.config) + _eval_cost(run.config)
    if run.config.model in measured:
        return cost * measured[run.config.model], "measured"
    rough = ROUGH_SECONDS_PER_SAMPLE[kind]
    return cost * rough.get(run.config.model, max(rough.values())), "rough"


def describe(plan: Sequence[PlannedRun], root: Path) -> str:
    """The --dry-run listing: one line per run (id, scenario, dataset, epochs, steps, samples, estimated GPU and
    CPU time, state), then the totals and how the cost was estimated."""
    measured = calibrate(root)  # this machine's CPU (or whatever trained the cached runs)
    lines = [f"{'run id':60} {'scenario':8} {'dataset':19} {'epochs':>6} {'steps':>7} {'samples':>8} "
             f"{'~GPU':>9} {'~CPU':>10}  state"]
    totals, bases = {"gpu": 0.0, "cpu": 0.0}, set()
    for r in plan:
        gpu, _ = estimate_seconds(r, "gpu", {})
        cpu, basis = estimate_seconds(r, "cpu", measured)
        done, bases = is_complete(r, root), bases | {basis}
        if not done:
            totals["gpu"], totals["cpu"] = totals["gpu"] + gpu, totals["cpu"] + cpu
        after = f" (after {r.source})" if r.source else ""
        lines.append(f"{r.id:60} {r.config.scenario:8} {r.config.dataset:19} {r.config.epochs:>6} {r.steps:>7} "
                     f"{r.samples:>8} {timings.fmt_seconds(gpu):>9} {timings.fmt_seconds(cpu):>10}  "
                     f"{'complete' if done else 'to train'}{after}")
    todo = [r for r in plan if not is_complete(r, root)]
    lines.append(f"{len(plan)} runs, {len(todo)} to train: {sum(r.steps for r in todo)} optimizer steps, "
                 f"{sum(r.samples for r in todo)} samples; estimated {timings.fmt_seconds(totals['gpu'])} on one GPU, "
                 f"{timings.fmt_seconds(totals['cpu'])} on one CPU worker, run after run (divide by the workers "
                 "running side by side)")
    cpu_basis = ("measured on complete runs of the model in the run cache" if bases == {"measured"} else
                 "a rough per-model constant" if bases <= {"rough"} else
                 "measured where the run cache holds runs of the model, else a rough per-model constant")
    lines.append("estimate, not a measurement: (epochs x (n_train + n_test/3) + n_test/3) x seconds per sample; "
                 f"GPU: a rough per-model constant (ROUGH_SECONDS_PER_SAMPLE); CPU: {cpu_basis}")
    if any("-?" in r.id for r in plan):
        lines.append("ids ending in '?' and a config hash: the model's tokenizer is not available here (offline?), "
                     "so the run id's hash of config and data cannot be computed")
    return "\n".join(lines)
