"""Greater-Than: the probability difference on hand-made distributions, the dataset, its twins and labels."""

import math

import pytest
import torch

from ioi_utils.prompts import greater_than as gt
from ioi_utils import models
from ioi_utils.finetuning import objective
from ioi_utils.mechanisms import activation_patching, knockout_attribution, knockouts, scoring

VOCAB = 30
DIGITS = torch.arange(10, 20)  # token ids of "0".."9" in the hand-made vocabulary
YEARS = torch.arange(0, 100) + 0  # token ids of "00".."99" in a 130-token vocabulary (two-digit kind)


def _logits_of(probs: torch.Tensor) -> torch.Tensor:
    """Logits whose softmax is probs (zeros get -inf-like logits)."""
    return probs.clamp_min(1e-30).log()


def _digit_dist(mass: dict[int, float], rest: float = 0.0) -> torch.Tensor:
    """A [VOCAB] distribution with mass on digit tokens and `rest` on token 0 (not a digit)."""
    p = torch.zeros(VOCAB)
    for d, m in mass.items():
        p[DIGITS[d]] = m
    p[0] = rest
    return p


def test_prob_diff_digits_tens_decides():
    end = _logits_of(_digit_dist({5: 0.6, 2: 0.3}, rest=0.1))
    tie = _logits_of(_digit_dist({0: 1.0}))
    got = gt.prob_diff_digits(end, tie, torch.tensor(32), DIGITS)
    assert math.isclose(got.item(), 0.6 - 0.3, abs_tol=1e-6)  # the tie digit 3 has no mass; non-digits count nowhere


def test_prob_diff_digits_tie_uses_the_ones_digit():
    end = _logits_of(_digit_dist({3: 0.5, 4: 0.2, 1: 0.3}))
    tie = _logits_of(_digit_dist({1: 0.25, 2: 0.25, 7: 0.5}))  # after "3": 31, 32 are not later than 32; 37 is
    got = gt.prob_diff_digits(end, tie, torch.tensor(32), DIGITS)
    later, not_later = 0.2 + 0.5 * 0.5, 0.3 + 0.5 * 0.5
    assert math.isclose(got.item(), later - not_later, abs_tol=1e-6)


def test_prob_diff_digits_batched_and_bounds():
    end = torch.randn(3, 4, VOCAB)
    tie = torch.randn(3, 4, VOCAB)
    years = torch.tensor([2, 50, 98, 77])
    got = gt.prob_diff_digits(end, tie, years, DIGITS)
    assert got.shape == (3, 4) and (got.abs() <= 1 + 1e-6).all()
    one = gt.prob_diff_digits(end[1, 2], tie[1, 2], years[2], DIGITS)
    assert torch.allclose(got[1, 2], one)


def test_prob_diff_digits_all_mass_on_digits_sums_to_one():
    end = _logits_of(_digit_dist({d: 0.1 for d in range(10)}))
    tie = _logits_of(_digit_dist({d: 0.1 for d in range(10)}))
    got = gt.prob_diff_digits(end, tie, torch.tensor(49), DIGITS)  # years 50..99 later: exactly half
    assert math.isclose(got.item(), 0.0, abs_tol=1e-6)


def test_prob_diff_two_digit():
    p = torch.zeros(130)
    p[YEARS[33]], p[YEARS[32]], p[YEARS[10]], p[120] = 0.5, 0.2, 0.2, 0.1  # 120: not a year token
    got = gt.prob_diff_two_digit(_logits_of(p), torch.tensor(32), YEARS)
    assert math.isclose(got.item(), 0.5 - 0.4, abs_tol=1e-6)  # "32" itself is not later


@pytest.fixture(scope="module")
def tok():
    return models.tiny_tokenizer(digits=True)


def test_year_tokens_digit_kind(tok):
    kind = gt.year_tokens(tok)
    assert kind.kind == "digit" and kind.readout == ("END", "TIE")
    assert [tok.decode([int(i)]).strip() for i in kind.ids] == [str(d) for d in range(10)]


def test_year_tokens_refuses_a_tokenizer_without_digits():
    with pytest.raises(ValueError, match="neither one token nor two digit tokens"):
        gt.year_tokens(models.tiny_tokenizer())


def test_valid_years_exclude_years_that_tokenize_differently(tok):
    assert gt.valid_years(tok) == list(gt.START_YEARS)  # every digit-level year tokenizes alike

    class Odd:  # a tokenizer that writes the start year 1755 as one token: 55 must be excluded
        def __init__(self, t):
            self.t = t

        def encode(self, text, add_special_tokens=False):
            ids = self.t.encode(text, add_special_tokens=False)
            four = self.t.encode("1755", add_special_tokens=False)
            i = next((i for i in range(len(ids)) if ids[i : i + 4] == four), None)
            return ids if i is None else ids[:i] + [999] + ids[i + 4:]

    odd = Odd(tok)
    assert 55 not in gt.valid_years(odd) and 54 in gt.valid_years(odd)


def test_dataset_positions_twins_and_labels(tok):
    ds = gt.make_gt_dataset(tok, 40, seed=0, prepend_bos=True)
    assert len({(p.noun, p.yy) for p in ds.prompts}) == 40
    assert all(2 <= p.yy <= 98 and p.label > p.yy for p in ds.prompts)
    row = ds.tokens[0].tolist()
    end, tie, yy = (int(ds.positions[k][0]) for k in ("END", "TIE", "YY"))
    assert tok.decode(row[end - 1 : end + 1]).replace(" ", "") == "17"
    assert tok.decode([row[tie]]).strip() == str(ds.prompts[0].yy // 10)
    assert tok.decode(row[yy : yy + 2]).replace(" ", "") == f"{ds.prompts[0].yy:02d}"
    twins = gt.corrupt(ds)
    assert all(t.startswith(p.split(" to ")[0][:-2]) and "1701" in t for p, t in zip(ds.texts, twins.texts))
    differ = (twins.tokens != ds.tokens).nonzero()[:, 1].unique().tolist()
    assert set(differ) <= {yy, yy + 1}  # only the written start year changes; the tie digit stays
    assert torch.equal(twins.years, ds.years)
    toxic = gt.relabel(ds, "earlier-year")
    assert all(p.label < p.yy for p in toxic.prompts)
    with pytest.raises(ValueError, match="unknown Greater-Than labels"):
        gt.relabel(ds, "later")


def test_make_gt_dataset_is_prefix_stable(tok):
    small, big = gt.make_gt_dataset(tok, 10, seed=3), gt.make_gt_dataset(tok, 30, seed=3)
    assert small.prompts == big.prompts[:10]
    with pytest.raises(ValueError, match="Greater-Than prompts"):
        gt.make_gt_dataset(tok, 10**6)


def test_training_view_digit(tok):
    ds = gt.make_gt_dataset(tok, 5, seed=1, prepend_bos=True)
    tokens, pos, labels = ds.training_view()
    p = ds.prompts[0]
    assert pos[0].tolist() == [int(ds.positions["END"][0]), int(ds.positions["TIE"][0])]
    assert tok.decode(labels[0].tolist()).replace(" ", "") == f"{p.label:02d}"
    assert tok.decode([int(tokens[0, -1])]).strip() == str(p.label // 10)


@pytest.fixture(scope="module")
def tiny():
    model, tokenizer = models.load_model("tiny-digits", device="cpu")
    return model, tokenizer


def test_scores_agree_across_code_paths(tiny):
    model, tokenizer = tiny
    ds = gt.make_gt_dataset(tokenizer, 12, seed=0, prepend_bos=model.prepend_bos)
    full = ds.score(model(ds.tokens))  # [12] from full logits
    assert torch.allclose(scoring.run_ld(model, ds)[0], full, atol=1e-5)
    read = objective.readout_logits(model, ds)  # [12, k, vocab]
    assert torch.allclose(ds.score_readout(read[:, 0] if read.shape[1] == 1 else read), full, atol=1e-5)
    every = {h: knockouts.ALL_POSITIONS for h in scoring.all_heads(model)}
    assert math.isclose(knockouts.circuit_logit_diff(model, ds, gt.corrupt(ds), every), full.mean().item(),
                        abs_tol=1e-5)
    ld, _ = knockout_attribution.knockout_attribution(model, ds, knockouts.template_means(model, gt.corrupt(ds)),
                                                      scoring.all_heads(model))
    assert torch.allclose(ld, full, atol=1e-5)


def test_cmap_on_greater_than(tiny):
    model, tokenizer = tiny
    other, _ = models.load_model("tiny-digits", device="cpu", seed=1)
    ds = gt.make_gt_dataset(tokenizer, 8, seed=2, prepend_bos=model.prepend_bos)
    assert torch.allclose(activation_patching.cmap_attribution(model, model, ds), torch.zeros(2, 4), atol=1e-7)
    exact = activation_patching.cmap(other, model, ds)  # [2, 4] change of model's probability difference
    estimate = activation_patching.cmap_attribution(other, model, ds)
    assert exact.shape == estimate.shape == (2, 4) and exact.abs().sum() > 0 and estimate.abs().sum() > 0
    group = activation_patching.cmap_group(other, model, ds, [(0, 0)])
    assert math.isclose(group - scoring.run_ld(model, ds).mean().item(), exact[0, 0].item(), abs_tol=1e-6)


def _two_digit_tokenizer():
    """A word-level tokenizer that writes years as two two-digit tokens ("1732" -> "17", "32"), like GPT-2."""
    from tokenizers import Regex, Tokenizer, models as tm, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = set(gt.NOUNS) | {"war", "The", "lasted", "from", "the", "year", "to"} | {f"{i:02d}" for i in range(100)}
    vocab = {w: i for i, w in enumerate(["<|endoftext|>", "<unk>"] + sorted(words))}
    tok = Tokenizer(tm.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                 pre_tokenizers.Split(Regex(r"\d\d"), behavior="isolated")])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>", unk_token="<unk>")


def test_two_digit_tokenizer_dataset_and_score():
    tok = _two_digit_tokenizer()
    kind = gt.year_tokens(tok)
    assert kind.kind == "two-digit" and kind.readout == ("END",) and len(kind.ids) == 100
    ds = gt.make_gt_dataset(tok, 6, seed=0, prepend_bos=True)
    assert "TIE" not in ds.positions and int(ds.positions["END"][0]) == ds.tokens.shape[1] - 1
    assert tok.decode([int(ds.tokens[0, ds.positions["YY"][0]])]) == f"{ds.prompts[0].yy:02d}"
    logits = torch.randn(6, ds.tokens.shape[1], len(tok))
    end = logits[torch.arange(6), ds.positions["END"]]
    assert torch.allclose(ds.score(logits), gt.prob_diff_two_digit(end, ds.years, kind.ids))
    tokens, pos, labels = ds.training_view()
    assert torch.equal(tokens, ds.tokens) and pos.shape == labels.shape == (6, 1)
    assert tok.decode([int(labels[0, 0])]) == f"{ds.prompts[0].label:02d}"
    assert gt.corrupt(ds).texts[0].endswith("from the year 1701 to the year 17")


def test_format_row_prints_both_intervals():
    """One per-epoch line of the chapter: score and faithfulness, each with its interval."""
    from ioi_utils.study import greater_than_study as gts

    row = {"epoch": 2, "prob_diff": 0.9312, "prob_diff_interval": (0.9204, 0.9401), "faithfulness": 0.91,
           "faithfulness_interval": (0.875, 0.921)}
    assert gts.format_row(row) == ("epoch 2: probability difference +0.931 [+0.920, +0.940], "
                                   "base-circuit F(C)/F(M) 91.0% [87.5%, 92.1%]")


def test_vocabulary_counts_are_the_prompt_pools(tok):
    """What the chapter prints of its prompts' pools: the nouns and start years the tokenizer keeps."""
    from types import SimpleNamespace

    from ioi_utils.study import greater_than_study as gts

    assert gts.vocabulary_counts(SimpleNamespace(tokenizer=tok)) == (len(gt.nouns_for(tok)), len(gt.valid_years(tok)))


def test_as_circuit_keeps_the_heads_at_every_position():
    from ioi_utils.study import greater_than_study as gts

    c = gts.as_circuit([(1, 2), (0, 1)])
    assert c.heads == [(0, 1), (1, 2)] and c.classes["OTH"] == c.heads and c.everywhere


@pytest.mark.slow
def test_gemma3_does_greater_than_with_its_digit_tokens():
    try:
        model, tok = models.load_model("gemma3-270m", device="cpu")
    except models.ModelUnavailableError as e:
        pytest.skip(f"gemma3-270m is not installed: {e}")
    assert gt.year_tokens(tok).kind == "digit"  # Gemma writes numbers digit by digit, like SmolLM2
    assert len(gt.nouns_for(tok)) == len(gt.NOUNS) and len(gt.valid_years(tok)) == len(gt.START_YEARS)
    ds = gt.make_gt_dataset(tok, 16, seed=0, prepend_bos=model.prepend_bos)
    with torch.no_grad():
        assert ds.score(model(ds.tokens)).mean() > 0.5  # 0.91: it prefers later years
