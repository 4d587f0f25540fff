"""OpenCV camera driver: video files replayed with file time, live-source behaviour through an injected
capture, open failures, GStreamer on a build without it, NAME=SOURCE parsing."""

from __future__ import annotations

import itertools
import time

import cv2
import numpy as np
import pytest

from sensors.drivers.camera import (
    MAX_CONSECUTIVE_FAILURES,
    VideoCameraSource,
    has_gstreamer,
    parse_camera_arg,
    source_kind,
    write_video,
)
from sensors.errors import ConfigError, SensorError

W, H = 64, 48
COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]  # RGB


def frames(n: int) -> list[np.ndarray]:
    return [np.full((H, W, 3), COLOURS[i % len(COLOURS)], np.uint8) for i in range(n)]


@pytest.mark.parametrize("suffix", [".avi", ".mp4"])
def test_video_file_frames_stamps_and_colours(tmp_path, suffix):
    path = tmp_path / f"FV{suffix}"
    assert write_video(path, frames(12), fps=25.0) == 12
    start = 5_000_000_000
    with VideoCameraSource("FV", str(path), start_ns=start) as cam:
        images = list(cam)
        assert cam.frames_read == 12 and cam.frames_dropped == 0
    assert len(images) == 12
    stamps = [im.stamp_ns for im in images]
    assert stamps == [start + k * 40_000_000 for k in range(12)]  # file time at 25 fps, deterministic
    for k, im in enumerate(images):
        assert im.camera == "FV" and im.jpeg is None
        assert im.rgb.shape == (H, W, 3) and im.rgb.dtype == np.uint8
        # RGB order in memory: the dominant channel is the one written.
        assert np.abs(im.rgb.mean(axis=(0, 1)) - COLOURS[k % len(COLOURS)]).max() < 30


def test_replay_is_deterministic_and_realtime_paces(tmp_path):
    path = tmp_path / "RV.avi"
    write_video(path, frames(6), fps=25.0)
    with VideoCameraSource("RV", str(path)) as cam:
        first = [im.stamp_ns for im in cam]
    t0 = time.monotonic()
    with VideoCameraSource("RV", str(path), realtime=True) as cam:
        second = [im.stamp_ns for im in cam]
    assert first == second
    assert time.monotonic() - t0 >= 5 * 0.040 * 0.9  # six frames span five frame periods


def test_a_file_standing_in_for_a_live_camera_is_stamped_from_when_it_is_read(tmp_path):
    path = tmp_path / "FV.avi"
    write_video(path, frames(3), fps=25.0)
    now = [7_000_000_000]
    cam = VideoCameraSource("FV", str(path), clock=lambda: now[0], start_ns=None)
    now[0] += 2_000_000_000  # opened, then a model loads for 2 s before the first frame is taken
    with cam:
        stamps = [im.stamp_ns for im in cam]
    assert stamps == [9_000_000_000 + k * 40_000_000 for k in range(3)]


def test_missing_file_and_wrong_size(tmp_path):
    with pytest.raises(SensorError, match=r"camera FV \(file .*nope\.mp4\): no such video file"):
        VideoCameraSource("FV", str(tmp_path / "nope.mp4"))
    path = tmp_path / "small.avi"
    write_video(path, frames(2))
    with pytest.raises(SensorError, match="delivers 64x48, expected 1280x966"):
        VideoCameraSource("FV", str(path), size=(1280, 966))
    bad = tmp_path / "garbage.mp4"
    bad.write_bytes(b"not a video at all" * 10)
    with pytest.raises(SensorError, match="cannot open"):
        VideoCameraSource("FV", str(bad))


@pytest.mark.skipif(has_gstreamer(), reason="this OpenCV build has GStreamer")
def test_gstreamer_pipeline_without_gstreamer_says_why():
    pipeline = "videotestsrc num-buffers=3 ! videoconvert ! appsink"
    assert source_kind(pipeline) == "gstreamer"
    with pytest.raises(SensorError, match=r"camera MVL \(gstreamer .*no GStreamer support"):
        VideoCameraSource("MVL", pipeline)


def test_source_kinds():
    assert source_kind(0) == "v4l2" and source_kind("/dev/video2") == "v4l2" and source_kind("3") == "v4l2"
    assert source_kind("clips/front.mp4") == "file"


class FakeCapture:
    """A live device: delivers the given frames (None = a failed grab), then stays silent."""

    def __init__(self, items):
        self.items = list(items)
        self.released = False

    def grab(self):
        if not self.items:
            return False
        self._current = self.items.pop(0)
        return self._current is not None

    def retrieve(self):
        return True, self._current

    def get(self, prop):
        return 0.0

    def isOpened(self):  # noqa: N802 - OpenCV's name
        return True

    def release(self):
        self.released = True


def test_live_source_stamps_at_grab_drops_bad_frames_and_fails_loudly():
    bgr = np.zeros((H, W, 3), np.uint8)
    odd = np.zeros((H // 2, W, 3), np.uint8)
    grey = np.zeros((H, W), np.uint8)
    items = [bgr, None, bgr, odd, grey, bgr]
    ticks = itertools.count(1_000, 1_000)
    fake = FakeCapture(items)
    cam = VideoCameraSource("MVR", "rtsp://mirror-right", clock=lambda: next(ticks), capture=fake)
    it = iter(cam)
    got = [next(it) for _ in range(3)]
    # A stamp per successful grab; the failed grab takes no clock reading, the dropped frames do.
    assert [im.stamp_ns for im in got] == [1_000, 2_000, 5_000]
    assert cam.frames_dropped == 3 and cam.frames_read == 3
    assert all(im.rgb.shape == (H, W, 3) for im in got)
    with pytest.raises(SensorError, match=rf"camera MVR .*{MAX_CONSECUTIVE_FAILURES} frames in a row failed"):
        next(it)
    cam.close()
    assert fake.released


def test_parse_camera_arg():
    assert parse_camera_arg("FV=/path/video.mp4") == ("FV", "/path/video.mp4")
    assert parse_camera_arg("RV=0") == ("RV", 0)
    pipe = "nvarguscamerasrc sensor-id=1 ! nvvidconv ! appsink"
    assert parse_camera_arg(f"MVL={pipe}", cameras=["FV", "RV", "MVL", "MVR"]) == ("MVL", pipe)
    for bad in ("FV", "=x.mp4", "FV="):
        with pytest.raises(ConfigError, match="NAME=SOURCE"):
            parse_camera_arg(bad)
    with pytest.raises(ConfigError, match="no camera 'XX'"):
        parse_camera_arg("XX=0", cameras=["FV"])


def test_write_video_refuses_unknown_suffix(tmp_path):
    with pytest.raises(SensorError, match="suffix"):
        write_video(tmp_path / "x.gif", frames(1))


def test_opencv_can_write_both_containers(tmp_path):
    # The helper's promise: the pip build writes MJPG .avi and mp4v .mp4 (checked here, not assumed).
    for suffix, fourcc in ((".avi", "MJPG"), (".mp4", "mp4v")):
        w = cv2.VideoWriter(str(tmp_path / f"probe{suffix}"), cv2.VideoWriter_fourcc(*fourcc), 10.0, (W, H))
        assert w.isOpened()
        w.release()
