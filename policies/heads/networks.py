"""Heads on top of a base chunk policy: the ResFiT residual and the EXPO edit.

Both are small MLPs trained by the learner (``tandem.value.objectives``) and run on the robot inside
the control loop. Each has a torch path (training, batched) and a numpy path (the robot: one state,
one H-tick base window, no autograd, a few tens of microseconds). Both satisfy the controller's
``Head`` protocol: ``correction(observation, features, base[H, A]) -> float32[H, A]``, called at chunk
boundaries, added to the base window tick by tick.

- :class:`ResidualHead`: per-tick correction a_k = a_base_k + alpha * tanh(mlp(s, f, a_base_k, onehot(k))),
  last layer zero-initialised, so a new head is the identity.
- :class:`EditHead`: a tanh-Gaussian edit of the whole flattened base chunk, a = a_base + beta * eps,
  eps = tanh(u), u ~ N(mu(s, f, a_base), sigma(s, f, a_base)^2); at a boundary the robot builds the
  candidates {a_base} + N edits and executes the one a selector (the critic's pessimistic argmax,
  ``tandem.policies.heads.select.make_selector``) picks. Mean layer zero-initialised (zero-mean edits).

Weights travel on the weights link as ``weights() -> {name: float32 array}``; ``schema()`` gives their
names/dtypes/shapes and the architecture, ``load_weights(arrays, version)`` validates and installs them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from tandem.core.errors import ConfigError
from tandem.core.validate import in_range, non_negative, positive
from tandem.hardware.features import STATE_KEY
from tandem.policies.heads.config import check_dims
from tandem.protocol.messages import check_arrays

_LN_EPS = 1e-5


def _validate_dims(cfg: ResidualHeadConfig | EditHeadConfig) -> None:
    cfg.hidden = tuple(int(h) for h in cfg.hidden)
    check_dims(cfg)
    if not cfg.hidden or min(cfg.hidden) < 1:
        raise ConfigError("hidden", cfg.hidden, "a non-empty list of positive widths")


def build_mlp(in_dim: int, hidden: tuple[int, ...], out_dim: int, layer_norm: bool) -> nn.Sequential:
    """Linear -> [LayerNorm] -> ReLU for each hidden width, then a final Linear."""
    layers: list[nn.Module] = []
    d = in_dim
    for h in hidden:
        layers.append(nn.Linear(d, h))
        if layer_norm:
            layers.append(nn.LayerNorm(h))
        layers.append(nn.ReLU())
        d = h
    layers.append(nn.Linear(d, out_dim))
    return nn.Sequential(*layers)


def _seeded_init_zero_last(mlp: nn.Sequential, gen: torch.Generator) -> None:
    """Every Linear ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) drawn from ``gen`` (reproducible per seed, whatever
    the global torch seed), then the last layer zeroed so the head starts as the identity."""
    with torch.no_grad():
        for mod in mlp:
            if isinstance(mod, nn.Linear):
                bound = 1.0 / math.sqrt(mod.in_features)
                mod.weight.copy_((torch.rand(mod.weight.shape, generator=gen) * 2 - 1) * bound)
                mod.bias.copy_((torch.rand(mod.bias.shape, generator=gen) * 2 - 1) * bound)
        mlp[-1].weight.zero_()
        mlp[-1].bias.zero_()


class NumpyMLP:
    """A numpy copy of a ``build_mlp`` network for allocation-light CPU inference.

    The first layer's weight is kept split by input block (``splits``), so a caller can compute the
    part that is shared by all rows (state, features) once and add the per-row parts.
    """

    def __init__(self, mlp: nn.Sequential) -> None:
        self.layers: list[tuple[str, np.ndarray, np.ndarray]] = []
        for mod in mlp:
            if isinstance(mod, nn.Linear):
                self.layers.append(("linear", mod.weight.detach().cpu().numpy().T.copy(),
                                    mod.bias.detach().cpu().numpy().copy()))
            elif isinstance(mod, nn.LayerNorm):
                self.layers.append(("ln", mod.weight.detach().cpu().numpy().copy(),
                                    mod.bias.detach().cpu().numpy().copy()))
            elif isinstance(mod, nn.ReLU):
                self.layers.append(("relu", np.empty(0, np.float32), np.empty(0, np.float32)))

    def forward(self, first_pre: np.ndarray) -> np.ndarray:
        """Run every layer after the first linear one; ``first_pre`` is that layer's output (with bias)."""
        x = first_pre
        for kind, a, b in self.layers[1:]:
            if kind == "linear":
                x = x @ a + b
            elif kind == "ln":
                mu = x.mean(axis=-1, keepdims=True)
                xc = x - mu
                var = (xc * xc).mean(axis=-1, keepdims=True)
                x = xc / np.sqrt(var + _LN_EPS) * a + b
            else:
                x = np.maximum(x, 0.0)
        return x

    @property
    def first(self) -> tuple[np.ndarray, np.ndarray]:
        """(weight [in, out], bias [out]) of the first linear layer."""
        return self.layers[0][1], self.layers[0][2]


class _MLPWeights:
    """Weights-link plumbing shared by the heads: ``self.mlp`` is trained in torch, ``self._np`` is its
    numpy copy for the control loop, ``self.schema()`` describes ``weights()``."""

    def weights(self) -> dict[str, np.ndarray]:
        """Parameters as float32 numpy arrays (copies), by name."""
        return {n: p.detach().to("cpu", torch.float32).numpy().copy() for n, p in self.mlp.named_parameters()}

    def load_weights(self, arrays: dict[str, np.ndarray], version: int) -> None:
        """Validate and install ``weights()`` output. Raises ValueError on a schema mismatch or NaN."""
        check_arrays(self.schema()["params"], arrays)
        with torch.no_grad():
            for name, p in self.mlp.named_parameters():
                p.copy_(torch.from_numpy(np.asarray(arrays[name])))
        self.sync_numpy()
        self.version = int(version)

    def sync_numpy(self) -> None:
        """Refresh the numpy inference copy from the torch parameters (after training steps)."""
        self._np = NumpyMLP(self.mlp)


def _schema(kind: str, cfg: object, module: nn.Module, arch_keys: tuple[str, ...]) -> dict:
    arch = {k: v for k, v in asdict(cfg).items() if k in arch_keys}
    arch["hidden"] = list(arch["hidden"])
    params = {name: ["float32", list(p.shape)] for name, p in module.named_parameters()}
    return {"kind": kind, "arch": arch, "params": params}


def _state_features(cfg: ResidualHeadConfig | EditHeadConfig, observation: dict[str, np.ndarray],
                    features: np.ndarray) -> np.ndarray:
    """float32[S + F] from an observation dict and the base policy's features (empty -> zeros)."""
    state = np.asarray(observation[cfg.state_key], np.float32).reshape(-1)
    if state.size != cfg.state_dim:
        raise ValueError(f"state has {state.size} values, head expects state_dim={cfg.state_dim}")
    if cfg.feature_dim == 0:
        return state
    feats = np.asarray(features, np.float32).reshape(-1)
    if feats.size == 0:
        feats = np.zeros(cfg.feature_dim, np.float32)
    elif feats.size != cfg.feature_dim:
        raise ValueError(f"features have {feats.size} values, head expects feature_dim={cfg.feature_dim}")
    return np.concatenate([state, feats])


# ----------------------------------------------------------------------------------------------------
# residual head (ResFiT)
# ----------------------------------------------------------------------------------------------------


@dataclass
class ResidualHeadConfig:
    """The residual head.

    Attributes:
        state_dim, feature_dim, horizon, action_dim: S, F, H, A.
        hidden: hidden widths of the MLP.
        layer_norm: LayerNorm after each hidden linear layer.
        alpha: residual scale (action units): |correction| < alpha per dimension.
        tick_input: also feed a one-hot of the tick's position k in the chunk (the state is the
            chunk's first observation, so the position tells the head how stale it is).
        state_key: observation key of the state vector.
        seed: parameter init seed.
    """

    state_dim: int = 39
    feature_dim: int = 64
    horizon: int = 10
    action_dim: int = 4
    hidden: tuple[int, ...] = (256, 256)
    layer_norm: bool = True
    alpha: float = 0.1
    tick_input: bool = True
    state_key: str = STATE_KEY
    seed: int = 0

    def __post_init__(self) -> None:
        _validate_dims(self)
        positive("alpha", self.alpha)

    @property
    def input_dim(self) -> int:
        """S + F + A (+ H with tick_input)."""
        return self.state_dim + self.feature_dim + self.action_dim + (self.horizon if self.tick_input else 0)


class ResidualHead(_MLPWeights, nn.Module):
    """Per-tick residual correction of the base chunk; the identity at init.

    Args:
        config: the head config.
    """

    kind = "head"

    def __init__(self, config: ResidualHeadConfig) -> None:
        super().__init__()
        self.config = config
        gen = torch.Generator().manual_seed(config.seed)
        self.mlp = build_mlp(config.input_dim, config.hidden, config.action_dim, config.layer_norm)
        _seeded_init_zero_last(self.mlp, gen)
        self.version = 0
        self._np = NumpyMLP(self.mlp)
        self._tick = np.eye(config.horizon, dtype=np.float32)

    # -- torch (learner) ----------------------------------------------------------------------------

    def forward(self, state: torch.Tensor, features: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
        """The correction alpha * tanh(mlp(...)): float[B, H, A] for state [B, S], features [B, F], base [B, H, A]."""
        cfg = self.config
        b, h, _ = base.shape
        parts = [state.float().unsqueeze(1).expand(b, h, cfg.state_dim)]
        if cfg.feature_dim:
            parts.append(features.float().unsqueeze(1).expand(b, h, cfg.feature_dim))
        parts.append(base.float())
        if cfg.tick_input:
            parts.append(torch.eye(h, device=base.device).unsqueeze(0).expand(b, h, h))
        return cfg.alpha * torch.tanh(self.mlp(torch.cat(parts, dim=-1)))

    def act(self, state: torch.Tensor, features: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
        """base + correction: float[B, H, A]."""
        return base.float() + self.forward(state, features, base)

    # -- numpy (robot) ------------------------------------------------------------------------------

    def correction_np(self, state_features: np.ndarray, base: np.ndarray) -> np.ndarray:
        """float32[H', A] correction for one state: state_features float32[S + F], base float32[H', A], H' <= H."""
        cfg, net = self.config, self._np
        w0, b0 = net.first
        sf = cfg.state_dim + cfg.feature_dim
        base = np.asarray(base, np.float32)
        pre = state_features @ w0[:sf] + base @ w0[sf: sf + cfg.action_dim] + b0
        if cfg.tick_input:
            pre = pre + w0[sf + cfg.action_dim:][: base.shape[0]]
        return (cfg.alpha * np.tanh(net.forward(pre))).astype(np.float32, copy=False)

    def correction(self, observation: dict[str, np.ndarray], features: np.ndarray, base: np.ndarray) -> np.ndarray:
        """The controller's Head protocol: float32[H, A] to add to the base window ``base`` float32[H, A]."""
        return self.correction_np(_state_features(self.config, observation, features), base)

    # -- weights link -------------------------------------------------------------------------------

    def schema(self) -> dict:
        """Names, dtypes, shapes of ``weights()`` and the architecture."""
        return _schema("residual", self.config, self.mlp,
                       ("state_dim", "feature_dim", "horizon", "action_dim", "hidden", "layer_norm", "alpha",
                        "tick_input"))



# ----------------------------------------------------------------------------------------------------
# edit head (EXPO)
# ----------------------------------------------------------------------------------------------------

Selector = Callable[[np.ndarray, np.ndarray, np.ndarray], int]
"""(state float32[S], features float32[F], candidates float32[N+1, H, A]) -> index of the chunk to run."""


@dataclass
class EditHeadConfig:
    """The edit head.

    Attributes:
        state_dim, feature_dim, horizon, action_dim: S, F, H, A.
        hidden, layer_norm: the MLP.
        beta: edit scale (action units): a = a_base + beta * eps, eps in (-1, 1)^(H*A). EXPO uses 0.05..0.2; at most 2.0
            (any action in [-1, 1] reachable from any base action).
        num_candidates: N edited chunks sampled at each chunk boundary. The candidate set, the same on the
            robot (acting) and the learner (the TD target's a'), is {base, mean edit, N sampled edits}.
        action_bound: candidates are clipped to [-action_bound, action_bound] per action dimension, as the
            robot's actions are (MetaWorld: 1.0), so the critic scores what would run; 0 disables.
        log_std_min, log_std_max: clamp of the Gaussian's log std (pre-tanh).
        init_log_std: the log std at init (the mean starts at 0).
        state_key: observation key of the state vector.
        seed: parameter init and sampling seed.
    """

    state_dim: int = 39
    feature_dim: int = 64
    horizon: int = 10
    action_dim: int = 4
    hidden: tuple[int, ...] = (256, 256)
    layer_norm: bool = True
    beta: float = 0.1
    num_candidates: int = 8
    action_bound: float = 0.0
    log_std_min: float = -5.0
    log_std_max: float = 1.0
    init_log_std: float = 0.0
    state_key: str = STATE_KEY
    seed: int = 0

    def __post_init__(self) -> None:
        _validate_dims(self)
        in_range("beta", self.beta, 1e-4, 2.0)
        non_negative("num_candidates", self.num_candidates)
        non_negative("action_bound", self.action_bound)
        if not self.log_std_min < self.log_std_max:
            raise ConfigError("log_std_max", self.log_std_max, f"must be > log_std_min ({self.log_std_min})")
        in_range("init_log_std", self.init_log_std, self.log_std_min, self.log_std_max)

    @property
    def chunk_dim(self) -> int:
        """D = H * A, the flattened chunk size."""
        return self.horizon * self.action_dim

    @property
    def input_dim(self) -> int:
        """S + F + D."""
        return self.state_dim + self.feature_dim + self.chunk_dim


def tanh_gaussian_log_prob(u: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """log density of eps = tanh(u), u ~ N(mean, exp(log_std)^2), summed over the last axis: float[...].

    log p(eps) = sum_d [log N(u_d; mean_d, std_d) - log(1 - tanh(u_d)^2)], with the stable form
    log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u)).
    """
    z = (u - mean) * torch.exp(-log_std)
    log_n = -0.5 * z * z - log_std - 0.5 * math.log(2 * math.pi)
    log_det = 2.0 * (math.log(2.0) - u - nn.functional.softplus(-2.0 * u))
    return (log_n - log_det).sum(dim=-1)


class EditHead(_MLPWeights, nn.Module):
    """EXPO edit policy pi_e(eps | s, f, a_base) over the flattened base chunk.

    Args:
        config: the head config.
    """

    kind = "head"

    def __init__(self, config: EditHeadConfig) -> None:
        super().__init__()
        self.config = config
        gen = torch.Generator().manual_seed(config.seed)
        d = config.chunk_dim
        self.mlp = build_mlp(config.input_dim, config.hidden, 2 * d, config.layer_norm)
        _seeded_init_zero_last(self.mlp, gen)
        with torch.no_grad():
            self.mlp[-1].bias[d:] = config.init_log_std
        self.version = 0
        self.selector: Selector | None = None
        self.use_mean = False  # run base + mean edit instead of the critic's choice
        self.last_choice: int | None = None  # 0 base, 1 mean edit, 2.. sampled edits
        self.last_score: float | None = None
        self.rng = np.random.default_rng(config.seed)
        self._np = NumpyMLP(self.mlp)

    # -- torch (learner) ----------------------------------------------------------------------------

    def dist_params(self, state: torch.Tensor, features: torch.Tensor,
                    base: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, log_std), each float[B, D], for state [B, S], features [B, F], base [B, H, A]."""
        parts = [state.float()]
        if self.config.feature_dim:
            parts.append(features.float())
        parts.append(base.float().flatten(-2))
        out = self.mlp(torch.cat(parts, dim=-1))
        mean, log_std = out.chunk(2, dim=-1)
        return mean, log_std.clamp(self.config.log_std_min, self.config.log_std_max)

    def sample(self, state: torch.Tensor, features: torch.Tensor, base: torch.Tensor, n: int,
               generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """n reparameterised edits per state.

        Returns:
            (eps float[B, n, H, A] in (-1, 1), log_prob float[B, n]: log pi_e(eps) in edit space; the
            density of the edited chunk is log_prob - D * log(beta)).
        """
        mean, log_std = self.dist_params(state, features, base)
        b, d = mean.shape
        if generator is None:
            noise = torch.randn(b, n, d, device=mean.device)
        else:
            noise = torch.randn(b, n, d, generator=generator, device=generator.device).to(mean.device)
        u = mean.unsqueeze(1) + torch.exp(log_std).unsqueeze(1) * noise
        log_prob = tanh_gaussian_log_prob(u, mean.unsqueeze(1), log_std.unsqueeze(1))
        eps = torch.tanh(u).reshape(b, n, *base.shape[1:])
        return eps, log_prob

    def edit(self, base: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """base + beta * eps, broadcasting base [B, H, A] over eps [B, n, H, A] (or eps [B, H, A])."""
        if eps.dim() == base.dim() + 1:
            base = base.unsqueeze(1)
        return base.float() + self.config.beta * eps

    def clip(self, chunk: torch.Tensor) -> torch.Tensor:
        """Candidates clipped to [-action_bound, action_bound] (unchanged when action_bound is 0)."""
        bound = self.config.action_bound
        return chunk.clamp(-bound, bound) if bound > 0 else chunk

    def mean_chunk(self, state: torch.Tensor, features: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
        """float[B, H, A]: base + beta * tanh(mean), the chunk a robot with ``select: mean`` executes."""
        mean, _ = self.dist_params(state, features, base)
        return self.clip(self.edit(base, torch.tanh(mean).reshape(base.shape)))

    def candidates(self, state: torch.Tensor, features: torch.Tensor, base: torch.Tensor, n: int | None = None,
                   generator: torch.Generator | None = None, noise: torch.Tensor | None = None) -> torch.Tensor:
        """float[B, n + 2, H, A]: the base chunk (index 0), the mean edit (1), then n sampled edits (n defaults
        to num_candidates), clipped (:meth:`clip`): the set the robot's :meth:`propose_np` builds.

        ``noise`` (float[B, n, D] standard normal draws) replaces the sampling, so the robot's and the learner's
        sets can be compared on the same draws.
        """
        n = self.config.num_candidates if n is None else n
        mean, log_std = self.dist_params(state, features, base)
        if noise is None:
            noise = torch.randn(mean.shape[0], n, mean.shape[1], generator=generator,
                                device=generator.device if generator is not None else mean.device).to(mean.device)
        eps = torch.tanh(mean.unsqueeze(1) + torch.exp(log_std).unsqueeze(1) * noise).reshape(-1, n, *base.shape[1:])
        mean_edit = self.edit(base, torch.tanh(mean).reshape(base.shape)).unsqueeze(1)
        return self.clip(torch.cat([base.float().unsqueeze(1), mean_edit, self.edit(base, eps)], dim=1))

    # -- numpy (robot) ------------------------------------------------------------------------------

    def propose_np(self, state_features: np.ndarray, base: np.ndarray, n: int | None = None,
                   noise: np.ndarray | None = None) -> np.ndarray:
        """float32[n + 2, H, A]: for one state, the learner's :meth:`candidates` set (base, mean edit, n
        sampled edits, clipped), sampled with ``self.rng`` unless ``noise`` (float[n, D]) is given."""
        cfg = self.config
        n = cfg.num_candidates if n is None else n
        base = np.asarray(base, np.float32)
        mean, log_std = self.dist_np(state_features, base)
        if noise is None:
            noise = self.rng.standard_normal((n, cfg.chunk_dim), dtype=np.float32)
        flat = base.reshape(1, -1)
        cands = np.concatenate([flat, flat + cfg.beta * np.tanh(mean)[None], flat + cfg.beta * np.tanh(mean + np.exp(log_std) * noise)])
        if cfg.action_bound > 0:
            cands = np.clip(cands, -cfg.action_bound, cfg.action_bound)
        return cands.reshape(n + 2, *base.shape).astype(np.float32, copy=False)

    def dist_np(self, state_features: np.ndarray, base: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mean, log_std), each float32[D], of the pre-tanh edit distribution at one state."""
        cfg = self.config
        w0, b0 = self._np.first
        out = self._np.forward(np.concatenate([state_features, np.asarray(base, np.float32).reshape(-1)]) @ w0 + b0)
        d = cfg.chunk_dim
        return out[:d], np.clip(out[d:], cfg.log_std_min, cfg.log_std_max)

    def mean_edit_np(self, state_features: np.ndarray, base: np.ndarray) -> np.ndarray:
        """float32[H, A]: base + beta * tanh(mean), the edit policy's most likely chunk."""
        mean, _ = self.dist_np(state_features, base)
        base = np.asarray(base, np.float32)
        chunk = base + self.config.beta * np.tanh(mean).reshape(base.shape)
        bound = self.config.action_bound
        return (np.clip(chunk, -bound, bound) if bound > 0 else chunk).astype(np.float32, copy=False)

    def set_selector(self, selector: Selector | None) -> None:
        """Install the candidate selector (the critic's pessimistic argmax); None runs the base chunk."""
        self.selector = selector

    def correction(self, observation: dict[str, np.ndarray], features: np.ndarray, base: np.ndarray) -> np.ndarray:
        """The controller's Head protocol: the selected candidate minus the base window, float32[H, A].

        With ``use_mean`` the mean edit runs (no critic). Otherwise the critic scores {base, mean edit,
        N sampled edits} and the best runs (``last_score`` keeps its score); without a selector (no
        critic on the robot yet) the base chunk is kept (zeros).
        """
        base = np.asarray(base, np.float32)
        if self.use_mean:
            if self.version == 0:
                return np.zeros_like(base)
            return self.mean_edit_np(_state_features(self.config, observation, features), base) - base
        if self.selector is None:
            return np.zeros_like(base)
        sf = _state_features(self.config, observation, features)
        cands = self.propose_np(sf, base)
        s = sf[: self.config.state_dim]
        f = sf[self.config.state_dim:]
        index = int(self.selector(s, f, cands))
        self.last_choice = index
        self.last_score = getattr(self.selector, "last_score", None)
        return cands[index] - base

    # -- weights link -------------------------------------------------------------------------------

    def schema(self) -> dict:
        """Names, dtypes, shapes of ``weights()`` and the architecture."""
        return _schema("edit", self.config, self.mlp,
                       ("state_dim", "feature_dim", "horizon", "action_dim", "hidden", "layer_norm", "beta",
                        "num_candidates", "log_std_min", "log_std_max"))

