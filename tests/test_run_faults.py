"""Faults of the run cache, tried on purpose: each one is said in one line, and training redoes only what it must.

A damaged checkpoint (truncated, or another model's), damaged metadata, a kill between a checkpoint and its
record, a full disk, a second process on the same run, and a run written before checksums. Every test trains
the `tiny` model on a few prompts (seconds) and compares the repaired run with an undamaged one, tensor by tensor.
"""

from __future__ import annotations

import errno
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from ioi_utils.storage import atomic_files, checked_files, results
from ioi_utils.finetuning import checkpoints, run_checks, run_spec, runs, training
from ioi_utils import models, train as cli, verify
from ioi_utils.finetuning.run_spec import TrainConfig

from test_training import broken_writes

FAST = dict(model="tiny", n_train=48, n_test=16, batch_size=16, lr=1e-3, checkpoint_epochs=(1, 2))
CLI_FAST = ["--model", "tiny", "--n-train", "48", "--n-test", "16", "--checkpoint-epochs", "1,2", "--no-progress"]


@pytest.fixture(autouse=True)
def _roots(tmp_path, monkeypatch):
    """Runs and results go to temp folders; one thread (tiny ops, shared CPUs)."""
    monkeypatch.setenv(runs.RUNS_ENV, str(tmp_path / "runs"))
    monkeypatch.setenv("IOI_UTILS_RESULTS", str(tmp_path / "results"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class _Killed(Exception):
    """Stands for a kill: raised where a process would die."""


def _epochs_trained(config: TrainConfig, **kwargs) -> tuple[runs.Run, list[int]]:
    """Train (or reuse) a config; the run and the epochs this call trained."""
    trained: list[int] = []
    run = training.train(config, progress=False, callback=lambda ev, ep, st: ev == "epoch" and trained.append(ep),
                         **kwargs)
    return run, trained


def _weights(run: runs.Run) -> dict[int, dict[str, torch.Tensor]]:
    """Every checkpoint of a run, loaded the checked way (runs.load_checkpoint) into the run's model."""
    out = {}
    for epoch in run.epochs_available[1:]:
        model, _ = models.load_model(run.config.model, device="cpu")
        runs.load_checkpoint(model, run, epoch)
        out[epoch] = {k: v.clone() for k, v in checkpoints.state_dict(model).items()}
    return out


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[e].keys() == b[e].keys() and all(torch.equal(a[e][k], b[e][k])
                                                                           for k in a[e]) for e in a)


def _without_time(run: runs.Run) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in run.metrics]


def _warnings(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("warning: ")]


@pytest.fixture()
def good():
    """A complete 3-epoch run (checkpoints 1, 2, 3), its weights and metrics."""
    run, trained = _epochs_trained(TrainConfig(**FAST, epochs=3))
    assert trained == [1, 2, 3] and run.epochs_available == [0, 1, 2, 3]
    return run, _weights(run), _without_time(run)


# ---------------------------------------------------------------- damaged checkpoints


def test_truncated_checkpoint_is_said_in_one_line_and_retrained(capsys):
    """The issue's case: a tiny clean run, epoch_002 truncated to 1,000 bytes, the same command line again."""
    argv = [*CLI_FAST, "--epochs", "2"]
    cli.main(argv)
    run = runs.list_runs()[0]
    before = _weights(run)
    with open(run.checkpoint_path(2), "r+b") as f:
        f.truncate(1000)
    model, _ = models.load_model("tiny", device="cpu")
    with pytest.raises(checkpoints.CheckpointError) as e:
        runs.load_checkpoint(model, run, 2)
    assert str(e.value) == (f"run {run.id}: epoch 2 checkpoint has 1000 bytes, not the recorded "
                            f"{run.checkpoint_path(1).stat().st_size}; retrain it with `python -m ioi_utils.train "
                            f"--run {run.id}` (it resumes from its last good epoch)")
    capsys.readouterr()
    cli.main(argv)
    out, err = capsys.readouterr()
    assert _warnings(err) == [f"warning: run {run.id}: epoch 2 checkpoint has 1000 bytes, not the recorded "
                              f"{run.checkpoint_path(1).stat().st_size}; fix: retrain from epoch 0"]
    assert "stored epochs: 1, 2" in out and _same_weights(_weights(run), before)


def test_a_flipped_byte_is_caught_by_the_sha256(good, capsys):
    run, before, metrics = good
    with open(run.checkpoint_path(3), "r+b") as f:  # same size, one byte of a weight changed
        f.seek(-100, 2)
        byte = f.read(1)
        f.seek(-100, 2)
        f.write(bytes([byte[0] ^ 1]))
    again, trained = _epochs_trained(run.config)
    assert trained == [1, 2, 3] and _same_weights(_weights(again), before) and _without_time(again) == metrics
    assert _warnings(capsys.readouterr().err) == [f"warning: run {run.id}: epoch 3 checkpoint does not match its "
                                                  "recorded sha256; fix: retrain from epoch 0"]


def test_checkpoint_of_another_models_shape(good, capsys):
    """tiny-digits weights (another vocabulary: other shapes) in place of epoch 2: caught, retrained; and if its
    record is forged too, loading says in one line that it does not fit."""
    run, before, _ = good
    weights = checkpoints.state_dict(models.load_model("tiny-digits", device="cpu")[0])
    other = {k: v.clone(memory_format=torch.contiguous_format) for k, v in weights.items()}
    save_file(other, str(run.checkpoint_path(2)))
    again, trained = _epochs_trained(run.config)
    assert trained == [1, 2, 3] and _same_weights(_weights(again), before)
    [line] = _warnings(capsys.readouterr().err)
    assert line.startswith(f"warning: run {run.id}: epoch 2 checkpoint has ") and "fix: retrain from epoch 0" in line
    save_file(other, str(run.checkpoint_path(2)))
    records = checkpoints.read_records(run.dir)
    checkpoints.write_records(run.dir, {**records, 2: checkpoints.record_of(run.checkpoint_path(2))})
    with pytest.raises(checkpoints.CheckpointError, match=rf"^run {run.id}: epoch 2 checkpoint (tensor|does not fit)"
                                                   r"[^\n]*; retrain it with `python -m ioi_utils.train --run"):
        run.model(2, device="cpu")


def test_missing_checkpoint_of_a_complete_run(good, capsys):
    run, before, _ = good
    run.checkpoint_path(1).unlink()
    with pytest.raises(checkpoints.CheckpointError, match="epoch 1 checkpoint is missing"):
        runs.load_checkpoint(models.load_model("tiny", device="cpu")[0], run, 1)
    again, trained = _epochs_trained(run.config)
    assert trained == [1, 2, 3] and _same_weights(_weights(again), before)
    assert _warnings(capsys.readouterr().err) == [f"warning: run {run.id}: epoch 1 checkpoint is missing; "
                                                  "fix: retrain from epoch 0"]


# ---------------------------------------------------------------- damaged metadata


def _other_config(run: runs.Run) -> str:
    """config.json holding a valid config, but not the run's."""
    return json.dumps(TrainConfig(**FAST, epochs=7).to_dict())


def _metrics_with_a_gap(run: runs.Run) -> str:
    """metrics.jsonl that parses, with epoch 2 missing."""
    return "".join(json.dumps(r) + "\n" for r in run.metrics if r["epoch"] != 2)


@pytest.mark.parametrize("name, damage, problem, retrained", [
    ("config.json", None, "is unreadable", False),  # rewritten: nothing to retrain
    ("config.json", _other_config, "holds another config than the one its folder is named after", False),
    ("run.json", None, "is unreadable", False),
    ("complete.json", None, "is unreadable", False),
    ("metrics.jsonl", None, "is unreadable", True),  # the run's history is lost: retrained from epoch 0
    ("metrics.jsonl", _metrics_with_a_gap, "lists epochs [0, 1, 3], not 0..2 in order", True),
    ("checkpoints.json", None, "is unreadable", True),
])
def test_corrupt_run_metadata(good, capsys, name, damage, problem, retrained):
    run, before, metrics = good
    config = run.config
    (run.dir / name).write_text(damage(run) if damage else '{"epoch": ')
    again, trained = _epochs_trained(config)
    assert trained == ([1, 2, 3] if retrained else [])
    [line] = _warnings(capsys.readouterr().err)
    assert line.startswith(f"warning: run {run.id}: {name} {problem}; fix: ")
    assert line.endswith("retrain from epoch 0") == retrained
    assert again.complete and _same_weights(_weights(again), before) and _without_time(again) == metrics
    assert again.config == config and run_checks.check(again).faults == []  # every file reads and verifies again


def test_corrupt_resume_state_restarts_from_epoch_0(capsys):
    """Killed after epoch 2 of 3; the resume state then damaged in its tensors (its header still parses)."""
    cfg = TrainConfig(**FAST, epochs=3)
    whole = _weights(training.train(cfg, progress=False, root=runs.runs_root().parent / "whole"))
    with pytest.raises(_Killed):
        training.train(cfg, progress=False, callback=lambda ev, ep, st: _kill_if(ev == "epoch" and ep == 2))
    run = runs.list_runs()[0]
    with open(run.dir / runs.RESUME, "r+b") as f:
        f.seek(-8, 2)
        f.write(b"\xff" * 8)
    again, trained = _epochs_trained(cfg)
    assert trained == [1, 2, 3] and _same_weights(_weights(again), whole)
    assert _warnings(capsys.readouterr().err) == [f"warning: run {run.id}: {runs.RESUME} does not match its sha256; "
                                                  "fix: retrain from epoch 0"]


def _kill_if(condition: bool) -> None:
    if condition:
        raise _Killed


# ---------------------------------------------------------------- kills and full disks


def test_run_killed_between_a_checkpoint_and_its_record(monkeypatch, capsys):
    """The checkpoint of epoch 2 is on disk, its record is not: it is never loaded, and epoch 2 is trained again
    from the resume state of epoch 1 (not from scratch)."""
    cfg = TrainConfig(**FAST, epochs=3)
    whole = _weights(training.train(cfg, progress=False, root=runs.runs_root().parent / "whole"))
    real = checkpoints.write_records

    def killed_at_epoch_2(folder, records):
        if 2 in records:
            raise _Killed
        real(folder, records)

    with monkeypatch.context() as m:
        m.setattr(checkpoints, "write_records", killed_at_epoch_2)
        with pytest.raises(_Killed):
            training.train(cfg, progress=False)
    run = runs.list_runs()[0]
    assert run.checkpoint_path(2).exists() and run.epochs_available == [0, 1] and not run.complete
    with pytest.raises(checkpoints.CheckpointError, match="epoch 2 checkpoint has no recorded sha256"):
        runs.load_checkpoint(models.load_model("tiny", device="cpu")[0], run, 2)
    again, trained = _epochs_trained(cfg)
    assert trained == [2, 3] and _same_weights(_weights(again), whole)
    assert _warnings(capsys.readouterr().err) == [f"warning: run {run.id}: epoch 2 checkpoint has no record (its "
                                                  "write was cut short); fix: remove it"]


def test_disk_full_while_writing_a_checkpoint(monkeypatch, capsys):
    cfg = TrainConfig(**FAST, epochs=3)
    whole = _weights(training.train(cfg, progress=False, root=runs.runs_root().parent / "whole"))
    with monkeypatch.context() as m:
        broken_writes(m, "epoch_002", OSError(errno.ENOSPC, "No space left on device"))
        with pytest.raises(SystemExit):
            cli.main([*CLI_FAST, "--epochs", "3", "--lr", "1e-3"])
    run = runs.list_runs()[0]
    err = capsys.readouterr().err
    assert err == (f"error: [Errno 28] disk full while writing {run.checkpoint_path(2)}: free some space and run "
                   "again (nothing half-written was kept)\n")
    assert not list(run.dir.glob(".*.tmp")) and not run.checkpoint_path(2).exists() and run.epochs_available == [0, 1]
    again, trained = _epochs_trained(cfg)  # resumes after epoch 1
    assert trained == [2, 3] and _same_weights(_weights(again), whole)


def test_disk_full_as_safetensors_reports_it(monkeypatch):
    """The resume state is streamed by safetensors, whose full disk is a SafetensorError: still DiskFull."""
    from safetensors import SafetensorError

    def full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\0" * 10)
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(checked_files, "save_file", full)
    with pytest.raises(atomic_files.DiskFull, match=r"disk full while writing .*resume\.safetensors"):
        training.train(TrainConfig(**FAST, epochs=2), progress=False)
    assert not list(runs.list_runs()[0].dir.glob(".*.tmp"))


def test_two_processes_training_the_same_run(capsys):
    """While another process holds the run's lock, training says so in one line and writes nothing."""
    cfg = TrainConfig(**FAST, epochs=2)
    tok = models.load_tokenizer("tiny")
    datasets = run_spec.datasets_for(cfg, tok, models.prepend_bos_for("tiny", tok))
    folder = runs.runs_root() / runs.run_id(cfg, *datasets)
    folder.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time\n"
        "f = open(sys.argv[1], 'a+'); fcntl.flock(f, fcntl.LOCK_EX); f.truncate(0); f.write(str(os.getpid()))\n"
        "f.flush(); print('locked', flush=True); time.sleep(120)\n"), str(folder / ".lock")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(runs.RunBusyError, match=rf"^run {folder.name} is being trained by process "
                                                    rf"{holder.pid}: wait for it to finish"):
            training.train(cfg, progress=False)
        with pytest.raises(SystemExit):
            cli.main([*CLI_FAST, "--epochs", "2", "--lr", "1e-3"])
        assert capsys.readouterr().err.count("\n") == 1
        assert sorted(p.name for p in folder.iterdir()) == [".lock"]
    finally:
        holder.kill()
        holder.wait()
    assert training.train(cfg, progress=False).complete


# ---------------------------------------------------------------- runs written before checksums


def _make_legacy(run: runs.Run) -> None:
    """Make a run look written before checksums: no checkpoints.json, no "checksums" in run.json."""
    (run.dir / checkpoints.CHECKPOINTS).unlink()
    info = checkpoints.read_json(run.dir / runs.INFO)
    info.pop("checksums")
    atomic_files.write_json(run.dir / runs.INFO, info)


def test_old_run_is_adopted_and_its_pickles_never_read(good, capsys):
    run, before, _ = good
    _make_legacy(run)
    (run.dir / runs.LEGACY_RESUME).write_bytes(_planted_pickle(run.dir / "pwned"))
    with pytest.raises(checkpoints.CheckpointError, match=r"has no recorded sha256 \(the run was written before checksums\)"):
        runs.load_checkpoint(models.load_model("tiny", device="cpu")[0], run, 1)
    again, trained = _epochs_trained(run.config)
    assert trained == [] and _same_weights(_weights(again), before) and not (run.dir / "pwned").exists()
    assert _warnings(capsys.readouterr().err) == [
        f"warning: run {run.id}: checkpoints.json is missing (the run was written before checksums); "
        "fix: record the sha256 of every checkpoint that opens",
        f"warning: run {run.id}: resume.pt is an old pickle resume state, never read; fix: remove it"]
    assert not (run.dir / runs.LEGACY_RESUME).exists() and run_checks.check(again).faults == []


def test_old_run_with_a_truncated_checkpoint_is_retrained(good, capsys):
    run, before, _ = good
    _make_legacy(run)
    with open(run.checkpoint_path(2), "r+b") as f:
        f.truncate(1000)
    again, trained = _epochs_trained(run.config)
    assert trained == [1, 2, 3] and _same_weights(_weights(again), before)
    assert _warnings(capsys.readouterr().err)[1] == (f"warning: run {run.id}: epoch 2 checkpoint has no recorded "
                                                     "sha256; fix: retrain from epoch 0")


def _planted_pickle(marker: Path) -> bytes:
    """A torch.save payload that creates `marker` when unpickled (with weights_only=False)."""
    import io

    buf = io.BytesIO()
    torch.save(_Plant(str(marker)), buf)
    return buf.getvalue()


class _Plant:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


# ---------------------------------------------------------------- python -m ioi_utils.verify


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_verify_reports_what_would_be_recomputed_and_changes_nothing(good, capsys):
    run, _, _ = good
    with pytest.raises(_Killed):  # an incomplete run that is fine
        training.train(TrainConfig(**FAST, epochs=2, seed=1), progress=False,
                       callback=lambda ev, ep, st: _kill_if(ev == "epoch" and ep == 1))
    memo = results.memo_folder()
    checked_files.write_checked(memo / "x-1.safetensors", {"a": torch.ones(3)})
    assert verify.main([]) == 0
    out = capsys.readouterr().out
    assert out.endswith("checked 2 runs, 1 memos, 0 records: everything verifies\n")
    assert "incomplete; training resumes from epoch 1" in out
    with open(run.checkpoint_path(2), "r+b") as f:
        f.truncate(1000)
    (memo / "x-1.safetensors").write_bytes(b"garbage")
    (memo / "y-2.pt").write_bytes(_planted_pickle(memo / "pwned"))
    before = _snapshot(runs.runs_root().parent)
    assert verify.main([]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert f"run {run.id}: epoch 2 checkpoint has 1000 bytes, not the recorded " in lines[1]
    assert lines[1].endswith("; fix: retrain from epoch 0")
    assert lines[2] == f"run {run.id}: `python -m ioi_utils.train --run {run.id}` (or its chapter) applies these fixes"
    assert lines[3].startswith("memo x-1.safetensors does not load (") and lines[3].endswith(
        "fix: recomputed when a chapter asks for it (or delete it)")
    assert lines[4] == "memo y-2.pt is an old pickle memo, never read; fix: delete it"
    assert lines[5] == "checked 2 runs, 2 memos, 0 records: 4 problem line(s)"
    assert _snapshot(runs.runs_root().parent) == before and not (memo / "pwned").exists()
