"""The edit head's objective (EXPO: a Gaussian edit of the base chunk, SAC-style, with an AWR term)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from tandem.core.errors import ConfigError
from tandem.core.validate import non_negative, one_of, positive
from tandem.policies.heads.networks import EditHead
from tandem.policies.heads.select import best_of_candidates
from tandem.value.objectives.advantages import advantage, awr_weights, weighted_bc_loss
from tandem.value.objectives.common import grad_step
from tandem.value.objectives.critic import CriticObjective
from tandem.value.objectives.head import HeadObjective, actor_q

# ----------------------------------------------------------------------------------------------------


@dataclass
class EditObjectiveConfig:
    """Edit head training (EXPO: SAC-style loss on the edit policy, best-of-candidates in the target).

    Attributes:
        lr, weight_decay: AdamW settings of the head.
        alpha_lr: learning rate of log alpha (the entropy temperature).
        init_alpha: initial temperature.
        target_entropy: target of the edit-space entropy -E[log pi_e(eps)]; None = -D/2 with D = H * A.
        num_candidates: edits per state in the TD target's selection (None = the head's num_candidates).
        actor_every: one head update every this many critic updates.
        actor_q: "mean" (ensemble mean, as EXPO) or "aggregate" (the pessimistic Q).
        grad_clip: max gradient norm of the head (0 disables).
        q_weight: weight of EXPO's -Q(s, a_base + beta eps) term (0: the head improves by the advantage-
            weighted likelihood alone, ALOE's policy step, with the critic only weighting the data).
        awr_weight: weight of ALOE's advantage-weighted likelihood of the executed chunks (human
            takeovers included) under the edit policy, added to the EXPO loss (0: EXPO only).
        awr_beta: AWR temperature (in the critic's value units): w = clip(exp(A / awr_beta), 0, awr_w_max).
        awr_w_max: AWR weight cap.
        awr_samples: edits sampled per state for V(s) = mean Q(s, base + edit) (acting "best").
        human_min_weight: floor of the AWR weight of chunks a human drove part of (0: no floor). RLIF's
            premise: a human took over because the robot was doing worse, so a correction should count at
            least as much as the robot's average chunk (1.0) even where the critic, extrapolating to the
            robot's own action in a state it rarely saw, scores the correction lower.
        awr_ticks: which ticks the advantage-weighted likelihood imitates: "all" (every valid tick: the
            robot's own chunks and the humans', as ALOE) or "human" (only the ticks a human drove: the head
            learns from corrections, as HG-DAgger, and the robot's own chunks train only the critic; with
            ``acting: mean`` those are what the head already does, so imitating them only slows it down).
        acting: how the robot acts, which is what the TD target's next action and V(s) follow: "best"
            (EXPO: the critic's pick of base and N edits) or "mean" (base + the mean edit, no critic on
            the robot; a' and V(s) use that one chunk, which also makes an update about twice as cheap).
            ``tandem run`` sets it from ``head.select``.
    """

    lr: float = 3e-4
    weight_decay: float = 0.0
    alpha_lr: float = 3e-4
    init_alpha: float = 0.1
    target_entropy: float | None = None
    num_candidates: int | None = None
    actor_every: int = 1
    actor_q: str = "mean"
    grad_clip: float = 1.0
    q_weight: float = 1.0
    awr_weight: float = 0.0
    awr_beta: float = 1.0
    awr_w_max: float = 20.0
    awr_samples: int = 4
    awr_ticks: str = "all"
    human_min_weight: float = 0.0
    acting: str = "best"

    def __post_init__(self) -> None:
        positive("lr", self.lr)
        one_of("acting", self.acting, ("best", "mean"))
        one_of("awr_ticks", self.awr_ticks, ("all", "human"))
        non_negative("human_min_weight", self.human_min_weight)
        non_negative("q_weight", self.q_weight)
        non_negative("awr_weight", self.awr_weight)
        positive("awr_beta", self.awr_beta)
        positive("awr_w_max", self.awr_w_max)
        positive("awr_samples", self.awr_samples)
        positive("alpha_lr", self.alpha_lr)
        positive("init_alpha", self.init_alpha)
        if self.num_candidates is not None and self.num_candidates < 0:
            raise ConfigError("num_candidates", self.num_candidates, "must be >= 0 or null")
        positive("actor_every", self.actor_every)
        one_of("actor_q", self.actor_q, ("aggregate", "mean"))
        non_negative("grad_clip", self.grad_clip)


class EditHeadObjective(HeadObjective):
    """Critic step (target a' = best of {base} + N edits under the target critic), then an edit-policy step.

    Head loss (one reparameterised edit per state):
        L = mean_b [ alpha * (log pi_e(eps_b) - D log beta) - q_weight * Q(s_b, a_base_b + beta eps_b) ]
            + awr_weight * L_awr (see :meth:`_awr_terms`)
    Temperature loss: L_alpha = -log alpha * mean_b (log pi_e(eps_b) + target_entropy), i.e. alpha is
    tuned so the edit-space entropy tracks ``target_entropy``. The constant -D log beta (the change of
    variables from eps to the action) does not change the head's gradient; it is reported in
    ``head/log_prob_action``.

    Args:
        head: the edit head. critic_objective: the critic's objective (its next_action is replaced).
        config: head settings.
    """

    name = "edit"

    def __init__(self, head: EditHead, critic_objective: CriticObjective, config: EditObjectiveConfig | None = None
                 ) -> None:
        super().__init__(head, critic_objective, config or EditObjectiveConfig())
        cfg = self.config
        self.log_alpha = torch.tensor(math.log(cfg.init_alpha), device=critic_objective.device, requires_grad=True)
        self.alpha_optimizer = torch.optim.Adam([self.log_alpha], lr=cfg.alpha_lr)
        d = head.config.chunk_dim
        self.target_entropy = -d / 2 if cfg.target_entropy is None else float(cfg.target_entropy)
        self.log_beta_term = d * math.log(head.config.beta)

    @property
    def alpha(self) -> float:
        """The current temperature."""
        return float(self.log_alpha.detach().exp())

    def target_action(self, next_state: torch.Tensor, next_features: torch.Tensor,
                      next_base: torch.Tensor) -> torch.Tensor:
        """a' = the acting rule at the bootstrap state: float[B, H, A].

        "best": argmax over {next_base} + N edits of the target critic's pessimistic Q; "mean": the mean edit.
        """
        co = self.critic_objective
        if self.config.acting == "mean":
            return self.head.mean_chunk(next_state, next_features, next_base)
        cands = self.head.candidates(next_state, next_features, next_base, self.config.num_candidates, co.generator)
        best, _, _ = best_of_candidates(co.critic, next_state, next_features, cands, target=True,
                                        generator=co.generator)
        return best

    def _head_step(self, b: dict[str, torch.Tensor]) -> dict[str, float]:
        """One edit-policy step (see the class docstring) and one temperature step."""
        co = self.critic_objective
        critic, head = co.critic, self.head
        with critic.frozen():
            eps, log_prob = head.sample(b["state"], b["features"], b["base"], 1, co.generator)
            eps, log_prob = eps[:, 0], log_prob[:, 0]
            q_weight = self.config.q_weight
            with torch.set_grad_enabled(q_weight > 0):
                q = actor_q(critic, self.config.actor_q, b["state"], b["features"], head.edit(b["base"], eps),
                             co.generator)
            alpha = self.log_alpha.exp().detach()
            loss = (alpha * (log_prob - self.log_beta_term) - q_weight * q).mean()
            awr = self._awr_terms(b) if self.config.awr_weight > 0 else {}
            if awr:
                loss = loss + self.config.awr_weight * awr.pop("loss")
            norm = grad_step(self.optimizer, loss, list(head.parameters()), self.config.grad_clip, co.distributed)
        alpha_loss = -(self.log_alpha * (log_prob.detach() + self.target_entropy)).mean()
        grad_step(self.alpha_optimizer, alpha_loss, [self.log_alpha], 0.0, co.distributed)
        return {
            "head/loss": float(loss.detach()),
            "head/q_pi": float(q.detach().mean()),
            "head/entropy": float(-log_prob.detach().mean()),
            "head/log_prob_action": float((log_prob.detach() - self.log_beta_term).mean()),
            "head/alpha": self.alpha,
            "head/edit_abs": float((head.config.beta * eps).detach().abs().mean()),
            "head/grad_norm": norm,
            **awr,
        }

    def _awr_terms(self, b: dict[str, torch.Tensor]) -> dict[str, Any]:
        """ALOE's improvement step on the edit head: -mean_b w_b log pi_e(eps*_b), per action dimension.

        eps*_b = clip((executed_b - base_b) / beta) is the edit that reproduces what ran (a human
        takeover's actions, or the candidate the robot chose); w_b = clip(exp(A_b / awr_beta), 0, w_max)
        with A_b = Q_pess(s_b, executed_b) - V(s_b), V from ``awr_samples`` edits of the current head
        (acting "best") or from its mean edit (acting "mean"). Ticks past the episode's end are masked out.
        """
        co, head, cfg = self.critic_objective, self.head, self.config
        human_ticks = b["intervention"] & b["valid"]
        mean, log_std = head.dist_params(b["state"], b["features"], b["base"])
        with torch.no_grad():
            if cfg.acting == "mean":  # the mean edit from the same forward pass (head.mean_chunk)
                policy = head.edit(b["base"], torch.tanh(mean).reshape(b["base"].shape)).unsqueeze(1)
            else:
                eps_v, _ = head.sample(b["state"], b["features"], b["base"], cfg.awr_samples, co.generator)
                policy = head.edit(b["base"], eps_v)
            adv = advantage(co.critic, b["state"], b["features"], b["executed"], policy, generator=co.generator)
            w = awr_weights(adv, cfg.awr_beta, cfg.awr_w_max)
            if cfg.human_min_weight > 0:
                w = torch.where(human_ticks.any(1), w.clamp_min(cfg.human_min_weight), w)
        target = ((b["executed"] - b["base"].float()) / head.config.beta).flatten(1).clamp(-0.995, 0.995)
        u = torch.atanh(target)
        log_p = -0.5 * ((u - mean) / log_std.exp()) ** 2 - log_std - 0.5 * math.log(2 * math.pi)
        ticks = human_ticks if cfg.awr_ticks == "human" else b["valid"]
        mask = ticks.float().unsqueeze(-1).expand(b["base"].shape).flatten(1)
        per_sample = (log_p * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        counted = ticks.any(1)  # samples with at least one imitated tick (all of them with awr_ticks "all")
        if not bool(counted.any()):
            return {"loss": log_p.sum() * 0.0, "head/awr_adv": float(adv.mean()), "head/awr_w": 0.0,
                    "head/awr_log_p": 0.0}
        per_sample, w = per_sample[counted], w[counted]
        return {"loss": -weighted_bc_loss(per_sample, w), "head/awr_adv": float(adv.mean()),
                "head/awr_w": float(w.mean()), "head/awr_log_p": float(per_sample.detach().mean())}

    def weights(self) -> dict[str, dict[str, np.ndarray]]:
        """{"head": ..., "critic": ...}: the robot scores the candidates with the critic."""
        self.head.sync_numpy()
        return {"head": self.head.weights(), **self.critic_objective.weights()}

    def _extra_state(self) -> dict[str, Any]:
        """The temperature and its optimiser."""
        return {"log_alpha": self.log_alpha.detach().clone(), "alpha_optimizer": self.alpha_optimizer.state_dict()}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"])
        self.alpha_optimizer.load_state_dict(state["alpha_optimizer"])
