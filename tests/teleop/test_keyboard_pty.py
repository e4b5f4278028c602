"""The terminal keyboard driven through a pseudo-terminal: keys, events, terminal restore, hang-up, CLI."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import termios
import time
from pathlib import Path

import numpy as np
import pytest

from tandem.core.errors import DeviceMissingError
from tandem.teleop.keyboard import KEY_HELP, KeyboardConfig, KeyboardTeleop, split_keys
from tandem.teleop.takeover import Mode, TakeoverOperator

REPO = Path(__file__).resolve().parents[2]


def wait_for(predicate, timeout: float = 2.0):
    """Poll ``predicate`` until it returns something other than None, False or ()."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value is not None and value is not False and not (isinstance(value, tuple) and not value):
            return value
        time.sleep(0.01)
    return predicate()


@pytest.fixture
def terminal():
    master, slave = pty.openpty()
    try:
        yield master, slave
    finally:
        for fd in (master, slave):
            try:
                os.close(fd)
            except OSError:
                pass


def test_split_keys_keeps_arrow_sequences_whole():
    assert split_keys(b"w\x1b[Ad ") == [b"w", b"\x1b[A", b"d", b" "]


def test_keys_become_events_and_motion_and_the_terminal_is_restored(terminal):
    master, slave = terminal
    before = termios.tcgetattr(slave)
    kb = KeyboardTeleop(KeyboardConfig(tty=os.ttyname(slave), speed=0.5, key_hold_s=0.3))
    kb.connect()
    try:
        attrs = termios.tcgetattr(slave)
        assert not attrs[3] & termios.ICANON and not attrs[3] & termios.ECHO  # cbreak, no echo
        assert attrs[3] & termios.ISIG  # Ctrl-C still interrupts
        os.write(master, b" ")
        assert wait_for(lambda: kb.get_events().events) == ("takeover",)
        os.write(master, b"dr\x1b[Ac")

        def gripper_closed():
            action = kb.get_action()
            return action if action[3] == 1.0 else None

        action = wait_for(gripper_closed)
        np.testing.assert_allclose(action, [0.5, 0.5, 0.5, 1.0])
        time.sleep(0.35)  # past key_hold_s: motion stops, the gripper stays latched
        np.testing.assert_allclose(kb.get_action(), [0.0, 0.0, 0.0, 1.0])
        os.write(master, b"yq")
        assert wait_for(lambda: kb.get_events().events) == ("success", "stop")
    finally:
        kb.disconnect()
    after = termios.tcgetattr(slave)
    assert after[3] == before[3]
    kb.disconnect()  # twice is fine


def test_takeover_success_stop_through_the_state_machine(terminal):
    master, slave = terminal
    kb = KeyboardTeleop(KeyboardConfig(tty=os.ttyname(slave), speed=1.0, ramp_ticks=0, fade_ticks=0))
    last = np.array([0.0, 0.0, 0.0, -1.0], np.float32)
    op = TakeoverOperator(kb, kb.config, last_sent=lambda: last, hold=lambda a: np.zeros(4, np.float32))
    op.connect()
    try:
        op.reset()
        obs, policy = {}, np.zeros(4, np.float32)
        assert op.step(obs, policy, 0).action is None
        os.write(master, b" a")
        out = wait_for(lambda: (o := op.step(obs, policy, 1)).action is not None and o)
        assert out.takeover_start and op.mode == Mode.HUMAN
        out = wait_for(lambda: (o := op.step(obs, policy, 2)).action[0] < 0 and o)
        np.testing.assert_allclose(out.action, [-1.0, 0.0, 0.0, -1.0])  # gripper synced from the last action
        os.write(master, b"y")
        assert wait_for(lambda: op.step(obs, policy, 3).events) == ("success",)
        os.write(master, b"q")
        assert wait_for(lambda: op.step(obs, policy, 4).events) == ("stop",)
    finally:
        op.disconnect()


def test_closed_terminal_is_reported_lost(terminal):
    master, slave = terminal
    kb = KeyboardTeleop(KeyboardConfig(tty=os.ttyname(slave)))
    kb.connect()
    try:
        os.close(master)  # hang-up: the reader sees EIO / EOF
        assert wait_for(lambda: not kb.is_connected)
        with pytest.raises(DeviceMissingError):
            kb.get_events()
    finally:
        kb.disconnect()


def test_no_terminal_is_a_clear_error(tmp_path):
    path = tmp_path / "not-a-tty"
    path.write_text("")
    with pytest.raises(DeviceMissingError, match="terminal"):
        KeyboardTeleop(KeyboardConfig(tty=str(path))).connect()


def test_cli_reports_a_missing_terminal_and_exits(tmp_path, capsys):
    import signal

    from tandem.cli import main

    handler = signal.getsignal(signal.SIGINT)
    try:
        rc = main(["run", "policy=scripted", "teleop=keyboard", "robot.cameras=[]", "robot.realtime=false", f"session.run_dir={tmp_path}"])
    finally:
        signal.signal(signal.SIGINT, handler)  # main() installs its own Ctrl-C handler
    assert rc == 3
    assert "device missing: teleop=keyboard needs a terminal" in capsys.readouterr().err


def read_until(fd: int, needle: bytes, buf: bytearray, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while needle not in buf and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            buf.extend(chunk)
    return needle in buf


def test_cli_shows_keys_and_obeys_takeover_success_stop(tmp_path):
    """``tandem run teleop=keyboard`` in a pseudo-terminal: help on screen, space, y, q."""
    master, slave = pty.openpty()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = [
        sys.executable, "-m", "tandem.cli", "run", "policy=scripted", "teleop=keyboard", "robot.cameras=[]", "session.episodes=3",
        "policy.bias=0.6", f"session.run_dir={tmp_path}", "teleop.ramp_ticks=2",
    ]
    proc = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave, cwd=REPO, env=env, close_fds=True)
    os.close(slave)
    buf = bytearray()
    try:
        assert read_until(master, b"q          stop the session", buf, 60), buf.decode(errors="replace")
        assert KEY_HELP.splitlines()[1].encode() in buf
        time.sleep(1.0)  # the first episode starts (its reset drops keys pressed before it)
        os.write(master, b" ")
        time.sleep(0.5)
        os.write(master, b"y")
        assert read_until(master, b"episode   0", buf, 20), buf.decode(errors="replace")
        time.sleep(0.3)
        os.write(master, b"q")
        assert read_until(master, b"success rate", buf, 20), buf.decode(errors="replace")
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    text = buf.decode(errors="replace")
    lines = [line for line in text.splitlines() if line.startswith("episode")]
    assert len(lines) == 2, text
    assert "success" in lines[0] and "takeovers 1" in lines[0], text
    assert "stopped" in lines[1], text
