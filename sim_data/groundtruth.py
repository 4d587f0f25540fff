"""BEV ground truth: the semantic class of every grid cell and the object boxes, in the vehicle frame at the ego pose.

Rasterisation rule: a cell takes a part's class when the cell's centre lies inside (or on the edge of) the part's
footprint polygon. So that thin things (a 0.1 m pole, a child's leg) never vanish between cell centres, the cell
containing each part's centre is set as well. Overlaps resolve by priority pedestrian > vehicle > low obstacle >
structure, and the ego's own footprint is IGNORE over everything.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from sensors.bev import BevGrid
from sensors.classes import IGNORE, SemanticClass
from sensors.errors import ConfigError
from sensors.geometry import Pose2D
from sensors.messages import GroundTruth, ObjectBox
from sensors.rig import VehicleBody
from sim_data.world import Box, Cylinder, SceneObject, Sphere

# Painted in this order, so later classes win where footprints overlap.
PAINT_ORDER: tuple[int, ...] = (SemanticClass.STRUCTURE, SemanticClass.LOW_OBSTACLE, SemanticClass.VEHICLE,
                                SemanticClass.PEDESTRIAN)
_EPS = 1e-9


def rasterize_truth(objects: Sequence[SceneObject], ego: Pose2D, vehicle: VehicleBody, grid: BevGrid,
                    stamp_ns: int) -> GroundTruth:
    """The ground truth of one frame. `objects` are as at the frame's time (`Scene.objects_at(t)`); their parts
    lie inside their boxes (the SceneObject contract), so objects whose box is far off the grid are skipped."""
    occupancy = np.zeros(grid.shape, np.uint8)
    boxes = _box_params(objects)
    near = _near_grid(boxes, ego, grid)
    shapes: dict[type, list] = {Box: [], Cylinder: [], Sphere: []}
    for obj in (o for o, n in zip(objects, near, strict=True) if n):
        if obj.cls not in PAINT_ORDER:
            raise ConfigError(f"object {obj.id} ({obj.kind}) has class {obj.cls}, which ground truth cannot paint; "
                              f"use one of {[int(c) for c in PAINT_ORDER]} (sensors.classes.SemanticClass)")
        for part in obj.parts:
            shapes[type(part.shape)].append((part.shape, int(obj.cls)))
    polys, labels, centres = _footprints(shapes)
    if polys:
        masks = fill_convex(polys, np.concatenate(labels), ego, grid)
        # Centre cells of every part, for parts thinner than a cell.
        cls = np.concatenate(labels)
        rc = np.floor(grid.to_cell(ego.to_local(np.concatenate(centres)))).astype(int)
        inside = (rc[:, 0] >= 0) & (rc[:, 0] < grid.rows) & (rc[:, 1] >= 0) & (rc[:, 1] < grid.cols)
        for c in PAINT_ORDER:
            if c not in masks:
                continue
            sel = inside & (cls == c)
            m = masks[c]
            m[rc[sel, 0], rc[sel, 1]] = True
            occupancy[m] = c
    ego_mask = fill_convex([vehicle.footprint()[None]], np.array([IGNORE]), Pose2D(0.0, 0.0, 0.0), grid)[IGNORE]
    occupancy[ego_mask] = IGNORE
    return GroundTruth(stamp_ns, occupancy, grid.cell, object_boxes(objects, ego, grid, boxes))


def _footprints(shapes: dict[type, list]) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """Footprint polygons (P, V, 2), labels and centres per primitive type, vectorised; the same polygons as
    Box/Cylinder/Sphere.footprint() return."""
    polys, labels, centres = [], [], []
    if shapes[Box]:
        b = np.array([(s.x, s.y, s.yaw, s.length, s.width) for s, _ in shapes[Box]])
        polys.append(_rect_corners(b))
        labels.append(np.array([c for _, c in shapes[Box]]))
        centres.append(b[:, :2])
    for kind, n in ((Cylinder, 16), (Sphere, 12)):
        if not shapes[kind]:
            continue
        radius = (lambda s: max(s.radius, s.r_top)) if kind is Cylinder else (lambda s: s.radius)
        p = np.array([(s.x, s.y, radius(s)) for s, _ in shapes[kind]])
        a = np.linspace(0, 2 * np.pi, n, endpoint=False)
        circle = np.stack([np.cos(a), np.sin(a)], 1)
        polys.append(p[:, None, :2] + p[:, None, 2:3] * circle[None])
        labels.append(np.array([c for _, c in shapes[kind]]))
        centres.append(p[:, :2])
    return polys, labels, centres


def _box_params(objects: Sequence[SceneObject]) -> np.ndarray:
    """(N, 5) x, y, yaw, length, width of every object's box."""
    return np.array([(o.box.x, o.box.y, o.box.yaw, o.box.length, o.box.width) for o in objects]).reshape(-1, 5)


def _rect_corners(b: np.ndarray) -> np.ndarray:
    """(N, 5) x, y, yaw, length, width -> (N, 4, 2) corners in Box.footprint() order."""
    c, s = np.cos(b[:, 2]), np.sin(b[:, 2])
    hl, hw = b[:, 3] / 2, b[:, 4] / 2
    lx = np.stack([hl, hl, -hl, -hl], 1)
    ly = np.stack([hw, -hw, -hw, hw], 1)
    return np.stack([b[:, None, 0] + c[:, None] * lx - s[:, None] * ly,
                     b[:, None, 1] + s[:, None] * lx + c[:, None] * ly], -1)


def _near_grid(boxes: np.ndarray, ego: Pose2D, grid: BevGrid, margin: float = 1.0) -> np.ndarray:
    """Objects whose box may touch the grid: a cheap circle test before any polygon work."""
    centre = ego.to_world(np.array([grid.centre_x, grid.centre_y]))
    reach = math.hypot(grid.rows, grid.cols) * grid.cell / 2 + np.hypot(boxes[:, 3], boxes[:, 4]) / 2 + margin
    return np.hypot(boxes[:, 0] - centre[0], boxes[:, 1] - centre[1]) <= reach


def fill_convex(polygons: Sequence[np.ndarray], labels: np.ndarray, frame: Pose2D,
                grid: BevGrid) -> dict[int, np.ndarray]:
    """Boolean (rows, cols) mask per label of the cells whose centres lie inside convex world polygons (seen
    from `frame`, the ego pose). `polygons` is a list of (P, V, 2) stacks, `labels` one label per polygon in
    the same order. Vectorised over polygons and grid rows with a scanline through each row of cell centres:
    each polygon edge bounds the covered column interval from one side."""
    out = {int(c): np.zeros(grid.shape, bool) for c in np.unique(labels)}
    diff = {c: np.zeros((grid.rows, grid.cols + 1), np.int32) for c in out}
    first = 0
    for world in polygons:
        lab = labels[first:first + len(world)]
        first += len(world)
        uv = grid.to_cell(frame.to_local(np.asarray(world, float)))  # (P, V, 2): fractional (row, col)
        keep = (uv[..., 0].max(1) >= 0) & (uv[..., 0].min(1) <= grid.rows) & \
               (uv[..., 1].max(1) >= 0) & (uv[..., 1].min(1) <= grid.cols)
        if not keep.any():
            continue
        uv, lab = uv[keep], lab[keep]
        # Counter-clockwise in (row, col) so that the inside is left of every edge.
        u, v = uv[..., 0], uv[..., 1]
        area = np.sum(u * np.roll(v, -1, 1) - np.roll(u, -1, 1) * v, axis=1)
        uv[area < 0] = uv[area < 0, ::-1]
        a = uv
        e = np.roll(a, -1, 1) - a  # (P, V, 2) edge vectors
        r0 = max(math.floor(a[..., 0].min()), 0)
        r1 = min(math.ceil(a[..., 0].max()), grid.rows)
        rows = np.arange(r0, r1)
        s = rows + 0.5  # scanlines through the cell centres
        eu, ev = e[..., 0][:, None, :], e[..., 1][:, None, :]  # (P, 1, V)
        au, av = a[..., 0][:, None, :], a[..., 1][:, None, :]
        ds = s[None, :, None] - au  # (P, R, V)
        # Inside: eu * (v - av) - ev * (s - au) >= 0  ->  bound on v from each edge with eu != 0.
        with np.errstate(divide="ignore", invalid="ignore"):
            bound = av + ev * ds / eu
        lo = np.where(eu > _EPS, bound, -np.inf).max(2)
        hi = np.where(eu < -_EPS, bound, np.inf).min(2)
        flat_ok = np.all((np.abs(eu) > _EPS) | (-ev * ds >= -_EPS), axis=2)
        c0 = np.maximum(np.ceil(lo - 0.5 - _EPS), 0)
        c1 = np.minimum(np.floor(hi - 0.5 + _EPS), grid.cols - 1)
        ok = flat_ok & (c0 <= c1)
        p_i, r_i = np.nonzero(ok)
        c0, c1 = c0[p_i, r_i].astype(int), c1[p_i, r_i].astype(int)
        rr = rows[r_i]
        for c in np.unique(lab):
            sel = lab[p_i] == c
            np.add.at(diff[int(c)], (rr[sel], c0[sel]), 1)
            np.add.at(diff[int(c)], (rr[sel], c1[sel] + 1), -1)
    for c in out:
        out[c] = np.cumsum(diff[c][:, :-1], axis=1) > 0
    return out


def object_boxes(objects: Sequence[SceneObject], ego: Pose2D, grid: BevGrid,
                 boxes: np.ndarray | None = None) -> list[ObjectBox]:
    """ObjectBox (vehicle frame) of every object whose ground-truth box overlaps the grid area."""
    if not objects:
        return []
    boxes = _box_params(objects) if boxes is None else boxes
    corners = grid.to_cell(ego.to_local(_rect_corners(boxes)))  # (N, 4, 2)
    rect = np.array([[0.0, 0.0], [grid.rows, 0.0], [grid.rows, grid.cols], [0.0, grid.cols]])
    hit = np.nonzero(_overlaps_rect(corners, rect))[0]
    xy = ego.to_local(boxes[hit, :2])
    # Wrapped with math.remainder, which is exact: numpy's arctan2 (inside np.angle) takes a SIMD path on AVX-512
    # CPUs whose last bit differs from other CPUs', and a drive must be the same bytes on every machine.
    yaw = [math.remainder(float(d), math.tau) for d in boxes[hit, 2] - ego.yaw]
    out = []
    for k, i in enumerate(hit):
        o = objects[i]
        b = o.box
        out.append(ObjectBox(o.id, int(o.cls), o.kind, (float(xy[k, 0]), float(xy[k, 1]), (b.z0 + b.z1) / 2),
                             (b.length, b.width, b.z1 - b.z0), float(yaw[k])))
    return out


def _overlaps_rect(quads: np.ndarray, rect: np.ndarray) -> np.ndarray:
    """Separating-axis test of (N, 4, 2) rectangles against one rectangle; touching does not count."""
    out = np.ones(len(quads), bool)
    for axes_of in (quads, np.broadcast_to(rect, quads.shape)):
        for k in (0, 1):
            axis = axes_of[:, k + 1] - axes_of[:, k]  # (N, 2)
            pa = np.einsum("nvd,nd->nv", quads, axis)
            pb = np.einsum("vd,nd->nv", rect, axis)
            out &= (pa.max(1) > pb.min(1) + _EPS) & (pb.max(1) > pa.min(1) + _EPS)
    return out
