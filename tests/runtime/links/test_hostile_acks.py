"""A peer answering as the learner cannot make the robot forget records it never sent (issue #24, defect 7)."""

from __future__ import annotations

import time

import zmq
from links_testkit import free_port, make_record, wait_for

from tandem.protocol.messages import ACK, HB
from tandem.protocol.wire import Message, WireError, decode, encode
from tandem.runtime.links.config import LinkConfig
from tandem.runtime.links.experience import ExperienceLink


class FakeLearner:
    """A ROUTER on 127.0.0.1 that answers the robot's heartbeats and acks with whatever it is told."""

    def __init__(self, ctx: zmq.Context) -> None:
        self.sock = ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.ident: bytes | None = None
        self.seqs: list[int] = []

    def pump(self, seconds: float, acked: int | None = None) -> None:
        """Receive for ``seconds``; answer heartbeats with ``acked`` (if given)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if not self.sock.poll(10):
                continue
            frames = self.sock.recv_multipart()
            self.ident = frames[0]
            try:
                msg = decode(frames[1:])
            except WireError:
                continue
            if msg.kind == HB and acked is not None:
                self.answer(HB, msg.meta["stream"], acked)
            elif msg.kind == "chunk":
                self.seqs.append(msg.seq)

    def answer(self, kind: str, stream: str, acked: int) -> None:
        """Send an ``ack`` or ``hb`` claiming every seq <= ``acked`` is stored."""
        reply = Message(kind=kind, meta={"learner": "fake", "stream": stream, "acked": acked, "gap": False})
        self.sock.send_multipart([self.ident, *encode(reply)])


def test_ack_above_highest_sent_is_refused(tmp_path, zmq_context):
    """Six records spooled, two sent (window 2): acks claiming 10**9 or 5 are refused and counted; the
    records stay pending; an honest ack of 2 is taken and the next two go out."""
    ctx = zmq_context
    learner = FakeLearner(ctx)
    cfg = LinkConfig(robot_id="r1", experience_port=learner.port, weights_port=free_port(), window=2,
                     spool_dir=str(tmp_path / "spool"), timeout_s=30.0, heartbeat_s=0.05)
    link = ExperienceLink(cfg, context=ctx)
    try:
        link.start()
        learner.pump(0.5, acked=0)  # the robot hears a learner with nothing stored: connected
        assert wait_for(lambda: link.stats.connected, 5), link.stats
        for i in range(6):
            link.send(make_record("r1", 0, i))
        learner.pump(0.5)
        assert sorted(set(learner.seqs)) == [1, 2], learner.seqs
        assert wait_for(lambda: link.stats.spooled == 6 and link.stats.pending == 6, 5), link.stats
        for forged in (10**9, 2**63 - 1, 5):
            learner.answer(ACK, link.stream, forged)
            learner.answer(HB, link.stream, forged)
        assert wait_for(lambda: link.stats.malformed_reasons.get("ack_above_sent", 0) == 6, 5), link.stats
        assert link.stats.pending == 6 and link.stats.acked == 0, link.stats
        learner.answer(ACK, link.stream, 2)  # an honest ack: the robot forgets 1..2 and sends 3..4
        assert wait_for(lambda: link.stats.acked == 2 and link.stats.pending == 4, 5), link.stats
        learner.pump(0.5)
        assert {3, 4} <= set(learner.seqs), learner.seqs
        assert 5 not in learner.seqs
    finally:
        link.close(drain_s=0)
        learner.sock.close(0)


def test_restarted_robot_accepts_acks_for_what_an_earlier_session_spooled(tmp_path, zmq_context):
    """Records spooled by an earlier session may have reached the learner: a later session accepts an
    ack for them (at most the spool's top), so the bound never wedges a restarted robot."""
    ctx = zmq_context
    learner = FakeLearner(ctx)
    cfg = LinkConfig(robot_id="r1", experience_port=learner.port, weights_port=free_port(), window=4,
                     spool_dir=str(tmp_path / "spool"), timeout_s=30.0, heartbeat_s=0.05)
    first = ExperienceLink(cfg, context=ctx)
    second = ExperienceLink(cfg, context=ctx)
    try:
        first.start()
        for i in range(3):
            first.send(make_record("r1", 0, i))
        assert wait_for(lambda: first.stats.spooled == 3, 5)
        first.close(drain_s=0)
        second.start()
        learner.pump(0.5, acked=3)  # the learner stored all three before the restart
        assert wait_for(lambda: second.stats.acked == 3 and second.stats.pending == 0, 5), second.stats
        assert second.stats.malformed == 0, second.stats
    finally:
        first.close(drain_s=0)
        second.close(drain_s=0)
        learner.sock.close(0)
