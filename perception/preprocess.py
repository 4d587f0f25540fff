"""Torch-free preprocessing shared by training, evaluation and the embedded runtime: a Frame of one drive (one rig
calibration) into the network's input arrays (uint8 images at the model's size, sampling tables, ultrasonic raster)
and, for labelled drives, the target."""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from perception.bev_config import BevConfig
from perception.labels import resample_labels
from perception.tables import camera_tables
from perception.uss_raster import UssRasterizer
from sensors.errors import ConfigError, LogFormatError
from sensors.imaging import decoded_sizes
from sensors.messages import Frame, GroundTruth
from sensors.rig import Rig
from sensors.schemas import GT_OCCUPANCY_TOPIC

_REDUCTIONS = (8, 4, 2, 1)  # the JPEG decoder's DCT scalings, largest first

# The network's (and its ONNX file's) input and output names: one name for one thing, from here to the runtime.
INPUT_NAMES: tuple[str, ...] = ("images", "grid", "valid", "uss")
OUTPUT_NAMES: tuple[str, ...] = ("class_logits", "occupancy_logits")


@dataclass
class FrameSample:
    """The network's inputs and target for one frame (N cameras, Z heights, R x W BEV cells)."""

    images: np.ndarray  # (N, 3, H, W) uint8 RGB at config.image_size; zeros for a missing camera
    valid: np.ndarray  # (N, Z, R, W) float32: the drive's table validity, a missing camera's slice zeroed
    grid: np.ndarray  # (N, Z*R, W, 2) float32 grid_sample table of the drive's calibration
    uss: np.ndarray  # (len(USS_CHANNELS), R, W) float32 ultrasonic raster
    target: np.ndarray  # (R, W) uint8 classes at config.cell, IGNORE on the ego footprint
    present: np.ndarray  # (N,) bool: which cameras delivered an image
    conditions: list[str]
    drive: str
    index: int  # the frame's index in its drive
    stamp_ns: int


def decode_reduction(rig: Rig, config: BevConfig) -> int:
    """The largest JPEG decode reduction (8, 4, 2 or 1) that still leaves every camera's image at least
    config.image_size, so that resizing only ever shrinks."""
    w, h = config.image_size
    cams = rig.cameras.values()
    for s in _REDUCTIONS:
        if all(c.width // s >= w and c.height // s >= h for c in cams):
            return s
    return 1


class FramePreprocessor:
    """Turns the Frames of one drive (one rig calibration) into FrameSamples; tables and rasteriser built once.
    `source` (the log) names the culprit in error messages."""

    def __init__(self, rig: Rig, config: BevConfig, source: str = "<frames>"):
        self.rig, self.config, self.source = rig, config, source
        self.tables = camera_tables(rig, config)
        self.rasterizer = UssRasterizer(rig, config)
        self.reduction = decode_reduction(rig, config)
        self.cameras = self.tables.cameras

    def images(self, frame: Frame) -> tuple[np.ndarray, np.ndarray]:
        """(N, 3, H, W) uint8 images at config.image_size and (N,) bool: which cameras delivered one. An image that
        is its calibration's size at no decode reduction (sensors.replay.decode_frame flags those it decodes; this
        catches the rest) is left out like a missing one, and the frame flagged: resized, it would put every
        feature in the wrong BEV cell."""
        w, h = self.config.image_size
        out = np.zeros((len(self.cameras), 3, h, w), np.uint8)
        present = np.zeros(len(self.cameras), bool)
        for i, cam in enumerate(self.cameras):
            im = frame.images.get(cam)
            if im is None or im.rgb is None:
                continue
            rgb = im.rgb
            cal = self.rig.cameras[cam]
            if not any((rgb.shape[1], rgb.shape[0]) in decoded_sizes(cal.width, cal.height, s) for s in _REDUCTIONS):
                frame.images[cam] = None
                frame.degraded.append(f"camera {cam} wrong size {rgb.shape[1]}x{rgb.shape[0]}, calibration says "
                                      f"{cal.width}x{cal.height}")
                continue
            if rgb.shape[:2] != (h, w):
                # INTER_AREA averages the pixels a target pixel covers: no aliasing of fine texture.
                rgb = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA)
            out[i] = rgb.transpose(2, 0, 1)
            present[i] = True
        return out, present

    def target(self, truth: GroundTruth, where: str = "") -> np.ndarray:
        """Ground truth resampled to config.cell (perception.labels.resample_labels)."""
        where = where or self.source
        occ = np.asarray(truth.occupancy)
        extent = (occ.shape[0] * truth.cell, occ.shape[1] * truth.cell) if occ.ndim == 2 else (0.0, 0.0)
        if not all(math.isclose(e, self.config.extent, abs_tol=1e-6) for e in extent):
            raise ConfigError(f"{where}: ground truth covers {extent[0]:g} x {extent[1]:g} m at {truth.cell:g} m, "
                              f"the model's [bev] table {self.config.extent:g} m; set bev.extent to the "
                              "ground truth's extent")
        ratio = self.config.cell / truth.cell
        if abs(ratio - round(ratio)) > 1e-6 or round(ratio) < 1:
            raise ConfigError(f"{where}: bev.cell = {self.config.cell:g} m is not a whole multiple of the ground "
                              f"truth's {truth.cell:g} m cell; use e.g. 0.1 or 0.2")
        return resample_labels(occ, round(ratio), where)

    def __call__(self, frame: Frame, drive: str = "") -> FrameSample:
        where = f"{self.source} frame {frame.index} at {frame.stamp_ns} ns"
        if frame.truth is None:
            raise LogFormatError(f"{where}: the frame has no ground truth ({GT_OCCUPANCY_TOPIC}); training and "
                                 "evaluation need simulated or labelled drives")
        images, present = self.images(frame)
        valid = self.tables.valid * present[:, None, None, None].astype(np.float32)
        return FrameSample(images, valid, self.tables.grid, self.rasterizer(frame.uss), self.target(frame.truth, where),
                           present, list(frame.conditions), drive, frame.index, frame.stamp_ns)

    def network_inputs(self, frame: Frame) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """The network's inputs for one frame, batch of one, by INPUT_NAMES (images (1, N, 3, H, W) uint8; grid,
        valid, uss float32, contiguous) and (N,) bool: which cameras delivered an image. No ground truth needed."""
        images, present = self.images(frame)
        valid = self.tables.valid * present[:, None, None, None].astype(np.float32)
        arrays = {"images": images[None], "grid": self.tables.grid[None], "valid": valid[None],
                  "uss": self.rasterizer(frame.uss)[None]}
        return {k: np.ascontiguousarray(v) for k, v in arrays.items()}, present
