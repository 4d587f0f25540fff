"""Ultrasonic echo model of the simulator: one measurement cycle (direct and cross echoes with distance and
amplitude, sensor status) of the rig's USS from the scene objects around the ego, with faults and noise.

How an echo is computed (2.5-D Kirchhoff-style model, vectorised over surface columns and sensor pairs):
- Every part's vertical surface (box faces, cylinder and cone mantles, sphere latitude bands) is sampled along
  its outline into columns (8 cm, or 6° on curves), each with a horizontal position, outward normal (and its tilt for
  cones and spheres), a height interval and a reflectivity. Faces and mantles are the echo clusters.
- For a sender/receiver pair, a column returns intensity
      refl · B_h · dl/d³ · (specular lobe(θ_h) · ∫ lobe(ε) B_v(ε) dε  +  diffuse cosines · ∫ B_v(ε) dε) · air
  where B_h, B_v are the two-way Gaussian beam patterns (-6 dB at the rig's openings), θ_h the angle between
  the normal and the bisector of the directions to sender and receiver, and the vertical integral over the
  elevations ε that the column spans has a closed form (erf). Normalised so that an infinite wall gives the
  image-source law 1/(d_s + d_r)²: a thin pole comes out ~a/d weaker, a sphere ~(a/d)², and a low curb only
  fills a sliver of the vertical beam (none of it when close, where it sits below the beam).
- A cluster's echo has the summed intensity of its columns and the distance of its strongest column (the
  specular point, or the nearest edge when there is none). Echoes of one listening closer than the
  pulse resolution merge; the ECU reports the first few above the threshold.
- Amplitude is the echo level in dB mapped linearly from `floor_db` (0) to `saturation_db` (1).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy.special import erf

from sensors.errors import ConfigError
from sensors.geometry import Pose2D
from sensors.messages import UssCycle, UssStatus
from sensors.rig import Rig
from sim_data.world import Box, Condition, Cylinder, Part, SceneObject, Sphere

log = logging.getLogger(__name__)

# Relative rate of ground clutter per scene: rough asphalt and gravel scatter more than a garage floor.
GROUND_ROUGHNESS: dict[str, float] = {"garage": 0.3, "parking_lot": 1.0, "street": 1.0, "driveway": 2.0,
                                      "gravel": 3.0}
FAILURE_MODES = ("dead", "blocked")
_LN2 = math.log(2.0)

# Column table layout (one row per surface column).
_X, _Y, _NX, _NY, _Z0, _Z1, _TILT, _DL, _AREA = range(9)


@dataclass(frozen=True)
class EchoModel:
    """Constants of the echo model; the defaults describe a ~50 kHz parking sensor."""

    # Sampling: the lobe is a Gaussian, so sums over columns spaced up to ~2 of its standard deviations (8 cm from
    # ~0.3 m on) are accurate to well under a dB; the distance comes from the strongest column, within spacing/2
    # of the specular point (error ~ spacing²/8d, a few mm).
    spacing: float = 0.08  # m between outline columns of flat faces
    arc_step_deg: float = 6.0  # angular step around curved mantles
    band_height: float = 0.10  # m, height of the bands a cone or frustum is cut into
    sphere_bands: int = 12  # latitude bands of a sphere
    lobe_deg: float = 12.0  # width of the specular lobe: misalignment of normal and bisector at 1/e
    diffuse: float = 0.05  # Lambertian share scattered by edges, corners and rough surfaces
    absorption_db_per_m: float = 1.6  # air at ~50 kHz, counted over the whole acoustic path
    threshold_db: float = -45.0  # detection threshold on the echo level
    floor_db: float = -50.0  # level mapped to amplitude 0
    saturation_db: float = 5.0  # level mapped to amplitude 1
    resolution: float = 0.10  # m: echoes of one listening closer than this merge into one
    max_echoes: int = 3  # echoes a receiver reports per firing
    jitter: float = 0.01  # m, distance noise (1 sigma)
    amplitude_noise_db: float = 1.5
    rain_jitter: float = 0.015
    rain_amplitude_noise_db: float = 2.5
    ghost_rate: float = 0.004  # per listening
    rain_ghost_rate: float = 0.01
    clutter_rate: float = 0.015  # per direct listening (half for cross), times the scene's ground roughness
    clutter_elevation_deg: tuple[float, float] = (-35.0, -10.0)  # where the lower beam meets the ground
    occlusion_bin_deg: float = 1.0  # azimuth resolution of the per-sensor occlusion buffer
    occlusion_tolerance: float = 0.10  # m: a surface this close behind an occluder still counts as in front
    ring_distance: float = 0.22  # m, the ringing echo of a blocked membrane
    ring_amplitude: float = 0.95
    blocked_detect_prob: float = 0.6  # how often the ECU notices a blocked membrane


# --- surface sampling (world frame, cached per shape: static objects repeat every cycle) ---------------


def _columns(x, y, nx, ny, z0, z1, tilt, dl, area) -> np.ndarray:
    cols = np.broadcast_arrays(*(np.asarray(v, dtype=float) for v in (x, y, nx, ny, z0, z1, tilt, dl, area)))
    return np.stack([c.reshape(-1) for c in cols], axis=1)


def _box_columns(b: Box, spacing: float) -> tuple[np.ndarray, np.ndarray]:
    corners = b.footprint()
    ends = np.roll(corners, -1, axis=0)
    out, face = [], []
    for k in range(4):
        e = ends[k] - corners[k]
        length = float(np.hypot(*e))
        if length <= 0:
            continue
        n = max(1, math.ceil(length / spacing))
        t = (np.arange(n) + 0.5) / n
        pts = corners[k] + t[:, None] * e
        normal = np.array([e[1], -e[0]]) / length
        if np.dot(normal, (corners[k] + ends[k]) / 2 - [b.x, b.y]) < 0:
            normal = -normal
        dl = length / n
        out.append(_columns(pts[:, 0], pts[:, 1], normal[0], normal[1], b.z0, b.z1, 0.0, dl, dl))
        face.append(np.full(n, k))
    return np.concatenate(out), np.concatenate(face)


def _ring(cx: float, cy: float, radius: float, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    a = (np.arange(n) + 0.5) * (2 * np.pi / n)
    c, s = np.cos(a), np.sin(a)
    return cx + radius * c, cy + radius * s, np.stack([c, s])


def _cylinder_columns(c: Cylinder, m: EchoModel) -> np.ndarray:
    r0, r1, h = c.radius, c.r_top, c.z1 - c.z0
    n = max(math.ceil(2 * np.pi * max(r0, r1) / m.spacing), math.ceil(360.0 / m.arc_step_deg))
    nb = 1 if math.isclose(r0, r1) else max(2, math.ceil(h / m.band_height))
    edges = np.linspace(c.z0, c.z1, nb + 1)
    tilt = math.atan2(r0 - r1, h)  # the mantle normal leans up on a cone narrowing upwards
    out = []
    for b in range(nb):
        r = r0 + (r1 - r0) * ((edges[b] + edges[b + 1]) / 2 - c.z0) / h
        if r <= 1e-3:
            continue
        x, y, (nx, ny) = _ring(c.x, c.y, r, n)
        dl = 2 * np.pi * r / n
        out.append(_columns(x, y, nx, ny, edges[b], edges[b + 1], tilt, dl, dl / math.cos(tilt)))
    return np.concatenate(out) if out else np.zeros((0, 9))


def _sphere_columns(s: Sphere, m: EchoModel) -> np.ndarray:
    n = max(math.ceil(2 * np.pi * s.radius / m.spacing), math.ceil(360.0 / m.arc_step_deg))
    lat = np.linspace(-np.pi / 2, np.pi / 2, m.sphere_bands + 1)
    out = []
    for b in range(m.sphere_bands):
        mid = (lat[b] + lat[b + 1]) / 2
        r = s.radius * math.cos(mid)
        x, y, (nx, ny) = _ring(s.x, s.y, r, n)
        dl = 2 * np.pi * r / n
        out.append(_columns(x, y, nx, ny, s.z + s.radius * math.sin(lat[b]), s.z + s.radius * math.sin(lat[b + 1]),
                            mid, dl, dl / math.cos(mid)))
    return np.concatenate(out)


@lru_cache(maxsize=1024)  # static parts repeat every cycle; moving ones churn, so keep it bounded (~20 MB)
def _sample_shape(shape: Box | Cylinder | Sphere, model: EchoModel) -> tuple[np.ndarray, np.ndarray]:
    """(columns (N, 9), cluster index within the part (N,)): a box has four clusters, curved parts one."""
    if isinstance(shape, Box):
        cols, face = _box_columns(shape, model.spacing)
    elif isinstance(shape, Cylinder):
        cols = _cylinder_columns(shape, model)
        face = np.zeros(len(cols), int)
    else:
        cols = _sphere_columns(shape, model)
        face = np.zeros(len(cols), int)
    # Nothing echoes from below the ground.
    above = cols[:, _Z1] > 0
    cols, face = cols[above], face[above]
    cols[:, _Z0] = np.maximum(cols[:, _Z0], 0.0)
    cols.setflags(write=False)
    face.setflags(write=False)
    return cols, face


def _check_part(part: Part, where: str) -> None:
    if not isinstance(part.shape, (Box, Cylinder, Sphere)):
        raise ConfigError(f"{where}: unsupported shape {type(part.shape).__name__}; the echo model knows Box, "
                          "Cylinder and Sphere")
    problem = _shape_problem(part.shape)
    if problem:
        raise ConfigError(f"{where}: {problem}")
    if not 0.0 <= part.material.uss_reflectivity <= 1.0:
        raise ConfigError(f"{where}: uss_reflectivity {part.material.uss_reflectivity} is outside 0..1")


@lru_cache(maxsize=8192)
def _shape_problem(sh: Box | Cylinder | Sphere) -> str | None:
    values = [getattr(sh, f) for f in sh.__dataclass_fields__ if getattr(sh, f) is not None]
    if not all(math.isfinite(v) for v in values):
        return f"{sh} has a non-finite coordinate; fix the scene generator"
    if isinstance(sh, Box):
        bad = sh.length < 0 or sh.width < 0 or sh.z1 <= sh.z0
    elif isinstance(sh, Cylinder):
        bad = sh.radius < 0 or sh.r_top < 0 or sh.z1 <= sh.z0
    else:
        bad = sh.radius < 0
    return f"degenerate {sh} (negative size or z1 <= z0); fix the scene generator" if bad else None


def _reach(shape: Box | Cylinder | Sphere) -> float:
    if isinstance(shape, Box):
        return math.hypot(shape.length, shape.width) / 2
    if isinstance(shape, Cylinder):
        return max(shape.radius, shape.r_top)
    return shape.radius


# --- the simulator ------------------------------------------------------------------------------------


@dataclass
class _Candidates:
    """Echo candidates of one cycle before the ECU's threshold: pair index, distance, level (dB)."""

    pair: np.ndarray
    distance: np.ndarray
    level: np.ndarray


class UltrasonicSimulator:
    """Echoes of the rig's ultrasonic sensors in a scene. Stateless between cycles; all noise from `rng`."""

    def __init__(self, rig: Rig, scene_kind: str = "parking_lot", model: EchoModel | None = None):
        if scene_kind not in GROUND_ROUGHNESS:
            raise ConfigError(f"ultrasonic simulator: unknown scene kind {scene_kind!r}; "
                              f"expected one of {', '.join(GROUND_ROUGHNESS)}")
        self.rig = rig
        self.scene_kind = scene_kind
        self.model = model or EchoModel()
        u = rig.uss
        self._ids = np.array([s.id for s in u])
        self._names = [s.name for s in u]
        self._pos = np.array([s.position for s in u], dtype=float)
        self._yaw = np.array([s.yaw for s in u])
        self._pitch = np.array([s.pitch for s in u])
        self._half_h = np.array([s.horizontal_opening / 2 for s in u])
        self._half_v = np.array([s.vertical_opening / 2 for s in u])
        self._rmin = np.array([s.range_min for s in u])
        self._rmax = np.array([s.range_max for s in u])
        index = {s.id: i for i, s in enumerate(u)}
        pairs = []
        for i, s in enumerate(u):
            pairs.append((i, i))
            pairs += [(i, index[j]) for j in rig.uss_neighbours(s.id)]
        self._pairs = np.array(pairs, dtype=int)  # firing order: each sender, its direct echo first
        self._bumper = np.array([s.bumper for s in u])
        self._pair_vertical = self._vertical_constants()
        cx, cy = rig.vehicle.centre
        # Parts farther than this from the body centre cannot reach any sensor.
        self._cull_radius = float(np.max(np.hypot(self._pos[:, 0] - cx, self._pos[:, 1] - cy))
                                  + self._rmax.max() + 0.5)

    def _vertical_constants(self) -> dict[str, np.ndarray]:
        """Per listening pair: sensor heights and the two-way vertical beam exp(-b (ε - pb)²) · gain, the
        product of the sender's and the receiver's Gaussians (-6 dB one way at half the vertical opening)."""
        si, ri = self._pairs[:, 0], self._pairs[:, 1]
        cs = 2 * _LN2 / self._half_v[si] ** 2
        cr = 2 * _LN2 / self._half_v[ri] ** 2
        b = cs + cr
        zs, zr = self._pos[si, 2], self._pos[ri, 2]
        return {"zs": zs, "zr": zr, "zm": (zs + zr) / 2, "b": b,
                "pb": (cs * self._pitch[si] + cr * self._pitch[ri]) / b,
                "gain": np.exp(-cs * cr * (self._pitch[si] - self._pitch[ri]) ** 2 / b)}

    # -- public ------------------------------------------------------------------------------------

    def cycle(self, objects: list[SceneObject], ego: Pose2D, condition: Condition, stamp_ns: int,
              cycle_index: int, rng: np.random.Generator) -> UssCycle:
        """One measurement cycle: every sender fires in turn, it and its neighbours listen."""
        dead, blocked = self._failures(condition, stamp_ns)
        status = {int(i): UssStatus.OK for i in self._ids}
        for i in dead:
            status[int(self._ids[i])] = UssStatus.NO_RESPONSE
        for i in blocked:
            # The ECU notices a covered membrane only sometimes; the rest of the time it reports OK.
            if rng.random() < self.model.blocked_detect_prob:
                status[int(self._ids[i])] = UssStatus.BLOCKED

        s_idx, r_idx = self._pairs[:, 0], self._pairs[:, 1]
        bad = np.isin(s_idx, list(dead | blocked)) | np.isin(r_idx, list(dead | blocked))
        cols, cluster, owner, refl = self._surface(objects, ego)
        cand = [self._physics(cols, cluster, owner, refl, np.flatnonzero(~bad & (self._bumper[s_idx] == b)))
                for b in ("front", "rear")]
        cand.append(self._clutter_and_ghosts(~bad, condition, rng))
        echoes = self._ecu(_Candidates(*(np.concatenate([getattr(c, f) for c in cand])
                                         for f in ("pair", "distance", "level"))), condition, rng)
        pair, dist, amp = echoes
        if blocked:
            ring = np.flatnonzero(np.isin(s_idx, list(blocked)) & (s_idx == r_idx))
            pair = np.concatenate([pair, ring])
            dist = np.concatenate([dist, self.model.ring_distance + rng.normal(0, 0.003, ring.size)])
            amp = np.concatenate([amp, np.clip(self.model.ring_amplitude + rng.normal(0, 0.02, ring.size), 0, 1)])
            order = np.lexsort((dist, pair))
            pair, dist, amp = pair[order], dist[order], amp[order]
        log.debug("uss cycle %d: %d surface columns, %d echoes", cycle_index, len(cols), len(pair))
        return UssCycle(stamp_ns=stamp_ns, cycle=cycle_index, sender=self._ids[s_idx[pair]],
                        receiver=self._ids[r_idx[pair]], distance=dist, amplitude=amp, status=status)

    # -- steps -------------------------------------------------------------------------------------

    def _failures(self, condition: Condition, stamp_ns: int) -> tuple[set[int], set[int]]:
        dead, blocked = set(), set()
        for name, mode in condition.failed_uss.items():
            if name not in self._names:
                raise ConfigError(f"condition.failed_uss at {stamp_ns} ns: no ultrasonic sensor named {name!r}; "
                                  f"the rig {self.rig.name!r} has {', '.join(self._names)}")
            if mode not in FAILURE_MODES:
                raise ConfigError(f"condition.failed_uss[{name!r}] at {stamp_ns} ns: unknown failure {mode!r}; "
                                  f"expected one of {', '.join(FAILURE_MODES)}")
            (dead if mode == "dead" else blocked).add(self._names.index(name))
        return dead, blocked

    def _surface(self, objects: list[SceneObject], ego: Pose2D):
        """Surface columns of every part within reach, in the vehicle frame, sorted by cluster."""
        cx, cy = self.rig.vehicle.centre
        centre = ego.to_world(np.array([cx, cy]))
        blocks, clusters, owners, refls = [], [], [], []
        next_cluster = 0
        for k, obj in enumerate(objects):
            for i, part in enumerate(obj.parts):
                sh = part.shape
                _check_part(part, f"object {obj.id} ({obj.kind}) part {i}")
                if math.hypot(sh.x - centre[0], sh.y - centre[1]) > self._cull_radius + _reach(sh):
                    continue
                cols, face = _sample_shape(sh, self.model)
                if not len(cols):
                    continue
                blocks.append(cols)
                clusters.append(face + next_cluster)
                next_cluster += int(face.max()) + 1
                owners.append(np.full(len(cols), k))
                refls.append(np.full(len(cols), part.material.uss_reflectivity))
        if not blocks:
            return np.zeros((0, 9)), np.zeros(0, int), np.zeros(0, int), np.zeros(0)
        cols = np.concatenate(blocks)
        cols[:, [_X, _Y]] = ego.to_local(cols[:, [_X, _Y]])
        c, s = math.cos(ego.yaw), math.sin(ego.yaw)
        nx, ny = cols[:, _NX].copy(), cols[:, _NY]
        cols[:, _NX], cols[:, _NY] = c * nx + s * ny, -s * nx + c * ny
        # The ego body never echoes: nothing inside its footprint counts.
        keep = self.rig.vehicle.distance_to_body(cols[:, [_X, _Y]]) > 0
        return cols[keep], np.concatenate(clusters)[keep], np.concatenate(owners)[keep], np.concatenate(refls)[keep]

    def _physics(self, cols, cluster, owner, refl, pairs: np.ndarray) -> _Candidates:
        """Noise-free echo candidates of the listening `pairs` (all in one bumper)."""
        m = self.model
        empty = _Candidates(np.zeros(0, int), np.zeros(0), np.zeros(0))
        if not len(pairs) or not len(cols):
            return empty
        sens = np.unique(self._pairs[pairs].ravel())  # sensors of this bumper in use
        # Cheap first cut around the bumper before the per-sensor geometry.
        centre = self._pos[sens, :2].mean(axis=0)
        reach = np.hypot(*(self._pos[sens, :2] - centre).T).max() + self._rmax[sens].max() + 0.3
        close = np.flatnonzero(np.hypot(cols[:, _X] - centre[0], cols[:, _Y] - centre[1]) < reach)
        cols, cluster, owner, refl = cols[close], cluster[close], owner[close], refl[close]
        dx = cols[None, :, _X] - self._pos[sens, 0, None]
        dy = cols[None, :, _Y] - self._pos[sens, 1, None]
        c, sn = np.cos(self._yaw[sens, None]), np.sin(self._yaw[sens, None])
        ahead = c * dx + sn * dy  # along the beam axis
        rho = np.hypot(dx, dy)
        cos_n = -(cols[None, :, _NX] * dx + cols[None, :, _NY] * dy) / np.maximum(rho, 1e-9)
        # Behind the sensor plane is outside the beam; beyond range_max nothing is reported anyway.
        in_beam = (ahead > 0) & (rho < self._rmax[sens, None] + 0.3)
        near = np.flatnonzero(np.any(in_beam & (cos_n > 0), axis=0))
        if not len(near):
            return empty
        cols, cluster, owner, refl = cols[near], cluster[near], owner[near], refl[near]
        dx, dy, ahead, rho, cos_n, in_beam = (v[:, near] for v in (dx, dy, ahead, rho, cos_n, in_beam))
        az = np.arctan2(c * dy - sn * dx, ahead)
        sees = in_beam & (cos_n > 0) & self._visibility(cols, owner, sens, rho, az, cos_n, in_beam)

        # Only the (pair, column) entries that both sensors see are evaluated: flat 1-D arrays from here.
        where = np.full(len(self._pos), -1)
        where[sens] = np.arange(len(sens))
        si, ri = self._pairs[pairs, 0], self._pairs[pairs, 1]
        pi, ci = np.nonzero(sees[where[si]] & sees[where[ri]])
        if not len(pi):
            return empty
        js, jr = where[si][pi], where[ri][pi]
        s, r = si[pi], ri[pi]
        rs, rr = rho[js, ci], rho[jr, ci]
        cs_n, cr_n = cos_n[js, ci], cos_n[jr, ci]
        beam_h = np.exp(-2 * _LN2 * ((az[js, ci] / self._half_h[s]) ** 2 + (az[jr, ci] / self._half_h[r]) ** 2))
        # Horizontal misalignment of the normal with the bisector of the directions to sender and receiver.
        hx = -dx[js, ci] / rs - dx[jr, ci] / rr
        hy = -dy[js, ci] / rs - dy[jr, ci] / rr
        nx, ny = cols[ci, _NX], cols[ci, _NY]
        theta_h = np.arctan2(nx * hy - ny * hx, nx * hx + ny * hy)

        # Vertical: one virtual sensor between the pair (their heights and distances differ by centimetres).
        dm = 2 * rs * rr / (rs + rr)
        pc = {name: v[pairs[pi]] for name, v in self._pair_vertical.items()}
        zs, zr, zm, b, pb, gain_b = (pc[n] for n in ("zs", "zr", "zm", "b", "pb", "gain"))
        e0 = np.arctan((cols[ci, _Z0] - zm) / dm)
        e1 = np.arctan((cols[ci, _Z1] - zm) / dm)
        tilt = cols[ci, _TILT]
        sigma = math.radians(m.lobe_deg)
        a = 1 / sigma**2
        # Specular: lobe exp(-a (ε + tilt)²) times the beam, integrated over [e0, e1].
        mu = (b * pb - a * tilt) / (a + b)
        k = np.sqrt(a + b)
        spec_v = (np.exp(-a * b * (pb + tilt) ** 2 / (a + b)) * math.sqrt(math.pi) / (2 * k)
                  * (erf(k * (e1 - mu)) - erf(k * (e0 - mu))))
        e_spec = np.clip(mu, e0, e1)
        spec = np.exp(-(theta_h**2) * a) * spec_v * np.cos(e_spec) ** 2 / (4 * np.pi * sigma**2)
        # Diffuse (Lambert): the beam alone over [e0, e1], with the cosines at its strongest elevation.
        sb = np.sqrt(b)
        diff_v = math.sqrt(math.pi) / (2 * sb) * (erf(sb * (e1 - pb)) - erf(sb * (e0 - pb)))
        e_diff = np.clip(pb, e0, e1)
        diff = m.diffuse / np.pi * cs_n * cr_n * diff_v * (np.cos(e_diff) * np.cos(e_diff + tilt)) ** 2
        air = 10 ** (-m.absorption_db_per_m * (rs + rr) / 10)
        inten = refl[ci] * beam_h * gain_b * cols[ci, _AREA] * (spec + diff) * air / dm**3

        # One echo per (pair, cluster): the summed intensity, the path of the strongest column. Entries are in
        # (pair, column) order and columns are sorted by cluster, so each (pair, cluster) is one contiguous run.
        key = pi * (int(cluster.max()) + 1) + cluster[ci]
        starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
        total = np.add.reduceat(inten, starts)
        peak = np.maximum.reduceat(inten, starts)
        length = np.diff(np.r_[starts, len(key)])
        top = np.flatnonzero(inten == np.repeat(peak, length))
        best = top[np.r_[True, np.diff(np.searchsorted(starts, top, side="right")) > 0]]
        live = total > 0
        best, total = best[live], total[live]
        # Reflection height: where the specular lobe peaks, or the beam's strongest point for a diffuse return.
        e_ref = np.where(spec[best] >= diff[best], e_spec[best], e_diff[best])
        z = zm[best] + dm[best] * np.tan(e_ref)
        path = np.hypot(rs[best], z - zs[best]) + np.hypot(rr[best], z - zr[best])
        return _Candidates(pairs[pi[best]], path / 2, 10 * np.log10(total))

    def _visibility(self, cols, owner, sens, rho, az, cos_n, in_beam) -> np.ndarray:
        """(sensors, columns) True where no other object stands nearer in the same direction.

        A per-sensor azimuth buffer of the nearest surface; only parts that span the sensor's height occlude
        (a curb does not hide the wall behind it)."""
        m = self.model
        nbins = math.ceil(180.0 / m.occlusion_bin_deg)
        step = math.radians(m.occlusion_bin_deg)
        centre_bin = np.clip(((az + np.pi / 2) / step).astype(int), 0, nbins - 1)
        zs = self._pos[sens, 2, None]
        occ = in_beam & (cols[None, :, _Z0] < zs) & (cols[None, :, _Z1] > zs)
        s_i, c_i = np.nonzero(occ)
        r = rho[s_i, c_i]
        half = 0.5 * cols[c_i, _DL] * np.abs(cos_n[s_i, c_i]) / np.maximum(r, 1e-6)
        lo = np.clip(((az[s_i, c_i] - half + np.pi / 2) / step).astype(int), 0, nbins - 1)
        hi = np.clip(((az[s_i, c_i] + half + np.pi / 2) / step).astype(int), 0, nbins - 1)
        count = hi - lo + 1
        rep = np.repeat(np.arange(len(s_i)), count)
        offset = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
        cell = s_i[rep] * nbins + lo[rep] + offset
        dist = r[rep]
        order = np.lexsort((dist, cell))
        cell, first = np.unique(cell[order], return_index=True)
        depth = np.full(len(sens) * nbins, np.inf)
        nearest = np.full(len(sens) * nbins, -1)
        depth[cell] = dist[order][first]
        nearest[cell] = owner[c_i[rep][order][first]]
        flat = np.arange(len(sens))[:, None] * nbins + centre_bin
        hidden = (depth[flat] < rho - m.occlusion_tolerance) & (nearest[flat] != owner[None, :])
        return ~hidden

    def _clutter_and_ghosts(self, live: np.ndarray, condition: Condition, rng: np.random.Generator) -> _Candidates:
        """Random weak echoes: rough ground where the lower beam meets it, and rare ghosts."""
        m = self.model
        n = len(self._pairs)
        s_idx, r_idx = self._pairs[:, 0], self._pairs[:, 1]
        # Draw for every pair whatever happens, so that the random stream does not depend on the scene.
        u_clutter, u_ghost = rng.random(n), rng.random(n)
        elev = np.radians(rng.uniform(*m.clutter_elevation_deg, n))
        clutter_level = m.threshold_db + rng.uniform(0.0, 6.0, n)
        ghost_dist = rng.uniform(0.2, self._rmax[s_idx], n)
        ghost_level = m.threshold_db + rng.uniform(0.0, 4.0, n)
        direct = s_idx == r_idx
        rate = m.clutter_rate * GROUND_ROUGHNESS[self.scene_kind] * np.where(direct, 1.0, 0.5)
        clutter = live & (u_clutter < rate)
        ghost = live & (u_ghost < (m.rain_ghost_rate if condition.rain else m.ghost_rate))
        z = (self._pos[s_idx, 2] + self._pos[r_idx, 2]) / 2
        slant = z / np.sin(-elev)
        base = np.hypot(*(self._pos[s_idx, :2] - self._pos[r_idx, :2]).T) / 2
        clutter_dist = np.hypot(slant, base)
        pair = np.concatenate([np.flatnonzero(clutter), np.flatnonzero(ghost)])
        return _Candidates(pair, np.concatenate([clutter_dist[clutter], ghost_dist[ghost]]),
                           np.concatenate([clutter_level[clutter], ghost_level[ghost]]))

    def _ecu(self, c: _Candidates, condition: Condition, rng: np.random.Generator):
        """What the ECU reports: merged, noisy, thresholded, in range, the first few per listening."""
        m = self.model
        order = np.lexsort((c.distance, c.pair))
        pair, dist, level = c.pair[order], c.distance[order], c.level[order]
        # Echoes closer than the pulse resolution overlap into one: the first arrival, the summed energy.
        new = np.r_[True, (pair[1:] != pair[:-1]) | (np.diff(dist) > m.resolution)] if len(pair) else np.zeros(0, bool)
        starts = np.flatnonzero(new)
        if len(starts):
            level = 10 * np.log10(np.add.reduceat(10 ** (level / 10), starts))
            pair, dist = pair[starts], dist[starts]
        level = level + rng.normal(0, m.rain_amplitude_noise_db if condition.rain else m.amplitude_noise_db,
                                   len(level))
        dist = dist + rng.normal(0, m.rain_jitter if condition.rain else m.jitter, len(dist))
        r = self._pairs[pair, 1]
        keep = (level >= m.threshold_db) & (dist >= self._rmin[r]) & (dist <= self._rmax[r])
        pair, dist, level = pair[keep], dist[keep], level[keep]
        order = np.lexsort((dist, pair))
        pair, dist, level = pair[order], dist[order], level[order]
        first = np.flatnonzero(np.r_[True, pair[1:] != pair[:-1]]) if len(pair) else np.zeros(0, int)
        rank = np.arange(len(pair)) - np.repeat(first, np.diff(np.r_[first, len(pair)]))
        keep = rank < m.max_echoes
        amp = np.clip((level[keep] - m.floor_db) / (m.saturation_db - m.floor_db), 0.0, 1.0)
        return pair[keep], dist[keep], amp


def echo_level_db(amplitude: np.ndarray, model: EchoModel | None = None) -> np.ndarray:
    """The echo level in dB behind a normalised amplitude (inverse of the simulator's mapping)."""
    m = model or EchoModel()
    return m.floor_db + np.asarray(amplitude, dtype=float) * (m.saturation_db - m.floor_db)
