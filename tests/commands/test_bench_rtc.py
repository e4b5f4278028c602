"""``tandem bench rtc``: the splice-jerk measure, the summary, and the JSON at a tiny budget."""

import json

import numpy as np
import pytest

from tandem.bench.rtc import splice_jerks, summarize
from tandem.cli import build_parser
from tandem.commands import bench as bench_command


def test_splice_jerk_counts_the_whole_window_after_each_splice():
    a = np.zeros((12, 2), np.float32)
    a[5:, 0] = 1.0  # a naive jump of 1 into tick 5
    a[9:, 1] = [0.25, 0.5, 0.75]  # a fade of 0.25 per tick from tick 9
    splice, within = splice_jerks(a, [5, 9], window=3)
    assert splice == [1.0, 0.25]
    assert len(within) == 11 - 4 - 3 and max(within) == 0.0, "ticks outside the windows"
    assert splice_jerks(a, [0], 3)[0] == [0.0], "a splice at tick 0 counts from tick 1"
    assert splice_jerks(a[:1], [0], 3) == ([], [])


def test_summary_answers_both_questions():
    def arm(success, jerk):
        return {"success_rate": success, "splice_jerk": jerk}

    results = {
        "naive": {"0": arm(0.8, 0.5), "1": arm(0.6, 0.5), "4": arm(0.2, 0.5)},
        "crossfade": {"0": arm(0.8, 0.3), "1": arm(0.7, 0.3), "4": arm(0.5, 0.3)},
        "rtc": {"0": arm(0.8, 0.4), "1": arm(0.8, 0.2), "4": arm(0.7, 0.35)},
    }
    s = summarize(results, [0, 1, 4])
    assert s["rtc_jerk_below_crossfade"] == {"1": True, "4": False}
    assert s["rtc_jerk_below_crossfade_every_d"] is False
    assert s["success_drop"] == {"naive": 0.6, "crossfade": 0.3, "rtc": 0.1}
    assert s["rtc_success_falls_less_than_naive"] is True
    assert s["success_slope"]["naive"] < s["success_slope"]["rtc"] < 0


@pytest.mark.slow  # ~75 s on the 2-core reference machine (15 arms, model and simulator start-up)
def test_bench_rtc_prints_json_with_every_mode_and_delay(capsys):
    args = build_parser().parse_args(
        ["bench", "rtc", "robot.suite=[reach-v3]", "--delays", "0", "1", "2", "4", "8", "--episodes", "1",
         "--max-steps", "12"]
    )
    assert bench_command.main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["bench"] == "rtc" and out["tasks"] == ["reach-v3"] and out["delays"] == [0, 1, 2, 4, 8]
    assert set(out["results"]) == {"naive", "crossfade", "rtc"}
    for mode, arms in out["results"].items():
        assert set(arms) == {"0", "1", "2", "4", "8"}, mode
        for d, r in arms.items():
            assert r["episodes"] == 1 and 0.0 <= r["success_rate"] <= 1.0
            assert r["starved_ticks"] == 0, (mode, d)
            if mode == "rtc" and int(d) >= 1:
                assert r["rtc_requests"] > 0 and r["rtc_fallbacks"] == 0, "the tiny VLA honours RTC"
            if mode != "rtc":
                assert r["rtc_requests"] == 0
    assert set(out["summary"]["rtc_jerk_below_crossfade"]) == {"1", "2", "4", "8"}
    assert "rtc_success_falls_less_than_naive" in out["summary"]
