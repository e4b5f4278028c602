"""Every part of a robot session, assembled in one function from a validated RunConfig.

:func:`build_parts` is the one place that knows how the parts fit: robot -> base policy and where its
inference runs -> safety filter -> chunk scheduler -> operator (teleop device or scripted) -> head (and
the edit head's critic) -> controller. :class:`~tandem.runtime.session.Session` runs episodes on what it
returns; benchmarks and tools that need one part use the ``make_*`` functions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tandem.core.errors import ConfigError
from tandem.core.registry import component_class
from tandem.core.validate import stride_of
from tandem.hardware.robot import Robot
from tandem.policies.base import BasePolicy, PolicyLoadError
from tandem.policies.heads.config import HeadConfig
from tandem.runtime.control.controller import Controller, is_sampling_head
from tandem.runtime.control.safety import SafetyFilter
from tandem.runtime.control.scheduler import ChunkScheduler
from tandem.runtime.inference.backends import InferenceBackend, InlineBackend, SampleRequests, ThreadBackend
from tandem.runtime.inference.client import make_link_backend
from tandem.runtime.links.weights import ModuleWeights, base_consumer
from tandem.teleop.takeover import TakeoverOperator, make_operator


def make_robot(config: Any) -> Robot:
    """The robot for a robot config (by its ``type``)."""
    return component_class("robot", config.type)(config)


def make_policy(config: Any, robot: Robot) -> BasePolicy:
    """The base policy for a policy config (built for ``robot``'s schemas), checked against its action size."""
    policy = component_class("policy", config.type)(config, robot)
    check_action_dim(policy, robot)
    return policy


def check_action_dim(policy: BasePolicy, robot: Robot) -> None:
    """Raise PolicyLoadError unless the policy's action size is the robot's."""
    action_dim = robot.action_feature.shape[0]
    if policy.action_dim != action_dim:
        raise PolicyLoadError(
            f"policy {policy.name!r} outputs {policy.action_dim}-D actions but robot {robot.name!r} "
            f"takes {action_dim}-D actions; pick a policy trained for this robot"
        )


def make_backend(kind: str, policy: BasePolicy) -> InferenceBackend:
    """Where an in-process policy runs: "inline" or "thread" ("process"/"remote": ``make_link_backend``)."""
    return {"inline": InlineBackend, "thread": ThreadBackend}[kind](policy)


@dataclass
class SessionParts:
    """What :func:`build_parts` assembles (the robot is not connected yet).

    Attributes:
        robot, policy, backend: the robot, the base policy (a proxy when it runs in a worker or server)
            and where its inference runs.
        safety: the filter between every action source and the robot.
        operator: who may take over (None: nobody).
        head: the head and the edit head's critic (``tandem.policies.heads.build.RobotParts``; None: no head).
        controller: base scheduler + head + operator, the loop's decision per tick.
        weights_consumers: weight kind ("head", "critic", "base") -> consumer the learner's weights feed.
    """

    robot: Robot
    policy: BasePolicy
    backend: InferenceBackend
    safety: SafetyFilter
    operator: TakeoverOperator | None
    head: Any
    controller: Controller
    weights_consumers: dict[str, Any] = field(default_factory=dict)


def build_parts(config: Any, weights_consumers: dict[str, Any] | None = None) -> SessionParts:
    """Assemble a session's parts from a validated RunConfig.

    Args:
        config: the RunConfig.
        weights_consumers: extra weight consumers by kind (the head's and critic's are added unless given).

    Raises:
        PolicyLoadError: the policy could not be built or does not fit the robot (nothing is left running).
    """
    check_evaluation(config)
    robot = make_robot(config.robot)
    if config.session.backend in ("process", "remote"):  # the policy is built in the worker / server
        backend, policy = make_link_backend(config.session.backend, config, robot)
    else:
        policy = make_policy(config.policy, robot)
        backend = make_backend(config.session.backend, policy)
    try:  # whatever fails from here leaves no worker, thread or socket behind
        if config.session.backend in ("process", "remote"):
            check_action_dim(policy, robot)
        low, high = robot.action_feature.bounds()
        safety = SafetyFilter(config.safety, low, high, robot.hold_action(None))
        head = build_head(getattr(config, "head", None) or HeadConfig(), robot, policy, config.session.horizon)
        sampling = head is not None and is_sampling_head(head.head)  # vgps: every request asks for N samples
        scheduler = ChunkScheduler(SampleRequests(backend, head.head.num_samples) if sampling else backend,
                                   config.scheduler, lookahead=config.session.horizon, synchronous=not robot.realtime)
        operator = make_operator(getattr(config, "teleop", None), robot, last_sent=lambda: safety.last)
        consumers = dict(weights_consumers or {})
        for kind, consumer in head_consumers(head).items():
            consumers.setdefault(kind, consumer)
        if "base" not in consumers and (base := base_consumer(policy, backend)) is not None:
            consumers["base"] = base  # new base weights, swapped in at episode boundaries
        horizon = config.session.horizon
        record_stride = stride_of("session.record_stride", config.session.record_stride, horizon)
        controller = Controller(
            scheduler, horizon, hold=safety.hold_action, head=head.head if head is not None else None, operator=operator,
            windows_every_tick=record_stride < horizon,  # overlapping records start between boundaries
            head_stride=config.session.head_stride,
        )
    except BaseException:
        backend.close()
        raise
    return SessionParts(robot, policy, backend, safety, operator, head, controller, consumers)


def check_evaluation(config: Any) -> None:
    """``session.eval_every`` needs a robot with scene splits, and training scenes that are not the
    evaluation's.

    Raises:
        ConfigError: naming the field to change.
    """
    if not config.session.eval_every:
        return
    scenes = getattr(config.robot, "scenes", None)
    if scenes is None:
        raise ConfigError("session.eval_every", config.session.eval_every,
                          f"robot={config.robot.type} has no scene splits; evaluations need one (robot=metaworld)")
    if scenes == "unseen":
        raise ConfigError("robot.scenes", scenes, "training episodes may not run on the unseen scenes that "
                          "session.eval_every evaluates on; use robot.scenes=train")


def build_head(config: HeadConfig, robot: Robot, policy: BasePolicy, horizon: int) -> Any:
    """The ``head`` block's head (and the edit head's critic); None for ``head=none``."""
    if config.type == "none":
        return None
    from tandem.policies.heads.build import (  # torch: only sessions with a head load it
        robot_dims,
        robot_parts,
    )

    return robot_parts(config, robot_dims(robot, policy, horizon))


def head_consumers(head: Any) -> dict[str, ModuleWeights]:
    """The weights-link consumers of a head's networks: ``head`` (not for vgps, which has no head network),
    and ``critic`` when the robot selects with one (installing the first critic weights turns the edit
    head's or vgps's selection on)."""
    if head is None:
        return {}
    consumers = {"head": ModuleWeights(head.head)} if callable(getattr(head.head, "schema", None)) else {}
    if head.critic is not None:
        consumers["critic"] = ModuleWeights(head.critic, on_load=head.critic_loaded)
    return consumers
