"""Rigid transforms and quaternions ([x, y, z, w], as WoodScape stores them)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def vector_norm(v) -> float:
    """Euclidean norm of a short vector, correctly rounded and so the same on every CPU (numpy's 1-D norm goes through
    the BLAS dot product, whose summation order depends on the CPU: a calibration written on an AMD EPYC differed in
    the last bit from the same one written on an Intel Xeon)."""
    return math.sqrt(math.fsum(float(x) * float(x) for x in v))


def wrap_angle(a: float) -> float:
    """An angle in radians wrapped to (-pi, pi]."""
    w = math.atan2(math.sin(a), math.cos(a))
    return math.pi if w <= -math.pi else w


def quat_to_matrix(q: np.ndarray) -> np.ndarray:
    """Unit quaternion [x, y, z, w] -> 3x3 rotation matrix."""
    x, y, z, w = (float(v) for v in q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def matrix_to_quat(R: np.ndarray) -> np.ndarray:
    """3x3 rotation matrix -> unit quaternion [x, y, z, w] with w >= 0."""
    m = np.asarray(R, dtype=float)
    tr = np.trace(m)
    if tr > 0:
        s = 2.0 * np.sqrt(tr + 1.0)
        q = [(m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s, 0.25 * s]
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        s = 2.0 * np.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2])
        q = [0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s, (m[2, 1] - m[1, 2]) / s]
    elif m[1, 1] > m[2, 2]:
        s = 2.0 * np.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2])
        q = [(m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s, (m[0, 2] - m[2, 0]) / s]
    else:
        s = 2.0 * np.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1])
        q = [(m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s, (m[1, 0] - m[0, 1]) / s]
    q = np.array(q)
    q /= vector_norm(q)
    return q if q[3] >= 0 else -q


def rot_x(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def rot_y(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def rot_z(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


# Camera frame (x right, y down, z forward) expressed in a vehicle frame for a camera looking along +x.
_CAM_LOOKING_FORWARD = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


def camera_rotation(yaw_deg: float, pitch_down_deg: float, roll_deg: float = 0.0) -> np.ndarray:
    """Camera→vehicle rotation for a camera whose optical axis has the given yaw (0 = forward, 90 = left)
    and is pitched down by pitch_down_deg, with an optional roll about the optical axis."""
    R = rot_z(np.radians(yaw_deg)) @ rot_y(np.radians(pitch_down_deg)) @ _CAM_LOOKING_FORWARD
    return R @ rot_z(np.radians(roll_deg))


@dataclass(frozen=True)
class Pose2D:
    """A planar pose in a world frame: position (x, y) in metres and heading yaw in radians."""

    x: float
    y: float
    yaw: float

    def matrix(self) -> np.ndarray:
        """3x3 homogeneous transform local -> world."""
        c, s = np.cos(self.yaw), np.sin(self.yaw)
        return np.array([[c, -s, self.x], [s, c, self.y], [0.0, 0.0, 1.0]])

    def to_world(self, xy: np.ndarray) -> np.ndarray:
        """(N, 2) points in this pose's frame -> world."""
        c, s = np.cos(self.yaw), np.sin(self.yaw)
        xy = np.asarray(xy, dtype=float)
        return np.stack([c * xy[..., 0] - s * xy[..., 1] + self.x, s * xy[..., 0] + c * xy[..., 1] + self.y], -1)

    def to_local(self, xy: np.ndarray) -> np.ndarray:
        """(N, 2) world points -> this pose's frame."""
        c, s = np.cos(self.yaw), np.sin(self.yaw)
        xy = np.asarray(xy, dtype=float)
        dx, dy = xy[..., 0] - self.x, xy[..., 1] - self.y
        return np.stack([c * dx + s * dy, -s * dx + c * dy], -1)

    def compose(self, other: Pose2D) -> Pose2D:
        """self ∘ other: `other` given in this pose's frame, returned in the world frame."""
        x, y = self.to_world(np.array([other.x, other.y]))
        return Pose2D(float(x), float(y), self.yaw + other.yaw)

    def relative(self, other: Pose2D) -> Pose2D:
        """`other` (a pose in the world frame) seen from this pose's frame: the inverse of compose, so that
        self.compose(self.relative(other)) == other."""
        x, y = self.to_local(np.array([other.x, other.y]))
        return Pose2D(float(x), float(y), other.yaw - self.yaw)
