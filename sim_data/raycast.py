"""Ray casting for the renderer: analytic ray/primitive intersections (box, vertical cylinder/frustum/cone,
sphere) and the tile-culled nearest-hit search of a camera's pixel rays through the parts of a frame."""

from __future__ import annotations

import math

import numpy as np

from sim_data.world import Box, Cylinder, Sphere

F32 = np.float32
INF = F32(np.inf)
TILE = 16  # pixels per tile side for culling
SLOTS = TILE * TILE  # ray slots per tile (the tiles at the image circle's rim leave some empty)
GROUP = 4  # tiles per side of the coarse tile groups tested first
HIT_EPS = 1e-3  # metres: hits closer than this to the ray origin are ignored
CULL_PAD = 0.02  # metres added to the culling boxes: float32 ray arithmetic must never fall outside them


class RayBundle:
    """A bundle of unit rays from one origin (vehicle frame), float32, with the per-ray constants the
    intersection tests reuse."""

    def __init__(self, origin: np.ndarray, d: np.ndarray):
        self.o = [float(v) for v in origin]
        self.dx, self.dy, self.dz = (np.ascontiguousarray(d[:, i], F32) for i in range(3))
        with np.errstate(divide="ignore"):
            self.idz = (1.0 / self.dz).astype(F32)
        self._h2: np.ndarray | None = None

    @property
    def h2(self) -> np.ndarray:
        """Squared horizontal length of each ray (only cylinders need it)."""
        if self._h2 is None:
            self._h2 = self.dx * self.dx + self.dy * self.dy
        return self._h2

    def take(self, idx: np.ndarray | slice) -> RayBundle:
        r = object.__new__(RayBundle)
        r.o = self.o
        r.dx, r.dy, r.dz, r.idz = self.dx[idx], self.dy[idx], self.dz[idx], self.idz[idx]
        r._h2 = None
        return r

    def take_tiles(self, tiles: np.ndarray) -> RayBundle:
        """The rays of whole tiles of a bundle laid out as TileGrid slots (block copies, not gathers)."""
        r = object.__new__(RayBundle)
        r.o = self.o
        r.dx, r.dy, r.dz, r.idz = (a.reshape(-1, SLOTS)[tiles].reshape(-1) for a in (self.dx, self.dy, self.dz,
                                                                                      self.idz))
        r._h2 = None
        return r


# --- primitives -----------------------------------------------------------------------------------------------

def hit_distance(shape, r: RayBundle) -> np.ndarray:
    """Distance along each ray to where it enters `shape` (inf where it does not). Only entering hits count,
    so a ray that starts inside a primitive never sees the primitive's inside."""
    with np.errstate(all="ignore"):
        if isinstance(shape, Box):
            return _hit_box(shape, r)
        if isinstance(shape, Cylinder):
            return _hit_cylinder(shape, r)
        return _hit_sphere(shape, r)


def _hit_box(b: Box, r: RayBundle) -> np.ndarray:
    # Slabs along the box's length, width and height; in-place to keep the hot loop light on memory.
    c, s = math.cos(b.yaw), math.sin(b.yaw)
    ox, oy, oz = r.o[0] - b.x, r.o[1] - b.y, r.o[2]
    ou, ov = c * ox + s * oy, -s * ox + c * oy
    hl, hw = b.length / 2, b.width / 2
    inv = c * r.dx
    inv += s * r.dy
    np.reciprocal(inv, out=inv)
    near = (-hl - ou) * inv
    far = inv
    far *= hl - ou
    t1 = np.minimum(near, far)
    np.maximum(near, far, out=far)
    near = t1
    inv = c * r.dy
    inv -= s * r.dx
    np.reciprocal(inv, out=inv)
    t1 = (-hw - ov) * inv
    inv *= hw - ov
    np.maximum(near, np.minimum(t1, inv), out=near)
    np.minimum(far, np.maximum(t1, inv, out=t1), out=far)
    t1 = (b.z0 - oz) * r.idz
    t2 = (b.z1 - oz) * r.idz
    np.maximum(near, np.minimum(t1, t2), out=near)
    np.minimum(far, np.maximum(t1, t2, out=t1), out=far)
    near[(near > far) | (near <= HIT_EPS)] = INF
    return near


def _hit_cylinder(cy: Cylinder, r: RayBundle) -> np.ndarray:
    # Lateral surface: horizontal distance² = R(z)² with R linear in z; f(t) = a t² + 2 b t + c. The entering
    # root (f decreasing through 0) is t = (-b - sqrt(b² - a c)) / a whatever the sign of a (steep cone rays).
    ox, oy, oz = r.o[0] - cy.x, r.o[1] - cy.y, r.o[2] - cy.z0
    H = cy.z1 - cy.z0
    r0, r1 = cy.radius, cy.r_top
    k = (r1 - r0) / H
    A = r0 + k * oz
    c = ox * ox + oy * oy - A * A
    a = r.h2 - (k * k) * (r.dz * r.dz) if k else r.h2
    b = ox * r.dx + oy * r.dy
    if k:
        b -= (A * k) * r.dz
    disc = b * b - a * c
    t = (-b - np.sqrt(disc)) / a
    z = oz + t * r.dz
    t[~((disc >= 0) & (t > HIT_EPS) & (z >= 0) & (z <= H))] = INF
    for zc, rc, entering in ((cy.z1, r1, r.dz < 0), (cy.z0, r0, r.dz > 0)):
        if rc <= 0:
            continue
        tc = (zc - r.o[2]) * r.idz
        hx, hy = ox + tc * r.dx, oy + tc * r.dy
        ok = entering & (tc > HIT_EPS) & (hx * hx + hy * hy <= rc * rc) & (tc < t)
        t[ok] = tc[ok]
    return t


def _hit_sphere(sp: Sphere, r: RayBundle) -> np.ndarray:
    ox, oy, oz = r.o[0] - sp.x, r.o[1] - sp.y, r.o[2] - sp.z
    b = ox * r.dx + oy * r.dy + oz * r.dz
    disc = b * b - (ox * ox + oy * oy + oz * oz - sp.radius**2)
    t = -b - np.sqrt(disc)
    t[~((disc >= 0) & (t > HIT_EPS))] = INF
    return t


def surface_at(shape, r: RayBundle, t: np.ndarray) -> tuple[np.ndarray, ...]:
    """Normals (nx, ny, nz) and texture coordinates (s, z) in metres where rays `r` hit `shape` at `t`."""
    px, py, pz = r.o[0] + t * r.dx, r.o[1] + t * r.dy, r.o[2] + t * r.dz
    n = t.size
    if isinstance(shape, Box):
        c, s = math.cos(shape.yaw), math.sin(shape.yaw)
        lx, ly = px - shape.x, py - shape.y
        u, v = c * lx + s * ly, -s * lx + c * ly
        # The face hit is the one the point lies closest to.
        gu = np.abs(np.abs(u) - shape.length / 2)
        gv = np.abs(np.abs(v) - shape.width / 2)
        gz = np.minimum(np.abs(pz - shape.z0), np.abs(pz - shape.z1))
        fu = (gu <= gv) & (gu <= gz)
        fv = ~fu & (gv <= gz)
        fz = ~(fu | fv)
        su, sv = np.sign(u).astype(F32), np.sign(v).astype(F32)
        nx = np.where(fu, su * c, np.where(fv, -sv * s, 0.0)).astype(F32)
        ny = np.where(fu, su * s, np.where(fv, sv * c, 0.0)).astype(F32)
        nz = np.where(fz, np.sign(pz - (shape.z0 + shape.z1) / 2), 0.0).astype(F32)
        ts = np.where(fu, v, u).astype(F32)
        tz = np.where(fz, v, pz).astype(F32)
        return nx, ny, nz, ts, tz
    if isinstance(shape, Cylinder):
        hx, hy = px - shape.x, py - shape.y
        H = shape.z1 - shape.z0
        k = (shape.r_top - shape.radius) / H
        R = shape.radius + k * (pz - shape.z0)
        rh = np.sqrt(hx * hx + hy * hy)
        cap = np.minimum(np.abs(pz - shape.z1), np.abs(pz - shape.z0)) < np.abs(rh - R)
        inv = 1.0 / (np.maximum(rh, 1e-6) * math.sqrt(1 + k * k))
        nx = np.where(cap, 0.0, hx * inv).astype(F32)
        ny = np.where(cap, 0.0, hy * inv).astype(F32)
        nz = np.where(cap, np.sign(pz - (shape.z0 + shape.z1) / 2), -k * rh * inv).astype(F32)
        ts = np.where(cap, hx, np.arctan2(hy, hx) * max(shape.radius, shape.r_top)).astype(F32)
        tz = np.where(cap, hy, pz).astype(F32)
        return nx, ny, nz, ts, tz
    inv = 1.0 / shape.radius
    nx, ny, nz = (px - shape.x) * inv, (py - shape.y) * inv, (pz - shape.z) * inv
    ts = (np.arctan2(ny, nx) * shape.radius).astype(F32)
    return nx.astype(F32), ny.astype(F32), nz.astype(F32), ts, pz.astype(F32).reshape(n)


def to_vehicle(shape, c: float, s: float, ex: float, ey: float, yaw: float):
    """A world primitive in the frame of the ego pose (cos/sin of its yaw, its position)."""
    dx, dy = shape.x - ex, shape.y - ey
    x, y = c * dx + s * dy, -s * dx + c * dy
    if isinstance(shape, Box):
        return Box(x, y, shape.yaw - yaw, shape.length, shape.width, shape.z0, shape.z1)
    if isinstance(shape, Cylinder):
        return Cylinder(x, y, shape.radius, shape.z0, shape.z1, shape.radius_top)
    return Sphere(x, y, shape.z, shape.radius)


# Columns of a part's culling geometry: its bounding sphere, then an oriented bounding box (centre, yaw,
# half length, half width, z range).
SX, SY, SZ, SR, BX, BY, BYAW, BHL, BHW, BZ0, BZ1 = range(11)


def cull_geometry(shape) -> np.ndarray:
    """(11,) bounding sphere and oriented bounding box of a primitive, in the primitive's frame."""
    if isinstance(shape, Box):
        hl, hw = shape.length / 2, shape.width / 2
        return np.array([shape.x, shape.y, (shape.z0 + shape.z1) / 2,
                         math.sqrt(hl * hl + hw * hw + ((shape.z1 - shape.z0) / 2) ** 2),
                         shape.x, shape.y, shape.yaw, hl, hw, shape.z0, shape.z1])
    if isinstance(shape, Cylinder):
        r = max(shape.radius, shape.r_top)
        return np.array([shape.x, shape.y, (shape.z0 + shape.z1) / 2, math.hypot(r, (shape.z1 - shape.z0) / 2),
                         shape.x, shape.y, 0.0, r, r, shape.z0, shape.z1])
    r = shape.radius
    return np.array([shape.x, shape.y, shape.z, r, shape.x, shape.y, 0.0, r, r, shape.z - r, shape.z + r])


def geometry_to_vehicle(geom: np.ndarray, ex: float, ey: float, yaw: float) -> np.ndarray:
    """Culling geometry rows (world frame) moved into the frame of the ego pose (a new array)."""
    c, s = math.cos(yaw), math.sin(yaw)
    out = geom.copy()
    rot = np.array([[c, -s], [s, c]])  # world = rot @ vehicle, so vehicle = (world - ego) @ rot
    out[:, SX:SY + 1] = (geom[:, SX:SY + 1] - [ex, ey]) @ rot
    out[:, BX:BY + 1] = (geom[:, BX:BY + 1] - [ex, ey]) @ rot
    out[:, BYAW] -= yaw
    return out


# --- tiles ---------------------------------------------------------------------------------------------------

class TileGrid:
    """A camera's pixel rays grouped by image tile, with each tile's bundle as a cone (centre direction and
    angular radius): the unit of culling. Rays live in slots, SLOTS per tile, so the rays of a set of tiles
    are a block copy away; empty slots (outside the image circle) hold NaN rays, which never hit anything."""

    def __init__(self, mask: np.ndarray, pixel_rays: np.ndarray):
        """mask (H, W): the pixels to cast; pixel_rays (H, W, 3) their unit directions."""
        H, W = mask.shape
        v, u = np.nonzero(mask)
        tiles_x = (W + TILE - 1) // TILE
        tile_of = (v // TILE) * tiles_x + (u // TILE)
        order = np.argsort(tile_of, kind="stable")
        pix = (v * W + u)[order]
        tile_of = tile_of[order]
        rays = pixel_rays.reshape(-1, 3)[pix]
        n = rays.shape[0]
        starts = np.flatnonzero(np.r_[True, tile_of[1:] != tile_of[:-1]])
        count = np.diff(np.r_[starts, n])
        self.size = starts.size
        self.dir, self.cos, self.sin = _cones(rays, starts)
        slot = np.repeat(np.arange(self.size) * SLOTS - starts, count) + np.arange(n)
        self.valid = np.zeros(self.size * SLOTS, bool)
        self.valid[slot] = True
        self.pix = np.full(self.size * SLOTS, H * W)  # raster index of each slot; H * W for empty slots
        self.pix[slot] = pix
        self.rays = np.full((self.size * SLOTS, 3), np.nan, F32)
        self.rays[slot] = rays
        number = tile_of[starts]
        # Groups of GROUP x GROUP tiles, culled first: (groups, GROUP²) member tiles, -1 where there is none.
        group_of = (number // tiles_x // GROUP) * tiles_x + (number % tiles_x) // GROUP
        order = np.argsort(group_of, kind="stable")
        first = np.flatnonzero(np.r_[True, group_of[order][1:] != group_of[order][:-1]])
        sizes = np.diff(np.r_[first, order.size])
        self.members = np.full((first.size, GROUP * GROUP), -1, np.int64)
        self.members[np.repeat(np.arange(first.size), sizes), np.arange(order.size) - np.repeat(first, sizes)] = order
        ray_order = np.concatenate([np.arange(starts[i], starts[i] + count[i]) for i in order])
        self.group_dir, self.group_cos, self.group_sin = _cones(rays[ray_order],
                                                                np.r_[0, np.cumsum(count[order])[first[1:] - 1]])


def _cones(rays: np.ndarray, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per run of rays (runs begin at `starts`): the unit axis, cosine and sine of the narrowest cone around
    the axis holding them all, padded by 2 mrad."""
    counts = np.diff(np.r_[starts, rays.shape[0]])
    centre = np.add.reduceat(rays, starts, axis=0)
    centre /= np.linalg.norm(centre, axis=1, keepdims=True)
    cosang = np.einsum("ij,ij->i", rays, np.repeat(centre, counts, axis=0))
    rad = np.arccos(np.clip(np.minimum.reduceat(cosang, starts), -1, 1)) + 2e-3
    return centre, np.cos(rad), np.sin(rad)


def candidate_tiles(grid: TileGrid, origin: np.ndarray, geom: np.ndarray,
                    tile_far: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each part (rows of vehicle-frame culling geometry), the tiles where its surface may be seen.

    Returns (pair_part, pair_tile, near): (part, tile) pairs grouped by part, and per part a lower bound of
    its distance from `origin`. A pair survives two tests: the part's bounding sphere meets the tile's cone,
    and the tile's centre ray passes through the part's oriented box grown by how far any ray of the tile
    strays from that centre ray within the part's reach (so no ray of the tile can hit the part elsewhere).
    """
    rel = geom[:, SX:SZ + 1] - origin
    dist = np.linalg.norm(rel, axis=1)
    rad = geom[:, SR]
    near = dist - rad
    inside = dist <= rad * 1.01 + 0.05
    sin_a = np.clip(rad / np.maximum(dist, 1e-9), 0.0, 1.0)
    cos_a = np.sqrt(1.0 - sin_a**2)
    dirs = rel / np.maximum(dist, 1e-9)[:, None]
    # Bounding cone against tile cone: angle between the axes below the sum of the half-angles,
    # cos(a + b) = cos a cos b - sin a sin b. Tile groups first, then the tiles of the groups that pass.
    seen = (dirs @ grid.group_dir.T) >= cos_a[:, None] * grid.group_cos - sin_a[:, None] * grid.group_sin
    seen[inside] = True
    pp, gg = np.nonzero(seen)
    tiles = grid.members[gg]
    real = tiles >= 0
    pp, tt = np.repeat(pp, real.sum(axis=1)), tiles[real]
    d = grid.dir[tt]
    sp = dirs[pp]
    keep = (sp[:, 0] * d[:, 0] + sp[:, 1] * d[:, 1] + sp[:, 2] * d[:, 2]
            >= cos_a[pp] * grid.cos[tt] - sin_a[pp] * grid.sin[tt]) | inside[pp]
    keep &= near[pp] < tile_far[tt]
    pp, tt = pp[keep], tt[keep]
    if not pp.size:
        return pp, tt, near
    g = geom[pp]
    reach = (dist + rad)[pp]
    m = grid.sin[tt] * reach + CULL_PAD
    d = grid.dir[tt]
    c, s = np.cos(g[:, BYAW]), np.sin(g[:, BYAW])
    ox, oy = origin[0] - g[:, BX], origin[1] - g[:, BY]
    lo = np.full(pp.size, -np.inf)
    hi = np.full(pp.size, np.inf)
    with np.errstate(all="ignore"):
        # A ray parallel to a slab gives ±inf or NaN; fmin/fmax skip NaN, which keeps the test conservative.
        for o, dd, h in ((c * ox + s * oy, c * d[:, 0] + s * d[:, 1], g[:, BHL] + m),
                         (c * oy - s * ox, c * d[:, 1] - s * d[:, 0], g[:, BHW] + m)):
            t1, t2 = (-h - o) / dd, (h - o) / dd
            lo = np.fmax(lo, np.fmin(t1, t2))
            hi = np.fmin(hi, np.fmax(t1, t2))
        t1, t2 = (g[:, BZ0] - m - origin[2]) / d[:, 2], (g[:, BZ1] + m - origin[2]) / d[:, 2]
        lo = np.fmax(lo, np.fmin(t1, t2))
        hi = np.fmin(hi, np.fmax(t1, t2))
    keep = (lo <= hi) & (hi >= 0)
    return pp[keep], tt[keep], near


def cast_nearest(grid: TileGrid, rays: RayBundle, shapes: list, geom: np.ndarray, depth: np.ndarray,
                 part: np.ndarray, first_part: int, tile_max: np.ndarray) -> None:
    """Nearest hits of `rays` (grouped as `grid`) on the primitives `shapes` (vehicle frame, with their culling
    geometry rows `geom`), in place: where shape k is nearer than `depth`, depth becomes its distance and
    `part` becomes first_part + k. tile_max holds, per tile, the farthest depth among its rays, and is kept so.

    Parts go near to far, so a tile already covered by nearer surfaces is skipped for the parts behind them.
    """
    if not len(shapes):
        return
    near = np.linalg.norm(geom[:, SX:SZ + 1] - rays.o, axis=1) - geom[:, SR]
    order = np.argsort(near, kind="stable")
    pp, tt, near_sorted = candidate_tiles(grid, np.asarray(rays.o), geom[order], tile_max)
    if not pp.size:
        return
    starts = np.flatnonzero(np.r_[True, pp[1:] != pp[:-1]])
    ends = np.r_[starts[1:], pp.size]
    depth2, part2 = depth.reshape(-1, SLOTS), part.reshape(-1, SLOTS)
    for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
        j = int(pp[a])
        tiles = tt[a:b]
        tiles = tiles[tile_max[tiles] > near_sorted[j]]
        if not tiles.size:
            continue
        here = depth2[tiles]
        k = int(order[j])
        t = hit_distance(shapes[k], rays.take_tiles(tiles)).reshape(here.shape)
        win = t < here
        if not win.any():
            continue
        np.fmin(here, t, out=here)  # fmin: the NaN of empty slots never replaces their depth
        depth2[tiles] = here
        won = part2[tiles]
        won[win] = first_part + k
        part2[tiles] = won
        tile_max[tiles] = here.max(axis=1)


BOX, CYLINDER, SPHERE = 0, 1, 2  # primitive kinds in part tables


def primitive_kind(shape) -> int:
    return BOX if isinstance(shape, Box) else CYLINDER if isinstance(shape, Cylinder) else SPHERE


def surfaces_at(kind: np.ndarray, geom: np.ndarray, radii: np.ndarray, k: np.ndarray, r: RayBundle,
                t: np.ndarray) -> np.ndarray:
    """(5, n) normals (nx, ny, nz) and texture coordinates (s, z) in metres where rays `r` hit parts `k` at
    distances `t`; the same as surface_at, for many parts at once. Parts are rows of the tables kind
    (primitive_kind), geom (vehicle-frame culling geometry) and radii (a cylinder's bottom and top radius)."""
    n = t.size
    out = np.empty((5, n), F32)
    px, py, pz = r.o[0] + t * r.dx, r.o[1] + t * r.dy, r.o[2] + t * r.dz
    g32 = geom.astype(F32)
    cos_yaw, sin_yaw = np.cos(g32[:, BYAW]), np.sin(g32[:, BYAW])
    typ = kind[k]
    for prim in np.flatnonzero(np.bincount(typ, minlength=3)).tolist():
        sel = np.flatnonzero(typ == prim)
        ks = k[sel]
        g = g32[ks]
        x, y, z0, z1 = g[:, BX], g[:, BY], g[:, BZ0], g[:, BZ1]
        lx, ly, lz = px[sel] - x, py[sel] - y, pz[sel]
        if prim == BOX:
            c, s = cos_yaw[ks], sin_yaw[ks]
            u, v = c * lx + s * ly, c * ly - s * lx
            # The face hit is the one the point lies closest to.
            gu = np.abs(np.abs(u) - g[:, BHL])
            gv = np.abs(np.abs(v) - g[:, BHW])
            gz = np.minimum(np.abs(lz - z0), np.abs(lz - z1))
            fu = (gu <= gv) & (gu <= gz)
            fv = ~fu & (gv <= gz)
            fz = ~(fu | fv)
            su, sv = np.sign(u), np.sign(v)
            out[0, sel] = np.where(fu, su * c, np.where(fv, -sv * s, F32(0.0)))
            out[1, sel] = np.where(fu, su * s, np.where(fv, sv * c, F32(0.0)))
            out[2, sel] = np.where(fz, np.sign(lz - (z0 + z1) * F32(0.5)), F32(0.0))
            out[3, sel] = np.where(fu, v, u)
            out[4, sel] = np.where(fz, v, lz)
        elif prim == CYLINDER:
            r0, rt = radii[ks, 0], radii[ks, 1]
            kk = (rt - r0) / (z1 - z0)
            R = r0 + kk * (lz - z0)
            rh = np.sqrt(lx * lx + ly * ly)
            cap = np.minimum(np.abs(lz - z1), np.abs(lz - z0)) < np.abs(rh - R)
            inv = F32(1.0) / (np.maximum(rh, F32(1e-6)) * np.sqrt(F32(1.0) + kk * kk))
            out[0, sel] = np.where(cap, F32(0.0), lx * inv)
            out[1, sel] = np.where(cap, F32(0.0), ly * inv)
            out[2, sel] = np.where(cap, np.sign(lz - (z0 + z1) * F32(0.5)), -kk * rh * inv)
            out[3, sel] = np.where(cap, lx, np.arctan2(ly, lx) * np.maximum(r0, rt))
            out[4, sel] = np.where(cap, ly, lz)
        else:
            rad = g[:, SR]
            inv = F32(1.0) / rad
            nx, ny = lx * inv, ly * inv
            out[0, sel], out[1, sel], out[2, sel] = nx, ny, (lz - g[:, SZ]) * inv
            out[3, sel] = np.arctan2(ny, nx) * rad
            out[4, sel] = lz
    return out
