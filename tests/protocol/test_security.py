"""Link security: loopback-only without keys (refused before any bind), CURVE keys, authorisation."""

from __future__ import annotations

import os
import stat

import pytest
import zmq
from links_testkit import make_record, wait_for

from tandem.protocol.security import (
    LinkSecurityError,
    check_endpoint,
    create_keys,
    is_loopback,
    load_keys,
    open_socket,
)
from tandem.runtime.links.config import LinkConfig
from tandem.runtime.links.experience import ExperienceLink
from tandem.value.replay import ReplayStore
from tandem.value.server import LinkServer, ServerConfig


@pytest.mark.parametrize(
    "endpoint, loopback",
    [
        ("tcp://127.0.0.1:5560", True), ("tcp://127.9.9.9:1", True), ("tcp://localhost:5560", True),
        ("tcp://[::1]:5560", True), ("ipc:///tmp/x", True), ("inproc://x", True),
        ("tcp://0.0.0.0:5560", False), ("tcp://*:5560", False), ("tcp://192.168.1.20:5560", False),
        ("tcp://learner.lab:5560", False), ("tcp://[::]:5560", False),
    ],
)
def test_is_loopback(endpoint, loopback):
    assert is_loopback(endpoint) is loopback


@pytest.fixture
def bind_spy(monkeypatch):
    """Record every bind/connect a socket attempts (to prove a refusal happens before any)."""
    calls = []
    real_bind, real_connect = zmq.Socket.bind, zmq.Socket.connect

    def bind(self, addr):
        calls.append(("bind", addr))
        return real_bind(self, addr)

    def connect(self, addr):
        calls.append(("connect", addr))
        return real_connect(self, addr)

    monkeypatch.setattr(zmq.Socket, "bind", bind)
    monkeypatch.setattr(zmq.Socket, "connect", connect)
    return calls


def test_non_loopback_without_keys_is_refused_before_binding(bind_spy, tmp_path, zmq_context):
    from tandem.value.config import LearnerConfig
    from tandem.value.learner import Learner

    with pytest.raises(LinkSecurityError, match="not a loopback address.*tandem keys"):
        LinkServer(ServerConfig(host="0.0.0.0", experience_port=0, weights_port=0), store=None)
    with pytest.raises(LinkSecurityError, match="not a loopback address"):
        Learner(LearnerConfig(host="192.0.2.7", store_dir=str(tmp_path)))
    ctx = zmq_context
    with pytest.raises(LinkSecurityError):
        open_socket(ctx, zmq.ROUTER, "tcp://192.0.2.7:5999", bind=True, max_message_bytes=1 << 20)
    with pytest.raises(LinkSecurityError):  # the robot side refuses to connect out in the clear too
        ExperienceLink(LinkConfig(learner_host="192.0.2.7", spool_dir=str(tmp_path / "spool")), context=ctx).start()
    assert bind_spy == []  # nothing was bound or connected
    assert not (tmp_path / "replay").exists()


def test_keys_are_created_private_and_unlock_non_loopback(tmp_path):
    written = create_keys(tmp_path / "keys")
    assert set(written) == {"server.key", "server.key_secret", "client.key", "client.key_secret", "authorized/client.key"}
    for name in ("server.key_secret", "client.key_secret"):
        assert stat.S_IMODE(os.stat(written[name]).st_mode) == 0o600
    server, client = load_keys(tmp_path / "keys", "server"), load_keys(tmp_path / "keys", "client")
    assert client.server_public == server.public and len(server.secret) == 40
    check_endpoint("tcp://0.0.0.0:5560", str(tmp_path / "keys"))  # allowed with keys (nothing is bound here)
    with pytest.raises(LinkSecurityError, match="already holds keys"):
        create_keys(tmp_path / "keys")
    with pytest.raises(LinkSecurityError, match="holds no keys"):
        check_endpoint("tcp://0.0.0.0:5560", str(tmp_path / "empty"))


def test_curve_link_on_loopback_accepts_only_authorised_robots(tmp_path):
    create_keys(tmp_path / "keys")
    create_keys(tmp_path / "intruder")  # a valid key pair the learner does not know
    store = ReplayStore(tmp_path / "replay")
    server = LinkServer(
        ServerConfig(experience_port=0, weights_port=0, keys_dir=str(tmp_path / "keys")), store
    ).start()
    links = []
    try:
        base = dict(experience_port=server.experience_port, weights_port=server.weights_port, timeout_s=0.5)
        good = ExperienceLink(LinkConfig(robot_id="good", keys_dir=str(tmp_path / "keys"),
                                         spool_dir=str(tmp_path / "s1"), **base)).start()
        links.append(good)
        # the intruder has the learner's public key but its own (unauthorised) client key
        (tmp_path / "intruder" / "server.key").write_text((tmp_path / "keys" / "server.key").read_text())
        bad = ExperienceLink(LinkConfig(robot_id="bad", keys_dir=str(tmp_path / "intruder"),
                                        spool_dir=str(tmp_path / "s2"), **base)).start()
        links.append(bad)
        for i in range(5):
            good.send(make_record("good", 0, i))
            bad.send(make_record("bad", 0, i))
        assert good.wait_acked(10)
        assert not wait_for(lambda: bad.stats.acked > 0, 1.5)
        assert store.last_seq("good", good.stream) == 5 and "bad" not in server.robots
    finally:
        for link in links:
            link.close(0)
        server.stop()
        store.close()
