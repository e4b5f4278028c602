"""Value calibration: does the learned critic predict what actually happened on unseen scenes?

ALOE's claim rests on off-policy evaluation of the current policy by a chunked critic, so every critic arm of
``tandem study`` is checked against the episodes its own evaluation ran (autonomous, unseen scenes, no
operator). ``tandem eval`` keeps each evaluation session's chunks (``seed_<s>/chunks.npz``, written by
:func:`save_chunks`); :func:`calibrate` loads the critic from the arm's learner store and compares, for every
executed chunk, its Q with the discounted return that followed, and V(s0) (Q of the episode's first chunk)
with the episode's success.

Realized return of the chunk starting at tick t of an episode of T ticks, with the learner's own reward
(``head.critic_objective``: reward_mode, reward_scale; ``head.critic``: gamma)::

    G_t = sum_{k=t}^{T-1} gamma^(k-t) r'_k  +  [not success] gamma^(T-t) failure_value

r'_k is reward_scale * the task reward (reward_mode "task") or -reward_scale (reward_mode "time": -1 per tick
until success). A success ends the episode (``loop.stop_on_success``); an episode that ends without success
(time limit) is followed by ``failure_value``, which for the time reward is the value of never succeeding,
-reward_scale / (1 - gamma): the same convention the critic's own targets use for a failed terminal. The
time limit's tail is thus counted as failure, as a person reading the result would count it.

Figures (``calibrate``'s dict): ``spearman`` (rank correlation of Q, the ensemble mean, with G over all
chunks), ``mean_error`` and ``mean_abs_error`` of Q - G, ``pess_mean_error`` (the critic's pessimistic
aggregate - G), ``v0_auc`` (probability that a successful episode's V(s0) is above a failed one's, ties
count half; None when every episode had the same outcome), ``early_auc`` (the same for each episode's mean Q
over its chunks that start in ticks 1-99, :data:`EARLY_TICKS`: does the critic know the outcome once the
episode is under way; an episode with no chunk starting there is left out), and the counts.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tandem.core.durable import write_bytes_atomic
from tandem.core.errors import ConfigError
from tandem.policies.heads.build import acting_critic_config
from tandem.policies.heads.config import Dims, HeadConfig
from tandem.policies.heads.critic import ChunkedCritic
from tandem.protocol.checkpoint import load_checkpoint
from tandem.protocol.chunk_record import ChunkRecord
from tandem.runtime.monitor.tick_log import load_ticks
from tandem.value.objectives.critic import CriticObjectiveConfig, failure_value

CHUNKS_FILE = "chunks.npz"
EARLY_TICKS = (1, 100)  # [first, last + 1): the ticks whose chunks ``early_auc`` averages per episode


# -- the chunks of an evaluation ---------------------------------------------------------------------
def save_chunks(records: Sequence[ChunkRecord], run_dir: str | Path) -> Path | None:
    """Write ``run_dir/chunks.npz``: the evaluation's chunks, in the order they ran (None if there are none).

    Arrays (N chunks, H ticks, A actions, S state, F features)::

        episode   int32[N]       episode index
        start     int32[N]       the chunk's first tick within its episode
        state     float32[N, S]  state at the chunk's first tick
        features  float32[N, F]  base-policy features there
        executed  float32[N, H, A]  the actions that ran (padded past ``valid``)
        valid     bool[N, H]     ticks that ran
    """
    if not records:
        return None
    starts: dict[int, int] = {}
    start = []
    for r in records:
        start.append(starts.get(r.episode_id, 0))
        starts[r.episode_id] = start[-1] + int(np.sum(r.valid))
    arrays = {
        "episode": np.array([r.episode_id for r in records], np.int32),
        "start": np.array(start, np.int32),
        "state": np.stack([r.state for r in records]).astype(np.float32),
        "features": np.stack([np.asarray(r.features, np.float32).reshape(-1) for r in records]),
        "executed": np.stack([r.executed for r in records]).astype(np.float32),
        "valid": np.stack([r.valid for r in records]).astype(bool),
    }
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    path = Path(run_dir) / CHUNKS_FILE
    write_bytes_atomic(path, buf.getvalue())
    return path


def load_chunks(run_dir: str | Path) -> dict[str, np.ndarray] | None:
    """The arrays :func:`save_chunks` wrote (None when the file is absent)."""
    path = Path(run_dir) / CHUNKS_FILE
    if not path.exists():
        return None
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


# -- realized returns --------------------------------------------------------------------------------
def realized_returns(start: np.ndarray, rewards: np.ndarray, success: bool, gamma: float, reward_scale: float,
                     reward_mode: str, after_failure: float) -> np.ndarray:
    """G_t of each start tick t of one episode: float64[len(start)] (the module docstring's formula).

    Args:
        start: int[K] chunk start ticks within the episode.
        rewards: float[T] the task reward of each of the episode's T ticks.
        success: the episode ended in success.
        gamma: discount per tick; reward_scale, reward_mode: the learner's reward settings.
        after_failure: the value that follows an episode that ended without success.
    """
    r = -np.ones(len(rewards)) * reward_scale if reward_mode == "time" else np.asarray(rewards, float) * reward_scale
    t_len = len(r)
    g = np.zeros(t_len + 1)  # g[t] = sum_{k>=t} gamma^(k-t) r_k, plus the failure tail
    g[t_len] = 0.0 if success else after_failure
    for t in range(t_len - 1, -1, -1):
        g[t] = r[t] + gamma * g[t + 1]
    return g[np.clip(np.asarray(start, int), 0, t_len)]


def spearman(x: np.ndarray, y: np.ndarray) -> float | None:
    """Rank correlation of two float[N] arrays (average ranks for ties; None when either is constant)."""
    rx, ry = _ranks(np.asarray(x, float)), _ranks(np.asarray(y, float))
    if len(rx) < 2 or rx.std() == 0 or ry.std() == 0:
        return None
    return float(np.corrcoef(rx, ry)[0, 1])


def _ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x), dtype=float)
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    return np.bincount(inverse, weights=ranks)[inverse] / counts[inverse]


def auc(positive: np.ndarray, negative: np.ndarray) -> float | None:
    """P(a positive's score > a negative's), ties half: the area under the ROC curve (None if a class is empty)."""
    p, n = np.asarray(positive, float), np.asarray(negative, float)
    if not len(p) or not len(n):
        return None
    greater = (p[:, None] > n[None, :]).mean()
    ties = (p[:, None] == n[None, :]).mean()
    return float(greater + 0.5 * ties)


def window_auc(episodes: Sequence[tuple[np.ndarray, np.ndarray, bool]], first: int, stop: int) -> float | None:
    """AUC for success of each episode's mean Q over its chunks that start at ticks ``first <= t < stop``.

    Args:
        episodes: per episode (start ticks int[n], Q float[n] of its chunks, success).
        first, stop: the tick window; an episode with no chunk starting in it is left out.

    Returns:
        P(a successful episode's mean Q > a failed one's), ties half; None without both outcomes.
    """
    ok, fail = [], []
    for start, q, success in episodes:
        inside = (start >= first) & (start < stop)
        if inside.any():
            (ok if success else fail).append(float(np.mean(q[inside])))
    return auc(np.array(ok), np.array(fail))


# -- the critic --------------------------------------------------------------------------------------
def load_critic(store: str | Path, head: HeadConfig, dims: Dims) -> ChunkedCritic:
    """The critic a learner store's newest checkpoint publishes (the one the robot acts with: with DQC the
    partial critic), built from the run's ``head.critic`` settings.

    Raises:
        ConfigError: no checkpoint with a critic there.
    """
    root = Path(store)
    state = load_checkpoint(root / "checkpoints" if (root / "checkpoints").is_dir() else root)
    objective = (state or {}).get("objective") or {}
    inner = objective.get("state") or {}
    critic_state = (inner.get("critic_objective") or inner).get("critic")
    if critic_state is None:
        raise ConfigError("head.init", str(store), "a learner store whose checkpoint holds a critic")
    critic = ChunkedCritic(acting_critic_config(head.critic, dims))
    critic.load_state_dict(critic_state)
    critic.eval()
    return critic


def calibrate(store: str | Path, eval_dir: str | Path, head: HeadConfig,
              episodes_by_seed: dict[int, list[dict]]) -> dict[str, Any] | None:
    """Compare the store's critic with what happened in an evaluation (module docstring); None without chunks.

    Args:
        store: the arm's learner store (its newest checkpoint holds the critic).
        eval_dir: the evaluation's directory (``seed_<s>/chunks.npz`` and ``seed_<s>/ticks.npz``).
        head: the run's head settings (critic sizes, gamma, the learner's reward settings).
        episodes_by_seed: evaluation seed -> its episodes as in eval.json (``episode``, ``success``, ``outcome``).
    """
    obj = CriticObjectiveConfig(**{k: v for k, v in head.critic_objective.items()
                                   if k in CriticObjectiveConfig.__dataclass_fields__})
    q_all, q_pess, g_all, v0_ok, v0_fail, per_episode = [], [], [], [], [], []
    critic = None
    for seed, episodes in episodes_by_seed.items():
        run = Path(eval_dir) / f"seed_{seed}"
        chunks = load_chunks(run)
        if chunks is None:
            continue
        ticks = load_ticks(run)
        if critic is None:
            dims = Dims(chunks["state"].shape[1], chunks["features"].shape[1], *chunks["executed"].shape[1:])
            critic = load_critic(store, head, dims)
            gamma = float(critic.config.gamma)
            after = failure_value(obj, gamma)
        with torch.no_grad():
            members = critic.q_values(torch.as_tensor(chunks["state"]), torch.as_tensor(chunks["features"]),
                                      torch.as_tensor(chunks["executed"]))
            pess = critic.aggregate(members, torch.Generator().manual_seed(0))
        q, q_p = members.mean(0).numpy(), pess.numpy()
        for e in episodes:
            if e["outcome"] in ("stopped", "rerecord"):
                continue
            rows = np.flatnonzero(chunks["episode"] == e["episode"])
            if not len(rows):
                continue
            rewards = ticks["reward"][ticks["episode"] == e["episode"]]
            g = realized_returns(chunks["start"][rows], rewards, bool(e["success"]), gamma, obj.reward_scale,
                                 obj.reward_mode, after)
            q_all.append(q[rows])
            q_pess.append(q_p[rows])
            g_all.append(g)
            first = rows[np.argmin(chunks["start"][rows])]
            (v0_ok if e["success"] else v0_fail).append(float(q[first]))
            per_episode.append((chunks["start"][rows], q[rows], bool(e["success"])))
    if critic is None or not q_all:
        return None
    q, qp, g = np.concatenate(q_all), np.concatenate(q_pess), np.concatenate(g_all)
    return {
        "chunks": int(len(q)), "episodes": len(v0_ok) + len(v0_fail), "successes": len(v0_ok),
        "spearman": spearman(q, g), "mean_error": float(np.mean(q - g)), "mean_abs_error": float(np.mean(np.abs(q - g))),
        "pess_mean_error": float(np.mean(qp - g)), "return_mean": float(np.mean(g)), "q_mean": float(np.mean(q)),
        "v0_auc": auc(np.array(v0_ok), np.array(v0_fail)), "early_auc": window_auc(per_episode, *EARLY_TICKS),
        "v0_success_mean": float(np.mean(v0_ok)) if v0_ok else None,
        "v0_failure_mean": float(np.mean(v0_fail)) if v0_fail else None,
        "gamma": gamma, "reward_mode": obj.reward_mode, "reward_scale": obj.reward_scale, "failure_value": after,
    }
