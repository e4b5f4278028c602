"""The residual head's objective (ResFiT: deterministic policy gradient through the critic, TD3 style)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from tandem.core.validate import non_negative, one_of, positive
from tandem.policies.heads.networks import ResidualHead
from tandem.value.objectives.common import grad_step
from tandem.value.objectives.critic import CriticObjective
from tandem.value.objectives.head import HeadObjective, actor_q

# ----------------------------------------------------------------------------------------------------


@dataclass
class ResidualObjectiveConfig:
    """Residual head training (ResFiT: deterministic policy gradient through the critic, TD3 style).

    Attributes:
        lr, weight_decay: AdamW settings of the head.
        actor_every: one head update every this many critic updates (TD3's policy delay / ResFiT's UTD).
        target_noise: std of the Gaussian smoothing noise added to a' in the TD target (0 = off).
        noise_clip: the smoothing noise is clipped to [-noise_clip, noise_clip] (action units).
        actor_q: "aggregate" (maximise the pessimistic Q) or "mean" (the ensemble mean, as in ResFiT).
        grad_clip: max gradient norm of the head (0 disables).
    """

    lr: float = 1e-4
    weight_decay: float = 0.0
    actor_every: int = 1
    target_noise: float = 0.0
    noise_clip: float = 0.1
    actor_q: str = "aggregate"
    grad_clip: float = 1.0

    def __post_init__(self) -> None:
        positive("lr", self.lr)
        positive("actor_every", self.actor_every)
        non_negative("target_noise", self.target_noise)
        non_negative("noise_clip", self.noise_clip)
        one_of("actor_q", self.actor_q, ("aggregate", "mean"))
        non_negative("grad_clip", self.grad_clip)




class ResidualHeadObjective(HeadObjective):
    """Critic step, then (after the critic warm-up, every ``actor_every`` steps) a head step.

    Head loss: L = -mean_b Q_pess(s_b, a_base_b + head(s_b, f_b, a_base_b)), gradients into the head only.
    TD target a' = next_base + head(next_state, next_features, next_base) (+ clipped noise if enabled).

    Args:
        head: the residual head. critic_objective: the critic's objective (its next_action is replaced).
        config: head settings.
    """

    name = "residual"

    def __init__(self, head: ResidualHead, critic_objective: CriticObjective,
                 config: ResidualObjectiveConfig | None = None) -> None:
        super().__init__(head, critic_objective, config or ResidualObjectiveConfig())

    def target_action(self, next_state: torch.Tensor, next_features: torch.Tensor,
                      next_base: torch.Tensor) -> torch.Tensor:
        """a' = base + head at the bootstrap state, with TD3 target smoothing when enabled: float[B, H, A]."""
        a = self.head.act(next_state, next_features, next_base)
        cfg = self.config
        if cfg.target_noise > 0:
            g = self.critic_objective.generator
            noise = (torch.randn(a.shape, generator=g) * cfg.target_noise).clamp(-cfg.noise_clip, cfg.noise_clip)
            a = a + noise.to(a.device)
        return a

    def _head_step(self, b: dict[str, torch.Tensor]) -> dict[str, float]:
        """Ascend Q_pess(s, a_base + head(s, f, a_base)) through the frozen critic."""
        co = self.critic_objective
        with co.critic.frozen():
            correction = self.head(b["state"], b["features"], b["base"])
            q = actor_q(co.critic, self.config.actor_q, b["state"], b["features"], b["base"] + correction,
                         co.generator)
            loss = -q.mean()
            norm = grad_step(self.optimizer, loss, list(self.head.parameters()), self.config.grad_clip,
                              co.distributed)
        return {
            "head/loss": float(loss.detach()),
            "head/q_pi": float(q.detach().mean()),
            "head/correction_abs": float(correction.detach().abs().mean()),
            "head/grad_norm": norm,
        }

    def weights(self) -> dict[str, dict[str, np.ndarray]]:
        """{"head": the head's parameters} (the residual head needs no critic on the robot)."""
        self.head.sync_numpy()
        return {"head": self.head.weights()}
