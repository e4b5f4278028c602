"""Advantages and advantage-weighted regression weights (ALOE's improvement step).

    V(s)  = (1/K) sum_i Q_pess(s, a_i),    a_i ~ pi_current(s),  i = 1..K
    A     = Q_pess(s, a_data) - V(s)
    w     = clip(exp(A / beta), 0, w_max)

Q_pess is the critic's aggregation (min over a random pair, min, LCB, mean). One random subset of
members serves the data chunk and all K policy chunks of a call, so A compares like with like. The
policy chunks come from the caller (the base policy's samples, base + residual, EXPO candidates).
"""

from __future__ import annotations

import math

import torch

from tandem.policies.heads.critic import ChunkedCritic


@torch.no_grad()
def q_and_value(critic: ChunkedCritic, state: torch.Tensor, features: torch.Tensor, data_chunk: torch.Tensor,
                policy_chunks: torch.Tensor, target: bool = False,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(Q_pess(s, a_data) float[B], V(s) float[B]).

    Args:
        critic: the critic.
        state: float[B, S]; features: float[B, F].
        data_chunk: float[B, H, A], the executed chunk.
        policy_chunks: float[B, K, H, A], K chunks sampled from the current policy at s.
        target: evaluate with the target network.
        generator: generator of the aggregation's random subset.
    """
    chunks = torch.cat([data_chunk.float().unsqueeze(1), policy_chunks.float()], dim=1)  # [B, K+1, H, A]
    q = critic.q_pess(state, features, chunks, target=target, generator=generator)  # [B, K+1]
    return q[:, 0], q[:, 1:].mean(dim=1)


def advantage(critic: ChunkedCritic, state: torch.Tensor, features: torch.Tensor, data_chunk: torch.Tensor,
              policy_chunks: torch.Tensor, target: bool = False,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """A = Q_pess(s, a_data) - V(s): float[B] (arguments as :func:`q_and_value`)."""
    q, v = q_and_value(critic, state, features, data_chunk, policy_chunks, target, generator)
    return q - v


def awr_weights(adv: torch.Tensor, beta: float, w_max: float) -> torch.Tensor:
    """w = clip(exp(A / beta), 0, w_max): float[B] (computed without overflow).

    Args:
        adv: float[B] advantages. beta: temperature (> 0). w_max: weight cap (> 0).
    """
    if not beta > 0 or not w_max > 0:
        raise ValueError(f"awr_weights needs beta > 0 and w_max > 0, got beta={beta}, w_max={w_max}")
    return torch.exp((adv / beta).clamp(max=math.log(w_max))).clamp(0.0, w_max)


def weighted_bc_loss(per_sample_loss: torch.Tensor, weights: torch.Tensor, normalize: bool = False) -> torch.Tensor:
    """Scalar sum_b w_b l_b / B (or / sum_b w_b with ``normalize``), weights detached.

    Args:
        per_sample_loss: float[B], e.g. a flow-matching or residual regression loss per chunk.
        weights: float[B] from :func:`awr_weights`.
        normalize: divide by the weight sum instead of B (batch-normalised AWR).
    """
    w = weights.detach().to(per_sample_loss.dtype)
    denom = w.sum().clamp_min(1e-8) if normalize else per_sample_loss.new_tensor(float(per_sample_loss.shape[0]))
    return (w * per_sample_loss).sum() / denom
