"""The simulator's fisheye camera renderer: per-pixel ray casting of the scene (ground, ceiling, sky, boxes,
cylinders/frusta/cones, spheres, the ego body), then shading and lighting per condition.

Everything per pixel is computed in the vehicle frame: the scene is moved into it once per frame, so pixel rays,
ground hit points and the ego body stay per-camera constants. The tile-culled ray/primitive intersections live in
sim_data.raycast, lights and shadow maps in sim_data.lighting, image-space effects in sim_data.effects.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, replace

import cv2
import numpy as np

from sensors.calibration import FisheyeCamera
from sensors.errors import ConfigError
from sensors.geometry import Pose2D
from sensors.rig import VehicleBody
from sim_data import effects
from sim_data.lighting import (
    LIGHT_K,
    LIGHTMAP_RES,
    SHADOW_RES,
    Lighting,
    bake_lightmap,
    draw_occlusion,
    ego_lamps,
    lighting_for,
    low_beam,
    spot,
)
from sim_data.raycast import (
    RayBundle,
    TileGrid,
    cast_nearest,
    cull_geometry,
    geometry_to_vehicle,
    hit_distance,
    primitive_kind,
    surface_at,
    surfaces_at,
    to_vehicle,
)
from sim_data.textures import SURFACE_TEXTURES, bake_ceiling, bake_ground, surface_albedos
from sim_data.world import Box, Condition, Cylinder, Material, Part, Scene

log = logging.getLogger(__name__)

F32 = np.float32
INF = F32(np.inf)
SHADOW_HALF = 24.0  # the shadow map covers +-this many metres around the car
MAX_OBJECT_LAMPS = 4  # lamps nearest the car that light objects per pixel (all of them light the ground)
SUN_DISC_COS = math.cos(math.radians(0.6))  # the sun is drawn a little larger than its 0.27° radius
SUN_DISC_RADIANCE = 40.0  # times the direct irradiance: saturates and blooms
LAMP_RADIANCE = 25.0  # radiance of a lit lamp panel per unit intensity

# Shading parameters per surface texture: (Blinn-Phong exponent, Fresnel reflectance at normal incidence).
_GLOSS = {"car_paint": (80.0, 0.05), "glass": (300.0, 0.08), "metal": (30.0, 0.35)}


@dataclass
class RenderedImage:
    """One rendered camera image and its per-pixel ground truth."""

    rgb: np.ndarray  # (H, W, 3) uint8, final image with condition effects, vignetting and noise
    object_id: np.ndarray  # (H, W) int32: SceneObject.id seen, 0 ground/sky/ceiling, -1 ego body, -2 outside
    depth: np.ndarray  # (H, W) float32 ray distance in metres (inf for sky and outside the image circle)


OBJ_GROUND, OBJ_EGO, OBJ_OUTSIDE = 0, -1, -2
RGB_ITEM = np.dtype((np.void, 12))  # an RGB float32 triple as one item


# --- geometry ----------------------------------------------------------------------------------------------------

def ego_parts(vehicle: VehicleBody) -> tuple[Part, ...]:
    """The ego car as its own cameras see it: lower body, glass cabin and four wheels, in the vehicle frame."""
    paint = Material((0.10, 0.14, 0.22), "car_paint", 0.6)
    glass = Material((0.08, 0.09, 0.10), "glass", 0.9)
    tyre = Material((0.05, 0.05, 0.05), "rubber", 0.05)
    cx = (vehicle.x_min + vehicle.x_max) / 2
    w = vehicle.width
    body = Box(cx, 0.0, 0.0, vehicle.length, w, 0.18, 0.95)
    hood = min(1.3, 0.4 * vehicle.length)
    cab_x0, cab_x1 = vehicle.x_min + 0.45, vehicle.x_max - hood
    cabin = Box((cab_x0 + cab_x1) / 2, 0.0, 0.0, cab_x1 - cab_x0, w - 0.16, 0.95, vehicle.height)
    parts = [Part(body, paint), Part(cabin, glass)]
    for x in (0.0, vehicle.wheelbase):
        for side in (1, -1):
            parts.append(Part(Box(x, side * (w / 2 - 0.13), 0.0, 0.64, 0.22, 0.0, 0.64), tyre))
    return tuple(parts)


# --- per-camera constants --------------------------------------------------------------------------------------

def _sample(img: np.ndarray, mx: np.ndarray, my: np.ndarray, border=cv2.BORDER_REFLECT_101,
            value: float = 0.0) -> np.ndarray:
    """Bilinear samples (n, C) of an image at n continuous pixel positions (cv2.remap needs 2-D maps with
    sides below 32767, so the points are laid out in rows of 1024)."""
    n = mx.size
    rows = max((n + 1023) // 1024, 1)
    mxp = np.zeros(rows * 1024, F32)
    myp = np.zeros(rows * 1024, F32)
    mxp[:n], myp[:n] = mx, my
    out = cv2.remap(img, mxp.reshape(rows, 1024), myp.reshape(rows, 1024), cv2.INTER_LINEAR, borderMode=border,
                    borderValue=(value,) * 4)
    return out.reshape(rows * 1024, -1)[:n]


class _CameraCache:
    """Everything about one camera that does not change between frames of a drive."""

    def __init__(self, cam: FisheyeCamera, renderer: FisheyeRenderer):
        self.cam = cam
        self.lens = effects.Lens(cam)
        self.tiles = TileGrid(self.lens.circle, cam.pixel_rays())
        self.pix = self.tiles.pix  # raster index of each ray, rays grouped by tile
        rays = self.tiles.rays
        self.o = cam.origin.astype(float)
        self.rays = RayBundle(self.o, rays)
        self._init_background(renderer, rays)
        self.tile_far = self.bg_depth.reshape(self.tiles.size, -1).max(axis=1)

    def _init_background(self, rdr: FisheyeRenderer, rays: np.ndarray) -> None:
        r = self.rays
        n = r.dx.size
        oz = self.o[2]
        scene = rdr.scene
        with np.errstate(divide="ignore", invalid="ignore"):
            t_ground = np.where(r.dz < 0, -oz * r.idz, np.inf).astype(F32)
            if scene.ceiling_height is not None:
                if scene.ceiling_height <= oz:
                    raise ConfigError(f"scene ceiling_height {scene.ceiling_height} m is below camera "
                                      f"{self.cam.name} at {oz:.2f} m; raise the garage ceiling")
                # Indoors every ray ends somewhere: a level one meets the ceiling very far away.
                t_ceil = np.where(r.dz >= 0, (scene.ceiling_height - oz) / np.maximum(r.dz, 1e-7),
                                  np.inf).astype(F32)
            else:
                t_ceil = np.full(n, np.inf, F32)
        depth = np.minimum(t_ground, t_ceil)
        depth[~self.tiles.valid] = 0.0  # empty slots: never farther than a hit, never sky
        part = np.full(n, -1, np.int32)
        nrm = np.zeros((5, n), F32)
        for k, p in enumerate(rdr.ego_parts):
            t = hit_distance(p.shape, r)
            win = np.flatnonzero(t < depth)
            depth[win] = t[win]
            part[win] = k
            nrm[:, win] = surface_at(p.shape, r.take(win), t[win])
        self.bg_depth, self.bg_part = depth, part
        self.bg_oid = np.where(part >= 0, OBJ_EGO, OBJ_GROUND).astype(np.int32)
        self.bg_surface = nrm
        self.ego = np.flatnonzero(part >= 0)
        self.ego_surfaces = rdr._surfaces(self, self.ego, depth, part, nrm[:, self.ego], lit_by_headlights=False)
        self.ego_surfaces.max_lamps = 2  # the ego's own paint needs only the nearest lamps
        self.memo: dict[tuple, np.ndarray] = {}  # shading terms that only change with the lighting
        self.sky_dirs: np.ndarray | None = None  # (n, 3) rays of the sky pixels, once a sun needs them
        free = part < 0
        self.sky = np.flatnonzero(free & ~np.isfinite(depth))
        self.ceiling = np.flatnonzero(free & (t_ceil <= depth) & np.isfinite(t_ceil))
        ground = np.flatnonzero(free & (t_ground <= depth) & np.isfinite(t_ground))
        # Ground pixels by texture detail level, so each mip level is sampled over a contiguous slice.
        t = t_ground[ground]
        pix_angle = 1.0 / self.cam.drho(np.array(0.0))
        footprint = t * pix_angle / np.sqrt(np.maximum(-r.dz[ground], 1e-4))
        level = np.clip(np.floor(np.log2(np.maximum(footprint / rdr.ground.res, 1e-6)) + 0.5), 0,
                        len(rdr.ground.levels) - 1).astype(np.int32)
        order = np.argsort(level, kind="stable")
        self.ground = ground[order]
        self.ground_levels = np.searchsorted(level[order], np.arange(len(rdr.ground.levels) + 1))
        g = self.ground
        t = t_ground[g]
        self.gx, self.gy = r.o[0] + t * r.dx[g], r.o[1] + t * r.dy[g]  # float32
        self.g_t = t
        self.g_dz = r.dz[g]
        # Schlick Fresnel for a water film (n = 1.33) seen at this pixel's grazing angle.
        cos_i = -self.g_dz
        self.g_fresnel = (0.02 + 0.98 * (1 - cos_i) ** 5).astype(F32)
        # The per-frame shadow map is fixed to the car, so where each ground pixel reads it is constant too.
        cxb, cyb = rdr.vehicle.centre
        self.g_shadow_px = ((self.gx - (cxb - SHADOW_HALF)) / SHADOW_RES - 0.5,
                            (self.gy - (cyb - SHADOW_HALF)) / SHADOW_RES - 0.5)
        zero = np.zeros_like(self.gx)
        head = np.zeros((g.size, 3), F32)
        for pos, fwd, rgb in ego_lamps(rdr.vehicle):
            e = low_beam(self.gx, self.gy, zero, zero, zero, zero + 1.0, pos, fwd)
            head += e[:, None].astype(F32) * rgb.astype(F32)
        self.g_head = head
        self.pix_sky, self.pix_ceiling = self.pix[self.sky], self.pix[self.ceiling]
        self.pix_ground, self.pix_ego = self.pix[self.ground], self.pix[self.ego]
        c = self.ceiling
        tc = t_ceil[c]
        self.cx_, self.cy_ = self.o[0] + tc * r.dx[c], self.o[1] + tc * r.dy[c]


# --- the renderer ---------------------------------------------------------------------------------------------

class FisheyeRenderer:
    """Renders a scene through fisheye cameras on the ego car; build one per drive (scene), call per frame."""

    def __init__(self, cameras: dict[str, FisheyeCamera], vehicle: VehicleBody, scene: Scene):
        self.vehicle = vehicle
        self.scene = scene
        self.ego_parts = ego_parts(vehicle)
        self._check_scene(scene)
        mats: list[Material] = [p.material for p in self.ego_parts]
        mats += [p.material for o in scene.objects for p in o.parts]
        self.part_rgb = np.array([m.rgb for m in mats], F32).reshape(-1, 3)
        self.part_kind = np.array([SURFACE_TEXTURES.index(m.texture) for m in mats], np.int32)
        self.part_spec = np.array([m.specular for m in mats], F32)
        self.ground = bake_ground(scene)
        self.ceiling = bake_ceiling(scene) if scene.ceiling_height is not None else None
        self._lightmap: tuple[np.ndarray, float, float] | None = None
        self._static_occlusion: dict = {}
        self._geom = np.array([cull_geometry(p.shape) for o in scene.objects for p in o.parts]).reshape(-1, 11)
        shapes = [p.shape for o in scene.objects for p in o.parts]
        self._prim_kind = np.array([primitive_kind(sh) for sh in shapes], np.int32)
        self._radii = np.array([(sh.radius, sh.r_top) if isinstance(sh, Cylinder) else (0.0, 0.0) for sh in shapes],
                               F32).reshape(-1, 2)
        # Object id per part index (ego parts first), and per background part index -1.
        self._owner = np.array([OBJ_EGO] * len(self.ego_parts) + [o.id for o in scene.objects for _ in o.parts]
                               + [OBJ_GROUND], np.int32)
        self._bounce: np.ndarray | None = None
        self._part_moves = [o.motion is not None for o in scene.objects for _ in o.parts]
        self.cameras = dict(cameras)
        self._cams = {name: _CameraCache(cam, self) for name, cam in self.cameras.items()}
        log.debug("renderer ready: %d cameras, %d parts, ground %s", len(self._cams), len(mats),
                  self.ground.levels[0].shape)

    @staticmethod
    def _check_scene(scene: Scene) -> None:
        ids = [o.id for o in scene.objects]
        if len(set(ids)) != len(ids) or any(i <= 0 for i in ids):
            raise ConfigError(f"scene (seed {scene.seed}): object ids must be unique and positive (0 and -1 mean "
                              f"ground and ego in object_id images), got {sorted(ids)}")
        for o in scene.objects:
            for i, p in enumerate(o.parts):
                where = f"scene (seed {scene.seed}) object {o.id} ({o.kind}) part {i}"
                if p.material.texture not in SURFACE_TEXTURES:
                    raise ConfigError(f"{where}: unknown texture {p.material.texture!r}; use one of "
                                      f"{', '.join(SURFACE_TEXTURES)}")
                sh = p.shape
                dims = ((sh.length, sh.width, sh.z1 - sh.z0) if isinstance(sh, Box) else
                        (max(sh.radius, sh.r_top), sh.z1 - sh.z0) if isinstance(sh, Cylinder) else (sh.radius,))
                if isinstance(sh, Cylinder) and (sh.radius < 0 or sh.r_top < 0):
                    dims = (-1.0,)
                if not all(math.isfinite(d) and d > 0 for d in dims):
                    raise ConfigError(f"{where}: {type(sh).__name__} has a non-positive or non-finite size {sh}")

    # --- per frame ----------------------------------------------------------------------------------------
    def render(self, t: float, ego: Pose2D, condition: Condition, rng: np.random.Generator,
               cameras: Iterable[str] | None = None) -> dict[str, RenderedImage]:
        """Render the cameras (all by default) at time t with the ego at `ego` (world pose)."""
        names = list(self._cams) if cameras is None else list(cameras)
        for n in names:
            if n not in self._cams:
                raise ConfigError(f"render at t={t:.3f} s: no camera {n!r}; the renderer has {', '.join(self._cams)}")
        for n, cov in condition.soiling.items():
            if n not in self._cams or not (0.0 <= cov <= 1.0):
                raise ConfigError(f"condition soiling at t={t:.3f} s: {n!r}: {cov} must name a camera of the rig "
                                  f"({', '.join(self._cams)}) with a coverage in 0..1")
        light = lighting_for(condition, self.scene)
        if light.lamps_on and self.scene.lights:
            if self._lightmap is None:
                self._lightmap = bake_lightmap(self.scene, self.ground)
            if self.scene.ceiling_height is not None:
                # Indoors the lamps' light comes back off the floor, walls and ceiling as soft ambient light.
                if self._bounce is None:
                    lm = self._lightmap[0]
                    lit = lm.mean(axis=2) > 0.01
                    self._bounce = (0.25 * lm[lit].mean(axis=0) if lit.any() else np.zeros(3)).astype(F32)
                light = replace(light, sky_rgb=(light.sky_rgb + self._bounce).astype(F32))
        frame = self._frame(t, ego, light)
        return {n: self._render_camera(self._cams[n], frame, light, condition, t, rng) for n in names}

    def _frame(self, t: float, ego: Pose2D, light: Lighting) -> dict:
        """Scene state in the vehicle frame, shared by all cameras of a frame."""
        c, s = math.cos(ego.yaw), math.sin(ego.yaw)
        shapes = []
        geom = self._geom
        k = 0
        for o in self.scene.objects_at(t):
            for p in o.parts:
                shapes.append(to_vehicle(p.shape, c, s, ego.x, ego.y, ego.yaw))
                # Culling geometry of static parts (world frame) is computed once per drive.
                if self._part_moves[k]:
                    geom[k] = cull_geometry(p.shape)
                k += 1
        geom = geometry_to_vehicle(geom, ego.x, ego.y, ego.yaw)
        sun_v = None
        if light.sun is not None and light.sun_rgb.max() > 0:
            sx, sy, sz = (float(v) for v in light.sun)
            sun_v = np.array([c * sx + s * sy, -s * sx + c * sy, sz])
        lamps = []
        all_lamps = np.zeros((0, 3))
        if light.lamps_on and self.scene.lights:
            world_lamps = np.array([[li.x, li.y, li.z] for li in self.scene.lights], float)
            all_lamps = world_lamps.copy()
            all_lamps[:, :2] = (world_lamps[:, :2] - [ego.x, ego.y]) @ np.array([[c, -s], [s, c]])
            cxb = np.array(self.vehicle.centre)
            for li in self.scene.lights:
                dx, dy = li.x - ego.x, li.y - ego.y
                pos = np.array([c * dx + s * dy, -s * dx + c * dy, li.z])
                lamps.append((float(np.hypot(*(pos[:2] - cxb))), pos, np.asarray(li.rgb, F32) * li.intensity))
            lamps = sorted(lamps, key=lambda x: x[0])[:MAX_OBJECT_LAMPS]
        return {"ego": ego, "cs": (c, s), "shapes": shapes, "geom": geom, "sun": sun_v, "lamps": lamps,
                "all_lamps": all_lamps,
                "shadow": self._shadow_map(shapes, sun_v),
                "static_shadow": self._static_shadows(None if sun_v is None else light.sun)}

    def _shadow_map(self, shapes: list, sun_v: np.ndarray | None) -> np.ndarray:
        """(n, n, 2) uint8 ground occlusion around the car by the ego and the moving objects (static ones are
        in the world-fixed map): channel 0 sun shadow, channel 1 contact shadow."""
        n = int(2 * SHADOW_HALF / SHADOW_RES)
        cxb, cyb = self.vehicle.centre
        moving = [sh for sh, m in zip(shapes, self._part_moves, strict=True) if m]
        return draw_occlusion([p.shape for p in self.ego_parts] + moving, sun_v,
                               (cxb - SHADOW_HALF, cyb - SHADOW_HALF), n, n)

    def _static_shadows(self, sun: np.ndarray | None) -> np.ndarray:
        """The world-fixed occlusion map of the static objects for a sun direction (drawn once per drive and
        sun), aligned with the ground image at SHADOW_RES."""
        key = None if sun is None else tuple(np.round(sun, 6))
        if key not in self._static_occlusion:
            g = self.ground
            h0, w0 = g.levels[0].shape[:2]
            w, h = math.ceil(w0 * g.res / SHADOW_RES), math.ceil(h0 * g.res / SHADOW_RES)
            static = [p.shape for o in self.scene.objects if o.motion is None for p in o.parts]
            self._static_occlusion = {key: draw_occlusion(static, sun, (g.x0, g.y0), w, h)}
        return self._static_occlusion[key]

    # --- one camera -----------------------------------------------------------------------------------------
    def _render_camera(self, cc: _CameraCache, frame: dict, light: Lighting, condition: Condition, t: float,
                       rng: np.random.Generator) -> RenderedImage:
        cam = cc.cam
        H, W = cam.height, cam.width
        img = np.zeros((H, W, 3), F32)
        flat = img.reshape(-1).view(RGB_ITEM)  # one 12-byte item per pixel: scatters run several times faster

        def paint(pix: np.ndarray, rgb: np.ndarray) -> None:
            np.put(flat, pix, np.ascontiguousarray(rgb, F32).reshape(-1).view(RGB_ITEM))

        with np.errstate(all="ignore"):
            depth = cc.bg_depth.copy()
            part = cc.bg_part.copy()
            n_ego = len(self.ego_parts)
            cast_nearest(cc.tiles, cc.rays, frame["shapes"], frame["geom"], depth, part, n_ego, cc.tile_far.copy())
            # Painter's order over fixed pixel sets, then this frame's objects on top of them.
            if self.ceiling is not None:
                paint(cc.pix_ceiling, self._shade_ceiling(cc, frame, light))
            else:
                paint(cc.pix_sky, self._shade_sky(cc, frame, light))
            paint(cc.pix_ground, self._shade_ground(cc, frame, light))
            if cc.ego.size:
                paint(cc.pix_ego, self._shade_ego(cc, frame, light))
            hit = np.flatnonzero(part >= n_ego)
            if hit.size:
                nrm = surfaces_at(self._prim_kind, frame["geom"], self._radii, part[hit] - n_ego, cc.rays.take(hit),
                                  depth[hit])
                objs = self._surfaces(cc, hit, depth, part, nrm, lit_by_headlights=True)
                out = self._shade_surfaces(objs, frame, light)
                paint(cc.pix[hit], out)
        oid = self._owner[part]
        # Empty slots write to one element past the image.
        object_id = np.full(H * W + 1, OBJ_OUTSIDE, np.int32)
        np.put(object_id, cc.pix, oid)
        object_id = object_id[:-1]
        depth_img = np.full(H * W + 1, np.inf, F32)
        np.put(depth_img, cc.pix, depth)
        depth_img = depth_img[:-1].reshape(H, W)
        gain = self._apply_effects(img, cc, depth_img, frame, light, condition, t, rng)
        return RenderedImage(effects.to_display(img, cc.lens, gain), object_id.reshape(H, W), depth_img)

    def _apply_effects(self, img, cc, depth_img, frame, light, condition, t, rng) -> float:
        """Lens, weather and sensor effects on the linear image, in place; returns the exposure gain."""
        lens = cc.lens
        cam = cc.cam
        sun = frame["sun"]
        if sun is not None and light.glare > 0:
            sun_cam = cam.extrinsic.rotation.T @ sun
            visible = 1.0
            uv, ok = cam.project_camera(sun_cam[None] * 1e4)
            if ok[0]:
                # Objects in front of the sun hide its disc and with it the bloom and ghosts.
                u, v = round(uv[0, 0]), round(uv[0, 1])
                win = depth_img[max(v - 2, 0):v + 3, max(u - 2, 0):u + 3]
                visible = float(np.isinf(win).mean()) if win.size else 1.0
            effects.sun_glare(img, lens, sun_cam, light.sun_rgb, light.glare, visible)
        if light.lamps_on and self.scene.lights:
            self._lamp_glows(img, cc, depth_img, frame)
        if condition.rain:
            effects.rain_on_lens(img, lens, effects.stable_seed(self.scene.seed, cam.name, "rain"), t, rng)
        cov = condition.soiling.get(cam.name, 0.0)
        if cov > 0:
            mask = effects.soiling_mask(lens, cov, effects.stable_seed(self.scene.seed, cam.name, "soiling"))
            effects.apply_soiling(img, lens, mask)
        gain = effects.auto_exposure(img, lens)
        effects.apply_lens(img, lens)
        effects.sensor_noise(img, lens, gain, rng)
        return gain

    def _lamp_glows(self, img: np.ndarray, cc: _CameraCache, depth_img: np.ndarray, frame: dict) -> None:
        """Lamps the camera can see (nothing nearer at their pixel) glow; at night they are the brightest
        things in the image."""
        pos = frame["all_lamps"]
        uv, ok = cc.cam.project(pos)
        dist = np.linalg.norm(pos - cc.o, axis=1)
        for i in np.flatnonzero(ok):
            u, v = int(uv[i, 0] + 0.5), int(uv[i, 1] + 0.5)
            if depth_img[min(v, depth_img.shape[0] - 1), min(u, depth_img.shape[1] - 1)] < dist[i] - 0.5:
                continue
            li = self.scene.lights[i]
            effects.lamp_glows(img, cc.lens, uv[i:i + 1], (np.asarray(li.rgb, F32) * F32(3.0 * li.intensity))[None])

    # --- shading: background ------------------------------------------------------------------------------
    @staticmethod
    def _sky_weight(dz: np.ndarray) -> np.ndarray:
        """How much of the zenith colour (against the horizon's) the sky has at ray elevation sine dz."""
        e = 1.0 - np.clip(dz, 0.0, 1.0)
        w = e * e
        w *= e
        np.subtract(1.0, w, out=w)
        return w

    @classmethod
    def _sky_colour(cls, dz: np.ndarray, light: Lighting) -> np.ndarray:
        return light.horizon + cls._sky_weight(dz)[:, None] * (light.zenith - light.horizon)

    def _shade_sky(self, cc: _CameraCache, frame: dict, light: Lighting) -> np.ndarray:
        key = ("sky", light.zenith.tobytes(), light.horizon.tobytes())
        if key not in cc.memo:
            cc.memo[key] = self._sky_colour(cc.rays.dz[cc.sky], light)
        out = cc.memo[key].copy()
        sun = frame["sun"]
        if sun is not None:
            if cc.sky_dirs is None:
                cc.sky_dirs = np.ascontiguousarray(cc.tiles.rays[cc.sky])
            cosang = cc.sky_dirs @ sun.astype(F32)
            cosang -= F32(1.0)
            glow = 0.25 * np.exp(80.0 * cosang) + 0.06 * np.exp(6.0 * cosang)
            if light.glare > 0:  # behind an overcast sky only the brighter glow shows where the sun is
                glow[cosang > SUN_DISC_COS - 1.0] += SUN_DISC_RADIANCE
            out += glow[:, None] * light.sun_rgb
        return out

    def _world(self, frame: dict, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        c, s = frame["cs"]
        ego = frame["ego"]
        return c * x - s * y + ego.x, s * x + c * y + ego.y

    def _shade_ground(self, cc: _CameraCache, frame: dict, light: Lighting) -> np.ndarray:
        n = cc.ground.size
        wx, wy = self._world(frame, cc.gx, cc.gy)
        tex = np.empty((n, 4), np.uint8)
        for level in range(len(self.ground.levels)):
            a, b = cc.ground_levels[level], cc.ground_levels[level + 1]
            if b > a:
                mx, my = self.ground.pixel_of(wx[a:b], wy[a:b], level)
                tex[a:b] = _sample(self.ground.levels[level], mx, my)
        occl = _sample(frame["shadow"], *cc.g_shadow_px, border=cv2.BORDER_CONSTANT)
        static = _sample(frame["static_shadow"], (wx - self.ground.x0) / SHADOW_RES - 0.5,
                         (wy - self.ground.y0) / SHADOW_RES - 0.5, border=cv2.BORDER_CONSTANT)
        np.maximum(occl, static, out=occl)
        ao = F32(1.0) - F32(0.6 / 255) * occl[:, 1]
        sun = frame["sun"]
        sun_w = None
        if sun is not None:
            sun_w = F32(1.0) - F32(1 / 255) * occl[:, 0]
            sun_w *= F32(max(sun[2], 0.0))
        lamps = None
        if frame["lamps"] and self._lightmap is not None:
            lm, x0, y0 = self._lightmap
            lamps = _sample(lm, (wx - x0) / LIGHTMAP_RES - 0.5, (wy - y0) / LIGHTMAP_RES - 0.5,
                            border=cv2.BORDER_CONSTANT)
        # Albedo is 8-bit; wet ground is darker, most of all in puddles; haze fades the far ground.
        scale = np.full(n, F32(1 / 255))
        wet = None
        if light.wet:
            puddle = tex[:, 3].astype(F32) * F32(1 / 255)
            scale *= F32(0.55) - F32(0.3) * puddle
            wet = self._wet_reflections(cc, frame, light, puddle)
        fog = None
        if self.ceiling is None:
            key = ("fog", light.fog_distance)
            if key not in cc.memo:
                cc.memo[key] = np.exp(-cc.g_t / F32(light.fog_distance)).astype(F32)  # what is left after the haze
            fog = cc.memo[key]
            scale *= fog
        # Per colour channel: every term is a weight per pixel times a colour.
        out = np.empty((n, 3), F32)
        for c in range(3):
            acc = ao * light.sky_rgb[c]
            if sun_w is not None:
                acc += sun_w * light.sun_rgb[c]
            if lamps is not None:
                acc += lamps[:, c]
            if light.headlights:
                acc += cc.g_head[:, c]
            acc *= tex[:, c]
            acc *= scale
            if wet is not None:
                acc += wet[:, c] * fog if fog is not None else wet[:, c]
            if fog is not None:
                acc += (F32(1.0) - fog) * light.horizon[c]
            out[:, c] = acc
        return out

    def _wet_reflections(self, cc: _CameraCache, frame: dict, light: Lighting, puddle: np.ndarray) -> np.ndarray:
        """A water film mirrors the sky and the lights: Fresnel-weighted, strongest in puddles."""
        g = cc.ground
        r = cc.rays
        dx, dy, dz = r.dx[g], r.dy[g], r.dz[g]
        weight = np.minimum(cc.g_fresnel * (0.6 + 2.0 * puddle) + 0.25 * puddle, 1.0)
        out = weight[:, None] * self._sky_colour(-dz, light)
        sun = frame["sun"]
        if sun is not None:
            # Glint: the half vector of the view and sun directions against the up normal.
            ld = sun[0] * dx + sun[1] * dy + sun[2] * dz
            hz = (sun[2] - dz) / np.sqrt(np.maximum(2.0 - 2.0 * ld, 1e-6))
            out += (weight * 4.0 * np.exp(200.0 * (hz - 1.0)))[:, None] * light.sun_rgb
        for _, pos, rgb in frame["lamps"][:4]:
            # The mirror image of a lamp below the ground: a soft spot where the ray points at it.
            m = np.array([pos[0], pos[1], -pos[2]]) - cc.o
            m /= np.linalg.norm(m)
            cosang = m[0] * dx + m[1] * dy + m[2] * dz
            out += (weight * 3.0 * np.exp(400.0 * (cosang - 1.0)))[:, None] * rgb
        return out

    def _shade_ceiling(self, cc: _CameraCache, frame: dict, light: Lighting) -> np.ndarray:
        wx, wy = self._world(frame, cc.cx_, cc.cy_)
        ceil = self.ceiling
        mx, my = ceil.pixel_of(wx, wy, 0)
        tex = _sample(ceil.levels[0], mx, my).astype(F32) * F32(1 / 255)
        lamp_rgb = np.array([1.0, 0.97, 0.9], F32)
        # Indirect light from the lit floor and walls is all that reaches the ceiling between the lamps.
        out = tex[:, :3] * (light.sky_rgb * F32(3.0))
        out += tex[:, 3:4] * (F32(LAMP_RADIANCE) * lamp_rgb)
        return out

    # --- shading: surfaces --------------------------------------------------------------------------------
    def _surfaces(self, cc: _CameraCache, idx: np.ndarray, depth: np.ndarray, part: np.ndarray, surf: np.ndarray,
                  lit_by_headlights: bool) -> _Surfaces:
        """The hit points of rays `idx` with their textured albedo and material parameters; surf (5, len(idx)):
        their normals and texture coordinates."""
        r = cc.rays
        t = depth[idx]
        dx, dy, dz = r.dx[idx], r.dy[idx], r.dz[idx]
        p = (r.o[0] + t * dx, r.o[1] + t * dy, r.o[2] + t * dz)
        nx, ny, nz, ts, tz = surf
        k = part[idx]
        rgb = self.part_rgb[k]
        kind = self.part_kind[k]
        albedo = surface_albedos(kind, rgb, ts, tz)
        # Contact darkening: surfaces near the ground see less of the sky.
        ao = np.clip(p[2], F32(0.0), F32(0.5))
        ao *= F32(0.45 / 0.5)
        ao += F32(0.55)
        spec = self.part_spec[k]
        gl = np.flatnonzero(spec > 0)
        expo = np.full(gl.size, 20.0, F32)
        f0 = np.full(gl.size, 0.02, F32)
        for name, (e, f) in _GLOSS.items():
            m = kind[gl] == SURFACE_TEXTURES.index(name)
            expo[m], f0[m] = e, f
        gd = (dx[gl], dy[gl], dz[gl])
        gn = (nx[gl], ny[gl], nz[gl])
        return _Surfaces((dx, dy, dz), p, (nx, ny, nz), albedo, ao, gl, spec[gl], expo, f0, gd, gn, lit_by_headlights)

    def _shade_surfaces(self, S: _Surfaces, frame: dict, light: Lighting, static: bool = True,
                        dynamic: bool = True, out: np.ndarray | None = None) -> np.ndarray:
        """Radiance (n, 3) of hit points, added to `out` when given. `static`: the terms that change only with
        the lighting (hemisphere ambient, the Fresnel reflection of the sky); `dynamic`: those that move with
        the ego (sun, lamps, headlights). Every term is a weight per point times a colour."""
        weights: list[np.ndarray] = []
        colours: list[np.ndarray] = []
        nx, ny, nz = S.n
        n = nx.size
        if static:
            sky = S.ao * (F32(0.5) + F32(0.5) * nz)
            weights += [sky, S.ao - sky]
            colours += [light.sky_rgb, light.sky_rgb * F32(0.3) + light.sun_rgb * F32(0.15)]
        sun = frame["sun"]
        if dynamic:
            if sun is not None:
                sx, sy, sz = (F32(v) for v in sun)
                lam = nx * sx
                lam += ny * sy
                lam += nz * sz
                weights.append(np.maximum(lam, F32(0.0), out=lam))
                colours.append(light.sun_rgb)
            px, py, pz = S.p
            for _, pos, rgb_l in frame["lamps"][:S.max_lamps]:
                weights.append(spot(px, py, pz, nx, ny, nz, pos))
                colours.append(rgb_l * F32(LIGHT_K))
            if light.headlights and S.lit_by_headlights:
                # A low beam (tail light) only lights what is ahead of (behind) it: evaluate just those points.
                for fwd, sel in ((1.0, np.flatnonzero(px > self.vehicle.x_max)),
                                 (-1.0, np.flatnonzero(px < self.vehicle.x_min))):
                    if not sel.size:
                        continue
                    pts = (px[sel], py[sel], pz[sel], nx[sel], ny[sel], nz[sel])
                    lamps = [(pos, rgb_l) for pos, f, rgb_l in ego_lamps(self.vehicle) if f == fwd]
                    w = np.zeros(n, F32)
                    w[sel] = sum(low_beam(*pts, pos, fwd) for pos, _ in lamps)
                    weights.append(w)
                    colours.append(lamps[0][1].astype(F32))  # the pair shares a colour
        if weights:
            e = _combine(weights, colours, S.albedo)
            if out is None:
                out = e
            else:
                out += e
        elif out is None:
            out = np.zeros((n, 3), F32)
        if not S.gloss.size:
            return out
        dx, dy, dz = S.gloss_d
        gx, gy, gz = S.gloss_n
        weights, colours = [], []
        if static:
            cos_v = gx * dx
            cos_v += gy * dy
            cos_v += gz * dz
            np.negative(cos_v, out=cos_v)
            np.clip(cos_v, F32(0.0), F32(1.0), out=cos_v)
            c5 = F32(1.0) - cos_v
            c2 = c5 * c5
            c5 *= c2 * c2
            fs = S.f0 + (F32(1.0) - S.f0) * c5
            fs *= S.spec
            # The mirror direction's elevation picks the sky (between horizon and zenith colours) or, below the
            # horizon, a dim ground colour.
            rz = dz + F32(2.0) * cos_v * gz
            zen = self._sky_weight(rz)
            zen *= fs
            horizon = np.where(rz > 0, fs - zen, F32(0.0))
            weights += [zen, horizon, np.where(rz > 0, F32(0.0), fs)]
            colours += [light.zenith, light.horizon, light.sky_rgb * F32(0.15) + light.sun_rgb * F32(0.05)]
        if dynamic and sun is not None:
            sx, sy, sz = (F32(v) for v in sun)
            hx, hy, hz = sx - dx, sy - dy, sz - dz
            nh = (gx * hx + gy * hy + gz * hz) / np.sqrt(hx * hx + hy * hy + hz * hz)
            lit = (gx * sx + gy * sy + gz * sz) > 0
            # exp(p (x - 1)) is x^p near the highlight, where it matters, at a fraction of the cost of a power.
            nh -= F32(1.0)
            nh *= S.expo
            hl = np.exp(nh, out=nh)
            hl *= S.spec * F32(0.5)
            hl *= lit
            weights.append(hl)
            colours.append(light.sun_rgb)
        if weights:
            out[S.gloss] += _combine(weights, colours)
        return out

    def _shade_ego(self, cc: _CameraCache, frame: dict, light: Lighting) -> np.ndarray:
        key = ("ego", light.sky_rgb.tobytes(), light.sun_rgb.tobytes(), light.zenith.tobytes(),
               light.horizon.tobytes())
        if key not in cc.memo:
            cc.memo[key] = self._shade_surfaces(cc.ego_surfaces, frame, light, dynamic=False)
        return self._shade_surfaces(cc.ego_surfaces, frame, light, static=False, out=cc.memo[key].copy())


def _combine(weights: list[np.ndarray], colours: list[np.ndarray], albedo: np.ndarray | None = None) -> np.ndarray:
    """(n, 3) sum of weights (n,) times colours (3,), times albedo (n, 3) when given; a channel at a time,
    which is several times faster than stacking the weights for a matrix product."""
    out = np.empty((weights[0].size, 3), F32)
    for c in range(3):
        acc = weights[0] * F32(colours[0][c])
        for w, col in zip(weights[1:], colours[1:], strict=True):
            acc += w * F32(col[c])
        if albedo is not None:
            acc *= albedo[:, c]
        out[:, c] = acc
    return out


@dataclass
class _Surfaces:
    """Hit points to shade (vehicle frame): view rays, positions, normals, textured albedo, contact darkening,
    and for the glossy subset `gloss` their specular weight, Blinn-Phong exponent and Fresnel F0."""

    d: tuple[np.ndarray, np.ndarray, np.ndarray]
    p: tuple[np.ndarray, np.ndarray, np.ndarray]
    n: tuple[np.ndarray, np.ndarray, np.ndarray]
    albedo: np.ndarray
    ao: np.ndarray
    gloss: np.ndarray
    spec: np.ndarray
    expo: np.ndarray
    f0: np.ndarray
    gloss_d: tuple[np.ndarray, np.ndarray, np.ndarray]
    gloss_n: tuple[np.ndarray, np.ndarray, np.ndarray]
    lit_by_headlights: bool
    max_lamps: int = MAX_OBJECT_LAMPS
