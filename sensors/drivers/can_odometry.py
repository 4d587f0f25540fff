"""Wheel odometry over CAN: the vehicle's speed and yaw rate (sensors/can/vehicle.dbc, VEH_Motion at 50 Hz) encoded
from and integrated into planar poses (sensors.messages.Odometry) in a local odom frame.

Each VEH_Motion frame holds the speed of the rear-axle centre (signed) and the yaw rate over the interval since the
previous frame. The decoder integrates them along the chord of that interval (heading at the interval's middle), which
is exact for a constant-curvature arc, so encoding the motion between two poses and decoding it gives the second pose
back up to the signals' quantisation. Like the ultrasonic decoder it never raises on bus content: bad CRCs, counter
jumps, invalid signals, gaps and out-of-order frames are counted in `stats`.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Iterable
from pathlib import Path

import can
import cantools

from sensors.drivers.can_uss import e2e_problem, frame_crc, load_database
from sensors.errors import SensorError
from sensors.geometry import Pose2D, wrap_angle
from sensors.messages import Odometry

log = logging.getLogger(__name__)

DBC_PATH = Path(__file__).resolve().parent.parent / "can" / "vehicle.dbc"
MOTION = "VEH_Motion"
# Motion is integrated over intervals at most this long (the synchroniser interpolates across no longer gap either):
# across a longer one (a dropout) the pose is carried unchanged and the gap counted.
MAX_GAP_S = 0.5
STAT_KEYS = ("frames", "samples", "bad_frames", "bad_checksum", "counter_jumps", "invalid_signals", "gaps",
             "out_of_order")
_LOUD_PROBLEMS = 20


def load_vehicle_dbc(path: str | Path | None = None) -> cantools.database.can.Database:
    """The vehicle-motion database shipped with the package, or another DBC with a VEH_Motion message."""
    return load_database(path if path is not None else DBC_PATH, (MOTION,), "vehicle", DBC_PATH)


def motion_frame_ids(db=None) -> set[int]:
    """The CAN identifiers the odometry decoder reads (for bus filters and dispatch)."""
    return {(db if db is not None else load_vehicle_dbc()).get_message_by_name(MOTION).frame_id}


class OdometryCanEncoder:
    """Odometry samples -> VEH_Motion frames: the speed and yaw rate of the motion from the previous sample to each
    one (the first frame says standing still; a decoder only starts integrating from it)."""

    def __init__(self, db=None, channel: str | int | None = None):
        self.db = db if db is not None else load_vehicle_dbc()
        self.message = self.db.get_message_by_name(MOTION)
        self.channel = channel
        self._counter = 0
        self._previous: Odometry | None = None
        speed, yaw = (self.message.get_signal_by_name(n) for n in ("Speed", "YawRate"))
        self._limits = {"Speed": float(speed.maximum), "YawRate": float(yaw.maximum)}

    def encode(self, odo: Odometry) -> can.Message:
        prev, self._previous = self._previous, odo
        speed = yaw_rate = 0.0
        if prev is not None:
            dt = (odo.stamp_ns - prev.stamp_ns) / 1e9
            if dt <= 0:
                raise SensorError(f"odometry at {odo.stamp_ns} ns: not after the previous sample at {prev.stamp_ns} ns")
            step = prev.pose.relative(odo.pose)
            dyaw = wrap_angle(step.yaw)
            dist = math.hypot(step.x, step.y)
            # The chord leaves at the heading of the interval's middle; its projection on that heading is signed.
            along = step.x * math.cos(dyaw / 2) + step.y * math.sin(dyaw / 2)
            speed, yaw_rate = math.copysign(dist, along) / dt, dyaw / dt
            if abs(speed) > self._limits["Speed"] or abs(yaw_rate) > self._limits["YawRate"]:
                # A jump no car makes (a reset odometry, a glitch): sent as invalid, which a decoder skips, rather
                # than ending the whole conversion.
                log.warning("odometry at %d ns: %.1f m/s, %.2f rad/s since the previous sample cannot be sent; "
                            "flagged invalid", odo.stamp_ns, speed, yaw_rate)
                return self.frame(odo.stamp_ns, 0.0, 0.0, speed_valid=False, yaw_rate_valid=False)
        return self.frame(odo.stamp_ns, speed, yaw_rate)

    def frame(self, stamp_ns: int, speed: float, yaw_rate: float, speed_valid: bool = True,
              yaw_rate_valid: bool = True) -> can.Message:
        """One VEH_Motion frame; SensorError for a value the signal cannot carry."""
        for name, value in (("Speed", speed), ("YawRate", yaw_rate)):
            if not math.isfinite(value) or abs(value) > self._limits[name]:
                raise SensorError(f"odometry at {stamp_ns} ns: {name} {value} is not finite or beyond the "
                                  f"{MOTION} signal's +-{self._limits[name]:g}")
        data = bytearray(self.message.encode({"CRC": 0, "AliveCounter": self._counter, "SpeedValid": int(speed_valid),
                                              "YawRateValid": int(yaw_rate_valid), "Speed": speed,
                                              "YawRate": yaw_rate}))
        self._counter = (self._counter + 1) & 0xF
        data[0] = frame_crc(self.message.frame_id, data)
        return can.Message(timestamp=stamp_ns / 1e9, arbitration_id=self.message.frame_id, is_extended_id=False,
                           data=data, channel=self.channel)


def encode_odometry(samples: Iterable[Odometry], db=None, channel: str | int | None = None) -> list[can.Message]:
    encoder = OdometryCanEncoder(db, channel)
    return [encoder.encode(s) for s in samples]


class OdometryCanDecoder:
    """VEH_Motion frames in bus order -> Odometry poses, integrated from the first valid frame (the odom frame's
    origin). Feed it only frames whose id is in `frame_ids`; problems are counted in `stats` (keys STAT_KEYS)."""

    def __init__(self, db=None, max_gap_s: float = MAX_GAP_S):
        self.db = db if db is not None else load_vehicle_dbc()
        self.message = self.db.get_message_by_name(MOTION)
        self.frame_ids = {self.message.frame_id}
        self.max_gap_ns = int(max_gap_s * 1e9)
        self.stats: dict[str, int] = dict.fromkeys(STAT_KEYS, 0)
        self.problems: deque[str] = deque(maxlen=100)
        self._counter: int | None = None
        self._stamp: int | None = None
        self._pose = Pose2D(0.0, 0.0, 0.0)
        self._logged = 0

    def feed(self, msg: can.Message) -> list[Odometry]:
        self.stats["frames"] += 1
        m = self.message
        where = f"{MOTION} at {msg.timestamp:.6f} s"
        if msg.arbitration_id != m.frame_id or msg.is_extended_id or msg.is_error_frame:
            self._problem("bad_frames", f"{where}: id {msg.arbitration_id:#x} is not {MOTION}'s {m.frame_id:#x}")
            return []
        problem = e2e_problem(m, msg)
        if problem:
            self._problem(problem[0], f"{where}: {problem[1]}")
            return []
        sig = m.decode(bytes(msg.data), decode_choices=False)
        counter = int(sig["AliveCounter"])
        if self._counter is not None and counter != (self._counter + 1) & 0xF:
            self._problem("counter_jumps", f"{where}: alive counter {self._counter} -> {counter} (frames lost or "
                          "repeated)")
        self._counter = counter
        if not (sig["SpeedValid"] and sig["YawRateValid"]):
            self._problem("invalid_signals", f"{where}: speed or yaw rate flagged invalid by the sender")
            return []
        stamp = round(msg.timestamp * 1e9)
        if self._stamp is not None:
            gap = stamp - self._stamp
            if gap <= 0:
                self._problem("out_of_order", f"{where}: {-gap / 1e6:.1f} ms before the previous sample")
                return []
            if gap > self.max_gap_ns:
                self._problem("gaps", f"{where}: {gap / 1e9:.2f} s since the previous sample; the motion in between "
                              "is unknown, the pose is carried over")
            else:
                dt = gap / 1e9
                v, w = float(sig["Speed"]), float(sig["YawRate"])
                p = self._pose
                heading = p.yaw + w * dt / 2
                self._pose = Pose2D(p.x + v * dt * math.cos(heading), p.y + v * dt * math.sin(heading),
                                    wrap_angle(p.yaw + w * dt))
        self._stamp = stamp
        self.stats["samples"] += 1
        return [Odometry(stamp, self._pose)]

    def _problem(self, kind: str, text: str) -> None:
        self.stats[kind] += 1
        self.problems.append(text)
        self._logged += 1
        (log.warning if self._logged <= _LOUD_PROBLEMS else log.debug)("%s", text)


def motion_decoder(odometry) -> OdometryCanDecoder | None:
    """The OdometryCanDecoder that VEH_Motion frames go to (odometry: None/False, True or a decoder), or None."""
    if odometry is None or odometry is False:
        return None
    return OdometryCanDecoder() if odometry is True else odometry


__all__ = ["DBC_PATH", "MAX_GAP_S", "MOTION", "STAT_KEYS", "OdometryCanDecoder", "OdometryCanEncoder",
           "encode_odometry", "load_vehicle_dbc", "motion_decoder", "motion_frame_ids"]
