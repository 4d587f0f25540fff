"""The ego's drives through a scene: legs driven forwards or backwards along a curvature profile, each from rest
(or a given speed) to rest with a trapezoidal speed profile, resampled into an EgoPath. Used by sim_data.scenes."""

from __future__ import annotations

import math

import numpy as np

from sensors.geometry import Pose2D
from sim_data.world import EgoPath

PATH_DT = 0.05  # s between ego path samples


class Drive:
    """An ego path built from legs driven in one direction, each from rest (or a given speed) to rest."""

    DS = 0.02  # m, integration step along a leg
    ACCEL, DECEL = 0.6, 0.8  # m/s², gentle parking-speed manoeuvres

    def __init__(self, start: Pose2D):
        self.t, self.x, self.y, self.yaw = [0.0], [start.x], [start.y], [start.yaw]

    @property
    def end(self) -> Pose2D:
        return Pose2D(self.x[-1], self.y[-1], self.yaw[-1])

    def leg(self, direction: int, curvature: np.ndarray, vmax: float, v0: float = 0.0) -> Drive:
        """Drive forwards (+1) or backwards (-1) along `curvature` (1/m per DS step, left positive), starting
        at speed v0 and stopping at the end of the leg (trapezoidal speed)."""
        n = len(curvature)
        if n == 0:
            return self
        yaw = self.yaw[-1] + direction * np.concatenate([[0.0], np.cumsum(curvature * self.DS)])
        mid = (yaw[:-1] + yaw[1:]) / 2
        step = direction * self.DS
        x = self.x[-1] + np.concatenate([[0.0], np.cumsum(step * np.cos(mid))])
        y = self.y[-1] + np.concatenate([[0.0], np.cumsum(step * np.sin(mid))])
        s_grid = np.arange(n + 1) * self.DS
        total, s_of_t = trapezoid(n * self.DS, vmax, v0, self.ACCEL, self.DECEL)
        ts = np.append(np.arange(PATH_DT / 4, total, PATH_DT / 4), total)
        s = s_of_t(ts)
        t0 = self.t[-1]
        self.t += list(t0 + ts)
        self.x += list(np.interp(s, s_grid, x))
        self.y += list(np.interp(s, s_grid, y))
        self.yaw += list(np.interp(s, s_grid, yaw))
        return self

    def pause(self, seconds: float) -> Drive:
        self.t.append(self.t[-1] + seconds)
        self.x.append(self.x[-1])
        self.y.append(self.y[-1])
        self.yaw.append(self.yaw[-1])
        return self

    def path(self, duration: float, finish: bool = False) -> EgoPath:
        """The drive resampled every PATH_DT over `duration`, standing still after the last leg. With `finish`,
        a manoeuvre longer than the drive is joined late, so that the drive still ends with it completed
        (and a moment at rest); otherwise the drive is cut at `duration`."""
        start = max(self.t[-1] + 0.5 - duration, 0.0) if finish else 0.0
        if self.t[-1] < start + duration:
            self.pause(start + duration - self.t[-1])
        ts = np.append(np.arange(0.0, duration - PATH_DT / 4, PATH_DT), duration)  # always through `duration`
        t = np.asarray(self.t) - start
        x, y, yaw = (np.interp(ts, t, np.asarray(v)) for v in (self.x, self.y, self.yaw))
        return EgoPath(tuple(float(v) for v in ts),
                       tuple(Pose2D(float(a), float(b), float(c)) for a, b, c in zip(x, y, yaw, strict=True)))


def trapezoid(length: float, vmax: float, v0: float, accel: float, decel: float):
    """(duration, s(t)) of a drive over `length` from speed v0 up to vmax and down to rest."""
    v0 = min(v0, vmax)
    if v0 * v0 / (2 * decel) >= length:  # too short to slow down gently: brake harder
        decel = v0 * v0 / (2 * length)
    vp = min(vmax, math.sqrt((length + v0 * v0 / (2 * accel)) / (1 / (2 * accel) + 1 / (2 * decel))))
    t1 = (vp - v0) / accel
    s1 = (v0 + vp) / 2 * t1
    t3 = vp / decel
    s3 = vp * vp / (2 * decel)
    t2 = max(length - s1 - s3, 0.0) / vp
    total = t1 + t2 + t3

    def s_of_t(t):
        t = np.clip(t, 0.0, total)
        return np.where(t < t1, v0 * t + accel * t * t / 2,
                        np.where(t < t1 + t2, s1 + vp * (t - t1), length - decel * (total - t) ** 2 / 2))

    return total, s_of_t


def straight(length: float) -> np.ndarray:
    return np.zeros(max(round(length / Drive.DS), 0))


def arc(radius: float, angle: float) -> np.ndarray:
    """Curvature of a turn through |angle| on |radius|; the sign of radius picks the steering (left +)."""
    return np.full(round(abs(angle * radius) / Drive.DS), 1.0 / radius)


def wiggle(length: float, rng: np.random.Generator) -> np.ndarray:
    """Gentle S-bends: lateral offset A (cos(ks) - 1), so the drive keeps its lane without drifting."""
    s = np.arange(round(length / Drive.DS)) * Drive.DS
    amp = rng.uniform(0.08, 0.25) * rng.choice([-1, 1])
    k = 2 * math.pi / rng.uniform(14.0, 30.0)
    return -amp * k * k * np.cos(k * s)


def creep(start: Pose2D, duration: float, rng: np.random.Generator, vmax: float = 2.0) -> EgoPath:
    v = rng.uniform(0.5, vmax)
    return Drive(start).leg(1, wiggle(v * duration + 3.0, rng), v, v0=v).path(duration)


__all__ = ["PATH_DT", "Drive", "arc", "creep", "straight", "trapezoid", "wiggle"]
