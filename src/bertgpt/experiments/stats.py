"""The statistics of a comparison: how sure an accuracy is, and whether two arms really differ.

Two sources of noise move a fine-tuned accuracy: which held-out reviews were drawn (items) and the run's own
randomness (the seed: head init, dropout, batch order). An arm is an array of per-item correctness, shape
(seeds, items), one row per seed, every row over the same held-out items.

- `t_interval`: the mean of a few per-seed figures with Student's t interval (seeds as the only noise).
- `bootstrap_accuracy`: the accuracy's interval from resampling the items, and the seeds when there are several.
- `paired_bootstrap`: the difference A - B. The items are resampled jointly for both arms (paired: a hard review
  is hard for both, so the gap's noise is smaller than either accuracy's), the seeds within each arm.
- Both bootstraps take `groups`: items that belong together (the words of one POS sentence) are drawn as a whole.

Every bootstrap draws from `numpy.random.default_rng(seed)`: the same inputs and seed give the same numbers.
Intervals are percentile intervals of `resamples` draws.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from bertgpt.errors import UserError

RESAMPLES = 10_000
CHUNK = 500  # resamples drawn at once: (CHUNK, items) weights stay a few MB for 2,500 reviews


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float

    def __contains__(self, value: float) -> bool:
        return self.low <= value <= self.high


@dataclass(frozen=True)
class Difference(Interval):
    """A - B with its interval, and what it says: "A better", "B better" or "no difference found"."""

    verdict: str


def t_interval(values, confidence: float = 0.95) -> Interval:
    """Mean of `values` (one figure per seed) ± t(confidence, n-1) · s / √n."""
    # Student's t quantile from scipy.special: scipy.stats takes seconds to import.
    from scipy.special import stdtrit

    x = np.asarray(values, dtype=float).ravel()
    if len(x) < 2:
        raise UserError(f"an interval over seeds needs at least 2 values, got {len(x)}: run more seeds.")
    half = stdtrit(len(x) - 1, 0.5 + confidence / 2) * x.std(ddof=1) / math.sqrt(len(x))
    return Interval(float(x.mean()), float(x.mean() - half), float(x.mean() + half))


def as_runs(correct, name: str = "correct") -> np.ndarray:
    """Per-item correctness as (seeds, items) floats: a 1-D array is one seed."""
    x = np.asarray(correct, dtype=float)
    x = x[None, :] if x.ndim == 1 else x
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise UserError(f"{name} has shape {np.shape(correct)}: expected (items,) or (seeds, items) with at least one item.")
    return x


def as_groups(groups, items: int) -> np.ndarray | None:
    """The sizes of consecutive groups of items (a sentence's words), checked to cover the items exactly."""
    if groups is None:
        return None
    sizes = np.asarray(groups, dtype=int)
    if sizes.ndim != 1 or (sizes < 0).any() or sizes.sum() != items:
        raise UserError(f"groups cover {int(sizes.sum())} items in {len(sizes)} groups, but there are {items} items: each group is a run of "
                        "consecutive items (a sentence's words), every item in one.")
    return sizes[sizes > 0]  # a group with no items (a sentence with no labelled word) weighs nothing in any draw


def resampled_means(arms: list[np.ndarray], resamples: int, seed: int, groups=None) -> np.ndarray:
    """(resamples, len(arms)): each arm's mean correctness under one draw of the items (shared by all arms, so
    paired) and of each arm's own seeds. A draw is held as how often it took each item (or seed), so that a
    resample is a weighted mean: one matmul per chunk instead of a gather per resample.

    With `groups` (the sizes of consecutive runs of items: the words of each sentence) whole groups are drawn, and
    the accuracy of a draw is its correct items over its items: words of one sentence share its difficulty, so
    drawing them one by one would make the interval too narrow."""
    rng = np.random.default_rng(seed)
    items = arms[0].shape[1]
    sizes = as_groups(groups, items)
    out = np.empty((resamples, len(arms)))
    for start in range(0, resamples, CHUNK):
        n = min(CHUNK, resamples - start)
        if sizes is None:
            item_weights = draw_counts(rng, n, items) / items  # (n, items)
        else:
            item_weights = np.repeat(draw_counts(rng, n, len(sizes)), sizes, axis=1)  # each item weighted as often as its group was drawn
            item_weights /= item_weights.sum(axis=1, keepdims=True)
        for j, runs in enumerate(arms):
            per_seed = item_weights @ runs.T  # (n, seeds): each seed's accuracy on the drawn items
            seed_weights = draw_counts(rng, n, len(runs)) / len(runs) if len(runs) > 1 else np.ones((n, 1))
            out[start : start + n, j] = (per_seed * seed_weights).sum(axis=1)
    return out


def draw_counts(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """(n, size): for each of n draws of `size` indices with replacement, how often each index was drawn."""
    picks = rng.integers(0, size, (n, size)) + size * np.arange(n)[:, None]
    return np.bincount(picks.ravel(), minlength=n * size).reshape(n, size).astype(float)


def percentiles(draws: np.ndarray, confidence: float) -> tuple[float, float]:
    low, high = np.quantile(draws, [0.5 - confidence / 2, 0.5 + confidence / 2])
    return float(low), float(high)


def bootstrap_accuracy(correct, confidence: float = 0.95, resamples: int = RESAMPLES, seed: int = 0, groups=None) -> Interval:
    """The mean accuracy of (seeds, items) correctness and its bootstrap interval over items, or over `groups` of
    them (and seeds)."""
    runs = as_runs(correct)
    draws = resampled_means([runs], resamples, seed, groups)[:, 0]
    return Interval(float(runs.mean()), *percentiles(draws, confidence))


def paired_bootstrap(a, b, confidence: float = 0.95, resamples: int = RESAMPLES, seed: int = 0, groups=None) -> Difference:
    """Accuracy of A minus B, both (seeds, items) over the same items in the same order (the seed counts may
    differ), with its paired bootstrap interval (over items, or over `groups` of them) and a verdict: a side is
    better only if the interval excludes 0."""
    a, b = as_runs(a, "arm A"), as_runs(b, "arm B")
    if a.shape[1] != b.shape[1]:
        raise UserError(f"arms A and B were tested on {a.shape[1]} and {b.shape[1]} items: a paired comparison needs the same held-out items.")
    draws = resampled_means([a, b], resamples, seed, groups)
    low, high = percentiles(draws[:, 0] - draws[:, 1], confidence)
    verdict = "A better" if low > 0 else "B better" if high < 0 else "no difference found"
    return Difference(float(a.mean() - b.mean()), low, high, verdict)
