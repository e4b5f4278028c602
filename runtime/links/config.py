"""The robot side's link settings (the ``link`` block of a run config)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tandem.core.errors import ConfigError
from tandem.core.validate import in_range, positive
from tandem.protocol.security import tcp_endpoint  # noqa: F401  (the robot side's endpoints)


@dataclass
class LinkConfig:
    """How a robot talks to the learner.

    Attributes:
        enabled: connect the session to a learner (experience up, weights down).
        robot_id: this robot's name on the links (unique per robot).
        learner_host: the learner's address; non-loopback needs ``keys_dir``.
        experience_port: the learner's experience ROUTER port (also answers weight pulls).
        weights_port: the learner's weights PUB port.
        keys_dir: CURVE keys from ``tandem keys`` (empty: plain, loopback only).
        spool_dir: on-disk spool of unacked records (empty: ~/.cache/tandem/spool/<robot_id>).
        heartbeat_s: seconds between heartbeats to the learner.
        timeout_s: the learner counts as lost after this many seconds of silence; the socket is rebuilt.
        window: most records in flight without an ack.
        max_message_bytes: largest frame any link socket accepts (zmq.MAXMSGSIZE), and largest message.
        spool_fsync_s: fsync the spool at most this often (0: after every batch of records).
        drain_s: at the end of a session, wait up to this long for the learner to ack pending records
            (what is not acked stays in the spool and is sent by the next session).
        pull_window: weight pieces requested ahead when pulling large weights.
        learner_updates_per_episode: once the learner trains, wait after each episode until it has made
            this many updates per finished episode (updates made during the episode count; 0: never
            wait). Fixes the learner's budget per episode on machines where robot and learner share CPUs.
        learner_wait_s: the longest such wait after one episode, seconds (a silent learner ends it at once).
        image_size: > 0: each chunk record carries its first tick's camera images as JPEG, resized to this
            many pixels a side (what a learner that trains the base needs); 0: no images.
        image_quality: their JPEG quality (1..100).
        image_max_bytes: the most JPEG bytes one record carries; a record over it goes without images.
    """

    enabled: bool = False
    robot_id: str = "robot0"
    learner_host: str = "127.0.0.1"
    experience_port: int = 5560
    weights_port: int = 5561
    keys_dir: str = ""
    spool_dir: str = ""
    heartbeat_s: float = 0.2
    timeout_s: float = 1.0
    window: int = 512
    max_message_bytes: int = 64 * 1024 * 1024
    spool_fsync_s: float = 0.05
    drain_s: float = 5.0
    pull_window: int = 4
    learner_updates_per_episode: int = 0
    learner_wait_s: float = 300.0
    image_size: int = 0
    image_quality: int = 90
    image_max_bytes: int = 256 * 1024

    def __post_init__(self) -> None:
        if not self.robot_id or not self.robot_id.replace("-", "").replace("_", "").isalnum():
            raise ConfigError("link.robot_id", self.robot_id, "a non-empty name of letters, digits, '-' or '_'")
        in_range("link.experience_port", self.experience_port, 1, 65535)
        in_range("link.weights_port", self.weights_port, 1, 65535)
        positive("link.heartbeat_s", self.heartbeat_s)
        if not self.timeout_s > self.heartbeat_s:
            raise ConfigError("link.timeout_s", self.timeout_s, f"must be > link.heartbeat_s ({self.heartbeat_s})")
        in_range("link.window", self.window, 1, 1_000_000)
        in_range("link.max_message_bytes", self.max_message_bytes, 1024, 2**31 - 1)
        in_range("link.spool_fsync_s", self.spool_fsync_s, 0, 60)
        in_range("link.drain_s", self.drain_s, 0, 3600)
        in_range("link.pull_window", self.pull_window, 1, 64)
        in_range("link.learner_updates_per_episode", self.learner_updates_per_episode, 0, 10_000_000)
        positive("link.learner_wait_s", self.learner_wait_s)
        in_range("link.image_size", self.image_size, 0, 1024)
        in_range("link.image_quality", self.image_quality, 1, 100)
        if self.image_size:  # images must leave room in a record for the rest of it
            in_range("link.image_max_bytes", self.image_max_bytes, 1024, self.max_message_bytes // 2)

    @property
    def experience_endpoint(self) -> str:
        """Where the experience DEALER connects."""
        return tcp_endpoint(self.learner_host, self.experience_port)

    @property
    def weights_endpoint(self) -> str:
        """Where the weights SUB connects."""
        return tcp_endpoint(self.learner_host, self.weights_port)

    def spool_path(self) -> Path:
        """The spool directory of this robot."""
        if self.spool_dir:
            return Path(self.spool_dir)
        return Path.home() / ".cache" / "tandem" / "spool" / self.robot_id
