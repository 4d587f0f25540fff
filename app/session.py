"""The viewer's work off the UI thread, Qt-free: a drive log opened for random access, the selected zoo model run
on a frame through the deploy runtime (deploy.pipeline.Pipeline), and everything one frame's panels need."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from app.frames import FrameSource, display_scale
from app.render import LEVELS_M, Layers, bev_picture, camera_failures, camera_tile, legend, uss_strip
from deploy.pipeline import FrameResult, Pipeline
from deploy.zoo import ZooModel
from perception.evaluate import Evaluator
from perception.near_field import NearFieldSettings
from perception.postprocess import SectorLayout, Sectors
from sensors.bev import BevGrid
from sensors.errors import ConfigError, NearfieldError
from sensors.messages import Frame
from sensors.rig import CAMERA_NAMES

log = logging.getLogger(__name__)


@dataclass
class FrameView:
    """One frame as the panels show it: the decoded frame, the model's result (None without a model), ground
    truth on its own grid, per-frame mIoU against it, and the sectors shown (the prediction's, else the truth's)."""

    index: int
    time_s: float
    frame: Frame
    model: str | None
    result: FrameResult | None
    pred_grid: BevGrid | None
    truth: np.ndarray | None
    truth_grid: BevGrid | None
    sectors: Sectors | None
    sectors_of: str  # "prediction", "truth" or ""
    miou: float | None
    notes: list[str] = field(default_factory=list)  # why something is not shown (e.g. no IoU for this grid)
    near_field: NearFieldSettings = field(default_factory=NearFieldSettings)  # what the model's map was made with
    operating_point: str = ""  # with the viewer's --operating-point: whose point it is, or that the model has none
    levels_m: tuple[float, ...] = ()  # the warning thresholds the sectors were levelled with (SectorLayout.levels_m)

    @property
    def camera_failures(self) -> dict[str, str]:
        return camera_failures(self.frame.images, self.frame.degraded, self.frame.conditions)


def truth_grid(frame: Frame, source: FrameSource) -> BevGrid | None:
    """The grid of a frame's ground truth: square, centred on the car body, at the truth's own cell."""
    if frame.truth is None:
        return None
    occ = frame.truth.occupancy
    return BevGrid(occ.shape[0], occ.shape[1], frame.truth.cell, *source.rig.vehicle.centre)


# Frames the viewer replays at most to rebuild the near-field memory after a jump (10 s at 10 Hz); the default decay
# needs 13.
MEMORY_CATCH_UP = 100


class DriveSession:
    """A log and a model. Every method runs on one thread (the viewer's worker): LogReader and the inference
    backend are not thread-safe."""

    def __init__(self, threads: int | None = None, free_confidence: float | None = None,
                 memory_decay: float | None = None, echo_floor: bool = False, operating_point: bool = False):
        # What every model's pipeline post-processes with (bias, memory, echo floor), unless OPERATING_POINT: then
        # each model with its own registered point (zoo.ZooModel.operating_settings).
        self.near_field = NearFieldSettings(free_confidence, memory_decay, echo_floor)
        if operating_point and not self.near_field.plain:
            raise ConfigError("the operating point brings its own bias, memory and echo floor; give it without a free "
                              "confidence, a memory decay or the echo floor")
        self.threads = threads
        self.operating_point = operating_point
        self.source: FrameSource | None = None
        self.model: ZooModel | None = None
        self.pipeline: Pipeline | None = None
        self._evaluator: Evaluator | None = None
        self._truth_sectors: dict[tuple, SectorLayout] = {}
        self._last: int | None = None  # the frame the pipeline processed last (the near-field memory's place)

    def open(self, path: str | Path) -> FrameSource:
        source = FrameSource(path)  # raises before the current log is given up
        self.close_source()
        self.source = source
        self._truth_sectors.clear()
        if self.pipeline is not None:
            self.pipeline.set_rig(source.rig, str(source.path))
            self._evaluator = None
        self._last = None
        return source

    def set_model(self, model: ZooModel | None) -> None:
        """Select a zoo model (None: none). The ONNX file is checked against its sha256 and loaded now; on any
        error the previous model stays selected."""
        if model is None:
            self._close_pipeline()
            self.model = None
            return
        if self.source is None:
            raise ConfigError(f"model {model.name}: open a log first (the model is bound to the log's calibration)")
        near = self.near_field_settings(model)
        pipeline = Pipeline(model, self.source.rig, threads=self.threads, source=str(self.source.path),
                            free_confidence=near.free_confidence, memory_decay=near.memory_decay,
                            echo_floor=near.echo_floor)
        self._close_pipeline()
        self.pipeline, self.model, self._evaluator = pipeline, model, None
        self._last = None

    def near_field_settings(self, model: ZooModel) -> NearFieldSettings:
        """What MODEL runs with: its registered operating point in operating-point mode (the plain argmax for a
        model without one: operating_point_note says so), else the session's settings."""
        if not self.operating_point:
            return self.near_field
        return model.operating_settings() if model.operating_point else NearFieldSettings()

    def operating_point_note(self) -> str:
        """For the info line in operating-point mode: whose point the map is made with, or that there is none."""
        if not self.operating_point or self.model is None:
            return ""
        if self.model.operating_point:
            return f"operating point of {self.model.name}"
        return f"{self.model.name} has no registered operating point: the argmax"

    @property
    def scale(self) -> int:
        """Decode reduction of camera images: enough for a panel and for the model (its preprocessing only shrinks)."""
        panel = display_scale(self.source.rig) if self.source is not None else 1
        return min(panel, self.pipeline.decode_scale) if self.pipeline is not None else panel

    def view(self, k: int) -> FrameView:
        source = self.require_source()
        frame = source.frame(k, self.scale)
        notes: list[str] = []
        tgrid = truth_grid(frame, source)
        truth = frame.truth.occupancy if frame.truth is not None else None
        result = pred_grid = None
        miou = None
        if self.pipeline is not None:
            self._catch_up_memory(k, notes)
            result = self.pipeline.process(frame)
            self._last = k
            pred_grid = self.pipeline.grid
            if frame.truth is not None:
                miou = self._miou(frame, result, notes)
        levels_m: tuple[float, ...] = ()
        if result is not None:
            sectors, sectors_of, levels_m = result.sectors, "prediction", self.pipeline.sectors.levels_m
        elif truth is not None:
            key = (tgrid.rows, tgrid.cols, tgrid.cell)
            if key not in self._truth_sectors:
                self._truth_sectors[key] = SectorLayout(source.rig, tgrid)
            layout = self._truth_sectors[key]
            sectors, sectors_of, levels_m = layout(truth), "truth", layout.levels_m
        else:
            sectors, sectors_of = None, ""
        return FrameView(k, source.time_s(k), frame, self.model.name if self.model else None, result, pred_grid,
                         truth, tgrid, sectors, sectors_of, miou, notes,
                         self.pipeline.near_field if self.pipeline is not None else NearFieldSettings(),
                         self.operating_point_note(), levels_m)

    def _catch_up_memory(self, k: int, notes: list[str]) -> None:
        """Bring the near-field memory to where playing the drive up to frame k leaves it, so that a frame shows the
        same whether it was played, stepped to, jumped to or redrawn: after frame k - 1 (playing, stepping) or k
        itself (a redraw: the memory steps the same stamp idempotently) nothing to do; else a fresh memory stepped
        through the frames before k within its reach (NearFieldMemory.reach; at most MEMORY_CATCH_UP)."""
        memory = self.pipeline.memory if self.pipeline is not None else None
        if memory is None or self._last in (k - 1, k):
            return
        self.pipeline.reset_memory()
        reach = memory.reach
        frames = min(k, MEMORY_CATCH_UP if reach is None else min(reach, MEMORY_CATCH_UP))
        if frames < k and (reach is None or reach > frames):  # older frames could still matter: say so
            notes.append(f"near-field memory caught up over the {frames} frames before this one only")
        source = self.require_source()
        for j in range(k - frames, k):
            self.pipeline.process(source.frame(j, self.scale))

    def _miou(self, frame: Frame, result: FrameResult, notes: list[str]) -> float | None:
        """Mean IoU of the obstacle classes present in this frame's prediction or truth (perception.evaluate)."""
        assert self.pipeline is not None and frame.truth is not None
        try:
            target = self.pipeline.prep.target(frame.truth)
        except NearfieldError as e:  # e.g. a model grid that does not cover the truth's extent
            notes.append(f"no IoU: {e}")
            return None
        if self._evaluator is None:
            self._evaluator = Evaluator(self.pipeline.rig, self.pipeline.grid)
        self._evaluator.reset()
        self._evaluator.update(result.class_map, target, where=f"{self.require_source().path} frame {frame.index}")
        return self._evaluator.result()["miou"]

    def require_source(self) -> FrameSource:
        if self.source is None:
            raise ConfigError("no log is open: open a drive log (or the demo drive) first")
        return self.source

    def _close_pipeline(self) -> None:
        if self.pipeline is not None:
            self.pipeline.close()
        self.pipeline, self._evaluator = None, None

    def close_source(self) -> None:
        if self.source is not None:
            self.source.close()
            self.source = None

    def close(self) -> None:
        self._close_pipeline()
        self.close_source()


# --- one picture per frame (MP4 export) -----------------------------------------------------------------------------

def compose(view: FrameView, rig, layers: Layers, height: int = 720) -> np.ndarray:
    """The whole view of a frame as one RGB picture: cameras 2 x 2 beside the BEV, the ultrasonic strip and the
    class legend below, a title line on top. Width and height are even (video encoders need that)."""
    bev_size = height - 120
    tile_h = bev_size // 2
    tile_w = round(tile_h * 4 / 3)
    failures = view.camera_failures
    tiles = []
    for cam in CAMERA_NAMES:
        im = view.frame.images.get(cam)
        tiles.append(camera_tile(im.rgb if im is not None else None, cam, failures.get(cam), (tile_w, tile_h)))
    cams = np.concatenate([np.concatenate(tiles[:2], 1), np.concatenate(tiles[2:], 1)], 0)
    bev = bev_picture(rig, bev_size, view_extent(view), layers, bev_layer(view.truth, view.truth_grid),
                      bev_layer(view.result.class_map if view.result else None, view.pred_grid), view.frame.uss,
                      view.sectors, bev_layer(view.result.recalled if view.result else None, view.pred_grid),
                      view.levels_m or LEVELS_M)
    top = np.concatenate([cams, bev], 1)
    width = top.shape[1] + top.shape[1] % 2
    top = np.pad(top, ((0, 0), (0, width - top.shape[1]), (0, 0)))
    title = np.zeros((36, width, 3), np.uint8)
    text = f"frame {view.index}  t={view.time_s:.2f} s  model {view.model or '-'}"
    if view.miou is not None:
        text += f"  mIoU {100 * view.miou:.0f}%"
    text += f"  [{', '.join(view.frame.conditions) or 'no labels'}]"
    cv2.putText(title, text, (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (235, 235, 235), 1, cv2.LINE_AA)
    rest = height - title.shape[0] - top.shape[0] - 26
    levels_m = view.levels_m or LEVELS_M
    pic = np.concatenate([title, top, uss_strip(view.frame.uss, rig, width, max(rest, 40), levels_m),
                          legend(width, levels_m=view.levels_m)], 0)
    return pic[: pic.shape[0] - pic.shape[0] % 2]


def view_extent(view: FrameView) -> float:
    """Metres the BEV picture covers: the larger of the truth's and the prediction's grids (16 m by default)."""
    extents = [g.rows * g.cell for g in (view.truth_grid, view.pred_grid) if g is not None]
    return max(extents) if extents else 16.0


def bev_layer(cells, grid):
    """(cells, grid) for bev_picture, or None when either is missing (no model, no ground truth, memory off)."""
    return None if cells is None or grid is None else (cells, grid)


def write_video(session: DriveSession, path: str | Path, first: int, last: int, layers: Layers,
                fps: float | None = None, progress=None) -> Path:
    """Frames first..last (inclusive) of the session's log as an MP4 (mp4v) at the drive's own rate."""
    source = session.require_source()
    path = Path(path)
    if path.suffix.lower() != ".mp4":
        raise ConfigError(f"{path}: the video is written as MP4; give a .mp4 path")
    if not 0 <= first <= last < len(source):
        raise ConfigError(f"{path}: frame range {first}..{last} is outside the drive (0..{len(source) - 1})")
    fps = fps or 1e9 / source.period_ns
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = None
    try:
        for k in range(first, last + 1):
            pic = compose(session.view(k), source.rig, layers)
            if writer is None:
                writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (pic.shape[1], pic.shape[0]))
                if not writer.isOpened():
                    raise ConfigError(f"{path}: OpenCV cannot open an mp4v video writer there")
            writer.write(cv2.cvtColor(pic, cv2.COLOR_RGB2BGR))
            if progress:
                progress(k - first + 1, last - first + 1)
    finally:
        if writer is not None:
            writer.release()
    return path
