"""The policy link against hostile messages (issue #24, defect 1): the `tandem serve-policy` server, the
session's worker process and the robot's client keep serving; real sockets on 127.0.0.1 only."""

from __future__ import annotations

import threading
import time

import numpy as np
import zmq
from hostile_testkit import hostile_corpus, repro_frames

from tandem.hardware.metaworld_robot import MetaWorldRobot, MetaWorldRobotConfig
from tandem.policies.scripted import ScriptedPolicy, ScriptedPolicyConfig
from tandem.protocol.wire import Message, decode, encode
from tandem.runtime.inference.client import LinkBackend, PolicyLinkConfig, ProcessBackend, RemoteBackend
from tandem.runtime.inference.server import CHUNK, INFER, INFO, LINK_SCHEMA, serve_policy

TASK = "reach the red goal position"


def observation() -> dict[str, np.ndarray]:
    state = np.zeros(39, np.float32)
    state[:3] = [0.0, 0.6, 0.2]
    return {"observation.state": state}


def valid_requests() -> list[list[bytes]]:
    infer = Message(kind=INFER, schema=LINK_SCHEMA, seq=3, meta={"task": TASK}, arrays=observation())
    return [[bytes(f) for f in encode(infer)], [bytes(f) for f in encode(Message(kind=INFO, schema=LINK_SCHEMA))]]


def hostile_requests(seed: int, n: int):
    return hostile_corpus(seed=seed, n=n, valid=valid_requests(), kinds=[INFER, INFO, CHUNK, "error", "x"],
                          schemas=[LINK_SCHEMA, ""], crafted_kind=INFER, crafted_schema=LINK_SCHEMA,
                          crafted_meta={"task": TASK})


def throw_at(ctx: zmq.Context, endpoint: str, seed: int, n: int) -> int:
    """Send the hostile corpus from a DEALER (a few at a time: the server's queue is 16 deep)."""
    sock = ctx.socket(zmq.DEALER)
    sent = 0
    try:
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(endpoint)
        for frames in hostile_requests(seed, n):
            sock.send_multipart(frames)
            sent += 1
            if sent % 8 == 0:
                time.sleep(0.01)
                while sock.poll(0):  # drain the replies the valid and mutated requests earn
                    sock.recv_multipart()
    finally:
        sock.close(0)
    return sent


def infer_once(link: LinkBackend, request_id: int) -> np.ndarray:
    link.submit(request_id, observation(), TASK)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        for rid, chunk in link.poll(0.05):
            if rid == request_id:
                return chunk.actions
    raise AssertionError(f"no reply to request {request_id}: {link.stats}")


def test_fuzz_serve_policy_keeps_serving(zmq_context):
    """The issue's message and ~1500 generated ones at `tandem serve-policy`'s loop: it keeps serving."""
    robot = MetaWorldRobot(MetaWorldRobotConfig(cameras=[]))
    stop, ready, out = threading.Event(), threading.Event(), {}

    def run() -> None:
        out["stats"] = serve_policy(ScriptedPolicy(ScriptedPolicyConfig(chunk_length=4)), robot, "tcp://127.0.0.1:*",
                                    stop=stop, on_ready=lambda ep: (out.setdefault("endpoint", ep), ready.set()))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        throw_at(zmq_context, out["endpoint"], seed=11, n=1500)
        assert thread.is_alive()
        link = RemoteBackend(PolicyLinkConfig(endpoint=out["endpoint"], start_timeout_s=10))
        try:
            assert infer_once(link, 41).shape == (4, 4)
        finally:
            link.close()
    finally:
        stop.set()
        thread.join(10)
    assert out["stats"].malformed > 300, out["stats"]


def test_fuzz_policy_worker_process_keeps_serving(zmq_context):
    """The session's worker process (session.backend=process) takes the same hostile messages on its
    loopback endpoint and still answers the session's requests."""
    backend = ProcessBackend(MetaWorldRobotConfig(cameras=[]), ScriptedPolicyConfig(chunk_length=4),
                             PolicyLinkConfig(warmup=0, start_timeout_s=120))
    try:
        assert backend.endpoint.startswith("tcp://127.0.0.1:")
        throw_at(zmq_context, backend.endpoint, seed=12, n=800)
        time.sleep(0.5)
        assert backend.process.exitcode is None
        assert infer_once(backend, 9).shape == (4, 4)
        assert backend.process.exitcode is None
    finally:
        backend.close()


class RogueServer:
    """A ROUTER on 127.0.0.1 that answers the client's requests with whatever it is told."""

    def __init__(self, ctx: zmq.Context) -> None:
        self.sock = ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.ident: bytes | None = None

    def wait_request(self, link: LinkBackend) -> Message:
        """Submit until a request arrives (the client drops sends until it is connected)."""
        deadline = time.monotonic() + 10
        while not self.sock.poll(100):
            assert time.monotonic() < deadline, link.stats
            link.submit(1, observation(), TASK)
        frames = self.sock.recv_multipart()
        self.ident = frames[0]
        return decode(frames[1:])

    def close(self) -> None:
        self.sock.close(0)


def test_fuzz_policy_client_drops_hostile_replies(zmq_context):
    """The robot's client gets the issue's message, chunks of the wrong form and ~1500 generated replies:
    poll() never raises for them, counts them, and returns the next valid chunk."""
    rogue = RogueServer(zmq_context)
    link = LinkBackend(f"tcp://127.0.0.1:{rogue.port}", PolicyLinkConfig())
    link.info = {"chunk_length": 4, "action_dim": 4, "feature_dim": 0}
    try:
        request = rogue.wait_request(link)
        good = Message(kind=CHUNK, schema=LINK_SCHEMA, seq=request.seq, meta={"policy": "p", "version": 1, "infer_s": 0.0},
                       arrays={"actions": np.ones((4, 4), np.float32), "features": np.zeros(0, np.float16)})
        wrong = [
            dict(actions=np.ones((4, 3), np.float32)),  # another action dim
            dict(actions=np.ones((0, 4), np.float32)),  # no ticks
            dict(actions=np.full((4, 4), np.nan, np.float32)),
            dict(actions=np.ones((4, 4, 1), np.float32)),
            dict(actions=np.ones((4, 4), np.float32), features=np.ones(3, np.float16)),
        ]
        replies = [[bytes(f) for f in encode(Message(kind=CHUNK, schema=LINK_SCHEMA, seq=1, arrays=w))] for w in wrong]
        replies.append([bytes(f) for f in encode(Message(kind=CHUNK, schema=LINK_SCHEMA, seq=1, meta={"version": "x"},
                                                         arrays={"actions": np.ones((4, 4), np.float32)}))])
        replies.append(repro_frames())
        corpus = hostile_corpus(seed=13, n=1500, valid=[[bytes(f) for f in encode(good)]],
                                kinds=[CHUNK, INFO, "x"], schemas=[LINK_SCHEMA, ""], crafted_kind=CHUNK,
                                crafted_schema=LINK_SCHEMA)
        got = []
        for i, frames in enumerate([*replies, *corpus]):
            rogue.sock.send_multipart([rogue.ident, *frames])
            if i % 50 == 0:
                got += link.poll(0.01)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            got += link.poll(0.05)
        assert link.stats.malformed >= len(replies) + 300, link.stats
        assert all(chunk.actions.shape == (4, 4) and np.isfinite(chunk.actions).all() for _, chunk in got)
        rogue.sock.send_multipart([rogue.ident, *encode(good)])
        deadline = time.monotonic() + 5
        fresh = []
        while not fresh and time.monotonic() < deadline:
            fresh = link.poll(0.05)
        assert fresh and fresh[0][0] == request.seq and fresh[0][1].actions.shape == (4, 4)
    finally:
        link.close()
        rogue.close()
