"""The chunked critic's objective: TD regression (or HL-Gauss classification) on chunk records."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from tandem.core.errors import ConfigError
from tandem.core.validate import non_negative, one_of
from tandem.policies.heads.critic import ChunkedCritic
from tandem.value.objectives.common import grad_step, to_tensors
from tandem.value.objectives.targets import NextAction, critic_target

# ----------------------------------------------------------------------------------------------------


@dataclass
class CriticObjectiveConfig:
    """Critic training (optimiser settings, gamma and tau live in CriticConfig).

    Attributes:
        reward_mode: "task" (the recorded task reward) or "time" (-1 per tick until the episode's terminal:
            the value is minus the discounted time to success; needs ``loop.stop_on_success`` so success
            is the terminal). A failed terminal (an operator's failure mark) is then followed by
            ``failure_value``.
        failure_value: the value after a failed terminal, in reward units after ``reward_scale``. None:
            -reward_scale / (1 - gamma) with the time reward (never succeeding: -1 per tick forever),
            0 with the task reward (the episode's rewards just end).
        reward_scale: multiplier of the reward.
        rlif_penalty: RLIF penalty at each takeover onset (0 = interventions are plain data, ALOE; 1 = RLIF).
        warmup_steps: critic-only updates before head objectives start their own updates.
        seed: seed of the objective's generator (aggregation subsets, sampling, target noise).
        partial_expectile, value_expectile: DQC only (``critic.partial_horizon`` > 0): the expectiles kappa_d
            of the partial critic's fit to the full-chunk critic and kappa_b of V's fit to the partial critic
            (``tandem.value.objectives.dqc``), each in (0, 1).
    """

    reward_mode: str = "task"
    reward_scale: float = 1.0
    rlif_penalty: float = 0.0
    warmup_steps: int = 0
    seed: int = 0
    failure_value: float | None = None
    partial_expectile: float = 0.8
    value_expectile: float = 0.9

    def __post_init__(self) -> None:
        one_of("reward_mode", self.reward_mode, ("task", "time"))
        for name in ("partial_expectile", "value_expectile"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ConfigError(name, getattr(self, name), "a number in (0, 1), e.g. 0.8")
        if self.failure_value is not None and not math.isfinite(self.failure_value):
            raise ConfigError("failure_value", self.failure_value, "a finite number, or null for the reward mode's default")
        non_negative("rlif_penalty", self.rlif_penalty)
        non_negative("warmup_steps", self.warmup_steps)


def failure_value(config: CriticObjectiveConfig, gamma: float) -> float:
    """The value after a failed terminal (``config.failure_value``, or its reward-mode default), reward units.

    Raises:
        ConfigError: the time reward with gamma = 1 and no explicit value (it would be infinite).
    """
    if config.failure_value is not None:
        return float(config.failure_value)
    if config.reward_mode == "time":
        if gamma >= 1.0:
            raise ConfigError("failure_value", None, "with reward_mode=time and gamma=1 a failure has no finite "
                              "value: set critic_objective.failure_value (e.g. -reward_scale * the tick limit)")
        return -config.reward_scale / (1.0 - gamma)
    return 0.0


def td_metrics(loss: torch.Tensor, q: torch.Tensor, y: torch.Tensor, w: torch.Tensor, grad_norm: float) -> dict[str, float]:
    """The metrics of one critic TD step, shared by every critic objective.

    Args:
        loss: the scalar TD loss; q: float[E, B] the members' Q; y: float[B] targets; w: float[B] loss weights;
        grad_norm: the step's gradient norm.

    Returns:
        critic/loss, td_abs (weighted mean |mean_j Q_j - y|), q_mean, q_ens_std, target_mean, weight_frac, grad_norm.
    """
    wsum = float(w.sum().clamp_min(1e-6))
    return {
        "critic/loss": float(loss.detach()),
        "critic/td_abs": float(((q.mean(0) - y).abs() * w).sum()) / wsum,
        "critic/q_mean": float((q.mean(0) * w).sum()) / wsum,
        "critic/q_ens_std": float(q.std(0, correction=0).mean()) if q.shape[0] > 1 else 0.0,
        "critic/target_mean": float((y * w).sum()) / wsum,
        "critic/weight_frac": float(w.mean()),
        "critic/grad_norm": grad_norm,
    }


class CriticObjective:
    """Chunked TD regression of the critic ensemble toward one pessimistic target, then a Polyak step.

    Args:
        critic: the critic (its config holds lr, weight decay, grad clip, gamma, tau).
        config: objective settings.
        next_action: a' at the bootstrap state (default: the next base proposal). Head objectives
            replace it with their acting policy.
        distributed: average gradients over ranks (torch.distributed initialised by the learner).
    """

    name = "critic"

    def __init__(self, critic: ChunkedCritic, config: CriticObjectiveConfig | None = None,
                 next_action: NextAction | None = None, distributed: bool = False) -> None:
        self.critic = critic
        self.distributed = distributed
        self.config = config or CriticObjectiveConfig()
        self.next_action = next_action
        c = critic.config
        self.optimizer = torch.optim.AdamW(critic.online.parameters(), lr=c.lr, weight_decay=c.weight_decay)
        self.generator = torch.Generator().manual_seed(self.config.seed)
        self.steps = 0
        self.failure_value = failure_value(self.config, critic.config.gamma)

    @property
    def device(self) -> torch.device:
        """The critic's device."""
        return next(self.critic.online.parameters()).device


    @property
    def warming_up(self) -> bool:
        """True while fewer than ``warmup_steps`` critic updates are done (heads skip their step)."""
        return self.steps < self.config.warmup_steps

    def update_tensors(self, b: dict[str, torch.Tensor]) -> dict[str, float]:
        """One critic step on a batch already converted by :func:`to_tensors`."""
        critic, cfg = self.critic, self.config
        if cfg.reward_mode == "time":
            b = {**b, "reward": -torch.ones_like(b["reward"])}
        y, w = critic_target(critic, b, self.next_action, cfg.reward_scale, cfg.rlif_penalty, self.generator,
                             self.failure_value)
        loss, q = critic.td_loss(b["state"], b["features"], b["executed"], y, w)
        norm = grad_step(self.optimizer, loss, list(critic.online.parameters()), critic.config.grad_clip,
                          self.distributed)
        critic.polyak_update()
        self.steps += 1
        return {
            **td_metrics(loss, q, y, w, norm),
            "critic/takeover_frac": float(b["intervention"].any(dim=1).float().mean()) if "intervention" in b else 0.0,
            "critic/steps": float(self.steps),
        }

    def update(self, batch: dict[str, Any]) -> dict[str, float]:
        """One critic step; returns metrics (loss, mean |Q - y|, Q and target means, ensemble std, ...)."""
        return self.update_tensors(to_tensors(batch, self.device))

    def weights(self) -> dict[str, dict[str, np.ndarray]]:
        """{"critic": the online ensemble's parameters}."""
        return {"critic": self.critic.weights()}

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: critic (online and target), optimiser, step count, RNG."""
        return {"critic": self.critic.state_dict(), "optimizer": self.optimizer.state_dict(), "steps": self.steps,
                "generator": self.generator.get_state(), "critic_generator": self.critic.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`state_dict`."""
        self.critic.load_state_dict(state["critic"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.steps = int(state["steps"])
        self.generator.set_state(state["generator"])
        self.critic.generator.set_state(state["critic_generator"])
