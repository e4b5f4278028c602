"""One description of the head and critic, built identically on the robot and on the learner.

The run config's ``head`` block (configs/head/*.yaml) and the learner's ``objective`` block carry the
same ``type`` / ``critic`` / ``head`` settings; the sizes come from the data: S (state), F (base-policy
features), H (``session.horizon``) and A (actions). The robot learns them from its robot and policy,
the learner from the first batch. Weights only cross the link when both sides built the same
architecture (the weights link compares schema hashes and refuses a mismatch with the reason).

Robot side (:func:`robot_parts`): the head the controller applies at chunk boundaries, the critic the
edit head scores candidates with, and their weights-link consumers. Learner side
(:class:`LearningObjective`): the critic, residual or edit objective, built at the first batch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from tandem.errors import ConfigError
from tandem.validate import one_of

log = logging.getLogger(__name__)

HEAD_TYPES = ("none", "residual", "edit")
SELECTIONS = ("critic", "mean")


class Dims(NamedTuple):
    """S state size, F feature size, H chunk ticks, A action size."""

    state_dim: int
    feature_dim: int
    horizon: int
    action_dim: int


def _build(cls: type, values: dict, where: str, dims: Dims | None = None) -> Any:
    """``cls`` from settings (unknown keys named with a hint, by tandem.config.build_dataclass) plus sizes.

    With ``dims`` the sizes (and the device) come from the data, so settings may not name them.
    """
    from tandem.config import build_dataclass

    values = dict(values)
    if dims is not None:
        for key in sorted(set(values) & {*Dims._fields, "device"}):
            raise ConfigError(f"{where}.{key}", values[key], "is set from the data (robot, policy, session.horizon)")
        values.update(dims._asdict())
    return build_dataclass(cls, values, where)


def critic_config(values: dict, dims: Dims, where: str = "critic") -> Any:
    """CriticConfig from settings plus sizes."""
    from tandem.value.critic import CriticConfig

    return _build(CriticConfig, values, where, dims)


def head_config(kind: str, values: dict, dims: Dims, where: str = "head") -> Any:
    """ResidualHeadConfig or EditHeadConfig from settings plus sizes."""
    from tandem.policies.heads import EditHeadConfig, ResidualHeadConfig

    values = dict(values)
    if "hidden" in values:
        values["hidden"] = tuple(int(h) for h in values["hidden"])
    return _build(ResidualHeadConfig if kind == "residual" else EditHeadConfig, values, where, dims)


# ----------------------------------------------------------------------------------------------------
# robot side
# ----------------------------------------------------------------------------------------------------


@dataclass
class HeadConfig:
    """The head on top of the base policy (``head=none|residual|edit``; configs/head/).

    Attributes:
        type: "none", "residual" (ResFiT) or "edit" (EXPO: the critic picks among edited chunks).
        critic: CriticConfig settings (hidden, ensemble_size, aggregation, ...); the robot needs the
            critic for the edit head only. Must equal the learner's ``objective.critic``.
        head: ResidualHeadConfig / EditHeadConfig settings (hidden, beta or alpha, num_candidates, ...).
            Must equal the learner's ``objective.head``.
        select: edit head only: "critic" scores {base, mean edit, N sampled edits} with the critic and
            runs the best (EXPO); "mean" runs base + the mean edit (no critic on the robot).
        init: start from trained weights: a learner store directory (its newest checkpoint) or a
            checkpoint file. Empty: the zero-initialised head (runs the base policy unchanged).
        critic_objective, head_objective: how the learner trains them (the learner objective's blocks of
            the same names; used by ``learn.spawn=true``).
    """

    type: str = "none"
    critic: dict = field(default_factory=dict)
    head: dict = field(default_factory=dict)
    select: str = "critic"
    init: str = ""
    critic_objective: dict = field(default_factory=dict)
    head_objective: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        one_of("head.type", self.type, HEAD_TYPES)
        one_of("head.select", self.select, SELECTIONS)
        for name in ("critic", "head", "critic_objective", "head_objective"):
            setattr(self, name, dict(getattr(self, name) or {}))
        if "acting" in self.head_objective:
            raise ConfigError("head.head_objective.acting", self.head_objective["acting"],
                              "is set from head.select (critic -> best, mean -> mean); set head.select instead")

    def objective_values(self) -> dict:
        """The learner ``objective`` block that trains this head."""
        head_objective = dict(self.head_objective)
        if self.type == "edit":  # the TD target and V(s) follow how this robot acts
            head_objective["acting"] = "mean" if self.select == "mean" else "best"
        return {"type": "critic" if self.type == "none" else self.type, "critic": dict(self.critic),
                "head": dict(self.head), "critic_objective": dict(self.critic_objective),
                "head_objective": head_objective}


class ModuleWeights:
    """WeightsConsumer for a module with ``schema()`` / ``load_weights(arrays, version)`` (heads, critic).

    ``prepare_weights`` validates and copies off the control thread; ``load_weights`` copies the arrays
    into the module at a chunk boundary (a few hundred microseconds for the default sizes), then calls
    ``on_load`` if given.
    """

    def __init__(self, module: Any, on_load: Callable[[], None] | None = None) -> None:
        self.module = module
        self.on_load = on_load

    @property
    def version(self) -> int:
        """The module's weights version (0: never loaded)."""
        return int(getattr(self.module, "version", 0))

    def weights_schema(self) -> dict[str, tuple[str, tuple[int, ...]]]:
        """name -> (dtype, shape) of the module's weights."""
        return {k: (d, tuple(s)) for k, (d, s) in self.module.schema()["params"].items()}

    def prepare_weights(self, arrays: dict[str, np.ndarray], version: int) -> dict[str, np.ndarray]:
        """Validated float32 copies."""
        from tandem.policies.heads import check_weights

        check_weights(self.module.schema()["params"], arrays)
        return {k: np.array(v, np.float32) for k, v in arrays.items()}

    def load_weights(self, prepared: dict[str, np.ndarray], version: int) -> None:
        """Install into the module."""
        self.module.load_weights(prepared, version)
        if self.on_load is not None:
            self.on_load()


@dataclass
class RobotParts:
    """What ``robot_parts`` builds: the controller's head, the critic (edit head) and link consumers."""

    head: Any = None
    critic: Any = None
    consumers: dict[str, Any] = field(default_factory=dict)

    def value(self) -> float | None:
        """The critic's score of the chunk the edit head chose last (None before any)."""
        return getattr(self.head, "last_score", None)


def robot_dims(robot: Any, policy: Any, horizon: int) -> Dims:
    """Sizes from the robot's state feature, the policy's features and the session's H."""
    from tandem.hardware.features import STATE_KEY

    feats = robot.observation_features
    if STATE_KEY not in feats:
        raise ConfigError("head.type", "on", f"a head needs the robot's {STATE_KEY!r} observation; this robot has {sorted(feats)}")
    state_dim = int(np.prod(feats[STATE_KEY].shape))
    return Dims(state_dim, int(getattr(policy, "feature_dim", 0)), int(horizon), int(robot.action_feature.shape[0]))


def robot_parts(config: HeadConfig, dims: Dims) -> RobotParts:
    """Build the robot's head (and critic), load ``config.init`` if set, and their weights consumers."""
    import torch

    torch.set_num_threads(1)  # nothing here may compete with the control loop for cores
    from tandem.policies.heads import EditHead, ResidualHead
    from tandem.value.critic import ChunkedCritic
    from tandem.value.targets import make_selector

    if config.type == "none":
        return RobotParts()
    hcfg = head_config(config.type, config.head, dims)
    head = ResidualHead(hcfg) if config.type == "residual" else EditHead(hcfg)
    parts = RobotParts(head=head, consumers={"head": ModuleWeights(head)})
    if config.type == "edit" and config.select == "critic":
        critic = parts.critic = ChunkedCritic(critic_config(config.critic, dims))

        def select_once_trained() -> None:  # an untrained critic never picks: the base chunk runs until then
            if head.selector is None:
                head.set_selector(make_selector(critic))

        parts.consumers["critic"] = ModuleWeights(critic, on_load=select_once_trained)
    elif config.type == "edit":
        head.use_mean = True
    if config.init:
        load_init(config.init, config, dims, parts)
        if parts.critic is not None:
            parts.consumers["critic"].on_load()
    return parts


def load_init(path: str, config: HeadConfig, dims: Dims, parts: RobotParts) -> None:
    """Load head (and critic) weights from a learner store directory or a checkpoint file.

    Raises:
        ConfigError: nothing loadable there, or the checkpoint trained another head or other sizes.
    """
    import torch

    from tandem.value.checkpoint import load_checkpoint

    p = Path(path).expanduser()
    if p.is_dir():
        state = load_checkpoint(p / "checkpoints" if (p / "checkpoints").is_dir() else p)
    elif p.is_file():
        state = torch.load(p, map_location="cpu", weights_only=True)
    else:
        state = None
    if not state or "objective" not in state:
        raise ConfigError("head.init", path, "a learner store directory (with checkpoints/) or a checkpoint file")
    obj = state["objective"]
    if obj.get("type") != config.type or [int(d) for d in obj.get("dims", [])] != list(dims):
        raise ConfigError("head.init", path, f"it trained head {obj.get('type')!r} with sizes {obj.get('dims')}; "
                          f"this session needs {config.type!r} with sizes {list(dims)} (S, F, H, A)")
    learner = LearningObjective(ObjectiveSpec(type=config.type, critic=config.critic, head=config.head))
    learner.load_state_dict(obj)
    weights = learner.weights()
    step = int(state.get("step", 0))
    parts.head.load_weights(weights["head"], step)
    if parts.critic is not None:
        parts.critic.load_weights(weights["critic"], step)
    log.info("head: loaded %s weights of update %d from %s", config.type, step, path)


# ----------------------------------------------------------------------------------------------------
# learner side
# ----------------------------------------------------------------------------------------------------


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

    Follows ``tandem.value.objective.Objective``; ``state_dict`` records the type and sizes so a resumed
    learner (or a robot's ``head.init``) rebuilds the same networks.
    """

    def __init__(self, spec: ObjectiveSpec, device: str = "cpu", distributed: bool = False) -> None:
        from tandem.value.objectives import LEARNING_OBJECTIVES

        one_of("objective.type", spec.type, LEARNING_OBJECTIVES)
        self.spec = spec
        self.name = spec.type
        self.device = device
        self.distributed = distributed
        self.dims: Dims | None = None
        self.inner: Any = None

    def build(self, dims: Dims) -> None:
        """Create the networks and optimisers for these sizes."""
        from tandem.value.objectives import (
            CriticObjectiveConfig,
            EditObjectiveConfig,
            ResidualObjectiveConfig,
            make_learning_objective,
        )

        spec = self.spec
        head = None if spec.type == "critic" else head_config(spec.type, spec.head, dims, "objective.head")
        head_cls = ResidualObjectiveConfig if spec.type == "residual" else EditObjectiveConfig
        head_obj = None if spec.type == "critic" else _build(head_cls, spec.head_objective, "objective.head_objective")
        co = _build(CriticObjectiveConfig, spec.critic_objective, "objective.critic_objective")
        self.inner = make_learning_objective(spec.type, critic_config(spec.critic, dims, "objective.critic"), head, co,
                                             head_obj, self.device, self.distributed)
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
