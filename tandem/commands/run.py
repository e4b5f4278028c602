"""``tandem run``: compose the run config, run a robot session with its sinks, write summary and reports.

With ``learn.spawn=true`` a learner is started on localhost for the session
(:class:`tandem.commands.learner_process.LearnerProcess`) and stopped after it; its report is written too.
"""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
import threading
from pathlib import Path

from tandem.commands.learner_process import LearnerProcess
from tandem.reports.learner import write_learner_report
from tandem.reports.session import write_session_report
from tandem.runtime.config import compose_run
from tandem.runtime.monitor.live_view import make_live_view
from tandem.runtime.monitor.status_line import make_status_line
from tandem.runtime.monitor.tick_log import TickLog
from tandem.runtime.session import Session, SessionAborted, SessionSummary, default_run_dir, write_summary


def main(args: argparse.Namespace) -> int:
    """``tandem run [overrides]``."""
    return run(args.overrides)


def run(overrides: list[str]) -> int:
    """Compose the config, run the session, print results, write summary.json."""
    cfg = compose_run(overrides)
    stop = threading.Event()
    install_stop_signals(stop)
    run_dir = Path(cfg.session.run_dir) if cfg.session.run_dir else default_run_dir()
    learner = None
    if cfg.learn.spawn:
        learner = LearnerProcess(cfg, run_dir).start()
        print(f"tandem run: learner pid {learner.proc.pid} on 127.0.0.1:{cfg.link.experience_port}/"
              f"{cfg.link.weights_port}, store {learner.store_dir}", flush=True)
    summary = None
    try:
        summary = run_session(cfg, stop, run_dir)
    finally:
        if learner is not None:
            rc = learner.stop()
            print(f"tandem run: learner stopped (exit {rc}); log {learner.store_dir / 'learner.log'}", flush=True)
            learner_report(learner.store_dir)
    if summary is not None:
        print(headline(summary), flush=True)
    return 0


def headline(summary: SessionSummary) -> str:
    """The session's last line: autonomous success on unseen scenes (the last interleaved evaluation;
    "-" without ``session.eval_every``), the operator's share of the training ticks, assisted success."""
    h = summary.headline()
    auto = "-" if h["autonomous"] is None else f"{h['autonomous']:.0%}"
    n = len(summary.evaluations[-1]["episodes"]) if summary.evaluations else 0
    where = f"on unseen scenes ({n} episodes)" if n else "on unseen scenes (session.eval_every=0: not measured)"
    return f"autonomous success {auto} {where} | operator share {h['operator_share']:.0%} | assisted success {h['assisted']:.0%}"


def install_stop_signals(stop: threading.Event) -> None:
    """First Ctrl-C (or SIGTERM, as from ``kill``, systemd or docker stop): finish the current tick and end
    the session cleanly, so a spawned learner is stopped and the summary written. Second: abort (the
    teardown in ``finally`` still runs)."""

    def handler(signum: int, frame: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        print(f"\n{name}: stopping after this tick (again to abort)", file=sys.stderr, flush=True)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handler)


def learner_report(store_dir: Path) -> None:
    """Write the learner's report (if it trained at all); a report failure never fails the run."""
    if not (store_dir / "metrics.jsonl").exists():
        print(f"learner report: no metrics in {store_dir} (it never trained)", flush=True)
        return
    try:
        print(f"learner report {write_learner_report(store_dir)}", flush=True)
    except Exception as exc:  # noqa: BLE001 - the session's data is already safe; say what failed
        print(f"learner report failed: {exc!r}", flush=True)


def link_status(session: object) -> dict | None:
    """The status line's view of the links: experience stats, the learner's update count, pacing."""
    if session.experience_link is None:
        return None
    stats = session.experience_link.stats.to_dict()
    if session.weights_link is not None:
        stats["learner_step"] = session.weights_link.stats.learner_step
    stats["waiting"] = session.pacer is not None and session.pacer.waiting
    return stats


def run_session(cfg: object, stop: threading.Event, run_dir: Path) -> SessionSummary:
    """Run the session with its sinks (tick log, status line, live view); write summary and report."""
    if cfg.display:
        cfg.live_view = dataclasses.replace(cfg.live_view, enabled=True)
    if cfg.record.enabled and not cfg.record.root:  # every session is recorded, into its run directory
        cfg.record = dataclasses.replace(cfg.record, root=str(run_dir / "dataset"))
    session = Session(cfg, stop=stop)
    view = make_live_view(cfg.live_view, value_fn=lambda: session.learning.value() if session.learning else None)
    status = make_status_line(cfg.status_line, cfg.session.episodes, link_stats=lambda: link_status(session))
    ticks = TickLog()
    session.sinks.extend(s for s in (ticks, status, view) if s is not None)

    def on_episode(r: object) -> None:
        t = r.timing
        line = (f"episode {r.episode:3d}  seed {r.seed}  {r.outcome:8s}  steps {r.steps:4d}  "
                f"reward {r.total_reward:8.2f}  takeovers {r.takeovers}  head v{r.head_version}  "
                f"starved {r.starved_ticks}  lateness p99 {t['p99_lateness_ms']:.3f} ms  overruns {t['overruns']}")
        if status is not None:
            status.println(line)
        else:
            print(line, flush=True)

    tasks = ",".join(getattr(cfg.robot, "suite", None) or [getattr(cfg.robot, "task", "")])
    def on_eval(after: int, r: object) -> None:
        line = (f"  eval after {after:3d}  seed {r.seed}  {r.outcome:8s}  steps {r.steps:4d}  "
                f"(autonomous, unseen scene)")
        if status is not None:
            status.println(line)
        else:
            print(line, flush=True)

    print(f"tandem run: robot={cfg.robot.type} task={tasks} policy={cfg.policy.type} head={cfg.head.type} "
          f"episodes={cfg.session.episodes}", flush=True)
    aborted: SessionAborted | None = None
    try:
        summary = session.run(on_episode=on_episode, on_eval=on_eval)
    except SessionAborted as exc:  # a dead policy worker ...: write what finished, then say what failed
        summary, aborted = exc.summary, exc
    finally:
        if status is not None:
            status.close()
        view_stats = view.close() if view is not None else None
    if view_stats:
        summary.live_view = view_stats
    path = write_summary(summary, run_dir)
    ticks.save(run_dir)
    n = len(summary.episodes)
    wins = sum(e["success"] for e in summary.episodes)
    print(f"success rate {summary.success_rate:.0%} ({wins}/{n})  wall {summary.wall_s:.1f} s  summary {path}")
    rec = getattr(summary, "recording", None)
    if rec:
        disk = f" ({rec['dropped_disk']} while the disk was full)" if rec.get("dropped_disk") else ""
        print(f"recorded {rec['episodes_committed']} episodes ({rec['frames_committed']} frames) into {rec['root']}"
              f"  dropped ticks {rec['dropped']}{disk}" + (f"  errors {rec['errors']}" if rec["errors"] else ""))
    exp = summary.links.get("experience", {})
    if exp.get("lost") or exp.get("spool_pauses"):
        print(f"experience link: spool paused {exp['spool_pauses']} times (disk full or unwritable); "
              f"{exp['lost']} records ({exp['lost_ticks']} ticks) lost, never sent to the learner", flush=True)
    print(f"report {write_session_report(run_dir)}", flush=True)
    if aborted is not None:
        raise SessionAborted(f"the session ended early: {summary.error}; the summary and report of the {n} finished "
                             f"episodes are in {run_dir}", summary) from aborted.__cause__
    return summary
