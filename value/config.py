"""The learner's typed config (``tandem learn``; configs/learner/default.yaml) and its composition.

``LearnerConfig`` holds the service's settings and nests the replay's (``ReplayConfig``) and the
objective's (``ObjectiveConfig``); its socket settings become the link server's ``ServerConfig``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from tandem.core.config import build_dataclass, compose
from tandem.core.validate import in_range, non_negative, one_of, positive
from tandem.value.objectives.base import ObjectiveConfig
from tandem.value.replay import ReplayConfig
from tandem.value.server import ServerConfig


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
        updates_per_record: the update-to-data ratio (UTD): train only while updates < this x the robots'
            records stored (autonomous and takeover buffers; demonstrations do not count), so the learner
            never runs ahead of the data it was given (0: no cap, train as fast as the machine allows).
        publish_every_updates: publish weights every N updates (0: off).
        publish_every_s: also publish when this many seconds passed since the last (0: off).
        checkpoint_every_updates: checkpoint every N updates (0: only at a clean stop).
        keep_checkpoints: checkpoints kept on disk.
        torch_threads: torch intra-op threads (leave a core for the I/O thread on small machines).
        seed: seeds the network init and the sampler.
        status_every_s: how often ``status.json`` and the status log line are written.
        bind_retry_s: while a port is busy, keep retrying this long (a hot standby for a running learner).
        demos: LeRobotDataset directories loaded into the demonstration buffer before training starts (by
            ``tandem learn``, which reads the datasets; the learner itself only sees their chunk records).
            Loading is idempotent: a restarted learner keeps what its log holds and adds nothing twice.
        demo_horizon: H of the demonstration records; must equal the robots' ``session.horizon``.
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
    updates_per_record: float = 0.0
    publish_every_updates: int = 50
    publish_every_s: float = 0.0
    checkpoint_every_updates: int = 500
    keep_checkpoints: int = 3
    torch_threads: int = 1
    seed: int = 0
    status_every_s: float = 5.0
    bind_retry_s: float = 0.0
    demos: tuple[str, ...] = ()
    demo_horizon: int = 10
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
        for name in ("max_updates", "max_seconds", "max_updates_per_s", "updates_per_record", "publish_every_updates",
                     "publish_every_s", "checkpoint_every_updates", "keep_checkpoints", "bind_retry_s"):
            non_negative(f"learner.{name}", getattr(self, name))
        in_range("learner.torch_threads", self.torch_threads, 1, 1024)
        if isinstance(self.demos, str):
            self.demos = (self.demos,)
        self.demos = tuple(str(d) for d in self.demos)
        in_range("learner.demo_horizon", self.demo_horizon, 1, 1000)
        positive("learner.status_every_s", self.status_every_s)

    def server_config(self) -> ServerConfig:
        """The socket settings."""
        return ServerConfig(
            host=self.host, experience_port=self.experience_port, weights_port=self.weights_port,
            keys_dir=self.keys_dir, max_message_bytes=self.max_message_bytes, heartbeat_s=self.heartbeat_s,
            robot_timeout_s=self.robot_timeout_s, inline_max_bytes=self.inline_weights_max_bytes,
            piece_bytes=self.piece_bytes, pub_hwm=self.pub_hwm,
        )


def compose_learner(overrides: list[str], config_file: str | Path | None = None) -> LearnerConfig:
    """``tandem learn`` overrides (``learner.batch_size=256`` ...) -> validated LearnerConfig.

    With ``config_file`` (a YAML ``learner:`` block, e.g. written by ``tandem run learn.spawn=true``) its
    values replace the defaults and the overrides (plain ``learner.key=value``) apply on top.
    """

    if config_file is None:
        values = compose("learner/default", overrides).get("learner", {})
    else:
        merged = OmegaConf.merge(
            OmegaConf.create(compose("learner/default", [])),
            OmegaConf.load(config_file),
            OmegaConf.from_dotlist([o.lstrip("+") for o in overrides]),
        )
        values = OmegaConf.to_container(merged, resolve=True).get("learner", {})
    return build_dataclass(LearnerConfig, values, "learner")
