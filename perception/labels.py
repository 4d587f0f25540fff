"""Ground truth at the simulator's 0.1 m cell resampled to the model's coarser cell, without losing obstacles.
Torch-free."""

from __future__ import annotations

import numpy as np

from sensors.classes import IGNORE, NUM_CLASSES, PRIORITY, SemanticClass
from sensors.errors import ConfigError, LogFormatError

# Rank of every uint8 value: 0 free or ignore, then obstacles by increasing priority; -1 for values that are no class.
_RANK = np.full(256, -1, np.int16)
_RANK[SemanticClass.FREE] = 0
_RANK[IGNORE] = 0
for _rank, _cls in enumerate(reversed(PRIORITY), start=1):
    _RANK[_cls] = _rank
_CLASS_OF_RANK = np.array([SemanticClass.FREE, *reversed(PRIORITY)], np.uint8)


def resample_labels(occupancy: np.ndarray, factor: int, source: str = "ground truth") -> np.ndarray:
    """(rows, cols) uint8 class map -> (rows/factor, cols/factor): each coarse cell covers a factor x factor block.

    Rule, per block:
    - IGNORE where the ego footprint (IGNORE) covers at least half of the block. With the footprint snapped to
      fine cells this is exactly the coarse cells whose centre lies inside or on the footprint, the cells
      perception.bev_config.ego_mask marks and postprocess.class_map overwrites with IGNORE: a label there could
      never be predicted. ("Most of the block" would leave the half-covered cells along the flanks labelled.)
    - otherwise the highest-priority obstacle class present anywhere in the block (sensors.classes.PRIORITY:
      pedestrian > vehicle > low obstacle > structure), so that a pole or a leg one fine cell wide survives;
    - otherwise FREE (a few ignore cells in a mostly free block read as free ground).

    factor 1 returns a copy. `source` names the data in error messages.
    """
    occ = np.asarray(occupancy)
    if not isinstance(factor, (int, np.integer)) or isinstance(factor, bool) or factor < 1:
        raise ConfigError(f"{source}: resampling factor must be a whole number >= 1, got {factor!r}; the model's "
                          "cell must be a multiple of the ground-truth cell")
    if occ.ndim != 2 or occ.dtype != np.uint8:
        raise LogFormatError(f"{source}: occupancy must be a (rows, cols) uint8 class map, got {occ.dtype} "
                             f"{occ.shape}")
    rows, cols = occ.shape
    if rows % factor or cols % factor:
        raise ConfigError(f"{source}: a {rows} x {cols} grid does not split into {factor} x {factor} blocks; pick a "
                          "model cell that divides the ground-truth extent")
    rank = _RANK[occ]
    if (rank < 0).any():
        bad = sorted(set(np.unique(occ[rank < 0]).tolist()))
        raise LogFormatError(f"{source}: occupancy holds value(s) {bad} that are no class (0..{NUM_CLASSES - 1} or "
                             f"{IGNORE} ignore); the log's ground truth is not a nearfield class map")
    if factor == 1:
        return occ.copy()
    r, c = rows // factor, cols // factor
    blocks = rank.reshape(r, factor, c, factor)
    out = _CLASS_OF_RANK[blocks.max(axis=(1, 3))]
    ego = (occ == IGNORE).reshape(r, factor, c, factor).sum(axis=(1, 3))
    out[2 * ego >= factor * factor] = IGNORE
    return out
