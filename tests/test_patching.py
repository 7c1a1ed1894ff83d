"""Path patching (fast vs reference), activation patching, mean-ablation knockouts and CMAP."""

import tempfile
import warnings

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from ioi_utils.prompts import data
from ioi_utils import models
from ioi_utils.measures import behaviour
from ioi_utils.mechanisms import activation_patching, knockouts, path_patching, path_patching_window, scoring

ATOL = 1e-4


@pytest.fixture(scope="module")
def tiny():
    model, tok = models.load_model("tiny", device="cpu", seed=0)
    clean = data.make_ioi_dataset(tok, n=12, seed=0, prepend_bos=model.prepend_bos)
    return model, tok, clean, data.make_abc_dataset(clean)


@pytest.fixture(scope="module")
def tiny_llama():
    """A random 4-layer llama (RoPE, RMSNorm, 4 query heads sharing 2 key/value heads) and IOI prompts."""
    with tempfile.TemporaryDirectory() as tmp:  # TransformerLens re-reads config and tokenizer from a folder
        models.tiny_tokenizer().save_pretrained(tmp)
        tok = AutoTokenizer.from_pretrained(tmp)
        torch.manual_seed(0)
        cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                          bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=True)
        hf = LlamaForCausalLM(cfg)
        cfg.save_pretrained(tmp)
        model = models._boot(tmp, hf, tok, torch.device("cpu"), torch.float32)
    assert model.cfg.positional_embedding_type == "rotary" and scoring.n_kv(model) == 2
    clean = data.make_ioi_dataset(tok, n=12, seed=0, prepend_bos=True)
    return model, tok, clean, data.make_abc_dataset(clean)


@pytest.fixture(scope="module")
def sharp():
    """The tiny GPT-2 with sharper queries and larger values (see _scaled_attention)."""
    return _scaled_attention(scale_v=True)


@pytest.fixture
def windowed_only(monkeypatch):
    """Make path_patch fail instead of silently falling back to hooked forwards in step 3."""
    def refuse(*args, **kwargs):
        raise AssertionError("path_patch fell back to the generic step 3")

    monkeypatch.setattr(path_patching, "_step3_generic", refuse)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        yield


def _assert_matches(fast, ref, rel=1e-3, floor=5e-5):
    """fast == ref within rel of each entry plus rel of the largest |effect| (floor: float noise, which the
    division by a random model's small clean logit diff amplifies)."""
    torch.testing.assert_close(fast, ref, rtol=rel, atol=max(rel * ref.abs().max().item(), floor))


def _scaled_attention(scale_v: bool):
    """A second tiny model equal to the fixture's except for sharper queries (and, if scale_v, larger values)."""
    model, _ = models.load_model("tiny", device="cpu", seed=0)
    d = model.cfg.d_model
    with torch.no_grad():
        for block in model.blocks:  # GPT-2's joint projection: columns [q | k | v]
            qkv = block.attn.qkv.original_component.weight
            qkv[:, :d] *= 30
            if scale_v:
                qkv[:, 2 * d :] *= 3
    return model


def test_direct_path_fast_equals_reference(tiny):
    model, _, clean, abc = tiny
    fast = path_patching.path_patch(model, clean, abc)
    ref = path_patching.path_patch_reference(model, clean, abc)
    assert fast.shape == (model.cfg.n_layers, model.cfg.n_heads)
    assert fast.abs().max() > 1e-3  # the comparison is not between two zero maps
    torch.testing.assert_close(fast, ref, atol=ATOL, rtol=0)


@pytest.mark.parametrize("component,position", [("q", "END"), ("k", "S1+1"), ("v", "END"), ("kv", "S2")])
def test_head_receivers_fast_equals_reference(tiny, component, position):
    model, _, clean, abc = tiny
    r = scoring.Receivers(((1, 1), (1, 2)), component, position)
    fast = path_patching.path_patch(model, clean, abc, r, batch_heads=3)
    ref = path_patching.path_patch_reference(model, clean, abc, r)
    assert fast[0].abs().max() > 1e-5
    torch.testing.assert_close(fast, ref, atol=ATOL, rtol=0)
    assert torch.equal(fast[1], torch.zeros(model.cfg.n_heads))  # senders at the receiver layer reach nothing


WINDOW_CASES = [("q", "END"), ("k", "S2"), ("v", "S2"), ("kv", "S2"), ("k", "S1+1")]


@pytest.mark.parametrize("component,position", WINDOW_CASES)
def test_windowed_step3_equals_reference_gpt2(tiny, sharp, windowed_only, component, position):
    _, _, clean, abc = tiny
    model = sharp  # learned positions, LayerNorm, no GQA; sharp attention gives real effects
    r = scoring.Receivers(((1, 0), (1, 3)), component, position)
    fast = path_patching.path_patch(model, clean, abc, r)
    ref = path_patching.path_patch_reference(model, clean, abc, r)
    assert ref.abs().max() > 0.1
    _assert_matches(fast, ref)


@pytest.mark.parametrize("component,position", WINDOW_CASES)
def test_windowed_step3_equals_reference_llama(tiny_llama, windowed_only, component, position):
    model, _, clean, abc = tiny_llama  # RoPE, RMSNorm, grouped-query attention; receivers on two layers
    r = scoring.Receivers(((2, 1), (3, 2)), component, position)
    fast = path_patching.path_patch(model, clean, abc, r)
    ref = path_patching.path_patch_reference(model, clean, abc, r)
    assert ref.abs().max() > 1e-3
    assert fast[3].abs().max() == 0  # senders at the last receiver layer reach nothing
    _assert_matches(fast, ref)


def test_generic_step3_equals_reference(tiny_llama, monkeypatch):
    model, _, clean, abc = tiny_llama
    monkeypatch.setattr(path_patching_window, "windowed_supported", lambda model: False)
    r = scoring.Receivers(((3, 1),), "kv", "S2")
    _assert_matches(path_patching.path_patch(model, clean, abc, r, batch_heads=5),
                    path_patching.path_patch_reference(model, clean, abc, r))


def test_windowed_step3_falls_back_when_its_clean_run_disagrees(tiny_llama, monkeypatch):
    model, _, clean, abc = tiny_llama
    monkeypatch.setattr(path_patching_window, "_attn_scale", lambda model, layer: 1.0)  # a wrong model of the attention
    r = scoring.Receivers(((3, 1),), "q", "END")
    with pytest.warns(RuntimeWarning, match="disagrees"):
        fast = path_patching.path_patch(model, clean, abc, r)
    _assert_matches(fast, path_patching.path_patch_reference(model, clean, abc, r))


@pytest.fixture(scope="module")
def gemma_like(tiny_gemma):
    """The random Gemma-3 of conftest (q/k norms, post-sublayer norms, sliding window, 4:1 heads) and prompts."""
    model, tok = tiny_gemma
    clean = data.make_ioi_dataset(tok, n=12, seed=0, prepend_bos=True)
    return model, tok, clean, data.make_abc_dataset(clean)


GEMMA_RECEIVERS = [scoring.LOGITS, scoring.Receivers(((3, 1),), "q", "END"), scoring.Receivers(((2, 0),), "kv", "S2"),
                   scoring.Receivers(((2, 3), (3, 0)), "v", "S2")]


@pytest.mark.parametrize("receivers", GEMMA_RECEIVERS, ids=["logits", "q-3.1-END", "kv-2.0-S2", "v-2.3+3.0-S2"])
def test_gemma_architecture_fast_equals_reference(gemma_like, receivers):
    """Gemma-3 norms each sublayer's output before adding it to the residual: the fast path's residual sweep
    applies those norms (without them it is off by ~0.8 here), and step 3 takes the generic hooked route
    (the windowed recompute does not model q/k norms)."""
    model, _, clean, abc = gemma_like
    assert not path_patching_window.windowed_supported(model)
    fast = path_patching.path_patch(model, clean, abc, receivers)
    ref = path_patching.path_patch_reference(model, clean, abc, receivers)
    assert ref.abs().max() > 1e-2
    _assert_matches(fast, ref)


SHARED_RECEIVERS = [scoring.LOGITS, scoring.Receivers(((1, 1),), "q", "END"), scoring.Receivers(((1, 0), (1, 2)), "kv", "S2"),
                    scoring.Receivers(((1, 3),), "k", "S1+1")]  # layer-1 receivers: every model here has >= 2 layers


@pytest.mark.parametrize("which", ["tiny", "tiny_llama", "gemma_like"])
def test_shared_forwards_give_the_same_numbers(which, request):
    """Reading the clean and corrupt activations from one pair of forwards (`path_patching.forwards`, what a
    discovery does for all its steps) gives exactly the per-prompt values of running them for each step."""
    model, _, clean, abc = request.getfixturevalue(which)
    fw = path_patching.forwards(model, clean, abc)
    for r in SHARED_RECEIVERS:
        own = path_patching.path_patch_prompts(model, clean, abc, r)
        shared = path_patching.path_patch_prompts(model, clean, abc, r, fw=fw)
        assert torch.equal(own.clean, shared.clean) and torch.equal(own.patched, shared.patched), r
        assert (own.patched != own.clean).any()
    with pytest.raises(ValueError, match="other datasets"):
        path_patching.path_patch_prompts(model, clean, clean, fw=fw)


def test_senders_subset_and_order(tiny):
    model, _, clean, abc = tiny
    full = path_patching.path_patch(model, clean, abc)
    some = path_patching.path_patch(model, clean, abc, senders=[(1, 3), (0, 2)])
    assert torch.allclose(some[1, 3], full[1, 3], atol=1e-6) and torch.allclose(some[0, 2], full[0, 2], atol=1e-6)
    assert (some != 0).sum() <= 2


def test_patching_clean_into_clean_changes_nothing(tiny):
    model, _, clean, _ = tiny
    assert path_patching.path_patch(model, clean, clean).abs().max() < 1e-5
    assert path_patching.path_patch(model, clean, clean, scoring.Receivers(((1, 0),), "kv", "S2")).abs().max() < 1e-5
    assert activation_patching.activation_patch_heads(model, clean, clean).abs().max() < 1e-5
    at_end = activation_patching.activation_patch_heads(model, clean, clean, "pattern", positions="END")
    assert at_end.abs().max() < 1e-5


def _plain_activation_patch(model, clean, corrupt, head, hook):
    """Relative logit-diff change with one head's z or pattern from corrupt: a single hooked forward."""
    l, h = head
    name = f"blocks.{l}.attn.hook_{hook}"
    _, cache = model.run_with_cache(corrupt.tokens, names_filter=lambda n: n == name)
    axis = 2 if hook == "z" else 1

    def fn(act, hook):
        act.select(axis, h).copy_(cache[name].select(axis, h))
        return act

    ld = lambda logits: (scoring.ld_from_logits(logits, clean).mean().item())  # noqa: E731
    base = ld(model(clean.tokens))
    return (ld(model.run_with_hooks(clean.tokens, fwd_hooks=[(name, fn)])) - base) / base


@pytest.mark.parametrize("hook", ["z", "pattern"])
def test_activation_patching_batched_equals_one_forward_per_head(tiny, hook):
    model, _, clean, abc = tiny
    got = activation_patching.activation_patch_heads(model, clean, abc, hook, batch_heads=3)
    for head in [(0, 1), (1, 2), (1, 3)]:
        assert got[head].item() == pytest.approx(_plain_activation_patch(model, clean, abc, head, hook), abs=1e-5)
    assert got.abs().max() > 1e-4


def test_activation_patching_at_one_position(tiny):
    model, _, clean, abc = tiny
    end = activation_patching.activation_patch_heads(model, clean, abc, "z", positions="END")
    s2 = activation_patching.activation_patch_heads(model, clean, abc, "z", positions="S2")
    assert end[1].abs().max() > 1e-4  # the last layer acts at END only ...
    assert s2[1].abs().max() < 1e-6  # ... so patching its output at S2 cannot reach the END logits


def test_template_means_average_within_templates(tiny):
    model, _, _, abc = tiny
    means = knockouts.template_means(model, abc, batch_size=5)
    _, cache = model.run_with_cache(abc.tokens, names_filter=lambda n: n == "blocks.1.attn.hook_z")
    z = cache["blocks.1.attn.hook_z"]
    for t in abc.template_ids.unique():
        rows = abc.template_ids == t
        torch.testing.assert_close(means[1][rows], z[rows].mean(0).expand_as(z[rows]))
    assert means[0].shape == (len(abc), abc.tokens.shape[1], model.cfg.n_heads, model.cfg.d_head)


def test_full_circuit_is_the_model_and_empty_circuit_is_not(tiny):
    model, _, clean, abc = tiny
    means = knockouts.template_means(model, abc)
    everything = {h: knockouts.ALL_POSITIONS for h in scoring.all_heads(model)}
    f_m = behaviour.evaluate(model, clean).logit_diff
    assert knockouts.circuit_logit_diff(model, clean, abc, everything, means) == pytest.approx(f_m, abs=1e-5)
    empty = knockouts.circuit_logit_diff(model, clean, abc, {}, means)
    assert abs(empty - f_m) > 0.1 * abs(f_m)
    one_out = {h: knockouts.ALL_POSITIONS for h in scoring.all_heads(model) if h != (1, 1)}
    assert abs(knockouts.circuit_logit_diff(model, clean, abc, one_out, means) - f_m) > 1e-6
    # means computed inside
    assert knockouts.circuit_logit_diff(model, clean, abc, {}) == pytest.approx(empty, abs=1e-6)


def test_knockout_keeps_only_the_named_positions(tiny):
    model, _, clean, abc = tiny
    everything = {h: knockouts.ALL_POSITIONS for h in scoring.all_heads(model)}
    at_end = {**everything, **{(1, h): ("END",) for h in range(model.cfg.n_heads)}}
    # the last layer only matters at END, so ablating it elsewhere leaves the logits unchanged
    torch.testing.assert_close(knockouts.run_with_circuit(model, clean, abc, at_end),
                               knockouts.run_with_circuit(model, clean, abc, everything))
    at_s2 = {**everything, **{(1, h): ("S2",) for h in range(model.cfg.n_heads)}}
    assert not torch.allclose(knockouts.run_with_circuit(model, clean, abc, at_s2),
                              knockouts.run_with_circuit(model, clean, abc, everything), atol=1e-4)


def test_cmap_of_a_model_with_itself_is_zero(tiny):
    model, _, clean, _ = tiny
    assert activation_patching.cmap(model, model, clean).abs().max() < 1e-5
    assert activation_patching.cmap(model, model, clean, "pattern").abs().max() < 1e-5


def test_cmap_moves_behaviour_between_models_that_differ_in_attention(tiny):
    model_x, _, clean, _ = tiny
    model_y = _scaled_attention(scale_v=True)  # same MLPs, embeddings and W_O; other q and v
    ld_x, ld_y = (behaviour.evaluate(m, clean).logit_diff for m in (model_x, model_y))
    assert abs(ld_x - ld_y) > 0.1 * abs(ld_x)
    heads = scoring.all_heads(model_x)
    assert activation_patching.cmap_group(model_x, model_y, clean, heads, "output") == pytest.approx(ld_x, rel=1e-4)
    assert (activation_patching.cmap_group(model_x, model_y, clean, heads, "pattern")
            != pytest.approx(ld_x, rel=1e-2))  # v differs
    per_head = activation_patching.cmap(model_x, model_y, clean, "output", batch_heads=3)
    for head in [(0, 0), (1, 3)]:
        assert per_head[head].item() == pytest.approx(
            activation_patching.cmap_group(model_x, model_y, clean, [head], "output") - ld_y, abs=1e-7)
    assert per_head.abs().max() > 0.01 * abs(ld_x)
    assert (activation_patching.cmap_group(model_y, model_x, clean, heads, "output")
            == pytest.approx(ld_y, rel=1e-4))  # other way


def test_pattern_cmap_moves_behaviour_when_only_queries_differ(tiny):
    model_x, _, clean, _ = tiny
    model_y = _scaled_attention(scale_v=False)
    ld_x, ld_y = (behaviour.evaluate(m, clean).logit_diff for m in (model_x, model_y))
    assert abs(ld_x - ld_y) > 0.1 * abs(ld_x)
    patched = activation_patching.cmap_group(model_x, model_y, clean, scoring.all_heads(model_x), "pattern")
    assert patched == pytest.approx(ld_x, rel=1e-4)


def test_head_receivers_ignore_later_senders(tiny):
    model, _, clean, abc = tiny
    out = path_patching.path_patch(model, clean, abc, scoring.Receivers(((0, 1),), "q", "END"))
    assert torch.equal(out, torch.zeros_like(out))


def test_bad_inputs_raise(tiny):
    model, tok, clean, abc = tiny
    with pytest.raises(ValueError, match="do not exist"):
        path_patching.path_patch(model, clean, abc, senders=[(2, 0)])
    with pytest.raises(ValueError, match="do not exist"):
        path_patching.path_patch(model, clean, abc, scoring.Receivers(((1, 4),)))
    with pytest.raises(ValueError, match="component"):
        path_patching.path_patch(model, clean, abc, scoring.Receivers(((1, 0),), "z"))
    with pytest.raises(ValueError, match="unknown position"):
        path_patching.path_patch(model, clean, abc, scoring.Receivers(((1, 0),), "q", "S3"))
    with pytest.raises(ValueError, match="differ in shape"):
        path_patching.path_patch(model, clean, abc[:6])
    with pytest.raises(ValueError, match="batch_heads"):
        path_patching.path_patch(model, clean, abc, scoring.Receivers(((1, 0),)), batch_heads=0)
    with pytest.raises(ValueError, match="unknown activation"):
        activation_patching.activation_patch_heads(model, clean, abc, "resid")
    with pytest.raises(ValueError, match="unknown position"):
        activation_patching.activation_patch_heads(model, clean, abc, positions="S3")
    with pytest.raises(ValueError, match="unknown position"):
        knockouts.circuit_logit_diff(model, clean, abc, {(0, 0): ("S3",)})
    with pytest.raises(ValueError, match="sequence of names"):
        knockouts.circuit_logit_diff(model, clean, abc, {(0, 0): "END"})
    with pytest.raises(ValueError, match="do not exist"):
        knockouts.circuit_logit_diff(model, clean, abc, {(5, 0): ("END",)})
    with pytest.raises(ValueError, match="CMAP kind"):
        activation_patching.cmap(model, model, clean, "z")
    shuffled = data.make_abc_dataset(clean)
    shuffled.template_ids = shuffled.template_ids.roll(1)
    with pytest.raises(ValueError, match="share templates"):
        knockouts.circuit_logit_diff(model, clean, shuffled, {})
    with pytest.raises(ValueError, match="means must be"):
        knockouts.circuit_logit_diff(model, clean, abc, {}, knockouts.template_means(model, abc[:6]))


@pytest.fixture(scope="module")
def smollm2():
    """The real SmolLM2-135M (30 layers, 9 query heads on 3 key/value heads, RoPE) on CPU."""
    return models.load_model("smollm2-135m", device="cpu")


@pytest.mark.slow
def test_smollm2_fast_equals_reference(smollm2):
    model, tok = smollm2
    clean = data.make_ioi_dataset(tok, n=8, seed=0, prepend_bos=model.prepend_bos)
    abc = data.make_abc_dataset(clean)
    senders = [(0, 3), (9, 0), (9, 8), (17, 4), (26, 1), (29, 5)]
    fast = path_patching.path_patch(model, clean, abc, senders=senders)
    ref = path_patching.path_patch_reference(model, clean, abc, senders=senders)
    torch.testing.assert_close(fast, ref, atol=ATOL, rtol=0)
    assert fast.abs().max() > 1e-3
    r = scoring.Receivers(((18, 2), (20, 7)), "q", "END")  # two receiver layers; (9, 8) and (17, 4) reach both
    senders = [(0, 3), (9, 8), (17, 4), (19, 0)]
    fast = path_patching.path_patch(model, clean, abc, r, senders=senders)
    ref = path_patching.path_patch_reference(model, clean, abc, r, senders=senders)
    torch.testing.assert_close(fast, ref, atol=ATOL, rtol=0)


SMOLLM2_WINDOW_CASES = [  # a receiver, and ten senders: some of its strongest (found on 12 prompts) and some weak ones
    (scoring.Receivers(((23, 3),), "q", "END"), [(0, 3), (5, 4), (9, 8), (17, 1), (18, 1), (19, 2), (20, 0), (21, 4),
                                                (22, 0), (22, 3)]),
    (scoring.Receivers(((20, 0),), "kv", "S2"), [(0, 3), (5, 4), (8, 1), (11, 6), (11, 8), (15, 7), (16, 2), (17, 4),
                                                (18, 0), (19, 7)]),
]


@pytest.mark.slow
@pytest.mark.parametrize("receivers,senders", SMOLLM2_WINDOW_CASES, ids=["q-23.3-END", "kv-20.0-S2"])
def test_smollm2_windowed_step3_equals_reference(smollm2, windowed_only, receivers, senders):
    model, tok = smollm2  # RoPE and grouped-query attention (a kv receiver is a key/value group of 3 query heads)
    clean = data.make_ioi_dataset(tok, n=12, seed=0, prepend_bos=model.prepend_bos)
    abc = data.make_abc_dataset(clean)
    fast = path_patching.path_patch(model, clean, abc, receivers, senders=senders)
    ref = path_patching.path_patch_reference(model, clean, abc, receivers, senders=senders)
    assert ref.abs().max() > 5e-3
    torch.testing.assert_close(fast, ref, rtol=0, atol=1e-3 * ref.abs().max().item())


@pytest.fixture(scope="module")
def gemma3():
    """The real Gemma-3-270M (base; 18 layers, 4 query heads on 1 key/value head, q/k norms, sliding window)."""
    try:
        return models.load_model("gemma3-270m", device="cpu")
    except models.ModelUnavailableError as e:
        pytest.skip(f"gemma3-270m is not installed: {e}")


@pytest.mark.slow
def test_gemma3_fast_equals_reference(gemma3):
    model, tok = gemma3  # 4 prompts and 4 senders per receiver keep the reference to ~20 forwards
    clean = data.make_ioi_dataset(tok, n=4, seed=0, prepend_bos=model.prepend_bos)
    abc = data.make_abc_dataset(clean)
    cases = [(scoring.LOGITS, [(0, 1), (11, 3), (12, 1), (15, 3)]),  # senders: strong ones (8 prompts) and a weak one
             (scoring.Receivers(((15, 3),), "q", "END"), [(3, 2), (10, 3), (12, 3), (13, 3)]),
             (scoring.Receivers(((11, 3),), "kv", "S2"), [(0, 1), (3, 3), (5, 2), (5, 3)])]
    for receivers, senders in cases:
        fast = path_patching.path_patch(model, clean, abc, receivers, senders=senders)
        ref = path_patching.path_patch_reference(model, clean, abc, receivers, senders=senders)
        assert ref.abs().max() > 1e-3, receivers  # a real effect to compare
        torch.testing.assert_close(fast, ref, atol=ATOL, rtol=0, msg=lambda m: f"{receivers}: {m}")


def test_hook_names():
    from ioi_utils.models import hook_names
    assert hook_names.z(3) == "blocks.3.attn.hook_z" and hook_names.resid(0, "mid") == "blocks.0.hook_resid_mid"
    with pytest.raises(ValueError, match="'pre', 'mid' or 'post'"):
        hook_names.resid(0, "end")
