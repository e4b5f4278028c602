"""Where base-policy inference runs, behind one non-blocking interface.

``submit(request_id, observation, task)`` hands an observation over and returns at once;
``poll(wait_s)`` returns the ``(request_id, Chunk)`` replies that are ready. The scheduler matches
ids and drops stale replies. Backends:

- :class:`InlineBackend`: runs ``infer`` inside ``submit`` (cheap scripted policies, tests);
- :class:`ThreadBackend`: a worker thread with a one-slot mailbox (the newest request wins);
- a worker process / remote server over pyzmq (``tandem.runtime.inference.client``), for real VLAs;
- :class:`SampleRequests`: wraps any of them so each request asks for N base samples (``head=vgps``);
  every backend answers requests through ``tandem.policies.base.infer_requests`` (one batched call).
"""

from __future__ import annotations

import queue
import threading
from typing import Protocol

import numpy as np

from tandem.policies.base import BasePolicy, Chunk, infer_requests, request_samples


class InferenceBackend(Protocol):
    """Non-blocking inference."""

    def submit(self, request_id: int, observation: dict[str, np.ndarray], task: str) -> None:
        """Queue an inference request; never blocks."""

    def poll(self, wait_s: float = 0.0) -> list[tuple[int, Chunk]]:
        """Replies ready now (waiting up to ``wait_s`` seconds for the first one)."""

    def close(self) -> None:
        """Stop workers and release resources."""


class InlineBackend:
    """Runs the policy synchronously in ``submit``. Only for policies that cost microseconds."""

    def __init__(self, policy: BasePolicy) -> None:
        self.policy = policy
        self._ready: list[tuple[int, Chunk]] = []

    def submit(self, request_id: int, observation: dict[str, np.ndarray], task: str) -> None:
        """Run inference now."""
        self._ready.append((request_id, infer_requests(self.policy, [observation], [task])[0]))

    def poll(self, wait_s: float = 0.0) -> list[tuple[int, Chunk]]:
        """Return and clear the finished replies."""
        out, self._ready = self._ready, []
        return out

    def close(self) -> None:
        """Nothing to release."""


class ThreadBackend:
    """Runs the policy on a worker thread. A new request replaces one not yet started."""

    def __init__(self, policy: BasePolicy) -> None:
        self.policy = policy
        self._inbox: queue.Queue = queue.Queue(maxsize=1)
        self._outbox: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self.errors: list[BaseException] = []
        self._thread = threading.Thread(target=self._work, name="tandem-inference", daemon=True)
        self._thread.start()

    def submit(self, request_id: int, observation: dict[str, np.ndarray], task: str) -> None:
        """Put the request in the one-slot mailbox, replacing an unstarted older one."""
        item = (request_id, observation, task)
        while True:
            try:
                self._inbox.put_nowait(item)
                return
            except queue.Full:
                try:
                    self._inbox.get_nowait()
                except queue.Empty:
                    pass

    def poll(self, wait_s: float = 0.0) -> list[tuple[int, Chunk]]:
        """Replies that are ready."""
        out = []
        try:
            out.append(self._outbox.get(timeout=wait_s) if wait_s > 0 else self._outbox.get_nowait())
            while True:
                out.append(self._outbox.get_nowait())
        except queue.Empty:
            pass
        if self.errors:
            raise RuntimeError("base policy inference failed") from self.errors[0]
        return out

    def close(self) -> None:
        """Stop the worker thread."""
        self._stop.set()
        self._thread.join(timeout=5)

    def _work(self) -> None:
        while not self._stop.is_set():
            try:
                rid, obs, task = self._inbox.get(timeout=0.05)
            except queue.Empty:
                continue
            try:
                self._outbox.put((rid, infer_requests(self.policy, [obs], [task])[0]))
            except BaseException as exc:  # reported to the control thread by poll()
                self.errors.append(exc)
                return


class SampleRequests:
    """A backend whose every request asks for ``num_samples`` base samples of one observation (``head=vgps``).

    The inner backend's policy answers with one batched call (``infer_requests``) and the reply's
    ``Chunk.samples`` float32[N, P, A] holds them; the scheduler keeps them beside its plan. Other
    attributes (``fault_stats``, ``policy`` ...) are the inner backend's.

    Args:
        inner: the backend that runs inference.
        num_samples: N, 1..MAX_SAMPLES.
    """

    def __init__(self, inner: InferenceBackend, num_samples: int) -> None:
        request_samples({}, num_samples)  # validates N
        self.inner = inner
        self.num_samples = int(num_samples)

    def submit(self, request_id: int, observation: dict[str, np.ndarray], task: str) -> None:
        """Queue a request for N samples; never blocks."""
        self.inner.submit(request_id, request_samples(observation, self.num_samples), task)

    def poll(self, wait_s: float = 0.0) -> list[tuple[int, Chunk]]:
        """The inner backend's replies."""
        return self.inner.poll(wait_s)

    def close(self) -> None:
        """Close the inner backend."""
        self.inner.close()

    def __getattr__(self, name: str):  # noqa: ANN204 - forwards anything else (fault_stats, policy, ...)
        return getattr(self.inner, name)
