"""Random access to the frames of a recorded drive for the viewer: one light pass indexes the frame stamps, then
any frame is decoded on demand by replaying from just before it; a few decoded frames are cached. Qt-free."""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deploy.results import TOPICS as RESULTS_TOPICS
from sensors.errors import ConfigError, LogFormatError
from sensors.log import LogDamage, LogReader
from sensors.messages import Frame
from sensors.replay import replay_frames
from sensors.rig import Rig

log = logging.getLogger(__name__)

CACHE_FRAMES = 8  # decoded frames kept for stepping back and forth; bounded whatever the drive's length


@dataclass(frozen=True)
class FrameEntry:
    """What the index keeps of a frame: enough for the timeline, nothing decoded."""

    stamp_ns: int
    conditions: tuple[str, ...]
    degraded: tuple[str, ...]
    has_truth: bool


def results_log_message(path: Path, metadata: dict[str, str]) -> str:
    """What to say when PATH is the results log of `nearfield run` (its maps and sectors, no sensor data) rather
    than a drive log: which model over which drive it holds, and how to view that (its metadata names both)."""
    model, source = metadata.get("model"), metadata.get("source")
    what = f"{model or 'a model'} over {source or 'a drive log'}"
    how = (f"open {source or 'that drive log'} with --model {model}" if model
           else f"open {source or 'the drive log it was made from'} with the model's --model")
    return f"{path} is a results log of {what}, not a drive log; {how}"


class FrameSource:
    """A drive log opened for viewing. Not thread-safe: the viewer's worker thread owns it.

    Opening reads every message once without decoding images (the frame index); `frame(k)` replays from a
    little before frame k (the synchroniser needs the ultrasonic cycle and the neighbouring images), so a seek
    costs one chunk or two, and stepping forward continues the open replay.
    """

    def __init__(self, path: str | Path, cache_frames: int = CACHE_FRAMES):
        self.path = Path(path)
        t0 = time.perf_counter()
        self.reader = LogReader(self.path)
        try:
            self.rig: Rig = self.reader.rig  # LogFormatError when the log has no usable rig/calibration
            entries = [FrameEntry(f.stamp_ns, tuple(f.conditions), tuple(f.degraded), f.truth is not None)
                       for f in replay_frames(self.path, decode=False, reader=self.reader)]
        except BaseException:
            self.reader.close()
            raise
        if not entries:
            self.reader.close()
            if set(self.reader.topics) & set(RESULTS_TOPICS):
                raise LogFormatError(results_log_message(self.path, self.reader.metadata))
            damage = f" ({self.reader.damages[0]})" if self.reader.damages else ""
            raise LogFormatError(f"{self.path}: no complete frame in the log{damage}; check it with "
                                 f"`nearfield info {self.path}`")
        self.entries = entries
        self.stamps = np.array([e.stamp_ns for e in entries], np.int64)
        self.metadata = dict(self.reader.metadata)
        self._cache: OrderedDict[tuple[int, int], Frame] = OrderedDict()
        self._cache_frames = cache_frames
        self._stream: Iterator[Frame] | None = None
        self._stream_next: tuple[int, int] | None = None  # (frame index, scale) the open replay yields next
        log.info("%s: %d frames indexed in %.2f s", self.path, len(entries), time.perf_counter() - t0)

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def damages(self) -> list[LogDamage]:
        """Where the log is damaged (truncated, corrupt chunks); every readable frame is still indexed."""
        return list(self.reader.damages)

    @property
    def period_ns(self) -> int:
        """The median interval between frames (100 ms for a simulated drive)."""
        return int(np.median(np.diff(self.stamps))) if len(self.stamps) > 1 else 100_000_000

    def time_s(self, k: int) -> float:
        """Seconds of frame k from the first frame."""
        return float(self.stamps[k] - self.stamps[0]) / 1e9

    def index_at(self, seconds: float) -> int:
        """The frame nearest `seconds` after the first frame (clamped to the drive)."""
        target = self.stamps[0] + round(seconds * 1e9)
        i = int(np.searchsorted(self.stamps, target))
        if i >= len(self.stamps):
            return len(self.stamps) - 1
        if i > 0 and target - self.stamps[i - 1] <= self.stamps[i] - target:
            return i - 1
        return i

    def frame(self, k: int, scale: int = 1) -> Frame:
        """Frame k with its images decoded at 1/scale of their size (cached; do not modify it)."""
        if not 0 <= k < len(self.entries):
            raise ConfigError(f"{self.path}: frame {k} is outside the drive (0..{len(self.entries) - 1})")
        key = (k, scale)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        if self._stream_next != key:
            self._open_stream(k, scale)
        frame = self._next_matching(k, scale)
        self._cache[key] = frame
        while len(self._cache) > self._cache_frames:
            self._cache.popitem(last=False)
        return frame

    def _open_stream(self, k: int, scale: int) -> None:
        if self._stream is not None:
            self._stream.close()
        sync = self.rig.sync
        # From one ultrasonic age and a camera tolerance before the frame: its cycle and all its images are in.
        start = int(self.stamps[k]) - sync.uss_max_age_ns - sync.camera_tolerance_ns
        self._stream = replay_frames(self.path, decode=True, start_ns=start, reader=self.reader, decode_scale=scale)
        self._stream_next = (k, scale)

    def _next_matching(self, k: int, scale: int) -> Frame:
        tol = self.rig.sync.camera_tolerance_ns
        target = int(self.stamps[k])
        assert self._stream is not None
        for frame in self._stream:
            if frame.stamp_ns < target - tol:
                continue  # a partial frame from before the seek point
            if frame.stamp_ns > target + tol:
                break
            frame.index = k
            # Labels hold until the next condition message, which may lie before the seek point: the index has them.
            if not frame.conditions:
                frame.conditions = list(self.entries[k].conditions)
            self._stream_next = (k + 1, scale) if k + 1 < len(self.entries) else None
            return frame
        self._stream_next = None
        raise LogFormatError(f"{self.path}: frame {k} at {target} ns could not be read back (the log changed on "
                             "disk, or its chunks do not decode); reopen it")

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None
        self._cache.clear()
        self.reader.close()


def display_scale(rig: Rig, min_width: int = 320) -> int:
    """The JPEG decode reduction (1, 2, 4, 8) that keeps camera images at least `min_width` pixels wide: enough
    for a viewer panel, several times cheaper than decoding in full."""
    width = min(c.width for c in rig.cameras.values())
    for s in (8, 4, 2):
        if width // s >= min_width:
            return s
    return 1
