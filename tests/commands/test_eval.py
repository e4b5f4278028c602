"""tandem eval as a user runs it: real MetaWorld sessions per seed, eval.json/md/png, then --compare."""

import json
import subprocess
import sys

import numpy as np
import pytest
from matplotlib.image import imread

from tandem.commands.eval import main

EVAL = [sys.executable, "-m", "tandem.commands.eval"]
RUN = ["policy=scripted", "robot.realtime=false", "robot.cameras=[]", "robot.task=reach-v3"]


def run_eval(args):  # as a user runs it: a process of its own
    out = subprocess.run(EVAL + args, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def evals(tmp_path_factory):
    """Two evaluations, run in this process (main() is what ``tandem eval`` calls)."""
    root = tmp_path_factory.mktemp("evals")
    # options and overrides intermixed, as a user types them
    assert main([*RUN, "robot.max_episode_steps=40", "--seeds", "0", "1", "--episodes", "2",
                 "--out", str(root / "short"), "--label", "short"]) == 0
    assert main(["--seeds", "0", "1", *RUN, "--episodes", "2", "robot.max_episode_steps=60",
                 "--out", str(root / "long")]) == 0
    return root


def check_png(path):
    assert path.exists() and path.stat().st_size > 0
    img = imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100


def test_eval_runs_held_out_seeds_and_counts_every_episode(evals):
    for name in ("short", "long"):
        out = evals / name
        data = json.loads((out / "eval.json").read_text())
        assert data["label"] == name
        assert data["seeds"] == [0, 1] and data["episodes_per_seed"] == 2 and not data["with_operator"]
        assert "robot.task=reach-v3" in data["overrides"]
        check_png(out / "eval.png")
        per_seed = []
        for r in data["results"]:
            assert r["session_seed"] == 10_000 * (r["seed"] + 1)
            assert [e["seed"] for e in r["episodes"]] == [r["session_seed"], r["session_seed"] + 1]
            assert all(e["task"] == "reach-v3" for e in r["episodes"])
            wins = sum(e["success"] for e in r["episodes"])
            assert r["successes"] == wins and r["counted"] == 2
            per_seed.append(wins / 2)
            # the session's own summary and report, next to eval.json
            summary = json.loads((out / r["run_dir"] / "summary.json").read_text())
            assert [e["success"] for e in summary["episodes"]] == [e["success"] for e in r["episodes"]]
            assert summary["recording"] == {} and summary["links"] == {}  # recording and link forced off
            assert (out / r["run_dir"] / "ticks.npz").exists()
            check_png(out / r["run_dir"] / "success.png")
        overall = data["overall"]
        assert overall["episodes"] == 4
        assert overall["successes"] == sum(e["success"] for r in data["results"] for e in r["episodes"])
        assert overall["per_seed"] == per_seed
        assert overall["mean"] == pytest.approx(np.mean(per_seed))
        assert overall["lo"] <= overall["mean"] <= overall["hi"]
        assert data["per_task"]["reach-v3"]["successes"] == overall["successes"]
        md = (out / "eval.md").read_text()
        assert f"| overall | {overall['mean']:.3f} [{overall['lo']:.3f}, {overall['hi']:.3f}] |" in md
        assert "![success rate](eval.png)" in md


def test_compare_reports_the_difference_with_a_bootstrap_interval(evals, tmp_path):
    out = tmp_path / "cmp"
    proc = run_eval(["--compare", str(evals / "short"), str(evals / "long"), "--out", str(out)])
    data = json.loads((out / "compare.json").read_text())
    short = json.loads((evals / "short" / "eval.json").read_text())
    long = json.loads((evals / "long" / "eval.json").read_text())
    assert data["labels"] == ["short", "long"]
    diff = data["differences"][0]
    assert diff["baseline"] == "short" and diff["candidate"] == "long"
    overall = diff["overall"]
    assert overall["difference"] == pytest.approx(long["overall"]["mean"] - short["overall"]["mean"])
    assert overall["lo"] <= overall["difference"] <= overall["hi"]
    assert f"{overall['difference']:+.3f}" in proc.stdout
    check_png(out / "compare.png")
    md = (out / "compare.md").read_text()
    assert "![comparison](compare.png)" in md and "long - short" in md


def test_bad_arguments_fail_with_a_clear_message(tmp_path, capsys):
    assert main(["policy=scripted", "robot.task=nosuch-v3", "--out", str(tmp_path / "x")]) == 2
    assert "robot.task" in capsys.readouterr().err
    assert main(["--compare", str(tmp_path)]) == 2
    assert main(["--compare", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "c")]) == 1
    assert "eval.json" in capsys.readouterr().err
    assert main(["--episodes", "0", "policy=scripted"]) == 2
    assert not (tmp_path / "x").exists()


def test_eval_runs_on_unseen_scenes_by_default_and_pairs_evaluations_of_the_same_scenes(evals, tmp_path):
    short = json.loads((evals / "short" / "eval.json").read_text())
    long = json.loads((evals / "long" / "eval.json").read_text())
    assert short["split"] == long["split"] == "unseen"
    scenes = [e["scene"] for r in short["results"] for e in r["episodes"]]
    assert all(s["split"] == "unseen" for s in scenes) and len({json.dumps(s) for s in scenes}) == len(scenes)
    assert [e["scene"] for r in long["results"] for e in r["episodes"]] == scenes  # same seeds: same scenes
    assert main([*RUN, "robot.max_episode_steps=40", "--seeds", "0", "--episodes", "2", "--split", "train",
                 "--out", str(tmp_path / "train")]) == 0
    train = json.loads((tmp_path / "train" / "eval.json").read_text())
    assert train["split"] == "train"
    assert all(e["scene"]["split"] == "train" for e in train["results"][0]["episodes"])
    assert [e["scene"]["positions"] for e in train["results"][0]["episodes"]] != \
        [e["scene"]["positions"] for e in short["results"][0]["episodes"]]
    assert main(["--compare", str(evals / "short"), str(evals / "long"), "--out", str(tmp_path / "c")]) == 0
    diff = json.loads((tmp_path / "c" / "compare.json").read_text())["differences"][0]["overall"]
    assert diff["paired"] is True
    assert main(["--compare", str(evals / "short"), str(tmp_path / "train"), "--out", str(tmp_path / "d")]) == 0
    diff = json.loads((tmp_path / "d" / "compare.json").read_text())["differences"][0]["overall"]
    assert diff["paired"] is False  # other scenes: resampled independently
