"""A MetaWorld session with ``session.record_stride``: overlapping chunk records from the live loop."""

from __future__ import annotations

import numpy as np
from sinks_testkit import Collect

from tandem.hardware.features import STATE_KEY
from tandem.runtime.config import compose_run
from tandem.runtime.links.chunks import ChunkAssembler
from tandem.runtime.session import Session


def test_a_session_with_record_stride_sends_a_record_from_every_other_tick():
    cfg = compose_run([
        "policy=scripted", "robot.task=reach-v3", "robot.cameras=[]", "robot.realtime=false",
        "robot.max_episode_steps=30", "session.episodes=1", "session.horizon=10", "session.record_stride=2",
        "loop.stop_on_success=false",
    ])  # fmt: skip
    ticks, recs = Collect(), []
    Session(cfg, sinks=[ticks, ChunkAssembler("r", 10, recs.append, stride=2)]).run()
    rows = ticks.ticks
    # the time limit's final observation comes last (no tick ran in it: the last windows' bootstrap state)
    final = recs.pop()
    assert final.is_final_observation and final.start_tick == 30 and final.chunk_index == 15 and final.truncated
    assert not any(r.is_final_observation for r in recs)
    assert len(rows) == 30 and all(t.base_window is not None and t.base_window.shape == (10, 4) for t in rows)
    assert [r.start_tick for r in recs] == list(range(0, 30, 2))
    for r in recs:
        first = rows[r.start_tick]
        n = min(10, 30 - r.start_tick)
        assert int(r.valid.sum()) == n and np.array_equal(r.state, first.observation[STATE_KEY])
        assert np.array_equal(r.base, first.base_window)  # the plan as it stood at the record's first tick
        assert np.array_equal(r.base[0], first.base_action)  # whose first action is the one that ran
        assert np.array_equal(r.executed[:n], np.stack([t.action for t in rows[r.start_tick : r.start_tick + n]]))
    assert [r.truncated for r in recs].count(True) == 5  # the last five windows reach the time limit
