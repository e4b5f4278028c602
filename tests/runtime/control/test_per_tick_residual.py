"""ResFiT's per-tick residual: with ``head_stride=1`` the residual head corrects every tick from that tick's
own observation, so the executed action changes at every tick even where the base plan does not."""

from __future__ import annotations

import numpy as np
import torch

from tandem.hardware.features import STATE_KEY, Feature
from tandem.policies.base import BasePolicy, Chunk
from tandem.policies.heads.networks import ResidualHead, ResidualHeadConfig
from tandem.runtime.control.controller import Controller
from tandem.runtime.control.scheduler import ChunkScheduler, SchedulerConfig
from tandem.runtime.inference.backends import InlineBackend

S, H, A = 6, 5, 2


class ConstantPolicy(BasePolicy):
    """Plans the same action for every tick: all the change in the executed actions is the head's."""

    name = "constant"
    chunk_length = 8
    action_dim = A
    action_feature = Feature("float32", (A,))

    def infer(self, observation: dict[str, np.ndarray], task: str) -> Chunk:
        return Chunk(actions=np.full((self.chunk_length, A), 0.25, np.float32))


def trained_looking_head() -> ResidualHead:
    head = ResidualHead(ResidualHeadConfig(state_dim=S, feature_dim=0, horizon=H, action_dim=A, hidden=(32,)))
    with torch.no_grad():
        for p in head.mlp[-1].parameters():  # the last layer starts at zero (the identity); give it weights
            p.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(1))
    head.sync_numpy()
    return head


def run(head_stride: int, ticks: int = 15) -> tuple[list, list[dict[str, np.ndarray]], ResidualHead]:
    head = trained_looking_head()
    scheduler = ChunkScheduler(InlineBackend(ConstantPolicy()), SchedulerConfig(), lookahead=H, synchronous=True)
    ctrl = Controller(scheduler, H, hold=lambda: np.zeros(A, np.float32), head=head, head_stride=head_stride)
    rng = np.random.default_rng(0)
    observations = [{STATE_KEY: rng.normal(size=S).astype(np.float32)} for _ in range(ticks)]
    ctrl.reset(observations[0], "task")
    return [ctrl.decide(o, "task", t) for t, o in enumerate(observations)], observations, head


def test_a_per_tick_residual_changes_the_action_at_every_tick_from_that_ticks_state():
    decisions, observations, head = run(head_stride=1)
    actions = np.stack([d.action for d in decisions])
    np.testing.assert_allclose(np.stack([d.base_action for d in decisions]), 0.25)  # the base never moves
    assert np.all(np.abs(np.diff(actions, axis=0)).max(axis=1) > 1e-4)  # the action changes at every tick
    for d, o in zip(decisions, observations, strict=True):  # ...by the correction of that tick's own state
        window = np.full((H, A), 0.25, np.float32)
        np.testing.assert_allclose(d.head_action, head.correction(o, np.zeros(0, np.float32), window)[0], atol=1e-6)
        assert np.all(np.abs(d.head_action) < head.config.alpha)


def test_a_per_chunk_residual_reads_the_state_only_at_the_boundary():
    """The contrast (the runtime's default, head_stride = H): within a chunk the correction ignores the
    states after the first, so the head cannot react between boundaries."""
    decisions, observations, head = run(head_stride=0)
    for t, d in enumerate(decisions):
        c = t - t % H
        window = np.full((H, A), 0.25, np.float32)
        expected = head.correction(observations[c], np.zeros(0, np.float32), window)[t - c]
        np.testing.assert_allclose(d.head_action, expected, atol=1e-6)
