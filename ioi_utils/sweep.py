"""A profile's fine-tuning runs, planned from the chapters' own configs and trained as Ray tasks.

The book's chapters fine-tune the model several times (clean, one toxic run per toxic dataset, one reversal
of each toxic run, and Greater-Than's clean and toxic runs). Every run is addressed by its config and data
(`runs.run_id`), is resumable from its last saved epoch, and is reused once complete, so the runs are
independent tasks: a chapter that finds its run complete in `$IOI_UTILS_RUNS` just opens it. This module
trains them ahead of the chapters, side by side:

1. **Plan** (`run_plan.planned_runs`): from a profile's parameters (`profiles.PROFILES[name]`) build each run's config with
   the same functions the chapters call (`study.base_config`, `study.run_config`, `study.toxic_configs`,
   `runs.reversal_of`, `greater_than_study.split_config`), so the run ids are the ones the
   chapters compute. Only the tokenizer is loaded (for the dataset fingerprints in the id), never the model.
   A reversal starts from its toxic run's final weights: it names that run as its `source`.
2. **Execute** (`execute`): every run that is not complete becomes a Ray task calling `training.train`; a
   reversal's task takes its source's task as an argument, so Ray starts it once the source is done. Ray is
   embedded in this process by default (`ray.init` on this machine, nothing to set up) or joins a running
   cluster (`--address`). A task asks for one GPU where the cluster has GPUs; otherwise it asks for `threads`
   CPUs and pins torch to that many threads (the machine's cores split among `--workers` tasks). A task that
   fails, or whose worker process dies, is reported and retried (`max_retries`); training resumes from the
   run's last saved epoch, so nothing finished is lost. Progress lines say what is done, running and failed
   and estimate the time left from the runs finished so far.
3. **Dry run** (`run_plan.describe`): the runs, their ids, optimizer steps (epochs x ceil(n_train / batch_size)),
   samples seen and an estimated cost (`run_plan.estimate_seconds`).

    python -m ioi_utils.sweep --profile smoke|offline|paper [--model NAME] [--gt-model NAME] [--address ADDR] [--workers N]
        [--threads T] [--max-retries R] [--dry-run]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import ray
import torch

from ioi_utils import models, profiles
from ioi_utils.study import run_plan
from ioi_utils.finetuning import runs, training
from ioi_utils.storage import timings
from ioi_utils.finetuning.run_spec import TrainConfig

REPORT_EVERY = 30.0  # seconds between progress lines when nothing finishes


# ---------------------------------------------------------------- plan


# ---------------------------------------------------------------- cost


# ---------------------------------------------------------------- execute


class Ledger:
    """Each attempt at a run, as a file in the run cache that the task writes itself: `<run id>.<attempt>` holding
    its start and end times. The driver reads attempts here and epochs from the runs' folders: a task that reported
    to an actor and waited for the answer (ray.get, ray.wait) would lend its CPU to Ray meanwhile, which starts
    another task on it (a sweep on 2 CPUs once ran 3 runs at once), and a call fired without waiting is lost when
    its worker dies."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def start(self, run_id: str) -> int:
        """Record a new attempt (its number: 1 for the first) and its start time."""
        self.folder.mkdir(parents=True, exist_ok=True)
        n = len(self._files(run_id)) + 1
        while True:
            try:
                with open(self.folder / f"{run_id}.{n}", "x") as f:
                    f.write(f"{time.time()}\n")
                return n
            except FileExistsError:
                n += 1

    def end(self, run_id: str, attempt: int) -> None:
        """Record the end time of an attempt."""
        with open(self.folder / f"{run_id}.{attempt}", "a") as f:
            f.write(f"{time.time()}\n")

    def attempts(self, run_id: str) -> int:
        """Attempts started at a run."""
        return len(self._files(run_id)) if self.folder.is_dir() else 0

    def snapshot(self, root: Path, run_ids: Sequence[str]) -> dict[str, dict[str, int]]:
        """{"attempts": run id -> attempts started, "epochs": run id -> last saved epoch} for these runs."""
        return {"attempts": {i: n for i in run_ids if (n := self.attempts(i))},
                "epochs": {i: runs.Run(root / i).last_epoch for i in run_ids if (root / i / "config.json").exists()}}

    def peak(self) -> int:
        """The most attempts that ran at once (an attempt whose worker died ends when its retry starts)."""
        spans: dict[str, list[list[float]]] = {}
        for p in sorted(self.folder.glob("*.*")):
            rid, _, n = p.name.rpartition(".")
            spans.setdefault(rid, []).append([float(t) for t in p.read_text().split()] + [int(n)])
        events: list[tuple[float, int]] = []
        for tries in spans.values():
            tries.sort(key=lambda t: t[-1])
            for k, t in enumerate(tries):
                end = t[1] if len(t) == 3 else (tries[k + 1][0] if k + 1 < len(tries) else time.time())
                events += [(t[0], 1), (end, -1)]
        running = peak = 0
        for _, step in sorted(events, key=lambda e: (e[0], e[1])):
            running += step
            peak = max(peak, running)
        return peak

    def _files(self, run_id: str) -> list[Path]:
        return [p for p in self.folder.glob(f"{run_id}.*") if p.name.rpartition(".")[0] == run_id]


def train_task(config: dict[str, Any], run_id: str, root: str, threads: int | None, ledger: str,
               callback: training.Callback | None = None, *after: Any) -> dict[str, Any]:
    """One run, inside a Ray worker: pin torch's threads, count the attempt, then training.train (which resumes
    from the run's last saved epoch). `after`: the results of the runs it starts from (Ray waits for them).
    Returns {"id", "seconds", "attempt", "resumed_from" (epochs already done when training started; None when the
    run was complete)}."""
    models.pin_threads(threads)
    attempt = Ledger(ledger).start(run_id)
    first: dict[str, int] = {}

    def report(event: str, epoch: int, step: int | None) -> None:
        if event == "step":
            first.setdefault("from", epoch - 1)
        if callback is not None:
            callback(event, epoch, step)

    t0 = time.time()
    try:
        run = training.train(TrainConfig.from_dict(config), progress=False, root=root, callback=report)
    finally:
        Ledger(ledger).end(run_id, attempt)
    if run.id != run_id:
        raise RuntimeError(f"planned run id {run_id} but training.train trained {run.id}")
    return {"id": run_id, "seconds": time.time() - t0, "attempt": attempt, "resumed_from": first.get("from")}


@dataclass
class Summary:
    """What a sweep did: runs trained (their task results), found complete, failed (one line why), wall time."""

    trained: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    peak: int = 0  # the most runs that trained at once

    def line(self) -> str:
        """One line: counts and wall time."""
        retried = sum(1 for r in self.trained if r["attempt"] > 1)
        return (f"sweep: {len(self.trained)} trained ({retried} after a retry), {len(self.skipped)} already "
                f"complete, {len(self.failed)} failed, in {timings.fmt_seconds(self.seconds)}"
                + (f" (at most {self.peak} at once)" if self.peak else ""))


def _why(exc: BaseException) -> str:
    """A task's failure in one line (the exception the task raised, or how its worker died)."""
    cause = getattr(exc, "cause", None)
    err = cause if isinstance(cause, BaseException) else exc
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[-1] if text else ''}"[:300]


@dataclass
class _Progress:
    """The driver's view while tasks run: finished results, failures, attempts seen, the last line's time."""

    plan: dict[str, run_plan.PlannedRun]
    slots: int
    summary: Summary
    seen: dict[str, int] = field(default_factory=dict)
    running: set[str] = field(default_factory=set)
    last_line: float = 0.0
    start: float = field(default_factory=time.time)

    def eta(self, pending: Sequence[str]) -> str:
        """Time left: the pending runs' cost at the rate of the runs finished so far, over the parallel slots."""
        done = [r for r in self.summary.trained if r["resumed_from"] is not None]
        cost = sum(self.plan[r["id"]].config.epochs * run_plan._sample_cost(self.plan[r["id"]].config) for r in done)
        if not done or cost <= 0:
            return "time left: after the first run finishes"
        rate = sum(r["seconds"] for r in done) / cost
        left = sum(self.plan[i].config.epochs * run_plan._sample_cost(self.plan[i].config) for i in pending) * rate
        return f"about {timings.fmt_seconds(left / max(1, min(self.slots, len(pending))))} left"

    def status(self, pending: Sequence[str], snap: dict[str, dict[str, int]]) -> str:
        """The progress line: done / running / queued / failed, epochs of the running runs, time left."""
        running = sorted(self.running & set(pending))
        epochs = ", ".join(f"{i[:40]} e{snap['epochs'].get(i, 0)}/{self.plan[i].config.epochs}" for i in running)
        return (f"[{timings.fmt_seconds(time.time() - self.start)}] done {len(self.summary.trained)}, running "
                f"{len(running)}, queued {len(pending) - len(running)}, failed {len(self.summary.failed)}; "
                f"{self.eta(pending)}" + (f" ({epochs})" if epochs else ""))

    def attempts(self, snap: dict[str, dict[str, int]], say: Callable[[str], None]) -> None:
        """Say each attempt that started since the last look (a second attempt is a retry)."""
        for rid, n in snap["attempts"].items():
            if n > self.seen.get(rid, 0):
                self.running.add(rid)
                say(f"retrying {rid}: attempt {n} (the previous one failed or its worker died), resuming from its "
                    f"last saved epoch" if n > 1 else f"started {rid}")
                self.seen[rid] = n


def submit(todo: Sequence[run_plan.PlannedRun], root: Path, threads: int | None, gpus: float, max_retries: int, ledger: Ledger,
           callback: training.Callback | None) -> dict[Any, str]:
    """One Ray task per run (sources first: a reversal's task takes its source's task as an argument)."""
    task = ray.remote(train_task).options(num_cpus=threads or 1, num_gpus=gpus, max_retries=max_retries,
                                          retry_exceptions=True)
    refs: dict[str, Any] = {}
    for run in sorted(todo, key=lambda r: r.source is not None):
        after = [refs[run.source]] if run.source in refs else []
        refs[run.id] = task.remote(run.config.to_dict(), run.id, str(root), threads, str(ledger.folder),
                                   callback, *after)
    return {ref: rid for rid, ref in refs.items()}


def execute(plan: Sequence[run_plan.PlannedRun], root: str | Path | None = None, threads: int | None = None,
            max_retries: int = 2, callback: training.Callback | None = None,
            say: Callable[[str], None] = print, report_every: float = REPORT_EVERY) -> Summary:
    """Train the runs of a plan that are not complete as Ray tasks (Ray already initialised), with progress lines.

    threads: torch threads per task (each task asks Ray for that many CPUs); a task asks for one GPU when the
    cluster has GPUs. max_retries: attempts after the first, for an exception or a dead worker. callback: passed
    to training.train inside each task (after the sweep's own progress report)."""
    root = Path(root or runs.runs_root())
    start = time.time()
    summary = Summary(skipped=[r.id for r in plan if run_plan.is_complete(r, root)])
    todo = [r for r in plan if r.id not in set(summary.skipped)]
    gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
    slots = int(ray.cluster_resources().get("GPU", 0)) if gpus else int(ray.cluster_resources().get("CPU", 1)
                                                                         // (threads or 1))
    say(f"sweep: {len(plan)} runs, {len(summary.skipped)} already complete, {len(todo)} to train on "
        f"{max(1, slots)} parallel slot(s) ({'1 GPU' if gpus else f'{threads or 1} CPU thread(s)'} per task)")
    ledger = Ledger(root / ".sweeps" / f"{os.getpid()}-{time.time_ns()}")
    pending = submit(todo, root, threads, gpus, max_retries, ledger, callback)
    prog = _Progress({r.id: r for r in plan}, max(1, slots), summary, start=start)
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
        snap = ledger.snapshot(root, list(pending.values()))
        prog.attempts(snap, say)
        for ref in ready:
            rid = pending.pop(ref)
            try:
                res = ray.get(ref)
                summary.trained.append(res)
                say(f"done {rid} in {timings.fmt_seconds(res['seconds'])} (attempt {res['attempt']})")
            except ray.exceptions.RayError as exc:
                summary.failed[rid] = _why(exc)
                say(f"FAILED {rid}: {summary.failed[rid]}")
        if ready or time.time() - prog.last_line >= report_every:
            say(prog.status(list(pending.values()), snap))
            prog.last_line = time.time()
    summary.seconds = time.time() - start
    if ledger.folder.is_dir():
        summary.peak = ledger.peak()
        shutil.rmtree(ledger.folder, ignore_errors=True)
    return summary


# ---------------------------------------------------------------- command line


def split_cores(cores: int, workers: int | None, threads: int | None) -> tuple[int, int]:
    """(workers, torch threads per task) on a machine of `cores` CPUs: threads default to cores // workers
    (workers default to 2, at most cores); workers default to cores // threads when threads are given."""
    for name, value in (("workers", workers), ("threads", threads)):
        if value is not None and value < 1:
            raise run_plan.SweepError(f"--{name} must be >= 1, got {value}")
    if threads is None:
        workers = workers or max(1, min(2, cores))
        return workers, max(1, cores // workers)
    return workers or max(1, cores // threads), threads


def start_ray(address: str | None, workers: int, threads: int) -> None:
    """Join the Ray cluster at `address` (or $RAY_ADDRESS), else start an embedded one sized to workers x threads
    CPUs (and this machine's GPUs), without the dashboard."""
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address, log_to_driver=True)
    else:
        ray.init(num_cpus=workers * threads, include_dashboard=False, log_to_driver=True)


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (run_plan.SweepError), not usage text."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise run_plan.SweepError(message)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line (a bad argument raises run_plan.SweepError)."""
    p = _Parser(prog="python -m ioi_utils.sweep", description=__doc__.splitlines()[0])
    p.add_argument("--profile", required=True, help=f"one of {', '.join(sorted(profiles.PROFILES))}")
    p.add_argument("--model", help="train this model instead of the profile's (both IOI and Greater-Than runs)")
    p.add_argument("--gt-model", help="the Greater-Than runs' model, when it differs from --model (e.g. tiny-digits)")
    p.add_argument("--address", help="join this running Ray cluster (default: $RAY_ADDRESS, else an embedded Ray)")
    p.add_argument("--workers", type=int, help="embedded Ray: runs side by side on this machine's CPUs (default 2)")
    p.add_argument("--threads", type=int, help="torch threads per task (default: the profile's, else cores // workers)")
    p.add_argument("--max-retries", type=int, default=2, help="retries of a failed task (default 2)")
    p.add_argument("--dry-run", action="store_true", help="list the runs and their estimated cost; train nothing")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit code (0 done, 1 a run failed, 2 bad input)."""
    try:
        args = parse_args(argv)
        params = run_plan.profile_params(args.profile, args.model, args.gt_model)
        if args.max_retries < 0:
            raise run_plan.SweepError(f"--max-retries must be >= 0, got {args.max_retries}")
        workers, threads = split_cores(os.cpu_count() or 1, args.workers, args.threads or params.get("threads"))
        plan = run_plan.planned_runs(params, need_ids=not args.dry_run)
    except (run_plan.SweepError, models.ModelUnavailableError, ValueError) as exc:  # ValueError: a config or dataset
        print(f"error: {exc}".splitlines()[0], file=sys.stderr)
        return 2
    root = runs.runs_root()
    if args.dry_run:
        print(f"profile {args.profile}, model {params['model_name']}, run cache {root}")
        print(run_plan.describe(plan, root))
        return 0
    start_ray(args.address, workers, threads)
    try:
        summary = execute(plan, root, threads, args.max_retries)
    finally:
        ray.shutdown()
    print(summary.line())
    for rid, why in summary.failed.items():
        print(f"failed: {rid}: {why}", file=sys.stderr)
    return 1 if summary.failed else 0


if __name__ == "__main__":
    sys.exit(main())
