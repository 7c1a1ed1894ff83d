"""Circuits: the reference circuit, discovery on a tiny model, and the values of faithfulness, completeness and
minimality checked against an independent, hand-rolled knockout (loops and plain hooks, no shared helpers)."""

import pytest
import torch

from ioi_utils import circuits as C, data, evaluate, models, patching as P

ATOL = 1e-6  # the tiny model's logit differences are ~1e-3; float32 error is ~1e-7
APART = 5e-5  # two readings this far apart are told apart


@pytest.fixture(scope="module")
def setup():
    torch.set_num_threads(1)
    model, tok = models.load_model("tiny", device="cpu", seed=0)
    clean = data.make_ioi_dataset(tok, n=12, seed=0, prepend_bos=True)
    return model, clean, data.make_abc_dataset(clean)


class _Everywhere(C.Circuit):
    """A circuit that keeps every head of the model at every position."""

    def __init__(self, model):
        super().__init__({"NM": P.all_heads(model)})

    def positions(self):
        return {h: ("ALL",) for h in self.heads}


@torch.no_grad()
def _means_by_hand(model, ds) -> dict:
    """layer -> [batch, seq, heads, d_head]: mean hook_z over the prompts of ds sharing template and positions."""
    _, cache = model.run_with_cache(ds.tokens)
    keys = [(int(ds.template_ids[i]),) + tuple(int(ds.positions[k][i]) for k in sorted(ds.positions)) for i in range(len(ds))]
    out = {}
    for l in range(model.cfg.n_layers):
        z = cache[f"blocks.{l}.attn.hook_z"]
        out[l] = torch.stack([z[[j for j in range(len(ds)) if keys[j] == keys[i]]].mean(0) for i in range(len(ds))])
    return out


@torch.no_grad()
def _per_prompt_by_hand(model, clean, means, keep: dict) -> torch.Tensor:
    """Per-prompt logit diff [batch] with every (head, position) replaced by `means` except the kept ones (head -> names)."""
    def hook(z, hook):
        l = int(hook.name.split(".")[1])
        new = means[l].clone()
        for (hl, h), names in keep.items():
            for i in range(len(clean)) if hl == l else []:
                for t in range(z.shape[1]) if "ALL" in names else [int(clean.positions[p][i]) for p in names]:
                    new[i, t, h] = z[i, t, h]
        return new

    logits = model.run_with_hooks(clean.tokens, fwd_hooks=[(f"blocks.{l}.attn.hook_z", hook) for l in range(model.cfg.n_layers)])
    lds = [logits[i, int(clean.positions["END"][i]), int(clean.io_tokens[i])] - logits[i, int(clean.positions["END"][i]), int(clean.s_tokens[i])]
           for i in range(len(clean))]
    return torch.stack(lds)


def _ld_by_hand(model, clean, means, keep: dict) -> float:
    """Mean logit diff with every (head, position) replaced by `means` except the kept ones."""
    return _per_prompt_by_hand(model, clean, means, keep).mean().item()


def _everything_but(model, drop) -> dict:
    """Keep spec: every head at every position except `drop`."""
    return {h: ("ALL",) for h in P.all_heads(model) if h not in drop}


def test_wang_reference_circuit():
    assert len(C.WANG_GPT2_CIRCUIT.heads) == 26
    assert C.WANG_GPT2_CIRCUIT.class_of((9, 9)) == "NM" and C.WANG_GPT2_CIRCUIT.class_of((2, 2)) == "PT"
    assert C.WANG_GPT2_CIRCUIT.positions()[(5, 5)] == ("S2",)
    C.WANG_GPT2_CIRCUIT.validate(12, 12)
    with pytest.raises(ValueError, match="do not exist"):
        C.WANG_GPT2_CIRCUIT.validate(2, 4)
    with pytest.raises(ValueError, match="unknown head classes"):
        C.Circuit({"XX": [(0, 0)]})


def test_discovery_with_zero_thresholds_finds_a_classified_circuit(setup):
    model, clean, abc = setup
    loose = C.Thresholds(name_mover=0.0, name_mover_attention=0.0, s_inhibition=-1, s_inhibition_attention=0,
                         duplicate_induction=-1, previous_token=-1, previous_token_attention=0, backup_attention=0,
                         max_per_class=2)
    found = C.discover(model, clean, abc, loose)
    assert found.circuit.classes["NM"], str(found.circuit)
    assert found.maps["direct"].shape == (2, 4)
    heads = found.circuit.heads
    assert len(heads) == len(set(heads))


def test_discovery_with_strict_thresholds_finds_nothing(setup):
    model, clean, abc = setup
    strict = C.Thresholds(name_mover=10.0, negative_name_mover=10.0, backup_attention=2.0)
    assert C.discover(model, clean, abc, strict).circuit.heads == []


def test_template_means_are_abc_means_by_hand(setup):
    model, clean, abc = setup
    ours, by_hand = P.template_means(model, abc), _means_by_hand(model, abc)
    for l in range(model.cfg.n_layers):
        torch.testing.assert_close(ours[l], by_hand[l], atol=1e-6, rtol=0)


def test_every_head_kept_everywhere_is_exactly_the_model(setup):
    model, clean, abc = setup
    f = C.faithfulness(model, clean, abc, _Everywhere(model))
    assert f.ratio == 1.0 and f.f_circuit == f.f_model
    assert f.f_model == pytest.approx(evaluate.evaluate(model, clean).logit_diff, abs=ATOL)  # nothing ablated
    assert f.per_prompt_model.shape == (len(clean),) and f.f_model == pytest.approx(f.per_prompt_model.mean().item())
    lo, hi = f.interval()
    assert lo == pytest.approx(1.0) and hi == pytest.approx(1.0)


def test_empty_circuit_is_the_all_heads_ablated_abc_level(setup):
    model, clean, abc = setup
    f = C.faithfulness(model, clean, abc, C.Circuit({}))
    abc_level = _per_prompt_by_hand(model, clean, _means_by_hand(model, abc), {})
    clean_level = _per_prompt_by_hand(model, clean, _means_by_hand(model, clean), {})
    assert (abc_level - clean_level).abs().max() > APART  # means from the clean run would be told apart
    torch.testing.assert_close(f.per_prompt_circuit, abc_level, atol=ATOL, rtol=0)
    assert f.f_circuit == pytest.approx(abc_level.mean().item(), abs=ATOL)
    assert f.f_model == pytest.approx(evaluate.evaluate(model, clean).logit_diff, abs=ATOL)


def test_each_head_keeps_only_its_class_positions(setup):
    model, clean, abc = setup
    circuit = C.Circuit({"NM": [(0, 1)], "IND": [(0, 2)], "PT": [(1, 3)]})  # END, S2, S1+1
    means = _means_by_hand(model, abc)
    expected = _ld_by_hand(model, clean, means, {(0, 1): ("END",), (0, 2): ("S2",), (1, 3): ("S1+1",)})
    everywhere = _ld_by_hand(model, clean, means, {h: ("ALL",) for h in circuit.heads})
    assert abs(expected - everywhere) > APART  # ignoring the positions would be told apart
    assert C.faithfulness(model, clean, abc, circuit).f_circuit == pytest.approx(expected, abs=ATOL)
    only_end = _ld_by_hand(model, clean, means, {(0, 1): ("END",)})
    assert P.circuit_logit_diff(model, clean, abc, {(0, 1): ("END",)}) == pytest.approx(only_end, abs=ATOL)
    per = P.circuit_logit_diff(model, clean, abc, {(0, 1): ("END",)}, per_prompt=True)
    assert per.shape == (len(clean),) and per.mean().item() == pytest.approx(only_end, abs=ATOL)


def test_completeness_values(setup):
    model, clean, abc = setup
    circuit = C.Circuit({"NM": [(1, 0), (1, 1)], "IND": [(0, 2)]})
    means = _means_by_hand(model, abc)
    keep = {(1, 0): ("END",), (1, 1): ("END",), (0, 2): ("S2",)}
    f = C.faithfulness(model, clean, abc, circuit)
    rows = {r["K"]: r for r in C.completeness(model, clean, abc, circuit, n_random=1)}
    empty = rows["empty"]
    assert empty["F(C\\K)"] == pytest.approx(_ld_by_hand(model, clean, means, keep), abs=ATOL)
    assert empty["F(M\\K)"] == pytest.approx(_ld_by_hand(model, clean, means, _everything_but(model, [])), abs=ATOL)
    assert empty["gap"] == pytest.approx(abs(f.f_circuit - f.f_model), abs=ATOL)
    nm = rows["NM"]
    assert nm["heads"] == 2
    assert nm["F(C\\K)"] == pytest.approx(_ld_by_hand(model, clean, means, {(0, 2): ("S2",)}), abs=ATOL)
    assert nm["F(M\\K)"] == pytest.approx(_ld_by_hand(model, clean, means, _everything_but(model, [(1, 0), (1, 1)])), abs=ATOL)
    assert abs(nm["F(C\\K)"] - nm["F(M\\K)"]) > APART  # swapping the two would be told apart


@pytest.fixture(scope="module")
def one_dead_head():
    """The tiny model with head 1.1's output projection zeroed: knocking it out changes nothing."""
    torch.set_num_threads(1)
    model, tok = models.load_model("tiny", device="cpu", seed=0)
    with torch.no_grad():
        model.blocks[1].attn.o.original_component.weight[16:32] = 0  # GPT-2 Conv1D [heads * d_head, d_model]
    assert model.blocks[1].attn.W_O[1].abs().max() == 0
    clean = data.make_ioi_dataset(tok, n=12, seed=0, prepend_bos=True)
    return model, clean, data.make_abc_dataset(clean)


def test_minimality_one_head_passes_one_does_not(one_dead_head):
    model, clean, abc = one_dead_head
    circuit = C.Circuit({"NM": [(1, 0), (1, 1), (1, 2)]})
    means = _means_by_hand(model, abc)
    f_m = _ld_by_hand(model, clean, means, _everything_but(model, []))
    mini = C.minimality(model, clean, abc, circuit, threshold=0.01)
    for v in circuit.heads:  # K = the rest of v's class: score = |F({v}) - F({})|
        expected = abs(_ld_by_hand(model, clean, means, {v: ("END",)}) - _ld_by_hand(model, clean, means, {}))
        assert mini[v]["score"] == pytest.approx(expected, abs=ATOL)
        assert mini[v]["relative"] == pytest.approx(expected / abs(f_m), abs=1e-4)
    assert mini[(1, 1)]["score"] < 1e-7 and not mini[(1, 1)]["passes"]
    assert mini[(1, 0)]["relative"] > 0.02 and mini[(1, 0)]["passes"]  # well above Wang's 1%
    assert all(v["class"] == "NM" for v in mini.values())


@pytest.mark.slow
def test_smollm_knockout_and_interval_match_hand_rolled():
    torch.set_num_threads(1)
    model, tok = models.load_model("smollm2-135m", device="cpu")
    clean = data.make_ioi_dataset(tok, n=16, seed=0, prepend_bos=model.prepend_bos)
    abc = data.make_abc_dataset(clean)
    layers = lambda a, b: [(l, h) for l in range(a, b) for h in range(model.cfg.n_heads)]  # noqa: E731
    circuit = C.Circuit({"NM": layers(15, 30), "IND": layers(5, 15), "PT": layers(0, 5)})  # every head, some positions
    means = _means_by_hand(model, abc)
    f = C.faithfulness(model, clean, abc, circuit)
    expected = _ld_by_hand(model, clean, means, circuit.positions())
    everywhere = _ld_by_hand(model, clean, means, {h: ("ALL",) for h in circuit.heads})
    scale = abs(f.f_model)
    assert abs(f.f_circuit - expected) < 1e-3 * scale and abs(expected - everywhere) > 1e-2 * scale
    assert everywhere == pytest.approx(f.f_model, rel=1e-3)  # every head everywhere is the model
    lo, hi = f.interval()
    assert lo <= f.ratio <= hi and hi - lo > 0
