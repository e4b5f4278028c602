"""The ``tandem`` command line: parse the arguments, run the subcommand's module, turn errors into exit codes.

    tandem run [hydra overrides...]       a robot session (simulated by default)
    tandem bench loop [--hz --seconds --load]   control-loop timing benchmark, JSON out
    tandem bench recorder [--seconds --source --cameras --width --height --hz]  recorder throughput/CPU/memory, JSON out
    tandem recover DIR                    roll a killed recording back and commit its spooled episodes
    tandem replay DIR [--horizon]         chunk records rebuilt from a recorded dataset, summary out
    tandem eval [overrides...] [--split unseen|train --seeds 0 1 2 --episodes 30 --out DIR --label NAME --with-operator | --compare DIR...]
    tandem study [overrides...] [--arms ... --seeds ... --episodes N --updates-per-episode N ...]   arms, same budgets
    tandem learn [hydra overrides...]     the learner service (learner.store_dir=... learner.batch_size=...)
    tandem keys DIR [--force]             CURVE keys for links on non-loopback addresses
    tandem bench links [--pushes --records]  weight push latency (vs lerobot gRPC), experience throughput
    tandem bench learner [--batch-size --updates --threads --device --ensemble]  critic updates/s, weight publication, head latency
    tandem bench fleet [--robots 20 --hz 50 --seconds 30 --objective edit]  learner updates/s idle vs. while robots stream
    tandem serve-policy [hydra overrides...]   a base policy served to remote robots (session.backend=remote)
    tandem demos [hydra overrides...]     scripted-expert demonstrations recorded into a LeRobotDataset
    tandem pretrain [hydra overrides...]  behaviour cloning of the tiny VLA from a LeRobotDataset
    tandem bench inference [policy overrides] [--seconds --n]   inference latency, loop lateness beside the worker
    tandem bench rtc [run overrides] [--delays 0 1 2 4 8 --modes ... --episodes N --max-steps N]   splicing under delay
    tandem prepare-policy SOURCE --out DIR [--backbone NAME --cache-dir DIR --force]   lerobot policy + backbone files, offline

Each subcommand lives in its own module under ``tandem/commands/`` (see :data:`COMMANDS`), whose
``main(args)`` takes the parsed arguments and returns the exit status. The module is imported only
when its subcommand runs, so ``tandem --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from tandem.core.errors import ConfigError, DeviceMissingError, TandemError
from tandem.policies.base import PolicyLoadError

#: subcommand -> its module in ``tandem.commands`` (each exposes ``main(args: argparse.Namespace) -> int``)
COMMANDS = {
    "run": "run",
    "eval": "eval",
    "study": "study",
    "bench": "bench",
    "learn": "learn",
    "demos": "demos",
    "pretrain": "pretrain",
    "serve-policy": "serve_policy",
    "keys": "keys",
    "recover": "recover",
    "replay": "replay",
    "prepare-policy": "prepare_policy",
}


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
    study = sub.add_parser("study", help="arms (methods and control arms) with the same seeds and budgets, "
                           "evaluated on unseen scenes (tandem study --help)", add_help=False, prefix_chars="\x00")
    study.add_argument("args", nargs=argparse.REMAINDER, help="tandem study options and Hydra overrides")
    bench = sub.add_parser("bench", help="performance benchmarks (JSON out)")
    bench.add_argument("what", choices=["loop", "recorder", "links", "learner", "inference", "rtc", "fleet"], help="which benchmark")
    bench.add_argument("--hz", type=float, default=50.0, help="loop rate (Hz)")
    bench.add_argument("--seconds", type=float, default=None, help="duration (s; loop 10, recorder 60, fleet 30)")
    bench.add_argument("--load", type=int, default=0, help="busy worker processes beside the loop")
    bench.add_argument("--source", choices=["synthetic", "metaworld"], default="synthetic",
                       help="recorder: camera frames generated, or pre-rendered MetaWorld corner/topview")
    bench.add_argument("--episode-seconds", type=float, default=10.0, help="recorder: episode length (s)")
    bench.add_argument("--cameras", type=int, default=2, help="recorder: cameras per tick (1..7)")
    bench.add_argument("--width", type=int, default=96, help="recorder: camera width, pixels")
    bench.add_argument("--height", type=int, default=96, help="recorder: camera height, pixels")
    bench.add_argument("--drain-timeout", type=float, default=300.0,
                       help="recorder: s the converter gets after the loop to commit the spool")
    bench.add_argument("--pushes", type=int, default=100, help="links: weight pushes timed")
    bench.add_argument("--records", type=int, default=20000, help="links: chunk records sent")
    bench.add_argument("--batch-size", type=int, default=256, help="learner: batch size")
    bench.add_argument("--updates", type=int, default=100, help="learner: timed updates per figure")
    bench.add_argument("--threads", type=int, default=0, help="learner: torch threads (0: torch default)")
    bench.add_argument("--device", default="cpu", help="learner: torch device of the update figures (cpu, cuda)")
    bench.add_argument("--ensemble", type=int, default=2, help="learner: critic ensemble members")
    bench.add_argument("--robots", type=int, default=20, help="fleet: robot processes streaming chunk records")
    bench.add_argument("--idle-seconds", type=float, default=20.0, help="fleet: learner update rate window before the robots start")
    bench.add_argument("--objective", default="edit", help="fleet: the learner's objective (critic, residual, edit)")
    bench.add_argument("--n", type=int, default=200, help="inference: chunks timed")
    bench.add_argument("--render-in-tick", action="store_true",
                       help="inference: render the camera inside the tick (robot.render_thread=false)")
    bench.add_argument("--delays", type=int, nargs="+", default=[0, 1, 2, 4, 8],
                       help="rtc: emulated inference delays, ticks")
    bench.add_argument("--modes", nargs="+", default=["naive", "crossfade", "rtc"],
                       help="rtc: splice modes (naive crossfade rtc)")
    bench.add_argument("--episodes", type=int, default=1, help="rtc: episodes per task of the suite, per arm")
    bench.add_argument("--max-steps", type=int, default=150, help="rtc: episode time limit, ticks")
    bench.add_argument("--seed", type=int, default=0, help="rtc: first scene and noise seed")
    bench.add_argument("overrides", nargs="*", help="inference: policy overrides, right after the word inference "
                       "(default policy=tiny_vla policy.device=cpu); rtc: tandem run overrides (robot.suite=...)")
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
    prep = sub.add_parser("prepare-policy", help="copy a lerobot policy and its backbone's config/processor/tokenizer "
                          "files from the hub cache into a directory that loads offline")
    prep.add_argument("source", help="hub repository id in the cache (lerobot/smolvla_base) or a policy directory")
    prep.add_argument("--out", required=True, help="the directory to write (policy.path=DIR)")
    prep.add_argument("--backbone", default=None, help="backbone repository id or directory (default: the policy's)")
    prep.add_argument("--cache-dir", default=None, help="hub cache (default: HF_HUB_CACHE)")
    prep.add_argument("--force", action="store_true", help="replace the files of an existing --out")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``tandem`` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        command = importlib.import_module(f"tandem.commands.{COMMANDS[args.command]}")
        return command.main(args)
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


if __name__ == "__main__":
    sys.exit(main())
