"""The statistics and report files of ``tandem eval``: success rates with bootstrap intervals per seed
set and per task (``eval.json``, ``eval.md``, ``eval.png``), and the comparison of evaluations
(``compare.json``, ``compare.md``, ``compare.png``). Running the evaluation is ``tandem.commands.eval``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from tandem.reports.session import figure_series, md_table, new_figure, save_figure
from tandem.reports.stats import bootstrap_ci, bootstrap_diff_ci, bootstrap_paired_diff_ci

EVAL_FILE = "eval.json"
#: evaluation seed s runs session.seed = HELD_OUT_STRIDE * (s + 1).
HELD_OUT_STRIDE = 10_000
RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
LEVEL = 0.95
#: episode outcomes left out of the statistics (cut short by Ctrl-C, not by the policy).
EXCLUDED_OUTCOMES = ("stopped", "rerecord")


# -- statistics -------------------------------------------------------------------------------------
def _counted(episodes: list[dict]) -> list[dict]:
    return [e for e in episodes if e["outcome"] not in EXCLUDED_OUTCOMES]


def rate_with_ci(per_seed: list[np.ndarray]) -> dict[str, Any]:
    """{"mean", "lo", "hi", "per_seed", "episodes", "successes"} of per-seed 0/1 arrays (empty seeds dropped)."""
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


# -- comparing --------------------------------------------------------------------------------------
def load_eval(directory: Path) -> dict:
    """``directory/eval.json`` (a clear error when it is not an evaluation directory)."""
    path = Path(directory) / EVAL_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: pass directories written by tandem eval")
    return json.loads(path.read_text())


def paired(a: dict, b: dict) -> bool:
    """Whether two evaluations ran the same episodes: the same seeds, and episode by episode the same
    task and scene (the same split and seeds give the same scenes)."""
    def key(d: dict) -> list:
        return [[(e.get("seed"), e.get("task"), json.dumps(e.get("scene") or {}, sort_keys=True))
                 for e in r["episodes"]] for r in d["results"]]
    same_split = a.get("split", "none") == b.get("split", "none")
    return same_split and a.get("seeds") == b.get("seeds") and key(a) == key(b)


def compare(dirs: list[Path], out: Path) -> dict:
    """Compare evaluations (the first is the baseline): compare.json / .md / .png in ``out``; the data."""
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
                pair = paired(base, d)
                ci = bootstrap_paired_diff_ci if pair else bootstrap_diff_ci
                diff, lo, hi = ci(a, b, n=RESAMPLES, seed=BOOTSTRAP_SEED, level=LEVEL)
                entry[name] = {"difference": diff, "lo": lo, "hi": hi, "excludes_zero": bool(lo > 0 or hi < 0),
                               "paired": pair}
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
          f"Evaluations that ran the same episodes (same seeds and scenes) are paired: the per-episode "
          f"differences are resampled within seeds ({RESAMPLES} resamples); others are resampled "
          "independently. The interval is the percentile interval of the differences. An interval that "
          "excludes 0 is evidence of a real difference; one that includes 0 is not evidence of equality.", "",
          md_table(["comparison", "", "difference", "95% CI", "excludes 0"], diff_rows), ""]
    warn = {label: d["overrides"] for label, d in evals}
    md += ["## Overrides", "", md_table(["evaluation", "overrides"],
                                         [[k, "`" + " ".join(v) + "`" if v else "(none)"] for k, v in warn.items()]), ""]
    (out / "compare.md").write_text("\n".join(md))
    return data
