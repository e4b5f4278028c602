"""The Rerun live view: a real MetaWorld session logged to an .rrd / memory, read back with rerun.dataframe."""

import math
import sys

import numpy as np
import pytest
from sinks_testkit import Collect

from tandem.core.errors import ConfigError, DeviceMissingError
from tandem.hardware.features import IMAGE_PREFIX
from tandem.runtime.config import compose_run
from tandem.runtime.control.loop import TickRecord
from tandem.runtime.monitor.live_view import LiveView, LiveViewConfig, grpc_url
from tandem.runtime.session import Session


def load(path):
    import rerun.dataframe as rdf

    return rdf.load_recording(str(path))


def column(recording, entity, component="Scalars:scalars", index="tick"):
    """(index values, per-row values) of one entity's component, rows where it was logged."""
    table = recording.view(index=index, contents=entity).select().read_all()
    name = f"/{entity}:{component}"
    assert name in table.column_names, (name, table.column_names)
    return table.column(index).to_pylist(), table.column(name).to_pylist()


def test_a_real_session_is_logged_with_every_stream(tmp_path):
    rrd = tmp_path / "view" / "live.rrd"
    calls = []

    def value_fn():  # the critic's score: unknown for the first 3 ticks, then a known sequence
        calls.append(1)
        n = len(calls)
        return None if n <= 3 else n / 10

    view = LiveView(
        LiveViewConfig(enabled=True, mode="save", path=str(rrd), image_every=2), value_fn=value_fn
    )
    sink = Collect()
    cfg = compose_run(
        [
            "policy=scripted",
            "robot.realtime=false",
            "robot.task=reach-v3",
            "robot.cameras=[corner]",
            "robot.image_size=64",
            "session.episodes=2",
            "robot.max_episode_steps=15",
            "loop.stop_on_success=false",
        ]
    )
    view.start()
    try:
        summary = Session(cfg, sinks=[sink, view]).run()
    finally:
        stats = view.close()
    ticks = sink.ticks
    n = len(ticks)
    assert n == sum(e["steps"] for e in summary.episodes) == 30
    assert stats["ticks"] == stats["logged"] == n and stats["dropped"] == 0 and not stats["errors"]

    rec = load(rrd)
    entities = {c.entity_path for c in rec.schema().component_columns()}
    dim = ticks[0].action.shape[0]
    for group in ("base", "head", "executed"):
        for i in range(dim):
            assert f"/action/{group}/{i}" in entities
    for entity in (
        "camera/corner",
        "critic/value",
        "takeover/active",
        "head/version",
        "loop/lateness_ms",
        "loop/starved",
        "episode/reward",
        "episode/success",
        "episode/events",
    ):
        assert f"/{entity}" in entities, entity
    assert {c.name for c in rec.schema().index_columns()} >= {"tick", "episode", "episode_tick", "time"}

    # one value per tick, on the session-wide tick timeline, equal to what the loop produced
    for i in range(dim):
        steps, values = column(rec, f"action/executed/{i}")
        assert steps == list(range(n))
        assert [v[0] for v in values] == pytest.approx([float(t.action[i]) for t in ticks])
        _, base = column(rec, f"action/base/{i}")
        assert [v[0] for v in base] == pytest.approx([float(t.base_action[i]) for t in ticks])
    steps, lateness = column(rec, "loop/lateness_ms")
    assert steps == list(range(n))
    assert [v[0] for v in lateness] == pytest.approx([t.lateness_ms for t in ticks])
    _, reward = column(rec, "episode/reward")
    assert [v[0] for v in reward] == pytest.approx([t.reward for t in ticks])
    _, active = column(rec, "takeover/active")
    assert [v[0] for v in active] == [0.0] * n  # the scripted policy runs without an operator

    # the per-episode timelines: episode index and the tick within the episode
    episode_ticks, _ = column(rec, "loop/lateness_ms", index="episode_tick")
    assert episode_ticks == list(range(15))  # both episodes share episode_tick 0..14
    episodes, _ = column(rec, "loop/lateness_ms", index="episode")
    assert episodes == [0, 1]

    # the critic's value: only logged when known (from the 4th tick on)
    steps, values = column(rec, "critic/value")
    assert steps == list(range(3, n))
    assert [v[0] for v in values] == pytest.approx([(k + 1) / 10 for k in range(3, n)])

    # camera: every 2nd tick, 64x64 RGB, the pixels the robot returned
    table = rec.view(index="tick", contents="camera/corner").select().read_all()
    assert table.column("tick").to_pylist() == list(range(0, n, 2))
    assert table.num_rows == math.ceil(n / 2) == stats["images_logged"]
    fmt = table.column("/camera/corner:Image:format").to_pylist()[0][0]
    assert (fmt["width"], fmt["height"]) == (64, 64)
    buffers = table.column("/camera/corner:Image:buffer").to_pylist()
    first = np.asarray(buffers[0][0], np.uint8).reshape(64, 64, 3)
    assert np.array_equal(first, ticks[0].observation[IMAGE_PREFIX + "corner"])

    steps, events = column(rec, "episode/events", component="TextLog:text")
    assert steps == [0, 14, 15, 29]
    lines = [e[0] for e in events]
    assert (
        lines[0]
        == lines[2].replace("episode 1", "episode 0")
        == "episode 0 start: reach the red goal position"
    )
    outcomes = [e["outcome"] for e in summary.episodes]
    assert lines[1].startswith(f"episode 0 end: {outcomes[0]}, 15 steps, reward ")
    assert lines[3].startswith(f"episode 1 end: {outcomes[1]}, 15 steps, reward ")


def record(step, dim=4, image=None):
    obs = {"observation.state": np.zeros(3, np.float32)}
    if image is not None:
        obs[IMAGE_PREFIX + "front"] = image
    a = np.full(dim, step / 100, np.float32)
    return TickRecord(
        episode=0,
        tick=step,
        observation=obs,
        base_action=a,
        head_action=a * 0,
        action=a,
        is_intervention=False,
        takeover_start=False,
        starved=False,
        chunk_index=0,
        chunk_step=0,
        head_version=1,
        base_version=0,
        features=np.zeros(0, np.float16),
        reward=0.0,
        success=False,
        done=False,
        truncated=False,
        obs_time=1.7e9 + step / 30,
        send_time=1.7e9 + step / 30,
        lateness_ms=float(step),
    )


def test_a_stalled_logger_never_blocks_on_tick_and_drops_the_oldest(tmp_path):
    view = LiveView(LiveViewConfig(enabled=True, mode="memory", queue_size=8))
    image = np.zeros((32, 32, 3), np.uint8)
    # The logging thread is not running: nothing drains the queue. Every call still returns at once.
    for step in range(100):
        view.on_tick(record(step, image=image))
    assert view.ticks == 100
    assert view.dropped == 92
    assert view.queue_high_water == 8
    view.start()  # now the thread drains what is left: the 8 newest ticks
    try:
        view.on_tick(record(100))
    finally:
        stats = view.close()
    assert stats["logged"] == 9 and stats["dropped"] == 92 and not stats["errors"]
    path = tmp_path / "memory.rrd"
    path.write_bytes(view.drain_rrd())
    steps, lateness = column(load(path), "loop/lateness_ms")
    assert steps == list(range(92, 101))
    assert [v[0] for v in lateness] == [float(s) for s in range(92, 101)]


def test_close_without_start_and_twice_is_harmless():
    view = LiveView(LiveViewConfig(enabled=True, mode="memory"))
    view.on_tick(record(0))
    assert view.close()["logged"] == 0
    assert view.close()["ticks"] == 1


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the display check is the X11/Wayland one")
def test_spawn_without_a_display_says_to_save_an_rrd(monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    view = LiveView(LiveViewConfig(enabled=True, mode="spawn"))
    with pytest.raises(DeviceMissingError, match=r"live_view.mode=save .*rerun FILE.rrd"):
        view.start()
    view.close()


def test_config_is_validated():
    with pytest.raises(ConfigError, match="did you mean 'save'"):
        LiveViewConfig(mode="sav")
    with pytest.raises(ConfigError, match="live_view.path"):
        LiveViewConfig(enabled=True, mode="save")
    with pytest.raises(ConfigError, match="live_view.address"):
        LiveViewConfig(mode="connect", address="nowhere")
    with pytest.raises(ConfigError, match="live_view.image_every"):
        LiveViewConfig(image_every=0)
    assert grpc_url("10.0.0.5:9876") == "rerun+http://10.0.0.5:9876/proxy"
    assert grpc_url("rerun+http://h:1/proxy") == "rerun+http://h:1/proxy"
