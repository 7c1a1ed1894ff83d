"""Training seeds and units: the two-level bootstrap over seeds and prompts, and steps / samples / paper epochs."""

from __future__ import annotations

import pytest
import torch

from ioi_utils.measures import metrics
from ioi_utils.study import seeds
from ioi_utils.finetuning.run_spec import TrainConfig


def test_units_count_steps_samples_and_paper_epochs():
    cfg = TrainConfig(model="tiny", n_train=330, batch_size=16, epochs=3)
    u = seeds.units(cfg)
    assert (u.epochs, u.steps, u.samples) == (3, 3 * 21, 990)  # 330 / 16 = 20.6: 21 steps, the last one smaller
    assert u.paper_epochs == pytest.approx(990 / 6360)
    assert seeds.units(cfg, 0).steps == 0 and seeds.units(cfg, 1).samples == 330
    assert "63 optimizer steps" in str(u) and "0.156 paper epochs" in str(u)
    with pytest.raises(ValueError, match="epochs must be >= 0"):
        seeds.units(cfg, -1)


def test_seeded_keeps_the_data_split_and_check_seeds_says_what_is_wrong():
    cfg = TrainConfig(model="tiny", seed=0, data_seed=7)
    other = seeds.seeded(cfg, 2)
    assert (other.seed, other.data_seed) == (2, 7) and seeds.seeded(other, 0) == cfg
    assert seeds.check_seeds((0, 1, 2)) == [0, 1, 2]
    for bad in ([], [1, 1]):
        with pytest.raises(ValueError, match="distinct integers"):
            seeds.check_seeds(bad)


def test_one_seed_is_the_prompt_bootstrap():
    x = torch.randn(50, generator=torch.Generator().manual_seed(0)) + 1
    est = seeds.across_seeds({0: x}, n_boot=4000)
    lo, hi = metrics.bootstrap_ci(x, n_boot=4000)
    assert est.mean == pytest.approx(x.mean().item()) and est.per_seed == {0: pytest.approx(x.mean().item())}
    assert est.interval[0] == pytest.approx(lo, abs=0.03) and est.interval[1] == pytest.approx(hi, abs=0.03)


def test_seed_spread_widens_the_interval_beyond_prompt_noise():
    g = torch.Generator().manual_seed(1)
    noise = lambda: 0.1 * torch.randn(200, generator=g)  # noqa: E731
    same = seeds.across_seeds({s: 1.0 + noise() for s in range(3)})
    spread = seeds.across_seeds({0: 0.0 + noise(), 1: 1.0 + noise(), 2: 2.0 + noise()})
    assert same.interval[1] - same.interval[0] < 0.05  # prompts only: +-2 sd / sqrt(600)
    assert spread.mean == pytest.approx(1.0, abs=0.03)
    assert spread.interval[0] < 0.5 and spread.interval[1] > 1.5  # which run the optimizer took dominates
    assert spread.per_seed[0] == pytest.approx(0.0, abs=0.05) and spread.per_seed[2] == pytest.approx(2.0, abs=0.05)


def test_paired_statistic_resamples_the_same_prompts():
    g = torch.Generator().manual_seed(2)
    before = {s: torch.randn(100, generator=g) * 3 for s in range(3)}
    after = {s: before[s] + 1.0 for s in range(3)}  # every prompt gains exactly 1
    est = seeds.across_seeds({s: (after[s], before[s]) for s in range(3)}, stat=lambda a, b: (a - b).mean(-1))
    assert est.mean == pytest.approx(1.0) and est.interval == pytest.approx((1.0, 1.0))  # unpaired would be wide
    ratio = seeds.across_seeds({s: (after[s] + 5, before[s] + 5) for s in range(3)}, stat=metrics.ratio_of_means)
    assert ratio.mean == pytest.approx(sum((after[s].mean() + 5) / (before[s].mean() + 5) for s in range(3)).item() / 3)
    share = seeds.share_across_seeds({s: (after[s] + 5, before[s] + 5) for s in range(3)})
    assert (share.mean, share.interval, share.per_seed) == (ratio.mean, ratio.interval, ratio.per_seed)


def test_bad_input_is_one_line():
    with pytest.raises(ValueError, match="at least one seed"):
        seeds.across_seeds({})
    with pytest.raises(ValueError, match="seed 3: need paired 1-d tensors"):
        seeds.across_seeds({3: torch.ones(1)})
    with pytest.raises(ValueError, match="level"):
        seeds.across_seeds({0: torch.ones(5)}, level=1.5)
