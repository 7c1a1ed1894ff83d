"""Training seeds and units of training: a fine-tuning result as a mean over independent runs, in the paper's units.

One fine-tuning run is one draw. Its training seed fixes the order in which the prompts are shuffled into
batches (and anything else torch draws), while the data split stays fixed (``data_seed``): two runs that
differ only in the training seed see the same prompts, in another order, and end in different models. A
headline number of the book (the gain of clean fine-tuning, the logit difference after Subject Duplication,
what retraining recovers) is therefore measured once per training seed and reported as

* each seed's value, on the same held-out prompts;
* their mean, with a 95% interval from a **two-level bootstrap**: draw as many seeds as there are, with
  replacement, then, within each drawn seed, the held-out prompts with replacement (paired quantities, such as a
  model minus the base model, resample the same prompts in both); the statistic of the resample is the mean over
  the drawn seeds of each seed's statistic. The interval covers both sources of chance the book can control:
  which prompts were held out and which run the optimizer happened to take. With three seeds the seed level is
  coarse (a resample can repeat one seed three times), which is the honest width of three runs.

Units. The paper trains on 6,360 prompts per epoch (`PAPER_EPOCH_SAMPLES`): its "epoch" is an amount of
training, not a number of passes over our smaller pool. `units` states what a run did in optimizer steps,
samples seen and paper epochs (samples / 6,360), so a number of ours is put beside the paper's at the same
amount of training, or with the distance between them said.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch
from jaxtyping import Float

from ioi_utils.finetuning.run_spec import TrainConfig
from ioi_utils.measures import metrics

PAPER_EPOCH_SAMPLES = 6360  # the paper's training set (its summary: 6,360 prompts, 15 templates)


@dataclass(frozen=True)
class Units:
    """How much training a run did: epochs over its own pool, optimizer steps and samples seen."""

    epochs: int
    steps: int
    samples: int

    @property
    def paper_epochs(self) -> float:
        """Samples seen as a share of the paper's epoch (6,360 prompts)."""
        return self.samples / PAPER_EPOCH_SAMPLES

    def __str__(self) -> str:
        return (f"{self.epochs} epoch{'s' * (self.epochs != 1)} = {self.steps} optimizer steps = {self.samples:,} "
                f"samples = {self.paper_epochs:.3f} paper epochs")


def units(config: TrainConfig, epochs: int | None = None) -> Units:
    """The units of `epochs` (default: the config's) epochs of a run: each epoch is ceil(n_train / batch_size)
    optimizer steps over all n_train prompts (the last batch may be smaller; objective.DeviceData.batches)."""
    e = config.epochs if epochs is None else int(epochs)
    if e < 0:
        raise ValueError(f"epochs must be >= 0, got {e}")
    return Units(e, e * -(-config.n_train // config.batch_size), e * config.n_train)


def seeded(config: TrainConfig, seed: int) -> TrainConfig:
    """The same run with another training seed (same data split: data_seed is kept)."""
    return dataclasses.replace(config, seed=int(seed))


def check_seeds(seeds: Sequence[int]) -> list[int]:
    """A non-empty list of distinct training seeds, or a one-line ValueError."""
    out = [int(s) for s in seeds]
    if not out or len(set(out)) != len(out):
        raise ValueError(f"training seeds must be a non-empty list of distinct integers, got {list(seeds)}")
    return out


@dataclass(frozen=True)
class SeedEstimate:
    """A headline number over training seeds: the mean of the seeds' values, its two-level bootstrap
    interval, and each seed's own value."""

    mean: float
    interval: tuple[float, float]
    per_seed: dict[int, float]

    def __str__(self) -> str:
        each = ", ".join(f"seed {s}: {v:.3g}" for s, v in self.per_seed.items())
        n = len(self.per_seed)
        return f"{self.mean:.3g} [{self.interval[0]:.3g}, {self.interval[1]:.3g}] over {n} seed{'s' * (n != 1)} ({each})"


def _mean(*values: torch.Tensor) -> torch.Tensor:
    """Mean of the first tensor along its last axis (the default statistic)."""
    return values[0].mean(-1)


def relative_change(after: Float[torch.Tensor, "*lead n"],
                    before: Float[torch.Tensor, "*lead n"]) -> Float[torch.Tensor, "*lead"]:
    """(mean after - mean before) / mean before along the last axis: a paired relative gain ([..., n] -> [...])."""
    return (after.mean(-1) - before.mean(-1)) / before.mean(-1)


def share_across_seeds(per_seed: Mapping[int, tuple[Float[torch.Tensor, "n"], Float[torch.Tensor, "n"]]],
                       **bootstrap) -> SeedEstimate:
    """`across_seeds` of mean(first) / mean(second) (`metrics.ratio_of_means`): per training seed, a model's
    per-prompt values and a reference's on the same prompts (what retraining recovers of its control)."""
    return across_seeds(per_seed, stat=metrics.ratio_of_means, **bootstrap)


def across_seeds(per_seed: Mapping[int, Float[torch.Tensor, "n"] | tuple[Float[torch.Tensor, "n"], ...]],
                 stat: Callable[..., Float[torch.Tensor, "n_boot"]] = _mean, n_boot: int = 2000, level: float = 0.95,
                 seed: int = 0) -> SeedEstimate:
    """Mean over training seeds of a per-seed statistic, with its two-level bootstrap interval (module docstring).

    per_seed: training seed -> that seed's per-prompt values, one [n] tensor or a tuple of paired [n] tensors
    (the same held-out prompts in each); stat maps resampled tensors [n_boot, n] each to [n_boot], along the last
    axis, as metrics.bootstrap_ci's does (default: the mean of the first tensor).
    """
    if not per_seed:
        raise ValueError("across_seeds needs at least one seed")
    if not 0 < level < 1 or n_boot < 1:
        raise ValueError(f"need 0 < level < 1 and n_boot >= 1, got level={level}, n_boot={n_boot}")
    g = torch.Generator().manual_seed(seed)
    names = list(per_seed)
    point, boot = [], []  # per seed: its statistic, and its statistic on n_boot prompt resamples
    for name in names:
        vals = per_seed[name]
        vals = tuple(v.detach().double().cpu() for v in ((vals,) if torch.is_tensor(vals) else vals))
        n = len(vals[0])
        if n < 2 or any(v.ndim != 1 or len(v) != n for v in vals):
            raise ValueError(f"seed {name}: need paired 1-d tensors of one length >= 2, got "
                             f"{[tuple(v.shape) for v in vals]}")
        point.append(float(stat(*(v[None] for v in vals))[0]))
        idx = torch.randint(0, n, (n_boot, n), generator=g)  # [n_boot, n]
        boot.append(stat(*(v[idx] for v in vals)).flatten())  # [n_boot]
    table = torch.stack(boot)  # [n_seeds, n_boot]
    pick = torch.randint(0, len(names), (n_boot, len(names)), generator=g)  # [n_boot, n_seeds]: seeds drawn
    stats = table[pick, torch.arange(n_boot)[:, None]].mean(1)  # [n_boot]
    alpha = (1 - level) / 2
    lo, hi = torch.quantile(stats, torch.tensor([alpha, 1 - alpha], dtype=stats.dtype)).tolist()
    return SeedEstimate(sum(point) / len(point), (lo, hi), dict(zip(names, point)))
