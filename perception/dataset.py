"""Training and evaluation data: drive logs turned into the network's inputs and targets, one FrameSample per frame;
DriveDataset holds many drives as compact arrays (preprocessed once, optionally cached as .npz)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from perception.bev_config import BevConfig
from perception.preprocess import FramePreprocessor, FrameSample, decode_reduction  # noqa: F401 (re-exported)
from perception.uss_raster import USS_CHANNELS
from sensors.classes import IGNORE, NUM_CLASSES
from sensors.errors import ConfigError, LogFormatError
from sensors.files import file_sha256, find_logs
from sensors.geometry import Pose2D
from sensors.rig import CAMERA_NAMES, Rig
from sensors.schemas import GT_OCCUPANCY_TOPIC

log = logging.getLogger(__name__)

# Bump when preprocessing changes what it produces: old cache files then no longer match. 2: the frames' degraded
# reasons and the count of frames left out without ground truth are kept.
CACHE_VERSION = 2
_SEP = ","  # condition labels never hold a comma (the simulator joins them with one in the log metadata)
_DEGRADED_SEP = "; "  # nor do the synchroniser's degraded reasons hold a semicolon


@dataclass(frozen=True)
class FrameMeta:
    """What DriveDataset.meta[i] says about sample i."""

    drive: str
    index: int
    stamp_ns: int
    conditions: tuple[str, ...]
    odometry: Pose2D | None = None  # the vehicle's odometry pose at stamp_ns, where the log records one
    degraded: tuple[str, ...] = ()  # the frame's degraded reasons (sensors.messages.Frame.degraded)


@dataclass
class DriveArrays:
    """One drive's F frames as compact arrays: geometry once per drive, uint8 images, float16 raster."""

    name: str
    grid: np.ndarray  # (N, Z*R, W, 2) float32
    valid: np.ndarray  # (N, Z, R, W) float32, the tables' validity
    present: np.ndarray  # (F, N) bool, which cameras delivered an image
    images: np.ndarray  # (F, N, 3, H, W) uint8
    uss: np.ndarray  # (F, C, R, W) float16 (the raster is in [0, 1]; half precision is ample)
    target: np.ndarray  # (F, R, W) uint8
    index: np.ndarray  # (F,) int64 frame index in the drive
    stamp: np.ndarray  # (F,) int64 ns
    conditions: list[tuple[str, ...]]
    damage: str = ""  # the reader's damage report, "" for an intact log
    # (F, 3) float64 odometry pose (x, y, yaw) per frame, NaN where a frame had none; None: the log records no odometry
    odometry: np.ndarray | None = None
    degraded: list[tuple[str, ...]] | None = None  # per frame, its degraded reasons (None: none anywhere)
    skipped: int = 0  # readable frames left out without ground truth (cut off at the damage, or unlabelled)

    def pose(self, f: int) -> Pose2D | None:
        """Frame f's odometry pose, None where it has none."""
        if self.odometry is None or not np.all(np.isfinite(self.odometry[f])):
            return None
        return Pose2D(*(float(v) for v in self.odometry[f]))

    def __len__(self) -> int:
        return len(self.index)

    def to_npz(self) -> dict[str, np.ndarray]:
        return {"version": np.array(CACHE_VERSION), "name": np.array(self.name), "grid": self.grid,
                "valid": self.valid, "present": self.present, "images": self.images, "uss": self.uss,
                "target": self.target, "index": self.index, "stamp": self.stamp, "damage": np.array(self.damage),
                "conditions": np.array([_SEP.join(c) for c in self.conditions], dtype=str),
                "degraded": np.array([_DEGRADED_SEP.join(d) for d in self.degraded or [()] * len(self)], dtype=str),
                "skipped": np.array(self.skipped),
                **({} if self.odometry is None else {"odometry": self.odometry})}

    @classmethod
    def from_npz(cls, z) -> DriveArrays:
        conditions = [tuple(s.split(_SEP)) if s else () for s in z["conditions"].tolist()]
        degraded = [tuple(s.split(_DEGRADED_SEP)) if s else () for s in z["degraded"].tolist()]
        return cls(str(z["name"]), z["grid"], z["valid"], z["present"], z["images"], z["uss"], z["target"],
                   z["index"], z["stamp"], conditions, str(z["damage"]),
                   z["odometry"] if "odometry" in z.files else None, degraded, int(z["skipped"]))


def read_drive(path: str | Path, config: BevConfig, progress: bool = True) -> DriveArrays:
    """Preprocess every frame of one log. A damaged log gives what is readable, with one warning quoting the
    reader's damage report; a log without ground truth raises LogFormatError."""
    from sensors.log import LogReader
    from sensors.replay import replay_frames

    path = Path(path)
    with LogReader(path) as reader:
        rig = reader.rig
        prep = FramePreprocessor(rig, config, str(path))
        total = reader.summary().topics.get(GT_OCCUPANCY_TOPIC)
        images, present, uss, target, index, stamp, conditions, odometry = [], [], [], [], [], [], [], []
        degraded = []
        unlabelled = 0
        frames = replay_frames(path, decode=True, decode_scale=prep.reduction, reader=reader)
        for frame in tqdm(frames, desc=path.stem, unit="frame", total=total.count if total else None,
                          disable=not progress, leave=False):
            if frame.truth is None:
                unlabelled += 1
                continue
            s = prep(frame, path.stem)
            images.append(s.images)
            present.append(s.present)
            uss.append(s.uss.astype(np.float16))
            target.append(s.target)
            index.append(s.index)
            stamp.append(s.stamp_ns)
            conditions.append(tuple(s.conditions))
            degraded.append(tuple(frame.degraded))
            pose = frame.odometry
            odometry.append((np.nan,) * 3 if pose is None else (pose.x, pose.y, pose.yaw))
        damage = "; ".join(str(d) for d in reader.damages)
    if not index:
        raise LogFormatError(f"{path}: no frame with ground truth ({GT_OCCUPANCY_TOPIC}) among its {unlabelled} "
                             "readable frame(s); training and evaluation need simulated or labelled drives"
                             + (f"; damage: {damage}" if damage else ""))
    if damage:  # one warning: frames cut off mid-way (without their ground truth) are part of the damage
        cut = f" ({unlabelled} more without ground truth left out)" if unlabelled else ""
        log.warning("%s: damaged log, using its %d readable frame(s)%s: %s", path, len(index), cut, damage)
    elif unlabelled:
        log.warning("%s: %d of %d frame(s) have no ground truth (%s) and are left out", path, unlabelled,
                    unlabelled + len(index), GT_OCCUPANCY_TOPIC)
    return DriveArrays(path.stem, prep.tables.grid, prep.tables.valid, np.stack(present), np.stack(images),
                       np.stack(uss), np.stack(target), np.array(index, np.int64), np.array(stamp, np.int64),
                       conditions, damage, _odometry_array(odometry), degraded, unlabelled)


def _odometry_array(rows: list[tuple[float, float, float]]) -> np.ndarray | None:
    """(F, 3) float64 poses, or None when no frame had odometry (a log that records none)."""
    a = np.array(rows, np.float64).reshape(-1, 3)
    return a if np.isfinite(a).all(axis=1).any() else None




def cache_key(log_sha256: str, config: BevConfig) -> str:
    """The cache file's key: the log's content, the BEV configuration and the preprocessing version."""
    text = json.dumps({"log": log_sha256, "bev": config.to_dict(), "version": CACHE_VERSION,
                       "uss": USS_CHANNELS}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


class DriveDataset(Dataset):
    """Frames of many drives for training or evaluation.

    Each log is preprocessed once into DriveArrays (uint8 images, float16 raster, uint8 targets; grid and
    valid once per drive), read from / written to cache_dir as STEM-KEY.npz when given (no pickle). Item i is a
    dict of tensors: images (N, 3, H, W) uint8, grid (N, Z*R, W, 2) float32, valid (N, Z, R, W) float32, uss
    (C, R, W) float32, target (R, W) int64 (IGNORE = 255 for the loss's ignore_index); meta[i] says which
    frame it is.

    mask_labelled_failures zeroes the valid slice of a camera that the frame's condition labels name as failed
    ("camera_failure:RV"): an oracle for a camera-health monitor. Off by default, since a black or frozen image
    still arrives on the car and the network must cope with it. `augment(item) -> item` runs on every item
    (training only); it must not move geometry (PhotometricJitter, CameraDropout).
    """

    def __init__(self, paths: Iterable[str | Path], config: BevConfig, cache_dir: str | Path | None = None,
                 augment: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None,
                 mask_labelled_failures: bool = False, progress: bool = True):
        self.config = config
        self.augment = augment
        self.mask_labelled_failures = mask_labelled_failures
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.logs = find_logs(paths)
        self.drives = [self._load(p, progress) for p in tqdm(self.logs, desc="drives", unit="log",
                                                              disable=not progress or len(self.logs) < 2)]
        self._drive = np.concatenate([np.full(len(d), k) for k, d in enumerate(self.drives)])
        self._frame = np.concatenate([np.arange(len(d)) for d in self.drives])
        self.meta = [FrameMeta(d.name, int(d.index[f]), int(d.stamp[f]), d.conditions[f], d.pose(f),
                               d.degraded[f] if d.degraded else ())
                     for d in self.drives for f in range(len(d))]
        self.cameras = CAMERA_NAMES

    def _load(self, path: Path, progress: bool) -> DriveArrays:
        if self.cache_dir is None:
            return read_drive(path, self.config, progress)
        cache = self.cache_dir / f"{path.stem}-{cache_key(file_sha256(path), self.config)[:20]}.npz"
        if cache.exists():
            try:
                with np.load(cache, allow_pickle=False) as z:
                    if int(z["version"]) == CACHE_VERSION:
                        arrays = DriveArrays.from_npz(z)
                        if arrays.damage:
                            log.warning("%s: damaged log, using its %d readable frame(s): %s", path, len(arrays),
                                        arrays.damage)
                        log.debug("%s: preprocessed frames from cache %s", path, cache)
                        return arrays
            except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
                log.warning("%s: cache file %s does not load (%s); preprocessing the log again", path, cache, e)
        arrays = read_drive(path, self.config, progress)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        # A temporary name of this writer's own: two runs filling one cache (two trainings on one data folder)
        # must not rename each other's half-written file. A killed run leaves no half-written cache file under the
        # real name; the last complete writer wins, and both wrote the same arrays.
        fd, tmp = tempfile.mkstemp(dir=self.cache_dir, prefix=cache.name + ".", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **arrays.to_npz())
            os.replace(tmp, cache)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return arrays

    def __len__(self) -> int:
        return len(self._drive)

    def _locate(self, i: int) -> tuple[DriveArrays, int]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"sample {i} out of range for {len(self)} frames")
        i %= len(self)
        return self.drives[self._drive[i]], int(self._frame[i])

    def _valid(self, d: DriveArrays, f: int) -> np.ndarray:
        present = d.present[f].copy()
        if self.mask_labelled_failures:
            failed = {lbl.split(":", 1)[1] for lbl in d.conditions[f] if lbl.startswith("camera_failure:")}
            present &= np.array([c not in failed for c in self.cameras])
        return d.valid * present[:, None, None, None].astype(np.float32)

    def sample(self, i: int) -> FrameSample:
        """Sample i as numpy arrays (no augmentation)."""
        d, f = self._locate(i)
        m = self.meta[i % len(self)]
        return FrameSample(d.images[f].copy(), self._valid(d, f), d.grid, d.uss[f].astype(np.float32),
                           d.target[f].copy(), d.present[f].copy(), list(m.conditions), m.drive, m.index, m.stamp_ns)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        d, f = self._locate(int(i))
        item = {"images": torch.from_numpy(d.images[f].copy()),
                "grid": torch.from_numpy(d.grid),
                "valid": torch.from_numpy(self._valid(d, f)),
                "uss": torch.from_numpy(d.uss[f].astype(np.float32)),
                "target": torch.from_numpy(d.target[f].astype(np.int64))}
        return self.augment(item) if self.augment is not None else item

    def label_counts(self) -> np.ndarray:
        """(NUM_CLASSES,) int64 target cells per class over the whole set (IGNORE not counted): the input of
        class-balanced loss weights."""
        counts = np.zeros(NUM_CLASSES, np.int64)
        for d in self.drives:
            c = np.bincount(d.target.reshape(-1), minlength=256)
            counts += c[:NUM_CLASSES]
        return counts

    def ignored_cells(self) -> int:
        """Target cells marked IGNORE over the whole set (label_counts().sum() + this = frames x cells)."""
        return int(sum((d.target == IGNORE).sum() for d in self.drives))

    def nbytes(self) -> int:
        """Memory held by the preprocessed arrays."""
        return int(sum(d.images.nbytes + d.uss.nbytes + d.target.nbytes + d.grid.nbytes + d.valid.nbytes
                       for d in self.drives))


class PhotometricJitter:
    """Training augmentation: per camera a random brightness and contrast change of the uint8 images (light and
    exposure differ between cameras and drives); geometry, validity and target are untouched. Draws from torch's
    generator, so DataLoader workers get independent streams."""

    def __init__(self, brightness: float = 0.25, contrast: float = 0.25):
        if not (0 <= brightness < 1 and 0 <= contrast < 1):
            raise ConfigError(f"PhotometricJitter: brightness ({brightness}) and contrast ({contrast}) must be in "
                              "[0, 1)")
        self.brightness, self.contrast = brightness, contrast

    def __call__(self, item: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        images = item["images"].float()  # (N, 3, H, W)
        n = images.shape[0]
        b = 1 + self.brightness * (2 * torch.rand(n, 1, 1, 1) - 1)
        c = 1 + self.contrast * (2 * torch.rand(n, 1, 1, 1) - 1)
        mean = images.mean(dim=(1, 2, 3), keepdim=True)
        out = ((images - mean) * c + mean) * b
        return {**item, "images": out.round().clamp(0, 255).to(torch.uint8)}


class BlindCameras(Dataset):
    """A DriveDataset's frames with every camera failed (images and validity zeroed), the rest as recorded: what a
    fusion network's ultrasonic branch finds alone (`nearfield eval --blind-cameras`). Keeps the frames' meta."""

    def __init__(self, dataset: DriveDataset):
        self.dataset, self.meta = dataset, dataset.meta

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        item = self.dataset[index]
        return {**item, "images": torch.zeros_like(item["images"]), "valid": torch.zeros_like(item["valid"])}


class CameraDropout:
    """Training augmentation: with probability p one random camera is lost (its image and valid slice zeroed), so
    the network learns to lean on the other cameras and the ultrasonic branch; with probability `blackout` every
    camera is lost (drawn first), so a fusion network's ultrasonic branch must learn the scene on its own."""

    def __init__(self, p: float = 0.1, blackout: float = 0.0):
        for name, value in (("p", p), ("blackout", blackout)):
            if not 0 <= value <= 1:
                raise ConfigError(f"CameraDropout: {name} must be a probability in [0, 1], got {value}")
        self.p, self.blackout = p, blackout

    def __call__(self, item: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.blackout > 0 and torch.rand(()) < self.blackout:
            lost = slice(None)
        elif torch.rand(()) < self.p:
            lost = int(torch.randint(item["images"].shape[0], ()))
        else:
            return item
        images, valid = item["images"].clone(), item["valid"].clone()
        images[lost] = 0
        valid[lost] = 0
        return {**item, "images": images, "valid": valid}


def dataset_rig(dataset: Dataset) -> Rig:
    """The rig a dataset's drives were recorded with (the first log's; DriveDataset), else the shipped rig."""
    logs = getattr(dataset, "logs", None)
    if logs:
        from sensors.log import LogReader

        with LogReader(logs[0]) as reader:
            return reader.rig
    from sensors.rig import load_rig

    return load_rig()
