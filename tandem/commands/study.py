"""``tandem study``: several arms (methods and their control arms) with the same seeds and budgets.

    tandem study [run overrides...] [--arms base hg_dagger imitate_all shipped] [--seeds 0 1 2 3 4] [--iterations K]
                 [--episodes 90] [--updates-per-episode 100] [--curve-every 30] [--curve-episodes 6]
                 [--eval-seeds 0 1 2] [--eval-episodes 15] [--realtime] [--out DIR] [--name NAME]

Arms are named in ``configs/study/arms.yaml`` (each a list of overrides). For every training seed k and
every arm that trains, one ``tandem run`` session (a process of its own, with a learner spawned on
localhost) runs ``--episodes`` episodes on training scenes with ``session.seed=1000*k`` (and the
operator's and learner's seeds k), pacing the learner to ``--updates-per-episode`` updates per episode,
with autonomous evaluations on unseen scenes every ``--curve-every`` episodes (the learning curve).
Then ``tandem eval --split unseen`` evaluates its head (``head.init`` = its learner store) on the same
``--eval-seeds`` x ``--eval-episodes`` unseen scenes as every other arm. Arms that do not train (base)
are evaluated once. The run overrides (robot, policy, teleop, ...) apply to every arm.

Every session runs with ``robot.realtime=false`` (each inference waits for its reply: results do not depend
on the machine's speed) unless ``--realtime`` (the asynchronous policy worker beside the wall-clock loop,
as deployed; the study records which).

Runs go seed by seed (every arm for seed 0, then for seed 1, ...). ``--resume`` keeps the runs in
``--out`` whose evaluation finished and reruns any other from scratch, so a study cut short continues, or
is summarised over the seeds it finished (``--seeds`` naming those).

Outputs in ``--out`` (default ``studies/<name>``): each run's directory (``<arm>/seed_<k>/``), and

- ``study.json``: per arm its success mean with a 95% interval that resamples training seeds and
  episodes, the per-seed values, seeds, episodes, learner updates, operator ticks, split, suite and the
  exact commands; per arm its paired difference from every control arm (same scenes, same seeds);
- per critic arm its value calibration on the unseen-scene evaluations (``tandem.reports.calibration``: how
  well Q of executed chunks ranks and matches the realized discounted return, and how well V(s0) separates
  successes from failures), per seed and averaged;
- ``study.md`` (the tables) and ``study.png`` (autonomous success against training episodes, with
  intervals, from the interleaved evaluations).
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from tandem.commands.eval import split_overrides
from tandem.core.config import CONFIG_DIR
from tandem.core.errors import ConfigError
from tandem.reports.calibration import calibrate
from tandem.reports.eval import successes_by_seed
from tandem.reports.session import md_table, new_figure, save_figure
from tandem.reports.stats import hierarchical_ci, hierarchical_distribution, seed_mean
from tandem.runtime.config import compose_run

ARMS_FILE = CONFIG_DIR / "study" / "arms.yaml"
CONTROL_ARMS = ("base", "hg_dagger", "imitate_all")  # what every other arm is compared with
TANDEM = [sys.executable, "-m", "tandem.cli"]
RESAMPLES, LEVEL = 10_000, 0.95
KEEP_ALL_VERSIONS = "++learn.learner.objective.base.keep_versions=1000000"


def load_arms(path: Path = ARMS_FILE) -> dict[str, dict]:
    """``configs/study/arms.yaml``: name -> {"train": bool, "overrides": [...]}.

    An arm may name another in ``extends``: it takes that arm's overrides (resolved the same way), then adds
    its own, and its ``train`` unless it sets one.
    """
    specs = yaml.safe_load(path.read_text()) or {}
    arms: dict[str, dict] = {}

    def resolve(name: str, chain: tuple[str, ...]) -> dict:
        if name in arms:
            return arms[name]
        spec = specs[name] or {}
        parent = {"train": True, "overrides": []}
        if "extends" in spec:
            base = spec["extends"]
            if base not in specs:
                raise ConfigError(f"{path.name}: {name}.extends", base, f"one of {sorted(specs)}")
            if base in chain:
                raise ConfigError(f"{path.name}: {name}.extends", base, "an arm that does not extend "
                                  f"{name} back (cycle {' -> '.join(chain + (name, base))})")
            parent = resolve(base, chain + (name,))
        arms[name] = {"train": bool(spec.get("train", parent["train"])),
                      "overrides": parent["overrides"] + list(spec.get("overrides") or [])}
        return arms[name]

    for name in specs:
        resolve(name, ())
    return {name: arms[name] for name in specs}


def build_parser() -> argparse.ArgumentParser:
    """The ``tandem study`` options (``key=value`` arguments are run overrides, as for ``tandem run``)."""
    p = argparse.ArgumentParser(prog="tandem study", description="Run arms with equal seeds and budgets; "
                                "evaluate each on unseen scenes; study.json/md/png.")
    p.add_argument("--arms", nargs="+", default=["base", "hg_dagger", "imitate_all", "shipped"],
                   help="arms from configs/study/arms.yaml")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="training seeds")
    p.add_argument("--episodes", type=int, default=90, help="training episodes per run (operator ticks count)")
    p.add_argument("--updates-per-episode", type=int, default=100, help="learner updates per training episode")
    p.add_argument("--curve-every", type=int, default=0, help="autonomous evaluation every N training "
                   "episodes during training (0: episodes // 3)")
    p.add_argument("--curve-episodes", type=int, default=6, help="episodes per evaluation during training")
    p.add_argument("--eval-seeds", type=int, nargs="+", default=[0, 1, 2], help="tandem eval --seeds")
    p.add_argument("--eval-episodes", type=int, default=15, help="tandem eval --episodes")
    p.add_argument("--out", default="", help="output directory (default studies/<name>)")
    p.add_argument("--name", default="", help="study name (default study_<date>_<time>)")
    p.add_argument("--realtime", action="store_true", help="train and evaluate with robot.realtime=true (the "
                   "asynchronous policy worker, as deployed; default false: each inference waits for its reply)")
    p.add_argument("--iterations", type=int, default=1, help="arms that update the base (base_update=...): "
                   "evaluate the base after each of K equal blocks of training episodes (the version the robot "
                   "ran from the next block on; the newest published one after the last)")
    p.add_argument("--resume", action="store_true", help="keep the runs of --out whose evaluation finished; "
                   "rerun the others from scratch")
    p.add_argument("overrides", nargs="*", help="run overrides for every arm, e.g. policy=scripted")
    return p


def _check(args: argparse.Namespace, arms: dict[str, dict]) -> None:
    for name in args.arms:
        if name not in arms:
            raise ConfigError("--arms", name, f"one of {sorted(arms)} (configs/study/arms.yaml)")
    for flag, value in (("--episodes", args.episodes), ("--eval-episodes", args.eval_episodes),
                        ("--curve-episodes", args.curve_episodes)):
        if value < 1:
            raise ConfigError(flag, value, "must be >= 1")
    if args.updates_per_episode < 0 or args.curve_every < 0:
        raise ConfigError("--updates-per-episode/--curve-every", (args.updates_per_episode, args.curve_every),
                          "must be >= 0")
    if args.iterations < 1 or args.episodes % args.iterations:
        raise ConfigError("--iterations", args.iterations, f">= 1 and dividing --episodes ({args.episodes})")
    if len(set(args.seeds)) != len(args.seeds) or min(args.seeds) < 0:
        raise ConfigError("--seeds", args.seeds, "distinct training seeds >= 0")


def _realtime(args: argparse.Namespace) -> str:
    """``robot.realtime`` of every session: false (each inference waits for its reply) unless ``--realtime``
    (the asynchronous policy worker beside the wall-clock loop, as deployed)."""
    return f"robot.realtime={'true' if args.realtime else 'false'}"


def _training_overrides(args: argparse.Namespace, arm: dict, seed: int, run_dir: Path, teleop_seeded: bool) -> list[str]:
    every = args.curve_every or max(1, args.episodes // 3)
    out = [*args.overrides, *arm["overrides"], _realtime(args), "robot.scenes=train", "learn.spawn=true",
           "record.enabled=false",  # the learner gets every record through the link; no dataset is needed
           f"session.episodes={args.episodes}", f"session.seed={1000 * seed}",
           f"link.learner_updates_per_episode={args.updates_per_episode}", f"++learn.learner.seed={seed}",
           f"session.eval_every={every}", f"session.eval_episodes={args.curve_episodes}",
           "status_line.enabled=false", f"session.run_dir={run_dir}"]
    return out + ([f"teleop.seed={seed}"] if teleop_seeded else [])


def _eval_args(args: argparse.Namespace, arm: dict, out: Path, init: Path | None,
               extra: list[str] | None = None) -> list[str]:
    head = [f"head.init={init}"] if init is not None else []
    return [*args.overrides, *arm["overrides"], *head, *(extra or []), _realtime(args), "--split", "unseen",
            "--seeds", *map(str, args.eval_seeds), "--episodes", str(args.eval_episodes), "--out", str(out),
            "--label", out.parent.name if init is None else f"{out.parent.parent.name}/{out.parent.name}"]


def _run(cmd: list[str], log: Path) -> None:
    """Run one stage as a process of its own; its output goes to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"tandem study: {' '.join(shlex.quote(c) for c in cmd[2:])}", flush=True)
    with open(log, "w") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-15:])
        raise RuntimeError(f"{' '.join(cmd[2:4])} failed with exit {rc} (log {log}):\n{tail}")


Stages = Callable[[], list[tuple[list[str], str]]]


def _stage(cmd: list[str], run_dir: Path, eval_dir: Path, resume: bool, then: Stages | None = None) -> list[list[str]]:
    """Run ``cmd`` into ``run_dir``, then each (command, log name) that ``then()`` gives (called after
    ``cmd``: the evaluations may depend on what training left); the commands. With ``resume`` a run whose
    evaluation (``eval_dir``, the last stage) is complete is kept; any other leftover of ``run_dir`` (a run
    cut short: its learner store would resume) is removed."""
    kept = resume and (eval_dir / "eval.json").exists()
    if kept:
        print(f"tandem study: kept {run_dir} (--resume)", flush=True)
    else:
        if run_dir.exists():
            shutil.rmtree(run_dir)
        _run(cmd, run_dir / ("train.log" if then is not None else "eval.log"))
    later = then() if then is not None else []
    if not kept:
        for stage, log in later:
            _run(stage, run_dir / log)
    return [cmd, *(stage for stage, _ in later)]


def _updates_base(cfg: Any) -> bool:
    """Whether a run of ``cfg`` updates the base policy (``base_update=aloe|dagger|awr``)."""
    objective = (cfg.learn.learner or {}).get("objective") or {}
    return bool(cfg.learn.spawn) and objective.get("type") == "base_awr"


def _published(run_dir: Path) -> list[int]:
    """The base versions the run's learner published (``<run_dir>/learner/base/v<N>``), ascending."""
    return sorted(int(d.name[1:]) for d in (run_dir / "learner" / "base").glob("v[0-9]*") if d.name[1:].isdigit())


def iteration_versions(run_dir: Path, episodes: int, iterations: int) -> list[tuple[int, int]]:
    """(iteration k, base version after it) for k = 1..K: the version the robot ran in the first training
    episode of block k + 1 (episodes split into K equal blocks; what was deployed after k blocks of data),
    and after the last block the newest version the learner published (its state when training ended)."""
    eps = json.loads((run_dir / "summary.json").read_text())["episodes"]
    block = episodes // iterations
    out = [(k, int(eps[k * block]["base_version"])) for k in range(1, iterations)]
    published = _published(run_dir)
    last = published[-1] if published else int(eps[-1]["base_version"])
    return [*out, (iterations, max(last, out[-1][1] if out else 0))]


def _version_overrides(run_dir: Path, version: int, initial: int) -> list[str]:
    """Run the base ``version`` of the run's learner store (the loaded checkpoint itself for ``initial``)."""
    if version == initial:
        return []
    return [f"policy.versions_dir={run_dir / 'learner' / 'base'}", f"policy.version={version}"]


def _eval_outcomes(eval_dir: Path) -> tuple[dict, list[np.ndarray]]:
    data = json.loads((eval_dir / "eval.json").read_text())
    return data, successes_by_seed(data["results"])


def _calibration(head: Any, run_dir: Path, data: dict) -> dict | None:
    """The critic's calibration on this run's evaluation (``tandem.reports.calibration``); None for a run
    without a critic or an evaluation without chunks."""
    if head.type == "none":
        return None
    episodes = {int(r["seed"]): r["episodes"] for r in data["results"]}
    return calibrate(run_dir / "learner", run_dir / "eval", head, episodes)


def _training_figures(run_dir: Path) -> dict[str, Any]:
    summary = json.loads((run_dir / "summary.json").read_text())
    learner = run_dir / "learner" / "summary-rank0.json"
    eps = summary["episodes"]
    return {
        "updates": json.loads(learner.read_text())["step"] if learner.exists() else 0,
        "operator_ticks": int(sum(e["intervention_ticks"] for e in eps)),
        "training_ticks": int(sum(e["steps"] for e in eps)),
        "takeovers": int(sum(e["takeovers"] for e in eps)),
        "assisted_success": summary["success_rate"],
        "curve": [{"after_episodes": ev["after_episodes"],
                   "outcomes": [float(r["success"]) for r in ev["episodes"] if r["outcome"] != "stopped"]}
                  for ev in summary.get("evaluations", [])],
    }


def run_study(args: argparse.Namespace, argv: list[str]) -> dict:
    """Run every arm and seed, then write study.json / study.md / study.png; the study.json data."""
    arms = load_arms()
    _check(args, arms)
    name = args.name or (Path(args.out).name if args.out else time.strftime("study_%Y%m%d_%H%M%S"))
    out = Path(args.out) if args.out else Path("studies") / name
    configs = {a: compose_run([*args.overrides, *arms[a]["overrides"]]) for a in args.arms}  # fail before running
    base_cfg = next(iter(configs.values()))
    if not hasattr(base_cfg.robot, "scenes"):
        raise ConfigError("robot", base_cfg.robot.type, "a study evaluates on unseen scenes: use a robot with "
                          "scene splits (robot=metaworld)")
    results: dict[str, dict] = {a: {"overrides": arms[a]["overrides"], "train": arms[a]["train"], "runs": {},
                                    "commands": []} for a in args.arms}
    for arm_name in [a for a in args.arms if not arms[a]["train"]]:  # evaluated once, for every seed
        eval_dir, entry = out / arm_name / "eval", results[arm_name]
        cmd = [*TANDEM, "eval", *_eval_args(args, arms[arm_name], eval_dir, None)]
        entry["commands"] += [shlex.join(c[2:]) for c in _stage(cmd, out / arm_name, eval_dir, args.resume)]
        data, outcomes = _eval_outcomes(eval_dir)
        for seed in args.seeds:
            entry["runs"][seed] = {"eval": data, "outcomes": outcomes, "updates": 0, "operator_ticks": 0,
                                   "training_ticks": 0, "takeovers": 0, "curve": []}
    for seed in args.seeds:  # seed by seed, so a study cut short has every arm for the seeds it finished
        for arm_name in [a for a in args.arms if arms[a]["train"]]:
            arm, entry = arms[arm_name], results[arm_name]
            run_dir = out / arm_name / f"seed_{seed}"
            teleop_seeded = hasattr(configs[arm_name].teleop, "seed")
            cfg = configs[arm_name]
            keep = [KEEP_ALL_VERSIONS] if _updates_base(cfg) else []  # every iteration's base is evaluated
            train = [*TANDEM, "run", *_training_overrides(args, arm, seed, run_dir, teleop_seeded), *keep]
            init = run_dir / "learner" if cfg.head.type != "none" else None
            then = _evaluations(args, arm, run_dir, init, _updates_base(cfg))
            entry["commands"] += [shlex.join(c[2:]) for c in _stage(train, run_dir, run_dir / "eval", args.resume, then)]
            data, outcomes = _eval_outcomes(run_dir / "eval")
            entry["runs"][seed] = {"eval": data, "outcomes": outcomes, **_training_figures(run_dir),
                                   "calibration": _calibration(cfg.head, run_dir, data),
                                   "iterations": _iteration_outcomes(args, run_dir) if _updates_base(cfg) else None}
    data = summarize(results, args, argv, base_cfg)
    write_study(out, data, results)
    return data


def _iteration_dir(run_dir: Path, k: int, iterations: int) -> Path:
    """Where the evaluation after iteration k goes (the last one is the run's ``eval``)."""
    return run_dir / ("eval" if k == iterations else f"eval_iter{k}")


def _evaluations(args: argparse.Namespace, arm: dict, run_dir: Path, init: Path | None, base: bool) -> Stages:
    """The evaluation stages of a trained run: its final evaluation; for a run that updates the base, one
    evaluation of the base after each iteration (``--iterations``), the last being the final one."""
    def stages() -> list[tuple[list[str], str]]:
        if not base:
            return [([*TANDEM, "eval", *_eval_args(args, arm, run_dir / "eval", init)], "eval.log")]
        initial = int(json.loads((run_dir / "summary.json").read_text())["episodes"][0]["base_version"])
        out = []
        for k, version in iteration_versions(run_dir, args.episodes, args.iterations):
            where = _iteration_dir(run_dir, k, args.iterations)
            cmd = [*TANDEM, "eval", *_eval_args(args, arm, where, init, _version_overrides(run_dir, version, initial))]
            out.append((cmd, f"{where.name}.log"))
        return out
    return stages


def _iteration_outcomes(args: argparse.Namespace, run_dir: Path) -> list[dict]:
    """Per iteration k = 1..K: the training episodes before it, the base version and its evaluation outcomes."""
    out = []
    for k, version in iteration_versions(run_dir, args.episodes, args.iterations):
        _, outcomes = _eval_outcomes(_iteration_dir(run_dir, k, args.iterations))
        out.append({"iteration": k, "after_episodes": k * args.episodes // args.iterations, "version": version,
                    "outcomes": outcomes})
    return out


def _point(outcomes: list[list[np.ndarray]]) -> float:
    """The success rate ``hierarchical_ci`` reports (mean over training seeds of each seed's rate), without
    its resampling."""
    return float(np.mean([seed_mean(r) for r in outcomes]))


def _paired(name: str, control: str, a: list[list[np.ndarray]], b: list[list[np.ndarray]], **extra: Any) -> dict:
    """Paired difference (``a`` - ``b``, per training seed a list of per-evaluation-seed outcome arrays on
    the same scenes) with its percentile interval."""
    diffs = [[y - x for x, y in zip(xs, ys, strict=True)] for xs, ys in zip(b, a, strict=True)]
    reps = hierarchical_distribution(diffs, RESAMPLES, np.random.default_rng(0))
    lo, hi = (float(q) for q in np.quantile(reps, [(1 - LEVEL) / 2, (1 + LEVEL) / 2]))
    d = _point(a) - _point(b)
    return {"arm": name, "control": control, **extra, "difference": d, "lo": lo, "hi": hi,
            "excludes_zero": bool(lo > 0 or hi < 0)}


def summarize_iterations(results: dict[str, dict], seeds: list[int]) -> tuple[dict[str, list[dict]], list[dict]]:
    """Per base-updating arm, its base-only success after each iteration (iteration 0: the ``base`` arm's
    evaluation when the study has one), and the paired difference between every two such arms at every
    iteration."""
    curves: dict[str, list[dict]] = {}
    outcomes: dict[str, dict[int, list]] = {}
    for name, entry in results.items():
        runs = [entry["runs"][s] for s in seeds]
        if not runs or not all(r.get("iterations") for r in runs):
            continue
        points = []
        if "base" in results:
            base = [results["base"]["runs"][s]["outcomes"] for s in seeds]
            mean, lo, hi = hierarchical_ci(base, n=RESAMPLES, seed=0, level=LEVEL)
            points.append({"iteration": 0, "after_episodes": 0, "versions": None,
                           "success": {"mean": mean, "lo": lo, "hi": hi}})
        by_k: dict[int, list] = {}
        for k in range(len(runs[0]["iterations"])):
            its = [r["iterations"][k] for r in runs]
            by_k[its[0]["iteration"]] = [it["outcomes"] for it in its]
            mean, lo, hi = hierarchical_ci(by_k[its[0]["iteration"]], n=RESAMPLES, seed=0, level=LEVEL)
            points.append({"iteration": its[0]["iteration"], "after_episodes": its[0]["after_episodes"],
                           "versions": {str(s): it["version"] for s, it in zip(seeds, its, strict=True)},
                           "success": {"mean": mean, "lo": lo, "hi": hi},
                           "per_seed": {str(s): float(np.mean(np.concatenate(it["outcomes"])))
                                        for s, it in zip(seeds, its, strict=True)}})
        curves[name], outcomes[name] = points, by_k
    names = list(curves)
    diffs = [_paired(a, b, outcomes[a][k], outcomes[b][k], iteration=k)
             for i, a in enumerate(names) for b in names[:i] for k in outcomes[a] if k in outcomes[b]]
    return curves, diffs


def summarize(results: dict[str, dict], args: argparse.Namespace, argv: list[str], cfg: Any) -> dict:
    """study.json's content: per arm the rate with its interval and budgets; paired differences."""
    arms: dict[str, Any] = {}
    for name, entry in results.items():
        runs = [entry["runs"][s] for s in args.seeds]
        mean, lo, hi = hierarchical_ci([r["outcomes"] for r in runs], n=RESAMPLES, seed=0, level=LEVEL)
        arms[name] = {
            "success": {"mean": mean, "lo": lo, "hi": hi},
            "per_seed": {str(s): entry["runs"][s]["eval"]["overall"]["mean"] for s in args.seeds},
            "seeds": list(args.seeds), "episodes": args.episodes if entry["train"] else 0,
            "updates": [r["updates"] for r in runs], "operator_ticks": [r["operator_ticks"] for r in runs],
            "training_ticks": [r["training_ticks"] for r in runs], "takeovers": [r["takeovers"] for r in runs],
            "split": "unseen", "suite": list(getattr(cfg.robot, "suite", None) or [cfg.robot.task]),
            "eval_seeds": list(args.eval_seeds), "eval_episodes": args.eval_episodes,
            "overrides": entry["overrides"], "commands": entry["commands"],
            "calibration": calibration_summary([r.get("calibration") for r in runs]),
        }
    differences = []
    for name in results:
        for control in CONTROL_ARMS:  # controls are compared with the controls before them only
            if control not in results or control == name or (
                    name in CONTROL_ARMS and CONTROL_ARMS.index(control) > CONTROL_ARMS.index(name)):
                continue
            differences.append(_paired(name, control, [results[name]["runs"][s]["outcomes"] for s in args.seeds],
                                       [results[control]["runs"][s]["outcomes"] for s in args.seeds]))
    return {"name": args.name, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "command": shlex.join(["tandem", "study", *argv]), "overrides": list(args.overrides),
            "split": "unseen", "seeds": list(args.seeds), "episodes": args.episodes,
            "updates_per_episode": args.updates_per_episode, "realtime": bool(args.realtime),
            "eval_seeds": list(args.eval_seeds),
            "eval_episodes": args.eval_episodes,
            "interval": f"{int(LEVEL * 100)}% percentile bootstrap, {RESAMPLES} resamples of training seeds and of "
                        "episodes within each evaluation seed; differences paired by training seed and scene",
            "iterations": args.iterations, "arms": arms, "differences": differences,
            **_iterations_block(results, args)}


def _iterations_block(results: dict[str, dict], args: argparse.Namespace) -> dict:
    """study.json's base-update section (only when some arm updates the base)."""
    curves, diffs = summarize_iterations(results, list(args.seeds))
    return {"base_iterations": curves, "iteration_differences": diffs} if curves else {}


CALIBRATION_FIGURES = ("spearman", "mean_error", "mean_abs_error", "pess_mean_error", "v0_auc", "early_auc")


def calibration_summary(per_seed: list[dict | None]) -> dict | None:
    """Each calibration figure's mean over training seeds (seeds without one left out) and the per-seed
    dicts; None when no seed has one (an arm without a critic)."""
    runs = [c for c in per_seed if c]
    if not runs:
        return None
    out: dict[str, Any] = {"per_seed": per_seed}
    for key in CALIBRATION_FIGURES:
        values = [c[key] for c in runs if c.get(key) is not None]
        out[key] = float(np.mean(values)) if values else None
    for key in ("chunks", "episodes"):
        out[key] = int(sum(c[key] for c in runs))
    return out


def write_study(out: Path, data: dict, results: dict[str, dict]) -> None:
    """study.json, study.md and study.png into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "study.json").write_text(json.dumps(data, indent=1))
    _curve_figure(results, data["seeds"], out / "study.png")

    def ci(e: dict) -> str:
        return f"{e['mean']:.3f} [{e['lo']:.3f}, {e['hi']:.3f}]"

    rows = []
    for name, a in data["arms"].items():
        share = sum(a["operator_ticks"]) / max(1, sum(a["training_ticks"]))
        rows.append([name, ci(a["success"]), " ".join(f"{v:.2f}" for v in a["per_seed"].values()), a["episodes"],
                     int(np.mean(a["updates"])), f"{share:.2f}"])
    diff_rows = [[f"{d['arm']} - {d['control']}", f"{d['difference']:+.3f}", f"[{d['lo']:+.3f}, {d['hi']:+.3f}]",
                  "yes" if d["excludes_zero"] else "no"] for d in data["differences"]]
    md = [f"# Study {data['name']}", "", f"`{data['command']}`", "",
          f"Training seeds {data['seeds']}, {data['episodes']} training episodes and "
          f"{data['updates_per_episode']} learner updates per episode for every trained arm; evaluation on "
          f"unseen scenes: seeds {data['eval_seeds']} x {data['eval_episodes']} episodes, the same scenes for "
          f"every arm. Interval: {data['interval']}.", "",
          md_table(["arm", "success on unseen scenes [95% CI]", "per training seed", "training episodes",
                    "learner updates (mean)", "operator share of training ticks"], rows), "",
          "## Paired differences", "",
          md_table(["arm - control", "difference", "95% CI", "excludes 0"], diff_rows), "",
          *_iterations_md(data), *_calibration_md(data), "![study](study.png)", ""]
    (out / "study.md").write_text("\n".join(md))


def _iterations_md(data: dict) -> list[str]:
    """The base-update section of study.md: base-only success after each iteration, and the paired
    differences between the base-updating arms (nothing when no arm updates the base)."""
    curves = data.get("base_iterations")
    if not curves:
        return []
    rows = [[name, p["iteration"], p["after_episodes"],
             f"{p['success']['mean']:.3f} [{p['success']['lo']:.3f}, {p['success']['hi']:.3f}]",
             " ".join(map(str, p["versions"].values())) if p["versions"] else "checkpoint"]
            for name, points in curves.items() for p in points]
    diff_rows = [[f"{d['arm']} - {d['control']}", d["iteration"], f"{d['difference']:+.3f}",
                  f"[{d['lo']:+.3f}, {d['hi']:+.3f}]", "yes" if d["excludes_zero"] else "no"]
                 for d in data.get("iteration_differences", [])]
    return ["## The base after each iteration (base only, no head, unseen scenes)", "",
            f"{data['iterations']} iterations of {data['episodes'] // data['iterations']} training episodes; after "
            "iteration k the base the robot ran from the next block on (after the last: the newest published).", "",
            md_table(["arm", "iteration", "training episodes", "success [95% CI]", "base version per seed"], rows), "",
            md_table(["arm - arm", "iteration", "difference", "95% CI", "excludes 0"], diff_rows), ""]


def _calibration_md(data: dict) -> list[str]:
    """The value-calibration section of study.md (nothing when no arm has a critic)."""
    def num(v: float | None, fmt: str = "+.2f") -> str:
        return "n/a" if v is None else format(v, fmt)

    rows = [[name, num(c["spearman"]), num(c["mean_error"]), num(c["mean_abs_error"]), num(c["pess_mean_error"]),
             num(c["v0_auc"], ".2f"), num(c.get("early_auc"), ".2f"), c["chunks"], c["episodes"]]
            for name, a in data["arms"].items() if (c := a.get("calibration"))]
    if not rows:
        return []
    return ["## Value calibration on the unseen-scene evaluations", "",
            "For every chunk the evaluation ran: the critic's Q (ensemble mean) against the discounted return that "
            "followed, with the learner's own reward (an episode that ends without success is followed by the "
            "value of never succeeding); V(s0) (Q of the first chunk), and each episode's mean Q over its chunks "
            "that start in ticks 1-99, against the episode's success. Means over training seeds "
            "(`tandem.reports.calibration`).", "",
            md_table(["arm", "rank corr. Q vs return", "mean Q - return", "mean abs(Q - return)",
                      "mean Q_pess - return", "AUC of V(s0) for success", "AUC of mean Q, ticks 1-99", "chunks",
                      "episodes"], rows), ""]


def _curve_figure(results: dict[str, dict], seeds: list[int], path: Path) -> None:
    fig, axes = new_figure(size=(8.0, 4.5))
    ax = axes[0, 0]
    for k, (name, entry) in enumerate(results.items()):
        runs = [entry["runs"][s] for s in seeds]
        if not entry["train"]:
            rate = float(np.mean([np.mean(np.concatenate(r["outcomes"])) for r in runs]))
            ax.axhline(rate, color=f"C{k}", ls="--", label=f"{name} (eval)")
            continue
        if all(r.get("iterations") for r in runs):  # the base after each iteration, evaluated on the eval scenes
            curve = [[{"after_episodes": p["after_episodes"], "outcomes": np.concatenate(p["outcomes"])}
                      for p in r["iterations"]] for r in runs]
        else:  # the session's own autonomous evaluations
            curve = [r["curve"] for r in runs]
        points = sorted({p["after_episodes"] for c in curve for p in c})
        xs, mean, lo, hi = [], [], [], []
        for x in points:
            per_run = [[np.array(p["outcomes"])] for c in curve for p in c if p["after_episodes"] == x]
            if not per_run or any(len(g[0]) == 0 for g in per_run):
                continue
            m, a, b = hierarchical_ci(per_run, n=2000)
            xs.append(x)
            mean.append(m)
            lo.append(a)
            hi.append(b)
        ax.fill_between(xs, lo, hi, color=f"C{k}", alpha=0.15)
        ax.plot(xs, mean, "o-", color=f"C{k}", label=name)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("training episodes (operator present)")
    ax.set_ylabel("autonomous success, unseen scenes")
    ax.set_title("success against training episodes (95% interval over seeds and episodes)")
    ax.legend(fontsize=8)
    save_figure(fig, path)


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The options, with every ``key=value`` argument (wherever it stands) among ``overrides``."""
    overrides, rest = split_overrides(argv, ("--out", "--name"))
    args = build_parser().parse_intermixed_args(rest)
    args.overrides = overrides + args.overrides
    return args


def main(args: argparse.Namespace) -> int:
    """``tandem study``: exit 0 done, 2 bad arguments, 1 a stage failed (its log is named)."""
    argv = list(args.args)
    parsed = parse_args(argv)
    try:
        data = run_study(parsed, argv)
    except RuntimeError as exc:
        print(f"tandem study: {exc}", file=sys.stderr)
        return 1
    for name, a in data["arms"].items():
        s = a["success"]
        print(f"tandem study: {name:12s} {s['mean']:.3f} [{s['lo']:.3f}, {s['hi']:.3f}] on unseen scenes", flush=True)
    return 0
