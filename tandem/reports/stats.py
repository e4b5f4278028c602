"""Success-rate statistics for ``tandem eval``: seed-averaged means and bootstrap confidence intervals.

The unit of evaluation is a seed: a seed's success rate is the mean of its episodes' outcomes (0/1),
and the reported success rate is the mean of the seeds' rates (every seed weighs the same, however
many episodes it ran). Its uncertainty comes from a percentile bootstrap that resamples *episodes
within each seed* with replacement (the seeds themselves are kept: they are the conditions we chose
to test, not a sample), recomputes the seed-averaged rate, and takes the central ``level`` interval
of the resampled rates. With few episodes the interval is wide and may be asymmetric; with all
episodes successful (or all failed) it collapses to a point, which says "no variation observed",
not "certain".
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: at most this many resampled indices are drawn at once (bounds memory for long evaluations).
_CHUNK_INDICES = 2_000_000


def _check(successes_per_seed: Sequence[np.ndarray], n: int, level: float) -> list[np.ndarray]:
    if n < 1:
        raise ValueError(f"n={n}: the number of bootstrap resamples must be >= 1")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level={level}: the confidence level must be in (0, 1), e.g. 0.95")
    groups = [np.asarray(s, np.float64).reshape(-1) for s in successes_per_seed]
    if not groups:
        raise ValueError("no seeds: pass one array of episode outcomes per seed")
    for i, g in enumerate(groups):
        if g.size == 0:
            raise ValueError(f"seed {i} has no episodes: every seed needs at least one")
    return groups


def seed_mean(successes_per_seed: Sequence[np.ndarray]) -> float:
    """Mean over seeds of each seed's mean outcome (each seed weighs the same)."""
    groups = [np.asarray(s, np.float64).reshape(-1) for s in successes_per_seed]
    return float(np.mean([g.mean() for g in groups]))


def bootstrap_distribution(
    successes_per_seed: Sequence[np.ndarray], n: int = 10_000, rng: np.random.Generator | None = None
) -> np.ndarray:
    """``n`` bootstrap replicates of the seed-averaged success rate: float64[n].

    Each replicate resamples every seed's episodes with replacement (same count as the seed ran) and
    averages the seeds' resampled means.
    """
    groups = _check(successes_per_seed, n, 0.5)
    rng = rng if rng is not None else np.random.default_rng(0)
    total = np.zeros(n, np.float64)
    for g in groups:
        m = g.size
        rows = max(1, _CHUNK_INDICES // m)
        for start in range(0, n, rows):
            k = min(rows, n - start)
            idx = rng.integers(0, m, size=(k, m))
            total[start : start + k] += g[idx].mean(axis=1)
    return total / len(groups)


def _interval(replicates: np.ndarray, level: float) -> tuple[float, float]:
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(replicates, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def bootstrap_ci(
    successes_per_seed: list[np.ndarray], n: int = 10_000, seed: int = 0, level: float = 0.95
) -> tuple[float, float, float]:
    """Seed-averaged success rate and its percentile bootstrap interval.

    Args:
        successes_per_seed: one array per seed of episode outcomes (0/1 or bool), [E_s] each, E_s >= 1.
        n: bootstrap resamples.
        seed: seed of the resampling RNG (numpy default_rng), so a report is reproducible.
        level: coverage of the interval (0.95: the 2.5th to 97.5th percentile).

    Returns:
        (mean, lo, hi): the seed-averaged rate and the interval bounds (same units, 0..1 for 0/1 data).
    """
    _check(successes_per_seed, n, level)
    replicates = bootstrap_distribution(successes_per_seed, n, np.random.default_rng(seed))
    lo, hi = _interval(replicates, level)
    return seed_mean(successes_per_seed), lo, hi


def bootstrap_diff_ci(
    baseline_per_seed: list[np.ndarray],
    candidate_per_seed: list[np.ndarray],
    n: int = 10_000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float, float]:
    """Difference candidate - baseline of seed-averaged success rates, with a bootstrap interval.

    The two evaluations are resampled independently (each within its own seeds), ``n`` times, and the
    interval is the percentile interval of the replicate differences. An interval that excludes 0 is
    evidence of a real difference at that level; one that includes 0 is not evidence of equality.

    Returns:
        (difference, lo, hi), in success-rate units (-1..1 for 0/1 data).
    """
    _check(baseline_per_seed, n, level)
    _check(candidate_per_seed, n, level)
    rng = np.random.default_rng(seed)
    base = bootstrap_distribution(baseline_per_seed, n, rng)
    cand = bootstrap_distribution(candidate_per_seed, n, rng)
    lo, hi = _interval(cand - base, level)
    return seed_mean(candidate_per_seed) - seed_mean(baseline_per_seed), lo, hi


def bootstrap_paired_diff_ci(
    baseline_per_seed: list[np.ndarray],
    candidate_per_seed: list[np.ndarray],
    n: int = 10_000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float, float]:
    """Difference candidate - baseline when both ran the *same* episodes (same seeds, same scenes).

    Episode j of seed s is one scene under both; the per-episode differences (-1, 0, 1) are resampled
    within each seed, jointly for both, which removes the scene-to-scene variation the two share.

    Raises:
        ValueError: the two do not have the same number of episodes in every seed.

    Returns:
        (difference, lo, hi), in success-rate units.
    """
    base = _check(baseline_per_seed, n, level)
    cand = _check(candidate_per_seed, n, level)
    if [g.size for g in base] != [g.size for g in cand]:
        raise ValueError("paired episodes need the same episodes per seed in both evaluations")
    diffs = [c - b for b, c in zip(base, cand, strict=True)]
    lo, hi = _interval(bootstrap_distribution(diffs, n, np.random.default_rng(seed)), level)
    return seed_mean(cand) - seed_mean(base), lo, hi


def hierarchical_distribution(
    outcomes: Sequence[Sequence[np.ndarray]], n: int = 10_000, rng: np.random.Generator | None = None
) -> np.ndarray:
    """Replicates of the mean over training seeds of each training seed's success rate: float64[n].

    ``outcomes[t]`` holds training seed t's evaluation, one array per evaluation seed (as for
    :func:`bootstrap_distribution`). Each replicate resamples the training seeds with replacement (they
    are a sample of training runs), then the episodes within each evaluation seed of every drawn run.
    Arrays may hold per-episode differences of two paired arms instead of outcomes.
    """
    runs = [_check(r, n, 0.5) for r in outcomes]
    if not runs:
        raise ValueError("no training seeds")
    rng = rng if rng is not None else np.random.default_rng(0)
    per_run = np.stack([bootstrap_distribution(r, n, rng) for r in runs])  # [T, n]
    pick = rng.integers(0, len(runs), size=(n, len(runs)))  # [n, T] drawn runs per replicate
    return per_run[pick, np.arange(n)[:, None]].mean(axis=1)


def hierarchical_ci(
    outcomes: Sequence[Sequence[np.ndarray]], n: int = 10_000, seed: int = 0, level: float = 0.95
) -> tuple[float, float, float]:
    """Mean over training seeds of their success rates, with an interval that resamples training seeds
    and episodes (:func:`hierarchical_distribution`). Returns (mean, lo, hi)."""
    replicates = hierarchical_distribution(outcomes, n, np.random.default_rng(seed))
    lo, hi = _interval(replicates, level)
    return float(np.mean([seed_mean(r) for r in outcomes])), lo, hi
