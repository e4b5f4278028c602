"""The base of the head objectives: a critic step on every batch, a head step when due, checkpoints."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from tandem.policies.heads.critic import ChunkedCritic
from tandem.policies.heads.networks import EditHead, ResidualHead
from tandem.value.objectives.common import to_tensors
from tandem.value.objectives.critic import CriticObjective

if TYPE_CHECKING:  # the subclasses' settings; they import this module
    from tandem.value.objectives.edit import EditObjectiveConfig
    from tandem.value.objectives.residual import ResidualObjectiveConfig


def actor_q(critic: ChunkedCritic, mode: str, state: torch.Tensor, features: torch.Tensor, chunk: torch.Tensor,
             generator: torch.Generator) -> torch.Tensor:
    q = critic.q_values(state, features, chunk)
    return critic.aggregate(q, generator) if mode == "aggregate" else q.mean(0)


class HeadObjective:
    """What both head objectives share: the critic step on every batch, then (after the critic warm-up,
    every ``config.actor_every`` critic steps) the subclass's :meth:`_head_step`; the head's AdamW
    optimiser; the critic's bootstrap action a' taken from :meth:`target_action`; and checkpoints holding
    the critic objective, the head, its optimiser and the head step count plus :meth:`_extra_state`.

    Args:
        head: the head. critic_objective: the critic's objective (its next_action is replaced).
        config: head settings with ``lr``, ``weight_decay`` and ``actor_every``.
    """

    name = ""

    def __init__(self, head: ResidualHead | EditHead, critic_objective: CriticObjective,
                 config: ResidualObjectiveConfig | EditObjectiveConfig) -> None:
        self.head = head.to(critic_objective.device)
        self.critic_objective = critic_objective
        self.config = config
        self.optimizer = torch.optim.AdamW(head.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        critic_objective.next_action = self.target_action
        self.head_steps = 0

    def target_action(self, next_state: torch.Tensor, next_features: torch.Tensor,
                      next_base: torch.Tensor) -> torch.Tensor:
        """The action chunk a' the TD target bootstraps from: float[B, H, A]."""
        raise NotImplementedError

    def _head_step(self, b: dict[str, torch.Tensor]) -> dict[str, float]:
        """One head update on the batch ``b`` (tensors); returns its ``head/...`` metrics."""
        raise NotImplementedError

    def update(self, batch: dict[str, Any]) -> dict[str, float]:
        """One critic step and, when due, one head step; returns both sets of metrics."""
        co = self.critic_objective
        b = to_tensors(batch, co.device)
        due = not co.warming_up and (co.steps + 1) % self.config.actor_every == 0
        metrics = co.update_tensors(b)
        if not due:
            return metrics
        metrics.update(self._head_step(b))
        self.head_steps += 1
        metrics["head/steps"] = float(self.head_steps)
        return metrics

    def _extra_state(self) -> dict[str, Any]:
        """Subclass state saved beside the shared entries."""
        return {}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`_extra_state`."""

    def state_dict(self) -> dict[str, Any]:
        """Critic objective state plus head, head optimiser, head step count and :meth:`_extra_state`."""
        return {"critic_objective": self.critic_objective.state_dict(), "head": self.head.state_dict(),
                "optimizer": self.optimizer.state_dict(), "head_steps": self.head_steps, **self._extra_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`state_dict`."""
        self.critic_objective.load_state_dict(state["critic_objective"])
        self.head.load_state_dict(state["head"])
        self.optimizer.load_state_dict(state["optimizer"])
        self._load_extra_state(state)
        self.head_steps = int(state["head_steps"])
        self.head.sync_numpy()
