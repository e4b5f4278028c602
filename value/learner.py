"""The learner service (``tandem learn``): replay in, training, weights out, for any number of robots.

One process (or one per GPU under ``torchrun``). Rank 0 runs the :class:`LinkServer` (an I/O thread
storing records durably and acking them) and the training loop: sample a mixed batch, one
``Objective.update``, publish weights every ``publish_every_updates`` updates or ``publish_every_s``
seconds, checkpoint every ``checkpoint_every_updates`` (crash-safe; resume restores the step, the
weight versions, the optimiser state, the sampling RNG; the replay comes back from its own log).
SIGTERM/SIGINT stop it cleanly with a final checkpoint; SIGKILL loses nothing that was acked.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from tandem.core.durable import write_json_atomic
from tandem.protocol.checkpoint import load_checkpoint, save_checkpoint
from tandem.protocol.wire import digest_arrays
from tandem.value import ddp
from tandem.value.config import LearnerConfig
from tandem.value.objectives.base import make_objective
from tandem.value.record_extras import ExtrasStore, RecordExtras
from tandem.value.replay import ReplayStore
from tandem.value.server import LinkServer

log = logging.getLogger(__name__)

ENDPOINTS_FILE = "endpoints.json"  # {experience, weights, pid, run}; see Learner._write_endpoints


def resolve_device(device: str) -> str:
    """"auto" -> "cuda:<LOCAL_RANK>" when CUDA is available, else "cpu"."""
    import torch

    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        device = f"cuda:{local}"
    return device


class Learner:
    """The learner service.

    Args:
        config: LearnerConfig.
        stop: set it to stop after the current update (signal handlers set it).
    """

    def __init__(self, config: LearnerConfig, stop: threading.Event | None = None) -> None:
        self.config = config
        self.stop = stop or threading.Event()
        self.root = Path(config.store_dir)
        self.step = 0
        self.versions: dict[str, int] = {}
        self.run_id = uuid.uuid4().hex[:12]
        self.server: LinkServer | None = None
        self.store: ReplayStore | None = None
        self.metrics: dict[str, float] = {}
        LinkServer.check_config(config.server_config())  # refuse a bad endpoint before anything starts

    def run(self, on_ready: Callable[[Learner], None] | None = None) -> dict[str, Any]:
        """Serve and train until stopped; returns a summary (step, versions, store counts, robots)."""
        import torch

        cfg = self.config
        device = resolve_device(cfg.device)
        torch.set_num_threads(cfg.torch_threads)
        info = ddp.init_distributed(device)
        torch.manual_seed(cfg.seed)
        objective = make_objective(cfg.objective, device, info.enabled)
        rng = np.random.default_rng(cfg.seed)
        state = load_checkpoint(self.root / "checkpoints")
        if state is not None:
            self.step, self.run_id = int(state["step"]), str(state["run"])
            self.versions = {k: int(v) for k, v in state["versions"].items()}
            objective.load_state_dict(state["objective"])
            rng.bit_generator.state = json.loads(state["rng"])
            published = self._published()
            if published.get("run") == self.run_id:
                for kind, v in published.get("versions", {}).items():
                    self.versions[kind] = max(self.versions.get(kind, 0), int(v))
            log.info("learner: resumed at update %d (run %s, versions %s)", self.step, self.run_id, self.versions)
        for kind, v in getattr(objective, "initial_versions", {}).items():  # base_awr: the robot's base version
            self.versions.setdefault(kind, int(v))
        last_ckpt, t_start = self.step, time.monotonic()
        last_publish = last_status = time.monotonic()
        extras = None  # records' task and images, for objectives that train the base (base_awr)
        if info.is_main and getattr(objective, "uses_record_extras", False):
            extras = RecordExtras(3 * cfg.replay.capacity)
            try:
                log.info("learner: read the task and images of %d stored records", extras.load(self.root / "replay"))
            except Exception as exc:  # noqa: BLE001 - a damaged log is the store's to report; go on without
                log.warning("learner: could not read the stored records' images back (%s)", exc)
        try:
            if info.is_main:
                # ports first: a hot-standby learner waits here until the running one is gone
                self.server = LinkServer(cfg.server_config(), None).bind(cfg.bind_retry_s)
                # a learner that is still stopping (its ports were free first) releases the store soon
                self.store = ReplayStore(self.root / "replay", cfg.replay, lock_wait_s=cfg.bind_retry_s)
                self.server.store = self.store if extras is None else ExtrasStore(self.store, extras)
                self.server.start()
                initial = getattr(objective, "initial_versions", {})  # numbers nothing was published under yet
                self.server.versions.update({k: (self.run_id, v) for k, v in self.versions.items() if v != initial.get(k)})
                self.server.progress = {"step": self.step, "training": False}
                self._write_endpoints()
                if on_ready is not None:
                    on_ready(self)
            while True:
                command, batch = ddp.IDLE, None
                if info.is_main:
                    done = self.stop.is_set() or (cfg.max_updates and self.step >= cfg.max_updates) or (
                        cfg.max_seconds and time.monotonic() - t_start >= cfg.max_seconds
                    )
                    if done:
                        command = ddp.STOP
                    elif self.store.size >= cfg.min_records and self._data_allows(cfg):
                        self.server.progress = {"step": self.step, "training": True}
                        command = ddp.BATCH
                        batch = self.store.sample(cfg.batch_size * info.world_size, rng)
                        if extras is not None:
                            batch = extras.attach(batch)
                command, batch = ddp.broadcast_step(info, command, batch)
                if command == ddp.STOP:
                    break
                if command == ddp.IDLE:
                    time.sleep(0.02)
                else:
                    t0 = time.monotonic()
                    self.metrics = objective.update(ddp.shard(batch, info))
                    self.step += 1
                    if info.is_main:
                        now = time.monotonic()
                        due = (cfg.publish_every_updates and self.step % cfg.publish_every_updates == 0) or (
                            cfg.publish_every_s and now - last_publish >= cfg.publish_every_s
                        )
                        if due:
                            self.publish(objective.weights(), objective)
                            last_publish = now
                        if cfg.checkpoint_every_updates and self.step % cfg.checkpoint_every_updates == 0:
                            self._checkpoint(objective, rng)
                            last_ckpt = self.step
                    if cfg.max_updates_per_s:
                        time.sleep(max(0.0, 1.0 / cfg.max_updates_per_s - (time.monotonic() - t0)))
                if info.is_main and time.monotonic() - last_status >= cfg.status_every_s:
                    self._status()
                    last_status = time.monotonic()
            if info.is_main and self.step > last_ckpt:
                self._checkpoint(objective, rng)
            summary = self.summary(objective, info)
            self.root.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.root / f"summary-rank{info.rank}.json", summary)
        finally:
            if self.server is not None:
                self.server.stop()
            if self.store is not None:
                self._status()
                self.store.close()
            ddp.shutdown(info)
        return summary

    def _data_allows(self, cfg: LearnerConfig) -> bool:
        """The update-to-data budget (``updates_per_record``): one more update stays within
        ratio x the robots' records stored (demonstrations excluded); always true when the ratio is 0."""
        if not cfg.updates_per_record:
            return True
        sizes = self.store.sizes()
        robot_records = sizes.get("autonomous", 0) + sizes.get("takeover", 0)
        return self.step < cfg.updates_per_record * robot_records

    def _write_endpoints(self) -> None:
        """``<store_dir>/endpoints.json``: where this learner serves, written once its sockets are bound
        (a launcher such as ``tandem run learn.spawn=true`` waits for it and connects the robot there)."""
        self.root.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.root / ENDPOINTS_FILE, {
            "experience": self.server.experience_endpoint, "weights": self.server.weights_endpoint,
            "pid": os.getpid(), "run": self.run_id})

    def publish(self, weights: dict[str, dict[str, np.ndarray]], objective: Any = None) -> None:
        """Publish each weight kind with the next version number.

        The numbers are recorded in ``published.json`` first, so a learner resumed from an older
        checkpoint never reuses a number that robots already hold for different weights. An objective
        with ``save_published`` (``base_awr``) keeps each published version in
        ``<store_dir>/<kind>/v<N, 6 digits>`` first (``base``: a tiny VLA checkpoint for ``policy.version=N``).
        """
        for kind in weights:
            self.versions[kind] = self.versions.get(kind, 0) + 1
        write_json_atomic(self.root / "published.json", {"run": self.run_id, "versions": self.versions})
        save = getattr(objective, "save_published", None)
        if callable(save):
            for kind in weights:
                save(kind, self.versions[kind], self.root / kind / f"v{self.versions[kind]:06d}")
        for kind, arrays in weights.items():
            self.server.publish(kind, arrays, self.versions[kind], self.run_id)

    def _published(self) -> dict[str, Any]:
        try:
            return json.loads((self.root / "published.json").read_text())
        except (OSError, ValueError):
            return {}

    def _checkpoint(self, objective: Any, rng: np.random.Generator) -> None:
        state = {
            "step": self.step,
            "run": self.run_id,
            "versions": dict(self.versions),
            "objective": objective.state_dict(),
            "rng": json.dumps(rng.bit_generator.state),
        }
        save_checkpoint(self.root / "checkpoints", self.step, state, keep=self.config.keep_checkpoints)

    def _status(self) -> None:
        if self.server is None:
            return
        robots = self.server.robots_status()
        status = {
            "step": self.step,
            "versions": self.versions,
            "metrics": self.metrics,
            "replay": self.store.sizes() if self.store else {},
            # damaged regions of the replay log skipped at start (their records are lost, the rest kept)
            "replay_log": {k: self.store.counts[k] for k in ("corrupt", "corrupt_bytes", "torn_bytes")}
            if self.store else {},
            "live_robots": self.server.live_robots(),
            "robots": robots,
            "links": {k: v for k, v in self.server.stats.items()},
            "time": time.time(),
        }
        write_json_atomic(self.root / "status.json", status)
        if self.metrics:  # the learning curve for reports: one line per status period
            line = {"step": self.step, "time": status["time"], "metrics": self.metrics, "replay": status["replay"],
                    "versions": self.versions}
            with open(self.root / "metrics.jsonl", "a") as f:
                f.write(json.dumps(line) + "\n")
        log.info(
            "learner: update %d  %s  replay %s  live robots %s",
            self.step, "  ".join(f"{k} {v:.4g}" for k, v in self.metrics.items() if k.endswith(("loss", "td_abs"))),
            status["replay"], status["live_robots"],
        )

    def summary(self, objective: Any, info: ddp.DistInfo) -> dict[str, Any]:
        """What ``tandem learn`` prints at exit (params digest per weight kind, to compare ranks)."""
        weights = objective.weights()
        return {
            "rank": info.rank,
            "world_size": info.world_size,
            "step": self.step,
            "run": self.run_id,
            "versions": dict(self.versions),
            "metrics": self.metrics,
            "params_sha256": {k: digest_arrays(v) for k, v in weights.items()},
            "replay": self.store.sizes() if self.store else {},
            "links": dict(self.server.stats) if self.server else {},
        }
