"""The BEV configuration of a model ([bev] table of its TOML config): grid extent and cell, the heights the
camera tables sample, the network's image size; and the ego footprint mask on that grid. Torch-free."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from sensors.bev import BevGrid
from sensors.errors import ConfigError
from sensors.rig import Rig, VehicleBody


def reject_unknown_fields(cls: type, d: dict[str, Any], source: str, prefix: str = "") -> None:
    """ConfigError for keys of `d` that are not fields of dataclass `cls`: a typo must not silently fall back
    to a default."""
    known = {f.name for f in fields(cls)} - {"source"}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ConfigError(f"{source}: unknown field(s) {', '.join(prefix + k for k in unknown)}; "
                          f"expected some of {', '.join(sorted(known))}")


@dataclass(frozen=True)
class BevConfig:
    """Validated on construction; `source` (the config file) only names the culprit in error messages."""

    extent: float = 16.0  # metres, square, centred on the car body (sensors.bev.BevGrid.around)
    cell: float = 0.2  # 0.2 m: small configuration (80 x 80); 0.1 m: the paper's (160 x 160)
    heights: tuple[float, ...] = (0.25, 0.75, 1.25)  # metres above ground where cell centres are sampled
    image_size: tuple[int, int] = (256, 192)  # network input (width, height) per camera
    source: str = field(default="<bev config>", compare=False, repr=False)

    def __post_init__(self):
        where = f"{self.source}: field 'bev."
        for name in ("extent", "cell"):
            v = getattr(self, name)
            if not _is_number(v) or not math.isfinite(v) or v <= 0:
                raise ConfigError(f"{where}{name}' must be a positive number of metres, got {v!r}")
        n = self.extent / self.cell
        if abs(n - round(n)) > 1e-6 or round(n) < 2:
            raise ConfigError(f"{where}cell' = {self.cell} does not divide 'bev.extent' = {self.extent} into a "
                              "whole number (>= 2) of cells; pick e.g. extent 16.0 with cell 0.1 or 0.2")
        if not isinstance(self.heights, (tuple, list)) or not self.heights:
            raise ConfigError(f"{where}heights' must be a non-empty list of metres, got {self.heights!r}")
        if not all(_is_number(h) and math.isfinite(h) and 0 <= h <= 5 for h in self.heights):
            raise ConfigError(f"{where}heights' must be numbers in [0, 5] m above ground, got {list(self.heights)}")
        if len(set(self.heights)) != len(self.heights):
            raise ConfigError(f"{where}heights' has duplicates: {list(self.heights)}")
        size = self.image_size
        if (not isinstance(size, (tuple, list)) or len(size) != 2
                or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size)):
            raise ConfigError(f"{where}image_size' must be [width, height] in whole pixels, got {size!r}")
        # Normalise lists from TOML into tuples so the config stays hashable.
        object.__setattr__(self, "heights", tuple(float(h) for h in self.heights))
        object.__setattr__(self, "image_size", (int(size[0]), int(size[1])))
        object.__setattr__(self, "extent", float(self.extent))
        object.__setattr__(self, "cell", float(self.cell))

    @property
    def size(self) -> int:
        """Cells along each side of the grid."""
        return round(self.extent / self.cell)

    def grid(self, rig: Rig) -> BevGrid:
        """The BEV grid of this configuration around the rig's car body."""
        return BevGrid.around(rig.vehicle, self.extent, self.cell)

    def to_dict(self) -> dict[str, Any]:
        """The [bev] table that from_dict reads back."""
        return {"extent": self.extent, "cell": self.cell, "heights": list(self.heights),
                "image_size": list(self.image_size)}

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "<bev config>") -> BevConfig:
        """Build from the [bev] table of a model config; missing keys take the defaults, unknown keys are an
        error (a typo must not silently fall back to a default)."""
        if not isinstance(d, dict):
            raise ConfigError(f"{source}: [bev] must be a table, got {type(d).__name__}")
        reject_unknown_fields(cls, d, source, "bev.")
        kw = dict(d)
        for key in ("heights", "image_size"):
            if key in kw and isinstance(kw[key], list):
                kw[key] = tuple(kw[key])
        return cls(**kw, source=source)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def ego_mask(body: VehicleBody, grid: BevGrid) -> np.ndarray:
    """(rows, cols) bool: cells whose centre lies inside or on the edge of the car body footprint, the cells
    ground truth marks IGNORE (sim_data.groundtruth). The tolerance keeps centres that sit on the edge (0.9 m
    on a 0.2 m grid) inside despite rounding."""
    xy = grid.cell_centres()
    h = body.width / 2 + 1e-6
    return ((xy[..., 0] >= body.x_min - 1e-6) & (xy[..., 0] <= body.x_max + 1e-6)
            & (xy[..., 1] >= -h) & (xy[..., 1] <= h))
