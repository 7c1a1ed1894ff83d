"""Path patching, knockouts and CMAP against plain references on the tiny model."""

import pytest
import torch

from ioi_utils import data, evaluate, models, patching as P


@pytest.fixture(scope="module")
def setup():
    model, tok = models.load_model("tiny", device="cpu", seed=0)
    clean = data.make_ioi_dataset(tok, n=12, seed=0, prepend_bos=True)
    return model, clean, data.make_abc_dataset(clean)


RECEIVERS = [P.LOGITS, P.Receivers(((1, 1), (1, 3)), "q", "END"), P.Receivers(((1, 0),), "kv", "S2"),
             P.Receivers(((1, 2),), "k", "S1+1"), P.Receivers(((1, 2),), "v", "END")]


@pytest.mark.parametrize("receivers", RECEIVERS, ids=lambda r: f"{r.component}-{r.position}-{len(r.heads)}")
def test_fast_path_patching_matches_reference(setup, receivers):
    model, clean, abc = setup
    fast = P.path_patch(model, clean, abc, receivers)
    ref = P.path_patch_reference(model, clean, abc, receivers)
    assert (fast - ref).abs().max() <= 1e-4
    assert ref.abs().max() > 1e-5  # the comparison is not between two zero maps


def test_head_receivers_ignore_later_senders(setup):
    model, clean, abc = setup
    out = P.path_patch(model, clean, abc, P.Receivers(((0, 1),), "q", "END"))
    assert torch.equal(out, torch.zeros_like(out))


def test_patching_with_own_activations_changes_nothing(setup):
    model, clean, _ = setup
    assert P.path_patch(model, clean, clean).abs().max() < 1e-5
    assert P.path_patch(model, clean, clean, RECEIVERS[1]).abs().max() < 1e-5
    assert P.cmap(model, model, clean).abs().max() < 1e-6


def test_knockout_of_nothing_is_the_full_model(setup):
    model, clean, abc = setup
    full = evaluate.evaluate(model, clean).logit_diff
    everything = {h: P.ALL_POSITIONS for h in P.all_heads(model)}
    assert P.circuit_logit_diff(model, clean, abc, everything) == pytest.approx(full, abs=1e-5)
    one_head = {h: P.ALL_POSITIONS for h in P.all_heads(model) if h != (1, 1)}
    assert P.circuit_logit_diff(model, clean, abc, one_head) != pytest.approx(full, abs=1e-7)


def test_template_means_are_per_template(setup):
    model, clean, abc = setup
    means = P.template_means(model, abc)
    t = abc.template_ids
    same = (t[:, None] == t[None, :]).nonzero()
    for i, j in same.tolist():
        assert torch.equal(means[0][i], means[0][j])


def test_cmap_transplants_outputs_between_models(setup):
    model, clean, _ = setup
    other, _ = models.load_model("tiny", device="cpu", seed=1)
    other.load_state_dict(model.state_dict())
    with torch.no_grad():  # x differs from y only in one head's value weights
        other.blocks[1].attn.v.weight[:] *= 3 if hasattr(other.blocks[1].attn, "v") else 1
    ld_x = evaluate.evaluate(other, clean).logit_diff
    ld_y = evaluate.evaluate(model, clean).logit_diff
    assert abs(ld_x - ld_y) > 1e-4
    heads = [(1, h) for h in range(model.cfg.n_heads)]
    assert P.cmap_group(other, model, clean, heads) == pytest.approx(ld_x, abs=1e-5)
    per_head = P.cmap(other, model, clean, heads=heads)
    assert per_head[0].abs().max() == 0 and per_head[1].abs().max() > 0


def test_bad_input(setup):
    model, clean, abc = setup
    with pytest.raises(ValueError, match="do not exist"):
        P.path_patch(model, clean, abc, senders=[(5, 0)])
    with pytest.raises(ValueError, match="unknown position"):
        P.path_patch(model, clean, abc, P.Receivers(((1, 0),), "q", "S3"))
    with pytest.raises(ValueError, match="component must be"):
        P.path_patch(model, clean, abc, P.Receivers(((1, 0),), "z", "END"))
    with pytest.raises(ValueError, match="differ in shape"):
        P.path_patch(model, clean, abc[list(range(4))])
    with pytest.raises(ValueError, match="unknown position"):
        P.circuit_logit_diff(model, clean, abc, {(0, 0): ("S9",)})
    with pytest.raises(ValueError, match="kind must be"):
        P.cmap(model, model, clean, kind="q")
