"""The second model's headline experiments: statements shared with the chapters, runs and estimates on the tiny
model (plumbing only), the side-by-side table and the sentences written from two verdicts."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import torch

from ioi_utils.report import claims
from ioi_utils.study import generalisation as G
from ioi_utils.measures import metrics
from ioi_utils.storage import results
from ioi_utils.finetuning import runs
from ioi_utils.study import analyses, seeds
from ioi_utils import study

REPO = Path(__file__).resolve().parent.parent


def _outputs(chapter: str) -> str:
    nb = json.loads((REPO / "tests" / "notebooks" / f"{chapter}.ipynb").read_text())
    return "\n".join("".join(o.get("text", "")) for c in nb["cells"] for o in c.get("outputs", []))


@pytest.mark.parametrize("key", list(G.HEADLINES))
def test_each_headline_is_the_claim_its_chapter_prints(key):
    """The main model's column is looked up by statement: a chapter that rewords its claim, or changes its
    threshold, must change HEADLINES too (the smoke execution's printed claim line is the evidence)."""
    chapter, statement, threshold, direction = G.HEADLINES[key]
    lines = [line for line in _outputs(chapter).splitlines() if statement in line]
    assert lines, f"{chapter} printed no claim {statement!r}"
    sign = "≥" if direction == ">=" else "≤"
    assert all(f"vs threshold {sign} {claims._fmt(threshold)}" in line for line in lines), lines


def _claim(verdict: str, ours: float = 1.0) -> dict:
    return {"ours": ours, "interval": [ours - 0.1, ours + 0.1], "verdict": verdict, "paper": "", "threshold": 0.0,
            "direction": ">=", "evidence": "", "per_seed": None, "training": ""}


def test_compare_writes_what_the_two_verdicts_say():
    keys = list(G.HEADLINES)
    st = {k: G.HEADLINES[k][1] for k in keys}
    main = {keys[0]: _claim(claims.REPRODUCED), keys[1]: _claim(claims.NOT_REPRODUCED),
            keys[2]: _claim(claims.REPRODUCED), keys[3]: _claim(claims.INCONCLUSIVE)}
    second = {st[keys[0]]: _claim(claims.REPRODUCED), st[keys[1]]: _claim(claims.NOT_REPRODUCED),
              st[keys[2]]: _claim(claims.NOT_REPRODUCED), st[keys[3]]: _claim(claims.REPRODUCED),
              st[keys[4]]: _claim(claims.REPRODUCED)}
    lines = G.compare(main, second, "A", "B").splitlines()
    assert len(lines) == len(keys)
    assert lines[0].endswith("holds on both models.") and lines[1].endswith("holds on neither model.")
    assert lines[2].endswith("holds on A only.")
    assert "cannot be compared yet (A: inconclusive; B: reproduced)" in lines[3]
    assert "cannot be compared yet (A: not run; B: reproduced)" in lines[4]


def test_side_by_side_has_one_row_per_headline_with_both_verdicts():
    key = "clean_gain"
    table = G.side_by_side({key: _claim(claims.REPRODUCED, 0.25)},
                           {G.HEADLINES[key][1]: _claim(claims.NOT_REPRODUCED, 0.05)}, "main", "second")
    rows = table.splitlines()[2:]
    assert len(rows) == len(G.HEADLINES)
    row = next(r for r in rows if G.HEADLINES[key][1] in r)
    assert "| ≥ 0.1 |" in row and "0.25 [0.15, 0.35] — **reproduced**" in row and "0.05 [-0.05, 0.15] — **not reproduced**" in row
    assert sum(r.count("| not run |") + r.endswith("| not run |") for r in rows) == 2 * (len(G.HEADLINES) - 1)


def test_main_model_claims_are_read_from_the_chapters_records(tmp_path, monkeypatch):
    monkeypatch.setenv("IOI_UTILS_RESULTS", str(tmp_path))
    chapter, statement, _, _ = G.HEADLINES["sd_corrupts"]
    results.record("p", chapter, {"claims": {statement: _claim(claims.REPRODUCED, -2.0), "other": _claim("x")}}, "ex1")
    found, sources = G.main_model_claims("p", "m")
    assert set(found) == {"sd_corrupts"} and found["sd_corrupts"]["ours"] == -2.0 and sources == {"execution ex1"}
    (tmp_path / "p" / "amplification.json").write_text("{not json")  # an unreadable record is no row, not a crash
    assert set(G.main_model_claims("p", "m")[0]) == {"sd_corrupts"}


def _executed(folder, chapter: str, lines: list[str], profile: str = "p", model: str = "m") -> None:
    """An executed notebook of `chapter` whose only output prints `lines`."""
    nb = {"metadata": {"ioi_utils_execution": {"profile": profile, "model": model, "commit": "abc1234"}},
          "cells": [{"cell_type": "code", "outputs": [{"output_type": "stream", "text": [ln + "\n" for ln in lines]}]}]}
    (folder / f"{chapter}.ipynb").write_text(json.dumps(nb))


def test_a_headline_without_a_record_is_read_from_the_published_notebook_of_the_same_profile_and_model(
        tmp_path, monkeypatch):
    monkeypatch.setenv("IOI_UTILS_RESULTS", str(tmp_path / "results"))
    chapter, statement, threshold, direction = G.HEADLINES["clean_gain"]
    with contextlib.redirect_stdout(io.StringIO()) as out:
        claims.check(statement, 1.57, (1.39, 1.78), threshold, direction, paper="6.32 -> 26.83 (a; b)",
                     per_seed={0: 1.77, 1: 1.46})
    book = tmp_path / "book"
    book.mkdir()
    _executed(book, chapter, ["warmup", out.getvalue().strip()])
    found, sources = G.main_model_claims("p", "m", published=book)
    assert set(found) == {"clean_gain"} and sources == {"the published notebooks (commit abc1234, printed claim lines)"}
    assert found["clean_gain"]["ours"] == 1.57 and found["clean_gain"]["interval"] == (1.39, 1.78)
    assert found["clean_gain"]["verdict"] == claims.REPRODUCED
    assert G.main_model_claims("q", "m", published=book)[0] == {}  # another profile's execution is not this one's
    assert G.main_model_claims("p", "other", published=book)[0] == {}  # nor another model's
    chapter2, statement2, _, _ = G.HEADLINES["sd_corrupts"]  # a record in the store wins over the notebook
    results.record("p", chapter2, {"claims": {statement2: _claim(claims.NOT_REPRODUCED, 1.0)}}, "ex2")
    _executed(book, chapter2, [f"[REPRODUCED] {statement2} — ours: -8 vs threshold ≤ 0"])
    found, sources = G.main_model_claims("p", "m", published=book)
    assert found["sd_corrupts"]["verdict"] == claims.NOT_REPRODUCED and "execution ex2" in sources


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    """The run cache and results (memos) of `tiny_runs`."""
    return tmp_path_factory.mktemp("g")


@pytest.fixture(scope="module")
def tiny_runs(tiny_root):
    root = tiny_root
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(runs.RUNS_ENV, str(root / "runs"))
        mp.setenv("IOI_UTILS_RESULTS", str(root / "results"))
        torch.set_num_threads(1)
        s = study.prepare("tiny", 16, 8, 0, "cpu", 8, n_discovery=8)
        r = G.headline_runs(s, [1, 2], 1, 2, 8, [0, 1])
        yield s, r, G.headline_estimates(s, r)


def test_headline_runs_train_every_experiment_per_seed(tiny_runs):
    s, r, _ = tiny_runs
    assert sorted(r.clean) == sorted(r.corrupted) == sorted(r.retrained) == [0, 1]
    assert {run.config.dataset for run in r.corrupted.values()} == {"subject-duplication"}
    assert all(r.retrained[sd].config.source == r.corrupted[sd].id for sd in (0, 1))  # each seed retrains its own
    assert [run.config.seed for run in r.clean.values()] == [0, 1]


def test_headline_estimates_are_the_chapters_statistics(tiny_runs, tiny_root, monkeypatch):
    """The estimates are the statistics of the chapters' memoised held-out logit differences (read back here from
    the same memos)."""
    s, r, est = tiny_runs
    monkeypatch.setenv(runs.RUNS_ENV, str(tiny_root / "runs"))
    monkeypatch.setenv("IOI_UTILS_RESULTS", str(tiny_root / "results"))
    base = analyses.held_out_logit_diff(s, s.model)
    tuned = study.seed_logit_diffs(s, r.clean, 2)
    assert torch.equal(est.base, base)
    # in double precision, as across_seeds evaluates a statistic: the tiny model's gain is a difference of two
    # means ~1e-6 apart, where float32 already shows
    want = {sd: seeds.relative_change(tuned[sd].double(), base.double()).item() for sd in tuned}
    assert est.clean_gain.per_seed == pytest.approx(want, rel=1e-6)
    control = study.seed_logit_diffs(s, r.clean, 2)
    retrained = study.seed_logit_diffs(s, r.retrained, 2)
    assert est.recovery.per_seed == pytest.approx(
        {sd: metrics.ratio_of_means(retrained[sd].double(), control[sd].double()).item() for sd in retrained}, rel=1e-6)
    assert est.sd_logit_diff.per_seed == pytest.approx({sd: v.mean().item() for sd, v in est.corrupted.items()})


def test_a_retraining_longer_than_the_stored_clean_epochs_is_refused_before_training(tiny_runs):
    s, _, _ = tiny_runs
    with pytest.raises(ValueError, match="the control needs the clean runs' checkpoint after 3 epochs"):
        G.headline_runs(s, [1, 2], 1, 3, 8, [0])


def _planted_roles(circuit, nm, nnm):
    """circuit with its NM / NNM classes replaced by the given heads (the tiny model's discovery finds no roles)."""
    planted = set(nm) | set(nnm)
    classes = {c: [h for h in hs if h not in planted] for c, hs in circuit.classes.items()}
    classes["NM"], classes["NNM"] = nm, nnm
    return type(circuit)(classes=classes)


def test_head_level_reads_the_first_seeds_runs_with_the_chapters_statistics(tiny_runs):
    s, r, _ = tiny_runs
    base_circuit = analyses.discover_cached(s, s.model, "base").circuit
    circuit = _planted_roles(base_circuit, [(1, 0), (1, 1)], [(0, 1)])
    hl = G.head_level(s, circuit, r)
    clean_row = analyses.checkpoint_row(s, r.clean[0].model(2)[0], f"{r.clean[0].id}-2", circuit, 2)
    sd_row = analyses.checkpoint_row(s, r.corrupted[0].model(1)[0], f"{r.corrupted[0].id}-1", circuit, 1)
    assert torch.equal(hl.rows["clean"]["dla"], clean_row["dla"]) and torch.equal(hl.rows["subject-duplication"]["dla"],
                                                                                  sd_row["dla"])
    base_row = hl.rows["base"]
    assert hl.nm_dla == analyses.summed_change(base_row, clean_row, [(1, 0), (1, 1)], "dla")
    assert hl.nm_attention == analyses.summed_change(base_row, clean_row, [(1, 0), (1, 1)], "attn_io")
    assert hl.nnm_dla == analyses.summed_change(base_row, clean_row, [(0, 1)], "dla")
    assert [t["head"] for t in hl.twins] == [t["head"] for t in analyses.role_changes(base_row, sd_row, [(1, 0), (1, 1), (0, 1)])]
    assert hl.flipped == {"NM": [t["head"] for t in hl.twins if t["flip"] and t["head"] in [(1, 0), (1, 1)]],
                          "NNM": [t["head"] for t in hl.twins if t["flip"] and t["head"] == (0, 1)]}
    lines = G.head_lines(hl, circuit).splitlines()
    assert len(lines) == 3 and all(" -> clean " in ln and " | SD " in ln for ln in lines)
