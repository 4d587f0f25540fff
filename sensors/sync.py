"""Time synchronisation: camera images, ultrasonic cycles and odometry in, `Frame`s out.

A frame is anchored on the earliest pending camera image; it takes from every camera the image nearest to the
anchor within the rig's camera tolerance, the newest ultrasonic cycle no older than the rig's maximum age and the
odometry pose interpolated at the anchor. It is emitted once the stream has moved past the anchor (so nothing that
belongs to it can still arrive), or after a latency allowance with the missing sensors flagged. While every camera
is silent (none connected, or all failed) the ultrasonics go on: each cycle anchors a frame of its own, flagged with
every camera missing. Faults are counted, never raised: late or out-of-order messages, duplicates, rate mismatches
(a camera faster than the others has its extra images dropped) and clock jumps.
"""

from __future__ import annotations

import bisect
import logging
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from sensors.geometry import Pose2D, wrap_angle
from sensors.messages import CameraImage, Frame, GroundTruth, ObjectBox, Odometry, UssCycle, UssStatus
from sensors.rig import Rig

log = logging.getLogger(__name__)

_NS = 1_000_000_000
# Odometry is interpolated between two samples at most this far apart (a car sends it at 20-100 Hz; a longer gap is
# a dropout, across which the motion is unknown).
ODOMETRY_MAX_GAP_NS = _NS // 2
# Samples kept at most: at 100 Hz, 2.5 s, well beyond the latency allowance a pending frame can wait.
_ODOMETRY_KEEP = 256


@dataclass
class SyncStats:
    frames: int = 0
    degraded_frames: int = 0
    late: int = 0  # arrived after its frame was emitted (out of order beyond the window)
    duplicates: int = 0  # same camera, same timestamp
    rate_excess: int = 0  # images of a camera faster than the others, dropped
    clock_jumps: int = 0
    uss_reused: int = 0  # an ultrasonic cycle attached to more than one frame (cameras faster than the USS)
    bad_echoes: int = 0  # NaN / negative / absurd distances, bad amplitudes, unknown sensor ids: dropped
    missing: Counter = field(default_factory=Counter)  # "camera FV", "uss", "odometry" -> frames without it

    def as_dict(self) -> dict[str, object]:
        d = {k: v for k, v in self.__dict__.items() if k != "missing"}
        d["missing"] = dict(self.missing)
        return d


class Synchroniser:
    """Assemble frames from one clock's messages. Push messages (ideally in time order), pop frames.
    expect_cameras False: the stream carries no camera at all (a live source of ultrasonics only), so an ultrasonic
    cycle need not wait the latency allowance to be sure that no camera image comes for it."""

    def __init__(self, rig: Rig, latency_ns: int = 100_000_000, jump_ns: int = 2 * _NS, expect_cameras: bool = True):
        self.rig = rig
        self.expect_cameras = expect_cameras
        self.cameras = tuple(rig.cameras)
        self.tol = rig.sync.camera_tolerance_ns
        self.uss_max_age = rig.sync.uss_max_age_ns
        self.latency = latency_ns
        self.jump = jump_ns
        self.stats = SyncStats()
        self._images: dict[str, list[CameraImage]] = {c: [] for c in self.cameras}
        self._last_seen: dict[str, int] = {}
        self._history: dict[str, deque[int]] = {c: deque(maxlen=16) for c in self.cameras}
        self._uss: deque[UssCycle] = deque(maxlen=32)
        self._uss_used: set[int] = set()
        self._bad_echoes: dict[int, int] = {}
        self._conditions: deque[tuple[int, list[str]]] = deque(maxlen=16)
        self._truth: dict[int, GroundTruth] = {}
        self._objects: dict[int, list[ObjectBox]] = {}
        self._odometry: list[Odometry] = []  # sorted by stamp
        self._odometry_seen = False  # a stream without odometry (older logs) neither waits for it nor flags it
        self._odometry_newest: int | None = None  # stamp of the newest sample pushed
        self._watermark: int | None = None
        self._emitted_until: int | None = None  # anchor + tolerance of the last frame
        self._index = 0
        self._ready: deque[Frame] = deque()

    # --- input --------------------------------------------------------------------------------------
    def _advance(self, stamp: int) -> bool:
        """Move the watermark; handle clock jumps. False if the message is late and must be dropped."""
        wm = self._watermark
        if wm is not None and stamp < wm - self.jump:
            log.warning("clock jumped back by %.3f s at %d ns; flushing pending frames", (wm - stamp) / _NS, stamp)
            self.stats.clock_jumps += 1
            self._flush_all()
            self._emitted_until = None
            self._odometry.clear()  # poses from before the jump would bracket the new stamps
            self._uss.clear()  # cycles from before the jump would anchor frames of their own once the clock got there
            self._watermark = stamp
        elif wm is not None and stamp > wm + self.jump:
            log.warning("clock jumped forward by %.3f s at %d ns", (stamp - wm) / _NS, stamp)
            self.stats.clock_jumps += 1
            self._watermark = stamp
        else:
            self._watermark = stamp if wm is None else max(wm, stamp)
        if self._emitted_until is not None and stamp <= self._emitted_until - 2 * self.tol:
            self.stats.late += 1
            return False
        return True

    def push_image(self, image: CameraImage) -> None:
        if image.camera not in self._images:
            key = f"unknown camera {image.camera}"
            (log.warning if not self.stats.missing[key] else log.debug)(
                "image from unknown camera %r at %d ns dropped%s", image.camera, image.stamp_ns,
                "" if self.stats.missing[key] else "; later ones are counted, not logged")
            self.stats.missing[key] += 1
            return
        if not self._advance(image.stamp_ns):
            return
        buf = self._images[image.camera]
        if any(im.stamp_ns == image.stamp_ns for im in buf) or self._last_seen.get(image.camera) == image.stamp_ns:
            self.stats.duplicates += 1
            return
        prev = self._last_seen.get(image.camera)
        self._last_seen[image.camera] = max(prev or image.stamp_ns, image.stamp_ns)
        self._history[image.camera].append(image.stamp_ns)
        buf.append(image)
        buf.sort(key=lambda im: im.stamp_ns)
        self._collect()

    def push_uss(self, cycle: UssCycle) -> None:
        if not self._advance(cycle.stamp_ns):
            return
        cycle = self._sanitise(cycle)
        if any(c.stamp_ns == cycle.stamp_ns for c in self._uss):
            self.stats.duplicates += 1
            return
        self._uss.append(cycle)
        self._uss = deque(sorted(self._uss, key=lambda c: c.stamp_ns), maxlen=32)
        self._collect()

    def _sanitise(self, cycle: UssCycle) -> UssCycle:
        """Drop echoes no real sensor can produce; count them and remember the count on the cycle."""
        ids = np.array([u.id for u in self.rig.uss])
        max_range = 2 * max(u.range_max for u in self.rig.uss)
        ok = (np.isin(cycle.sender, ids) & np.isin(cycle.receiver, ids)
              & np.isfinite(cycle.distance) & (cycle.distance >= 0) & (cycle.distance <= max_range)
              & np.isfinite(cycle.amplitude) & (cycle.amplitude >= 0) & (cycle.amplitude <= 1))
        bad = int((~ok).sum())
        if bad:
            # Once in the log, not once a cycle: every such frame says it in its degraded list, and the stats count
            # them all (a sensor gone bad would otherwise print a line ten times a second).
            (log.warning if not self.stats.bad_echoes else log.debug)(
                "/uss/echoes at %d ns: %d invalid echoes dropped (NaN or out-of-range distance or amplitude, or "
                "unknown sensor id)%s", cycle.stamp_ns, bad,
                "" if self.stats.bad_echoes else "; later ones are counted, not logged")
            self.stats.bad_echoes += bad
            cycle = UssCycle(cycle.stamp_ns, cycle.cycle, cycle.sender[ok], cycle.receiver[ok], cycle.distance[ok],
                             cycle.amplitude[ok], dict(cycle.status))
            self._bad_echoes[cycle.stamp_ns] = bad
        return cycle

    def push_odometry(self, odo: Odometry) -> None:
        """One odometry sample. From the first one on, a frame waits (within the latency allowance) for the sample
        after its anchor, and one that gets no pose is flagged "odometry missing"."""
        self._odometry_seen = True
        if not self._advance(odo.stamp_ns):
            return
        self._odometry_newest = max(odo.stamp_ns, self._odometry_newest or odo.stamp_ns)
        i = bisect.bisect_left(self._odometry, odo.stamp_ns, key=lambda o: o.stamp_ns)
        if i < len(self._odometry) and self._odometry[i].stamp_ns == odo.stamp_ns:
            self.stats.duplicates += 1
            return
        self._odometry.insert(i, odo)
        del self._odometry[:-_ODOMETRY_KEEP]
        self._collect()

    def push_condition(self, stamp_ns: int, labels: list[str]) -> None:
        self._conditions.append((stamp_ns, list(labels)))

    def push_truth(self, truth: GroundTruth) -> None:
        self._truth[truth.stamp_ns] = truth

    def push_objects(self, stamp_ns: int, objects: list[ObjectBox]) -> None:
        self._objects[stamp_ns] = objects

    # --- output -------------------------------------------------------------------------------------
    def pop_frames(self) -> list[Frame]:
        out = list(self._ready)
        self._ready.clear()
        return out

    def flush(self) -> list[Frame]:
        """End of stream: emit everything pending."""
        self._flush_all()
        return self.pop_frames()

    # --- assembly -----------------------------------------------------------------------------------
    def _anchor(self) -> int | None:
        heads = [b[0].stamp_ns for b in self._images.values() if b]
        return min(heads) if heads else None

    def _cameras_silent_ns(self) -> int:
        """How far on either side of an ultrasonic cycle no camera image may lie for the cycle to anchor a frame of
        its own: the latency allowance, and at least one and a half frame periods of the slowest camera, so that live
        cameras always have an image that close and a healthy stream never gets a camera-less frame."""
        if not self.expect_cameras:
            return self.tol
        periods = [p for p in map(self._period, self.cameras) if p]
        return self.tol + max(self.latency, round(1.5 * max(periods)) if periods else 0)

    def _uss_anchor(self, camera_anchor: int | None, final: bool) -> int | None:
        """The stamp of the earliest ultrasonic cycle after the last frame that no camera image is near (within
        _cameras_silent_ns on either side), once the stream has moved that far past it; None if there is none."""
        wm = self._watermark
        silent = None
        for cycle in self._uss:
            s = cycle.stamp_ns
            if self._emitted_until is not None and s <= self._emitted_until:
                continue
            if camera_anchor is not None and s >= camera_anchor:
                return None  # the camera frame goes first
            if not final and (wm is None or wm < s + self.tol + self.latency * self.expect_cameras):
                return None  # images of this instant may still arrive (the cheap test before the periods)
            silent = self._cameras_silent_ns() if silent is None else silent
            if not final and wm < s + silent:
                return None
            if not any(abs(t - s) <= silent for h in self._history.values() for t in h):
                return s
        return None

    def _collect(self, final: bool = False) -> None:
        while True:
            anchor = self._anchor()
            uss_anchor = self._uss_anchor(anchor, final)
            if uss_anchor is not None:
                self._emit(uss_anchor, dict.fromkeys(self.cameras))
                continue
            if anchor is None:
                return
            wm = self._watermark if self._watermark is not None else anchor
            if not final and wm < anchor + self.tol:
                return  # images of this instant may still arrive
            near = {c: self._nearest(c, anchor) for c in self.cameras}
            waiting = any(v is None for v in near.values()) or self._awaiting_odometry(anchor)
            if waiting and not final and wm < anchor + self.tol + self.latency:
                return  # give late sensors their latency allowance
            missing = [c for c, v in near.items() if v is None]
            if missing and all(self._alive_and_slower(c, anchor) for c in missing):
                # A faster camera's extra image: the others are alive but have no image at this instant.
                for c, idx in near.items():
                    if idx is not None:
                        self._images[c].pop(idx)
                        self.stats.rate_excess += 1
                continue
            self._emit(anchor, near)

    def _awaiting_odometry(self, anchor: int) -> bool:
        """The stream has carried odometry, but no sample at or after the anchor has come yet (the one that makes
        the pose at the anchor an interpolation), and the odometry was alive lately: a stream silent for longer
        than ODOMETRY_MAX_GAP_NS before the anchor would only hold every frame back by the latency allowance."""
        newest = self._odometry_newest
        if not self._odometry_seen or (newest is not None and newest >= anchor):
            return False
        return newest is None or anchor - newest <= ODOMETRY_MAX_GAP_NS

    def _nearest(self, camera: str, anchor: int) -> int | None:
        buf = self._images[camera]
        best, best_dt = None, None
        for i, im in enumerate(buf):
            dt = abs(im.stamp_ns - anchor)
            if dt <= self.tol and (best_dt is None or dt < best_dt):
                best, best_dt = i, dt
        return best

    def _period(self, camera: str) -> float | None:
        """Median frame interval of a camera (robust to a dropout), None until known."""
        h = sorted(self._history[camera])
        return float(np.median(np.diff(h))) if len(h) >= 3 else None

    def _alive_and_slower(self, camera: str, anchor: int) -> bool:
        """A camera without an image at `anchor` that is merely slower than the others (rate mismatch), as
        opposed to one that dropped out: its own period is clearly longer than the fastest camera's and it
        delivered an image within one of its periods around the anchor."""
        periods = {c: self._period(c) for c in self.cameras}
        period = periods[camera]
        known = [p for p in periods.values() if p]
        if period is None or not known:
            return False
        if period <= 1.5 * min(known):
            return False
        return any(abs(s - anchor) <= 1.25 * period for s in self._history[camera])

    def _emit(self, anchor: int, near: dict[str, int | None]) -> None:
        images: dict[str, CameraImage | None] = {}
        degraded: list[str] = []
        for c in self.cameras:
            idx = near[c]
            images[c] = self._images[c].pop(idx) if idx is not None else None
            if images[c] is None:
                degraded.append(f"camera {c} missing")
                self.stats.missing[f"camera {c}"] += 1
        # Drop images that now lie before this frame (they can no longer belong to a later one).
        limit = anchor + self.tol
        for c in self.cameras:
            buf = self._images[c]
            while buf and buf[0].stamp_ns < anchor - self.tol:
                buf.pop(0)
                self.stats.late += 1

        uss = self._pick_uss(anchor)
        if uss is None:
            degraded.append("uss missing")
            self.stats.missing["uss"] += 1
        else:
            if uss.stamp_ns in self._bad_echoes:
                degraded.append(f"uss {self._bad_echoes[uss.stamp_ns]} invalid echoes dropped")
            for sid, status in sorted(uss.status.items()):
                if status != UssStatus.OK:
                    name = self._uss_name(sid)
                    degraded.append(f"uss {name} {'no response' if status == UssStatus.NO_RESPONSE else 'blocked'}")
        odometry = self._pick_odometry(anchor)
        if odometry is None and self._odometry_seen:
            degraded.append("odometry missing")
            self.stats.missing["odometry"] += 1
        conditions = [lab for s, lab in self._conditions if s <= limit][-1:] or [[]]
        truth = self._pick_stamped(self._truth, anchor)
        objects = self._pick_stamped(self._objects, anchor)
        if truth is not None and objects is not None:
            truth.objects = objects
        frame = Frame(self._index, anchor, images, uss, degraded, list(conditions[0]), truth, odometry)
        self._index += 1
        self.stats.frames += 1
        self.stats.degraded_frames += bool(degraded)
        self._emitted_until = limit
        self._ready.append(frame)

    def _pick_uss(self, anchor: int) -> UssCycle | None:
        cands = [c for c in self._uss if c.stamp_ns <= anchor + self.tol and anchor - c.stamp_ns <= self.uss_max_age]
        if not cands:
            return None
        cycle = cands[-1]
        if cycle.stamp_ns in self._uss_used:
            self.stats.uss_reused += 1
        self._uss_used.add(cycle.stamp_ns)
        if len(self._uss_used) > 64:
            self._uss_used = {s for s in self._uss_used if s >= anchor - self.uss_max_age}
        return cycle

    def _pick_odometry(self, anchor: int) -> Pose2D | None:
        """The pose at the anchor: interpolated between the samples that bracket it when they are at most
        ODOMETRY_MAX_GAP_NS apart, else the nearest sample within the camera tolerance, else None."""
        samples = self._odometry
        i = bisect.bisect_right(samples, anchor, key=lambda o: o.stamp_ns)  # samples[:i] are at or before the anchor
        before = samples[i - 1] if i else None
        after = samples[i] if i < len(samples) else None
        # A later frame's anchor lies after anchor - tol (earlier images are late): keep the sample before that.
        del samples[:max(bisect.bisect_right(samples, anchor - self.tol, key=lambda o: o.stamp_ns) - 1, 0)]
        if before is not None and after is not None and after.stamp_ns - before.stamp_ns <= ODOMETRY_MAX_GAP_NS:
            f = (anchor - before.stamp_ns) / (after.stamp_ns - before.stamp_ns)
            a, b = before.pose, after.pose
            pose = Pose2D(a.x + f * (b.x - a.x), a.y + f * (b.y - a.y), a.yaw + f * wrap_angle(b.yaw - a.yaw))
        else:
            near = [o for o in (before, after) if o is not None and abs(o.stamp_ns - anchor) <= self.tol]
            if not near:
                return None
            pose = min(near, key=lambda o: abs(o.stamp_ns - anchor)).pose
        return Pose2D(pose.x, pose.y, wrap_angle(pose.yaw))

    def _pick_stamped(self, table: dict[int, object], anchor: int):
        if not table:
            return None
        stamps = np.fromiter(table.keys(), dtype=np.int64)
        i = int(np.argmin(np.abs(stamps - anchor)))
        value = table[int(stamps[i])] if abs(int(stamps[i]) - anchor) <= self.tol else None
        for s in stamps[stamps <= anchor + self.tol]:
            del table[int(s)]
        return value

    def _uss_name(self, sensor_id: int) -> str:
        try:
            return self.rig.uss_by_id(sensor_id).name
        except Exception:
            return f"#{sensor_id}"

    def _flush_all(self) -> None:
        self._collect(final=True)


def synchronise(rig: Rig, messages: Iterable[tuple[str, object]], latency_ns: int = 100_000_000) -> Iterator[Frame]:
    """Frames from a stream of (kind, value) pairs: kind 'image' (CameraImage), 'uss' (UssCycle),
    'odometry' (Odometry), 'condition' ((stamp_ns, labels)), 'truth' (GroundTruth), 'objects' ((stamp_ns,
    [ObjectBox]))."""
    sync = Synchroniser(rig, latency_ns)
    for kind, value in messages:
        if kind == "image":
            sync.push_image(value)
        elif kind == "uss":
            sync.push_uss(value)
        elif kind == "odometry":
            sync.push_odometry(value)
        elif kind == "condition":
            sync.push_condition(*value)
        elif kind == "truth":
            sync.push_truth(value)
        elif kind == "objects":
            sync.push_objects(*value)
        yield from sync.pop_frames()
    yield from sync.flush()
