"""The terminal status line: content, TTY redraw vs plain lines, rate limiting (fake clock)."""

import io
import sys

import numpy as np
import pytest

from tandem.core.errors import ConfigError
from tandem.runtime.control.loop import EpisodeResult, TickRecord
from tandem.runtime.monitor.status_line import StatusLine, StatusLineConfig


class FakeClock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def tick(episode, t, lateness_ms=0.0, takeover_start=False, head_version=3):
    a = np.zeros(4, np.float32)
    return TickRecord(
        episode=episode,
        tick=t,
        observation={},
        base_action=a,
        head_action=a,
        action=a,
        is_intervention=takeover_start,
        takeover_start=takeover_start,
        starved=False,
        chunk_index=0,
        chunk_step=0,
        head_version=head_version,
        base_version=0,
        features=np.zeros(0, np.float16),
        reward=0.0,
        success=False,
        done=False,
        truncated=False,
        obs_time=0.0,
        send_time=0.0,
        lateness_ms=lateness_ms,
    )


def result(episode, success, takeovers=0):
    return EpisodeResult(
        episode=episode,
        seed=episode,
        steps=10,
        success=success,
        outcome="success" if success else "timeout",
        total_reward=1.0,
        takeovers=takeovers,
        intervention_ticks=0,
        starved_ticks=0,
    )


def make(tty=True, link=None, **cfg):
    out = io.StringIO()
    clock = FakeClock()
    line = StatusLine(StatusLineConfig(**cfg), episodes=4, link_stats=link, stream=out, tty=tty, clock=clock)
    return line, out, clock


def test_content_follows_the_session():
    link = {"connected": True, "last_heard_s": 0.25, "acked": 120, "pending": 3}
    line, _, _ = make(link=lambda: link)
    assert line.render() == (
        "ep -/4 | success 0/0 | takeovers 0 | late p99 - | head - | learner up, heard 0.2 s ago, acked 120"
    )
    line.start_episode(0, "reach")
    for t in range(10):
        line.on_tick(tick(0, t, lateness_ms=float(t), takeover_start=(t == 4), head_version=7))
    p99 = np.percentile(np.arange(10.0), 99)  # 8.91
    assert line.render() == (
        f"ep 1/4 t 9 | success 0/0 | takeovers 1 | late p99 {p99:.2f} ms | head v7 | "
        "learner up, heard 0.2 s ago, acked 120"
    )
    line.end_episode(result(0, True, takeovers=1))
    line.on_episode(result(0, True, takeovers=1))  # the session hook and the sink hook: counted once
    line.start_episode(1, "reach")
    line.on_tick(tick(1, 0, takeover_start=True))
    link.update(connected=False, last_heard_s=12.0)
    assert line.render().startswith("ep 2/4 t 0 | success 1/1 (100%) | takeovers 2 | ")
    assert line.render().endswith("| head v3 | learner down, heard 12.0 s ago, acked 120")
    line.end_episode(result(1, False, takeovers=1))
    assert "success 1/2 (50%) | takeovers 2 |" in line.render()


def test_learner_never_heard_missing_or_failing():
    line, _, _ = make(link=lambda: {"connected": False, "last_heard_s": -1.0, "acked": 0})
    assert line.render().endswith("| learner down, never heard, acked 0")
    assert "learner" not in make(link=lambda: None)[0].render()
    assert "learner" not in make()[0].render()

    def broken():
        raise RuntimeError("link gone")

    assert make(link=broken)[0].render().endswith("| learner ? (RuntimeError)")


def test_lateness_p99_is_rolling_over_the_window():
    line, _, _ = make(window=5)
    line.on_tick(tick(0, 0, lateness_ms=100.0))
    assert line.lateness_p99_ms() == pytest.approx(100.0)
    for t in range(1, 6):
        line.on_tick(tick(0, t, lateness_ms=1.0))
    assert line.lateness_p99_ms() == pytest.approx(1.0)  # the 100 ms tick has left the window


def test_tty_redraws_in_place_at_most_every_period():
    line, out, clock = make(tty=True, period_s=0.5)
    assert line.maybe_render()
    clock.t += 0.3
    assert not line.maybe_render()
    clock.t += 0.19
    assert not line.maybe_render()
    clock.t += 0.01
    line.start_episode(0, "reach")
    line.on_tick(tick(0, 0))
    assert line.maybe_render()
    text = out.getvalue()
    assert text.count("\r") == 2 and "\n" not in text
    first, second = text.split("\r")[1:]
    assert first.startswith("ep -/4 |") and second.startswith("ep 1/4 t 0 |")
    # a shorter line is padded so nothing of the longer one stays visible
    line.head_version = -1
    line.tick = -1
    clock.t += 1
    assert line.maybe_render()
    last = out.getvalue().split("\r")[-1]
    assert len(last) == len(second) and last.rstrip() == line.render()


def test_plain_lines_when_not_a_tty():
    line, out, clock = make(tty=False)  # plain_period_s defaults to 5 s
    drawn = []
    for _ in range(21):  # 10 s of 0.5 s steps
        drawn.append(line.maybe_render())
        clock.t += 0.5
    assert drawn == [i % 10 == 0 for i in range(21)]
    lines = out.getvalue().splitlines()
    assert len(lines) == 3 and "\r" not in out.getvalue()
    assert all(text.startswith("ep -/4 | success 0/0") for text in lines)


def test_println_clears_the_line_and_redraws_it():
    line, out, clock = make(tty=True)
    line.maybe_render()
    width = len(line.render())
    line.println("episode   0  success")
    text = out.getvalue()
    assert "\r" + " " * width + "\repisode   0  success\n\r" + line.render() in text
    plain, pout, _ = make(tty=False)
    plain.println("episode   0  success")
    assert pout.getvalue() == "episode   0  success\n"


def test_thread_draws_and_close_ends_the_line():
    out = io.StringIO()
    line = StatusLine(StatusLineConfig(period_s=0.05), episodes=1, stream=out, tty=True).start()
    line.start_episode(0, "reach")
    line.on_tick(tick(0, 0, lateness_ms=2.0))
    line.close()
    line.close()
    text = out.getvalue()
    assert text.endswith("\n") and text.count("\n") == 1
    assert (
        text.rstrip().split("\r")[-1].rstrip()
        == "ep 1/1 t 0 | success 0/0 | takeovers 0 | late p99 2.00 ms | head v3"
    )


def test_stream_defaults_to_stdout_and_a_stringio_is_not_a_tty():
    line = StatusLine(StatusLineConfig(), episodes=2)
    assert line.stream is sys.stdout
    assert StatusLine(StatusLineConfig(stream="stderr")).stream is sys.stderr
    assert StatusLine(StatusLineConfig(), stream=io.StringIO()).tty is False


def test_config_is_validated():
    with pytest.raises(ConfigError, match="status_line.stream"):
        StatusLineConfig(stream="stdot")
    with pytest.raises(ConfigError, match="status_line.period_s"):
        StatusLineConfig(period_s=0)
    with pytest.raises(ConfigError, match="status_line.window"):
        StatusLineConfig(window=0)
