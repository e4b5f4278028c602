"""``tandem demos``: scripted-expert demonstrations recorded into a LeRobotDataset.

A thin layer over a robot session: ``tandem demos [overrides]`` is ``tandem run`` with the defaults in
:data:`DEMO_OVERRIDES` put first (the scripted expert with a little action noise, simulated time, the
default task suite, the recorder on), so any of them can be overridden. The recorder
(``tandem.runtime.recording.recorder``) writes the dataset with lerobot's own writer and notes each episode's
outcome; ``tandem pretrain`` learns from the successful ones.
"""

from __future__ import annotations

import argparse
from typing import Any

from tandem.commands.run import run
from tandem.runtime.config import compose_run
from tandem.runtime.session import Session

DEFAULT_SUITE = ("reach-v3", "push-v3", "pick-place-v3")

DEMO_OVERRIDES = [
    "policy=scripted",
    "policy.noise_std=0.1",  # perturbed states around the expert's path (DART-style); labels stay near the expert
    "session.backend=inline",
    "robot.realtime=false",
    "robot.cameras=[corner]",
    "robot.image_size=96",
    f"robot.suite=[{','.join(DEFAULT_SUITE)}]",
    "session.episodes=60",
    "record.enabled=true",
    "record.root=data/demos",
]


def compose_demos(overrides: list[str]) -> Any:
    """The run config of ``tandem demos``: :data:`DEMO_OVERRIDES`, then the user's ``overrides``."""
    return compose_run([*DEMO_OVERRIDES, *overrides])


def record_demos(overrides: list[str], on_episode: Any = None) -> Any:
    """Run the demonstration session; returns its SessionSummary (``.recording`` holds the dataset stats)."""
    return Session(compose_demos(overrides)).run(on_episode=on_episode)


def main(args: argparse.Namespace) -> int:
    """``tandem demos [overrides]``: ``tandem run`` with :data:`DEMO_OVERRIDES` first."""
    return run([*DEMO_OVERRIDES, *args.overrides])
