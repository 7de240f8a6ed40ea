"""The statistics of a comparison: how sure an accuracy is, and whether two arms really differ.

Two sources of noise move a fine-tuned accuracy: which held-out reviews were drawn (items) and the run's own
randomness (the seed: head init, dropout, batch order). An arm is an array of per-item correctness, shape
(seeds, items), one row per seed, every row over the same held-out items.

- `t_interval`: the mean of a few per-seed figures with Student's t interval (seeds as the only noise).
- `bootstrap_accuracy`: the accuracy's interval from resampling the items, and the seeds when there are several.
- `paired_bootstrap`: the difference A - B. The items are resampled jointly for both arms (paired: a hard review
  is hard for both, so the gap's noise is smaller than either accuracy's), the seeds within each arm.

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


def resampled_means(arms: list[np.ndarray], resamples: int, seed: int) -> np.ndarray:
    """(resamples, len(arms)): each arm's mean correctness under one draw of the items (shared by all arms, so
    paired) and of each arm's own seeds. A draw is held as how often it took each item (or seed), so that a
    resample is a weighted mean: one matmul per chunk instead of a gather per resample."""
    rng = np.random.default_rng(seed)
    items = arms[0].shape[1]
    out = np.empty((resamples, len(arms)))
    for start in range(0, resamples, CHUNK):
        n = min(CHUNK, resamples - start)
        item_weights = draw_counts(rng, n, items) / items  # (n, items)
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


def bootstrap_accuracy(correct, confidence: float = 0.95, resamples: int = RESAMPLES, seed: int = 0) -> Interval:
    """The mean accuracy of (seeds, items) correctness and its bootstrap interval over items (and seeds)."""
    runs = as_runs(correct)
    draws = resampled_means([runs], resamples, seed)[:, 0]
    return Interval(float(runs.mean()), *percentiles(draws, confidence))


def paired_bootstrap(a, b, confidence: float = 0.95, resamples: int = RESAMPLES, seed: int = 0) -> Difference:
    """Accuracy of A minus B, both (seeds, items) over the same items in the same order (the seed counts may
    differ), with its paired bootstrap interval and a verdict: a side is better only if the interval excludes 0."""
    a, b = as_runs(a, "arm A"), as_runs(b, "arm B")
    if a.shape[1] != b.shape[1]:
        raise UserError(f"arms A and B were tested on {a.shape[1]} and {b.shape[1]} items: a paired comparison needs the same held-out items.")
    draws = resampled_means([a, b], resamples, seed)
    low, high = percentiles(draws[:, 0] - draws[:, 1], confidence)
    verdict = "A better" if low > 0 else "B better" if high < 0 else "no difference found"
    return Difference(float(a.mean() - b.mean()), low, high, verdict)
