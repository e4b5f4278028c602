"""Real-time chunking (RTC, arXiv 2506.07339): the request convention and the guidance mask.

With RTC the next chunk is generated *conditioned on the committed prefix*: the actions of the current
plan that will still run while the policy thinks. The scheduler puts two extra arrays into the
observation dict it submits (so the request travels unchanged through every backend: inline, thread,
worker process, remote server):

- ``rtc.prefix``: float32[L, A], the plan's actions for the observation's tick and the L - 1 after it
  (robot units; L is what is left of the plan, the chunk length P minus the execution horizon s);
- ``rtc.delay``: int64[1], d, the inference delay in ticks (the scheduler's measured p95).

A flow-matching policy that supports RTC (the tiny VLA) samples its chunk with guidance towards the
prefix, weighted by :func:`prefix_weights`: 1 on the first d steps (frozen: the old plan runs there
anyway), an exponential decay from d to L = H - s, 0 after. It returns the first d actions equal to the
prefix, which is how the scheduler tells that the policy honoured the request; a policy that ignores
the keys is spliced by cross-fade instead.

This module is numpy only (the runtime imports it for the key names); the guided sampler itself is
``TinyVLA.sample_guided`` in ``tandem.policies.tiny_vla.model``.
"""

from __future__ import annotations

import math

import numpy as np

PREFIX_KEY = "rtc.prefix"
DELAY_KEY = "rtc.delay"
REQUEST_KEYS = (PREFIX_KEY, DELAY_KEY)


def prefix_weights(delay: int, end: int, length: int) -> np.ndarray:
    """Guidance mask float32[length] over the new chunk's steps.

    Args:
        delay: d, steps frozen to the prefix (weight 1), in ticks.
        end: H - s, the first step with no guidance (weight 0): the end of the committed prefix.
        length: P, the chunk length.

    Steps ``d <= i < end`` get ``r * (e**r - 1) / (e - 1)`` with ``r = (end - i) / (end - d + 1)``: an
    exponential decay from just under 1 after the frozen steps to just over 0 at ``end``.
    """
    end = int(np.clip(end, 0, length))
    delay = int(np.clip(delay, 0, end))
    i = np.arange(length, dtype=np.float64)
    r = np.clip((end - i) / (end - delay + 1), 0.0, 1.0)
    w = r * np.expm1(r) / (math.e - 1.0)
    w[:delay] = 1.0
    w[end:] = 0.0
    return w.astype(np.float32)


def guidance_weight(tau: float, max_guidance: float) -> float:
    """The RTC guidance weight at flow time ``tau`` in [0, 1): ``min(beta, (1-tau)/tau * (tau^2 + (1-tau)^2) / (1-tau)^2)``.

    ``max_guidance`` is beta (the published default is 5); at ``tau = 0`` the weight is beta.
    """
    if tau <= 0.0:
        return float(max_guidance)
    one = 1.0 - tau
    return float(min(max_guidance, one / tau * (tau * tau + one * one) / (one * one)))


def make_request(observation: dict[str, np.ndarray], prefix: np.ndarray, delay: int) -> dict[str, np.ndarray]:
    """A copy of ``observation`` carrying the committed prefix float32[L, A] and the delay d (ticks)."""
    out = dict(observation)
    out[PREFIX_KEY] = np.ascontiguousarray(prefix, np.float32)
    out[DELAY_KEY] = np.array([int(delay)], np.int64)
    return out


def read_request(observation: dict[str, np.ndarray], length: int, action_dim: int) -> tuple[np.ndarray, np.ndarray, int]:
    """The RTC part of a request for a policy of chunk length P = ``length`` and A = ``action_dim``.

    Returns ``(prefix float32[P, A], weights float32[P], d)``: the prefix cut or padded (with its last
    action) to P steps, the guidance mask of :func:`prefix_weights` (all zero when the request carries
    no prefix: plain sampling), and d clipped to the prefix. A prefix of the wrong action size is
    ignored (weights zero).
    """
    prefix = observation.get(PREFIX_KEY)
    out = np.zeros((length, action_dim), np.float32)
    if prefix is None:
        return out, np.zeros(length, np.float32), 0
    prefix = np.asarray(prefix, np.float32)
    if prefix.ndim != 2 or prefix.shape[1] != action_dim or len(prefix) == 0:
        return out, np.zeros(length, np.float32), 0
    n = min(len(prefix), length)
    out[:n] = prefix[:n]
    out[n:] = prefix[n - 1]
    delay = int(np.asarray(observation.get(DELAY_KEY, [0])).reshape(-1)[0])
    delay = int(np.clip(delay, 0, n))
    return out, prefix_weights(delay, n, length), delay
