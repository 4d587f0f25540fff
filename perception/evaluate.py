"""Evaluation of BEV class maps against ground truth, overall and per condition: IoU from accumulated confusion
matrices, recall of obstacles near the car body, and the per-sector distance error a parking display would show.
Torch-free (numpy), so the same code scores the torch model and the deployed engines."""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from perception.postprocess import SectorLayout, near_mask
from sensors.bev import BevGrid
from sensors.classes import CLASS_NAMES, IGNORE, NUM_CLASSES, SemanticClass
from sensors.errors import ConfigError
from sensors.messages import CONDITIONS, condition_of
from sensors.rig import Rig

OVERALL = ""  # key of the whole set in the accumulators


class Evaluator:
    """Accumulates frames, then `result()`.

    - IoU per class = TP / (TP + FP + FN) over all frames of a group (not a mean of per-frame IoUs). Target cells
      marked IGNORE do not count; a prediction of IGNORE on a labelled cell counts as a miss of its true class and
      a false positive of none. A class absent from both prediction and truth in a group has no IoU (None, JSON
      null) and is left out of that group's means. miou: mean over the obstacle classes 1..K-1; miou_all: over
      all K classes.
    - Conditions: each frame's labels mapped with sensors.messages.condition_of ("camera_failure:RV" ->
      "camera_failure"); a frame counts in every condition it has.
    - recall_1m: of the ground-truth obstacle cells whose centre lies within near_m of the body outline, the
      share predicted as any obstacle class (the class may be wrong: what matters near the car is "something");
      recall_1m_by_class: the same per true class over the whole set (which obstacles near the car are missed),
      near_cells_by_class: how many such cells each class had. precision_1m: of the labelled cells within near_m
      that the prediction calls an obstacle, the share that are one in truth (the price of a near-field bias,
      postprocess.class_map's free_confidence, in false warnings). recall_1m_by_uss_coverage: recall_1m split by
      whether an ultrasonic beam reached the cell in that frame (`covered`, the raster's coverage channel), with
      near_cells_by_uss_coverage: where the misses lie that the ultrasonic sensors could not have seen (mid-flank).
    - sector_error_m: per sector of SectorLayout where the truth has an obstacle on the grid, |predicted - true|
      nearest-obstacle distance. A sector the prediction leaves clear counts as if it reported the grid's edge:
      the distance from the body to the nearest border cell of that sector, the farthest a clear display can
      mean. Sectors clear in the truth are not scored (a false alarm there has no true distance).
    - sector_levels: what a parking-distance display shows, the warning level per sector (SectorLayout.levels:
      0 clear, then one level per threshold of levels_m the nearest obstacle is within), predicted against true,
      over every sector of every frame: `confusion` (true level x shown level, counts), `under_warned` (of the
      sectors with a true warning, the share shown a lower level: the danger understated), `missed_warning` (of
      those, the share shown clear: an obstacle within the outer threshold not shown at all; `missed_by_level`
      the same per true level 1..: the nearest obstacle between two thresholds), `over_warned` (of the
      sectors below the top level, the share shown a higher one) and `false_alarm` (of the sectors clear in the
      truth, the share shown any warning: the nuisance a near-field bias costs).
    - degraded_frames: the frames the synchroniser or decoder flagged degraded (a camera or the ultrasonic cycle
      missing, a sensor failed, a corrupt image: sensors.messages.Frame.degraded), overall and per condition;
      degraded_by_reason: how many frames had each reason, counts in a reason written as N ("uss N invalid echoes
      dropped"), so that a noisy drive gives one line, not one per count.
    """

    def __init__(self, rig: Rig, grid: BevGrid, num_classes: int = NUM_CLASSES, near_m: float = 1.0,
                 sectors: int = 16):
        if not 2 <= num_classes < IGNORE:
            raise ConfigError(f"Evaluator: num_classes must be in 2..{IGNORE - 1}, got {num_classes}")
        self.grid = grid
        self.num_classes = num_classes
        self.names = CLASS_NAMES if num_classes == NUM_CLASSES else ("free", *(f"class_{k}" for k in
                                                                             range(1, num_classes)))
        self.near_m = float(near_m)
        self.layout = SectorLayout(rig, grid, count=sectors)
        self._level_count = len(self.layout.levels_m) + 1  # warning levels: clear, then one per threshold
        self._near = near_mask(rig.vehicle, grid, self.near_m)
        border = np.zeros(grid.shape, np.uint8)
        border[[0, -1], :] = border[:, [0, -1]] = 1
        self.edge_m = self.layout(border).distance.astype(np.float64)
        self.reset()

    def reset(self) -> None:
        k = self.num_classes
        # Rows: true class; columns: predicted class, the last column a prediction of IGNORE ("void").
        self._confusion: dict[str, np.ndarray] = defaultdict(lambda: np.zeros((k, k + 1), np.int64))
        # within near_m: hits (true obstacle cells called an obstacle), true obstacle cells, cells called an obstacle
        self._near_hits: dict[str, np.ndarray] = defaultdict(lambda: np.zeros(3, np.int64))
        self._near_by_class = np.zeros((k, 2), np.int64)  # per true class: hit, total (whole set)
        self._near_by_coverage = np.zeros((2, 2), np.int64)  # [uncovered, covered]: hit, total (frames with covered)
        self._sector_errors: dict[str, list[np.ndarray]] = defaultdict(list)
        n = self._level_count
        # true level x shown level, every sector of every frame
        self._levels: dict[str, np.ndarray] = defaultdict(lambda: np.zeros((n, n), np.int64))
        self._frames: dict[str, int] = defaultdict(int)
        self._degraded: dict[str, int] = defaultdict(int)
        self._reasons: Counter[str] = Counter()

    def update(self, pred_class_map: np.ndarray, target: np.ndarray, conditions: list[str] | tuple[str, ...] = (),
               where: str = "frame", covered: np.ndarray | None = None, degraded: Sequence[str] = ()) -> None:
        """Add one frame: pred_class_map and target (rows, cols) integer class maps on the grid (IGNORE allowed
        in both), conditions the frame's labels, covered (rows, cols) bool the cells an ultrasonic beam reached
        (optional), degraded the frame's degraded reasons (Frame.degraded; none: a healthy frame). `where` names the
        frame in error messages."""
        pred, target = self._checked(pred_class_map, "prediction", where), self._checked(target, "target", where)
        if covered is not None and np.shape(covered) != self.grid.shape:
            raise ConfigError(f"Evaluator: {where}: the coverage mask must have the grid's shape {self.grid.shape}, "
                              f"got {np.shape(covered)}")
        k = self.num_classes
        labelled = target != IGNORE
        t = target[labelled].astype(np.int64)
        p = pred[labelled].astype(np.int64)
        p[p == IGNORE] = k
        confusion = np.bincount(t * (k + 1) + p, minlength=k * (k + 1)).reshape(k, k + 1)

        near = self._near & labelled & (target != SemanticClass.FREE)
        called = self._near & labelled & (pred != SemanticClass.FREE) & (pred != IGNORE)
        hit = near & called
        near_counts = np.array([hit.sum(), near.sum(), called.sum()], np.int64)
        true_near = target[near].astype(np.int64)
        self._near_by_class[:, 0] += np.bincount(target[hit].astype(np.int64), minlength=k)[:k]
        self._near_by_class[:, 1] += np.bincount(true_near, minlength=k)[:k]
        if covered is not None:
            c = np.asarray(covered, bool)
            for j, part in enumerate((~c, c)):
                self._near_by_coverage[j] += (int((hit & part).sum()), int((near & part).sum()))

        true_d = self.layout(target).distance.astype(np.float64)
        pred_d = self.layout(pred).distance.astype(np.float64)
        scored = np.isfinite(true_d)
        reported = np.where(np.isfinite(pred_d), pred_d, self.edge_m)
        errors = np.abs(reported[scored] - true_d[scored])
        n = self._level_count
        shown = self.layout.levels(pred_d).astype(np.int64)  # a clear sector (inf) is level 0
        levels = np.bincount(self.layout.levels(true_d).astype(np.int64) * n + shown, minlength=n * n).reshape(n, n)

        for group in (OVERALL, *self._groups(conditions)):
            self._confusion[group] += confusion
            self._near_hits[group] += near_counts
            self._sector_errors[group].append(errors)
            self._levels[group] += levels
            self._frames[group] += 1
            self._degraded[group] += bool(degraded)
        self._reasons.update({re.sub(r"\b\d+\b", "N", str(r)) for r in degraded})

    def _checked(self, a: np.ndarray, what: str, where: str) -> np.ndarray:
        a = np.asarray(a)
        if a.shape != self.grid.shape or not np.issubdtype(a.dtype, np.integer):
            raise ConfigError(f"Evaluator: {where}: {what} must be an integer class map of the grid's shape "
                              f"{self.grid.shape}, got {a.dtype} {a.shape}; evaluate on the model config's [bev] grid")
        bad = ((a >= self.num_classes) & (a != IGNORE)) | (a < 0)
        if bad.any():
            raise ConfigError(f"Evaluator: {where}: {what} holds value(s) {sorted(set(a[bad].tolist()))[:8]} that "
                              f"are no class (0..{self.num_classes - 1} or {IGNORE})")
        return a.astype(np.uint8)

    @staticmethod
    def _groups(conditions) -> list[str]:
        return sorted({condition_of(str(label)) for label in conditions if label})

    def result(self) -> dict[str, Any]:
        """The scores (see the class doc); None where a value is undefined (JSON null)."""
        groups = [c for c in CONDITIONS if c in self._frames] + sorted(set(self._frames) - set(CONDITIONS) - {OVERALL})
        out = {**self._scores(OVERALL), "frames": self._frames.get(OVERALL, 0)}
        out["by_condition"] = {g: {**self._scores(g), "frames": self._frames[g], "degraded_frames": self._degraded[g]}
                               for g in groups}
        out["recall_1m"] = self._recall(OVERALL)
        out["recall_1m_by_condition"] = {g: self._recall(g) for g in groups}
        out["precision_1m"] = self._precision(OVERALL)
        out["precision_1m_by_condition"] = {g: self._precision(g) for g in groups}
        near = list(zip(self.names, self._near_by_class.tolist(), strict=True))[1:]
        out["recall_1m_by_class"] = {name: float(h / n) if n else None for name, (h, n) in near}
        out["near_cells_by_class"] = {name: int(n) for name, (_, n) in near}
        parts = list(zip(("uncovered", "covered"), self._near_by_coverage.tolist(), strict=True))
        out["recall_1m_by_uss_coverage"] = {name: float(h / n) if n else None for name, (h, n) in parts}
        out["near_cells_by_uss_coverage"] = {name: int(n) for name, (_, n) in parts}
        out["sector_error_m"] = self._sector_stats(OVERALL)
        out["sector_error_m_by_condition"] = {g: self._sector_stats(g) for g in groups}
        out["sector_levels"] = self._level_stats(OVERALL)
        out["sector_levels_by_condition"] = {g: self._level_stats(g) for g in groups}
        out["degraded_frames"] = self._degraded.get(OVERALL, 0)
        out["degraded_by_reason"] = dict(sorted(self._reasons.items(), key=lambda kv: (-kv[1], kv[0])))
        return out

    def _scores(self, group: str) -> dict[str, Any]:
        cm = self._confusion.get(group, np.zeros((self.num_classes, self.num_classes + 1), np.int64))
        tp = np.diag(cm[:, : self.num_classes]).astype(np.float64)
        union = cm.sum(axis=1) + cm[:, : self.num_classes].sum(axis=0) - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = np.where(union > 0, tp / union, np.nan)
        return {"miou": _mean(iou[1:]), "miou_all": _mean(iou),
                "iou": {name: _value(v) for name, v in zip(self.names, iou, strict=True)}}

    def _recall(self, group: str) -> float | None:
        hit, total, _ = self._near_hits.get(group, (0, 0, 0))
        return float(hit / total) if total else None

    def _precision(self, group: str) -> float | None:
        hit, _, called = self._near_hits.get(group, (0, 0, 0))
        return float(hit / called) if called else None

    def _sector_stats(self, group: str) -> dict[str, Any]:
        errors = np.concatenate(self._sector_errors[group]) if self._sector_errors.get(group) else np.zeros(0)
        if not len(errors):
            return {"median": None, "p95": None, "sectors": 0}
        return {"median": float(np.median(errors)), "p95": float(np.percentile(errors, 95)), "sectors": len(errors)}

    def _level_stats(self, group: str) -> dict[str, Any]:
        n = self._level_count
        cm = self._levels.get(group, np.zeros((n, n), np.int64))
        below = np.tril(cm, -1)  # shown level < true level
        above = np.triu(cm, 1)
        warned, not_top, clear = int(cm[1:].sum()), int(cm[:-1].sum()), int(cm[0].sum())
        return {"thresholds_m": list(self.layout.levels_m), "confusion": cm.tolist(),
                "under_warned": float(below.sum() / warned) if warned else None,
                "missed_warning": float(cm[1:, 0].sum() / warned) if warned else None,
                "missed_by_level": [float(row[0] / row.sum()) if row.sum() else None for row in cm[1:]],
                "over_warned": float(above.sum() / not_top) if not_top else None,
                "false_alarm": float(cm[0, 1:].sum() / clear) if clear else None,
                "warned_sectors": warned, "clear_sectors": clear}


def _mean(values: np.ndarray) -> float | None:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if len(finite) else None


def _value(v: float) -> float | None:
    return None if math.isnan(v) else float(v)
