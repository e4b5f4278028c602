"""What the learner trains: the ``Objective`` protocol and a small real objective.

An objective owns its networks and optimisers. The learner hands it batches (dicts of numpy arrays
from :meth:`ReplayStore.sample`: ``state`` [B, S], ``features`` [B, F], ``base``/``head``/``executed``
[B, H, A], ``reward``/``valid``/``intervention``/``takeover_start`` [B, H], ``done``/``truncated`` [B],
``buffer`` [B]), checkpoints it through ``state_dict``/``load_state_dict`` and publishes what
``weights()`` returns. The critic and head objectives of later issues plug in the same way.

Under DistributedDataParallel every rank builds the objective with ``distributed=True`` and gets
its shard of each batch; the objective wraps its trained modules in DDP so gradients are averaged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from tandem.core.validate import in_range, one_of, positive
from tandem.policies.heads.config import build_settings
from tandem.protocol.messages import WEIGHT_KINDS
from tandem.value.objectives.chunk_reward import ChunkRewardObjective
from tandem.value.objectives.learning import LearningObjective, ObjectiveSpec


class Objective(Protocol):
    """A learner objective (critic, head, base update, or the test objective below)."""

    name: str

    def update(self, batch: dict[str, np.ndarray]) -> dict[str, float]:
        """One gradient step on ``batch``; returns scalar metrics (e.g. {"loss": 0.1})."""

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: networks, optimiser state, counters (torch.save-able)."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`."""

    def weights(self) -> dict[str, dict[str, np.ndarray]]:
        """Weight kind ("head", "critic", "base") -> named float arrays to publish to robots."""


@dataclass
class ObjectiveConfig:
    """Which objective the learner trains.

    Attributes:
        type: "critic" (chunked critic only), "residual" (critic + residual head), "edit" (critic +
            EXPO edit head; publishes both), "vgps" (the expectile critic of ``head=vgps``, which picks among
            base samples; publishes ``critic``), "base_awr" (critic + an advantage-weighted update of the tiny
            VLA base; publishes ``base``: ``base_awr.py``) or "chunk_reward" (a small test objective).
        critic, head: network settings, the same as the robot's ``head.critic`` / ``head.head`` (sizes
            come from the data); see tandem.policies.heads.build.
        critic_objective: CriticObjectiveConfig settings (reward_mode, reward_scale, warmup_steps, rlif_penalty).
        head_objective: ResidualObjectiveConfig / EditObjectiveConfig settings (lr, AWR term, ...).
        base: base_awr only: BaseAWRConfig settings (checkpoint, weighting aloe|dagger|awr, beta, w_max, ...).
        hidden, layers, lr, publish_kind: chunk_reward only: MLP width, depth, Adam lr, weight kind.
    """

    type: str = "chunk_reward"
    critic: dict = field(default_factory=dict)
    head: dict = field(default_factory=dict)
    critic_objective: dict = field(default_factory=dict)
    head_objective: dict = field(default_factory=dict)
    base: dict = field(default_factory=dict)
    hidden: int = 64
    layers: int = 2
    lr: float = 1e-3
    publish_kind: str = "critic"

    def __post_init__(self) -> None:
        one_of("objective.type", self.type, OBJECTIVES)
        in_range("objective.hidden", self.hidden, 1, 65536)
        in_range("objective.layers", self.layers, 1, 64)
        positive("objective.lr", self.lr)
        one_of("objective.publish_kind", self.publish_kind, WEIGHT_KINDS)


OBJECTIVES = ("chunk_reward", "critic", "residual", "edit", "vgps", "base_awr")


def make_objective(config: ObjectiveConfig, device: str = "cpu", distributed: bool = False) -> Objective:
    """The objective named by ``config.type``."""
    if config.type == "chunk_reward":
        return ChunkRewardObjective(config, device, distributed)
    if config.type == "base_awr":  # torch + transformers: built only when asked for
        from tandem.value.objectives.base_awr import BaseAWRConfig, BaseAWRObjective

        base = build_settings(BaseAWRConfig, dict(config.base), "objective.base")
        return BaseAWRObjective(base, config.critic, config.critic_objective, device, distributed)
    spec = ObjectiveSpec(type=config.type, critic=dict(config.critic), head=dict(config.head),
                         critic_objective=dict(config.critic_objective), head_objective=dict(config.head_objective))
    return LearningObjective(spec, device, distributed)
