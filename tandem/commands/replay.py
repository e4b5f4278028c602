"""``tandem replay DIR``: chunk records rebuilt from a recorded dataset; prints their summary as JSON."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tandem.runtime.links.from_dataset import replay_summary


def main(args: argparse.Namespace) -> int:
    """Rebuild ``args.root``'s records with horizon ``args.horizon`` and robot id ``args.robot_id``.
    Exit 2 with a ``tandem:`` line when ``args.root`` is not a dataset."""
    root = Path(args.root)
    if not (root / "meta" / "info.json").is_file():
        what = "does not exist" if not root.exists() else "is not a LeRobotDataset (no meta/info.json)"
        print(f"tandem: replay: {root} {what}; give the directory of a recorded dataset (record.root)",
              file=sys.stderr)
        return 2
    print(json.dumps(replay_summary(args.root, args.horizon, args.robot_id), indent=2))
    return 0
