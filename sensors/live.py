"""Recording live drivers into a log: cameras (video files, V4L2, GStreamer) and ultrasonics over CAN, each in its
own thread, all stamped on one monotonic clock and written by the crash-safe Recorder."""

from __future__ import annotations

import itertools
import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from sensors.errors import ConfigError, LogFormatError, NearfieldError, SensorError
from sensors.files import refuse_overwrite
from sensors.messages import CameraImage, Odometry
from sensors.rig import load_rig

log = logging.getLogger(__name__)


@dataclass
class RecordResult:
    path: Path
    seconds: float
    counts: Counter = field(default_factory=Counter)  # topic -> messages
    errors: list[str] = field(default_factory=list)  # sources that failed (the others went on)


def looks_like_can_file(spec: str) -> bool:
    """Whether a CAN source names a log file rather than a bus channel: a .log, .asc or .blf suffix, or a path with a
    slash outside /dev/ (where serial adapters live). Channels are names such as can0, PCAN_USBBUS1 or 239.74.163.2."""
    from sensors.drivers.can_log import CAN_LOG_SUFFIXES

    return Path(spec).suffix.lower() in CAN_LOG_SUFFIXES or ("/" in spec and not spec.startswith("/dev/"))


def _is_can_file(spec: str, what: str = "--can") -> bool:
    """True for a CAN log file to replay, False for a bus channel. A file that is not there is a ConfigError naming
    WHAT: taken for a channel, it would fail as a bus that cannot be opened."""
    if not looks_like_can_file(spec):
        return False
    if not Path(spec).is_file():
        raise ConfigError(f"{what} {spec}: no such CAN log file (a bus channel is a name such as can0)")
    return True


def record(out: str | Path, cameras: Iterable[str], can: str | None = None, rig_path: str | Path | None = None,
           can_interface: str = "socketcan", duration_s: float | None = None, jpeg_quality: int = 90,
           clock=time.monotonic_ns, stop: threading.Event | None = None,
           install_signals: bool = True, overwrite: bool = False) -> RecordResult:
    """Record until every source ends, `duration_s` passes (None: no limit), `stop` is set, or SIGINT/SIGTERM
    arrives. An existing OUT is a ConfigError unless OVERWRITE: it is most likely a drive recorded before.

    cameras: NAME=SOURCE strings (video file, /dev/videoN or index, GStreamer pipeline). Video files play in real
    time, as a live camera would deliver them. can: a CAN channel (e.g. can0) on `can_interface`, or a CAN log file
    (.log/.asc/.blf) replayed in real time. A source that fails is reported and the others keep recording.
    """
    from sensors.drivers.camera import VideoCameraSource, parse_camera_arg, source_kind
    from sensors.imaging import encode_jpeg
    from sensors.recorder import Recorder

    if duration_s is not None and not (math.isfinite(duration_s) and duration_s > 0):
        raise ConfigError(f"--duration {duration_s:g}: must be a positive number of seconds; leave it out to record "
                          "until the sources end or Ctrl-C")
    rig = load_rig(rig_path)
    parsed = [parse_camera_arg(a, rig.cameras) for a in cameras]
    names = [n for n, _ in parsed]
    if len(set(names)) != len(names):
        raise ConfigError(f"each camera may be given once; got {', '.join(names)}")
    if not parsed and can is None:
        raise ConfigError("nothing to record: give --camera NAME=SOURCE and/or --can CHANNEL|FILE")
    # The Recorder creates OUT empty: a video, CAN log or rig file given as a source would be gone before it is read.
    refuse_overwrite(out, [rig_path, *(src for _, src in parsed if source_kind(src) == "file"),
                           can if can is not None and _is_can_file(can) else None], "--out")
    if Path(out).exists() and not overwrite:
        raise ConfigError(f"--out {out}: exists already (a drive recorded before?); give another path, or --overwrite "
                          "to record over it")

    sources = []  # opened before recording starts, so a bad source fails the command up front
    try:
        for name, src in parsed:
            cam = rig.cameras[name]
            sources.append(("camera", name, VideoCameraSource(name, src, clock=clock, size=(cam.width, cam.height),
                                                              realtime=True, start_ns=None)))
        if can is not None:
            if _is_can_file(can):
                sources.append(("uss", can, _CanFileReplay(can, clock)))
            else:
                from sensors.drivers.can_uss import CanUssSource

                sources.append(("uss", can, CanUssSource(can, can_interface, clock=clock, odometry=True)))
    except NearfieldError:
        for _, _, s in sources:
            s.close()
        raise

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = RecordResult(out, 0.0)
    stop = stop or threading.Event()
    lock = threading.Lock()
    recorder = Recorder(out, rig, metadata={"generator": "nearfield record",
                                            "sources": "; ".join([*cameras, *([f"can={can}"] if can else [])])})

    def pump(kind: str, name: str, source) -> None:
        try:
            for item in source:
                if stop.is_set():
                    break
                if kind == "camera":
                    recorder.write_camera(CameraImage(name, item.stamp_ns, jpeg=encode_jpeg(item.rgb, jpeg_quality)))
                    topic = f"/camera/{name}/image"
                elif isinstance(item, Odometry):  # the vehicle's motion frames on the ultrasonics' bus
                    recorder.write_odometry(item)
                    topic = "/odometry"
                else:
                    recorder.write_uss(item)
                    topic = "/uss/echoes"
                with lock:
                    result.counts[topic] += 1
        except NearfieldError as e:
            if not stop.is_set():
                log.error("%s: %s", name, e)
                with lock:
                    result.errors.append(f"{name}: {e}")
        finally:
            source.close()

    threads = [threading.Thread(target=pump, args=s, name=f"record {s[1]}", daemon=True) for s in sources]
    if install_signals and threading.current_thread() is threading.main_thread():
        recorder.install_signal_handlers()
    t0 = start_together([s for _, _, s in sources], clock)
    try:
        for t in threads:
            t.start()
        deadline = None if duration_s is None else time.monotonic() + duration_s
        while any(t.is_alive() for t in threads) and not stop.is_set():
            if deadline is not None and time.monotonic() >= deadline:
                break
            time.sleep(0.02)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=5.0)
        recorder.close()
        result.seconds = (clock() - t0) / 1e9
    return result


def start_together(sources, clock) -> int:
    """Give the replayed files among live SOURCES (video files, CAN logs: those with a `start_ns` of None) one time
    base, `clock` now, just before they are iterated: their first frames are stamped together, and as fresh as a
    live sensor's however long the set-up (a model load) took since they were opened. Returns it."""
    t0 = clock()
    for s in sources:
        if getattr(s, "start_ns", 0) is None:
            s.start_ns = t0
    return t0


class _CanFileReplay:
    """A CAN log file played like a live bus: cycles and odometry restamped onto the recorder's clock, in real
    time, the first at `start_ns` (None: the clock when iteration starts). The file is read up to its first cycle
    or odometry sample when opened, so that one that is not a CAN log of these buses fails before recording starts:
    LogFormatError."""

    def __init__(self, path: str, clock, start_ns: int | None = None):
        from sensors.drivers.can_log import read_can_log

        self.path, self.clock, self.start_ns = path, clock, start_ns
        self._cycles = read_can_log(path, odometry=True)
        try:
            self._first = next(self._cycles, None)
        except BaseException:
            self.close()
            raise
        if self._first is None:
            raise LogFormatError(f"--can {path}: holds no ultrasonic cycle nor VEH_Motion frame of sensors/can/uss.dbc "
                                 "and vehicle.dbc (no CAN frames of these buses, or not a CAN log); give the log of "
                                 "the car's ultrasonic bus")

    def __iter__(self):
        origin = None
        for cycle in itertools.chain([self._first] if self._first is not None else [], self._cycles):
            if origin is None:
                origin = (self.clock() if self.start_ns is None else self.start_ns, cycle.stamp_ns)
            due = origin[0] + (cycle.stamp_ns - origin[1])
            delay = due - self.clock()
            if delay > 0:
                time.sleep(delay / 1e9)
            if isinstance(cycle, Odometry):
                yield Odometry(int(due), cycle.pose)
            else:
                cycle.stamp_ns = int(due)
                yield cycle

    def close(self) -> None:
        close = getattr(self._cycles, "close", None)
        if close:
            close()


def bench_decode(log_path: str | Path, reduced: bool = False) -> dict[str, object]:
    """Replay a drive into Frames (JPEG decode included) as fast as possible."""
    from sensors.log import LogReader
    from sensors.replay import replay_frames

    with LogReader(log_path) as reader:
        cam = next(iter(reader.rig.cameras.values()))
        resolution = f"{cam.width}x{cam.height}"
    for _ in replay_frames(log_path):  # warm up: imports, decoder threads
        break
    t0 = time.perf_counter()
    n = sum(1 for _ in replay_frames(log_path, decode_scale=2 if reduced else 1))
    dt = time.perf_counter() - t0
    if n == 0:
        raise SensorError(f"{log_path}: no frames to replay")
    return {"resolution": resolution, "frames": n, "seconds": dt, "fps": n / dt, "camera_rate_multiple": n / dt / 30}
