"""Ultrasonic echoes of one measurement cycle into BEV channels (the network's USS input). Torch-free, numpy.

Channels, each (rows, cols) float32 in [0, 1]:
- direct_arc: circle arcs of radius d around the sender within its horizontal opening, one per direct echo.
  Profile across the arc: 1 within half a cell of it, then Gaussian tails, exp(-(|r - d| - cell/2)² / 2σ²)
  with σ = cell/4 + range_sigma; so the arc is ~1 (>= 0.9) on every cell it crosses, whatever the cell
  size, and about two cells wide at half height.
- cross_arc: ellipse arcs {p : |p - s| + |p - r| = 2a} of cross echoes, inside both beams, same profile on
  the half path.
- amplitude: the largest amplitude × arc profile of any echo (direct or cross) through the cell.
- free: 1 inside a working sensor's beam closer than its first direct echo (less the arc's half width, so
  the arc's own cells stay out), or closer than free_range when it heard nothing: a quiet sensor says
  "nothing large enough within range", and free_range is where that still holds for low objects.
- coverage: 1 where any working sensor's beam reaches (range_min .. range_max, inside the opening).

A sensor whose status is NO_RESPONSE or BLOCKED is not working: its echoes (sent or received) are dropped
and it adds nothing to free or coverage, so a failed sensor leaves a hole. A sensor absent from the status
map counts as working (an ECU need not report status). A missing cycle (None) gives all channels zero:
coverage 0 everywhere reads "no ultrasonic information", which a cycle never produces while a sensor works,
so it is never confused with "all free".

Distances are horizontal, cell centre to sensor position: the echo's slant range equals it for objects at
sensor height and overestimates the horizontal distance of low ones by less than a cell from ~1 m on.

Work per cycle is proportional to the cells near the arcs, not to echoes x cells: for every sender/receiver
pair the cells inside its beams are kept sorted by their half path, so each echo's band is one searchsorted
slice, and all slices of a cycle are gathered at once.
"""

from __future__ import annotations

import logging

import numpy as np

from perception.bev_config import BevConfig
from sensors.errors import ConfigError, SensorError
from sensors.messages import UssCycle, UssStatus
from sensors.rig import Rig

log = logging.getLogger(__name__)

USS_CHANNELS: tuple[str, ...] = ("direct_arc", "cross_arc", "amplitude", "free", "coverage")
DIRECT_ARC, CROSS_ARC, AMPLITUDE, FREE, COVERAGE = range(len(USS_CHANNELS))
FAILED = (UssStatus.NO_RESPONSE, UssStatus.BLOCKED)

_BAND = 3.0  # arc profile drawn out to this many sigmas (exp(-4.5) ~ 0.01)
_KEY_STRIDE = 1000.0  # metres; pair p's half paths live at p * stride + h in one sorted key array


class UssRasterizer:
    """Rasterises UssCycles of one rig onto one BEV grid; build once, call per cycle."""

    def __init__(self, rig: Rig, config: BevConfig, range_sigma: float = 0.02, free_range: float = 2.5):
        if not (range_sigma >= 0 and free_range > 0):
            raise ConfigError(f"UssRasterizer: range_sigma ({range_sigma}) must be >= 0 and free_range "
                              f"({free_range}) > 0 metres")
        self.rig = rig
        self.grid = config.grid(rig)
        self.core = self.grid.cell / 2  # half width of the arc's flat top
        self.sigma = self.grid.cell / 4 + range_sigma
        self.band = self.core + _BAND * self.sigma  # cells farther off an arc than this stay 0
        self.free_range = float(free_range)
        self.shape = (len(USS_CHANNELS), self.grid.rows, self.grid.cols)
        self.ids = np.array([s.id for s in rig.uss])
        # Sensor ids to rig order through the sorted ids, so that no table grows with the ids' magnitude.
        self._order = np.argsort(self.ids, kind="stable")
        self._sorted_ids = self.ids[self._order]
        self._rmin = np.array([s.range_min for s in rig.uss])
        self._rmax = np.array([s.range_max for s in rig.uss])
        if self._rmax.max() + self.band >= _KEY_STRIDE / 2:
            raise ConfigError(f"{rig.source}: ultrasonic range_max {self._rmax.max()} m is beyond what the "
                              f"rasteriser handles ({_KEY_STRIDE / 2 - self.band:.0f} m); check the rig's [[uss]]")

        xy = self.grid.cell_centres().reshape(-1, 2)
        pos = np.array([s.position[:2] for s in rig.uss])
        delta = xy[None, :, :] - pos[:, None, :]  # (S, cells, 2)
        self._dist = np.hypot(delta[..., 0], delta[..., 1])  # (S, cells) horizontal distance to each sensor
        yaw = np.array([s.yaw for s in rig.uss])
        bearing = np.arctan2(delta[..., 1], delta[..., 0]) - yaw[:, None]
        bearing = (bearing + np.pi) % (2 * np.pi) - np.pi  # relative to the beam axis, in [-pi, pi)
        half = np.array([s.horizontal_opening / 2 for s in rig.uss])
        self._in_beam = np.abs(bearing) <= half[:, None]  # (S, cells)
        self._covers = self._in_beam & (self._dist >= self._rmin[:, None]) & (self._dist <= self._rmax[:, None])

        # Pair tables: every direct pair and every neighbour cross pair of the rig up front; pairs a log brings
        # beyond those (another ECU's firing scheme) are added on first sight. _lut is indexed by rig order.
        self._pairs: dict[tuple[int, int], int] = {}
        self._lut = np.full((len(self.ids), len(self.ids)), -1, np.int64)
        self._keys: list[np.ndarray] = []
        self._halves: list[np.ndarray] = []
        self._cells: list[np.ndarray] = []
        for s in rig.uss:
            self._add_pair(s.id, s.id)
            for r in rig.uss_neighbours(s.id):
                self._add_pair(s.id, r)
        self._concat()

    # -- pair tables ------------------------------------------------------------------------------------

    def _known(self, ids: np.ndarray) -> np.ndarray:
        """Which of IDS are sensors of the rig."""
        ids = np.asarray(ids)
        pos = np.clip(np.searchsorted(self._sorted_ids, ids), 0, len(self.ids) - 1)
        return self._sorted_ids[pos] == ids

    def _index(self, ids: np.ndarray | int) -> np.ndarray:
        """Position in rig.uss of each sensor id in IDS (all of them the rig's: see _known)."""
        return self._order[np.searchsorted(self._sorted_ids, ids)]

    def _add_pair(self, sender: int, receiver: int) -> None:
        i, j = self._index(sender), self._index(receiver)
        h = (self._dist[i] + self._dist[j]) / 2  # half path via the cell centre; = distance for i == j
        reach = max(self._rmax[i], self._rmax[j]) + self.band
        cells = np.flatnonzero(self._in_beam[i] & self._in_beam[j] & (h <= reach))
        order = np.argsort(h[cells], kind="stable")
        p = len(self._pairs)
        self._pairs[(sender, receiver)] = p
        self._lut[i, j] = p
        self._halves.append(h[cells[order]])
        self._keys.append(p * _KEY_STRIDE + self._halves[-1])
        self._cells.append(cells[order])

    def _concat(self) -> None:
        self._key = np.concatenate(self._keys)
        self._cell = np.concatenate(self._cells)
        self._half_path = np.concatenate(self._halves)

    def _pair_index(self, sender: np.ndarray, receiver: np.ndarray) -> np.ndarray:
        """Pair table index of each echo, through a (sensor, sensor) lookup table in rig order."""
        i, j = self._index(sender), self._index(receiver)
        p = self._lut[i, j]
        if (p < 0).any():
            for s, r in np.unique(np.column_stack([sender, receiver])[p < 0], axis=0):
                log.info("ultrasonic pair %d -> %d is not a neighbour pair of rig %r; rasterising it anyway",
                         s, r, self.rig.name)
                self._add_pair(int(s), int(r))
            self._concat()
            p = self._lut[i, j]
        return p

    def _bands(self, pair: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For each query q, the table entries of pair[q] with half path in [lo[q], hi[q]): (query, entry)."""
        # Clipped so that a query never reaches into the neighbouring pair's key range.
        lo, hi = (np.clip(v, -1.0, _KEY_STRIDE / 2) for v in (lo, hi))
        start = np.searchsorted(self._key, pair * _KEY_STRIDE + lo)
        stop = np.searchsorted(self._key, pair * _KEY_STRIDE + hi)
        count = np.maximum(stop - start, 0)
        query = np.repeat(np.arange(len(pair)), count)
        entry = start[query] + np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
        return query, entry

    # -- one cycle --------------------------------------------------------------------------------------

    def working(self, cycle: UssCycle | None) -> np.ndarray:
        """(S,) bool in rig.uss order: which sensors work in this cycle (none when the cycle is missing)."""
        if cycle is None:
            return np.zeros(len(self.ids), bool)
        return np.array([cycle.status.get(int(i), UssStatus.OK) not in FAILED for i in self.ids])

    def __call__(self, cycle: UssCycle | None) -> np.ndarray:
        """(len(USS_CHANNELS), rows, cols) float32 in [0, 1] for one cycle; all zeros for None."""
        out = np.zeros((len(USS_CHANNELS), self.grid.rows * self.grid.cols), np.float32)
        if cycle is None:
            return out.reshape(self.shape)
        self._check(cycle)
        ok = self.working(cycle)
        keep = ok[self._index(cycle.sender)] & ok[self._index(cycle.receiver)]
        sender, receiver = cycle.sender[keep], cycle.receiver[keep]
        dist = cycle.distance[keep].astype(np.float64)
        amp = cycle.amplitude[keep].astype(np.float32)
        direct = sender == receiver

        if len(dist):
            pair = self._pair_index(sender, receiver)
            q, e = self._bands(pair, dist - self.band, dist + self.band)
            cell = self._cell[e]
            off = np.maximum(np.abs(self._half_path[e] - dist[q]) - self.core, 0.0)
            w = np.exp(-(off**2) / (2 * self.sigma**2)).astype(np.float32)
            is_direct = direct[q]
            np.maximum.at(out[DIRECT_ARC], cell[is_direct], w[is_direct])
            np.maximum.at(out[CROSS_ARC], cell[~is_direct], w[~is_direct])
            np.maximum.at(out[AMPLITUDE], cell, w * amp[q])

        # Free space per working sensor: up to its first direct echo, or free_range when it heard nothing.
        working = np.flatnonzero(ok)
        first = np.full(len(self.ids), np.inf)
        np.minimum.at(first, self._index(sender[direct]), dist[direct])
        reach = np.where(np.isfinite(first), first - self.core - 2 * self.sigma, self.free_range)
        reach = np.minimum(reach, self._rmax)[working]
        sensor_pair = self._lut[working, working]
        _, e = self._bands(sensor_pair, self._rmin[working], reach)
        out[FREE, self._cell[e]] = 1.0
        out[COVERAGE] = self._covers[working].any(axis=0)
        return out.reshape(self.shape)

    def _check(self, cycle: UssCycle) -> None:
        ids = np.concatenate([cycle.sender, cycle.receiver])
        known = self._known(ids)
        if not known.all():
            raise SensorError(f"uss cycle {cycle.cycle} at {cycle.stamp_ns} ns: sensor id(s) "
                              f"{sorted(set(ids[~known].tolist()))} are not in rig {self.rig.name!r}; replay the log "
                              "with the rig it was recorded with (sensors.sync drops such echoes)")
        bad = ~(np.isfinite(cycle.distance) & (cycle.distance >= 0) & np.isfinite(cycle.amplitude)
                & (cycle.amplitude >= 0) & (cycle.amplitude <= 1))
        if bad.any():
            k = int(np.argmax(bad))
            raise SensorError(f"uss cycle {cycle.cycle} at {cycle.stamp_ns} ns: {int(bad.sum())} echo(es) with "
                              f"non-finite or out-of-range distance/amplitude (first: echo {k}, distance "
                              f"{cycle.distance[k]}, amplitude {cycle.amplitude[k]}); sanitise the cycle first "
                              "(sensors.sync does)")
