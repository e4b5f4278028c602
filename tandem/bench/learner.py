"""``tandem bench learner``: learning-core throughput and the heads' on-robot latency, JSON out.

Measured on synthetic data of the reference sizes (H=10, A=4, S=39, F=64, M=2 by default):

- critic updates per second at the given batch size (one chunked-TD step: target with the target
  ensemble, loss, backward, AdamW, Polyak), also with the residual and edit head steps included (the
  edit head both as EXPO and as shipped: mean-edit acting with the AWR-only policy step);
- one weight publication: ``weights()`` of the residual head and the critic, then
  ``tandem.protocol.wire.encode`` of each into a message (and the fold64 digest the weights link sends);
- the residual head's numpy correction per chunk boundary (the control-loop budget is p99 <= 0.3 ms);
- the edit head's chunk-boundary decision: N edits proposed and scored with the critic, argmax.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from tandem.policies.heads.critic import ChunkedCritic, CriticConfig
from tandem.policies.heads.networks import EditHead, EditHeadConfig, ResidualHead, ResidualHeadConfig
from tandem.policies.heads.select import make_selector
from tandem.protocol.wire import Message, encode, fold_digest
from tandem.value.objectives.edit import EditObjectiveConfig
from tandem.value.objectives.learning import make_learning_objective


def _stats_ms(samples: list[float]) -> dict[str, float]:
    a = np.asarray(samples) * 1e3
    return {"p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)),
            "max_ms": float(a.max()), "n": int(a.size)}


def synthetic_batch(batch_size: int, horizon: int, action_dim: int, state_dim: int, feature_dim: int,
                    seed: int = 0) -> dict[str, np.ndarray]:
    """A batch with the objectives' keys and dtypes (as the replay hands them over)."""
    rng = np.random.default_rng(seed)
    b, h, a = batch_size, horizon, action_dim
    done = rng.random(b) < 0.05
    return {
        "state": rng.normal(size=(b, state_dim)).astype(np.float32),
        "features": rng.normal(size=(b, feature_dim)).astype(np.float16),
        "base": rng.uniform(-1, 1, (b, h, a)).astype(np.float32),
        "executed": rng.uniform(-1, 1, (b, h, a)).astype(np.float32),
        "reward": rng.normal(size=(b, h)).astype(np.float32),
        "valid": np.ones((b, h), bool),
        "done": done,
        "truncated": np.zeros(b, bool),
        "takeover_start": rng.random((b, h)) < 0.01,
        "next_state": rng.normal(size=(b, state_dim)).astype(np.float32),
        "next_features": rng.normal(size=(b, feature_dim)).astype(np.float16),
        "next_base": rng.uniform(-1, 1, (b, h, a)).astype(np.float32),
        "next_valid": ~done,
    }


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _rate(objective: Any, batch: dict[str, np.ndarray], updates: int, device: str = "cpu") -> float:
    """Updates per second of ``objective.update`` on a numpy batch (host-to-device copy included)."""
    for _ in range(5):
        objective.update(batch)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(updates):
        objective.update(batch)
    _sync(device)
    return updates / (time.perf_counter() - t0)


def bench_learner(batch_size: int = 256, updates: int = 100, threads: int = 0, horizon: int = 10,
                  action_dim: int = 4, state_dim: int = 39, feature_dim: int = 64, ensemble_size: int = 2,
                  loss: str = "mse", publish_reps: int = 30, head_calls: int = 2000,
                  num_candidates: int = 8, device: str = "cpu") -> dict[str, Any]:
    """Run the measurements above and return them as a JSON-able dict.

    Args:
        batch_size: learner batch size B.
        updates: timed updates per throughput figure.
        threads: torch intra-op threads (0 keeps torch's default).
        horizon, action_dim, state_dim, feature_dim, ensemble_size: H, A, S, F, M.
        loss: critic loss ("mse" or "hl_gauss").
        publish_reps: timed weight publications.
        head_calls: timed head calls (each figure).
        num_candidates: N edits scored at an edit-head chunk boundary.
        device: torch device of the learning-core figures ("cpu", "cuda", "cuda:1"); the publication and
            the on-robot head figures stay on the CPU, where the robot runs them.
    """
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"tandem: bench learner --device {device}: torch sees no CUDA device here; use --device cpu")
    previous_threads = torch.get_num_threads()
    if threads > 0:
        torch.set_num_threads(threads)
    try:
        dims = dict(state_dim=state_dim, feature_dim=feature_dim, horizon=horizon, action_dim=action_dim)
        ccfg = CriticConfig(**dims, ensemble_size=ensemble_size, loss=loss)
        batch = synthetic_batch(batch_size, horizon, action_dim, state_dim, feature_dim)

        def rate(kind: str, head: Any = None, head_objective: Any = None) -> float:
            objective = make_learning_objective(kind, ccfg, head, None, head_objective, device)
            return _rate(objective, batch, updates, device)

        critic_rate = rate("critic")
        residual_rate = rate("residual", ResidualHeadConfig(**dims))
        # the edit head as EXPO (defaults) and as shipped (configs/head/edit.yaml: mean-edit acting, AWR only)
        edit_head = EditHeadConfig(**dims, num_candidates=num_candidates)
        edit_rate = rate("edit", edit_head)
        edit_shipped_rate = rate("edit", edit_head, EditObjectiveConfig(acting="mean", q_weight=0.0, awr_weight=1.0,
                                                                        awr_beta=0.3))

        critic = ChunkedCritic(ccfg)
        head = ResidualHead(ResidualHeadConfig(**dims))
        publish, digest, nbytes = [], [], 0
        for rep in range(publish_reps + 2):
            t0 = time.perf_counter()
            frames, published = [], []
            for kind, module in (("head", head), ("critic", critic)):
                arrays = module.weights()
                published.append(arrays)
                frames.append(encode(Message(kind="weights", schema=kind, seq=rep, meta={"kind": kind, "version": rep},
                                             arrays=arrays)))
            t1 = time.perf_counter()
            for arrays in published:
                fold_digest(arrays)
            t2 = time.perf_counter()
            if rep >= 2:
                publish.append(t1 - t0)
                digest.append(t2 - t1)
            nbytes = sum(memoryview(f).nbytes for fr in frames for f in fr)
        params = {"head": sum(p.numel() for p in head.parameters()),
                  "critic": sum(p.numel() for p in critic.online.parameters())}

        # residual head inside the loop: one numpy correction per chunk boundary
        with torch.no_grad():
            for p in head.mlp[-1].parameters():
                p.normal_(0, 0.1)  # a trained-looking head (the zero init would shortcut nothing, but be fair)
        head.sync_numpy()
        rng = np.random.default_rng(0)
        obs = {"observation.state": rng.normal(size=state_dim).astype(np.float32)}
        feats = rng.normal(size=feature_dim).astype(np.float16)
        base = rng.uniform(-1, 1, (horizon, action_dim)).astype(np.float32)
        res_t = []
        for i in range(head_calls + 50):
            t0 = time.perf_counter()
            head.correction(obs, feats, base)
            if i >= 50:
                res_t.append(time.perf_counter() - t0)

        edit = EditHead(EditHeadConfig(**dims, num_candidates=num_candidates))
        edit.set_selector(make_selector(critic))
        edit_t = []
        for i in range(min(head_calls, 1000) + 20):
            t0 = time.perf_counter()
            edit.correction(obs, feats, base)
            if i >= 20:
                edit_t.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(previous_threads)
    return {
        "bench": "learner",
        "device": device,
        "sizes": {"batch": batch_size, **dims, "ensemble": ensemble_size, "loss": loss,
                  "num_candidates": num_candidates, "critic_hidden": list(ccfg.hidden)},
        "torch_threads": threads if threads > 0 else previous_threads,
        "critic_updates_per_s": round(critic_rate, 1),
        "residual_updates_per_s": round(residual_rate, 1),
        "edit_updates_per_s": round(edit_rate, 1),
        "edit_mean_awr_updates_per_s": round(edit_shipped_rate, 1),
        "params": params,
        "publish": {**_stats_ms(publish), "bytes": nbytes, "what": "weights() + wire.encode of head and critic"},
        "publish_digest": _stats_ms(digest),
        "residual_head_boundary": _stats_ms(res_t),
        "edit_head_boundary": _stats_ms(edit_t),
    }
