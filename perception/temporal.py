"""Near-field memory: obstacles the network found around the car, carried with the car's odometry into the
cells that no sensor sees now. Torch-free; eval, the embedded runtime and the viewer share it.

Why: per frame, no ultrasonic beam reaches the middle of the flanks between the corner sensors, and at night the
cameras see little there either. A kerb or a bollard that the front corner sensor passed a second ago is still
there when it is beside the door; a parking system remembers it (cf. the USS environment maps of production
parking systems, built with wheel odometry).

The memory is a set of obstacle points fixed in the odometry ("odom") frame: every cell where the network's
obstacle evidence (1 - P(free)) is at least one half, at its centre, with that evidence and its obstacle class.
Points stay where they were seen, so motions of a fraction of a cell per frame add up exactly (a grid resampled from
frame to frame would round every one of them). Per frame:
1. The points are brought into the current vehicle frame with the odometry pose and their evidence multiplied by
   DECAY, so that what moved away and the odometry's drift fade; those below one half are forgotten.
2. Points in cells that an ultrasonic beam reaches this cycle (the raster's coverage channel) are forgotten: the
   sensor looks there now, and a memory would keep the trail of whatever moved.
3. A cell's evidence is the larger of this frame's and that of the points in it (the class of the strongest).
4. Within the near field (NEAR), a cell that the class map calls free but whose evidence is at least one half
   gets the remembered obstacle class. Memory only adds obstacles; it never clears what the network sees.
5. This frame's obstacle cells stronger than what the memory holds there join the points, in place of the weaker
   points in those cells (which, decaying alike, would stay weaker for good), so a parked car does not pile up
   copies and a cell holds about one point.

The memory starts empty and resets, with a reason, when a frame has no odometry, when frames are more than MAX_GAP_S
apart, when time runs backwards, or when the pose jumps farther than a car can move in the gap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from perception.postprocess import free_probability, obstacle_class
from sensors.bev import BevGrid
from sensors.classes import SemanticClass
from sensors.errors import ConfigError
from sensors.geometry import Pose2D

# Per frame: at 10 Hz evidence halves in 1.35 s. Chosen on the first two scenes of the val-paired split
# (perception/docs/near_field.md, "The near-field memory"): the largest decay at which the precision of the obstacle
# calls within 1 m did not fall.
DEFAULT_DECAY = 0.95
MAX_GAP_S = 0.5  # a longer gap between frames (dropped frames, a seek in the viewer) starts a fresh memory
MAX_SPEED_MPS = 15.0  # faster than any parking manoeuvre: an odometry jump, not a motion
# The `--memory [DECAY]` option of eval, run and view.
MEMORY_HELP = ("near-field memory: obstacles carried with the log's odometry into the cells no sensor sees now, their "
               f"evidence times DECAY per frame (0..1; {DEFAULT_DECAY:g} without a value; default: off)")


def check_decay(value: float) -> float:
    """The memory's decay per frame: a number in (0, 1]. Returns it as a float; a ConfigError otherwise."""
    if not (isinstance(value, int | float) and np.isfinite(value) and 0 < value <= 1):
        raise ConfigError(f"memory decay must be in (0, 1], got {value!r} (0.9: remembered evidence keeps 90 % per "
                          "frame; 1 never forgets)")
    return float(value)


@dataclass
class Recall:
    """What the memory did to one frame: cells (R, W) bool that the memory turned from free into an obstacle,
    and why it restarted at this frame ("" when it carried on)."""

    cells: np.ndarray
    reset: str = ""


class NearFieldMemory:
    """The memory of one stream of frames in time order (one drive). See the module doc for the rule.

    near, ego: (rows, cols) bool masks on GRID (postprocess.near_mask, bev_config.ego_mask)."""

    def __init__(self, grid: BevGrid, near: np.ndarray, ego: np.ndarray, decay: float = DEFAULT_DECAY,
                 max_gap_s: float = MAX_GAP_S, max_speed_mps: float = MAX_SPEED_MPS):
        for name, mask in (("near", near), ("ego", ego)):
            if np.shape(mask) != grid.shape:
                raise ConfigError(f"NearFieldMemory: the {name} mask has shape {np.shape(mask)}, the grid "
                                  f"{grid.shape}")
        self.grid = grid
        self.near = np.asarray(near, bool)
        self.ego = np.asarray(ego, bool)
        self.decay = check_decay(decay)
        self.max_gap_ns = int(max_gap_s * 1e9)
        self.max_speed = float(max_speed_mps)
        self._centres = grid.cell_centres()
        # How far outside the grid points are kept (a car reversing brings them back); farther ones are forgotten.
        self._margin = 0.5 * max(grid.rows, grid.cols) * grid.cell
        self.reset()

    @property
    def reach(self) -> int | None:
        """The oldest age, in frames, at which a remembered obstacle can still be recalled (its evidence, at most 1,
        times DECAY per frame, is still at least one half): stepping a fresh memory through the `reach` frames
        before frame k gives frame k exactly what stepping through the whole drive gives it. None: decay 1 never
        forgets."""
        if self.decay >= 1.0:
            return None
        return math.floor(math.log(0.5) / math.log(self.decay))

    def reset(self) -> None:
        """Forget everything (a new drive, a seek)."""
        self._points = np.zeros((0, 2))  # odom-frame (x, y) of remembered obstacle cells
        self._evidence = np.zeros(0, np.float32)
        self._classes = np.zeros(0, np.uint8)
        self._pose: Pose2D | None = None
        self._stamp: int | None = None
        self._before: tuple = (self._points, self._evidence, self._classes, None, None)

    @property
    def points(self) -> int:
        """How many obstacle points the memory holds."""
        return len(self._points)

    def step(self, logits: np.ndarray, classes: np.ndarray, covered: np.ndarray, pose: Pose2D | None,
             stamp_ns: int) -> tuple[np.ndarray, Recall]:
        """One frame: logits (C, rows, cols) of the network, classes (rows, cols) its class map
        (postprocess.class_map), covered (rows, cols) the cells an ultrasonic beam reached, pose the vehicle's
        odometry pose at stamp_ns (None: no odometry). Returns the class map with remembered obstacles and a Recall."""
        logits = np.asarray(logits)
        if logits.ndim != 3 or logits.shape[1:] != self.grid.shape or np.shape(classes) != self.grid.shape \
                or np.shape(covered) != self.grid.shape:
            raise ConfigError(f"NearFieldMemory: logits {logits.shape}, classes {np.shape(classes)} and covered "
                              f"{np.shape(covered)} must be (C, rows, cols), (rows, cols) and (rows, cols) on the grid "
                              f"{self.grid.shape}")
        evidence = (1.0 - free_probability(logits)).astype(np.float32)
        kinds = obstacle_class(logits)
        if pose is None or not all(math.isfinite(v) for v in (pose.x, pose.y, pose.yaw)):
            # Nothing to carry the memory with: this frame stands alone, the next one starts afresh.
            self.reset()
            why = "no odometry" if pose is None else f"odometry not finite ({pose.x}, {pose.y}, {pose.yaw})"
            return np.asarray(classes, np.uint8).copy(), Recall(np.zeros(self.grid.shape, bool), why)
        if self._stamp is not None and int(stamp_ns) == self._stamp:
            # The same frame again (a viewer redrawing it): step from the state before it, so that it gives the same.
            self._points, self._evidence, self._classes, self._pose, self._stamp = self._before
        self._before = (self._points, self._evidence, self._classes, self._pose, self._stamp)
        reason = self._restart_reason(pose, stamp_ns)
        if reason:
            self.reset()
        remembered, remembered_classes, (r, c) = self._recall(pose, np.asarray(covered, bool))
        from_memory = remembered > evidence
        cells = self.near & ~self.ego & (np.asarray(classes) == SemanticClass.FREE) & from_memory & (remembered >= 0.5)
        out = np.where(cells, remembered_classes, classes).astype(np.uint8)
        new = (evidence >= 0.5) & ~self.ego & (evidence > remembered)
        weaker = (r >= 0) & new[r, c]  # old points in those cells (r = -1: outside): outlived by the new ones
        self._points = np.concatenate([self._points[~weaker], pose.to_world(self._centres[new])])
        self._evidence = np.concatenate([self._evidence[~weaker], evidence[new]])
        self._classes = np.concatenate([self._classes[~weaker], kinds[new].astype(np.uint8)])
        self._pose, self._stamp = pose, int(stamp_ns)
        return out, Recall(cells, reason)

    def _recall(self, pose: Pose2D, covered: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple]:
        """Decay the points, forget the weak, the covered and the far ones, and rasterise the rest in POSE's
        vehicle frame: (evidence, class) per cell, 0 and FREE where no point lies, and each kept point's cell
        (rows, cols; -1 outside the grid)."""
        evidence = np.zeros(self.grid.shape, np.float32)
        kinds = np.full(self.grid.shape, SemanticClass.FREE, np.uint8)
        if not len(self._points):
            return evidence, kinds, (np.zeros(0, np.int64), np.zeros(0, np.int64))
        e = self._evidence * np.float32(self.decay)
        frac = self.grid.to_cell(pose.to_local(self._points))  # fractional (row, col) in this frame
        rc = np.floor(frac).astype(np.int64)
        r, c = rc[:, 0], rc[:, 1]
        inside = (r >= 0) & (r < self.grid.rows) & (c >= 0) & (c < self.grid.cols)
        r, c = np.where(inside, r, 0), np.where(inside, c, 0)
        half = np.array(self.grid.shape) / 2
        near_grid = np.all(np.abs(frac - half) <= half + self._margin / self.grid.cell, axis=1)
        keep = (e >= 0.5) & ~(inside & covered[r, c]) & near_grid
        self._points, self._evidence, self._classes = self._points[keep], e[keep], self._classes[keep]
        r, c, e, inside = r[keep], c[keep], e[keep], inside[keep]
        rows, cols, e_in = r[inside], c[inside], e[inside]
        np.maximum.at(evidence, (rows, cols), e_in)
        strongest = e_in == evidence[rows, cols]  # a cell takes the class of its strongest point
        kinds[rows[strongest], cols[strongest]] = self._classes[inside][strongest]
        return evidence, kinds, (np.where(inside, r, -1), np.where(inside, c, -1))

    def _restart_reason(self, pose: Pose2D, stamp_ns: int) -> str:
        if self._stamp is None or self._pose is None:
            return ""
        gap = int(stamp_ns) - self._stamp
        if gap <= 0:
            return f"time ran backwards by {-gap / 1e6:.0f} ms"
        if gap > self.max_gap_ns:
            return f"{gap / 1e9:.2f} s since the last frame"
        moved = float(np.hypot(pose.x - self._pose.x, pose.y - self._pose.y))
        if moved > self.max_speed * gap / 1e9 + 0.5:
            return f"odometry jumped {moved:.1f} m in {gap / 1e6:.0f} ms"
        return ""


__all__ = ["DEFAULT_DECAY", "MEMORY_HELP", "NearFieldMemory", "Recall", "check_decay"]
