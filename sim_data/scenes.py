"""Procedural near-field scenes (parking lot, garage, street, driveway) with the ego's drive through them.

A generator plans the ego's path first, lays its scene out around it, keeps only objects that clear every other
object and the ego's swept path, then moves the world so that the drive starts at the origin heading +x.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from sensors.errors import ConfigError
from sensors.geometry import Pose2D
from sensors.rig import Rig, VehicleBody
from sim_data.ego_drive import Drive, arc, creep, straight
from sim_data.layout import EGO_CLEARANCE, Layout, ego_swept
from sim_data.objects import (
    CAR_STYLES,
    STYLE_WEIGHTS,
    WALL_MATERIALS,
    _pick,
    make_bin,
    make_bollard,
    make_box,
    make_car,
    make_cone,
    make_curb,
    make_house_front,
    make_pedestrian,
    make_pillar,
    make_pole,
    make_toy,
    make_trolley,
    make_wall,
)
from sim_data.world import (
    Box,
    Cylinder,
    EgoPath,
    Ground,
    GroundPatch,
    Light,
    Marking,
    Material,
    Motion,
    Part,
    Scene,
    SceneObject,
    Sphere,
)

log = logging.getLogger(__name__)

SCENE_KINDS = ("parking_lot", "garage", "street", "driveway")
EGO_MOTIONS = ("parked", "creep_forward", "reverse_into_slot")
KIND_WEIGHTS = (0.35, 0.25, 0.25, 0.15)
MOTION_WEIGHTS = (0.25, 0.40, 0.35)

MAX_SPEED = 10 / 3.6  # m/s: parking manoeuvres stay below 10 km/h
COVER = 16.0  # m of populated world around the ego path on every side (8 m of BEV plus margin)

# --- scene assembly -------------------------------------------------------------------------------------


def _reframed(scene: Scene, mirror: bool) -> Scene:
    """The scene mirrored left-right (optionally) and moved so that the drive starts at (0, 0) heading +x."""
    sign = -1.0 if mirror else 1.0
    p0 = scene.ego.poses[0]
    o = Pose2D(p0.x, sign * p0.y, sign * p0.yaw)

    c, s = math.cos(o.yaw), math.sin(o.yaw)

    def pt(x, y):  # plain floats: this runs for every part, numpy per point would dominate generation time
        dx, dy = x - o.x, sign * y - o.y
        return c * dx + s * dy, -s * dx + c * dy

    def ang(yaw):
        return sign * yaw - o.yaw

    def shape(p):  # constructors, not dataclasses.replace: several times faster, and this runs for every part
        x, y = pt(p.x, p.y)
        if isinstance(p, Box):
            return Box(x, y, ang(p.yaw), p.length, p.width, p.z0, p.z1)
        if isinstance(p, Cylinder):
            return Cylinder(x, y, p.radius, p.z0, p.z1, p.radius_top)
        return Sphere(x, y, p.z, p.radius)

    objects = []
    for ob in scene.objects:
        motion = ob.motion and Motion(tuple(pt(*w) for w in ob.motion.waypoints), ob.motion.speed)
        objects.append(SceneObject(ob.id, ob.cls, ob.kind, tuple(Part(shape(p.shape), p.material) for p in ob.parts),
                                   shape(ob.box), motion))
    g = scene.ground
    markings = tuple(replace(m, x0=pt(m.x0, m.y0)[0], y0=pt(m.x0, m.y0)[1], x1=pt(m.x1, m.y1)[0], y1=pt(m.x1, m.y1)[1])
                     for m in g.markings)
    patches = tuple(replace(p, polygon=tuple(pt(*v) for v in p.polygon)) for p in g.patches)
    lights = tuple(replace(lt, x=pt(lt.x, lt.y)[0], y=pt(lt.x, lt.y)[1]) for lt in scene.lights)
    poses = tuple(Pose2D(*pt(p.x, p.y), ang(p.yaw)) for p in scene.ego.poses)
    return replace(scene, objects=tuple(objects), ground=replace(g, markings=markings, patches=patches),
                   lights=lights, ego=EgoPath(scene.ego.times, poses))


def _extent(path: EgoPath) -> tuple[float, float, float, float]:
    xy = np.array([(p.x, p.y) for p in path.poses])
    return float(xy[:, 0].min()), float(xy[:, 0].max()), float(xy[:, 1].min()), float(xy[:, 1].max())


def _band(x0: float, x1: float, y0: float, y1: float) -> tuple[tuple[float, float], ...]:
    return ((x0, y0), (x1, y0), (x1, y1), (x0, y1))


def _people(lay: Layout, spots: Sequence[tuple[float, float]], lanes: Sequence[float], x_range: tuple[float, float],
            n_walk: int, n_stand: int, child_p: float = 0.3) -> None:
    """Walkers along lanes y = const within x_range, and people standing at some of `spots`."""
    rng = lay.rng
    for _ in range(n_walk):
        for _try in range(8):
            y = _pick(rng, lanes) + rng.uniform(-0.2, 0.2)
            x = rng.uniform(*x_range)
            dist = rng.uniform(5.0, 14.0) * rng.choice([-1, 1])
            if lay.walker(x, y, [(x + dist, y)], child=rng.random() < child_p) is not None:
                break
    order = rng.permutation(len(spots)) if len(spots) else []
    placed = 0
    for i in order:
        if placed >= n_stand:
            break
        x, y = spots[i]
        child = rng.random() < child_p
        heading = rng.uniform(-math.pi, math.pi)
        if lay.place(lambda oid, x=x, y=y, h=heading, c=child: make_pedestrian(oid, x, y, h, rng, c)):
            placed += 1


@dataclass(frozen=True)
class _Row:
    """A row of parking bays along x. Bays open onto the aisle at y = entrance and run `side` (+1: towards +y)
    for `depth`; `angle` is between the bay axis and the aisle (pi/2: perpendicular)."""

    entrance: float
    side: int
    depth: float
    width: float
    x0: float  # x of one bay's entrance centre
    angle: float = math.pi / 2

    @property
    def pitch(self) -> float:
        return self.width / math.sin(self.angle)

    @property
    def axis(self) -> float:
        """Yaw pointing from the entrance into the bay."""
        return math.atan2(self.side * math.sin(self.angle), math.cos(self.angle))

    def entrances(self, x_lo: float, x_hi: float) -> np.ndarray:
        k = np.arange(math.floor((x_lo - self.x0) / self.pitch), math.ceil((x_hi - self.x0) / self.pitch) + 1)
        return self.x0 + k * self.pitch

    def along(self, xe: float, d: float, lateral: float = 0.0) -> tuple[float, float]:
        """Point `d` metres into the bay at entrance xe along its axis, `lateral` to its left."""
        c, s = math.cos(self.axis), math.sin(self.axis)
        return xe + c * d - s * lateral, self.entrance + s * d + c * lateral

    @property
    def length(self) -> float:
        return self.depth / math.sin(self.angle)

    def markings(self, x_lo: float, x_hi: float, rgb=(0.92, 0.92, 0.88)) -> list[Marking]:
        out = []
        for xe in self.entrances(x_lo, x_hi):
            a = xe - self.pitch / 2
            c, s = math.cos(self.axis), math.sin(self.axis)
            out.append(Marking(a, self.entrance, a + c * self.length, self.entrance + s * self.length, 0.12, rgb))
        return out

    def car(self, lay: Layout, xe: float, rng: np.random.Generator) -> SceneObject | None:
        """A car parked in the bay at entrance xe: nose in or reversed in, a little off centre."""
        style = str(rng.choice(list(CAR_STYLES), p=STYLE_WEIGHTS))
        L, W = CAR_STYLES[style][:2]
        lean = (W / 2 + 0.05) / math.tan(self.angle)  # an angled bay's back corners cut into its length
        yaw = self.axis + (math.pi if rng.random() < 0.3 else 0.0)
        seed = rng.integers(2**31)
        makers = []
        for back in (rng.uniform(0.25, 0.6), 0.3):
            for lat in (rng.uniform(-0.15, 0.15), 0.0):
                x, y = self.along(xe, self.length - back - lean - L / 2, lat)
                makers.append(lambda oid, x=x, y=y: make_car(oid, x, y, yaw, np.random.default_rng(seed), style))
        return lay.place_first(makers)


def _bay_pose(row: _Row, xe: float, vehicle: VehicleBody, reversed_in: bool, back_gap: float) -> Pose2D:
    """Ego pose parked in a bay with its back end `back_gap` from the bay's end."""
    if reversed_in:
        d = row.length - back_gap - vehicle.rear_overhang
        return Pose2D(*row.along(xe, d), row.axis + math.pi)
    d = row.length - back_gap - vehicle.x_max
    return Pose2D(*row.along(xe, d), row.axis)


def _bays_scene(kind: str, motion: str, duration: float, rng: np.random.Generator, rig: Rig, seed: int) -> Scene:
    """Parking lot or underground garage: an aisle along x at y = 0 with bays either side."""
    garage = kind == "garage"
    veh = rig.vehicle
    a = rng.uniform(3.25, 3.7)  # aisle half width
    depth = rng.uniform(5.0, 5.4)
    width = rng.uniform(2.6, 2.8) if garage else rng.uniform(2.5, 2.75)
    target = _Row(a, +1, depth, width, 0.0)  # the ego's bay opens at x = 0 on the +y side
    # --- the drive
    if motion == "parked":
        pose = _bay_pose(target, 0.0, veh, rng.random() < 0.5, rng.uniform(0.5, 0.8))
        ego = Drive(pose).path(duration)
    elif motion == "creep_forward":
        x_start = rng.uniform(-8.0, 0.0)
        ego = creep(Pose2D(x_start, rng.uniform(-0.3, 0.3), 0.0), duration, rng, 1.5 if garage else 2.0)
    else:
        ego = _reverse_perpendicular(target, veh, duration, rng, aisle_half=a)
    x_lo, x_hi, _, _ = _extent(ego)
    x_lo, x_hi = x_lo - COVER, x_hi + COVER
    lay = Layout(rng, ego, veh)
    height = rng.uniform(2.4, 2.7) if garage else None
    rows = [target, _Row(-a, -1, depth, width, rng.uniform(0, width))]
    if not garage and rng.random() < 0.3:  # an angled row across the aisle (one-way traffic)
        ang = math.radians(rng.uniform(55, 70))
        rows[1] = _Row(-a, -1, depth + 0.4, width, rows[1].x0, ang)
    if not garage:  # back-to-back rows facing the next aisles
        rows += [_Row(a + 2 * depth, -1, depth, width, 0.0), _Row(-a - 2 * rows[1].depth, +1, depth, width, 0.0)]
    lights: list[Light] = []
    patches: list[GroundPatch] = []
    # --- structure first: it is where it is, cars are parked around it
    if garage:
        wall = _pick(rng, WALL_MATERIALS[1:3])
        y_back = a + depth + 0.25
        y_front = -a - depth - 0.25
        lay.place(lambda oid: make_wall(oid, x_lo, y_back, x_hi, y_back, 0.3, height, wall))
        lay.place(lambda oid: make_wall(oid, x_lo, y_front, x_hi, y_front, 0.3, height, wall))
        end = rng.uniform(10.0, 14.0)
        for xw in (x_lo + COVER - end, x_hi - COVER + end):
            lay.place(lambda oid, xw=xw: make_wall(oid, xw, y_front + 0.3, xw, y_back - 0.3, 0.3, height, wall))
        x_lo, x_hi = x_lo + COVER - end, x_hi - COVER + end
        round_ = rng.random() < 0.4
        every = int(rng.integers(2, 4))
        for r in rows:
            ents = r.entrances(x_lo, x_hi)
            start = int(rng.integers(every))
            d = rng.choice([0.6, r.length - 0.6])
            for xe in ents[start::every]:
                x, y = r.along(xe - r.pitch / 2, d)
                lay.place(lambda oid, x=x, y=y: make_pillar(oid, x, y, rng, height, round_))
        spacing = rng.uniform(5.0, 7.0)
        for xl in np.arange(x_lo + 1.0, x_hi, spacing):
            for yl in (0.0, a + depth / 2, -a - depth / 2):
                lights.append(Light(float(xl), yl, height - 0.05, (0.92, 0.96, 1.0), rng.uniform(0.5, 0.8)))
    else:
        every = int(rng.integers(3, 6))
        for r in (rows[0], rows[1]):
            y_pole = r.entrance + r.side * r.depth
            for xe in r.entrances(x_lo, x_hi)[int(rng.integers(every))::every]:
                x = xe - r.pitch / 2 if r.angle == math.pi / 2 else xe
                h = rng.uniform(6.0, 8.0)
                if lay.place(lambda oid, x=x, y=y_pole, h=h: make_pole(oid, x, y, rng, h, 0.1, lamp=True)):
                    lights.append(Light(float(x), y_pole, h, (1.0, 0.85, 0.6), rng.uniform(0.9, 1.4)))
    paint = (0.95, 0.85, 0.2) if garage and rng.random() < 0.3 else (0.92, 0.92, 0.88)
    markings = [m for r in rows for m in r.markings(x_lo, x_hi, paint)]
    if not garage:  # the back lines of the rows next to the ego's aisle
        backs = [r.entrance + r.side * r.depth for r in rows[:2]]
        markings += [Marking(x_lo, yb, x_hi, yb) for yb in backs]
    # --- parked cars, then what stands in empty bays
    empty: list[tuple[_Row, float]] = []
    p_empty = rng.uniform(0.15, 0.35)
    for r in rows:
        for xe in r.entrances(x_lo, x_hi):
            if r is target and abs(xe) < 1e-6 and motion != "creep_forward":
                continue  # the ego's own bay
            if rng.random() < p_empty or r.car(lay, xe, rng) is None:
                empty.append((r, xe))
    for i in rng.permutation(len(empty))[: max(1, len(empty) // 3)]:
        r, xe = empty[i]
        u = rng.random()
        x, y = r.along(xe, r.length * rng.uniform(0.3, 0.8), rng.uniform(-0.5, 0.5))
        if u < 0.35:
            lay.place(lambda oid, x=x, y=y: make_cone(oid, x, y, rng))
        elif u < 0.6 and not garage:
            lay.place(lambda oid, x=x, y=y: make_trolley(oid, x, y, rng.uniform(-math.pi, math.pi), rng))
        elif u < 0.75:
            lay.place(lambda oid, x=x, y=y: make_box(oid, x, y, rng.uniform(0, math.pi), rng))
        elif u < 0.85:
            x, y = r.along(xe, r.length - 0.3, r.pitch / 2 * rng.choice([-1, 1]) * 0.9)
            lay.place(lambda oid, x=x, y=y: make_bollard(oid, x, y, rng))
    # --- people: walking along the aisle edges, standing at bay mouths and in empty bays
    near = (x_lo + COVER - 6.0, x_hi - COVER + 6.0) if not garage else (x_lo + 1.0, x_hi - 1.0)
    spots = [rows[int(rng.integers(2))].along(x, rng.uniform(-0.2, 0.4)) for x in rng.uniform(*near, size=6)]
    spots += [r.along(xe, r.length * 0.5) for r, xe in empty if near[0] < xe < near[1]]
    lanes = [a - 0.55, -a + 0.55] + ([] if garage else [a + 2 * depth + 1.5, -a - 2 * rows[1].depth - 1.5])
    _people(lay, spots, lanes, near, int(rng.integers(1, 4)), int(rng.integers(1, 4)))
    if garage:
        ground = Ground((0.55, 0.55, 0.53), "concrete", tuple(markings), tuple(patches))
    else:
        ground = Ground((0.30, 0.30, 0.31), "asphalt", tuple(markings), tuple(patches))
    scene = Scene(kind, tuple(lay.objects), ground, ego, tuple(lights), height, seed)
    return _reframed(scene, mirror=rng.random() < 0.5)


def _reverse_perpendicular(row: _Row, veh: VehicleBody, duration: float, rng: np.random.Generator,
                           aisle_half: float) -> EgoPath:
    """Drive past the bay at entrance x = 0, stop, reverse on a full-lock arc until square to the bay, then
    straight back into it. Row opens towards +y (the arc steers left while reversing)."""
    R = rng.uniform(4.9, 5.5)
    y_arc_end = row.entrance + rng.uniform(0.1, 0.4)  # rear axle just inside the bay when square to it
    y0 = y_arc_end - R
    y0 = max(y0, -aisle_half + veh.width / 2 + 0.8)
    pre = rng.uniform(2.0, 5.0)
    start = Pose2D(R - pre, y0, 0.0)
    final_y = row.entrance + row.depth - rng.uniform(0.5, 0.8) - veh.rear_overhang
    drive = Drive(start).leg(1, straight(pre), rng.uniform(1.0, 1.5)).pause(rng.uniform(0.6, 1.5))
    back = np.concatenate([arc(R, math.pi / 2), straight(final_y - (y0 + R))])
    return drive.leg(-1, back, rng.uniform(0.5, 0.9)).path(duration, finish=True)


def generate_scene(kind: str, motion: str, duration_s: float, rng: np.random.Generator, rig: Rig, seed: int) -> Scene:
    """A random scene of `kind` with the ego's drive `motion` lasting `duration_s` seconds."""
    if kind not in SCENE_KINDS:
        raise ConfigError(f"unknown scene kind {kind!r}; choose from {', '.join(SCENE_KINDS)}")
    if motion not in EGO_MOTIONS:
        raise ConfigError(f"unknown ego motion {motion!r}; choose from {', '.join(EGO_MOTIONS)}")
    if not (math.isfinite(duration_s) and duration_s > 0):
        raise ConfigError(f"drive duration must be a positive number of seconds, got {duration_s!r}")
    if kind in ("parking_lot", "garage"):
        scene = _bays_scene(kind, motion, duration_s, rng, rig, seed)
    elif kind == "street":
        scene = _street_scene(motion, duration_s, rng, rig, seed)
    else:
        scene = _driveway_scene(motion, duration_s, rng, rig, seed)
    log.debug("scene %s/%s seed %d: %d objects", kind, motion, seed, len(scene.objects))
    return scene


def sample_drive(rng: np.random.Generator, rig: Rig, duration_s: float, kinds: Sequence[str] | None = None,
                 motions: Sequence[str] | None = None) -> Scene:
    """Pick a scene kind and an ego motion (from `kinds` / `motions` when given) and generate the scene."""
    for name, given, allowed in (("scene kind", kinds, SCENE_KINDS), ("ego motion", motions, EGO_MOTIONS)):
        bad = [v for v in given or () if v not in allowed]
        if bad:
            raise ConfigError(f"unknown {name} {bad[0]!r}; choose from {', '.join(allowed)}")
    kind = _weighted(rng, SCENE_KINDS, KIND_WEIGHTS, kinds)
    motion = _weighted(rng, EGO_MOTIONS, MOTION_WEIGHTS, motions)
    seed = int(rng.integers(2**31))
    return generate_scene(kind, motion, duration_s, rng, rig, seed)


def _weighted(rng: np.random.Generator, names: Sequence[str], weights: Sequence[float], allowed) -> str:
    w = np.array([wt if allowed is None or n in allowed else 0.0 for n, wt in zip(names, weights, strict=True)])
    if w.sum() <= 0:
        raise ConfigError(f"nothing to choose from: {list(allowed)!r}")
    return str(names[int(rng.choice(len(names), p=w / w.sum()))])


def _fill_parallel(lay: Layout, y_kerb: float, side: int, yaw: float, x_lo: float, x_hi: float,
                   rng: np.random.Generator) -> None:
    """Cars parked nose to tail along a kerb at y_kerb (their kerb side 0.15-0.35 m off it, on the `side` of
    the kerb towards the road), with the gaps of a real street; each car slides on until it fits."""
    x = x_lo
    while x < x_hi:
        style = str(rng.choice(list(CAR_STYLES), p=STYLE_WEIGHTS))
        L, W = CAR_STYLES[style][:2]
        x += rng.uniform(4.0, 8.0) if rng.random() < 0.12 else rng.uniform(0.6, 2.0)
        y = y_kerb + side * (rng.uniform(0.15, 0.35) + W / 2)
        seed = rng.integers(2**31)
        for k in range(12):
            xc = x + L / 2 + 0.25 * k
            if lay.place(lambda oid, xc=xc, y=y, sd=seed, st=style:
                         make_car(oid, xc, y, yaw, np.random.default_rng(sd), st)):
                x = xc + L / 2
                break
        else:
            x += 3.0


def _buildings(lay: Layout, y_face: float, side: int, x_lo: float, x_hi: float, rng: np.random.Generator) -> None:
    """Building fronts along x with their faces at y_face, extending away (`side`) from the street."""
    x = x_lo
    shop = Material((0.15, 0.2, 0.25), "glass", 0.8, 0.95)
    while x < x_hi:
        length = rng.uniform(6.0, 18.0)
        mat = shop if rng.random() < 0.15 else _pick(rng, WALL_MATERIALS)
        y = y_face + side * 0.15
        h = rng.uniform(3.0, 10.0)
        lay.place(lambda oid, x=x, L=length, y=y, m=mat, h=h: make_wall(oid, x, y, x + L, y, 0.3, h, m))
        x += length + 0.2


def _street_scene(motion: str, duration: float, rng: np.random.Generator, rig: Rig, seed: int) -> Scene:
    """A two-lane street along x (the ego's lane at y = 0, driving +x), parking along both kerbs, sidewalks,
    building fronts, lamps, signs and bollards."""
    veh = rig.vehicle
    lw, strip = rng.uniform(3.0, 3.4), rng.uniform(2.1, 2.4)
    kerb_r, kerb_l = -lw / 2 - strip, 1.5 * lw + strip  # kerb faces
    sw_r, sw_l = rng.uniform(2.2, 3.5), rng.uniform(2.2, 3.5)
    wall_r, wall_l = kerb_r - 0.15 - sw_r, kerb_l + 0.15 + sw_l
    y_park = kerb_r + rng.uniform(0.42, 0.55) + veh.width / 2
    gap_at: float | None = 0.0
    if motion == "parked":
        ego = Drive(Pose2D(0.0, y_park, 0.0)).path(duration)
    elif motion == "creep_forward":
        gap_at = None
        ego = creep(Pose2D(rng.uniform(-5.0, 0.0), rng.uniform(-0.2, 0.2), 0.0), duration, rng)
    else:
        # While the car swings in, its rear corner dips closer to the kerb than where it ends up; plan the
        # manoeuvre once, then again with the gap moved out by that overshoot.
        sub, wanted = rng.integers(2**31), y_park - veh.width / 2 - EGO_CLEARANCE
        for _ in range(4):
            ego = _parallel_park(y_park, veh, duration, np.random.default_rng(sub))
            lowest = ego_swept(ego, veh, EGO_CLEARANCE)[..., 1].min()
            if lowest >= wanted - 1e-3:
                break
            y_park += wanted - lowest + 0.01
    x_lo, x_hi, _, _ = _extent(ego)
    x_lo, x_hi = x_lo - COVER, x_hi + COVER
    lay = Layout(rng, ego, veh)
    lights: list[Light] = []
    h_kerb = rng.uniform(0.12, 0.15)
    lay.place(lambda oid: make_curb(oid, x_lo, kerb_r - 0.075, x_hi, kerb_r - 0.075, h_kerb))
    lay.place(lambda oid: make_curb(oid, x_lo, kerb_l + 0.075, x_hi, kerb_l + 0.075, h_kerb))
    _buildings(lay, wall_r, -1, x_lo, x_hi, rng)
    _buildings(lay, wall_l, +1, x_lo, x_hi, rng)
    for y_pole, side in ((kerb_r - 0.55, -1), (kerb_l + 0.55, 1)):
        for x in np.arange(x_lo + rng.uniform(0, 20), x_hi, rng.uniform(18.0, 28.0)):
            h = rng.uniform(5.0, 7.0)
            if lay.place(lambda oid, x=x, y=y_pole, h=h: make_pole(oid, x, y, rng, h, 0.09, lamp=True)):
                lights.append(Light(float(x), y_pole, h, (1.0, 0.85, 0.6), rng.uniform(0.8, 1.2)))
        for x in rng.uniform(x_lo, x_hi, int(rng.integers(1, 4))):
            lay.place(lambda oid, x=x, y=y_pole: make_pole(oid, x, y, rng, rng.uniform(2.4, 3.0), 0.04, sign=True))
        for x in rng.uniform(x_lo + COVER - 8, x_hi - COVER + 8, int(rng.integers(0, 3))):
            for k in range(int(rng.integers(3, 6))):
                lay.place(lambda oid, x=x + 1.5 * k, y=y_pole + side * 0.1: make_bollard(oid, x, y, rng))
    # Neighbours of the ego's parking gap first, as close as a driver leaves them, then the rest of the rows.
    if gap_at is not None:
        end = ego.poses[-1]
        for direction, edge in ((1, end.x + veh.x_max), (-1, end.x + veh.x_min)):
            style = str(rng.choice(list(CAR_STYLES), p=STYLE_WEIGHTS))
            L, W = CAR_STYLES[style][:2]
            y = kerb_r + rng.uniform(0.15, 0.35) + W / 2
            seed_c = rng.integers(2**31)
            lay.place_first([lambda oid, xc=edge + direction * (L / 2 + 0.45 + 0.15 * k), y=y, sd=seed_c, st=style:
                             make_car(oid, xc, y, 0.0, np.random.default_rng(sd), st) for k in range(20)])
    _fill_parallel(lay, kerb_r, +1, 0.0, x_lo, x_hi, rng)
    _fill_parallel(lay, kerb_l, -1, math.pi, x_lo, x_hi, rng)
    for kerb, sw, side in ((kerb_r, sw_r, -1), (kerb_l, sw_l, 1)):
        inner, outer = kerb + side * 0.15, kerb + side * (0.15 + sw)
        lanes = [inner + side * sw * 0.45, inner + side * sw * 0.75]
        spots = [(float(x), float(outer - side * 0.5)) for x in rng.uniform(x_lo + 10, x_hi - 10, 4)]
        _people(lay, spots, lanes, (x_lo + COVER - 6, x_hi - COVER + 6), int(rng.integers(1, 4)),
                int(rng.integers(0, 3)))
        for x in rng.uniform(x_lo + 8, x_hi - 8, int(rng.integers(0, 3))):
            lay.place(lambda oid, x=x, y=outer - side * 0.45: make_bin(oid, x, y, 0.0, rng))
    patches = (GroundPatch(_band(x_lo, x_hi, kerb_r - 0.15, wall_r), (0.62, 0.60, 0.57), "paving"),
               GroundPatch(_band(x_lo, x_hi, kerb_l + 0.15, wall_l), (0.62, 0.60, 0.57), "paving"))
    markings = [Marking(x_lo, -lw / 2, x_hi, -lw / 2, 0.12), Marking(x_lo, 1.5 * lw, x_hi, 1.5 * lw, 0.12)]
    dash, space = rng.uniform(2.5, 3.5), rng.uniform(3.0, 6.0)
    for x in np.arange(x_lo, x_hi, dash + space):
        markings.append(Marking(float(x), lw / 2, float(x + dash), lw / 2, 0.12))
    ground = Ground((0.28, 0.28, 0.29), "asphalt", tuple(markings), patches)
    return _reframed(Scene("street", tuple(lay.objects), ground, ego, tuple(lights), None, seed), mirror=False)


def _parallel_park(y_park: float, veh: VehicleBody, duration: float, rng: np.random.Generator) -> EgoPath:
    """Pull up alongside the car ahead of the gap, stop, reverse steering right then left (two equal arcs)
    into the gap whose rear-axle target is (0, y_park), then roll forward a little to centre."""
    R = rng.uniform(5.0, 5.6)
    y0 = rng.uniform(-0.1, 0.2)
    phi = math.acos(1 - (y0 - y_park) / (2 * R))
    fwd = rng.uniform(0.2, 0.5)
    x_start = 2 * R * math.sin(phi) - fwd
    pre = rng.uniform(2.0, 5.0)
    drive = Drive(Pose2D(x_start - pre, y0, 0.0)).leg(1, straight(pre), rng.uniform(0.8, 1.4))
    drive.pause(rng.uniform(0.6, 1.5))
    drive.leg(-1, np.concatenate([arc(-R, phi), arc(R, phi)]), rng.uniform(0.5, 0.8))
    drive.pause(rng.uniform(0.4, 1.0)).leg(1, straight(fwd), 0.4)
    return drive.path(duration, finish=True)


def _driveway_scene(motion: str, duration: float, rng: np.random.Generator, rig: Rig, seed: int) -> Scene:
    """A house front with a garage door at the top of a paved driveway (the driveway runs +y from the street's
    kerb at y = 0, the ego's half of it centred on x = 0), front gardens, bins, toys, people."""
    veh = rig.vehicle
    road = rng.uniform(7.6, 8.4)
    sw = rng.uniform(1.5, 2.5)
    y_prop = 0.15 + sw
    y_house = y_prop + rng.uniform(6.0, 9.5)
    double = rng.random() < 0.4
    wd = rng.uniform(5.2, 6.0) if double else rng.uniform(3.0, 4.2)
    other_side = rng.choice([-1, 1])
    lo, hi = (-wd / 2, wd / 2) if not double else sorted((-other_side * wd / 4, other_side * 3 * wd / 4))
    stop_gap = rng.uniform(0.8, 1.4)
    if motion == "parked":
        if rng.random() < 0.5:
            pose = Pose2D(0.0, y_house - stop_gap - veh.x_max, math.pi / 2)
        else:
            pose = Pose2D(0.0, y_house - stop_gap - veh.rear_overhang, -math.pi / 2)
        ego = Drive(pose).path(duration)
    elif motion == "creep_forward":
        y_start = rng.uniform(-3.0, -1.5)
        v = rng.uniform(0.5, 1.2)
        length = y_house - stop_gap - veh.x_max - y_start
        ego = Drive(Pose2D(0.0, y_start, math.pi / 2)).leg(1, straight(length), v, v0=v).path(duration)
    else:
        row = _Row(0.0, +1, y_house - stop_gap + 0.6, wd, 0.0)
        ego = _reverse_perpendicular(row, veh, duration, rng, aisle_half=road)
    x_lo, x_hi, _, _ = _extent(ego)
    x_lo, x_hi = x_lo - COVER, x_hi + COVER
    lay = Layout(rng, ego, veh)
    # The house and its neighbours, garden walls or kerbs along the property line, a gap for the driveway.
    h0, h1 = lo - rng.uniform(3.0, 7.0), hi + rng.uniform(3.0, 7.0)
    door_w = wd - 0.6 if double else rng.uniform(2.4, min(2.9, wd - 0.3))
    door_x = (lo + hi) / 2
    lay.place(lambda oid: make_house_front(oid, h0, h1, y_house, door_x, door_w, rng.uniform(2.8, 6.0), rng))
    for a, b in ((x_lo, h0 - 1.0), (h1 + 1.0, x_hi)):
        y = y_house + rng.uniform(-1.5, 3.0)
        lay.place(lambda oid, a=a, b=b, y=y: make_house_front(oid, a, b, y, (a + b) / 2, 2.6, 5.0, rng))
    low = _pick(rng, WALL_MATERIALS)
    h_wall = rng.uniform(0.4, 0.9)
    for a, b in ((x_lo, lo - 0.3), (hi + 0.3, x_hi)):
        if rng.random() < 0.6:
            lay.place(lambda oid, a=a, b=b: make_wall(oid, a, y_prop + 0.12, b, y_prop + 0.12, 0.24, h_wall, low))
        else:
            lay.place(lambda oid, a=a, b=b: make_curb(oid, a, y_prop + 0.08, b, y_prop + 0.08, 0.12))
    for x in (h0 - 0.5, h1 + 0.5):
        lay.place(lambda oid, x=x: make_wall(oid, x, y_prop + 0.5, x, y_house - 0.3, 0.24, h_wall, low))
    # The street: kerbs (dropped at the driveway), parked cars, a lamp.
    hk = rng.uniform(0.12, 0.15)
    mouth = 1.2
    for a, b in ((x_lo, lo - mouth), (hi + mouth, x_hi)):
        lay.place_first([lambda oid, a=a, b=b, s=s: make_curb(oid, a + max(s, 0), 0.075, b - max(-s, 0), 0.075, hk)
                         for s in (0.0, 1.0, -1.0, 2.0, -2.0)])
    lay.place(lambda oid: make_curb(oid, x_lo, -road - 0.075, x_hi, -road - 0.075, hk))
    if double:
        x_other = (lo + hi) / 2 + other_side * wd / 4
        seed_c = rng.integers(2**31)
        lay.place_first([lambda oid, d=d: make_car(oid, x_other, y_house - d - 2.4, math.pi / 2,
                                                   np.random.default_rng(seed_c)) for d in (0.8, 1.2, 1.8, 2.6)])
    _fill_parallel(lay, -road, +1, 0.0, x_lo, x_hi, rng)
    for x in rng.uniform(x_lo, x_hi, int(rng.integers(1, 4))):
        if abs(x) > wd + 4:
            _fill_parallel(lay, 0.0, -1, 0.0, x - 3, x + 3, rng)
    x_lamp = rng.choice([lo - rng.uniform(3, 8), hi + rng.uniform(3, 8)])
    lights = [Light(door_x + door_w / 2 + 0.5, y_house - 0.15, 2.4, (1.0, 0.8, 0.55), 0.4)]
    if lay.place(lambda oid: make_pole(oid, x_lamp, y_prop - 0.4, rng, 5.5, 0.08, lamp=True)):
        lights.append(Light(float(x_lamp), y_prop - 0.4, 5.5, (1.0, 0.85, 0.6), 1.0))
    # Bins by the house, toys and people in the garden.
    for k in range(int(rng.integers(1, 4))):
        x = (hi + 0.5 + 0.75 * k) if other_side < 0 or not double else (lo - 0.5 - 0.75 * k)
        lay.place(lambda oid, x=x: make_bin(oid, x, y_house - 0.5, 0.0, rng))
    garden = [(float(rng.uniform(a, b)), float(rng.uniform(y_prop + 0.7, y_house - 0.8)))
              for a, b in ((h0 + 0.5, lo - 0.5), (hi + 0.5, h1 - 0.5)) for _ in range(3)]
    garden = [garden[i] for i in rng.permutation(len(garden))]
    for x, y in garden[: int(rng.integers(1, 5))]:
        maker = make_toy if rng.random() < 0.7 else make_box
        lay.place(lambda oid, x=x, y=y, m=maker: m(oid, x, y, rng.uniform(0, math.pi), rng))
    spots = garden + [(float(x), y_prop - 0.8) for x in rng.uniform(x_lo + 8, x_hi - 8, 3)]
    _people(lay, spots, [0.15 + sw * 0.5], (x_lo + COVER - 6, x_hi - COVER + 6), int(rng.integers(0, 2)),
            int(rng.integers(1, 3)), child_p=0.5)
    grass = (0.25, 0.45, 0.18)
    patches = (GroundPatch(_band(x_lo, x_hi, 0.15, y_prop), (0.62, 0.60, 0.57), "paving"),
               GroundPatch(_band(x_lo, lo, y_prop, y_house + 3), grass, "grass"),
               GroundPatch(_band(hi, x_hi, y_prop, y_house + 3), grass, "grass"),
               GroundPatch(_band(lo, hi, 0.0, y_house), (0.55, 0.50, 0.45), "paving"),
               GroundPatch(_band(x_lo, x_hi, -road - 0.15, -road - 3.0), (0.62, 0.60, 0.57), "paving"))
    dash, space = 3.0, rng.uniform(3.0, 5.0)
    markings = tuple(Marking(float(x), -road / 2, float(x + dash), -road / 2)
                     for x in np.arange(x_lo, x_hi, dash + space))
    ground = Ground((0.28, 0.28, 0.29), "asphalt", markings, patches)
    scene = Scene("driveway", tuple(lay.objects), ground, ego, tuple(lights), None, seed)
    return _reframed(scene, mirror=rng.random() < 0.5)
