"""The learner's CUDA path: runs where torch sees a GPU and is skipped elsewhere (CPU stays covered by every
other learner test). On a GPU the objectives must train there and agree with the CPU on the same batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tandem.bench.learner import bench_learner, synthetic_batch
from tandem.policies.heads.critic import CriticConfig
from tandem.policies.heads.networks import EditHeadConfig
from tandem.value.objectives.learning import make_learning_objective

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: the CPU path is tested elsewhere")
DIMS = dict(state_dim=7, feature_dim=3, horizon=4, action_dim=2)


@cuda
def test_bench_learner_runs_its_update_figures_on_cuda():
    out = bench_learner(batch_size=64, updates=5, publish_reps=2, head_calls=5, num_candidates=2, device="cuda",
                        **DIMS)
    assert out["device"] == "cuda"
    assert out["critic_updates_per_s"] > 0 and out["edit_updates_per_s"] > 0


@cuda
@pytest.mark.parametrize("kind", ["critic", "edit"])
def test_a_cuda_update_matches_the_cpu_update(kind: str):
    batch = synthetic_batch(32, DIMS["horizon"], DIMS["action_dim"], DIMS["state_dim"], DIMS["feature_dim"])
    metrics = {}
    for device in ("cpu", "cuda"):
        head = EditHeadConfig(**DIMS) if kind == "edit" else None
        objective = make_learning_objective(kind, CriticConfig(**DIMS, hidden=(32, 32)), head, device=device)
        metrics[device] = objective.update(batch)
        assert all(np.isfinite(v) for v in metrics[device].values())
    assert metrics["cuda"]["critic/loss"] == pytest.approx(metrics["cpu"]["critic/loss"], rel=1e-3, abs=1e-5)


def test_bench_learner_refuses_cuda_without_a_gpu_with_a_clear_message():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the refusal applies to machines without one")
    with pytest.raises(ValueError, match="tandem: bench learner --device cuda"):
        bench_learner(batch_size=8, updates=1, device="cuda", **DIMS)
