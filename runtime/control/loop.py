"""The fixed-rate control loop for one episode.

Per tick: observe -> decide (controller) -> safety filter -> send -> record (sinks) -> wait for the
next deadline. Sections are timed; lateness and overruns are counted by the ``TickTimer``. Nothing
here blocks on inference, disk or network: sinks must hand work to their own threads.

After an episode that ended by a time limit or a stop (the last tick ``truncated``, not re-recorded),
the loop reads the robot's observation once more, one tick period after the last tick, as the next
tick would have, and hands it to the sinks that ask for it (``wants_final_observation``) as a
:class:`FinalObservation` before ``end_episode``: the bootstrap state of the episode's last chunk
(the chunk assembler sends it to the learner). It costs no inference: its base proposal is the base
plan's window from that tick on, as a next chunk record would have carried it.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from tandem.hardware.robot import Robot
from tandem.runtime.control.controller import Controller
from tandem.runtime.control.priority import elevate, restore
from tandem.runtime.control.safety import SafetyFilter
from tandem.runtime.control.timing import TickTimer

log = logging.getLogger(__name__)


@dataclass
class TickRecord:
    """Everything that happened in one tick; what recorders and chunk assemblers consume.

    Arrays: observation as returned by the robot; actions float32[A]; features float16[F];
    ``base_window`` float32[H, A] or None (the controller's ``Decision.base_window``).
    ``failed``: ``done`` and the episode ends without success (an operator's failure mark, or a
    terminal before success); false otherwise.
    Times: ``obs_time``/``send_time`` wall clock (s since epoch), ``lateness_ms`` from the timer;
    ``capture_time`` wall clock when the robot's sensors captured the observation (the oldest camera
    frame, as the robot reports it; else when the observation was read).
    """

    episode: int
    tick: int
    observation: dict[str, np.ndarray]
    base_action: np.ndarray
    head_action: np.ndarray
    action: np.ndarray
    is_intervention: bool
    takeover_start: bool
    starved: bool
    chunk_index: int
    chunk_step: int
    head_version: int
    base_version: int
    features: np.ndarray
    reward: float
    success: bool
    done: bool
    truncated: bool
    obs_time: float
    send_time: float
    lateness_ms: float
    base_window: np.ndarray | None = None
    failed: bool = False
    capture_time: float = 0.0


@dataclass
class EpisodeResult:
    """Outcome of one episode.

    ``outcome`` is "success", "failure" (operator's mark or terminal without success), "timeout",
    "stopped" (operator stop / Ctrl-C) or "rerecord".
    """

    episode: int
    seed: int | None
    steps: int
    success: bool
    outcome: str
    total_reward: float
    takeovers: int
    intervention_ticks: int
    starved_ticks: int
    timing: dict = field(default_factory=dict)
    safety: dict = field(default_factory=dict)
    scheduler: dict = field(default_factory=dict)
    wall_s: float = 0.0
    task: str = ""
    head_version: int = 0  # head weights in use at the episode's end
    base_version: int = 0  # base policy weights of the episode's last chunk (swapped only between episodes)
    scene: dict = field(default_factory=dict)  # the robot's scene of this episode (split, seed, positions)
    # the fault counters that changed in this episode: the robot's (read retries ...) and the policy
    # backend's (worker_restarts: a dead policy worker restarted while the robot held)
    faults: dict = field(default_factory=dict)


@dataclass
class FinalObservation:
    """The observation after a truncated episode's last executed tick (see the module docstring).

    Attributes:
        episode: the episode id.
        tick: the episode tick a next tick would have had (the number of executed ticks).
        observation: as returned by the robot, read one tick period after the last tick.
        features: float16[F], the base policy's features in use (as a next tick's ``TickRecord``).
        base_window: float32[H, A], the base plan's H-tick window from ``tick`` on, the hold action past
            the plan (as the controller hands the head at a boundary).
        head_version, base_version: weights in use.
        obs_time: wall clock (s since epoch) when the observation was read.
    """

    episode: int
    tick: int
    observation: dict[str, np.ndarray]
    features: np.ndarray
    base_window: np.ndarray
    head_version: int
    base_version: int
    obs_time: float


class TickSink(Protocol):
    """Consumer of ticks (recorder, chunk assembler, live view). Must not block the loop."""

    def start_episode(self, episode: int, task: str) -> None:
        """An episode begins."""

    def on_tick(self, record: TickRecord) -> None:
        """One tick happened."""

    def end_episode(self, result: EpisodeResult) -> None:
        """The episode ended."""


class FinalObservationSink(TickSink, Protocol):
    """A sink that also takes a truncated episode's final observation (called before ``end_episode``).

    The loop reads the final observation only when some sink's ``wants_final_observation`` is true.
    """

    wants_final_observation: bool

    def on_final_observation(self, final: FinalObservation) -> None:
        """The observation after the episode's last tick (the episode ended truncated)."""


@dataclass
class LoopConfig:
    """Control loop settings.

    Attributes:
        spin_s: the last part of each wait, in seconds, is a busy spin (sub-ms deadlines).
        stop_on_success: end the episode at the first tick the task reports success.
        rt_priority: SCHED_FIFO priority asked for the control thread while a paced (realtime)
            episode ticks (0: normal scheduling). Falls back to nice, then to nothing, without root.
    """

    spin_s: float = 0.002
    stop_on_success: bool = True
    rt_priority: int = 10


def run_episode(
    robot: Robot,
    controller: Controller,
    safety: SafetyFilter,
    *,
    episode: int,
    hz: float,
    max_steps: int,
    seed: int | None = None,
    config: LoopConfig | None = None,
    sinks: list[TickSink] | tuple = (),
    stop: threading.Event | None = None,
) -> EpisodeResult:
    """Run one episode on a connected robot and return its result.

    The robot is reset with ``seed``; the controller is primed with the first observation (the robot
    is not commanded while the first chunk is computed); then ticks run at ``hz`` (paced on the wall
    clock if ``robot.realtime``) until success, a terminal, ``max_steps``, an operator event or
    ``stop`` being set.
    """
    config = config or LoopConfig()
    t_start = time.perf_counter()
    faults_before = {**robot.fault_stats(), **controller.fault_stats()}
    robot.reset(seed)
    # The rate limit starts from the measured state; holds are the robot's own (position or zero motion).
    safety.reset(robot.hold_action(None), hold_fn=robot.hold_action)
    task = robot.task
    observation = robot.get_observation()
    controller.reset(observation, task)
    for sink in sinks:
        sink.start_episode(episode, task)
    timer = TickTimer(hz, spin_s=config.spin_s, paced=robot.realtime)
    # Elevated priority only while paced ticks run: threads and processes started before keep theirs.
    priority = elevate(config.rt_priority) if robot.realtime else "none"
    try:
        timer.start()
        outcome, success, steps, total_reward, takeovers, intervention_ticks, truncated = _tick_loop(
            robot, controller, safety, timer, task, observation, episode, max_steps, config, sinks, stop
        )
    finally:
        if priority != "none":
            restore()
    timing = timer.summary().to_dict()  # before the final observation's wait, which is no tick
    takers = [s for s in sinks if getattr(s, "wants_final_observation", False)]
    if truncated and outcome != "rerecord" and takers:
        final = _final_observation(robot, controller, timer, episode, steps)
        if final is not None:
            for sink in takers:
                sink.on_final_observation(final)
    result = EpisodeResult(
        episode=episode,
        seed=seed,
        steps=steps,
        success=success,
        outcome=outcome,
        total_reward=round(total_reward, 4),
        takeovers=takeovers,
        intervention_ticks=intervention_ticks,
        starved_ticks=controller.scheduler.stats.starved_ticks,
        timing=timing,
        safety=safety.stats.to_dict(),
        scheduler=controller.scheduler.stats.to_dict(),
        wall_s=round(time.perf_counter() - t_start, 3),
        task=task,
        head_version=int(getattr(controller.head, "version", 0)),
        base_version=int(controller.scheduler.version),
        scene=dict(getattr(robot, "scene", None) or {}),
        faults=_fault_delta(faults_before, {**robot.fault_stats(), **controller.fault_stats()}),
    )
    for sink in sinks:
        sink.end_episode(result)
    return result


def _final_observation(robot: Robot, controller: Controller, timer: TickTimer, episode: int,
                       tick: int) -> FinalObservation | None:
    """The observation a next tick ``tick`` would have started from (read after one more tick period on
    a paced robot); None, logged, when the robot cannot be read (the last chunk then has no bootstrap)."""
    timer.wait()
    obs_time = time.time()
    try:
        observation = robot.get_observation()
    except Exception as exc:  # noqa: BLE001 - a robot gone at the episode's end costs one bootstrap, not the session
        log.warning("episode %d: no final observation (%r); its last chunk will not bootstrap", episode, exc)
        return None
    window, _ = controller.scheduler.window(tick, controller.horizon, fill=controller.hold())
    return FinalObservation(
        episode=episode,
        tick=tick,
        observation=observation,
        features=np.asarray(controller.scheduler.features, np.float16),
        base_window=window,
        head_version=int(getattr(controller.head, "version", 0)),
        base_version=int(controller.scheduler.version),
        obs_time=obs_time,
    )


def _fault_delta(before: dict, after: dict) -> dict:
    """The counters that changed during the episode."""
    out = {k: v - before.get(k, 0) for k, v in after.items() if isinstance(v, int | float)}
    return {k: v for k, v in out.items() if v}


def _tick_loop(
    robot: Robot,
    controller: Controller,
    safety: SafetyFilter,
    timer: TickTimer,
    task: str,
    observation: dict[str, np.ndarray],
    episode: int,
    max_steps: int,
    config: LoopConfig,
    sinks: list[TickSink] | tuple,
    stop: threading.Event | None,
) -> tuple[str, bool, int, float, int, int, bool]:
    """The ticks of one episode; returns (outcome, success, steps, total reward, takeovers, intervention ticks,
    the last tick was ``truncated``)."""
    total_reward, takeovers, intervention_ticks = 0.0, 0, 0
    truncated = False
    outcome, success, steps = "timeout", False, 0
    lateness = 0.0
    for tick in range(max_steps):
        obs_time = time.time()
        obs_mono = time.monotonic()
        # Tick 0 reads again: the observation the first chunk was primed on may be seconds old.
        with timer.section("observe"):
            observation = robot.get_observation()
        capture_time = robot.capture_time() or time.time()
        with timer.section("decide"):
            decision = controller.decide(observation, task, tick)
        with timer.section("send"):
            # the watchdog refuses an action decided on a stale observation (paced robots only)
            safe = safety.filter(decision.action, now=time.monotonic(), obs_time=obs_mono if robot.realtime else None)
            sent = np.asarray(robot.send_action(safe), np.float32)
            status = robot.episode_status()
        send_time = time.time()
        steps = tick + 1
        total_reward += status.reward
        takeovers += int(decision.takeover_start)
        intervention_ticks += int(decision.is_intervention)
        success = success or status.success
        events = set(decision.events)
        stopped = stop is not None and stop.is_set()
        done = status.terminated or (status.success and config.stop_on_success) or "success" in events
        done = done or "failure" in events
        if "success" in events:
            success = True
        if "failure" in events:
            success = False
        failed = done and not success  # a failure mark, or a terminal before success
        ended = done or stopped or "stop" in events or "rerecord" in events or steps == max_steps
        with timer.section("record"):
            record = TickRecord(
                episode=episode,
                tick=tick,
                observation=observation,
                base_action=decision.base_action,
                head_action=decision.head_action,
                action=sent,
                is_intervention=decision.is_intervention,
                takeover_start=decision.takeover_start,
                starved=decision.starved,
                chunk_index=decision.chunk_index,
                chunk_step=decision.chunk_step,
                head_version=decision.head_version,
                base_version=decision.base_version,
                features=decision.features,
                reward=status.reward,
                success=status.success,
                done=done,
                truncated=ended and not done,
                obs_time=obs_time,
                send_time=send_time,
                lateness_ms=lateness,
                base_window=decision.base_window,
                failed=failed,
                capture_time=capture_time,
            )
            for sink in sinks:
                sink.on_tick(record)
        if ended:
            truncated = record.truncated
            if "rerecord" in events:
                outcome = "rerecord"
            elif stopped or "stop" in events:
                outcome = "stopped"
            elif done:
                outcome = "success" if success else "failure"
            else:
                outcome = "success" if success else "timeout"
            break
        lateness = timer.wait()
    return outcome, success, steps, total_reward, takeovers, intervention_ticks, truncated
