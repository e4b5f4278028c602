"""Training objectives: the chunked critic, the residual head (ResFiT/TD3) and the edit head (EXPO/SAC).

Each objective follows ``tandem.value.objective.Objective``: a ``name``, ``update(batch) -> dict[str, float]``
(one gradient step on everything it owns), ``state_dict()`` / ``load_state_dict()`` (resume, optimiser
and RNG included) and ``weights() -> {kind: {name: float32 array}}`` (what the robot needs: "critic",
"head" or both). With ``distributed=True`` (several learner ranks, ``torch.distributed`` initialised)
gradients are averaged over ranks with all-reduce before clipping, so every rank stays identical.

Batch keys (numpy arrays or tensors; B batch, H chunk ticks, A action size, S state size, F features):

    state          float[B, S]     state at the chunk's first tick
    features       float[B, F]     base-policy embedding there (float16 accepted)
    base           float[B, H, A]  the base proposal for the chunk
    executed       float[B, H, A]  what ran (human actions included); the critic's action
    reward         float[B, H]     per-tick reward
    valid          bool[B, H]      prefix of ticks inside the episode
    done           bool[B]         true terminal in this chunk (no bootstrap)
    truncated      bool[B]         time limit / stop in this chunk (bootstrap when a state exists)
    takeover_start bool[B, H]      first tick of each human takeover (for the RLIF option)
    intervention   bool[B, H]      ticks a human drove (the edit head's ``awr_ticks: human``)
    next_state     float[B, S]     s_{t+h}: the next record's state (or a truncation state)
    next_features  float[B, F]
    next_base      float[B, H, A]  the base proposal at s_{t+h}
    next_valid     bool[B]         a next record exists (false when the episode ended in this chunk)

Extra keys are ignored. The TD target and its conventions are in ``tandem.value.targets``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from tandem.errors import ConfigError
from tandem.policies.heads import EditHead, EditHeadConfig, ResidualHead, ResidualHeadConfig
from tandem.validate import non_negative, one_of, positive
from tandem.value.advantages import advantage, awr_weights, weighted_bc_loss
from tandem.value.critic import ChunkedCritic, CriticConfig
from tandem.value.targets import NextAction, best_of_candidates, critic_target

BATCH_KEYS = ("state", "features", "base", "executed", "reward", "valid", "done", "truncated", "failed",
              "takeover_start", "intervention", "next_state", "next_features", "next_base", "next_valid")
_BOOL_KEYS = frozenset({"valid", "done", "truncated", "failed", "takeover_start", "intervention", "next_valid"})
_DEFAULT_FALSE = {"takeover_start": "valid", "intervention": "valid", "truncated": "done",
                  "failed": "done"}  # missing key -> all false


def to_tensors(batch: dict[str, Any], device: str | torch.device) -> dict[str, torch.Tensor]:
    """The BATCH_KEYS of ``batch`` as tensors on ``device``: floats as float32, flags as bool.

    Raises:
        KeyError: a required key is missing (``takeover_start``, ``intervention``, ``truncated`` and
            ``failed`` default to all false).
    """
    out: dict[str, torch.Tensor] = {}
    for key in BATCH_KEYS:
        if key not in batch:
            if key in _DEFAULT_FALSE:
                out[key] = torch.zeros_like(out[_DEFAULT_FALSE[key]])
                continue
            raise KeyError(f"batch has no {key!r}; expected keys {BATCH_KEYS}")
        v = batch[key]
        t = v if isinstance(v, torch.Tensor) else torch.from_numpy(np.asarray(v))
        t = t.to(device, torch.bool) if key in _BOOL_KEYS else t.to(device, torch.float32)
        out[key] = t
    return out


def average_gradients(params: list[torch.nn.Parameter]) -> None:
    """All-reduce (mean) the gradients of ``params`` over the ranks of the default process group."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    world = dist.get_world_size()
    grads = [p.grad for p in params if p.grad is not None]
    if world == 1 or not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for g in grads:
        g.copy_(flat[offset: offset + g.numel()].view_as(g))
        offset += g.numel()


def _grad_step(opt: torch.optim.Optimizer, loss: torch.Tensor, params: list[torch.nn.Parameter],
               clip: float, distributed: bool = False) -> float:
    """zero_grad, backward, [all-reduce], optional clip, step; returns the pre-clip global grad norm."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if distributed:
        average_gradients(params)
    if clip > 0:
        norm = torch.nn.utils.clip_grad_norm_(params, clip)
    else:
        grads = [p.grad.norm() for p in params if p.grad is not None]
        norm = torch.stack(grads).norm() if grads else torch.zeros(())
    opt.step()
    return float(norm)


# ----------------------------------------------------------------------------------------------------
# critic
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
    """

    reward_mode: str = "task"
    reward_scale: float = 1.0
    rlif_penalty: float = 0.0
    warmup_steps: int = 0
    seed: int = 0
    failure_value: float | None = None

    def __post_init__(self) -> None:
        one_of("reward_mode", self.reward_mode, ("task", "time"))
        if self.failure_value is not None and not math.isfinite(self.failure_value):
            raise ConfigError("failure_value", self.failure_value, "a finite number, or null for the reward mode's default")
        non_negative("rlif_penalty", self.rlif_penalty)
        non_negative("warmup_steps", self.warmup_steps)


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
        self.failure_value = self._failure_value()

    @property
    def device(self) -> torch.device:
        """The critic's device."""
        return next(self.critic.online.parameters()).device

    def _failure_value(self) -> float:
        """The value after a failed terminal (``config.failure_value``, or its reward-mode default).

        Raises:
            ConfigError: the time reward with gamma = 1 and no explicit value (it would be infinite).
        """
        cfg = self.config
        if cfg.failure_value is not None:
            return float(cfg.failure_value)
        if cfg.reward_mode == "time":
            gamma = self.critic.config.gamma
            if gamma >= 1.0:
                raise ConfigError("failure_value", None, "with reward_mode=time and gamma=1 a failure has no finite "
                                  "value: set critic_objective.failure_value (e.g. -reward_scale * the tick limit)")
            return -cfg.reward_scale / (1.0 - gamma)
        return 0.0

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
        norm = _grad_step(self.optimizer, loss, list(critic.online.parameters()), critic.config.grad_clip,
                          self.distributed)
        critic.polyak_update()
        self.steps += 1
        wsum = float(w.sum().clamp_min(1e-6))
        return {
            "critic/loss": float(loss.detach()),
            "critic/td_abs": float(((q.mean(0) - y).abs() * w).sum()) / wsum,
            "critic/q_mean": float((q.mean(0) * w).sum()) / wsum,
            "critic/q_ens_std": float(q.std(0, correction=0).mean()) if q.shape[0] > 1 else 0.0,
            "critic/target_mean": float((y * w).sum()) / wsum,
            "critic/weight_frac": float(w.mean()),
            "critic/grad_norm": norm,
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


# ----------------------------------------------------------------------------------------------------
# residual head
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


def _actor_q(critic: ChunkedCritic, mode: str, state: torch.Tensor, features: torch.Tensor, chunk: torch.Tensor,
             generator: torch.Generator) -> torch.Tensor:
    q = critic.q_values(state, features, chunk)
    return critic.aggregate(q, generator) if mode == "aggregate" else q.mean(0)


class _HeadObjective:
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


class ResidualHeadObjective(_HeadObjective):
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
            q = _actor_q(co.critic, self.config.actor_q, b["state"], b["features"], b["base"] + correction,
                         co.generator)
            loss = -q.mean()
            norm = _grad_step(self.optimizer, loss, list(self.head.parameters()), self.config.grad_clip,
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


# ----------------------------------------------------------------------------------------------------
# edit head
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


class EditHeadObjective(_HeadObjective):
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
                q = _actor_q(critic, self.config.actor_q, b["state"], b["features"], head.edit(b["base"], eps),
                             co.generator)
            alpha = self.log_alpha.exp().detach()
            loss = (alpha * (log_prob - self.log_beta_term) - q_weight * q).mean()
            awr = self._awr_terms(b) if self.config.awr_weight > 0 else {}
            if awr:
                loss = loss + self.config.awr_weight * awr.pop("loss")
            norm = _grad_step(self.optimizer, loss, list(head.parameters()), self.config.grad_clip, co.distributed)
        alpha_loss = -(self.log_alpha * (log_prob.detach() + self.target_entropy)).mean()
        _grad_step(self.alpha_optimizer, alpha_loss, [self.log_alpha], 0.0, co.distributed)
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


# ----------------------------------------------------------------------------------------------------
# factory
# ----------------------------------------------------------------------------------------------------

LEARNING_OBJECTIVES = ("critic", "residual", "edit")


def make_learning_objective(kind: str, critic: CriticConfig, head: ResidualHeadConfig | EditHeadConfig | None = None,
                            critic_objective: CriticObjectiveConfig | None = None,
                            head_objective: ResidualObjectiveConfig | EditObjectiveConfig | None = None,
                            device: str = "cpu", distributed: bool = False
                            ) -> CriticObjective | ResidualHeadObjective | EditHeadObjective:
    """Build one of LEARNING_OBJECTIVES ("critic", "residual", "edit") on ``device``.

    Args:
        kind: which objective.
        critic: the critic's config (its ``device`` is replaced by ``device``).
        head: the head's config (required for "residual" and "edit"; dims must match the critic's).
        critic_objective, head_objective: objective settings (defaults when None).
        device: torch device.
        distributed: average gradients over torch.distributed ranks.
    """
    one_of("kind", kind, LEARNING_OBJECTIVES)
    co = CriticObjective(ChunkedCritic(replace(critic, device=device)), critic_objective, distributed=distributed)
    if kind == "critic":
        return co
    if head is None:
        raise ConfigError("head", None, f"a head config is required for the {kind!r} objective")
    for dim in ("state_dim", "feature_dim", "horizon", "action_dim"):
        if getattr(head, dim) != getattr(critic, dim):
            raise ConfigError(f"head.{dim}", getattr(head, dim), f"must equal critic.{dim}={getattr(critic, dim)}")
    if kind == "residual":
        if not isinstance(head, ResidualHeadConfig):
            raise ConfigError("head", type(head).__name__, "ResidualHeadConfig for the 'residual' objective")
        return ResidualHeadObjective(ResidualHead(head), co, head_objective)  # type: ignore[arg-type]
    if not isinstance(head, EditHeadConfig):
        raise ConfigError("head", type(head).__name__, "EditHeadConfig for the 'edit' objective")
    return EditHeadObjective(EditHead(head), co, head_objective)  # type: ignore[arg-type]
