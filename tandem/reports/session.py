"""The session report: ``run_dir/report.md`` with PNG figures, from ``summary.json`` and ``ticks.npz``.

    write_session_report(Path("runs/20250101_120000"))   # -> runs/.../report.md

Figures (written next to ``report.md``, embedded with relative links):

- ``success.png``: each episode's success (0/1 dots), the rolling success rate over the last
  ``ROLLING_WINDOW`` episodes, one rolling line per task when the session ran several tasks, and the
  learned head's weight version on a second axis when the episodes carry one: the session's
  learning curve.
- ``takeovers.png``: takeovers per episode, and the fraction of each episode's ticks a human drove.
- ``timing.png``: histogram of every tick's lateness (from ``ticks.npz``, written by
  ``tandem.runtime.monitor.tick_log.TickLog``); without it, each episode's p99 lateness as bars.
- ``learning.png`` (with ``session.eval_every``): autonomous success on unseen scenes at each interleaved
  evaluation and the operator's cumulative share of the training ticks, against training episodes.
- ``links.png``: the experience/weights link figures from ``summary["links"]`` (latencies in ms,
  counters), only when the session ran with ``link.enabled``.

``report.json`` beside it holds the key numbers and, for each figure, the exact series drawn (read
back from the plotted artists), so tools and tests can check a figure against its data.

The helpers here (``md_table``, ``fmt``, ``new_figure``, ``save_figure``, ``figure_series``) are
shared by the learner and eval reports.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tandem.reports.stats import bootstrap_ci
from tandem.runtime.monitor.tick_log import load_ticks

REPORT_MD = "report.md"
REPORT_JSON = "report.json"
SUMMARY_FILE = "summary.json"
TICKS_FILE = "ticks.npz"
#: episodes in the rolling success rate.
ROLLING_WINDOW = 10


# -- shared helpers ---------------------------------------------------------------------------------
def fmt(value: Any) -> str:
    """A number as the reports print it: ints as is, floats with 3 decimals (3 significant digits below
    0.01 or from 1e7), bools yes/no, None as -."""
    if value is None:
        return "-"
    if isinstance(value, bool | np.bool_):
        return "yes" if value else "no"
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        x = float(value)
        if x != 0.0 and math.isfinite(x) and (abs(x) < 0.01 or abs(x) >= 1e7):
            return f"{x:.3g}"  # small TD errors, large counts: keep 3 significant digits
        return f"{x:.3f}"
    return str(value)


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table; cells go through :func:`fmt`."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def rolling_rate(values: Sequence[float] | np.ndarray, window: int) -> np.ndarray:
    """Trailing mean: out[i] = mean(values[max(0, i - window + 1) : i + 1]), float64[len(values)]."""
    x = np.asarray(values, np.float64)
    if x.size == 0:
        return x
    csum = np.concatenate([[0.0], np.cumsum(x)])
    i = np.arange(x.size)
    start = np.maximum(0, i - window + 1)
    return (csum[i + 1] - csum[start]) / (i + 1 - start)


def new_figure(rows: int = 1, cols: int = 1, size: tuple[float, float] = (9.0, 4.0)) -> tuple[Any, Any]:
    """(figure, axes array [rows, cols]) drawn by the Agg backend, without pyplot's global state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    return fig, axes


def save_figure(fig: Any, path: Path) -> None:
    """Write the figure as a PNG (100 dpi)."""
    fig.savefig(path, dpi=100)


def _floats(values: Any) -> list[float]:
    return [float(v) for v in np.asarray(values, np.float64).reshape(-1)]


def figure_series(fig: Any) -> dict[str, Any]:
    """What each axes of ``fig`` draws, read back from its artists.

    Returns ``{"<axes title or ylabel>": {"lines": {label: {"x": [...], "y": [...]}},
    "bars": {label: {"pos": [...], "value": [...]}}}}``; bars are the bar containers (``ax.bar``,
    ``ax.barh``, ``ax.hist``): pos their centres on the category axis, value their heights (widths for barh).
    """
    out: dict[str, Any] = {}
    for k, ax in enumerate(fig.axes):
        name = ax.get_title() or ax.get_ylabel() or f"axes{k}"
        lines = {}
        for j, line in enumerate(ax.get_lines()):
            label = line.get_label()
            if label.startswith("_"):
                label = f"line{j}"
            lines[label] = {"x": _floats(line.get_xdata()), "y": _floats(line.get_ydata())}
        bars = {}
        for j, container in enumerate(ax.containers):
            patches = list(getattr(container, "patches", []))
            label = container.get_label() or ""
            if label.startswith("_") and patches:  # ax.hist labels its first patch, not the container
                label = patches[0].get_label()
            if not label or label.startswith("_"):
                label = f"bars{j}"
            if getattr(container, "orientation", "vertical") == "horizontal":  # ax.barh
                bars[label] = {"pos": [float(p.get_y() + p.get_height() / 2) for p in patches],
                               "value": [float(p.get_width()) for p in patches]}
            else:
                bars[label] = {"pos": [float(p.get_x() + p.get_width() / 2) for p in patches],
                               "value": [float(p.get_height()) for p in patches]}
        entry = {"lines": lines, "bars": bars}
        if name in out:
            name = f"{name} ({k})"
        out[name] = entry
    return out


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """Nested dict -> {"a.b": scalar} (lists are kept as one value)."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool | np.bool_)


# -- the session report -----------------------------------------------------------------------------
def _episode_tasks(summary: dict, episodes: list[dict], ticks: dict | None) -> list[str | None]:
    """Each episode's task: the episode's own, else TickLog's, else the session's single task."""
    logged: dict[int, str] = {}
    if ticks is not None and "episode_ids" in ticks:
        logged = {int(e): str(t) for e, t in zip(ticks["episode_ids"], ticks["episode_tasks"], strict=True)}
    session_task = summary.get("task") or None
    if session_task and "," in session_task:
        session_task = None  # a suite: which task ran when is unknown
    return [e.get("task") or logged.get(int(e.get("episode", i))) or session_task for i, e in enumerate(episodes)]


def _base_versions(episodes: list[dict]) -> list[int] | None:
    """Each episode's base policy version (``base_version`` of summary.json's episodes: the weights of
    its last chunk; a learner's new base is swapped in only between episodes); None for summaries
    written before tandem recorded it."""
    if not episodes or not all("base_version" in e for e in episodes):
        return None
    return [int(e["base_version"]) for e in episodes]


def base_version_runs(x: np.ndarray, versions: list[int]) -> list[list[Any]]:
    """Rows ``[first episode, last episode, episodes, base version]``, one per run of episodes on one version."""
    rows: list[list[Any]] = []
    for ep, v in zip(x.tolist(), versions, strict=True):
        if rows and rows[-1][3] == v:
            rows[-1][1], rows[-1][2] = ep, rows[-1][2] + 1
        else:
            rows.append([ep, ep, 1, v])
    return rows


def _head_versions(episodes: list[dict], ticks: dict | None) -> list[int] | None:
    """Each episode's head version (the episode's own, else the last one its ticks used); None when
    unknown or 0 throughout (no learned head weights arrived)."""
    if episodes and all("head_version" in e for e in episodes):
        versions = [int(e["head_version"]) for e in episodes]
        return versions if any(versions) else None
    if ticks is None or "head_version" not in ticks or not np.any(ticks["head_version"]):
        return None
    out = []
    for i, e in enumerate(episodes):
        mask = ticks["episode"] == int(e.get("episode", i))
        out.append(int(ticks["head_version"][mask][-1]) if mask.any() else 0)
    return out


def _success_figure(x: np.ndarray, success: np.ndarray, tasks: list[str | None],
                    versions: list[int] | None, path: Path) -> dict:
    fig, axes = new_figure(size=(9.0, 4.0))
    ax = axes[0, 0]
    ax.plot(x, success.astype(float), "o", ms=4, alpha=0.6, color="0.3", zorder=3, label="episode success")
    ax.plot(x, rolling_rate(success, ROLLING_WINDOW), "-", lw=2, color="C0",
            label=f"success rate (last {ROLLING_WINDOW})")
    distinct = sorted({t for t in tasks if t})
    if len(distinct) > 1:
        for k, task in enumerate(distinct):
            sel = np.array([t == task for t in tasks])
            ax.plot(x[sel], rolling_rate(success[sel], ROLLING_WINDOW), "--", lw=1.2, color=f"C{k + 2}",
                    label=f"{task} (last {ROLLING_WINDOW})")
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel("episode")
    ax.set_ylabel("success")
    ax.set_title("success per episode")
    handles, labels = ax.get_legend_handles_labels()
    if versions is not None:
        ax2 = ax.twinx()
        ax2.step(x, versions, where="post", color="C1", lw=1.2, label="head version")
        ax2.set_ylabel("head weight version")
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.1 if versions is not None else 1.01, 1.0),
              fontsize=8)
    save_figure(fig, path)
    return figure_series(fig)


def _takeover_figure(x: np.ndarray, takeovers: np.ndarray, frac: np.ndarray, path: Path) -> dict:
    fig, axes = new_figure(2, 1, size=(9.0, 5.0))
    ax = axes[0, 0]
    ax.bar(x, takeovers, color="C3", alpha=0.7, label="takeovers")
    ax.plot(x, rolling_rate(takeovers, ROLLING_WINDOW), "-", color="k", lw=1.5,
            label=f"takeovers per episode (last {ROLLING_WINDOW})")
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=8)
    ax.set_ylabel("takeovers")
    ax.set_title("takeovers per episode")
    ax = axes[1, 0]
    ax.bar(x, frac, color="C4", alpha=0.7, label="intervention fraction")
    ax.plot(x, rolling_rate(frac, ROLLING_WINDOW), "-", color="k", lw=1.5, label=f"mean (last {ROLLING_WINDOW})")
    ax.legend(fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_xlabel("episode")
    ax.set_ylabel("fraction of ticks")
    ax.set_title("fraction of ticks under human control")
    save_figure(fig, path)
    return figure_series(fig)


def _learning_figure(evaluations: list[dict], x: np.ndarray, share: np.ndarray, path: Path) -> dict:
    """Autonomous success on unseen scenes (each interleaved evaluation, with a 95% bootstrap interval over
    its episodes) and the operator's share of the training ticks, against training episodes."""
    fig, axes = new_figure(size=(9.0, 4.0))
    ax = axes[0, 0]
    after = np.array([e["after_episodes"] for e in evaluations], float)
    rates = np.array([e["success_rate"] for e in evaluations], float)
    lo, hi = [], []
    for e in evaluations:
        outcomes = [float(r["success"]) for r in e["episodes"] if r.get("outcome") != "stopped"]
        _, a, b = bootstrap_ci([np.array(outcomes or [0.0])], n=2000)
        lo.append(a)
        hi.append(b)
    ax.fill_between(after, lo, hi, color="C0", alpha=0.2, label="95% interval (episodes)")
    ax.plot(after, rates, "o-", color="C0", label="autonomous success, unseen scenes (no operator)")
    ax.plot(x + 1, share, "-", color="C3", label="operator share of training ticks (cumulative)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("training episodes")
    ax.set_ylabel("fraction")
    ax.set_title("did the robot improve? (autonomous evaluations between training episodes)")
    ax.legend(fontsize=8)
    save_figure(fig, path)
    return figure_series(fig)


def _timing_figure(x: np.ndarray, lateness: np.ndarray | None, p99: np.ndarray, path: Path) -> dict:
    fig, axes = new_figure(size=(9.0, 4.0))
    ax = axes[0, 0]
    if lateness is not None and lateness.size:
        ax.hist(lateness, bins=50, color="C0", label="ticks")
        ax.set_yscale("log")
        for q, style in ((50, ":"), (99, "--")):
            v = float(np.percentile(lateness, q))
            ax.axvline(v, color="k", ls=style, lw=1, label=f"p{q} {v:.3f} ms")
        ax.set_xlabel("tick lateness (ms)")
        ax.set_ylabel("ticks")
        ax.set_title("tick lateness histogram")
        ax.legend(fontsize=8)
    else:
        ax.bar(x, p99, color="C0", label="p99 lateness")
        ax.set_xlabel("episode")
        ax.set_ylabel("p99 lateness (ms)")
        ax.set_title("p99 tick lateness per episode (no ticks.npz)")
    save_figure(fig, path)
    return figure_series(fig)


def _links_figure(links: dict, path: Path) -> dict | None:
    """Bars of the links' numeric stats: latencies (keys ending in _ms) and counters; None without numbers."""
    groups = {name: flatten(stats) for name, stats in links.items() if isinstance(stats, dict)}
    ms = {f"{n}.{k}": v for n, s in groups.items() for k, v in s.items() if _is_number(v) and k.endswith("_ms")}
    counts = {f"{n}.{k}": v for n, s in groups.items() for k, v in s.items()
              if _is_number(v) and not k.endswith("_ms") and not k.endswith("_s")}
    panels = [(t, d) for t, d in (("link latencies (ms)", ms), ("link counters", counts)) if d]
    if not panels:
        return None
    fig, axes = new_figure(len(panels), 1, size=(9.0, 0.5 + 0.28 * sum(len(d) for _, d in panels) + 1.2 * len(panels)))
    for ax, (title, data) in zip(axes[:, 0], panels, strict=True):
        names = list(data)
        ax.barh(np.arange(len(names)), [float(data[k]) for k in names], color="C2", label=title)
        ax.set_yticks(np.arange(len(names)), names, fontsize=8)
        ax.invert_yaxis()
        ax.set_title(title)
    save_figure(fig, path)
    return figure_series(fig)


def load_summary(run_dir: Path) -> dict:
    """``run_dir/summary.json`` as a dict."""
    return json.loads((Path(run_dir) / SUMMARY_FILE).read_text())


def _load_ticks(run_dir: Path) -> dict | None:
    path = Path(run_dir) / TICKS_FILE
    if not path.exists():
        return None
    return load_ticks(path)


def session_numbers(summary: dict, ticks: dict | None) -> dict[str, Any]:
    """The key numbers of a session (report table and ``report.json``)."""
    episodes = summary.get("episodes", [])
    n = len(episodes)
    success = np.array([bool(e.get("success")) for e in episodes], bool)
    steps = int(sum(int(e.get("steps", 0)) for e in episodes))
    takeovers = int(sum(int(e.get("takeovers", 0)) for e in episodes))
    interventions = int(sum(int(e.get("intervention_ticks", 0)) for e in episodes))
    timing = [e.get("timing", {}) for e in episodes]
    out: dict[str, Any] = {
        "episodes": n,
        "successes": int(success.sum()),
        "success_rate": float(success.mean()) if n else 0.0,
        "final_rolling_success_rate": float(rolling_rate(success, ROLLING_WINDOW)[-1]) if n else 0.0,
        "takeovers": takeovers,
        "takeovers_per_episode": takeovers / n if n else 0.0,
        "intervention_fraction": interventions / steps if steps else 0.0,
        "ticks": steps,
        "overruns": int(sum(int(t.get("overruns", 0)) for t in timing)),
        "wall_s": float(summary.get("wall_s", 0.0)),
    }
    if ticks is not None and ticks["lateness_ms"].size:
        lat = ticks["lateness_ms"]
        out["lateness_p50_ms"] = float(np.percentile(lat, 50))
        out["lateness_p99_ms"] = float(np.percentile(lat, 99))
        out["lateness_max_ms"] = float(lat.max())
    elif timing:
        out["lateness_p99_ms_worst_episode"] = float(max(t.get("p99_lateness_ms", 0.0) for t in timing))
        out["lateness_max_ms"] = float(max(t.get("max_lateness_ms", 0.0) for t in timing))
    return out


def write_session_report(run_dir: Path) -> Path:
    """Write ``run_dir/report.md`` (+ PNGs and ``report.json``) for the session in ``run_dir``.

    Reads ``summary.json`` (required) and ``ticks.npz`` (optional). Returns the path of report.md.
    """
    run_dir = Path(run_dir)
    summary = load_summary(run_dir)
    ticks = _load_ticks(run_dir)
    episodes = summary.get("episodes", [])
    numbers = session_numbers(summary, ticks)
    figures: dict[str, Any] = {}
    md = [f"# Session report: {run_dir.name}", "",
          f"robot `{summary.get('robot', '?')}`, task `{summary.get('task', '?')}`, "
          f"policy `{summary.get('policy', '?')}`", "", "## Key numbers", "",
          md_table(["", "value"], [[k.replace("_", " "), v] for k, v in numbers.items()]), ""]
    tasks_table: dict[str, dict] = {}
    base_versions = _base_versions(episodes)
    if episodes:
        x = np.array([int(e.get("episode", i)) for i, e in enumerate(episodes)])
        success = np.array([bool(e.get("success")) for e in episodes], bool)
        tasks = _episode_tasks(summary, episodes, ticks)
        versions = _head_versions(episodes, ticks)
        for task in sorted({t for t in tasks if t}):
            sel = [t == task for t in tasks]
            wins = int(success[sel].sum())
            tasks_table[task] = {"episodes": int(sum(sel)), "successes": wins, "success_rate": wins / sum(sel)}
        if len(tasks_table) > 1:
            md += ["## Per task", "", md_table(
                ["task", "episodes", "successes", "success rate"],
                [[t, v["episodes"], v["successes"], v["success_rate"]] for t, v in tasks_table.items()]), ""]
        figures["success.png"] = _success_figure(x, success, tasks, versions, run_dir / "success.png")
        md += ["## Success (learning curve)", "",
               f"Dots: each episode's outcome; solid line: success rate over the last {ROLLING_WINDOW} "
               "episodes" + ("; dashed: per task" if len(tasks_table) > 1 else "")
               + ("; orange steps: the head's weight version." if versions is not None else "."), "",
               "![success](success.png)", ""]
        if base_versions is not None:
            rows = base_version_runs(x, base_versions)
            md += ["## Base policy versions", "",
                   "The base policy's weight version in each episode (a learner's new base weights are swapped in "
                   "between episodes; every tick records the version that produced its base action).", "",
                   md_table(["episodes", "count", "base version", "success rate"],
                            [[f"{a}" if a == b else f"{a}-{b}", n, f"v{v}",
                              float(success[(x >= a) & (x <= b)].mean())] for a, b, n, v in rows]), ""]
        takeovers = np.array([int(e.get("takeovers", 0)) for e in episodes])
        frac = np.array([e.get("intervention_ticks", 0) / e["steps"] if e.get("steps") else 0.0 for e in episodes])
        figures["takeovers.png"] = _takeover_figure(x, takeovers, frac, run_dir / "takeovers.png")
        md += ["## Takeovers", "", "![takeovers](takeovers.png)", ""]
        evaluations = summary.get("evaluations") or []
        if evaluations:
            steps = np.array([int(e.get("steps", 0)) for e in episodes])
            human = np.array([int(e.get("intervention_ticks", 0)) for e in episodes])
            share = np.cumsum(human) / np.maximum(np.cumsum(steps), 1)
            figures["learning.png"] = _learning_figure(evaluations, x, share, run_dir / "learning.png")
            md += ["## Learning: autonomous success and operator share", "",
                   f"Every {evaluations[0]['after_episodes']} training episodes the session ran "
                   f"{len(evaluations[0]['episodes'])} evaluation episodes with no operator on unseen scenes (the "
                   "same scenes each time). Last: " + fmt(evaluations[-1]["success_rate"])
                   + f" after {evaluations[-1]['after_episodes']} episodes; operator share of the training "
                   f"ticks {fmt(float(share[-1]))}.", "", "![learning](learning.png)", "",
                   md_table(["after episodes", "autonomous success"],
                            [[e["after_episodes"], e["success_rate"]] for e in evaluations]), ""]
        lateness = ticks["lateness_ms"] if ticks is not None else None
        p99 = np.array([float(e.get("timing", {}).get("p99_lateness_ms", 0.0)) for e in episodes])
        figures["timing.png"] = _timing_figure(x, lateness, p99, run_dir / "timing.png")
        note = ("Histogram of every tick's lateness (its start minus its deadline; all zero when the robot "
                "is not paced, robot.realtime=false)." if lateness is not None
                else "Each episode's p99 tick lateness (the run has no ticks.npz).")
        md += ["## Loop timing", "", note, "", "![timing](timing.png)", ""]
    else:
        md += ["No episodes ran.", ""]
    links = summary.get("links") or {}
    if links:
        md += ["## Links", ""]
        top = {k: v for k, v in links.items() if not isinstance(v, dict)}
        if top:
            md += [md_table(["", "value"], [[k, v] for k, v in top.items()]), ""]
        for name, stats in links.items():
            if isinstance(stats, dict):
                md += [f"### {name}", "", md_table(["", "value"], [[k, v] for k, v in flatten(stats).items()]), ""]
        series = _links_figure(links, run_dir / "links.png")
        if series is not None:
            figures["links.png"] = series
            md += ["![links](links.png)", ""]
    (run_dir / REPORT_JSON).write_text(json.dumps(
        {"key_numbers": numbers, "tasks": tasks_table, "base_versions": base_versions, "figures": figures}, indent=1))
    path = run_dir / REPORT_MD
    path.write_text("\n".join(md))
    return path
