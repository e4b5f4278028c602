"""One description of the head and critic, built identically on the robot and on the learner.

The run config's ``head`` block (configs/head/*.yaml, :class:`~tandem.policies.heads.config.HeadConfig`)
and the learner's ``objective`` block carry the same ``type`` / ``critic`` / ``head`` settings; the sizes
come from the data: S (state), F (base-policy features), H (``session.horizon``) and A (actions). The
robot learns them from its robot and policy, the learner from the first batch. Both call
:func:`critic_config` and :func:`head_config`; weights only cross the link when both sides built the same
architecture (the weights link compares schema hashes and refuses a mismatch with the reason).

Robot side (:func:`robot_parts`): the head the controller applies at chunk boundaries and the critic the
edit head scores candidates with (or, for ``head=vgps``, the critic that picks one of N base samples) (``tandem.runtime.build`` registers both as weights-link consumers).
The learner side is ``tandem.value.objectives.learning``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tandem.core.errors import ConfigError
from tandem.hardware.features import STATE_KEY
from tandem.policies.heads.config import Dims, HeadConfig, build_settings
from tandem.policies.heads.critic import ChunkedCritic, CriticConfig
from tandem.policies.heads.networks import EditHead, EditHeadConfig, ResidualHead, ResidualHeadConfig
from tandem.policies.heads.select import make_selector
from tandem.policies.heads.vgps import VGPSHead, VGPSHeadConfig
from tandem.protocol.checkpoint import CheckpointError, load_checkpoint, load_checkpoint_file

log = logging.getLogger(__name__)


def critic_config(values: dict, dims: Dims, where: str = "critic") -> CriticConfig:
    """CriticConfig from settings plus sizes."""
    return build_settings(CriticConfig, values, where, dims)


def acting_critic_config(values: dict, dims: Dims, where: str = "critic") -> CriticConfig:
    """The config of the critic the robot acts with and the learner publishes as ``critic``: the critic
    itself, or with ``partial_horizon`` h > 0 (DQC) the partial critic over the first h ticks.

    Raises:
        ConfigError: partial_horizon not below the chunk length H.
    """
    config = critic_config(values, dims, where)
    h = config.partial_horizon
    if not h:
        return config
    if h >= config.horizon:
        raise ConfigError(f"{where}.partial_horizon", h, f"0 (off) or 1..{config.horizon - 1} (below session.horizon)")
    return replace(config, horizon=h, partial_horizon=0)


def head_config(kind: str, values: dict, dims: Dims, where: str = "head") -> ResidualHeadConfig | EditHeadConfig:
    """ResidualHeadConfig or EditHeadConfig from settings plus sizes."""
    values = dict(values)
    if "hidden" in values:
        values["hidden"] = tuple(int(h) for h in values["hidden"])
    return build_settings(ResidualHeadConfig if kind == "residual" else EditHeadConfig, values, where, dims)


@dataclass
class RobotParts:
    """What ``robot_parts`` builds: the controller's head and the critic the edit head (or vgps) selects with."""

    head: Any = None
    critic: Any = None

    def value(self) -> float | None:
        """The critic's score of the chunk the edit head chose last (None before any)."""
        return getattr(self.head, "last_score", None)

    def critic_loaded(self) -> None:
        """Call after critic weights were installed: an untrained critic never picks, so the edit head (and
        vgps) runs the base chunk until the first critic weights arrive, then selects with the critic."""
        if self.critic is not None and self.head.selector is None:
            self.head.set_selector(make_selector(self.critic))


def robot_dims(robot: Any, policy: Any, horizon: int) -> Dims:
    """Sizes from the robot's state feature, the policy's features and the session's H."""
    feats = robot.observation_features
    if STATE_KEY not in feats:
        raise ConfigError("head.type", "on", f"a head needs the robot's {STATE_KEY!r} observation; this robot has {sorted(feats)}")
    state_dim = int(np.prod(feats[STATE_KEY].shape))
    return Dims(state_dim, int(getattr(policy, "feature_dim", 0)), int(horizon), int(robot.action_feature.shape[0]))


def robot_parts(config: HeadConfig, dims: Dims) -> RobotParts:
    """Build the robot's head (and critic) and load ``config.init`` if set."""
    torch.set_num_threads(1)  # nothing here may compete with the control loop for cores
    if config.type == "none":
        return RobotParts()
    if config.type == "vgps":
        critic = ChunkedCritic(acting_critic_config(config.critic, dims))
        parts = RobotParts(head=VGPSHead(VGPSHeadConfig(*dims, num_samples=config.num_samples), critic), critic=critic)
        if config.init:
            load_init(config.init, config, dims, parts)
            parts.critic_loaded()
        return parts
    hcfg = head_config(config.type, config.head, dims)
    head = ResidualHead(hcfg) if config.type == "residual" else EditHead(hcfg)
    parts = RobotParts(head=head)
    if config.type == "edit" and config.select == "critic":
        parts.critic = ChunkedCritic(acting_critic_config(config.critic, dims))
    elif config.type == "edit":
        head.use_mean = True
    if config.init:
        load_init(config.init, config, dims, parts)
        parts.critic_loaded()
    return parts


def load_init(path: str, config: HeadConfig, dims: Dims, parts: RobotParts) -> None:
    """Load head (and critic) weights from a learner store directory or a checkpoint file.

    A learner checkpoint holds ``objective = {"type", "dims", "state"}``; for a head objective ``state``
    holds the head module's state under ``"head"`` and the critic objective's under ``"critic_objective"``
    (the critic module's state under its ``"critic"``), as ``tandem.value.objectives`` writes them.

    Raises:
        ConfigError: nothing loadable there, or the checkpoint trained another head or other sizes.
    """
    p = Path(path).expanduser()
    if p.is_dir():
        state = load_checkpoint(p / "checkpoints" if (p / "checkpoints").is_dir() else p)
    elif p.is_file():
        try:
            state = load_checkpoint_file(p)
        except CheckpointError as exc:
            raise ConfigError("head.init", path, f"a verified checkpoint: {exc}") from exc
    else:
        state = None
    if not state or "objective" not in state:
        raise ConfigError("head.init", path, "a learner store directory (with checkpoints/) or a checkpoint file")
    obj = state["objective"]
    if obj.get("type") != config.type or [int(d) for d in obj.get("dims", [])] != list(dims):
        raise ConfigError("head.init", path, f"it trained head {obj.get('type')!r} with sizes {obj.get('dims')}; "
                          f"this session needs {config.type!r} with sizes {list(dims)} (S, F, H, A)")
    step = int(state.get("step", 0))
    if config.type == "vgps":  # a critic objective's state: the critic module's state under "critic"
        _install(parts.critic, obj["state"]["critic"], step)
        log.info("head: loaded vgps critic weights of update %d from %s", step, path)
        return
    _install(parts.head, obj["state"]["head"], step)
    if parts.critic is not None:
        _install(parts.critic, obj["state"]["critic_objective"]["critic"], step)
    log.info("head: loaded %s weights of update %d from %s", config.type, step, path)


def _install(module: Any, state_dict: dict[str, Any], version: int) -> None:
    """Restore a module from its training state, then install its published weights as ``version``
    (the path weights from the link take: the numpy copy refreshed, a critic's target synced)."""
    module.load_state_dict(state_dict)
    module.load_weights(module.weights(), version)
