"""The BEV grid around the car: geometry shared by ground truth, rasterisers, network and viewer.

Image convention: row 0 is the front-most row, column 0 the left-most (+y) column, so a BEV picture reads
like a map with the car driving up.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sensors.rig import VehicleBody


@dataclass(frozen=True)
class BevGrid:
    """A square-celled grid of `rows` x `cols` cells of `cell` metres, centred on (centre_x, centre_y)."""

    rows: int = 160
    cols: int = 160
    cell: float = 0.10
    centre_x: float = 1.40
    centre_y: float = 0.0

    @classmethod
    def around(cls, body: VehicleBody, extent: float = 16.0, cell: float = 0.10) -> BevGrid:
        """The grid of `extent` x `extent` metres centred on the car body (DESIGN: 16 m at 0.10 m)."""
        n = round(extent / cell)
        cx, cy = body.centre
        return cls(n, n, cell, cx, cy)

    @property
    def shape(self) -> tuple[int, int]:
        return self.rows, self.cols

    @property
    def x_max(self) -> float:  # front edge
        return self.centre_x + self.rows * self.cell / 2

    @property
    def y_max(self) -> float:  # left edge
        return self.centre_y + self.cols * self.cell / 2

    def cell_centres(self) -> np.ndarray:
        """(rows, cols, 2) vehicle-frame (x, y) of every cell centre."""
        r = np.arange(self.rows)
        c = np.arange(self.cols)
        x = self.x_max - (r + 0.5) * self.cell
        y = self.y_max - (c + 0.5) * self.cell
        X, Y = np.meshgrid(x, y, indexing="ij")
        return np.stack([X, Y], axis=-1)

    def to_cell(self, xy: np.ndarray) -> np.ndarray:
        """(N, 2) vehicle-frame points -> (N, 2) fractional (row, col); integer parts index cells."""
        xy = np.asarray(xy, dtype=float)
        row = (self.x_max - xy[..., 0]) / self.cell
        col = (self.y_max - xy[..., 1]) / self.cell
        return np.stack([row, col], axis=-1)

    def to_pixel(self, xy: np.ndarray) -> np.ndarray:
        """(N, 2) vehicle-frame points -> (N, 2) picture coordinates (x = col, y = row), cell centres at
        integers, as OpenCV drawing functions take them."""
        rc = self.to_cell(xy) - 0.5
        return rc[..., ::-1]

    def resampled(self, cell: float) -> BevGrid:
        """The same area at another cell size (e.g. 0.20 m for the small configuration)."""
        n_r = round(self.rows * self.cell / cell)
        n_c = round(self.cols * self.cell / cell)
        return BevGrid(n_r, n_c, cell, self.centre_x, self.centre_y)
