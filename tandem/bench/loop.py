"""``tandem bench loop``: control-loop timing with optional busy processes beside it.

The loop runs the real ``TickTimer`` with a cheap in-memory tick body (read a state, run the safety
filter, write an action), so the figures measure scheduling, not a robot. ``load`` worker
processes spin on the CPU, standing in for base-policy inference.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time

import numpy as np

from tandem.runtime.control.priority import elevate, restore
from tandem.runtime.control.safety import SafetyConfig, SafetyFilter
from tandem.runtime.control.timing import TickTimer


def _burn(stop: mp.Event) -> None:  # pragma: no cover - runs in a child process
    x = 0
    while not stop.is_set():
        for _ in range(10_000):
            x = (x * 1103515245 + 12345) & 0x7FFFFFFF


def bench_loop(hz: float = 50.0, seconds: float = 10.0, load: int = 0, rt_priority: int = 10) -> dict:
    """Run the loop for ``seconds`` at ``hz`` with ``load`` busy processes; return timing stats.

    ``rt_priority`` is the SCHED_FIFO priority asked for the loop (0: normal scheduling), as a
    session does with ``loop.rt_priority``; the JSON reports what was granted.
    """
    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    workers = [ctx.Process(target=_burn, args=(stop,), daemon=True) for _ in range(load)]
    for w in workers:
        w.start()
    try:
        time.sleep(0.5 if load else 0.0)  # let the workers reach full speed
        dim = 6
        safety = SafetyFilter(SafetyConfig(max_delta=0.1), -np.ones(dim, np.float32), np.ones(dim, np.float32),
                              np.zeros(dim, np.float32))
        state = np.zeros(dim, np.float32)
        granted = elevate(rt_priority)
        timer = TickTimer(hz)
        n = int(round(hz * seconds))
        timer.start()
        for k in range(n):
            with timer.section("decide"):
                target = np.sin(k / hz + np.arange(dim, dtype=np.float32))
            with timer.section("send"):
                state = safety.filter(target)
            if k < n - 1:
                timer.wait()
        s = timer.summary().to_dict()
    finally:
        restore()
        stop.set()
        for w in workers:
            w.join(timeout=2)
            if w.is_alive():
                w.kill()
    return {
        "bench": "loop",
        "hz": hz,
        "seconds": seconds,
        "load": load,
        "cpus": os.cpu_count(),
        "priority": granted,
        "ticks": s["ticks"],
        "p50_lateness_ms": s["p50_lateness_ms"],
        "p99_lateness_ms": s["p99_lateness_ms"],
        "max_lateness_ms": s["max_lateness_ms"],
        "overruns": s["overruns"],
        "sections_p99_ms": s["sections_p99_ms"],
        "final_state_norm": float(np.linalg.norm(state)),
    }
