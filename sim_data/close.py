"""An obstacle at stopping distance: drives that end with a bollard, cone, bin or box just short of the car's bumper,
the last level of a parking display. Every scene of scenes.py keeps the ego's drive EGO_CLEARANCE (0.35 m) clear of
objects, so without this nothing ever comes within 0.3 m of the car (the `test-close` and `train-close` presets)."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from sensors.geometry import Pose2D
from sensors.rig import VehicleBody
from sim_data.layout import OBJECT_GAP, any_overlap, corridor, ego_swept, rect
from sim_data.objects import make_bin, make_bollard, make_box, make_cone
from sim_data.world import EgoPath, Scene, SceneObject

# Gap between the bumper and the obstacle the drive ends at: inside the parking display's last level (0.3 m) even
# where a grid cell's centre lies up to a cell diagonal beyond the obstacle's edge; partly inside the ultrasonic
# sensors' 0.15 m minimum range, as the last centimetres of a parking manoeuvre are.
CLOSE_GAP_M = (0.08, 0.2)
_CLOSE_MAKERS = ("bollard", "box", "cone", "bin")


def add_close_obstacle(scene: Scene, vehicle: VehicleBody, rng: np.random.Generator) -> tuple[Scene, float | None]:
    """SCENE with one low obstacle CLOSE_GAP_M short of the ego's bumper where the drive ends: ahead of a car that
    ends driving forwards, behind one that ends reversing (the other end where the car drove through that spot),
    at either end of one that does not move; the way a driver stops a car just short of a bollard or a bin. A drive
    still moving at its end is first made to brake to a stop part of the way along (stop_short), so that the car
    stands at the obstacle for a while. The layout of every scene keeps the ego's drive EGO_CLEARANCE (0.35 m)
    clear of objects, so without this nothing ever comes within the display's last level. Static objects it would
    overlap are removed (it takes their place), and so are walkers whose walk passes within half a metre of it.
    Returns the scene and the gap in metres (None when no spot tried had room, the car having driven through each:
    the scene then has the stop but no obstacle)."""
    scene = replace(scene, ego=stop_short(scene.ego, rng))
    poses = np.array([(p.x, p.y, p.yaw) for p in scene.ego.poses])
    end = scene.ego.poses[-1]
    d = np.diff(poses[:, :2], axis=0)
    along = d[:, 0] * np.cos(poses[:-1, 2]) + d[:, 1] * np.sin(poses[:-1, 2])
    moving = along[np.abs(along) > 1e-4]
    # The end the car last drove towards; either end, in a random order, for a car that stands still.
    last = moving[-1] if moving.size else 0.0
    ends = [1, -1] if last > 0 else [-1, 1] if last < 0 else [1, -1] if rng.random() < 0.5 else [-1, 1]
    kind = _CLOSE_MAKERS[int(rng.integers(len(_CLOSE_MAKERS)))]
    sub = int(rng.integers(2**31))
    gap = float(rng.uniform(*CLOSE_GAP_M))
    swept = ego_swept(scene.ego, vehicle, CLOSE_GAP_M[0] - 0.02)  # no scrape on the way either
    next_id = max((o.id for o in scene.objects), default=0) + 1
    c, s = math.cos(end.yaw), math.sin(end.yaw)
    probe = _close_object(kind, next_id, 0.0, 0.0, end.yaw, np.random.default_rng(sub))
    # How far its parts reach along the car's axis (a cone's square base may stand turned).
    half = float(np.abs(np.concatenate([part.shape.footprint() for part in probe.parts]) @ np.array([c, s])).max())
    for side in ends:
        for lateral in (rng.uniform(-0.5, 0.5), 0.0):
            bumper = vehicle.x_max if side > 0 else vehicle.x_min
            lx, ly = bumper + side * (gap + half), lateral
            x, y = end.x + c * lx - s * ly, end.y + s * lx + c * ly
            obj = _close_object(kind, next_id, x, y, end.yaw, np.random.default_rng(sub))
            b = obj.box
            footprint = rect(b.x, b.y, b.yaw, b.length, b.width)
            if any_overlap(footprint, swept):
                continue  # the car drove through that spot
            keep = []
            for o in scene.objects:
                if o.motion is not None:  # a walker: its whole walk, widened by half a metre, must miss it
                    if not any_overlap(footprint, corridor(np.asarray(o.motion.waypoints, float), 0.5)):
                        keep.append(o)
                elif not any_overlap(footprint, rect(o.box.x, o.box.y, o.box.yaw, o.box.length + OBJECT_GAP,
                                                     o.box.width + OBJECT_GAP)[None]):
                    keep.append(o)
            return replace(scene, objects=(*keep, obj)), gap
    return scene, None


def stop_short(ego: EgoPath, rng: np.random.Generator, brake_m: float = 1.0) -> EgoPath:
    """EGO braked to a standstill at 50-75 % of its duration, along the same way: at its mean speed until BRAKE_M
    (at most half the way travelled) before the stop, then decelerating evenly, and standing there until the drive's
    end. A drive that does not move, or has stopped at its end already (a reverse into a bay), is returned as is."""
    p = np.array([(q.x, q.y) for q in ego.poses])
    t = np.asarray(ego.times, float)
    step = np.hypot(*np.diff(p, axis=0).T)
    s = np.concatenate([[0.0], np.cumsum(step)])
    if len(t) < 2 or s[-1] < 0.5 or step[-1] < 1e-6:
        return ego
    v0 = s[-1] / (t[-1] - t[0])  # the drive's mean speed
    # Cruising to stop - brake and braking over brake take (stop + brake) / v0: that is the time to stand still.
    reach = v0 * (t[-1] - t[0]) * rng.uniform(0.5, 0.75)
    stop = max(reach * 2 / 3, reach - brake_m)
    brake = min(brake_m, stop / 2)
    k = int(np.searchsorted(s, stop))  # poses before the stop, then the stop pose itself
    a, b = ego.poses[k - 1], ego.poses[k]
    f = (stop - s[k - 1]) / (s[k] - s[k - 1])
    dyaw = math.atan2(math.sin(b.yaw - a.yaw), math.cos(b.yaw - a.yaw))
    at_stop = Pose2D(float(a.x + f * (b.x - a.x)), float(a.y + f * (b.y - a.y)), float(a.yaw + f * dyaw))
    poses = [*ego.poses[:k], at_stop]
    along = np.append(s[:k], stop)
    # Time at distance x: x / v0 while cruising; in the braking zone v(x) = v0 sqrt((stop - x) / brake).
    cruise = stop - brake
    times = np.where(along <= cruise, along / v0,
                     cruise / v0 + 2 * brake / v0 * (1 - np.sqrt(np.clip(stop - along, 0, None) / brake)))
    times = t[0] + times
    if times[-1] < t[-1]:
        poses.append(poses[-1])
        times = np.append(times, t[-1])
    return EgoPath(tuple(float(x) for x in times), tuple(poses))


def _close_object(kind: str, oid: int, x: float, y: float, yaw: float, rng: np.random.Generator) -> SceneObject:
    if kind == "bollard":
        return make_bollard(oid, x, y, rng)
    if kind == "cone":
        return make_cone(oid, x, y, rng)
    if kind == "bin":
        return make_bin(oid, x, y, yaw, rng)
    return make_box(oid, x, y, yaw, rng)

