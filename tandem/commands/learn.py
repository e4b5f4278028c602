"""``tandem learn``: the learner service. Serves robots and trains until SIGINT/SIGTERM (or its limits),
then prints its summary and writes the learner report."""

from __future__ import annotations

import argparse
import json
import signal
import threading
from pathlib import Path

from tandem.commands.run import learner_report
from tandem.value.config import compose_learner
from tandem.value.learner import Learner


def main(args: argparse.Namespace) -> int:
    """``tandem learn [--config FILE] [overrides]``: serve and train until SIGINT/SIGTERM (or max_updates /
    max_seconds)."""
    cfg = compose_learner(args.overrides, args.config)
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
        learner_report(Path(cfg.store_dir))
    return 0
