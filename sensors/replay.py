"""Replay a recorded drive as `Frame`s: log reader → synchroniser → JPEG decode, paced in real time or not."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from sensors.errors import ConfigError, SensorError
from sensors.imaging import decode_jpeg, decoded_sizes, encoded_size
from sensors.messages import CameraImage, Frame, GroundTruth, Odometry, UssCycle
from sensors.rig import Rig
from sensors.sync import Synchroniser

SPEED_RANGE = (0.25, 4.0)


class Pacer:
    """Sleeps so that log time advances at `speed` × wall time; speed None runs as fast as possible."""

    def __init__(self, speed: float | None, clock=time.monotonic, sleep=time.sleep):
        if speed is not None and not (SPEED_RANGE[0] <= speed <= SPEED_RANGE[1]):
            raise ConfigError(f"playback speed {speed} is outside {SPEED_RANGE[0]}–{SPEED_RANGE[1]}×")
        self.speed = speed
        self._clock, self._sleep = clock, sleep
        self._origin: tuple[float, int] | None = None

    def wait(self, stamp_ns: int) -> None:
        if self.speed is None:
            return
        now = self._clock()
        if self._origin is None or stamp_ns < self._origin[1]:
            self._origin = (now, stamp_ns)
            return
        due = self._origin[0] + (stamp_ns - self._origin[1]) / 1e9 / self.speed
        if due > now:
            self._sleep(due - now)

    def reset(self) -> None:
        self._origin = None


_decoder_pool: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    # OpenCV releases the GIL while decoding, so the four images of a frame decode in parallel.
    global _decoder_pool
    if _decoder_pool is None:
        _decoder_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="jpeg")
    return _decoder_pool


def decode_frame(frame: Frame, scale: int = 1, rig: Rig | None = None) -> Frame:
    """Decode every camera image of a frame in place (at 1/scale of the size); a corrupt image leaves its slot
    None and flags the frame degraded. With the RIG, so does an image of another size than its camera's calibration
    (stretched to the network's size it would put every feature in the wrong BEV cell)."""
    todo = [(cam, im) for cam, im in frame.images.items() if im is not None and im.rgb is None]

    def work(item):
        cam, im = item
        try:
            return decode_jpeg(im.jpeg or b"", f"/camera/{cam}/image at {im.stamp_ns} ns", scale)
        except SensorError:
            return None

    results = list(_pool().map(work, todo)) if len(todo) > 1 else [work(t) for t in todo]
    for (cam, im), rgb in zip(todo, results, strict=True):
        wrong = None if rgb is None or rig is None else wrong_size(cam, im, rgb, rig, scale)
        if rgb is None or wrong:
            frame.images[cam] = None
            frame.degraded.append(wrong or f"camera {cam} corrupt image")
        else:
            im.rgb = rgb
    return frame


def wrong_size(camera: str, image: CameraImage, rgb: np.ndarray, rig: Rig, scale: int = 1) -> str | None:
    """The degraded reason for RGB (IMAGE decoded at 1/scale) when it is not its calibration's size, else None."""
    cal = rig.cameras.get(camera)
    if cal is None or (rgb.shape[1], rgb.shape[0]) in decoded_sizes(cal.width, cal.height, scale):
        return None
    w, h = encoded_size(image.jpeg or b"") or (rgb.shape[1] * scale, rgb.shape[0] * scale)
    return f"camera {camera} wrong size {w}x{h}, calibration says {cal.width}x{cal.height}"


def replay_frames(path: str | Path, speed: float | None = None, decode: bool = True, start_ns: int | None = None,
                  strict: bool = False, reader=None, decode_scale: int = 1) -> Iterator[Frame]:
    """Frames of a recorded drive, in time order. `reader` may be an open LogReader (its damage report stays
    available to the caller); decode_scale 2 or 4 decodes the images at reduced size."""
    from sensors.log import ConditionRecord, LogReader

    own = reader is None
    reader = reader or LogReader(path, strict=strict)
    pacer = Pacer(speed)
    sync = Synchroniser(reader.rig)
    try:
        stream = reader.seek(start_ns) if start_ns is not None else reader.messages()
        for msg in stream:
            v = msg.value
            if isinstance(v, CameraImage):
                sync.push_image(v)
            elif isinstance(v, UssCycle):
                sync.push_uss(v)
            elif isinstance(v, Odometry):
                sync.push_odometry(v)
            elif isinstance(v, GroundTruth):
                sync.push_truth(v)
            elif isinstance(v, ConditionRecord):
                sync.push_condition(v.stamp_ns, v.labels)
            elif msg.topic == "/gt/objects":
                sync.push_objects(msg.stamp_ns, v)
            for frame in sync.pop_frames():
                pacer.wait(frame.stamp_ns)
                yield decode_frame(frame, decode_scale, reader.rig) if decode else frame
        for frame in sync.flush():
            pacer.wait(frame.stamp_ns)
            yield decode_frame(frame, decode_scale, reader.rig) if decode else frame
    finally:
        if own:
            reader.close()
