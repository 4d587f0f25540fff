import numpy as np
import pytest

from sensors.errors import ConfigError
from sensors.messages import CameraImage, GroundTruth, UssCycle, UssStatus
from sensors.replay import Pacer
from sensors.sync import Synchroniser, synchronise

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
    """Push camera images and USS cycles through a fresh synchroniser; return it and every frame it made."""
    sync = Synchroniser(rig)
    frames = []
    for kind, v in msgs:
        if kind == "image":
            sync.push_image(v)
        elif kind == "uss":
            sync.push_uss(v)
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
