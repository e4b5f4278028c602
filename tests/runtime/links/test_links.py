"""Experience and weights links against a real learner link server on 127.0.0.1 (in-process threads)."""

from __future__ import annotations

import time

import numpy as np
import pytest
import zmq
from links_testkit import ArrayWeights, free_port, make_record, wait_for

from tandem.protocol.messages import HB, record_to_message, weights_message
from tandem.protocol.wire import Message, encode
from tandem.runtime.links.config import LinkConfig
from tandem.runtime.links.experience import ExperienceLink
from tandem.runtime.links.weights import TorchModuleWeights, WeightsSubscriber
from tandem.value.replay import ReplayStore, record_entries
from tandem.value.server import LinkServer, ServerConfig

SCHEMA = {"w": ("float32", (8, 8)), "b": ("float32", (8,))}


def weights(v: float) -> dict[str, np.ndarray]:
    return {"w": np.full((8, 8), v, np.float32), "b": np.full(8, v, np.float32)}


def robot_config(server: LinkServer, robot: str, tmp_path, **kw) -> LinkConfig:
    return LinkConfig(robot_id=robot, experience_port=server.experience_port, weights_port=server.weights_port,
                      spool_dir=str(tmp_path / f"spool-{robot}"), **kw)


def stored_keys(directory) -> list[tuple[str, int, int]]:
    return [rec.key for _, rec in record_entries(directory) if rec is not None]


def test_learner_restart_loses_and_duplicates_nothing(tmp_path):
    """The learner goes away mid-stream and comes back on the same ports and store: exactly once."""
    ports = dict(experience_port=free_port(), weights_port=free_port())
    store = ReplayStore(tmp_path / "replay")
    server = LinkServer(ServerConfig(**ports), store).start()
    link = ExperienceLink(LinkConfig(robot_id="r1", spool_dir=str(tmp_path / "spool"), timeout_s=0.4, **ports)).start()
    sent = []
    try:
        for i in range(300):
            rec = make_record("r1", i // 50, i % 50)
            sent.append(rec.key)
            link.send(rec)
            if i == 120:
                assert wait_for(lambda: link.stats.acked >= 50, 5)
                server.stop()  # the learner is gone; the robot keeps sending into its spool
                store.close()
            if i == 200:
                assert link.stats.acked < 200
                assert wait_for(lambda: not link.stats.connected, 3)  # silence noticed: socket rebuilt
                store = ReplayStore(tmp_path / "replay")
                server = LinkServer(ServerConfig(**ports), store).start()
        assert link.wait_acked(15), link.stats
        assert link.stats.reconnects >= 1 and link.stats.resent > 0
    finally:
        link.close(0)
        server.stop()
        store.close()
    keys = stored_keys(tmp_path / "replay")
    assert keys == sent  # every record once, in order


def test_robot_restart_resends_its_spool(tmp_path):
    """Records spooled while the learner was down are sent by the next robot process on that spool."""
    port = free_port()
    cfg = LinkConfig(robot_id="r1", experience_port=port, weights_port=free_port(), spool_dir=str(tmp_path / "spool"))
    first = ExperienceLink(cfg).start()
    for i in range(20):
        first.send(make_record("r1", 0, i))
    assert not first.close(drain_s=0.2)  # no learner: stays in the spool
    store = ReplayStore(tmp_path / "replay")
    server = LinkServer(ServerConfig(experience_port=port, weights_port=0), store).start()
    second = ExperienceLink(cfg).start()
    try:
        second.send(make_record("r1", 1, 0))
        assert second.wait_acked(10)
    finally:
        second.close(0)
        server.stop()
        store.close()
    assert stored_keys(tmp_path / "replay") == [("r1", 0, i) for i in range(20)] + [("r1", 1, 0)]


def test_four_robots_one_learner(tmp_path):
    store = ReplayStore(tmp_path / "replay")
    server = LinkServer(ServerConfig(experience_port=0, weights_port=0), store).start()
    robots = [f"robot{i}" for i in range(4)]
    links, subs, consumers = [], [], []
    try:
        for rid in robots:
            cfg = robot_config(server, rid, tmp_path)
            links.append(ExperienceLink(cfg).start())
            consumers.append(ArrayWeights(SCHEMA))
            subs.append(WeightsSubscriber(cfg, {"head": consumers[-1]}).start())
        assert wait_for(lambda: server.live_robots() == robots, 5), server.robots_status()
        assert wait_for(lambda: all(s.stats.learner_alive for s in subs), 5)
        versions = list(range(1, 7))
        for v in versions:
            server.publish("head", weights(float(v)), v, "run-a")
            for link, rid in zip(links, robots, strict=True):
                for c in range(25):
                    link.send(make_record(rid, v, c))
            # the link is latest-only: a robot that falls behind gets the newest set, not the backlog,
            # so each version is published once the robots have the previous one
            assert wait_for(lambda v=v: all(s.history["head"][-1:] == [v] for s in subs), 5), [s.history for s in subs]
        assert all(s.history["head"] == versions for s in subs), [s.history for s in subs]
        for sub, consumer in zip(subs, consumers, strict=True):
            sub.apply_staged(0)  # the loop's boundary callback
            assert consumer.version == 6 and np.all(consumer.arrays["w"] == 6.0)
        assert all(link.wait_acked(10) for link in links)
        # each robot's "staged" report goes out after its history is updated: waited for, not assumed there
        def all_staged() -> bool:
            status = server.robots_status()
            return all(status[r]["stored"] == 150 and status[r]["live"] and status[r]["weights_staged"] == {"head": 6}
                       for r in robots)

        assert wait_for(all_staged, 10), server.robots_status()
    finally:
        for x in links + subs:
            x.close()
        server.stop()
        store.close()
    keys = stored_keys(tmp_path / "replay")
    assert len(keys) == len(set(keys)) == 600


def test_large_weights_are_pulled_in_pieces_by_a_late_robot(tmp_path):
    """A ~1M-parameter torch MLP over the piece path; a robot that joins late pulls the latest version."""
    import torch

    from tandem.value.objectives.chunk_reward import mlp

    torch.manual_seed(0)
    model = mlp(96, 960, 2, 4)
    assert 0.9e6 < sum(p.numel() for p in model.parameters()) < 1.1e6
    server = LinkServer(ServerConfig(experience_port=0, weights_port=0, inline_max_bytes=256 * 1024,
                                     piece_bytes=512 * 1024), store=None).start()
    subs = []
    try:
        arrays = {k: v.detach().numpy() for k, v in model.state_dict().items()}
        server.publish("base", arrays, 1, "run")  # before any robot is there: only the heartbeat tells
        torch.manual_seed(1)
        consumer = TorchModuleWeights(mlp(96, 960, 2, 4))
        subs.append(WeightsSubscriber(robot_config(server, "late", tmp_path), {"base": consumer}).start())
        assert wait_for(lambda: subs[0].stats.accepted == 1, 10), subs[0].stats
        assert subs[0].stats.pieces >= 8 and subs[0].stats.pulls >= 1
        before = consumer.module
        subs[0].apply_staged(0)
        assert consumer.module is not before and consumer.version == 1
        x = torch.randn(5, 96)
        assert torch.equal(consumer.module(x), model(x))
        # a newer version announced on the PUB is pulled too
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(0.5)
        server.publish("base", {k: v.detach().numpy() for k, v in model.state_dict().items()}, 2, "run")
        assert wait_for(lambda: subs[0].stats.accepted == 2, 10)
        subs[0].apply_staged(1)
        assert torch.equal(consumer.module(x), model(x)) and consumer.version == 2
    finally:
        for s in subs:
            s.close()
        server.stop()


def raw_dealer(ctx: zmq.Context, port: int) -> zmq.Socket:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(f"tcp://127.0.0.1:{port}")
    return sock


def test_fuzz_learner(tmp_path):
    """Malformed, truncated, oversized, wrong-schema and NaN messages: counted, dropped, traffic goes on."""
    store = ReplayStore(tmp_path / "replay")
    server = LinkServer(ServerConfig(experience_port=0, weights_port=0, max_message_bytes=64 * 1024), store).start()
    ctx = zmq.Context()
    link = None
    try:
        evil = raw_dealer(ctx, server.experience_port)
        good = record_to_message(make_record("evil", 0, 0), 1, "s-evil")
        frames = [bytes(f) for f in encode(good)]
        rng = np.random.default_rng(0)
        attacks = [
            [rng.bytes(100)],  # garbage header
            [b""],  # empty header
            frames[:3],  # truncated: fewer frames than declared
            [frames[0]] + [f + b"x" for f in frames[1:]],  # sizes disagree with the header
            [encode(Message(kind="chunk", robot="evil", arrays={"a": np.zeros(3)}))[0].replace(b"float64", b"object\x00")],
            [bytes(f) for f in encode(Message(kind="chunk", schema="deadbeefdeadbeef", robot="evil", seq=1, meta={"stream": "x"}))],
            [bytes(f) for f in encode(Message(kind="nonsense", robot="evil"))],
            [bytes(f) for f in encode(Message(kind="hb", robot="evil", meta={"stream": 5}))],
            # many small frames whose total is over the limit (each under MAXMSGSIZE)
            [bytes(f) for f in encode(Message(kind="chunk", robot="evil", arrays={f"a{i}": np.zeros(4000) for i in range(3)}))],
        ]
        nan = make_record("evil", 0, 0)
        nan.executed[:] = np.nan
        attacks.append([bytes(f) for f in encode(record_to_message(nan, 1, "s-evil"))])
        for attack in attacks:
            evil.send_multipart(attack)
        evil.send_multipart([b"\x00" * (100 * 1024)])  # one frame over MAXMSGSIZE: zmq drops the peer
        ok = wait_for(lambda: server.stats["malformed"] >= 9 and server.stats["rejected"] == 1, 5)
        assert ok, str(server.stats)
        assert server.stats["rejected_reasons"] == {"non_finite": 1}
        assert wait_for(lambda: server.stats["disconnects"] >= 1, 5), server.stats
        reasons = server.stats["malformed_reasons"]
        for reason in ("bad_header", "frame_count", "size_mismatch", "too_large", "unexpected_kind", "bad_meta",
                       "wrong_schema"):
            assert reasons.get(reason), (reason, reasons)
        # valid traffic still flows
        link = ExperienceLink(robot_config(server, "r1", tmp_path)).start()
        for i in range(10):
            link.send(make_record("r1", 0, i))
        assert link.wait_acked(10)
        assert store.sizes()["autonomous"] == 10  # the NaN record became a tombstone, not a sample
    finally:
        if link is not None:
            link.close(0)
        server.stop()
        store.close()
        ctx.destroy(0)


def test_fuzz_robot_weights_endpoint(tmp_path, zmq_context):
    """A rogue publisher: malformed, oversized, wrong schema, bad hash, NaN. The robot keeps its weights."""
    ctx = zmq_context
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    cfg = LinkConfig(robot_id="r1", experience_port=free_port(), weights_port=port, max_message_bytes=16 * 1024)
    consumer = ArrayWeights(SCHEMA, weights(0.0))
    sub = WeightsSubscriber(cfg, {"head": consumer}).start()
    hb = [bytes(f) for f in encode(Message(kind=HB, meta={"learner": "x", "versions": {}}))]
    try:
        assert wait_for(lambda: (pub.send_multipart(hb), sub.stats.learner_alive)[1], 5, interval=0.05)
        good = [bytes(f) for f in encode(weights_message("head", weights(1.0), 1, "run"))]
        wrong_schema = [bytes(f) for f in encode(weights_message("head", {"w": np.ones((4, 4), np.float32)}, 2, "run"))]
        bad_hash = weights_message("head", weights(2.0), 3, "run")
        bad_hash.meta["digest"] = "fold64:" + "f" * 64
        nan = weights_message("head", weights(np.nan), 4, "run")
        liar = weights_message("head", weights(1.0), 5, "run")
        liar.arrays["w"] = np.full((8, 8), 9.0, np.float32)  # arrays changed after hashing
        attacks = [
            [b"\x93garbage"], good[:2], [good[0]] + [f[:-4] for f in good[1:]],
            [bytes(f) for f in encode(Message(kind="weights", meta={"wkind": "head"}))],
            wrong_schema, [bytes(f) for f in encode(bad_hash)], [bytes(f) for f in encode(nan)],
            [bytes(f) for f in encode(liar)],
        ]
        for n, attack in enumerate(attacks, 1):  # one at a time: a burst would be cut to its latest set
            pub.send_multipart(attack)
            assert wait_for(lambda n=n: sub.stats.malformed + sub.stats.rejected == n, 5), (n, sub.stats)
        assert sub.stats.malformed == 3 and sub.stats.rejected == 5, sub.stats
        assert {"wrong_schema", "bad_hash", "non_finite"} <= set(sub.stats.rejected_reasons), sub.stats.rejected_reasons
        sub.apply_staged(0)
        assert consumer.version == 0 and np.all(consumer.arrays["w"] == 0.0)  # kept its weights
        pub.send_multipart([b"\x00" * (64 * 1024)])  # over MAXMSGSIZE: the SUB drops the connection
        assert wait_for(lambda: sub.stats.disconnects >= 1, 5), sub.stats
        ok = [bytes(f) for f in encode(weights_message("head", weights(7.0), 7, "run"))]
        assert wait_for(lambda: (pub.send_multipart(ok), sub.stats.accepted >= 1)[1], 5, interval=0.05), sub.stats
        sub.apply_staged(1)
        assert consumer.version == 7 and np.all(consumer.arrays["w"] == 7.0)
    finally:
        sub.close()
        pub.close(0)


@pytest.mark.slow
def test_many_learner_restarts_under_load(tmp_path):
    """Slow variant: five learner restarts while 20,000 records stream in."""
    ports = dict(experience_port=free_port(), weights_port=free_port())
    store = ReplayStore(tmp_path / "replay")
    server = LinkServer(ServerConfig(**ports), store).start()
    link = ExperienceLink(LinkConfig(robot_id="r1", spool_dir=str(tmp_path / "spool"), timeout_s=0.4, **ports)).start()
    try:
        for i in range(20000):
            link.send(make_record("r1", i // 100, i % 100, seed=0))
            if i % 4000 == 2000:
                server.stop()
                store.close()
                time.sleep(0.3)
                store = ReplayStore(tmp_path / "replay")
                server = LinkServer(ServerConfig(**ports), store).start()
        assert link.wait_acked(60)
    finally:
        link.close(0)
        server.stop()
        store.close()
    keys = stored_keys(tmp_path / "replay")
    assert keys == [("r1", i // 100, i % 100) for i in range(20000)]


def test_large_weights_with_a_bad_hash_are_never_staged(tmp_path, zmq_context):
    """Above HASH_ASIDE_BYTES the hash is checked beside the consumer's preparation: still refused."""
    ctx = zmq_context
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    cfg = LinkConfig(robot_id="r1", experience_port=free_port(), weights_port=port)
    consumer = ArrayWeights({"w": ("float32", (300, 300))})
    sub = WeightsSubscriber(cfg, {"head": consumer}).start()
    hb = [bytes(f) for f in encode(Message(kind=HB, meta={"learner": "x", "versions": {}}))]
    try:
        assert wait_for(lambda: (pub.send_multipart(hb), sub.stats.learner_alive)[1], 5, interval=0.05)
        tampered = weights_message("head", {"w": np.ones((300, 300), np.float32)}, 1, "run")
        tampered.arrays["w"] = np.full((300, 300), 2.0, np.float32)
        pub.send_multipart(encode(tampered))
        assert wait_for(lambda: sub.stats.rejected_reasons.get("bad_hash") == 1, 5), sub.stats
        sub.apply_staged(0)
        assert consumer.version == 0 and not consumer.arrays["w"].any()
        pub.send_multipart(encode(weights_message("head", {"w": np.full((300, 300), 3.0, np.float32)}, 2, "run")))
        assert wait_for(lambda: sub.stats.accepted == 1, 5), sub.stats
        sub.apply_staged(1)
        assert consumer.version == 2 and np.all(consumer.arrays["w"] == 3.0)
    finally:
        sub.close()
        pub.close(0)
