"""What every training objective shares: the batch as tensors and one gradient step.

The objectives: the chunked critic (``critic.py``), the residual head (ResFiT/TD3, ``residual.py``) and
the edit head (EXPO/SAC, ``edit.py``), built by ``learning.py``.

Each objective follows ``tandem.value.objectives.base.Objective``: a ``name``, ``update(batch) -> dict[str, float]``
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
    next_state     float[B, S]     s_{t+h}: the next record's state (or a truncated episode's final observation)
    next_features  float[B, F]
    next_base      float[B, H, A]  the base proposal at s_{t+h}
    next_valid     bool[B]         a bootstrap state exists: the next record, or after a truncation the final
                                   observation (false after a terminal, or when none came)

Extra keys are ignored. The TD target and its conventions are in ``tandem.value.objectives.targets``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

BATCH_KEYS = ("state", "features", "base", "executed", "reward", "valid", "done", "truncated", "failed",
              "takeover_start", "intervention", "next_state", "next_features", "next_base", "next_valid")
BOOL_KEYS = frozenset({"valid", "done", "truncated", "failed", "takeover_start", "intervention", "next_valid"})
DEFAULT_FALSE = {"takeover_start": "valid", "intervention": "valid", "truncated": "done",
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
            if key in DEFAULT_FALSE:
                out[key] = torch.zeros_like(out[DEFAULT_FALSE[key]])
                continue
            raise KeyError(f"batch has no {key!r}; expected keys {BATCH_KEYS}")
        v = batch[key]
        t = v if isinstance(v, torch.Tensor) else torch.from_numpy(np.asarray(v))
        t = t.to(device, torch.bool) if key in BOOL_KEYS else t.to(device, torch.float32)
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


def grad_step(opt: torch.optim.Optimizer, loss: torch.Tensor, params: list[torch.nn.Parameter],
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
