"""Issue #24, part B, through the command line: process hygiene of a spawned learner (defect 5), a dead
policy worker (defect 6) and errors that must end in one ``tandem:`` line with exit code 2 (defect 8).

Only processes these tests start are signalled, by their pid.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from links_testkit import make_record, wait_for

from tandem.cli import main
from tandem.commands import learner_process
from tandem.commands.learner_process import LearnerProcess
from tandem.runtime.config import compose_run
from tandem.runtime.links.experience import ExperienceLink
from tandem.value.replay import lock_store

TANDEM = [sys.executable, "-m", "tandem.cli"]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}
QUICK = ["policy=scripted", "robot.realtime=false", "robot.cameras=[]", "robot.task=reach-v3"]


def gone(pid: int) -> bool:
    """True once ``pid`` has exited (no such process, or a zombie nobody has reaped yet)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    return not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"


def endpoints(store: Path) -> dict | None:
    try:
        return json.loads((store / "endpoints.json").read_text())
    except (OSError, ValueError):
        return None


def one_tandem_line(err: str) -> str:
    """The one ``tandem:`` line of stderr (and no traceback)."""
    assert "Traceback" not in err, err[-3000:]
    lines = [ln for ln in err.splitlines() if ln.startswith("tandem:")]
    assert len(lines) == 1, err[-3000:]
    return lines[0]


# ---------------------------------------------------------------------------------------------- defect 5


def test_sigkill_of_tandem_run_takes_its_spawned_learner_with_it_and_the_next_run_uses_the_store(tmp_path):
    """Defect 5: SIGKILL of ``tandem run learn.spawn=true`` used to orphan the learner (store lock and
    ports held; the next run on the store failed with a traceback). The learner now dies with its parent."""
    store = tmp_path / "learner"
    common = [*QUICK, "learn.spawn=true", f"learn.store_dir={store}", f"link.spool_dir={tmp_path / 'spool'}"]
    proc = subprocess.Popen(TANDEM + ["run", *common, "session.episodes=500", f"session.run_dir={tmp_path / 'r1'}"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)
    try:
        assert wait_for(lambda: (endpoints(store) or {}).get("pid") not in (None, proc.pid), 120, 0.1), \
            proc.stdout.read() if proc.poll() is not None else "no learner came up"
        learner_pid = endpoints(store)["pid"]
        time.sleep(1.0)  # the session runs episodes now
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert wait_for(lambda: gone(learner_pid), 40, 0.1), f"learner {learner_pid} outlived its killed session"
    log = (store / "learner.log").read_text()
    assert "tandem learn: summary" in log  # SIGTERM from the parent-death signal: a clean stop, not a kill
    assert (store / "summary-rank0.json").exists()
    again = subprocess.run(TANDEM + ["run", *common, "session.episodes=1", f"session.run_dir={tmp_path / 'r2'}"],
                           capture_output=True, text=True, timeout=300, env=ENV)
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    assert "learner stopped (exit 0)" in again.stdout


def test_a_spawned_learner_keeps_its_ports_when_it_is_restarted(tmp_path):
    """Defect 5: a spawned learner restarted as its learner.yaml says used to get new random ports, and the
    robot never reconnected. ``tandem run`` now restarts a learner that dies on the same ports, the ports
    are in learner.yaml for a restart by hand, and the robot's records all arrive."""
    store = tmp_path / "learner"
    cfg = compose_run([*QUICK, "learn.spawn=true", f"learn.store_dir={store}", f"link.spool_dir={tmp_path / 'spool'}",
                       "link.timeout_s=0.5"])
    spawned = LearnerProcess(cfg, tmp_path).start()
    ports = {"experience": cfg.link.experience_port, "weights": cfg.link.weights_port}
    link = ExperienceLink(cfg.link).start()
    try:
        for i in range(20):
            link.send(make_record("robot0", 0, i))
        assert link.wait_acked(20)
        first = spawned.proc.pid
        os.kill(first, signal.SIGKILL)  # the learner dies mid-session
        for i in range(20, 40):
            link.send(make_record("robot0", 0, i))
        assert wait_for(lambda: (endpoints(store) or {}).get("pid") not in (None, first), 120, 0.1)
        assert spawned.restarts == 1 and spawned.proc.pid != first
        assert {k: int(endpoints(store)[k].rsplit(":", 1)[1]) for k in ports} == ports
        assert link.wait_acked(30), link.stats  # the robot reconnected by itself
    finally:
        link.close(0)
        spawned.stop()
    saved = __import__("yaml").safe_load((store / "learner.yaml").read_text())["learner"]
    assert {"experience": saved["experience_port"], "weights": saved["weights_port"]} == ports
    by_hand = subprocess.Popen(TANDEM + ["learn", "--config", str(store / "learner.yaml")], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env=ENV)
    try:
        assert wait_for(lambda: (endpoints(store) or {}).get("pid") == by_hand.pid, 120, 0.1)
        assert {k: int(endpoints(store)[k].rsplit(":", 1)[1]) for k in ports} == ports
    finally:
        by_hand.send_signal(signal.SIGTERM)
        by_hand.wait(60)


# ---------------------------------------------------------------------------------------------- defect 6


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


def test_a_dead_policy_worker_ends_the_run_with_a_summary_and_report(tmp_path):
    """Defect 6: a dead policy worker used to end ``tandem run`` with a raw traceback and no summary or
    report. Now the finished episodes are summarised and reported, and one ``tandem:`` line says why."""
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(TANDEM + ["run", *QUICK, "session.backend=process", "session.episodes=500",
                                      "loop.stop_on_success=false", "robot.max_episode_steps=60",
                                      "record.enabled=false",  # the policy worker is then the only child
                                      "policy_link.max_restarts=0",  # no restart: the run ends (a restart: test_worker_restart.py)
                                      f"session.run_dir={run_dir}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        line = ""
        while not line.startswith("episode"):
            line = proc.stdout.readline()
            assert line or proc.poll() is None, proc.stderr.read()[-3000:]
        workers = [c for c in _children(proc.pid) if "resource_tracker" not in Path(f"/proc/{c}/cmdline").read_text()]
        assert len(workers) == 1, workers
        os.kill(workers[0], signal.SIGKILL)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 2, err[-3000:]
    message = one_tandem_line(err)
    assert "the session ended early" in message and "worker process exited" in message and str(run_dir) in message
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["episodes"] and "worker process exited" in summary["error"]
    assert (run_dir / "report.md").exists()


# ---------------------------------------------------------------------------------------------- defect 8


@pytest.fixture
def blocked(tmp_path) -> Path:
    """A path under which nothing can be created (below a file; works as root too)."""
    (tmp_path / "a-file").write_text("")
    return tmp_path / "a-file"


def test_an_unwritable_spool_is_one_tandem_line(tmp_path, blocked, capsys):
    assert main(["run", *QUICK, "session.episodes=1", "link.enabled=true", f"link.spool_dir={blocked / 'spool'}",
                 f"session.run_dir={tmp_path / 'run'}"]) == 2
    line = one_tandem_line(capsys.readouterr().err)
    assert "link.spool_dir=" in line and "cannot be written" in line


def test_an_unwritable_record_root_is_one_tandem_line(tmp_path, blocked, capsys):
    assert main(["run", *QUICK, "session.episodes=1", "record.enabled=true", f"record.root={blocked / 'ds'}",
                 f"session.run_dir={tmp_path / 'run'}"]) == 2
    line = one_tandem_line(capsys.readouterr().err)
    assert "record.root=" in line and "cannot be written" in line


def test_a_second_session_on_a_spool_in_use_is_one_tandem_line(tmp_path, capsys):
    from tandem.runtime.links.spool import RecordSpool

    holder = RecordSpool(tmp_path / "spool", "robot0")  # another session holds the spool
    try:
        assert main(["run", *QUICK, "session.episodes=1", "link.enabled=true", f"link.spool_dir={tmp_path / 'spool'}",
                     f"session.run_dir={tmp_path / 'run'}"]) == 2
    finally:
        holder.close()
    line = one_tandem_line(capsys.readouterr().err)
    assert "in use by another session" in line and "link.robot_id" in line


def test_learn_store_and_config_errors_are_one_tandem_line(tmp_path, blocked, capsys):
    assert main(["learn", f"learner.store_dir={blocked / 'store'}"]) == 2
    assert "learner.store_dir=" in one_tandem_line(capsys.readouterr().err)
    assert main(["learn", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "cannot be read" in one_tandem_line(capsys.readouterr().err)
    (tmp_path / "flat.yaml").write_text("batch_size: 4\n")
    assert main(["learn", "--config", str(tmp_path / "flat.yaml")]) == 2
    assert "has no `learner:` block" in one_tandem_line(capsys.readouterr().err)


def test_a_second_learner_on_a_store_in_use_is_one_tandem_line(tmp_path, capsys, monkeypatch):
    fd = lock_store(tmp_path / "store" / "replay")  # a learner (this process) holds the store
    try:
        assert main(["learn", f"learner.store_dir={tmp_path / 'store'}", "learner.experience_port=0",
                     "learner.weights_port=0"]) == 2
        line = one_tandem_line(capsys.readouterr().err)
        assert "in use by another learner process" in line and f"pid {os.getpid()}" in line
        monkeypatch.setattr(learner_process, "STORE_WAIT_S", 0.2)
        assert main(["run", *QUICK, "session.episodes=1", "learn.spawn=true", f"learn.store_dir={tmp_path / 'store'}",
                     f"session.run_dir={tmp_path / 'run'}"]) == 2
        assert "in use by another learner process" in one_tandem_line(capsys.readouterr().err)
    finally:
        os.close(fd)


def test_a_bad_spawned_learner_setting_is_one_tandem_line(tmp_path, capsys):
    assert main(["run", *QUICK, "session.episodes=1", "learn.spawn=true", "+learn.learner.batch_size=-1",
                 f"learn.store_dir={tmp_path / 'store'}", f"session.run_dir={tmp_path / 'run'}"]) == 2
    line = one_tandem_line(capsys.readouterr().err)
    assert "learn.learner.batch_size=-1" in line


def test_replay_of_a_missing_directory_is_one_tandem_line(tmp_path, capsys):
    assert main(["replay", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in one_tandem_line(capsys.readouterr().err)
