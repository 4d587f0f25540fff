"""The vehicle rig: cameras, ultrasonic sensors, body footprint and sync tolerances, one TOML file a vehicle."""

from __future__ import annotations

import math
import numbers
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sensors.calibration import FisheyeCamera, camera_from_dict, is_number, load_camera
from sensors.errors import CalibrationError, RigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 (JetPack 6)
    import tomli as tomllib

CAMERA_NAMES: tuple[str, ...] = ("FV", "RV", "MVL", "MVR")
DEFAULT_RIG_PATH = Path(__file__).parent / "rigs" / "default.toml"
# Ultrasonic sensor ids travel in the 4-bit Sender and Receiver signals of sensors/can/uss.dbc, so a rig's ids are
# whole numbers 0..15, each used once (the shipped ECU uses 0..11: its cycle start carries 12 sensors' status).
USS_ID_MAX = 15


@dataclass(frozen=True)
class VehicleBody:
    """The ego car as a box on the ground; x from -rear_overhang to wheelbase + front_overhang."""

    wheelbase: float
    front_overhang: float
    rear_overhang: float
    width: float
    height: float

    @property
    def length(self) -> float:
        return self.wheelbase + self.front_overhang + self.rear_overhang

    @property
    def x_min(self) -> float:
        return -self.rear_overhang

    @property
    def x_max(self) -> float:
        return self.wheelbase + self.front_overhang

    @property
    def centre(self) -> tuple[float, float]:
        """Middle of the body footprint in the vehicle frame (the BEV grid is centred here)."""
        return (self.x_min + self.x_max) / 2, 0.0

    def footprint(self) -> np.ndarray:
        """(4, 2) corners front-left, front-right, rear-right, rear-left."""
        h = self.width / 2
        return np.array([[self.x_max, h], [self.x_max, -h], [self.x_min, -h], [self.x_min, h]])

    def distance_to_body(self, xy: np.ndarray) -> np.ndarray:
        """Euclidean distance from (N, 2) points to the footprint rectangle (0 inside)."""
        xy = np.asarray(xy, dtype=float)
        dx = np.maximum(np.maximum(self.x_min - xy[..., 0], xy[..., 0] - self.x_max), 0.0)
        dy = np.maximum(np.abs(xy[..., 1]) - self.width / 2, 0.0)
        return np.hypot(dx, dy)


@dataclass(frozen=True)
class UssSensor:
    """One ultrasonic transducer. Angles in radians, openings are full angles."""

    name: str
    id: int
    position: tuple[float, float, float]
    yaw: float
    pitch: float
    horizontal_opening: float
    vertical_opening: float
    range_min: float
    range_max: float

    @property
    def bumper(self) -> str:
        return "front" if self.position[0] > 0 else "rear"

    @property
    def axis(self) -> np.ndarray:
        """Unit vector of the beam axis in the vehicle frame."""
        cp = math.cos(self.pitch)
        return np.array([cp * math.cos(self.yaw), cp * math.sin(self.yaw), math.sin(self.pitch)])


@dataclass(frozen=True)
class SyncConfig:
    camera_tolerance_ns: int
    uss_max_age_ns: int


@dataclass(frozen=True)
class Rig:
    name: str
    description: str
    vehicle: VehicleBody
    cameras: dict[str, FisheyeCamera]
    uss: tuple[UssSensor, ...]
    sync: SyncConfig
    source: str = field(default="<rig>", compare=False)

    def camera(self, name: str) -> FisheyeCamera:
        if name not in self.cameras:
            raise RigError(f"{self.source}: no camera named {name!r}; the rig has {', '.join(self.cameras)}")
        return self.cameras[name]

    def uss_by_id(self, sensor_id: int) -> UssSensor:
        for s in self.uss:
            if s.id == sensor_id:
                return s
        raise RigError(f"{self.source}: no ultrasonic sensor with id {sensor_id}")

    def uss_neighbours(self, sensor_id: int) -> tuple[int, ...]:
        """Sensors adjacent to `sensor_id` in the same bumper: the receivers of its cross echoes."""
        me = self.uss_by_id(sensor_id)
        row = [s.id for s in self.uss if s.bumper == me.bumper]
        i = row.index(sensor_id)
        return tuple(row[j] for j in (i - 1, i + 1) if 0 <= j < len(row))

    def with_cameras(self, cameras: dict[str, FisheyeCamera]) -> Rig:
        return Rig(self.name, self.description, self.vehicle, cameras, self.uss, self.sync, self.source)

    def scaled(self, factor: float) -> Rig:
        """The rig with every camera image resampled by `factor`."""
        return self.with_cameras({n: c.scaled(factor) for n, c in self.cameras.items()})

    def to_dict(self) -> dict[str, Any]:
        """A self-contained mapping (calibrations inline) that `rig_from_dict` reads back."""
        v = self.vehicle
        return {
            "name": self.name,
            "description": self.description,
            "vehicle": {"wheelbase": v.wheelbase, "front_overhang": v.front_overhang,
                        "rear_overhang": v.rear_overhang, "width": v.width, "height": v.height},
            "sync": {"camera_tolerance_ms": self.sync.camera_tolerance_ns / 1e6,
                     "uss_max_age_ms": self.sync.uss_max_age_ns / 1e6},
            "cameras": {n: c.to_dict() for n, c in self.cameras.items()},
            "uss": [
                {"name": s.name, "id": s.id, "position": list(s.position), "yaw_deg": _deg(s.yaw),
                 "pitch_deg": _deg(s.pitch), "horizontal_opening_deg": _deg(s.horizontal_opening),
                 "vertical_opening_deg": _deg(s.vertical_opening),
                 "range_min": s.range_min, "range_max": s.range_max}
                for s in self.uss
            ],
        }

    def to_toml(self) -> str:
        import tomli_w

        return tomli_w.dumps(self.to_dict())


def _deg(rad: float) -> float:
    # Rounded so that degrees written by to_dict read back to the identical radians.
    return round(math.degrees(rad), 9)


def _num(block: dict, key: str, source: str, section: str, positive: bool = True) -> float:
    if not isinstance(block, dict) or key not in block:
        raise RigError(f"{source}: field '{section}.{key}' is missing")
    if not is_number(block[key]):
        raise RigError(f"{source}: field '{section}.{key}' is not a number: {block[key]!r}")
    x = float(block[key])
    if not math.isfinite(x) or (positive and x <= 0):
        raise RigError(f"{source}: field '{section}.{key}' must be a finite{' positive' if positive else ''} "
                       f"number, got {block[key]!r}")
    return x


def rig_from_dict(data: dict[str, Any], source: str = "<rig>", base_dir: Path | None = None) -> Rig:
    """Validate and build a rig. Camera entries hold either `calibration = "file.json"` (relative to the rig
    file) or the WoodScape-layout calibration inline."""
    veh = data.get("vehicle")
    if not isinstance(veh, dict):
        raise RigError(f"{source}: section [vehicle] is missing")
    vehicle = VehicleBody(*(_num(veh, k, source, "vehicle") for k in
                            ("wheelbase", "front_overhang", "rear_overhang", "width", "height")))
    sync_d = data.get("sync", {})
    sync = SyncConfig(int(_num(sync_d, "camera_tolerance_ms", source, "sync") * 1e6),
                      int(_num(sync_d, "uss_max_age_ms", source, "sync") * 1e6))

    cams_d = data.get("cameras")
    if not isinstance(cams_d, dict):
        raise RigError(f"{source}: section [cameras] is missing")
    missing = [n for n in CAMERA_NAMES if n not in cams_d]
    unknown = [n for n in cams_d if n not in CAMERA_NAMES]
    if missing or unknown:
        raise RigError(f"{source}: cameras must be exactly {', '.join(CAMERA_NAMES)}"
                       + (f"; missing {', '.join(missing)}" if missing else "")
                       + (f"; unknown {', '.join(unknown)}" if unknown else ""))
    cameras: dict[str, FisheyeCamera] = {}
    for name in CAMERA_NAMES:
        entry = cams_d[name]
        try:
            if isinstance(entry, dict) and "calibration" in entry:
                if not isinstance(entry["calibration"], str):
                    raise RigError(f"{source}: field 'cameras.{name}.calibration' must be the path of a calibration "
                                   f"JSON file (a string), got {entry['calibration']!r}")
                path = Path(entry["calibration"])
                if not path.is_absolute():
                    path = (base_dir or Path.cwd()) / path
                cam = load_camera(path)
                cam.name = name
            else:
                cam = camera_from_dict(entry, f"{source} [cameras.{name}]", name=name)
        except CalibrationError as e:
            raise RigError(f"{source}: camera {name}: {e}") from None
        cameras[name] = cam

    defaults = data.get("uss_defaults", {})
    if not isinstance(defaults, dict):
        raise RigError(f"{source}: [uss_defaults] must be a table of sensor fields")
    entries = data.get("uss")
    if not isinstance(entries, list) or not entries:
        raise RigError(f"{source}: no [[uss]] sensors defined")
    sensors = []
    for i, raw in enumerate(entries):
        where = f"uss[{i}]"
        if not isinstance(raw, dict):
            raise RigError(f"{source}: {where} must be a [[uss]] table, got {raw!r}")
        e = {**defaults, **raw}
        pos = e.get("position")
        if not isinstance(pos, list) or not all(is_number(v) for v in pos):
            raise RigError(f"{source}: field '{where}.position' must be [x, y, z] in metres")
        pos = tuple(float(v) for v in pos)
        if len(pos) != 3 or not all(math.isfinite(v) for v in pos):
            raise RigError(f"{source}: field '{where}.position' must be 3 finite numbers")
        if "name" not in e or "id" not in e:
            raise RigError(f"{source}: {where} needs a name and an id")
        sid = e["id"]
        if not isinstance(sid, numbers.Integral) or isinstance(sid, bool) or not 0 <= sid <= USS_ID_MAX:
            raise RigError(f"{source}: field '{where}.id' must be a whole number 0..{USS_ID_MAX} (the 4-bit sensor id "
                           f"of sensors/can/uss.dbc), got {sid!r}")
        rmin = _num(e, "range_min", source, where)
        rmax = _num(e, "range_max", source, where)
        if rmin >= rmax:
            raise RigError(f"{source}: {where} ({e['name']}): range_min {rmin} must be below range_max {rmax}")
        hopen = _num(e, "horizontal_opening_deg", source, where)
        vopen = _num(e, "vertical_opening_deg", source, where)
        if hopen >= 360 or vopen >= 180:
            raise RigError(f"{source}: {where} ({e['name']}): beam openings must be below 360°/180°")
        sensors.append(UssSensor(
            str(e["name"]), int(sid), pos, math.radians(_num(e, "yaw_deg", source, where, positive=False)),
            math.radians(_num(e, "pitch_deg", source, where, positive=False)), math.radians(hopen),
            math.radians(vopen), rmin, rmax))
    ids = [s.id for s in sensors]
    names = [s.name for s in sensors]
    if len(set(ids)) != len(ids) or len(set(names)) != len(names):
        raise RigError(f"{source}: ultrasonic sensor ids and names must be unique (ids {ids})")
    return Rig(str(data.get("name", Path(source).stem)), str(data.get("description", "")), vehicle, cameras,
               tuple(sensors), sync, source)


def rig_from_toml(text: str, source: str = "<rig>", base_dir: Path | None = None) -> Rig:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise RigError(f"{source}: not valid TOML: {e}") from None
    return rig_from_dict(data, source, base_dir)


def load_rig(path: str | Path | None = None) -> Rig:
    """Read a rig file; without a path, the default rig shipped with nearfield."""
    path = Path(path) if path is not None else DEFAULT_RIG_PATH
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise RigError(f"{path}: cannot read rig file ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise RigError(f"{path}: not a rig file (not UTF-8 text: byte {e.start}); give a TOML rig such as "
                       "sensors/rigs/default.toml") from None
    return rig_from_toml(text, str(path), path.parent)
