"""``tandem learn``: the learner service. Serves robots and trains until SIGINT/SIGTERM (or its limits),
then prints its summary and writes the learner report."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import threading
from pathlib import Path

import yaml

from tandem.commands.learner_process import PARENT_ENV, watch_parent
from tandem.commands.run import learner_report
from tandem.core.errors import ConfigError
from tandem.protocol.messages import delivered_message
from tandem.value.config import LearnerConfig, compose_learner
from tandem.value.learner import Learner
from tandem.value.replay import STORED, ReplayStore


def check_config_file(path: str) -> None:
    """``--config`` must be a readable YAML file with a ``learner:`` block (else a config error)."""
    try:
        values = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise ConfigError("--config", path, f"cannot be read ({exc.strerror or exc}); give a YAML file with a "
                          "`learner:` block, e.g. <store_dir>/learner.yaml of a spawned learner") from None
    except yaml.YAMLError as exc:
        raise ConfigError("--config", path, f"is not YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(values, dict) or not isinstance(values.get("learner"), dict):
        keys = sorted(values) if isinstance(values, dict) else type(values).__name__
        raise ConfigError("--config", path, f"has no `learner:` block (found {keys}); put the settings under "
                          "`learner:` (learner.<field> overrides go on the command line)")


def check_store_dir(store_dir: str) -> None:
    """The store directory must be creatable and writable (else a config error naming learner.store_dir)."""
    path = Path(store_dir)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ConfigError("learner.store_dir", store_dir, f"the learner's store cannot be written "
                          f"({exc.strerror or exc}); choose a writable directory") from None


def load_demos(cfg: LearnerConfig) -> dict[str, int]:
    """Put the chunk records of every ``learner.demos`` dataset into the store's demonstration buffer.

    Each dataset becomes one stream (robot ``demos``, stream id from its resolved path), its records
    offered in order with seqs 1..n and source "demo", so the replay's duplicate filter makes a second
    load (a restarted learner) add nothing. Runs before the learner opens the store.

    Returns:
        {dataset path: records stored now} (0 for one already loaded).

    Raises:
        ConfigError: a path that is not a LeRobotDataset (named by ``learner.demos``).
    """
    if not cfg.demos or int(os.environ.get("RANK", "0")) != 0:
        return {}
    # the dataset reader (parquet) is needed only here: a learner without demos runs on torch, numpy, msgpack, zmq
    from tandem.runtime.links.from_dataset import load_chunk_records

    roots = []
    for d in cfg.demos:
        root = Path(d).expanduser().resolve()
        if not (root / "meta" / "info.json").is_file():
            raise ConfigError("learner.demos", d, "is not a LeRobotDataset directory (no meta/info.json); give the "
                              "record.root of a recorded session or a `tandem demos` dataset")
        roots.append(root)
    loaded: dict[str, int] = {}
    store = ReplayStore(Path(cfg.store_dir) / "replay", cfg.replay)
    try:
        for root in roots:
            stream = "demos-" + hashlib.sha256(str(root).encode()).hexdigest()[:12]
            records = load_chunk_records(root, cfg.demo_horizon, "demos")
            stored = 0
            for seq, record in enumerate(records, start=1):
                stored += store.offer(delivered_message(record, seq, stream, "demo")) == STORED
            store.commit()
            loaded[str(root)] = stored
            print(f"tandem learn: demos {root}: {len(records)} chunk records (H={cfg.demo_horizon}), "
                  f"{stored} new in the demonstration buffer", flush=True)
    finally:
        store.close()
    return loaded


def main(args: argparse.Namespace) -> int:
    """``tandem learn [--config FILE] [overrides]``: serve and train until SIGINT/SIGTERM (or max_updates /
    max_seconds). Spawned by ``tandem run learn.spawn=true`` (``TANDEM_PARENT_PID`` set), it also stops
    when its parent is gone."""
    if args.config is not None:
        check_config_file(args.config)
    cfg = compose_learner(args.overrides, args.config)
    check_store_dir(cfg.store_dir)
    load_demos(cfg)
    stop = threading.Event()
    learner = Learner(cfg, stop=stop)  # refuses a bad endpoint before anything starts
    parent = os.environ.get(PARENT_ENV, "")
    if parent.isdigit():
        if os.getppid() != int(parent):  # the parent died before we got here
            stop.set()
        watch_parent(stop, int(parent))

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
        learner_report(Path(cfg.store_dir))
    return 0
