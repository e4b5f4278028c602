"""``tandem bench fleet``: a learner training while a fleet of robots streams chunk records into it.

A real ``tandem learn`` process (the link server, the durable replay and the training loop, as deployed)
starts on a store preloaded with records so it trains from the first second. Then:

1. idle: the learner trains with no robot connected for ``idle_s`` seconds; its update rate is read from
   the ``step`` in its ``status.json`` (written every 0.5 s);
2. ingest: N robot processes (``multiprocessing``, spawn) each open an :class:`ExperienceLink` and send
   ChunkRecords (H=10, A=4, S=39) at ``hz`` ticks per second, i.e. ``hz / H`` records per second, for
   ``seconds`` seconds; the learner's update rate over that window is read the same way; each robot then
   waits up to ``drain_s`` for its last ack.

JSON out: records sent and acked per robot (all acked or not), what the learner stored, steps per second
ingested, and the idle and ingest update rates with their ratio (the issue's target: >= 0.9).
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing as mp
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tandem.protocol.messages import delivered_message
from tandem.value.replay import ReplayConfig, ReplayStore

HORIZON = 10
READY = re.compile(r"tandem learn: ready experience=tcp://[^:]+:(\d+) weights=tcp://[^:]+:(\d+)")


def _records(robot_id: str, n: int) -> list[Any]:
    from tandem.bench.links import bench_records  # the links bench's synthetic records (H=10, A=4, S=39)

    return [dataclasses.replace(r, robot_id=robot_id) for r in bench_records(n, HORIZON)]


def _preload(store_dir: Path, n: int) -> None:
    """Put ``n`` records of a finished robot into the store, so the learner trains before any robot connects."""
    store = ReplayStore(store_dir / "replay", ReplayConfig())
    try:
        for seq, rec in enumerate(_records("preloaded", n), start=1):
            store.offer(delivered_message(rec, seq, "preload"))
        store.commit()
    finally:
        store.close()


def _robot(index: int, experience_port: int, weights_port: int, spool_dir: str, hz: float, seconds: float,
           drain_s: float, results: Any) -> None:  # pragma: no cover - runs in a child process
    """One simulated robot: ``hz / H`` records per second for ``seconds``, then wait for the acks."""
    from tandem.runtime.links.config import LinkConfig
    from tandem.runtime.links.experience import ExperienceLink

    robot_id = f"fleet{index:03d}"
    n = max(1, int(seconds * hz / HORIZON))
    recs = _records(robot_id, n)
    cfg = LinkConfig(robot_id=robot_id, experience_port=experience_port, weights_port=weights_port,
                     spool_dir=spool_dir, window=4096, drain_s=drain_s)
    link = ExperienceLink(cfg).start()
    period = HORIZON / hz
    late = 0
    try:
        t0 = time.monotonic()
        for i, rec in enumerate(recs):
            wait = t0 + i * period - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            else:
                late += 1
            link.send(rec)
        sent_s = time.monotonic() - t0
        acked = link.wait_acked(drain_s)
        results.put({"robot": robot_id, "sent": n, "acked": bool(acked), "send_s": round(sent_s, 3),
                     "late_sends": late, "pending": int(link.stats.pending)})
    finally:
        link.close(0)


def _status_step(store_dir: Path) -> tuple[float, int]:
    """(time read, the learner's update count) from its status.json (retried while it is being replaced)."""
    for _ in range(50):
        try:
            return time.monotonic(), int(json.loads((store_dir / "status.json").read_text())["step"])
        except (OSError, ValueError, KeyError):
            time.sleep(0.05)
    raise RuntimeError(f"tandem: bench fleet: no readable {store_dir / 'status.json'} from the learner")


def _rate(store_dir: Path, seconds: float) -> tuple[float, int]:
    """Updates per second over the next ``seconds`` (and the step count at the end)."""
    t0, s0 = _status_step(store_dir)
    time.sleep(seconds)
    t1, s1 = _status_step(store_dir)
    return (s1 - s0) / max(t1 - t0, 1e-9), s1


def bench_fleet(robots: int = 20, hz: float = 50.0, seconds: float = 30.0, idle_s: float = 20.0,
                objective: str = "edit", batch_size: int = 256, device: str = "cpu", drain_s: float = 60.0,
                preload: int = 2000) -> dict[str, Any]:
    """Run the measurements above and return them as a JSON-able dict.

    Args:
        robots: N robot processes.
        hz: ticks per second per robot (records per second = hz / 10).
        seconds: how long each robot streams.
        idle_s: the idle window before the robots start.
        objective: the learner's objective ("critic", "residual", "edit"; small default networks).
        batch_size: learner batch size.
        device: the learner's torch device.
        drain_s: how long each robot waits for its last ack after streaming.
        preload: records in the store before the learner starts.
    """
    tmp = Path(tempfile.mkdtemp(prefix="tandem-bench-fleet-"))
    store_dir = tmp / "learner"
    _preload(store_dir, preload)
    cmd = [sys.executable, "-m", "tandem.cli", "learn", f"learner.store_dir={store_dir}", "learner.experience_port=0",
           "learner.weights_port=0", f"learner.batch_size={batch_size}", f"learner.device={device}",
           "learner.min_records=32", "learner.status_every_s=0.5", "learner.publish_every_updates=50",
           "learner.checkpoint_every_updates=0", f"learner.objective.type={objective}",
           f"++learner.replay.capacity={max(100_000, preload + int(robots * seconds * hz / HORIZON) + 1000)}"]
    learner = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env=dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1")))
    procs: list[Any] = []
    try:
        ports = None
        deadline = time.monotonic() + 120
        lines = []
        while ports is None and time.monotonic() < deadline:
            line = learner.stdout.readline()
            if not line and learner.poll() is not None:
                break
            lines.append(line)
            m = READY.search(line)
            if m:
                ports = int(m.group(1)), int(m.group(2))
        if ports is None:
            raise RuntimeError("tandem: bench fleet: the learner did not start:\n" + "".join(lines[-20:]))
        deadline = time.monotonic() + 180
        while True:  # training has begun (status.json is written every 0.5 s once the learner runs)
            try:
                if _status_step(store_dir)[1] >= 5:
                    break
            except RuntimeError:
                if time.monotonic() > deadline or learner.poll() is not None:
                    raise
            time.sleep(0.2)
        idle_rate, _ = _rate(store_dir, idle_s)

        ctx = mp.get_context("spawn")
        results = ctx.Queue()
        procs = [ctx.Process(target=_robot, args=(i, ports[0], ports[1], str(tmp / "spool" / str(i)), hz, seconds,
                                                   drain_s, results), daemon=True) for i in range(robots)]
        for p in procs:
            p.start()
        time.sleep(min(5.0, seconds / 4))  # the robots' interpreters start and connect
        ingest_rate, _ = _rate(store_dir, max(1.0, seconds - min(5.0, seconds / 4) - 1.0))
        per_robot = [results.get(timeout=seconds + drain_s + 120) for _ in procs]
        for p in procs:
            p.join(10)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
        learner.send_signal(signal.SIGTERM)
        try:
            out, _ = learner.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            learner.kill()
            out, _ = learner.communicate()
        shutil.rmtree(tmp, ignore_errors=True)
    summary = {}
    for line in out.splitlines():
        if line.startswith("tandem learn: summary "):
            summary = json.loads(line.removeprefix("tandem learn: summary "))
    links = summary.get("links", {})
    sent = sum(r["sent"] for r in per_robot)
    return {
        "bench": "fleet",
        "robots": robots, "hz": hz, "seconds": seconds, "horizon": HORIZON,
        "objective": objective, "batch_size": batch_size, "device": device,
        "records_sent": sent,
        "all_acked": all(r["acked"] for r in per_robot),
        "robots_not_acked": [r["robot"] for r in per_robot if not r["acked"]],
        "late_sends": sum(r["late_sends"] for r in per_robot),
        "learner_stored": int(links.get("stored", -1)),
        "ingest_steps_per_s": round(sent * HORIZON / seconds, 1),
        "idle_updates_per_s": round(idle_rate, 2),
        "ingest_updates_per_s": round(ingest_rate, 2),
        "ingest_over_idle": round(ingest_rate / idle_rate, 3) if idle_rate > 0 else None,
        "learner_links": {k: links.get(k) for k in ("received", "stored", "duplicates", "gaps", "acks", "malformed")},
        "cpu_count": os.cpu_count(),
    }
