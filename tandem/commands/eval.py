"""``tandem eval``: a policy's success rate over held-out seeds, with bootstrap confidence intervals.

    tandem eval [run overrides...] [--seeds 0 1 2] [--episodes 30] [--out DIR] [--label NAME]
    tandem eval policy=scripted robot.task=reach-v3 robot.realtime=false --seeds 0 1 --episodes 20
    tandem eval --compare evals/base evals/after_1h --out evals/base_vs_1h

For each evaluation seed ``s`` a ``tandem run`` session (same overrides, same config composition)
runs ``--episodes`` episodes with ``session.seed = 10_000 * (s + 1)``: episode i is reset with seed
``10_000 * (s + 1) + i``. Training sessions start at ``session.seed=0`` (tandem run, tandem demos) and
the tiny VLA's own evaluation uses 1000+, so the evaluation seeds are held out as long as no training
session is given a seed of 10 000 or more (MetaWorld picks one of its task's 50 fixed object/goal
variations from the seed, so held-out seeds are fresh resets, not unseen variations). Recording, the
learner link and ``learn.spawn`` are always off (an evaluation never feeds a learner, and a learned head
runs with the weights of ``head.init``, e.g. ``head=residual head.init=runs/x/learner``) and the teleop
device is ``none``: the policy is measured alone (``--with-operator`` keeps the configured teleop).

Outputs in ``--out`` (default ``evals/<label>``, label default ``eval_<date>_<time>``):

- ``eval.json``: the overrides, every seed's episodes (seed, task, success, outcome, steps), and for the
  whole set and each task: the success rate (mean over seeds of each seed's rate) with its 95%
  percentile bootstrap interval (10 000 resamples of the episodes within each seed, numpy
  default_rng(0); see ``tandem.reports.stats``).
- ``eval.md`` and ``eval.png``: the table and bars per task and overall with the interval as error bars.
- ``seed_<s>/``: each session's ``summary.json``, ``ticks.npz`` and session report.

``--compare A B [C ...]`` runs nothing: it loads ``A/eval.json`` ... and writes ``compare.json``,
``compare.md`` and ``compare.png`` into ``--out``: rates side by side, and each later evaluation's
difference from the first (B - A, ...) with a bootstrap interval of the difference.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from tandem.core.errors import ConfigError

log = logging.getLogger(__name__)

EVAL_FILE = "eval.json"
#: evaluation seed s runs session.seed = HELD_OUT_STRIDE * (s + 1).
HELD_OUT_STRIDE = 10_000
RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
LEVEL = 0.95
#: episode outcomes left out of the statistics (cut short by Ctrl-C, not by the policy).
EXCLUDED_OUTCOMES = ("stopped", "rerecord")


def session_seed(seed: int) -> int:
    """The ``session.seed`` of evaluation seed ``seed`` (held out from training seeds)."""
    return HELD_OUT_STRIDE * (seed + 1)


#: options whose value may itself contain "=" (never taken for a Hydra override).
_VALUE_OPTIONS = ("--out", "--label")


def split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """(Hydra overrides, the rest): every ``key=value`` argument is an override, wherever it stands
    (even right after ``--seeds 0 1``), unless it is the value of ``--out`` or ``--label``."""
    overrides, rest = [], []
    previous = ""
    for arg in argv:
        if "=" in arg and not arg.startswith("-") and previous not in _VALUE_OPTIONS:
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
    p.add_argument("--with-operator", action="store_true",
                   help="keep the configured teleop device (default: teleop forced to none)")
    p.add_argument("--compare", nargs="+", metavar="DIR", default=None,
                   help="compare these evaluation directories (the first is the baseline) instead of running")
    p.add_argument("overrides", nargs="*", help="Hydra overrides for tandem run, e.g. policy=scripted")
    return p


# -- running ----------------------------------------------------------------------------------------
def _for_seed(cfg: Any, seed: int, episodes: int, run_dir: Path, with_operator: bool) -> Any:
    cfg = copy.deepcopy(cfg)
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
    from tandem.reports.session import write_session_report
    from tandem.runtime.monitor.tick_log import TickLog
    from tandem.runtime.session import Session, write_summary

    ticks = TickLog()
    session = Session(cfg, sinks=[ticks], stop=stop)

    names: dict[int, str] = {}  # episode -> task name (MetaWorld's task_name), else its instruction

    def on_episode(r: Any) -> None:
        names[r.episode] = getattr(session.robot, "task_name", None) or ticks.tasks.get(r.episode, "")
        print(f"  seed {seed}  episode {r.episode:3d}  {names[r.episode]:16s} {r.outcome:8s} "
              f"steps {r.steps:4d}", flush=True)

    summary = session.run(on_episode=on_episode)
    run_dir = Path(cfg.session.run_dir)
    write_summary(summary, run_dir)
    ticks.save(run_dir)
    try:
        write_session_report(run_dir)
    except Exception:  # the numbers are what matters; a plotting problem must not lose them
        log.exception("session report for %s failed", run_dir)
    episodes = [
        {"episode": int(e["episode"]), "seed": e.get("seed"),
         "task": names.get(int(e["episode"])) or e.get("task") or summary.task,
         "success": bool(e["success"]), "outcome": e["outcome"], "steps": int(e["steps"])}
        for e in summary.episodes
    ]
    return {"seed": seed, "session_seed": cfg.session.seed, "run_dir": run_dir.name, "episodes": episodes}


# -- statistics -------------------------------------------------------------------------------------
def _counted(episodes: list[dict]) -> list[dict]:
    return [e for e in episodes if e["outcome"] not in EXCLUDED_OUTCOMES]


def rate_with_ci(per_seed: list[np.ndarray]) -> dict[str, Any]:
    """{"mean", "lo", "hi", "per_seed", "episodes", "successes"} of per-seed 0/1 arrays (empty seeds dropped)."""
    from tandem.reports.stats import bootstrap_ci

    groups = [g for g in per_seed if len(g)]
    if not groups:
        return {"mean": None, "lo": None, "hi": None, "per_seed": [], "episodes": 0, "successes": 0}
    mean, lo, hi = bootstrap_ci(groups, n=RESAMPLES, seed=BOOTSTRAP_SEED, level=LEVEL)
    return {"mean": mean, "lo": lo, "hi": hi, "per_seed": [float(np.mean(g)) for g in groups],
            "episodes": int(sum(len(g) for g in groups)), "successes": int(sum(int(np.sum(g)) for g in groups))}


def successes_by_seed(results: list[dict], task: str | None = None) -> list[np.ndarray]:
    """Per seed, the 0/1 outcomes of its counted episodes (of ``task`` only when given): float64[E_s] each."""
    return [np.array([float(e["success"]) for e in _counted(r["episodes"]) if task is None or e["task"] == task])
            for r in results]


def summarize(results: list[dict]) -> dict[str, Any]:
    """Overall and per-task rates with CIs, and each seed's counts, from :func:`run_seed` results."""
    tasks = sorted({e["task"] for r in results for e in _counted(r["episodes"]) if e["task"]})
    for r in results:
        counted = _counted(r["episodes"])
        r["successes"] = sum(e["success"] for e in counted)
        r["counted"] = len(counted)
        r["success_rate"] = r["successes"] / len(counted) if counted else None
    return {"overall": rate_with_ci(successes_by_seed(results)),
            "per_task": {t: rate_with_ci(successes_by_seed(results, t)) for t in tasks}}


# -- writing ----------------------------------------------------------------------------------------
def _ci(entry: dict) -> str:
    if entry.get("mean") is None:
        return "-"
    return f"{entry['mean']:.3f} [{entry['lo']:.3f}, {entry['hi']:.3f}]"


def _rates_figure(evals: list[tuple[str, dict]], path: Path, title: str) -> dict:
    """Grouped bars (overall, then each task) per evaluation with the CI as error bars."""
    from tandem.reports.session import figure_series, new_figure, save_figure

    tasks = sorted({t for _, d in evals for t in d["per_task"]})
    groups = ["overall", *tasks] if len(tasks) > 1 else ["overall"]
    fig, axes = new_figure(size=(max(5.0, 1.6 * len(groups) * max(1, len(evals)) + 2), 4.0))
    ax = axes[0, 0]
    width = 0.8 / len(evals)
    x = np.arange(len(groups))
    for k, (label, d) in enumerate(evals):
        entries = [d["overall"] if g == "overall" else d["per_task"].get(g, {}) for g in groups]
        mean = np.array([e.get("mean") if e.get("mean") is not None else np.nan for e in entries], float)
        lo = np.array([e.get("lo") if e.get("lo") is not None else np.nan for e in entries], float)
        hi = np.array([e.get("hi") if e.get("hi") is not None else np.nan for e in entries], float)
        xs = x + (k - (len(evals) - 1) / 2) * width
        yerr = np.nan_to_num(np.vstack([mean - lo, hi - mean]))
        ax.bar(xs, np.nan_to_num(mean), width * 0.9, yerr=yerr, capsize=4, color=f"C{k}", label=label)
        for j, e in enumerate(entries):  # each seed's rate
            seeds = e.get("per_seed") or []
            ax.plot([xs[j]] * len(seeds), seeds, "k.", ms=4, alpha=0.6)
    ax.set_xticks(x, groups)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("success rate")
    ax.set_title(title)
    ax.legend(fontsize=8)
    save_figure(fig, path)
    return figure_series(fig)


def write_eval(out: Path, data: dict) -> Path:
    """Write ``eval.json``, ``eval.md`` and ``eval.png`` of an evaluation into ``out``; eval.md's path."""
    out.mkdir(parents=True, exist_ok=True)
    (out / EVAL_FILE).write_text(json.dumps(data, indent=1))
    if data["overall"]["mean"] is not None:
        _rates_figure([(data["label"], data)], out / "eval.png",
                      f"{data['label']}: success rate, {int(LEVEL * 100)}% bootstrap CI")
    rows = [["overall", _ci(data["overall"]), data["overall"]["successes"], data["overall"]["episodes"]]]
    rows += [[t, _ci(e), e["successes"], e["episodes"]] for t, e in data["per_task"].items()]
    seed_rows = [[r["seed"], r["session_seed"], r.get("successes", 0), r.get("counted", 0),
                  "-" if r.get("success_rate") is None else f"{r['success_rate']:.3f}",
                  f"[report]({r['run_dir']}/report.md)"] for r in data["results"]]
    from tandem.reports.session import md_table

    md = [f"# Evaluation: {data['label']}", "",
          f"policy `{data.get('policy', '?')}` on robot `{data.get('robot', '?')}`; overrides: "
          f"`{' '.join(data['overrides']) or '(none)'}`", "",
          f"{len(data['results'])} seeds x {data['episodes_per_seed']} episodes, held-out session seeds "
          f"{HELD_OUT_STRIDE} x (seed + 1); teleop {'as configured' if data['with_operator'] else 'none'}"
          + ("; **interrupted**" if data.get("interrupted") else "") + ".", "",
          "## Success rate", "",
          f"Mean over seeds of each seed's success rate, with the {int(LEVEL * 100)}% percentile bootstrap "
          f"interval ({RESAMPLES} resamples of the episodes within each seed).", "",
          md_table(["", "success rate [95% CI]", "successes", "episodes"], rows), ""]
    if data["overall"]["mean"] is not None:
        md += ["![success rate](eval.png)", ""]
    md += ["## Seeds", "", md_table(["seed", "session.seed", "successes", "episodes", "rate", "session"],
                                    seed_rows), ""]
    path = out / "eval.md"
    path.write_text("\n".join(md))
    return path


def run_eval(overrides: list[str], seeds: list[int], episodes: int, out: Path, label: str,
             with_operator: bool, stop: threading.Event | None = None) -> dict:
    """Run the evaluation sessions, write eval.json / eval.md / eval.png into ``out``; the eval.json data."""
    from tandem.runtime.config import compose_run

    stop = stop or threading.Event()
    base = compose_run(overrides)  # a bad override fails here, before anything runs
    results = []
    for seed in seeds:
        if stop.is_set():
            break
        cfg = _for_seed(base, seed, episodes, out / f"seed_{seed}", with_operator)
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


# -- comparing --------------------------------------------------------------------------------------
def load_eval(directory: Path) -> dict:
    """``directory/eval.json`` (a clear error when it is not an evaluation directory)."""
    path = Path(directory) / EVAL_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: pass directories written by tandem eval")
    return json.loads(path.read_text())


def compare(dirs: list[Path], out: Path) -> dict:
    """Compare evaluations (the first is the baseline): compare.json / .md / .png in ``out``; the data."""
    from tandem.reports.session import md_table
    from tandem.reports.stats import bootstrap_diff_ci

    evals = [(d.get("label") or Path(p).name, d) for p, d in ((p, load_eval(p)) for p in dirs)]
    labels = [label for label, _ in evals]
    if len(set(labels)) < len(labels):  # same labels: tell them apart by directory
        evals = [(f"{label} ({Path(p).name})", d) for (label, d), p in zip(evals, dirs, strict=True)]
    base_label, base = evals[0]
    tasks = sorted({t for _, d in evals for t in d["per_task"]})
    differences = []
    for label, d in evals[1:]:
        entry: dict[str, Any] = {"baseline": base_label, "candidate": label}
        for name, task in [("overall", None), *[(t, t) for t in tasks]]:
            a = [g for g in successes_by_seed(base["results"], task) if len(g)]
            b = [g for g in successes_by_seed(d["results"], task) if len(g)]
            if a and b:
                diff, lo, hi = bootstrap_diff_ci(a, b, n=RESAMPLES, seed=BOOTSTRAP_SEED, level=LEVEL)
                entry[name] = {"difference": diff, "lo": lo, "hi": hi, "excludes_zero": bool(lo > 0 or hi < 0)}
        differences.append(entry)
    out.mkdir(parents=True, exist_ok=True)
    data = {"dirs": [str(p) for p in dirs], "labels": [label for label, _ in evals],
            "rates": {label: {"overall": d["overall"], "per_task": d["per_task"]} for label, d in evals},
            "differences": differences,
            "bootstrap": {"resamples": RESAMPLES, "seed": BOOTSTRAP_SEED, "level": LEVEL}}
    (out / "compare.json").write_text(json.dumps(data, indent=1))
    _rates_figure(evals, out / "compare.png", f"success rate, {int(LEVEL * 100)}% bootstrap CI")
    groups = ["overall", *tasks]
    rate_rows = [[label] + [_ci(d["overall"] if g == "overall" else d["per_task"].get(g, {})) for g in groups]
                 for label, d in evals]
    diff_rows = []
    for entry in differences:
        for g in groups:
            if g in entry:
                e = entry[g]
                diff_rows.append([f"{entry['candidate']} - {entry['baseline']}", g, f"{e['difference']:+.3f}",
                                  f"[{e['lo']:+.3f}, {e['hi']:+.3f}]", "yes" if e["excludes_zero"] else "no"])
    md = ["# Evaluation comparison", "", "Baseline: " + base_label, "", "## Success rates [95% CI]", "",
          md_table(["evaluation", *groups], rate_rows), "", "![comparison](compare.png)", "",
          "## Differences from the baseline", "",
          f"Each evaluation resampled independently ({RESAMPLES} resamples, episodes within seeds); the "
          "interval is the percentile interval of the differences. An interval that excludes 0 is evidence "
          "of a real difference; one that includes 0 is not evidence of equality.", "",
          md_table(["comparison", "", "difference", "95% CI", "excludes 0"], diff_rows), ""]
    warn = {label: d["overrides"] for label, d in evals}
    md += ["## Overrides", "", md_table(["evaluation", "overrides"],
                                         [[k, "`" + " ".join(v) + "`" if v else "(none)"] for k, v in warn.items()]), ""]
    (out / "compare.md").write_text("\n".join(md))
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
            data = run_eval(args.overrides, args.seeds, args.episodes, out, label, args.with_operator, stop)
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
    print(f"tandem eval: success rate {o['mean']:.3f} [{o['lo']:.3f}, {o['hi']:.3f}] "
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
