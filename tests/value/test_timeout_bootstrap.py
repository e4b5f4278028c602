"""Timeouts bootstrap from the final observation (issue #19).

An episode that ends by a time limit or a stop (``truncated``, not ``done``) is followed on the link by its
final observation (a record with no valid tick, from the ``ChunkAssembler``); the replay pairs the episode's
last record(s) with it as their bootstrap state and never samples it, so the TD target of the last chunk is
R + gamma^h Q(s_final, a'). Records built here through the real assembler, sent through the wire format and
stored in a real ``ReplayStore``; targets from the real critic, checked against values computed by hand.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tandem.hardware.features import STATE_KEY
from tandem.policies.heads.critic import ChunkedCritic, CriticConfig
from tandem.protocol.chunk_record import ChunkRecord
from tandem.protocol.messages import delivered_message
from tandem.runtime.control.loop import EpisodeResult, FinalObservation, TickRecord
from tandem.runtime.links.chunks import ChunkAssembler, build_final_observation
from tandem.value.objectives.common import to_tensors
from tandem.value.objectives.targets import critic_target
from tandem.value.replay import ReplayConfig, ReplayStore

pytestmark = pytest.mark.usefixtures("one_torch_thread")

H, S, A, F = 5, 3, 2, 2
G = 0.5  # powers exact in binary
N_TICKS = 13  # chunks of 5, 5 and 3 ticks: the last one partial (h = 3)
FINAL_STATE = np.array([7.0, -3.0, 0.5], np.float32)
FINAL_FEATURES = np.array([0.25, -0.5], np.float16)
FINAL_BASE = np.arange(H * A, dtype=np.float32).reshape(H, A) / 10.0


def tick(episode: int, k: int, *, done: bool = False, truncated: bool = False) -> TickRecord:
    a = np.full(A, 0.01 * k, np.float32)
    return TickRecord(
        episode=episode, tick=k, observation={STATE_KEY: np.full(S, float(k), np.float32)}, base_action=a + 0.5,
        head_action=np.zeros(A, np.float32), action=a, is_intervention=False, takeover_start=False, starved=False,
        chunk_index=k // H, chunk_step=k % H, head_version=0, base_version=0, features=np.full(F, k, np.float16),
        reward=1.0, success=False, done=done, truncated=truncated, obs_time=float(k), send_time=k + 0.01,
        lateness_ms=0.0, base_window=np.full((H, A), 0.01 * k, np.float32), failed=done)


def final_observation(episode: int, n: int = N_TICKS) -> FinalObservation:
    return FinalObservation(episode=episode, tick=n, observation={STATE_KEY: FINAL_STATE}, features=FINAL_FEATURES,
                            base_window=FINAL_BASE, head_version=0, base_version=0, obs_time=99.0)


def episode_records(episode: int, end: str = "truncated", stride: int = 0, final: bool = True,
                    n: int = N_TICKS) -> list[ChunkRecord]:
    """One episode of ``n`` ticks through the ChunkAssembler, as the control loop drives it: the final
    observation is handed over (before ``end_episode``) only after a truncated episode."""
    out: list[ChunkRecord] = []
    asm = ChunkAssembler("r", H, out.append, stride=stride, final_observations=final)
    asm.start_episode(episode, "task")
    for k in range(n):
        last = k == n - 1
        asm.on_tick(tick(episode, k, done=last and end == "done", truncated=last and end == "truncated"))
    if end == "truncated" and asm.wants_final_observation:
        asm.on_final_observation(final_observation(episode, n))
    outcome = "timeout" if end == "truncated" else "failure"
    asm.end_episode(EpisodeResult(episode=episode, seed=None, steps=n, success=False, outcome=outcome,
                                  total_reward=float(n), takeovers=0, intervention_ticks=0, starved_ticks=0))
    return out


def store_of(tmp_path, records: list[ChunkRecord]) -> ReplayStore:
    store = ReplayStore(tmp_path / "replay", ReplayConfig(capacity=256, fsync=False))
    for seq, rec in enumerate(records, 1):
        store.offer(delivered_message(rec, seq, "s"))
    store.commit()
    return store


def rows(store: ReplayStore) -> dict[str, np.ndarray]:
    """Every row the store may sample, all buffers, ordered by (episode, chunk index)."""
    parts = [b.take(b.live_rows()) for b in store.buffers.values() if b.size]
    out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    order = np.lexsort((out["chunk_index"], out["episode_id"]))
    return {k: v[order] for k, v in out.items()}


def critic() -> ChunkedCritic:
    return ChunkedCritic(CriticConfig(state_dim=S, feature_dim=F, horizon=H, action_dim=A, hidden=(16,), gamma=G,
                                      aggregation="min", seed=0))


def q_by_hand(c: ChunkedCritic, state: np.ndarray, features: np.ndarray, chunk: np.ndarray) -> float:
    """min_j Qbar_j(s, a) of one state and chunk (the target ensemble, a' = the base proposal there)."""
    with torch.no_grad():
        q = c.q_values(torch.tensor(state[None]), torch.tensor(features[None], dtype=torch.float32),
                       torch.tensor(chunk[None]), target=True)
    return float(q.min(0).values[0])


def test_the_assembler_sends_a_truncated_episodes_final_observation_after_its_last_chunk():
    recs = episode_records(0)
    assert [int(r.valid.sum()) for r in recs] == [5, 5, 3, 0]
    final = recs[-1]
    assert final.is_final_observation and not any(r.is_final_observation for r in recs[:-1])
    assert final.start_tick == N_TICKS and final.first_tick == 13 and final.chunk_index == 3
    assert final.truncated and not final.done and not final.failed
    assert np.array_equal(final.state, FINAL_STATE) and np.array_equal(final.features, FINAL_FEATURES)
    assert np.array_equal(final.base, FINAL_BASE) and not final.reward.any() and not final.intervention.any()
    # a done episode, a re-recorded one and an assembler told not to: no final observation
    assert not any(r.is_final_observation for r in episode_records(0, end="done"))
    assert not any(r.is_final_observation for r in episode_records(0, final=False))
    out: list[ChunkRecord] = []
    asm = ChunkAssembler("r", H, out.append)
    asm.start_episode(0, "task")
    for k in range(N_TICKS):
        asm.on_tick(tick(0, k, truncated=k == N_TICKS - 1))
    asm.on_final_observation(final_observation(0))
    asm.end_episode(EpisodeResult(0, None, N_TICKS, False, "rerecord", 0.0, 0, 0, 0))
    assert len(out) == 3 and not any(r.is_final_observation for r in out)


def test_a_truncated_episodes_last_chunk_bootstraps_from_the_final_observation_with_gamma_to_the_h(tmp_path):
    store = store_of(tmp_path, episode_records(0))
    try:
        assert store.size == 3 and store.counts["final_observations"] == 1  # the final observation is no sample
        r = rows(store)
        assert r["chunk_index"].tolist() == [0, 1, 2] and r["next_valid"].tolist() == [True, True, True]
        assert np.array_equal(r["next_state"][2], FINAL_STATE)
        assert np.array_equal(r["next_features"][2], FINAL_FEATURES) and np.array_equal(r["next_base"][2], FINAL_BASE)
        assert np.array_equal(r["next_state"][1], np.full(S, 10.0, np.float32))  # the next chunk's, as before

        c = critic()
        y, w = critic_target(c, to_tensors(r, "cpu"))
        # the last chunk: h = 3 valid ticks of reward 1: R = 1 + 0.5 + 0.25; bootstrap 0.5^3 Q(s_final, base there)
        expected = 1.75 + G**3 * q_by_hand(c, FINAL_STATE, FINAL_FEATURES.astype(np.float32), FINAL_BASE)
        assert w.tolist() == [1.0, 1.0, 1.0]
        assert float(y[2]) == pytest.approx(expected, abs=1e-6)
        # the full chunk before it: R = 1.9375, bootstrap 0.5^5 Q at the last chunk's first state
        s10 = np.full(S, 10.0, np.float32)
        expected_1 = 1.9375 + G**5 * q_by_hand(c, s10, np.full(F, 10.0, np.float32), r["base"][2])
        assert float(y[1]) == pytest.approx(expected_1, abs=1e-6)
    finally:
        store.close()


def test_the_final_observation_is_never_sampled_and_the_pairing_survives_a_restart(tmp_path):
    records = episode_records(0) + episode_records(1)
    store_of(tmp_path, records).close()
    store = ReplayStore(tmp_path / "replay", ReplayConfig(capacity=256, fsync=False))  # rebuilt from the log
    try:
        assert store.size == 6 and store.counts["final_observations"] == 2
        batch = store.sample(512, np.random.default_rng(0))
        assert batch["valid"].any(axis=1).all()  # no row without a valid tick
        assert not (batch["state"] == FINAL_STATE).all(axis=1).any()
        assert set(batch["chunk_index"].tolist()) == {0, 1, 2} and batch["next_valid"].all()
        last = batch["chunk_index"] == 2
        assert (batch["next_state"][last] == FINAL_STATE).all()
    finally:
        store.close()


def test_a_done_episode_never_bootstraps_even_if_a_final_observation_came(tmp_path):
    records = episode_records(0, end="done")
    assert records[-1].done and int(records[-1].valid.sum()) == 3
    stray = build_final_observation(final_observation(0), H, "r", 3, "task")  # the loop sends none after done
    store = store_of(tmp_path, [*records, stray])
    try:
        r = rows(store)
        assert store.size == 3 and r["next_valid"].tolist() == [True, True, False]
        y, w = critic_target(critic(), to_tensors(r, "cpu"))
        assert w.tolist() == [1.0, 1.0, 1.0] and float(y[2]) == pytest.approx(1.75)  # R only, no bootstrap
    finally:
        store.close()


def test_without_a_final_observation_the_last_chunk_keeps_weight_0(tmp_path):
    """A robot that sends none (``final_observations=False``), as a dataset replayed: no regression."""
    store = store_of(tmp_path, episode_records(0, final=False))
    try:
        r = rows(store)
        assert r["next_valid"].tolist() == [True, True, False] and store.counts["final_observations"] == 0
        _, w = critic_target(critic(), to_tensors(r, "cpu"))
        assert w.tolist() == [1.0, 1.0, 0.0]
    finally:
        store.close()


def test_overlapping_windows_ending_at_the_time_limit_all_bootstrap_from_the_final_observation(tmp_path):
    records = episode_records(0, stride=1)
    assert [r.start_tick for r in records] == [*range(N_TICKS), N_TICKS] and records[-1].chunk_index == N_TICKS
    store = store_of(tmp_path, records)
    try:
        r = rows(store)
        assert store.size == N_TICKS and r["next_valid"].all()
        ending = r["chunk_index"] >= N_TICKS - H  # the windows starting at ticks 8..12 reach the time limit
        assert (r["next_state"][ending] == FINAL_STATE).all()
        assert (r["next_state"][~ending] == r["state"][H:]).all()  # the others: the window H ticks on
        c = critic()
        y, w = critic_target(c, to_tensors(r, "cpu"))
        q = q_by_hand(c, FINAL_STATE, FINAL_FEATURES.astype(np.float32), FINAL_BASE)
        for start in range(N_TICKS - H, N_TICKS):
            h = N_TICKS - start
            ret = sum(G**k for k in range(h))
            assert float(y[start]) == pytest.approx(ret + G**h * q, abs=1e-6), start
        assert w.tolist() == [1.0] * N_TICKS
    finally:
        store.close()
