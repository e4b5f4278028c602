"""The top-level run config and its Hydra wiring.

Config groups live under ``configs/`` (robot/, policy/, ...). Each group option is a YAML file whose
``type`` selects a dataclass in ``tandem.registry``; every dataclass validates itself in
``__post_init__`` so a wrong value fails at start with the field name and the allowed values.
``compose_run(overrides)`` turns Hydra overrides into a validated :class:`RunConfig`.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tandem.errors import ConfigError
from tandem.runtime.learner_process import LearnConfig
from tandem.runtime.link_config import LinkConfig
from tandem.runtime.live_view import LiveViewConfig
from tandem.runtime.loop import LoopConfig
from tandem.runtime.policy_link import PolicyLinkConfig
from tandem.runtime.recorder import RecordConfig
from tandem.runtime.safety import SafetyConfig
from tandem.runtime.scheduler import SchedulerConfig
from tandem.runtime.status_line import StatusLineConfig
from tandem.validate import in_range, non_negative, one_of, stride_of
from tandem.value.learning import HeadConfig

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


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
    """

    episodes: int = 3
    seed: int = 0
    horizon: int = 10
    record_stride: int = 0
    head_stride: int = 0
    run_dir: str = ""
    backend: str = "inline"
    max_episode_steps: int = 0

    def __post_init__(self) -> None:
        in_range("session.episodes", self.episodes, 1, 1_000_000)
        in_range("session.horizon", self.horizon, 1, 1000)
        stride_of("session.record_stride", self.record_stride, self.horizon, "session.horizon")
        stride_of("session.head_stride", self.head_stride, self.horizon, "session.horizon")
        one_of("session.backend", self.backend, ("inline", "thread", "process", "remote"))
        non_negative("session.max_episode_steps", self.max_episode_steps)


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


def build_dataclass(cls: type, values: dict, prefix: str) -> Any:
    """Construct ``cls(**values)``, naming unknown keys (with a hint); nested dataclasses recurse."""
    fields = {f.name for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            hint = difflib.get_close_matches(key, fields, n=1)
            suffix = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise ConfigError(f"{prefix}.{key}", value, f"unknown key; known keys: {sorted(fields)}{suffix}")
        if dataclasses.is_dataclass(hints.get(key)) and isinstance(value, dict):
            value = build_dataclass(hints[key], value, f"{prefix}.{key}")
        kwargs[key] = value
    return cls(**kwargs)


def build_group(group: str, values: dict | None) -> Any:
    """The typed config of a group option from its plain dict (selected by ``type``)."""
    if values is None:
        return None
    from tandem.registry import config_class

    values = dict(values)
    cls = config_class(group, str(values.get("type")))
    return build_dataclass(cls, values, group)


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


def register_configs() -> None:
    """Register the structured schemas in Hydra's ConfigStore (called by the CLI, never on import)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="run_schema", node=RunConfig)


def compose(config_name: str, overrides: list[str]) -> dict:
    """Compose ``configs/<config_name>.yaml`` with Hydra overrides into a plain dict."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = hydra_compose(config_name=config_name, overrides=list(overrides))
    except Exception as exc:  # hydra's errors name the bad override; keep them, add the fix
        raise ConfigError("overrides", list(overrides), f"{exc}") from exc
    finally:
        GlobalHydra.instance().clear()
    return OmegaConf.to_container(cfg, resolve=True)


def compose_run(overrides: list[str]) -> RunConfig:
    """``tandem run`` overrides -> validated RunConfig."""
    return run_config_from_dict(compose("run", overrides))
