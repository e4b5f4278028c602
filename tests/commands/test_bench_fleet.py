"""``tandem bench fleet``: robots in their own processes stream into a real ``tandem learn`` while it trains."""

from __future__ import annotations

import pytest

from tandem.bench.fleet import bench_fleet


@pytest.mark.slow  # about a minute; the links and the learner it drives are tested on their own
def test_fleet_bench_acks_every_record_and_reports_both_update_rates():
    out = bench_fleet(robots=2, hz=50, seconds=4, idle_s=2, objective="critic", batch_size=16, drain_s=60,
                      preload=200)
    assert out["records_sent"] == 2 * 20 and out["all_acked"] and out["robots_not_acked"] == []
    assert out["learner_stored"] == out["records_sent"]  # the preloaded records were stored before it started
    assert out["idle_updates_per_s"] > 0 and out["ingest_updates_per_s"] > 0
    assert out["ingest_over_idle"] == pytest.approx(out["ingest_updates_per_s"] / out["idle_updates_per_s"], rel=0.01)
