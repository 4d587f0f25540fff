"""Live sources for the runtime: a TOML file naming the cameras (sensors.drivers.camera) and the CAN bus of the
ultrasonics and the vehicle's motion (sensors.drivers.can_uss, sensors.drivers.can_odometry), opened up front and
pumped by one thread each into the synchroniser, which hands Frames to the runtime in the order it assembles them."""

from __future__ import annotations

import logging
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from sensors.errors import ConfigError, NearfieldError
from sensors.messages import Frame, Odometry, UssCycle
from sensors.rig import Rig, load_rig
from sensors.sync import Synchroniser

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 (JetPack 6)
    import tomli as tomllib

log = logging.getLogger(__name__)

EXAMPLE = """\
rig = "my-car.toml"            # optional: the rig file (default: the shipped rig)
[cameras]                      # rig camera = video file, /dev/videoN or index, or a GStreamer pipeline
FV = "/dev/video0"
RV = "nvarguscamerasrc sensor-id=1 ! ... ! appsink drop=true max-buffers=1"
[can]                          # optional: the ultrasonic ECU (and the vehicle's VEH_Motion odometry frames)
channel = "can0"               # a CAN channel, or a CAN log file (.log/.asc/.blf) replayed in real time
interface = "socketcan"        # python-can interface of a channel
bitrate = 500000               # optional
[sync]                         # optional
latency_ms = 100               # how long a frame waits for a late sensor before it goes out degraded
"""

# Errors point here rather than print EXAMPLE: the CLI reports an error in one line.
EXAMPLE_POINTER = "see the example in deploy/JETSON.md (Run) or deploy/live_config.py EXAMPLE"


@dataclass(frozen=True)
class LiveConfig:
    """What a LIVE_CONFIG file names; `source` (the file) names the culprit in error messages."""

    cameras: dict[str, str | int] = field(default_factory=dict)
    can: str | None = None
    can_interface: str = "socketcan"
    can_bitrate: int | None = None
    rig: Path | None = None
    sync_latency_ms: float = 100.0
    source: str = "<live config>"


def load_live_config(path: str | Path) -> LiveConfig:
    """Read and validate a LIVE_CONFIG TOML (see EXAMPLE); relative paths are resolved against its folder."""
    from sensors.drivers.camera import parse_camera_arg
    from sensors.live import looks_like_can_file

    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e).splitlines()[0]
        raise ConfigError(f"{path}: cannot read the live configuration ({reason}); {EXAMPLE_POINTER}") from None
    unknown = sorted(set(data) - {"rig", "cameras", "can", "sync"})
    if unknown:
        raise ConfigError(f"{path}: unknown field(s) {', '.join(unknown)}; expected rig, [cameras], [can], [sync]")
    cams = data.get("cameras", {})
    if not isinstance(cams, dict) or not all(isinstance(v, (str, int)) for v in cams.values()):
        raise ConfigError(f"{path}: [cameras] must map rig camera names to sources (strings or device numbers)")
    if "rig" in data and not isinstance(data["rig"], str):
        raise ConfigError(f"{path}: rig must be the path of a rig file (a string), got {data['rig']!r}")
    rig_path = _resolve(path, data["rig"]) if "rig" in data else None
    cameras = {}
    for name, src in cams.items():
        src = str(_resolve(path, src)) if isinstance(src, str) and _looks_like_file(src) else src
        cam, parsed = parse_camera_arg(f"{name}={src}")
        cameras[cam] = parsed
    can = data.get("can", {})
    if not isinstance(can, dict) or not all(isinstance(can.get(k, ""), str) for k in ("channel", "interface")):
        raise ConfigError(f"{path}: [can] must be a table with a string 'channel' (and 'interface')")
    unknown = sorted(set(can) - {"channel", "interface", "bitrate"})
    if unknown:
        raise ConfigError(f"{path}: unknown field(s) can.{', can.'.join(unknown)}; expected channel, interface, "
                          "bitrate")
    channel = can.get("channel")
    if channel is not None and looks_like_can_file(channel):
        channel = str(_resolve(path, channel))
        if not Path(channel).is_file():  # else it would be tried as a bus channel, and fail as one
            raise ConfigError(f"{path}: can.channel {can['channel']!r}: no such CAN log file {channel} (a bus "
                              "channel is a name such as can0)")
    bitrate = can.get("bitrate")
    if bitrate is not None and (not isinstance(bitrate, int) or bitrate <= 0):
        raise ConfigError(f"{path}: can.bitrate must be a positive whole number, got {bitrate!r}")
    sync = data.get("sync", {})
    latency = sync.get("latency_ms", 100.0) if isinstance(sync, dict) else None
    if (not isinstance(sync, dict) or set(sync) - {"latency_ms"} or isinstance(latency, bool)
            or not isinstance(latency, (int, float)) or not 0 < latency <= 10_000):
        raise ConfigError(f"{path}: [sync] takes only latency_ms, a positive number of milliseconds up to 10000")
    if not cameras and channel is None:
        raise ConfigError(f"{path}: names no source; give [cameras] and/or [can]; {EXAMPLE_POINTER}")
    return LiveConfig(cameras, channel, str(can.get("interface", "socketcan")), bitrate, rig_path, float(latency),
                      str(path))


def _looks_like_file(spec: str) -> bool:
    return "!" not in spec and not spec.startswith("/dev/") and "." in Path(spec).name


def _resolve(config: Path, value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else config.parent / p


class LiveSource:
    """Frames from live drivers, stamped on one monotonic `clock` (so a frame's age is clock() - stamp). The
    sources open in the constructor (a bad one fails before any output exists) and run when frames() is
    iterated; video and CAN files replayed as live sensors start their time together then, not when opened (a model
    load in between would age every frame). It ends when every source has ended or `stop` is set. A source that
    fails mid-run is reported in `errors` while the others go on (the synchroniser flags its frames degraded)."""

    live = True

    def __init__(self, config: LiveConfig, clock: Callable[[], int] = time.monotonic_ns,
                 stop: threading.Event | None = None, queue_size: int = 64):
        from sensors.drivers.camera import VideoCameraSource, source_kind
        from sensors.live import _is_can_file

        self.config, self.clock = config, clock
        self.name = config.source
        self.rig: Rig = load_rig(config.rig)
        self.stop = stop or threading.Event()
        self._done = threading.Event()  # the run is over: pumps stop (the caller's `stop` is left as it was)
        self.errors: list[str] = []
        self.discarded = 0  # frames the runtime fell too far behind to take (the queue's oldest)
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._sources = []
        for name in config.cameras:
            if name not in self.rig.cameras:
                raise ConfigError(f"{config.source}: camera {name!r} is not in the rig ({', '.join(self.rig.cameras)})")
        can_file = config.can is not None and _is_can_file(config.can, f"{config.source}: can.channel")
        # The files this source reads: a run must not write its results over one of them.
        self.inputs = tuple(Path(p) for p in (config.source, config.rig, config.can if can_file else None,
                                              *(s for s in config.cameras.values() if source_kind(s) == "file"))
                            if p is not None)
        try:
            for name, src in config.cameras.items():
                cam = self.rig.cameras[name]
                self._sources.append(("image", VideoCameraSource(name, src, clock=clock, size=(cam.width, cam.height),
                                                                 realtime=True, start_ns=None)))
            if config.can is not None:
                if can_file:
                    from sensors.live import _CanFileReplay  # replays a CAN log as a live bus, as `record` does

                    self._sources.append(("uss", _CanFileReplay(config.can, clock)))
                else:
                    from sensors.drivers.can_uss import CanUssSource

                    self._sources.append(("uss", CanUssSource(config.can, config.can_interface, config.can_bitrate,
                                                              clock=clock, odometry=True)))
        except NearfieldError:
            self.close()
            raise

    @property
    def total(self) -> int | None:
        return None

    @property
    def damage(self) -> list[str]:
        return list(self.errors)

    def frames(self) -> Iterator[Frame]:
        from sensors.live import start_together

        sync = Synchroniser(self.rig, latency_ns=round(self.config.sync_latency_ms * 1e6),
                            expect_cameras=bool(self.config.cameras))
        lock = threading.Lock()
        threads = [threading.Thread(target=self._pump, args=(kind, src, sync, lock), daemon=True,
                                    name=f"live {getattr(src, 'name', kind)}") for kind, src in self._sources]
        start_together([src for _, src in self._sources], self.clock)
        for t in threads:
            t.start()
        try:
            while not self._halted:
                try:
                    yield self._queue.get(timeout=0.05)
                except queue.Empty:
                    if not any(t.is_alive() for t in threads):
                        break
            if not self._halted:
                while not self._queue.empty():
                    yield self._queue.get_nowait()
                with lock:
                    rest = sync.flush()
                yield from rest
        finally:
            self._done.set()
            for t in threads:
                t.join(timeout=5.0)

    @property
    def _halted(self) -> bool:
        return self.stop.is_set() or self._done.is_set()

    def _pump(self, kind: str, source, sync: Synchroniser, lock: threading.Lock) -> None:
        try:
            for item in source:
                if self._halted:
                    break
                with lock:
                    if isinstance(item, UssCycle):
                        sync.push_uss(item)
                    elif isinstance(item, Odometry):  # VEH_Motion on the ultrasonics' bus
                        sync.push_odometry(item)
                    else:
                        sync.push_image(item)
                    ready = sync.pop_frames()
                for frame in ready:
                    self._put(frame)
        except NearfieldError as e:
            if not self._halted:
                name = getattr(source, "name", kind)
                log.error("%s: %s", name, e)
                self.errors.append(f"{name}: {e}")
        finally:
            source.close()

    def _put(self, frame: Frame) -> None:
        # A consumer that falls behind must not hold back the drivers: the oldest waiting frame gives way.
        while True:
            try:
                self._queue.put_nowait(frame)
                return
            except queue.Full:
                try:
                    old = self._queue.get_nowait()
                    self.discarded += 1
                    log.warning("runtime behind the live sources: frame %d at %d ns discarded", old.index,
                                old.stamp_ns)
                except queue.Empty:
                    pass

    def close(self) -> None:
        self._done.set()
        for _, src in self._sources:
            src.close()
        self._sources = []


__all__ = ["EXAMPLE", "EXAMPLE_POINTER", "LiveConfig", "LiveSource", "load_live_config"]
