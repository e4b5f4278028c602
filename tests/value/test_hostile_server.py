"""The learner's link server against hostile peers (issue #24, defects 1 and 7): real sockets on 127.0.0.1.

Each test starts a LinkServer as the learner does (``start()``: bind, then its I/O thread), throws
messages at it from a raw DEALER, and then checks that a real robot link still gets its records acked.
"""

from __future__ import annotations

import logging
import shutil

import msgpack
import zmq
from hostile_testkit import hostile_corpus, repro_frames
from links_testkit import make_record, wait_for

from tandem.protocol.messages import RECORD_SCHEMA, record_to_message
from tandem.protocol.security import create_keys
from tandem.protocol.wire import Message, encode
from tandem.runtime.links.config import LinkConfig
from tandem.runtime.links.experience import ExperienceLink
from tandem.value.replay import ReplayStore
from tandem.value.server import LinkServer, ServerConfig


def raw_dealer(ctx: zmq.Context, port: int) -> zmq.Socket:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 100_000)
    sock.connect(f"tcp://127.0.0.1:{port}")
    return sock


def robot_link(server: LinkServer, robot: str, tmp_path, **kw) -> ExperienceLink:
    cfg = LinkConfig(robot_id=robot, experience_port=server.experience_port, weights_port=server.weights_port,
                     spool_dir=str(tmp_path / f"spool-{robot}"), **kw)
    return ExperienceLink(cfg).start()


def still_acks(server: LinkServer, tmp_path, robot: str = "good", n: int = 5) -> None:
    """A valid robot sent after the hostile messages gets every record stored and acked."""
    link = robot_link(server, robot, tmp_path)
    try:
        for i in range(n):
            link.send(make_record(robot, 0, i))
        assert link.wait_acked(15), (link.stats, server.stats)
        assert server.store.last_seq(robot, link.stream) == link.stats.acked >= n
    finally:
        link.close(0)


def test_issue_reproduction_leaves_the_learner_acking(tmp_path):
    """The issue's message, sent as [header, b""] from a DEALER: counted as bad_shape; the I/O thread lives."""
    store = ReplayStore(tmp_path / "replay")
    server = LinkServer(ServerConfig(experience_port=0, weights_port=0), store).start()
    ctx = zmq.Context()
    try:
        evil = raw_dealer(ctx, server.experience_port)
        evil.send_multipart(repro_frames())
        header = msgpack.unpackb(repro_frames()[0])
        header["arrays"][0][2] = [0] * 65
        evil.send_multipart([msgpack.packb(header), b""])
        assert wait_for(lambda: server.stats["malformed_reasons"].get("bad_shape", 0) == 2, 5), server.stats
        assert server._thread is not None and server._thread.is_alive()
        still_acks(server, tmp_path)
        assert server.stats["io_error"] == ""
    finally:
        server.stop()
        store.close()
        ctx.destroy(0)


def test_fuzz_learner_link_server(tmp_path):
    """About 2500 generated and mutated messages of every kind the ROUTER serves: every one is received
    and handled (stored, answered or counted), none stops the I/O thread, and a robot is acked after."""
    store = ReplayStore(tmp_path / "replay")
    server = LinkServer(ServerConfig(experience_port=0, weights_port=0, max_message_bytes=64 * 1024), store).start()
    ctx = zmq.Context()
    try:
        valid = [
            [bytes(f) for f in encode(record_to_message(make_record("fz", 0, i), i + 1, "s-fz"))] for i in range(3)
        ] + [
            [bytes(f) for f in encode(Message(kind="hb", robot="fz", meta={"stream": "s-fz", "next_seq": 4}))],
            [bytes(f) for f in encode(Message(kind="pull", robot="fz", meta={"wkind": "head", "version": -1, "index": 0}))],
            [bytes(f) for f in encode(Message(kind="report", robot="fz",
                                              meta={"wkind": "head", "version": 1, "status": "refused", "reason": "x"}))],
        ]
        evil = raw_dealer(ctx, server.experience_port)
        sent = 0
        for frames in hostile_corpus(seed=7, n=2500, valid=valid, kinds=["chunk", "hb", "pull", "report", "ack", "x"],
                                     schemas=[RECORD_SCHEMA, ""], crafted_schema=RECORD_SCHEMA,
                                     crafted_meta={"stream": "s"}):
            evil.send_multipart(frames)
            sent += 1
        assert wait_for(lambda: server.stats["received"] == sent, 60), (sent, server.stats)
        assert server._thread.is_alive(), server.stats
        assert server.stats["malformed"] > sent // 3, server.stats
        assert server.stats["malformed_reasons"].get("bad_shape", 0) >= 1, server.stats
        still_acks(server, tmp_path)
        assert server.stats["io_error"] == ""
    finally:
        server.stop()
        store.close()
        ctx.destroy(0)


def test_unverified_robot_ids_are_evicted_and_counted(tmp_path):
    """Heartbeats under 600 robot ids that never send a record: at most max_unverified_robots kept, the
    rest evicted and counted; a robot whose records are stored is never evicted by them."""
    store = ReplayStore(tmp_path / "replay")
    cfg = ServerConfig(experience_port=0, weights_port=0, max_unverified_robots=50, max_robots=80)
    server = LinkServer(cfg, store).start()
    ctx = zmq.Context()
    try:
        still_acks(server, tmp_path, robot="good")
        evil = raw_dealer(ctx, server.experience_port)
        for i in range(600):
            hb = Message(kind="hb", robot=f"ghost-{i}", meta={"stream": f"s{i}"})
            evil.send_multipart([bytes(f) for f in encode(hb)])
        assert wait_for(lambda: server.stats["received"] >= 600, 20), server.stats
        assert wait_for(lambda: server.stats["evicted_robots"] == 550, 5), server.stats
        assert len(server.robots) == 51 and "good" in server.robots and server.robots["good"].verified
        assert "ghost-599" in server.robots and "ghost-0" not in server.robots
        # robots with stored records count against max_robots only: 40 more fill it, the ghosts go first
        for k in range(40):
            still_acks(server, tmp_path, robot=f"real{k}", n=1)
        assert len(server.robots) <= cfg.max_robots and all(f"real{k}" in server.robots for k in range(40))
        still_acks(server, tmp_path, robot="good", n=5)  # its stream goes on where it was
    finally:
        server.stop()
        store.close()
        ctx.destroy(0)


def test_reports_with_unknown_weight_kinds_do_not_grow_state(tmp_path, caplog):
    """A report may only name head, critic or base; its reason is logged on one line, escaped."""
    store = ReplayStore(tmp_path / "replay")
    server = LinkServer(ServerConfig(experience_port=0, weights_port=0), store).start()
    ctx = zmq.Context()
    try:
        evil = raw_dealer(ctx, server.experience_port)
        for i in range(200):
            msg = Message(kind="report", robot="r\nINFO forged", meta={"wkind": f"k{i}", "version": 1, "status": "refused"})
            evil.send_multipart([bytes(f) for f in encode(msg)])
        forged = Message(kind="report", robot="r\nINFO learner: forged line",
                         meta={"wkind": "head", "version": 1, "status": "refused", "reason": "bad\n\x1b[31mINFO x"})
        with caplog.at_level(logging.WARNING, logger="tandem.value.server"):
            evil.send_multipart([bytes(f) for f in encode(forged)])
            assert wait_for(lambda: server.stats["reports"] == 1, 5), server.stats
        assert server.stats["malformed_reasons"].get("bad_meta") == 200
        state = server.robots["r\nINFO learner: forged line"]
        assert state.weights_refused == {"head": 1}
        lines = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
        assert lines and all("\n" not in line and "\x1b" not in line for line in lines), lines
        assert "r\\x0aINFO learner: forged line" in lines[0]
    finally:
        server.stop()
        store.close()
        ctx.destroy(0)


def second_robot_keys(tmp_path):
    """A learner key set authorising two robot keys: keys/ (robot A) and second/ (robot B)."""
    keys, second = tmp_path / "keys", tmp_path / "second"
    create_keys(keys)
    create_keys(second)
    shutil.copy(second / "client.key", keys / "authorized" / "second.key")
    shutil.copy(keys / "server.key", second / "server.key")
    return str(keys), str(second)


def test_curve_robot_id_is_bound_to_its_first_key(tmp_path):
    """With CURVE, robot B (another authorised key) cannot send records as robot A: refused with
    robot_key_mismatch, never acked; under its own id B is served."""
    keys, second = second_robot_keys(tmp_path)
    store = ReplayStore(tmp_path / "replay")
    server = LinkServer(ServerConfig(experience_port=0, weights_port=0, keys_dir=keys), store).start()
    links = []
    try:
        a = robot_link(server, "r1", tmp_path, keys_dir=keys)
        links.append(a)
        for i in range(3):
            a.send(make_record("r1", 0, i))
        assert a.wait_acked(10), server.stats
        assert server.robots["r1"].key and server.robots["r1"].verified
        cfg = LinkConfig(robot_id="r1", experience_port=server.experience_port, weights_port=server.weights_port,
                         spool_dir=str(tmp_path / "spool-b-as-r1"), keys_dir=second)
        b_as_a = ExperienceLink(cfg).start()
        links.append(b_as_a)
        for i in range(3):
            b_as_a.send(make_record("r1", 5, i))
        assert wait_for(lambda: server.stats["malformed_reasons"].get("robot_key_mismatch", 0) >= 3, 10), server.stats
        assert b_as_a.stats.acked == 0 and not b_as_a.stats.connected
        assert store.last_seq("r1", b_as_a.stream) == 0 and store.last_seq("r1", a.stream) == 3
        b = robot_link(server, "r2", tmp_path, keys_dir=second)
        links.append(b)
        b.send(make_record("r2", 0, 0))
        assert b.wait_acked(10), server.stats
        assert server.robots["r2"].key != server.robots["r1"].key
        a.send(make_record("r1", 0, 3))  # robot A goes on
        assert a.wait_acked(10)
    finally:
        for link in links:
            link.close(0)
        server.stop()
        store.close()


def test_large_robot_ids_are_refused(tmp_path):
    store = ReplayStore(tmp_path / "replay")
    server = LinkServer(ServerConfig(experience_port=0, weights_port=0), store).start()
    ctx = zmq.Context()
    try:
        evil = raw_dealer(ctx, server.experience_port)
        hb = Message(kind="hb", robot="x" * 1000, meta={"stream": "s"})
        evil.send_multipart([bytes(f) for f in encode(hb)])
        assert wait_for(lambda: server.stats["malformed_reasons"].get("bad_robot_id") == 1, 5), server.stats
        assert not server.robots
    finally:
        server.stop()
        store.close()
        ctx.destroy(0)


