"""A torch model scored on data (`nearfield eval`, and validation during training): its class maps over a dataset or
drive logs through perception.evaluate.Evaluator, and the report files (JSON, Markdown, PNG).

What validation needs is imported with this module, which training imports at its start: a run that takes hours
does not import code at its first validation, when the working tree may have changed under it."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from perception.bev_config import ego_mask
from perception.dataset import BlindCameras, DriveDataset, dataset_rig, find_logs
from perception.devices import amp_dtype, resolve_device, to_device
from perception.evaluate import Evaluator
from perception.model import FusionNet
from perception.postprocess import apply_echo_floor, check_free_confidence, class_map, echo_floor_zone, near_mask
from perception.temporal import NearFieldMemory, check_decay
from perception.uss_raster import COVERAGE, DIRECT_ARC
from sensors.classes import IGNORE, SemanticClass
from sensors.errors import ConfigError
from sensors.rig import Rig


def evaluate_dataset(model: FusionNet, dataset: Dataset, rig: Rig, device: str | torch.device = "cpu",
                     batch_size: int = 4, amp: torch.dtype | None = None, progress: bool = False,
                     desc: str = "eval", free_confidence: float | None = None,
                     memory_decay: float | None = None, echo_floor: bool = False) -> dict[str, Any]:
    """Evaluator.result() of the model's class maps (argmax, ego footprint IGNORE; with free_confidence the
    near-field bias of postprocess.class_map over the evaluator's near field) over a dataset of items
    {images, grid, valid, uss, target}; conditions from dataset.meta[i].conditions where it has them, the cells an
    ultrasonic beam reached from the raster's coverage channel.

    memory_decay: the near-field memory (perception.temporal) with this decay, run over each drive's frames in
    order with the odometry of dataset.meta; the result then has "memory" (decay, frames without odometry, cells
    recalled, how many of them are obstacles in the target and that share: the precision of the recalls alone, and how
    many of the others lie next to one (8-neighbourhood): off by a cell rather than made up). A dataset without odometry
    is refused: there would be nothing to carry the memory with. echo_floor: postprocess.apply_echo_floor on each
    map (before the memory), from the raster's direct-arc channel."""
    return evaluate_settings(model, dataset, rig, [free_confidence], device, batch_size, amp, progress, desc,
                             memory_decay, echo_floor)[0]


@torch.no_grad()
def evaluate_settings(model: FusionNet, dataset: Dataset, rig: Rig, free_confidences: Sequence[float | None],
                      device: str | torch.device = "cpu", batch_size: int = 4, amp: torch.dtype | None = None,
                      progress: bool = False, desc: str = "eval",
                      memory_decay: float | None = None, echo_floor: bool = False) -> list[dict[str, Any]]:
    """evaluate_dataset's result for each of several near-field biases (None: the argmax) from one pass of the
    network: the same logits post-processed once per setting, each with an evaluator and a memory of its own (the
    memory carries the obstacles of the map it is given, so a setting's memory is its own)."""
    if not free_confidences:
        raise ConfigError("evaluate_settings: no setting to score (give at least one free confidence, or None)")
    check_batch_size(batch_size)
    for p in free_confidences:
        if p is not None:
            check_free_confidence(p)
    device = torch.device(device)
    grid = model.config.bev.grid(rig)
    ego = ego_mask(rig.vehicle, grid)
    evaluators = [Evaluator(rig, grid) for _ in free_confidences]
    near = near_mask(rig.vehicle, grid, evaluators[0].near_m)
    meta = getattr(dataset, "meta", None)
    floor_zone = echo_floor_zone(rig, grid) if echo_floor else None
    runs = [_Setting(p, e, _memory(meta, grid, near, ego, memory_decay))
            for p, e in zip(free_confidences, evaluators, strict=True)]
    was_training = model.training
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0,
                        generator=torch.Generator())  # leaves the global RNG alone (a resume restores it)
    i = 0
    try:
        for batch in tqdm(loader, desc=desc, unit="batch", disable=not progress, leave=False):
            b = to_device(batch, device)
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                logits, _ = model(b["images"], b["grid"], b["valid"], b["uss"])
            logits = logits.float().cpu().numpy()
            targets = batch["target"].numpy()
            covered = batch["uss"][:, COVERAGE].numpy() > 0.5
            arcs = batch["uss"][:, DIRECT_ARC].numpy()
            for run in runs:
                maps = class_map(logits, ego, near if run.free_confidence is not None else None, run.free_confidence)
                if floor_zone is not None:
                    maps = np.stack([apply_echo_floor(m, arc, floor_zone) for m, arc in zip(maps, arcs, strict=True)])
                for k in range(len(maps)):
                    run.update(logits[k], maps[k], targets[k], covered[k], meta[i + k] if meta is not None else None,
                               i + k)
            i += len(logits)
    finally:
        model.train(was_training)
    return [run.result() for run in runs]


def check_batch_size(batch_size: int) -> int:
    """--batch-size of eval and operating-point: a whole number of frames, at least 1."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"--batch-size must be a whole number of frames, at least 1, got {batch_size!r}")
    return batch_size


class _Setting:
    """One near-field bias of evaluate_settings: its evaluator, its memory and the memory's counts."""

    def __init__(self, free_confidence: float | None, evaluator: Evaluator, memory: NearFieldMemory | None):
        self.free_confidence, self.evaluator, self.memory = free_confidence, evaluator, memory
        self.drive, self.no_odometry, self.recalled, self.recalled_true, self.recalled_beside = None, 0, 0, 0, 0

    def update(self, logits: np.ndarray, out: np.ndarray, target: np.ndarray, covered: np.ndarray, m, i: int) -> None:
        where = f"{m.drive} frame {m.index}" if m is not None else f"sample {i}"
        if self.memory is not None:
            if m.drive != self.drive:
                self.memory.reset()
                self.drive = m.drive
            out, recall = self.memory.step(logits, out, covered, m.odometry, m.stamp_ns)
            self.no_odometry += m.odometry is None
            obstacle = (target != SemanticClass.FREE) & (target != IGNORE)  # the recalls alone: how many are right
            self.recalled += int(recall.cells.sum())
            self.recalled_true += int((recall.cells & obstacle).sum())
            self.recalled_beside += int((recall.cells & ~obstacle & _beside(obstacle)).sum())
        self.evaluator.update(out, target, m.conditions if m is not None else (), where, covered=covered,
                              degraded=m.degraded if m is not None else ())

    def result(self) -> dict[str, Any]:
        result = self.evaluator.result()
        if self.memory is not None:
            result["memory"] = {"decay": self.memory.decay, "frames_without_odometry": self.no_odometry,
                                "recalled_cells": self.recalled, "recalled_true": self.recalled_true,
                                "recalled_beside_an_obstacle": self.recalled_beside,
                                "recalled_precision": self.recalled_true / self.recalled if self.recalled else None}
        return result


def _beside(mask: np.ndarray) -> np.ndarray:
    """Cells with a cell of MASK among their 8 neighbours or themselves."""
    padded = np.pad(mask, 1)
    rows, cols = mask.shape
    out = np.zeros_like(mask)
    for dr in range(3):
        for dc in range(3):
            out |= padded[dr:dr + rows, dc:dc + cols]
    return out


def _memory(meta, grid, near, ego, decay: float | None) -> NearFieldMemory | None:
    """The near-field memory for evaluate_dataset, or None without a decay; a ConfigError when the dataset has no
    odometry to run it with."""
    if decay is None:
        return None
    check_decay(decay)
    if meta is None or not any(m.odometry is not None for m in meta):
        raise ConfigError("the near-field memory needs odometry, and these drives record none (logs simulated "
                          "before odometry was added to the log format: simulate them again)")
    return NearFieldMemory(grid, near, ego, decay)


def evaluate_logs(model: FusionNet, paths: Sequence[str | Path], cache: bool = True,
                  device: str | torch.device = "cpu", batch_size: int = 4, progress: bool = True,
                  blind_cameras: bool = False, free_confidence: float | None = None,
                  memory_decay: float | None = None, echo_floor: bool = False) -> dict[str, Any]:
    """`nearfield eval`: the model's scores on drive logs (files or directories of *.mcap). Preprocessed arrays
    are cached in .cache beside the logs unless cache=False. BLIND_CAMERAS scores a fusion model as if every camera
    had failed (images and validity zeroed, as in a camera failure): what its ultrasonic branch finds alone.
    FREE_CONFIDENCE: the near-field bias of postprocess.class_map, MEMORY_DECAY the near-field memory of
    perception.temporal (both checked before any log is read), ECHO_FLOOR postprocess.apply_echo_floor."""
    return evaluate_logs_settings(model, paths, [free_confidence], cache, device, batch_size, progress, blind_cameras,
                                  memory_decay, echo_floor)[0]


def evaluate_logs_settings(model: FusionNet, paths: Sequence[str | Path], free_confidences: Sequence[float | None],
                           cache: bool = True, device: str | torch.device = "cpu", batch_size: int = 4,
                           progress: bool = True, blind_cameras: bool = False,
                           memory_decay: float | None = None, echo_floor: bool = False) -> list[dict[str, Any]]:
    """evaluate_logs for each of several near-field biases (None: the argmax) from one pass of the network
    (`nearfield operating-point`)."""
    if not free_confidences:
        raise ConfigError("no free confidence to score: give at least one value (or None for the argmax)")
    check_batch_size(batch_size)  # before any log is read
    for p in free_confidences:
        if p is not None:
            check_free_confidence(p)
    if memory_decay is not None:
        check_decay(memory_decay)
    if blind_cameras and not (model.config.uses_camera and model.config.uses_uss):
        raise ConfigError(f"{model.config.name}: blind cameras are for fusion models; a {model.config.modality} model "
                          "would be scored on blank inputs")

    logs = find_logs(paths)
    cache_dir = None
    if cache:
        first = Path(paths[0])
        cache_dir = (first if first.is_dir() else first.parent) / ".cache"
    dataset = DriveDataset(logs, model.config.bev, cache_dir=cache_dir, progress=progress)
    rig = dataset_rig(dataset)
    # What was left out: frames without ground truth (a damaged log's cut-off tail), and each damaged log's report.
    left_out = {"skipped_frames": sum(d.skipped for d in dataset.drives),
                "damaged_logs": {str(p): d.damage for p, d in zip(dataset.logs, dataset.drives, strict=True)
                                 if d.damage}}
    if blind_cameras:
        dataset = BlindCameras(dataset)
    device = resolve_device(str(device))
    results = evaluate_settings(model.to(device), dataset, rig, free_confidences, device, batch_size,
                                amp_dtype("auto", device), progress, memory_decay=memory_decay, echo_floor=echo_floor)
    return [{**r, **left_out} for r in results]


def report_paths(json_path: str | Path) -> list[Path]:
    """The files write_eval_report writes: OUT.json, OUT.md and OUT.png."""
    path = Path(json_path)
    return [path, path.with_suffix(".md"), path.with_suffix(".png")]


def write_eval_report(result: dict[str, Any], json_path: str | Path, title: str) -> list[Path]:
    """OUT.json (the result), OUT.md (Markdown table) and OUT.png (mIoU by condition) beside each other."""
    from perception.report import markdown_table, plot_by_condition

    path, md, png = report_paths(json_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"model": title, **result}, indent=1) + "\n")
    md.write_text(markdown_table(result, title))
    plot_by_condition({title: result}, png)
    return [path, md, png]


__all__ = ["check_batch_size", "evaluate_dataset", "evaluate_logs", "evaluate_logs_settings", "evaluate_settings",
           "report_paths", "write_eval_report"]
