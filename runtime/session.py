"""A robot session: build the parts from a RunConfig, run N episodes, write a summary.

The robot is always disconnected and workers always stopped, whatever happens (``finally``); Ctrl-C
ends the session after the current tick with the episode marked "stopped".
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tandem.hardware.robot import Robot
from tandem.policies.base import BasePolicy, PolicyLoadError
from tandem.registry import component_class
from tandem.runtime.controller import Controller
from tandem.runtime.inference import InferenceBackend, InlineBackend, ThreadBackend
from tandem.runtime.loop import EpisodeResult, TickSink, run_episode
from tandem.runtime.safety import SafetyFilter
from tandem.runtime.scheduler import ChunkScheduler
from tandem.runtime.takeover import TakeoverOperator, make_operator
from tandem.validate import stride_of

log = logging.getLogger(__name__)


def make_robot(config: Any) -> Robot:
    """The robot for a robot config (by its ``type``)."""
    return component_class("robot", config.type)(config)


def make_policy(config: Any, robot: Robot) -> BasePolicy:
    """The base policy for a policy config (built for ``robot``'s schemas), checked against its action size."""
    policy = component_class("policy", config.type)(config, robot)
    check_action_dim(policy, robot)
    return policy


def check_action_dim(policy: BasePolicy, robot: Robot) -> None:
    """Raise PolicyLoadError unless the policy's action size is the robot's."""
    action_dim = robot.action_feature.shape[0]
    if policy.action_dim != action_dim:
        raise PolicyLoadError(
            f"policy {policy.name!r} outputs {policy.action_dim}-D actions but robot {robot.name!r} "
            f"takes {action_dim}-D actions; pick a policy trained for this robot"
        )


def make_backend(kind: str, policy: BasePolicy) -> InferenceBackend:
    """Where an in-process policy runs: "inline" or "thread" ("process"/"remote": ``make_link_backend``)."""
    return {"inline": InlineBackend, "thread": ThreadBackend}[kind](policy)


@dataclass
class SessionSummary:
    """What ``summary.json`` holds."""

    robot: str
    task: str
    policy: str
    episodes: list[dict] = field(default_factory=list)
    success_rate: float = 0.0
    wall_s: float = 0.0
    recording: dict = field(default_factory=dict)  # Recorder.stats() when record.enabled
    links: dict = field(default_factory=dict)  # experience/weights link stats when link.enabled
    live_view: dict = field(default_factory=dict)  # LiveView.stats() when display=true

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        return asdict(self)


def default_run_dir() -> Path:
    """runs/<date>_<time> under the current directory."""
    return Path("runs") / time.strftime("%Y%m%d_%H%M%S")


class Session:
    """Owns the robot, the policy backend and the controller for a run of episodes.

    Args:
        config: a validated RunConfig.
        sinks: tick consumers (recorder, chunk assembler, live view).
        stop: set it to end the session after the current tick.
        weights_consumers: weight kind ("head", "critic", "base") -> WeightsConsumer fed by the learner
            when ``link.enabled`` (swapped in at chunk boundaries).
    """

    def __init__(
        self,
        config: Any,
        sinks: list[TickSink] | None = None,
        stop: threading.Event | None = None,
        weights_consumers: dict[str, Any] | None = None,
    ) -> None:
        self.config = config
        self.weights_consumers = dict(weights_consumers or {})
        self.experience_link: Any = None
        self.weights_link: Any = None
        self._link_sink: Any = None
        self.pacer: Any = None  # LearnerPacer when link.learner_updates_per_episode > 0
        self.sinks = list(sinks or [])
        self.stop = stop or threading.Event()
        self.robot: Robot | None = None
        self.policy: BasePolicy | None = None
        self.backend: InferenceBackend | None = None
        self.controller: Controller | None = None
        self.safety: SafetyFilter | None = None
        self.operator: TakeoverOperator | None = None
        self.learning: Any = None  # tandem.value.learning.RobotParts: head, critic, consumers

    def build(self) -> None:
        """Create the parts (the robot is not connected yet)."""
        cfg = self.config
        self.robot = make_robot(cfg.robot)
        if cfg.session.backend in ("process", "remote"):  # the policy is built in the worker / server
            from tandem.runtime.policy_link import make_link_backend

            self.backend, self.policy = make_link_backend(cfg.session.backend, cfg, self.robot)
            try:
                check_action_dim(self.policy, self.robot)
            except BaseException:
                self.backend.close()
                raise
        else:
            self.policy = make_policy(cfg.policy, self.robot)
            self.backend = make_backend(cfg.session.backend, self.policy)
        low, high = self.robot.action_feature.bounds()
        self.safety = SafetyFilter(cfg.safety, low, high, self.robot.hold_action(None))
        scheduler = ChunkScheduler(
            self.backend, cfg.scheduler, lookahead=cfg.session.horizon, synchronous=not self.robot.realtime
        )
        safety = self.safety
        self.operator = make_operator(getattr(cfg, "teleop", None), self.robot, last_sent=lambda: safety.last)
        self.learning = self._build_head()
        horizon = cfg.session.horizon
        record_stride = stride_of("session.record_stride", cfg.session.record_stride, horizon)
        self.controller = Controller(
            scheduler, horizon, hold=self.safety.hold_action, head=self.learning.head, operator=self.operator,
            windows_every_tick=record_stride < horizon,  # overlapping records start between boundaries
            head_stride=cfg.session.head_stride,
        )

    def _build_head(self) -> Any:
        """The ``head`` block: the head (and the edit head's critic) and their weights consumers."""
        from tandem.value.learning import HeadConfig, RobotParts, robot_dims, robot_parts

        head_cfg = getattr(self.config, "head", None) or HeadConfig()
        if head_cfg.type == "none":
            return RobotParts()
        parts = robot_parts(head_cfg, robot_dims(self.robot, self.policy, self.config.session.horizon))
        for kind, consumer in parts.consumers.items():
            self.weights_consumers.setdefault(kind, consumer)
        return parts

    def _start_recorder(self) -> Any:
        """The episode recorder (``record.enabled``), started and added to the sinks; else None."""
        record = getattr(self.config, "record", None)
        if record is None or not record.enabled:
            return None
        from tandem.runtime.recorder import make_recorder

        recorder = make_recorder(record, self.robot, self.policy).start()
        self.sinks.append(recorder)
        return recorder

    def _start_links(self) -> None:
        """``link.enabled``: chunk records -> ExperienceLink (a sink), learner weights -> boundary swaps."""
        link = getattr(self.config, "link", None)
        if link is None or not link.enabled:
            return
        from tandem.runtime.chunk_assembler import ChunkAssembler
        from tandem.runtime.experience_link import ExperienceLink
        from tandem.runtime.weights_link import WeightsSubscriber

        self.experience_link = ExperienceLink(link).start()
        try:
            self.weights_link = WeightsSubscriber(link, self.weights_consumers).start()
        except BaseException:
            self.experience_link.close(0)
            raise
        session = self.config.session
        self._link_sink = ChunkAssembler(link.robot_id, session.horizon, self.experience_link.send,
                                         stride=session.record_stride)
        self.sinks.append(self._link_sink)
        self.controller.boundary_callbacks.append(self.weights_link.apply_staged)
        if link.learner_updates_per_episode > 0:
            from tandem.runtime.learner_pacing import LearnerPacer

            self.pacer = LearnerPacer(link.learner_updates_per_episode, link.learner_wait_s,
                                      self.weights_link.stats.learner_progress)

    def _close_links(self) -> dict:
        """Drain the experience link (up to ``link.drain_s``), stop both links; their stats."""
        stats: dict = {}
        if self._link_sink is not None:
            self.sinks.remove(self._link_sink)
            self._link_sink = None
        if self.weights_link is not None:
            if self.weights_link.apply_staged in self.controller.boundary_callbacks:
                self.controller.boundary_callbacks.remove(self.weights_link.apply_staged)
            self.weights_link.close()
            stats["weights"] = self.weights_link.stats.to_dict()
        if self.experience_link is not None:
            stats["all_acked"] = self.experience_link.close()
            stats["experience"] = self.experience_link.stats.to_dict()
        if self.pacer is not None:
            stats["pacing"] = self.pacer.stats.to_dict()
        return stats

    def run(self, on_episode: Any = None) -> SessionSummary:
        """Connect, run the configured episodes, always disconnect (and drain the links). The summary."""
        if self.robot is None:
            self.build()
        self._start_links()
        try:
            summary = self._run_episodes(on_episode)
        finally:
            links = self._close_links()
        summary.links = links
        return summary

    def _run_episodes(self, on_episode: Any = None) -> SessionSummary:
        """Connect, run the configured episodes, always disconnect. Returns the summary."""
        cfg = self.config
        if self.robot is None:
            self.build()
        robot = self.robot
        recorder = None
        summary = SessionSummary(robot=robot.name, task=", ".join(robot.tasks), policy=self.policy.name)
        max_steps = cfg.session.max_episode_steps or getattr(robot.config, "max_episode_steps", 1000)
        t0 = time.perf_counter()
        try:
            recorder = self._start_recorder()  # recovers what a killed session left, in its converter
            robot.connect()
            if self.operator is not None:
                self.operator.connect()  # prints the device's controls
            for i in range(cfg.session.episodes):
                if self.stop.is_set():
                    break
                suite = robot.tasks
                if len(suite) > 1:
                    robot.set_task(suite[i % len(suite)])
                result: EpisodeResult = run_episode(
                    robot,
                    self.controller,
                    self.safety,
                    episode=i,
                    hz=robot.fps,
                    max_steps=max_steps,
                    seed=cfg.session.seed + i,
                    config=cfg.loop,
                    sinks=self.sinks,
                    stop=self.stop,
                )
                summary.episodes.append(asdict(result))
                if on_episode is not None:
                    on_episode(result)
                if result.outcome == "stopped":
                    break  # the operator's stop event (or Ctrl-C) ends the session
                if self.pacer is not None:
                    self.pacer.after_episode(self.stop)
        except KeyboardInterrupt:
            log.warning("interrupted: stopping the session")
        finally:
            try:
                try:
                    if self.operator is not None:
                        self.operator.disconnect()  # restores the terminal
                finally:
                    robot.disconnect()
            finally:
                try:
                    self.backend.close()
                    self.policy.close()
                finally:
                    if recorder is not None:  # flush the spool, wait for the last episodes' commits
                        self.sinks.remove(recorder)
                        summary.recording = recorder.close()
        n = len(summary.episodes)
        summary.success_rate = sum(e["success"] for e in summary.episodes) / n if n else 0.0
        summary.wall_s = round(time.perf_counter() - t0, 3)
        return summary


def write_summary(summary: SessionSummary, run_dir: Path) -> Path:
    """Write ``summary.json`` into ``run_dir`` (created) and return its path."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "summary.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(summary.to_dict(), indent=2))
    tmp.replace(path)
    return path
