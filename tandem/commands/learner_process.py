"""A learner on localhost for one session (``tandem run learn.spawn=true``).

The session writes a ``learner:`` YAML block (the run's ``head`` settings as the objective, so both
sides build the same networks, plus the ``learn.learner`` settings), starts ``tandem learn --config``
as a child process on free loopback ports, waits for the ``<store_dir>/endpoints.json`` it writes once
its sockets are bound (``{"experience", "weights", "pid", "run"}``), and points the run's ``link`` block
at the ports in it. At the end the learner gets SIGTERM (it writes a final checkpoint and its summary),
and SIGKILL only if it does not exit within ``stop_timeout_s``. Its output goes to
``<store_dir>/learner.log``.
"""

from __future__ import annotations

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

log = logging.getLogger(__name__)

#: the learner's endpoints file in its store (``tandem.value.learner.ENDPOINTS_FILE``; not imported from
#: there, which would load torch into every ``tandem run``)
ENDPOINTS_FILE = "endpoints.json"
POLL_S = 0.1


def learner_values(run_cfg: Any, store_dir: Path) -> dict:
    """The spawned learner's ``learner:`` block for this run."""
    values = dict(run_cfg.learn.learner)
    objective = dict(values.pop("objective", {}) or {})
    objective.update(run_cfg.head.objective_values())
    values.update({"host": "127.0.0.1", "experience_port": 0, "weights_port": 0, "store_dir": str(store_dir),
                   "objective": objective})
    return values


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
        self.lines: list[str] = []
        self._reader: threading.Thread | None = None

    def start(self) -> LearnerProcess:
        """Write the config, start the learner, wait until it serves; point ``run_cfg.link`` at it.

        Raises:
            RuntimeError: the learner exited or did not come up within ``ready_timeout_s`` (its last
                output lines are in the message).
        """
        self.store_dir.mkdir(parents=True, exist_ok=True)
        endpoints = self.store_dir / ENDPOINTS_FILE
        endpoints.unlink(missing_ok=True)  # a previous learner's file must not be taken for this one's
        config_path = self.store_dir / "learner.yaml"
        config_path.write_text(yaml.safe_dump({"learner": learner_values(self.run_cfg, self.store_dir)}))
        cmd = [sys.executable, "-m", "tandem.cli", "learn", "--config", str(config_path)]
        logfile = open(self.store_dir / "learner.log", "a")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self._reader = threading.Thread(target=self._read, args=(logfile,), name="learner-output", daemon=True)
        self._reader.start()
        deadline = time.monotonic() + self.run_cfg.learn.ready_timeout_s
        while (ports := self._ports(endpoints)) is None:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = "".join(self.lines[-20:])
                self.stop()
                raise RuntimeError(f"the spawned learner did not come up (see {self.store_dir / 'learner.log'}):\n{tail}")
            time.sleep(POLL_S)
        exp_port, w_port = ports
        link = self.run_cfg.link
        link.enabled = True
        link.learner_host = "127.0.0.1"
        link.experience_port, link.weights_port = exp_port, w_port
        if not link.spool_dir:
            link.spool_dir = str(self.store_dir.parent / "spool")
        log.info("learner: pid %d, experience port %d, weights port %d, store %s", self.proc.pid, exp_port, w_port,
                 self.store_dir)
        return self

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

    def _read(self, logfile: Any) -> None:
        """Forward the learner's output to ``learner.log`` (and keep it for an error message)."""
        try:
            for line in self.proc.stdout:
                self.lines.append(line)
                logfile.write(line)
                logfile.flush()
        finally:
            logfile.close()

    def stop(self) -> int | None:
        """SIGTERM, wait ``stop_timeout_s``, then SIGKILL. Returns the exit code (None if never started)."""
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
        if self._reader is not None:
            self._reader.join(5)
        return self.proc.returncode
