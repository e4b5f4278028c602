"""``learner.demos=[DATASET]``: a recorded LeRobotDataset fills the learner's demonstration buffer before it
trains, once (a restarted learner adds nothing twice), and a path that is not a dataset is refused."""

from __future__ import annotations

import json
import subprocess
import sys

TANDEM = [sys.executable, "-m", "tandem.cli"]


def run_cli(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(TANDEM + args, capture_output=True, text=True, timeout=600)


def summary_of(stdout: str) -> dict:
    line = next(ln for ln in stdout.splitlines() if ln.startswith("tandem learn: summary "))
    return json.loads(line.removeprefix("tandem learn: summary "))


def test_demos_fill_the_demonstration_buffer_once(tmp_path):
    data, store = tmp_path / "demos", tmp_path / "learner"
    demos = run_cli(["demos", "session.episodes=2", f"record.root={data}", "robot.suite=[reach-v3]", "robot.cameras=[]",
                     "robot.max_episode_steps=40", f"session.run_dir={tmp_path / 'run'}"])
    assert demos.returncode == 0, demos.stderr[-3000:]
    frames = json.loads((data / "meta" / "info.json").read_text())["total_frames"]
    learn = ["learn", f"learner.store_dir={store}", "learner.experience_port=0", "learner.weights_port=0",
             f"learner.demos=[{data}]", "learner.demo_horizon=10", "learner.max_updates=3", "learner.min_records=4",
             "learner.batch_size=4", "learner.device=cpu", "learner.objective.type=critic",
             "++learner.objective.critic.hidden=[16,16]"]
    first = run_cli(learn)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-3000:]
    line = next(ln for ln in first.stdout.splitlines() if ln.startswith("tandem learn: demos"))
    n = int(line.split(": ")[2].split(" chunk records")[0])
    assert frames / 10 <= n <= frames / 10 + 2 and f"{n} new in the demonstration buffer" in line
    s = summary_of(first.stdout)
    assert s["replay"] == {"demo": n, "autonomous": 0, "takeover": 0} and s["step"] == 3  # trained on the demos

    again = run_cli(learn)  # a restarted learner: the log already holds them
    assert again.returncode == 0, again.stderr[-3000:]
    assert "0 new in the demonstration buffer" in again.stdout
    assert summary_of(again.stdout)["replay"]["demo"] == n


def test_a_demos_path_that_is_not_a_dataset_is_refused(tmp_path):
    out = run_cli(["learn", f"learner.store_dir={tmp_path / 'learner'}", f"learner.demos=[{tmp_path / 'nothing'}]",
                   "learner.experience_port=0", "learner.weights_port=0"])
    assert out.returncode != 0
    assert "tandem:" in out.stderr and "learner.demos" in out.stderr and "meta/info.json" in out.stderr
