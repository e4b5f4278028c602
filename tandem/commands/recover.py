"""``tandem recover DIR``: roll a killed recording back and commit its spooled episodes, so the dataset
loads again; prints the recovery report as JSON."""

from __future__ import annotations

import argparse
import json
import sys

from tandem.runtime.recording.dataset_store import DatasetBusyError, DatasetCorruptError, recover


def main(args: argparse.Namespace) -> int:
    """Recover ``args.root`` (repo id ``args.repo_id``). Exit 1 when the dataset is busy, corrupt or missing."""
    try:
        report = recover(args.root, args.repo_id)
    except (DatasetBusyError, DatasetCorruptError, FileNotFoundError) as exc:
        print(f"tandem recover: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=2))
    return 0
