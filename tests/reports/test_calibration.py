"""Value calibration's arithmetic against hand-computed values, and chunks.npz written and read back."""

import numpy as np
import pytest

from tandem.protocol.chunk_record import ChunkRecord
from tandem.reports.calibration import auc, load_chunks, realized_returns, save_chunks, spearman, window_auc


def test_time_reward_return_counts_the_ticks_to_success():
    # 4 ticks, success at the last: from tick 0, -0.1 * (1 + .9 + .81 + .729); from tick 2, -0.1 * (1 + .9)
    g = realized_returns(np.array([0, 2]), np.zeros(4), True, 0.9, 0.1, "time", after_failure=-1.0)
    assert g == pytest.approx([-0.3439, -0.19])


def test_a_failed_episode_is_followed_by_the_failure_value():
    # task reward 1 per tick, 2 ticks then failure (-5): from tick 0: 1 + .5 * 1 + .25 * -5
    g = realized_returns(np.array([0, 1]), np.ones(2), False, 0.5, 1.0, "task", after_failure=-5.0)
    assert g == pytest.approx([1 + 0.5 - 1.25, 1 - 2.5])
    # with the time reward and the never-succeeding value the return is that value from every tick
    g = realized_returns(np.array([0, 3]), np.zeros(5), False, 0.99, 0.1, "time", after_failure=-0.1 / 0.01)
    assert g == pytest.approx([-10.0, -10.0])


def test_rank_correlation_and_auc():
    assert spearman(np.array([1.0, 2.0, 3.0]), np.array([10.0, 20.0, 30.0])) == pytest.approx(1.0)
    assert spearman(np.array([1.0, 2.0, 3.0]), np.array([3.0, 2.0, 1.0])) == pytest.approx(-1.0)
    assert spearman(np.array([1.0, 2.0]), np.array([5.0, 5.0])) is None
    assert spearman(np.array([1.0, 2.0, 3.0, 4.0]), np.array([0.0, 0.0, 1.0, 1.0])) == pytest.approx(0.894427, abs=1e-5)
    assert auc(np.array([3.0, 4.0]), np.array([1.0, 3.0])) == pytest.approx((2 + 1 + 0.5) / 4)
    assert auc(np.array([1.0]), np.array([])) is None


def _record(episode, chunk, valid):
    h, a = 3, 2
    return ChunkRecord(robot_id="eval", episode_id=episode, chunk_index=chunk, task="t",
                       state=np.full(4, chunk, np.float32), features=np.zeros(0, np.float32),
                       base=np.zeros((h, a), np.float32), head=np.zeros((h, a), np.float32),
                       executed=np.full((h, a), chunk, np.float32), reward=np.zeros(h, np.float32),
                       valid=np.array([i < valid for i in range(h)]), intervention=np.zeros(h, bool),
                       takeover_start=np.zeros(h, bool), done=False, truncated=False, head_version=0, base_version=0,
                       obs_time=np.zeros(h), send_time=np.zeros(h))


def test_chunks_file_keeps_each_chunks_start_tick(tmp_path):
    recs = [_record(0, 0, 3), _record(0, 1, 2), _record(1, 0, 3), _record(1, 1, 3)]
    save_chunks(recs, tmp_path)
    c = load_chunks(tmp_path)
    assert c["start"].tolist() == [0, 3, 0, 3] and c["episode"].tolist() == [0, 0, 1, 1]
    assert c["executed"].shape == (4, 3, 2) and c["features"].shape == (4, 0) and c["valid"].sum() == 11
    assert save_chunks([], tmp_path / "none") is None and load_chunks(tmp_path / "none") is None


def test_window_auc_averages_each_episodes_chunks_inside_the_window():
    starts = np.array([0, 5, 50, 150])
    episodes = [(starts, np.array([9.0, 1.0, 3.0, 0.0]), True),     # mean over ticks 1-99: 2.0
                (starts, np.array([-9.0, 4.0, -2.0, 9.0]), False),   # 1.0 (tick 0 and tick 150 do not count)
                (starts, np.array([0.0, 2.0, 2.0, 0.0]), False),     # 2.0: a tie with the success
                (np.array([0, 120]), np.array([5.0, 5.0]), True)]    # no chunk in the window: left out
    assert window_auc(episodes, 1, 100) == pytest.approx((1 + 0.5) / 2)
    # V(s0)'s window: both successes (9 and 5) above both failures (-9 and 0)
    assert window_auc(episodes, 0, 1) == pytest.approx(1.0)
    assert window_auc(episodes[:1], 1, 100) is None
