"""``learner.updates_per_record``: the update-to-data ratio caps a real learner's updates by the robots' records."""

from __future__ import annotations

import pytest
from links_testkit import make_record

from tandem.protocol.messages import record_to_message
from tandem.protocol.wire import decode, encode
from tandem.value.config import LearnerConfig
from tandem.value.learner import Learner
from tandem.value.objectives.base import ObjectiveConfig
from tandem.value.replay import ReplayStore


def _store(root, robot_records: int, demo_records: int) -> None:
    store = ReplayStore(root)
    for seq in range(1, robot_records + 1):
        rec = make_record("r1", 0, seq, intervention=seq % 4 == 0)
        store.offer(decode([bytes(f) for f in encode(record_to_message(rec, seq, "s1", "online"))], copy=True))
    for seq in range(1, demo_records + 1):
        rec = make_record("demo", 0, seq)
        store.offer(decode([bytes(f) for f in encode(record_to_message(rec, seq, "d1", "demo"))], copy=True))
    store.commit()
    store.close()


def _learner(tmp_path, **overrides) -> dict:
    cfg = dict(experience_port=0, weights_port=0, store_dir=str(tmp_path), device="cpu", batch_size=8, min_records=4,
               publish_every_updates=0, checkpoint_every_updates=0, objective=ObjectiveConfig(hidden=16))
    return Learner(LearnerConfig(**{**cfg, **overrides})).run()


def test_the_ratio_caps_updates_at_ratio_times_robot_records(tmp_path):
    """20 robot records (15 autonomous, 5 takeover) and 12 demonstrations, ratio 1.5: exactly 30 updates in 4 s,
    the demonstrations not counted; the same learner without the ratio runs past 30 in the same time."""
    _store(tmp_path / "replay", robot_records=20, demo_records=12)
    capped = _learner(tmp_path, updates_per_record=1.5, max_seconds=4.0)
    assert capped["replay"] == {"demo": 12, "autonomous": 15, "takeover": 5}
    assert capped["step"] == 30
    free = _learner(tmp_path, max_seconds=4.0, max_updates=10_000)  # resumes at 30 and trains on
    assert free["step"] > 40


def test_the_ratio_is_validated():
    with pytest.raises(ValueError, match="learner.updates_per_record"):
        LearnerConfig(updates_per_record=-1)
