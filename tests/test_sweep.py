"""The Ray sweep of a profile's fine-tuning runs, on the tiny models and an embedded Ray with 2 workers."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import ray
import torch
from safetensors.torch import load_file

from ioi_utils import book, profiles, study, sweep
from ioi_utils.study import generalisation, greater_than_study as gt, run_plan
from ioi_utils.finetuning import runs, training

REPO = Path(__file__).resolve().parent.parent
# a tiny profile: the chapters' parameters (profiles.PROFILES keys), sized for seconds
TINY = {**profiles.PROFILES["smoke"], "profile": "tiny", "model_name": "tiny", "gt_model_name": "tiny-digits",
        "threads": 1, "n_prompts": 24, "n_eval": 8, "n_discovery": 8, "clean_epochs": [1, 2], "toxic_epochs": 1,
        "reversal_epochs": 2, "batch_size": 8, "gt_n_train": 16, "gt_n_eval": 8, "gt_n_discovery": 8,
        "gt_n_epoch_eval": 8, "gt_clean_epochs": 1, "gt_toxic_epochs": 2, "second_model_name": "tiny",
        "second_n_prompts": 16, "second_n_eval": 8, "second_n_discovery": 8, "second_clean_epochs": [1],
        "second_toxic_epochs": 1, "second_reversal_epochs": 1, "second_training_seeds": [0, 1]}


@pytest.fixture(scope="module")
def local_ray():
    """One embedded Ray for the module (its start is slow): 2 CPUs, so 2 one-thread workers."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this test module
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def plan():
    return run_plan.planned_runs(TINY)


@pytest.fixture(scope="module")
def swept(local_ray, plan, tmp_path_factory):
    """The tiny profile swept once into a fresh run cache: (root, summary)."""
    root = tmp_path_factory.mktemp("runs")
    lines: list[str] = []
    summary = sweep.execute(plan, root, threads=1, say=lines.append)
    return root, summary, lines


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _files(run: runs.Run) -> dict[str, dict[str, bytes]]:
    """checkpoint file -> tensor name -> its bytes (the header's key order differs from process to process)."""
    return {p.name: {k: v.numpy().tobytes() for k, v in load_file(str(p)).items()}
            for p in sorted(run.dir.glob("epoch_*.safetensors"))}


def test_the_plan_has_every_chapter_run_once_with_sources_first(plan):
    kinds = sorted((r.config.task, r.config.scenario, r.config.dataset) for r in plan)
    n_seeds = len(TINY["training_seeds"])  # clean and Subject Duplication (and its reversal) per training seed
    assert n_seeds == 2
    assert kinds == sorted([*[("ioi", "clean", "clean")] * n_seeds, *[("ioi", "toxic", d) for d in study.data.TOXIC_RULES],
                            *[("ioi", "toxic", "subject-duplication")] * (n_seeds - 1),
                            # reversals: Subject Duplication per seed and Name Moving (not Duplication, the control)
                            *[("ioi", "reversal", "clean")] * (2 + n_seeds - 1), ("greater-than", "clean", "clean"),
                            ("greater-than", "toxic", gt.TOXIC_DATASET),
                            # the second model's chapter: clean, Subject Duplication and its reversal per seed
                            *[("ioi", "clean", "clean"), ("ioi", "toxic", "subject-duplication"),
                              ("ioi", "reversal", "clean")] * n_seeds])
    assert sorted(r.config.seed for r in plan if r.config.scenario == "clean" and r.config.task == "ioi"
                  and r.config.n_train == TINY["n_prompts"]) == [0, 1]
    second = [r for r in plan if r.chapters == (run_plan.SECOND_MODEL,)]
    assert len(second) == 3 * n_seeds and all(r.config.n_train == TINY["second_n_prompts"] for r in second)
    assert {r.config.epochs for r in second if r.config.scenario == "reversal"} == {TINY["second_reversal_epochs"]}
    ids = [r.id for r in plan]
    assert len(set(ids)) == len(ids)
    assert all(ids.index(r.source) < ids.index(r.id) for r in plan if r.source)
    clean = next(r for r in plan if r.config.scenario == "clean" and r.config.task == "ioi" and r.config.seed == 0
                 and r.config.n_train == TINY["n_prompts"])
    assert clean.config.checkpoint_epochs == (1, 2) and clean.steps == 2 * -(-clean.config.n_train // 8)


def test_the_chapters_training_calls_are_the_planned_ones():
    """Each chapter's training call site is one the planner reproduces (a new one must be planned too)."""
    calls = {name: re.findall(r"(training\.train\(study\.train_config\(s, \"\w+\"|study\.toxic_runs\(|"
                              r"study\.seed_runs\([^)]*\)|study\.reversal_runs\(|study\.retrained_runs\(|"
                              r"gt\.train_run\(st, \"\w+\"[^)]*\)|generalisation\.headline_runs\()",
                              (REPO / "book" / f"{name}.py").read_text())
             for name in ("intro", "circuit_discovery", "amplification", "corruption", "neuroplasticity",
                          "greater_than", "second_model", "summary")}
    assert {k: v for k, v in calls.items() if v} == {
        "amplification": ["study.seed_runs(clean_config, training_seeds)"],
        "corruption": ["study.toxic_runs(", 'study.seed_runs(runs["subject-duplication"].config, training_seeds)',
                       "study.seed_runs(clean_config, training_seeds[:1])"],
        "neuroplasticity": ["study.toxic_runs(", "study.retrained_runs(",
                            "study.seed_runs(clean_config, training_seeds)",
                            'study.seed_runs(toxic["subject-duplication"].config, training_seeds)',
                            "study.reversal_runs("],
        "second_model": ["generalisation.headline_runs("],
        "greater_than": ['gt.train_run(st, "clean", gt_clean_epochs, batch_size)',
                         f'gt.train_run(st, "toxic", gt_toxic_epochs, batch_size, dataset="{gt.TOXIC_DATASET}")']}


def test_a_sweep_trains_the_runs_the_chapters_then_find(swept, plan, one_thread, monkeypatch):
    root, summary, lines = swept
    assert not summary.failed and not summary.skipped
    assert sorted(r["id"] for r in summary.trained) == sorted(r.id for r in plan)
    assert any(line.startswith("done ") for line in lines) and "left" in lines[-1]
    # the chapters' own calls (as in book/*.py) reuse exactly these runs: no new folder appears
    monkeypatch.setenv(runs.RUNS_ENV, str(root))
    p = TINY
    s = study.prepare("tiny", p["n_prompts"], p["n_eval"], p["seed"], "cpu", p["batch_size"], p["n_discovery"])
    clean_config = study.train_config(s, "clean", max(p["clean_epochs"]), p["clean_epochs"], p["batch_size"])
    clean = study.seed_runs(clean_config, p["training_seeds"])
    toxic = study.toxic_runs(s, p["toxic_epochs"], p["batch_size"])
    sd = study.seed_runs(toxic["subject-duplication"].config, p["training_seeds"])
    e = p["reversal_epochs"]
    reversed_ = list(study.retrained_runs(s, toxic, e, p["batch_size"]).values())
    reversed_ += list(study.reversal_runs(s, sd, e, p["batch_size"]).values())
    st = gt.prepare(p["gt_model_name"], p["gt_n_train"], p["gt_n_eval"], p["gt_n_discovery"], p["gt_n_epoch_eval"],
                    p["seed"], "cpu", p["batch_size"])
    gts = [gt.train_run(st, "clean", p["gt_clean_epochs"], p["batch_size"]),
           gt.train_run(st, "toxic", p["gt_toxic_epochs"], p["batch_size"], dataset="earlier-year")]
    s2 = study.prepare(p["second_model_name"], p["second_n_prompts"], p["second_n_eval"], p["seed"], "cpu",
                       p["batch_size"], p["second_n_discovery"])
    second = generalisation.headline_runs(s2, p["second_clean_epochs"], p["second_toxic_epochs"],
                                          p["second_reversal_epochs"], p["batch_size"], p["second_training_seeds"])
    chapter_ids = {*(r.id for r in clean.values()), *(r.id for r in toxic.values()), *(r.id for r in sd.values()),
                   *(r.id for r in reversed_), *(r.id for r in gts),
                   *(r.id for rs in (second.clean, second.corrupted, second.retrained) for r in rs.values())}
    assert sorted(chapter_ids) == sorted(r.id for r in plan)
    assert sorted(r.id for r in runs.list_runs(root)) == sorted(r.id for r in plan)


def test_no_more_tasks_run_at_once_than_the_cluster_has_cpus(swept):
    """A task blocked in ray.get lends its CPU to another task: a sweep on 2 CPUs once ran 3 runs at once."""
    assert swept[1].peak == 2


def test_a_second_sweep_skips_every_complete_run(swept, plan):
    root, _, _ = swept
    again = sweep.execute(plan, root, threads=1, say=lambda _: None)
    assert again.trained == [] and not again.failed and sorted(again.skipped) == sorted(r.id for r in plan)


def test_sweep_checkpoints_equal_sequential_training(swept, plan, tmp_path, one_thread):
    """Bit-identical to training.train run after run in this process, at the same (1) thread count."""
    root, _, _ = swept
    for r in plan:  # sources come first in the plan
        seq = training.train(r.config, progress=False, root=tmp_path, device="cpu")
        assert seq.id == r.id
        got, want = _files(runs.Run(root / r.id)), _files(seq)
        assert want and got == want, r.id


class KillFirstAttempt:
    """A training callback that kills its worker process (os._exit) once epoch `epoch` is saved, on the first
    attempt only (a marker file remembers it), and logs each step's (pid, epoch)."""

    def __init__(self, marker: Path, epoch: int):
        self.marker, self.epoch = marker, epoch

    def __call__(self, event: str, epoch: int, step: int | None) -> None:
        with open(self.marker.with_suffix(".log"), "a") as f:
            f.write(f"{os.getpid()} {event} {epoch}\n")
        if event == "epoch" and epoch == self.epoch and not self.marker.exists():
            self.marker.write_text("killed")
            os._exit(1)


def test_a_killed_worker_is_retried_and_resumes_from_its_last_checkpoint(local_ray, plan, swept, tmp_path):
    root, _, _ = swept
    clean = [r for r in plan if r.config.scenario == "clean" and r.config.task == "ioi" and r.config.seed == 0
             and r.config.n_train == TINY["n_prompts"]]
    lines: list[str] = []
    summary = sweep.execute(clean, tmp_path / "runs", threads=1, callback=KillFirstAttempt(tmp_path / "kill", 1),
                            say=lines.append)
    assert not summary.failed, summary.failed
    [res] = summary.trained
    assert res["attempt"] == 2 and res["resumed_from"] == 1, (res, lines)  # the retry trained epoch 2 only
    log = [line.split() for line in (tmp_path / "kill.log").read_text().splitlines()]
    first, second = log[0][0], log[-1][0]
    assert first != second and {e for pid, _, e in log if pid == second} == {"2"}
    assert any(line.startswith("retrying ") for line in lines)
    assert _files(runs.Run(tmp_path / "runs" / res["id"])) == _files(runs.Run(root / res["id"]))


def test_a_failing_run_is_reported_after_its_retries(local_ray, plan, tmp_path):
    clean = [r for r in plan if r.config.scenario == "clean" and r.config.task == "ioi" and r.config.seed == 0
             and r.config.n_train == TINY["n_prompts"]]

    def fail(event, epoch, step):
        raise RuntimeError("injected failure")

    summary = sweep.execute(clean, tmp_path, threads=1, max_retries=1, callback=fail, say=lambda _: None)
    assert list(summary.failed) == [clean[0].id] and "injected failure" in summary.failed[clean[0].id]
    assert "1 failed" in summary.line()


@pytest.mark.parametrize("argv, message", [
    (["--profile", "nope"], "unknown profile 'nope'"),
    (["--profile", "smoke", "--workers", "0"], "--workers must be >= 1"),
    (["--profile", "smoke", "--workers", "x"], "invalid int value"),
    (["--profile", "smoke", "--threads", "-1"], "--threads must be >= 1"),
    (["--profile", "smoke", "--max-retries", "-1"], "--max-retries must be >= 0"),
    (["--workers", "2"], "required: --profile"),
    (["--profile", "smoke", "--model", "tiny", "--dry-run"], "neither one token nor two digit tokens"),
])
def test_bad_input_is_one_line(argv, message, capsys):
    assert sweep.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_the_dry_run_lists_runs_steps_and_an_estimate(plan, swept):
    root, _, _ = swept
    text = run_plan.describe(plan, root)
    for r in plan:
        assert re.search(rf"^{re.escape(r.id)} +{r.config.scenario} .* {r.steps} +{r.samples} .* complete", text, re.M)
    assert f"{len(plan)} runs, 0 to train" in text and "measured" in text  # CPU cost from the cached runs
    assert sweep.split_cores(16, None, None) == (2, 8) and sweep.split_cores(2, None, 2) == (1, 2)


def test_without_a_tokenizer_the_dry_run_still_lists_every_run_once():
    """Offline, a hub model's tokenizer is missing: the ids get a config-only hash, still one per run."""
    params = {**TINY, "model_name": "no-such-model-anywhere", "gt_model_name": "no-such-model-anywhere",
              "second_model_name": "no-such-model-anywhere"}
    with pytest.raises(run_plan.models.ModelUnavailableError):
        run_plan.planned_runs(params)
    plan = run_plan.planned_runs(params, need_ids=False)
    n = 11 + 3 * 2  # 2 training seeds, Duplication not retrained; the second model: clean, SD and reversal per seed
    assert len(plan) == n and len({r.id for r in plan}) == n and all("-?" in r.id for r in plan)


def test_the_book_runner_stops_when_its_sweep_fails(monkeypatch, capsys):
    """`book --sweep` runs the sweep first; a failed sweep runs no chapter."""
    calls: list[str] = []
    monkeypatch.setattr(book, "run_sweep", lambda profile: calls.append(profile) or 1)
    monkeypatch.setattr(book, "prepare", lambda *a: pytest.fail("a chapter was prepared after a failed sweep"))
    monkeypatch.setenv("PYTHONPATH", os.environ.get("PYTHONPATH", ""))  # book.kernel_env edits it
    assert book.main(["--profile", "smoke", "--sweep", "--root", str(REPO)]) == 1
    assert calls == ["smoke"] and "sweep" in capsys.readouterr().err


@pytest.mark.slow
def test_the_command_line_sweeps_on_its_own_embedded_ray(tmp_path):
    """`python -m ioi_utils.sweep` end to end (its own Ray, 2 workers): trains, then a rerun skips everything."""
    env = {**os.environ, runs.RUNS_ENV: str(tmp_path), "PYTHONPATH": str(REPO)}
    argv = [sys.executable, "-m", "ioi_utils.sweep", "--profile", "smoke", "--model", "tiny", "--gt-model",
            "tiny-digits", "--workers", "2", "--threads", "1"]
    n = len(run_plan.planned_runs(run_plan.profile_params("smoke", "tiny", "tiny-digits")))
    first = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)
    assert first.returncode == 0 and f"sweep: {n} trained" in first.stdout, first.stdout[-2000:] + first.stderr[-2000:]
    again = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0 and f"0 trained (0 after a retry), {n} already complete" in again.stdout
