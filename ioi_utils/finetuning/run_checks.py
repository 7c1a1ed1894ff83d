"""Which files of a run folder can be trusted, and what training does about the others.

`check(run)` compares every file of a run folder with what was recorded when it was written, changing nothing:
each checkpoint against its sha256 and size in checkpoints.json; config.json, run.json, metrics.jsonl,
complete.json and the resume state by parsing them. It finds the epoch training can continue from *exactly*:
the resume state's epoch, when every checkpoint up to it verifies and the metrics cover it; otherwise epoch 0,
since a finished run keeps no optimizer state (training is deterministic, so retraining writes the lost
checkpoints again). Each fault is one line: which run, which file or epoch, what is wrong, the fix.

`training.train` applies the fixes under the run's lock (`tidy`, `cut_back`); `python -m ioi_utils.verify`
prints them for every run.

A run written before checksums (no checkpoints.json) is *adopted*: each checkpoint file that safetensors opens
(a complete header and exactly the bytes it announces) gets its sha256 recorded; the others are retrained.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ioi_utils.storage import checked_files
from ioi_utils.finetuning.checkpoints import (
    CHECKPOINTS, checkpoint_files, checkpoint_problem, read_json, read_records, record_of, write_records
)
from ioi_utils.finetuning.run_spec import TrainConfig
from ioi_utils.finetuning.runs import COMPLETE, CONFIG, INFO, LEGACY_RESUME, METRICS, RESUME, Run, mark_complete


@dataclass(frozen=True)
class Fault:
    """A file of a run that does not verify: what it is (a file name or "epoch N checkpoint"), what is wrong,
    and its fix when that is not retraining (fix None: retrain from the run's resume point)."""

    subject: str
    problem: str
    fix: str | None = None


@dataclass
class Check:
    """What `check` found in a run folder, and the epoch training continues from."""

    run: str
    faults: list[Fault] = field(default_factory=list)
    resume_from: int | None = 0  # None: complete, every file verifies; else the epoch training continues from
    records: dict[int, dict[str, Any]] | None = None  # checkpoint records (an old run's: adopted); None: unreadable
    legacy: bool = False  # no checkpoints.json: written before checksums
    orphans: list[int] = field(default_factory=list)  # epochs of checkpoint files with no record (never loaded)

    def lines(self) -> list[str]:
        """One line per fault: 'run <id>: <file or epoch> <problem>; fix: <fix>'."""
        retrain = f"retrain from epoch {self.resume_from or 0}"
        return [f"run {self.run}: {f.subject} {f.problem}; fix: {f.fix or retrain}" for f in self.faults]

    @property
    def rewrite(self) -> set[str]:
        """The metadata files that are rewritten (config.json, run.json, complete.json)."""
        return {f.subject for f in self.faults if f.subject in (CONFIG, INFO, COMPLETE)}


def check(run: Run, config: TrainConfig | None = None, deep: bool = False) -> Check:
    """Compare every file of a run folder with its records; read only. Reads every checkpoint in full (sha256);
    the resume state's header only, unless deep (its tensors and sha256 are checked when training loads it)."""
    c = Check(run.id)
    config = _config(run, c, config)
    _parse(run, INFO, c, "rewrite it")
    if run.complete:
        _parse(run, COMPLETE, c, "rewrite it")
    metrics_end = _metrics_end(run, c)
    c.records = _records(run, c)
    resume = _resume_epoch(run, c, deep)
    bad = _checkpoints(run, c, config)
    c.resume_from = _resume_point(run, c, config, metrics_end, resume, bad)
    return c


def _config(run: Run, c: Check, config: TrainConfig | None) -> TrainConfig | None:
    """The run's config (the one given, which config.json must hold), with a fault when config.json is
    unreadable or holds another config."""
    try:
        stored = run.config
        if config is None or stored == config:
            return stored
        problem = "holds another config than the one its folder is named after"
    except checked_files.CorruptFile as e:
        problem = str(e).removeprefix(CONFIG + " ")
    c.faults.append(Fault(CONFIG, problem, "rewrite it from the run's options (training them does)"))
    return config


def _parse(run: Run, name: str, c: Check, fix: str) -> None:
    """Add a fault if a JSON metadata file does not parse."""
    try:
        read_json(run.dir / name)
    except checked_files.CorruptFile:
        c.faults.append(Fault(name, "is unreadable", fix))


def _metrics_end(run: Run, c: Check) -> int:
    """The last epoch of a metrics log that lists epochs 0, 1, ... in order; -1 if there is none or it is bad."""
    try:
        epochs = [row["epoch"] for row in run.metrics]
    except checked_files.CorruptFile:
        c.faults.append(Fault(METRICS, "is unreadable"))
        return -1
    if epochs != list(range(len(epochs))):
        c.faults.append(Fault(METRICS, f"lists epochs {epochs}, not 0..{len(epochs) - 1} in order"))
        return -1
    return len(epochs) - 1


def _records(run: Run, c: Check) -> dict[int, dict[str, Any]] | None:
    """The checkpoint records: checkpoints.json's, an old run's adopted ones, or None (fault) if unreadable."""
    if not (run.dir / CHECKPOINTS).exists():
        if not checkpoint_files(run.dir) or _records_checksums(run):
            return {}  # nothing recorded yet: any checkpoint file is an orphan
        c.legacy = True
        c.faults.append(Fault(CHECKPOINTS, "is missing (the run was written before checksums)",
                              "record the sha256 of every checkpoint that opens"))
        return adoption_records(run)
    try:
        return read_records(run.dir)
    except checked_files.CorruptFile as e:
        c.faults.append(Fault(CHECKPOINTS, str(e).removeprefix(CHECKPOINTS + " ")))
        return None


def _records_checksums(run: Run) -> bool:
    """True if the run was created by a version that records checkpoints (run.json says so; unreadable: True)."""
    try:
        return bool(read_json(run.dir / INFO).get("checksums", False))
    except (checked_files.CorruptFile, AttributeError):
        return True


def adoption_records(run: Run) -> dict[int, dict[str, Any]]:
    """Records for the checkpoints of a run written before checksums: every file that safetensors opens."""
    out = {}
    for epoch, path in sorted(checkpoint_files(run.dir).items()):
        try:
            checked_files.read_header(path, tensors=False)
        except checked_files.CorruptFile:
            continue
        out[epoch] = record_of(path)
    return out


def _resume_epoch(run: Run, c: Check, deep: bool) -> int:
    """The epoch of the resume state (0 if there is none, or a fault when it is unreadable)."""
    if (run.dir / LEGACY_RESUME).exists():
        c.faults.append(Fault(LEGACY_RESUME, "is an old pickle resume state, never read",
                              "remove it" if run.complete else None))
    path = run.dir / RESUME
    if not path.exists():
        return 0
    try:
        if deep:
            return int(checked_files.read_checked(path)["epoch"])
        return int(checked_files.read_header(path, tensors=False)[0]["epoch"])
    except (checked_files.CorruptFile, KeyError, TypeError, ValueError) as e:
        problem = str(e).removeprefix(RESUME + " ") if isinstance(e, checked_files.CorruptFile) else "has no epoch"
        c.faults.append(Fault(RESUME, problem))
        return 0


def _checkpoints(run: Run, c: Check, config: TrainConfig | None) -> dict[int, str]:
    """epoch -> problem for every recorded checkpoint (and, of a complete run, every stored epoch) that does
    not verify; unrecorded files are orphans (never loaded, removed)."""
    if c.records is None:
        return {}  # checkpoints.json is unreadable: no checkpoint is trusted, and its fault says so
    records = c.records
    wanted = set(records) | (set(config.stored_epochs) if config is not None and run.complete else set())
    bad = {e: p for e in sorted(wanted) if (p := checkpoint_problem(run.checkpoint_path(e), records.get(e)))}
    c.faults += [Fault(f"epoch {e} checkpoint", p) for e, p in bad.items()]
    c.orphans = sorted(set(checkpoint_files(run.dir)) - set(records) - wanted)
    c.faults += [Fault(f"epoch {e} checkpoint", "has no record (its write was cut short)", "remove it")
                 for e in c.orphans]
    return bad


def _resume_point(run: Run, c: Check, config: TrainConfig | None, metrics_end: int, resume: int,
                  bad: dict[int, str]) -> int | None:
    """None when the run is complete and every file verifies; else the epoch training continues from."""
    final = config.epochs if config is not None else metrics_end
    if run.complete and c.records is not None and not bad:
        if metrics_end == final:
            return None
        if metrics_end >= 0:
            c.faults.append(Fault(METRICS, f"stops at epoch {metrics_end} of {final}"))
    if resume > 0 and c.records is not None and metrics_end >= resume and not any(e <= resume for e in bad):
        return resume
    return 0


# ---------------------------------------------------------------- fixes (training.train, under the run's lock)


def tidy(run: Run, c: Check) -> None:
    """Fix a complete run whose checkpoints all verify: record an old run's checkpoints, remove orphans and an
    old resume state, rewrite an unreadable complete.json."""
    if c.legacy:
        write_records(run.dir, c.records or {})
    for epoch in c.orphans:
        run.checkpoint_path(epoch).unlink(missing_ok=True)
    (run.dir / LEGACY_RESUME).unlink(missing_ok=True)
    if COMPLETE in c.rewrite:
        mark_complete(run, run.metrics, rewritten=True)


def cut_back(run: Run, c: Check) -> None:
    """Put a run folder in the state training continues from (epoch c.resume_from): first remove the mark of
    completion (a kill from here on leaves an incomplete run), then keep only the records and files of the
    checkpoints up to that epoch, and the resume state only if training continues from it."""
    start = c.resume_from or 0
    (run.dir / COMPLETE).unlink(missing_ok=True)
    (run.dir / LEGACY_RESUME).unlink(missing_ok=True)
    if start == 0:
        (run.dir / RESUME).unlink(missing_ok=True)
    keep = {e: r for e, r in (c.records or {}).items() if e <= start}
    write_records(run.dir, keep)
    for epoch, path in checkpoint_files(run.dir).items():
        if epoch not in keep:
            path.unlink(missing_ok=True)
