"""Pictures of one frame for the viewer and its exports: the BEV view (car, ground truth and prediction layers,
ultrasonic echo arcs and ellipses, sector warning ring), camera tiles and the per-sensor ultrasonic strip, as RGB
arrays drawn with OpenCV. Qt-free, so the MP4 export draws exactly what the window shows."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import cv2
import numpy as np

from perception.postprocess import LEVEL_TOLERANCE_M, LEVELS_M, Sectors, warning_level
from sensors.bev import BevGrid
from sensors.classes import CLASS_COLORS, CLASS_NAMES, IGNORE, SemanticClass, colorize
from sensors.imaging import outlined_text
from sensors.messages import UssCycle, UssStatus
from sensors.rig import Rig, UssSensor

BACKGROUND = (18, 18, 22)
DIRECT_COLOR = (0, 230, 255)  # direct echoes: cyan arcs
CROSS_COLOR = (255, 80, 255)  # cross echoes: magenta ellipse arcs
# The warning levels. The ring draws no band for a clear sector, and the strip's clear bars are neutral grey: no
# green that could pass for a low obstacle.
LEVEL_NAMES = ("clear", "caution", "warning", "stop")
LEVEL_COLORS = ((110, 110, 120), (250, 220, 40), (255, 140, 20), (255, 30, 30))
RING_OPACITY = 0.85
FAILED_COLOR = (255, 40, 40)
RECALLED_COLOR = (235, 235, 235)  # stripes over cells the near-field memory recalled
FAILED_FILL = (110, 20, 20)  # a failed sensor's cell in the ultrasonic strip


@dataclass
class Layers:
    """What the BEV view draws; the window's toggles and opacity sliders edit one of these."""

    truth: bool = True
    truth_opacity: float = 0.8
    prediction: bool = True
    prediction_opacity: float = 0.7
    uss: bool = True
    sectors: bool = True


# --- ultrasonic geometry ------------------------------------------------------------------------------------------

def _in_beam(points: np.ndarray, sensor: UssSensor) -> np.ndarray:
    """(..., 2) vehicle-frame points -> bool: within the sensor's horizontal opening (and in front of it)."""
    d = points - np.asarray(sensor.position[:2])
    bearing = np.arctan2(d[..., 1], d[..., 0])
    off = (bearing - sensor.yaw + np.pi) % (2 * np.pi) - np.pi
    return np.abs(off) <= sensor.horizontal_opening / 2


def _runs(points: np.ndarray, keep: np.ndarray, closed: bool) -> list[np.ndarray]:
    """The contiguous stretches of `points` where `keep` holds (a closed curve may wrap around its start)."""
    if not keep.any():
        return []
    if keep.all():
        return [np.concatenate([points, points[:1]]) if closed else points]
    if closed:  # start the walk at a dropped point so that no kept stretch is cut by the seam
        shift = int(np.argmin(keep))
        points, keep = np.roll(points, -shift, axis=0), np.roll(keep, -shift)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], keep.astype(np.int8), [0]])))
    return [points[a:b] for a, b in zip(edges[::2], edges[1::2], strict=True) if b - a >= 2]


def echo_curves(cycle: UssCycle, rig: Rig, samples: int = 96) -> list[tuple[bool, np.ndarray]]:
    """Every echo of a cycle as (direct, (P, 2) vehicle-frame polyline): a direct echo is the arc of radius
    `distance` around its sensor across the sensor's opening; a cross echo the part of the ellipse with the two
    sensors as foci and semi-major axis `distance` that both sensors' beams cover. Echoes of unknown sensors,
    and cross echoes shorter than half the sensors' spacing (no ellipse), are left out."""
    sensors = {s.id: s for s in rig.uss}
    out: list[tuple[bool, np.ndarray]] = []
    t = np.linspace(0.0, 1.0, samples)
    for sender, receiver, d in zip(cycle.sender.tolist(), cycle.receiver.tolist(), cycle.distance.tolist(),
                                   strict=True):
        s, r = sensors.get(sender), sensors.get(receiver)
        if s is None or r is None or not math.isfinite(d) or d <= 0:
            continue
        if sender == receiver:
            a = s.yaw + (t - 0.5) * s.horizontal_opening
            pts = np.asarray(s.position[:2]) + d * np.stack([np.cos(a), np.sin(a)], -1)
            out.append((True, pts))
            continue
        f1, f2 = np.asarray(s.position[:2]), np.asarray(r.position[:2])
        c = float(np.linalg.norm(f2 - f1)) / 2
        if d <= c:
            continue
        b = math.sqrt(d * d - c * c)
        phi = math.atan2(*(f2 - f1)[::-1])
        u = 2 * np.pi * np.arange(4 * samples) / (4 * samples)
        ex, ey = d * np.cos(u), b * np.sin(u)
        pts = (f1 + f2) / 2 + np.stack([ex * math.cos(phi) - ey * math.sin(phi),
                                        ex * math.sin(phi) + ey * math.cos(phi)], -1)
        out += [(False, run) for run in _runs(pts, _in_beam(pts, s) & _in_beam(pts, r), closed=True)]
    return out


def nearest_direct(cycle: UssCycle | None, rig: Rig) -> np.ndarray:
    """(len(rig.uss),) the nearest direct-echo distance of each sensor in rig order (nan: no echo)."""
    out = np.full(len(rig.uss), np.inf)
    if cycle is not None and cycle.num_echoes:
        ids = np.array([s.id for s in rig.uss])
        order = np.argsort(ids)
        sender, distance = cycle.sender[cycle.direct], cycle.distance[cycle.direct]
        pos = np.clip(np.searchsorted(ids[order], sender), 0, len(ids) - 1)
        known = ids[order][pos] == sender
        np.minimum.at(out, order[pos[known]], distance[known])
    out[~np.isfinite(out)] = np.nan
    return out


def failed_sensors(cycle: UssCycle | None) -> dict[int, UssStatus]:
    """Sensor id -> status for the sensors the ECU reports as not working."""
    return {} if cycle is None else {sid: st for sid, st in cycle.status.items() if st != UssStatus.OK}


# --- distances as shown ---------------------------------------------------------------------------------------------

SECTOR_DECIMALS = 2  # sector labels and the ultrasonic strip show centimetres


def shown_distance(distance, decimals: int) -> np.ndarray:
    """Distances cut to DECIMALS toward the car, never rounded away from it (a parking display must not show an
    obstacle farther than it is); within LEVEL_TOLERANCE_M of the next step up they take that step, so that a
    float32 0.29999998 shows 0.3 like the threshold it stands for."""
    scale = 10.0 ** decimals
    return np.floor(np.asarray(distance, float) * scale + LEVEL_TOLERANCE_M * scale) / scale


def distance_text(distance: float, decimals: int) -> str:
    return f"{float(shown_distance(distance, decimals)):.{decimals}f}"


def shown_levels(sectors: Sectors, levels_m: tuple[float, ...], decimals: int = SECTOR_DECIMALS) -> Sectors:
    """SECTORS with each level raised to that of the distance as its label shows it: cut toward the car, a label
    can read a threshold (0.30) that the distance itself just misses (0.305), and the colour must then not be the
    milder level."""
    shown = warning_level(shown_distance(sectors.distance, decimals), levels_m)
    return replace(sectors, level=np.maximum(sectors.level, shown).astype(np.uint8))


def ring_key(levels_m: tuple[float, ...], le: str = "≤") -> list[tuple[str, tuple[int, int, int], str]]:
    """(level name, colour, distances) of each warning level of the thresholds LEVELS_M (clear -> stop), for the
    legends: ("clear", grey, "> 1.5 m, no band"), ("caution", yellow, "≤ 1.5 m"), ...; LE: how to write ≤ (OpenCV's
    fonts have no ≤)."""
    out = [(LEVEL_NAMES[0], LEVEL_COLORS[0], f"> {levels_m[0]:g} m, no band")] if levels_m else []
    for k, t in enumerate(levels_m, start=1):
        i = min(k, len(LEVEL_COLORS) - 1)
        out.append((LEVEL_NAMES[k] if k < len(LEVEL_NAMES) else f"level {k}", LEVEL_COLORS[i], f"{le} {t:g} m"))
    return out


# --- the BEV view ---------------------------------------------------------------------------------------------------

def view_grid(rig: Rig, extent: float, size: int) -> BevGrid:
    """The picture's own grid: `size` x `size` pixels covering `extent` metres around the car body."""
    return BevGrid.around(rig.vehicle, extent, extent / size)


def paint_layer(canvas: np.ndarray, view: BevGrid, class_map: np.ndarray, grid: BevGrid, opacity: float,
                outline: bool = False) -> np.ndarray:
    """Blend a class map on GRID into the picture on VIEW (same orientation, square cells) in place; with
    outline=True only the borders of its obstacle regions, in their class colours. Returns the (H, W) bool pixels
    of its obstacle cells (none when the layer is invisible), which the sector ring leaves uncovered."""
    if opacity <= 0:
        return np.zeros(canvas.shape[:2], bool)
    classes = _on_view(class_map, grid, view, canvas.shape[:2], SemanticClass.FREE)
    cover = _on_view(np.ones(class_map.shape, np.uint8), grid, view, canvas.shape[:2], 0).astype(bool)
    obstacle = (classes != SemanticClass.FREE) & (classes != IGNORE) & cover
    if outline:
        inner = cv2.erode(obstacle.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)  # 2 px borders
        cover = obstacle & ~inner
    rgb = colorize(classes)
    a = float(min(max(opacity, 0.0), 1.0))
    canvas[cover] = (canvas[cover] * (1 - a) + rgb[cover] * a).round().astype(np.uint8)
    return obstacle


def _on_view(cells: np.ndarray, grid: BevGrid, view: BevGrid, shape: tuple[int, int], border: int) -> np.ndarray:
    """A uint8 array on GRID resampled onto the picture's VIEW grid (same orientation, square cells): cell centres
    map to cell centres and nearest-neighbour sampling fills each cell's whole square; BORDER outside the grid."""
    s = grid.cell / view.cell
    origin = np.zeros((1, 2))
    t = view.to_pixel(origin)[0] - s * grid.to_pixel(origin)[0]
    M = np.array([[s, 0, t[0]], [0, s, t[1]]], np.float64)
    return cv2.warpAffine(np.ascontiguousarray(cells, np.uint8), M, dsize=(shape[1], shape[0]),
                          flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=border)


def hatch_cells(canvas: np.ndarray, view: BevGrid, mask: np.ndarray, grid: BevGrid) -> None:
    """Diagonal light stripes over the cells of MASK (on GRID) in place: what the near-field memory recalled,
    told apart from what the network saw in this frame while keeping the class colour beneath visible."""
    cells = _on_view(mask, grid, view, canvas.shape[:2], 0).astype(bool)
    rows, cols = np.indices(canvas.shape[:2])
    stripes = cells & ((rows + cols) % 6 < 2)
    canvas[stripes] = RECALLED_COLOR


def _px(view: BevGrid, xy: np.ndarray) -> np.ndarray:
    """Vehicle-frame points -> fixed-point pixel coordinates (3 fractional bits): sub-pixel anti-aliased lines."""
    return np.round(view.to_pixel(np.asarray(xy, float)) * 8).astype(np.int32)


def _offset_along(body, d: np.ndarray, r: float) -> np.ndarray:
    """Points c + t·d (c the body centre, d (N, 2) unit rays) at distance r from the body footprint: the outline of
    the footprint grown by r with rounded corners. Bisection on t (distance grows monotonically along a ray)."""
    c = np.array(body.centre)
    lo = np.zeros(len(d))
    hi = np.full(len(d), np.hypot(body.length, body.width) / 2 + r + 1.0)
    for _ in range(40):
        mid = (lo + hi) / 2
        far = body.distance_to_body(c + mid[:, None] * d) > r
        hi, lo = np.where(far, mid, hi), np.where(far, lo, mid)
    return c + hi[:, None] * d


def sector_polygons(sectors: Sectors, rig: Rig, inner: float = 0.12, width: float = 0.22) -> list[np.ndarray]:
    """(P, 2) vehicle-frame polygon per sector: the band from `inner` to `inner + width` metres outside the body
    outline, across the sector's bearings."""
    polys = []
    for start, end in sectors.angles.astype(float):
        b = start + (end - start) % (2 * np.pi) * np.linspace(0, 1, 12)
        d = np.stack([np.cos(b), np.sin(b)], -1)
        polys.append(np.concatenate([_offset_along(rig.vehicle, d, inner),
                                     _offset_along(rig.vehicle, d, inner + width)[::-1]]))
    return polys


SECTOR_LABEL_SCALE = 0.38


def label_anchors(view: BevGrid, rig: Rig, polys: list[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per sector band (sector_polygons): the pixel in the middle of its outer edge, and the unit pixel vector
    pointing away from the body there (the edge's normal: the gradient of the distance to the body)."""
    anchors, outward = [], []
    eps = 0.01
    for p in polys:
        n = len(p) // 2
        outer = p[n:][::-1]
        a = (outer[n // 2 - 1] + outer[n // 2]) / 2
        grad = rig.vehicle.distance_to_body(a + eps * np.eye(2)) - rig.vehicle.distance_to_body(a - eps * np.eye(2))
        px, tip = view.to_pixel(np.stack([a, a + grad / max(float(np.linalg.norm(grad)), 1e-12)]))
        anchors.append(px)
        outward.append((tip - px) / max(float(np.linalg.norm(tip - px)), 1e-9))
    return anchors, outward


def sector_labels(sectors: Sectors, anchors: list[np.ndarray], scale: float = SECTOR_LABEL_SCALE,
                  gap: int = 2, outward: list[np.ndarray] | None = None,
                  decimals: int = SECTOR_DECIMALS) -> list[tuple[str, tuple[int, int]]]:
    """The distance labels of the warned sectors, (text, baseline origin in pixels), cut toward the car to DECIMALS
    (shown_distance), centred on each sector's anchor (a pixel on its band's outer edge) or, given OUTWARD
    (label_anchors), just beyond it so that they cover nothing in the band; placed nearest obstacle first and left
    out where one would overlap a label already placed (within `gap` pixels): where neighbouring sectors of a
    bumper all warn, their labels would otherwise print over each other, and the nearest distance is the one a
    driver needs."""
    placed: list[tuple[int, int, int, int]] = []
    out = []
    order = np.argsort(sectors.distance, kind="stable")
    for k in order.tolist():
        dist = float(sectors.distance[k])
        if sectors.level[k] == 0 or not math.isfinite(dist):
            continue
        text = distance_text(dist, decimals)
        (w, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        centre = np.asarray(anchors[k], float)
        if outward is not None:  # the box's half extent along the outward direction, and a pixel more
            u = outward[k]
            centre = centre + u * (abs(u[0]) * w / 2 + abs(u[1]) * (h + base) / 2 + 1)
        x, y = round(float(centre[0]) - w / 2), round(float(centre[1]) + (h - base) / 2)
        box = (x - gap, y - h - gap, x + w + gap, y + base + gap)
        if any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in placed):
            continue
        placed.append(box)
        out.append((text, (x, y)))
    return out


def draw_ring(pic: np.ndarray, view: BevGrid, rig: Rig, sectors: Sectors, keep: np.ndarray) -> None:
    """The sector warning ring in place: each warned sector's band in its level's colour (a clear one has none),
    with its distance label beyond it; the pixels of KEEP (obstacle cells) and a pixel around them are left as they
    are, so that an obstacle in the band, the nearest there can be, stays in sight in its class colour."""
    polys = sector_polygons(sectors, rig)
    colour = np.zeros_like(pic)
    area = np.zeros(pic.shape[:2], np.uint8)
    for poly, level in zip(polys, sectors.level.tolist(), strict=True):
        if level == 0:
            continue
        cv2.fillPoly(colour, [_px(view, poly)], LEVEL_COLORS[min(level, len(LEVEL_COLORS) - 1)], cv2.LINE_8, shift=3)
        cv2.fillPoly(area, [_px(view, poly)], 255, cv2.LINE_AA, shift=3)
    alpha = area.astype(np.float32) * (RING_OPACITY / 255)
    alpha[cv2.dilate(keep.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)] = 0
    a = alpha[..., None]
    pic[:] = (pic * (1 - a) + colour * a).round().astype(np.uint8)
    anchors, outward = label_anchors(view, rig, polys)
    for text, org in sector_labels(sectors, anchors, outward=outward):
        outlined_text(pic, text, org, SECTOR_LABEL_SCALE)


def bev_picture(rig: Rig, size: int = 640, extent: float = 16.0, layers: Layers | None = None,
                truth: tuple[np.ndarray, BevGrid] | None = None, prediction: tuple[np.ndarray, BevGrid] | None = None,
                uss: UssCycle | None = None, sectors: Sectors | None = None,
                recalled: tuple[np.ndarray, BevGrid] | None = None,
                levels_m: tuple[float, ...] = LEVELS_M) -> np.ndarray:
    """(size, size, 3) RGB picture of the BEV view, car driving up: the prediction filled (the cells the near-field
    memory recalled, RECALLED, hatched), the ground truth filled or, over a prediction, outlined; then the sector
    ring around the obstacles (draw_ring; LEVELS_M the thresholds the sectors were levelled with), echo arcs and
    ellipses, and the sensors."""
    layers = layers or Layers()
    view = view_grid(rig, extent, size)
    pic = np.empty((size, size, 3), np.uint8)
    pic[:] = BACKGROUND
    metre = 1.0 / view.cell
    for x in np.arange(math.ceil(view.x_max - extent), view.x_max, 2.0):  # faint 2 m grid
        r = round(float(view.x_max - x) * metre)
        cv2.line(pic, (0, r), (size - 1, r), (45, 45, 52), 1)
    for y in np.arange(math.ceil(view.y_max - extent), view.y_max, 2.0):
        c = round(float(view.y_max - y) * metre)
        cv2.line(pic, (c, 0), (c, size - 1), (45, 45, 52), 1)
    # Over a prediction, the truth is drawn as outlines so that both stay readable; alone, it is filled.
    over = prediction is not None and layers.prediction
    obstacles = np.zeros((size, size), bool)
    if over:
        obstacles |= paint_layer(pic, view, prediction[0], prediction[1], layers.prediction_opacity)
        if recalled is not None and layers.prediction_opacity > 0:
            hatch_cells(pic, view, recalled[0], recalled[1])
    if truth is not None and layers.truth:
        obstacles |= paint_layer(pic, view, truth[0], truth[1], layers.truth_opacity, outline=over)
    aa = cv2.LINE_AA
    body = rig.vehicle.footprint()
    cv2.fillPoly(pic, [_px(view, body)], (70, 70, 78), aa, shift=3)
    cv2.polylines(pic, [_px(view, body)], True, (230, 230, 230), 1, aa, shift=3)
    nose = np.array([[rig.vehicle.x_max - 0.2, 0.0], [rig.vehicle.x_max - 0.8, 0.35], [rig.vehicle.x_max - 0.8, -0.35]])
    cv2.fillPoly(pic, [_px(view, nose)], (200, 200, 200), aa, shift=3)
    if sectors is not None and layers.sectors:
        draw_ring(pic, view, rig, shown_levels(sectors, levels_m), obstacles)
    if uss is not None and layers.uss:
        for direct, pts in echo_curves(uss, rig):
            cv2.polylines(pic, [_px(view, pts)], False, DIRECT_COLOR if direct else CROSS_COLOR, 1, aa, shift=3)
    failed = failed_sensors(uss)
    for s in rig.uss:
        p = view.to_pixel(np.array([s.position[:2]]))[0]
        if s.id in failed:
            q = np.round(p).astype(int)
            cv2.line(pic, tuple(q - 5), tuple(q + 5), FAILED_COLOR, 2, aa)
            cv2.line(pic, (q[0] - 5, q[1] + 5), (q[0] + 5, q[1] - 5), FAILED_COLOR, 2, aa)
            outlined_text(pic, s.name, p + np.array([6, -6]), 0.38, FAILED_COLOR)
        else:
            cv2.circle(pic, tuple(np.round(p).astype(int)), 2, (240, 240, 240), -1, aa)
    return pic


# --- tiles and strips -----------------------------------------------------------------------------------------------

def camera_tile(rgb: np.ndarray | None, name: str, failure: str | None, size: tuple[int, int]) -> np.ndarray:
    """(h, w, 3) tile of one camera at size (w, h): the image, or a grey panel when it is missing; a failed
    camera (missing image or a camera_failure label) is greyed and labelled with the reason."""
    w, h = size
    if rgb is None:
        tile = np.full((h, w, 3), 55, np.uint8)
    else:
        tile = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA)
        if failure:
            grey = cv2.cvtColor(tile, cv2.COLOR_RGB2GRAY) // 2 + 40
            tile = np.repeat(grey[..., None], 3, axis=2)
    outlined_text(tile, name, (8, 20), 0.55)
    if failure:
        outlined_text(tile, failure, (8, h // 2), 0.6, FAILED_COLOR)
    return tile


def camera_failures(images: dict, degraded: list[str], conditions: list[str]) -> dict[str, str]:
    """Camera name -> why its panel is greyed: a missing or corrupt image, or a camera_failure label."""
    out: dict[str, str] = {}
    for reason in degraded:
        parts = reason.split()
        if len(parts) >= 3 and parts[0] == "camera":
            out[parts[1]] = " ".join(parts[2:])
    for label in conditions:
        cond, _, cam = label.partition(":")
        if cond == "camera_failure" and cam:
            out.setdefault(cam, "camera failure")
    for cam, im in images.items():
        if im is None or getattr(im, "rgb", None) is None:
            out.setdefault(cam, "missing")
    return out


def uss_strip(cycle: UssCycle | None, rig: Rig, width: int = 720, height: int = 70,
              levels_m: tuple[float, ...] = LEVELS_M) -> np.ndarray:
    """(height, width, 3): one cell per sensor in rig order with its nearest direct-echo distance as a bar
    (longer = closer, coloured by the warning level of the distance as shown: cut toward the car to centimetres,
    thresholds LEVELS_M as perception.postprocess.SectorLayout's) and its name; failed sensors red with the ECU's
    reason."""
    strip = np.empty((height, width, 3), np.uint8)
    strip[:] = (28, 28, 32)
    n = len(rig.uss)
    dist = nearest_direct(cycle, rig)
    failed = failed_sensors(cycle)
    cw = width / n
    for i, s in enumerate(rig.uss):
        x0, x1 = round(i * cw) + 2, round((i + 1) * cw) - 2
        cv2.rectangle(strip, (x0, 2), (x1, height - 3), (50, 50, 56), -1)
        if s.id in failed:
            cv2.rectangle(strip, (x0, 2), (x1, height - 3), FAILED_FILL, -1)
            outlined_text(strip, "X " + failed[s.id].name.lower().replace("_", " ")[:9], (x0 + 2, height - 10), 0.33,
                  FAILED_COLOR)
        elif math.isfinite(dist[i]):
            share = 1.0 - min(max((dist[i] - s.range_min) / (s.range_max - s.range_min), 0.0), 1.0)
            level = min(int(warning_level(shown_distance(dist[i], SECTOR_DECIMALS), levels_m)), len(LEVEL_COLORS) - 1)
            top = round((height - 22) * (1 - share)) + 18
            cv2.rectangle(strip, (x0 + 4, top), (x1 - 4, height - 4), LEVEL_COLORS[level], -1)
            outlined_text(strip, distance_text(dist[i], SECTOR_DECIMALS), (x0 + 2, height - 8), 0.38)
        else:
            outlined_text(strip, "-", (x0 + 2, height - 8), 0.38, (150, 150, 150))
        outlined_text(strip, s.name, (x0 + 2, 14), 0.38)
    return strip


def legend(width: int, height: int = 26, levels_m: tuple[float, ...] = LEVELS_M) -> np.ndarray:
    """The class colours with their names (sensors.classes), then the sector ring's levels with their distances
    (ring_key of LEVELS_M; none when empty)."""
    band = np.empty((height, width, 3), np.uint8)
    band[:] = (28, 28, 32)
    x = 8
    for i, name in enumerate(CLASS_NAMES):
        cv2.rectangle(band, (x, 7), (x + 14, 19), CLASS_COLORS[i], -1)
        outlined_text(band, name, (x + 19, 18), 0.42)
        x += 34 + 9 * len(name)
    if levels_m:
        x += 12
        outlined_text(band, "sector ring:", (x, 18), 0.42)
        x += cv2.getTextSize("sector ring:", cv2.FONT_HERSHEY_SIMPLEX, 0.42, 1)[0][0] + 12
        for name, colour, bound in ring_key(levels_m, le="<="):
            text = f"{name} {bound}"
            cv2.rectangle(band, (x, 7), (x + 14, 19), colour, -1)
            outlined_text(band, text, (x + 19, 18), 0.42)
            x += 19 + cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.42, 1)[0][0] + 16
    return band


__all__ = ["LEVELS_M", "LEVEL_COLORS", "LEVEL_NAMES", "RECALLED_COLOR", "SECTOR_DECIMALS", "SECTOR_LABEL_SCALE",
           "Layers", "bev_picture", "camera_failures", "camera_tile", "distance_text", "draw_ring", "echo_curves",
           "failed_sensors", "hatch_cells", "label_anchors", "legend", "nearest_direct", "paint_layer", "ring_key",
           "sector_labels", "sector_polygons", "shown_distance", "shown_levels", "uss_strip", "view_grid"]
