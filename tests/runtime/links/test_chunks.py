"""Chunk records from ticks: one per chunk, or overlapping ones every ``stride`` ticks."""

from __future__ import annotations

import numpy as np
import pytest

from tandem.hardware.features import STATE_KEY
from tandem.protocol.messages import record_to_message
from tandem.protocol.wire import decode, encode
from tandem.runtime.control.loop import EpisodeResult, TickRecord
from tandem.runtime.links.chunks import ChunkAssembler
from tandem.value.replay import ReplayConfig, ReplayStore

H, A = 4, 2


def ticks(n: int, windows: bool = True) -> list[TickRecord]:
    """n ticks of one episode; tick k's state, actions and plan window all encode k; the last one is done."""
    out = []
    for k in range(n):
        out.append(TickRecord(
            episode=0, tick=k, observation={STATE_KEY: np.full(3, k, np.float32)},
            base_action=np.full(A, k, np.float32), head_action=np.zeros(A, np.float32),
            action=np.full(A, k + 0.5, np.float32), is_intervention=k in (5, 6), takeover_start=k == 5,
            starved=False, chunk_index=k // H, chunk_step=k % H, head_version=1, base_version=1,
            features=np.full(2, k, np.float16), reward=-1.0, success=k == n - 1, done=k == n - 1,
            truncated=False, obs_time=float(k), send_time=float(k), lateness_ms=0.0,
            base_window=(100 * k + np.arange(H, dtype=np.float32))[:, None].repeat(A, 1) if windows else None,
        ))  # fmt: skip
    return out


def assemble(rows: list[TickRecord], stride: int = 0) -> list:
    out = []
    assembler = ChunkAssembler("r", H, out.append, stride=stride)
    assembler.start_episode(0, "task")
    for t in rows:
        assembler.on_tick(t)
    assembler.end_episode(EpisodeResult(0, 0, len(rows), True, "success", -1.0 * len(rows), 1, 2, 1))
    return out


def test_one_record_per_chunk_by_default():
    recs = assemble(ticks(9))
    assert [r.chunk_index for r in recs] == [0, 1, 2] and [int(r.valid.sum()) for r in recs] == [4, 4, 1]
    assert [r.first_tick for r in recs] == [0, 4, 8] and all(r.start_tick == -1 for r in recs)
    assert np.array_equal(recs[1].base[:, 0], [4, 5, 6, 7])  # the base actions that ran
    assert [r.done for r in recs] == [False, False, True]


def test_overlapping_records_start_every_stride_ticks_with_the_plan_as_it_stood():
    recs = assemble(ticks(9), stride=2)
    # windows start at ticks 0, 2, 4 (full, emitted as their last tick runs), 6 and 8 (open at the end: padded)
    assert [r.start_tick for r in recs] == [0, 2, 4, 6, 8] and [r.chunk_index for r in recs] == [0, 1, 2, 3, 4]
    assert [int(r.valid.sum()) for r in recs] == [4, 4, 4, 3, 1]
    for r in recs:
        k = r.start_tick
        assert r.state[0] == k and r.features[0] == k
        assert np.array_equal(r.base[:, 0], 100 * k + np.arange(H))  # the plan window of its first tick
        n = int(r.valid.sum())
        assert np.array_equal(r.executed[:n, 0], np.arange(k, k + n) + 0.5)
        assert np.array_equal(r.intervention[:n], [t in (5, 6) for t in range(k, k + n)])
    assert [r.done for r in recs] == [False, False, False, True, True]  # the last two hold the terminal tick


def test_overlapping_records_bootstrap_from_the_one_h_ticks_later(tmp_path):
    store = ReplayStore(tmp_path, ReplayConfig(capacity=100))
    for seq, rec in enumerate(assemble(ticks(12), stride=1), start=1):
        store.offer(decode([bytes(f) for f in encode(record_to_message(rec, seq, "s"))], copy=True))
    data = {}
    for buf in store.buffers.values():
        for i in range(buf.size):
            data[int(buf.data["state"][i][0])] = (bool(buf.data["next_valid"][i]), float(buf.data["next_state"][i][0]))
    store.close()
    assert sorted(data) == list(range(12))
    for start in range(8):  # s_{t+H} is the state of tick t + 4
        assert data[start] == (True, start + H)
    assert not any(data[start][0] for start in range(8, 12))  # they reach the terminal tick 11


def test_bad_strides_and_missing_windows_are_refused():
    for stride in (3, 5):
        with pytest.raises(ValueError, match="must divide the horizon"):
            ChunkAssembler("r", H, lambda r: None, stride=stride)
    with pytest.raises(ValueError, match="windows_every_tick"):
        assemble(ticks(5, windows=False), stride=1)
