"""``tandem keys DIR``: CURVE keys for links on non-loopback addresses (a learner and a robot key pair,
the robot authorised)."""

from __future__ import annotations

import argparse

from tandem.protocol.security import create_keys


def main(args: argparse.Namespace) -> int:
    """Write the keys into ``args.directory`` (``args.force``: replace existing ones); print where they went."""
    directory = args.directory
    for name, path in create_keys(directory, overwrite=args.force).items():
        print(f"{name:24s} {path}")
    print(f"learner: learner.keys_dir={directory}; robots: link.keys_dir={directory} (copy client.key_secret and "
          "server.key to each robot; add more robots' public .key files to authorized/)")
    return 0
