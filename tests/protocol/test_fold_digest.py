"""The weights link's digest (``fold_digest``) and finiteness check (``all_finite``): what they catch."""

from __future__ import annotations

import numpy as np
import pytest

from tandem.protocol.messages import all_finite, check_weights_message, weights_message
from tandem.protocol.wire import (
    FOLD_MIN_BYTES,
    FOLD_PREFIX,
    FOLD_ROW_WORDS,
    WireError,
    decode,
    encode,
    fold_digest,
)


def head() -> dict[str, np.ndarray]:
    """A large float array (folded), a ragged one (a tail past the last full row) and a small one."""
    rng = np.random.default_rng(0)
    return {
        "w": rng.standard_normal((300, 256)).astype(np.float32),
        "r": rng.standard_normal(FOLD_MIN_BYTES // 4 + 3001).astype(np.float32),
        "b": rng.standard_normal(16).astype(np.float32),
    }


def changed(arrays: dict[str, np.ndarray], name: str, edit, view: type = np.uint64) -> dict[str, np.ndarray]:
    """A copy of ``arrays`` with ``edit`` applied to the bytes of ``arrays[name]``, seen as ``view`` items."""
    out = {k: v.copy() for k, v in arrays.items()}
    edit(out[name].reshape(-1).view(view))
    return out


def test_the_digest_is_stable_and_names_its_algorithm():
    arrays = head()
    digest = fold_digest(arrays)
    assert digest.startswith(FOLD_PREFIX) and len(digest) == len(FOLD_PREFIX) + 64
    assert fold_digest({k: arrays[k] for k in reversed(list(arrays))}) == digest  # sorted by name
    assert fold_digest({k: v.copy() for k, v in arrays.items()}) == digest


@pytest.mark.parametrize("byte", [0, 1, 8191, 8192, 300 * 256 * 4 - 1])
@pytest.mark.parametrize("bit", [0, 7])
def test_any_single_bit_flip_is_caught(byte, bit):
    arrays = head()

    def flip(view):
        view[byte] ^= np.uint8(1 << bit)

    assert fold_digest(changed(arrays, "w", flip, np.uint8)) != fold_digest(arrays)


def test_swapped_words_rows_and_tails_are_caught():
    arrays = head()
    base = fold_digest(arrays)

    def swap_adjacent(words):  # same row: the column sums differ
        words[[5, 6]] = words[[6, 5]]

    def swap_rows(words):  # whole rows moved (pieces reassembled out of order): the row sums differ
        a, b = slice(0, FOLD_ROW_WORDS), slice(FOLD_ROW_WORDS, 2 * FOLD_ROW_WORDS)
        words[a], words[b] = words[b].copy(), words[a].copy()

    def burst(words):  # a run of changes shorter than a row
        words[100:900] += np.uint64(3)

    for edit in (swap_adjacent, swap_rows, burst):
        assert fold_digest(changed(arrays, "w", edit)) != base, edit.__name__
    tail = {k: v.copy() for k, v in arrays.items()}
    tail["r"][-1] += 1.0  # past the last full row: hashed byte for byte
    assert fold_digest(tail) != base


def test_names_dtypes_and_shapes_are_part_of_the_digest():
    arrays = head()
    base = fold_digest(arrays)
    assert fold_digest({**arrays, "w": arrays["w"].reshape(256, 300)}) != base
    assert fold_digest({**arrays, "w": arrays["w"].view(np.int32)}) != base
    assert fold_digest({"v" if k == "w" else k: v for k, v in arrays.items()}) != base


def test_unaligned_and_non_contiguous_arrays_digest_as_their_contiguous_copy():
    arrays = head()
    raw = np.zeros(arrays["w"].nbytes + 1, np.uint8)
    raw[1:] = arrays["w"].reshape(-1).view(np.uint8)
    unaligned = raw[1:].view(np.float32).reshape(arrays["w"].shape)
    assert unaligned.ctypes.data % 8 != 0
    assert fold_digest({**arrays, "w": unaligned}) == fold_digest(arrays)
    wide = np.zeros((300, 512), np.float32)
    wide[:, ::2] = arrays["w"]
    assert fold_digest({**arrays, "w": wide[:, ::2]}) == fold_digest(arrays)


def test_a_weights_message_carries_the_digest_and_a_changed_array_is_refused():
    arrays = head()
    msg = weights_message("head", arrays, 1, "run")
    assert msg.meta["digest"] == fold_digest(arrays) and "sha256" not in msg.meta
    frames = [bytearray(f) for f in encode(msg)]
    frames[1][12345] ^= 0x10  # one bit of "w" damaged on the way
    with pytest.raises(WireError, match="bad_hash"):
        check_weights_message(decode(frames), None)
    assert set(check_weights_message(decode(encode(msg)), None)) == set(arrays)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_all_finite(dtype):
    arr = np.ones(10_000, dtype)
    assert all_finite(arr)
    for bad in (np.nan, np.inf, -np.inf):
        broken = arr.copy()
        broken[7777] = bad
        assert not all_finite(broken)
    both = arr.copy()
    both[[1, 2]] = [np.inf, -np.inf]  # their sum is NaN: still refused
    assert not all_finite(both)
    huge = np.full(10_000, np.finfo(dtype).max, dtype)  # finite values whose sum overflows
    assert all_finite(huge)
    assert all_finite(np.arange(10, dtype=np.int64)) and all_finite(np.zeros(3, bool))
