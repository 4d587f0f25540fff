"""Evaluation results (perception.evaluate.Evaluator.result) as Markdown tables and a PNG bar chart of mIoU by
condition per model. Torch-free; the chart is drawn with OpenCV (no plotting dependency)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from sensors.errors import ConfigError
from sensors.imaging import write_png
from sensors.messages import CONDITIONS

METRICS = ("miou", "miou_all", "recall_1m", "precision_1m")
# Bar colours (RGB), distinguishable in print and for the common colour-vision deficiencies (Okabe-Ito).
PALETTE = ((0, 114, 178), (230, 159, 0), (0, 158, 115), (204, 121, 167), (86, 180, 233), (213, 94, 0),
           (240, 228, 66), (0, 0, 0))


def pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def _conditions(results: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Conditions present in any result: CONDITIONS order first, then unknown labels sorted."""
    seen = {c for r in results.values() for c in r.get("by_condition", {})}
    return [c for c in CONDITIONS if c in seen] + sorted(seen - set(CONDITIONS))


def _metric(result: Mapping[str, Any], metric: str, condition: str | None) -> float | None:
    if metric in ("recall_1m", "precision_1m"):  # precision_1m is missing from JSONs written before it existed
        return result.get(metric) if condition is None else result.get(f"{metric}_by_condition", {}).get(condition)
    group = result if condition is None else result["by_condition"].get(condition)
    return None if group is None else group[metric]


def markdown_table(result: Mapping[str, Any], title: str = "") -> str:
    """One model's result: the overall row, then one row per condition; IoUs, recall and precision in percent."""
    names = list(result["iou"])
    head = ["condition", "mIoU", *names, "recall ≤1 m", "precision ≤1 m", "frames"]
    lines = [f"### {title}", ""] if title else []
    lines += ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]

    def row(label: str, group: Mapping[str, Any], condition: str | None) -> str:
        cells = [label, pct(group["miou"]), *(pct(group["iou"].get(n)) for n in names),
                 pct(_metric(result, "recall_1m", condition)), pct(_metric(result, "precision_1m", condition)),
                 str(group["frames"])]
        return "| " + " | ".join(cells) + " |"

    lines.append(row("**all**", result, None))
    for c in _conditions({"": result}):
        lines.append(row(c, result["by_condition"][c], c))
    if result.get("degraded_frames"):  # absent from JSONs written before it was counted
        text = (f"Degraded frames (a sensor missing or failed, or a corrupt image): {result['degraded_frames']:,} of "
                f"{result['frames']:,}")
        reasons = result.get("degraded_by_reason", {})
        lines += ["", text + (": " + ", ".join(f"{r} {n:,}" for r, n in reasons.items()) if reasons else "") + "."]
    if result.get("skipped_frames") or result.get("damaged_logs"):
        text = f"Not scored: {result.get('skipped_frames', 0):,} frame(s) without ground truth"
        damaged = result.get("damaged_logs", {})
        if damaged:
            text += "; damaged log(s), their readable frames scored: " + "; ".join(
                str(damage) for damage in damaged.values())  # each report names its file
        lines += ["", text + "."]
    by_class, cells = result.get("recall_1m_by_class", {}), result.get("near_cells_by_class", {})
    counted = [c for c in by_class if cells.get(c)]
    if counted:
        lines += ["", "Recall within 1 m by true class: " + ", ".join(
            f"{c} {pct(by_class[c])} % of {cells[c]:,} cells" for c in counted) + "."]
    by_cover, cover_cells = result.get("recall_1m_by_uss_coverage", {}), result.get("near_cells_by_uss_coverage", {})
    if any(cover_cells.values()):
        lines += ["", "Recall within 1 m where an ultrasonic beam reached the cell: " + ", ".join(
            f"{c} {pct(by_cover[c])} % of {cover_cells[c]:,} cells" for c in ("covered", "uncovered")) + "."]
    memory = result.get("memory")
    if memory:
        share, beside = memory.get("recalled_precision"), memory.get("recalled_beside_an_obstacle", 0)
        text = f"Near-field memory (decay {memory['decay']:g}): {memory['recalled_cells']:,} cells recalled"
        if share is not None:
            text += f", {pct(share)} % of them obstacles in the ground truth and {beside:,} more next to one"
        if memory.get("frames_without_odometry"):
            text += f"; {memory['frames_without_odometry']} frames without odometry"
        lines += ["", text + "."]
    levels = sector_levels(result)
    if levels and (levels.get("warned_sectors") or levels.get("clear_sectors")):
        steps = ", ".join(f"≤ {t:g}" for t in levels["thresholds_m"])
        lines += ["", f"Sector warning levels (clear, {steps} m): {pct(levels['under_warned'])} % of the "
                      f"{levels['warned_sectors']:,} sectors with a true warning shown a lower level "
                      f"({pct(levels.get('missed_warning'))} % shown clear{_bands(levels)}), "
                      f"{pct(levels['over_warned'])} % of those below the top level shown a higher one, "
                      f"{pct(levels['false_alarm'])} % of the {levels['clear_sectors']:,} clear sectors shown a "
                      "warning."]
    sector = result.get("sector_error_m", {})
    if sector.get("sectors"):
        lines += ["", f"Sector distance error: median {sector['median']:.2f} m, p95 {sector['p95']:.2f} m over "
                      f"{sector['sectors']} sectors; mIoU over the obstacle classes, IoU and recall in %."]
    return "\n".join(lines) + "\n"


def _bands(levels: Mapping[str, Any]) -> str:
    """'; nearest obstacle 0.8–1.5 m: 9.9 %, 0.3–0.8 m: 0.5 %': shown clear per true level, those with sectors."""
    edges = [*levels["thresholds_m"], 0.0]
    confusion = levels["confusion"]
    parts = [f"{edges[k + 1]:g}–{edges[k]:g} m: {pct(share)} %"
             for k, share in enumerate(levels.get("missed_by_level", [])) if sum(confusion[k + 1])]
    return "; nearest obstacle " + ", ".join(parts) if parts else ""


def modality_table(results: Mapping[str, Mapping[str, Any]], metric: str = "miou", title: str = "") -> str:
    """Models (e.g. camera only, USS only, fusion) x conditions: `metric` (one of METRICS) in %."""
    if metric not in METRICS:
        raise ConfigError(f"modality_table: metric must be one of {', '.join(METRICS)}, got {metric!r}")
    if not results:
        raise ConfigError("modality_table: no results to tabulate")
    conditions = _conditions(results)
    head = ["model", "all", *conditions]
    lines = [f"### {title}", ""] if title else []
    lines += ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for name, r in results.items():
        cells = [name, pct(_metric(r, metric, None)), *(pct(_metric(r, metric, c)) for c in conditions)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def warning_table(results: Mapping[str, Mapping[str, Any]], level: int = 2, title: str | None = None) -> str:
    """Models x conditions: of the sectors whose nearest true obstacle is at warning LEVEL (Evaluator's
    sector_levels; 2: within the second threshold, 0.8 m by default), the share a parking display would show clear,
    in %, then the share of sectors clear in truth shown a warning; "" when no model's JSON has sector levels (they
    predate them). TITLE None: one naming the level's distance."""
    with_levels = [levels for r in results.values() if (levels := sector_levels(r))]
    if not with_levels:
        return ""
    thresholds = with_levels[0]["thresholds_m"]
    if not 0 < level <= len(thresholds):
        raise ConfigError(f"warning_table: level must be 1..{len(thresholds)} (one per threshold, "
                          f"{', '.join(f'{t:g}' for t in thresholds)} m), got {level}")
    if title is None:
        within = thresholds[level - 1]
        title = f"Obstacles within {within:g} m of the car body that a parking display would show clear, by sector (%)"
    conditions = _conditions(results)

    def missed(levels: Any) -> str:
        by_level = levels.get("missed_by_level") if isinstance(levels, Mapping) else None
        return pct(by_level[level - 1]) if isinstance(by_level, list) and level <= len(by_level) else "–"

    head = ["model", "all", *conditions, "clear sectors shown a warning"]
    lines = [f"### {title}", ""] if title else []
    lines += ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for name, r in results.items():
        levels = sector_levels(r)
        by_condition = r.get("sector_levels_by_condition") if levels else None
        by_condition = by_condition if isinstance(by_condition, Mapping) else {}
        cells = [name, missed(levels), *(missed(by_condition.get(c)) for c in conditions),
                 pct(levels.get("false_alarm") if levels else None)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def sector_levels(result: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """RESULT's sector_levels when it has the shape Evaluator writes, else None (a JSON from before them)."""
    levels = result.get("sector_levels")
    ok = isinstance(levels, Mapping) and isinstance(levels.get("thresholds_m"), list) and levels["thresholds_m"]
    return levels if ok else None


SPLITS = {"class": ("recall_1m_by_class", "near_cells_by_class"),
          "uss_coverage": ("recall_1m_by_uss_coverage", "near_cells_by_uss_coverage")}


def split_recall_table(results: Mapping[str, Mapping[str, Any]], by: str = "class", title: str = "") -> str:
    """Models x parts of the near field: recall within 1 m of the car body in % and the cells it counts, split BY
    "class" (true obstacle class) or "uss_coverage" (cells an ultrasonic beam reached or not); "–" for a model
    whose JSON predates that split or has no such cells; "" when no model has it."""
    if by not in SPLITS:
        raise ConfigError(f"split_recall_table: by must be one of {', '.join(SPLITS)}, got {by!r}")
    recall_key, cells_key = SPLITS[by]
    parts: list[str] = []
    for r in results.values():
        parts += [c for c in r.get(recall_key, {}) if c not in parts]
    if not parts:
        return ""
    head = ["model", *parts]
    lines = [f"### {title}", ""] if title else []
    lines += ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for name, r in results.items():
        recall, cells = r.get(recall_key, {}), r.get(cells_key, {})
        lines.append("| " + " | ".join([name, *(pct(recall.get(c)) + (f" ({cells[c]:,} cells)" if cells.get(c)
                                                                       else "") for c in parts)]) + " |")
    return "\n".join(lines) + "\n"


def plot_by_condition(results: Mapping[str, Mapping[str, Any]], out_png: str | Path, metric: str = "miou",
                      title: str = "") -> np.ndarray:
    """Grouped bars of `metric` per condition ("all" first), one bar per model; writes out_png and returns the
    (H, W, 3) RGB picture. A value that is undefined (None) gets no bar and a small "n/a"."""
    if metric not in METRICS:
        raise ConfigError(f"plot_by_condition: metric must be one of {', '.join(METRICS)}, got {metric!r}")
    if not results:
        raise ConfigError("plot_by_condition: no results to plot")
    models = list(results)
    groups = ["all", *_conditions(results)]
    bar, gap = max(8, min(28, 120 // len(models))), 22
    left, right, top, bottom, plot_h = 60, 20, 56, 70, 300
    group_w = bar * len(models) + gap
    width = max(left + right + group_w * len(groups), 420)
    legend_rows = (len(models) + 2) // 3
    height = top + plot_h + bottom + 22 * legend_rows
    img = np.full((height, width, 3), 255, np.uint8)
    font, aa, ink, grey = cv2.FONT_HERSHEY_SIMPLEX, cv2.LINE_AA, (30, 30, 30), (215, 215, 215)
    y0 = top + plot_h  # the 0 % line

    label = {"miou": "mIoU (obstacle classes)", "miou_all": "mIoU (all classes)", "recall_1m": "recall within 1 m",
             "precision_1m": "precision within 1 m"}
    cv2.putText(img, title or f"{label[metric]} by condition", (left, 30), font, 0.6, ink, 1, aa)
    for pct in range(0, 101, 20):
        y = y0 - round(plot_h * pct / 100)
        cv2.line(img, (left, y), (width - right, y), grey if pct else ink, 1)
        cv2.putText(img, f"{pct}%", (8, y + 4), font, 0.4, ink, 1, aa)
    for g, group in enumerate(groups):
        x = left + gap // 2 + g * group_w
        for m, model in enumerate(models):
            v = _metric(results[model], metric, None if group == "all" else group)
            bx = x + m * bar
            if v is None:
                cv2.putText(img, "n/a", (bx, y0 - 4), font, 0.3, ink, 1, aa)
                continue
            h = round(plot_h * min(max(v, 0.0), 1.0))
            if h:  # h pixels tall, standing on the 0 % line
                cv2.rectangle(img, (bx + 1, y0 - h), (bx + bar - 1, y0 - 1), PALETTE[m % len(PALETTE)], -1)
            if bar >= 20:  # the value above its bar, where it fits
                text = f"{100 * v:.0f}"
                (tw, _), _ = cv2.getTextSize(text, font, 0.33, 1)
                cv2.putText(img, text, (bx + (bar - tw) // 2, y0 - h - 4), font, 0.33, ink, 1, aa)
        (tw, _), _ = cv2.getTextSize(group, font, 0.42, 1)
        cv2.putText(img, group, (x + (bar * len(models) - tw) // 2, y0 + 20), font, 0.42, ink, 1, aa)
    for m, model in enumerate(models):
        lx = left + (m % 3) * ((width - left) // 3)
        ly = y0 + 48 + 22 * (m // 3)
        cv2.rectangle(img, (lx, ly - 11), (lx + 14, ly + 1), PALETTE[m % len(PALETTE)], -1)
        cv2.putText(img, model, (lx + 20, ly), font, 0.45, ink, 1, aa)

    write_png(img, out_png, "chart")
    return img
