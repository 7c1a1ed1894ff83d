"""Full fine-tuning on IOI prompts: clean, toxic and reversal scenarios, cached and resumable runs.

The objective is cross-entropy on the label token at the END position only (the prompt's last token
predicts the answer); no other position is trained. AdamW with lr 1e-5 and weight decay 0.1 (our
choices: the paper states no optimizer, learning rate, weight decay, batch size or dataset size), constant learning rate, no warm-up, no gradient clipping, dropout off (the model
stays in eval mode, so training is deterministic; SmolLM2 has no dropout anyway).

Speed: the vocabulary projection is computed only at END. The model runs up to its final norm
(the HF base model under the bridge), the END rows are gathered, and only those go through the
unembedding (W_U and b_U). Each batch is trimmed to its longest prompt (right padding is causal-safe),
and the data stay on the device.
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from ioi_utils.storage import atomic_files, checked_files, results
from ioi_utils.finetuning import checkpoints, objective, run_checks, run_spec, runs
from ioi_utils import models
from ioi_utils.finetuning.run_spec import TrainConfig
from ioi_utils.finetuning.runs import Run


# callback(event, epoch, step): event "step" after each optimizer step, "epoch" after an epoch is saved
Callback = Callable[[str, int, int | None], None]


# ---------------------------------------------------------------- forward, loss, step


# ---------------------------------------------------------------- the training loop


@contextlib.contextmanager
def deterministic():
    """torch.use_deterministic_algorithms (warn-only) for the duration, then restore the previous setting."""
    prev = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev, warn_only=prev_warn)


@contextlib.contextmanager
def _lock(folder: Path):
    """Exclusive lock on a run folder, so two processes never train (or repair) the same run at once.

    The lock file holds the holder's process id, for the one-line RunBusyError of the process that has to wait.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX: no locking
        yield
        return
    with open(folder / ".lock", "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise runs.RunBusyError(f"run {folder.name} is being trained by process {holder}: wait for it to "
                                    "finish (or stop it), then run again") from None
        try:
            f.seek(0)
            f.truncate()
            f.write(str(os.getpid()))
            f.flush()
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@dataclass
class _State:
    """What a run needs to continue: model, optimizer, shuffling generator, finished epochs, metrics."""

    model: Any
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    epoch: int = 0
    metrics: list[dict] = field(default_factory=list)


def _resume_bytes(model) -> int:
    """Size estimate of resume.pt: float32 weights plus AdamW's two moments."""
    return 3 * checkpoints.parameter_bytes(model, torch.float32)


def _save_epoch(run: Run, config: TrainConfig, st: _State) -> None:
    """Persist a finished epoch: the checkpoint (if stored) and its record, then the metrics, then the resume state.

    A kill between any two writes leaves the run resuming from the previous resume state: the epoch is trained
    again and its files rewritten (an unrecorded checkpoint is never loaded).
    """
    if st.epoch in config.stored_epochs:
        dtype = run_spec.DTYPES[config.dtype]
        weights = {k: v.to(dtype) for k, v in checkpoints.state_dict(st.model).items()}
        runs.save_checkpoint(run, st.epoch, weights, {"run": run.id, "epoch": str(st.epoch), "dtype": config.dtype})
    atomic_files.write_jsonl(run.dir / runs.METRICS, st.metrics)
    if st.epoch == config.epochs:
        return  # the final checkpoint makes the resume state unnecessary
    state = {"epoch": st.epoch, "weights": {k: v.float().cpu() for k, v in checkpoints.state_dict(st.model).items()},
             "optimizer": st.optimizer.state_dict(), "generator": st.generator.get_state(),
             "torch_rng": torch.get_rng_state(),
             "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}
    runs.ensure_free_space(run.dir, _resume_bytes(st.model))
    checked_files.write_checked(run.dir / runs.RESUME, state, {"run": run.id, "epoch": str(st.epoch)})


def _restore(run: Run, st: _State) -> bool:
    """Load the resume state into the training state if there is one (metrics cut back to its epoch); True if
    resumed. A resume state that does not verify is reported in one line and training starts again from epoch 0."""
    path = run.dir / runs.RESUME
    if not path.exists():
        return False
    try:
        saved = checked_files.read_checked(path)
    except checked_files.CorruptFile as e:
        results.warn(f"run {run.id}: {e}; fix: retrain from epoch 0")
        run_checks.cut_back(run, run_checks.Check(run.id, resume_from=0, records={}))
        return False
    checkpoints.load_state_dict(st.model, saved["weights"])
    st.optimizer.load_state_dict(saved["optimizer"])
    st.generator.set_state(saved["generator"])
    torch.set_rng_state(saved["torch_rng"])
    if saved["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(saved["cuda_rng"])
    st.epoch = saved["epoch"]
    st.metrics = [m for m in run.metrics if m["epoch"] <= st.epoch]
    if [m["epoch"] for m in st.metrics] != list(range(st.epoch + 1)):
        raise RuntimeError(f"run {run.id}: metrics.jsonl does not cover epochs 0..{st.epoch}; delete the run folder")
    return True


def _settle(run: Run, config: TrainConfig, train_ds, test_ds) -> bool:
    """Check a run folder before training (run_checks.check), report each fault in one line and fix it: rewrite
    unreadable metadata, and either tidy a complete run or cut the run back to the epoch it resumes from.
    True when the run is complete and every file verifies (it is reused as it is). Under the run's lock."""
    atomic_files.clean_temp_files(run.dir)
    if not run.exists:  # a new folder, or one whose run never got its config: nothing in it is used
        run_checks.cut_back(run, run_checks.Check(run.id, resume_from=0, records={}))
        return False
    c = run_checks.check(run, config)
    for line in c.lines():
        results.warn(line)
    if c.rewrite & {runs.CONFIG, runs.INFO}:
        _write_run_files(run, config, train_ds, test_ds, {"rewritten": datetime.now(timezone.utc).isoformat()})
    if c.resume_from is None:
        run_checks.tidy(run, c)
        return True
    run_checks.cut_back(run, c)
    return False


def _check_source(config: TrainConfig, root: Path) -> Run | None:
    """The complete source run of a reversal (ValueError if missing or incomplete); None otherwise."""
    if config.scenario != "reversal":
        return None
    source = Run(root / config.source)
    if not source.exists:
        raise ValueError(f"reversal source run {config.source!r} does not exist under {root}; "
                         "train the toxic run first")
    if not source.complete:
        raise ValueError(f"reversal source run {config.source!r} is incomplete "
                         f"({source.last_epoch} of {source.config.epochs} epochs); finish it first")
    if source.config.model != config.model:
        raise ValueError(f"reversal source run {config.source!r} is a {source.config.model} run, not {config.model}")
    return source


def _write_run_files(run: Run, config: TrainConfig, train_ds, test_ds, extra: dict[str, Any]) -> None:
    """run.json (run id, dataset fingerprints, code version, environment and `extra`), then config.json."""
    info = {"id": run.id, "fingerprints": {"train": train_ds.fingerprint(), "test": test_ds.fingerprint()},
            "code": runs.git_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "checksums": True,  # checkpoints.json records every checkpoint (a run without it predates them)
            "created": datetime.now(timezone.utc).isoformat(), **extra}
    atomic_files.write_json(run.dir / runs.INFO, info)
    atomic_files.write_json(run.dir / runs.CONFIG, config.to_dict())  # last: its presence marks the folder as a run


def _train_epoch(st: _State, split: objective.DeviceData, config: TrainConfig, fast: bool, progress: bool,
                 callback: Callback | None) -> list[float]:
    """One pass over the shuffled training split; returns the per-step losses."""
    order = torch.randperm(len(split), generator=st.generator)
    n_steps = -(-len(split) // config.batch_size)
    losses: list[float] = []
    bar = tqdm(total=n_steps, desc=f"epoch {st.epoch + 1}/{config.epochs}", disable=not progress, leave=False)
    with bar:
        for step, (tokens, end, labels) in enumerate(split.batches(order, config.batch_size)):
            losses.append(objective.train_step(st.model, st.optimizer, tokens, end, labels, fast).item())
            bar.set_postfix(loss=f"{sum(losses) / len(losses):.4f}")
            bar.update()
            if callback is not None:
                callback("step", st.epoch + 1, step)
    return losses


@dataclass
class _Splits:
    """The training, held-out clean and (optional) held-out toxic data on the device."""

    train: objective.DeviceData
    test: objective.DeviceData
    toxic: objective.DeviceData | None


def _evaluate_row(st: _State, splits: _Splits, config: TrainConfig, fast: bool, losses: list[float],
                  t0: float) -> dict:
    """The metrics line of the epoch just finished (epoch 0: the starting model)."""
    row = {"epoch": st.epoch, "train_loss": sum(losses) / len(losses) if losses else None, "step_losses": losses,
           **objective.evaluate_split(st.model, splits.test, splits.toxic, config.scenario, fast)}
    return {**row, "seconds": time.time() - t0}


def _run_epochs(run: Run, config: TrainConfig, st: _State, splits: _Splits, fast: bool, progress: bool,
                callback: Callback | None) -> None:
    """Resume (or evaluate the starting model), then train, evaluate and save each remaining epoch."""
    if _restore(run, st):
        if progress:
            print(f"resuming after epoch {st.epoch}")
    else:
        st.metrics = [_evaluate_row(st, splits, config, fast, [], time.time())]
        atomic_files.write_jsonl(run.dir / runs.METRICS, st.metrics)
        if progress:
            print(objective.summary_line(st.metrics[0], config.epochs))
    while st.epoch < config.epochs:
        t0 = time.time()
        losses = _train_epoch(st, splits.train, config, fast, progress, callback)
        st.epoch += 1
        st.metrics.append(_evaluate_row(st, splits, config, fast, losses, t0))
        _save_epoch(run, config, st)
        if progress:
            print(objective.summary_line(st.metrics[-1], config.epochs))
        if callback is not None:
            callback("epoch", st.epoch, None)
    runs.mark_complete(run, st.metrics)
    (run.dir / runs.RESUME).unlink(missing_ok=True)


def _toxic_test(config: TrainConfig, test_ds, rule: str):
    """The held-out prompts with the toxic rule's labels, for the toxic loss."""
    return test_ds.relabel(rule)


def train(config: TrainConfig, progress: bool = True, *, device: str | torch.device | None = "auto",
          root: str | Path | None = None, callback: Callback | None = None) -> Run:
    """Train a config (reusing a complete run, resuming an incomplete one) and return its Run.

    Before it trusts a run folder it checks every file against its records (run_checks): a complete run whose
    files do not verify is not complete, and is retrained from its last good epoch, each fault said in one line.
    callback(event, epoch, step) is called with ("step", epoch, step) after each optimizer step and
    ("epoch", epoch, None) once an epoch is saved; an exception from it stops training like a kill would.
    """
    root = Path(root or runs.runs_root())
    tok = models.load_tokenizer(config.model)
    train_ds, test_ds = run_spec.datasets_for(config, tok, models.prepend_bos_for(config.model, tok))
    run = Run(root / runs.run_id(config, train_ds, test_ds))
    source, rule = _check_source(config, root), runs.toxic_rule(config, root)
    run.dir.mkdir(parents=True, exist_ok=True)
    with _lock(run.dir):
        if _settle(run, config, train_ds, test_ds):
            if progress:
                print(f"reusing complete run {run.dir}")
            return run
        _train_folder(run, config, (train_ds, test_ds), (source, rule), progress, device, callback)
    return run


def _train_folder(run: Run, config: TrainConfig, datasets: tuple, source_rule: tuple[Run | None, str | None],
                  progress: bool, device, callback: Callback | None) -> None:
    """Load the model and train the run's remaining epochs into its (locked, settled) folder."""
    (train_ds, test_ds), (source, rule) = datasets, source_rule
    model, _ = models.load_model(config.model, device=device)
    model.eval()  # dropout off: deterministic updates
    dev = next(model.parameters()).device
    ckpt_bytes = checkpoints.parameter_bytes(model, run_spec.DTYPES[config.dtype])
    runs.ensure_free_space(run.dir, len(config.stored_epochs) * ckpt_bytes + _resume_bytes(model))
    with deterministic():
        if source is not None:
            runs.load_checkpoint(model, source, source.final_epoch)
        torch.manual_seed(config.seed)
        st = _State(model, objective.make_optimizer(model, config), torch.Generator().manual_seed(config.seed))
        if not run.exists:
            _write_run_files(run, config, train_ds, test_ds, {
                "device": str(dev), "optimizer": type(st.optimizer).__name__,
                "fused": bool(st.optimizer.defaults.get("fused"))})
        splits = _Splits(objective.DeviceData(train_ds, dev), objective.DeviceData(test_ds, dev),
                         objective.DeviceData(_toxic_test(config, test_ds, rule), dev) if rule else None)
        fast = objective.fast_path_ok(model, *splits.train.batch(torch.arange(min(4, len(train_ds))))[:2])
        if not fast:
            warnings.warn(f"END-only forward does not match {config.model}'s logits; using full logits", stacklevel=3)
        if progress:
            print(f"run {run.dir}")
        _run_epochs(run, config, st, splits, fast, progress, callback)
