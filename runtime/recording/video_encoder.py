"""Camera frames from the spool straight into video files: one encoder thread per camera, no PNG files.

lerobot 0.4.4's default writer saves every frame of a video feature as a PNG (``add_frame``), then reads
them back and encodes the episode (``save_episode``). At 640x480 that costs about 90 ms per frame for
the PNG alone on the shared 2-core machine, 20 times too slow for two cameras at 30 Hz
(docs/recording.md). lerobot's writer also has a streaming seam: when the dataset holds a streaming
encoder, ``add_frame`` hands each video frame to ``encoder.feed_frame(key, frame)`` and ``save_episode``
takes ``encoder.finish_episode()``'s ``{key: (mp4 path, stats)}`` instead of encoding. Its own streaming
encoder drops frames when its queue is full (right for a live camera, wrong for a converter reading a
spool: a dropped frame desynchronises the video from the parquet rows), converts every frame through
PIL, updates running quantile statistics on every frame (about 9 ms per 640x480 frame) and offers no
encoder preset for h264/hevc.

:class:`SpoolVideoEncoder` implements the same five methods (``start_episode``, ``feed_frame``,
``finish_episode``, ``cancel_episode``, ``close``) for the converter:

- ``feed_frame`` blocks while the camera's queue is full (back-pressure, never a drop), so the
  converter reads the spool exactly as fast as the encoders take frames, in bounded memory
  (``queue_frames`` frames per camera).
- frames go to PyAV as ``rgb24`` arrays; the codec gets lerobot's settings (``yuv420p``, GOP ``g=2``,
  ``crf=30``) plus a speed ``preset`` (x264/x265 presets, e.g. "ultrafast"; SVT-AV1 presets 0..13).
- statistics are computed on the frames lerobot's own PNG path samples (``sample_indices(n)`` over the
  episode's ``n`` frames, announced by :meth:`plan`), downsampled and reduced with lerobot's
  ``get_feature_stats``, so ``meta/stats.json`` has the same form either way.
- ``finish_episode`` checks that every camera encoded exactly the frames it was fed.
"""

from __future__ import annotations

import logging
import queue
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from tandem.core.errors import TandemError

X26X_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")
SVTAV1_PRESETS = tuple(str(p) for p in range(14))
GOP = 2  # lerobot's keyframe interval: any frame decodes from at most one frame before it
CRF = 30  # lerobot's quality setting
_DONE = None  # sentinel that ends a camera's queue


class VideoEncodeError(TandemError, RuntimeError):
    """A camera's video could not be encoded (the converter rolls the episode back and keeps it spooled)."""


def codec_options(vcodec: str, preset: str, threads: int | None) -> dict[str, str]:
    """PyAV stream options: lerobot's GOP and CRF, the speed ``preset`` ("" = the codec's default),
    ``threads`` encoder threads (None: the codec decides)."""
    options = {"g": str(GOP), "crf": str(CRF)}
    if vcodec == "libsvtav1":
        options["preset"] = preset or "12"  # lerobot's default for SVT-AV1
        if threads is not None:
            options["svtav1-params"] = f"lp={threads}"
        return options
    if preset:
        options["preset"] = preset
    if threads is not None:
        options["threads"] = str(threads)
    return options


def check_preset(vcodec: str, preset: str) -> str | None:
    """None if ``preset`` suits ``vcodec``, else what would: the valid presets, as text."""
    if preset == "":
        return None
    valid = SVTAV1_PRESETS if vcodec == "libsvtav1" else X26X_PRESETS
    return None if preset in valid else f"one of {', '.join(valid)} (or '' for the codec's default)"


def _end_queue(cam: _Camera) -> None:
    """Put the end sentinel on ``cam``'s queue; a thread that already died (queue full) needs none."""
    while cam.thread is not None and cam.thread.is_alive():
        try:
            cam.frames.put(_DONE, timeout=0.5)
            return
        except queue.Full:
            continue


@dataclass
class _Camera:
    """One camera's encoder thread and what it produced."""

    path: Path
    frames: queue.Queue
    thread: threading.Thread | None = None
    fed: int = 0
    encoded: int = 0
    samples: list[np.ndarray] = field(default_factory=list)  # downsampled uint8 [C, h, w] frames
    error: str = ""


class SpoolVideoEncoder:
    """lerobot's streaming-encoder interface over PyAV, with back-pressure instead of dropped frames.

    Args:
        fps: frames per second of the videos (the dataset's fps).
        vcodec: "h264", "hevc" or "libsvtav1".
        preset: the codec's speed preset ("" = its default; see :func:`check_preset`).
        threads: encoder threads per camera (None: the codec decides).
        queue_frames: frames buffered per camera between the converter and its encoder thread; memory
            is bounded by ``queue_frames`` x H x W x 3 bytes per camera.

    Frames are uint8 [H, W, 3] (RGB); the encoder takes ownership of each array fed to it.
    """

    def __init__(self, fps: int, vcodec: str = "h264", preset: str = "ultrafast", threads: int | None = 1,
                 queue_frames: int = 8) -> None:
        problem = check_preset(vcodec, preset)
        if problem:
            raise ValueError(f"tandem: preset {preset!r} does not suit {vcodec}: {problem}")
        self.fps = int(fps)
        self.vcodec = vcodec
        self.options = codec_options(vcodec, preset, threads)
        self.queue_frames = max(1, int(queue_frames))
        self._cameras: dict[str, _Camera] = {}
        self._sample_at: set[int] = set()

    # -- the converter's own call --------------------------------------------------------------
    def plan(self, n_frames: int) -> None:
        """Announce the next episode's length: statistics use lerobot's sample of ``n_frames`` frames."""
        from lerobot.datasets.compute_stats import sample_indices

        self._sample_at = set(sample_indices(int(n_frames)))

    # -- lerobot's streaming-encoder interface ---------------------------------------------------
    def start_episode(self, video_keys: list[str], temp_dir: Path) -> None:
        """Start one encoder thread per camera, writing ``<temp_dir>/<tmp>/<key>.mp4`` (a directory per
        camera: lerobot deletes the video's directory once it has moved the video into the dataset)."""
        self.cancel_episode()
        for key in video_keys:
            path = Path(tempfile.mkdtemp(prefix="tandem-video-", dir=temp_dir)) / f"{key.replace('/', '_')}.mp4"
            cam = _Camera(path=path, frames=queue.Queue(self.queue_frames))
            cam.thread = threading.Thread(target=self._encode, args=(cam,), name=f"encode-{key}", daemon=True)
            self._cameras[key] = cam
            cam.thread.start()

    def feed_frame(self, video_key: str, image: np.ndarray) -> None:
        """Queue one frame uint8 [H, W, 3]; blocks while the camera's queue is full.

        Raises:
            VideoEncodeError: the camera's encoder thread failed.
        """
        cam = self._cameras[video_key]
        while True:
            if cam.error or not cam.thread.is_alive():
                raise VideoEncodeError(f"tandem: encoding {video_key} failed: {cam.error or 'encoder thread ended'}")
            try:
                cam.frames.put(image, timeout=0.5)
                break
            except queue.Full:
                continue
        cam.fed += 1

    def finish_episode(self) -> dict[str, tuple[Path, dict[str, np.ndarray]]]:
        """Flush every camera; ``{key: (mp4 path, per-channel stats of the sampled frames)}``.

        Statistics are lerobot's ``get_feature_stats`` over uint8 [N, C, h, w] samples (keepdims, not yet
        divided by 255: lerobot's ``save_episode`` scales them as it does its own encoder's).

        Raises:
            VideoEncodeError: a camera failed or encoded another number of frames than it was fed.
        """
        from lerobot.datasets.compute_stats import get_feature_stats

        for cam in self._cameras.values():
            _end_queue(cam)
        for cam in self._cameras.values():
            cam.thread.join()
        out = {}
        try:
            for key, cam in self._cameras.items():
                if cam.error or cam.encoded != cam.fed or not cam.samples:
                    raise VideoEncodeError(f"tandem: encoding {key} failed: {cam.error or ''} "
                                           f"({cam.encoded} of {cam.fed} frames encoded, {len(cam.samples)} sampled)")
                # float: lerobot 0.4.4's running statistics square uint8 pixels in uint8, which makes every
                # image std 0 on its PNG path; in float32 they are the pixels' true spread
                stats = get_feature_stats(np.stack(cam.samples).astype(np.float32), axis=(0, 2, 3), keepdims=True)
                out[key] = (cam.path, stats)
        except BaseException:
            self.cancel_episode()
            raise
        self._cameras = {}
        return out

    def cancel_episode(self) -> None:
        """Stop the episode's encoder threads and delete its partial videos."""
        for cam in self._cameras.values():
            cam.error = cam.error or "cancelled"
            try:
                while True:
                    cam.frames.get_nowait()
            except queue.Empty:
                pass
            _end_queue(cam)
        for cam in self._cameras.values():
            cam.thread.join()
            shutil.rmtree(cam.path.parent, ignore_errors=True)
        self._cameras = {}

    def close(self) -> None:
        """Cancel an episode in progress (lerobot's ``finalize`` calls this; the encoder stays usable)."""
        if self._cameras:
            self.cancel_episode()

    # -- the encoder thread ------------------------------------------------------------------------
    def _encode(self, cam: _Camera) -> None:
        """Take frames off ``cam.frames`` until the sentinel; encode them into ``cam.path``."""
        import av
        from lerobot.datasets.compute_stats import auto_downsample_height_width

        logging.getLogger("libav").setLevel(logging.WARNING)  # the encoders' banners are INFO
        container: Any = None
        try:
            while True:
                frame = cam.frames.get()
                if frame is _DONE or cam.error:
                    break
                if container is None:
                    container, stream = self._open(cam.path, frame.shape[1], frame.shape[0])
                video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
                video_frame.pts = cam.encoded
                video_frame.time_base = Fraction(1, self.fps)
                for packet in stream.encode(video_frame):  # releases the GIL while encoding
                    container.mux(packet)
                if cam.encoded in self._sample_at or not self._sample_at:
                    cam.samples.append(np.ascontiguousarray(auto_downsample_height_width(frame.transpose(2, 0, 1))))
                cam.encoded += 1
            if container is not None and not cam.error:
                for packet in stream.encode():
                    container.mux(packet)
        except Exception as exc:  # noqa: BLE001 - reported by feed_frame / finish_episode
            cam.error = f"{type(exc).__name__}: {exc}"
        finally:
            if container is not None:
                container.close()

    def _open(self, path: Path, width: int, height: int) -> tuple[Any, Any]:
        """An mp4 container at ``path`` with one ``yuv420p`` video stream of ``width`` x ``height`` pixels."""
        import av

        container = av.open(str(path), "w")
        stream = container.add_stream(self.vcodec, self.fps, options=self.options)
        stream.pix_fmt = "yuv420p"
        stream.width, stream.height = width, height
        stream.time_base = Fraction(1, self.fps)
        return container, stream
