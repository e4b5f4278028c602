"""The wire format of every tandem link: multipart [msgpack header, raw array buffers...]. No pickle.

Header (a msgpack map)::

    {"v": PROTOCOL_VERSION, "kind": str, "schema": str, "seq": int, "robot": str,
     "meta": {...}, "arrays": [[name, dtype, shape], ...]}

followed by one frame per array holding its C-contiguous bytes (sent zero-copy). Decoding checks
everything before touching a buffer: protocol version, frame count, a dtype whitelist (no object
dtypes), shape/size agreement and total size, and raises :class:`WireError` with a reason. Callers
count and drop malformed messages; they are never fatal.
"""

from __future__ import annotations

import hashlib
import json
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
    raw_header = bytes(frames[0])
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
    if len(specs) > MAX_ARRAYS or len(specs) != len(frames) - 1:
        raise WireError("frame_count", f"{len(specs)} arrays declared, {len(frames) - 1} frames")
    arrays: dict[str, np.ndarray] = {}
    total = 0
    for spec, frame in zip(specs, frames[1:], strict=True):
        if not (isinstance(spec, list) and len(spec) == 3 and isinstance(spec[0], str) and isinstance(spec[1], str)):
            raise WireError("bad_spec", repr(spec)[:100])
        name, dtype, shape = spec
        if dtype not in ALLOWED_DTYPES:
            raise WireError("bad_dtype", f"{name}: {dtype}")
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise WireError("bad_shape", f"{name}: {shape!r}")
        buf = memoryview(frame.buffer if hasattr(frame, "buffer") else frame).cast("B")
        expected = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        if expected != buf.nbytes:
            raise WireError("size_mismatch", f"{name}: {buf.nbytes} bytes for {dtype}{shape}")
        total += expected
        if total > max_bytes:
            raise WireError("too_large", f"{total} > {max_bytes}")
        arr = np.frombuffer(buf, dtype=dtype).reshape(shape)
        arrays[name] = arr.copy() if copy else arr
    return Message(kind=kind, schema=schema, seq=seq, robot=robot, meta=meta, arrays=arrays)


def digest_arrays(arrays: dict[str, np.ndarray]) -> str:
    """sha256 hex digest over a dict of arrays: names, dtypes, shapes and bytes, in sorted name order."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        arr = np.ascontiguousarray(arrays[name])
        h.update(msgpack.packb([name, str(arr.dtype), list(arr.shape)]))
        h.update(memoryview(arr).cast("B") if arr.size else b"")
    return h.hexdigest()


_FRAME_COUNT = np.dtype("<u4")
_FRAME_LEN = np.dtype("<u8")


def pack_frames(frames: list[Any]) -> bytes:
    """One byte string holding ``frames`` (for spools, logs and pieces): count, lengths, then the bytes."""
    views = [memoryview(f.buffer if hasattr(f, "buffer") else f).cast("B") for f in frames]
    head = np.array([len(views)], _FRAME_COUNT).tobytes() + np.array([v.nbytes for v in views], _FRAME_LEN).tobytes()
    return b"".join([head, *views])


def unpack_frames(blob: bytes | memoryview, max_bytes: int = DEFAULT_MAX_BYTES + MAX_HEADER_BYTES) -> list[memoryview]:
    """Inverse of :func:`pack_frames` (zero-copy views into ``blob``). Raises WireError if malformed."""
    view = memoryview(blob).cast("B")
    if view.nbytes < 4:
        raise WireError("bad_pack", "too short")
    count = int(np.frombuffer(view[:4], _FRAME_COUNT)[0])
    if count > MAX_ARRAYS + 1 or view.nbytes < 4 + 8 * count:
        raise WireError("bad_pack", f"{count} frames")
    lengths = np.frombuffer(view[4 : 4 + 8 * count], _FRAME_LEN).astype(np.int64)
    start = 4 + 8 * count
    if int(lengths.sum()) != view.nbytes - start or int(lengths.sum()) > max_bytes:
        raise WireError("bad_pack", f"lengths sum {int(lengths.sum())} vs {view.nbytes - start} bytes")
    out = []
    for n in lengths.tolist():
        out.append(view[start : start + n])
        start += n
    return out
