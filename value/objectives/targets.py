"""The chunked TD target (ALOE, Q-chunking) and the best-of-candidates operator (EXPO), as pure functions.

Shapes: B batch, H chunk length (ticks), A action size, N candidates, M ensemble members.

Convention (one record = one chunk starting at tick t; ``valid`` is a prefix of H booleans, h = its count):

    r'_k = reward_scale * r_{t+k} - rlif_penalty * takeover_start_{t+k}           (RLIF option, default off)
    R    = sum_{k<H} gamma^k r'_k valid_k
    y    = R + gamma^h * bootstrap * agg_j Qbar_j(s_{t+h}, a')        with a' = pi(s_{t+h})

``bootstrap`` is 1 when the chunk did not end in a terminal (``done`` false) and a bootstrap state exists
(``next_valid``: the episode's record starting h ticks later, whose ``state``/``features``/``base`` are
s_{t+h} and the base proposal there; the replay pairs them, ``tandem.value.replay``). Then:

- a full chunk (h == H) followed by its successor bootstraps with gamma^H;
- a terminal (``done``), whether the chunk is full or partial, never bootstraps: y = R, plus
  gamma^h * failure_value when the terminal is a failure (``failed``: an operator's failure mark or a
  terminal before success). failure_value is 0 by default; with a time reward (-1 per tick until
  success) the objective sets it to the value of never succeeding, -reward_scale / (1 - gamma), since
  otherwise ending an episode by failing would look better than working on towards success;
- a time limit or stop (``truncated``, not ``done``) is not a terminal. It bootstraps with gamma^h from
  the truncation state s_{t+h}, the observation after the last valid tick: the robot sends it after a
  truncated episode as a *final observation* record (no valid tick, ``start_tick`` = t + h, ``base`` the
  base plan's window there; ``tandem.protocol.chunk_record``), and the replay pairs the episode's last
  record(s) with it (``next_valid`` true, ``next_state`` = its state, ``next_base`` = its base) and never
  samples it. Where no final observation exists (a recorded dataset replayed, a robot that sent none),
  ``next_valid`` stays false: such a sample has no admissible target and gets loss weight 0 (it is
  excluded, not treated as a terminal, which would bias the value down);
- likewise any non-terminal sample without a successor (a stream cut mid-episode) gets weight 0.

a' is the acting policy at s_{t+h}, supplied by the caller as ``next_action(next_state, next_features,
next_base) -> [B, H, A]``: the next base proposal itself (no head), base + residual head, or the
EXPO best of {base} + N edits under the *target* critic (:func:`best_of_candidates`, the same operator
the robot runs with the online critic through ``tandem.policies.heads.select.make_selector``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from tandem.policies.heads.critic import ChunkedCritic
from tandem.policies.heads.select import best_of_candidates, select_best  # noqa: F401  (the one candidate operator)

NextAction = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""(next_state [B, S], next_features [B, F], next_base [B, H, A]) -> a' [B, H, A]."""


def shaped_reward(reward: torch.Tensor, takeover_start: torch.Tensor | None = None, reward_scale: float = 1.0,
                  rlif_penalty: float = 0.0) -> torch.Tensor:
    """Per-tick learner reward float[B, H]: reward_scale * reward - rlif_penalty * takeover_start.

    Args:
        reward: float[B, H] task reward as recorded.
        takeover_start: bool[B, H], the first tick of each human takeover (None: no takeovers).
        reward_scale: multiplier of the task reward (0 gives pure RLIF).
        rlif_penalty: size of the RLIF penalty at each takeover onset (0 disables; 1 is RLIF's -1).
    """
    r = reward.float() * reward_scale
    if rlif_penalty and takeover_start is not None:
        r = r - rlif_penalty * takeover_start.float()
    return r


def discount_powers(horizon: int, gamma: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """float32[H]: gamma^k for k = 0..H-1."""
    return gamma ** torch.arange(horizon, dtype=torch.float32, device=device)


def chunk_return(reward: torch.Tensor, valid: torch.Tensor, gamma: float) -> torch.Tensor:
    """R = sum_{k<H} gamma^k reward_k valid_k: float[B] from reward float[B, H] and valid bool[B, H]."""
    g = discount_powers(reward.shape[-1], gamma, reward.device)
    return (reward.float() * valid.float() * g).sum(dim=-1)


def valid_ticks(valid: torch.Tensor) -> torch.Tensor:
    """h: the number of valid ticks per chunk, float[B] (valid is a prefix, so s_{t+h} follows the last one)."""
    return valid.float().sum(dim=-1)


def bootstrap_terms(valid: torch.Tensor, done: torch.Tensor, next_valid: torch.Tensor,
                    gamma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The bootstrap discount and the loss weight of each sample (see the module docstring).

    Args:
        valid: bool[B, H]; done: bool[B] true terminal in this chunk; next_valid: bool[B] a bootstrap
            state is provided.
        gamma: per-tick discount.

    Returns:
        (discount float[B] = gamma^h * (not done) * next_valid, weight float[B] = 0 where a non-terminal
        sample has no bootstrap state, else 1).
    """
    done, next_valid = done.bool(), next_valid.bool()
    can = (~done) & next_valid
    discount = torch.where(can, gamma ** valid_ticks(valid), torch.zeros_like(valid_ticks(valid)))
    weight = (done | next_valid).float()
    return discount, weight


def td_target(reward: torch.Tensor, valid: torch.Tensor, done: torch.Tensor, next_valid: torch.Tensor,
              next_q: torch.Tensor, gamma: float, failed: torch.Tensor | None = None,
              failure_value: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """y = R + discount * next_q (+ gamma^h * failure_value after a failed terminal), and the loss weight.

    Args:
        reward: float[B, H] learner reward (after :func:`shaped_reward`); valid: bool[B, H];
        done, next_valid: bool[B]; next_q: float[B] aggregated target value at the bootstrap state
            (ignored where discount is 0, even if it is not finite).
        gamma: per-tick discount.
        failed: bool[B], the terminal is a failure (counted only where ``done``); None: no failures.
        failure_value: the value after a failed terminal (0: a failure ends the returns like a success).

    Returns:
        (y float[B], weight float[B]).
    """
    discount, weight = bootstrap_terms(valid, done, next_valid, gamma)
    boot = torch.where(discount > 0, discount * next_q.float(), torch.zeros_like(discount))
    y = chunk_return(reward, valid, gamma) + boot
    if failed is not None and failure_value != 0.0:
        lost = failed.bool() & done.bool()
        y = y + torch.where(lost, failure_value * gamma ** valid_ticks(valid), torch.zeros_like(y))
    return y, weight


def identity_next_action(next_state: torch.Tensor, next_features: torch.Tensor,
                         next_base: torch.Tensor) -> torch.Tensor:
    """a' = the next base proposal (evaluating the base policy; no head)."""
    return next_base.float()


@torch.no_grad()
def critic_target(critic: ChunkedCritic, batch: dict[str, torch.Tensor], next_action: NextAction | None = None,
                  reward_scale: float = 1.0, rlif_penalty: float = 0.0,
                  generator: torch.Generator | None = None,
                  failure_value: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The full chunked TD target for a batch (keys as in ``tandem.value.objectives.common``).

    next_q = agg_j Qbar_j(next_state, a'), with the critic's aggregation over the target ensemble;
    ``failure_value`` follows a terminal the batch marks ``failed`` (see :func:`td_target`).

    Returns:
        (y float[B], weight float[B]).
    """
    gamma = critic.config.gamma
    act = next_action or identity_next_action
    a_next = act(batch["next_state"], batch["next_features"], batch["next_base"])
    next_q = critic.q_pess(batch["next_state"], batch["next_features"], a_next, target=True, generator=generator)
    r = shaped_reward(batch["reward"], batch.get("takeover_start"), reward_scale, rlif_penalty)
    return td_target(r, batch["valid"], batch["done"], batch["next_valid"], next_q, gamma,
                     batch.get("failed"), failure_value)
