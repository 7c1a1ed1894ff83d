"""Metrics on hand-made logits."""

import math

import pytest
import torch

from ioi_utils.prompts import data
from ioi_utils.measures import metrics
from ioi_utils import models


@pytest.fixture(scope="module")
def ds():
    return data.make_ioi_dataset(models.tiny_tokenizer(), n=4, seed=0)


def _end(ds, io_logit, s_logit):
    end = torch.zeros(len(ds), len(ds.tokenizer))
    end[torch.arange(len(ds)), ds.io_tokens] = torch.tensor(io_logit)
    end[torch.arange(len(ds)), ds.s_tokens] = torch.tensor(s_logit)
    return end


def test_logit_diff_and_accuracy(ds):
    end = _end(ds, [3.0, 1.0, 0.0, 2.0], [1.0, 2.0, 0.0, -1.0])
    assert torch.allclose(metrics.logit_diff(end, ds, per_prompt=True), torch.tensor([2.0, -1.0, 0.0, 3.0]))
    assert metrics.logit_diff(end, ds).item() == pytest.approx(1.0)
    assert metrics.accuracy(end, ds).item() == pytest.approx(0.5)


def test_end_logits_gathers_each_prompts_end(ds):
    logits = torch.randn(len(ds), ds.tokens.shape[1], 7)
    end = metrics.select_end_logits(logits, ds)
    for i, e in enumerate(ds.positions["END"]):
        assert torch.equal(end[i], logits[i, e])


def test_io_prob(ds):
    end = torch.full((len(ds), len(ds.tokenizer)), -1e9)
    end[torch.arange(len(ds)), ds.io_tokens] = 0.0
    end[torch.arange(len(ds)), ds.s_tokens] = 0.0
    assert metrics.io_prob(end, ds).item() == pytest.approx(0.5)


def test_faithfulness_definitions():
    assert metrics.faithfulness(3.1, 3.56) == pytest.approx(3.1 / 3.56)
    assert metrics.faithfulness(3.1, 3.56, kind="wang") == pytest.approx(1 - 0.46 / 3.56)
    assert metrics.faithfulness(-10.0, -11.0) == pytest.approx(10 / 11)  # corrupted model: sign-agnostic
    assert metrics.faithfulness(-12.0, -11.0, kind="wang") == pytest.approx(1 - 1 / 11)
    assert math.isnan(metrics.faithfulness(1.0, 0.0))
    with pytest.raises(ValueError, match="unknown faithfulness kind"):
        metrics.faithfulness(1.0, 1.0, kind="nope")


def test_bootstrap_ci_is_deterministic_and_brackets_the_mean():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(50, generator=g) + 3
    lo, hi = metrics.bootstrap_ci(x)
    assert lo < x.mean().item() < hi and (lo, hi) == metrics.bootstrap_ci(x)
    assert metrics.bootstrap_ci(x, seed=1) != (lo, hi)
    lo90, hi90 = metrics.bootstrap_ci(x, level=0.90)
    assert lo <= lo90 < hi90 <= hi  # a narrower level gives a narrower interval
    se = x.std().item() / math.sqrt(len(x))  # the normal interval agrees roughly
    assert lo == pytest.approx(x.mean().item() - 1.96 * se, abs=0.5 * se)
    assert metrics.bootstrap_ci(torch.full((10,), 2.0)) == (2.0, 2.0)


def test_bootstrap_ci_of_a_paired_ratio_resamples_pairs():
    den = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    lo, hi = metrics.bootstrap_ci((2 * den, den), metrics.ratio_of_means)
    assert lo == pytest.approx(2.0) and hi == pytest.approx(2.0)  # paired: every resample has ratio exactly 2
    lo, hi = metrics.bootstrap_ci((den.flip(0), den), metrics.ratio_of_means)
    assert lo < 1.0 < hi


def test_bootstrap_ci_rejects_bad_input():
    with pytest.raises(ValueError, match="paired"):
        metrics.bootstrap_ci((torch.ones(3), torch.ones(4)))
    with pytest.raises(ValueError, match="level"):
        metrics.bootstrap_ci(torch.ones(3), level=1.5)
