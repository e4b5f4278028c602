"""SIGKILL a recording session at random moments; after recovery the dataset loads in lerobot and at most
one second of ticks (fps frames) is lost per kill.

The session runs in a real subprocess (``recorder_crash_child.py``: the ``tandem run`` Session with
recording on, MetaWorld paced at 50 Hz) that prints every tick it produces, so the test knows what the
loop sent up to the kill. Kills hit the whole process group (recorder and converter: nothing gets to
clean up) or only the recording process (the converter is orphaned mid-work and must stand down).
Recovery runs by hand (``tandem recover``) or automatically when the next session starts.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tandem.cli import main as tandem_main
from tandem.runtime.links.from_dataset import read_outcomes
from tandem.runtime.recording.dataset_store import default_repo_id, spool_dir
from tandem.runtime.recording.tick_spool import list_spool, read_spool_episode

CHILD = Path(__file__).with_name("recorder_crash_child.py")
FPS = 50
BASE = ["policy=scripted", "robot.task=reach-v3", "robot.realtime=true", "robot.max_episode_steps=40", "session.episodes=1000",
        "policy.noise_std=0.1", "loop.stop_on_success=false"]  # every episode runs exactly 40 ticks


class Run:
    """One recording subprocess and the ticks it reported."""

    def __init__(self, root: Path, overrides: list[str], log: Path):
        env = {**os.environ, "MUJOCO_GL": "osmesa", "PYOPENGL_PLATFORM": "osmesa"}
        self.log = open(log, "a")
        self.proc = subprocess.Popen([sys.executable, str(CHILD), str(root), *BASE, *overrides],
                                     stdout=subprocess.PIPE, stderr=self.log, text=True, env=env,
                                     start_new_session=True)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line.strip())

    def ticks(self) -> int:
        return sum(1 for line in list(self.lines) if line.startswith("T "))

    def wait_ticks(self, n: int, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while self.ticks() < n:
            assert self.proc.poll() is None, f"session exited early: {self.lines[-3:]}"
            assert time.monotonic() < deadline, "session too slow"
            time.sleep(0.005)

    def wait_mid_episode(self, root: Path, first: int, last: int, timeout: float = 120.0) -> None:
        """Wait until the newest tick is tick ``first..last`` of its episode (so a kill soon after lands
        inside an episode, not between two) and the recorder's spool holds a tick of that episode.

        The loop prints a tick before the recorder's writer thread spools it (through a queue): on a
        loaded machine the writer can be behind by a few ticks, and a kill before the episode's first
        tick is spooled leaves nothing of it to recover.
        """
        deadline = time.monotonic() + timeout
        while True:
            ticks = [line for line in list(self.lines) if line.startswith("T ")]
            if ticks:
                _, episode, tick = ticks[-1].split()
                if first <= int(tick) <= last and self.spooled(root, int(episode)) > 0:
                    return
            assert self.proc.poll() is None, f"session exited early: {self.lines[-3:]}"
            assert time.monotonic() < deadline, "session too slow"
            time.sleep(0.005)

    def spooled(self, root: Path, episode: int) -> int:
        """Ticks of this session's ``episode`` in the spool (0 while it has no spool directory yet)."""
        session = self.session
        for path in reversed(list_spool(spool_dir(root))):
            try:
                spooled = read_spool_episode(path)
            except OSError:  # an earlier episode the converter just committed and removed
                continue
            if spooled is not None and spooled.session == session and int(spooled.header["episode"]) == episode:
                return len(spooled.rows)
        return 0

    def kill(self, group: bool) -> None:
        pgid = self.proc.pid  # start_new_session: the group is the session's pid
        if group:
            os.killpg(pgid, signal.SIGKILL)
        else:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        deadline = time.monotonic() + 90  # an orphaned converter finishes its commit, then exits
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        else:
            os.killpg(pgid, signal.SIGKILL)
            pytest.fail("the orphaned converter did not exit")
        self.finish()

    def finish(self) -> None:
        self.reader.join(timeout=10)
        self.log.close()

    @property
    def session(self) -> int:
        return next(int(line.split()[1]) for line in self.lines if line.startswith("SESSION"))

    def produced(self) -> dict[int, int]:
        """Ticks the loop produced, per episode of the session."""
        out: dict[int, int] = {}
        for line in self.lines:
            if line.startswith("T "):
                _, ep, _tick = line.split()
                out[int(ep)] = out.get(int(ep), 0) + 1
        return out


def check_dataset(root: Path, session: int, produced: dict[int, int]) -> int:
    """The dataset loads in lerobot; the session's episodes are prefixes of what was produced. Returns frames lost."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    ds = LeRobotDataset(default_repo_id(root), root=root)
    cols = ds.hf_dataset.with_format(None)[:]
    assert len(ds) == ds.meta.total_frames == len(cols["index"])
    assert cols["index"] == list(range(len(ds)))
    episodes = np.asarray(cols["episode_index"])
    ticks = np.asarray(cols["tick"])
    for e in range(ds.num_episodes):
        assert np.array_equal(ticks[episodes == e], np.arange((episodes == e).sum())), f"episode {e} has gaps"
    last = ds[len(ds) - 1]  # the newest video decodes
    assert last["observation.images.corner"].shape == (3, 96, 96)
    outcomes = read_outcomes(root)
    assert sorted(outcomes) == list(range(ds.num_episodes))
    mine = {e["session_episode"]: e["length"] for e in outcomes.values() if e["session"] == session}
    for ep, n in mine.items():
        assert n <= produced[ep]
    assert list(spool_dir(root).iterdir()) == []
    lost = sum(produced.values()) - sum(mine.values())
    assert 0 <= lost <= FPS, f"lost {lost} frames (> 1 s at {FPS} Hz); produced {produced}, recorded {mine}"
    return lost


def kill_and_check(root: Path, log: Path, rng: random.Random, group: bool, manual: bool,
                   cameras: str = "[corner]") -> dict:
    run = Run(root, [f"robot.cameras={cameras}"], log)
    run.wait_ticks(rng.randint(45, 170))
    # A random moment inside an episode: ticks 5..25 of 40, plus up to 0.1 s (5 ticks at 50 Hz).
    run.wait_mid_episode(root, 5, 25)
    time.sleep(rng.uniform(0.0, 0.1))
    run.kill(group=group)
    session, produced = run.session, run.produced()
    if manual:
        assert tandem_main(["recover", str(root)]) == 0
    else:  # the next session recovers on start; it records one more episode
        nxt = Run(root, [f"robot.cameras={cameras}", "session.episodes=1"], log)
        assert nxt.proc.wait(timeout=180) == 0
        nxt.finish()
        stats = json.loads(next(line for line in nxt.lines if line.startswith("DONE"))[5:])
        assert stats["episodes_recovered"] >= 1 and stats["episodes_committed"] == 1
        assert check_dataset(root, nxt.session, nxt.produced()) == 0
    lost = check_dataset(root, session, produced)
    return {"session": session, "produced": sum(produced.values()), "lost": lost, "group": group}


@pytest.mark.slow  # timing-dependent: on the 2-core machine it failed in about half of the runs (the next session
# or `tandem recover` found 0 episodes to recover: the kill came before the writer thread had spooled the episode's
# first tick; wait_mid_episode now waits for it). Still out of `make test`: on a loaded machine (load ~7) the
# orphaned converter can take over 90 s to exit, as it commits its whole backlog first (run it with `make test-full`)
def test_sigkill_twice_then_recover_loses_at_most_one_second(tmp_path, capsys):
    rng = random.Random(11)
    root, log = tmp_path / "ds", tmp_path / "sessions.log"
    results = [
        kill_and_check(root, log, rng, group=True, manual=True),  # recorder + converter die together
        kill_and_check(root, log, rng, group=False, manual=False),  # converter orphaned; next session recovers
    ]
    outcomes = read_outcomes(root)
    assert sum(e["recovered"] for e in outcomes.values()) == 2, results
    print(results)


@pytest.mark.slow
def test_sigkill_at_eight_random_moments_two_cameras(tmp_path):
    rng = random.Random(2024)
    root, log = tmp_path / "ds", tmp_path / "sessions.log"
    results = [kill_and_check(root, log, rng, group=rng.random() < 0.5, manual=rng.random() < 0.5,
                              cameras="[corner,topview]") for _ in range(8)]
    assert max(r["lost"] for r in results) <= FPS, results
