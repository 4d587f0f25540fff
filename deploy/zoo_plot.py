"""`nearfield zoo plot`: the zoo's accuracy against CPU latency, one point per measured model, the Pareto front
(no other model is both faster and more accurate) joined and its points ringed. Drawn with OpenCV like the
results charts (perception.report), so it needs no plotting library. Torch-free."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import cv2
import numpy as np

from sensors.errors import ConfigError
from sensors.imaging import write_png

FRONT = (30, 30, 30)
# One colour per family of methods (Okabe-Ito), so that a dozen entries stay tellable apart.
FAMILY_COLOURS = {"fp32": (150, 150, 150), "int8-ptq": (0, 158, 115), "qat": (0, 114, 178),
                  "prune-structured": (230, 159, 0), "prune (unstructured)": (204, 121, 167),
                  "distill": (86, 180, 233), "lowrank": (213, 94, 0), "e2gc": (240, 228, 66), "other": (90, 90, 90)}


def family(method: str) -> str:
    if method.startswith("qat"):
        return "qat"
    if method in ("prune-magnitude", "prune-lamp", "prune-random"):
        return "prune (unstructured)"
    return method if method in FAMILY_COLOURS else "other"


def _label_spot(c: tuple[int, int], tw: int, th: int, boxes: list[tuple[int, int, int, int]],
                others: list[tuple[int, int]], area: tuple[int, int, int, int]) -> tuple[int, int]:
    """Where to write a TW x TH label for the point at C: the first of right, upper right, lower right, left, upper
    left, lower left, above, below whose box stays in AREA and touches neither a label already written nor another
    point's marker; in a crowd, the first that at least touches no label (a label over a marker stays readable,
    two labels over each other do not); the first that stays in AREA when none is."""
    x, y = c
    spots = [(x + 15, y + th // 2), (x + 12, y - 12), (x + 12, y + th + 12), (x - 15 - tw, y + th // 2),
             (x - 12 - tw, y - 12), (x - 12 - tw, y + th + 12), (x - tw // 2, y - 15), (x - tw // 2, y + th + 15)]

    def inside(sx: int, sy: int) -> bool:
        return area[0] <= sx and sx + tw <= area[2] + 25 and area[1] <= sy - th and sy <= area[3]

    def clear_of_labels(sx: int, sy: int) -> bool:
        box = (sx - 2, sy - th - 2, sx + tw + 2, sy + 4)
        return not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in boxes)

    def free(sx: int, sy: int) -> bool:
        box = (sx - 2, sy - th - 2, sx + tw + 2, sy + 4)
        return clear_of_labels(sx, sy) and not any(box[0] - 8 < ox < box[2] + 8 and box[1] - 8 < oy < box[3] + 8
                                                   for ox, oy in others)

    fitting = [s for s in spots if inside(*s)] or spots
    return next((s for s in fitting if free(*s)), next((s for s in fitting if clear_of_labels(*s)), fitting[0]))


@dataclass(frozen=True)
class ZooPoint:
    name: str
    method: str
    latency_ms: float
    miou: float  # test mIoU over the obstacle classes, 0..1


def pareto_front(points: Sequence[ZooPoint]) -> list[ZooPoint]:
    """The points no other point dominates (latency no higher and mIoU no lower, one of them strictly), fastest
    first. Two points with equal figures both stay."""
    front = [p for p in points
             if not any((q.latency_ms <= p.latency_ms and q.miou >= p.miou)
                        and (q.latency_ms < p.latency_ms or q.miou > p.miou) for q in points)]
    return sorted(front, key=lambda p: (p.latency_ms, -p.miou))


def zoo_points(rows: Sequence[dict]) -> tuple[list[ZooPoint], list[str]]:
    """(points, names left out) from `zoo list --json` rows: a model needs a measured test mIoU and ORT latency.

    A model measured against a parent in the zoo is placed at its parent's latency / its speed-up: the speed-up is
    timed in one run, the ms of two separate runs drift apart on a shared machine (models running the same dense
    graph came out 22.7-34.3 ms), so chaining the same-run ratios down from each root model (measured alone) keeps
    the x axis to one reference time per root."""
    by_name = {r["name"]: r for r in rows}
    latency: dict[str, float | None] = {}

    def resolve(name: str, seen: tuple[str, ...] = ()) -> float | None:
        if name not in latency:
            r = by_name[name]
            own = float(r["ort_cpu_ms"]) if r.get("ort_cpu_ms") is not None else None
            parent = r.get("parent")
            speedup = r.get("speedup")
            base = (resolve(parent, (*seen, name)) if parent in by_name and parent != name and speedup
                    and parent not in seen else None)
            latency[name] = base / float(speedup) if base is not None and own is not None else own
        return latency[name]

    points, missing = [], []
    for r in rows:
        ms = resolve(r["name"])
        if r.get("test_miou") is None or ms is None:
            missing.append(r["name"])
        else:
            points.append(ZooPoint(r["name"], r["method"], ms, float(r["test_miou"])))
    return points, missing


def _wrap(text: str, max_px: int, scale: float) -> list[str]:
    """TEXT broken at spaces into lines no wider than MAX_PX in OpenCV's plain font at SCALE (a single word wider
    than that stays whole)."""
    lines: list[str] = []
    for word in text.split(" "):
        candidate = f"{lines[-1]} {word}" if lines else word
        if lines and cv2.getTextSize(candidate, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0] <= max_px:
            lines[-1] = candidate
        else:
            lines.append(word)
    return lines


def _nice_step(span: float, ticks: int = 6) -> float:
    raw = max(span, 1e-9) / ticks
    mag = 10 ** np.floor(np.log10(raw))
    return float(min((m * mag for m in (1, 2, 2.5, 5, 10)), key=lambda s: abs(s - raw)))


def plot_zoo(points: Sequence[ZooPoint], out_png: str | Path, title: str = "", footnote: str = "") -> np.ndarray:
    """Scatter of test mIoU (y, %) against onnxruntime CPU ms per frame (x) with the Pareto front, FOOTNOTE under it
    (its lines one under the other); writes OUT_PNG and returns the (H, W, 3) RGB picture."""
    if not points:
        raise ConfigError("zoo plot: no model has both a test mIoU and a latency; run `nearfield zoo measure NAME "
                          "--data DATA` first")
    width = 900
    notes = [part for n in footnote.splitlines() if n for part in _wrap(n, width - 70 - 10, 0.38)]
    height = 560 + 16 * max(len(notes) - 1, 0)
    left, right, top, bottom = 70, 30, 50, 90 + 16 * max(len(notes) - 1, 0)
    img = np.full((height, width, 3), 255, np.uint8)
    font, aa, ink, grey = cv2.FONT_HERSHEY_SIMPLEX, cv2.LINE_AA, (30, 30, 30), (220, 220, 220)
    xs = np.array([p.latency_ms for p in points])
    ys = np.array([100 * p.miou for p in points])
    x_step = _nice_step(xs.max() * 1.1)
    x_hi = x_step * np.ceil(xs.max() * 1.1 / x_step)
    y_step = _nice_step(ys.max() - ys.min() + 4, 5)
    y_lo = y_step * np.floor(max(ys.min() - 2, 0) / y_step)
    y_hi = y_step * np.ceil((ys.max() + 2) / y_step)
    pw, ph = width - left - right, height - top - bottom

    def px(x: float, y: float) -> tuple[int, int]:
        return (round(left + pw * x / x_hi), round(top + ph * (1 - (y - y_lo) / (y_hi - y_lo))))

    cv2.putText(img, title or "Deploy zoo: test mIoU against onnxruntime CPU latency", (left, 30), font, 0.6, ink,
                1, aa)
    for x in np.arange(0, x_hi + 1e-9, x_step):
        gx, _ = px(x, y_lo)
        cv2.line(img, (gx, top), (gx, top + ph), grey if x else ink, 1)
        cv2.putText(img, f"{x:g}", (gx - 10, top + ph + 18), font, 0.4, ink, 1, aa)
    for y in np.arange(y_lo, y_hi + 1e-9, y_step):
        _, gy = px(0, y)
        cv2.line(img, (left, gy), (left + pw, gy), grey if y > y_lo else ink, 1)
        cv2.putText(img, f"{y:g}%", (8, gy + 4), font, 0.4, ink, 1, aa)
    cv2.putText(img, "onnxruntime CPU ms per frame (lower is faster)", (left + pw // 2 - 170, top + ph + 40), font,
                0.45, ink, 1, aa)
    cv2.putText(img, "test mIoU", (8, top - 10), font, 0.45, ink, 1, aa)

    front = pareto_front(points)
    centres = {p.name: px(p.latency_ms, 100 * p.miou) for p in points}
    front_line = []  # points along the staircase, which labels keep off too
    for a, b in pairwise(front):  # a staircase: each model holds its mIoU until the next
        (ax, ay), (bx, by) = centres[a.name], centres[b.name]
        cv2.line(img, (ax, ay), (bx, ay), FRONT, 1, aa)
        cv2.line(img, (bx, ay), (bx, by), FRONT, 1, aa)
        front_line += [(int(x), ay) for x in np.arange(ax, bx, 6)] + [(bx, int(y)) for y in np.arange(by, ay, 6)]
    for p in points:
        if p in front:
            cv2.circle(img, centres[p.name], 10, FRONT, 2, aa)
        cv2.circle(img, centres[p.name], 6, FAMILY_COLOURS[family(p.method)], -1, aa)
    boxes: list[tuple[int, int, int, int]] = []
    for p in sorted(points, key=lambda p: (p.latency_ms, p.miou)):
        (tw, th), _ = cv2.getTextSize(p.name, font, 0.4, 1)
        obstacles = [c for n, c in centres.items() if n != p.name] + front_line
        x, y = _label_spot(centres[p.name], tw, th, boxes, obstacles, (left, top, left + pw, top + ph))
        boxes.append((x, y - th, x + tw, y + 2))
        cv2.putText(img, p.name, (x, y), font, 0.4, ink, 1, aa)
    ly = top + ph + 64
    lx = left
    families = [f for f in FAMILY_COLOURS if any(family(p.method) == f for p in points)]
    for f in families:
        cv2.circle(img, (lx + 6, ly - 4), 6, FAMILY_COLOURS[f], -1, aa)
        cv2.putText(img, f, (lx + 16, ly), font, 0.42, ink, 1, aa)
        (tw, _), _ = cv2.getTextSize(f, font, 0.42, 1)
        lx += tw + 34
    cv2.circle(img, (lx + 6, ly - 4), 10, FRONT, 2, aa)
    cv2.putText(img, "Pareto front", (lx + 22, ly), font, 0.42, ink, 1, aa)
    for k, note in enumerate(notes):
        cv2.putText(img, note, (left, ly + 22 + 16 * k), font, 0.38, ink, 1, aa)

    write_png(img, out_png, "zoo plot")
    return img


__all__ = ["FAMILY_COLOURS", "ZooPoint", "family", "pareto_front", "plot_zoo", "zoo_points"]
