"""The learner's critic / residual / edit / vgps objective, built from the same settings as the robot's head.

The learner's ``objective`` block (type critic|residual|edit|vgps) carries the run's ``head`` block settings;
the networks are built at the first batch (sizes from the data) with the same
``tandem.policies.heads.build`` functions the robot uses, so their weights schemas match.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from tandem.core.errors import ConfigError
from tandem.core.validate import one_of
from tandem.policies.heads.build import critic_config, head_config
from tandem.policies.heads.config import Dims, build_settings
from tandem.policies.heads.critic import ChunkedCritic, CriticConfig
from tandem.policies.heads.networks import EditHead, EditHeadConfig, ResidualHead, ResidualHeadConfig
from tandem.value.objectives.critic import CriticObjective, CriticObjectiveConfig
from tandem.value.objectives.dqc import DQCCriticObjective, ExpectileCriticObjective
from tandem.value.objectives.edit import EditHeadObjective, EditObjectiveConfig
from tandem.value.objectives.residual import ResidualHeadObjective, ResidualObjectiveConfig

# ----------------------------------------------------------------------------------------------------

LEARNING_OBJECTIVES = ("critic", "residual", "edit", "vgps")
CRITIC_ONLY = ("critic", "vgps")  # no head network


def make_learning_objective(kind: str, critic: CriticConfig, head: ResidualHeadConfig | EditHeadConfig | None = None,
                            critic_objective: CriticObjectiveConfig | None = None,
                            head_objective: ResidualObjectiveConfig | EditObjectiveConfig | None = None,
                            device: str = "cpu", distributed: bool = False
                            ) -> CriticObjective | ResidualHeadObjective | EditHeadObjective:
    """Build one of LEARNING_OBJECTIVES ("critic", "residual", "edit", "vgps") on ``device``.

    Args:
        kind: which objective; "vgps" is the expectile critic of ``head=vgps`` (``dqc.ExpectileCriticObjective``).
        critic: the critic's config (its ``device`` is replaced by ``device``); with ``partial_horizon`` > 0
            the critic objective is DQC's (``tandem.value.objectives.dqc``).
        head: the head's config (required for "residual" and "edit"; dims must match the critic's).
        critic_objective, head_objective: objective settings (defaults when None).
        device: torch device.
        distributed: average gradients over torch.distributed ranks.
    """
    one_of("kind", kind, LEARNING_OBJECTIVES)
    net = ChunkedCritic(replace(critic, device=device))
    if kind == "vgps":
        return ExpectileCriticObjective(net, critic_objective, distributed=distributed)
    co = (DQCCriticObjective(net, critic_objective, distributed=distributed) if critic.partial_horizon
          else CriticObjective(net, critic_objective, distributed=distributed))
    if kind == "critic":
        return co
    if head is None:
        raise ConfigError("head", None, f"a head config is required for the {kind!r} objective")
    for dim in ("state_dim", "feature_dim", "horizon", "action_dim"):
        if getattr(head, dim) != getattr(critic, dim):
            raise ConfigError(f"head.{dim}", getattr(head, dim), f"must equal critic.{dim}={getattr(critic, dim)}")
    if kind == "residual":
        if not isinstance(head, ResidualHeadConfig):
            raise ConfigError("head", type(head).__name__, "ResidualHeadConfig for the 'residual' objective")
        return ResidualHeadObjective(ResidualHead(head), co, head_objective)  # type: ignore[arg-type]
    if not isinstance(head, EditHeadConfig):
        raise ConfigError("head", type(head).__name__, "EditHeadConfig for the 'edit' objective")
    return EditHeadObjective(EditHead(head), co, head_objective)  # type: ignore[arg-type]


CHECK_DIMS = Dims(1, 1, 1, 1)
"""Sizes the settings are checked at when the learner starts (the real ones come with the first batch)."""


@dataclass
class ObjectiveSpec:
    """Settings of a learning objective (the learner's ``objective`` block when type is critic/residual/edit).

    Attributes:
        type: "critic", "residual" or "edit".
        critic: CriticConfig settings; head: head config settings (as in the run's ``head`` block).
        critic_objective: CriticObjectiveConfig settings (reward_mode, reward_scale, rlif_penalty, warmup_steps).
        head_objective: ResidualObjectiveConfig / EditObjectiveConfig settings.
    """

    type: str = "edit"
    critic: dict = field(default_factory=dict)
    head: dict = field(default_factory=dict)
    critic_objective: dict = field(default_factory=dict)
    head_objective: dict = field(default_factory=dict)


class LearningObjective:
    """The learner's critic / residual / edit objective, built at the first batch (sizes from the data).

    Follows ``tandem.value.objectives.base.Objective``; ``state_dict`` records the type and sizes so a resumed
    learner (or a robot's ``head.init``) rebuilds the same networks.
    """

    def __init__(self, spec: ObjectiveSpec, device: str = "cpu", distributed: bool = False) -> None:
        one_of("objective.type", spec.type, LEARNING_OBJECTIVES)
        self.spec = spec
        self.name = spec.type
        self.device = device
        self.distributed = distributed
        self.dims: Dims | None = None
        self.inner: Any = None
        self.settings(CHECK_DIMS)  # every setting typed and validated now, not at the first batch

    def settings(self, dims: Dims) -> tuple[Any, Any, Any, Any]:
        """The typed (critic, head, critic objective, head objective) configs at these sizes (head ones
        None for the critic and vgps objectives).

        Raises:
            ConfigError: an unknown key (named, with a hint) or a bad value, by its ``objective.*`` path.
        """
        spec = self.spec
        critic = critic_config(spec.critic, dims, "objective.critic")
        critic_only = spec.type in CRITIC_ONLY
        if spec.type == "vgps":
            for name in ("head", "head_objective"):
                if getattr(spec, name):
                    raise ConfigError(f"objective.{name}", getattr(spec, name), "empty for vgps (no head network)")
        head = None if critic_only else head_config(spec.type, spec.head, dims, "objective.head")
        head_cls = ResidualObjectiveConfig if spec.type == "residual" else EditObjectiveConfig
        head_obj = None if critic_only else build_settings(head_cls, spec.head_objective, "objective.head_objective")
        co = build_settings(CriticObjectiveConfig, spec.critic_objective, "objective.critic_objective")
        return critic, head, co, head_obj

    def build(self, dims: Dims) -> None:
        """Create the networks and optimisers for these sizes."""
        critic, head, co, head_obj = self.settings(dims)
        self.inner = make_learning_objective(self.spec.type, critic, head, co, head_obj, self.device, self.distributed)
        self.dims = dims

    def update(self, batch: dict[str, np.ndarray]) -> dict[str, float]:
        """One step of the objective (builds it at the first batch)."""
        if self.inner is None:
            s, f = batch["state"].shape[1], batch["features"].shape[1]
            _, h, a = batch["base"].shape
            self.build(Dims(int(s), int(f), int(h), int(a)))
        return self.inner.update(batch)

    def weights(self) -> dict[str, dict[str, np.ndarray]]:
        """What robots run ({} before the first batch)."""
        return {} if self.inner is None else self.inner.weights()

    def state_dict(self) -> dict[str, Any]:
        """Type, sizes and the inner objective's state ({} before the first batch)."""
        if self.inner is None:
            return {}
        return {"type": self.spec.type, "dims": list(self.dims), "state": self.inner.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Rebuild at the saved sizes and restore."""
        if not state:
            return
        if state.get("type") != self.spec.type:
            raise ConfigError("objective.type", self.spec.type, f"the checkpoint holds a {state.get('type')!r} objective")
        self.build(Dims(*(int(d) for d in state["dims"])))
        self.inner.load_state_dict(state["state"])
