"""Statistics over seeds and worlds: bootstrap intervals, the interquartile mean, permutation
tests, and the marker a group earns against the baseline."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

#: Significance level of the permutation test against the baseline.
ALPHA = 0.05
#: Seeds a group needs before its interquartile mean is reported (rliable's IQM).
IQM_MIN_SEEDS = 5
#: Seeds each side needs before non-overlapping intervals are worth a "†".
DAGGER_MIN_SEEDS = 3
#: Relabellings of the seeds enumerated exactly; beyond this, a Monte Carlo permutation test.
EXACT_PERMUTATIONS = 20_000


def _mean_rows(rows: np.ndarray) -> np.ndarray:
    return rows.mean(axis=1)


def iqm_rows(rows: np.ndarray) -> np.ndarray:
    """Interquartile mean of each row of ``rows`` (a :func:`bootstrap_ci` statistic)."""
    # scipy.stats.trim_mean(x, 0.25), which rliable uses: cut int(0.25 n) values at each end.
    n = rows.shape[1]
    cut = int(0.25 * n)
    return np.sort(rows, axis=1)[:, cut : n - cut].mean(axis=1)


def interquartile_mean(values: list[float]) -> float:
    """Mean of the middle 50% of ``values`` (int(n/4) cut at each end, like rliable's IQM)."""
    return float(iqm_rows(np.asarray(values, dtype=float)[None, :])[0])


def bootstrap_ci(
    values: list[float],
    samples: int = 10_000,
    seed: int = 0,
    statistic: Callable[[np.ndarray], np.ndarray] = _mean_rows,
) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the mean (or ``statistic``) of ``values``."""
    data = np.asarray(values, dtype=float)
    if len(data) < 2:
        point = float(statistic(data[None, :])[0])
        return point, point
    rng = np.random.default_rng(seed)
    stats = statistic(rng.choice(data, size=(samples, len(data)), replace=True))
    low, high = np.percentile(stats, [2.5, 97.5])
    return float(low), float(high)


def hierarchical_bootstrap(
    by_world: list[list[float]], samples: int = 10_000, seed: int = 0
) -> np.ndarray:
    """Bootstrap means over worlds, then seeds: ``samples`` draws of the mean of world means.

    Each draw resamples the worlds with replacement and, inside each drawn world, its seeds with
    replacement; the statistic is the mean of the drawn worlds' means (every world weighs the
    same). Jobs of one world share the task data and the SFT model, so they are not independent:
    resampling them as if they were would understate the uncertainty.
    """
    rng = np.random.default_rng(seed)
    worlds = [np.asarray(w, dtype=float) for w in by_world if len(w)]
    chosen = rng.integers(len(worlds), size=(samples, len(worlds)))
    world_means = np.empty((samples, len(worlds)))
    for w, values in enumerate(worlds):
        # An independent seed resample for every slot a world is drawn into.
        size = (samples, len(worlds), len(values))
        picks = values[rng.integers(len(values), size=size)].mean(axis=2)
        world_means = np.where(chosen == w, picks, world_means)
    return world_means.mean(axis=1)


def hierarchical_ci(by_world: list[list[float]], samples: int = 10_000) -> tuple[float, float]:
    """95 % interval of the mean of world means (:func:`hierarchical_bootstrap`)."""
    if sum(len(w) for w in by_world) < 2:
        point = float(np.mean([v for w in by_world for v in w]))
        return point, point
    if len([w for w in by_world if w]) == 1:
        return bootstrap_ci([v for w in by_world for v in w], samples)
    low, high = np.percentile(hierarchical_bootstrap(by_world, samples), [2.5, 97.5])
    return float(low), float(high)


def paired_difference_ci(
    a: dict[str, list[float]], b: dict[str, list[float]], samples: int = 10_000, seed: int = 0
) -> tuple[float, float, float] | None:
    """Mean over shared worlds of (mean a − mean b) and its 95 % hierarchical interval.

    Worlds are resampled together for both groups (the comparison is paired by world), seeds
    inside each world independently. None when the groups share no world.
    """
    shared = sorted(set(a) & set(b))
    if not shared:
        return None
    rng = np.random.default_rng(seed)
    n = len(shared)
    chosen = rng.integers(n, size=(samples, n))
    slots = np.zeros((samples, n))
    for i, world in enumerate(shared):
        diff = np.zeros((samples, n))
        for values, sign in ((a[world], 1.0), (b[world], -1.0)):
            v = np.asarray(values, dtype=float)
            diff += sign * v[rng.integers(len(v), size=(samples, n, len(v)))].mean(axis=2)
        slots = np.where(chosen == i, diff, slots)
    draws = slots.mean(axis=1)
    point = float(np.mean([np.mean(a[w]) - np.mean(b[w]) for w in shared]))
    low, high = np.percentile(draws, [2.5, 97.5])
    return point, float(low), float(high)


def smallest_permutation_p(n_a: int, n_b: int) -> float:
    """The smallest two-sided p-value a permutation test of ``n_a`` vs ``n_b`` seeds can give."""
    # The most extreme split (and, with equal sizes, its mirror image) is always counted.
    return min(1.0, (2 if n_a == n_b else 1) / math.comb(n_a + n_b, n_a))


def permutation_test(
    a: list[float], b: list[float], resamples: int = 10_000, seed: int = 0
) -> float:
    """Two-sided permutation test of mean(a) − mean(b) over seeds; returns the p-value.

    Exact (every relabelling of the pooled seeds) up to ``EXACT_PERMUTATIONS`` relabellings,
    Monte Carlo with ``resamples`` shuffles beyond. With 3 vs 3 seeds there are only 20
    relabellings, so p is at least 0.1: no difference can be significant at 0.05.
    """
    pooled = np.asarray([*a, *b], dtype=float)
    n, n_a = len(pooled), len(a)
    observed = abs(float(np.mean(a)) - float(np.mean(b)))
    total = pooled.sum()
    if math.comb(n, n_a) <= EXACT_PERMUTATIONS:
        chosen = np.asarray(list(itertools.combinations(range(n), n_a)), dtype=int)
        sums = pooled[chosen].sum(axis=1)
        exact = True
    else:
        rng = np.random.default_rng(seed)
        shuffled = rng.permuted(np.tile(pooled, (resamples, 1)), axis=1)
        sums = shuffled[:, :n_a].sum(axis=1)
        exact = False
    diffs = np.abs(sums / n_a - (total - sums) / (n - n_a))
    # A relative tolerance so that float noise does not split ties with the observed split.
    extreme = int(np.sum(diffs >= observed - 1e-9 * max(1.0, observed)))
    return extreme / len(diffs) if exact else (extreme + 1) / (len(diffs) + 1)


@dataclass
class Comparison:
    """One metric of one group against the baseline: p-value and the marker it earns."""

    p: float
    smallest_p: float
    marker: str


def compare_to_baseline(values: list[float], baseline: list[float]) -> Comparison | None:
    """``*`` if p < 0.05; ``†`` if the test cannot reach 0.05 but the 95% intervals are apart."""
    if len(values) < 2 or len(baseline) < 2:
        return None
    p = permutation_test(values, baseline)
    smallest = smallest_permutation_p(len(values), len(baseline))
    marker = ""
    if p < ALPHA:
        marker = "*"
    elif smallest >= ALPHA and min(len(values), len(baseline)) >= DAGGER_MIN_SEEDS:
        low, high = bootstrap_ci(values)
        base_low, base_high = bootstrap_ci(baseline)
        if high < base_low or low > base_high:
            marker = "†"
    return Comparison(p=p, smallest_p=smallest, marker=marker)
