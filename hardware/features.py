"""Feature schemas: what a robot observes and accepts, readable before ``connect()``.

A schema maps a flat key (lerobot's naming: ``observation.state``, ``observation.images.<camera>``,
``action``) to a :class:`Feature`. The same schema becomes the LeRobotDataset feature spec.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

STATE_KEY = "observation.state"
IMAGE_PREFIX = "observation.images."
ACTION_KEY = "action"


@dataclass(frozen=True)
class Feature:
    """One array feature.

    Attributes:
        dtype: numpy dtype name ("float32", "uint8", ...). Images are "uint8" with shape (H, W, 3).
        shape: array shape, e.g. (39,) for a state or (96, 96, 3) for an image.
        names: optional per-dimension names (joint names for a state or action vector).
        low: optional lower bound per element (actions: the safety filter clips to it).
        high: optional upper bound per element.
    """

    dtype: str
    shape: tuple[int, ...]
    names: tuple[str, ...] | None = None
    low: tuple[float, ...] | None = field(default=None, compare=False)
    high: tuple[float, ...] | None = field(default=None, compare=False)

    @property
    def is_image(self) -> bool:
        """True for (H, W, 3) uint8 camera frames."""
        return self.dtype == "uint8" and len(self.shape) == 3

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """(low, high) as float32 arrays; unbounded dimensions are -inf/+inf."""
        size = int(np.prod(self.shape))
        low = np.full(size, -np.inf, np.float32) if self.low is None else np.asarray(self.low, np.float32)
        high = np.full(size, np.inf, np.float32) if self.high is None else np.asarray(self.high, np.float32)
        return low.reshape(self.shape), high.reshape(self.shape)

    def to_lerobot(self, use_video: bool = True) -> dict:
        """This feature in LeRobotDataset's ``features`` format."""
        if self.is_image:
            return {
                "dtype": "video" if use_video else "image",
                "shape": tuple(self.shape),
                "names": ["height", "width", "channels"],
            }
        names = list(self.names) if self.names else None
        return {"dtype": self.dtype, "shape": tuple(self.shape), "names": names}


def image_keys(features: dict[str, Feature]) -> list[str]:
    """Keys of the camera features, in schema order."""
    return [k for k, f in features.items() if f.is_image]


def zero_observation(features: dict[str, Feature]) -> dict[str, np.ndarray]:
    """An all-zero observation matching ``features`` (for warm-up)."""
    return {k: np.zeros(f.shape, f.dtype) for k, f in features.items()}


def check_observation(arrays: dict[str, np.ndarray], features: dict[str, Feature]) -> str:
    """Empty if ``arrays`` matches the schema ``features`` (keys, dtypes, shapes), else the first problem."""
    for key, feat in features.items():
        arr = arrays.get(key)
        if arr is None:
            return f"observation lacks {key!r}"
        if str(arr.dtype) != feat.dtype or tuple(arr.shape) != tuple(feat.shape):
            return f"{key}: got {arr.dtype}{list(arr.shape)}, the policy expects {feat.dtype}{list(feat.shape)}"
    return ""
