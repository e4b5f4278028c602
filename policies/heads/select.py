"""The one candidate operator (EXPO): pick the best of candidate chunks under the critic.

The learner's TD target uses :func:`best_of_candidates` with the target critic; the robot's edit head
runs the same function with the online critic through :func:`make_selector`, so the chunk chosen for
acting is chosen by the rule the backup assumes.

Shapes: B batch, H chunk length (ticks), A action size, N candidates.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from tandem.policies.heads.critic import ChunkedCritic


def select_best(scores: torch.Tensor, candidates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """argmax over candidates: (best float[B, H, A], index long[B]) from scores float[B, N] and candidates
    float[B, N, H, A]. Ties go to the lowest index (the base chunk, when it is candidate 0)."""
    index = scores.argmax(dim=1)
    best = candidates[torch.arange(candidates.shape[0], device=candidates.device), index]
    return best, index


def best_of_candidates(critic: ChunkedCritic, state: torch.Tensor, features: torch.Tensor, candidates: torch.Tensor,
                       target: bool = False, generator: torch.Generator | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """EXPO selection: a* = argmax_{a in C(s)} agg_j Q_j(s, a).

    Args:
        critic: the critic; state float[B, S]; features float[B, F]; candidates float[B, N, H, A].
        target: score with the target network (for TD targets) or the online one (for acting).
        generator: generator of the aggregation's random subset.

    Returns:
        (best float[B, H, A], index long[B], scores float[B, N]).
    """
    scores = critic.q_pess(state, features, candidates, target=target, generator=generator)
    best, index = select_best(scores, candidates)
    return best, index, scores


def make_selector(critic: ChunkedCritic) -> Callable[[np.ndarray, np.ndarray, np.ndarray], int]:
    """The robot-side selector for ``EditHead.set_selector``: the same operator, online critic, one state.

    Returns:
        selector(state float32[S], features float[F], candidates float32[N, H, A]) -> index.
    """

    @torch.inference_mode()
    def selector(state: np.ndarray, features: np.ndarray, candidates: np.ndarray) -> int:
        d = critic.device
        s = torch.from_numpy(np.asarray(state, np.float32)).unsqueeze(0).to(d)
        f = torch.from_numpy(np.asarray(features, np.float32)).unsqueeze(0).to(d)
        c = torch.from_numpy(np.asarray(candidates, np.float32)).unsqueeze(0).to(d)
        _, index, scores = best_of_candidates(critic, s, f, c, target=False)
        selector.last_score = float(scores[0, index[0]])  # the chosen chunk's value (live view)
        return int(index[0])

    selector.last_score = None
    return selector
