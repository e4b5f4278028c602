"""Timeouts bootstrap from the final observation (issue #19), end to end: a MetaWorld session whose episodes end
by the time limit sends each episode's final observation to a spawned learner, whose replay (rebuilt from its
durable log) pairs every episode's last, partial chunk with it and never samples it.

Real sockets on 127.0.0.1, a spawned learner process, real MuJoCo.
"""

from __future__ import annotations

import numpy as np

from tandem.commands.learner_process import LearnerProcess
from tandem.hardware.features import STATE_KEY
from tandem.runtime.config import compose_run
from tandem.runtime.session import Session
from tandem.value.replay import ReplayStore, record_entries

STEPS, H = 25, 10  # chunks of 10, 10 and 5 ticks: the last one partial (h = 5)


def test_a_metaworld_sessions_time_limits_reach_the_learner_as_bootstrap_states(tmp_path):
    run_dir = tmp_path / "run"
    cfg = compose_run(["policy=scripted", "robot.realtime=false", "robot.cameras=[]", "robot.task=reach-v3",
                       "session.backend=inline", "session.episodes=2", f"robot.max_episode_steps={STEPS}",
                       f"session.horizon={H}", "loop.stop_on_success=false", "learn.spawn=true",
                       "learn.learner.min_records=1000000", f"session.run_dir={run_dir}"])
    learner = LearnerProcess(cfg, run_dir).start()
    after_step: list[np.ndarray] = []  # the robot's state after each step: the last one is the final observation
    try:
        session = Session(cfg)
        session.build()
        robot, send = session.robot, session.robot.send_action

        def send_and_observe(action):
            sent = send(action)
            after_step.append(robot.get_observation()[STATE_KEY].copy())
            return sent

        robot.send_action = send_and_observe
        summary = session.run()
    finally:
        assert learner.stop() == 0
    assert [e["steps"] for e in summary.episodes] == [STEPS, STEPS] and summary.links["all_acked"]
    assert len(after_step) == 2 * STEPS

    # the learner's durable log: each episode's three chunks, then its final observation
    logged = [r for _, r in record_entries(run_dir / "learner" / "replay") if r is not None]
    assert [(r.episode_id, r.chunk_index, int(r.valid.sum())) for r in logged] == [
        (e, c, n) for e in (0, 1) for c, n in ((0, 10), (1, 10), (2, 5), (3, 0))]
    finals = [r for r in logged if r.is_final_observation]
    assert [(r.start_tick, r.truncated, r.done) for r in finals] == [(STEPS, True, False)] * 2
    for e, final in enumerate(finals):  # the observation after the episode's last step
        assert np.array_equal(final.state, after_step[(e + 1) * STEPS - 1])
        assert final.base.shape == (H, 4) and np.isfinite(final.base).all()

    store = ReplayStore(run_dir / "learner" / "replay")  # rebuilt from the log
    try:
        assert store.size == 6 and store.counts["final_observations"] == 2
        batch = store.sample(256, np.random.default_rng(0))
        assert batch["valid"].any(axis=1).all() and batch["next_valid"].all()  # every last chunk can bootstrap
        for e, final in enumerate(finals):
            last = (batch["episode_id"] == e) & (batch["chunk_index"] == 2)
            assert last.any() and bool(batch["truncated"][last].all())
            assert (batch["next_state"][last] == final.state).all()
            assert (batch["next_base"][last] == final.base).all()
    finally:
        store.close()
