"""``tandem serve-policy``: a base policy served to remote robots (``session.backend=remote`` on their side)."""

from __future__ import annotations

import argparse
import json
import signal
import threading

from tandem.runtime.build import make_policy, make_robot
from tandem.runtime.config import compose_run
from tandem.runtime.inference.server import serve_policy, warm_up


def main(args: argparse.Namespace) -> int:
    """Build the policy (for the configured robot's schemas), warm it up, serve it until SIGINT/SIGTERM."""
    cfg = compose_run(args.overrides)
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
