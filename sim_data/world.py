"""The simulated world: geometric primitives, materials, objects, ground, lights, ego motion and conditions.

Everything here is in a fixed world frame (x, y on the ground, z up, metres) unless a name says otherwise.
The renderer, the ultrasonic model and the ground-truth rasteriser all read these types and nothing else.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from sensors.geometry import Pose2D
from sensors.messages import LIGHTING

# --- primitives (world frame) ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Box:
    """Oriented box standing on z0: centre (x, y), yaw, length along yaw, width across, from z0 up to z1."""

    x: float
    y: float
    yaw: float
    length: float
    width: float
    z0: float
    z1: float

    def footprint(self) -> np.ndarray:
        c, s = math.cos(self.yaw), math.sin(self.yaw)
        hl, hw = self.length / 2, self.width / 2
        local = np.array([[hl, hw], [hl, -hw], [-hl, -hw], [-hl, hw]])
        return local @ np.array([[c, s], [-s, c]]) + [self.x, self.y]


@dataclass(frozen=True)
class Cylinder:
    """Vertical cylinder, or a frustum/cone when radius_top differs from radius (cone: radius_top = 0)."""

    x: float
    y: float
    radius: float
    z0: float
    z1: float
    radius_top: float | None = None

    @property
    def r_top(self) -> float:
        return self.radius if self.radius_top is None else self.radius_top

    def footprint(self, n: int = 16) -> np.ndarray:
        a = np.linspace(0, 2 * np.pi, n, endpoint=False)
        r = max(self.radius, self.r_top)
        return np.stack([self.x + r * np.cos(a), self.y + r * np.sin(a)], 1)


@dataclass(frozen=True)
class Sphere:
    x: float
    y: float
    z: float
    radius: float

    def footprint(self, n: int = 12) -> np.ndarray:
        a = np.linspace(0, 2 * np.pi, n, endpoint=False)
        return np.stack([self.x + self.radius * np.cos(a), self.y + self.radius * np.sin(a)], 1)


Primitive = Box | Cylinder | Sphere


@dataclass(frozen=True)
class Material:
    """How a surface looks and echoes.

    texture: 'plain', 'car_paint', 'glass', 'concrete', 'brick', 'fabric', 'skin', 'hair', 'rubber',
    'hazard' (orange/white bands), 'cardboard', 'metal'. uss_reflectivity: 0..1, fraction of ultrasound
    returned at normal incidence (hard flat surfaces ~0.9, clothing ~0.3).
    """

    rgb: tuple[float, float, float]
    texture: str = "plain"
    specular: float = 0.0
    uss_reflectivity: float = 0.8


@dataclass(frozen=True)
class Part:
    shape: Primitive
    material: Material


# --- objects ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Motion:
    """Piecewise-linear walk through waypoints (world x, y) at constant speed, ping-ponging at the ends."""

    waypoints: tuple[tuple[float, float], ...]
    speed: float

    def offset(self, t: float) -> tuple[float, float, float]:
        """(dx, dy, heading) relative to the first waypoint at time t seconds."""
        pts = np.asarray(self.waypoints, dtype=float)
        seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
        total = float(seg.sum())
        if total <= 0 or self.speed <= 0:
            return 0.0, 0.0, 0.0
        s = (self.speed * t) % (2 * total)
        forward = s <= total
        if not forward:
            s = 2 * total - s
        i = int(np.searchsorted(np.cumsum(seg), s, side="left"))
        i = min(i, len(seg) - 1)
        s0 = float(np.cumsum(seg)[i] - seg[i])
        f = (s - s0) / seg[i] if seg[i] > 0 else 0.0
        p = pts[i] + f * (pts[i + 1] - pts[i])
        d = pts[i + 1] - pts[i]
        heading = math.atan2(d[1], d[0]) + (0.0 if forward else math.pi)
        return float(p[0] - pts[0, 0]), float(p[1] - pts[0, 1]), heading


@dataclass(frozen=True)
class SceneObject:
    """A labelled object made of parts. `box` is its ground-truth box (centre x, y, yaw, length, width,
    height); parts and box are given at time 0 and moved rigidly by `motion`."""

    id: int
    cls: int  # sensors.classes.SemanticClass
    kind: str
    parts: tuple[Part, ...]
    box: Box
    motion: Motion | None = None

    def at(self, t: float) -> SceneObject:
        """This object at time t (a static object is returned as is)."""
        if self.motion is None:
            return self
        dx, dy, heading = self.motion.offset(t)
        # Rotate about the box centre so the object faces its walking direction.
        rot = heading - self.box.yaw
        c, s = math.cos(rot), math.sin(rot)
        cx, cy = self.box.x, self.box.y

        def move(x: float, y: float) -> tuple[float, float]:
            lx, ly = x - cx, y - cy
            return cx + c * lx - s * ly + dx, cy + s * lx + c * ly + dy

        parts = []
        for p in self.parts:
            sh = p.shape
            nx, ny = move(sh.x, sh.y)
            sh = replace(sh, x=nx, y=ny, yaw=sh.yaw + rot) if isinstance(sh, Box) else replace(sh, x=nx, y=ny)
            parts.append(Part(sh, p.material))
        box = replace(self.box, x=cx + dx, y=cy + dy, yaw=heading)
        return replace(self, parts=tuple(parts), box=box, motion=None)

    def footprints(self) -> list[np.ndarray]:
        """World (N, 2) polygons of every part standing on or near the ground (what occupies BEV cells)."""
        return [p.shape.footprint() for p in self.parts]


# --- the ground and lights --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Marking:
    """A painted stripe on the ground from (x0, y0) to (x1, y1)."""

    x0: float
    y0: float
    x1: float
    y1: float
    width: float = 0.12
    rgb: tuple[float, float, float] = (0.92, 0.92, 0.88)


@dataclass(frozen=True)
class GroundPatch:
    """A polygonal area of the ground with its own surface (sidewalk, grass, driveway paving)."""

    polygon: tuple[tuple[float, float], ...]
    rgb: tuple[float, float, float]
    texture: str = "concrete"  # 'asphalt', 'concrete', 'paving', 'grass'


@dataclass(frozen=True)
class Ground:
    rgb: tuple[float, float, float] = (0.33, 0.33, 0.34)
    texture: str = "asphalt"
    markings: tuple[Marking, ...] = ()
    patches: tuple[GroundPatch, ...] = ()


@dataclass(frozen=True)
class Light:
    """A point light in the world (street lamp, garage ceiling lamp); intensity in units where 1.0 lights
    the ground below a 5 m lamp about as brightly as an overcast day."""

    x: float
    y: float
    z: float
    rgb: tuple[float, float, float] = (1.0, 0.85, 0.6)
    intensity: float = 1.0


# --- ego motion -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EgoPath:
    """Ego poses (vehicle frame origin in the world) sampled at `times` seconds; linear in between."""

    times: tuple[float, ...]
    poses: tuple[Pose2D, ...]

    def pose(self, t: float) -> Pose2D:
        ts = np.asarray(self.times)
        if t <= ts[0] or len(ts) == 1:
            return self.poses[0]
        if t >= ts[-1]:
            return self.poses[-1]
        i = int(np.searchsorted(ts, t)) - 1
        f = (t - ts[i]) / (ts[i + 1] - ts[i])
        a, b = self.poses[i], self.poses[i + 1]
        dyaw = math.atan2(math.sin(b.yaw - a.yaw), math.cos(b.yaw - a.yaw))
        return Pose2D(a.x + f * (b.x - a.x), a.y + f * (b.y - a.y), a.yaw + f * dyaw)

    def speed(self, t: float, dt: float = 0.05) -> float:
        a, b = self.pose(t - dt), self.pose(t + dt)
        return math.hypot(b.x - a.x, b.y - a.y) / (2 * dt)


# --- conditions -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Condition:
    """What the sensors face in a frame. Labels (see sensors.messages.CONDITIONS) derive from it.

    lighting: 'day', 'dusk', 'night' or 'glare' (low sun in view). sun_azimuth is the world-frame direction
    towards the sun (radians), sun_elevation above the horizon. soiling maps a camera to a coverage
    fraction (0..1); failed_cameras maps a camera to 'black' or 'frozen'; failed_uss maps a sensor name to
    'dead' (no response) or 'blocked' (covered membrane). street_lamps: whether the scene's lamps are lit after
    dark (an unlit night is a dark lot, a street with its lamps out, a driveway with the porch light off: only the
    ego's own lamps light it); a garage's lamps are always on, and by day no lamp matters.
    """

    lighting: str = "day"
    sun_azimuth: float = 0.8
    sun_elevation: float = 0.9
    rain: bool = False
    soiling: dict[str, float] = field(default_factory=dict)
    failed_cameras: dict[str, str] = field(default_factory=dict)
    failed_uss: dict[str, str] = field(default_factory=dict)
    street_lamps: bool = True

    def __post_init__(self):
        if self.lighting not in LIGHTING:
            raise ValueError(f"lighting must be one of {LIGHTING}, got {self.lighting!r}")

    def labels(self) -> list[str]:
        out = [self.lighting]
        if self.rain:
            out.append("rain")
        out += [f"soiling:{c}" for c in sorted(self.soiling)]
        out += [f"camera_failure:{c}" for c in sorted(self.failed_cameras)]
        out += [f"uss_failure:{s}" for s in sorted(self.failed_uss)]
        return out


# --- the scene ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scene:
    """A near-field scene and the ego's drive through it.

    kind: 'parking_lot', 'garage', 'street', 'driveway'. ceiling_height: set for indoor scenes (garage):
    the renderer closes the world with a ceiling there and uses `lights` instead of the sun.
    """

    kind: str
    objects: tuple[SceneObject, ...]
    ground: Ground
    ego: EgoPath
    lights: tuple[Light, ...] = ()
    ceiling_height: float | None = None
    seed: int = 0

    def objects_at(self, t: float) -> list[SceneObject]:
        return [o.at(t) for o in self.objects]
