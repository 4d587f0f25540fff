"""Where a scene's objects may go: the ego's swept footprints along its drive, and a placer that keeps an object
only if it (or the corridor its walk takes) clears everything placed before and the ego's path. Split out of
sim_data.scenes; the scene builders decide what to place, this module whether it fits."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from sensors.rig import VehicleBody
from sim_data.objects import make_pedestrian
from sim_data.world import Box, EgoPath, SceneObject

EGO_CLEARANCE = 0.35  # m kept free around the ego footprint along the whole drive
OBJECT_GAP = 0.10  # m between any two objects (boxes), so footprints never touch


def rect(x: float, y: float, yaw: float, length: float, width: float) -> np.ndarray:
    """(4, 2) corners of a LENGTH x WIDTH rectangle centred at (x, y), turned by YAW."""
    return Box(x, y, yaw, length, width, 0.0, 0.0).footprint()


def corridor(points: np.ndarray, half_width: float) -> np.ndarray:
    """(S, 4, 2) rectangles covering a polyline widened by half_width (ends included)."""
    a, b = points[:-1], points[1:]
    mid, d = (a + b) / 2, b - a
    rects = [rect(m[0], m[1], math.atan2(v[1], v[0]), float(np.hypot(*v)) + 2 * half_width, 2 * half_width)
             for m, v in zip(mid, d, strict=True)]
    return np.stack(rects)


def ego_swept(path: EgoPath, vehicle: VehicleBody, margin: float, step: float = 0.1) -> np.ndarray:
    """(K, 4, 2) ego footprints grown by `margin`: one every `step` metres (or 0.05 rad) along the path, and
    every pose where the drive turns from forwards to backwards (the extremes of a manoeuvre)."""
    corners = np.array([[vehicle.x_max + margin, vehicle.width / 2 + margin],
                        [vehicle.x_max + margin, -vehicle.width / 2 - margin],
                        [vehicle.x_min - margin, -vehicle.width / 2 - margin],
                        [vehicle.x_min - margin, vehicle.width / 2 + margin]])
    p = np.array([(q.x, q.y, q.yaw) for q in path.poses])
    d = np.diff(p[:, :2], axis=0)
    along = d[:, 0] * np.cos(p[:-1, 2]) + d[:, 1] * np.sin(p[:-1, 2])
    moving = np.sign(along[np.abs(along) > 1e-6])
    idx = np.nonzero(np.abs(along) > 1e-6)[0]
    turns = set((idx[1:][moving[1:] != moving[:-1]]).tolist())
    keep, last = [], None
    for i, q in enumerate(p):
        if last is None or i in turns or math.hypot(q[0] - last[0], q[1] - last[1]) >= step or \
                abs(q[2] - last[2]) >= 0.05:
            keep.append(i)
            last = q
    if keep[-1] != len(p) - 1:
        keep.append(len(p) - 1)
    c, s = np.cos(p[keep, 2])[:, None], np.sin(p[keep, 2])[:, None]
    return np.stack([p[keep, 0:1] + c * corners[:, 0] - s * corners[:, 1],
                     p[keep, 1:2] + s * corners[:, 0] + c * corners[:, 1]], -1)


class Layout:
    """The objects placed so far and the space they, their walks and the ego's drive take."""

    def __init__(self, rng: np.random.Generator, ego: EgoPath, vehicle: VehicleBody):
        self.rng = rng
        self.objects: list[SceneObject] = []
        self._rects = ego_swept(ego, vehicle, EGO_CLEARANCE)
        self._update()

    def _update(self):
        self._lo, self._hi = self._rects.min(1), self._rects.max(1)

    def fits(self, rects: np.ndarray) -> bool:
        """Whether (k, 4, 2) rectangles overlap nothing placed (separating-axis test after a bounding-box cull)."""
        for r in rects:
            lo, hi = r.min(0), r.max(0)
            near = np.nonzero(np.all((self._lo < hi) & (self._hi > lo), axis=1))[0]
            if near.size and any_overlap(r, self._rects[near]):
                return False
        return True

    def place(self, make: Callable[[int], SceneObject], sweep: np.ndarray | None = None) -> SceneObject | None:
        """Build the object with the next id and keep it if it (or its walking corridor `sweep`) fits."""
        obj = make(len(self.objects) + 1)
        b = obj.box
        rects = rect(b.x, b.y, b.yaw, b.length + OBJECT_GAP, b.width + OBJECT_GAP)[None] if sweep is None else sweep
        if not self.fits(rects):
            return None
        self._rects = np.concatenate([self._rects, rects])
        self._update()
        self.objects.append(obj)
        return obj

    def place_first(self, makers: Sequence[Callable[[int], SceneObject]]) -> SceneObject | None:
        for make in makers:
            obj = self.place(make)
            if obj is not None:
                return obj
        return None

    def walker(self, x: float, y: float, to: Sequence[tuple[float, float]], child: bool = False) -> SceneObject | None:
        """A pedestrian walking from (x, y) through `to` and back, if the whole walk is clear."""
        speed = self.rng.uniform(0.8, 1.5) * (0.85 if child else 1.0)
        pts = np.array([(x, y), *to])
        d = pts[1] - pts[0]
        seed = self.rng.integers(2**31)

        def make(oid):
            return make_pedestrian(oid, x, y, math.atan2(d[1], d[0]), np.random.default_rng(seed), child, to, speed)

        probe = make(0).box
        return self.place(make, corridor(pts, math.hypot(probe.length, probe.width) / 2 + OBJECT_GAP / 2))


def any_overlap(a: np.ndarray, bs: np.ndarray) -> bool:
    """Whether rectangle (4, 2) `a` overlaps any of (M, 4, 2) rectangles `bs` (separating axes)."""
    sep = np.zeros(len(bs), bool)
    for axes in (np.broadcast_to(a[1:3] - a[0:2], (len(bs), 2, 2)), bs[:, 1:3] - bs[:, 0:2]):
        for k in (0, 1):
            ax = axes[:, k]
            pa = np.einsum("vd,md->mv", a, ax)
            pb = np.einsum("mvd,md->mv", bs, ax)
            sep |= (pa.max(1) <= pb.min(1)) | (pb.max(1) <= pa.min(1))
    return bool((~sep).any())


__all__ = ["EGO_CLEARANCE", "OBJECT_GAP", "Layout", "any_overlap", "corridor", "ego_swept", "rect"]
