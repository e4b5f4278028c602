"""Decoupled Q-chunking (DQC): a critic over H ticks for value propagation, a partial critic over the first h
ticks for acting; and its h = H case without the partial critic, the critic of V-GPS
(:class:`ExpectileCriticObjective`, ``head=vgps``).

Shapes: B batch, H critic chunk (``session.horizon``), h = ``critic.partial_horizon`` < H, A actions, M members.
One record is an H-tick chunk starting at tick t (with ``session.record_stride = h`` a record starts every h
ticks); its successor for the bootstrap starts H ticks later. Three networks, each with a Polyak target:

    Q(s_t, a_{t:t+H})      y_Q = R_{t:t+H} + gamma^h' * bootstrap * Vbar(s_{t+H})          squared error
    Q^P(s_t, a_{t:t+h})    y_P = agg_j Qbar_j(s_t, a_{t:t+H}^data)                          expectile kappa_d
    V(s_t)                 y_V = agg_j Qbar^P_j(s_t, a_{t:t+h}^data)                        expectile kappa_b

with R, h' (the valid ticks), the terminal, failure and truncation rules of the chunked TD target
(``tandem.value.objectives.targets.td_target``) and agg the critic's pessimistic aggregation. The expectile
loss of a prediction p for a target y is ``|kappa - 1(y < p)| * (y - p)^2``: kappa_d > 0.5 makes Q^P an upper
expectile of the full-chunk values over the data's completions (the value of the best way to finish the
chunk), kappa_b > 0.5 makes V an upper expectile of Q^P over the data's partial chunks. The backup needs no
next action: V stands in for max over the acting rule at s_{t+H}.

Q^P is what the robot acts with and what the learner publishes as ``critic`` (``acting_critic_config``): it
scores any chunk of at least h ticks on its first h, so the edit head's candidates, its actor loss and its
advantages use it unchanged. Settings: ``critic.partial_horizon`` (h), ``critic_objective.partial_expectile``
(kappa_d, default 0.8) and ``critic_objective.value_expectile`` (kappa_b, default 0.9), the values of the DQC
paper's cube tasks.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch import nn

from tandem.core.errors import ConfigError
from tandem.policies.heads.critic import ChunkedCritic, CriticConfig, EnsembleMLP
from tandem.value.objectives.common import grad_step
from tandem.value.objectives.critic import CriticObjective, CriticObjectiveConfig, td_metrics
from tandem.value.objectives.targets import shaped_reward, td_target


def expectile_loss(pred: torch.Tensor, target: torch.Tensor, kappa: float) -> torch.Tensor:
    """Elementwise ``|kappa - 1(target < pred)| * (target - pred)^2``: float like ``pred`` (target broadcasts).

    kappa = 0.5 is half the squared error; kappa > 0.5 weighs under-estimates more (an upper expectile).
    """
    diff = target - pred
    weight = torch.where(diff < 0, 1.0 - kappa, kappa)
    return weight * diff * diff


class StateValue(nn.Module):
    """V(s, f): one MLP member over [state, features] with a Polyak target copy.

    Args:
        config: the critic's config (sizes, hidden widths, LayerNorm, tau, seed).
    """

    def __init__(self, config: CriticConfig) -> None:
        super().__init__()
        self.config = config
        gen = torch.Generator().manual_seed(config.seed + 2)
        self.online = EnsembleMLP(1, config.state_dim + config.feature_dim, config.hidden, 1, config.layer_norm, gen)
        self.target = copy.deepcopy(self.online)
        self.target.requires_grad_(False)
        self.to(config.device)

    def forward(self, state: torch.Tensor, features: torch.Tensor, target: bool = False) -> torch.Tensor:
        """float[B] from state float[B, S] and features float[B, F]."""
        parts = [state.float()]
        if self.config.feature_dim:
            parts.append(features.float())
        net = self.target if target else self.online
        return net(torch.cat(parts, dim=-1))[0, :, 0]

    @torch.no_grad()
    def polyak_update(self) -> None:
        """target <- (1 - tau) target + tau online."""
        for t, o in zip(self.target.parameters(), self.online.parameters(), strict=True):
            t.lerp_(o, self.config.tau)


@torch.no_grad()
def value_backup(objective: CriticObjective, value: StateValue, b: dict[str, torch.Tensor],
                 gamma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The chunk's TD target to the state value, (y float[B], loss weight float[B]):
    y = R_{t:t+H} + gamma^h * bootstrap * Vbar(s_{t+H}), with ``objective``'s reward settings (``reward_mode``,
    ``reward_scale``, ``rlif_penalty``, failure value) and the terminal / failure / truncation rules of
    ``targets.td_target``. No next action: Vbar (``value``'s target network) stands in for the acting rule."""
    cfg = objective.config
    if cfg.reward_mode == "time":
        b = {**b, "reward": -torch.ones_like(b["reward"])}
    v_next = value(b["next_state"], b["next_features"], target=True)
    r = shaped_reward(b["reward"], b.get("takeover_start"), cfg.reward_scale, cfg.rlif_penalty)
    return td_target(r, b["valid"], b["done"], b["next_valid"], v_next, gamma, b.get("failed"), objective.failure_value)


class DQCCriticObjective(CriticObjective):
    """The critic objective of DQC (module docstring). ``critic`` is the partial critic Q^P (what heads and the
    robot use); ``full`` the H-tick critic; ``value`` V.

    Args:
        full: the critic over H ticks (its config's ``partial_horizon`` is h).
        config: objective settings (``partial_expectile``, ``value_expectile`` and the reward settings).
        distributed: average gradients over ranks.

    Raises:
        ConfigError: h not in [1, H), or the HL-Gauss loss (DQC's expectile fits are regressions).
    """

    name = "dqc"

    def __init__(self, full: ChunkedCritic, config: CriticObjectiveConfig | None = None,
                 distributed: bool = False) -> None:
        fc = full.config
        h = fc.partial_horizon
        if not 1 <= h < fc.horizon:
            raise ConfigError("critic.partial_horizon", h, f"1..{fc.horizon - 1} (below session.horizon) for DQC")
        if fc.loss != "mse":
            raise ConfigError("critic.loss", fc.loss, "mse with DQC (critic.partial_horizon > 0)")
        partial = ChunkedCritic(replace(fc, horizon=h, partial_horizon=0, seed=fc.seed + 10))
        super().__init__(partial, config, distributed=distributed)
        self.full = full
        self.value = StateValue(fc)
        params = list(full.online.parameters()) + list(self.value.online.parameters())
        self.full_optimizer = torch.optim.AdamW(params, lr=fc.lr, weight_decay=fc.weight_decay)

    @torch.no_grad()
    def targets(self, b: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(y_Q float[B], its loss weight float[B], y_P float[B], y_V float[B]) of a batch (module docstring),
        from the target networks."""
        full, partial = self.full, self.critic
        s, f, chunk = b["state"], b["features"], b["executed"]
        y_q, w = value_backup(self, self.value, b, full.config.gamma)
        y_p = full.q_pess(s, f, chunk, target=True, generator=self.generator)
        y_v = partial.q_pess(s, f, chunk, target=True, generator=self.generator)
        return y_q, w, y_p, y_v

    def update_tensors(self, b: dict[str, torch.Tensor]) -> dict[str, float]:
        """One step of Q (TD to V at s_{t+H}), Q^P (expectile to Q) and V (expectile to Q^P); Polyak steps."""
        cfg, full, partial, value = self.config, self.full, self.critic, self.value
        s, f, chunk = b["state"], b["features"], b["executed"]
        y_q, w, y_p, y_v = self.targets(b)
        loss_q, q = full.td_loss(s, f, chunk, y_q, w)
        v = value(s, f)
        loss_v = expectile_loss(v, y_v, cfg.value_expectile).mean()
        norm_q = grad_step(self.full_optimizer, loss_q + loss_v,
                           list(full.online.parameters()) + list(value.online.parameters()), full.config.grad_clip,
                           self.distributed)
        qp = partial.q_values(s, f, chunk)
        loss_p = expectile_loss(qp, y_p.unsqueeze(0), cfg.partial_expectile).mean(1).sum()
        norm_p = grad_step(self.optimizer, loss_p, list(partial.online.parameters()), partial.config.grad_clip,
                           self.distributed)
        full.polyak_update()
        partial.polyak_update()
        value.polyak_update()
        self.steps += 1
        return {
            **td_metrics(loss_q, q, y_q, w, norm_q),
            "critic/partial_loss": float(loss_p.detach()),
            "critic/partial_mean": float(qp.detach().mean()),
            "critic/partial_minus_full": float((qp.detach().mean(0) - y_p).mean()),
            "critic/partial_grad_norm": norm_p,
            "critic/value_loss": float(loss_v.detach()),
            "critic/value_mean": float(v.detach().mean()),
            "critic/steps": float(self.steps),
        }

    def state_dict(self) -> dict[str, Any]:
        """The partial critic's entries (``critic``: what ``head.init`` loads) plus Q, V and their optimiser."""
        return {**super().state_dict(), "full": self.full.state_dict(), "value": self.value.state_dict(),
                "full_optimizer": self.full_optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`state_dict`."""
        super().load_state_dict(state)
        self.full.load_state_dict(state["full"])
        self.value.load_state_dict(state["value"])
        self.full_optimizer.load_state_dict(state["full_optimizer"])

    def weights(self) -> dict[str, dict[str, np.ndarray]]:
        """{"critic": Q^P's online parameters}: the robot acts with the partial critic."""
        return {"critic": self.critic.weights()}


class ExpectileCriticObjective(CriticObjective):
    """The critic of V-GPS (``head=vgps``): DQC's Q/V expectile backup with the acting chunk the record's full
    chunk (no partial critic: the robot picks whole H-tick base samples)::

        Q(s_t, a_{t:t+H})    y_Q = R_{t:t+H} + gamma^h' * bootstrap * Vbar(s_{t+H})      critic's TD loss
        V(s_t)               y_V = agg_j Qbar_j(s_t, a_{t:t+H}^data)                     expectile kappa_b

    kappa_b = ``critic_objective.value_expectile`` (default 0.9) > 0.5 makes V an upper expectile of Q over
    the chunks the robot ran, which approximates the max over the behaviour's support, what the robot's
    best of N base samples approximates. So the chunk chosen for acting and the chunk the backup assumes
    agree without sampling the base at s_{t+H}. ``critic`` (Q) is what the robot picks with and what is
    published; it scores the robot's N samples through ``select.best_of_candidates``, as the learner would.

    Args:
        critic: the critic over H ticks (``partial_horizon`` 0).
        config: objective settings (``value_expectile`` and the reward settings; ``partial_expectile`` unused).
        distributed: average gradients over ranks.

    Raises:
        ConfigError: a critic with ``partial_horizon`` > 0 (that is DQC's objective).
    """

    name = "vgps"

    def __init__(self, critic: ChunkedCritic, config: CriticObjectiveConfig | None = None,
                 distributed: bool = False) -> None:
        c = critic.config
        if c.partial_horizon:
            raise ConfigError("critic.partial_horizon", c.partial_horizon, "0 for vgps (the acting chunk is the "
                              "record's full chunk)")
        super().__init__(critic, config, distributed=distributed)
        self.value = StateValue(c)
        self.value_optimizer = torch.optim.AdamW(self.value.online.parameters(), lr=c.lr, weight_decay=c.weight_decay)

    @torch.no_grad()
    def targets(self, b: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(y_Q float[B], its loss weight float[B], y_V float[B]) of a batch (class docstring), from the target
        networks."""
        y_q, w = value_backup(self, self.value, b, self.critic.config.gamma)
        y_v = self.critic.q_pess(b["state"], b["features"], b["executed"], target=True, generator=self.generator)
        return y_q, w, y_v

    def update_tensors(self, b: dict[str, torch.Tensor]) -> dict[str, float]:
        """One step of Q (TD to Vbar at s_{t+H}) and V (expectile to Qbar); Polyak steps of both."""
        critic, value = self.critic, self.value
        s, f, chunk = b["state"], b["features"], b["executed"]
        y_q, w, y_v = self.targets(b)
        loss_q, q = critic.td_loss(s, f, chunk, y_q, w)
        norm_q = grad_step(self.optimizer, loss_q, list(critic.online.parameters()), critic.config.grad_clip,
                           self.distributed)
        v = value(s, f)
        loss_v = expectile_loss(v, y_v, self.config.value_expectile).mean()
        norm_v = grad_step(self.value_optimizer, loss_v, list(value.online.parameters()), critic.config.grad_clip,
                           self.distributed)
        critic.polyak_update()
        value.polyak_update()
        self.steps += 1
        return {
            **td_metrics(loss_q, q, y_q, w, norm_q),
            "critic/value_loss": float(loss_v.detach()),
            "critic/value_mean": float(v.detach().mean()),
            "critic/value_minus_q": float((v.detach() - y_v).mean()),
            "critic/value_grad_norm": norm_v,
            "critic/steps": float(self.steps),
        }

    def state_dict(self) -> dict[str, Any]:
        """The critic's entries (``critic``: what ``head.init`` loads) plus V and its optimiser."""
        return {**super().state_dict(), "value": self.value.state_dict(),
                "value_optimizer": self.value_optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`state_dict`."""
        super().load_state_dict(state)
        self.value.load_state_dict(state["value"])
        self.value_optimizer.load_state_dict(state["value_optimizer"])
