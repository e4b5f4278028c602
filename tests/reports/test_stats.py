"""tandem.reports.stats: seed-averaged success rates and bootstrap intervals on cases with known answers."""

import numpy as np
import pytest

from tandem.reports.stats import bootstrap_ci, bootstrap_diff_ci, bootstrap_distribution, seed_mean


def test_all_success_gives_a_point_interval_at_one():
    assert bootstrap_ci([np.ones(30), np.ones(30), np.ones(5)]) == (1.0, 1.0, 1.0)


def test_all_failure_gives_a_point_interval_at_zero():
    assert bootstrap_ci([np.zeros(10, bool)], n=500) == (0.0, 0.0, 0.0)


def test_fifty_fifty_interval_covers_half_with_the_binomial_width():
    seeds = [np.array([1, 0] * 15) for _ in range(3)]  # 90 episodes, 45 successes
    mean, lo, hi = bootstrap_ci(seeds, n=10_000, seed=0)
    assert mean == 0.5
    assert lo < 0.5 < hi
    # Normal approximation: 1.96 * sqrt(0.25 / 90) = 0.103 each side; the bootstrap agrees closely.
    half = 1.96 * np.sqrt(0.25 / 90)
    assert abs((hi - lo) - 2 * half) < 0.04
    assert abs((0.5 - lo) - (hi - 0.5)) < 0.03  # symmetric at p = 0.5


def test_interval_shrinks_with_more_episodes():
    small = bootstrap_ci([np.array([1, 0] * 5)], n=4000)
    large = bootstrap_ci([np.array([1, 0] * 200)], n=4000)
    assert (large[2] - large[1]) < (small[2] - small[1]) / 3


def test_seeds_weigh_the_same_whatever_their_episode_count():
    seeds = [np.ones(10), np.zeros(2)]
    assert seed_mean(seeds) == 0.5
    mean, lo, hi = bootstrap_ci(seeds, n=2000)
    assert mean == 0.5 and lo == hi == 0.5  # no within-seed variation to resample


def test_same_seed_same_interval_and_level_widens_it():
    seeds = [np.array([1, 1, 0, 1, 0, 0, 1, 1])]
    assert bootstrap_ci(seeds, n=3000, seed=7) == bootstrap_ci(seeds, n=3000, seed=7)
    _, lo90, hi90 = bootstrap_ci(seeds, n=3000, level=0.90)
    _, lo99, hi99 = bootstrap_ci(seeds, n=3000, level=0.99)
    assert lo99 <= lo90 and hi99 >= hi90 and (hi99 - lo99) > (hi90 - lo90)


def test_replicates_are_resampled_means_of_the_data():
    data = np.array([0.0, 0.0, 1.0, 1.0])  # a resample of 4 has 0..4 successes
    reps = bootstrap_distribution([data], n=5000, rng=np.random.default_rng(1))
    assert set(np.unique(reps)) <= {0.0, 0.25, 0.5, 0.75, 1.0}
    assert abs(reps.mean() - 0.5) < 0.02
    # Binomial(4, 0.5): P(2 of 4) = 6/16
    assert abs(np.mean(reps == 0.5) - 6 / 16) < 0.03


def test_difference_of_all_success_and_all_failure_is_exactly_one():
    assert bootstrap_diff_ci([np.zeros(20)], [np.ones(20)]) == (1.0, 1.0, 1.0)
    assert bootstrap_diff_ci([np.ones(20)], [np.zeros(20)]) == (-1.0, -1.0, -1.0)


def test_difference_of_identical_evaluations_covers_zero():
    seeds = [np.array([1, 0, 1, 1, 0] * 6) for _ in range(3)]
    diff, lo, hi = bootstrap_diff_ci(seeds, seeds, n=5000)
    assert diff == 0.0 and lo < 0.0 < hi


def test_clear_improvement_excludes_zero():
    base = [np.array([1] * 6 + [0] * 24) for _ in range(3)]  # 20%
    cand = [np.array([1] * 24 + [0] * 6) for _ in range(3)]  # 80%
    diff, lo, hi = bootstrap_diff_ci(base, cand, n=5000)
    assert diff == pytest.approx(0.6)
    assert 0.0 < lo < 0.6 < hi


@pytest.mark.parametrize("bad", [[], [np.array([])]])
def test_empty_input_is_refused(bad):
    with pytest.raises(ValueError, match="seed"):
        bootstrap_ci(bad)


def test_bad_level_and_n_are_refused():
    with pytest.raises(ValueError, match="level"):
        bootstrap_ci([np.ones(3)], level=1.5)
    with pytest.raises(ValueError, match="resamples"):
        bootstrap_ci([np.ones(3)], n=0)


def test_paired_difference_removes_the_shared_scene_variation():
    from tandem.reports.stats import bootstrap_diff_ci, bootstrap_paired_diff_ci

    rng = np.random.default_rng(3)
    easy = rng.random((2, 40)) < 0.6  # which scenes are solvable: shared by both policies
    base = [e & (rng.random(40) < 0.5) for e in easy]
    cand = [b | (e & (rng.random(40) < 0.6)) for b, e in zip(base, easy, strict=True)]  # never worse per scene
    d, lo, hi = bootstrap_paired_diff_ci(base, cand, n=4000)
    _, ilo, ihi = bootstrap_diff_ci(base, cand, n=4000)
    assert d > 0 and lo >= 0  # paired: each scene's difference is >= 0
    assert hi - lo < ihi - ilo  # and narrower than treating the runs as independent
    with pytest.raises(ValueError, match="same episodes"):
        bootstrap_paired_diff_ci([np.ones(3)], [np.ones(4)])


def test_hierarchical_interval_widens_with_the_spread_between_training_seeds():
    from tandem.reports.stats import hierarchical_ci

    same = [[np.r_[np.ones(10), np.zeros(10)]] for _ in range(5)]  # five runs at 0.5
    spread = [[np.full(20, float(k % 2))] for k in range(5)]  # runs at 0, 1, 0, 1, 0
    m1, lo1, hi1 = hierarchical_ci(same, n=4000)
    m2, lo2, hi2 = hierarchical_ci(spread, n=4000)
    assert m1 == 0.5 and m2 == 0.4
    assert hi2 - lo2 > 2 * (hi1 - lo1)  # episode resampling alone would call the spread runs certain
    assert lo2 <= 0.1 and hi2 >= 0.7
