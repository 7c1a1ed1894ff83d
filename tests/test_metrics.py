"""Metrics on hand-made logits."""

import math

import pytest
import torch

from ioi_utils import data, metrics, models


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
    end = metrics.end_logits(logits, ds)
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
