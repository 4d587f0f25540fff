"""Simulated wheel odometry: the ego's path dead-reckoned the way a car's wheel speeds and yaw rate give it, with
the errors that make a real car's odometry drift.

The error model, drawn once per drive (OdometryErrors.draw):
- distance scale: the travelled distance reads 1 + N(0, SCALE_SIGMA) times the true one (tyre radius, pressure and
  load differ from the nominal wheel circumference); applied to every increment, so it grows with the distance;
- yaw-rate bias: N(0, YAW_BIAS_SIGMA) rad/s added to the true yaw rate (a MEMS gyro's offset), integrated over time,
  so the heading drifts even at a standstill and the position error grows with heading error times distance.
Noise on the single increments is left out: averaged over a frame period it is far below these two.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from sensors.geometry import Pose2D
from sim_data.world import EgoPath

ODOMETRY_PERIOD_NS = 20_000_000  # 50 Hz: cars send wheel speeds and yaw rate on CAN at 20-100 Hz
SCALE_SIGMA = 0.01  # relative distance error
YAW_BIAS_SIGMA = 0.002  # rad/s
_STREAM = 0x0D0  # the odometry's own random stream next to the drive's seed


@dataclass(frozen=True)
class OdometryErrors:
    """One drive's wheel-odometry errors; the defaults are none."""

    scale: float = 1.0  # measured / true travelled distance
    yaw_bias: float = 0.0  # rad/s added to the true yaw rate

    @classmethod
    def draw(cls, rng: np.random.Generator) -> OdometryErrors:
        return cls(1.0 + float(rng.normal(0.0, SCALE_SIGMA)), float(rng.normal(0.0, YAW_BIAS_SIGMA)))


def odometry_rng(seed: int) -> np.random.Generator:
    """The generator of a drive's odometry errors: apart from the drive's main generator (seeded with `seed` alone),
    so that adding odometry left every other message of a simulated drive as it was."""
    return np.random.default_rng([seed, _STREAM])


def dead_reckon(ego: EgoPath, times_s: Sequence[float], errors: OdometryErrors = OdometryErrors()) -> list[Pose2D]:
    """The vehicle's pose in the odom frame (the ego's pose at times_s[0]) at each of the increasing `times_s`:
    the true motion between consecutive times, seen from the vehicle, with its distance scaled and its yaw biased,
    integrated step by step. Without errors it is the ego's true pose relative to the first one."""
    x = y = yaw = 0.0
    out = [Pose2D(x, y, yaw)]
    prev = ego.pose(times_s[0])
    for t0, t1 in itertools.pairwise(times_s):
        pose = ego.pose(t1)
        step = prev.relative(pose)
        dx, dy = errors.scale * step.x, errors.scale * step.y
        c, s = math.cos(yaw), math.sin(yaw)
        x, y = x + c * dx - s * dy, y + s * dx + c * dy
        yaw += step.yaw + errors.yaw_bias * (t1 - t0)
        out.append(Pose2D(x, y, yaw))
        prev = pose
    return out


__all__ = ["ODOMETRY_PERIOD_NS", "SCALE_SIGMA", "YAW_BIAS_SIGMA", "OdometryErrors", "dead_reckon", "odometry_rng"]
