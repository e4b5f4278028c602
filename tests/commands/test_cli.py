"""The tandem CLI as a user runs it, in subprocesses."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

TANDEM = [sys.executable, "-m", "tandem.cli"]


def run_cli(args, **kw):
    return subprocess.run(TANDEM + args, capture_output=True, text=True, timeout=300, **kw)


def test_tandem_run_prints_success_and_writes_summary(tmp_path):
    out = run_cli(["run", "policy=scripted", "session.backend=inline", "robot.realtime=false",
                   "session.episodes=2", "robot.task=reach-v3", f"session.run_dir={tmp_path}"])
    assert out.returncode == 0, out.stderr[-2000:]
    assert "success rate" in out.stdout
    assert out.stdout.count("episode ") >= 2
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert len(summary["episodes"]) == 2
    assert 0.0 <= summary["success_rate"] <= 1.0


def test_a_learning_session_ends_with_its_headline_and_reports_both_curves(tmp_path):
    out = run_cli(["run", "policy=scripted", "policy.bias=0.8", "robot.realtime=false", "robot.cameras=[]",
                   "robot.task=reach-v3", "robot.max_episode_steps=150", "teleop=human", "session.episodes=4",
                   "session.eval_every=2", "session.eval_episodes=2", "status_line.enabled=false",
                   f"session.run_dir={tmp_path}"])
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    ev, eps = summary["evaluations"], summary["episodes"]
    share = sum(e["intervention_ticks"] for e in eps) / sum(e["steps"] for e in eps)
    last = out.stdout.strip().splitlines()[-1]
    assert last == (f"autonomous success {ev[-1]['success_rate']:.0%} on unseen scenes (2 episodes) | "
                    f"operator share {share:.0%} | assisted success {summary['success_rate']:.0%}")
    assert out.stdout.count("(autonomous, unseen scene)") == 4
    report = json.loads((tmp_path / "report.json").read_text())
    (lines,) = (axes["lines"] for axes in report["figures"]["learning.png"].values())
    auto = next(v for k, v in lines.items() if k.startswith("autonomous"))
    assert auto["x"] == [2.0, 4.0] and auto["y"] == [e["success_rate"] for e in ev]
    op = next(v for k, v in lines.items() if k.startswith("operator"))
    assert op["x"] == [1.0, 2.0, 3.0, 4.0] and abs(op["y"][-1] - share) < 1e-6
    assert "learning.png" in (tmp_path / "report.md").read_text()


def test_bad_config_fails_at_start_with_field_name(tmp_path):
    out = run_cli(["run", "policy=scripted", "robot.task=nosuch-v3", f"session.run_dir={tmp_path}"])
    assert out.returncode == 2
    assert "robot.task" in out.stderr and "one of" in out.stderr


def test_bench_loop_prints_json():
    out = run_cli(["bench", "loop", "--hz", "100", "--seconds", "1", "--load", "1"])
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout)
    for key in ("hz", "ticks", "p50_lateness_ms", "p99_lateness_ms", "max_lateness_ms", "overruns"):
        assert key in result
    assert result["ticks"] == 100


def stop_a_session(args: list[str], sig: int, delay_s: float = 0.0) -> tuple[int, str]:
    """Start ``tandem run args``, send ``sig`` ``delay_s`` after its first episode line; (exit code, output)."""
    proc = subprocess.Popen(TANDEM + ["run", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines = []
    try:
        deadline = time.time() + 120
        while not (lines and lines[-1].startswith("episode")) and time.time() < deadline:
            lines.append(proc.stdout.readline())
        assert lines[-1].startswith("episode"), "session never started: " + "".join(lines)[-2000:]
        time.sleep(delay_s)
        proc.send_signal(sig)
        # the teardown commits the recorded episodes (video encoding): seconds on an idle 2-core machine, minutes
        # beside other jobs (174 s measured at load 7), so the wait is generous; a hang still fails
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, "".join(lines) + out


def test_ctrl_c_ends_session_cleanly_and_writes_summary(tmp_path):
    code, out = stop_a_session(
        ["policy=scripted", "session.backend=inline", "robot.realtime=true", "robot.task=reach-v3",
         "session.episodes=50", "loop.stop_on_success=false", f"session.run_dir={tmp_path}"],
        signal.SIGINT, delay_s=1.5,  # well inside the next 10-second episode
    )
    assert code == 0, out[-2000:]
    summary = json.loads((Path(tmp_path) / "summary.json").read_text())
    assert summary["episodes"][-1]["outcome"] == "stopped"
    assert len(summary["episodes"]) < 50


def _gone(pid: int) -> bool:
    """True once ``pid`` has exited (no such process, or a zombie nobody has reaped yet)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"


def test_sigterm_ends_a_session_cleanly_and_stops_its_spawned_learner(tmp_path):
    """``kill <pid>`` (systemd, docker stop) must not orphan the learner that ``tandem run`` spawned."""
    code, out = stop_a_session(
        ["policy=scripted", "session.backend=inline", "robot.realtime=true", "robot.task=reach-v3",
         "robot.cameras=[]", "session.episodes=50", "loop.stop_on_success=false", "head=edit",
         "head.critic.hidden=[32,32]", "head.head.hidden=[32,32]", "learn.spawn=true", f"session.run_dir={tmp_path}"],
        signal.SIGTERM,
    )
    pids = [ln.split()[4].rstrip(",") for ln in out.splitlines() if ln.startswith("tandem run: learner pid")]
    assert pids, out[-2000:]
    learner_pid = int(pids[0])
    assert code == 0, out[-2000:]
    assert "SIGTERM: stopping after this tick" in out and "learner stopped (exit 0)" in out, out[-2000:]
    assert _gone(learner_pid), f"learner {learner_pid} outlived its session"
    summary = json.loads((Path(tmp_path) / "summary.json").read_text())
    assert 1 <= len(summary["episodes"]) < 50  # it stopped early and still wrote its summary
