"""Message types that flow from sensors to perception: camera images, ultrasonic cycles, odometry, ground truth,
frames.

Images in memory are RGB uint8 (H, W, 3). Times are integer nanoseconds on the log's one clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np

from sensors.geometry import Pose2D

# The vocabulary of /meta/condition labels. Fault labels carry the sensor: "soiling:FV",
# "camera_failure:RV", "uss_failure:FSL"; the part before the colon is the condition.
LIGHTING = ("day", "dusk", "night", "glare")
CONDITIONS = ("day", "dusk", "night", "glare", "rain", "soiling", "camera_failure", "uss_failure")


def condition_of(label: str) -> str:
    """'camera_failure:RV' -> 'camera_failure'."""
    return label.split(":", 1)[0]


@dataclass
class CameraImage:
    """One camera image; `jpeg` as recorded, `rgb` decoded on demand (see sensors.imaging.decode_jpeg)."""

    camera: str
    stamp_ns: int
    jpeg: bytes | None = None
    rgb: np.ndarray | None = None


class UssStatus(IntEnum):
    """What the ultrasonic ECU reports for a sensor in a cycle."""

    OK = 0
    NO_RESPONSE = 1  # the transducer did not ring: broken or disconnected
    BLOCKED = 2  # the ECU detected a covered membrane (mud, ice)


@dataclass
class UssCycle:
    """One measurement cycle: every echo of every firing, as parallel arrays of length E.

    distance is half the acoustic path sender → object → receiver, in metres: the radius of the circle for
    a direct echo (sender == receiver), the semi-major axis of the ellipse for a cross echo.
    """

    stamp_ns: int
    cycle: int
    sender: np.ndarray  # (E,) int
    receiver: np.ndarray  # (E,) int
    distance: np.ndarray  # (E,) float, metres
    amplitude: np.ndarray  # (E,) float, 0..1 (normalised echo strength)
    status: dict[int, UssStatus] = field(default_factory=dict)  # per sensor id; absent = not reported

    def __post_init__(self):
        self.sender = np.asarray(self.sender, dtype=np.int32).reshape(-1)
        self.receiver = np.asarray(self.receiver, dtype=np.int32).reshape(-1)
        self.distance = np.asarray(self.distance, dtype=np.float32).reshape(-1)
        self.amplitude = np.asarray(self.amplitude, dtype=np.float32).reshape(-1)
        n = self.sender.size
        if not (self.receiver.size == self.distance.size == self.amplitude.size == n):
            raise ValueError("UssCycle arrays must have the same length")

    @property
    def num_echoes(self) -> int:
        return int(self.sender.size)

    @property
    def direct(self) -> np.ndarray:
        return self.sender == self.receiver


@dataclass(frozen=True)
class Odometry:
    """The vehicle's dead-reckoned pose at `stamp_ns`: the vehicle frame's origin (ISO 8855, the middle of the rear
    axle) in the local "odom" frame, as wheel speeds and yaw rate integrate it. It drifts: only the motion between
    nearby stamps is meaningful, never the absolute pose."""

    stamp_ns: int
    pose: Pose2D


@dataclass(frozen=True)
class ObjectBox:
    """A ground-truth object: an oriented box in the vehicle frame."""

    id: int
    cls: int  # sensors.classes.SemanticClass
    kind: str  # car, pedestrian, pillar, wall, pole, curb, bollard, cone, box
    centre: tuple[float, float, float]
    size: tuple[float, float, float]  # length (along yaw), width, height
    yaw: float


@dataclass
class GroundTruth:
    """Per-frame truth from the simulator: BEV class map (sensors.bev.BevGrid layout) and object boxes."""

    stamp_ns: int
    occupancy: np.ndarray  # (rows, cols) uint8 classes, IGNORE on the ego footprint
    cell: float
    objects: list[ObjectBox] = field(default_factory=list)


@dataclass
class Frame:
    """The four camera images of one instant with the ultrasonic cycle that belongs to it, and the odometry pose
    at the frame's stamp (sensors.sync interpolates it; None when the stream carries no odometry).

    A missing or late sensor leaves its slot None and adds a reason to `degraded` ("camera FV missing",
    "uss FSL no response", "odometry missing"); the stream goes on.
    """

    index: int
    stamp_ns: int
    images: dict[str, CameraImage | None]
    uss: UssCycle | None
    degraded: list[str] = field(default_factory=list)
    conditions: list[str] = field(default_factory=list)
    truth: GroundTruth | None = None
    odometry: Pose2D | None = None

    @property
    def is_degraded(self) -> bool:
        return bool(self.degraded)
