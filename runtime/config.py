"""The top-level run config and its Hydra wiring.

Config groups live under ``configs/`` (robot/, policy/, ...). Each group option is a YAML file whose
``type`` selects a dataclass in ``tandem.core.registry``; every dataclass validates itself in
``__post_init__`` so a wrong value fails at start with the field name and the allowed values.
``compose_run(overrides)`` turns Hydra overrides into a validated :class:`RunConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tandem.core.config import build_dataclass, build_group, compose
from tandem.core.errors import ConfigError
from tandem.core.validate import in_range, non_negative, one_of, positive, stride_of
from tandem.policies.heads.config import HeadConfig
from tandem.runtime.control.loop import LoopConfig
from tandem.runtime.control.safety import SafetyConfig
from tandem.runtime.control.scheduler import SchedulerConfig
from tandem.runtime.inference.client import PolicyLinkConfig
from tandem.runtime.links.config import LinkConfig
from tandem.runtime.monitor.live_view import LiveViewConfig
from tandem.runtime.monitor.status_line import StatusLineConfig
from tandem.runtime.recording.recorder import RecordConfig


@dataclass
class LearnConfig:
    """The ``learn`` block of a run config.

    Attributes:
        spawn: start a learner on localhost for this session and connect the robot to it.
        store_dir: the learner's store ("": ``<run_dir>/learner``).
        learner: learner settings (LearnerConfig fields: batch_size, publish_every_updates, objective
            settings such as ``objective: {critic_objective: {...}, head_objective: {...}}`` ...). The
            objective's type, critic and head come from the run's ``head`` block.
        ready_timeout_s: how long to wait for the learner to come up.
        stop_timeout_s: how long to wait for a clean exit after SIGTERM before SIGKILL.
    """

    spawn: bool = False
    store_dir: str = ""
    learner: dict = field(default_factory=dict)
    ready_timeout_s: float = 60.0
    stop_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        self.learner = dict(self.learner or {})
        positive("learn.ready_timeout_s", self.ready_timeout_s)
        positive("learn.stop_timeout_s", self.stop_timeout_s)
        for key in ("host", "experience_port", "weights_port", "store_dir"):
            if key in self.learner:
                raise ConfigError(f"learn.learner.{key}", self.learner[key],
                                  "is chosen by the session (loopback, free ports, learn.store_dir)")


@dataclass
class SessionConfig:
    """A robot session.

    Attributes:
        episodes: number of episodes to run.
        seed: seed of the first episode (episode i uses seed + i).
        horizon: H, ticks per chunk record (the head's and the critic's chunk length).
        record_stride: ticks between the starts of the chunk records sent to a learner, a divisor of H
            (0: H, one record per chunk; 1: a record starting at every tick, H times as many,
            overlapping; see ``ChunkAssembler``).
        head_stride: ticks between head corrections, a divisor of H (0: H, one correction per chunk at
            its boundary; 1: every tick, receding horizon; see ``Controller``).
        run_dir: where the run writes summary.json (empty: runs/<date>_<time>).
        backend: where base inference runs: "inline" (in the loop; scripted policies), "thread",
            "process" (a worker process on this machine), "remote" (``tandem serve-policy`` at
            ``policy_link.endpoint``).
        max_episode_steps: episode time limit in ticks (0: the robot's own).
        eval_every: after every this many (training) episodes, run ``eval_episodes`` autonomous
            evaluation episodes: no operator, unseen scenes (``robot.scenes=unseen``), nothing recorded or
            sent to a learner; the same scenes each time (seeds ``eval_seed`` + k). 0: never.
        eval_episodes: episodes per evaluation (episode k runs task k of the robot's suite, cycling).
        eval_seed: seed of the first evaluation episode.
        reset_timeout_s: the reset phase between episodes on a real robot with an operator device:
            the robot holds while the scene is reset, until the operator confirms (the takeover
            toggle, e.g. space, or a success mark) or this many seconds pass; a stop event ends the
            session. Simulated robots and sessions without an operator skip it. 0: no reset phase.
    """

    episodes: int = 3
    seed: int = 0
    horizon: int = 10
    record_stride: int = 0
    head_stride: int = 0
    run_dir: str = ""
    backend: str = "inline"
    max_episode_steps: int = 0
    eval_every: int = 0
    eval_episodes: int = 3
    eval_seed: int = 1_000_000
    reset_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        in_range("session.episodes", self.episodes, 1, 1_000_000)
        non_negative("session.eval_every", self.eval_every)
        in_range("session.eval_episodes", self.eval_episodes, 1, 100_000)
        non_negative("session.eval_seed", self.eval_seed)
        in_range("session.horizon", self.horizon, 1, 1000)
        stride_of("session.record_stride", self.record_stride, self.horizon, "session.horizon")
        stride_of("session.head_stride", self.head_stride, self.horizon, "session.horizon")
        one_of("session.backend", self.backend, ("inline", "thread", "process", "remote"))
        non_negative("session.max_episode_steps", self.max_episode_steps)
        in_range("session.reset_timeout_s", self.reset_timeout_s, 0.0, 86_400.0)


@dataclass
class RunConfig:
    """Everything ``tandem run`` needs. ``robot`` and ``policy`` are typed by their ``type`` key."""

    robot: Any = None
    policy: Any = None
    teleop: Any = None  # a teleop config (``teleop=none|keyboard|gamepad|so101_leader|scripted``); None = none
    session: SessionConfig = field(default_factory=SessionConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    safety: SafetyConfig = field(default_factory=SafetyConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    policy_link: PolicyLinkConfig = field(default_factory=PolicyLinkConfig)
    record: RecordConfig = field(default_factory=RecordConfig)
    link: LinkConfig = field(default_factory=LinkConfig)  # experience up / weights down to a learner
    head: HeadConfig = field(default_factory=HeadConfig)  # head=none|residual|edit on top of the base policy
    learn: LearnConfig = field(default_factory=LearnConfig)  # learn.spawn=true: a learner on localhost
    display: bool = False  # display=true: the rerun live view (settings in live_view)
    live_view: LiveViewConfig = field(default_factory=LiveViewConfig)
    status_line: StatusLineConfig = field(default_factory=StatusLineConfig)  # the terminal status line


def run_config_from_dict(values: dict) -> RunConfig:
    """Validate a plain dict (a composed Hydra config) into a RunConfig."""
    values = dict(values)
    groups = {g: build_group(g, values.pop(g, None)) for g in ("robot", "policy", "teleop")}
    cfg = build_dataclass(RunConfig, values, "run")
    for name, value in groups.items():
        setattr(cfg, name, value)
    if cfg.robot is None:
        raise ConfigError("robot", None, "choose one, e.g. robot=metaworld")
    if cfg.policy is None:
        raise ConfigError("policy", None, "choose one, e.g. policy=scripted")
    return cfg


def compose_run(overrides: list[str]) -> RunConfig:
    """``tandem run`` overrides -> validated RunConfig."""
    return run_config_from_dict(compose("run", overrides, {"run_schema": RunConfig}))
