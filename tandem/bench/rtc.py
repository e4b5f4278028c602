"""``tandem bench rtc``: chunk splicing under inference delay: naive switching, cross-fade and RTC.

The shipped tiny VLA drives the simulated MetaWorld arm through its task suite
(``configs/suite/tiny_vla_metaworld.yaml``) on simulated time (``robot.realtime=false``), with the real
control loop, scheduler and safety filter, the policy inline. Inference delay is emulated
deterministically (``scheduler.sim_delay_ticks``): a chunk becomes available d ticks after the
observation it was computed from, so the figures do not depend on the machine's load. Each arm
(``scheduler.splice`` x d) runs the same episodes: the same scenes (seeds) and the same sampling noise
(the policy is reseeded per episode).

Per arm it reports the success rate and the *splice jerk*: at each tick where a new chunk takes over
from the old one (``ChunkScheduler.splice_ticks``), the largest change of the executed base action,
``max |a_t - a_{t-1}|`` over the action's elements and over the splice tick and the ``blend_ticks``
after it (the same window for every mode, so a cross-fade's spread-out jump is counted whole); the
mean over splices and the largest. ``within_jerk`` is the same change averaged over the ticks outside
those windows (the policy's own motion, for scale). Base actions are the plan's, before the safety
filter (whose rate limit would cap them).
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

import numpy as np

from tandem.runtime.build import make_policy, make_robot
from tandem.runtime.config import compose_run
from tandem.runtime.control.controller import Controller
from tandem.runtime.control.loop import EpisodeResult, TickRecord, run_episode
from tandem.runtime.control.safety import SafetyFilter
from tandem.runtime.control.scheduler import SPLICE_MODES, ChunkScheduler
from tandem.runtime.inference.backends import InlineBackend

DEFAULT_DELAYS = (0, 1, 2, 4, 8)


class _SpliceRecorder:
    """A tick sink that keeps each episode's base actions and, at its end, the scheduler's splice ticks."""

    def __init__(self, scheduler: ChunkScheduler, window: int) -> None:
        self.scheduler = scheduler
        self.window = window
        self.splice_jerks: list[float] = []
        self.within_jerks: list[float] = []
        self._actions: list[np.ndarray] = []

    def start_episode(self, episode: int, task: str) -> None:
        """Forget the last episode's actions."""
        self._actions = []

    def on_tick(self, record: TickRecord) -> None:
        """Keep the executed base action float32[A]."""
        self._actions.append(np.asarray(record.base_action, np.float32))

    def end_episode(self, result: EpisodeResult) -> None:
        """Turn the episode's actions and splice ticks into jerks."""
        splice, within = splice_jerks(np.stack(self._actions), self.scheduler.splice_ticks, self.window)
        self.splice_jerks += splice
        self.within_jerks += within


def splice_jerks(actions: np.ndarray, splice_ticks: list[int], window: int) -> tuple[list[float], list[float]]:
    """Per-splice jerk and the per-tick changes outside the splice windows.

    Args:
        actions: float32[T, A], the executed base actions of one episode, tick by tick.
        splice_ticks: ticks at which a new chunk took over.
        window: ticks after a splice tick that belong to it (the cross-fade's ``blend_ticks``).

    Returns:
        (one value per splice inside the episode: ``max |a_t - a_{t-1}|`` over elements and over
        ``t`` in ``[s, s + window]``; ``max |a_t - a_{t-1}|`` over elements of every other tick), in
        action units per tick.
    """
    if len(actions) < 2:
        return [], []
    step = np.abs(np.diff(actions, axis=0)).max(axis=1)  # step[t - 1] = change into tick t
    in_window = np.zeros(len(step), bool)
    out = []
    for s in splice_ticks:
        lo, hi = max(s, 1), min(s + window, len(actions) - 1)
        if lo > hi:
            continue
        out.append(float(step[lo - 1 : hi].max()))
        in_window[lo - 1 : hi] = True
    return out, [float(v) for v in step[~in_window]]


def _arm(
    robot: Any, policy: Any, config: Any, mode: str, delay: int, tasks: list[str], episodes: int, max_steps: int,
    seed: int,
) -> dict[str, Any]:
    """Run one arm (splice mode x delay) over ``episodes`` per task; its figures."""
    t0 = time.perf_counter()
    sched_cfg = dataclasses.replace(config.scheduler, splice=mode, sim_delay_ticks=int(delay))
    scheduler = ChunkScheduler(InlineBackend(policy), sched_cfg, lookahead=config.session.horizon, synchronous=True)
    low, high = robot.action_feature.bounds()
    safety = SafetyFilter(config.safety, low, high, robot.hold_action(None))
    controller = Controller(scheduler, config.session.horizon, hold=safety.hold_action)
    recorder = _SpliceRecorder(scheduler, sched_cfg.blend_ticks)
    per_task: dict[str, list[bool]] = {t: [] for t in tasks}
    steps, fallbacks, rtc_requests, starved = [], 0, 0, 0
    for task in tasks:
        robot.set_task(task)
        for k in range(episodes):
            if hasattr(policy, "reseed"):
                policy.reseed(seed + k)
            result = run_episode(robot, controller, safety, episode=k, hz=robot.fps, max_steps=max_steps,
                                 seed=seed + k, sinks=[recorder])
            per_task[task].append(bool(result.success))
            steps.append(result.steps)
            fallbacks += result.scheduler.get("rtc_fallbacks", 0)
            rtc_requests += result.scheduler.get("rtc_requests", 0)
            starved += result.starved_ticks
    n = sum(len(v) for v in per_task.values())
    wins = sum(sum(v) for v in per_task.values())
    sj, wj = recorder.splice_jerks, recorder.within_jerks
    return {
        "success_rate": round(wins / max(n, 1), 4),
        "successes": wins,
        "episodes": n,
        "per_task": {t: round(sum(v) / max(len(v), 1), 4) for t, v in per_task.items()},
        "splice_jerk": round(float(np.mean(sj)), 4) if sj else None,
        "splice_jerk_max": round(float(np.max(sj)), 4) if sj else None,
        "splices": len(sj),
        "within_jerk": round(float(np.mean(wj)), 4) if wj else None,
        "mean_steps": round(float(np.mean(steps)), 1) if steps else 0.0,
        "rtc_requests": rtc_requests,
        "rtc_fallbacks": fallbacks,
        "starved_ticks": starved,
        "wall_s": round(time.perf_counter() - t0, 1),
    }


def _slope(delays: list[int], values: list[float]) -> float | None:
    """Least-squares slope of ``values`` over ``delays`` (per tick of delay)."""
    if len(delays) < 2 or len(set(delays)) < 2:
        return None
    return round(float(np.polyfit(np.asarray(delays, float), np.asarray(values, float), 1)[0]), 4)


def summarize(results: dict[str, dict[str, dict[str, Any]]], delays: list[int]) -> dict[str, Any]:
    """The two questions of the sweep, answered from ``results[mode][str(d)]``.

    ``rtc_jerk_below_crossfade``: per d >= 1, whether RTC's mean splice jerk is below cross-fade's (and
    ``..._every_d`` for all of them); ``success_drop``: per mode, success at the smallest d minus success
    at the largest, and the least-squares ``success_slope`` per tick of delay;
    ``rtc_success_falls_less_than_naive``: RTC's drop is below naive's.
    """
    out: dict[str, Any] = {}
    if "rtc" in results and "crossfade" in results:
        below = {}
        for d in delays:
            if d >= 1:
                r, c = results["rtc"][str(d)]["splice_jerk"], results["crossfade"][str(d)]["splice_jerk"]
                below[str(d)] = None if r is None or c is None else bool(r < c)
        out["rtc_jerk_below_crossfade"] = below
        out["rtc_jerk_below_crossfade_every_d"] = bool(below) and all(v is True for v in below.values())
    if len(delays) >= 2:
        lo, hi = str(min(delays)), str(max(delays))
        out["success_drop"] = {m: round(r[lo]["success_rate"] - r[hi]["success_rate"], 4) for m, r in results.items()}
        out["success_slope"] = {m: _slope(delays, [r[str(d)]["success_rate"] for d in delays]) for m, r in results.items()}
        if "rtc" in results and "naive" in results:
            out["rtc_success_falls_less_than_naive"] = bool(out["success_drop"]["rtc"] < out["success_drop"]["naive"])
    return out


def bench_rtc(
    delays: list[int] | tuple[int, ...] = DEFAULT_DELAYS,
    modes: list[str] | tuple[str, ...] = SPLICE_MODES,
    episodes: int = 1,
    max_steps: int = 150,
    seed: int = 0,
    overrides: list[str] | tuple[str, ...] = (),
) -> dict[str, Any]:
    """Run every (splice mode, delay) arm on the tiny VLA's suite; return the JSON-ready result.

    Args:
        delays: emulated inference delays, ticks (>= 0).
        modes: splice modes, a subset of naive, crossfade, rtc.
        episodes: episodes per task of the suite, per arm (seeds ``seed .. seed + episodes - 1``).
        max_steps: episode time limit, ticks (<= 500).
        seed: first scene seed (and sampling-noise seed).
        overrides: ``tandem run`` overrides applied on top (e.g. ``robot.suite=[push-v3]``,
            ``robot.scenes=train``, ``scheduler.blend_ticks=5``, ``policy.rtc_max_guidance=10``).

    Raises:
        ValueError: a negative delay, an unknown mode or a non-positive episode count.
    """
    delays = [int(d) for d in delays]
    if any(d < 0 for d in delays) or not delays:
        raise ValueError(f"--delays must be ticks >= 0, got {delays}")
    bad = [m for m in modes if m not in SPLICE_MODES]
    if bad or not modes:
        raise ValueError(f"--modes must be among {list(SPLICE_MODES)}, got {list(modes)}")
    if episodes < 1:
        raise ValueError(f"--episodes must be >= 1, got {episodes}")
    config = compose_run([
        "policy=tiny_vla", "robot.realtime=false", "robot.scenes=unseen", "policy.device=cpu",
        f"robot.max_episode_steps={max_steps}", "session.backend=inline", *overrides,
    ])
    robot = make_robot(config.robot)
    policy = make_policy(config.policy, robot)
    tasks = list(config.robot.suite) or [config.robot.task]
    t0 = time.perf_counter()
    results: dict[str, dict[str, dict[str, Any]]] = {}
    try:
        robot.connect()
        for mode in modes:
            results[mode] = {}
            for d in delays:
                results[mode][str(d)] = _arm(robot, policy, config, mode, d, tasks, episodes, max_steps, seed)
    finally:
        robot.disconnect()
        policy.close()
    return {
        "bench": "rtc",
        "policy": config.policy.type,
        "checkpoint": getattr(config.policy, "path", ""),
        "tasks": tasks,
        "scenes": getattr(config.robot, "scenes", ""),
        "episodes_per_task": episodes,
        "seeds": [seed, seed + episodes - 1],
        "max_steps": max_steps,
        "horizon": config.session.horizon,
        "blend_ticks": config.scheduler.blend_ticks,
        "margin_ticks": config.scheduler.margin_ticks,
        "rtc_max_guidance": getattr(config.policy, "rtc_max_guidance", None),
        "delays": delays,
        "modes": list(modes),
        "overrides": list(overrides),
        "cpus": os.cpu_count(),
        "wall_s": round(time.perf_counter() - t0, 1),
        "results": results,
        "summary": summarize(results, delays),
    }
