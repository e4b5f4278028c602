"""Chunk scheduling: ask early, align on arrival, blend the overlap, hold on starvation.

The scheduler keeps a *plan*: base actions indexed by absolute episode tick. Each tick it

1. integrates any chunk that arrived: replies to an old request id are dropped (counted); a chunk
   computed from the observation of tick ``t_obs`` covers ticks ``t_obs .. t_obs+P-1``, so ticks
   already in the past are skipped, and the new chunk is spliced into the old plan as ``splice`` says:
   ``crossfade`` (default) fades the overlap over ``blend_ticks`` ticks (old weight falling linearly
   to 0), ``naive`` switches at once, ``rtc`` (real-time chunking) switches at once to a chunk the
   policy generated conditioned on the committed prefix (below);
2. submits a new request, with the current observation, when the plan's remaining ticks are no more
   than the measured inference delay (in ticks, windowed p95) plus ``margin_ticks`` plus the
   ``lookahead`` the controller needs at a chunk boundary;
3. returns the plan's action for this tick, or ``None`` (a starved tick, counted) when the plan has
   run out. Stale actions are never repeated: the caller holds a safe action instead.

With ``splice=rtc`` each request carries the committed prefix, the plan from the observation's tick
on (what will still run while the policy thinks, L = P - s ticks), and d, the measured delay in ticks
(``tandem.policies.tiny_vla.rtc``). A policy that supports RTC returns a chunk whose first d actions
are the prefix and whose next ones are guided towards it, so switching to it is continuous. A chunk
whose first d actions are not the prefix comes from a policy without RTC support: it is cross-faded
instead and counted (``rtc_fallbacks``).

The plan holds the *executed* base actions (after splicing), never the raw proposal; ``splice_ticks``
lists the ticks of this episode at which a new chunk took over from an old one.

The backend runs inference; the scheduler never waits on it except for the first chunk of an
episode (``prime``), during which the robot is not being commanded, and in ``synchronous`` mode:
a robot on simulated time (``realtime=False``) waits for every reply, as if the simulation's clock
stopped while the policy thinks, so sim runs are deterministic whichever backend runs the policy.
``sim_delay_ticks`` then emulates inference delay deterministically: a reply is held back until
``sim_delay_ticks`` ticks after the observation it was computed from.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass

import numpy as np

from tandem.core.validate import non_negative, one_of, positive
from tandem.policies.base import Chunk
from tandem.policies.tiny_vla.rtc import make_request
from tandem.runtime.inference.backends import InferenceBackend

SPLICE_MODES = ("naive", "crossfade", "rtc")
RTC_PREFIX_ATOL = 1e-4  # a chunk honoured the RTC request if its first d actions are the prefix within this


@dataclass
class _Request:
    """A request in flight: id, tick of its observation, the RTC prefix float32[L, A] and d it carried."""

    rid: int
    tick: int
    prefix: np.ndarray | None = None
    delay: int = 0
    since: float = 0.0
    reply: Chunk | None = None  # arrived, held back until ``tick + sim_delay_ticks``


@dataclass
class SchedulerConfig:
    """Chunk scheduler settings.

    Attributes:
        margin_ticks: extra ticks of headroom added to the measured delay when deciding to request.
        splice: how an arriving chunk replaces the old plan: "crossfade" (over ``blend_ticks``),
            "naive" (switch at once), "rtc" (real-time chunking: requests carry the committed prefix
            and the delay, the policy inpaints the new chunk; policies without RTC support fall back
            to crossfade).
        blend_ticks: ticks over which an arriving chunk is cross-faded into the old plan (0: switch);
            used by ``splice=crossfade`` and by rtc's fallback.
        latency_window: number of recent inference delays used for the delay estimate.
        prime_timeout_s: how long to wait for an episode's first chunk before failing.
        request_timeout_s: a request unanswered for this long (or 4x the slowest recent reply, if
            longer) is abandoned (its reply, if it ever
            comes, is dropped as stale) and a new one may be sent: a lost request or reply (a remote
            link that dropped, a restarted server) must not starve the robot for the rest of the episode.
        sim_delay_ticks: hold each reply back until this many ticks after its observation's tick
            (emulated inference delay, deterministic on simulated time; 0: off). Not for the first
            chunk of an episode, which the robot waits for anyway.
    """

    margin_ticks: int = 1
    splice: str = "crossfade"
    blend_ticks: int = 3
    latency_window: int = 20
    prime_timeout_s: float = 60.0
    request_timeout_s: float = 5.0
    sim_delay_ticks: int = 0

    def __post_init__(self) -> None:
        non_negative("scheduler.margin_ticks", self.margin_ticks)
        one_of("scheduler.splice", self.splice, SPLICE_MODES)
        non_negative("scheduler.sim_delay_ticks", self.sim_delay_ticks)
        non_negative("scheduler.blend_ticks", self.blend_ticks)
        positive("scheduler.latency_window", self.latency_window)
        positive("scheduler.prime_timeout_s", self.prime_timeout_s)
        positive("scheduler.request_timeout_s", self.request_timeout_s)


@dataclass
class SchedulerStats:
    """Counters for one episode."""

    requests: int = 0
    chunks: int = 0
    stale_dropped: int = 0
    starved_ticks: int = 0
    skipped_steps: int = 0
    timeouts: int = 0
    rtc_requests: int = 0
    rtc_fallbacks: int = 0

    def to_dict(self) -> dict[str, int]:
        """JSON-ready dict."""
        return dict(self.__dict__)


class ChunkScheduler:
    """Per-episode chunk plan over a non-blocking inference backend.

    Args:
        backend: where inference runs (inline, a thread, a worker process, a remote server).
        config: scheduler settings.
        lookahead: ticks of plan the caller needs beyond the current one (the execution horizon H).
        synchronous: wait for each reply right after requesting it (simulated-time robots only).
    """

    def __init__(
        self, backend: InferenceBackend, config: SchedulerConfig, lookahead: int = 0, synchronous: bool = False
    ) -> None:
        self.backend = backend
        self.config = config
        self.lookahead = lookahead
        self.synchronous = synchronous
        self._next_id = 0
        self._delays: deque[int] = deque(maxlen=config.latency_window)
        self._latencies_s: deque[float] = deque(maxlen=config.latency_window)
        self.reset()

    # -- episode lifecycle -------------------------------------------------------------------
    def reset(self) -> None:
        """Drop the plan and any request in flight (its reply will be dropped as stale)."""
        self.plan_start = 0
        self.plan = np.zeros((0, 0), np.float32)
        self.features = np.zeros(0, np.float16)
        self.version = 0
        self.samples: np.ndarray | None = None  # float32[N, L, A]: the plan's chunk's N raw samples, from plan_start
        self._pending: _Request | None = None
        self.splice_ticks: list[int] = []
        self.stats = SchedulerStats()

    def prime(self, observation: dict[str, np.ndarray], task: str) -> None:
        """Request the episode's first chunk for tick 0 and wait for it (robot not commanded yet)."""
        self._submit(observation, task, tick=0)
        self._wait_for_reply(tick=0, timeout_s=self.config.prime_timeout_s, what="scheduler.prime_timeout_s")
        self._release(tick=0, hold=False)

    def _wait_for_reply(self, tick: int, timeout_s: float | None = None, what: str = "") -> None:
        """Block until the pending request is answered (prime, synchronous mode)."""
        timeout_s = self.request_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        while self._pending is not None and self._pending.reply is None:
            if time.monotonic() > deadline:
                if not what:  # synchronous mode: abandon it like a timed-out request
                    self._pending = None
                    self.stats.timeouts += 1
                    return
                raise TimeoutError(
                    f"no chunk from the base policy within {what}={timeout_s} s; is the policy worker running?"
                )
            self._integrate(tick=tick, wait_s=0.01)

    # -- per tick ------------------------------------------------------------------------------
    @property
    def delay_ticks(self) -> int:
        """Estimated inference delay in ticks (p95 of the recent window, 0 before any)."""
        if not self._delays:
            return 0
        return int(math.ceil(float(np.percentile(np.asarray(self._delays), 95))))

    @property
    def request_timeout_s(self) -> float:
        """Seconds after which an unanswered request is abandoned."""
        slowest = max(self._latencies_s, default=0.0)
        return max(self.config.request_timeout_s, 4.0 * slowest)

    def remaining(self, tick: int) -> int:
        """Planned ticks from ``tick`` on (inclusive)."""
        return max(0, self.plan_start + len(self.plan) - tick)

    def step(self, observation: dict[str, np.ndarray], task: str, tick: int) -> np.ndarray | None:
        """Integrate arrivals, maybe request, and return the base action for ``tick`` (None: starved)."""
        self._integrate(tick)
        self._release(tick)
        pending = self._pending
        if pending is not None and pending.reply is None and time.monotonic() - pending.since > self.request_timeout_s:
            self._pending = None
            self.stats.timeouts += 1
        need = self.delay_ticks + self.config.margin_ticks + self.lookahead
        if self._pending is None and self.remaining(tick) <= need:
            self._submit(observation, task, tick)
            self._integrate(tick)  # an inline backend answers at once
            if self.synchronous:
                self._wait_for_reply(tick)
            self._release(tick)
        action = self.action_at(tick)
        if action is None:
            self.stats.starved_ticks += 1
        return action

    def action_at(self, tick: int) -> np.ndarray | None:
        """The planned action for ``tick``, or None if the plan does not cover it."""
        i = tick - self.plan_start
        if 0 <= i < len(self.plan):
            return self.plan[i].copy()
        return None

    def window(self, tick: int, length: int, fill: np.ndarray) -> tuple[np.ndarray, int]:
        """Planned actions for ``tick .. tick+length-1`` (float32[length, A]) and how many were planned.

        Ticks past the plan are filled with ``fill`` (the hold action).
        """
        out = np.repeat(np.asarray(fill, np.float32)[None], length, axis=0)
        i0 = tick - self.plan_start
        n = int(np.clip(len(self.plan) - i0, 0, length)) if i0 >= 0 else 0
        if n:
            out[:n] = self.plan[i0 : i0 + n]
        return out, n

    # -- internals -----------------------------------------------------------------------------
    def _submit(self, observation: dict[str, np.ndarray], task: str, tick: int) -> None:
        rid = self._next_id
        self._next_id += 1
        request = _Request(rid=rid, tick=tick, since=time.monotonic())
        i0 = tick - self.plan_start
        if self.config.splice == "rtc" and 0 <= i0 < len(self.plan):
            request.prefix = self.plan[i0:].copy()  # the committed prefix: what still runs from ``tick`` on
            request.delay = min(self.delay_ticks, len(request.prefix))
            observation = make_request(observation, request.prefix, request.delay)
            self.stats.rtc_requests += 1
        self._pending = request
        self.stats.requests += 1
        self.backend.submit(rid, observation, task)

    def _integrate(self, tick: int, wait_s: float = 0.0) -> None:
        """Take the replies that arrived; the pending request's reply waits in it for :meth:`_release`."""
        for rid, chunk in self.backend.poll(wait_s):
            pending = self._pending
            if pending is None or rid != pending.rid or pending.reply is not None:
                self.stats.stale_dropped += 1
                continue
            pending.reply = chunk
            self._latencies_s.append(time.monotonic() - pending.since)

    def _release(self, tick: int, hold: bool = True) -> None:
        """Merge the pending request's reply once ``tick`` is ``sim_delay_ticks`` past its observation."""
        pending = self._pending
        if pending is None or pending.reply is None:
            return
        if hold and tick < pending.tick + self.config.sim_delay_ticks:
            return
        self._pending = None
        self._delays.append(tick - pending.tick)
        self._merge(pending.reply, pending.tick, tick, prefix=pending.prefix, delay=pending.delay)

    def _merge(self, chunk: Chunk, obs_tick: int, tick: int, prefix: np.ndarray | None = None, delay: int = 0) -> None:
        """Splice ``chunk`` (computed from tick ``obs_tick``'s observation) into the plan at ``tick``.

        ``prefix`` float32[L, A] and ``delay`` (d, ticks) are what an RTC request carried.
        """
        skip = max(0, tick - obs_tick)
        self.stats.chunks += 1
        self.stats.skipped_steps += min(skip, chunk.length)
        new = chunk.actions[skip:]
        self.features = chunk.features
        self.version = chunk.version
        if len(new) == 0:
            return
        new_start = obs_tick + skip
        blend = self.config.blend_ticks if self.config.splice == "crossfade" else 0
        if prefix is not None and delay > 0:
            d = min(delay, chunk.length, len(prefix))
            if not np.allclose(chunk.actions[:d], prefix[:d], atol=RTC_PREFIX_ATOL):
                self.stats.rtc_fallbacks += 1  # the policy ignored the prefix: no RTC support
                blend = self.config.blend_ticks
        if len(self.plan) and self.plan.shape[1] == new.shape[1]:
            old_i0 = new_start - self.plan_start
            if 0 <= old_i0 <= len(self.plan):  # the new chunk takes over from the old one (no gap between)
                self.splice_ticks.append(new_start)
            overlap = max(0, min(len(self.plan) - old_i0, len(new), blend))
            if overlap > 0 and old_i0 >= 0:
                w = (np.arange(1, overlap + 1, dtype=np.float32) / (blend + 1))[:, None]
                new = new.copy()
                new[:overlap] = (1 - w) * self.plan[old_i0 : old_i0 + overlap] + w * new[:overlap]
        self.plan_start = new_start
        self.plan = np.ascontiguousarray(new, np.float32)
        self.samples = None if chunk.samples is None else chunk.samples[:, skip:]
