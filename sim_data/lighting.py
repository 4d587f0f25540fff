"""Light in the simulated world: the sun, sky and ambient of each condition, street and garage lamps baked into a
ground irradiance map, the ego's headlights and tail lights, and the sun-shadow occlusion maps of the ground."""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from sensors.rig import VehicleBody
from sim_data.textures import GroundImage
from sim_data.world import Condition, Scene, Sphere

F32 = np.float32
SHADOW_RES = 0.05  # metres per pixel of the per-frame ground shadow map
LIGHTMAP_RES = 0.10  # metres per pixel of the baked ground irradiance from the scene's lamps
LIGHT_K = 12.5  # Light.intensity 1 at 5 m above the ground gives irradiance 0.5 below it (an overcast day)


# --- lighting per condition ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Lighting:
    """Light in a frame. Irradiances are in units where the sun of a clear day gives about 2."""

    sun: np.ndarray | None  # world unit vector towards the sun; None when no direct sun reaches the scene
    sun_rgb: np.ndarray  # direct irradiance on a surface facing the sun
    sky_rgb: np.ndarray  # ambient irradiance from the sky (or the garage's indirect light) on an upward surface
    zenith: np.ndarray  # sky radiance straight up
    horizon: np.ndarray  # sky radiance at the horizon
    lamps_on: bool  # the scene's lights
    headlights: bool  # the ego's low beams and tail lights
    glare: float  # strength of lens glare from the sun (effects.sun_glare)
    wet: bool
    fog_distance: float  # metres at which 63 % of the ground's colour has faded into the horizon


def lighting_for(condition: Condition, scene: Scene) -> Lighting:
    """The lighting of `condition` in `scene` (a garage is lit by its lamps whatever the time of day)."""
    a = np.asarray
    el, az = condition.sun_elevation, condition.sun_azimuth
    sun = a([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)], F32)
    wet = bool(condition.rain)
    if scene.ceiling_height is not None:
        return Lighting(None, a([0, 0, 0], F32), a([0.05, 0.05, 0.05], F32), a([0, 0, 0], F32),
                        a([0, 0, 0], F32), True, condition.lighting in ("night", "dusk"), 0.0, False, 1e9)
    lighting = condition.lighting
    if lighting == "night":
        return Lighting(None, a([0, 0, 0], F32), a([0.004, 0.005, 0.008], F32), a([0.0015, 0.002, 0.004], F32),
                        a([0.010, 0.007, 0.005], F32), condition.street_lamps, True, 0.0, wet,
                        90.0 if wet else 250.0)
    if lighting == "dusk":
        sun_rgb, sky = a([0.45, 0.27, 0.15], F32), a([0.07, 0.075, 0.10], F32)
        zenith, horizon = a([0.05, 0.07, 0.14], F32), a([0.35, 0.20, 0.12], F32)
        lamps, head, glare = True, True, 0.35
    elif lighting == "glare":
        sun_rgb, sky = a([1.9, 1.65, 1.3], F32), a([0.40, 0.42, 0.48], F32)
        zenith, horizon = a([0.35, 0.5, 0.9], F32), a([1.2, 1.05, 0.9], F32)
        lamps, head, glare = False, False, 1.0
    else:
        sun_rgb, sky = a([2.0, 1.92, 1.8], F32), a([0.45, 0.52, 0.65], F32)
        zenith, horizon = a([0.35, 0.55, 1.1], F32), a([1.0, 1.1, 1.25], F32)
        lamps, head, glare = False, False, 0.25
    if el <= 0:
        sun_rgb = sun_rgb * 0
    if wet and lighting != "glare":
        # Overcast: the sun is behind clouds, the sky is a bright grey dome.
        grey = float(sky.mean() + 0.15 * sun_rgb.mean())
        sky = a([grey, grey, grey * 1.04], F32)
        zenith = horizon = a([1.0, 1.0, 1.04], F32) * F32(float(horizon.mean()) * 0.8)
        sun_rgb, glare = sun_rgb * F32(0.08), 0.0
    return Lighting(sun, sun_rgb, sky, zenith, horizon, lamps, head, glare, wet, 60.0 if wet else 180.0)


# --- light sources ---------------------------------------------------------------------------------------------

SPOT_COS_IN, SPOT_COS_OUT = math.cos(math.radians(40)), math.cos(math.radians(75))  # street lamps' soft cone


def spot(px, py, pz, nx, ny, nz, pos) -> np.ndarray:
    """Irradiance factor (colour and intensity aside) of a lamp at `pos` shining down in a soft cone, at points
    with normals (float32 in, float32 out)."""
    lx, ly, lz = float(pos[0]) - px, float(pos[1]) - py, float(pos[2]) - pz
    d2 = lx * lx
    d2 += ly * ly
    d2 += lz * lz
    inv = np.sqrt(d2)
    np.reciprocal(inv, out=inv)
    cn = nx * lx
    cn += ny * ly
    cn += nz * lz
    cn *= inv
    np.maximum(cn, 0.0, out=cn)
    cone = lz
    cone *= inv  # cosine of the angle off the downward axis
    cone -= SPOT_COS_OUT
    cone *= 1.0 / (SPOT_COS_IN - SPOT_COS_OUT)
    np.clip(cone, 0.0, 1.0, out=cone)
    cn *= cone
    cn /= np.maximum(d2, 0.25, out=d2)
    return cn


def low_beam(px, py, pz, nx, ny, nz, pos, forward: float) -> np.ndarray:
    """Irradiance factor of a dipped headlight (forward=+1) or tail light (-1). A low beam puts most of its
    light just below a sharp horizontal cut-off, little on the ground right in front, and almost none more
    than ~30° to the side."""
    lx, ly, lz = px - float(pos[0]), py - float(pos[1]), pz - float(pos[2])
    d2 = lx * lx + ly * ly + lz * lz
    inv = 1.0 / np.sqrt(d2)
    fx = forward * lx * inv
    cn = np.maximum(-(nx * lx + ny * ly + nz * lz) * inv, 0.0)
    ve = lz * inv
    if forward > 0:
        # Below the cut-off the intensity falls as |elevation|^-2.5, which keeps the lit ground nearly even
        # from 2 to 10 m; the spread is wide in the foreground and narrow in the distance.
        down = np.maximum(-ve, 1e-3)
        width = 0.4 + 1.5 * np.maximum(down - 0.05, 0.0)
        beam = np.exp(-(((ly * inv) / width) ** 4))
        beam *= np.clip((0.02 - ve) * 40.0, 0.0, 1.0) * np.minimum((0.05 / down) ** 2.5, 1.0)
    else:
        beam = np.exp(-(((ly * inv) * (1 / 0.8)) ** 2))
    return np.where(fx > 0.05, cn * beam / np.maximum(d2, 1.0), 0.0)


HEADLIGHT_I = 32.0  # each low beam (its hot spot is far brighter than a street lamp), in Light.intensity units
TAILLIGHT_I = 0.015


def ego_lamps(vehicle: VehicleBody) -> list[tuple[np.ndarray, float, np.ndarray]]:
    """(position, forward sign, colour x intensity) of the ego's headlights and tail lights."""
    y = vehicle.width / 2 - 0.2
    head = np.array([1.0, 0.95, 0.85]) * HEADLIGHT_I * LIGHT_K
    tail = np.array([1.0, 0.05, 0.03]) * TAILLIGHT_I * LIGHT_K
    return ([(np.array([vehicle.x_max, s * y, 0.65]), 1.0, head) for s in (1, -1)]
            + [(np.array([vehicle.x_min, s * y, 0.85]), -1.0, tail) for s in (1, -1)])


def bake_lightmap(scene: Scene, ground: GroundImage, res: float = LIGHTMAP_RES) -> tuple[np.ndarray, float, float]:
    """(h, w, 3) float32 irradiance on the ground from all of the scene's lamps (static, so baked once), with
    the world position of its pixel (0, 0)."""
    h0, w0 = ground.levels[0].shape[:2]
    w, h = math.ceil(w0 * ground.res / res), math.ceil(h0 * ground.res / res)
    out = np.zeros((h, w, 3), F32)
    x0, y0 = ground.x0, ground.y0
    reach = 25.0  # beyond this a lamp adds less than 1/20 of the light of its pool
    for li in scene.lights:
        c0, c1 = max(int((li.x - reach - x0) / res), 0), min(int((li.x + reach - x0) / res) + 1, w)
        r0, r1 = max(int((li.y - reach - y0) / res), 0), min(int((li.y + reach - y0) / res) + 1, h)
        if c1 <= c0 or r1 <= r0:
            continue
        yy, xx = np.mgrid[r0:r1, c0:c1].astype(F32)
        px, py = x0 + xx * res, y0 + yy * res
        e = spot(px, py, np.zeros_like(px), 0.0, 0.0, 1.0, (li.x, li.y, li.z))
        out[r0:r1, c0:c1] += e[..., None] * (np.asarray(li.rgb, F32) * F32(li.intensity * LIGHT_K))
    return out, x0, y0


def draw_occlusion(shapes: list, sun: np.ndarray | None, origin: tuple[float, float], w: int, h: int) -> np.ndarray:
    """(h, w, 2) uint8 ground occlusion of primitives (same frame as `sun` and `origin`, SHADOW_RES per pixel):
    channel 0 the sun shadow, channel 1 the contact shadow (soft darkening around footprints)."""
    sun_map = np.zeros((h, w), np.uint8)
    ao_map = np.zeros((h, w), np.uint8)
    lim_px = 3 * max(w, h)
    for sh in shapes:
        fp = (sh.footprint() - origin) / SHADOW_RES
        z0 = sh.z0 if not isinstance(sh, Sphere) else sh.z - sh.radius
        z1 = sh.z1 if not isinstance(sh, Sphere) else sh.z + sh.radius
        if z0 < 0.3:
            cv2.fillConvexPoly(ao_map, np.round(fp * 16).astype(np.int32), 255, cv2.LINE_AA, shift=4)
        if sun is not None and sun[2] > 0.02:
            # The shadow of a vertical prism is the hull of its footprint slid along the sun's rays by the
            # heights of its bottom and top (clipped: a very low sun casts shadows off the map).
            off = -np.asarray(sun[:2]) / sun[2] / SHADOW_RES
            lim = lim_px / max(float(np.max(np.abs(off))), 1e-9)
            pts = np.concatenate([fp + off * min(z0, lim), fp + off * min(z1, lim)])
            hull = cv2.convexHull(np.round(pts * 16).astype(np.int32))
            cv2.fillConvexPoly(sun_map, hull, 255, cv2.LINE_AA, shift=4)
    sun_map = cv2.GaussianBlur(sun_map, (0, 0), 1.2)
    ao_map = cv2.GaussianBlur(ao_map, (0, 0), 0.25 / SHADOW_RES)
    return np.dstack([sun_map, ao_map])
