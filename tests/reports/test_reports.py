"""Session and learner reports: real files in, report.md + PNGs out, figures checked against the data."""

import json
import math
import re

import numpy as np
import pytest
from matplotlib.image import imread

from tandem.reports.learner import write_learner_report
from tandem.reports.session import fmt, rolling_rate, write_session_report
from tandem.runtime.control.loop import TickRecord
from tandem.runtime.monitor.tick_log import TickLog, load_ticks

# -- helpers ----------------------------------------------------------------------------------------


def tick(episode, t, lateness, intervention=False, version=0, reward=0.0, success=False):
    z = np.zeros(4, np.float32)
    return TickRecord(
        episode=episode, tick=t, observation={}, base_action=z, head_action=z, action=z,
        is_intervention=intervention, takeover_start=False, starved=False, chunk_index=t // 10,
        chunk_step=t % 10, head_version=version, base_version=0, features=np.zeros(0, np.float16),
        reward=reward, success=success, done=False, truncated=False, obs_time=0.0, send_time=0.0,
        lateness_ms=lateness,
    )


def tables(md):
    """Markdown tables -> list of row lists (header and separator dropped)."""
    out, current = [], None
    for line in md.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if current is None:
                current = []
            elif not set("".join(cells)) <= {"-"}:
                current.append(cells)
        elif current is not None:
            out.append(current)
            current = None
    if current is not None:
        out.append(current)
    return out


def key_table(md):
    return {row[0]: row[1] for row in tables(md)[0]}


def check_images(report_path):
    md = report_path.read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert links, "the report embeds no figure"
    for link in links:
        assert not link.startswith("/"), "links must be relative"
        path = report_path.parent / link
        assert path.exists() and path.stat().st_size > 0
        img = imread(path)
        assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    return links


def trailing_mean(x, w):
    return [sum(x[max(0, i - w + 1): i + 1]) / (i + 1 - max(0, i - w + 1)) for i in range(len(x))]


# -- TickLog ----------------------------------------------------------------------------------------


def test_tick_log_keeps_every_tick_across_growth_and_saves_them(tmp_path):
    log = TickLog(capacity=4)  # grows twice
    expected = []
    for ep, task in enumerate(["reach", "push", "reach"]):
        log.start_episode(ep, task)
        for t in range(5):
            row = (ep, t, 0.1 * ep + 0.01 * t, t % 2 == 1, ep, float(t), t == 4)
            expected.append(row)
            log.on_tick(tick(ep, t, row[2], row[3], row[4], row[5], row[6]))
        log.end_episode(None)
    assert len(log) == 15
    path = log.save(tmp_path / "run")
    assert path == tmp_path / "run" / "ticks.npz"
    data = load_ticks(tmp_path / "run")
    cols = list(zip(*expected, strict=True))
    for name, col in zip(["episode", "tick", "lateness_ms", "is_intervention", "head_version", "reward", "success"],
                         cols, strict=True):
        np.testing.assert_array_equal(data[name], np.asarray(col, data[name].dtype))
    assert data["episode_ids"].tolist() == [0, 1, 2]
    assert data["episode_tasks"].tolist() == ["reach", "push", "reach"]


# -- session report ---------------------------------------------------------------------------------

SUCCESS = [0, 0, 1, 0, 1, 1, 0, 1, 1, 1, 1, 1]
TASKS = ["reach-v3", "push-v3"] * 6
VERSIONS = [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
TAKEOVERS = [2, 1, 1, 0, 1, 0, 0, 0, 0, 1, 0, 0]
INTERVENTION = [30, 12, 10, 0, 8, 0, 0, 0, 0, 5, 0, 0]
STEPS = [100, 100, 60, 100, 50, 70, 100, 40, 45, 80, 50, 55]
LINKS = {
    "weights": {"received": 6, "accepted": 5, "applied": 5, "rejected": 1, "rejected_reasons": {"stale": 1},
                "versions": {"head": 5}, "learner_alive": True, "apply_max_ms": 1.25, "apply_cpu_max_ms": 0.4},
    "all_acked": True,
    "experience": {"sent": 120, "acked": 120, "pending": 0, "connected": True, "last_heard_s": 0.2,
                   "send_max_ms": 0.35, "send_cpu_max_ms": 0.1},
}


def episode(i, with_task=True):
    e = {"episode": i, "seed": i, "steps": STEPS[i], "success": bool(SUCCESS[i]),
         "outcome": "success" if SUCCESS[i] else "timeout", "total_reward": float(i), "takeovers": TAKEOVERS[i],
         "intervention_ticks": INTERVENTION[i], "starved_ticks": 0,
         "timing": {"hz": 50.0, "ticks": STEPS[i], "p50_lateness_ms": 0.05, "p99_lateness_ms": 0.1 * (i + 1),
                    "max_lateness_ms": 0.2 * (i + 1), "overruns": i % 3,
                    "sections_p50_ms": {"decide": 0.1}, "sections_p99_ms": {"decide": 0.5}}}
    if with_task:
        e["task"] = TASKS[i]
        e["head_version"] = VERSIONS[i]
    return e


def write_run(run_dir, n, links=None, ticks=True, with_task=True):
    run_dir.mkdir(parents=True)
    eps = [episode(i, with_task) for i in range(n)]
    summary = {"robot": "metaworld", "task": "reach-v3, push-v3", "policy": "tiny_vla", "episodes": eps,
               "success_rate": sum(SUCCESS[:n]) / n, "wall_s": 42.5, "recording": {}, "links": links or {}}
    (run_dir / "summary.json").write_text(json.dumps(summary))
    lateness = []
    if ticks:
        rng = np.random.default_rng(3)
        log = TickLog(capacity=16)
        for i in range(n):
            log.start_episode(i, TASKS[i])
            for t in range(STEPS[i]):
                late = float(rng.exponential(0.05))
                lateness.append(late)
                log.on_tick(tick(i, t, late, t < INTERVENTION[i], VERSIONS[i]))
        log.save(run_dir)
    return eps, np.array(lateness)


def test_session_report_numbers_and_figures_match_the_data(tmp_path):
    run = tmp_path / "run"
    eps, lateness = write_run(run, 12, links=LINKS)
    path = write_session_report(run)
    assert path == run / "report.md"
    md = path.read_text()
    links = check_images(path)
    assert set(links) == {"success.png", "takeovers.png", "timing.png", "links.png"}

    numbers = key_table(md)
    steps = sum(STEPS)
    assert numbers["episodes"] == "12"
    assert numbers["successes"] == str(sum(SUCCESS))
    assert numbers["success rate"] == fmt(sum(SUCCESS) / 12)
    assert numbers["final rolling success rate"] == fmt(sum(SUCCESS[-10:]) / 10)
    assert numbers["takeovers"] == str(sum(TAKEOVERS))
    assert numbers["takeovers per episode"] == fmt(sum(TAKEOVERS) / 12)
    assert numbers["intervention fraction"] == fmt(sum(INTERVENTION) / steps)
    assert numbers["ticks"] == str(steps)
    assert numbers["overruns"] == str(sum(i % 3 for i in range(12)))
    assert numbers["lateness p99 ms"] == fmt(np.percentile(lateness, 99))
    assert numbers["lateness max ms"] == fmt(lateness.max())

    per_task = {row[0]: row[1:] for row in tables(md)[1]}
    for task in ("reach-v3", "push-v3"):
        wins = sum(s for s, t in zip(SUCCESS, TASKS, strict=True) if t == task)
        assert per_task[task] == ["6", str(wins), fmt(wins / 6)]

    figures = json.loads((run / "report.json").read_text())["figures"]
    success = figures["success.png"]["success per episode"]["lines"]
    assert success["episode success"]["y"] == [float(s) for s in SUCCESS]
    assert success["episode success"]["x"] == list(range(12))
    assert success["success rate (last 10)"]["y"] == pytest.approx(trailing_mean(SUCCESS, 10))
    for task in ("reach-v3", "push-v3"):
        sel = [i for i, t in enumerate(TASKS) if t == task]
        line = success[f"{task} (last 10)"]
        assert line["x"] == sel
        assert line["y"] == pytest.approx(trailing_mean([SUCCESS[i] for i in sel], 10))
    assert figures["success.png"]["head weight version"]["lines"]["head version"]["y"] == VERSIONS

    take = figures["takeovers.png"]
    assert take["takeovers per episode"]["bars"]["takeovers"]["value"] == TAKEOVERS
    assert take["takeovers per episode"]["lines"]["takeovers per episode (last 10)"]["y"] == pytest.approx(
        trailing_mean(TAKEOVERS, 10))
    assert take["fraction of ticks under human control"]["bars"]["intervention fraction"]["value"] == \
        pytest.approx([a / b for a, b in zip(INTERVENTION, STEPS, strict=True)])

    hist = figures["timing.png"]["tick lateness histogram"]
    counts = hist["bars"]["ticks"]["value"]
    assert sum(counts) == steps
    assert counts == np.histogram(lateness, bins=50)[0].tolist()
    assert hist["lines"][f"p99 {np.percentile(lateness, 99):.3f} ms"]["x"][0] == pytest.approx(
        np.percentile(lateness, 99))

    bars = figures["links.png"]
    ms = bars["link latencies (ms)"]["bars"]["link latencies (ms)"]["value"]
    assert sorted(ms) == sorted([1.25, 0.4, 0.35, 0.1])
    counters = bars["link counters"]["bars"]["link counters"]["value"]
    assert 120 in counters and 6 in counters and 5 in counters
    assert "| apply_max_ms | 1.250 |" in md and "| all_acked | yes |" in md and "| versions.head | 5 |" in md


def test_session_report_for_one_episode_without_links_or_ticks(tmp_path):
    run = tmp_path / "one"
    write_run(run, 1, ticks=False, with_task=False)
    path = write_session_report(run)
    md = path.read_text()
    assert set(check_images(path)) == {"success.png", "takeovers.png", "timing.png"}
    assert "## Links" not in md and not (run / "links.png").exists()
    numbers = key_table(md)
    assert numbers["episodes"] == "1" and numbers["success rate"] == fmt(0.0)
    assert numbers["lateness p99 ms worst episode"] == fmt(0.1)
    figures = json.loads((run / "report.json").read_text())["figures"]
    bars = figures["timing.png"]["p99 tick lateness per episode (no ticks.npz)"]["bars"]["p99 lateness"]
    assert bars["value"] == [0.1]
    assert "head weight version" not in figures["success.png"]  # no versions: no second axis


def test_session_report_takes_tasks_and_versions_from_ticks_when_the_summary_lacks_them(tmp_path):
    run = tmp_path / "old"
    write_run(run, 4, with_task=False)
    write_session_report(run)
    report = json.loads((run / "report.json").read_text())
    assert report["tasks"] == {"reach-v3": {"episodes": 2, "successes": 1, "success_rate": 0.5},
                               "push-v3": {"episodes": 2, "successes": 0, "success_rate": 0.0}}
    assert report["figures"]["success.png"]["head weight version"]["lines"]["head version"]["y"] == VERSIONS[:4]


def test_rolling_rate_is_a_trailing_mean():
    x = [1, 0, 0, 1, 1, 1, 0]
    assert rolling_rate(x, 3).tolist() == pytest.approx(trailing_mean(x, 3))
    assert rolling_rate([], 5).size == 0


# -- learner report ---------------------------------------------------------------------------------


def metrics_entries():
    entries = []
    for k in range(20):
        step = 100 * k
        metrics = {"critic/loss": 2.0 * 0.8 ** k, "critic/td_abs": 1.0 * 0.7 ** k, "critic/q_mean": 0.1 * k,
                   "critic/target_mean": 0.1 * k + 0.05, "critic/grad_norm": 1.0 + 0.01 * k}
        if k >= 5:  # the head trains once the critic has warmed up
            metrics.update({"head/q_pi": 0.12 * k, "head/loss": -0.12 * k, "head/steps": float(k - 4)})
        if k == 12:
            metrics["critic/grad_norm"] = math.inf
        entries.append({"step": step, "time": 1_700_000_000.0 + 5.0 * k, "metrics": metrics,
                        "replay": {"demo": 500, "autonomous": 40 * k, "takeover": 4 * k},
                        "versions": {"critic": k // 2, "head": max(0, (k - 5) // 2)}})
    return entries


def test_learner_report_plots_every_metric_replay_and_versions(tmp_path):
    store = tmp_path / "learner"
    store.mkdir()
    entries = metrics_entries()
    lines = [json.dumps(e) for e in entries]
    (store / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": 2000, "time": 17')  # killed mid-write
    (store / "status.json").write_text(json.dumps({"step": 1900, "versions": {"critic": 9, "head": 7},
                                                   "replay": entries[-1]["replay"], "live_robots": 1,
                                                   "time": 1_700_000_095.0}))
    path = write_learner_report(store)
    assert path == store / "report.md"
    md = path.read_text()
    assert set(check_images(path)) == {"metrics_critic.png", "metrics_head.png", "replay.png", "versions.png"}

    numbers = key_table(md)
    assert numbers["entries"] == "20" and numbers["skipped lines"] == "1"
    assert numbers["first step"] == "0" and numbers["last step"] == "1900"
    assert numbers["duration s"] == fmt(95.0)
    assert numbers["updates per s"] == fmt(1900 / 95.0)
    assert numbers["last critic/td_abs"] == fmt(0.7 ** 19)
    assert numbers["last replay.autonomous"] == "760"
    assert numbers["non-finite critic/grad_norm"] == "1 values, first at step 1200"
    assert "| live_robots | 1 |" in md and "| versions.head | 7 |" in md

    figures = json.loads((store / "report.json").read_text())["figures"]
    critic = figures["metrics_critic.png"]
    steps = [100.0 * k for k in range(20)]
    assert critic["critic/td_abs"]["lines"]["critic/td_abs"]["y"] == pytest.approx([0.7 ** k for k in range(20)])
    assert critic["critic/td_abs"]["lines"]["critic/td_abs"]["x"] == steps
    assert critic["critic/loss"]["lines"]["critic/loss"]["y"] == pytest.approx([2.0 * 0.8 ** k for k in range(20)])
    q = critic["critic/q_mean, critic/target_mean"]["lines"]  # one panel, both lines
    assert q["critic/q_mean"]["y"] == pytest.approx([0.1 * k for k in range(20)])
    assert q["critic/target_mean"]["y"] == pytest.approx([0.1 * k + 0.05 for k in range(20)])
    grad = critic["critic/grad_norm"]["lines"]["critic/grad_norm"]
    assert 1200.0 not in grad["x"] and len(grad["x"]) == 19  # the inf is left out of the plot
    head = figures["metrics_head.png"]
    assert head["head/q_pi"]["lines"]["head/q_pi"]["x"] == steps[5:]
    assert head["head/q_pi"]["lines"]["head/q_pi"]["y"] == pytest.approx([0.12 * k for k in range(5, 20)])
    replay = figures["replay.png"]["replay records per buffer"]["lines"]
    assert replay["autonomous"]["y"] == [40.0 * k for k in range(20)]
    assert replay["demo"]["y"] == [500.0] * 20
    versions = figures["versions.png"]["published weight versions"]["lines"]
    assert versions["critic"]["y"] == [float(k // 2) for k in range(20)]
    assert versions["head"]["x"] == steps


def test_learner_report_from_status_only_and_refuses_an_empty_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="store_dir"):
        write_learner_report(tmp_path)
    (tmp_path / "status.json").write_text(json.dumps({"step": 5, "metrics": {"critic/loss": 0.5}}))
    md = write_learner_report(tmp_path).read_text()
    assert "| metrics.critic/loss | 0.500 |" in md and "| entries | 0 |" in md
