import numpy as np
import pytest

from tandem.core.errors import ConfigError
from tandem.runtime.control.safety import SafetyConfig, SafetyFilter


def make(max_delta=0.5, watchdog_s=0.5):
    return SafetyFilter(SafetyConfig(max_delta=max_delta, watchdog_s=watchdog_s),
                        low=-np.ones(3, np.float32), high=np.ones(3, np.float32), hold=np.zeros(3, np.float32))


def test_clips_to_limits():
    f = make(max_delta=0)
    out = f.filter(np.array([2.0, -3.0, 0.5]))
    assert np.allclose(out, [1.0, -1.0, 0.5])
    assert f.stats.clipped == 1


def test_rate_limit_per_tick():
    f = make(max_delta=0.1)
    f.filter(np.zeros(3))
    out = f.filter(np.array([1.0, -1.0, 0.05]))
    assert np.allclose(out, [0.1, -0.1, 0.05])
    out = f.filter(np.array([1.0, -1.0, 0.05]))
    assert np.allclose(out, [0.2, -0.2, 0.05])
    assert f.stats.rate_limited == 2


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_holds_last_safe_action(bad):
    f = make(max_delta=0)
    f.filter(np.array([0.3, 0.2, 0.1]))
    out = f.filter(np.array([0.5, bad, 0.0]))
    assert np.allclose(out, [0.3, 0.2, 0.1])
    assert f.stats.nonfinite == 1


def test_nonfinite_first_action_holds_hold_action():
    f = make()
    assert np.allclose(f.filter(np.full(3, np.nan)), 0.0)


def test_watchdog_holds_when_input_stalls():
    f = make(watchdog_s=0.05)
    f.filter(np.array([0.2, 0.2, 0.2]), now=100.0)
    assert not f.stalled(now=100.01)
    out = f.filter(None, now=100.1)
    assert f.stalled(now=100.1)
    assert np.allclose(out, [0.2, 0.2, 0.2])
    assert f.stats.watchdog_holds == 1 and f.stats.watchdog_trips == 1
    f.filter(None, now=100.15)
    assert f.stats.watchdog_holds == 2 and f.stats.watchdog_trips == 1  # one stall, two held ticks
    f.filter(np.array([0.1, 0.1, 0.1]), now=100.2)
    assert not f.stalled(now=100.21)
    f.filter(None, now=100.3)
    assert f.stats.watchdog_trips == 2


def test_wrong_shape_is_an_error():
    with pytest.raises(ValueError, match="shape"):
        make().filter(np.zeros(4))


def test_reset_forgets_last_and_counters():
    f = make(max_delta=0.1)
    for _ in range(10):
        f.filter(np.ones(3))
    f.filter(np.full(3, np.nan))
    f.reset(np.full(3, 0.85))  # the new episode's measured state
    assert f.stats.nonfinite == 0
    # the rate limit runs against the new episode's measured state, not the old episode's last command (1.0)
    assert np.allclose(f.filter(np.full(3, 0.9)), 0.9)
    f.reset(np.full(3, 0.5))
    assert np.allclose(f.filter(np.full(3, 0.9)), 0.6)


def test_first_action_of_an_episode_is_rate_limited_from_the_measured_state():
    f = make(max_delta=0.5)
    f.reset(np.zeros(3))  # the robot stands at 0
    out = f.filter(np.array([0.9, -0.9, 0.2]))
    assert np.allclose(out, [0.5, -0.5, 0.2])  # was 0 -> 0.9 in one tick before
    assert f.stats.rate_limited == 1
    fresh = make(max_delta=0.5)  # no reset at all: the constructor's hold is the anchor
    assert np.allclose(fresh.filter(np.full(3, 0.9)), 0.5)


def test_hold_is_the_robots_own():
    """A delta-controlled robot's hold is zero motion, not the last (moving) command."""
    def zero_motion(last):
        return np.zeros(3, np.float32)

    f = make(max_delta=0)
    f.reset(np.zeros(3), hold_fn=zero_motion)
    f.filter(np.array([0.4, 0.4, 0.4]))
    assert np.allclose(f.filter(None), 0.0)  # starved: stop, do not repeat 0.4
    assert np.allclose(f.filter(np.array([0.4, np.nan, 0.0])), 0.0)
    g = make(max_delta=0)  # without a hold_fn (position control): the last command is held
    g.filter(np.array([0.4, 0.4, 0.4]))
    assert np.allclose(g.filter(None), 0.4)


def test_stale_observation_is_not_acted_on():
    f = make(watchdog_s=0.2)
    f.filter(np.array([0.1, 0.1, 0.1]), now=10.0, obs_time=9.95)
    out = f.filter(np.array([0.3, 0.3, 0.3]), now=11.0, obs_time=10.5)  # decided on a 0.5 s old observation
    assert np.allclose(out, [0.1, 0.1, 0.1])
    assert f.stats.stale_observation == 1 and f.stats.watchdog_trips == 1 and f.stats.watchdog_holds == 1
    out = f.filter(np.array([0.3, 0.3, 0.3]), now=11.05, obs_time=11.0)
    assert np.allclose(out, [0.3, 0.3, 0.3])


def test_config_validation_names_field():
    with pytest.raises(ConfigError, match="safety.watchdog_s"):
        SafetyConfig(watchdog_s=0)
    with pytest.raises(ConfigError, match="safety.stop_hold_s"):
        SafetyConfig(stop_hold_s=-1)
