"""``chunk_reward``: a small supervised objective that exercises the learner end to end.

It is ``tandem learn``'s default objective (configs/learner/default.yaml), so the learner's loop, DDP,
checkpoints and weight publication run on something that learns without a head or critic configured.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:
    from tandem.value.objectives.base import ObjectiveConfig


def mlp(in_dim: int, hidden: int, layers: int, out_dim: int) -> Any:
    """A ReLU MLP."""
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
        state_dim, horizon, action_dim = dims
        self.dims = dims
        self.model = mlp(state_dim + horizon * action_dim, self.config.hidden, self.config.layers, 1).to(self.device)
        self.ddp = self.model
        if self.distributed:
            ids = [torch.device(self.device).index] if str(self.device).startswith("cuda") else None
            self.ddp = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        self.optim = torch.optim.Adam(self.model.parameters(), lr=self.config.lr)

    def update(self, batch: dict[str, np.ndarray]) -> dict[str, float]:
        """One Adam step on the MSE between predicted and observed chunk reward."""
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
        return {self.config.publish_kind: {k: v.detach().cpu().numpy().copy() for k, v in self.model.state_dict().items()}}


def chunk_reward_schema(config: ObjectiveConfig, state_dim: int, horizon: int, action_dim: int) -> dict[str, tuple[str, tuple[int, ...]]]:
    """The weights schema a robot consumer must declare to accept ChunkRewardObjective's weights."""
    model = mlp(state_dim + horizon * action_dim, config.hidden, config.layers, 1)
    return {k: (str(v.detach().numpy().dtype), tuple(v.shape)) for k, v in model.state_dict().items()}
