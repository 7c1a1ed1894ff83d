"""Direct logit attribution, attention readouts, copy scores and MLP knockout."""

import pytest
import torch

from ioi_utils.mechanisms import attribution as A
from ioi_utils.prompts import data
from ioi_utils import models
from ioi_utils.measures import behaviour
from ioi_utils.mechanisms import knockouts, scoring


def _perturb(model, seed: int = 0) -> None:
    """Give the random tiny GPT-2 non-trivial norms, biases and scales (HF init has LN w=1, b=0, biases 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".ln_" in name or "ln_f" in name:
                p.add_(0.5 * torch.randn(p.shape, generator=g))
            elif ".attn.o." in name or "c_proj" in name:
                p.mul_(4).add_(0.3 * torch.randn(p.shape, generator=g) if name.endswith("bias") else 0)
            elif "wte" in name or "wpe" in name:
                p.mul_(10)


@pytest.fixture(scope="module")
def tiny():
    model, tok = models.load_model("tiny", device="cpu", seed=0)
    _perturb(model)
    return model, data.make_ioi_dataset(tok, n=12, seed=0, prepend_bos=model.prepend_bos)


@pytest.fixture(scope="module")
def tiny_cache(tiny):
    model, ds = tiny
    return A.run_cache(model, ds, batch_size=5)


def test_run_cache_matches_one_batch(tiny):
    model, ds = tiny
    _, full = model.run_with_cache(ds.tokens)
    got = A.run_cache(model, ds, names_filter=["blocks.1.attn.hook_z", "pos_embed.hook_in"], batch_size=5)
    assert set(got) == {"blocks.1.attn.hook_z", "pos_embed.hook_in"}
    torch.testing.assert_close(got["blocks.1.attn.hook_z"], full["blocks.1.attn.hook_z"], atol=1e-6, rtol=0)
    assert got["pos_embed.hook_in"].shape == full["pos_embed.hook_in"].shape  # batch-independent, not stacked
    with pytest.raises(ValueError, match="batch_size"):
        A.run_cache(model, ds, batch_size=0)


def test_dla_components_sum_to_logit_diff(tiny):
    model, ds = tiny
    att = A.logit_attribution(model, ds, batch_size=5)
    want = behaviour.evaluate(model, ds).per_prompt
    torch.testing.assert_close(att.total, want, atol=1e-4, rtol=0)
    # every kind of component carries weight here, so dropping or mis-scaling one would break closure
    for part in (att.embed, att.heads, att.attn_bias, att.mlp, att.bias):
        assert part.abs().mean() > 1e-2


def test_dla_sums_to_logit_diff_through_gemma_post_norms(tiny_gemma):
    """Gemma-3 norms the attention output before adding it (ln1_post) and applies 1 + weight in every norm:
    each head's share goes through ln1_post at its cached scale, or the components do not add up."""
    model, tok = tiny_gemma
    ds = data.make_ioi_dataset(tok, n=12, seed=0, prepend_bos=True)
    att = A.logit_attribution(model, ds, batch_size=5)
    torch.testing.assert_close(att.total, behaviour.evaluate(model, ds).per_prompt, atol=1e-4, rtol=0)
    assert att.heads.abs().mean() > 1e-2 and att.mlp.abs().mean() > 1e-2
    torch.testing.assert_close(A.final_norm(model).w, 1 + model.ln_final.w.detach().float(), atol=1e-6, rtol=0)


def test_final_norm_gain_is_the_stored_weight_where_the_model_applies_it(tiny):
    model, _ = tiny  # GPT-2's LayerNorm: gain w, bias b, read off exactly
    norm = A.final_norm(model)
    assert norm.center and torch.equal(norm.w, model.ln_final.w.detach())
    assert torch.equal(norm.b, model.ln_final.b.detach())


def test_head_dla_with_and_without_cache_agree(tiny, tiny_cache):
    model, ds = tiny
    per_prompt = A.head_dla_per_prompt(model, ds, cache=tiny_cache)
    assert per_prompt.shape == (len(ds), 2, 4)
    torch.testing.assert_close(A.head_dla(model, ds), per_prompt.mean(0), atol=1e-6, rtol=0)
    assert A.mlp_dla(model, ds, cache=tiny_cache).shape == (2,)
    with pytest.raises(ValueError, match="cache lacks"):
        A.head_dla(model, ds, cache={"blocks.0.attn.hook_z": tiny_cache["blocks.0.attn.hook_z"]})
    with pytest.raises(ValueError, match="token must be"):
        A.logit_attribution(model, ds, cache=tiny_cache, token="END")


def test_copy_scores_match_a_manual_projection(tiny, tiny_cache):
    model, ds = tiny
    layer, head = 1, 2
    rows, end = torch.arange(len(ds)), ds.positions["END"]
    with torch.no_grad():
        out = tiny_cache[f"blocks.{layer}.attn.hook_z"][rows, end, head] @ model.blocks[layer].attn.W_O[head]
        out = out - out.mean(-1, keepdim=True)  # LayerNorm centres ...
        out = out / tiny_cache["ln_final.hook_scale"][rows, end] * model.ln_final.w  # ... and scales (no bias)
        io = (out * model.W_U[:, ds.io_tokens].T).sum(-1).mean()
        s = (out * model.W_U[:, ds.s_tokens].T).sum(-1).mean()
    copy = A.copy_scores(model, ds, cache=tiny_cache)
    assert copy["IO"].shape == copy["S"].shape == (2, 4)
    torch.testing.assert_close(copy["IO"][layer, head], io, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(copy["S"][layer, head], s, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(copy["IO"] - copy["S"], A.head_dla(model, ds, cache=tiny_cache), atol=1e-5, rtol=0)


def test_attention_readouts_index_the_pattern(tiny, tiny_cache):
    model, ds = tiny
    pairs = {"prev": ("S1+1", "S1"), "dup": ("S2", "S1"), "ind": ("S2", "S1+1"), "end_io": ("END", "IO")}
    got = {
        "prev": A.previous_token_scores(model, ds, cache=tiny_cache),
        "dup": A.duplicate_token_scores(model, ds, cache=tiny_cache),
        "ind": A.induction_scores(model, ds, cache=tiny_cache),
        "end_io": A.attention_to(model, ds, "END", "IO"),  # computes its own cache
    }
    for key, (q, k) in pairs.items():
        want = torch.zeros(2, 4)
        for layer in range(2):
            pat = tiny_cache[f"blocks.{layer}.attn.hook_pattern"]
            for i in range(len(ds)):
                want[layer] += pat[i, :, ds.positions[q][i], ds.positions[k][i]] / len(ds)
        torch.testing.assert_close(got[key], want, atol=1e-6, rtol=0, msg=key)
    per = A.attention_to(model, ds, "END", "S2", cache=tiny_cache, per_prompt=True)
    assert per.shape == (len(ds), 2, 4) and (per >= 0).all() and (per <= 1).all()
    with pytest.raises(ValueError, match="unknown position"):
        A.attention_to(model, ds, "END", "S3", cache=tiny_cache)


def test_previous_token_over_all_positions(tiny, tiny_cache):
    model, ds = tiny
    got = A.previous_token_scores(model, ds, cache=tiny_cache, over="all")
    want = torch.zeros(2, 4)
    for layer in range(2):
        pat = tiny_cache[f"blocks.{layer}.attn.hook_pattern"]
        for i in range(len(ds)):
            e = int(ds.positions["END"][i])
            want[layer] += torch.stack([pat[i, :, q, q - 1] for q in range(1, e + 1)]).mean(0) / len(ds)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="over"):
        A.previous_token_scores(model, ds, cache=tiny_cache, over="S2")


def test_induction_scores_random_index_the_pattern(tiny):
    model, _ = tiny
    seq_len, n = 8, 3
    got = A.induction_scores_random(model, seq_len=seq_len, n=n, seed=5)
    g = torch.Generator().manual_seed(5)
    rand = torch.randint(0, model.cfg.d_vocab, (n, seq_len), generator=g)
    tokens = torch.cat([torch.full((n, 1), model.tokenizer.bos_token_id), rand, rand], 1)
    _, cache = model.run_with_cache(tokens)
    want = torch.zeros(2, 4)
    for layer in range(2):
        pat = cache[f"blocks.{layer}.attn.hook_pattern"]
        qs = range(1 + seq_len, 1 + 2 * seq_len)
        assert all(tokens[0, q] == tokens[0, q - seq_len] for q in qs)  # each query repeats a token ...
        want[layer] = torch.stack([pat[:, :, q, q - seq_len + 1] for q in qs]).mean((0, 1))  # ... and reads its successor
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="exceeds the context"):
        A.induction_scores_random(model, seq_len=40)


def test_ov_copy_scores_are_shares(tiny):
    model, ds = tiny
    scores = A.ov_copy_scores(model, ds, k=5)
    assert set(scores) == {"positive", "negative"}
    for v in scores.values():
        assert v.shape == (2, 4) and (v >= 0).all() and (v <= 1).all()
    everything = A.ov_copy_scores(model, ds, k=model.cfg.d_vocab)  # top-all: every name is in it
    assert (everything["positive"] == 1).all()
    scores, layer, head, rows = A.ov_copy_scores(model, ds, k=20), 1, 3, torch.arange(len(ds))
    _, cache = model.run_with_cache(ds.tokens)
    attn, names = model.blocks[layer].attn, torch.cat([ds.io_tokens, ds.s_tokens])
    with torch.no_grad():
        x = torch.cat([cache["blocks.0.hook_resid_post"][rows, ds.positions[p]] for p in ("IO", "S1")])
        o = (model.blocks[layer].ln1(x) @ attn.W_V[head] + attn.b_V[head]) @ attn.W_O[head]
        for key, sign in (("positive", 1), ("negative", -1)):
            top = (model.ln_final(sign * o) @ model.W_U + model.b_U).topk(20, -1).indices
            want = (top == names[:, None]).any(-1).float().mean()
            assert scores[key][layer, head] == want > 0, key  # both non-trivial for this head and seed


def test_mlp_knockout_with_own_means_is_the_clean_run(tiny):
    model, ds = tiny
    one_per_template = ds[sorted({int(t): i for i, t in reversed(list(enumerate(ds.template_ids)))}.values())]
    full = scoring.full_logit_diff(model, one_per_template)
    same = knockouts.mlp_knockout(model, one_per_template, one_per_template)  # each template's mean: the prompt itself
    torch.testing.assert_close(same, torch.full((2,), full), atol=1e-5, rtol=0)


def test_mlp_knockout_matches_a_manual_hook(tiny):
    model, ds = tiny
    abc = data.make_abc_dataset(ds)
    got = knockouts.mlp_knockout(model, ds, abc, batch_size=5)
    assert got.shape == (2,)
    layer = 1
    _, cache = model.run_with_cache(abc.tokens)
    act = cache[f"blocks.{layer}.hook_mlp_out"]
    mean = torch.stack([act[abc.template_ids == t].mean(0) for t in ds.template_ids])  # [b, s, d]
    logits = model.run_with_hooks(ds.tokens, fwd_hooks=[(f"blocks.{layer}.hook_mlp_out", lambda a, hook: mean)])
    end = logits[torch.arange(len(ds)), ds.positions["END"]]
    want = (end[torch.arange(len(ds)), ds.io_tokens] - end[torch.arange(len(ds)), ds.s_tokens]).mean()
    torch.testing.assert_close(got[layer], want.detach(), atol=1e-5, rtol=0)
    assert (got - scoring.full_logit_diff(model, ds)).abs().max() > 1e-4  # ablating does something here


def test_mlp_knockout_needs_every_template(tiny):
    model, ds = tiny
    other = ds[[i for i in range(len(ds)) if ds.template_ids[i] != ds.template_ids[0]]]
    with pytest.raises(ValueError, match="lacks some templates"):
        knockouts.mlp_knockout(model, ds, other)


@pytest.mark.slow
def test_dla_closure_on_smollm2():
    model, tok = models.load_model("smollm2-135m", device="cpu")
    ds = data.make_ioi_dataset(tok, n=10, seed=0, prepend_bos=model.prepend_bos)
    att = A.logit_attribution(model, ds, batch_size=5)
    assert att.heads.shape == (10, 30, 9) and (att.attn_bias == 0).all()  # GQA: W_O per query head; no b_O
    torch.testing.assert_close(att.total, behaviour.evaluate(model, ds).per_prompt, atol=1e-3, rtol=0)
    copy = A.copy_scores(model, ds)
    torch.testing.assert_close(copy["IO"] - copy["S"], att.heads.mean(0), atol=1e-4, rtol=0)
    assert A.induction_scores_random(model, seq_len=20, n=2).shape == (30, 9)
    assert A.ov_copy_scores(model, ds[:4])["positive"].shape == (30, 9)
