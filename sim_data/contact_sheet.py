"""Contact sheets: for a frame of each given drive, the four fisheye images beside the BEV ground truth."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np

from sensors.bev import BevGrid
from sensors.classes import CLASS_NAMES, colorize
from sensors.errors import LogFormatError
from sensors.imaging import outlined_text, write_png
from sensors.messages import Frame
from sensors.rig import CAMERA_NAMES, Rig

log = logging.getLogger(__name__)

TILE_H = 240


def _label(img: np.ndarray, text: str, scale: float = 0.55) -> None:
    outlined_text(img, text, (8, 22), scale)


def bev_picture(occupancy: np.ndarray, rig: Rig, size: int = TILE_H) -> np.ndarray:
    """Ground-truth class map as an RGB picture with the ego outline, car driving up."""
    pic = cv2.resize(colorize(occupancy), (size, size), interpolation=cv2.INTER_NEAREST)
    grid = BevGrid.around(rig.vehicle, extent=occupancy.shape[0] * 0.1)
    grid = BevGrid(occupancy.shape[0], occupancy.shape[1], grid.cell, grid.centre_x, grid.centre_y)
    f = size / occupancy.shape[0]
    poly = (grid.to_pixel(rig.vehicle.footprint()) + 0.5) * f - 0.5
    cv2.polylines(pic, [np.round(poly).astype(np.int32)], True, (255, 255, 255), 1, cv2.LINE_AA)
    return pic


def frame_row(frame: Frame, rig: Rig, title: str) -> np.ndarray:
    tiles = []
    for cam in CAMERA_NAMES:
        im = frame.images.get(cam)
        if im is None or im.rgb is None:
            tile = np.full((TILE_H, round(TILE_H * 1280 / 966), 3), 60, np.uint8)
            _label(tile, f"{cam}: missing")
        else:
            tile = cv2.resize(im.rgb, (round(TILE_H * im.rgb.shape[1] / im.rgb.shape[0]), TILE_H),
                              interpolation=cv2.INTER_AREA)
            _label(tile, cam)
        tiles.append(tile)
    if frame.truth is not None:
        bev = bev_picture(frame.truth.occupancy, rig)
    else:
        bev = np.full((TILE_H, TILE_H, 3), 60, np.uint8)
    _label(bev, "BEV truth")
    row = np.concatenate([*tiles, bev], axis=1)
    band = np.full((28, row.shape[1], 3), 25, np.uint8)
    _label(band, title, 0.6)
    return np.concatenate([band, row], axis=0)


def legend(width: int) -> np.ndarray:
    from sensors.classes import CLASS_COLORS

    band = np.full((30, width, 3), 25, np.uint8)
    x = 8
    for i, name in enumerate(CLASS_NAMES):
        cv2.rectangle(band, (x, 8), (x + 16, 22), CLASS_COLORS[i], -1)
        cv2.putText(band, name, (x + 22, 21), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (230, 230, 230), 1, cv2.LINE_AA)
        x += 40 + 10 * len(name)
    return band


def contact_sheet(logs: list[str | Path], out: str | Path, frame_index: int = 0) -> Path:
    """Write a PNG with one row per log: frame `frame_index` of each."""
    from sensors.log import LogReader
    from sensors.replay import replay_frames

    rows = []
    for path in logs:
        with LogReader(path) as reader:
            frame = None
            for f in replay_frames(path, reader=reader):
                frame = f
                if f.index >= frame_index:
                    break
            if frame is None:
                raise LogFormatError(f"{path}: no complete frame to show")
            if frame.index < frame_index:
                log.warning("%s has %d frames; showing its last, %d", path, frame.index + 1, frame.index)
            labels = ", ".join(frame.conditions) or "no labels"
            if reader.metadata.get("street_lamps") == "off":
                labels += ", lamps off"
            title = f"{Path(path).stem}  frame {frame.index}  [{labels}]"
            rows.append(frame_row(frame, reader.rig, title))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows]
    sheet = np.concatenate([*rows, legend(width)], axis=0)
    return write_png(sheet, out, "contact sheet")
