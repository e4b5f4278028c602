"""The wire format of every tandem link: multipart [msgpack header, raw array buffers...]. No pickle.

Header (a msgpack map)::

    {"v": PROTOCOL_VERSION, "kind": str, "schema": str, "seq": int, "robot": str,
     "meta": {...}, "arrays": [[name, dtype, shape], ...]}

followed by one frame per array holding its C-contiguous bytes (sent zero-copy). Decoding checks
everything before touching a buffer: protocol version, frame count, a dtype whitelist (no object
dtypes), at most :data:`MAX_DIMS` dimensions, shape/size agreement and total size (computed with
Python integers, so no shape can overflow into a match), and raises :class:`WireError` with a reason;
:func:`decode` raises nothing else, whatever the frames hold. Callers count and drop malformed
messages; they are never fatal.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

PROTOCOL_VERSION = 1
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
ALLOWED_DTYPES = frozenset(
    {"bool", "uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64", "float16", "float32", "float64"}
)
MAX_HEADER_BYTES = 1 << 20
MAX_ARRAYS = 4096
MAX_DIMS = 16
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


class WireError(ValueError):
    """A message that cannot be accepted; ``reason`` is a short counter key."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        super().__init__(f"{reason}: {detail}" if detail else reason)


@dataclass
class Message:
    """A decoded message."""

    kind: str
    schema: str = ""
    seq: int = 0
    robot: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


def log_safe(value: Any, limit: int = 120) -> str:
    """``value`` as text fit for one log line: control, format and line-separator characters
    (newlines, escape sequences, bidi overrides) escaped as ``\\xNN`` / ``\\uNNNN``, cut to ``limit``
    characters. Use it on anything a peer chose (robot ids, refusal reasons) before logging it."""
    text = value if isinstance(value, str) else repr(value)
    out = []
    for ch in text[: limit + 1]:
        if unicodedata.category(ch)[0] == "C" or unicodedata.category(ch) in ("Zl", "Zp"):
            out.append(f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return "".join(out)[:limit] + ("..." if len(text) > limit else "")


def schema_hash(spec: dict[str, Any]) -> str:
    """A short stable hash of a JSON-able schema description (names, dtypes, shapes, versions)."""
    blob = json.dumps(spec, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def arrays_schema(arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """The schema of a dict of arrays: name -> [dtype, shape]."""
    return {k: [str(v.dtype), list(v.shape)] for k, v in sorted(arrays.items())}


def encode(message: Message) -> list[Any]:
    """Frames for ``message``: the header, then each array's buffer (no copy for contiguous arrays)."""
    specs, buffers = [], []
    for name, arr in message.arrays.items():
        arr = np.asarray(arr)
        if str(arr.dtype) not in ALLOWED_DTYPES:
            raise WireError("bad_dtype", f"{name}: {arr.dtype}")
        arr = np.ascontiguousarray(arr)
        specs.append([name, str(arr.dtype), list(arr.shape)])
        buffers.append(memoryview(arr).cast("B") if arr.size else b"")
    header = {
        "v": PROTOCOL_VERSION,
        "kind": message.kind,
        "schema": message.schema,
        "seq": int(message.seq),
        "robot": message.robot,
        "meta": message.meta,
        "arrays": specs,
    }
    return [msgpack.packb(header, use_bin_type=True), *buffers]


def decode(frames: list[Any], max_bytes: int = DEFAULT_MAX_BYTES, copy: bool = False) -> Message:
    """Parse and validate frames into a Message. Raises WireError on anything malformed.

    Args:
        frames: the multipart frames (bytes, or zmq.Frame / memoryview objects).
        max_bytes: largest total payload accepted.
        copy: copy array data out of the frames (set when frames will be reused).
    """
    if not frames:
        raise WireError("empty")
    raw_header = _buffer(frames[0]).tobytes()
    if len(raw_header) > MAX_HEADER_BYTES:
        raise WireError("header_too_large", str(len(raw_header)))
    try:
        header = msgpack.unpackb(raw_header, raw=False, strict_map_key=True, max_bin_len=0, max_ext_len=0)
    except Exception as exc:
        raise WireError("bad_header", str(exc)[:200]) from None
    if not isinstance(header, dict):
        raise WireError("bad_header", "not a map")
    if header.get("v") != PROTOCOL_VERSION:
        raise WireError("bad_version", f"{header.get('v')!r} != {PROTOCOL_VERSION}")
    kind, schema, seq, robot = header.get("kind"), header.get("schema", ""), header.get("seq", 0), header.get("robot", "")
    meta, specs = header.get("meta", {}), header.get("arrays", [])
    if not isinstance(kind, str) or not isinstance(schema, str) or not isinstance(robot, str):
        raise WireError("bad_header", "kind/schema/robot must be strings")
    if not isinstance(seq, int) or isinstance(seq, bool) or not isinstance(meta, dict) or not isinstance(specs, list):
        raise WireError("bad_header", "seq/meta/arrays have wrong types")
    if not INT64_MIN <= seq <= INT64_MAX:
        raise WireError("bad_header", "seq outside int64")
    if len(specs) > MAX_ARRAYS or len(specs) != len(frames) - 1:
        raise WireError("frame_count", f"{len(specs)} arrays declared, {len(frames) - 1} frames")
    arrays: dict[str, np.ndarray] = {}
    total = 0
    for spec, frame in zip(specs, frames[1:], strict=True):
        if not (isinstance(spec, list) and len(spec) == 3 and isinstance(spec[0], str) and isinstance(spec[1], str)):
            raise WireError("bad_spec", repr(spec)[:100])
        name, dtype, shape = spec
        if dtype not in ALLOWED_DTYPES:
            raise WireError("bad_dtype", f"{name[:100]}: {dtype[:100]}")
        expected = _nbytes(name, shape, np.dtype(dtype).itemsize, max_bytes)
        buf = _buffer(frame)
        if expected != buf.nbytes:
            raise WireError("size_mismatch", f"{name[:100]}: {buf.nbytes} bytes for {dtype}{shape}")
        total += expected
        if total > max_bytes:
            raise WireError("too_large", f"{total} > {max_bytes}")
        arr = np.frombuffer(buf, dtype=dtype).reshape(shape)
        arrays[name] = arr.copy() if copy else arr
    return Message(kind=kind, schema=schema, seq=seq, robot=robot, meta=meta, arrays=arrays)


def _nbytes(name: str, shape: Any, itemsize: int, max_bytes: int) -> int:
    """The byte size an array spec declares, in Python integers (no int64 overflow).

    Raises:
        WireError: "bad_shape" for anything but a list of at most MAX_DIMS non-negative ints whose
            extent (the product of its dimensions, zeros counted as one) is at most ``max_bytes``;
            numpy could not build such an array even when it is empty.
    """
    if not isinstance(shape, list) or len(shape) > MAX_DIMS:
        raise WireError("bad_shape", f"{name[:100]}: {repr(shape)[:100]} (at most {MAX_DIMS} dimensions)")
    count, extent = 1, 1
    for d in shape:
        if not isinstance(d, int) or isinstance(d, bool) or d < 0:
            raise WireError("bad_shape", f"{name[:100]}: {repr(shape)[:100]}")
        count *= d
        extent *= max(d, 1)
        if extent > max_bytes:
            raise WireError("bad_shape", f"{name[:100]}: {repr(shape)[:100]} is larger than {max_bytes} elements")
    return count * itemsize


def _buffer(frame: Any) -> memoryview:
    """A flat byte view of a frame (bytes, memoryview or zmq.Frame)."""
    try:
        return memoryview(frame.buffer if hasattr(frame, "buffer") else frame).cast("B")
    except (TypeError, ValueError) as exc:
        raise WireError("bad_frame", str(exc)[:100]) from None


def digest_arrays(arrays: dict[str, np.ndarray]) -> str:
    """sha256 hex digest over a dict of arrays: names, dtypes, shapes and bytes, in sorted name order."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        arr = np.ascontiguousarray(arrays[name])
        h.update(msgpack.packb([name, str(arr.dtype), list(arr.shape)]))
        h.update(memoryview(arr).cast("B") if arr.size else b"")
    return h.hexdigest()


FOLD_PREFIX = "fold64:"
FOLD_ROW_WORDS = 1024  # 8 KiB rows of 64-bit words
FOLD_MIN_BYTES = 64 * 1024  # smaller arrays are hashed byte for byte
_WORD = np.dtype("<u8")


def fold_digest(arrays: dict[str, np.ndarray]) -> str:
    """The weights link's digest of a dict of arrays: ``"fold64:"`` and a sha256 hex digest over, in sorted
    name order, each array's name, dtype and shape and a fold of its bytes (:func:`_fold`).

    Two reductions at memory speed instead of sha256 over every byte (about 5x faster on the 4 MB of a
    1M-parameter head). The fold detects any change of one to three 64-bit words, any run of changes
    shorter than 8 KiB, and rows moved or swapped (whose sums differ); it cannot miss a change that leaves
    every row sum and every column sum equal (four or more words changed in a rectangle). It guards
    against corruption and mix-ups (pieces, versions), not a forger: peers off loopback are authenticated
    by CURVE (:mod:`tandem.protocol.security`). Arrays under 64 KiB are hashed byte for byte.
    """
    h = hashlib.sha256()
    for name in sorted(arrays):
        arr = np.ascontiguousarray(arrays[name])
        h.update(msgpack.packb([name, str(arr.dtype), list(arr.shape)]))
        h.update(_fold(memoryview(arr).cast("B") if arr.size else memoryview(b"")))
    return FOLD_PREFIX + h.hexdigest()


def _fold(buf: memoryview) -> bytes:
    """A byte string that stands for ``buf`` in :func:`fold_digest`.

    Under FOLD_MIN_BYTES: ``buf`` itself. Otherwise its 64-bit little-endian words as a matrix of
    FOLD_ROW_WORDS columns, and the fold is the matrix's row sums, then its column sums (uint64, modulo
    2**64: exact, and the same in any summation order), then the bytes past the last full row.
    """
    if buf.nbytes < FOLD_MIN_BYTES:
        return buf.tobytes()
    rows = buf.nbytes // (8 * FOLD_ROW_WORDS)
    words = np.frombuffer(buf, _WORD, count=rows * FOLD_ROW_WORDS).reshape(rows, FOLD_ROW_WORDS)
    row_sums = words.sum(axis=1, dtype=np.uint64).astype(_WORD, copy=False)
    col_sums = words.sum(axis=0, dtype=np.uint64).astype(_WORD, copy=False)
    return b"".join([row_sums.tobytes(), col_sums.tobytes(), buf[rows * FOLD_ROW_WORDS * 8 :].tobytes()])


_FRAME_COUNT = np.dtype("<u4")
_FRAME_LEN = np.dtype("<u8")


def pack_frames(frames: list[Any]) -> bytes:
    """One byte string holding ``frames`` (for spools, logs and pieces): count, lengths, then the bytes."""
    views = [memoryview(f.buffer if hasattr(f, "buffer") else f).cast("B") for f in frames]
    head = np.array([len(views)], _FRAME_COUNT).tobytes() + np.array([v.nbytes for v in views], _FRAME_LEN).tobytes()
    return b"".join([head, *views])


def unpack_frames(blob: bytes | memoryview, max_bytes: int = DEFAULT_MAX_BYTES + MAX_HEADER_BYTES) -> list[memoryview]:
    """Inverse of :func:`pack_frames` (zero-copy views into ``blob``). Raises WireError if malformed."""
    view = _buffer(blob)
    if view.nbytes < 4:
        raise WireError("bad_pack", "too short")
    count = int(np.frombuffer(view[:4], _FRAME_COUNT)[0])
    if count > MAX_ARRAYS + 1 or view.nbytes < 4 + 8 * count:
        raise WireError("bad_pack", f"{count} frames")
    lengths = [int(n) for n in np.frombuffer(view[4 : 4 + 8 * count], _FRAME_LEN).tolist()]  # Python ints: no wrap
    start = 4 + 8 * count
    if sum(lengths) != view.nbytes - start or sum(lengths) > max_bytes:
        raise WireError("bad_pack", f"lengths sum {sum(lengths)} vs {view.nbytes - start} bytes")
    out = []
    for n in lengths:
        out.append(view[start : start + n])
        start += n
    return out
