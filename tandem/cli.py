"""The ``tandem`` command line. Each subcommand is a thin wrapper over an importable function.

    tandem run [hydra overrides...]       a robot session (simulated by default)
    tandem bench loop [--hz --seconds --load]   control-loop timing benchmark, JSON out
    tandem bench recorder [--seconds --source]  recorder throughput/CPU benchmark, JSON out
    tandem recover DIR                    roll a killed recording back and commit its spooled episodes
    tandem replay DIR [--horizon]         chunk records rebuilt from a recorded dataset, summary out
    tandem eval [overrides...] [--seeds 0 1 2 --episodes 30 --out DIR --label NAME --with-operator | --compare DIR...]
    tandem learn [hydra overrides...]     the learner service (learner.store_dir=... learner.batch_size=...)
    tandem keys DIR [--force]             CURVE keys for links on non-loopback addresses
    tandem bench links [--pushes --records]  weight push latency (vs lerobot gRPC), experience throughput
    tandem bench learner [--batch-size --updates --threads]  critic updates/s, weight publication, head latency
    tandem serve-policy [hydra overrides...]   a base policy served to remote robots (session.backend=remote)
    tandem demos [hydra overrides...]     scripted-expert demonstrations recorded into a LeRobotDataset
    tandem pretrain [hydra overrides...]  behaviour cloning of the tiny VLA from a LeRobotDataset
    tandem bench inference [policy overrides] [--seconds --n]   inference latency, loop lateness beside the worker
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from pathlib import Path

from tandem.core.errors import ConfigError, DeviceMissingError, TandemError
from tandem.policies.base import PolicyLoadError


def _install_stop_signals(stop: threading.Event) -> None:
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


def cmd_run(overrides: list[str]) -> int:
    """``tandem run``: compose the config, run the session, print results, write summary.json."""
    from tandem.runtime.config import compose_run
    from tandem.runtime.session import default_run_dir

    cfg = compose_run(overrides)
    stop = threading.Event()
    _install_stop_signals(stop)
    run_dir = Path(cfg.session.run_dir) if cfg.session.run_dir else default_run_dir()
    learner = None
    if cfg.learn.spawn:
        from tandem.commands.learner_process import LearnerProcess

        learner = LearnerProcess(cfg, run_dir).start()
        print(f"tandem run: learner pid {learner.proc.pid} on 127.0.0.1:{cfg.link.experience_port}/"
              f"{cfg.link.weights_port}, store {learner.store_dir}", flush=True)
    try:
        return _run_session(cfg, stop, run_dir)
    finally:
        if learner is not None:
            rc = learner.stop()
            print(f"tandem run: learner stopped (exit {rc}); log {learner.store_dir / 'learner.log'}", flush=True)
            _learner_report(learner.store_dir)


def _learner_report(store_dir: Path) -> None:
    """Write the learner's report (if it trained at all); a report failure never fails the run."""
    from tandem.reports.learner import write_learner_report

    if not (store_dir / "metrics.jsonl").exists():
        print(f"learner report: no metrics in {store_dir} (it never trained)", flush=True)
        return
    try:
        print(f"learner report {write_learner_report(store_dir)}", flush=True)
    except Exception as exc:  # noqa: BLE001 - the session's data is already safe; say what failed
        print(f"learner report failed: {exc!r}", flush=True)


def _link_status(session: object) -> dict | None:
    """The status line's view of the links: experience stats, the learner's update count, pacing."""
    if session.experience_link is None:
        return None
    stats = session.experience_link.stats.to_dict()
    if session.weights_link is not None:
        stats["learner_step"] = session.weights_link.stats.learner_step
    stats["waiting"] = session.pacer is not None and session.pacer.waiting
    return stats


def _run_session(cfg: object, stop: threading.Event, run_dir: Path) -> int:
    """Run the session with its sinks (tick log, status line, live view); write summary and report."""
    import dataclasses

    from tandem.reports.session import write_session_report
    from tandem.runtime.monitor.live_view import make_live_view
    from tandem.runtime.monitor.status_line import make_status_line
    from tandem.runtime.monitor.tick_log import TickLog
    from tandem.runtime.session import Session, write_summary

    if cfg.display:
        cfg.live_view = dataclasses.replace(cfg.live_view, enabled=True)
    session = Session(cfg, stop=stop)
    view = make_live_view(cfg.live_view, value_fn=lambda: session.learning.value() if session.learning else None)
    status = make_status_line(cfg.status_line, cfg.session.episodes, link_stats=lambda: _link_status(session))
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
    print(f"tandem run: robot={cfg.robot.type} task={tasks} policy={cfg.policy.type} head={cfg.head.type} "
          f"episodes={cfg.session.episodes}", flush=True)
    try:
        summary = session.run(on_episode=on_episode)
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
        print(f"recorded {rec['episodes_committed']} episodes ({rec['frames_committed']} frames) into {rec['root']}"
              f"  dropped ticks {rec['dropped']}" + (f"  errors {rec['errors']}" if rec["errors"] else ""))
    print(f"report {write_session_report(run_dir)}", flush=True)
    return 0


def cmd_learn(overrides: list[str], config_file: str | None = None) -> int:
    """``tandem learn``: serve robots and train until SIGINT/SIGTERM (or max_updates / max_seconds)."""
    from tandem.value.learner import Learner, compose_learner

    cfg = compose_learner(overrides, config_file)
    stop = threading.Event()
    learner = Learner(cfg, stop=stop)  # refuses a bad endpoint before anything starts

    def ready(learner: object) -> None:
        srv = learner.server
        print(f"tandem learn: ready experience={srv.experience_endpoint} weights={srv.weights_endpoint} "
              f"store={cfg.store_dir} step={learner.step}", flush=True)

    previous = {sig: signal.signal(sig, lambda signum, frame: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        summary = learner.run(on_ready=ready)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print("tandem learn: summary " + json.dumps(summary), flush=True)
    if summary.get("rank", 0) == 0:
        _learner_report(Path(cfg.store_dir))
    return 0


def cmd_serve_policy(overrides: list[str]) -> int:
    """``tandem serve-policy``: build the policy (for the configured robot's schemas), warm it up, serve it."""
    from tandem.runtime.build import make_policy, make_robot
    from tandem.runtime.config import compose_run
    from tandem.runtime.inference.server import serve_policy, warm_up

    cfg = compose_run(overrides)
    link = cfg.policy_link
    robot = make_robot(cfg.robot)
    policy = make_policy(cfg.policy, robot)
    warm_up(policy, robot, link.warmup)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: stop.set())

    def ready(endpoint: str) -> None:
        print(f"tandem serve-policy: serving {policy.name} (P={policy.chunk_length} A={policy.action_dim} "
              f"F={policy.feature_dim}) on {endpoint}; robots: session.backend=remote "
              f"policy_link.endpoint={endpoint}", flush=True)

    try:
        stats = serve_policy(policy, robot, link.bind, link.keys_dir, link.max_message_bytes, stop, on_ready=ready)
    finally:
        policy.close()
    print("tandem serve-policy: stopped " + json.dumps(stats.to_dict()), flush=True)
    return 0


def cmd_demos(overrides: list[str]) -> int:
    """``tandem demos``: ``tandem run`` with the demonstration defaults (scripted expert, recorder on) first."""
    from tandem.commands.demos import DEMO_OVERRIDES

    return cmd_run([*DEMO_OVERRIDES, *overrides])


def cmd_pretrain(overrides: list[str]) -> int:
    """``tandem pretrain``: behaviour cloning from a LeRobotDataset into a tiny VLA checkpoint."""
    from tandem.commands.pretrain import compose_pretrain, pretrain

    cfg = compose_pretrain(overrides)
    meta = pretrain(cfg)
    last = meta["history"][-1]
    print(f"tandem pretrain: wrote {cfg.out} (version {meta['version']}, {meta['steps']} steps, "
          f"{meta['frames']} frames, {meta['train_s']} s) " + json.dumps(last), flush=True)
    return 0


def cmd_keys(directory: str, force: bool) -> int:
    """``tandem keys DIR``: a learner and a robot CURVE key pair, and the robot authorised."""
    from tandem.protocol.security import create_keys

    for name, path in create_keys(directory, overwrite=force).items():
        print(f"{name:24s} {path}")
    print(f"learner: learner.keys_dir={directory}; robots: link.keys_dir={directory} (copy client.key_secret and "
          "server.key to each robot; add more robots' public .key files to authorized/)")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """``tandem bench <what>``: print one JSON object."""
    if args.what == "loop":
        from tandem.bench.loop import bench_loop

        result = bench_loop(hz=args.hz, seconds=args.seconds or 10.0, load=args.load)
    elif args.what == "recorder":
        from tandem.bench.recorder import bench_recorder

        result = bench_recorder(
            seconds=args.seconds or 60.0, hz=args.hz, episode_s=args.episode_seconds, source=args.source
        )
    elif args.what == "links":
        from tandem.bench.links import bench_links

        result = bench_links(pushes=args.pushes, records=args.records)
    elif args.what == "inference":
        from tandem.bench.inference import bench_inference

        result = bench_inference(seconds=args.seconds or 20.0, n=args.n, hz=args.hz, policy_overrides=args.overrides)
    elif args.what == "learner":
        from tandem.bench.learner import bench_learner

        result = bench_learner(batch_size=args.batch_size, updates=args.updates, threads=args.threads)
    else:  # argparse restricts the choices
        raise AssertionError(args.what)
    print(json.dumps(result, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and docs)."""
    parser = argparse.ArgumentParser(prog="tandem", description="Post-train VLA policies on real robots.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a robot session (Hydra overrides: robot.task=push-v3 ...)")
    run.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. session.episodes=5")
    ev = sub.add_parser("eval", help="success rate over held-out seeds with 95%% bootstrap CIs, or --compare DIRS "
                        "(tandem eval --help)", add_help=False, prefix_chars="\x00")
    ev.add_argument("args", nargs=argparse.REMAINDER, help="tandem eval options and Hydra overrides")
    bench = sub.add_parser("bench", help="performance benchmarks (JSON out)")
    bench.add_argument("what", choices=["loop", "recorder", "links", "learner", "inference"], help="which benchmark")
    bench.add_argument("--hz", type=float, default=50.0, help="loop rate (Hz)")
    bench.add_argument("--seconds", type=float, default=None, help="duration (s; loop 10, recorder 60)")
    bench.add_argument("--load", type=int, default=0, help="busy worker processes beside the loop")
    bench.add_argument("--source", choices=["synthetic", "metaworld"], default="synthetic",
                       help="recorder: camera frames generated, or pre-rendered MetaWorld corner/topview")
    bench.add_argument("--episode-seconds", type=float, default=10.0, help="recorder: episode length (s)")
    bench.add_argument("--pushes", type=int, default=100, help="links: weight pushes timed")
    bench.add_argument("--records", type=int, default=20000, help="links: chunk records sent")
    bench.add_argument("--batch-size", type=int, default=256, help="learner: batch size")
    bench.add_argument("--updates", type=int, default=100, help="learner: timed updates per figure")
    bench.add_argument("--threads", type=int, default=0, help="learner: torch threads (0: torch default)")
    bench.add_argument("--n", type=int, default=200, help="inference: chunks timed")
    bench.add_argument("overrides", nargs="*", help="inference: policy overrides, right after the word inference "
                       "(default policy=tiny_vla policy.device=cpu)")
    learn = sub.add_parser("learn", help="learner service (Hydra overrides: learner.store_dir=... learner.device=cuda)")
    learn.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. learner.batch_size=256")
    learn.add_argument("--config", default=None, help="a YAML `learner:` block to start from (overrides apply on top)")
    demos = sub.add_parser("demos", help="record scripted-expert demonstrations into a LeRobotDataset")
    demos.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. session.episodes=90 record.root=data/demos")
    pretrain = sub.add_parser("pretrain", help="train the tiny VLA by behaviour cloning from a LeRobotDataset")
    pretrain.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. dataset=data/demos steps=3000")
    serve = sub.add_parser("serve-policy", help="serve a base policy to remote robots (policy_link.bind=...)")
    serve.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. policy=tiny_vla policy.device=cuda")
    keys = sub.add_parser("keys", help="create CURVE keys for links on non-loopback addresses")
    keys.add_argument("directory", help="where to write the keys")
    keys.add_argument("--force", action="store_true", help="replace existing keys")
    recover = sub.add_parser("recover", help="make a dataset whose recording was killed loadable again")
    recover.add_argument("root", help="dataset directory (record.root)")
    recover.add_argument("--repo-id", default="", help="repo id (default local/<directory name>)")
    replay = sub.add_parser("replay", help="rebuild chunk records from a recorded dataset; print a summary")
    replay.add_argument("root", help="dataset directory")
    replay.add_argument("--horizon", type=int, default=10, help="H, ticks per chunk record")
    replay.add_argument("--robot-id", default="replay", help="robot id of the records")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``tandem`` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "run":
            return cmd_run(args.overrides)
        if args.command == "bench":
            return cmd_bench(args)
        if args.command == "eval":
            from tandem.commands.eval import main as eval_main

            return eval_main(args.args)
        if args.command == "learn":
            return cmd_learn(args.overrides, args.config)
        if args.command == "keys":
            return cmd_keys(args.directory, args.force)
        if args.command == "serve-policy":
            return cmd_serve_policy(args.overrides)
        if args.command == "demos":
            return cmd_demos(args.overrides)
        if args.command == "pretrain":
            return cmd_pretrain(args.overrides)
        if args.command == "recover":
            from tandem.runtime.recording.dataset_store import DatasetBusyError, DatasetCorruptError, recover

            try:
                report = recover(args.root, args.repo_id)
            except (DatasetBusyError, DatasetCorruptError, FileNotFoundError) as exc:
                print(f"tandem recover: {exc}", file=sys.stderr)
                return 1
            print(json.dumps(report, indent=2))
            return 0
        if args.command == "replay":
            from tandem.runtime.links.from_dataset import replay_summary

            print(json.dumps(replay_summary(args.root, args.horizon, args.robot_id), indent=2))
            return 0
    except ConfigError as exc:
        print(f"tandem: config error: {exc}", file=sys.stderr)
        return 2
    except DeviceMissingError as exc:
        print(f"tandem: device missing: {exc}", file=sys.stderr)
        return 3
    except PolicyLoadError as exc:
        print(f"tandem: policy error: {exc}", file=sys.stderr)
        return 2
    except TandemError as exc:  # e.g. a real arm without its calibration file: the message says what to run
        print(f"tandem: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())
