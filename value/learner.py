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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tandem.core.config import build_dataclass, compose
from tandem.core.durable import write_json_atomic
from tandem.core.validate import in_range, non_negative, one_of, positive
from tandem.protocol.checkpoint import load_checkpoint, save_checkpoint
from tandem.protocol.wire import digest_arrays
from tandem.value import ddp
from tandem.value.objectives.base import ObjectiveConfig, make_objective
from tandem.value.replay import ReplayConfig, ReplayStore
from tandem.value.server import LinkServer, ServerConfig

log = logging.getLogger(__name__)

ENDPOINTS_FILE = "endpoints.json"  # {experience, weights, pid, run}; see Learner._write_endpoints


@dataclass
class LearnerConfig:
    """The learner service (configs/learner/default.yaml).

    Attributes:
        host: address the sockets bind to; anything but loopback requires ``keys_dir``.
        experience_port, weights_port: ports (0: any free port, printed at start).
        keys_dir: CURVE keys from ``tandem keys`` (empty: plain, loopback only).
        max_message_bytes: zmq.MAXMSGSIZE on every socket, and the largest message accepted.
        heartbeat_s: heartbeat period on the weights PUB.
        robot_timeout_s: robots silent this long are shown as not live.
        inline_weights_max_bytes: weight sets above this are announced and pulled in pieces.
        piece_bytes: size of one pulled piece.
        pub_hwm: weight messages queued per subscriber.
        store_dir: the replay log (``replay/``), checkpoints (``checkpoints/``) and ``status.json``.
        device: "auto" (cuda when available), "cpu", "cuda", "cuda:1" ...
        batch_size: records per update per process.
        min_records: wait for this many records before training.
        max_updates: stop after this many updates (0: never).
        max_seconds: stop after this long (0: never).
        max_updates_per_s: cap the update rate (0: as fast as possible).
        publish_every_updates: publish weights every N updates (0: off).
        publish_every_s: also publish when this many seconds passed since the last (0: off).
        checkpoint_every_updates: checkpoint every N updates (0: only at a clean stop).
        keep_checkpoints: checkpoints kept on disk.
        torch_threads: torch intra-op threads (leave a core for the I/O thread on small machines).
        seed: seeds the network init and the sampler.
        status_every_s: how often ``status.json`` and the status log line are written.
        bind_retry_s: while a port is busy, keep retrying this long (a hot standby for a running learner).
        replay: ReplayConfig.
        objective: ObjectiveConfig.
    """

    host: str = "127.0.0.1"
    experience_port: int = 5560
    weights_port: int = 5561
    keys_dir: str = ""
    max_message_bytes: int = 64 * 1024 * 1024
    heartbeat_s: float = 0.2
    robot_timeout_s: float = 2.0
    inline_weights_max_bytes: int = 8 * 1024 * 1024
    piece_bytes: int = 1024 * 1024
    pub_hwm: int = 16
    store_dir: str = "learner"
    device: str = "auto"
    batch_size: int = 64
    min_records: int = 32
    max_updates: int = 0
    max_seconds: float = 0.0
    max_updates_per_s: float = 0.0
    publish_every_updates: int = 50
    publish_every_s: float = 0.0
    checkpoint_every_updates: int = 500
    keep_checkpoints: int = 3
    torch_threads: int = 1
    seed: int = 0
    status_every_s: float = 5.0
    bind_retry_s: float = 0.0
    replay: ReplayConfig = field(default_factory=ReplayConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)

    def __post_init__(self) -> None:
        if isinstance(self.replay, dict):
            self.replay = ReplayConfig(**self.replay)
        if isinstance(self.objective, dict):
            self.objective = ObjectiveConfig(**self.objective)
        in_range("learner.experience_port", self.experience_port, 0, 65535)
        in_range("learner.weights_port", self.weights_port, 0, 65535)
        in_range("learner.max_message_bytes", self.max_message_bytes, 1024, 2**31 - 1)
        positive("learner.heartbeat_s", self.heartbeat_s)
        positive("learner.robot_timeout_s", self.robot_timeout_s)
        in_range("learner.piece_bytes", self.piece_bytes, 1024, self.max_message_bytes // 2)
        non_negative("learner.inline_weights_max_bytes", self.inline_weights_max_bytes)
        in_range("learner.pub_hwm", self.pub_hwm, 1, 100_000)
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            one_of("learner.device", self.device, ("auto", "cpu", "cuda", "cuda:N"))
        in_range("learner.batch_size", self.batch_size, 1, 1_000_000)
        in_range("learner.min_records", self.min_records, 1, 1_000_000_000)
        for name in ("max_updates", "max_seconds", "max_updates_per_s", "publish_every_updates", "publish_every_s",
                     "checkpoint_every_updates", "keep_checkpoints", "bind_retry_s"):
            non_negative(f"learner.{name}", getattr(self, name))
        in_range("learner.torch_threads", self.torch_threads, 1, 1024)
        positive("learner.status_every_s", self.status_every_s)

    def server_config(self) -> ServerConfig:
        """The socket settings."""
        return ServerConfig(
            host=self.host, experience_port=self.experience_port, weights_port=self.weights_port,
            keys_dir=self.keys_dir, max_message_bytes=self.max_message_bytes, heartbeat_s=self.heartbeat_s,
            robot_timeout_s=self.robot_timeout_s, inline_max_bytes=self.inline_weights_max_bytes,
            piece_bytes=self.piece_bytes, pub_hwm=self.pub_hwm,
        )


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
        last_ckpt, t_start = self.step, time.monotonic()
        last_publish = last_status = time.monotonic()
        try:
            if info.is_main:
                # ports first: a hot-standby learner waits here until the running one is gone
                self.server = LinkServer(cfg.server_config(), None).bind(cfg.bind_retry_s)
                self.store = ReplayStore(self.root / "replay", cfg.replay)
                self.server.store = self.store
                self.server.start()
                self.server.versions.update({k: (self.run_id, v) for k, v in self.versions.items()})
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
                    elif self.store.size >= cfg.min_records:
                        self.server.progress = {"step": self.step, "training": True}
                        command = ddp.BATCH
                        batch = self.store.sample(cfg.batch_size * info.world_size, rng)
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
                            self.publish(objective.weights())
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

    def _write_endpoints(self) -> None:
        """``<store_dir>/endpoints.json``: where this learner serves, written once its sockets are bound
        (a launcher such as ``tandem run learn.spawn=true`` waits for it and connects the robot there)."""
        self.root.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.root / ENDPOINTS_FILE, {
            "experience": self.server.experience_endpoint, "weights": self.server.weights_endpoint,
            "pid": os.getpid(), "run": self.run_id})

    def publish(self, weights: dict[str, dict[str, np.ndarray]]) -> None:
        """Publish each weight kind with the next version number.

        The numbers are recorded in ``published.json`` first, so a learner resumed from an older
        checkpoint never reuses a number that robots already hold for different weights.
        """
        for kind in weights:
            self.versions[kind] = self.versions.get(kind, 0) + 1
        write_json_atomic(self.root / "published.json", {"run": self.run_id, "versions": self.versions})
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


def compose_learner(overrides: list[str], config_file: str | Path | None = None) -> LearnerConfig:
    """``tandem learn`` overrides (``learner.batch_size=256`` ...) -> validated LearnerConfig.

    With ``config_file`` (a YAML ``learner:`` block, e.g. written by ``tandem run learn.spawn=true``) its
    values replace the defaults and the overrides (plain ``learner.key=value``) apply on top.
    """

    if config_file is None:
        values = compose("learner/default", overrides).get("learner", {})
    else:
        from omegaconf import OmegaConf

        merged = OmegaConf.merge(
            OmegaConf.create(compose("learner/default", [])),
            OmegaConf.load(config_file),
            OmegaConf.from_dotlist([o.lstrip("+") for o in overrides]),
        )
        values = OmegaConf.to_container(merged, resolve=True).get("learner", {})
    return build_dataclass(LearnerConfig, values, "learner")
