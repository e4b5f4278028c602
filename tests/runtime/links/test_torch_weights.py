"""TorchModuleWeights is double-buffered: sets are copied into a spare module, never into the one in use."""

from __future__ import annotations

import numpy as np
import pytest
import zmq
from links_testkit import free_port, wait_for

from tandem.protocol.messages import HB, weights_message
from tandem.protocol.wire import Message, encode
from tandem.runtime.links.config import LinkConfig
from tandem.runtime.links.weights import HASH_ASIDE_BYTES, TorchModuleWeights, WeightsSubscriber
from tandem.value.server import LinkServer, ServerConfig

torch = pytest.importorskip("torch")


def head(seed: int):
    """A 96 -> 960 -> 4 MLP: ~390 KB, above HASH_ASIDE_BYTES (hashed beside the preparation)."""
    from tandem.value.objectives.chunk_reward import mlp

    torch.manual_seed(seed)
    return mlp(96, 960, 1, 4)


def arrays_of(module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in module.state_dict().items()}


def same(module, arrays: dict[str, np.ndarray]) -> bool:
    return all(np.array_equal(v.detach().numpy(), arrays[k]) for k, v in module.state_dict().items())


def test_prepare_fills_a_spare_and_the_swapped_out_module_is_reused():
    consumer = TorchModuleWeights(head(0))
    first, before = consumer.module, arrays_of(consumer.module)
    new = arrays_of(head(1))
    prepared = consumer.prepare_weights(new, 1)
    assert prepared is not first and same(first, before) and same(prepared, new)  # the module in use untouched
    consumer.load_weights(prepared, 1)
    assert consumer.module is prepared and consumer.version == 1
    again = consumer.prepare_weights(arrays_of(head(2)), 2)
    assert again is first  # the module swapped out is the next spare: no module built per set
    assert same(consumer.module, new)
    with pytest.raises(ValueError, match="tandem: weights names differ"):
        consumer.prepare_weights({"nope": np.zeros(3, np.float32)}, 3)
    consumer.release_weights(again)
    assert consumer.prepare_weights(arrays_of(head(4)), 4) is not consumer.module


def test_sets_replaced_while_staged_are_never_swapped_in():
    """Three sets staged before a boundary: the module in use keeps its weights, then the last one is
    swapped in; the replaced ones went back to the consumer as spares."""
    server = LinkServer(ServerConfig(experience_port=0, weights_port=0), store=None).start()
    consumer = TorchModuleWeights(head(0))
    initial = arrays_of(consumer.module)
    cfg = LinkConfig(robot_id="r1", experience_port=server.experience_port, weights_port=server.weights_port)
    sub = WeightsSubscriber(cfg, {"head": consumer}).start()
    try:
        sets = {v: arrays_of(head(v)) for v in (1, 2, 3)}
        assert sum(a.nbytes for a in sets[1].values()) > HASH_ASIDE_BYTES
        assert wait_for(lambda: (server.publish("head", sets[1], 1, "run"), sub.stats.accepted >= 1)[1], 10, 0.1)
        for v in (2, 3):
            server.publish("head", sets[v], v, "run")
            assert wait_for(lambda v=v: sub.stats.versions.get("head") == v, 5), sub.stats
        assert same(consumer.module, initial) and consumer.version == 0  # staged only: nothing swapped
        sub.apply_staged(0)
        assert consumer.version == 3 and same(consumer.module, sets[3])
        assert sub.stats.applied == 1 and len(consumer._spares) <= 2
    finally:
        sub.close()
        server.stop()


def test_a_large_set_with_a_bad_digest_is_prepared_then_refused():
    """Above HASH_ASIDE_BYTES the digest is checked after the spare is filled: refused all the same."""
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    consumer = TorchModuleWeights(head(0))
    initial = arrays_of(consumer.module)
    cfg = LinkConfig(robot_id="r1", experience_port=free_port(), weights_port=port)
    sub = WeightsSubscriber(cfg, {"head": consumer}).start()
    hb = encode(Message(kind=HB, meta={"learner": "x", "versions": {}}))
    try:
        assert wait_for(lambda: (pub.send_multipart(hb), sub.stats.learner_alive)[1], 5, interval=0.05)
        tampered = weights_message("head", arrays_of(head(1)), 1, "run")
        tampered.arrays["0.weight"] = tampered.arrays["0.weight"] + 1.0  # changed after the digest
        pub.send_multipart(encode(tampered))
        assert wait_for(lambda: sub.stats.rejected_reasons.get("bad_hash") == 1, 5), sub.stats
        sub.apply_staged(0)
        assert consumer.version == 0 and same(consumer.module, initial)
        good = arrays_of(head(2))
        pub.send_multipart(encode(weights_message("head", good, 2, "run")))
        assert wait_for(lambda: sub.stats.accepted == 1, 5), sub.stats
        sub.apply_staged(1)
        assert consumer.version == 2 and same(consumer.module, good)
    finally:
        sub.close()
        pub.close(0)
        ctx.term()
