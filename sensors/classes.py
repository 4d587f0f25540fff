"""The semantic classes of the BEV occupancy grid: the one place that lists them."""

from __future__ import annotations

from enum import IntEnum

import numpy as np


class SemanticClass(IntEnum):
    FREE = 0
    VEHICLE = 1
    PEDESTRIAN = 2
    STRUCTURE = 3  # wall, pillar, pole
    LOW_OBSTACLE = 4  # curb, bollard, cone, box


IGNORE = 255  # the ego car's footprint
NUM_CLASSES = len(SemanticClass)
CLASS_NAMES: tuple[str, ...] = tuple(c.name.lower() for c in SemanticClass)

# Where obstacles overlap in a cell, the first of these wins (ground truth paints them in reverse order; label
# resampling keeps the first present in a block), so a person beside a car is never hidden by it.
PRIORITY: tuple[SemanticClass, ...] = (SemanticClass.PEDESTRIAN, SemanticClass.VEHICLE, SemanticClass.LOW_OBSTACLE,
                                       SemanticClass.STRUCTURE)

# RGB colours for pictures (viewer, contact sheets, Foxglove); IGNORE is drawn dark grey.
CLASS_COLORS: dict[int, tuple[int, int, int]] = {
    SemanticClass.FREE: (40, 40, 40),
    SemanticClass.VEHICLE: (30, 144, 255),
    SemanticClass.PEDESTRIAN: (255, 60, 60),
    SemanticClass.STRUCTURE: (255, 200, 40),
    SemanticClass.LOW_OBSTACLE: (60, 220, 120),
    IGNORE: (90, 90, 90),
}


def colorize(class_map: np.ndarray) -> np.ndarray:
    """(H, W) uint8 class map -> (H, W, 3) uint8 RGB picture."""
    lut = np.zeros((256, 3), np.uint8)
    for cls, rgb in CLASS_COLORS.items():
        lut[int(cls)] = rgb
    return lut[class_map]
