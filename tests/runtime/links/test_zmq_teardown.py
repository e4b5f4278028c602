"""Link owners never closed, left to the garbage collector: collecting them must not block.

A private zmq context finalized before a socket of its own waits forever in ``zmq_ctx_term`` (a CI run
once hung there, in the GC). The robot's policy-link clients (``LinkBackend``, ``LinkBase``) therefore
open their sockets on the process's shared context, with linger 0. Checked in a subprocess, so that a
regression fails here instead of hanging the test run.
"""

from __future__ import annotations

import subprocess
import sys

from links_testkit import free_port

SCRIPT = """
import gc, sys
import numpy as np
from tandem.runtime.inference.client import LinkBackend, PolicyLinkConfig
from tandem.runtime.links.weights import LinkBase

endpoint = sys.argv[1]
for _ in range(20):
    backend = LinkBackend(endpoint, PolicyLinkConfig())
    backend.submit(1, {"x": np.zeros(3, np.float32)}, "t")
    base = LinkBase(endpoint, stage_timeout_s=0.01)
    try:
        base.stage({"w": np.zeros(3, np.float32)}, 1)  # opens its socket; a request stays unsent
    except RuntimeError:
        pass
    backend.me, base.me = backend, base  # cycles: freed by the collector, not by reference counts
    del backend, base
    gc.collect()
print("collected")
"""


def test_unclosed_link_clients_are_collected_without_blocking():
    proc = subprocess.run([sys.executable, "-c", SCRIPT, f"tcp://127.0.0.1:{free_port()}"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "collected", proc.stderr[-2000:]
