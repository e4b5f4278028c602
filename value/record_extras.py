"""What a chunk record carries beside its arrays, for objectives that train the base: its instruction
and its camera images (JPEG), attached to sampled batches.

The replay's buffers (``value/replay.py``) keep a record's arrays, not its ``task`` or ``images``.
``base_awr`` needs both (the tiny VLA reads the instruction and the cameras), so the learner keeps them
here, beside the replay, by a key that every sampled row carries: (episode_id, chunk_index, the bytes
of ``state``). Two rows with the same key are the same observation of the same episode, so their
extras agree. :class:`ExtrasStore` wraps the replay store the link server writes into and indexes each
stored record; :meth:`RecordExtras.attach` adds ``task`` (object[B], None when unknown) and
``images_jpeg`` (object[B] of camera key -> JPEG bytes, {} when unknown) to a batch. At start the
learner reads them back from the replay's log (:meth:`RecordExtras.load`).
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from tandem.protocol.chunk_record import ChunkRecord
from tandem.protocol.messages import message_to_record
from tandem.protocol.wire import Message, WireError
from tandem.value.replay import STORED, record_entries

log = logging.getLogger(__name__)


def extras_key(episode_id: int, chunk_index: int, state: np.ndarray) -> bytes:
    """The key of a record (or of a sampled row): 16 bytes of blake2b over episode, chunk and state."""
    h = hashlib.blake2b(digest_size=16)
    h.update(np.asarray([episode_id, chunk_index], np.int64).tobytes())
    h.update(np.ascontiguousarray(state, np.float32).tobytes())
    return h.digest()


class RecordExtras:
    """The newest ``capacity`` records' (task, images), by :func:`extras_key`.

    Args:
        capacity: records kept (the oldest are forgotten first); their rows then sample without extras.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = int(capacity)
        self._items: OrderedDict[bytes, tuple[str, dict[str, bytes]]] = OrderedDict()
        self.image_bytes = 0

    def __len__(self) -> int:
        return len(self._items)

    def add(self, record: ChunkRecord) -> None:
        """Keep the record's task and images."""
        key = extras_key(record.episode_id, record.chunk_index, record.state)
        old = self._items.pop(key, None)
        if old is not None:
            self.image_bytes -= sum(len(v) for v in old[1].values())
        self._items[key] = (record.task, dict(record.images))
        self.image_bytes += sum(len(v) for v in record.images.values())
        while len(self._items) > self.capacity:
            _, (_, images) = self._items.popitem(last=False)
            self.image_bytes -= sum(len(v) for v in images.values())

    def load(self, directory: str | Path) -> int:
        """Read the extras of every record in a replay store's log (a learner resuming); how many."""
        n = 0
        if not (Path(directory) / "log").exists():
            return 0
        for _, record in record_entries(directory):
            if record is not None:
                self.add(record)
                n += 1
        return n

    def attach(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Add ``task`` and ``images_jpeg`` (object arrays, one entry per row) to ``batch``; returns it."""
        n = len(batch["state"])
        tasks = np.empty(n, dtype=object)
        images = np.empty(n, dtype=object)
        for i in range(n):
            item = self._items.get(extras_key(int(batch["episode_id"][i]), int(batch["chunk_index"][i]),
                                              batch["state"][i]))
            tasks[i], images[i] = (item[0], item[1]) if item is not None else (None, {})
        batch["task"], batch["images_jpeg"] = tasks, images
        return batch


class ExtrasStore:
    """The replay store as the link server sees it, indexing the extras of every record it stores.

    Args:
        store: the ``ReplayStore``; everything but :meth:`offer` goes straight to it.
        extras: where the extras go.
    """

    def __init__(self, store: Any, extras: RecordExtras) -> None:
        self.store = store
        self.extras = extras

    def offer(self, msg: Message) -> str:
        """``store.offer``; a stored record's extras are kept."""
        verdict = self.store.offer(msg)
        if verdict == STORED:
            try:
                self.extras.add(message_to_record(msg))
            except WireError:  # the store accepted it, so this does not happen; the record just has no extras
                log.debug("record extras: could not read a stored record back")
        return verdict

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)
