"""PushT (gym-pusht, real pymunk physics, real pixels) through tandem's control loop."""

from __future__ import annotations

import numpy as np
import pytest

from tandem.core.errors import ConfigError
from tandem.hardware.features import IMAGE_PREFIX, STATE_KEY
from tandem.hardware.gym_robot import GymRobot, GymRobotConfig
from tandem.policies.base import BasePolicy, Chunk
from tandem.runtime.control.controller import Controller
from tandem.runtime.control.loop import EpisodeResult, TickRecord, run_episode
from tandem.runtime.control.safety import SafetyConfig, SafetyFilter
from tandem.runtime.control.scheduler import ChunkScheduler, SchedulerConfig
from tandem.runtime.inference.backends import InlineBackend
from tandem.runtime.links.chunks import ChunkAssembler
from tandem.teleop.operator import OperatorOutput

HORIZON = 4
CAMERA = IMAGE_PREFIX + "top"


class TowardPoint(BasePolicy):
    """Proportional controller: each chunk steps the agent's target a fraction ``gain`` toward ``goal``."""

    name = "toward-point"
    chunk_length = 6
    action_dim = 2

    def __init__(self, goal: tuple[float, float], gain: float = 0.3) -> None:
        self.goal = np.asarray(goal, np.float32)
        self.gain = gain
        self.calls = 0

    def infer(self, observation: dict[str, np.ndarray], task: str) -> Chunk:
        self.calls += 1
        agent = observation[STATE_KEY]
        fractions = np.minimum(1.0, self.gain * np.arange(1, self.chunk_length + 1))[:, None]
        return Chunk(actions=agent + fractions * (self.goal - agent), policy=self.name)


class Ticks:
    """Sink that keeps every tick."""

    def __init__(self) -> None:
        self.ticks: list[TickRecord] = []
        self.results: list[EpisodeResult] = []

    def start_episode(self, episode: int, task: str) -> None:
        self.task = task

    def on_tick(self, record: TickRecord) -> None:
        self.ticks.append(record)

    def end_episode(self, result: EpisodeResult) -> None:
        self.results.append(result)


@pytest.fixture(scope="module")
def robot():
    robot = GymRobot(GymRobotConfig(realtime=False, max_episode_steps=30))
    robot.connect()
    yield robot
    robot.disconnect()


class MarksAt:
    """An operator that never takes over and presses one event key ("success"/"failure") at one tick."""

    def __init__(self, event: str, tick: int) -> None:
        self.event, self.tick = event, tick

    def reset(self) -> None:
        pass

    def step(self, observation: dict[str, np.ndarray], policy_action: np.ndarray, tick: int) -> OperatorOutput:
        return OperatorOutput(events=(self.event,) if tick == self.tick else ())


def run(robot: GymRobot, goal: tuple[float, float], seed: int, max_steps: int,
        operator: MarksAt | None = None) -> tuple[EpisodeResult, Ticks]:
    low, high = robot.action_feature.bounds()
    safety = SafetyFilter(SafetyConfig(max_delta=60.0), low, high, robot.hold_action(None))
    scheduler = ChunkScheduler(InlineBackend(TowardPoint(goal)), SchedulerConfig(), lookahead=HORIZON)
    controller = Controller(scheduler, HORIZON, hold=safety.hold_action, operator=operator)
    sink = Ticks()
    result = run_episode(
        robot, controller, safety, episode=0, hz=robot.fps, max_steps=max_steps, seed=seed, sinks=[sink]
    )
    return result, sink


def test_schema_without_connecting():
    robot = GymRobot(GymRobotConfig())
    feats = robot.observation_features
    assert feats[STATE_KEY].shape == (2,) and feats[STATE_KEY].dtype == "float32"
    assert feats[CAMERA].shape == (96, 96, 3) and feats[CAMERA].is_image
    low, high = robot.action_feature.bounds()
    np.testing.assert_array_equal(low, [0, 0])
    np.testing.assert_array_equal(high, [512, 512])
    assert not robot.is_connected
    assert robot.task == "push the T-shaped block onto the target" and robot.fps == 10


def test_pusht_episode_in_the_control_loop(robot):
    # the goal is outside the 512x512 arena: the safety filter must clip every action into bounds
    result, sink = run(robot, goal=(600.0, -80.0), seed=3, max_steps=25)
    assert result.steps == 25 and result.outcome == "timeout" and len(sink.ticks) == 25
    assert sink.task == robot.task
    assert [t.truncated for t in sink.ticks] == [False] * 24 + [True]
    feats = robot.observation_features
    for tick in sink.ticks:
        assert tick.observation[STATE_KEY].shape == feats[STATE_KEY].shape
        assert tick.observation[STATE_KEY].dtype == np.float32
        assert tick.observation[CAMERA].shape == (96, 96, 3) and tick.observation[CAMERA].dtype == np.uint8
        assert tick.action.shape == (2,) and np.all(tick.action >= 0) and np.all(tick.action <= 512)
        assert not tick.starved
    assert result.safety["clipped"] > 0
    # real physics: the agent moved toward the (clipped) goal corner (512, 0)
    first, last = sink.ticks[0].observation[STATE_KEY], sink.ticks[-1].observation[STATE_KEY]
    corner = np.array([512.0, 0.0])
    assert np.linalg.norm(last - corner) < np.linalg.norm(first - corner) - 100
    # pixels change as the agent moves
    assert not np.array_equal(sink.ticks[0].observation[CAMERA], sink.ticks[-1].observation[CAMERA])


def test_episode_ends_at_max_steps_and_seeds_reproduce(robot):
    a, ticks_a = run(robot, goal=(256.0, 256.0), seed=7, max_steps=12)
    b, ticks_b = run(robot, goal=(256.0, 256.0), seed=7, max_steps=12)
    c, ticks_c = run(robot, goal=(256.0, 256.0), seed=8, max_steps=12)
    assert a.steps == b.steps == c.steps == 12
    first_a, first_b, first_c = (
        ticks_a.ticks[0].observation,
        ticks_b.ticks[0].observation,
        ticks_c.ticks[0].observation,
    )
    np.testing.assert_array_equal(first_a[STATE_KEY], first_b[STATE_KEY])
    np.testing.assert_array_equal(first_a[CAMERA], first_b[CAMERA])
    assert not np.array_equal(first_a[CAMERA], first_c[CAMERA])
    # deterministic physics: the same seed and policy give the same trajectory
    np.testing.assert_array_equal(
        np.stack([t.observation[STATE_KEY] for t in ticks_a.ticks]),
        np.stack([t.observation[STATE_KEY] for t in ticks_b.ticks]),
    )


def test_success_and_terminal_come_from_the_env(robot):
    robot.reset(seed=0)
    env = robot._env.unwrapped
    goal_x, goal_y, goal_angle = env.goal_pose
    env.agent.position = (60.0, 60.0)
    env.block.angle = goal_angle  # angle first: pymunk rotates about the centre of gravity
    env.block.position = (goal_x, goal_y)  # the block now lies on the target
    robot.send_action(np.array([60.0, 60.0], np.float32))
    status = robot.episode_status()
    assert status.success and status.terminated and status.reward == pytest.approx(1.0)
    robot.reset(seed=0)
    assert not robot.episode_status().success
    np.testing.assert_allclose(robot.hold_action(None), robot.get_observation()[STATE_KEY])


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="robot.state_keys"):
        _ = GymRobot(GymRobotConfig(state_keys=["agent_position"])).observation_features
    with pytest.raises(ConfigError, match="robot.image_keys"):
        _ = GymRobot(GymRobotConfig(image_keys={"agent_pos": "top"})).observation_features
    with pytest.raises(ConfigError, match="robot.env_id"):
        _ = GymRobot(GymRobotConfig(env_id="gym_pusht/PushX-v0")).action_feature
    with pytest.raises(ConfigError, match="robot.fps"):
        GymRobotConfig(fps=0)


def test_pusht_config_composes():
    from tandem.runtime.config import compose_run

    cfg = compose_run(["robot=pusht", "robot.realtime=false"])
    assert isinstance(cfg.robot, GymRobotConfig)
    assert cfg.robot.env_id == "gym_pusht/PushT-v0" and cfg.robot.image_keys == {"pixels": "top"}
    assert cfg.robot.fps == 10 and cfg.robot.realtime is False


@pytest.mark.parametrize("event, failed", [("failure", True), ("success", False)])
def test_an_operator_mark_ends_the_episode_and_a_failure_mark_is_a_failed_terminal(robot, event, failed):
    result, sink = run(robot, goal=(300.0, 300.0), seed=3, max_steps=25, operator=MarksAt(event, 7))
    assert result.steps == 8 and result.outcome == event and result.success == (not failed)
    assert [t.done for t in sink.ticks] == [False] * 7 + [True]
    assert [t.failed for t in sink.ticks] == [False] * 7 + [failed]
    records = []
    assembler = ChunkAssembler("r", HORIZON, records.append)
    assembler.start_episode(0, sink.task)
    for t in sink.ticks:
        assembler.on_tick(t)
    assembler.end_episode(result)
    assert [r.done for r in records] == [False, True] and [r.failed for r in records] == [False, failed]
