"""Name -> (config dataclass, component) tables for every config group, imported lazily.

Each entry is ``"module:ConfigClass"`` and ``"module:ComponentClass"``. Adding a robot, policy,
head or teleop device means writing the two classes and one line here (docs/extending.md).
"""

from __future__ import annotations

import importlib
from typing import Any

from tandem.core.validate import one_of

ROBOTS: dict[str, tuple[str, str]] = {
    "metaworld": ("tandem.hardware.metaworld_robot:MetaWorldRobotConfig", "tandem.hardware.metaworld_robot:MetaWorldRobot"),
    "gym": ("tandem.hardware.gym_robot:GymRobotConfig", "tandem.hardware.gym_robot:GymRobot"),
    "lerobot": ("tandem.hardware.lerobot_robot:LeRobotRobotConfig", "tandem.hardware.lerobot_robot:LeRobotRobot"),
}

POLICIES: dict[str, tuple[str, str]] = {
    "scripted": ("tandem.policies.scripted:ScriptedPolicyConfig", "tandem.policies.scripted:ScriptedPolicy"),
    "tiny_vla": ("tandem.policies.tiny_vla.policy:TinyVLAPolicyConfig", "tandem.policies.tiny_vla.policy:TinyVLAPolicy"),
    "lerobot": ("tandem.policies.lerobot_adapter:LeRobotPolicyConfig", "tandem.policies.lerobot_adapter:LeRobotPolicy"),
}

TELEOPS: dict[str, tuple[str, str]] = {
    "none": ("tandem.teleop.teleoperator:NoTeleopConfig", "tandem.teleop.teleoperator:NullTeleoperator"),
    "keyboard": ("tandem.teleop.keyboard:KeyboardConfig", "tandem.teleop.keyboard:KeyboardTeleop"),
    "gamepad": ("tandem.teleop.gamepad:GamepadConfig", "tandem.teleop.gamepad:GamepadTeleop"),
    "leader": ("tandem.teleop.leader_arm:LeaderArmConfig", "tandem.teleop.leader_arm:LeaderArmTeleop"),
    "scripted": ("tandem.teleop.scripted_operator:ScriptedOperatorConfig", "tandem.teleop.scripted_operator:ScriptedOperator"),
    "human_like": ("tandem.teleop.human_like:HumanLikeOperatorConfig", "tandem.teleop.human_like:HumanLikeOperator"),
}

GROUPS: dict[str, dict[str, tuple[str, str]]] = {"robot": ROBOTS, "policy": POLICIES, "teleop": TELEOPS}


def load(path: str) -> Any:
    """Import ``"module:attr"``."""
    module, attr = path.split(":")
    return getattr(importlib.import_module(module), attr)


def config_class(group: str, type_name: str) -> type:
    """The config dataclass registered for ``group`` / ``type_name``."""
    table = GROUPS[group]
    one_of(f"{group}.type", type_name, table)
    return load(table[type_name][0])


def component_class(group: str, type_name: str) -> type:
    """The component class registered for ``group`` / ``type_name``."""
    table = GROUPS[group]
    one_of(f"{group}.type", type_name, table)
    return load(table[type_name][1])
