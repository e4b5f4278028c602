"""The robot's link receivers against hostile messages (issue #24, defect 1): the weights feed (SUB and
pull DEALER) and the experience link's replies. A fake learner on 127.0.0.1 sends the issue's message
and generated ones; each receiver counts them, keeps running, and then takes valid weights or acks."""

from __future__ import annotations

import time

import numpy as np
import zmq
from hostile_testkit import hostile_corpus, repro_frames
from links_testkit import ArrayWeights, make_record, wait_for

from tandem.protocol.messages import ACK, HB, PIECE, WEIGHTS, weights_message
from tandem.protocol.wire import Message, WireError, decode, encode, pack_frames
from tandem.runtime.links.config import LinkConfig
from tandem.runtime.links.experience import ExperienceLink
from tandem.runtime.links.weights import WeightsSubscriber

SCHEMA = {"w": ("float32", (8, 8)), "b": ("float32", (8,))}


def weights(value: float) -> dict[str, np.ndarray]:
    return {"w": np.full((8, 8), value, np.float32), "b": np.full(8, value, np.float32)}


class FakeLearner:
    """A weights PUB and an experience ROUTER on 127.0.0.1 that send whatever they are told."""

    def __init__(self, ctx: zmq.Context) -> None:
        self.pub = ctx.socket(zmq.PUB)
        self.pub.setsockopt(zmq.LINGER, 0)
        self.pub.setsockopt(zmq.SNDHWM, 100_000)
        self.weights_port = self.pub.bind_to_random_port("tcp://127.0.0.1")
        self.router = ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.experience_port = self.router.bind_to_random_port("tcp://127.0.0.1")
        self.ident: bytes | None = None
        self.seqs: list[int] = []

    def receive(self, seconds: float) -> list[Message]:
        """Messages from robots for ``seconds`` (remembering the sender and chunk seqs)."""
        out, deadline = [], time.monotonic() + seconds
        while time.monotonic() < deadline:
            if not self.router.poll(10):
                continue
            frames = self.router.recv_multipart()
            self.ident = frames[0]
            try:
                msg = decode(frames[1:])
            except WireError:
                continue
            if msg.kind == "chunk":
                self.seqs.append(msg.seq)
            out.append(msg)
        return out

    def close(self) -> None:
        self.pub.close(0)
        self.router.close(0)


def test_fuzz_weights_subscriber(tmp_path, zmq_context):
    """~1500 generated broadcasts on the PUB and ~1000 generated replies on the pull DEALER, after the
    issue's message on both: the subscriber's thread lives, counts them, keeps its weights, reports the
    learner alive only while it hears one, and then stages and applies a valid set."""
    learner = FakeLearner(zmq_context)
    cfg = LinkConfig(robot_id="r1", experience_port=learner.experience_port, weights_port=learner.weights_port,
                     max_message_bytes=64 * 1024, timeout_s=30.0)
    consumer = ArrayWeights(SCHEMA, weights(0.0))
    sub = WeightsSubscriber(cfg, {"head": consumer}).start()
    try:
        hb = [bytes(f) for f in encode(Message(kind=HB, meta={"learner": "x", "versions": {}}))]
        assert wait_for(lambda: (learner.pub.send_multipart(hb), sub.stats.learner_alive)[1], 5, interval=0.05)
        learner.pub.send_multipart(repro_frames())
        assert wait_for(lambda: sub.stats.malformed_reasons.get("bad_shape", 0) == 1, 5), sub.stats
        good = weights_message("head", weights(1.0), 1, "run")
        valid = [[bytes(f) for f in encode(good)], hb,
                 [bytes(f) for f in encode(Message(kind=HB, meta={"learner": "x", "versions": {"head": ["run", 3]}}))]]
        for i, frames in enumerate(hostile_corpus(seed=21, n=1500, valid=valid, kinds=[WEIGHTS, HB, PIECE, "x"],
                                                  crafted_kind=WEIGHTS, crafted_meta=dict(good.meta))):
            learner.pub.send_multipart(frames)
            if i % 4 == 3:
                time.sleep(0.002)  # the SUB keeps 8 messages: pace so most are read, not dropped
        # the subscriber pulls whatever the heartbeats announced: answer its DEALER with hostile pieces
        learner.pub.send_multipart(valid[2])
        assert [m for m in learner.receive(2.0) if m.kind == "pull"], sub.stats
        blob = pack_frames(encode(good))
        piece = Message(kind=PIECE, meta={"wkind": "head", "version": 1, "run": "run", "index": 0, "count": 1,
                                          "blob_bytes": len(blob)}, arrays={"data": np.frombuffer(blob, np.uint8)})
        pieces = [[bytes(f) for f in encode(piece)]]
        learner.router.send_multipart([learner.ident, *repro_frames()])
        for frames in hostile_corpus(seed=22, n=1000, valid=pieces, kinds=[PIECE, WEIGHTS, "x"], crafted_kind=PIECE,
                                     crafted_meta=dict(piece.meta)):
            learner.router.send_multipart([learner.ident, *frames])
        time.sleep(1.0)
        assert sub._thread is not None and sub._thread.is_alive(), sub.stats
        assert sub.stats.malformed > 500, sub.stats
        sub.apply_staged(0)
        # only intact arrays can have been staged: the initial zeros or the valid set's ones (a mutation
        # of its header alone, e.g. its version, still carries arrays matching their digest)
        w = consumer.arrays["w"]
        assert w.flat[0] in (0.0, 1.0) and np.all(w == w.flat[0]), consumer.version
        ok = [bytes(f) for f in encode(weights_message("head", weights(7.0), 7, "run2"))]
        assert wait_for(lambda: (learner.pub.send_multipart(ok), sub.stats.versions.get("head") == 7)[1], 10,
                        interval=0.05), sub.stats
        sub.apply_staged(1)
        assert consumer.version == 7 and np.all(consumer.arrays["w"] == 7.0)
        assert sub.stats.learner_alive
    finally:
        sub.close()
        learner.close()
    assert not sub.stats.learner_alive  # a stopped receiver never claims a learner


def test_fuzz_experience_link_replies(tmp_path, zmq_context):
    """The issue's message and ~1500 generated acks and heartbeats (some naming the link's own stream):
    the experience link counts them, loses nothing, and every record queued after them is sent and
    acked once the learner answers honestly."""
    learner = FakeLearner(zmq_context)
    cfg = LinkConfig(robot_id="r1", experience_port=learner.experience_port, weights_port=learner.weights_port,
                     spool_dir=str(tmp_path / "spool"), window=4, timeout_s=30.0, heartbeat_s=0.05)
    link = ExperienceLink(cfg).start()
    try:
        learner.receive(0.3)
        assert learner.ident is not None
        stream = link.stream

        def answer(kind: str, acked: int) -> list[bytes]:
            return [bytes(f) for f in encode(Message(kind=kind, meta={"learner": "L", "stream": stream, "acked": acked}))]

        learner.router.send_multipart([learner.ident, *answer(HB, 0)])
        assert wait_for(lambda: link.stats.connected, 5), link.stats
        for i in range(3):
            link.send(make_record("r1", 0, i))
        learner.receive(0.5)
        learner.router.send_multipart([learner.ident, *repro_frames()])
        for frames in hostile_corpus(seed=31, n=1500, valid=[answer(ACK, 1), answer(HB, 2)], kinds=[ACK, HB, "x"],
                                     crafted_kind=ACK, crafted_meta={"learner": "L", "stream": stream}):
            learner.router.send_multipart([learner.ident, *frames])
        learner.receive(1.0)
        assert link._thread is not None and link._thread.is_alive(), link.stats
        assert link.stats.malformed > 500 and link.stats.malformed_reasons.get("bad_shape", 0) >= 1, link.stats
        assert link.stats.acked <= 3 and link.stats.pending == 3 - link.stats.acked
        for i in range(3, 10):  # queued after the hostile messages: none may be lost
            link.send(make_record("r1", 0, i))
        deadline = time.monotonic() + 20
        while link.stats.acked < 10 and time.monotonic() < deadline:
            learner.receive(0.1)
            top = max([s for s in learner.seqs if s <= link.stats.acked + 4] or [0])
            contiguous = max((n for n in range(top + 1) if set(range(1, n + 1)) <= set(learner.seqs)), default=0)
            learner.router.send_multipart([learner.ident, *answer(ACK, contiguous)])
        assert link.stats.acked == 10 and link.stats.pending == 0, (link.stats, sorted(set(learner.seqs)))
        assert set(range(1, 11)) <= set(learner.seqs)
    finally:
        link.close(drain_s=0)
        learner.close()
