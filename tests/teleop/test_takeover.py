"""The takeover state machine: transitions, ramp-in on takeover, fade-in on handback, lost devices."""

from __future__ import annotations

import numpy as np
import pytest

from tandem.core.errors import DeviceMissingError
from tandem.hardware.features import ACTION_KEY, Feature
from tandem.policies.base import BasePolicy, Chunk
from tandem.runtime.control.controller import Controller
from tandem.runtime.control.safety import SafetyConfig, SafetyFilter
from tandem.runtime.control.scheduler import ChunkScheduler, SchedulerConfig
from tandem.runtime.inference.backends import InlineBackend
from tandem.teleop.takeover import Mode, TakeoverOperator
from tandem.teleop.teleoperator import TakeoverSettings, Teleoperator, TeleopEvents

A = 4


class ScriptedDevice(Teleoperator):
    """A teleoperator whose presses and pose the test sets directly (the contract, not a mock of hardware)."""

    name = "test-device"

    def __init__(self) -> None:
        self.pose = np.zeros(A, np.float32)
        self.pending: list[str] = []
        self.held: bool | None = None
        self.connected = False
        self.fail = False
        self.synced: np.ndarray | None = None
        self.connects = 0

    @property
    def action_features(self) -> dict[str, Feature]:
        return {ACTION_KEY: Feature("float32", (A,))}

    @property
    def is_connected(self) -> bool:
        return self.connected

    def connect(self) -> None:
        self.connects += 1
        if self.fail:
            raise DeviceMissingError("unplugged")
        self.connected = True

    def disconnect(self) -> None:
        self.connected = False

    def get_action(self) -> np.ndarray:
        if self.fail:
            raise DeviceMissingError("unplugged")
        return self.pose.copy()

    def get_events(self) -> TeleopEvents:
        if self.fail:
            raise DeviceMissingError("unplugged")
        events, self.pending = tuple(self.pending), []
        return TeleopEvents(events=events, intervene=self.held)

    def sync(self, last_action: np.ndarray) -> None:
        self.synced = last_action.copy()


class Box:
    """Holds the last sent action for the operator's ``last_sent``."""

    def __init__(self, value: np.ndarray | None) -> None:
        self.value = value


def make(ramp: int = 4, fade: int = 3, last: np.ndarray | None = None, clock: list | None = None):
    device = ScriptedDevice()
    box = Box(last)
    now = clock if clock is not None else [0.0]
    op = TakeoverOperator(
        device,
        TakeoverSettings(ramp_ticks=ramp, fade_ticks=fade, reconnect_s=1.0),
        last_sent=lambda: box.value,
        hold=lambda last: np.zeros(A, np.float32),
        clock=lambda: now[0],
    )
    op.connect()
    op.reset()
    return op, device, box, now


OBS = {"observation.state": np.zeros(3, np.float32)}
POLICY = np.full(A, 0.5, np.float32)


def test_toggle_takeover_ramps_from_last_sent_to_device_pose():
    anchor = np.array([0.2, -0.2, 0.0, 1.0], np.float32)
    op, dev, box, _ = make(ramp=4, last=anchor)
    assert op.step(OBS, POLICY, 0).action is None
    dev.pose = np.array([1.0, 1.0, -1.0, -1.0], np.float32)
    dev.pending = ["takeover"]
    outs = [op.step(OBS, POLICY, t) for t in range(1, 7)]
    assert outs[0].takeover_start and not any(o.takeover_start for o in outs[1:])
    assert op.mode == Mode.HUMAN and op.stats.takeovers == 1
    np.testing.assert_allclose(dev.synced, anchor)
    for k, out in enumerate(outs[:4], start=1):
        np.testing.assert_allclose(out.action, anchor + (k / 4) * (dev.pose - anchor), atol=1e-6)
    np.testing.assert_allclose(outs[4].action, dev.pose)
    # each ramp tick moves by at most |pose - anchor| / R
    steps = np.abs(np.diff(np.stack([anchor] + [o.action for o in outs]), axis=0))
    assert np.all(steps <= np.abs(dev.pose - anchor) / 4 + 1e-6)


def test_no_ramp_sends_the_device_action_at_once():
    op, dev, _, _ = make(ramp=0, last=np.zeros(A, np.float32))
    dev.pose = np.ones(A, np.float32)
    dev.pending = ["takeover"]
    np.testing.assert_allclose(op.step(OBS, POLICY, 0).action, dev.pose)


def test_handback_fades_policy_in_linearly_then_autonomous():
    op, dev, box, _ = make(ramp=0, fade=3, last=np.zeros(A, np.float32))
    dev.pose = np.full(A, -1.0, np.float32)
    dev.pending = ["takeover"]
    human = op.step(OBS, POLICY, 0).action
    box.value = human  # what the filter sent
    dev.pending = ["takeover"]  # toggle again: hand back
    outs = [op.step(OBS, POLICY, t) for t in range(1, 6)]
    assert [o.action for o in outs] == [None] * 5
    assert [round(o.blend, 6) for o in outs] == [0.25, 0.5, 0.75, 1.0, 1.0]
    for o in outs[:3]:
        np.testing.assert_allclose(o.anchor, human)
    assert op.mode == Mode.AUTONOMOUS and op.stats.handback_ticks == 3


def test_hold_to_intervene_and_events_pass_through():
    op, dev, _, _ = make(ramp=0, fade=0, last=np.zeros(A, np.float32))
    dev.held = True
    dev.pending = ["success"]
    out = op.step(OBS, POLICY, 0)
    assert out.takeover_start and out.action is not None and out.events == ("success",)
    dev.held = False
    out = op.step(OBS, POLICY, 1)
    assert out.action is None and out.blend == 1.0 and op.mode == Mode.AUTONOMOUS


def test_takeover_during_handback_starts_a_new_takeover():
    op, dev, box, _ = make(ramp=2, fade=5, last=np.zeros(A, np.float32))
    dev.held = True
    op.step(OBS, POLICY, 0)
    dev.held = False
    op.step(OBS, POLICY, 1)
    assert op.mode == Mode.HANDBACK
    dev.held = True
    out = op.step(OBS, POLICY, 2)
    assert out.takeover_start and op.stats.takeovers == 2 and op.mode == Mode.HUMAN


def test_reset_gives_control_back_to_the_policy():
    op, dev, _, _ = make()
    dev.pending = ["takeover"]
    op.step(OBS, POLICY, 0)
    op.reset()
    assert op.mode == Mode.AUTONOMOUS
    assert op.step(OBS, POLICY, 0).action is None


def test_lost_device_holds_the_robot_and_reconnects_into_a_handback():
    op, dev, box, now = make(ramp=0, fade=2, last=np.array([0.3, 0.3, 0.3, 0.9], np.float32))
    dev.pending = ["takeover"]
    op.step(OBS, POLICY, 0)
    dev.fail = True
    out = op.step(OBS, POLICY, 1)
    assert out.hold and out.events == ("device_lost",)
    np.testing.assert_allclose(out.action, np.zeros(A))
    assert op.mode == Mode.LOST and op.stats.device_lost == 1
    now[0] = 0.5  # before reconnect_s: no retry
    assert op.step(OBS, POLICY, 2).hold and dev.connects == 1
    now[0] = 1.1  # retry, still missing
    assert op.step(OBS, POLICY, 3).hold and dev.connects == 2
    dev.fail = False
    now[0] = 2.2
    out = op.step(OBS, POLICY, 4)
    assert not out.hold and out.action is None and 0 < out.blend < 1
    assert op.stats.reconnects == 1 and op.mode == Mode.HANDBACK


class ConstantPolicy(BasePolicy):
    """Always proposes the same action (chunks of 5)."""

    name = "constant"
    chunk_length = 5
    action_dim = A

    def __init__(self, value: np.ndarray) -> None:
        self.value = value

    def infer(self, observation: dict[str, np.ndarray], task: str) -> Chunk:
        return Chunk(actions=np.repeat(self.value[None], self.chunk_length, axis=0))


@pytest.mark.parametrize("fade", [0, 4, 9])
def test_controller_and_filter_bound_every_handover_step(fade):
    """Through the real Controller and SafetyFilter: ramp-in and fade-in steps stay within their bounds."""
    low, high = np.full(A, -1.0, np.float32), np.full(A, 1.0, np.float32)
    safety = SafetyFilter(SafetyConfig(max_delta=0.3), low, high, np.zeros(A, np.float32))
    safety.reset()
    policy_value = np.array([0.8, 0.8, 0.8, 0.8], np.float32)
    scheduler = ChunkScheduler(InlineBackend(ConstantPolicy(policy_value)), SchedulerConfig(), lookahead=5)
    device = ScriptedDevice()
    device.pose = np.array([-0.8, -0.8, 0.0, -1.0], np.float32)
    op = TakeoverOperator(device, TakeoverSettings(ramp_ticks=6, fade_ticks=fade), last_sent=lambda: safety.last,
                          hold=lambda last: np.zeros(A, np.float32))
    ctrl = Controller(scheduler, horizon=5, hold=safety.hold_action, operator=op)
    ctrl.reset(OBS, "task")
    sent, flags = [], []
    for tick in range(60):
        device.held = 10 <= tick < 30
        decision = ctrl.decide(OBS, "task", tick)
        sent.append(safety.filter(decision.action))
        flags.append(decision.is_intervention)
    sent = np.stack(sent)
    assert flags == [10 <= t < 30 for t in range(60)]
    steps = np.abs(np.diff(sent, axis=0))
    assert steps.max() <= 0.3 + 1e-6  # the filter's per-tick limit, always
    np.testing.assert_allclose(sent[29], device.pose)  # human fully in control after the ramp
    gap = np.abs(policy_value - device.pose)
    if fade and np.all(gap / (fade + 1) <= 0.3):
        # linear fade: each handback tick moves by |policy - anchor| / (F + 1), below the filter's limit here
        np.testing.assert_allclose(steps[29:29 + fade + 1], np.tile(gap / (fade + 1), (fade + 1, 1)), atol=1e-5)
    np.testing.assert_allclose(sent[-1], policy_value)
