"""The learner report: ``store_dir/report.md`` with PNG figures, from ``metrics.jsonl`` and ``status.json``.

    write_learner_report(Path("data/learner"))   # -> data/learner/report.md

``metrics.jsonl`` has one JSON object per status period, appended by the learner::

    {"step": 1200, "time": 1735732800.5,                       # update step, unix time (s)
     "metrics": {"critic/loss": 0.41, "critic/td_abs": 0.12, "critic/q_mean": 3.1, ...,
                 "head/q_pi": 2.9, "head/loss": -2.9, ...},
     "replay": {"demo": 5000, "autonomous": 830, "takeover": 120},   # records per buffer
     "versions": {"head": 7, "critic": 7}}                           # published weight versions

Figures: one ``metrics_<group>.png`` per metric prefix (the part of the name before "/": ``critic``,
``head``, ...; names without one are in ``other``), a panel per metric against the update step (the
critic's Q mean and TD-target mean share a panel); ``replay.png`` (records per buffer) and
``versions.png`` (weight versions) against the step. A line that is not valid JSON (a learner killed
mid-write) is skipped and counted; non-finite metric values (a diverged loss) are left out of the
plots and reported in the table with the first step they appeared. ``report.json`` holds the key
numbers and the series drawn, read back from the figures.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from tandem.reports.session import (
    REPORT_JSON,
    REPORT_MD,
    figure_series,
    flatten,
    md_table,
    new_figure,
    save_figure,
)

METRICS_FILE = "metrics.jsonl"
STATUS_FILE = "status.json"
#: metrics drawn in the same panel.
OVERLAYS: tuple[tuple[str, ...], ...] = (("critic/q_mean", "critic/target_mean"),)
#: metrics drawn first in their group, in this order.
FIRST = ("critic/td_abs", "critic/loss", "critic/q_mean", "head/q_pi", "head/loss")


def read_metrics(path: Path) -> tuple[list[dict], int]:
    """The entries of a metrics.jsonl in file order, and how many lines were skipped (not JSON objects)."""
    entries: list[dict] = []
    skipped = 0
    for line in Path(path).read_text().splitlines():
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            skipped += 1
            continue
        if not isinstance(entry, dict) or "step" not in entry:
            skipped += 1
            continue
        entries.append(entry)
    return entries, skipped


def metric_series(entries: list[dict], section: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """name -> (steps int64[K], values float64[K]) of one section ("metrics", "replay", "versions").

    K counts the entries that carry the name (head metrics only appear once the head trains).
    """
    raw: dict[str, tuple[list[int], list[float]]] = {}
    for e in entries:
        for name, value in (e.get(section) or {}).items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue
            steps, values = raw.setdefault(name, ([], []))
            steps.append(int(e["step"]))
            values.append(float(value))
    return {k: (np.asarray(s, np.int64), np.asarray(v, np.float64)) for k, (s, v) in raw.items()}


def group_of(name: str) -> str:
    """The metric's group: its prefix before "/" ("other" without one)."""
    return name.split("/", 1)[0] if "/" in name else "other"


def _panels(names: list[str]) -> list[tuple[str, ...]]:
    """Metric names -> panels (tuples drawn together), FIRST names first, the rest sorted."""
    order = [n for n in FIRST if n in names] + sorted(n for n in names if n not in FIRST)
    panels: list[tuple[str, ...]] = []
    used: set[str] = set()
    for name in order:
        if name in used:
            continue
        overlay = next((o for o in OVERLAYS if name in o), (name,))
        panel = tuple(n for n in overlay if n in names)
        used.update(panel)
        panels.append(panel)
    return panels


def _finite(steps: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ok = np.isfinite(values)
    return steps[ok], values[ok]


def _group_figure(group: str, series: dict[str, tuple[np.ndarray, np.ndarray]], path: Path) -> dict:
    panels = _panels(list(series))
    cols = 2 if len(panels) > 1 else 1
    rows = math.ceil(len(panels) / cols)
    fig, axes = new_figure(rows, cols, size=(10.0, 2.8 * rows + 0.4))
    flat = axes.reshape(-1)
    for ax, panel in zip(flat, panels, strict=False):
        positive = True
        spread = 1.0
        for k, name in enumerate(panel):
            s, v = _finite(*series[name])
            ax.plot(s, v, "-", marker="." if len(s) < 50 else None, color=f"C{k}", label=name)
            if v.size:
                positive = positive and bool(np.all(v > 0))
                spread = max(spread, float(v.max() / v.min()) if positive and v.min() > 0 else 1.0)
        if positive and spread > 100:
            ax.set_yscale("log")
        ax.set_title(", ".join(panel))
        ax.set_xlabel("update step")
        if len(panel) > 1:
            ax.legend(fontsize=8)
    for ax in flat[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(f"{group} metrics")
    save_figure(fig, path)
    return figure_series(fig)


def _lines_figure(title: str, ylabel: str, series: dict[str, tuple[np.ndarray, np.ndarray]],
                  path: Path, step: bool) -> dict:
    fig, axes = new_figure(size=(9.0, 3.5))
    ax = axes[0, 0]
    for k, (name, (s, v)) in enumerate(sorted(series.items())):
        if step:
            ax.step(s, v, where="post", color=f"C{k}", label=name)
        else:
            ax.plot(s, v, "-", color=f"C{k}", label=name)
    ax.set_title(title)
    ax.set_xlabel("update step")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    save_figure(fig, path)
    return figure_series(fig)


def learner_numbers(entries: list[dict], skipped: int) -> dict[str, Any]:
    """Key numbers: entries, step span, duration, update rate, and the last value of everything."""
    out: dict[str, Any] = {"entries": len(entries), "skipped lines": skipped}
    if not entries:
        return out
    first, last = entries[0], entries[-1]
    out["first step"] = int(first["step"])
    out["last step"] = int(last["step"])
    if "time" in first and "time" in last:
        duration = float(last["time"]) - float(first["time"])
        out["duration s"] = duration
        out["updates per s"] = (out["last step"] - out["first step"]) / duration if duration > 0 else None
    for section in ("metrics", "replay", "versions"):
        for name, (steps, values) in sorted(metric_series(entries, section).items()):
            key = name if section == "metrics" else f"{section}.{name}"
            out[f"last {key}"] = float(values[-1]) if section == "metrics" else int(values[-1])
            bad = ~np.isfinite(values)
            if bad.any():
                out[f"non-finite {key}"] = f"{int(bad.sum())} values, first at step {int(steps[bad][0])}"
    return out


def write_learner_report(store_dir: Path) -> Path:
    """Write ``store_dir/report.md`` (+ PNGs and ``report.json``) for the learner in ``store_dir``.

    Reads ``metrics.jsonl`` and ``status.json`` (at least one must exist). Returns report.md's path.
    """
    store_dir = Path(store_dir)
    metrics_path, status_path = store_dir / METRICS_FILE, store_dir / STATUS_FILE
    if not metrics_path.exists() and not status_path.exists():
        raise FileNotFoundError(f"{store_dir} has neither {METRICS_FILE} nor {STATUS_FILE}: "
                                "is it a learner's store_dir (learner.store_dir)?")
    entries, skipped = read_metrics(metrics_path) if metrics_path.exists() else ([], 0)
    numbers = learner_numbers(entries, skipped)
    figures: dict[str, Any] = {}
    md = [f"# Learner report: {store_dir.name}", "", "## Key numbers", "",
          md_table(["", "value"], [[k, v] for k, v in numbers.items()]), ""]
    metrics = metric_series(entries, "metrics")
    groups: dict[str, dict] = {}
    for name, s in metrics.items():
        groups.setdefault(group_of(name), {})[name] = s
    for group in sorted(groups, key=lambda g: (g not in ("critic", "head"), g != "critic", g)):
        fname = f"metrics_{group}.png"
        figures[fname] = _group_figure(group, groups[group], store_dir / fname)
        md += [f"## {group} metrics", "", f"![{group}]({fname})", ""]
    replay = metric_series(entries, "replay")
    if replay:
        figures["replay.png"] = _lines_figure("replay records per buffer", "records", replay,
                                              store_dir / "replay.png", step=False)
        md += ["## Replay", "", "![replay](replay.png)", ""]
    versions = metric_series(entries, "versions")
    if versions:
        figures["versions.png"] = _lines_figure("published weight versions", "version", versions,
                                                store_dir / "versions.png", step=True)
        md += ["## Weight versions", "", "![versions](versions.png)", ""]
    status: dict = {}
    if status_path.exists():
        status = json.loads(status_path.read_text())
        rows = []
        for k, v in flatten(status).items():
            if k == "time" and isinstance(v, int | float):
                v = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(v))
            rows.append([k, v if not isinstance(v, list | dict) else json.dumps(v)])
        md += ["## Last status (status.json)", "", md_table(["", "value"], rows), ""]
    (store_dir / REPORT_JSON).write_text(json.dumps({"key_numbers": numbers, "figures": figures}, indent=1))
    path = store_dir / REPORT_MD
    path.write_text("\n".join(md))
    return path
