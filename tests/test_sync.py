import math

import numpy as np
import pytest

from sensors.errors import ConfigError
from sensors.geometry import Pose2D
from sensors.messages import CameraImage, GroundTruth, Odometry, UssCycle, UssStatus
from sensors.replay import Pacer
from sensors.sync import ODOMETRY_MAX_GAP_NS, Synchroniser, synchronise

MS = 1_000_000
CAMS = ("FV", "RV", "MVL", "MVR")


def _cycle(t, status=None):
    return UssCycle(t, 0, [0], [0], [1.0], [0.5], status or {})


def _stream(n=10, period=100 * MS, jitter=(0, 2, -3, 4), uss_offset=15 * MS, skip=()):
    msgs = []
    for k in range(n):
        t = 1_000 * MS + k * period
        for cam, j in zip(CAMS, jitter, strict=True):
            if (k, cam) not in skip:
                msgs.append(("image", CameraImage(cam, t + j * MS, b"x")))
        msgs.append(("uss", _cycle(t + uss_offset)))
        msgs.append(("condition", (t, ["night"])))
        msgs.append(("truth", GroundTruth(t, np.zeros((2, 2), np.uint8), 0.1)))
    msgs.sort(key=lambda m: m[1].stamp_ns if hasattr(m[1], "stamp_ns") else m[1][0])
    return msgs


def _run(rig, msgs):
    """Push camera images, USS cycles and odometry through a fresh synchroniser; return it and every frame it made."""
    sync = Synchroniser(rig)
    frames = []
    for kind, v in msgs:
        if kind == "image":
            sync.push_image(v)
        elif kind == "uss":
            sync.push_uss(v)
        elif kind == "odometry":
            sync.push_odometry(v)
        frames += sync.pop_frames()
    return sync, frames + sync.flush()


def test_complete_frames(rig):
    frames = list(synchronise(rig, _stream()))
    assert len(frames) == 10
    for k, f in enumerate(frames):
        assert f.index == k
        assert not f.degraded
        assert set(f.images) == set(CAMS) and all(f.images.values())
        assert f.stamp_ns == 1_000 * MS + k * 100 * MS - 3 * MS  # anchored on the earliest image (MVL, -3 ms)
        # The USS cycle of the previous period: the current one (stamp +15 ms) is beyond the camera tolerance... or
        # within it: +15 ms after the anchor at -3 ms is 18 ms, inside the 20 ms tolerance.
        assert f.uss.stamp_ns == 1_000 * MS + k * 100 * MS + 15 * MS
        assert f.conditions == ["night"]
        assert f.truth is not None and f.truth.stamp_ns == 1_000 * MS + k * 100 * MS


def test_missing_camera_gives_degraded_frame_not_a_gap(rig):
    frames = list(synchronise(rig, _stream(skip={(3, "RV"), (4, "RV"), (5, "RV")})))
    assert len(frames) == 10
    for k, f in enumerate(frames):
        if k in (3, 4, 5):
            assert f.images["RV"] is None and "camera RV missing" in f.degraded
        else:
            assert not f.degraded


def test_camera_that_stops_for_good(rig):
    skip = {(k, "MVR") for k in range(4, 10)}
    sync = Synchroniser(rig)
    out = []
    for kind, v in _stream(skip=skip):
        getattr(sync, "push_" + {"image": "image", "uss": "uss"}.get(kind, kind))(*(
            (v,) if kind in ("image", "uss", "truth") else v))
        out += sync.pop_frames()
    out += sync.flush()
    assert len(out) == 10
    assert sync.stats.missing["camera MVR"] == 6
    assert sync.stats.degraded_frames == 6


def test_uss_missing_and_sensor_faults_flagged(rig):
    msgs = [m for m in _stream() if m[0] != "uss" or m[1].stamp_ns < 1_300 * MS]
    msgs.append(("uss", _cycle(1_500 * MS, {0: UssStatus.NO_RESPONSE, 3: UssStatus.BLOCKED, 4: UssStatus.OK})))
    msgs.sort(key=lambda m: m[1].stamp_ns if hasattr(m[1], "stamp_ns") else m[1][0])
    frames = list(synchronise(rig, msgs))
    by_k = {round((f.stamp_ns + 3 * MS - 1_000 * MS) / (100 * MS)): f for f in frames}
    assert by_k[2].uss is not None and not by_k[2].degraded
    assert by_k[3].uss.stamp_ns == 1_215 * MS and not by_k[3].degraded
    # 150 ms max age: the 1215 ms cycle serves 1297 ms, not 1397 ms.
    assert by_k[4].uss is None and "uss missing" in by_k[4].degraded
    assert "uss FSL no response" in by_k[5].degraded and "uss FIR blocked" in by_k[5].degraded
    assert not any("FOR" in d for d in by_k[5].degraded)


def test_out_of_order_within_window_and_duplicates(rig):
    msgs = _stream(n=5)
    # Swap neighbours (small reordering inside a frame) and duplicate one image.
    msgs[0], msgs[1] = msgs[1], msgs[0]
    dup = next(m for m in msgs if m[0] == "image")
    msgs.insert(6, dup)
    sync = Synchroniser(rig)
    frames = list(synchronise(rig, msgs))
    assert len(frames) == 5 and not any(f.degraded for f in frames)
    # Count duplicates on a dedicated synchroniser.
    for kind, v in msgs:
        if kind == "image":
            sync.push_image(v)
    assert sync.stats.duplicates == 1


def test_late_message_is_counted_and_dropped(rig):
    sync, frames = _run(rig, _stream(n=6))
    assert len(frames) == 6
    before = sync.stats.frames
    sync.push_image(CameraImage("FV", 1_050 * MS, b"late"))  # 450 ms behind the stream, never seen before
    sync.push_image(CameraImage("RV", 1_150 * MS, b"late"))
    assert sync.stats.late == 2 and sync.stats.duplicates == 0
    assert sync.flush() == [] and sync.stats.frames == before  # dropped: no frame was made from them


def test_rate_mismatch_decimates_the_faster_camera(rig):
    msgs = []
    for k in range(30):  # FV at 30 Hz, the others at 10 Hz, for one second
        t = 1_000 * MS + k * 33_333_333
        msgs.append(("image", CameraImage("FV", t, b"x")))
        if k % 3 == 0:
            for cam in CAMS[1:]:
                msgs.append(("image", CameraImage(cam, t + MS, b"x")))
            msgs.append(("uss", _cycle(t + 5 * MS)))
    sync = Synchroniser(rig)
    frames = []
    for kind, v in msgs:
        (sync.push_image if kind == "image" else sync.push_uss)(v)
        frames += sync.pop_frames()
    frames += sync.flush()
    complete = [f for f in frames if not f.degraded]
    assert len(complete) == 10
    assert sync.stats.rate_excess >= 15  # the 20 extra FV images (a couple before the rate is known may differ)
    assert len(frames) - len(complete) <= 2


def test_clock_jump_back_is_counted_and_stream_continues(rig):
    first = _stream(n=3)
    second = [(k, v) for k, v in _stream(n=3)]
    # The second part restarts the clock 10 s earlier.
    shifted = []
    for kind, v in second:
        if hasattr(v, "stamp_ns"):
            v.stamp_ns -= 10_000 * MS - 2_000 * MS
            shifted.append((kind, v))
    sync, frames = _run(rig, first + shifted)
    assert sync.stats.clock_jumps == 1
    assert len(frames) == 6
    assert [f.index for f in frames] == list(range(6))


def test_pacer_speed_and_range():
    now = [0.0]
    slept = []

    def sleep(s):
        slept.append(s)
        now[0] += s

    p = Pacer(2.0, clock=lambda: now[0], sleep=sleep)
    p.wait(0)
    p.wait(1_000 * MS)  # one second of log at 2x = 0.5 s of wall time
    assert slept == [pytest.approx(0.5)]
    fast = Pacer(None, clock=lambda: now[0], sleep=sleep)
    fast.wait(0)
    fast.wait(10_000 * MS)
    assert len(slept) == 1
    for bad in (0.1, 5.0):
        with pytest.raises(ConfigError):
            Pacer(bad)


def test_invalid_echoes_are_dropped_counted_and_flagged(rig):
    msgs = _stream(n=3)
    bad = UssCycle(1_100 * MS + 15 * MS, 1, [0, 1, 2, 3, 99, 4], [0, 1, 2, 3, 4, 42],
                   [1.0, float("nan"), -0.5, 1e6, 1.0, 2.0], [0.5, 0.5, 0.5, 0.5, 0.5, 0.5])
    msgs = [m for m in msgs if not (m[0] == "uss" and m[1].stamp_ns == bad.stamp_ns)] + [("uss", bad)]
    msgs.sort(key=lambda m: m[1].stamp_ns if hasattr(m[1], "stamp_ns") else m[1][0])
    sync, frames = _run(rig, msgs)
    assert sync.stats.bad_echoes == 5
    f = frames[1]
    assert f.uss.num_echoes == 1 and f.uss.distance.tolist() == [1.0]
    assert "uss 5 invalid echoes dropped" in f.degraded
    assert not frames[0].degraded and not frames[2].degraded


def test_invalid_echoes_are_logged_once_and_counted_always(rig, caplog):
    """A sensor gone bad sends invalid echoes every cycle: one warning, not one a cycle; every frame still says it."""
    import logging

    msgs = []
    for m in _stream(n=4):
        if m[0] == "uss":
            c = m[1]
            m = ("uss", UssCycle(c.stamp_ns, c.cycle, [0, 0], [0, 0], [1.0, float("nan")], [0.5, 0.5]))
        msgs.append(m)
    with caplog.at_level(logging.WARNING, logger="sensors.sync"):
        sync, frames = _run(rig, msgs)
    warned = [r for r in caplog.records if "invalid echoes" in r.getMessage()]
    assert len(warned) == 1 and "later ones are counted" in warned[0].getMessage()
    assert sync.stats.bad_echoes == len(frames) >= 3
    assert all("uss 1 invalid echoes dropped" in f.degraded for f in frames)


def test_corrupt_jpeg_flags_the_frame(rig):
    from sensors.imaging import encode_jpeg
    from sensors.messages import Frame
    from sensors.replay import decode_frame

    good = encode_jpeg(np.full((8, 8, 3), 100, np.uint8))
    images = {c: CameraImage(c, 0, good) for c in CAMS}
    images["RV"] = CameraImage("RV", 0, good[: len(good) // 3])
    images["MVL"] = CameraImage("MVL", 0, b"\xff\xd8 not a jpeg")
    f = decode_frame(Frame(0, 0, images, None))
    assert f.images["RV"] is None and f.images["MVL"] is None
    assert f.images["FV"].rgb.shape == (8, 8, 3)
    assert sorted(f.degraded) == ["camera MVL corrupt image", "camera RV corrupt image"]


def test_an_image_of_the_wrong_size_is_flagged_and_left_out(rig):
    """Against the calibration at the decode reduction: half size decoded in full looks like a correct image
    decoded at half size, and only the reduction tells them apart."""
    from sensors.imaging import encode_jpeg
    from sensors.messages import Frame
    from sensors.replay import decode_frame

    small = rig.scaled(0.25)  # 320 x 242

    def frame(sizes):
        return Frame(0, 0, {c: CameraImage(c, 0, encode_jpeg(np.zeros((h, w, 3), np.uint8)))
                            for c, (w, h) in zip(CAMS, sizes, strict=True)}, None)

    f = decode_frame(frame([(320, 242), (160, 121), (640, 484), (242, 320)]), 1, small)
    assert f.images["FV"].rgb.shape == (242, 320, 3) and [f.images[c] for c in CAMS[1:]] == [None] * 3
    assert f.degraded == ["camera RV wrong size 160x121, calibration says 320x242",
                          "camera MVL wrong size 640x484, calibration says 320x242",
                          "camera MVR wrong size 242x320, calibration says 320x242"]
    f = decode_frame(frame([(320, 242), (160, 121), (640, 484), (242, 320)]), 2, small)
    assert f.images["FV"].rgb.shape == (121, 160, 3) and [f.images[c] for c in CAMS[1:]] == [None] * 3
    assert f.degraded[0] == "camera RV wrong size 160x121, calibration says 320x242"  # 80 x 61 decoded
    f = decode_frame(frame([(320, 242)] * 4), 1)  # no rig: not checked (live images come checked by their driver)
    assert not f.degraded


def test_the_preprocessor_leaves_out_an_image_no_decode_reduction_explains(rig):
    from perception.bev_config import BevConfig
    from perception.preprocess import FramePreprocessor
    from sensors.messages import Frame

    small = rig.scaled(0.25)
    prep = FramePreprocessor(small, BevConfig(cell=0.4, image_size=(128, 96)))
    shapes = {"FV": (242, 320), "RV": (121, 160), "MVL": (320, 242), "MVR": (100, 100)}
    f = Frame(0, 0, {c: CameraImage(c, 0, rgb=np.full((*s, 3), 7, np.uint8)) for c, s in shapes.items()}, None)
    images, present = prep.images(f)
    assert dict(zip(prep.cameras, present.tolist(), strict=True)) == {"FV": True, "RV": True, "MVL": False,
                                                                      "MVR": False}
    assert sorted(f.degraded) == ["camera MVL wrong size 242x320, calibration says 320x242",
                                  "camera MVR wrong size 100x100, calibration says 320x242"]
    assert not images[list(prep.cameras).index("MVL")].any()  # blank, as for a missing camera; not stretched


# --- cameras silent: the ultrasonics go on ------------------------------------------------------------------------

def test_without_any_camera_the_ultrasonic_cycles_anchor_the_frames(rig):
    msgs = [m for m in _stream() if m[0] != "image"]
    frames = list(synchronise(rig, msgs))
    assert [f.stamp_ns for f in frames] == [1_015 * MS + k * 100 * MS for k in range(10)]
    for f in frames:
        assert f.uss is not None and f.uss.stamp_ns == f.stamp_ns
        assert all(v is None for v in f.images.values())
        assert f.degraded == [f"camera {c} missing" for c in rig.cameras]
    assert frames[0].truth.stamp_ns == 1_000 * MS and frames[3].conditions == ["night"]  # passed through as ever


def test_cameras_that_all_fail_leave_the_ultrasonics_going(rig):
    skip = {(k, c) for k in range(4, 8) for c in CAMS}
    frames = list(synchronise(rig, _stream(n=12, skip=skip)))
    camera = [round((f.stamp_ns - 1_000 * MS) / MS) for f in frames if any(f.images.values())]
    alone = [round((f.stamp_ns - 1_000 * MS) / MS) for f in frames if not any(f.images.values())]
    assert camera == [-3, 97, 197, 297, 797, 897, 997, 1097]
    # Cycles more than the silent span (tolerance + 1.5 frame periods) from any image anchor frames of their own.
    assert alone == [515, 615]
    assert [f.index for f in frames] == list(range(len(frames))) and sorted(f.stamp_ns for f in frames) == [
        f.stamp_ns for f in frames]
    assert all(not f.degraded for f in frames if any(f.images.values()))


def test_a_healthy_stream_with_faster_ultrasonics_gets_no_frames_of_their_own(rig):
    msgs = [m for m in _stream(n=10) if m[0] != "uss"]
    msgs += [("uss", _cycle(1_000 * MS + k * 40 * MS + 7 * MS)) for k in range(25)]  # 25 Hz against 10 Hz cameras
    msgs.sort(key=lambda m: m[1].stamp_ns if hasattr(m[1], "stamp_ns") else m[1][0])
    frames = list(synchronise(rig, msgs))
    assert len(frames) == 10 and all(all(f.images.values()) for f in frames)


def test_a_stream_that_expects_no_camera_does_not_wait_for_one(rig):
    waiting, prompt = Synchroniser(rig), Synchroniser(rig, expect_cameras=False)
    for sync in (waiting, prompt):
        sync.push_uss(_cycle(1_000 * MS))
        sync.push_odometry(Odometry(1_030 * MS, Pose2D(0, 0, 0)))  # the clock moves on, 30 ms
    assert waiting.pop_frames() == []  # a camera image might still come within the latency allowance
    assert [f.stamp_ns for f in prompt.pop_frames()] == [1_000 * MS]


# --- odometry -----------------------------------------------------------------------------------------------------
# _stream's frames are anchored on MVL's image, 3 ms before each 100 ms tick: 997, 1097, 1197, ... ms.

def _with_odometry(msgs, samples):
    """The stream with odometry samples {stamp_ms: (x, y, yaw)} merged in time order."""
    odo = [("odometry", Odometry(ms * MS, Pose2D(*pose))) for ms, pose in samples.items()]
    return sorted(msgs + odo, key=lambda m: m[1].stamp_ns if hasattr(m[1], "stamp_ns") else m[1][0])


def test_odometry_is_interpolated_at_the_anchor_along_the_shorter_arc(rig):
    samples = {980: (0.0, 0.0, 3.1), 1000: (1.0, 2.0, -3.1), 1080: (2.0, 0.0, 0.0), 1100: (3.0, -1.0, 0.2)}
    frames = list(synchronise(rig, _with_odometry(_stream(n=2), samples)))
    assert [f.stamp_ns for f in frames] == [997 * MS, 1_097 * MS]
    # 997 ms is 17/20 of the way from 980 to 1000 ms. The yaw turns +0.083 rad across pi (3.1 -> -3.1 + 2 pi),
    # not -6.2 rad the long way round: 3.1 + 0.85 * (2 pi - 6.2) = 3.1707, wrapped to 3.1707 - 2 pi = -3.1125.
    a, b = frames[0].odometry, frames[1].odometry
    assert (a.x, a.y) == pytest.approx((0.85, 1.7))
    assert a.yaw == pytest.approx(3.1 + 0.85 * (2 * math.pi - 6.2) - 2 * math.pi) and -math.pi < a.yaw <= math.pi
    assert (b.x, b.y, b.yaw) == pytest.approx((2.85, -0.85, 0.17))
    assert not any(f.degraded for f in frames)


def test_odometry_across_a_gap_is_the_nearest_sample_within_tolerance_or_none(rig):
    # 1000 -> 1700 ms is longer than the 0.5 s interpolation limit.
    samples = {1000: (1.0, 0.0, 0.5), 1700: (8.0, 0.0, 0.9)}
    sync, frames = _run(rig, _with_odometry(_stream(n=10), samples))
    got = [f.odometry for f in frames]
    assert got[0] == Pose2D(1.0, 0.0, 0.5)  # 3 ms before the first sample: the nearest, within the 20 ms tolerance
    assert got[7] == Pose2D(8.0, 0.0, 0.9)  # 1697 ms: 3 ms before the sample after the gap
    assert all(got[k] is None and "odometry missing" in frames[k].degraded for k in (1, 2, 3, 4, 5, 6, 8, 9))
    assert sync.stats.missing["odometry"] == 8 and sync.stats.degraded_frames == 8
    # A gap of exactly the limit is still interpolated.
    samples = {1000: (1.0, 0.0, 0.0), 1000 + ODOMETRY_MAX_GAP_NS // MS: (6.0, 0.0, 0.0)}
    frames = list(synchronise(rig, _with_odometry(_stream(n=2), samples)))
    assert frames[1].odometry.x == pytest.approx(1.0 + 5.0 * 97 / 500)


def test_odometry_missing_is_flagged_only_once_the_stream_has_carried_odometry(rig):
    # Odometry starts at 1200 ms (after the first two frames) and stops after 1300 ms.
    samples = {ms: (ms / 1000, 0.0, 0.0) for ms in range(1_200, 1_301, 20)}
    frames = list(synchronise(rig, _with_odometry(_stream(n=6), samples)))
    assert [f.odometry is None for f in frames] == [True, True, False, False, True, True]
    assert [f.degraded for f in frames] == [[], [], [], [], ["odometry missing"], ["odometry missing"]]
    assert frames[2].odometry == Pose2D(1.2, 0.0, 0.0)  # 1197 ms: before the first sample, 3 ms from it
    assert frames[3].odometry.x == pytest.approx(1.297)


def test_a_stream_without_odometry_is_unchanged(rig):
    sync, frames = _run(rig, _stream())
    assert len(frames) == 10
    assert all(f.odometry is None and not f.degraded for f in frames)
    assert "odometry" not in sync.stats.missing
    # Nothing waits for odometry: the frame is out as soon as the stream passes anchor + tolerance (1017 ms).
    sync = Synchroniser(rig)
    for cam, ms in (("MVL", 997), ("FV", 1_000), ("RV", 1_002), ("MVR", 1_004)):
        sync.push_image(CameraImage(cam, ms * MS, b"x"))
    sync.push_uss(_cycle(1_015 * MS))
    assert sync.pop_frames() == []
    sync.push_uss(_cycle(1_030 * MS))
    assert [f.stamp_ns for f in sync.pop_frames()] == [997 * MS]


def test_a_frame_waits_for_the_odometry_sample_after_its_anchor(rig):
    sync = Synchroniser(rig)
    sync.push_odometry(Odometry(980 * MS, Pose2D(0.0, 0.0, 0.0)))
    for cam, ms in (("MVL", 997), ("FV", 1_000), ("RV", 1_002), ("MVR", 1_004)):
        sync.push_image(CameraImage(cam, ms * MS, b"x"))
    sync.push_uss(_cycle(1_015 * MS))
    sync.push_uss(_cycle(1_030 * MS))  # past anchor + tolerance: without odometry the frame would be out
    assert sync.pop_frames() == []
    sync.push_odometry(Odometry(1_040 * MS, Pose2D(6.0, 0.0, 0.0)))
    (frame,) = sync.pop_frames()
    assert frame.odometry.x == pytest.approx(6.0 * 17 / 60) and not frame.degraded
    # When the sample after the anchor never comes, the frame goes out once the stream is the latency allowance
    # (100 ms) past anchor + tolerance, with the nearest sample within tolerance: none (1040 ms is 57 ms away).
    for cam, ms in (("MVL", 1_097), ("FV", 1_100), ("RV", 1_102), ("MVR", 1_104)):
        sync.push_image(CameraImage(cam, ms * MS, b"x"))
    sync.push_uss(_cycle(1_115 * MS))
    sync.push_uss(_cycle(1_210 * MS))
    assert sync.pop_frames() == []
    sync.push_uss(_cycle(1_217 * MS))  # 1097 + 20 + 100 ms
    (frame,) = sync.pop_frames()
    assert frame.odometry is None and frame.degraded == ["odometry missing"]


def test_a_frame_does_not_wait_for_odometry_that_has_gone_silent(rig):
    sync = Synchroniser(rig)
    sync.push_odometry(Odometry(400 * MS, Pose2D(0.0, 0.0, 0.0)))  # then nothing: the odometry stream died
    for cam, ms in (("MVL", 997), ("FV", 1_000), ("RV", 1_002), ("MVR", 1_004)):
        sync.push_image(CameraImage(cam, ms * MS, b"x"))
    sync.push_uss(_cycle(1_015 * MS))
    sync.push_uss(_cycle(1_030 * MS))  # past anchor + tolerance, far inside the latency allowance
    (frame,) = sync.pop_frames()  # out at once, not 100 ms later
    assert frame.odometry is None and frame.degraded == ["odometry missing"]


def test_the_odometry_buffer_stays_bounded(rig):
    sync = Synchroniser(rig)
    for k in range(200):  # 20 s: cameras at 10 Hz, odometry at 100 Hz
        t = 1_000 * MS + k * 100 * MS
        for cam in CAMS:
            sync.push_image(CameraImage(cam, t + 3 * MS, b"x"))
        sync.push_uss(_cycle(t + 15 * MS))
        for j in range(10):
            sync.push_odometry(Odometry(t + j * 10 * MS, Pose2D(k + j / 10, 0.0, 0.0)))
    frames = sync.pop_frames() + sync.flush()
    assert len(frames) == 200 and not any(f.degraded for f in frames)
    assert frames[150].odometry.x == pytest.approx(150.03)
    assert len(sync._odometry) <= 20  # about one frame period: what the next anchor can still need
