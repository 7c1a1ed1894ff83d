"""Fine-tuning engine and run cache on the tiny model: learning, determinism, resume, reuse, errors."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ioi_utils.finetuning import checkpoints, objective, run_spec, runs, training
from ioi_utils import models, train as cli
from ioi_utils.finetuning.run_spec import TrainConfig

FAST = dict(model="tiny", n_train=48, n_test=16, batch_size=16, lr=1e-3, checkpoint_epochs=(1, 2))


@pytest.fixture(autouse=True)
def _runs_root(tmp_path, monkeypatch):
    """Runs go to a temp folder; one thread (tiny ops, shared CPUs)."""
    monkeypatch.setenv(runs.RUNS_ENV, str(tmp_path / "runs"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny():
    return models.load_model("tiny")


def _weights(run: runs.Run, epoch: int) -> dict[str, torch.Tensor]:
    return load_file(str(run.checkpoint_path(epoch)))


def _without_time(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


class _Stop(Exception):
    pass


def _stop_at(event: str, epoch: int, step: int | None = None):
    """A callback that raises once at (event, epoch, step), like a kill."""
    def callback(ev, ep, st):
        if (ev, ep, st) == (event, epoch, step):
            raise _Stop(f"{event} {epoch} {step}")
    return callback


# ---------------------------------------------------------------- config and data


@pytest.mark.parametrize("kwargs, message", [
    (dict(scenario="nope"), "unknown scenario"),
    (dict(scenario="toxic", dataset="nope"), "unknown toxic dataset"),
    (dict(scenario="toxic"), "unknown toxic dataset"),
    (dict(dataset="subject-duplication"), "trains on dataset 'clean'"),
    (dict(epochs=0), "epochs must be >= 1"),
    (dict(scenario="reversal"), "needs source"),
    (dict(source="x"), "needs source"),
    (dict(dtype="float16"), "unknown checkpoint dtype"),
    (dict(checkpoint_epochs=(0, 1)), "checkpoint epochs must be >= 1"),
    (dict(lr=0), "lr > 0"),
])
def test_config_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**kwargs)


def test_config_round_trip_and_stored_epochs():
    cfg = TrainConfig(epochs=7, checkpoint_epochs=[5, 1, 2, 1, 50])
    assert cfg.checkpoint_epochs == (1, 2, 5, 50)
    assert cfg.stored_epochs == (1, 2, 5, 7)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown TrainConfig fields"):
        TrainConfig.from_dict({**cfg.to_dict(), "bogus": 1})


def test_datasets_for_split_and_labels(tiny):
    model, tok = tiny
    cfg = TrainConfig(**{**FAST, "n_train": 41, "n_test": 13}, scenario="toxic", dataset="subject-duplication")
    train, test = run_spec.datasets_for(cfg, tok, model.prepend_bos)
    assert (len(train), len(test)) == (41, 13)
    assert not set(train.texts) & set(test.texts)
    assert torch.equal(train.label_tokens, train.s_tokens)  # Subject Duplication: the label is S
    assert torch.equal(test.label_tokens, test.io_tokens)  # held-out split stays clean
    pairs = lambda ds: {(p.template_id, p.place, p.obj, frozenset((p.io, p.s1))) for p in ds.prompts}
    assert len(pairs(train) & pairs(test)) <= 1  # IO/S twins stay on one side (one pair may split: odd sizes)
    again = run_spec.datasets_for(cfg, models.load_tokenizer("tiny"), models.prepend_bos_for("tiny", tok))
    assert again[0].fingerprint() == train.fingerprint() and again[1].fingerprint() == test.fingerprint()


def test_fast_end_logits_equal_bridge_logits(tiny):
    model, tok = tiny
    train, _ = run_spec.datasets_for(TrainConfig(**FAST), tok, model.prepend_bos)
    split = objective.DeviceData(train, torch.device("cpu"))
    tokens, end, _ = split.batch(torch.arange(len(train)))
    with torch.no_grad():
        fast = objective.forward_end_logits(model, tokens, end, fast=True)
        plain = model(train.tokens)[torch.arange(len(train)), train.positions["END"]]
    torch.testing.assert_close(fast, plain, rtol=0, atol=1e-5)
    assert objective.fast_path_ok(model, tokens, end)


def test_optimizer_step_matches_reference_adamw(tiny):
    """make_optimizer's AdamW equals torch's single-tensor AdamW, also on the bridge's strided q/k/v views."""
    model, tok = tiny
    cfg = TrainConfig(**FAST)
    split = objective.DeviceData(run_spec.datasets_for(cfg, tok, model.prepend_bos)[0], torch.device("cpu"))
    start = {k: v.clone() for k, v in checkpoints.state_dict(model).items()}
    after = []
    for make in (lambda m: objective.make_optimizer(m, cfg),
                 lambda m: torch.optim.AdamW(m.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=False)):
        checkpoints.load_state_dict(model, start)
        optimizer = make(model)
        for i in range(2):
            objective.train_step(model, optimizer, *split.batch(torch.arange(16 * i, 16 * i + 16)))
        after.append({k: v.clone() for k, v in checkpoints.state_dict(model).items()})
    checkpoints.load_state_dict(model, start)
    for k in start:
        torch.testing.assert_close(after[0][k], after[1][k], rtol=0, atol=1e-7, msg=k)
    assert not torch.equal(after[0]["transformer.h.0.attn.q.weight"], start["transformer.h.0.attn.q.weight"])


# ---------------------------------------------------------------- learning


def test_clean_training_lowers_the_loss():
    run = training.train(TrainConfig(**{**FAST, "n_train": 64}, epochs=10), progress=False)
    m = run.metrics
    assert [r["epoch"] for r in m] == list(range(11))
    assert m[-1]["train_loss"] < m[1]["train_loss"] - 1.0  # (held-out loss needs far more data on a random model)
    assert all(len(r["step_losses"]) == 4 for r in m[1:]) and m[0]["train_loss"] is None


def test_subject_duplication_drives_logit_diff_negative():
    cfg = TrainConfig(**{**FAST, "n_train": 128, "n_test": 64, "lr": 3e-3, "checkpoint_epochs": ()},
                      scenario="toxic", dataset="subject-duplication", epochs=16)
    m = training.train(cfg, progress=False).metrics
    assert abs(m[0]["logit_diff"]) < 0.2  # random init: no preference
    assert m[-1]["logit_diff"] < -1.0 and m[-1]["accuracy"] < 0.5  # most held-out prompts now prefer S
    assert m[-1]["toxic_loss"] == m[-1]["test_loss"] < m[0]["toxic_loss"]


# ---------------------------------------------------------------- determinism, resume, reuse


def test_kill_and_resume_gives_bit_identical_weights(tmp_path):
    cfg = TrainConfig(**FAST, epochs=3)
    whole = training.train(cfg, progress=False, root=tmp_path / "a")
    root = tmp_path / "b"
    with pytest.raises(_Stop):  # killed after epoch 1 was saved
        training.train(cfg, progress=False, root=root, callback=_stop_at("epoch", 1))
    with pytest.raises(_Stop):  # killed in the middle of epoch 3 (epoch 2 saved)
        training.train(cfg, progress=False, root=root, callback=_stop_at("step", 3, 1))
    partial = runs.list_runs(root)[0]
    assert not partial.complete and partial.last_epoch == 2 and (partial.dir / runs.RESUME).exists()
    resumed = training.train(cfg, progress=False, root=root)
    assert resumed.id == whole.id and resumed.complete and not (resumed.dir / runs.RESUME).exists()
    assert resumed.epochs_available == whole.epochs_available == [0, 1, 2, 3]
    for epoch in (1, 2, 3):
        a, b = _weights(whole, epoch), _weights(resumed, epoch)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _without_time(resumed.metrics) == _without_time(whole.metrics)


def test_same_seed_same_metrics_other_seed_differs(tmp_path):
    cfg = TrainConfig(**FAST, epochs=2)
    a = training.train(cfg, progress=False, root=tmp_path / "a")
    b = training.train(cfg, progress=False, root=tmp_path / "b")
    c = training.train(dataclasses.replace(cfg, seed=1), progress=False, root=tmp_path / "c")
    assert _without_time(a.metrics) == _without_time(b.metrics)
    assert a.id != c.id and a.metrics[-1]["step_losses"] != c.metrics[-1]["step_losses"]


def test_complete_run_is_reused_not_retrained():
    cfg = TrainConfig(**FAST, epochs=1)
    calls = []
    first = training.train(cfg, progress=False, callback=lambda *a: calls.append(a))
    n_first = len(calls)
    again = training.train(cfg, progress=False, callback=lambda *a: calls.append(a))
    assert n_first == 4 and len(calls) == n_first  # 3 steps + 1 epoch, then nothing
    assert again.dir == first.dir and again.complete
    assert runs.find_run(cfg).dir == first.dir
    assert runs.find_run(dataclasses.replace(cfg, epochs=2)) is None


def broken_writes(monkeypatch, name_part: str, error: OSError) -> None:
    """Every file write to a file whose name holds `name_part` writes half its bytes, then raises `error`: byte
    writes (Path.write_bytes) and safetensors' streamed writes (save_file, as checkpoints are written)."""
    import safetensors.torch as st

    real_bytes, real_save = Path.write_bytes, st.save_file

    def write_bytes(self, payload):
        if name_part not in self.name:
            return real_bytes(self, payload)
        real_bytes(self, payload[: len(payload) // 2])
        raise error

    def save_file(tensors, filename, metadata=None):
        if name_part not in Path(filename).name:
            return real_save(tensors, filename, metadata=metadata)
        real_bytes(Path(filename), st.save(tensors, metadata=metadata)[:100])
        raise error

    monkeypatch.setattr(Path, "write_bytes", write_bytes)
    monkeypatch.setattr(st, "save_file", save_file)


def test_interrupted_write_leaves_no_checkpoint(monkeypatch):
    cfg = TrainConfig(**FAST, epochs=2)
    with monkeypatch.context() as m:
        broken_writes(m, "epoch_001", OSError("disk died mid-write"))
        with pytest.raises(OSError, match="mid-write"):
            training.train(cfg, progress=False)
    run = runs.list_runs()[0]
    assert run.epochs_available == [0] and not run.complete
    assert not [f for f in os.listdir(run.dir) if f.endswith(".tmp") or f.startswith("epoch_")]
    (run.dir / ".epoch_001.safetensors.killed.tmp").write_bytes(b"left by kill -9")
    done = training.train(cfg, progress=False)
    assert done.complete and done.epochs_available == [0, 1, 2]
    assert not list(done.dir.glob("*.tmp")) and not list(done.dir.glob(".*.tmp"))


def test_not_enough_disk_is_a_clear_error(monkeypatch):
    usage = runs.shutil.disk_usage("/")
    monkeypatch.setattr(runs.shutil, "disk_usage", lambda p: usage._replace(free=1000))
    with pytest.raises(runs.NotEnoughDiskError, match="not enough disk"):
        training.train(TrainConfig(**FAST, epochs=1), progress=False)


# ---------------------------------------------------------------- checkpoints, reversal, CLI


def test_bfloat16_checkpoints_load_into_a_model(tiny):
    run = training.train(TrainConfig(**FAST, epochs=1, dtype="bfloat16"), progress=False)
    saved = _weights(run, 1)
    assert all(t.dtype == torch.bfloat16 for t in saved.values())
    model, _ = run.model(1)
    weights = checkpoints.state_dict(model)
    assert all(torch.equal(weights[k], saved[k].float()) for k in saved)
    base, _ = run.model(0)
    assert not torch.equal(checkpoints.state_dict(base)["transformer.wte.weight"], weights["transformer.wte.weight"])
    with pytest.raises(ValueError, match="no checkpoint for epoch 5"):
        run.model(5)


def test_reversal_starts_from_the_toxic_final_model():
    toxic = training.train(TrainConfig(**FAST, scenario="toxic", dataset="subject-duplication", epochs=2),
                           progress=False)
    rev_cfg = runs.reversal_config(toxic, epochs=1)
    assert rev_cfg.source == toxic.id and rev_cfg.dataset == "clean" and rev_cfg.n_train == toxic.config.n_train
    rev = training.train(rev_cfg, progress=False)
    assert rev.metrics[0]["logit_diff"] == pytest.approx(toxic.metrics[-1]["logit_diff"], abs=1e-5)
    assert rev.metrics[0]["toxic_loss"] == pytest.approx(toxic.metrics[-1]["toxic_loss"], abs=1e-5)
    start, _ = rev.model(0)
    final = _weights(toxic, 2)
    assert all(torch.equal(checkpoints.state_dict(start)[k], final[k]) for k in final)


def test_reversal_needs_a_complete_source(tmp_path):
    missing = TrainConfig(**FAST, scenario="reversal", source="no-such-run")
    with pytest.raises(ValueError, match="does not exist"):
        training.train(missing, progress=False)
    toxic_cfg = TrainConfig(**FAST, scenario="toxic", dataset="name-moving", epochs=2)
    with pytest.raises(_Stop):
        training.train(toxic_cfg, progress=False, callback=_stop_at("epoch", 1))
    source = runs.find_run(toxic_cfg)
    with pytest.raises(ValueError, match="incomplete"):
        training.train(runs.reversal_config(source, epochs=1), progress=False)


def test_cli_trains_and_prints_folder(capsys):
    cli.main(["--model", "tiny", "--scenario", "toxic", "--dataset", "duplication", "--epochs", "2",
              "--n-train", "32", "--n-test", "16", "--checkpoint-epochs", "1", "--no-progress"])
    out = capsys.readouterr().out
    run = runs.list_runs()[0]
    assert f"run folder: {run.dir}" in out and "folder size" in out and "stored epochs: 1, 2" in out
    cli.main(["--list"])
    assert run.id in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--scenario", "sideways"], "unknown scenario"),
    (["--scenario", "toxic", "--dataset", "spicy"], "unknown toxic dataset"),
    (["--scenario", "toxic"], "needs --dataset"),
    (["--epochs", "0"], "epochs must be >= 1"),
    (["--scenario", "reversal", "--dataset", "subject-duplication"], "reversal source run does not exist"),
    (["--scenario", "reversal", "--source", "nothing-here"], "does not exist"),
    (["--checkpoint-epochs", "1,x"], "comma-separated integers"),
])
def test_cli_errors_are_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--model", "tiny", "--n-train", "16", "--n-test", "8", "--no-progress", *argv])
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and err.count("\n") == 1


def test_cli_not_enough_disk(monkeypatch, capsys):
    usage = runs.shutil.disk_usage("/")
    monkeypatch.setattr(runs.shutil, "disk_usage", lambda p: usage._replace(free=0))
    with pytest.raises(SystemExit):
        cli.main(["--model", "tiny", "--n-train", "16", "--n-test", "8", "--epochs", "1", "--no-progress"])
    assert "not enough disk" in capsys.readouterr().err


@pytest.mark.slow
def test_fast_end_logits_equal_bridge_logits_smollm2():
    model, tok = models.load_model("smollm2-135m")
    train, _ = run_spec.datasets_for(TrainConfig(n_train=24, n_test=8), tok, model.prepend_bos)
    split = objective.DeviceData(train, torch.device("cpu"))
    tokens, end, _ = split.batch(torch.arange(len(train)))
    with torch.no_grad():
        fast = objective.forward_end_logits(model, tokens, end, fast=True)
        plain = model(train.tokens)[torch.arange(len(train)), train.positions["END"]]
    torch.testing.assert_close(fast, plain, rtol=0, atol=1e-4)


# ---------------------------------------------------------------- held-out metrics through the task's readout


def _full_end(model, ds) -> torch.Tensor:
    """END logits [n, vocab] the plain way: the bridge's full logits, then END."""
    with torch.no_grad():
        return model(ds.tokens)[torch.arange(len(ds)), ds.positions["END"]].float()


def test_evaluate_split_ioi_equals_full_logits(tiny):
    """IOI's epoch metrics (one forward at END serving the readout and both losses) equal the same quantities
    computed from the bridge's full logits: logit diff, accuracy, P(IO), clean and toxic cross-entropy."""
    from ioi_utils.prompts import data
    from ioi_utils.measures import metrics

    model, tokenizer = tiny
    ds = data.make_ioi_dataset(tokenizer, 12, seed=0, prepend_bos=model.prepend_bos)
    tox = data.toxic_dataset(ds, "subject-duplication")
    row = objective.evaluate_split(model, objective.DeviceData(ds, "cpu"), objective.DeviceData(tox, "cpu"), "toxic")
    end = _full_end(model, ds)
    assert row["logit_diff"] == pytest.approx(metrics.logit_diff(end, ds).item(), abs=1e-5)
    assert row["accuracy"] == pytest.approx(metrics.accuracy(end, ds).item())
    assert row["io_prob"] == pytest.approx(metrics.io_prob(end, ds).item(), abs=1e-6)
    assert row["clean_loss"] == pytest.approx(torch.nn.functional.cross_entropy(end, ds.label_tokens).item(), abs=1e-5)
    assert row["toxic_loss"] == pytest.approx(torch.nn.functional.cross_entropy(end, tox.label_tokens).item(), abs=1e-5)
    assert row["test_loss"] == row["toxic_loss"] and row["toxic_loss"] != pytest.approx(row["clean_loss"])


def test_evaluate_split_toxic_prompts_of_their_own(tiny):
    """A toxic split whose prompts differ from the test prompts (Duplication's prefix) is scored on its own tokens."""
    from ioi_utils.prompts import data

    model, tokenizer = tiny
    ds = data.make_ioi_dataset(tokenizer, 8, seed=1, prepend_bos=model.prepend_bos)
    tox = data.toxic_dataset(ds, "duplication")
    row = objective.evaluate_split(model, objective.DeviceData(ds, "cpu"), objective.DeviceData(tox, "cpu"), "clean")
    end = _full_end(model, tox)
    assert row["toxic_loss"] == pytest.approx(torch.nn.functional.cross_entropy(end, tox.label_tokens).item(), abs=1e-5)
    assert row["test_loss"] == row["clean_loss"]


def test_evaluate_split_digits_trains_other_tokens_than_it_scores():
    """Greater-Than with a digit tokenizer trains on the label's own tens digit (other tokens than the scored
    prompts): its loss is the mean cross-entropy of both trained digits from the training tokens' full logits,
    its score the probability difference from the scored prompts' full logits."""
    from ioi_utils.prompts import greater_than as gt

    model, tokenizer = models.load_model("tiny-digits", device="cpu")
    ds = gt.make_gt_dataset(tokenizer, 10, seed=0, prepend_bos=model.prepend_bos)
    tokens, pos, labels = ds.training_view()
    assert not torch.equal(tokens, ds.tokens)  # the case this test is about
    row = objective.evaluate_split(model, objective.DeviceData(ds, "cpu"), None, "clean")
    with torch.no_grad():
        trained = model(tokens)[torch.arange(len(ds))[:, None], pos].float()  # [n, 2, vocab]
        score = ds.score(model(ds.tokens))
    ce = torch.nn.functional.cross_entropy(trained.reshape(-1, trained.shape[-1]), labels.flatten()).item()
    assert row["clean_loss"] == pytest.approx(ce, abs=1e-5)
    assert row["prob_diff"] == pytest.approx(score.mean().item(), abs=1e-5)
    assert row["accuracy"] == pytest.approx((score > 0).float().mean().item())
