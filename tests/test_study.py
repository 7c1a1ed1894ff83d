"""study: CMAP gain shares at circuit positions, localization; summary: the table's verdicts."""

import math

import pytest
import torch

from ioi_utils.circuits import admission
from ioi_utils import circuits as C, models, study
from ioi_utils.study import cmap_analyses
from ioi_utils.measures import behaviour
from ioi_utils.prompts import data
from ioi_utils.report import summary
from ioi_utils.finetuning import run_spec
from ioi_utils.mechanisms import activation_patching


@pytest.fixture(scope="module")
def tiny():
    torch.set_num_threads(1)
    model, tok = models.load_model("tiny", device="cpu", seed=0)
    return model, data.make_ioi_dataset(tok, n=12, seed=0, prepend_bos=model.prepend_bos)


def _changed(head, what: str, factor: float = 30.0):
    """The tiny model with one head's query weights (what="q") or output projection (what="o") scaled."""
    model, _ = models.load_model("tiny", device="cpu", seed=0)
    l, h = head
    dh = model.cfg.d_head
    with torch.no_grad():
        attn = model.blocks[l].attn
        if what == "q":  # GPT-2 Conv1D [d_model, 3 * d_model], columns [q | k | v]
            attn.qkv.original_component.weight[:, h * dh : (h + 1) * dh] *= factor
        else:  # Conv1D [heads * d_head, d_model]
            attn.o.original_component.weight[h * dh : (h + 1) * dh] *= factor
    return model


@torch.no_grad()
def _patched_by_hand(model_x, model_y, ds, head, position: str) -> float:
    """model_y's mean logit diff with one head's z taken from model_x at one position of each prompt."""
    l, h = head
    _, cache = model_x.run_with_cache(ds.tokens)
    zx = cache[f"blocks.{l}.attn.hook_z"]

    def hook(z, hook):
        for i in range(len(ds)):
            t = int(ds.positions[position][i])
            z[i, t, h] = zx[i, t, h]
        return z

    logits = model_y.run_with_hooks(ds.tokens, fwd_hooks=[(f"blocks.{l}.attn.hook_z", hook)])
    end = logits[torch.arange(len(ds)), ds.positions["END"]]
    return (end[torch.arange(len(ds)), ds.io_tokens] - end[torch.arange(len(ds)), ds.s_tokens]).mean().item()


def test_cmap_group_patches_only_the_circuit_positions(tiny):
    y, ds = tiny
    x = _changed((0, 1), "q")
    ld_y = behaviour.evaluate(y, ds).logit_diff
    at_end = activation_patching.cmap_group(x, y, ds, [(0, 1)], positions={(0, 1): ("END",)})
    everywhere = activation_patching.cmap_group(x, y, ds, [(0, 1)], positions={(0, 1): ("ALL",)})
    assert at_end == pytest.approx(_patched_by_hand(x, y, ds, (0, 1), "END"), abs=1e-6)
    assert everywhere == pytest.approx(activation_patching.cmap_group(x, y, ds, [(0, 1)]), abs=1e-7)
    assert abs(at_end - everywhere) > 5e-5  # the positions matter here (the gap x - y is ~1e-3)
    per_head = activation_patching.cmap(x, y, ds, heads=[(0, 1)], positions="END")
    assert per_head[0, 1].item() == pytest.approx(at_end - ld_y, abs=1e-6)
    pattern = activation_patching.cmap_group(x, y, ds, [(0, 1)], "pattern", positions={(0, 1): ("END",)})
    assert pattern == pytest.approx(at_end, abs=1e-6)  # only queries differ: the END pattern carries the END z
    with pytest.raises(ValueError, match="missing"):
        activation_patching.cmap_group(x, y, ds, [(0, 1), (1, 0)], positions={(0, 1): ("END",)})
    with pytest.raises(ValueError, match="unknown position"):
        activation_patching.cmap(x, y, ds, heads=[(0, 1)], positions="S3")


def test_gain_share_known_values(tiny):
    y, ds = tiny
    x = _changed((1, 1), "q")  # differs only in a last-layer head's queries: its END z carries everything
    assert abs(behaviour.evaluate(x, ds).logit_diff - behaviour.evaluate(y, ds).logit_diff) > 1e-3
    assert cmap_analyses.gain_share(x, y, ds, C.Circuit({"NM": [(1, 1)]})) == pytest.approx(1.0, abs=1e-3)
    assert cmap_analyses.gain_share(x, y, ds, C.Circuit({"NM": [(1, 0)]})) == pytest.approx(0.0, abs=1e-3)  # another head
    assert cmap_analyses.gain_share_ceiling(x, y, ds) == pytest.approx(1.0, abs=1e-3)
    w_o = _changed((1, 1), "o")  # W_O changes are invisible to z-patching
    assert cmap_analyses.gain_share_ceiling(w_o, y, ds) == pytest.approx(0.0, abs=1e-3)
    early = _changed((0, 1), "q")  # a layer-0 head kept at END only carries part of what it does
    ld_x, ld_y = (behaviour.evaluate(m, ds).logit_diff for m in (early, y))
    part = cmap_analyses.gain_share(early, y, ds, C.Circuit({"NM": [(0, 1)]}))
    assert part == pytest.approx((_patched_by_hand(early, y, ds, (0, 1), "END") - ld_y) / (ld_x - ld_y), abs=1e-3)
    assert part != pytest.approx(cmap_analyses.gain_share_ceiling(early, y, ds), abs=1e-2)
    assert math.isnan(cmap_analyses.gain_share(y, y, ds, C.Circuit({"NM": [(1, 1)]})))  # no gap
    assert math.isnan(cmap_analyses.gain_share(x, y, ds, C.Circuit({})))


def test_per_prompt_cmap_and_gain_share_interval(tiny):
    y, ds = tiny
    x = _changed((1, 1), "q")
    each = activation_patching.cmap(x, y, ds, heads=[(1, 1), (0, 1)], per_prompt=True)  # [n, L, H]
    assert each.shape == (len(ds), 2, 4) and each[:, 1, 0].abs().max() == 0  # not patched: 0
    assert torch.allclose(each.mean(0), activation_patching.cmap(x, y, ds, heads=[(1, 1), (0, 1)]), atol=1e-7)
    patched = activation_patching.cmap_group(x, y, ds, [(1, 1)], per_prompt=True)
    assert patched.shape == (len(ds),)
    assert patched.mean().item() == pytest.approx(activation_patching.cmap_group(x, y, ds, [(1, 1)]), abs=1e-7)
    early = _changed((0, 1), "q")
    circuit = C.Circuit({"NM": [(0, 1)]})
    share = cmap_analyses.gain_share(early, y, ds, circuit)
    lo, hi = cmap_analyses.gain_share_interval(early, y, ds, circuit)
    assert lo <= share <= hi and hi - lo > 0


def test_localization_intervals_resample_prompts():
    g = torch.Generator().manual_seed(0)
    on_circuit = torch.rand(30, 2, 4, generator=g) * 0.1
    on_circuit[:, 1, 1] += 1.0  # the corruption sits on the circuit head
    spread = torch.rand(30, 2, 4, generator=g)  # benign: everywhere alike
    heads = [(1, 1)]
    lo, hi = cmap_analyses.localization_interval(on_circuit, heads)
    assert lo <= cmap_analyses.localization(on_circuit.mean(0), heads) <= hi and lo > 3
    d_lo, d_hi = cmap_analyses.localization_difference_interval(on_circuit, spread, heads)
    assert d_lo > 2 and d_hi < 8
    assert cmap_analyses.localization_difference_interval(spread, spread, heads) == (0.0, 0.0)  # paired: the same prompts
    with pytest.raises(ValueError, match="one shape"):
        cmap_analyses.localization_difference_interval(spread, spread[:5], heads)


def test_localization():
    effects = torch.zeros(2, 4)
    effects[1, 0], effects[0, 1] = 3.0, -1.0
    assert cmap_analyses.localization(effects, [(1, 0)]) == pytest.approx((3 / 4) / (1 / 8))
    assert cmap_analyses.localization(effects, [(1, 0), (0, 1)]) == pytest.approx(1 / (2 / 8))
    assert cmap_analyses.localization(effects, [(0, 0)]) == 0.0
    assert math.isnan(cmap_analyses.localization(effects, [])) and math.isnan(cmap_analyses.localization(torch.zeros(2, 4), [(0, 0)]))


def test_summary_is_the_chapters_claim_records():
    """One row per recorded claim, in chapter order, with the chapter's own verdict and paper value: the summary
    adds no verdict of its own, so it cannot disagree with a chapter."""
    from ioi_utils.report import claims

    recorded: dict = {}
    for chapter, statement, ours, interval, threshold, direction, pre in (
            ("corruption", "SD flips", -0.8, (-1.2, -0.4), 0.0, "<=", None),
            ("circuit_discovery", "faithful", 0.91, (0.82, 1.01), 0.87, ">=", None),
            ("amplification", "BNM -> NM", 0, None, 1, ">=", (False, "no BNM"))):
        log = recorded.setdefault(chapter, {"claims": {}})["claims"]
        claims.check(statement, ours, interval, threshold, direction, paper=f"paper {statement}", precondition=pre,
                     record=log)
    rows = summary.claim_rows(recorded)
    assert [r["chapter"] for r in rows] == ["circuit_discovery", "amplification", "corruption"]
    for r in rows:
        c = recorded[r["chapter"]]["claims"][r["claim"]]
        assert r["verdict"] == c["verdict"] and r["paper"] == c["paper"]
    assert [r["verdict"] for r in rows] == ["inconclusive", "not testable", "reproduced"]
    assert summary.counts(rows) == {"reproduced": 1, "not reproduced": 0, "inconclusive": 1, "not testable": 1}
    assert "| **not testable** |" in summary.markdown(rows)


def test_a_claim_over_training_seeds_shows_each_seed_and_its_training_in_the_summary():
    from ioi_utils.report import claims
    from ioi_utils.study import seeds

    g = torch.Generator().manual_seed(0)
    est = seeds.across_seeds({sd: 1.0 + sd + 0.1 * torch.randn(40, generator=g) for sd in (0, 1, 2)})
    log: dict = {}
    cfg = run_spec.TrainConfig(model="tiny", n_train=320, batch_size=16, epochs=3)
    c = claims.check("gain", est.mean, est.interval, 0.1, ">=", per_seed=est.per_seed,
                     training=study.versus_paper(cfg, 3, "1-100 epochs"), record=log)
    assert "mean of 3 training seeds" in c.evidence and "60 optimizer steps" in c.evidence
    (row,) = summary.claim_rows({"amplification": {"claims": log}})
    assert "seeds 0: 0.99" in row["ours"] or "seeds 0: 1" in row["ours"], row["ours"]
    assert row["training"].startswith("ours 3 epochs = 60 optimizer steps = 960 samples = 0.151 paper epochs; paper 1-100")
    assert row["verdict"] == claims.verdict_of(est.mean, est.interval, 0.1, ">=")
    assert "| training (ours vs the paper's) |" in summary.markdown([row])


def test_admission_seed_cached_is_admit_on_the_seed_split_and_memoised(tmp_path, monkeypatch):
    monkeypatch.setenv("IOI_UTILS_RESULTS", str(tmp_path))
    torch.set_num_threads(1)
    s = study.prepare("tiny", 24, 12, 0, "cpu", 8, n_discovery=10)
    t = C.Thresholds(max_heads=3)
    heads, share = study.admission_seed_cached(s, 1, 10, t)
    disc, abc = study.discovery_split(s, 10, 1)
    assert disc.fingerprint() != s.disc.fingerprint()  # seed 1 is another draw than the chapter's (seed 0)
    want, _, attr, f_m = admission.admit(s.model, disc, abc, t)
    assert heads == want and torch.allclose(share, attr / f_m)
    calls = []
    monkeypatch.setattr(admission, "admit", lambda *a, **k: calls.append(1))
    assert study.admission_seed_cached(s, 1, 10, t)[0] == heads and not calls  # second call: from the memo


def test_prepare_pins_threads_and_rejects_bad_counts(monkeypatch):
    monkeypatch.delenv("IOI_UTILS_THREADS", raising=False)  # the override would replace the counts tested here
    before = torch.get_num_threads()
    try:
        study.prepare("tiny", 8, 4, 0, "cpu", 4, n_discovery=4, threads=1)
        assert torch.get_num_threads() == 1
        with pytest.raises(ValueError, match="threads must be >= 1"):
            study.prepare("tiny", 8, 4, 0, "cpu", 4, threads=0)
    finally:
        torch.set_num_threads(before)
