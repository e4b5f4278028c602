"""What the learner trains: the ``Objective`` protocol and a small real objective.

An objective owns its networks and optimisers. The learner hands it batches (dicts of numpy arrays
from :meth:`ReplayStore.sample`: ``state`` [B, S], ``features`` [B, F], ``base``/``head``/``executed``
[B, H, A], ``reward``/``valid``/``intervention``/``takeover_start`` [B, H], ``done``/``truncated`` [B],
``buffer`` [B]), checkpoints it through ``state_dict``/``load_state_dict`` and publishes what
``weights()`` returns. The critic and head objectives of later issues plug in the same way.

Under DistributedDataParallel every rank builds the objective with ``distributed=True`` and gets
its shard of each batch; the objective wraps its trained modules in DDP so gradients are averaged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from tandem.runtime.messages import WEIGHT_KINDS
from tandem.validate import in_range, one_of, positive


class Objective(Protocol):
    """A learner objective (critic, head, base update, or the test objective below)."""

    name: str

    def update(self, batch: dict[str, np.ndarray]) -> dict[str, float]:
        """One gradient step on ``batch``; returns scalar metrics (e.g. {"loss": 0.1})."""

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: networks, optimiser state, counters (torch.save-able)."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`."""

    def weights(self) -> dict[str, dict[str, np.ndarray]]:
        """Weight kind ("head", "critic", "base") -> named float arrays to publish to robots."""


@dataclass
class ObjectiveConfig:
    """Which objective the learner trains.

    Attributes:
        type: "critic" (chunked critic only), "residual" (critic + residual head), "edit" (critic +
            EXPO edit head; publishes both) or "chunk_reward" (a small test objective).
        critic, head: network settings, the same as the robot's ``head.critic`` / ``head.head`` (sizes
            come from the data); see tandem.value.learning.
        critic_objective: CriticObjectiveConfig settings (reward_mode, reward_scale, warmup_steps, rlif_penalty).
        head_objective: ResidualObjectiveConfig / EditObjectiveConfig settings (lr, AWR term, ...).
        hidden, layers, lr, publish_kind: chunk_reward only: MLP width, depth, Adam lr, weight kind.
    """

    type: str = "chunk_reward"
    critic: dict = field(default_factory=dict)
    head: dict = field(default_factory=dict)
    critic_objective: dict = field(default_factory=dict)
    head_objective: dict = field(default_factory=dict)
    hidden: int = 64
    layers: int = 2
    lr: float = 1e-3
    publish_kind: str = "critic"

    def __post_init__(self) -> None:
        one_of("objective.type", self.type, OBJECTIVES)
        in_range("objective.hidden", self.hidden, 1, 65536)
        in_range("objective.layers", self.layers, 1, 64)
        positive("objective.lr", self.lr)
        one_of("objective.publish_kind", self.publish_kind, WEIGHT_KINDS)


def mlp(in_dim: int, hidden: int, layers: int, out_dim: int) -> Any:
    """A ReLU MLP (torch imported here)."""
    import torch.nn as nn

    dims = [in_dim] + [hidden] * layers
    mods: list[nn.Module] = []
    for a, b in zip(dims[:-1], dims[1:], strict=True):
        mods += [nn.Linear(a, b), nn.ReLU()]
    mods.append(nn.Linear(dims[-1], out_dim))
    return nn.Sequential(*mods)


class ChunkRewardObjective:
    """Fit an MLP to predict a chunk's total reward from its first state and executed actions.

    Input ``[state, executed.flatten()]`` (S + H*A), target ``sum_k reward_k * valid_k``, MSE loss.
    Small, but a real supervised objective, so the learner's loop, DDP, checkpoints and weight
    publication are exercised on something that learns. The network is built at the first batch
    (sizes come from the data) and published as ``config.publish_kind``.

    Args:
        config: ObjectiveConfig.
        device: torch device string.
        distributed: wrap the network in DistributedDataParallel.
    """

    name = "chunk_reward"

    def __init__(self, config: ObjectiveConfig, device: str = "cpu", distributed: bool = False) -> None:
        self.config = config
        self.device = device
        self.distributed = distributed
        self.dims: tuple[int, int, int] | None = None
        self.model: Any = None
        self.ddp: Any = None
        self.optim: Any = None
        self.updates = 0

    def _build(self, dims: tuple[int, int, int]) -> None:
        import torch

        state_dim, horizon, action_dim = dims
        self.dims = dims
        self.model = mlp(state_dim + horizon * action_dim, self.config.hidden, self.config.layers, 1).to(self.device)
        self.ddp = self.model
        if self.distributed:
            from torch.nn.parallel import DistributedDataParallel

            ids = [torch.device(self.device).index] if str(self.device).startswith("cuda") else None
            self.ddp = DistributedDataParallel(self.model, device_ids=ids)
        self.optim = torch.optim.Adam(self.model.parameters(), lr=self.config.lr)

    def update(self, batch: dict[str, np.ndarray]) -> dict[str, float]:
        """One Adam step on the MSE between predicted and observed chunk reward."""
        import torch

        state, executed = batch["state"], batch["executed"]
        if self.model is None:
            self._build((state.shape[1], executed.shape[1], executed.shape[2]))
        x = torch.as_tensor(np.concatenate([state, executed.reshape(len(state), -1)], axis=1), device=self.device)
        target = torch.as_tensor((batch["reward"] * batch["valid"]).sum(axis=1, dtype=np.float32), device=self.device)
        pred = self.ddp(x).squeeze(-1)
        loss = torch.nn.functional.mse_loss(pred, target)
        self.optim.zero_grad(set_to_none=True)
        loss.backward()
        self.optim.step()
        self.updates += 1
        return {"loss": float(loss.detach())}

    def state_dict(self) -> dict[str, Any]:
        """dims, network, optimiser and update count ({} before the first batch)."""
        if self.model is None:
            return {}
        return {"dims": list(self.dims), "model": self.model.state_dict(), "optim": self.optim.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Rebuild the network at the saved sizes and restore it and the optimiser."""
        if not state:
            return
        self._build(tuple(int(d) for d in state["dims"]))
        self.model.load_state_dict(state["model"])
        self.optim.load_state_dict(state["optim"])
        self.updates = int(state["updates"])

    def weights(self) -> dict[str, dict[str, np.ndarray]]:
        """{publish_kind: state_dict as float32 numpy} ({} before the first batch)."""
        if self.model is None:
            return {}
        return {self.config.publish_kind: {k: v.detach().cpu().numpy() for k, v in self.model.state_dict().items()}}


def chunk_reward_schema(config: ObjectiveConfig, state_dim: int, horizon: int, action_dim: int) -> dict[str, tuple[str, tuple[int, ...]]]:
    """The weights schema a robot consumer must declare to accept ChunkRewardObjective's weights."""
    model = mlp(state_dim + horizon * action_dim, config.hidden, config.layers, 1)
    return {k: (str(v.detach().numpy().dtype), tuple(v.shape)) for k, v in model.state_dict().items()}


OBJECTIVES = ("chunk_reward", "critic", "residual", "edit")


def make_objective(config: ObjectiveConfig, device: str = "cpu", distributed: bool = False) -> Objective:
    """The objective named by ``config.type``."""
    if config.type == "chunk_reward":
        return ChunkRewardObjective(config, device, distributed)
    from tandem.value.learning import LearningObjective, ObjectiveSpec

    spec = ObjectiveSpec(type=config.type, critic=dict(config.critic), head=dict(config.head),
                         critic_objective=dict(config.critic_objective), head_objective=dict(config.head_objective))
    return LearningObjective(spec, device, distributed)
