"""Hostile messages for the receiver tests (issue #24): crafted headers and a seeded random generator.

hypothesis is not installed in this project's environment, so :func:`hostile_corpus` plays its part:
a ``numpy`` generator seeded per test draws msgpack headers (every field present or not, of the right
type or not, with adversarial integers, shapes of up to 70 dimensions whose element counts overflow
int64, control characters in strings) and frames (missing, extra, empty, random, or of the declared
size), and mutates valid messages of the receiver's own link (bytes flipped, frames cut, dropped or
repeated). Every message stays small, under the sockets' MAXMSGSIZE, so a receiver must handle it in
its code rather than have libzmq drop the peer.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgpack
import numpy as np

ADVERSARIAL_INTS = [0, 1, -1, 2, 3, 16, 255, 2**31 - 1, 2**31, 2**32, 2**33, 2**53, 2**62, 2**63 - 1, 2**63,
                    2**64 - 1, -(2**63)]
DTYPES = ["bool", "uint8", "int8", "float16", "float32", "float64", "int64", "uint64", "object", "O", "<f4", "", "V8"]
KINDS = ["chunk", "ack", "hb", "weights", "pull", "piece", "report", "infer", "info", "nonsense", ""]
META_KEYS = ["stream", "acked", "learner", "gap", "wkind", "version", "run", "sha256", "pieces", "nbytes", "index",
             "count", "blob_bytes", "status", "reason", "task", "episode", "chunk", "done", "truncated", "source",
             "tick", "failed", "versions", "step", "training", "policy", "infer_s", "head_version", "base_version"]
NASTY_STRINGS = ["", "x", "robot0", "r\n2024-01-01 INFO learner: forged line", "\x1b[2J\x1b[31mred", "\u202eevil",
                 "a" * 300, "\x00", "head", "critic", "base", "refused", "staged"]

# the reproduction of defect 1: [2**33, 2**33] float32 elements overflow int64 to 0 bytes, matching b""
REPRO_HEADER = {"v": 1, "kind": "chunk", "schema": "", "seq": 1, "robot": "x", "meta": {},
                "arrays": [["a", "float32", [2**33, 2**33]]]}


def repro_frames() -> list[bytes]:
    """The issue's message: the overflowing shape with an empty buffer."""
    return [msgpack.packb(REPRO_HEADER), b""]


def crafted(kind: str = "chunk", schema: str = "", meta: dict | None = None, robot: str = "x") -> list[list[bytes]]:
    """Hand-made messages that once killed a receiver or come close: overflowing and 65-dimension
    shapes with empty buffers, a huge empty shape, a seq and meta integers beyond int64."""
    def msg(arrays: list, **fields: Any) -> list[bytes]:
        header = {"v": 1, "kind": kind, "schema": schema, "seq": 1, "robot": robot, "meta": meta or {}, "arrays": arrays}
        header.update(fields)
        return [msgpack.packb(header), *[b""] * len(arrays)]

    return [
        msg([["a", "float32", [2**33, 2**33]]]),
        msg([["a", "float32", [0] * 65]]),
        msg([["a", "float32", [1] * 65]]),
        msg([["a", "uint8", [0, 2**62, 2**62]]]),
        msg([["a", "float64", [2**63 - 1, 0]]]),
        msg([["a", "float32", [2**32, 2**32, 2**32]]]),
        msg([], seq=2**64 - 1),
        msg([], seq=-(2**63) - 0),
        msg([], meta={**(meta or {}), "acked": 2**64 - 1, "version": 2**64 - 1, "index": 2**63, "pieces": 2**64 - 1}),
    ]


def _string(rng: np.random.Generator) -> str:
    return NASTY_STRINGS[rng.integers(len(NASTY_STRINGS))]


def _value(rng: np.random.Generator, depth: int = 0) -> Any:
    """A random msgpack value: None, bools, adversarial ints, odd floats, nasty strings, lists, maps."""
    pick = rng.integers(9 if depth < 3 else 6)
    if pick == 0:
        return None
    if pick == 1:
        return bool(rng.integers(2))
    if pick == 2:
        return ADVERSARIAL_INTS[rng.integers(len(ADVERSARIAL_INTS))]
    if pick == 3:
        return [float("nan"), float("inf"), -0.0, 1e308, 0.5][rng.integers(5)]
    if pick in (4, 5):
        return _string(rng)
    if pick == 6:
        return [_value(rng, depth + 1) for _ in range(rng.integers(4))]
    if pick == 7:
        return {META_KEYS[rng.integers(len(META_KEYS))]: _value(rng, depth + 1) for _ in range(rng.integers(4))}
    return {"head": ["run", ADVERSARIAL_INTS[rng.integers(len(ADVERSARIAL_INTS))]], "critic": _value(rng, depth + 1)}


def _shape(rng: np.random.Generator) -> Any:
    pick = rng.integers(6)
    if pick == 0:
        return _value(rng)  # not a shape at all
    ndim = int(rng.choice([0, 1, 2, 3, 16, 17, 33, 65, 70]))
    dims = [int(rng.choice([0, 1, 2, 4])) for _ in range(ndim)]
    for _ in range(rng.integers(3)):  # a few adversarial dimensions
        if dims:
            dims[rng.integers(len(dims))] = ADVERSARIAL_INTS[rng.integers(len(ADVERSARIAL_INTS))]
    if pick == 1 and dims:
        dims[0] = -1
    return dims


def random_header(rng: np.random.Generator, kinds: list[str], schemas: list[str]) -> dict[str, Any]:
    """A header with each field present or not, plausible or not."""
    header: dict[str, Any] = {}
    fields = {
        "v": lambda: 1 if rng.random() < 0.85 else _value(rng),
        "kind": lambda: kinds[rng.integers(len(kinds))] if rng.random() < 0.85 else _value(rng),
        "schema": lambda: schemas[rng.integers(len(schemas))] if rng.random() < 0.8 else _value(rng),
        "seq": lambda: ADVERSARIAL_INTS[rng.integers(len(ADVERSARIAL_INTS))] if rng.random() < 0.9 else _value(rng),
        "robot": lambda: _string(rng) if rng.random() < 0.9 else _value(rng),
        "meta": lambda: {META_KEYS[rng.integers(len(META_KEYS))]: _value(rng) for _ in range(rng.integers(8))}
        if rng.random() < 0.9 else _value(rng),
        "arrays": lambda: [[_string(rng) if rng.random() < 0.9 else _value(rng),
                            DTYPES[rng.integers(len(DTYPES))], _shape(rng)] for _ in range(rng.integers(4))]
        if rng.random() < 0.9 else _value(rng),
    }
    for name, make in fields.items():
        if rng.random() < 0.92:
            header[name] = make()
    return header


def _declared_bytes(spec: Any) -> int | None:
    """The byte size a spec declares when it is small and well formed (else None)."""
    try:
        _, dtype, shape = spec
        size = int(np.prod([int(d) for d in shape], dtype=object)) * np.dtype(dtype).itemsize
    except Exception:
        return None
    return size if 0 <= size <= 4096 else None


def random_frames(rng: np.random.Generator, header: dict[str, Any]) -> list[bytes]:
    """The packed header and frames for it: as many as declared (or not), each of the declared size (or not)."""
    specs = header.get("arrays") if isinstance(header.get("arrays"), list) else []
    n = len(specs) + (0 if rng.random() < 0.8 else int(rng.integers(-1, 3)))
    frames = [msgpack.packb(header, use_bin_type=True)]
    for i in range(max(0, n)):
        size = _declared_bytes(specs[i]) if i < len(specs) else None
        if size is None or rng.random() < 0.2:
            size = int(rng.choice([0, 1, 3, 4, 8, 64, 1000]))
        frames.append(rng.bytes(size))
    return frames


def mutate(rng: np.random.Generator, frames: list[bytes]) -> list[bytes]:
    """A valid message damaged: bytes flipped (header or data), frames cut, dropped or repeated."""
    out = [bytes(f) for f in frames]
    for _ in range(1 + rng.integers(3)):
        pick = rng.integers(5)
        i = int(rng.integers(len(out))) if out else 0
        if not out:
            out = [rng.bytes(8)]
        elif pick == 0 and out[i]:
            b = bytearray(out[i])
            for _ in range(1 + rng.integers(4)):
                b[rng.integers(len(b))] = int(rng.integers(256))
            out[i] = bytes(b)
        elif pick == 1:
            out[i] = out[i][: rng.integers(len(out[i]) + 1)]
        elif pick == 2 and len(out) > 1:
            del out[i]
        elif pick == 3:
            out.insert(i, out[i])
        else:
            out[i] = out[i] + rng.bytes(int(rng.integers(1, 9)))
    return out


def hostile_corpus(seed: int, n: int, valid: list[list[bytes]], kinds: list[str] | None = None,
                   schemas: list[str] | None = None, crafted_kind: str = "chunk", crafted_schema: str = "",
                   crafted_meta: dict | None = None) -> Iterator[list[bytes]]:
    """The issue's reproduction, the crafted messages, then ``n`` random ones (seeded): about half
    random headers with frames, half mutations of ``valid`` (messages of the receiver's link)."""
    rng = np.random.default_rng(seed)
    yield repro_frames()
    yield from crafted(crafted_kind, crafted_schema, crafted_meta)
    kinds = kinds or KINDS
    schemas = schemas or [""]
    for _ in range(n):
        if valid and rng.random() < 0.5:
            yield mutate(rng, valid[rng.integers(len(valid))])
        else:
            yield random_frames(rng, random_header(rng, kinds, schemas))
