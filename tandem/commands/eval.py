"""``tandem eval``: a policy's success rate over held-out seeds, with bootstrap confidence intervals.

    tandem eval [run overrides...] [--split unseen|train] [--seeds 0 1 2] [--episodes 30] [--out DIR] [--label NAME]
    tandem eval policy=scripted robot.task=reach-v3 robot.realtime=false --seeds 0 1 --episodes 20
    tandem eval --compare evals/base evals/after_1h --out evals/base_vs_1h

For each evaluation seed ``s`` a ``tandem run`` session (same overrides, same config composition)
runs ``--episodes`` episodes with ``session.seed = 10_000 * (s + 1)``: episode i is reset with seed
``10_000 * (s + 1) + i``. ``--split`` sets the robot's scenes (``robot.scenes``, MetaWorld): ``unseen``
(the default) draws every scene from the evaluation split, which no training session, demonstration or
pretraining run ever uses (they run ``robot.scenes=train``); ``train`` evaluates on training-split scenes
(held-out seeds, the same distribution as training). Robots without scene splits get held-out seeds
only (the split is recorded as "none"). Two evaluations with the same overrides for robot and split,
seeds and episodes see the same scenes, so ``--compare`` pairs them episode by episode. Recording, the
learner link and ``learn.spawn`` are always off (an evaluation never feeds a learner, and a learned head
runs with the weights of ``head.init``, e.g. ``head=residual head.init=runs/x/learner``) and the teleop
device is ``none``: the policy is measured alone (``--with-operator`` keeps the configured teleop).

Outputs in ``--out`` (default ``evals/<label>``, label default ``eval_<date>_<time>``):

- ``eval.json``: the overrides, the split, every seed's episodes (seed, task, success, outcome, steps,
  scene), and for the
  whole set and each task: the success rate (mean over seeds of each seed's rate) with its 95%
  percentile bootstrap interval (10 000 resamples of the episodes within each seed, numpy
  default_rng(0); see ``tandem.reports.stats``).
- ``eval.md`` and ``eval.png``: the table and bars per task and overall with the interval as error bars.
- ``seed_<s>/``: each session's ``summary.json``, ``ticks.npz``, ``chunks.npz`` (every executed chunk's
  state, features and actions: ``tandem study`` checks a critic's calibration on them) and session report.

``--compare A B [C ...]`` runs nothing: it loads ``A/eval.json`` ... and writes ``compare.json``,
``compare.md`` and ``compare.png`` into ``--out``: rates side by side, and each later evaluation's
difference from the first (B - A, ...) with a bootstrap interval of the difference.

This module parses the arguments and runs the sessions; the statistics and the files are written by
``tandem.reports.eval``.
"""

from __future__ import annotations

import argparse
import copy
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from tandem.core.errors import ConfigError
from tandem.reports.calibration import save_chunks
from tandem.reports.eval import (
    BOOTSTRAP_SEED,
    HELD_OUT_STRIDE,
    LEVEL,
    RESAMPLES,
    compare,
    summarize,
    write_eval,
)
from tandem.reports.session import write_session_report
from tandem.runtime.config import compose_run
from tandem.runtime.links.chunks import ChunkAssembler
from tandem.runtime.monitor.tick_log import TickLog
from tandem.runtime.session import Session, write_summary

log = logging.getLogger(__name__)


def session_seed(seed: int) -> int:
    """The ``session.seed`` of evaluation seed ``seed`` (held out from training seeds)."""
    return HELD_OUT_STRIDE * (seed + 1)


#: options whose value may itself contain "=" (never taken for a Hydra override).
_VALUE_OPTIONS = ("--out", "--label")


def split_overrides(argv: list[str], value_options: tuple[str, ...] = _VALUE_OPTIONS) -> tuple[list[str], list[str]]:
    """(Hydra overrides, the rest): every ``key=value`` argument is an override, wherever it stands
    (even right after ``--seeds 0 1``), unless it is the value of one of ``value_options`` (``--out``,
    ``--label``: options whose value may itself contain "=")."""
    overrides, rest = [], []
    previous = ""
    for arg in argv:
        if "=" in arg and not arg.startswith("-") and previous not in value_options:
            overrides.append(arg)
        else:
            rest.append(arg)
        previous = arg
    return overrides, rest


def build_parser() -> argparse.ArgumentParser:
    """The ``tandem eval`` argument parser (``main`` takes the ``key=value`` overrides out first)."""
    p = argparse.ArgumentParser(
        prog="tandem eval",
        description="Evaluate a policy over held-out seeds (success rate with 95% bootstrap CIs), or "
        "compare earlier evaluations. Other arguments are Hydra overrides, as for tandem run.",
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                   help="evaluation seeds; seed s runs session.seed=10000*(s+1) (default 0 1 2)")
    p.add_argument("--episodes", type=int, default=30, help="episodes per seed (default 30)")
    p.add_argument("--out", default="", help="output directory (default evals/<label>)")
    p.add_argument("--label", default="", help="name of this evaluation (default eval_<date>_<time>)")
    p.add_argument("--split", choices=["unseen", "train"], default="unseen",
                   help="scenes to evaluate on (robot.scenes; default unseen: scenes no training step saw)")
    p.add_argument("--with-operator", action="store_true",
                   help="keep the configured teleop device (default: teleop forced to none)")
    p.add_argument("--compare", nargs="+", metavar="DIR", default=None,
                   help="compare these evaluation directories (the first is the baseline) instead of running")
    p.add_argument("overrides", nargs="*", help="Hydra overrides for tandem run, e.g. policy=scripted")
    return p


# -- running ----------------------------------------------------------------------------------------
def _for_seed(cfg: Any, seed: int, episodes: int, run_dir: Path, with_operator: bool, split: str) -> Any:
    cfg = copy.deepcopy(cfg)
    if hasattr(cfg.robot, "scenes"):
        cfg.robot.scenes = split
    cfg.session.seed = session_seed(seed)
    cfg.session.episodes = episodes
    cfg.session.run_dir = str(run_dir)
    cfg.record.enabled = False
    cfg.link.enabled = False
    if getattr(cfg, "learn", None) is not None:
        cfg.learn.spawn = False  # (only tandem run spawns one; said here so no later change starts one)
    if not with_operator:
        cfg.teleop = None
    return cfg


def run_seed(cfg: Any, seed: int, stop: threading.Event) -> dict[str, Any]:
    """Run one evaluation seed's session (cfg from :func:`eval_config`); write its run dir; its results.

    Returns ``{"seed", "session_seed", "run_dir", "episodes": [{"episode", "seed", "task", "success",
    "outcome", "steps"}]}``.
    """
    ticks, chunks = TickLog(), []  # chunks: what ran, for the critic's calibration (tandem.reports.calibration)
    assembler = ChunkAssembler("eval", cfg.session.horizon, chunks.append, final_observations=False)
    session = Session(cfg, sinks=[ticks, assembler], stop=stop)

    names: dict[int, str] = {}  # episode -> task name (MetaWorld's task_name), else its instruction

    def on_episode(r: Any) -> None:
        names[r.episode] = getattr(session.robot, "task_name", None) or ticks.tasks.get(r.episode, "")
        print(f"  seed {seed}  episode {r.episode:3d}  {names[r.episode]:16s} {r.outcome:8s} "
              f"steps {r.steps:4d}", flush=True)

    summary = session.run(on_episode=on_episode)
    run_dir = Path(cfg.session.run_dir)
    write_summary(summary, run_dir)
    ticks.save(run_dir)
    save_chunks(chunks, run_dir)
    try:
        write_session_report(run_dir)
    except Exception:  # the numbers are what matters; a plotting problem must not lose them
        log.exception("session report for %s failed", run_dir)
    episodes = [
        {"episode": int(e["episode"]), "seed": e.get("seed"),
         "task": names.get(int(e["episode"])) or e.get("task") or summary.task,
         "success": bool(e["success"]), "outcome": e["outcome"], "steps": int(e["steps"]),
         "scene": e.get("scene") or {}}
        for e in summary.episodes
    ]
    return {"seed": seed, "session_seed": cfg.session.seed, "run_dir": run_dir.name, "episodes": episodes}


def run_eval(overrides: list[str], seeds: list[int], episodes: int, out: Path, label: str,
             with_operator: bool, stop: threading.Event | None = None, split: str = "unseen") -> dict:
    """Run the evaluation sessions, write eval.json / eval.md / eval.png into ``out``; the eval.json data.

    ``split`` picks the robot's scenes (``robot.scenes``); a robot without scene splits records "none".
    """
    stop = stop or threading.Event()
    base = compose_run(overrides)  # a bad override fails here, before anything runs
    if not hasattr(base.robot, "scenes"):
        print(f"tandem eval: robot={base.robot.type} has no scene splits; --split {split} does not apply "
              "(held-out seeds only)", flush=True)
        split = "none"
    results = []
    for seed in seeds:
        if stop.is_set():
            break
        cfg = _for_seed(base, seed, episodes, out / f"seed_{seed}", with_operator, split)
        print(f"tandem eval: seed {seed} (session.seed={cfg.session.seed}, {episodes} episodes)", flush=True)
        results.append(run_seed(cfg, seed, stop))
    data = {
        "label": label,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "overrides": list(overrides),
        "robot": base.robot.type,
        "policy": base.policy.type,
        "seeds": list(seeds),
        "episodes_per_seed": episodes,
        "split": split,
        "with_operator": with_operator,
        "interrupted": stop.is_set(),
        "bootstrap": {"resamples": RESAMPLES, "seed": BOOTSTRAP_SEED, "level": LEVEL,
                      "method": "percentile; episodes resampled with replacement within each seed; "
                                "statistic = mean over seeds of each seed's success rate"},
        "results": results,
    }
    data.update(summarize(results))
    write_eval(out, data)
    return data


# -- command ----------------------------------------------------------------------------------------
def main(argv: argparse.Namespace | list[str]) -> int:
    """``tandem eval``: parse ``argv`` (options and Hydra overrides, in any order), run or compare.

    ``argv`` is the argument list, or ``tandem``'s parsed arguments (the list is their ``args``).
    Returns the exit status: 0 done, 1 nothing to report (no evaluation dir / no episode), 2 bad arguments.
    """
    if isinstance(argv, argparse.Namespace):
        argv = argv.args
    overrides, rest = split_overrides(list(argv))
    args = build_parser().parse_intermixed_args(rest)
    args.overrides = overrides + args.overrides  # the rest: overrides without "=", e.g. ~robot.suite
    label = args.label or (Path(args.out).name if args.out else time.strftime("eval_%Y%m%d_%H%M%S"))
    out = Path(args.out) if args.out else Path("evals") / label
    try:
        if args.compare is not None:
            if args.overrides:
                raise ConfigError("--compare", args.overrides, "runs nothing: give no overrides with --compare")
            if len(args.compare) < 2:
                raise ConfigError("--compare", args.compare, "give at least two evaluation directories")
            out = Path(args.out) if args.out else Path("evals") / time.strftime("compare_%Y%m%d_%H%M%S")
            data = compare([Path(d) for d in args.compare], out)
            for entry in data["differences"]:
                o = entry.get("overall")
                if o:
                    print(f"{entry['candidate']} - {entry['baseline']}: {o['difference']:+.3f} "
                          f"[{o['lo']:+.3f}, {o['hi']:+.3f}]", flush=True)
            print(f"tandem eval: comparison in {out / 'compare.md'}", flush=True)
            return 0
        if args.episodes < 1:
            raise ConfigError("--episodes", args.episodes, "must be >= 1")
        if not args.seeds or min(args.seeds) < 0 or len(set(args.seeds)) != len(args.seeds):
            raise ConfigError("--seeds", args.seeds, "give distinct seeds >= 0, e.g. --seeds 0 1 2")
        stop = threading.Event()
        previous = _install_sigint(stop)
        try:
            data = run_eval(args.overrides, args.seeds, args.episodes, out, label, args.with_operator, stop,
                            args.split)
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
    except ConfigError as exc:
        print(f"tandem eval: config error: {exc}", file=sys.stderr)
        return 2
    except FileNotFoundError as exc:
        print(f"tandem eval: {exc}", file=sys.stderr)
        return 1
    o = data["overall"]
    if o["mean"] is None:
        print("tandem eval: no episode completed", file=sys.stderr)
        return 1
    print(f"tandem eval: success rate {o['mean']:.3f} [{o['lo']:.3f}, {o['hi']:.3f}] on {data['split']} scenes "
          f"({o['successes']}/{o['episodes']} episodes, {len(data['results'])} seeds)  {out / 'eval.md'}", flush=True)
    return 0


def _install_sigint(stop: threading.Event) -> Any:
    """First Ctrl-C ends the current episode and the evaluation (results so far are written); the
    previous handler (to restore), or None off the main thread."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum: int, frame: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        print("\nstopping the evaluation after this tick (Ctrl-C again to abort)", file=sys.stderr, flush=True)
        stop.set()

    return signal.signal(signal.SIGINT, handler)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(main(sys.argv[1:]))
