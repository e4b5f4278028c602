"""The link protocol's messages, on top of :mod:`tandem.protocol.wire`.

Kinds:

========== ================ =====================================================================
kind       direction        content
========== ================ =====================================================================
chunk      robot -> learner one ChunkRecord; ``seq`` numbered per (robot, stream); meta holds the rest
retract    robot -> learner drop an episode's records (re-recorded): ``meta.episode``, ``meta.from_seq``
                            (its first record's seq), ``meta.run``; sequenced and acked like a chunk
ack        learner -> robot ``meta.acked``: every seq <= acked of ``meta.stream`` is stored; ``gap``:
                            a seq arrived out of order, resend from acked + 1
hb         both ways        heartbeat; the learner's carries its incarnation and per-kind versions
weights    learner -> robot a weight set (inline arrays) or an announcement (``meta.pieces`` > 0);
                            ``meta.digest``: :func:`tandem.protocol.wire.fold_digest` of the arrays
pull       robot -> learner ask for piece ``meta.index`` of the latest weights of ``meta.wkind``
piece      learner -> robot one piece of a packed weights message (``arrays.data``: uint8)
report     robot -> learner weights refused (``meta.reason``) or applied
========== ================ =====================================================================

A stream is one robot spool's lifetime: a robot that loses its spool starts a new stream, so the
learner's duplicate filter (per robot and stream) never swallows a fresh robot's records.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tandem.protocol.chunk_record import ARRAY_FIELDS, ChunkRecord
from tandem.protocol.wire import (
    INT64_MAX,
    INT64_MIN,
    Message,
    WireError,
    decode,
    encode,
    fold_digest,
    log_safe,
    schema_hash,
)

CHUNK, ACK, HB, WEIGHTS, PULL, PIECE, REPORT = "chunk", "ack", "hb", "weights", "pull", "piece", "report"
RETRACT = "retract"
WEIGHT_KINDS = ("head", "critic", "base")
SOURCES = ("online", "demo")
IMAGE_PREFIX = "image/"

RECORD_SCHEMA = schema_hash(
    {
        "record": {k: [d, list(s)] for k, (d, s) in ARRAY_FIELDS.items()},
        "meta": ["stream", "episode", "chunk", "task", "done", "truncated", "head_version", "base_version", "source"],
        "images": "uint8 jpeg per camera key",
    }
)
FLOAT_FIELDS = ("state", "features", "base", "head", "executed", "reward")


def record_to_message(record: ChunkRecord, seq: int, stream: str, source: str = "online") -> Message:
    """The ``chunk`` message for ``record`` (arrays sent zero-copy, images as uint8 arrays)."""
    arrays: dict[str, np.ndarray] = record.arrays()
    for key, jpeg in record.images.items():
        arrays[IMAGE_PREFIX + key] = np.frombuffer(jpeg, np.uint8)
    meta = {
        "stream": stream,
        "episode": int(record.episode_id),
        "chunk": int(record.chunk_index),
        "task": record.task,
        "done": bool(record.done),
        "truncated": bool(record.truncated),
        "head_version": int(record.head_version),
        "base_version": int(record.base_version),
        "source": source,
    }
    if record.start_tick >= 0:
        meta["tick"] = int(record.start_tick)
    if record.failed:
        meta["failed"] = True
    return Message(kind=CHUNK, schema=RECORD_SCHEMA, seq=int(seq), robot=record.robot_id, meta=meta, arrays=arrays)


def delivered_message(record: ChunkRecord, seq: int, stream: str, source: str = "online") -> Message:
    """``record_to_message`` as a learner receives it: encoded to frames and decoded again (arrays copied),
    for filling a replay store without a socket (demonstrations, benchmarks, tests)."""
    return decode([bytes(f) for f in encode(record_to_message(record, seq, stream, source))], copy=True)


def _meta(meta: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    value = meta.get(name)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise WireError("bad_meta", f"{name}={log_safe(value, 80)}")
    if kind is int and not INT64_MIN <= value <= INT64_MAX:  # stored in int64 columns downstream
        raise WireError("bad_meta", f"{name} outside int64")
    return value


def message_to_record(msg: Message) -> ChunkRecord:
    """Validate a ``chunk`` message and build its ChunkRecord.

    Raises:
        WireError: reason "wrong_kind", "wrong_schema", "missing_field", "bad_dtype", "bad_shape",
            "bad_meta" or "non_finite" (NaN/inf in state, features, actions or reward).
    """
    if msg.kind != CHUNK:
        raise WireError("wrong_kind", msg.kind)
    if msg.schema != RECORD_SCHEMA:
        raise WireError("wrong_schema", f"{msg.schema} != {RECORD_SCHEMA}")
    a = msg.arrays
    for name, (dtype, _) in ARRAY_FIELDS.items():
        if name not in a:
            raise WireError("missing_field", name)
        if str(a[name].dtype) != dtype:
            raise WireError("bad_dtype", f"{name}: {a[name].dtype} != {dtype}")
    if a["base"].ndim != 2:
        raise WireError("bad_shape", f"base: {a['base'].shape}")
    horizon, action_dim = a["base"].shape
    dims = {"H": horizon, "A": action_dim}
    for name, (_, sym) in ARRAY_FIELDS.items():
        shape = a[name].shape
        if horizon < 1 or len(shape) != len(sym) or any(s in dims and d != dims[s] for s, d in zip(sym, shape, strict=True)):
            raise WireError("bad_shape", f"{name}: {shape} (H={horizon}, A={action_dim})")
    for name in FLOAT_FIELDS:
        if not np.isfinite(a[name]).all():
            raise WireError("non_finite", name)
    m = msg.meta
    source = _meta(m, "source", str)
    if source not in SOURCES:
        raise WireError("bad_meta", f"source={source!r}")
    if not msg.robot:
        raise WireError("bad_meta", "empty robot id")
    images = {k[len(IMAGE_PREFIX) :]: bytes(v) for k, v in a.items() if k.startswith(IMAGE_PREFIX)}
    if any(str(v.dtype) != "uint8" for k, v in a.items() if k.startswith(IMAGE_PREFIX)):
        raise WireError("bad_dtype", "images must be uint8")
    _meta(m, "stream", str)
    start_tick = _meta(m, "tick", int) if "tick" in m else -1
    if start_tick < -1:
        raise WireError("bad_meta", f"tick={start_tick}")
    done = _meta(m, "done", bool)
    failed = _meta(m, "failed", bool) if "failed" in m else False
    if failed and not done:
        raise WireError("bad_meta", "failed=True needs done=True (a failure is a terminal)")
    return ChunkRecord(
        robot_id=msg.robot,
        episode_id=_meta(m, "episode", int),
        chunk_index=_meta(m, "chunk", int),
        task=_meta(m, "task", str),
        state=a["state"],
        features=a["features"],
        base=a["base"],
        head=a["head"],
        executed=a["executed"],
        reward=a["reward"],
        valid=a["valid"],
        intervention=a["intervention"],
        takeover_start=a["takeover_start"],
        done=done,
        truncated=_meta(m, "truncated", bool),
        head_version=_meta(m, "head_version", int),
        base_version=_meta(m, "base_version", int),
        obs_time=a["obs_time"],
        send_time=a["send_time"],
        images=images,
        start_tick=start_tick,
        failed=failed,
    )


# ---------------------------------------------------------------- retractions


def retract_message(robot: str, seq: int, stream: str, episode: int, from_seq: int, run: str = "") -> Message:
    """The ``retract`` message: the learner drops the records of ``episode`` in (robot, stream) with seqs in
    ``[from_seq, seq)`` (a re-recorded episode). It takes ``seq`` in the stream like a record, so it is
    spooled, resent and acked like one, and reaches the learner after every record it retracts.
    ``run``: the session it belongs to (for the learner's log)."""
    meta = {"stream": stream, "episode": int(episode), "from_seq": int(from_seq), "run": str(run)}
    return Message(kind=RETRACT, schema=RECORD_SCHEMA, seq=int(seq), robot=robot, meta=meta)


def check_retract(msg: Message) -> tuple[int, int, str]:
    """(episode, from_seq, run) of a ``retract`` message.

    Raises:
        WireError: "wrong_kind", "wrong_schema" or "bad_meta" (from_seq must be in [1, seq]).
    """
    if msg.kind != RETRACT:
        raise WireError("wrong_kind", msg.kind)
    if msg.schema != RECORD_SCHEMA:
        raise WireError("wrong_schema", f"{msg.schema} != {RECORD_SCHEMA}")
    if not msg.robot:
        raise WireError("bad_meta", "empty robot id")
    _meta(msg.meta, "stream", str)
    episode = _meta(msg.meta, "episode", int)
    from_seq = _meta(msg.meta, "from_seq", int)
    run = _meta(msg.meta, "run", str)
    if not 1 <= from_seq <= msg.seq:
        raise WireError("bad_meta", f"from_seq={from_seq} (seq {msg.seq})")
    return episode, from_seq, log_safe(run, 80)


# ---------------------------------------------------------------- weights


def weights_schema_hash(spec: dict[str, tuple[str, tuple[int, ...]]]) -> str:
    """The schema hash of a weight set: name -> (dtype, shape). Equal to the hash of matching arrays."""
    return schema_hash({k: [str(np.dtype(d)), [int(x) for x in s]] for k, (d, s) in spec.items()})


def arrays_spec(arrays: dict[str, np.ndarray]) -> dict[str, tuple[str, tuple[int, ...]]]:
    """name -> (dtype, shape) of a weight set."""
    return {k: (str(v.dtype), tuple(v.shape)) for k, v in arrays.items()}


def weights_message(wkind: str, arrays: dict[str, np.ndarray], version: int, run: str) -> Message:
    """A complete ``weights`` message (arrays inline) with schema hash and digest (``fold_digest``).

    The arrays travel without a copy: the caller must not change them after publishing (the learner's
    ``Objective.weights()`` hands over copies)."""
    if wkind not in WEIGHT_KINDS:
        raise ValueError(f"weights kind {wkind!r}: one of {WEIGHT_KINDS}")
    arrays = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
    meta = {
        "wkind": wkind,
        "version": int(version),
        "run": run,
        "digest": fold_digest(arrays),
        "nbytes": int(sum(v.nbytes for v in arrays.values())),
        "pieces": 0,
    }
    return Message(kind=WEIGHTS, schema=weights_schema_hash(arrays_spec(arrays)), seq=int(version), meta=meta, arrays=arrays)


def announcement(full: Message, pieces: int, blob_bytes: int) -> Message:
    """The array-less ``weights`` message announcing ``full``, to be pulled in ``pieces`` pieces."""
    meta = dict(full.meta, pieces=int(pieces), blob_bytes=int(blob_bytes))
    return Message(kind=WEIGHTS, schema=full.schema, seq=full.seq, meta=meta)


def weights_header(msg: Message) -> tuple[str, int, str]:
    """(wkind, version, run) of a ``weights`` message; raises WireError("bad_meta") if malformed."""
    if msg.kind != WEIGHTS:
        raise WireError("wrong_kind", msg.kind)
    wkind = _meta(msg.meta, "wkind", str)
    if wkind not in WEIGHT_KINDS:
        raise WireError("bad_meta", f"wkind={wkind!r}")
    version = _meta(msg.meta, "version", int)
    run = _meta(msg.meta, "run", str)
    _meta(msg.meta, "digest", str)
    _meta(msg.meta, "pieces", int)
    return wkind, version, run


def check_arrays(spec: dict[str, list], arrays: dict[str, np.ndarray]) -> None:
    """Raise ValueError unless ``arrays`` matches ``spec`` (name -> [dtype, shape]) exactly and is finite."""
    missing = sorted(set(spec) - set(arrays))
    extra = sorted(set(arrays) - set(spec))
    if missing or extra:
        raise ValueError(f"weights names differ: missing {missing[:5]}, unexpected {extra[:5]}")
    for name, (dtype, shape) in spec.items():
        arr = np.asarray(arrays[name])
        if str(arr.dtype) != dtype or list(arr.shape) != list(shape):
            raise ValueError(f"weights {name}: got {arr.dtype}{list(arr.shape)}, expected {dtype}{list(shape)}")
        if not all_finite(arr):
            raise ValueError(f"weights {name}: non-finite values")


def all_finite(arr: np.ndarray) -> bool:
    """Whether every value of ``arr`` is finite (always, for integer and bool arrays).

    A sum is NaN or infinite whenever an element is, so a finite sum proves the array finite in one
    reduction and no temporary; a sum that overflowed is settled by the exact element-wise check.
    """
    if arr.dtype.kind not in "fc":
        return True
    with np.errstate(all="ignore"):
        if np.isfinite(arr.sum()):
            return True
    return bool(np.isfinite(arr).all())


def check_weights_message(msg: Message, expected_schema: str | None, verify_hash: bool = True) -> dict[str, np.ndarray]:
    """Validate a complete ``weights`` message and return its arrays.

    Args:
        msg: a decoded message with arrays inline.
        expected_schema: the consumer's schema hash (None: accept any schema).
        verify_hash: check the digest here (False: the caller checks it, e.g. on another thread).

    Raises:
        WireError: "wrong_schema" (header or arrays differ from the consumer's), "bad_hash" (digest),
            "non_finite" (NaN/inf in a float array) or "bad_meta".
    """
    weights_header(msg)
    actual = weights_schema_hash(arrays_spec(msg.arrays))
    if msg.schema != actual:
        raise WireError("wrong_schema", f"header {msg.schema} does not describe its arrays ({actual})")
    if expected_schema is not None and actual != expected_schema:
        raise WireError("wrong_schema", f"{actual} != consumer's {expected_schema}")
    if verify_hash:
        verify_digest(msg, fold_digest(msg.arrays))
    for name, arr in msg.arrays.items():
        if not all_finite(arr):
            raise WireError("non_finite", name)
    return msg.arrays


def verify_digest(msg: Message, digest: str) -> None:
    """Raise WireError("bad_hash") unless ``digest`` (``fold_digest`` of the arrays) is the header's."""
    if digest != msg.meta.get("digest"):
        raise WireError("bad_hash", "digest of the arrays differs from the header")
