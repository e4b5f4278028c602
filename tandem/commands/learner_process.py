"""A learner on localhost for one session (``tandem run learn.spawn=true``).

The session writes a ``learner:`` YAML block (the run's ``head`` settings as the objective, so both
sides build the same networks, plus the ``learn.learner`` settings), starts ``tandem learn --config``
as a child process on free loopback ports, waits for the ``<store_dir>/endpoints.json`` it writes once
its sockets are bound (``{"experience", "weights", "pid", "run"}``), and points the run's ``link`` block
at the ports in it. At the end the learner gets SIGTERM (it writes a final checkpoint and its summary),
and SIGKILL only if it does not exit within ``stop_timeout_s``. Its output goes to
``<store_dir>/learner.log``.

Process hygiene:

- The settings are checked here first (a bad ``learn.learner.*`` value is a config error, not a child
  that fails), and a store held by another learner is waited for a little, then refused by name.
- The learner dies with its parent: it is started with Linux's parent-death signal (``prctl
  PR_SET_PDEATHSIG`` = SIGTERM, through ctypes), and also watches its parent's pid
  (``TANDEM_PARENT_PID``), so a SIGKILLed ``tandem run`` leaves no learner holding the store and ports.
- Once it is up, the ports it bound are written into ``learner.yaml``: the learner restarted as that
  file says (``tandem learn --config <store_dir>/learner.yaml``) serves on the same ports, and the robot
  reconnects by itself. ``tandem run`` does this itself if the learner dies during the session: it
  restarts it (at most ``MAX_RESTARTS`` times) on the same ports and store.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from tandem.core.errors import ConfigError, TandemError
from tandem.value.replay import lock_store

log = logging.getLogger(__name__)

PARENT_ENV = "TANDEM_PARENT_PID"  # the learner stops when its parent (this pid) is gone
PR_SET_PDEATHSIG = 1
MAX_RESTARTS = 3
STORE_WAIT_S = 10.0  # how long a store held by a learner that is still stopping is waited for


class LearnerStartError(TandemError, RuntimeError):
    """The spawned learner did not come up (its last output lines are in the message)."""


def die_with_parent() -> None:
    """In the child, before exec: ask Linux for SIGTERM when the parent dies (no-op elsewhere)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the learner's parent watch still stops it
        pass


def watch_parent(stop: threading.Event, parent: int, every_s: float = 0.5) -> threading.Thread:
    """Set ``stop`` once ``parent`` is no longer this process's parent (it died); the watching thread."""

    def run() -> None:
        while not stop.wait(every_s):
            if os.getppid() != parent:
                log.warning("learner: parent process %d is gone: stopping", parent)
                stop.set()
                return

    thread = threading.Thread(target=run, name="parent-watch", daemon=True)
    thread.start()
    return thread

#: the learner's endpoints file in its store (``tandem.value.learner.ENDPOINTS_FILE``; not imported from
#: there, which would load torch into every ``tandem run``)
ENDPOINTS_FILE = "endpoints.json"
POLL_S = 0.1


def learner_values(run_cfg: Any, store_dir: Path) -> dict:
    """The spawned learner's ``learner:`` block for this run."""
    values = dict(run_cfg.learn.learner)
    objective = dict(values.pop("objective", {}) or {})
    head = run_cfg.head.objective_values()
    if objective.get("type") == "base_awr":  # the base update: the head block gives the critic's settings only
        head = {k: v for k, v in head.items() if k in ("critic", "critic_objective")}
        base = objective["base"] = dict(objective.get("base") or {})
        if getattr(run_cfg.policy, "type", "") == "tiny_vla":  # the learner starts from the base the robot runs
            base.setdefault("checkpoint", run_cfg.policy.checkpoint_path())
    objective.update(head)
    values.update({"host": "127.0.0.1", "experience_port": 0, "weights_port": 0, "store_dir": str(store_dir),
                   "objective": objective})
    return values


def check_learner_config(path: Path) -> None:
    """Compose the learner's config from ``path`` as the child will, so a bad ``learn.learner`` setting is a
    config error here (named ``learn.learner.<key>``) and not a learner that fails to start."""
    from tandem.value.config import compose_learner  # loads torch: only when a learner is spawned

    try:
        compose_learner([], path)
    except ConfigError as exc:
        raise ConfigError(f"learn.{exc.field}", exc.value, exc.allowed) from None


class LearnerProcess:
    """``tandem learn`` as a child process of the session.

    Args:
        run_cfg: the RunConfig (``head``, ``learn`` and ``link`` are read; ``link`` is updated by :meth:`start`).
        run_dir: the session's run directory.
    """

    def __init__(self, run_cfg: Any, run_dir: Path) -> None:
        self.run_cfg = run_cfg
        self.store_dir = Path(run_cfg.learn.store_dir) if run_cfg.learn.store_dir else Path(run_dir) / "learner"
        self.proc: subprocess.Popen | None = None
        self.log_path = self.store_dir / "learner.log"
        self.config_path = self.store_dir / "learner.yaml"
        self.restarts = 0
        self._stopping = threading.Event()
        self._supervisor: threading.Thread | None = None

    def start(self) -> LearnerProcess:
        """Check the settings, write the config, start the learner, wait until it serves; point
        ``run_cfg.link`` at it, record its ports in ``learner.yaml`` and supervise it.

        Raises:
            ConfigError: a bad ``learn.learner`` setting, or a store directory that cannot be written.
            StoreBusyError: another learner holds the store.
            LearnerStartError: the learner exited or did not come up within ``ready_timeout_s`` (its last
                output lines are in the message).
        """
        values = learner_values(self.run_cfg, self.store_dir)
        try:
            self.store_dir.mkdir(parents=True, exist_ok=True)
            self.config_path.write_text(yaml.safe_dump({"learner": values}))
        except OSError as exc:
            raise ConfigError("learn.store_dir", str(self.store_dir),
                              f"the learner's store cannot be written ({exc.strerror or exc}); "
                              "set learn.store_dir to a writable directory") from None
        check_learner_config(self.config_path)
        # a learner still stopping (e.g. one whose session was killed) lets go of the store soon; another
        # live learner on it is refused here, by name, instead of by a child that fails
        os.close(lock_store(self.store_dir / "replay", STORE_WAIT_S))
        exp_port, w_port = self._launch()
        values.update(experience_port=exp_port, weights_port=w_port,
                      bind_retry_s=max(float(values.get("bind_retry_s", 0.0) or 0.0), 10.0))
        self.config_path.write_text(yaml.safe_dump({"learner": values}))  # a restart keeps these ports
        self._supervisor = threading.Thread(target=self._supervise, name="learner-supervisor", daemon=True)
        self._supervisor.start()
        link = self.run_cfg.link
        link.enabled = True
        link.learner_host = "127.0.0.1"
        link.experience_port, link.weights_port = exp_port, w_port
        if not link.spool_dir:
            link.spool_dir = str(self.store_dir.parent / "spool")
        log.info("learner: pid %d, experience port %d, weights port %d, store %s", self.proc.pid, exp_port, w_port,
                 self.store_dir)
        return self

    def _launch(self) -> tuple[int, int]:
        """Start ``tandem learn --config learner.yaml`` and wait for its endpoints; (experience, weights) port."""
        endpoints = self.store_dir / ENDPOINTS_FILE
        endpoints.unlink(missing_ok=True)  # a previous learner's file must not be taken for this one's
        cmd = [sys.executable, "-m", "tandem.cli", "learn", "--config", str(self.config_path)]
        # the learner writes its log itself: it outlives a killed parent long enough to stop cleanly
        with open(self.log_path, "a") as logfile:
            self.proc = subprocess.Popen(cmd, stdout=logfile, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env={**os.environ, "PYTHONUNBUFFERED": "1", PARENT_ENV: str(os.getpid())},
                                         preexec_fn=die_with_parent)
        deadline = time.monotonic() + self.run_cfg.learn.ready_timeout_s
        while (ports := self._ports(endpoints)) is None:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = "".join(self.log_tail(20))
                self.stop()
                raise LearnerStartError(
                    f"the spawned learner did not come up (see {self.store_dir / 'learner.log'}); its last lines:\n{tail}")
            time.sleep(POLL_S)
        return ports

    def _supervise(self) -> None:
        """Restart the learner on its ports and store if it dies during the session (at most MAX_RESTARTS)."""
        while not self._stopping.wait(0.5):
            proc = self.proc
            if proc is None or proc.poll() is None:
                continue
            if self._stopping.is_set():
                return
            if self.restarts >= MAX_RESTARTS:
                log.error("learner pid %d exited with %s; not restarting it again (%d restarts); start it by hand: "
                          "tandem learn --config %s", proc.pid, proc.returncode, self.restarts, self.config_path)
                return
            self.restarts += 1
            log.warning("learner pid %d exited with %s during the session: restarting it on the same ports (%d/%d)",
                        proc.pid, proc.returncode, self.restarts, MAX_RESTARTS)
            try:
                self._launch()
            except Exception as exc:  # noqa: BLE001 - the robot keeps spooling; say what failed
                log.error("restarting the learner failed: %s", exc)
                return
            log.info("learner restarted: pid %d", self.proc.pid)

    def _ports(self, path: Path) -> tuple[int, int] | None:
        """(experience port, weights port) from the endpoints file once this child has written it, else None
        (no file yet, or one of another process)."""
        try:
            endpoints = json.loads(path.read_text())
        except (OSError, ValueError):  # not written yet (the learner writes it atomically)
            return None
        if endpoints.get("pid") != self.proc.pid:
            return None
        return int(endpoints["experience"].rsplit(":", 1)[1]), int(endpoints["weights"].rsplit(":", 1)[1])

    def log_tail(self, n: int) -> list[str]:
        """The last ``n`` lines of ``learner.log``."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - 64 * 1024))
                return f.read().decode(errors="replace").splitlines(keepends=True)[-n:]
        except OSError:
            return []

    def stop(self) -> int | None:
        """SIGTERM, wait ``stop_timeout_s``, then SIGKILL. Returns the exit code (None if never started)."""
        self._stopping.set()
        if self._supervisor is not None and self._supervisor is not threading.current_thread():
            self._supervisor.join(self.run_cfg.learn.ready_timeout_s + 5)
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(self.run_cfg.learn.stop_timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("learner pid %d did not stop in %.0f s: killing it", self.proc.pid,
                            self.run_cfg.learn.stop_timeout_s)
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode
