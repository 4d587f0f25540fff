"""Post-processing of the network's output: the class map, and per sector around the car body the distance to
the nearest obstacle with a warning level, as a parking-distance display shows them. Torch-free; the same code
runs on predictions and on ground truth, so eval compares like with like."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from perception.bev_config import ego_mask
from sensors.bev import BevGrid
from sensors.classes import IGNORE, SemanticClass
from sensors.errors import ConfigError
from sensors.rig import Rig, VehicleBody


def class_map(logits: np.ndarray, ego: np.ndarray, near: np.ndarray | None = None,
              free_confidence: float | None = None) -> np.ndarray:
    """(C, rows, cols) or (B, C, rows, cols) logits -> (rows, cols) / (B, rows, cols) uint8 argmax, with the
    ego footprint (ego: (rows, cols) bool, perception.bev_config.ego_mask) set to IGNORE.

    The near-field bias of a parking system, which would rather warn falsely than miss an obstacle beside the car:
    with FREE_CONFIDENCE, a cell of NEAR ((rows, cols) bool, e.g. near_mask) is called free only where the softmax
    gives FREE at least that probability, and otherwise its most likely obstacle class. None: the plain argmax."""
    logits = np.asarray(logits)
    if logits.ndim not in (3, 4) or logits.shape[-3] < 2 or logits.shape[-3] > IGNORE:
        raise ConfigError(f"class_map: logits must be (C, rows, cols) or (B, C, rows, cols) with 2..{IGNORE} "
                          f"classes, got shape {logits.shape}; check the model's output binding")
    if logits.shape[-2:] != np.shape(ego):
        raise ConfigError(f"class_map: logits of BEV shape {logits.shape[-2:]} do not match the ego mask "
                          f"{np.shape(ego)}; the model config's [bev] table and the grid disagree")
    out = np.argmax(logits, axis=-3).astype(np.uint8)
    if free_confidence is not None:
        check_free_confidence(free_confidence)
        if near is None or np.shape(near) != np.shape(ego):
            raise ConfigError(f"class_map: free_confidence needs a near mask of the grid's shape {np.shape(ego)}, "
                              f"got {None if near is None else np.shape(near)}")
        obstacle = obstacle_class(logits)
        p_free = free_probability(logits)
        doubtful = np.asarray(near, bool) & (p_free < free_confidence)
        out = np.where(doubtful, obstacle, out).astype(np.uint8)
    out[..., np.asarray(ego, bool)] = IGNORE
    return out


def free_probability(logits: np.ndarray) -> np.ndarray:
    """The softmax's FREE probability of (..., C, rows, cols) logits, (..., rows, cols) float32, without overflow."""
    x = np.asarray(logits, np.float32)
    shifted = x - x.max(axis=-3, keepdims=True)
    return np.exp(shifted[..., 0, :, :]) / np.exp(shifted).sum(axis=-3)


def obstacle_class(logits: np.ndarray) -> np.ndarray:
    """The most likely obstacle class (1..C-1) of (..., C, rows, cols) logits, (..., rows, cols) uint8."""
    return (np.argmax(np.asarray(logits)[..., 1:, :, :], axis=-3) + 1).astype(np.uint8)


def check_free_confidence(value: float) -> float:
    """The near-field free confidence: a probability in [0.5, 1). Below a half the bias would call a cell free
    that the network finds more likely occupied than free, the opposite of what it is for; 1 would never call a near
    cell free. Returns it as a float; a ConfigError otherwise."""
    if not (isinstance(value, int | float) and np.isfinite(value) and 0.5 <= value < 1):
        raise ConfigError(f"free confidence must be a probability in [0.5, 1), got {value!r} (0.9: a cell within the "
                          "near field is called free only when the network gives FREE at least 90 %)")
    return float(value)


def near_mask(body: VehicleBody, grid: BevGrid, near_m: float = 1.0) -> np.ndarray:
    """(rows, cols) bool: the cells outside the ego footprint whose centre lies within near_m of the body outline
    (the near field that eval's recall_1m scores)."""
    if not (np.isfinite(near_m) and near_m >= 0):
        raise ConfigError(f"near_mask: near_m must be a distance >= 0, got {near_m}")
    return (body.distance_to_body(grid.cell_centres()) <= near_m) & ~ego_mask(body, grid)


def body_cell_distance(body: VehicleBody, grid: BevGrid) -> np.ndarray:
    """(rows, cols) float: the distance from the body outline (a rectangle) to each cell (a square): per axis the gap
    between the intervals, or 0 where they overlap. What a parking display's levels are measured by."""
    xy = grid.cell_centres().reshape(-1, 2)
    h = grid.cell / 2
    dx = np.maximum(np.maximum(body.x_min - (xy[:, 0] + h), (xy[:, 0] - h) - body.x_max), 0.0)
    dy = np.maximum(np.abs(xy[:, 1]) - h - body.width / 2, 0.0)
    return np.hypot(dx, dy).reshape(grid.shape)


# A distance within this of a threshold counts as at it. Distances are cell geometry (0.2 m cell edges against the
# body outline) carried in float32: a cell edge 0.3 m from the body comes out 0.30000001, and without the tolerance
# an obstacle at exactly a level's distance was shown one level milder (at 0.3 and 0.8 m every such cell was, at
# 1.5 m none). 0.1 mm is far below any sensor's or cell's resolution.
LEVEL_TOLERANCE_M = 1e-4
# A parking display's warning thresholds, clear -> stop: caution within 1.5 m, warning within 0.8 m, stop within 0.3 m.
LEVELS_M = (1.5, 0.8, 0.3)


def within(distance: np.ndarray, threshold_m) -> np.ndarray:
    """distance <= threshold_m (broadcast), with LEVEL_TOLERANCE_M: what "within X m" means for the display."""
    return np.asarray(distance, float) <= np.asarray(threshold_m, float) + LEVEL_TOLERANCE_M


def warning_level(distance: np.ndarray, levels_m: tuple[float, ...]) -> np.ndarray:
    """uint8 warning level per distance: the number of the thresholds LEVELS_M (clear -> stop) it is within."""
    return within(np.asarray(distance, float)[..., None], np.asarray(levels_m, float)).sum(-1).astype(np.uint8)


# The echo floor: a direct echo this close to its sensor has its arc at the bumper, inside the display's last level.
ECHO_FLOOR_RANGE_M = 0.35
ECHO_FLOOR_WITHIN_M = 0.3
# The `--echo-floor` option of eval, run and view.
ECHO_FLOOR_HELP = (f"echo floor: within {ECHO_FLOOR_WITHIN_M:g} m of the body a cell on the arc of a direct ultrasonic "
                   f"echo of at most {ECHO_FLOOR_RANGE_M:g} m is an obstacle, whatever the network says")


def echo_floor_zone(rig: Rig, grid: BevGrid, within_m: float = ECHO_FLOOR_WITHIN_M,
                    range_m: float = ECHO_FLOOR_RANGE_M) -> np.ndarray:
    """(rows, cols) bool: the cells within WITHIN_M of the body (body_cell_distance) and within RANGE_M of some
    ultrasonic sensor, outside the ego footprint: where a direct echo's arc (uss_raster's direct_arc channel) can
    only come from an echo of at most RANGE_M."""
    xy = grid.cell_centres().reshape(-1, 2)
    sensors = np.array([s.position[:2] for s in rig.uss], float).reshape(-1, 2)
    if not len(sensors):
        return np.zeros(grid.shape, bool)
    to_sensor = np.hypot(xy[:, None, 0] - sensors[None, :, 0], xy[:, None, 1] - sensors[None, :, 1]).min(axis=1)
    zone = within(body_cell_distance(rig.vehicle, grid), within_m) & (to_sensor.reshape(grid.shape) <= range_m)
    return zone & ~ego_mask(rig.vehicle, grid)


def apply_echo_floor(classes: np.ndarray, direct_arc: np.ndarray, zone: np.ndarray) -> np.ndarray:
    """The echo floor of a parking display: CLASSES (rows, cols) with every FREE cell of ZONE (echo_floor_zone) that
    a direct echo's arc crosses (DIRECT_ARC, the raster channel, at least one half) called LOW_OBSTACLE. What a
    classic park-distance control does with the raw distances, kept under the network's map: an ultrasonic sensor
    that measures something within a few decimetres is believed even where the network sees nothing (it has seen
    little that close). It only adds obstacles."""
    classes = np.asarray(classes)
    if np.shape(direct_arc) != classes.shape or np.shape(zone) != classes.shape:
        raise ConfigError(f"apply_echo_floor: class map {classes.shape}, direct arc {np.shape(direct_arc)} and zone "
                          f"{np.shape(zone)} must be the same grid")
    floor = np.asarray(zone, bool) & (np.asarray(direct_arc) >= 0.5) & (classes == SemanticClass.FREE)
    return np.where(floor, np.uint8(SemanticClass.LOW_OBSTACLE), classes).astype(classes.dtype)


@dataclass
class Sectors:
    """Per sector: distance (S,) float32 metres from the body outline to the nearest obstacle (inf: nothing on
    the grid), level (S,) uint8 0 clear .. len(levels_m) stop, angles (S, 2) float32 (start, end) bearings in
    radians about the body centre, counter-clockwise: a bearing b is in sector k iff
    (b - start) mod 2π < (end - start) mod 2π."""

    distance: np.ndarray
    level: np.ndarray
    angles: np.ndarray
    names: tuple[str, ...] = ()


class SectorLayout:
    """Sectors around the car body, as a parking-distance display splits it.

    Each side of the body footprint is cut into equal parts (front and rear bumper count//4 each plus half the
    remainder, each flank count//4), and every sector is the wedge, seen from the body centre, between the rays
    through the ends of its part: the bumpers get as many sectors as the long flanks, and a corner is
    split between the bumper and flank sectors that meet there. Sectors run clockwise seen from above,
    starting at the front-left corner: front_1 (left) .. front_n (right), right_1 (front) .., rear_1 (right)
    .., left_1 (rear) ...

    Distance is from the body outline to the nearest point of an obstacle cell (its edge, not its centre:
    ground truth marks cells whose centre lies in an object, so the centre is on average half a cell behind
    the object's surface, and a parking display must not report an obstacle farther than it is). A cell
    counts as an obstacle unless it is FREE or IGNORE, and belongs to the sector its centre's bearing
    falls in. Cells inside the footprint are the ego car itself and never count.
    """

    def __init__(self, rig: Rig, grid: BevGrid, count: int = 16, levels_m: tuple[float, ...] = LEVELS_M):
        if count < 4 or count % 2:
            raise ConfigError(f"SectorLayout: count must be an even number >= 4 (16 for a 4+4+4+4 layout), "
                              f"got {count}")
        levels = np.asarray(levels_m, float)
        if levels.ndim != 1 or not len(levels) or np.any(levels <= 0) or np.any(np.diff(levels) >= 0):
            raise ConfigError(f"SectorLayout: levels_m must be positive distances in decreasing order "
                              f"(clear -> stop), got {levels_m}")
        self.grid = grid
        self.levels_m = tuple(float(v) for v in levels)
        body = rig.vehicle
        side = count // 4
        bumper = (count - 2 * side) // 2
        (fl, fr, rr, rl) = body.footprint()  # front-left, front-right, rear-right, rear-left
        edges = (("front", fl, fr, bumper), ("right", fr, rr, side), ("rear", rr, rl, bumper), ("left", rl, fl, side))
        cx, cy = body.centre
        points, names = [], []
        for name, a, b, n in edges:
            t = np.arange(n)[:, None] / n
            points.append(a + t * (b - a))  # the start of each part; the next part's start ends it
            names += [f"{name}_{k + 1}" for k in range(n)]
        points = np.concatenate(points)
        ray = np.arctan2(points[:, 1] - cy, points[:, 0] - cx)
        # Sector k runs clockwise from ray k to ray k+1: counter-clockwise, that is [ray k+1, ray k).
        self.angles = np.stack([np.roll(ray, -1), ray], axis=1).astype(np.float32)
        self.names = tuple(names)
        self.count = count

        xy = grid.cell_centres().reshape(-1, 2)
        bearing = np.arctan2(xy[:, 1] - cy, xy[:, 0] - cx)
        ccw_start = self.angles[:, 0].astype(float)
        width = (self.angles[:, 1] - ccw_start) % (2 * np.pi)
        offset = (bearing[:, None] - ccw_start[None, :]) % (2 * np.pi)
        inside = offset < width[None, :]
        self._sector = np.argmax(inside, axis=1)  # each bearing falls in exactly one wedge
        self._distance = body_cell_distance(body, grid).reshape(-1)
        self._not_ego = ~ego_mask(body, grid).reshape(-1)

    def sector_of_cells(self) -> np.ndarray:
        """(rows, cols) sector index of every cell (the viewer draws the layout with it)."""
        return self._sector.reshape(self.grid.shape)

    def levels(self, distance: np.ndarray) -> np.ndarray:
        """Warning level per distance: the number of thresholds in levels_m it is within (0 clear .. stop)."""
        return warning_level(distance, self.levels_m)

    def __call__(self, class_map: np.ndarray) -> Sectors:
        cm = np.asarray(class_map)
        if cm.shape != self.grid.shape:
            raise ConfigError(f"SectorLayout: class map of shape {cm.shape} does not match the BEV grid "
                              f"{self.grid.shape}; use the grid of the model config's [bev] table")
        flat = cm.reshape(-1)
        obstacle = (flat != SemanticClass.FREE) & (flat != IGNORE) & self._not_ego
        distance = np.full(self.count, np.inf)
        np.minimum.at(distance, self._sector[obstacle], self._distance[obstacle])
        distance = distance.astype(np.float32)
        return Sectors(distance, self.levels(distance), self.angles.copy(), self.names)
