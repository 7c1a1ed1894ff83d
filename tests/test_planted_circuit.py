"""Discovery on a model with a planted IOI circuit (tests/planted.py): describe() and discover() must find its
Name Mover, S-Inhibition and Duplicate Token heads through Wang et al.'s path-patching steps, and the maps they
are read from must be the plain path patching of those steps. With a planted Negative Name Mover that cancels
part of the Name Mover, discovery must keep both, each in its class (a net-faithfulness search drops the NNM)."""

import pytest
import torch

from ioi_utils.circuits import admission, checks as CC
from ioi_utils import circuits as C
from ioi_utils.prompts import data
from ioi_utils.mechanisms import activation_patching, path_patching, scoring
from planted import DECOY, DT, NM, NNM, SIN, planted_model

STEPS = {  # description map -> (receivers of that step, the planted head it must single out, where it acts)
    "direct": (scoring.LOGITS, NM, "END"),
    "to_movers_q": (scoring.Receivers((NM,), "q", "END"), SIN, "END"),
    "to_s2_readers_kv": (scoring.Receivers((SIN,), "kv", "S2"), DT, None),
}


@pytest.fixture(scope="module")
def planted():
    torch.set_num_threads(1)
    model, tok = planted_model()
    clean = data.make_ioi_dataset(tok, n=16, seed=0, prepend_bos=True)
    return model, clean, data.make_abc_dataset(clean)


@pytest.fixture(scope="module")
def described(planted):
    model, clean, abc = planted
    return C.describe(model, clean, abc, scoring.all_heads(model))


def test_planted_model_does_ioi_through_its_circuit(planted, described):
    model, clean, abc = planted
    maps = described[1]
    assert scoring.run_ld(model, clean).min().item() > 3  # IO wins on every prompt
    assert abs(scoring.run_ld(model, abc).mean().item()) < 1e-3  # no repeated name: NM splits over three names
    assert maps["duplicate_token"][DT] > 0.99 and maps["induction"][DT] < 0.01  # S2 -> S1
    assert maps["attn_end_s2"][SIN] > 0.95 and maps["attn_end_s2"][DECOY] > 0.95  # END -> S2
    assert maps["attn_end_io"][NM] > 0.95 and maps["dla"][NM] > 3  # END -> IO, copied to the logits


def test_describe_sorts_the_planted_heads_into_their_classes(described):
    circuit, _, evidence = described
    c = circuit.classes
    assert (c["NM"], c["SIN"], c["DT"]) == ([NM], [SIN], [DT]), str(circuit)
    assert circuit.heads == sorted([DT, SIN, NM])  # the decoy attends S2 but acts on nothing; zero heads neither
    assert evidence[NM]["step"] == "direct" and evidence[NM]["effect"] < -0.9 and evidence[NM]["interval"][1] < 0
    assert evidence[SIN]["step"] == "to_movers_q" and evidence[DT]["step"] == "to_s2_readers_kv"


def test_discover_finds_only_the_planted_circuit(planted):
    model, clean, abc = planted
    found = C.discover(model, clean, abc)
    c = found.circuit.classes
    assert found.circuit.heads == sorted([DT, SIN, NM]), str(found.circuit)
    assert (c["NM"], c["SIN"], c["DT"]) == ([NM], [SIN], [DT])
    assert sorted(found.ranked()) == found.circuit.heads
    assert CC.faithfulness(model, clean, abc, found.circuit).ratio == pytest.approx(1.0, abs=1e-4)


@pytest.fixture(scope="module")
def cancelling():
    torch.set_num_threads(1)
    model, tok = planted_model(nnm_gain=1.5)
    clean = data.make_ioi_dataset(tok, n=16, seed=0, prepend_bos=True)
    return model, clean, data.make_abc_dataset(clean)


def test_discovery_keeps_a_negative_name_mover_with_its_name_mover(cancelling):
    model, clean, abc = cancelling
    found = C.discover(model, clean, abc)
    c = found.circuit.classes
    assert (c["NM"], c["NNM"], c["SIN"], c["DT"]) == ([NM], [NNM], [SIN], [DT]), str(found.circuit)
    assert found.evidence[NNM]["effect"] > 0.2 and found.evidence[NNM]["interval"][0] > 0  # cutting it helps
    f = CC.faithfulness(model, clean, abc, found.circuit)
    assert f.ratio == pytest.approx(1.0, abs=1e-4)  # the mechanism, negative head included, is the model
    # the net-faithfulness search (a second reading) drops the NNM: the knockout is better without it
    assert NNM not in admission.minimal_subset(model, clean, abc).circuit.heads


@pytest.mark.parametrize("name", STEPS)
def test_description_maps_are_reference_path_patching(planted, described, name):
    model, clean, abc = planted
    receivers, head, position = STEPS[name]
    ref = path_patching.path_patch_reference(model, clean, abc, receivers)
    torch.testing.assert_close(described[1][name], ref, rtol=1e-3, atol=1e-3 * ref.abs().max().item())
    assert ref[head] < -0.9  # the planted head carries the step: cutting its path loses the logit difference
    assert (ref.abs() > 0.02).nonzero().tolist() == [list(head)]  # and no other head does
    # here that path is the head's only way to the logits: patching its output alone gives the same number
    act = activation_patching.activation_patch_heads(model, clean, abc, positions=position, heads=[head])
    assert act[head].item() == pytest.approx(ref[head].item(), rel=1e-3)


def test_stability_selection_always_admits_the_planted_heads(planted):
    """Every random half of the prompts admits exactly the planted circuit: frequency 1 there, 0 elsewhere."""
    model, clean, abc = planted
    freq = admission.selection_frequency(model, clean, abc, resamples=3, seed=0)
    want = torch.zeros(model.cfg.n_layers, model.cfg.n_heads)
    for h in (DT, SIN, NM):
        want[h] = 1.0
    torch.testing.assert_close(freq, want)
    assert admission.stable_core([freq, freq]) == sorted([DT, SIN, NM])


def test_stable_core_needs_the_share_in_every_draw():
    a, b = torch.zeros(2, 2), torch.zeros(2, 2)
    a[0, 1], b[0, 1], a[1, 0], b[1, 0], a[1, 1] = 1.0, 0.8, 1.0, 0.5, 0.9
    assert admission.stable_core([a, b], share=0.8) == [(0, 1)]
    assert admission.stable_core([a], share=0.8) == [(0, 1), (1, 0), (1, 1)]
    with pytest.raises(ValueError, match="resamples"):
        admission.selection_frequency(None, [0, 1], None, resamples=0)
