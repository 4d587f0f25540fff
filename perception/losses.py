"""Class-balanced losses of the two decoder stages: weighted cross-entropy over the classes (stage 2), weighted
binary cross-entropy on occupied/free (stage 1), an optional soft-dice term on the obstacle classes; 255 ignored.

Class weights are frequency ** -power (inverse square root by default: inverse frequency would let a class with a
few hundred cells dominate, and its gradient noise with it), normalised so that the average weight over labelled
cells is 1 and the loss keeps the scale of plain cross-entropy.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the universal torch idiom
from torch import Tensor, nn

from sensors.classes import IGNORE, NUM_CLASSES, SemanticClass
from sensors.errors import ConfigError

LabelMaps = np.ndarray | Tensor | Iterable[np.ndarray | Tensor]


def class_counts(label_maps: LabelMaps, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """(num_classes,) int64 cells per class over label maps ((R, W) or (B, R, W), or an iterable of them);
    IGNORE cells are not counted, any other label outside 0..num_classes-1 is an error."""
    if isinstance(label_maps, (np.ndarray, Tensor)):
        label_maps = [label_maps]
    counts = np.zeros(num_classes, np.int64)
    for i, m in enumerate(label_maps):
        a = m.detach().cpu().numpy() if isinstance(m, Tensor) else np.asarray(m)
        if a.ndim < 2 or not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"class_counts: label map {i} must be an integer array (R, W) or (B, R, W), got "
                             f"{a.dtype} {a.shape}; pass per-class counts as a 1-D array instead")
        a = a[a != IGNORE].ravel()
        bad = a[(a < 0) | (a >= num_classes)]
        if bad.size:
            raise ValueError(f"class_counts: label map {i} holds label {int(bad[0])}; labels are 0..{num_classes - 1}"
                             f" and {IGNORE} (ignore)")
        counts += np.bincount(a, minlength=num_classes)
    return counts


def _counts(label_maps_or_counts: LabelMaps, num_classes: int) -> np.ndarray:
    """Counts as float64: a 1-D array/tensor or a list of numbers is taken as counts, anything else as label maps."""
    x = label_maps_or_counts
    if isinstance(x, Tensor):
        x = x.detach().cpu().numpy()
    if isinstance(x, (list, tuple)) and x and all(isinstance(v, (int, float, np.number)) for v in x):
        x = np.asarray(x, np.float64)
    if isinstance(x, np.ndarray) and x.ndim == 1:
        if x.shape[0] != num_classes or not np.all(np.isfinite(x)) or np.any(x < 0):
            raise ValueError(f"class counts must be {num_classes} finite numbers >= 0, got {x.tolist()}")
        return x.astype(np.float64)
    return class_counts(x, num_classes).astype(np.float64)


def class_weights(label_maps_or_counts: LabelMaps, power: float = 0.5, num_classes: int = NUM_CLASSES) -> Tensor:
    """(num_classes,) float32 stage-2 weights, frequency ** -power, with sum(weight * frequency) = 1.

    Accepts label maps (see class_counts) or a 1-D sequence of num_classes counts. A class absent from the data
    gets the largest weight of the present ones (it cannot be measured; infinity would be worse)."""
    counts = _counts(label_maps_or_counts, num_classes)
    if counts.sum() <= 0:
        raise ValueError("class_weights: no labelled cells (all IGNORE or empty); cannot balance classes")
    freq = counts / counts.sum()
    present = freq > 0
    w = np.zeros(num_classes)
    w[present] = freq[present] ** -power
    w[~present] = w[present].max()
    w /= (w * freq).sum()
    return torch.tensor(w, dtype=torch.float32)


def occupancy_pos_weight(label_maps_or_counts: LabelMaps, power: float = 0.5,
                         num_classes: int = NUM_CLASSES) -> float:
    """Stage-1 positive weight (free cells / occupied cells) ** power: with power 1 occupied and free cells weigh
    the same in total; the default square root matches class_weights."""
    counts = _counts(label_maps_or_counts, num_classes)
    free = counts[SemanticClass.FREE]
    occupied = counts.sum() - free
    if occupied <= 0 or free <= 0:
        return 1.0  # one side absent: nothing to balance
    return float((free / occupied) ** power)


class OccupancyLoss(nn.Module):
    """(class_logits (B, C, R, W), occupancy_logits (B, 1, R, W), target (B, R, W) long) -> dict of scalars:
    total = classes + stage1_weight * occupancy (+ dice_weight * dice).

    classes: cross-entropy weighted by class_weights, averaged over labelled cells by their weights (torch's
    weighted mean). occupancy: binary cross-entropy of "target is not FREE" with pos_weight, mean over labelled
    cells. dice: 1 - soft dice of the softmax on the obstacle classes (1..C-1) over the batch, present classes
    only; it scores a class by overlap, not per-cell, so a small class counts as much as a large one. It is off
    by default (dice_weight 0): turn it on when small-class IoU lags after balancing by weights alone.
    cell_weights: an optional (R, W) map of per-cell weights for both stages (near_field_weights: cells near the
    car body weigh more, for recall where a miss matters most); every mean above becomes a mean weighted by it.
    A batch whose cells are all IGNORE gives 0 losses (with gradients), not NaN.
    """

    def __init__(self, class_weights: Tensor | None = None, pos_weight: float = 1.0, stage1_weight: float = 0.5,
                 dice_weight: float = 0.0, num_classes: int = NUM_CLASSES,
                 cell_weights: Tensor | np.ndarray | None = None) -> None:
        super().__init__()
        w = torch.ones(num_classes) if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
        if w.shape != (num_classes,) or not torch.all(torch.isfinite(w) & (w >= 0)):
            raise ConfigError(f"OccupancyLoss: class_weights must be {num_classes} finite numbers >= 0, got "
                              f"{w.tolist()}")
        for name, v in (("pos_weight", pos_weight), ("stage1_weight", stage1_weight), ("dice_weight", dice_weight)):
            if not (isinstance(v, (int, float)) and np.isfinite(v) and v >= 0) or (name == "pos_weight" and v == 0):
                raise ConfigError(f"OccupancyLoss: {name} must be a finite number >= 0 (pos_weight > 0), got {v!r}")
        cw = None if cell_weights is None else torch.as_tensor(cell_weights, dtype=torch.float32)
        if cw is not None and (cw.dim() != 2 or not torch.all(torch.isfinite(cw) & (cw > 0))):
            raise ConfigError(f"OccupancyLoss: cell_weights must be an (R, W) map of finite numbers > 0, got shape "
                              f"{tuple(cw.shape)}")
        self.register_buffer("cell_weights", cw)
        self.register_buffer("class_weights", w)
        self.register_buffer("pos_weight", torch.tensor([float(pos_weight)]))
        self.stage1_weight = float(stage1_weight)
        self.dice_weight = float(dice_weight)
        self.num_classes = num_classes

    def forward(self, class_logits: Tensor, occupancy_logits: Tensor, target: Tensor) -> dict[str, Tensor]:
        B, C, R, W = class_logits.shape
        if self.num_classes != C or occupancy_logits.shape != (B, 1, R, W) or target.shape != (B, R, W):
            raise ValueError(f"OccupancyLoss: shapes class_logits {tuple(class_logits.shape)}, occupancy_logits "
                             f"{tuple(occupancy_logits.shape)}, target {tuple(target.shape)}; expected (B, "
                             f"{self.num_classes}, R, W), (B, 1, R, W), (B, R, W)")
        target = target.long()
        labelled = target != IGNORE
        if torch.any((target[labelled] < 0) | (target[labelled] >= C)):
            bad = target[labelled & ((target < 0) | (target >= C))][0].item()
            raise ValueError(f"OccupancyLoss: target holds label {bad}; labels are 0..{C - 1} and {IGNORE} (ignore)")
        if self.cell_weights is not None and self.cell_weights.shape != (R, W):
            raise ValueError(f"OccupancyLoss: cell_weights of shape {tuple(self.cell_weights.shape)} do not match the "
                             f"BEV grid ({R}, {W})")
        safe = torch.where(labelled, target, torch.zeros_like(target))
        m = labelled.float() if self.cell_weights is None else labelled.float() * self.cell_weights

        # Stage 2: per-cell weighted CE, divided by the labelled cells' total weight (= torch's weighted mean).
        ce = F.cross_entropy(class_logits, safe, weight=self.class_weights, reduction="none") * m
        classes = ce.sum() / (self.class_weights[safe] * m).sum().clamp(min=1e-6)

        # Stage 1: occupied = any labelled class other than FREE.
        occupied = (safe != SemanticClass.FREE).float()
        bce = F.binary_cross_entropy_with_logits(occupancy_logits[:, 0], occupied, pos_weight=self.pos_weight,
                                                 reduction="none")
        occupancy = (bce * m).sum() / m.sum().clamp(min=1e-6)

        out = {"classes": classes, "occupancy": occupancy}
        total = classes + self.stage1_weight * occupancy
        if self.dice_weight > 0:
            out["dice"] = self.soft_dice(class_logits, safe, m)
            total = total + self.dice_weight * out["dice"]
        out["total"] = total
        return out

    def soft_dice(self, class_logits: Tensor, target: Tensor, mask: Tensor) -> Tensor:
        """1 - mean soft dice over the obstacle classes present in the batch's labelled cells (0 if none)."""
        prob = torch.softmax(class_logits, dim=1)[:, 1:] * mask[:, None]
        onehot = F.one_hot(target, self.num_classes).permute(0, 3, 1, 2)[:, 1:].float() * mask[:, None]
        inter = (prob * onehot).sum(dim=(0, 2, 3))
        denom = prob.sum(dim=(0, 2, 3)) + onehot.sum(dim=(0, 2, 3))
        present = onehot.sum(dim=(0, 2, 3)) > 0
        dice = 1 - (2 * inter + 1) / (denom + 1)
        return (dice * present).sum() / present.sum().clamp(min=1)


def near_field_weights(rig, grid, near_weight: float, near_m: float = 1.0) -> np.ndarray | None:
    """(R, W) float32 loss weights: near_weight on cells whose centre lies within near_m of the car body outline
    (the ego footprint included: its cells are IGNORE in the targets anyway), 1 elsewhere; None when near_weight is
    1 (nothing to weigh). A parking system's worst error is a miss next to the car; eval's recall_1m measures it."""
    if near_weight == 1:
        return None
    if not (np.isfinite(near_weight) and near_weight > 0 and np.isfinite(near_m) and near_m >= 0):
        raise ConfigError(f"near_field_weights: near_weight must be > 0 and near_m >= 0, got {near_weight}, {near_m}")
    near = rig.vehicle.distance_to_body(grid.cell_centres()) <= near_m
    return np.where(near, near_weight, 1.0).astype(np.float32)
