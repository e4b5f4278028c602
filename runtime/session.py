"""A robot session: build the parts from a RunConfig, run N episodes, write a summary.

The robot is always disconnected and workers always stopped, whatever happens (``finally``); Ctrl-C
ends the session after the current tick with the episode marked "stopped". A re-recorded episode (the
operator's "rerecord") is discarded from the dataset and retracted from the learner, and its slot runs
again: the session still keeps ``session.episodes`` episodes. An episode that fails (a policy worker dead
for good, a robot error) ends the session cleanly: the sinks close that episode as "stopped", the
recorder and the links are drained, and :class:`SessionAborted` carries the summary of the episodes
that finished (``tandem run`` writes it and the report, then exits with a ``tandem:`` line).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tandem.core.errors import TandemError
from tandem.hardware.robot import Robot
from tandem.policies.base import BasePolicy
from tandem.runtime.build import build_parts
from tandem.runtime.control.controller import Controller
from tandem.runtime.control.loop import EpisodeResult, TickSink, run_episode
from tandem.runtime.control.safety import SafetyFilter
from tandem.runtime.inference.backends import InferenceBackend
from tandem.runtime.links.chunks import ChunkAssembler
from tandem.runtime.links.experience import ExperienceLink
from tandem.runtime.links.images import ChunkImages
from tandem.runtime.links.pacing import LearnerPacer
from tandem.runtime.links.weights import WeightsSubscriber
from tandem.runtime.recording.recorder import make_recorder
from tandem.teleop.takeover import TakeoverOperator

log = logging.getLogger(__name__)


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
    # session.eval_every > 0: one entry per evaluation: {"after_episodes", "success_rate", "episodes": [...]}
    evaluations: list[dict] = field(default_factory=list)
    error: str = ""  # why the session ended early ("": it did not)
    # Faults and how they were handled: the robot's counters (read_retries, read_recovered, read_failures),
    # the policy worker's restarts (worker_restarts, session.backend=process), the safety filter's stall
    # counters summed over the episodes (watchdog_trips, watchdog_holds, stale_observation),
    # controlled_stops and, after one, controlled_stop ("held", "hold_failed", "none").
    faults: dict = field(default_factory=dict)
    # The reset phases between episodes (real robots with an operator device): one entry each,
    # {"before_episode", "how" (confirmed, timeout, stop, stopped), "wait_s"}.
    resets: list[dict] = field(default_factory=list)
    # Episodes the operator asked to record again ("rerecord"): their results, not counted in ``episodes`` or
    # the success rate; discarded from the dataset and retracted from the learner, their slots run again.
    rerecorded: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        return asdict(self)

    def headline(self) -> dict:
        """What the session achieved: ``autonomous`` (success of the last evaluation on unseen scenes, no
        operator; None without evaluations), ``operator_share`` (fraction of the training episodes' ticks
        the operator drove) and ``assisted`` (success of the training episodes, operator present)."""
        steps = sum(e["steps"] for e in self.episodes)
        human = sum(e["intervention_ticks"] for e in self.episodes)
        return {"autonomous": self.evaluations[-1]["success_rate"] if self.evaluations else None,
                "operator_share": human / steps if steps else 0.0, "assisted": self.success_rate}


class SessionAborted(TandemError, RuntimeError):
    """An episode failed and the session ended early (the cause is ``__cause__``).

    Attributes:
        summary: the session's summary: the episodes that finished, the recording and link stats;
            ``summary.error`` says what failed.
    """

    def __init__(self, message: str, summary: SessionSummary) -> None:
        super().__init__(message)
        self.summary = summary


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
        self.learning: Any = None  # tandem.policies.heads.build.RobotParts (head, critic); None: no head
        self._failure: BaseException | None = None  # the exception that ended the session early
        self.run_id = uuid.uuid4().hex[:12]  # names this session in the learner's log (retractions)

    def build(self) -> None:
        """Create the parts (the robot is not connected yet): ``tandem.runtime.build.build_parts``."""
        parts = build_parts(self.config, self.weights_consumers)
        self.robot, self.policy, self.backend = parts.robot, parts.policy, parts.backend
        self.safety, self.operator, self.controller = parts.safety, parts.operator, parts.controller
        self.learning = parts.head
        self.weights_consumers = parts.weights_consumers

    def _start_recorder(self) -> Any:
        """The episode recorder (``record.enabled``), started and added to the sinks; else None."""
        record = getattr(self.config, "record", None)
        if record is None or not record.enabled:
            return None
        if not record.root:
            run_dir = self.config.session.run_dir
            if not run_dir:
                log.info("not recording: record.root and session.run_dir are both empty")
                return None
            record = dataclasses.replace(record, root=str(Path(run_dir) / "dataset"))
        recorder = make_recorder(record, self.robot, self.policy).start()
        self.sinks.append(recorder)
        return recorder

    def _start_links(self) -> None:
        """``link.enabled``: chunk records -> ExperienceLink (a sink), learner weights -> boundary swaps."""
        link = getattr(self.config, "link", None)
        if link is None or not link.enabled:
            return
        self.experience_link = ExperienceLink(link).start()
        try:
            self.weights_link = WeightsSubscriber(link, self.weights_consumers).start()
        except BaseException:
            self.experience_link.close(0)
            raise
        session = self.config.session
        images = ChunkImages(link.image_size, link.image_quality, link.image_max_bytes) if link.image_size else None
        self._link_sink = ChunkAssembler(link.robot_id, session.horizon, self.experience_link.send,
                                         stride=session.record_stride, images=images)
        self.sinks.append(self._link_sink)
        self.controller.boundary_callbacks.append(self.weights_link.apply_staged)
        self.controller.episode_callbacks.append(self.weights_link.apply_episode)  # base weights
        if link.learner_updates_per_episode > 0:
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
            if self.weights_link.apply_episode in self.controller.episode_callbacks:
                self.controller.episode_callbacks.remove(self.weights_link.apply_episode)
            self.weights_link.close()
            stats["weights"] = self.weights_link.stats.to_dict()
        if self.experience_link is not None:
            stats["all_acked"] = self.experience_link.close()
            stats["experience"] = self.experience_link.stats.to_dict()
        if self.pacer is not None:
            stats["pacing"] = self.pacer.stats.to_dict()
        return stats

    def run(self, on_episode: Any = None, on_eval: Any = None) -> SessionSummary:
        """Connect, run the configured episodes, always disconnect (and drain the links). The summary.

        ``on_episode(result)`` follows every training episode, ``on_eval(after, result)`` every evaluation
        episode (``session.eval_every``).
        """
        if self.robot is None:
            self.build()
        self._start_links()
        try:
            summary = self._run_episodes(on_episode, on_eval)
        finally:
            links = self._close_links()
        summary.links = links
        if summary.error:
            raise SessionAborted(summary.error, summary) from self._failure
        return summary

    def _evaluate(self, after: int, max_steps: int, on_eval: Any = None) -> dict:
        """``session.eval_episodes`` autonomous episodes on unseen scenes after ``after`` training episodes.

        No operator, no sinks (nothing recorded, nothing sent to the learner); the head runs with the
        weights it has. The robot's scenes switch to "unseen" for them and back afterwards.
        """
        cfg, robot, controller = self.config.session, self.robot, self.controller
        operator, controller.operator = controller.operator, None
        scenes, robot.config.scenes = robot.config.scenes, "unseen"
        suite, task = robot.tasks, getattr(robot, "task_name", None)
        results = []
        try:
            for k in range(cfg.eval_episodes):
                if self.stop.is_set():
                    break
                if len(suite) > 1:
                    robot.set_task(suite[k % len(suite)])
                result = run_episode(robot, controller, self.safety, episode=k, hz=robot.fps, max_steps=max_steps,
                                     seed=cfg.eval_seed + k, config=self.config.loop, sinks=[], stop=self.stop)
                results.append(asdict(result))
                if on_eval is not None:
                    on_eval(after, result)
        finally:
            controller.operator, robot.config.scenes = operator, scenes
            if task is not None and len(suite) > 1:
                robot.set_task(task)
        done = [r for r in results if r["outcome"] != "stopped"]
        rate = sum(r["success"] for r in done) / len(done) if done else 0.0
        return {"after_episodes": after, "split": "unseen", "success_rate": rate, "episodes": results}

    def _controlled_stop(self, summary: SessionSummary) -> None:
        """After a fault: the robot holds its last safe command (position arms: with torque on) for
        ``safety.stop_hold_s``, then the session goes on to disconnect it. Counted in ``summary.faults``."""
        hold = None if self.safety is None else self.safety.last
        try:
            done = self.robot.controlled_stop(hold, self.config.safety.stop_hold_s)
        except Exception as exc:  # noqa: BLE001 - a robot's stop must not hide the fault that caused it
            log.error("controlled stop failed: %r", exc)
            done = "hold_failed"
        summary.faults["controlled_stops"] = summary.faults.get("controlled_stops", 0) + 1
        summary.faults["controlled_stop"] = done

    def _episode_failed(self, summary: SessionSummary, episode: int, seed: int | None, exc: Exception,
                        evaluation: bool = False) -> None:
        """End the session after a failed episode: a controlled stop (the robot holds, then is
        disconnected by the caller), close the episode as "stopped" in the sinks (the recorder keeps its
        ticks, the chunk assembler sends its last chunk) and note the error in the summary."""
        what = f"the evaluation after episode {episode}" if evaluation else f"episode {episode}"
        summary.error = f"{what} failed: {type(exc).__name__}: {exc}"
        self._failure = exc
        log.error("%s; ending the session (the %d finished episodes are kept)", summary.error, len(summary.episodes))
        log.debug("the failed episode's traceback", exc_info=exc)  # tandem -v shows it
        self._controlled_stop(summary)
        if evaluation:
            return  # evaluations feed no sink
        safety = self.safety.stats.to_dict() if self.safety is not None else {}
        result = EpisodeResult(episode=episode, seed=seed, steps=0, success=False, outcome="stopped", total_reward=0.0,
                               takeovers=0, intervention_ticks=0, starved_ticks=0, safety=safety,
                               faults={"error": summary.error, **summary.faults})
        for sink in self.sinks:
            try:
                sink.end_episode(result)
            except Exception:  # noqa: BLE001 - one sink's failure must not stop the others closing
                log.exception("closing the failed episode in %s failed", type(sink).__name__)

    def _run_episodes(self, on_episode: Any = None, on_eval: Any = None) -> SessionSummary:
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
            # ``done``: episodes kept, the slots filled; ``i``: the episode id of every episode run, re-recorded
            # ones included (ids are never reused: the learner retracts a re-recorded one by its id)
            done, i = 0, 0
            while done < cfg.session.episodes:
                if self.stop.is_set():
                    break
                if i > 0 and not self._reset_phase(summary, i):
                    break
                suite = robot.tasks
                if len(suite) > 1:
                    robot.set_task(suite[done % len(suite)])
                seed = cfg.session.seed + done  # a re-recorded slot runs its scene again
                try:
                    result: EpisodeResult = run_episode(
                        robot,
                        self.controller,
                        self.safety,
                        episode=i,
                        hz=robot.fps,
                        max_steps=max_steps,
                        seed=seed,
                        config=cfg.loop,
                        sinks=self.sinks,
                        stop=self.stop,
                    )
                except Exception as exc:  # noqa: BLE001 - a dead policy worker, a robot error: end cleanly
                    self._episode_failed(summary, i, seed, exc)
                    break
                i += 1
                if on_episode is not None:
                    on_episode(result)
                if result.outcome == "rerecord":
                    self._discard(summary, result)
                    continue  # the slot runs again
                summary.episodes.append(asdict(result))
                done += 1
                if result.outcome == "stopped":
                    break  # the operator's stop event (or Ctrl-C) ends the session
                if self.pacer is not None:
                    self.pacer.after_episode(self.stop)
                every = cfg.session.eval_every
                if every and done % every == 0 and not self.stop.is_set():
                    try:
                        summary.evaluations.append(self._evaluate(done, max_steps, on_eval))
                    except Exception as exc:  # noqa: BLE001 - as for a training episode
                        self._episode_failed(summary, i - 1, None, exc, evaluation=True)
                        break
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
        summary.faults = {**robot.fault_stats(), **self.controller.fault_stats(), **self._stall_totals(summary),
                          **summary.faults}
        n = len(summary.episodes)
        summary.success_rate = sum(e["success"] for e in summary.episodes) / n if n else 0.0
        summary.wall_s = round(time.perf_counter() - t0, 3)
        return summary

    def _discard(self, summary: SessionSummary, result: EpisodeResult) -> None:
        """A re-recorded episode: kept out of ``summary.episodes`` (listed in ``summary.rerecorded``), its
        records retracted from the learner (a ``retract`` message behind them on the experience link); the
        recorder discards it from the dataset by its outcome. Its slot runs again with the same seed."""
        summary.rerecorded.append(asdict(result))
        if self.experience_link is not None:
            self.experience_link.retract(result.episode, self.run_id)
        log.info("episode %d re-recorded after %d ticks: discarded from the dataset%s; the episode runs again "
                 "(seed %s)", result.episode, result.steps,
                 " and retracted from the learner" if self.experience_link is not None else "", result.seed)

    def _reset_phase(self, summary: SessionSummary, episode: int) -> bool:
        """Between episodes on a real robot with an operator: the robot holds while the operator resets the
        scene and confirms (``session.reset_timeout_s``). False if the operator stopped the session."""
        timeout = self.config.session.reset_timeout_s
        if timeout <= 0 or self.operator is None or getattr(self.robot, "simulated", False):
            return True
        print(f"reset the scene for episode {episode}; then press the takeover key/button (keyboard: space) "
              f"or mark success (y) to start it (by itself in {timeout:.0f} s; q stops)", flush=True)
        t0 = time.monotonic()
        how = self.operator.wait_for_reset(timeout, stop=self.stop)
        summary.resets.append({"before_episode": episode, "how": how, "wait_s": round(time.monotonic() - t0, 3)})
        log.info("reset phase before episode %d: %s", episode, how)
        return how not in ("stop", "stopped")

    @staticmethod
    def _stall_totals(summary: SessionSummary) -> dict[str, int]:
        """The safety filter's stall counters summed over the session's episodes (re-recorded ones too)."""
        keys = ("watchdog_trips", "watchdog_holds", "stale_observation")
        episodes = summary.episodes + summary.rerecorded
        return {k: sum(int(e.get("safety", {}).get(k, 0)) for e in episodes) for k in keys}


def write_summary(summary: SessionSummary, run_dir: Path) -> Path:
    """Write ``summary.json`` into ``run_dir`` (created) and return its path."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "summary.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(summary.to_dict(), indent=2))
    tmp.replace(path)
    return path
