"""The shared setup of the chapters: one model, one split, one ABC set, one base circuit per profile.

A chapter starts from `setup` (or its parts: `prepare`, `results.execution_id`, `behaviour`,
`analyses.discover_cached`): the base model, the fine-tuning engine's clean train/held-out split
(`run_spec.datasets_for`, twins kept together), the held-out prompts' p_ABC, discovery prompts disjoint from both,
and the base model's circuit. Fine-tuning configs on the same data come from `train_config` / `toxic_runs`.
The measurements the chapters make on a checkpoint live in `analyses` and `cmap_analyses`, which the chapters
import themselves (one door to each room: nothing is re-exported here).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from jaxtyping import Float

from ioi_utils.circuits import admission
from ioi_utils.study import analyses
from ioi_utils import circuits, models
from ioi_utils.measures.behaviour import Evaluation, evaluate
from ioi_utils.prompts import data, vocabulary as vocabulary_
from ioi_utils.storage import results
from ioi_utils.finetuning import run_spec, runs, training
from ioi_utils.study import seeds
from ioi_utils.profiles import Profile
from ioi_utils.prompts.task import Task


@dataclass
class Study:
    """A model and the prompts every analysis of a chapter uses, for any task (`task.Task`): IOI's (`prepare`) or
    Greater-Than's (`greater_than_study.prepare`). `abc` is the held-out prompts' corrupted counterpart, the source
    of mean ablation and patching: IOI's p_ABC (three fresh names), Greater-Than's "01" twins."""

    model_name: str
    model: object
    tokenizer: object
    train: Task  # the fine-tuning prompts
    test: Task  # held-out clean prompts, used by every analysis
    abc: Task  # their corrupted counterpart (IOI: Wang's p_ABC; Greater-Than: the "01" twins)
    seed: int
    disc: Task | None = None  # discovery prompts, disjoint from train and test
    disc_abc: Task | None = None  # their corrupted counterpart
    config: run_spec.TrainConfig | None = None  # the fine-tuning split's config (clean, no epochs yet)


def base_config(model_name: str, n_prompts: int, n_eval: int, seed: int = 0, batch_size: int = 16):
    """The training config whose data split every chapter shares (scenario clean, no epochs yet)."""
    if n_prompts < 1 or n_eval < 1:
        raise ValueError(f"n_prompts and n_eval must be >= 1, got {n_prompts} and {n_eval}")
    return run_spec.TrainConfig(model=model_name, n_train=n_prompts, n_test=n_eval, seed=seed, data_seed=seed,
                                batch_size=batch_size, epochs=1, checkpoint_epochs=(1,))


DISCOVERY_SEED_OFFSET = 10_000  # discovery prompts for seed s are drawn with seed s + this


def discovery_split(study_: Study, n: int, seed: int) -> tuple[data.IOIDataset, data.IOIDataset]:
    """(n discovery prompts disjoint from the study's train and test prompts, their p_ABC), by seed."""
    disc = data.make_disjoint_dataset(study_.tokenizer, n, seed + DISCOVERY_SEED_OFFSET, study_.model.prepend_bos,
                                      avoid=(study_.train, study_.test))
    return disc, data.make_abc_dataset(disc, seed=seed + 1)


def prepare(model_name: str, n_prompts: int, n_eval: int, seed: int = 0, device: str = "auto",
            batch_size: int = 16, n_discovery: int | None = None, threads: int | None = None) -> Study:
    """Load the base model, the fine-tuning engine's clean split (held-out test) with its ABC set, and
    discovery prompts (n_discovery, default n_eval) disjoint from both. threads: torch's CPU threads for this
    process (None: torch's default); CPU sums are split by thread, so a fixed count repeats outputs exactly."""
    models.pin_threads(threads)
    model, tok = models.load_model(model_name, device=device)  # the same base model the runs start from
    cfg = base_config(model_name, n_prompts, n_eval, seed, batch_size)
    train, test = run_spec.datasets_for(cfg, tok, model.prepend_bos)
    study_ = Study(model_name, model, tok, train, test, data.make_abc_dataset(test, seed=seed + 1), seed, config=cfg)
    study_.disc, study_.disc_abc = discovery_split(study_, n_discovery or n_eval, seed)
    return study_


def train_config(study_: Study, scenario: str, epochs: int, checkpoint_epochs, batch_size: int,
                 dataset: str = "clean", source=None):
    """A fine-tuning config on the study's data: clean, toxic (dataset = a toxic rule) or reversal (source run)."""
    if scenario == "reversal":
        return runs.reversal_config(source, epochs=epochs, checkpoint_epochs=tuple(checkpoint_epochs))
    return run_config(study_.config, scenario, epochs, checkpoint_epochs, batch_size, dataset)


def run_config(base: run_spec.TrainConfig, scenario: str, epochs: int, checkpoint_epochs, batch_size: int,
               dataset: str = "clean") -> run_spec.TrainConfig:
    """A clean or toxic fine-tuning config on the data split of `base` (`base_config`); no model needed."""
    return dataclasses.replace(base, scenario=scenario, dataset=dataset, epochs=epochs,
                               checkpoint_epochs=tuple(checkpoint_epochs), batch_size=batch_size)


def toxic_configs(base: run_spec.TrainConfig, epochs: int, batch_size: int) -> dict[str, run_spec.TrainConfig]:
    """rule -> the config of the toxic run `toxic_runs` trains on every toxic dataset (on the split of `base`)."""
    return {rule: run_config(base, "toxic", epochs, range(1, epochs + 1), batch_size, dataset=rule)
            for rule in data.TOXIC_RULES}


def admission_seed_cached(study_: Study, seed: int, n: int,
                     thresholds: circuits.Thresholds = circuits.Thresholds()
                     ) -> tuple[list[circuits.Head], Float[torch.Tensor, "n_layers n_heads"]]:
    """Stage 1 of discovery on the base model and the n discovery prompts of a prompt seed, memoised: (admitted
    heads, each head's attributed share of F(M) [n_layers, n_heads]). The circuit's heads are exactly these."""
    return analyses.admission_cached(study_.model, study_.model_name, *discovery_split(study_, n, seed), thresholds)


def discovery_seed_cached(study_: Study, seed: int, n: int,
                          thresholds: circuits.Thresholds = circuits.Thresholds()) -> circuits.Discovery:
    """The mechanism (circuits.discover) of the base model on the n discovery prompts of a prompt seed, memoised."""
    disc, abc = discovery_split(study_, n, seed)
    return results.memo("discovery", lambda: circuits.discover(study_.model, disc, abc, thresholds), study_.model,
                        model_name=study_.model_name, tag=f"base-seed{seed}", data=disc.fingerprint(),
                        thresholds=thresholds)


def selection_cached(study_: Study, seed: int, n: int, thresholds: circuits.Thresholds = circuits.Thresholds(),
                     resamples: int = 6) -> Float[torch.Tensor, "n_layers n_heads"]:
    """admission.selection_frequency on the base model and the n discovery prompts of a prompt seed, memoised:
    each head's share of `resamples` random halves whose admission contains it, [n_layers, n_heads]."""
    disc, abc = discovery_split(study_, n, seed)
    return results.memo("selection_frequency", lambda: admission.selection_frequency(
        study_.model, disc, abc, thresholds, resamples, seed=seed), study_.model, model_name=study_.model_name,
        data=disc.fingerprint(), thresholds=thresholds, resamples=resamples, seed=seed)


def behaviour(model, study: Study) -> Evaluation:
    """Held-out IOI behaviour of a model."""
    return evaluate(model, study.test)


@dataclass
class Setup:
    """What every chapter starts from: the study, this execution's id, the base model's behaviour and circuit."""

    study: Study
    execution: str  # results.execution_id: stamps this execution's records
    base: Evaluation  # held-out behaviour of the base model
    discovery: circuits.Discovery  # the base model's circuit discovery (memoised)
    thresholds: circuits.Thresholds  # the ones it used (and the chapter's later discoveries use)

    @property
    def circuit(self) -> circuits.Circuit:
        """The base model's circuit."""
        return self.discovery.circuit


def prepare_for(p: Profile) -> Study:
    """`prepare` with a profile's model, sizes, seed, device, batch size and threads (what the intro loads)."""
    return prepare(p.model_name, p.n_prompts, p.n_eval, p.seed, p.device, p.batch_size, n_discovery=p.n_discovery,
                   threads=p.threads)


def setup(p: Profile, thresholds: circuits.Thresholds = circuits.Thresholds(), progress: bool = False) -> Setup:
    """A chapter's common setup in one call, from its profile (`Profile.of(globals())`; the second model's chapter
    passes `p.second_model()`): `prepare_for`, the execution id, the base behaviour and the base circuit
    (`discover_cached(..., "base", thresholds)`), exactly as the chapters compute them one by one."""
    study_ = prepare_for(p)
    execution = results.execution_id(p.profile, study_.model)
    return Setup(study_, execution, behaviour(study_.model, study_),
                 analyses.discover_cached(study_, study_.model, "base", thresholds, progress=progress), thresholds)


def book_execution(profile: str, model_name: str, model=None) -> str:
    """The id of this execution of the book (`results.execution_id`) for a chapter that does not study the book's
    model itself (the summary, the second model, Greater-Than on another model): the book's model is loaded on the
    CPU only to fingerprint its weights, unless the chapter passes it already loaded."""
    if model is None:
        model, _ = models.load_model(model_name, device="cpu")
    return results.execution_id(profile, model)


def vocabulary(study_: Study) -> vocabulary_.VocabularyReport:
    """The names, places and objects that are one token for the study's tokenizer (and what was dropped, in a
    warning that names the caller's line, as `vocabulary.single_token_vocabulary` called there would)."""
    return vocabulary_.single_token_vocabulary(study_.tokenizer, stacklevel=3)


def toxic_examples(ds: data.IOIDataset) -> dict[str, data.IOIDataset]:
    """rule -> the toxic version of `ds` under each of `data.TOXIC_RULES` (the intro shows one prompt of each)."""
    return {rule: data.toxic_dataset(ds, rule) for rule in data.TOXIC_RULES}


def toxic_runs(study_: Study, epochs: int, batch_size: int) -> dict:
    """rule -> the toxic fine-tuning run of every toxic dataset (trained once, then reused from the run cache)."""
    return {rule: training.train(cfg, progress=False) for rule, cfg in toxic_configs(study_.config, epochs, batch_size).items()}


# ---------------------------------------------------------------- several training seeds


def check_seed_plan(clean_config: run_spec.TrainConfig, epochs: int, training_seeds, study_: Study) -> None:
    """Raise a one-line ValueError unless the clean runs store a checkpoint after `epochs` epochs (the control of
    a retraining that long) and the first training seed is the study's own (the runs analysed head by head)."""
    if epochs not in clean_config.stored_epochs:
        raise ValueError(f"the control needs the clean runs' checkpoint after {epochs} epochs: add {epochs} to "
                         f"clean_epochs (stored: {list(clean_config.stored_epochs)})")
    if seeds.check_seeds(training_seeds)[0] != study_.config.seed:
        raise ValueError(f"the first training seed must be the study's seed {study_.config.seed}, got {list(training_seeds)}")


def seed_runs(config: run_spec.TrainConfig, training_seeds) -> dict[int, runs.Run]:
    """seed -> the run of `config` with that training seed (same data split), trained once then reused."""
    return {sd: training.train(seeds.seeded(config, sd), progress=False) for sd in seeds.check_seeds(training_seeds)}


def reversal_runs(study_: Study, toxic: dict[int, runs.Run], epochs: int, batch_size: int) -> dict[int, runs.Run]:
    """seed -> clean retraining of that seed's toxic run (a reversal keeps its source's training seed)."""
    return {sd: training.train(train_config(study_, "reversal", epochs, range(1, epochs + 1), batch_size, source=run),
                               progress=False) for sd, run in toxic.items()}


def retrained_runs(study_: Study, toxic: dict[str, runs.Run], epochs: int, batch_size: int) -> dict[str, runs.Run]:
    """rule -> clean retraining (a reversal run) of the toxic run of each rule the task retrains
    (`run_spec.TASKS[...].retrained_rules`: for IOI the paper's two corruptions, Subject Duplication and Name Moving)."""
    rules = run_spec.TASKS[study_.config.task].retrained_rules
    return {rule: training.train(train_config(study_, "reversal", epochs, range(1, epochs + 1), batch_size, source=run),
                                 progress=False) for rule, run in toxic.items() if rule in rules}


def seed_logit_diffs(study_: Study, runs_: dict[int, runs.Run],
                     epoch: int) -> dict[int, Float[torch.Tensor, "n_eval"]]:
    """seed -> the held-out logit differences [n_eval] of that seed's checkpoint at `epoch`."""
    return {sd: analyses.held_out_logit_diff(study_, run.model(epoch)[0]) for sd, run in runs_.items()}


def seed_curves(runs_: dict[int, runs.Run]) -> dict[int, tuple[list[int], list[float]]]:
    """seed -> (samples seen, held-out logit difference) after each epoch of its run, from the run's own metrics
    (epoch 0: the model it started from)."""
    out = {}
    for sd, run in runs_.items():
        rows = run.metrics
        out[sd] = ([seeds.units(run.config, r["epoch"]).samples for r in rows], [r["logit_diff"] for r in rows])
    return out


def versus_paper(config: run_spec.TrainConfig, epochs: int, paper_epochs: str) -> str:
    """A claim's amount of training beside the paper's: "ours <units>; paper <paper_epochs>"."""
    return f"ours {seeds.units(config, epochs)}; paper {paper_epochs}"
