"""``tandem replay DIR``: chunk records rebuilt from a recorded dataset; prints their summary as JSON."""

from __future__ import annotations

import argparse
import json

from tandem.runtime.links.from_dataset import replay_summary


def main(args: argparse.Namespace) -> int:
    """Rebuild ``args.root``'s records with horizon ``args.horizon`` and robot id ``args.robot_id``."""
    print(json.dumps(replay_summary(args.root, args.horizon, args.robot_id), indent=2))
    return 0
