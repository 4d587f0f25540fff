"""Near-field memory: obstacles the network found around the car, carried with the car's odometry into the
cells that no sensor sees now. Torch-free; eval, the embedded runtime and the viewer share it.

Why: per frame, no ultrasonic beam reaches the middle of the flanks between the corner sensors, and at night the
cameras see little there either. A kerb or a bollard that the front corner sensor passed a second ago is still
there when it is beside the door; a parking system remembers it (cf. the USS environment maps of production
parking systems, built with wheel odometry).

Per frame, on the BEV grid:
1. The previous frame's memory (obstacle evidence in [0, 1] and its obstacle class, per cell) is moved into the
   current vehicle frame with the relative pose between the two odometry poses (nearest cell) and multiplied by
   DECAY, so that what moved away and the odometry's drift fade.
2. Where an ultrasonic beam reaches this cycle (the raster's coverage channel) the evidence is this frame's
   only: the sensor looks there now, and a memory would keep the trail of whatever moved.
3. Elsewhere the evidence is the larger of this frame's obstacle probability (1 - P(free)) and the memory's.
4. Within the near field (NEAR), a cell that the class map calls free but whose evidence is at least one half
   gets the remembered obstacle class. Memory only adds obstacles; it never clears what the network sees.

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

# Per frame: at 10 Hz evidence halves in 1.35 s. Chosen on the val-paired split (README, "The near-field memory"):
# the largest decay at which the precision of the obstacle calls within 1 m did not fall.
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
        self._evidence: np.ndarray | None = None
        self._classes: np.ndarray | None = None
        self._pose: Pose2D | None = None
        self._stamp: int | None = None
        self._before: tuple = (None, None, None, None)

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
        if pose is None:  # nothing to carry the memory with: this frame stands alone, the next one starts afresh
            self.reset()
            return np.asarray(classes, np.uint8).copy(), Recall(np.zeros(self.grid.shape, bool), "no odometry")
        if self._stamp is not None and int(stamp_ns) == self._stamp:
            # The same frame again (a viewer redrawing it): step from the state before it, so that it gives the same.
            self._evidence, self._classes, self._pose, self._stamp = self._before
        self._before = (self._evidence, self._classes, self._pose, self._stamp)
        reason = self._restart_reason(pose, stamp_ns)
        if reason:
            self.reset()
        from_memory = np.zeros(self.grid.shape, bool)
        if self._evidence is not None:
            moved, moved_classes = self._moved(pose)
            remembered = (moved * np.float32(self.decay)) * ~np.asarray(covered, bool)
            from_memory = remembered > evidence
            evidence = np.where(from_memory, remembered, evidence)
            kinds = np.where(from_memory, moved_classes, kinds).astype(np.uint8)
        self._evidence, self._classes = evidence, kinds
        self._pose, self._stamp = pose, int(stamp_ns)
        cells = self.near & ~self.ego & (np.asarray(classes) == SemanticClass.FREE) & from_memory & (evidence >= 0.5)
        out = np.where(cells, kinds, classes).astype(np.uint8)
        return out, Recall(cells, reason)

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

    def _moved(self, pose: Pose2D) -> tuple[np.ndarray, np.ndarray]:
        """The stored evidence and classes resampled into POSE's vehicle frame (nearest cell; outside: nothing)."""
        prev = self._pose.to_local(pose.to_world(self._centres))
        rc = np.floor(self.grid.to_cell(prev)).astype(np.int64)
        r, c = rc[..., 0], rc[..., 1]
        inside = (r >= 0) & (r < self.grid.rows) & (c >= 0) & (c < self.grid.cols)
        r, c = np.clip(r, 0, self.grid.rows - 1), np.clip(c, 0, self.grid.cols - 1)
        return np.where(inside, self._evidence[r, c], 0.0), np.where(inside, self._classes[r, c], SemanticClass.FREE)


__all__ = ["DEFAULT_DECAY", "MEMORY_HELP", "NearFieldMemory", "Recall", "check_decay"]
