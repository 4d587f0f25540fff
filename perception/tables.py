"""Camera→BEV sampling tables: BEV cell centres at a few heights projected through each camera's fisheye
model, as normalised grid_sample coordinates plus validity. Torch-free (the embedded runtime builds them)."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

import numpy as np

from perception.bev_config import BevConfig
from sensors.rig import CAMERA_NAMES, Rig, VehicleBody

log = logging.getLogger(__name__)

# Outside [-1, 1]: grid_sample with padding_mode="zeros" returns 0 there, so invalid cells contribute nothing.
INVALID = -2.0


@dataclass
class SamplingTables:
    """grid_sample tables of every camera for one rig calibration and BEV configuration.

    grid: (N_cam, Z*rows, cols, 2) float32, normalised (x along the image width, y along its height) for
        grid_sample(align_corners=False); row index z*rows + r holds height z of BEV row r; INVALID where the
        camera does not see the point.
    valid: (N_cam, Z, rows, cols) float32 1/0.
    """

    grid: np.ndarray
    valid: np.ndarray
    cameras: tuple[str, ...] = CAMERA_NAMES
    heights: tuple[float, ...] = ()

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, cols) of the BEV grid."""
        return self.valid.shape[2], self.valid.shape[3]


def camera_tables(rig: Rig, config: BevConfig, occlude_body: bool = True) -> SamplingTables:
    """The sampling tables of the rig's cameras on config's grid.

    Pixel coordinates are normalised by each calibration's own width and height, so the table holds for the
    image at any resolution (the network resizes images to config.image_size). A point is valid where
    FisheyeCamera.project says so (inside the field of view and the image) and, with occlude_body, where the
    line of sight does not pass through the car body: the cameras see their own car there (the box of
    rig.vehicle, a conservative hull of the real body), not the cell.
    """
    grid = config.grid(rig)
    xy = grid.cell_centres().reshape(-1, 2)
    n = xy.shape[0]
    Z = len(config.heights)
    pts = np.concatenate([np.column_stack([xy, np.full(n, h)]) for h in config.heights])  # (Z*rows*cols, 3)
    tables = np.full((len(CAMERA_NAMES), Z * grid.rows, grid.cols, 2), INVALID, np.float32)
    valid = np.zeros((len(CAMERA_NAMES), Z, grid.rows, grid.cols), np.float32)
    for i, name in enumerate(CAMERA_NAMES):
        cam = rig.camera(name)
        uv, ok = cam.project(pts)
        if occlude_body and _inside_body(cam.origin, rig.vehicle):
            # Every line of sight would start inside the box: the box cannot stand for the body here.
            log.warning("%s: camera %s at %s sits inside the vehicle box of [vehicle]; its table is not masked by "
                        "the body (check the extrinsic translation or the vehicle dimensions)",
                        rig.source, name, np.round(cam.origin, 3).tolist())
        elif occlude_body:
            ok &= ~_segment_hits_body(cam.origin, pts, rig.vehicle)
        # align_corners=False: pixel centre u (integers) sits at (2u + 1) / W - 1, the image edge at ±1.
        norm = np.column_stack([(2 * uv[:, 0] + 1) / cam.width - 1, (2 * uv[:, 1] + 1) / cam.height - 1])
        norm[~ok] = INVALID
        tables[i] = norm.reshape(Z * grid.rows, grid.cols, 2)
        valid[i] = ok.reshape(Z, grid.rows, grid.cols)
        log.debug("camera table %s: %.1f%% of %d points valid", name, 100 * ok.mean(), ok.size)
    return SamplingTables(tables, valid, CAMERA_NAMES, config.heights)


def _body_box(body: VehicleBody) -> tuple[np.ndarray, np.ndarray]:
    # 1 mm larger than the body, so that cells centred on its outline (ground truth's IGNORE) are hidden too.
    lo = np.array([body.x_min, -body.width / 2, 0.0]) - 1e-3
    hi = np.array([body.x_max, body.width / 2, body.height]) + 1e-3
    return lo, hi


def _inside_body(point: np.ndarray, body: VehicleBody) -> bool:
    lo, hi = _body_box(body)
    return bool(np.all((point > lo) & (point < hi)))


def _segment_hits_body(origin: np.ndarray, points: np.ndarray, body: VehicleBody) -> np.ndarray:
    """(N,) whether the segment origin → point crosses the body box (ground to roof); slab test, vectorised.
    A point inside the box counts as hidden."""
    lo, hi = _body_box(body)
    d = points - origin
    with np.errstate(divide="ignore", invalid="ignore"):
        t1 = (lo - origin) / d
        t2 = (hi - origin) / d
    # Axes along which the segment does not move: inside the slab for all t, or never.
    flat = d == 0
    inside = (origin >= lo) & (origin <= hi)
    t_near = np.where(flat, np.where(inside, -np.inf, np.inf), np.minimum(t1, t2)).max(axis=1)
    t_far = np.where(flat, np.where(inside, np.inf, -np.inf), np.maximum(t1, t2)).min(axis=1)
    return (t_near < t_far) & (t_far > 0.0) & (t_near <= 1.0)


def tables_checksum(tables: SamplingTables) -> str:
    """sha256 over the tables' shapes, camera order, heights and arrays: the runtime's cache key for one
    calibration."""
    h = hashlib.sha256()
    h.update(repr((tables.cameras, tuple(tables.heights), tables.grid.shape, tables.valid.shape)).encode())
    h.update(np.ascontiguousarray(tables.grid, np.float32).tobytes())
    h.update(np.ascontiguousarray(tables.valid, np.float32).tobytes())
    return h.hexdigest()
