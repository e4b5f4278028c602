"""Camera images in chunk records: JPEG, resized, size-limited (``link.image_size`` > 0).

A learner that trains the base policy itself (``learner.objective.type=base_awr``) needs the
observations the base sees, and a learner on another machine cannot read the robot's disk. So each
chunk record carries its first tick's camera images as JPEG (``ChunkRecord.images``, camera key ->
bytes), encoded here with OpenCV on the control thread when the record is emitted (once every H ticks;
a 96x96 frame takes a fraction of a millisecond), resized to ``link.image_size`` pixels a side at
``link.image_quality``. A record whose images exceed ``link.image_max_bytes`` in all goes without them
(counted in ``dropped``), so one odd frame can never make a record too large for the link.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

IMAGE_PREFIX = "observation.images."


@dataclass
class ImageStats:
    """Counters of the encoder."""

    records: int = 0  # records given images
    dropped: int = 0  # records sent without images: over image_max_bytes
    max_bytes: int = 0  # the largest total JPEG size of one record

    def to_dict(self) -> dict[str, int]:
        """JSON-ready dict."""
        return asdict(self)


class ChunkImages:
    """Encodes an observation's camera images (uint8[h, w, 3] RGB under ``observation.images.*``) as JPEG.

    Args:
        size: pixels a side of the square images sent (resized with area interpolation).
        quality: JPEG quality, 1..100.
        max_bytes: the most JPEG bytes one record may carry, all cameras together.
    """

    def __init__(self, size: int, quality: int, max_bytes: int) -> None:
        self.size, self.quality, self.max_bytes = int(size), int(quality), int(max_bytes)
        self.stats = ImageStats()

    def __call__(self, observation: dict[str, Any]) -> dict[str, bytes]:
        """camera key -> JPEG bytes ({} when the total exceeds ``max_bytes``)."""
        import cv2  # OpenCV is a dependency; imported when a session sends images

        out: dict[str, bytes] = {}
        for key in sorted(observation):
            img = observation[key]
            if not key.startswith(IMAGE_PREFIX) or not isinstance(img, np.ndarray) or img.ndim != 3:
                continue
            if img.shape[:2] != (self.size, self.size):
                img = cv2.resize(img, (self.size, self.size), interpolation=cv2.INTER_AREA)
            ok, data = cv2.imencode(".jpg", cv2.cvtColor(np.ascontiguousarray(img, np.uint8), cv2.COLOR_RGB2BGR),
                                    [cv2.IMWRITE_JPEG_QUALITY, self.quality])
            if ok:
                out[key] = data.tobytes()
        total = sum(len(v) for v in out.values())
        self.stats.max_bytes = max(self.stats.max_bytes, total)
        if total > self.max_bytes:
            self.stats.dropped += 1
            if self.stats.dropped == 1:
                log.warning("a chunk record's images take %d bytes > link.image_max_bytes=%d: sent without them "
                            "(lower link.image_size or link.image_quality)", total, self.max_bytes)
            return {}
        if out:
            self.stats.records += 1
        return out
