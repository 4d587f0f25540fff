"""Object factories of the simulated world: parked cars, pedestrians, poles, bollards, cones, boxes, walls, curbs,
pillars, house fronts, and the materials they are made of. Each returns a labelled SceneObject with its box."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from sensors.classes import SemanticClass
from sim_data.world import Box, Cylinder, Material, Motion, Part, SceneObject, Sphere

V = SemanticClass

# --- materials ------------------------------------------------------------------------------------------

GLASS = Material((0.10, 0.13, 0.16), "glass", 0.9, 0.9)
RUBBER = Material((0.05, 0.05, 0.05), "rubber", 0.1, 0.6)
CONCRETE = Material((0.62, 0.61, 0.58), "concrete", 0.05, 0.95)
METAL = Material((0.55, 0.57, 0.60), "metal", 0.6, 0.95)
DARK_METAL = Material((0.18, 0.19, 0.21), "metal", 0.4, 0.95)
HAZARD = Material((0.95, 0.45, 0.08), "hazard", 0.2, 0.7)
HEADLAMP = Material((0.90, 0.90, 0.85), "glass", 0.9, 0.9)
TAILLAMP = Material((0.70, 0.05, 0.05), "glass", 0.8, 0.9)

# (rgb, weight): the colours of real car parks, mostly white, black and greys.
CAR_COLOURS = (((0.92, 0.92, 0.92), 0.25), ((0.05, 0.05, 0.06), 0.2), ((0.62, 0.63, 0.65), 0.17),
               ((0.35, 0.36, 0.38), 0.13), ((0.10, 0.20, 0.50), 0.09), ((0.60, 0.06, 0.06), 0.08),
               ((0.12, 0.28, 0.16), 0.03), ((0.72, 0.65, 0.50), 0.03), ((0.85, 0.55, 0.10), 0.02))
SKIN = ((0.96, 0.80, 0.69), (0.87, 0.67, 0.52), (0.67, 0.46, 0.33), (0.44, 0.29, 0.20), (0.30, 0.20, 0.14))
HAIR = ((0.08, 0.06, 0.05), (0.25, 0.15, 0.08), (0.55, 0.40, 0.20), (0.80, 0.70, 0.45), (0.60, 0.60, 0.60))
CLOTHES = ((0.10, 0.12, 0.25), (0.08, 0.08, 0.08), (0.55, 0.10, 0.12), (0.85, 0.85, 0.82), (0.20, 0.35, 0.20),
           (0.45, 0.45, 0.48), (0.85, 0.65, 0.15), (0.15, 0.40, 0.65), (0.60, 0.45, 0.30), (0.85, 0.35, 0.55))
WALL_MATERIALS = (Material((0.55, 0.25, 0.18), "brick", 0.05, 0.95),
                  Material((0.70, 0.68, 0.63), "concrete", 0.05, 0.95),
                  Material((0.85, 0.82, 0.74), "plain", 0.05, 0.95),
                  Material((0.60, 0.55, 0.48), "brick", 0.05, 0.95))


def _pick(rng: np.random.Generator, options: Sequence):
    return options[int(rng.integers(len(options)))]


def _fabric(rng: np.random.Generator) -> Material:
    return Material(_pick(rng, CLOTHES), "fabric", 0.0, 0.3)


# --- object factories -----------------------------------------------------------------------------------
# Each returns a SceneObject whose parts all lie inside its ground-truth box.

# length, width, height, height of the body below the windows, wheel radius
CAR_STYLES: dict[str, tuple[float, float, float, float, float]] = {
    "hatchback": (4.05, 1.76, 1.48, 0.92, 0.31),
    "sedan": (4.75, 1.83, 1.45, 0.95, 0.33),
    "suv": (4.70, 1.92, 1.72, 1.08, 0.36),
    "van": (5.10, 2.00, 1.98, 1.05, 0.34),
}
STYLE_WEIGHTS = (0.35, 0.30, 0.25, 0.10)
# Cabin (glass house) length and centre as fractions of the car length, per style.
_CABIN = {"hatchback": (0.58, -0.08), "sedan": (0.48, -0.04), "suv": (0.64, -0.10), "van": (0.80, -0.06)}


def _frame(x: float, y: float, yaw: float) -> Callable[[float, float], tuple[float, float]]:
    c, s = math.cos(yaw), math.sin(yaw)
    return lambda lx, ly: (x + c * lx - s * ly, y + s * lx + c * ly)


def make_car(oid: int, x: float, y: float, yaw: float, rng: np.random.Generator,
             style: str | None = None) -> SceneObject:
    """A parked car centred at (x, y) facing `yaw`: body, glass cabin, roof, four wheels, lamps."""
    style = style or str(rng.choice(list(CAR_STYLES), p=STYLE_WEIGHTS))
    L, W, H, belt, r = CAR_STYLES[style]
    f = rng.uniform(0.97, 1.03)
    L, W, H = L * f, W * rng.uniform(0.98, 1.02), H * rng.uniform(0.97, 1.03)
    colours, weights = zip(*CAR_COLOURS, strict=True)
    paint = Material(colours[int(rng.choice(len(colours), p=np.array(weights) / sum(weights)))], "car_paint", 0.7, 0.9)
    at = _frame(x, y, yaw)

    def box(lx, ly, length, width, z0, z1, mat):
        px, py = at(lx, ly)
        return Part(Box(px, py, yaw, length, width, z0, z1), mat)

    cab_len, cab_off = _CABIN[style]
    parts = [box(0, 0, L, W, 0.22, belt, paint),
             box(cab_off * L, 0, cab_len * L, W - 0.10, belt, H - 0.06, GLASS),
             box(cab_off * L, 0, cab_len * L - 0.2, W - 0.16, H - 0.06, H, paint)]
    wheel_x = 0.30 * L
    for lx in (wheel_x, -wheel_x * 0.95):
        for side in (1, -1):
            parts.append(box(lx, side * (W / 2 - 0.14), 2 * r, 0.22, 0.0, 2 * r, RUBBER))
    for side in (1, -1):
        parts.append(box(L / 2 - 0.04, side * (W / 2 - 0.28), 0.08, 0.32, belt - 0.25, belt - 0.12, HEADLAMP))
        parts.append(box(-L / 2 + 0.04, side * (W / 2 - 0.22), 0.08, 0.30, belt - 0.22, belt - 0.08, TAILLAMP))
    return SceneObject(oid, V.VEHICLE, "car", tuple(parts), Box(x, y, yaw, L, W, 0.0, H))


def make_pedestrian(oid: int, x: float, y: float, heading: float, rng: np.random.Generator, child: bool = False,
                    walk_to: Sequence[tuple[float, float]] = (), speed: float = 0.0) -> SceneObject:
    """A person standing at (x, y) facing `heading`: legs, torso, arms (cylinders), head and hair (spheres).
    With `walk_to` waypoints they walk there and back at `speed` (m/s), facing the way they go."""
    H = rng.uniform(1.0, 1.3) if child else rng.uniform(1.6, 1.9)
    k = H / 1.75 * (1.1 if child else 1.0)  # children are stockier for their height
    at = _frame(x, y, heading)
    skin = Material(_pick(rng, SKIN), "skin", 0.1, 0.3)
    shirt, trousers = _fabric(rng), _fabric(rng)
    hair = Material(_pick(rng, HAIR), "hair", 0.05, 0.2)
    leg_r, torso_r, arm_r, head_r = 0.065 * k, 0.16 * k, 0.045 * k, 0.095 * H / 1.75 * (1.25 if child else 1.0)
    hip, shoulder = 0.47 * H, H - 2 * head_r - 0.04 * H

    def cyl(lx, ly, r, z0, z1, mat, r_top=None):
        px, py = at(lx, ly)
        return Part(Cylinder(px, py, r, z0, z1, r_top), mat)

    def sph(lx, ly, z, r, mat):
        px, py = at(lx, ly)
        return Part(Sphere(px, py, z, r), mat)

    parts = [cyl(0, 0.085 * k, leg_r, 0.0, hip, trousers), cyl(0, -0.085 * k, leg_r, 0.0, hip, trousers),
             cyl(0, 0, torso_r * 0.9, hip - 0.02, shoulder, shirt, torso_r),
             cyl(0, torso_r + arm_r + 0.01, arm_r, hip - 0.03, shoulder - 0.02, shirt),
             cyl(0, -(torso_r + arm_r + 0.01), arm_r, hip - 0.03, shoulder - 0.02, shirt),
             sph(0, 0, H - head_r, head_r, skin),
             sph(-0.2 * head_r, 0, H - 0.9 * head_r, 0.95 * head_r, hair)]
    half_w = torso_r + 2 * arm_r + 0.01
    box = Box(x, y, heading, 2 * torso_r + 0.02, 2 * half_w, 0.0, H)
    motion = Motion(((x, y), *walk_to), speed) if walk_to else None
    return SceneObject(oid, V.PEDESTRIAN, "pedestrian", tuple(parts), box, motion)


def make_pole(oid: int, x: float, y: float, rng: np.random.Generator, height: float, radius: float,
              lamp: bool = False, sign: bool = False) -> SceneObject:
    """A pole (STRUCTURE): a street lamp with a concrete foot and a lamp head, or a sign post with its plate."""
    yaw = rng.uniform(0, math.pi)
    parts = [Part(Cylinder(x, y, radius, 0.0, height, radius * 0.8), METAL if lamp else DARK_METAL)]
    half = radius
    if lamp:
        foot = radius * 2.2
        parts.append(Part(Cylinder(x, y, foot, 0.0, 0.45), CONCRETE))
        parts.append(Part(Box(x, y, yaw, 0.5, 0.22, height, height + 0.15), DARK_METAL))
        half = max(foot, 0.25)
    if sign:
        colour = _pick(rng, ((0.1, 0.3, 0.7), (0.8, 0.1, 0.1), (0.95, 0.95, 0.95)))
        parts.append(Part(Box(x, y, yaw, 0.6, 0.03, height - 0.6, height), Material(colour, "plain", 0.4, 0.9)))
        half = 0.3
    top = height + (0.15 if lamp else 0.0)
    return SceneObject(oid, V.STRUCTURE, "pole", tuple(parts), Box(x, y, yaw, 2 * half, 2 * half, 0.0, top))


def make_bollard(oid: int, x: float, y: float, rng: np.random.Generator) -> SceneObject:
    r, h = rng.uniform(0.07, 0.11), rng.uniform(0.75, 1.0)
    body = _pick(rng, (DARK_METAL, METAL, CONCRETE))
    parts = (Part(Cylinder(x, y, r, 0.0, h), body), Part(Cylinder(x, y, r * 1.05, h - 0.18, h - 0.08), HAZARD))
    return SceneObject(oid, V.LOW_OBSTACLE, "bollard", parts, Box(x, y, 0.0, 2.1 * r, 2.1 * r, 0.0, h))


def make_cone(oid: int, x: float, y: float, rng: np.random.Generator) -> SceneObject:
    h = rng.uniform(0.5, 0.75)
    base = 0.36 * h / 0.7 + 0.04
    yaw = rng.uniform(0, math.pi / 2)
    parts = (Part(Box(x, y, yaw, base, base, 0.0, 0.03), RUBBER),
             Part(Cylinder(x, y, base * 0.4, 0.03, h, 0.02), HAZARD))
    return SceneObject(oid, V.LOW_OBSTACLE, "cone", parts, Box(x, y, yaw, base, base, 0.0, h))


def make_trolley(oid: int, x: float, y: float, yaw: float, rng: np.random.Generator) -> SceneObject:
    """A shopping trolley: wheeled base, wire basket (metal boxes), handle."""
    at = _frame(x, y, yaw)
    wire = Material((0.70, 0.72, 0.75), "metal", 0.7, 0.5)
    parts = [Part(Box(x, y, yaw, 0.90, 0.54, 0.45, 0.95), wire),
             Part(Box(*at(0.05, 0), yaw, 0.7, 0.44, 0.12, 0.2), wire)]
    for lx in (0.35, -0.3):
        for ly in (0.2, -0.2):
            parts.append(Part(Cylinder(*at(lx, ly), 0.05, 0.0, 0.12), RUBBER))
    parts.append(Part(Box(*at(-0.42, 0), yaw, 0.05, 0.54, 0.95, 1.02), Material((0.8, 0.1, 0.1), "plain", 0.3, 0.6)))
    return SceneObject(oid, V.LOW_OBSTACLE, "trolley", tuple(parts), Box(x, y, yaw, 0.9, 0.54, 0.0, 1.02))


def make_bin(oid: int, x: float, y: float, yaw: float, rng: np.random.Generator) -> SceneObject:
    """A wheelie bin."""
    colour = _pick(rng, ((0.15, 0.35, 0.18), (0.25, 0.25, 0.27), (0.15, 0.25, 0.55), (0.45, 0.30, 0.15)))
    mat = Material(colour, "plain", 0.3, 0.9)
    parts = (Part(Box(x, y, yaw, 0.72, 0.58, 0.04, 1.0), mat), Part(Box(x, y, yaw, 0.76, 0.60, 1.0, 1.06), mat))
    return SceneObject(oid, V.LOW_OBSTACLE, "bin", parts, Box(x, y, yaw, 0.76, 0.60, 0.0, 1.06))


def make_box(oid: int, x: float, y: float, yaw: float, rng: np.random.Generator) -> SceneObject:
    """A cardboard box or crate left on the ground."""
    length, width, h = rng.uniform(0.3, 0.8), rng.uniform(0.3, 0.6), rng.uniform(0.25, 0.7)
    mat = _pick(rng, (Material((0.65, 0.50, 0.32), "cardboard", 0.0, 0.6),
                      Material((0.3, 0.3, 0.32), "plain", 0.2, 0.8)))
    return SceneObject(oid, V.LOW_OBSTACLE, "box", (Part(Box(x, y, yaw, length, width, 0.0, h), mat),),
                       Box(x, y, yaw, length, width, 0.0, h))


def make_toy(oid: int, x: float, y: float, yaw: float, rng: np.random.Generator) -> SceneObject:
    """A child's ball or ride-on toy in bright plastic."""
    colour = _pick(rng, ((0.9, 0.1, 0.1), (0.1, 0.4, 0.9), (0.95, 0.8, 0.1), (0.2, 0.7, 0.2)))
    mat = Material(colour, "plain", 0.5, 0.7)
    if rng.random() < 0.5:
        r = rng.uniform(0.1, 0.18)
        return SceneObject(oid, V.LOW_OBSTACLE, "toy", (Part(Sphere(x, y, r, r), mat),),
                           Box(x, y, 0.0, 2 * r, 2 * r, 0.0, 2 * r))
    at = _frame(x, y, yaw)
    parts = (Part(Box(x, y, yaw, 0.65, 0.32, 0.08, 0.3), mat), Part(Box(*at(-0.1, 0), yaw, 0.22, 0.26, 0.3, 0.42), mat),
             Part(Box(*at(0.25, 0), yaw, 0.06, 0.3, 0.3, 0.55), Material((0.1, 0.1, 0.1), "plain", 0.3, 0.7)))
    return SceneObject(oid, V.LOW_OBSTACLE, "toy", parts, Box(x, y, yaw, 0.65, 0.32, 0.0, 0.55))


def make_wall(oid: int, x0: float, y0: float, x1: float, y1: float, thickness: float, height: float,
              material: Material) -> SceneObject:
    """A wall (STRUCTURE) whose centre line runs from (x0, y0) to (x1, y1)."""
    yaw = math.atan2(y1 - y0, x1 - x0)
    box = Box((x0 + x1) / 2, (y0 + y1) / 2, yaw, math.hypot(x1 - x0, y1 - y0), thickness, 0.0, height)
    return SceneObject(oid, V.STRUCTURE, "wall", (Part(box, material),), box)


def make_curb(oid: int, x0: float, y0: float, x1: float, y1: float, height: float) -> SceneObject:
    """A kerb stone run (LOW_OBSTACLE), 0.15 m wide, centre line from (x0, y0) to (x1, y1)."""
    yaw = math.atan2(y1 - y0, x1 - x0)
    box = Box((x0 + x1) / 2, (y0 + y1) / 2, yaw, math.hypot(x1 - x0, y1 - y0), 0.15, 0.0, height)
    return SceneObject(oid, V.LOW_OBSTACLE, "curb", (Part(box, Material((0.70, 0.70, 0.68), "concrete", 0.05, 0.95)),),
                       box)


def make_pillar(oid: int, x: float, y: float, rng: np.random.Generator, height: float, round_: bool) -> SceneObject:
    """A garage pillar (STRUCTURE), square or round, with a hazard-painted foot."""
    if round_:
        r = rng.uniform(0.25, 0.32)
        parts = (Part(Cylinder(x, y, r, 0.0, height), CONCRETE), Part(Cylinder(x, y, r + 0.01, 0.0, 1.0), HAZARD))
        return SceneObject(oid, V.STRUCTURE, "pillar", parts, Box(x, y, 0.0, 2 * r + 0.02, 2 * r + 0.02, 0.0, height))
    s = rng.uniform(0.45, 0.6)
    parts = (Part(Box(x, y, 0.0, s, s, 0.0, height), CONCRETE),
             Part(Box(x, y, 0.0, s + 0.02, s + 0.02, 0.0, 1.0), HAZARD))
    return SceneObject(oid, V.STRUCTURE, "pillar", parts, Box(x, y, 0.0, s + 0.02, s + 0.02, 0.0, height))


def make_house_front(oid: int, x0: float, x1: float, y: float, door_x: float, door_w: float, height: float,
                     rng: np.random.Generator) -> SceneObject:
    """A house front wall along x at y (the wall occupies y..y+0.3) with a garage door centred on door_x."""
    t, door_h = 0.3, rng.uniform(2.1, 2.4)
    mat = _pick(rng, WALL_MATERIALS)
    door = Material(_pick(rng, ((0.9, 0.9, 0.88), (0.35, 0.35, 0.37), (0.5, 0.35, 0.2))), "metal", 0.5, 0.95)
    dl, dr = door_x - door_w / 2, door_x + door_w / 2
    yc = y + t / 2
    parts = (Part(Box((x0 + dl) / 2, yc, 0.0, dl - x0, t, 0.0, height), mat),
             Part(Box((dr + x1) / 2, yc, 0.0, x1 - dr, t, 0.0, height), mat),
             Part(Box(door_x, yc, 0.0, door_w, t, door_h, height), mat),
             Part(Box(door_x, y + 0.12, 0.0, door_w, 0.05, 0.0, door_h), door))
    return SceneObject(oid, V.STRUCTURE, "wall", parts, Box((x0 + x1) / 2, yc, 0.0, x1 - x0, t, 0.0, height))


# --- placement ------------------------------------------------------------------------------------------
