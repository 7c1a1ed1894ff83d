"""study: checkpoint rows (readouts, intervals, memoised re-discovery), role changes, recovery, localization control,
CMAP helpers; plotting: head-by-checkpoint heat maps and masked maps."""

import math

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from ioi_utils import circuits as C, study  # noqa: E402
from ioi_utils.study import analyses, cmap_analyses  # noqa: E402
from ioi_utils.report import plotting


def _row(dla_mean: torch.Tensor, n: int = 40, noise: float = 0.01, seed: int = 0) -> dict:
    """A checkpoint row with per-prompt DLA around a given [L, H] mean."""
    g = torch.Generator().manual_seed(seed)
    pp = dla_mean[None] + noise * torch.randn(n, *dla_mean.shape, generator=g)
    return {"dla": pp.mean(0), "dla_per_prompt": pp.half(), "attn_io": torch.zeros_like(dla_mean),
            "attn_s": torch.zeros_like(dla_mean)}


def test_role_changes_flags_only_significant_flips():
    before = torch.zeros(2, 3)
    before[0, 0], before[0, 1], before[1, 2] = 1.0, 0.02, 0.5
    after = before.clone()
    after[0, 0], after[0, 1], after[1, 2] = -0.8, -0.02, 0.9  # real flip, flip below min_dla, growth
    ch = analyses.role_changes(_row(before), _row(after, seed=1), [(0, 0), (0, 1), (1, 2)])
    by = {c["head"]: c for c in ch}
    assert by[(0, 0)]["flip"] and not by[(0, 1)]["flip"] and not by[(1, 2)]["flip"]
    assert ch[0]["head"] == (0, 0)  # largest |DLA change| first
    assert by[(1, 2)]["dla_change"] == pytest.approx(0.4, abs=0.02)
    noisy = analyses.role_changes(_row(before * 0, noise=1.0), _row(before * 0, noise=1.0, seed=2), [(0, 0)])
    assert not noisy[0]["flip"]  # noise around zero is no flip


def test_recovered_share():
    base, corrupted, fixed = (_row(torch.full((1, 3), v)) for v in (1.0, -1.0, 0.9))
    half = _row(torch.tensor([[0.9, -0.5, -1.0]]))
    assert analyses.recovered_share(base, corrupted, fixed, [(0, 0), (0, 1)])[0] == 1.0
    share, ok = analyses.recovered_share(base, corrupted, half, [(0, 0), (0, 1), (0, 2)])
    assert ok == [True, False, False] and share == pytest.approx(1 / 3)
    assert math.isnan(analyses.recovered_share(base, corrupted, fixed, [])[0])


def test_localization_control_matches_layers():
    effects = torch.zeros(3, 9)
    effects[2] = 1.0  # every head of the last layer carries the same effect
    heads = [(2, 0), (2, 1)]
    assert cmap_analyses.localization(effects, heads) == pytest.approx(3.0)
    mean, p95 = cmap_analyses.localization_control(effects, heads, n_draws=50)
    assert mean == pytest.approx(3.0) and p95 == pytest.approx(3.0)  # layer-matched sets do as well: not localized
    effects[2, 0], effects[2, 1] = 5.0, 5.0
    mean, p95 = cmap_analyses.localization_control(effects, heads, n_draws=200)
    assert cmap_analyses.localization(effects, heads) > p95 >= mean


def test_top_heads_and_cmap_subset():
    effects = torch.tensor([[0.1, -3.0], [2.0, 0.0]])
    assert cmap_analyses.top_heads(effects, 2) == [(0, 1), (1, 0)]
    assert cmap_analyses.top_heads(effects, 2, exclude=[(0, 1)]) == [(1, 0), (0, 0)]


def test_paired_intervals():
    g = torch.Generator().manual_seed(0)
    m = 2.0 + 0.1 * torch.randn(50, generator=g)
    a = {"logit_diff_per_prompt": m + 1.0, "f_per_prompt": (m, 0.9 * m)}
    b = {"logit_diff_per_prompt": m, "f_per_prompt": (m, 0.5 * m)}
    lo, hi = analyses.logit_diff_change_interval(a, b)
    assert lo == pytest.approx(1.0, abs=1e-6) and hi == pytest.approx(1.0, abs=1e-6)
    lo, hi = analyses.faithfulness_gain_interval(a, b)
    assert lo == pytest.approx(0.4, abs=1e-6) and hi == pytest.approx(0.4, abs=1e-6)


def test_head_rows_heatmaps_and_masked():
    vals = np.arange(6, dtype=float).reshape(3, 2)
    fig = plotting.head_rows_heatmaps(["NM 9.9", "SS 20.0", "OTH 2.4"], ["e0", "e1"],
                                      {"DLA": vals - 2, "attention": vals / 10}, "t", symmetric={"attention": False})
    assert len(fig.axes) == 4  # two panels, two colour bars
    with pytest.raises(ValueError):
        plotting.head_rows_heatmaps(["a"], ["e0", "e1"], {"DLA": vals})
    m = plotting.masked(torch.ones(2, 3), [(0, 1), (1, 2)])
    assert np.isnan(m).sum() == 4 and m[0, 1] == 1 and m[1, 2] == 1
    plotting.plt.close("all")



def test_checkpoint_heads_puts_each_readout_of_each_head_in_its_cell():
    rows = [{k: torch.full((2, 3), float(i)) for k in ("dla", "attn_io", "attn_s")} for i in range(3)]
    rows[2]["dla"][1, 2] = -5.0
    fig = plotting.checkpoint_heads(rows, [(0, 1), (1, 2)], ["a", "b"], ["base", "e1", "e2"], "t")
    dla = fig.axes[0].images[0].get_array()
    assert dla.shape == (2, 3) and dla[1, 2] == -5.0 and dla[0, 2] == 2.0 and dla[0, 0] == 0.0
    assert fig.axes[0].images[0].get_clim()[0] < 0 <= fig.axes[2].images[0].get_clim()[0]  # DLA diverging, attention not
    plotting.plt.close("all")

def test_checkpoint_row_memoised_and_rediscovery(tmp_path, monkeypatch):
    monkeypatch.setenv("IOI_UTILS_RESULTS", str(tmp_path))
    torch.set_num_threads(1)
    s = study.prepare("tiny", 24, 12, 0, "cpu", 8, n_discovery=10)
    circuit = C.Circuit({"NM": [(1, 0)], "OTH": [(0, 1)]}, everywhere=True)
    row = analyses.checkpoint_row(s, s.model, "base", circuit, 0)
    for key in ("logit_diff", "logit_diff_interval", "faithfulness_base_circuit", "faithfulness_base_interval", "dla",
                "attn_io", "attn_s", "dla_per_prompt"):
        assert key in row
    assert row["dla"].shape == (s.model.cfg.n_layers, s.model.cfg.n_heads) and "circuit" not in row
    lo, hi = row["faithfulness_base_interval"]
    assert lo <= row["faithfulness_base_circuit"] <= hi or math.isclose(lo, hi)
    again = analyses.checkpoint_row(s, s.model, "base", circuit, 0)
    assert torch.equal(again["dla"], row["dla"])
    own = analyses.checkpoint_row(s, s.model, "base", circuit, 0, rediscover=True, n_rediscover=6)
    assert {"circuit", "circuit_size", "faithfulness_own_circuit", "containment_base", "transitions"} <= set(own)
    own_circuit = C.Circuit.from_json(own["circuit"])
    assert own["circuit_size"] == len(own_circuit.heads)
    assert own["containment_base"] == circuit.containment(own_circuit)
    assert own["transitions"] == C.role_transitions(circuit, own_circuit)
    assert len(list((tmp_path / "memo").glob("discovery-*.safetensors"))) == 1
    first = list(range(6))  # the re-discovered circuit is discovery's, by the same method, on the first prompts
    assert own_circuit.to_json() == C.discover(s.model, s.disc[first], s.disc_abc[first]).circuit.to_json()


def test_rediscovered_row_reuses_the_rows_means_and_f_model(tmp_path, monkeypatch):
    """A row computed with its re-discovery takes the template means once and F(M) once (the re-discovered
    circuit is judged against the row's own F(M)), and its numbers equal a faithfulness computed from scratch."""
    from ioi_utils.circuits import checks
    from ioi_utils.mechanisms import knockouts

    monkeypatch.setenv("IOI_UTILS_RESULTS", str(tmp_path))
    torch.set_num_threads(1)
    s = study.prepare("tiny", 24, 12, 0, "cpu", 8, n_discovery=10)
    circuit = C.Circuit({"NM": [(1, 0)], "OTH": [(0, 1)]}, everywhere=True)
    analyses.rediscover_cached(s, s.model, "base", 6)  # the re-discovery itself (memoised), outside the count below
    calls = {"means": 0}
    real = knockouts.template_means
    monkeypatch.setattr(knockouts, "template_means", lambda *a, **k: calls.__setitem__("means", calls["means"] + 1)
                        or real(*a, **k))
    row = analyses.checkpoint_row(s, s.model, "base", circuit, 0, rediscover=True, n_rediscover=6)
    assert calls["means"] == 1
    own = C.Circuit.from_json(row["circuit"])
    fresh = checks.faithfulness(s.model, s.test, s.abc, own)
    assert row["faithfulness_own_circuit"] == fresh.ratio
    assert row["faithfulness_own_interval"] == fresh.interval()


def test_checkpoint_row_logit_diff_is_the_clean_models(tmp_path, monkeypatch):
    monkeypatch.setenv("IOI_UTILS_RESULTS", str(tmp_path))
    torch.set_num_threads(1)
    s = study.prepare("tiny", 24, 12, 0, "cpu", 8, n_discovery=10)
    row = analyses.checkpoint_row(s, s.model, "base", C.Circuit({"NM": [(1, 0)]}, everywhere=True), 0)
    ev = study.behaviour(s.model, s)
    assert row["logit_diff"] == pytest.approx(ev.logit_diff, abs=1e-4)
    assert row["accuracy"] == pytest.approx(ev.accuracy)


def test_setup_is_the_chapters_steps_in_one_call(tmp_path, monkeypatch):
    """study.setup = prepare + execution id + base behaviour + memoised base discovery, the same numbers."""
    from ioi_utils.study import analyses
    from ioi_utils.storage import results
    from ioi_utils.profiles import Profile

    monkeypatch.setenv("IOI_UTILS_RESULTS", str(tmp_path))
    torch.set_num_threads(1)
    th = C.Thresholds(max_heads=4)
    p = Profile.of({"profile": "smoke", "model_name": "tiny", "n_prompts": 24, "n_eval": 12, "device": "cpu",
                    "batch_size": 8, "n_discovery": 10, "threads": 1})
    got = study.setup(p, thresholds=th)
    assert got.thresholds is th
    s = study.prepare("tiny", 24, 12, 0, "cpu", 8, n_discovery=10)
    assert got.study.test.fingerprint() == s.test.fingerprint() and got.study.disc.fingerprint() == s.disc.fingerprint()
    assert got.execution == results.execution_id("smoke", s.model)
    ev = study.behaviour(s.model, s)
    assert (got.base.logit_diff, got.base.accuracy) == (ev.logit_diff, ev.accuracy)
    found = analyses.discover_cached(s, s.model, "base", th)  # read back from the memo setup wrote
    assert got.circuit.to_json() == found.circuit.to_json() == got.discovery.circuit.to_json()
    assert len(list((tmp_path / "memo").glob("discovery-*.safetensors"))) == 1


def test_what_the_chapters_read_through_study(tmp_path, monkeypatch):
    """The lower layers' facts a chapter shows, as the chapters' layer hands them over: the execution id of the
    book's model, one prompt's toxic versions, the vocabulary, attention patterns, MLP layer groups, a paired
    interval. Each equals what the lower layer computes directly."""
    from ioi_utils.mechanisms import attribution, knockouts
    from ioi_utils.measures import metrics
    from ioi_utils.prompts import data, vocabulary
    from ioi_utils.storage import results

    monkeypatch.setenv("IOI_UTILS_RESULTS", str(tmp_path))
    s = study.prepare("tiny", 24, 12, 0, "cpu", 8, n_discovery=10)
    assert study.book_execution("smoke", "tiny", s.model) == results.execution_id("smoke", s.model)
    assert study.book_execution("smoke", "tiny") == results.execution_id("smoke", s.model)  # loaded again: same weights
    assert study.book_execution("offline", "tiny", s.model) != results.execution_id("smoke", s.model)
    one = s.test[[0]]
    toxic = study.toxic_examples(one)
    assert list(toxic) == list(data.TOXIC_RULES)
    assert all(t.prompts[0].label == data.toxic_dataset(one, r).prompts[0].label for r, t in toxic.items())
    assert study.vocabulary(s) == vocabulary.single_token_vocabulary(s.tokenizer)
    tokens, attn = analyses.attention_patterns(s, [(1, 0), (0, 1)])
    end = int(one.positions["END"][0]) + 1
    cache = attribution.run_cache(s.model, one, lambda n: n.endswith("attn.hook_pattern"))
    assert len(tokens) == end and attn.shape == (2, end, end)
    assert torch.equal(attn[0], cache["blocks.1.attn.hook_pattern"][0, 0, :end, :end])
    assert torch.equal(attn[1], cache["blocks.0.attn.hook_pattern"][0, 1, :end, :end])
    assert analyses.mlp_layer_groups(s, 3) == knockouts.layer_groups(s.model.cfg.n_layers, 3)
    a, b = torch.randn(20, generator=torch.Generator().manual_seed(0)), torch.randn(20)
    assert analyses.change_interval(a, b) == metrics.bootstrap_ci(a - b)
    assert analyses.change_interval(a, b) != metrics.bootstrap_ci(b - a)
