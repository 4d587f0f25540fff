"""Procedural textures: the scene's ground image (baked once per scene in world coordinates, with a mip
pyramid) and the surface patterns of object materials, evaluated per pixel from surface coordinates in metres."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import cv2
import numpy as np

from sensors.errors import ConfigError
from sim_data.world import Ground, GroundPatch, Marking, Scene

log = logging.getLogger(__name__)

GROUND_RES = 0.025  # metres per ground-image pixel at mip level 0
GROUND_MARGIN = 14.0  # metres of textured ground around everything the scene mentions
GROUND_MAX_PIXELS = 12_000_000  # coarser resolution for very large scenes, to bound memory and bake time
MIP_LEVELS = 4  # 2.5, 5, 10, 20 cm per pixel
F32 = np.float32

GROUND_TEXTURES = ("asphalt", "concrete", "paving", "grass")
SURFACE_TEXTURES = ("plain", "car_paint", "glass", "concrete", "brick", "fabric", "skin", "hair", "rubber",
                    "hazard", "cardboard", "metal")


# --- noise ------------------------------------------------------------------------------------------------

def value_noise(h: int, w: int, cell: float, rng: np.random.Generator) -> np.ndarray:
    """(h, w) float32 smooth noise of unit-ish amplitude whose features are about `cell` pixels wide."""
    cell = max(float(cell), 1.0)
    gh, gw = math.ceil(h / cell) + 3, math.ceil(w / cell) + 3
    grid = rng.standard_normal((gh, gw)).astype(F32)
    up = cv2.resize(grid, (int(gw * cell), int(gh * cell)), interpolation=cv2.INTER_CUBIC)
    return np.ascontiguousarray(up[int(cell):int(cell) + h, int(cell):int(cell) + w])


def fractal_noise(h: int, w: int, cells: tuple[float, ...], rng: np.random.Generator) -> np.ndarray:
    """Sum of value-noise octaves, coarse first, each half the amplitude of the previous one."""
    out = np.zeros((h, w), F32)
    amp = 1.0
    for c in cells:
        out += amp * value_noise(h, w, c, rng)
        amp *= 0.5
    return out


# A fixed tileable noise tile for object surfaces: appearance must not change between frames or runs.
_TILE = 256


def _make_tile() -> np.ndarray:
    rng = np.random.default_rng(20240611)
    base = rng.standard_normal((_TILE // 8, _TILE // 8)).astype(F32)
    coarse = cv2.resize(np.tile(base, (3, 3)), (3 * _TILE, 3 * _TILE), interpolation=cv2.INTER_CUBIC)
    coarse = coarse[_TILE:2 * _TILE, _TILE:2 * _TILE]
    fine = cv2.GaussianBlur(np.tile(rng.standard_normal((_TILE, _TILE)).astype(F32), (3, 3)), (0, 0), 0.8)
    fine = fine[_TILE:2 * _TILE, _TILE:2 * _TILE]
    tile = 0.7 * coarse / coarse.std() + 0.3 * fine / fine.std()
    return (tile / np.abs(tile).max()).astype(F32)


NOISE_TILE = _make_tile()


def tile_noise(s: np.ndarray, z: np.ndarray, scale_s: float, scale_z: float) -> np.ndarray:
    """Noise in [-1, 1] looked up at surface coordinates (metres); one tile texel = scale metres."""
    i = (s * (1.0 / scale_s)).astype(np.int32) & (_TILE - 1)
    j = (z * (1.0 / scale_z)).astype(np.int32) & (_TILE - 1)
    return NOISE_TILE[j, i]


def _hash01(i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """A deterministic pseudo-random value in [0, 1) per integer cell (bricks, pavers)."""
    h = (i.astype(np.uint32) * np.uint32(73856093)) ^ (j.astype(np.uint32) * np.uint32(19349663))
    h ^= h >> np.uint32(13)
    h *= np.uint32(0x5BD1E995)
    h ^= h >> np.uint32(15)
    return (h & np.uint32(0xFFFF)).astype(F32) * F32(1.0 / 65536.0)


# --- object surfaces ---------------------------------------------------------------------------------------

def surface_albedo(texture: str, rgb: np.ndarray, s: np.ndarray, z: np.ndarray) -> np.ndarray:
    """(N, 3) albedo of `texture` with base colours `rgb` (N, 3) at surface coordinates s (along the
    surface) and z (height, or the second in-plane axis on top faces), both (N,) metres."""
    if texture in ("plain", "car_paint", "skin"):
        return rgb * (1.0 + 0.03 * tile_noise(s, z, 0.05, 0.05))[:, None]
    if texture == "glass":
        return rgb * 0.3
    if texture == "rubber":
        return rgb * (1.0 + 0.06 * tile_noise(s, z, 0.01, 0.01))[:, None]
    if texture == "concrete":
        n = 0.10 * tile_noise(s, z, 0.012, 0.012) + 0.07 * tile_noise(s + 17.0, z, 0.15, 0.15)
        return rgb * (1.0 + n)[:, None]
    if texture == "metal":
        return rgb * (1.0 + 0.08 * tile_noise(s, z, 0.2, 0.004))[:, None]  # brushed: streaks along s
    if texture == "fabric":
        n = 0.10 * tile_noise(s, z, 0.004, 0.004) + 0.10 * tile_noise(s, z, 0.08, 0.03)
        return rgb * (1.0 + n)[:, None]
    if texture == "hair":
        return rgb * (0.85 + 0.3 * tile_noise(s, z, 0.004, 0.05))[:, None]
    if texture == "cardboard":
        out = rgb * (1.0 + 0.06 * tile_noise(s, z, 0.03, 0.03))[:, None]
        tape = np.abs((s * (1.0 / 0.6)) % 1.0 - 0.5) < 0.05
        out[tape] = out[tape] * 0.6 + F32(0.35) * np.array([0.8, 0.7, 0.45], F32)
        return out
    if texture == "hazard":
        # Traffic cones and posts: orange with white retro-reflective bands.
        white = ((z * (1.0 / 0.25)) % 1.0) > 0.55
        out = rgb.copy()
        out[white] = np.array([0.85, 0.85, 0.82], F32)
        return out * (1.0 + 0.04 * tile_noise(s, z, 0.02, 0.02))[:, None]
    if texture == "brick":
        course, length, mortar = 0.075, 0.225, 0.010
        row = np.floor(z * (1.0 / course))
        u = s * (1.0 / length) + 0.5 * (row % 2)
        col = np.floor(u)
        in_mortar = ((z % course) < mortar) | ((u - col) * length < mortar)
        shade = 0.82 + 0.3 * _hash01(col.astype(np.int32), row.astype(np.int32))
        out = rgb * (shade * (1.0 + 0.06 * tile_noise(s, z, 0.01, 0.01)))[:, None]
        out[in_mortar] = np.array([0.55, 0.53, 0.5], F32)
        return out
    raise ValueError(f"unknown surface texture {texture!r}; expected one of {', '.join(SURFACE_TEXTURES)}")


# Textures that scale the base colour by base + a1 * noise(s, z) + a2 * noise(s + offset, z), per name:
# (base, a1, texel size along s and z, a2, texel sizes, offset along s). surface_albedo spells out the same.
_NOISE_TEXTURES = {
    "plain": (1.0, 0.03, 0.05, 0.05, 0.0, 1.0, 1.0, 0.0),
    "car_paint": (1.0, 0.03, 0.05, 0.05, 0.0, 1.0, 1.0, 0.0),
    "skin": (1.0, 0.03, 0.05, 0.05, 0.0, 1.0, 1.0, 0.0),
    "glass": (0.3, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0),
    "rubber": (1.0, 0.06, 0.01, 0.01, 0.0, 1.0, 1.0, 0.0),
    "concrete": (1.0, 0.10, 0.012, 0.012, 0.07, 0.15, 0.15, 17.0),
    "metal": (1.0, 0.08, 0.2, 0.004, 0.0, 1.0, 1.0, 0.0),
    "fabric": (1.0, 0.10, 0.004, 0.004, 0.10, 0.08, 0.03, 0.0),
    "hair": (0.85, 0.3, 0.004, 0.05, 0.0, 1.0, 1.0, 0.0),
}
_TABLE = np.array([_NOISE_TEXTURES.get(name, (np.nan,) * 8) for name in SURFACE_TEXTURES], F32)
_TABLE[:, [2, 3, 5, 6]] = 1.0 / _TABLE[:, [2, 3, 5, 6]]  # texels per metre
_COLUMNS = np.ascontiguousarray(_TABLE.T)  # a column per parameter: looked up per point with np.take


def surface_albedos(kind: np.ndarray, rgb: np.ndarray, s: np.ndarray, z: np.ndarray) -> np.ndarray:
    """(N, 3) albedo of points with texture kind (indices into SURFACE_TEXTURES), base colours rgb (N, 3) and
    surface coordinates s, z: surface_albedo for many textures at once (the noise textures in one pass)."""
    base = _COLUMNS[0].take(kind)
    simple = ~np.isnan(base)
    if not simple.all():
        out = np.empty_like(rgb)
        for kk in np.unique(kind[~simple]).tolist():
            sel = np.flatnonzero(kind == kk)
            out[sel] = surface_albedo(SURFACE_TEXTURES[kk], rgb[sel], s[sel], z[sel])
        sel = np.flatnonzero(simple)
        out[sel] = surface_albedos(kind[sel], rgb[sel], s[sel], z[sel])
        return out
    i = (s * _COLUMNS[2].take(kind)).astype(np.int32) & (_TILE - 1)
    j = (z * _COLUMNS[3].take(kind)).astype(np.int32) & (_TILE - 1)
    j *= _TILE
    j += i
    f = NOISE_TILE.reshape(-1).take(j)
    f *= _COLUMNS[1].take(kind)
    f += base
    two = np.flatnonzero(_COLUMNS[4].take(kind))
    if two.size:
        q = _TABLE[kind[two]]
        i = ((s[two] + q[:, 7]) * q[:, 5]).astype(np.int32) & (_TILE - 1)
        j = (z[two] * q[:, 6]).astype(np.int32) & (_TILE - 1)
        f[two] += q[:, 4] * NOISE_TILE[j, i]
    return rgb * f[:, None]


# --- the ground ---------------------------------------------------------------------------------------------

@dataclass
class GroundImage:
    """The scene's ground, drawn once: levels[k] is (h_k, w_k, 4) uint8, linear albedo x 255 in RGB and a
    puddle weight (where water collects when it rains) in channel 3. Pixel (0, 0) of level 0 is centred on
    world (x0, y0); columns run along +x, rows along +y."""

    levels: list[np.ndarray]
    x0: float
    y0: float
    res: float

    def pixel_of(self, x: np.ndarray, y: np.ndarray, level: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Continuous pixel coordinates (col, row) of world points at a mip level (cv2.remap convention)."""
        k = 0.5 ** level
        return ((x - self.x0) / self.res + 0.5) * k - 0.5, ((y - self.y0) / self.res + 0.5) * k - 0.5


def scene_extent(scene: Scene, margin: float = GROUND_MARGIN) -> tuple[float, float, float, float]:
    """World (x_min, y_min, x_max, y_max) of everything the scene mentions, plus `margin`."""
    pts = [(p.x, p.y) for p in scene.ego.poses]
    for o in scene.objects:
        pts += [tuple(c) for c in o.box.footprint()]
        if o.motion is not None:
            b = o.box
            pts += [(b.x + wx - o.motion.waypoints[0][0], b.y + wy - o.motion.waypoints[0][1])
                    for wx, wy in o.motion.waypoints]
    for m in scene.ground.markings:
        pts += [(m.x0, m.y0), (m.x1, m.y1)]
    for g in scene.ground.patches:
        pts += list(g.polygon)
    pts += [(li.x, li.y) for li in scene.lights]
    a = np.asarray(pts, float)
    lo, hi = a.min(0) - margin, a.max(0) + margin
    return float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])


def ground_albedo(kind: str, rgb: tuple[float, float, float], h: int, w: int, res: float, col0: int, row0: int,
                  rng: np.random.Generator) -> np.ndarray:
    """(h, w, 3) float32 albedo of a ground surface; col0/row0 place world-aligned joints and pavers."""
    base = np.asarray(rgb, F32)
    px = 1.0 / res  # pixels per metre
    if kind == "asphalt":
        grain = rng.random((h, w), dtype=F32) - 0.5
        n = 0.22 * grain + 0.06 * fractal_noise(h, w, (3.0 * px, 0.6 * px, 0.15 * px), rng)
        speck = rng.random((h, w), dtype=F32) > 0.985  # light aggregate stones
        lum = 1.0 + n + 0.35 * speck
        out = lum[..., None] * base
    elif kind == "concrete":
        n = 0.05 * (rng.random((h, w), dtype=F32) - 0.5) + 0.06 * fractal_noise(h, w, (4.0 * px, 1.0 * px), rng)
        lum = 1.0 + n
        # Expansion joints every 4 m, dark and about 1.5 cm wide.
        cols = (np.arange(w) + col0) * res % 4.0
        rows = (np.arange(h) + row0) * res % 4.0
        lum[:, cols < 0.015] *= 0.6
        lum[rows < 0.015, :] *= 0.6
        out = lum[..., None] * base
    elif kind == "paving":
        c = (np.arange(w) + col0) * res
        r = (np.arange(h) + row0) * res
        row_i = np.floor(r / 0.1).astype(np.int32)
        u = c[None, :] / 0.2 + 0.5 * (row_i[:, None] % 2)
        col_i = np.floor(u).astype(np.int32)
        shade = 0.8 + 0.35 * _hash01(col_i, np.broadcast_to(row_i[:, None], col_i.shape))
        joint = ((u - col_i) * 0.2 < 0.008) | ((r % 0.1) < 0.008)[:, None]
        lum = shade * (1.0 + 0.08 * (rng.random((h, w), dtype=F32) - 0.5))
        lum[joint] *= 0.55
        out = lum[..., None] * base
    elif kind == "grass":
        blades = rng.random((h, w), dtype=F32)
        patches = fractal_noise(h, w, (2.0 * px, 0.5 * px), rng)
        lum = 0.75 + 0.5 * blades + 0.12 * patches
        hue = 0.1 * value_noise(h, w, 1.5 * px, rng)  # yellower and greener areas
        out = lum[..., None] * base
        out[..., 0] *= 1.0 + hue
        out[..., 2] *= 1.0 - hue
    else:
        raise ValueError(f"unknown ground texture {kind!r}; expected one of {', '.join(GROUND_TEXTURES)}")
    return out.astype(F32, copy=False)


def _draw_patch(img: np.ndarray, patch: GroundPatch, x0: float, y0: float, res: float,
                rng: np.random.Generator) -> None:
    poly = (np.asarray(patch.polygon, float) - [x0, y0]) / res
    h, w = img.shape[:2]
    c0, r0 = np.floor(poly.min(0)).astype(int) - 2
    c1, r1 = np.ceil(poly.max(0)).astype(int) + 2
    c0, r0, c1, r1 = max(c0, 0), max(r0, 0), min(c1, w), min(r1, h)
    if c1 <= c0 or r1 <= r0:
        return
    mask = np.zeros((r1 - r0, c1 - c0), np.uint8)
    cv2.fillPoly(mask, [np.round((poly - [c0, r0]) * 16).astype(np.int32)], 255, cv2.LINE_AA, shift=4)
    alb = ground_albedo(patch.texture, patch.rgb, r1 - r0, c1 - c0, res, c0, r0, rng)
    a = (mask.astype(F32) * (1 / 255))[..., None]
    sub = img[r0:r1, c0:c1]
    sub += a * (alb - sub)


def _draw_markings(img: np.ndarray, markings: tuple[Marking, ...], x0: float, y0: float, res: float,
                   rng: np.random.Generator) -> None:
    h, w = img.shape[:2]
    for m in markings:
        a = (np.array([m.x0, m.y0]) - [x0, y0]) / res
        b = (np.array([m.x1, m.y1]) - [x0, y0]) / res
        thick = max(round(m.width / res), 1)
        c0, r0 = (np.floor(np.minimum(a, b)) - thick - 2).astype(int)
        c1, r1 = (np.ceil(np.maximum(a, b)) + thick + 2).astype(int)
        c0, r0, c1, r1 = max(c0, 0), max(r0, 0), min(c1, w), min(r1, h)
        if c1 <= c0 or r1 <= r0:
            continue
        mask = np.zeros((r1 - r0, c1 - c0), np.uint8)
        off = np.array([c0, r0])
        # Square caps: a butt-ended stripe is a filled rotated rectangle.
        d = b - a
        n = np.hypot(*d)
        if n < 1e-9:
            continue
        perp = np.array([-d[1], d[0]]) / n * (m.width / res / 2)
        quad = np.array([a + perp, b + perp, b - perp, a - perp]) - off
        cv2.fillConvexPoly(mask, np.round(quad * 16).astype(np.int32), 255, cv2.LINE_AA, shift=4)
        # Worn paint: the stripe lets some asphalt through in blotches.
        wear = 0.55 + 0.45 * np.clip(0.6 + value_noise(r1 - r0, c1 - c0, 0.3 / res, rng), 0, 1)
        alpha = (mask.astype(F32) * (1 / 255) * wear)[..., None]
        sub = img[r0:r1, c0:c1]
        sub += alpha * (np.asarray(m.rgb, F32) - sub)


def bake_ground(scene: Scene, res: float = GROUND_RES, margin: float = GROUND_MARGIN) -> GroundImage:
    """Draw the scene's ground (base surface, patches, painted markings, puddle map) into a mip pyramid."""
    for where, kind in [("ground", scene.ground.texture)] + [(f"ground patch {i}", p.texture)
                                                           for i, p in enumerate(scene.ground.patches)]:
        if kind not in GROUND_TEXTURES:
            raise ConfigError(f"scene (seed {scene.seed}) {where}: unknown texture {kind!r}; use one of "
                              f"{', '.join(GROUND_TEXTURES)}")
    x_min, y_min, x_max, y_max = scene_extent(scene, margin)
    area = (x_max - x_min) * (y_max - y_min)
    if area / res**2 > GROUND_MAX_PIXELS:
        res = math.sqrt(area / GROUND_MAX_PIXELS)
        log.info("ground image coarsened to %.3f m/px for a %.0f m² scene", res, area)
    w, h = math.ceil((x_max - x_min) / res), math.ceil((y_max - y_min) / res)
    rng = np.random.default_rng([scene.seed, 0x6D0])
    ground: Ground = scene.ground
    img = ground_albedo(ground.texture, ground.rgb, h, w, res, 0, 0, rng)
    # Low-frequency stains over the whole ground (oil, tyre wear, moisture) break up the repetition.
    img *= (1.0 + 0.08 * value_noise(h, w, 2.5 / res, rng))[..., None]
    for p in ground.patches:
        _draw_patch(img, p, x_min, y_min, res, rng)
    _draw_markings(img, ground.markings, x_min, y_min, res, rng)
    rgba = np.empty((h, w, 4), np.uint8)
    np.multiply(np.clip(img, 0.0, 1.0), 255.0, out=img)
    rgba[..., :3] = img
    # Puddles: where a smooth noise field is high, water collects; the renderer uses this only in rain.
    puddle = np.clip((value_noise(h, w, 1.2 / res, rng) - 0.6) * 2.0, 0.0, 1.0)
    rgba[..., 3] = (puddle * 255).astype(np.uint8)
    levels = [rgba]
    for _ in range(MIP_LEVELS - 1):
        levels.append(cv2.pyrDown(levels[-1]))
    return GroundImage(levels, x_min, y_min, res)


def bake_ceiling(scene: Scene, res: float = 0.05, margin: float = GROUND_MARGIN) -> GroundImage:
    """A garage ceiling seen from below: dark stained concrete with form-work joints, and the light panels of
    the scene's lamps (channel 3 = emitting)."""
    x_min, y_min, x_max, y_max = scene_extent(scene, margin)
    w, h = math.ceil((x_max - x_min) / res), math.ceil((y_max - y_min) / res)
    rng = np.random.default_rng([scene.seed, 0xCE1])
    img = ground_albedo("concrete", (0.30, 0.30, 0.29), h, w, res, 0, 0, rng)
    img *= (1.0 + 0.15 * value_noise(h, w, 3.0 / res, rng))[..., None]  # water stains
    rgba = np.empty((h, w, 4), np.uint8)
    rgba[..., :3] = np.clip(img * 255, 0, 255).astype(np.uint8)
    lamps = np.zeros((h, w), np.uint8)
    for li in scene.lights:
        # A 1.2 m x 0.15 m light tube along x, centred on the light.
        c = np.array([li.x - x_min, li.y - y_min]) / res
        half = np.array([0.6, 0.075]) / res
        cv2.rectangle(lamps, tuple(int(v) for v in np.round(c - half)), tuple(int(v) for v in np.round(c + half)),
                      255, -1)
    rgba[..., 3] = lamps
    return GroundImage([rgba, cv2.pyrDown(rgba)], x_min, y_min, res)
