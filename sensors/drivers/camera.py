"""Cameras through OpenCV VideoCapture: a video file, a V4L2 device or a GStreamer pipeline, each producing
timestamped RGB CameraImages for one named rig camera.

On a Jetson the CSI/GMSL cameras are read through GStreamer (needs an OpenCV built with GStreamer, as JetPack's
python3-opencv is; the pip wheels are not), e.g. for the front camera:

    nvarguscamerasrc sensor-id=0 ! video/x-raw(memory:NVMM),width=1280,height=966,framerate=30/1 !
    nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR ! appsink drop=true max-buffers=1

`drop=true max-buffers=1` keeps the newest frame instead of a growing queue, so a slow consumer sees fresh
images with honest timestamps rather than old ones.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import cv2
import numpy as np

from sensors.errors import ConfigError, SensorError
from sensors.messages import CameraImage

log = logging.getLogger(__name__)

# Consecutive failed reads from a live device before it counts as gone (at 30 fps about a second).
MAX_CONSECUTIVE_FAILURES = 30
_FOURCC_BY_SUFFIX = {".avi": "MJPG", ".mp4": "mp4v"}


def has_gstreamer() -> bool:
    """Whether this OpenCV build can open GStreamer pipelines."""
    match = re.search(r"GStreamer:\s*(\w+)", cv2.getBuildInformation())
    return bool(match) and match.group(1).upper() == "YES"


def source_kind(source: str | int) -> str:
    """'v4l2', 'gstreamer' or 'file'."""
    if isinstance(source, int) or re.fullmatch(r"/dev/video\d+|\d+", str(source)):
        return "v4l2"
    return "gstreamer" if "!" in source else "file"


class VideoCameraSource:
    """Iterator of CameraImages (rgb set, jpeg None) from one capture source; a context manager.

    Files replay deterministically: stamps are `start_ns` + the frame's time in the file (CAP_PROP_POS_MSEC),
    and `realtime=True` paces them at that rate from when iteration starts. start_ns None (a file standing in for a
    live camera): `clock` when iteration starts, so that the first frame is fresh however long ago the source was
    opened. Live sources (V4L2, GStreamer) are stamped with `clock` at grab time; `fps` and `size` (width, height)
    are requested from the device and checked. A frame of another size than expected (the requested one, else the
    first frame's) is dropped and counted in `frames_dropped`.
    `capture`: an already opened cv2.VideoCapture (e.g. an RTSP stream through CAP_FFMPEG) read as a live
    source instead of opening `source`, which then only names it.
    """

    def __init__(self, camera: str, source: str | int, clock: Callable[[], int] = time.monotonic_ns,
                 fps: float | None = None, size: tuple[int, int] | None = None, realtime: bool = False,
                 start_ns: int | None = 0, capture=None):
        self.camera, self.source, self.clock = camera, source, clock
        self.kind = source_kind(source) if capture is None else "live"
        self.realtime, self.start_ns = realtime, start_ns
        self.frames_read = 0
        self.frames_dropped = 0
        self.name = f"camera {camera} ({self.kind} {source})"
        self._cap = self._open(fps, size) if capture is None else capture
        self.fps = self._cap.get(cv2.CAP_PROP_FPS) or fps or 0.0
        self.size = tuple(size) if size is not None else None
        if self.kind in ("file", "v4l2") and size is not None:
            # Files have their size; V4L2 drivers silently fall back to a mode they support. Say so now.
            actual = (int(self._cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(self._cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
            if actual != self.size:
                self.close()
                raise SensorError(f"{self.name}: delivers {actual[0]}x{actual[1]}, expected {size[0]}x{size[1]}; "
                                  "resample the video, pick a mode the device supports, or pass its size")

    def _open(self, fps: float | None, size: tuple[int, int] | None) -> cv2.VideoCapture:
        if self.kind == "gstreamer":
            if not has_gstreamer():
                raise SensorError(f"{self.name}: this OpenCV build has no GStreamer support "
                                  "(cv2.getBuildInformation() says GStreamer: NO); use an OpenCV built with "
                                  "GStreamer (JetPack's python3-opencv) or a V4L2 device / video file")
            cap = cv2.VideoCapture(str(self.source), cv2.CAP_GSTREAMER)
        elif self.kind == "v4l2":
            device = self.source if isinstance(self.source, int) else str(self.source)
            if isinstance(device, str) and device.isdigit():
                device = int(device)
            cap = cv2.VideoCapture(device, cv2.CAP_V4L2)
            if size is not None:
                cap.set(cv2.CAP_PROP_FRAME_WIDTH, size[0])
                cap.set(cv2.CAP_PROP_FRAME_HEIGHT, size[1])
            if fps is not None:
                cap.set(cv2.CAP_PROP_FPS, fps)
        else:
            if not Path(self.source).is_file():
                raise SensorError(f"{self.name}: no such video file")
            cap = cv2.VideoCapture(str(self.source))
        if not cap.isOpened():
            cap.release()
            raise SensorError(f"{self.name}: cannot open (device busy or missing, pipeline invalid, or a format "
                              "this OpenCV build cannot decode)")
        return cap

    def __iter__(self) -> Iterator[CameraImage]:
        if self._cap is None:
            raise SensorError(f"{self.name}: source is closed")
        return self._files() if self.kind == "file" else self._live()

    def _files(self) -> Iterator[CameraImage]:
        t_wall0 = time.monotonic_ns()
        start = self.clock() if self.start_ns is None else self.start_ns
        last_ns = None
        index = 0
        while self._cap is not None and self._cap.isOpened():
            if not self._cap.grab():
                break  # end of file
            ok, bgr = self._cap.retrieve()
            pos_ms = self._cap.get(cv2.CAP_PROP_POS_MSEC)
            index += 1
            # Some containers carry no usable time stamps (0 or negative); fall back to frame count / rate.
            offset_ns = round(pos_ms * 1e6) if pos_ms > 0 or index == 1 else None
            if offset_ns is None and self.fps:
                offset_ns = round((index - 1) * 1e9 / self.fps)
            stamp = start + (offset_ns or 0)
            if last_ns is not None and stamp <= last_ns:
                log.warning("%s: frame %d time %d ns does not advance; dropped", self.name, index, stamp)
                self.frames_dropped += 1
                continue
            image = self._image(ok, bgr, stamp, index)
            if image is None:
                continue
            last_ns = stamp
            if self.realtime:
                delay = (stamp - start) - (time.monotonic_ns() - t_wall0)
                if delay > 0:
                    time.sleep(delay / 1e9)
            yield image
        total = int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT)) if self._cap is not None else 0
        if total and index < total:
            log.warning("%s: stopped at frame %d of %d (file truncated or undecodable)", self.name, index, total)

    def _live(self) -> Iterator[CameraImage]:
        failures = 0
        index = 0
        while self._cap is not None:
            image = None
            if self._cap.grab():
                stamp = self.clock()  # at grab: retrieve() decodes, which must not delay the time stamp
                ok, bgr = self._cap.retrieve()
                index += 1
                image = self._image(ok, bgr, stamp, index)
            else:
                self.frames_dropped += 1
            if image is not None:
                failures = 0
                yield image
                continue
            failures += 1
            if failures >= MAX_CONSECUTIVE_FAILURES:
                raise SensorError(f"{self.name}: {failures} frames in a row failed after {self.frames_read} good "
                                  "ones; camera disconnected or pipeline stalled")

    def _image(self, ok: bool, bgr: np.ndarray | None, stamp: int, index: int) -> CameraImage | None:
        """The RGB image, or None (counted, logged) for a frame that did not decode or has the wrong shape."""
        if not ok or bgr is None or bgr.ndim != 3 or bgr.shape[2] != 3 or bgr.dtype != np.uint8:
            self.frames_dropped += 1
            log.warning("%s: frame %d at %d ns did not decode to a colour image; dropped", self.name, index, stamp)
            return None
        got = (bgr.shape[1], bgr.shape[0])
        if self.size is None:
            self.size = got
        elif got != tuple(self.size):
            self.frames_dropped += 1
            log.warning("%s: frame %d at %d ns is %dx%d, expected %dx%d; dropped", self.name, index, stamp, *got,
                        *self.size)
            return None
        self.frames_read += 1
        return CameraImage(self.camera, stamp, jpeg=None, rgb=cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None

    def __enter__(self) -> VideoCameraSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def parse_camera_arg(arg: str, cameras: Iterable[str] | None = None) -> tuple[str, str | int]:
    """'FV=/path/video.mp4' -> ('FV', '/path/video.mp4'); 'RV=0' -> ('RV', 0) (V4L2 index). Only the first '='
    splits, so GStreamer pipelines with properties (`sensor-id=0`) pass through whole."""
    name, sep, source = arg.partition("=")
    name, source = name.strip(), source.strip()
    if not sep or not name or not source:
        raise ConfigError(f"camera argument {arg!r}: expected NAME=SOURCE, e.g. FV=front.mp4, FV=/dev/video0, "
                          "FV=0 or FV='nvarguscamerasrc ... ! appsink'")
    if cameras is not None and name not in set(cameras):
        raise ConfigError(f"camera argument {arg!r}: no camera {name!r} in the rig ({', '.join(cameras)})")
    return name, int(source) if source.isdigit() else source


def write_video(path: str | Path, frames: Iterable[np.ndarray], fps: float = 30.0) -> int:
    """Write RGB uint8 frames as a video (.avi: Motion-JPEG, .mp4: MPEG-4 part 2, both in the pip OpenCV
    builds); returns the frame count. Meant for tests and demos."""
    path = Path(path)
    fourcc = _FOURCC_BY_SUFFIX.get(path.suffix.lower())
    if fourcc is None:
        raise SensorError(f"{path}: cannot write video with suffix {path.suffix!r}; use .avi or .mp4")
    writer = None
    count = 0
    try:
        for rgb in frames:
            if writer is None:
                h, w = rgb.shape[:2]
                writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), float(fps), (w, h))
                if not writer.isOpened():
                    raise SensorError(f"{path}: this OpenCV build cannot write {fourcc} video")
            writer.write(cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR))
            count += 1
    finally:
        if writer is not None:
            writer.release()
    return count
