"""tandem study at a tiny budget, as a user runs it: real sessions with a spawned learner per arm and seed,
evaluations on unseen scenes, study.json / study.md / study.png."""

import json
import subprocess
import sys

import pytest

from tandem.core.errors import ConfigError

COMMON = ["policy=scripted", "policy.bias=0.6", "robot.cameras=[]", "robot.task=reach-v3",
          "robot.max_episode_steps=60", "teleop=human", "learn.learner.batch_size=16", "learn.learner.min_records=4"]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study") / "tiny"
    cmd = [sys.executable, "-m", "tandem.cli", "study", *COMMON, "--arms", "base", "imitate_all", "--seeds", "0", "1",
           "--episodes", "2", "--updates-per-episode", "3", "--curve-every", "1", "--curve-episodes", "1",
           "--eval-seeds", "0", "--eval-episodes", "2", "--out", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    return out, res.stdout


def test_every_arm_ran_the_same_seeds_and_budgets_and_was_evaluated_on_the_same_unseen_scenes(study):
    out, stdout = study
    data = json.loads((out / "study.json").read_text())
    assert set(data["arms"]) == {"base", "imitate_all"} and data["split"] == "unseen"
    trained = data["arms"]["imitate_all"]
    assert trained["seeds"] == [0, 1] and trained["episodes"] == 2 and trained["split"] == "unseen"
    assert all(u >= 2 * 3 for u in trained["updates"])  # the learner budget was spent, per run
    assert all(t > 0 for t in trained["training_ticks"]) and len(trained["operator_ticks"]) == 2
    assert trained["suite"] == ["reach-v3"] and "--split unseen" in trained["commands"][1]
    for arm in data["arms"].values():
        s = arm["success"]
        assert 0 <= s["lo"] <= s["mean"] <= s["hi"] <= 1
        assert set(arm["per_seed"]) == {"0", "1"}
    scenes = {}
    for arm, run in (("base", "base/eval"), ("imitate_all", "imitate_all/seed_0/eval"),
                     ("imitate_all1", "imitate_all/seed_1/eval")):
        ev = json.loads((out / run / "eval.json").read_text())
        scenes[arm] = [e["scene"] for r in ev["results"] for e in r["episodes"]]
        assert all(s["split"] == "unseen" for s in scenes[arm])
    assert scenes["base"] == scenes["imitate_all"] == scenes["imitate_all1"]  # paired by construction
    (diff,) = data["differences"]
    assert diff["arm"] == "imitate_all" and diff["control"] == "base" and diff["lo"] <= diff["hi"]
    # the training runs' own curves (autonomous, unseen scenes) and their learners
    summary = json.loads((out / "imitate_all" / "seed_1" / "summary.json").read_text())
    assert [e["after_episodes"] for e in summary["evaluations"]] == [1, 2]
    assert summary["episodes"][0]["seed"] == 1000 and summary["episodes"][0]["scene"]["split"] == "train"
    assert (out / "study.png").stat().st_size > 0
    md = (out / "study.md").read_text()
    assert "imitate_all - base" in md and data["command"].startswith("tandem study")
    assert "tandem study: imitate_all" in stdout
    # the critic's calibration on the evaluation's own chunks (a critic arm has one, the base none)
    cal = trained["calibration"]
    assert data["arms"]["base"]["calibration"] is None and cal["chunks"] > 0 and cal["episodes"] == 2 * 2
    assert cal["mean_abs_error"] >= abs(cal["mean_error"]) and len(cal["per_seed"]) == 2
    assert "Value calibration" in md and data["realtime"] is False


def test_an_unknown_arm_fails_before_anything_runs(tmp_path):
    res = subprocess.run([sys.executable, "-m", "tandem.cli", "study", "--arms", "nosuch", "--out", str(tmp_path / "x")],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "--arms" in res.stderr and not (tmp_path / "x").exists()


def test_an_arm_that_extends_another_runs_its_overrides_first_then_its_own(tmp_path):
    from tandem.commands.study import load_arms
    f = tmp_path / "arms.yaml"
    f.write_text("a: {overrides: [x=1]}\nb: {extends: a, overrides: [y=2]}\nc: {extends: b, overrides: [x=3]}\n"
                 "d: {train: false, overrides: []}\ne: {extends: d}\n")
    arms = load_arms(f)
    assert arms["c"] == {"train": True, "overrides": ["x=1", "y=2", "x=3"]}
    assert arms["e"] == {"train": False, "overrides": []}
    f.write_text("a: {extends: nosuch}\n")
    with pytest.raises(ConfigError, match="a.extends='nosuch'"):
        load_arms(f)
    f.write_text("a: {extends: b}\nb: {extends: a}\n")
    with pytest.raises(ConfigError, match="cycle a -> b -> a"):
        load_arms(f)


def _base_run(run_dir, versions_per_episode, published):
    run_dir.mkdir(parents=True)
    eps = [{"base_version": v} for v in versions_per_episode]
    (run_dir / "summary.json").write_text(json.dumps({"episodes": eps}))
    for v in published:
        (run_dir / "learner" / "base" / f"v{v:06d}").mkdir(parents=True)


def test_the_base_after_each_iteration_is_the_version_deployed_from_the_next_block_on(tmp_path):
    from tandem.commands.study import iteration_versions

    # 8 episodes in 4 blocks of 2: the robot swapped in v3 before episode 2, v5 before episode 6, and the
    # learner published up to v7 after the last episode
    _base_run(tmp_path / "r", [1, 1, 3, 3, 3, 3, 5, 6], [2, 3, 4, 5, 6, 7])
    assert iteration_versions(tmp_path / "r", 8, 4) == [(1, 3), (2, 3), (3, 5), (4, 7)]
    # a learner that never published: every iteration is the loaded checkpoint
    _base_run(tmp_path / "n", [1, 1, 1, 1], [])
    assert iteration_versions(tmp_path / "n", 4, 2) == [(1, 1), (2, 1)]


def test_iteration_summary_pairs_arms_per_iteration_on_the_same_scenes():
    import numpy as np

    from tandem.commands.study import summarize_iterations

    def runs(rates):  # per training seed: one evaluation seed of 4 episodes at each iteration
        return {s: {"outcomes": [np.array([1.0, 1.0, 0.0, 0.0])],
                    "iterations": [{"iteration": k + 1, "after_episodes": 2 * (k + 1), "version": k + 2,
                                    "outcomes": [np.array(r)]} for k, r in enumerate(rs)]}
                for s, rs in rates.items()}

    results = {"base": {"runs": {s: {"outcomes": [np.array([1.0, 1.0, 0.0, 0.0])], "iterations": None} for s in (0, 1)}},
               "base_dagger": {"runs": runs({0: [[1, 1, 0, 0], [1, 1, 1, 0]], 1: [[1, 0, 0, 0], [1, 1, 0, 0]]})},
               "base_aloe": {"runs": runs({0: [[1, 1, 1, 0], [1, 1, 1, 1]], 1: [[1, 1, 0, 0], [1, 1, 1, 1]]})}}
    curves, diffs = summarize_iterations(results, [0, 1])
    assert set(curves) == {"base_dagger", "base_aloe"}  # the base arm trains nothing
    aloe = curves["base_aloe"]
    assert [p["iteration"] for p in aloe] == [0, 1, 2] and aloe[0]["success"]["mean"] == 0.5
    assert aloe[2]["success"]["mean"] == 1.0 and aloe[2]["versions"] == {"0": 3, "1": 3}
    assert curves["base_dagger"][1]["per_seed"] == {"0": 0.5, "1": 0.25}
    by_k = {d["iteration"]: d for d in diffs}
    assert set(by_k) == {1, 2} and all(d["arm"] == "base_aloe" and d["control"] == "base_dagger" for d in diffs)
    assert by_k[2]["difference"] == 1.0 - 0.625 and 0 <= by_k[2]["lo"] <= 0.375 <= by_k[2]["hi"]
    assert by_k[1]["difference"] == 0.625 - 0.375


def test_iterations_must_divide_the_episodes(tmp_path):
    res = subprocess.run([sys.executable, "-m", "tandem.cli", "study", "--episodes", "10", "--iterations", "4",
                          "--out", str(tmp_path / "x")], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "--iterations" in res.stderr and not (tmp_path / "x").exists()
