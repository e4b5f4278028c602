"""Decoding raises nothing but WireError, whatever the frames hold (issue #24, defect 1)."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
from hostile_testkit import REPRO_HEADER, hostile_corpus, repro_frames
from links_testkit import make_record

from tandem.protocol.messages import message_to_record, record_to_message, weights_header, weights_message
from tandem.protocol.wire import MAX_DIMS, WireError, decode, encode, log_safe, pack_frames, unpack_frames


def test_issue_reproduction_is_a_wire_error():
    """[2**33, 2**33] float32 overflows int64 to 0 elements: it used to match b"" and reach numpy."""
    with pytest.raises(WireError) as err:
        decode(repro_frames())
    assert err.value.reason == "bad_shape"
    assert REPRO_HEADER["arrays"][0][2] == [2**33, 2**33]


@pytest.mark.parametrize("shape", [[0] * 65, [1] * 65, [0] * (MAX_DIMS + 1), [0, 2**62, 2**62], [2**63 - 1, 0],
                                   [2**32, 2**32, 2**32]])
def test_shapes_numpy_cannot_build_are_bad_shape(shape):
    header = dict(REPRO_HEADER, arrays=[["a", "float32", shape]])
    with pytest.raises(WireError) as err:
        decode([msgpack.packb(header), b""])
    assert err.value.reason == "bad_shape"


def test_largest_legal_shapes_still_decode():
    arr = np.zeros([1] * MAX_DIMS, np.float32)
    assert decode([bytes(f) for f in encode_one(arr)]).arrays["a"].shape == arr.shape
    empty = np.zeros((0, 7), np.float32)
    assert decode([bytes(f) for f in encode_one(empty)]).arrays["a"].shape == (0, 7)


def encode_one(arr: np.ndarray) -> list:
    from tandem.protocol.wire import Message

    return encode(Message(kind="chunk", robot="x", arrays={"a": arr}))


def test_seq_and_meta_integers_beyond_int64_are_refused():
    header = dict(REPRO_HEADER, arrays=[], seq=2**64 - 1)
    with pytest.raises(WireError, match="bad_header"):
        decode([msgpack.packb(header)])
    msg = record_to_message(make_record("r1", 0, 0), 1, "s")
    msg.meta["episode"] = 2**64 - 1
    with pytest.raises(WireError, match="bad_meta"):
        message_to_record(decode([bytes(f) for f in encode(msg)]))


def test_unpack_frames_lengths_cannot_wrap():
    """Frame lengths of 2**64 - 1 and 1 sum to 0 in int64: they must not pass as an empty pack."""
    blob = np.array([2], "<u4").tobytes() + np.array([2**64 - 1, 1], "<u8").tobytes()
    with pytest.raises(WireError, match="bad_pack"):
        unpack_frames(blob)


def test_fuzz_decode_and_message_checks_raise_only_wire_errors():
    """A seeded generator of 6000 headers and frames (hypothesis is not installed): decode, the record
    and weights checks and unpack_frames either accept or raise WireError, never anything else."""
    record = [bytes(f) for f in encode(record_to_message(make_record("r1", 0, 0), 1, "s"))]
    weights = [bytes(f) for f in encode(weights_message("head", {"w": np.ones((2, 3), np.float32)}, 1, "run"))]
    outcomes = {"ok": 0, "wire_error": 0}
    for frames in hostile_corpus(seed=24, n=6000, valid=[record, weights]):
        try:
            msg = decode(frames, max_bytes=1 << 16)
            if msg.kind == "chunk":
                message_to_record(msg)
            elif msg.kind == "weights":
                weights_header(msg)
            outcomes["ok"] += 1
        except WireError:
            outcomes["wire_error"] += 1
        try:
            unpack_frames(pack_frames(frames)[: len(frames[0]) % 97 + 4])  # a cut pack
        except WireError:
            pass
    assert outcomes["wire_error"] > 3000 and outcomes["ok"] > 10, outcomes


def test_log_safe_escapes_what_a_peer_chose():
    text = log_safe("r1\nINFO learner: forged\x1b[31m\u202e" + "a" * 500, 60)
    assert "\n" not in text and "\x1b" not in text and "\u202e" not in text
    assert text.startswith("r1\\x0aINFO learner: forged\\x1b[31m\\u202e") and text.endswith("...")
    assert len(text) <= 63
