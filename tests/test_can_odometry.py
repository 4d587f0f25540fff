"""Wheel odometry over CAN (sensors.drivers.can_odometry, sensors/can/vehicle.dbc): poses encoded as speed and yaw
rate and integrated back, frame faults counted, CAN logs and a live bus carrying it beside the ultrasonics."""

import math

import can
import numpy as np
import pytest

from sensors.drivers.can_odometry import (
    OdometryCanDecoder,
    OdometryCanEncoder,
    encode_odometry,
    load_vehicle_dbc,
    motion_frame_ids,
)
from sensors.errors import SensorError
from sensors.geometry import Pose2D
from sensors.messages import Odometry, UssCycle

T0 = 1_000_000_000
DT = 20_000_000  # 50 Hz


def _arc(n=100, radius=6.0, speed=1.5, reverse=False):
    """Samples along a left-hand circle from the origin, forwards or in reverse, at 50 Hz."""
    out = []
    for k in range(n):
        s = (-1 if reverse else 1) * speed * k * DT / 1e9
        a = s / radius
        out.append(Odometry(T0 + k * DT, Pose2D(radius * math.sin(a), radius * (1 - math.cos(a)), a)))
    return out


def _decode(frames, decoder=None):
    decoder = decoder or OdometryCanDecoder()
    return [o for f in frames for o in decoder.feed(f)], decoder


@pytest.mark.parametrize("reverse", [False, True])
def test_poses_come_back_from_speed_and_yaw_rate(reverse):
    samples = _arc(reverse=reverse)  # 2 s, 3 m of a 6 m circle
    frames = encode_odometry(samples)
    assert {f.arbitration_id for f in frames} == motion_frame_ids() == {0x310}
    assert all(len(f.data) == 8 and not f.is_extended_id for f in frames)
    speed = load_vehicle_dbc().decode_message(0x310, bytes(frames[1].data))["Speed"]
    assert speed == pytest.approx(-1.5 if reverse else 1.5, abs=1e-3)  # signed: reversing is negative
    decoded, decoder = _decode(frames)
    assert [o.stamp_ns for o in decoded] == [s.stamp_ns for s in samples]
    for a, b in zip(samples, decoded, strict=True):
        assert math.hypot(a.pose.x - b.pose.x, a.pose.y - b.pose.y) < 2e-3  # 1 mm/s steps over 2 s
        assert abs(a.pose.yaw - b.pose.yaw) < 1e-4
    assert decoder.stats["samples"] == 100 and decoder.stats["bad_checksum"] == decoder.stats["counter_jumps"] == 0


def test_frame_faults_are_counted_and_skipped_never_raised():
    samples = _arc(10)
    frames = encode_odometry(samples)
    broken = bytearray(frames[3].data)
    broken[4] ^= 0x01  # a flipped bit in the yaw rate
    frames[3] = can.Message(timestamp=frames[3].timestamp, arbitration_id=0x310, is_extended_id=False, data=broken)
    short = can.Message(timestamp=frames[5].timestamp, arbitration_id=0x310, is_extended_id=False, data=b"\x00" * 4)
    decoded, decoder = _decode([*frames[:5], short, *frames[6:]])
    assert decoder.stats["bad_checksum"] == 1 and decoder.stats["bad_frames"] == 1
    assert decoder.stats["counter_jumps"] == 2  # the counter skips where frames 3 and 5 were dropped
    assert len(decoded) == 8 and decoder.problems  # the other samples go on, and the problems say why
    # The next good sample integrates over the interval the dropped one covered: the path is kept.
    assert math.hypot(decoded[-1].pose.x - samples[-1].pose.x, decoded[-1].pose.y - samples[-1].pose.y) < 2e-3


def test_invalid_signals_gaps_and_time_running_backwards():
    encoder = OdometryCanEncoder()
    frames = [encoder.frame(T0, 0.0, 0.0), encoder.frame(T0 + DT, 2.0, 0.0, speed_valid=False),
              encoder.frame(T0 + 2 * DT, 2.0, 0.0), encoder.frame(T0 + DT, 2.0, 0.0),
              encoder.frame(T0 + 2 * DT + 900_000_000, 2.0, 0.1), encoder.frame(T0 + 3 * DT + 900_000_000, 2.0, 0.0)]
    decoded, decoder = _decode(frames)
    assert decoder.stats["invalid_signals"] == 1 and decoder.stats["out_of_order"] == 1 and decoder.stats["gaps"] == 1
    xs = [o.pose.x for o in decoded]
    # 2 m/s over the 40 ms since the last valid sample; nothing over the 0.9 s gap; then 20 ms more.
    assert xs == pytest.approx([0.0, 0.08, 0.08, 0.12])
    assert decoded[2].pose.yaw == 0.0  # the gap's yaw rate was never integrated


def test_the_encoder_refuses_what_the_signals_cannot_carry():
    encoder = OdometryCanEncoder()
    for speed, yaw_rate in ((float("nan"), 0.0), (40.0, 0.0), (0.0, 5.0)):
        with pytest.raises(SensorError, match="not finite or beyond"):
            encoder.frame(T0, speed, yaw_rate)
    encoder.encode(Odometry(T0, Pose2D(0, 0, 0)))
    with pytest.raises(SensorError, match="not after the previous sample"):
        encoder.encode(Odometry(T0, Pose2D(1, 0, 0)))
    # A jump between two poses (50 m in 20 ms) goes out flagged invalid; the decoder skips it and carries on.
    jump = [Odometry(T0 + k * DT, Pose2D(x, 0, 0)) for k, x in enumerate((0.0, 0.02, 50.0, 50.02))]
    decoded, decoder = _decode(encode_odometry(jump))
    assert decoder.stats["invalid_signals"] == 1 and [o.stamp_ns for o in decoded] == [T0, T0 + DT, T0 + 3 * DT]
    # The jump is lost; the next good sample's 1 m/s holds over the 40 ms since the last good one.
    assert decoded[-1].pose.x == pytest.approx(0.06, abs=2e-3)


def test_a_can_log_carries_odometry_beside_the_ultrasonics(tmp_path):
    from sensors.drivers.can_log import read_can_log, write_can_log

    cycles = [UssCycle(T0 + k * 100_000_000, k, np.array([0]), np.array([0]), np.array([1.0]), np.array([0.5]))
              for k in range(3)]
    samples = _arc(15)
    items = sorted([*cycles, *samples], key=lambda x: x.stamp_ns)
    path = tmp_path / "bus.log"
    assert write_can_log(items, path) == 3 * 3 + 15
    both = list(read_can_log(path, odometry=True))
    assert [type(x).__name__ for x in both] == [type(x).__name__ for x in items]
    poses = [(o.pose.x, o.pose.y, o.pose.yaw) for o in both if isinstance(o, Odometry)]
    assert np.allclose(poses, [(s.pose.x, s.pose.y, s.pose.yaw) for s in samples], atol=2e-3)
    assert [c.cycle for c in read_can_log(path)] == [0, 1, 2]  # without odometry: the cycles, as before


def test_a_live_bus_gives_odometry_and_still_notices_a_silent_ultrasonic_ecu():
    from sensors.drivers.can_uss import CanUssSource, UssCanEncoder

    sender = can.Bus(channel="odo-test", interface="virtual", receive_own_messages=False)
    receiver = can.Bus(channel="odo-test", interface="virtual")
    try:
        source = CanUssSource("odo-test", bus=receiver, timeout=0.3, odometry=True)
        encoder = UssCanEncoder()
        cycle = UssCycle(T0, 0, np.array([0]), np.array([0]), np.array([1.0]), np.array([0.5]))
        for f in [*encode_odometry(_arc(3)), *encoder.encode(cycle)]:
            sender.send(f)
        got = []
        it = iter(source)
        while len(got) < 4:
            got.append(next(it))
        assert [type(x).__name__ for x in got] == ["Odometry"] * 3 + ["UssCycle"]
        for f in encode_odometry(_arc(40)):  # 0.8 s of odometry and no ultrasonic frame
            sender.send(f)
        with pytest.raises(SensorError, match="no ultrasonic frame"):
            for _ in it:
                pass
    finally:
        sender.shutdown()
        receiver.shutdown()
