"""One frame through the deploy path: preprocessing (perception.preprocess) -> backend -> post-processing (class map,
stage-1 occupancy, sector distances). Torch-free and Qt-free: the embedded runtime, the viewer and the replay tests
all call Pipeline.process, so they see the same outputs."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from deploy.backends import Backend, create_backend
from deploy.zoo import ZooModel, get_model, unlisted
from perception.bev_config import ego_mask
from perception.near_field import NearFieldSettings
from perception.postprocess import (
    SectorLayout,
    Sectors,
    apply_echo_floor,
    check_free_confidence,
    class_map,
    echo_floor_zone,
    near_mask,
)
from perception.preprocess import FramePreprocessor
from perception.temporal import NearFieldMemory, check_decay
from perception.uss_raster import COVERAGE, DIRECT_ARC
from sensors.bev import BevGrid
from sensors.errors import DeployError
from sensors.messages import Frame
from sensors.rig import Rig

STAGES = ("preprocess", "inference", "postprocess")


@dataclass
class FrameResult:
    """The runtime's output for one frame. Arrays are the result's own (not reused by the next frame)."""

    index: int
    stamp_ns: int
    class_map: np.ndarray  # (R, W) uint8 classes, IGNORE on the ego footprint
    occupancy: np.ndarray  # (R, W) float32 stage-1 probability that a cell is occupied
    sectors: Sectors
    latency_ms: dict[str, float]  # per stage (STAGES), milliseconds
    present: np.ndarray  # (N,) bool: which cameras delivered an image
    degraded: list[str] = field(default_factory=list)  # the synchroniser's reasons ("camera FV missing", ...)
    conditions: list[str] = field(default_factory=list)  # labels of simulated drives, passed through
    class_logits: np.ndarray | None = None  # (C, R, W) float32, kept when the pipeline is asked to (parity)
    recalled: np.ndarray | None = None  # (R, W) bool: obstacle cells the near-field memory added (None: memory off)
    covered: np.ndarray | None = None  # (R, W) bool: the cells an ultrasonic beam reached this cycle (the raster's)


class Pipeline:
    """A deploy model bound to one rig calibration. Sampling tables and the ultrasonic rasteriser are built from
    the rig once (set_rig rebuilds them when the calibration changes); the backend is built once.

    free_confidence: the near-field bias of postprocess.class_map. Within NEAR_M of the body a cell is called free
    only where the network gives FREE at least this probability (a parking display that would rather warn falsely
    than miss); None, the default, takes the argmax everywhere.

    memory_decay: the near-field memory of perception.temporal with this decay per frame: obstacles seen earlier are
    carried with the frames' odometry into the cells no sensor sees now. Frames must then come in time order; a
    frame without odometry, a gap or a jump restarts the memory and says so in the result's `degraded`. None, the
    default: every frame stands alone.

    echo_floor: postprocess.apply_echo_floor before the memory: at the bumper, a cell on the arc of a direct
    ultrasonic echo of a few decimetres is an obstacle whatever the network says."""

    def __init__(self, model: ZooModel | str, rig: Rig, backend: str | Backend = "ort", threads: int | None = None,
                 device: str = "cpu", keep_logits: bool = False, source: str = "<frames>",
                 free_confidence: float | None = None, near_m: float = 1.0, memory_decay: float | None = None,
                 echo_floor: bool = False):
        self.echo_floor = bool(echo_floor)
        self.free_confidence = None if free_confidence is None else check_free_confidence(free_confidence)
        self.memory_decay = None if memory_decay is None else check_decay(memory_decay)
        self.near_m = float(near_m)
        self.model = get_model(model) if isinstance(model, str) else model
        self.bev = self.model.bev
        self.keep_logits = keep_logits
        if isinstance(backend, str):
            options = {}
            if backend == "tensorrt":
                from deploy.backends.tensorrt import precision_for

                options["precision"] = precision_for(self.model.method, self.model.target, self.model.name)
            self.backend = create_backend(backend, self.model.verified_onnx(), threads=threads, device=device,
                                          **options)
        else:
            self.backend = backend
        self.set_rig(rig, source)

    @classmethod
    def from_onnx(cls, onnx: str | Path, like: ZooModel | str, rig: Rig, **kw) -> Pipeline:
        """A pipeline over an ONNX file that is not (yet) in the zoo, with the BEV configuration of LIKE."""
        return cls(unlisted(onnx, get_model(like) if isinstance(like, str) else like), rig, **kw)

    def set_rig(self, rig: Rig, source: str = "<frames>") -> None:
        self.rig = rig
        self.prep = FramePreprocessor(rig, self.bev, source)
        self.grid: BevGrid = self.bev.grid(rig)
        self.ego = ego_mask(rig.vehicle, self.grid)
        self.near = near_mask(rig.vehicle, self.grid, self.near_m)
        self.sectors = SectorLayout(rig, self.grid)
        self.echo_zone = echo_floor_zone(rig, self.grid) if self.echo_floor else None
        self.decode_scale = self.prep.reduction
        self.memory = (NearFieldMemory(self.grid, self.near, self.ego, self.memory_decay)
                       if self.memory_decay is not None else None)

    @property
    def near_field(self) -> NearFieldSettings:
        """The near-field settings this pipeline post-processes with."""
        return NearFieldSettings(self.free_confidence, self.memory_decay, self.echo_floor)

    def reset_memory(self) -> None:
        """Forget the near-field memory (a new drive, a seek backwards); nothing without one."""
        if self.memory is not None:
            self.memory.reset()

    def process(self, frame: Frame) -> FrameResult:
        t0 = time.perf_counter()
        inputs, present = self.prep.network_inputs(frame)
        t1 = time.perf_counter()
        outputs = self.backend.run(inputs)
        t2 = time.perf_counter()
        try:
            logits, occ = outputs["class_logits"], outputs["occupancy_logits"]
        except KeyError:
            raise DeployError(f"model {self.model.name}: outputs {', '.join(outputs)}; expected class_logits and "
                              "occupancy_logits (the deploy contract)") from None
        classes = class_map(logits[0], self.ego, self.near, self.free_confidence)
        degraded, recalled = list(frame.degraded), None
        covered = inputs["uss"][0, COVERAGE] > 0.5
        if self.echo_zone is not None:
            classes = apply_echo_floor(classes, inputs["uss"][0, DIRECT_ARC], self.echo_zone)
        if self.memory is not None:
            classes, recall = self.memory.step(logits[0], classes, covered, frame.odometry, frame.stamp_ns)
            recalled = recall.cells
            if recall.reset:
                degraded.append(f"near-field memory restarted: {recall.reset}")
        occupancy = (1.0 / (1.0 + np.exp(-occ[0, 0].astype(np.float32)))).astype(np.float32)
        sectors = self.sectors(classes)
        t3 = time.perf_counter()
        latency = {"preprocess": (t1 - t0) * 1e3, "inference": (t2 - t1) * 1e3, "postprocess": (t3 - t2) * 1e3}
        return FrameResult(frame.index, frame.stamp_ns, classes, occupancy, sectors, latency, present,
                           degraded, list(frame.conditions),
                           np.array(logits[0], np.float32) if self.keep_logits else None, recalled, covered)

    def close(self) -> None:
        self.backend.close()


__all__ = ["STAGES", "FrameResult", "Pipeline"]
