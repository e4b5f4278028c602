"""``tandem bench <what>``: run one benchmark of ``tandem.bench`` and print its result as one JSON object.

Each benchmark is the module ``tandem.bench.<what>``, imported only when it runs (``bench learner`` and
``bench links`` load torch, which ``bench loop`` should not carry).
"""

from __future__ import annotations

import argparse
import importlib
import json


def main(args: argparse.Namespace) -> int:
    """Run the benchmark ``args.what`` with its options from ``args``; print its JSON."""
    bench = importlib.import_module(f"tandem.bench.{args.what}")
    if args.what == "loop":
        result = bench.bench_loop(hz=args.hz, seconds=args.seconds or 10.0, load=args.load)
    elif args.what == "recorder":
        result = bench.bench_recorder(
            seconds=args.seconds or 60.0, hz=args.hz, episode_s=args.episode_seconds, source=args.source,
            cameras=args.cameras, width=args.width, height=args.height, drain_timeout_s=args.drain_timeout,
        )
    elif args.what == "links":
        result = bench.bench_links(pushes=args.pushes, records=args.records)
    elif args.what == "inference":
        result = bench.bench_inference(seconds=args.seconds or 20.0, n=args.n, hz=args.hz,
                                       policy_overrides=args.overrides, render_thread=not args.render_in_tick)
    elif args.what == "learner":
        result = bench.bench_learner(batch_size=args.batch_size, updates=args.updates, threads=args.threads,
                                     device=args.device, ensemble_size=args.ensemble)
    elif args.what == "fleet":
        result = bench.bench_fleet(robots=args.robots, hz=args.hz, seconds=args.seconds or 30.0, idle_s=args.idle_seconds,
                                   objective=args.objective, batch_size=args.batch_size, device=args.device)
    elif args.what == "rtc":
        result = bench.bench_rtc(delays=args.delays, modes=args.modes, episodes=args.episodes,
                                 max_steps=args.max_steps, seed=args.seed, overrides=args.overrides)
    else:  # argparse restricts the choices
        raise AssertionError(args.what)
    print(json.dumps(result, indent=2))
    return 0
