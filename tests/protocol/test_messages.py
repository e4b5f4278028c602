"""Link protocol pieces: record/weights messages, packed frames, the durable log and the robot spool."""

from __future__ import annotations

import numpy as np
import pytest
from links_testkit import make_record

from tandem.core.durable_log import DurableLog
from tandem.protocol.messages import (
    RECORD_SCHEMA,
    check_weights_message,
    message_to_record,
    record_to_message,
    weights_message,
    weights_schema_hash,
)
from tandem.protocol.wire import WireError, decode, encode, pack_frames, unpack_frames
from tandem.runtime.links.spool import RecordSpool


def roundtrip(msg):
    return decode([bytes(f) for f in encode(msg)], copy=True)


def test_record_roundtrip_with_images():
    rec = make_record("r1", 3, 7, intervention=True)
    rec.images = {"corner": b"\xff\xd8jpeg-bytes"}
    msg = roundtrip(record_to_message(rec, seq=5, stream="s1"))
    assert msg.seq == 5 and msg.meta["stream"] == "s1" and msg.schema == RECORD_SCHEMA
    back = message_to_record(msg)
    assert back.equals(rec)


def test_a_record_s_first_tick_travels_and_defaults_to_its_chunk():
    rec = make_record("r1", 3, 7)  # one record per chunk: no start tick on the wire, chunk 7 starts at tick 70
    msg = roundtrip(record_to_message(rec, seq=1, stream="s1"))
    assert "tick" not in msg.meta and message_to_record(msg).first_tick == 70
    rec.start_tick = 73  # an overlapping record (record_stride 1) starting 3 ticks into chunk 7
    back = message_to_record(roundtrip(record_to_message(rec, seq=2, stream="s1")))
    assert back.equals(rec) and back.first_tick == 73


def test_a_failed_terminal_travels_and_defaults_to_false():
    rec = make_record("r1", 3, 7)
    msg = roundtrip(record_to_message(rec, seq=1, stream="s1"))
    assert "failed" not in msg.meta and not message_to_record(msg).failed  # older robots send no "failed"
    rec.done, rec.failed = True, True  # the operator marked the episode a failure in this chunk
    back = message_to_record(roundtrip(record_to_message(rec, seq=2, stream="s1")))
    assert back.equals(rec) and back.failed


@pytest.mark.parametrize(
    "mutate, reason",
    [
        (lambda m: m.arrays.__setitem__("reward", np.full(10, np.nan, np.float32)), "non_finite"),
        (lambda m: m.arrays.__setitem__("base", np.zeros((10, 5), np.float32)), "bad_shape"),
        (lambda m: m.arrays.__setitem__("state", np.zeros(39, np.float64)), "bad_dtype"),
        (lambda m: m.arrays.pop("valid"), "missing_field"),
        (lambda m: setattr(m, "schema", "0" * 16), "wrong_schema"),
        (lambda m: m.meta.__setitem__("episode", "one"), "bad_meta"),
        (lambda m: m.meta.__setitem__("tick", -5), "bad_meta"),
        (lambda m: m.meta.__setitem__("tick", 2.5), "bad_meta"),
        (lambda m: m.meta.__setitem__("failed", "yes"), "bad_meta"),
        (lambda m: m.meta.__setitem__("failed", True), "bad_meta"),  # a failure without done
    ],
)
def test_invalid_records_are_refused_with_a_reason(mutate, reason):
    msg = roundtrip(record_to_message(make_record("r1", 0, 0), 1, "s"))
    mutate(msg)
    with pytest.raises(WireError) as err:
        message_to_record(msg)
    assert err.value.reason == reason


def test_weights_checks():
    arrays = {"w": np.ones((3, 4), np.float32), "b": np.zeros(4, np.float32)}
    expected = weights_schema_hash({"w": ("float32", (3, 4)), "b": ("float32", (4,))})
    msg = roundtrip(weights_message("head", arrays, 2, "run"))
    assert set(check_weights_message(msg, expected)) == {"w", "b"}
    with pytest.raises(WireError, match="wrong_schema"):
        check_weights_message(msg, weights_schema_hash({"w": ("float32", (4, 3)), "b": ("float32", (4,))}))
    bad = roundtrip(weights_message("head", arrays, 2, "run"))
    bad.meta["digest"] = "fold64:" + "0" * 64
    with pytest.raises(WireError, match="bad_hash"):
        check_weights_message(bad, expected)
    nan = roundtrip(weights_message("head", {"w": np.full((3, 4), np.inf, np.float32), "b": arrays["b"]}, 3, "run"))
    with pytest.raises(WireError, match="non_finite"):
        check_weights_message(nan, expected)


def test_pack_frames_roundtrip_and_malformed():
    frames = encode(record_to_message(make_record("r", 0, 0), 1, "s"))
    assert message_to_record(decode(unpack_frames(pack_frames(frames)))).equals(make_record("r", 0, 0))
    blob = pack_frames(frames)
    for broken in (blob[:3], blob[:-1], b"\xff\xff\xff\xff" + blob[4:]):
        with pytest.raises(WireError):
            unpack_frames(broken)


def test_durable_log_truncates_a_torn_tail(tmp_path):
    log = DurableLog(tmp_path, segment_bytes=200)
    list(log.scan())
    for i in range(1, 11):
        log.append(i, bytes([i]) * 50)
    log.sync()
    log.close()
    assert len(log.segments()) > 1
    last = log.path(log.segments()[-1])
    with open(last, "ab") as f:  # a write cut short by a kill
        f.write(b"MDNT\x32\x00\x00\x00partial")
    again = DurableLog(tmp_path, segment_bytes=200)
    keys = [k for _, _, k, _ in again.scan()]
    assert keys == list(range(1, 11)) and again.truncated_bytes > 0
    again.append(11, b"x")
    again.close()
    assert [k for _, _, k, _ in DurableLog(tmp_path).scan()] == list(range(1, 12))


def test_record_spool_keeps_unacked_records_across_restarts(tmp_path):
    spool = RecordSpool(tmp_path, "r1", segment_bytes=4096)
    payloads = {}
    for _ in range(40):
        seq = spool.next_seq
        payloads[seq] = pack_frames(encode(record_to_message(make_record("r1", 0, seq), seq, spool.stream)))
        spool.append(seq, payloads[seq])
    spool.sync(True)
    spool.ack(25)
    spool.persist()
    stream = spool.stream
    spool.close()
    again = RecordSpool(tmp_path, "r1", segment_bytes=4096)
    assert again.stream == stream and again.acked == 25 and again.pending == 15 and again.next_seq == 41
    assert again.read(30) == payloads[30] and again.read(10) is None
    again.ack(40)
    again.persist()
    assert len(again._log.segments()) == 1  # acked segments are deleted
    again.close()  # one session at a time holds a spool
    with pytest.raises(ValueError, match="belongs to robot"):
        RecordSpool(tmp_path, "r2")
