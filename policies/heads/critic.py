"""The chunked critic: an ensemble Q_j(s, a_{t:t+H}) over [state, features, flattened chunk].

The M members are one vectorised MLP (weights stacked as [M, in, out], one batched matmul per layer), so
an ensemble of 2 or 10 costs about one network's worth of Python overhead on a CPU. A Polyak-averaged
target copy gives Qbar. Two heads: ``mse`` (one scalar per member) or ``hl_gauss`` (B logits per member
over a value support; the value is their expectation, see ``tandem.policies.heads.hl_gauss``).

Aggregation (pessimism), applied over the member axis of ``q_values`` output [M, ...]:

- ``min_pair``: min over a random subset of ``pair_size`` members (REDQ style, one subset per call;
  with M == pair_size this is the plain min),
- ``min``: min over all members,
- ``lcb``: mean - kappa * std (population std, so with M == 2 and kappa == 1 it equals the min),
- ``mean``: the ensemble mean (not pessimistic; for comparisons).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from tandem.core.errors import ConfigError
from tandem.core.validate import in_range, non_negative, one_of, positive
from tandem.policies.heads.hl_gauss import HLGauss, cross_entropy
from tandem.protocol.messages import check_arrays

AGGREGATIONS = ("min_pair", "min", "lcb", "mean")
LOSSES = ("mse", "hl_gauss")


@dataclass
class CriticConfig:
    """The chunked critic.

    Attributes:
        state_dim: S, proprio/sim state size.
        feature_dim: F, base-policy embedding size (0 allowed).
        horizon: H, chunk length in ticks.
        action_dim: A.
        ensemble_size: M members (2 by default; 10 for REDQ-style min over a random pair).
        hidden: hidden layer widths of each member's MLP.
        layer_norm: LayerNorm (with a per-member affine) after each hidden linear layer.
        loss: "mse" or "hl_gauss".
        bins, v_min, v_max, sigma_ratio: HL-Gauss support (used when loss == "hl_gauss"); the support must
            cover the return range (targets are clamped into it).
        aggregation: "min_pair", "min", "lcb" or "mean" (see module docstring).
        pair_size: members in the random subset of "min_pair".
        kappa: LCB multiplier of the ensemble std.
        gamma: per-tick discount.
        partial_horizon: decoupled Q-chunking (DQC): 0 off; h in [1, H) makes the critic the robot acts with
            (and publishes) a partial critic Q^P over a chunk's first h ticks, which the learner distils from
            a critic over the full H ticks (``tandem.value.objectives.dqc``). Run it with
            ``session.head_stride = session.record_stride = h``: the robot picks a chunk every h ticks.
        tau: Polyak rate of the target network (target <- (1 - tau) target + tau online).
        lr, weight_decay: AdamW settings of the critic optimiser.
        grad_clip: max global gradient norm (0 disables).
        seed: seed of the parameter init and of the aggregation's random subsets.
        device: torch device.
    """

    state_dim: int = 39
    feature_dim: int = 64
    horizon: int = 10
    action_dim: int = 4
    ensemble_size: int = 2
    hidden: tuple[int, ...] = (256, 256)
    layer_norm: bool = True
    loss: str = "mse"
    bins: int = 51
    v_min: float = -10.0
    v_max: float = 10.0
    sigma_ratio: float = 0.75
    aggregation: str = "min_pair"
    pair_size: int = 2
    kappa: float = 1.0
    gamma: float = 0.99
    partial_horizon: int = 0
    tau: float = 0.005
    lr: float = 3e-4
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        self.hidden = tuple(int(h) for h in self.hidden)
        positive("state_dim", self.state_dim)
        non_negative("feature_dim", self.feature_dim)
        positive("horizon", self.horizon)
        positive("action_dim", self.action_dim)
        positive("ensemble_size", self.ensemble_size)
        if not self.hidden or min(self.hidden) < 1:
            raise ConfigError("hidden", self.hidden, "a non-empty list of positive widths")
        one_of("loss", self.loss, LOSSES)
        one_of("aggregation", self.aggregation, AGGREGATIONS)
        if self.loss == "hl_gauss":
            if self.bins < 2:
                raise ConfigError("bins", self.bins, "must be >= 2")
            if not self.v_max > self.v_min:
                raise ConfigError("v_max", self.v_max, f"must be > v_min ({self.v_min})")
            positive("sigma_ratio", self.sigma_ratio)
        if not 1 <= self.pair_size <= self.ensemble_size:
            raise ConfigError("pair_size", self.pair_size, f"must be in [1, ensemble_size={self.ensemble_size}]")
        if self.aggregation == "lcb" and self.ensemble_size < 2:
            raise ConfigError("aggregation", self.aggregation, "lcb needs ensemble_size >= 2")
        non_negative("kappa", self.kappa)
        in_range("gamma", self.gamma, 0.0, 1.0)
        non_negative("partial_horizon", self.partial_horizon)
        in_range("tau", self.tau, 0.0, 1.0)
        positive("lr", self.lr)
        non_negative("weight_decay", self.weight_decay)
        non_negative("grad_clip", self.grad_clip)

    @property
    def input_dim(self) -> int:
        """S + F + H * A."""
        return self.state_dim + self.feature_dim + self.horizon * self.action_dim

    @property
    def out_dim(self) -> int:
        """1 for mse, ``bins`` for hl_gauss."""
        return self.bins if self.loss == "hl_gauss" else 1


class EnsembleMLP(nn.Module):
    """M independent MLPs evaluated together: x [B, in] or [M, B, in] -> [M, B, out].

    Each layer holds weight [M, in, out] and bias [M, 1, out]; hidden layers are
    linear -> LayerNorm (per-member affine) -> ReLU. Init matches nn.Linear (uniform +-1/sqrt(in)).
    """

    def __init__(self, members: int, in_dim: int, hidden: tuple[int, ...], out_dim: int, layer_norm: bool,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.members, self.layer_norm = members, layer_norm
        dims = [in_dim, *hidden, out_dim]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        self.ln_weights = nn.ParameterList()
        self.ln_biases = nn.ParameterList()
        for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
            bound = 1.0 / math.sqrt(d_in)
            w = (torch.rand(members, d_in, d_out, generator=generator) * 2 - 1) * bound
            b = (torch.rand(members, 1, d_out, generator=generator) * 2 - 1) * bound
            self.weights.append(nn.Parameter(w))
            self.biases.append(nn.Parameter(b))
            if layer_norm and i < len(dims) - 2:
                self.ln_weights.append(nn.Parameter(torch.ones(members, 1, d_out)))
                self.ln_biases.append(nn.Parameter(torch.zeros(members, 1, d_out)))

    def forward(self, x: torch.Tensor, members: torch.Tensor | None = None) -> torch.Tensor:
        """x float[B, in] (shared by all members) or float[M', B, in] -> float[M', B, out].

        ``members`` (long[M']) evaluates only those members (M' = len(members); default all M): the
        pessimistic "min of a random pair" needs two of ten, so scoring candidates costs a fifth.
        """
        n = len(self.weights)

        def pick(p: torch.Tensor) -> torch.Tensor:
            return p if members is None else p.index_select(0, members)

        for i in range(n):
            x = torch.matmul(x, pick(self.weights[i])) + pick(self.biases[i])
            if i < n - 1:
                if self.layer_norm:
                    x = nn.functional.layer_norm(x, x.shape[-1:]) * pick(self.ln_weights[i]) + pick(self.ln_biases[i])
                x = torch.relu(x)
        return x


class ChunkedCritic(nn.Module):
    """Ensemble chunk critic with a Polyak target copy.

    Args:
        config: the critic config.

    Attributes:
        online: the trained ensemble.
        target: its Polyak average (no gradients).
        hl: the HL-Gauss support (None for mse).
        version: weights version (set by ``load_weights``; bumped by the learner when it publishes).
    """

    def __init__(self, config: CriticConfig) -> None:
        super().__init__()
        self.config = config
        init_gen = torch.Generator().manual_seed(config.seed)
        self.online = EnsembleMLP(config.ensemble_size, config.input_dim, config.hidden, config.out_dim,
                                  config.layer_norm, init_gen)
        self.target = copy.deepcopy(self.online)
        self.target.requires_grad_(False)
        self.hl = (HLGauss(config.v_min, config.v_max, config.bins, config.sigma_ratio)
                   if config.loss == "hl_gauss" else None)
        self.generator = torch.Generator().manual_seed(config.seed + 1)
        self.version = 0
        self.to(config.device)

    def _apply(self, fn, recurse=True):  # noqa: ANN001, ANN202 - nn.Module hook: keep the HL-Gauss support on our device
        super()._apply(fn, recurse)
        if self.hl is not None:
            self.hl.edges, self.hl.centers = fn(self.hl.edges), fn(self.hl.centers)
        return self

    @property
    def device(self) -> torch.device:
        """Device of the online parameters."""
        return next(self.online.parameters()).device

    # -- evaluation ---------------------------------------------------------------------------------

    def _inputs(self, state: torch.Tensor, features: torch.Tensor, chunk: torch.Tensor) -> torch.Tensor:
        """[B, S], [B, F], [B, H', A] -> [B, S + F + H*A] (float32). A chunk longer than the critic's H
        (H' > H: a DQC partial critic scoring full-length candidates) is scored on its first H ticks."""
        parts = [state.float(), chunk[..., : self.config.horizon, :].float().flatten(-2)]
        if self.config.feature_dim:
            parts.insert(1, features.float())
        return torch.cat(parts, dim=-1)

    def q_outputs(self, state: torch.Tensor, features: torch.Tensor, chunk: torch.Tensor,
                  target: bool = False, members: torch.Tensor | None = None) -> torch.Tensor:
        """Raw member outputs: float[M, B, 1] (mse) or float[M, B, bins] logits (hl_gauss).

        Args:
            state: float[B, S]; features: float[B, F] (float16 accepted); chunk: float[B, H, A].
            target: use the target network.
            members: long[M'] evaluate only these members (the output's first axis is M').
        """
        net = self.target if target else self.online
        return net(self._inputs(state, features, chunk), members)

    def q_values(self, state: torch.Tensor, features: torch.Tensor, chunk: torch.Tensor,
                 target: bool = False, members: torch.Tensor | None = None) -> torch.Tensor:
        """Q_j(s, a) for every member: float[M, B], or float[M, B, N] when chunk is float[B, N, H, A].

        With N candidate chunks per state, the state and features are repeated for each candidate.
        ``members`` (long[M']) restricts the evaluation to those members (first axis M').
        """
        if chunk.dim() == 4:
            b, n = chunk.shape[:2]
            st = state.unsqueeze(1).expand(b, n, state.shape[-1]).reshape(b * n, -1)
            ft = features.unsqueeze(1).expand(b, n, features.shape[-1]).reshape(b * n, -1)
            return self.q_values(st, ft, chunk.reshape(b * n, *chunk.shape[2:]), target, members).reshape(-1, b, n)
        out = self.q_outputs(state, features, chunk, target, members)
        if self.hl is not None:
            return self.hl.value(out)
        return out.squeeze(-1)

    def aggregate(self, q: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Pessimistic aggregate over the member axis: float[M, ...] -> float[...] (see module docstring).

        Args:
            q: member values, member axis first.
            generator: CPU generator for the random subset of "min_pair" (default: the critic's own).
        """
        cfg = self.config
        if cfg.aggregation == "min_pair":
            idx = self.pair_members(generator)
            if idx is None:
                return q.min(dim=0).values
            return q.index_select(0, idx.to(q.device)).min(dim=0).values
        if cfg.aggregation == "min":
            return q.min(dim=0).values
        if cfg.aggregation == "lcb":
            return q.mean(dim=0) - cfg.kappa * q.std(dim=0, correction=0)
        return q.mean(dim=0)

    def pair_members(self, generator: torch.Generator | None = None) -> torch.Tensor | None:
        """The random subset of "min_pair": long[pair_size] member indices drawn with ``generator`` (default
        the critic's own), or None when the subset is every member (pair_size >= M: the plain min)."""
        cfg = self.config
        if cfg.pair_size >= cfg.ensemble_size:
            return None
        return torch.randperm(cfg.ensemble_size, generator=generator or self.generator)[: cfg.pair_size]

    def q_pess(self, state: torch.Tensor, features: torch.Tensor, chunk: torch.Tensor, target: bool = False,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """aggregate(q_values(...)): float[B] (or float[B, N] for chunk float[B, N, H, A]).

        With "min_pair" only the drawn subset's members are evaluated (the same draw and value as
        aggregating all members, at pair_size / M of the cost)."""
        if self.config.aggregation == "min_pair":
            idx = self.pair_members(generator)
            if idx is not None:
                return self.q_values(state, features, chunk, target, idx.to(self.device)).min(dim=0).values
        return self.aggregate(self.q_values(state, features, chunk, target), generator)

    # -- training -----------------------------------------------------------------------------------

    def td_loss(self, state: torch.Tensor, features: torch.Tensor, chunk: torch.Tensor, y: torch.Tensor,
                weight: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Critic loss of every member against one target, and the member values.

        loss = sum_j  sum_b w_b l(Q_j(s_b, a_b), y_b) / max(sum_b w_b, 1e-6), with l the squared error (mse)
        or the HL-Gauss cross-entropy.

        Args:
            state, features, chunk: as ``q_values`` ([B, S], [B, F], [B, H, A]); chunk is what was executed.
            y: float[B] targets (no gradient). weight: float[B] per-sample weights (default 1).

        Returns:
            (scalar loss, float[M, B] member values detached).
        """
        out = self.q_outputs(state, features, chunk)
        y = y.detach()
        if self.hl is not None:
            per = cross_entropy(out, self.hl.project(y).unsqueeze(0))  # [M, B]
            q = self.hl.value(out)
        else:
            q = out.squeeze(-1)
            per = (q - y) ** 2
        w = torch.ones_like(y) if weight is None else weight.to(y.dtype)
        loss = (per * w).sum(dim=1).sum() / w.sum().clamp_min(1e-6)
        return loss, q.detach()

    @torch.no_grad()
    def polyak_update(self, tau: float | None = None) -> None:
        """target <- (1 - tau) * target + tau * online (tau defaults to config.tau)."""
        tau = self.config.tau if tau is None else tau
        for t, o in zip(self.target.parameters(), self.online.parameters(), strict=True):
            t.lerp_(o, tau)

    @torch.no_grad()
    def hard_update(self) -> None:
        """target <- online."""
        self.polyak_update(1.0)

    @contextmanager
    def frozen(self) -> Iterator[None]:
        """Within the block the online parameters get no gradients (for actor losses through the critic)."""
        params = list(self.online.parameters())
        flags = [p.requires_grad for p in params]
        for p in params:
            p.requires_grad_(False)
        try:
            yield
        finally:
            for p, f in zip(params, flags, strict=True):
                p.requires_grad_(f)

    # -- weights link -------------------------------------------------------------------------------

    def schema(self) -> dict:
        """Names, dtypes and shapes of ``weights()``, plus the architecture they belong to."""
        arch = {k: v for k, v in asdict(self.config).items()
                if k in ("state_dim", "feature_dim", "horizon", "action_dim", "ensemble_size", "hidden",
                         "layer_norm", "loss", "bins", "v_min", "v_max", "aggregation", "pair_size", "kappa")}
        arch["hidden"] = list(arch["hidden"])
        params = {name: ["float32", list(p.shape)] for name, p in self.online.named_parameters()}
        return {"kind": "critic", "arch": arch, "params": params}

    def weights(self) -> dict[str, np.ndarray]:
        """The online ensemble's parameters as float32 numpy arrays (copies), by name."""
        return {name: p.detach().to("cpu", torch.float32).numpy().copy() for name, p in self.online.named_parameters()}

    def load_weights(self, arrays: dict[str, np.ndarray], version: int) -> None:
        """Load ``weights()`` output into the online (and target) network.

        Raises:
            ValueError: names, shapes or dtypes differ from ``schema()``, or a value is not finite.
        """
        check_arrays(self.schema()["params"], arrays)
        with torch.no_grad():
            for name, p in self.online.named_parameters():
                p.copy_(torch.from_numpy(np.asarray(arrays[name])))
        self.hard_update()
        self.version = int(version)

    # -- robot-side scoring -------------------------------------------------------------------------

    @torch.inference_mode()
    def score(self, state: np.ndarray, features: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """Pessimistic Q of N candidate chunks at one state, on the CPU: float32[N].

        Args:
            state: float32[S]; features: float[F]; candidates: float32[N, H, A].
        """
        d = self.device
        s = torch.from_numpy(np.asarray(state, np.float32)).unsqueeze(0).to(d)
        f = torch.from_numpy(np.asarray(features, np.float32)).unsqueeze(0).to(d)
        c = torch.from_numpy(np.asarray(candidates, np.float32)).unsqueeze(0).to(d)
        return self.q_pess(s, f, c)[0].cpu().numpy()

