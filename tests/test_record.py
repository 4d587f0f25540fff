"""`nearfield record`: video files and a virtual CAN bus recorded into one log that replays into frames."""

import threading
import time

import can
import numpy as np
import pytest

from sensors.drivers.camera import write_video
from sensors.drivers.can_uss import UssCanEncoder
from sensors.errors import ConfigError, SensorError
from sensors.live import record
from sensors.log import LogReader
from sensors.messages import UssCycle, UssStatus
from sensors.replay import replay_frames
from sensors.rig import CAMERA_NAMES


@pytest.fixture()
def small_rig(tmp_path, rig):
    path = tmp_path / "rig.toml"
    path.write_text(rig.scaled(0.25).to_toml())
    cam = rig.scaled(0.25).cameras["FV"]
    return path, (cam.width, cam.height)


def _videos(tmp_path, size, frames=8, fps=10.0):
    w, h = size
    out = []
    for i, cam in enumerate(CAMERA_NAMES):
        path = tmp_path / f"{cam}.avi"
        imgs = [np.full((h, w, 3), 30 * i + 5 * k, np.uint8) for k in range(frames)]
        write_video(path, imgs, fps)
        out.append(f"{cam}={path}")
    return out


def test_record_videos_and_virtual_can(tmp_path, small_rig):
    rig_path, size = small_rig
    cams = _videos(tmp_path, size)
    channel = f"rec-{time.monotonic_ns()}"
    stop = threading.Event()

    def ecu():
        from sensors.drivers.can_odometry import OdometryCanEncoder

        enc, motion = UssCanEncoder(), OdometryCanEncoder()
        with can.Bus(channel=channel, interface="virtual") as bus:
            k = 0
            while not stop.is_set():
                cycle = UssCycle(k * 100_000_000, k, [0, 1], [0, 2], [1.25, 2.5], [0.8, 0.3],
                                 {i: UssStatus.OK for i in range(12)})
                for msg in [*enc.encode(cycle), motion.frame(k * 100_000_000, 1.0, 0.0)]:  # the car at 1 m/s
                    bus.send(msg)
                k += 1
                time.sleep(0.1)

    t = threading.Thread(target=ecu, daemon=True)
    t.start()
    try:
        out = tmp_path / "rec.mcap"
        result = record(out, cams, can=channel, rig_path=rig_path, can_interface="virtual", duration_s=1.2,
                          install_signals=False)
    finally:
        stop.set()
        t.join()
    assert not result.errors
    for cam in CAMERA_NAMES:
        assert result.counts[f"/camera/{cam}/image"] == 8  # the whole 0.8 s video within 1.2 s
    assert result.counts["/uss/echoes"] >= 5
    with LogReader(out) as reader:
        s = reader.summary()
        assert reader.damage is None
        assert reader.rig.cameras["FV"].width == size[0]
    assert s.topics["/uss/echoes"].count == result.counts["/uss/echoes"]
    # The vehicle's motion frames on the same bus are integrated and recorded as /odometry, on the same clock.
    assert s.topics["/odometry"].count == result.counts["/odometry"] >= 5
    with LogReader(out) as reader:
        odo = [m.value for m in reader.messages(topics=["/odometry"])]
    steps = np.diff([o.pose.x for o in odo])
    gaps = np.diff([o.stamp_ns for o in odo]) / 1e9
    assert np.allclose(steps, gaps, atol=2e-3) and all(o.pose.y == 0 for o in odo)  # 1 m/s straight on
    frames = list(replay_frames(out))
    assert all(all(f.images.values()) for f in frames[:8])
    # Once the 0.8 s videos have ended the ultrasonics go on alone: frames of their own, every camera missing.
    assert all(f.degraded[:4] == [f"camera {c} missing" for c in CAMERA_NAMES] for f in frames[8:])
    # Video frames were filled with 30*i + 5*k: the decoded images keep camera order and time order.
    for k, f in enumerate(frames[:8]):
        for i, cam in enumerate(CAMERA_NAMES):
            assert abs(int(f.images[cam].rgb.mean()) - (30 * i + 5 * k)) <= 3
    # One clock: camera stamps and USS stamps interleave within the recording time.
    with LogReader(out) as reader:
        stamps = [m.stamp_ns for m in reader.messages(topics=["/uss/echoes", "/camera/FV/image"])]
    assert stamps == sorted(stamps)
    assert (stamps[-1] - stamps[0]) / 1e9 < result.seconds + 0.1


def test_record_rejects_bad_arguments(tmp_path, small_rig):
    rig_path, size = small_rig
    with pytest.raises(ConfigError, match="nothing to record"):
        record(tmp_path / "x.mcap", [], rig_path=rig_path)
    with pytest.raises(ConfigError, match="no camera 'XX'"):
        record(tmp_path / "x.mcap", ["XX=a.avi"], rig_path=rig_path)
    with pytest.raises(SensorError, match="no such video file"):
        record(tmp_path / "x.mcap", [f"FV={tmp_path / 'missing.avi'}"], rig_path=rig_path)
    # A video whose size is not the calibration's is refused up front: the calibration would be wrong.
    write_video(tmp_path / "big.avi", [np.zeros((size[1] * 2, size[0] * 2, 3), np.uint8)] * 2, 10)
    with pytest.raises(SensorError, match="expected"):
        record(tmp_path / "x.mcap", [f"FV={tmp_path / 'big.avi'}"], rig_path=rig_path)
    # A CAN log file that is not there is said to be so, not tried as a bus channel named "missing.log".
    with pytest.raises(ConfigError, match=r"--can .*missing\.log: no such CAN log file"):
        record(tmp_path / "x.mcap", [], can=str(tmp_path / "missing.log"), rig_path=rig_path)
    assert not (tmp_path / "x.mcap").exists()


def _can_log(path, cycles=4, period_ns=50_000_000):
    from sensors.drivers.can_log import write_can_log

    t0 = 1_700_000_000_000_000_000
    write_can_log([UssCycle(t0 + k * period_ns, k, [0, 1], [0, 2], [1.25, 2.5], [0.8, 0.3],
                            {i: UssStatus.OK for i in range(12)}) for k in range(cycles)], path)
    return path


def test_record_refuses_an_existing_out_unless_overwrite(tmp_path, small_rig, capsys):
    from app.cli import main

    rig_path, _ = small_rig
    can_log = str(_can_log(tmp_path / "bus.log"))
    out = tmp_path / "drive.mcap"
    out.write_bytes(b"a drive recorded before")
    with pytest.raises(ConfigError, match=r"exists already.*--overwrite"):
        record(out, [], can=can_log, rig_path=rig_path, install_signals=False)
    assert main(["record", "--can", can_log, "--rig", str(rig_path), "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert out.read_bytes() == b"a drive recorded before"
    assert main(["record", "--can", can_log, "--rig", str(rig_path), "--out", str(out), "--overwrite"]) == 0
    assert "/uss/echoes 4" in capsys.readouterr().out
    with LogReader(out) as reader:
        assert reader.summary().topics["/uss/echoes"].count == 4


@pytest.mark.parametrize("duration", [0.0, -1.0, float("nan"), float("inf")])
def test_record_refuses_a_duration_that_is_not_a_positive_time(tmp_path, small_rig, duration):
    rig_path, _ = small_rig
    with pytest.raises(ConfigError, match=r"--duration .*positive number of seconds"):
        record(tmp_path / "x.mcap", [], can=str(_can_log(tmp_path / "bus.log")), rig_path=rig_path,
               duration_s=duration, install_signals=False)
    assert not (tmp_path / "x.mcap").exists()


@pytest.mark.parametrize(("name", "content", "said"), [
    ("garbage.log", b"this is not candump\nnor this\n", "unreadable CAN record"),
    ("garbage.blf", b"\x00\x01 not a blf container" * 10, "not a readable .blf CAN log"),
    ("garbage.asc", b"hello\nworld\n", "holds no ultrasonic cycle"),
    ("notes/bus.txt", b"(1.0) can0 300#00\n", "not a CAN log"),
])
def test_a_can_file_that_is_no_can_log_fails_before_recording(tmp_path, small_rig, capsys, name, content, said):
    from app.cli import main

    rig_path, _ = small_rig
    path = tmp_path / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(content)
    out = tmp_path / "rec" / "x.mcap"
    assert main(["record", "--can", str(path), "--rig", str(rig_path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and said in err, err
    assert not out.exists()
