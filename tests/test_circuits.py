"""Circuits: the reference circuit, discovery on a tiny model, faithfulness, completeness, minimality."""

import pytest

from ioi_utils import circuits as C, data, models, patching as P


@pytest.fixture(scope="module")
def setup():
    model, tok = models.load_model("tiny", device="cpu", seed=0)
    clean = data.make_ioi_dataset(tok, n=12, seed=0, prepend_bos=True)
    return model, clean, data.make_abc_dataset(clean)


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


def test_faithfulness_of_everything_is_one(setup):
    model, clean, abc = setup
    everything = C.Circuit({"NM": P.all_heads(model)})
    f = C.faithfulness(model, clean, abc, everything)
    assert abs(f.f_model) > 0
    # NM heads keep END only, so F(C) differs from F(M); the model itself has ratio 1 by definition
    assert f.ratio == pytest.approx(f.f_circuit / f.f_model)
    rows = C.completeness(model, clean, abc, C.Circuit({"NM": [(1, 0), (1, 1)]}), n_random=1)
    assert rows[0]["K"] == "empty" and len(rows) == 3
    mini = C.minimality(model, clean, abc, C.Circuit({"NM": [(1, 0), (1, 1)]}), threshold=0.0)
    assert set(mini) == {(1, 0), (1, 1)} and all(v["passes"] for v in mini.values())
