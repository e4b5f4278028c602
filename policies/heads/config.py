"""The head block of a run (``head=none|residual|edit|vgps``) and the sizes every head and critic is built at.

Plain settings, no torch: the run config imports this at start. The networks are built from these
settings by :mod:`tandem.policies.heads.build`, the same way on the robot and on the learner.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

from tandem.core.config import build_dataclass
from tandem.core.errors import ConfigError
from tandem.core.validate import non_negative, one_of, positive
from tandem.policies.base import MAX_SAMPLES

HEAD_TYPES = ("none", "residual", "edit", "vgps")
SELECTIONS = ("critic", "mean")


class Dims(NamedTuple):
    """S state size, F feature size, H chunk ticks, A action size."""

    state_dim: int
    feature_dim: int
    horizon: int
    action_dim: int


def build_settings(cls: type, values: dict, where: str, dims: Dims | None = None) -> Any:
    """``cls`` from settings (unknown keys named with a hint, by ``build_dataclass``) plus sizes.

    With ``dims`` the sizes (and the device) come from the data, so settings may not name them.
    """
    values = dict(values)
    if dims is not None:
        for key in sorted(set(values) & {*Dims._fields, "device"}):
            raise ConfigError(f"{where}.{key}", values[key], "is set from the data (robot, policy, session.horizon)")
        values.update(dims._asdict())
    return build_dataclass(cls, values, where)


def check_dims(cfg: Any) -> None:
    """Validate a head or critic setting's sizes: ``state_dim``, ``horizon``, ``action_dim`` positive,
    ``feature_dim`` >= 0 (a ConfigError naming the field)."""
    positive("state_dim", cfg.state_dim)
    non_negative("feature_dim", cfg.feature_dim)
    positive("horizon", cfg.horizon)
    positive("action_dim", cfg.action_dim)


@dataclass
class HeadConfig:
    """The head on top of the base policy (``head=none|residual|edit|vgps``; configs/head/).

    Attributes:
        type: "none", "residual" (ResFiT), "edit" (EXPO: the critic picks among edited chunks) or "vgps"
            (V-GPS: the critic picks among ``num_samples`` base samples; no head network).
        critic: CriticConfig settings (hidden, ensemble_size, aggregation, ...); the robot needs the
            critic for the edit head with ``select=critic`` and for vgps. Must equal the learner's
            ``objective.critic``.
        head: ResidualHeadConfig / EditHeadConfig settings (hidden, beta or alpha, num_candidates, ...).
            Must equal the learner's ``objective.head``. Empty for vgps.
        select: edit head only: "critic" scores {base, mean edit, N sampled edits} with the critic and
            runs the best (EXPO); "mean" runs base + the mean edit (no critic on the robot). vgps: "critic".
        num_samples: vgps only: N base samples per chunk boundary, drawn in one batched inference call
            (1: the base runs unchanged). 1..256.
        init: start from trained weights: a learner store directory (its newest checkpoint) or a
            checkpoint file. Empty: the zero-initialised head (runs the base policy unchanged).
        critic_objective, head_objective: how the learner trains them (the learner objective's blocks of
            the same names; used by ``learn.spawn=true``).
    """

    type: str = "none"
    critic: dict = field(default_factory=dict)
    head: dict = field(default_factory=dict)
    select: str = "critic"
    num_samples: int = 8
    init: str = ""
    critic_objective: dict = field(default_factory=dict)
    head_objective: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        one_of("head.type", self.type, HEAD_TYPES)
        one_of("head.select", self.select, SELECTIONS)
        for name in ("critic", "head", "critic_objective", "head_objective"):
            setattr(self, name, dict(getattr(self, name) or {}))
        if isinstance(self.num_samples, bool) or not isinstance(self.num_samples, int) \
                or not 1 <= self.num_samples <= MAX_SAMPLES:
            raise ConfigError("head.num_samples", self.num_samples, f"an integer in 1..{MAX_SAMPLES} (vgps: base "
                              "samples per chunk boundary)")
        if self.type == "vgps":
            if self.select != "critic":
                raise ConfigError("head.select", self.select, "critic for head=vgps (the critic picks a base sample)")
            for name in ("head", "head_objective"):
                if getattr(self, name):
                    raise ConfigError(f"head.{name}", getattr(self, name), "empty for head=vgps (no head network: "
                                      "the critic picks among base samples)")
            if self.critic.get("partial_horizon"):
                raise ConfigError("head.critic.partial_horizon", self.critic["partial_horizon"],
                                  "0 for head=vgps (the acting chunk is the record's full chunk)")
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
