"""The embedded runtime: a recorded drive or live sensors -> decode -> preprocessing -> backend -> post-processing
-> a results MCAP (deploy.results), with a frame-deadline monitor and a clean stop on SIGINT/SIGTERM. Imports neither
torch nor Qt: this is what runs on the car."""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from deploy.pipeline import Pipeline
from deploy.results import LATENCY_STAGES, ResultRecord, ResultsWriter
from deploy.zoo import ZooModel, get_model
from perception.postprocess import check_free_confidence
from perception.temporal import check_decay
from sensors.errors import ConfigError, LogFormatError
from sensors.files import refuse_overwrite
from sensors.messages import Frame
from sensors.replay import decode_frame
from sensors.rig import Rig

log = logging.getLogger(__name__)

LATE_POLICIES = ("keep", "drop")
SUMMARY_STAGES = (*LATENCY_STAGES, "total")


# --- the deadline monitor -----------------------------------------------------------------------------------------

class DeadlineMonitor:
    """Judges each frame against the deadline: late when its results are ready more than `deadline_ms` after the
    frame was captured (its age when taken + decode .. post-processing). Policy 'keep' publishes late results,
    flagged; 'drop' withholds them (a consumer must not act on stale obstacles) and, for a frame already older
    than the deadline when taken, skips the work altogether so that a runtime behind its sources catches up.
    Every frame is recorded either way."""

    def __init__(self, deadline_ms: float | None = None, policy: str = "keep"):
        if policy not in LATE_POLICIES:
            raise ConfigError(f"--late-policy {policy!r}: choose one of {', '.join(LATE_POLICIES)}")
        if deadline_ms is not None and not (math.isfinite(deadline_ms) and deadline_ms > 0):
            raise ConfigError(f"--deadline-ms must be a positive number of milliseconds, got {deadline_ms}")
        self.deadline_ms, self.policy = deadline_ms, policy
        self.frames = self.late = self.dropped = 0

    def stale(self, age_ms: float) -> bool:
        """Whether to skip a frame that is already past its deadline when taken (policy drop only)."""
        return self.policy == "drop" and self.deadline_ms is not None and age_ms > self.deadline_ms

    def judge(self, total_ms: float) -> tuple[bool, bool]:
        """(late, dropped) for a frame whose results were ready `total_ms` after capture; counts it."""
        late = self.deadline_ms is not None and total_ms > self.deadline_ms
        dropped = late and self.policy == "drop"
        self.frames += 1
        self.late += late
        self.dropped += dropped
        return late, dropped

    @property
    def counters(self) -> dict[str, int]:
        return {"frames": self.frames, "late_frames": self.late, "dropped_frames": self.dropped}


class LatencyStats:
    """Per-stage latency summaries in constant memory (a long drive must not grow the process): exact count,
    mean and max; percentiles from a log-spaced histogram with bins 1.9 % wide (0.001 ms .. 100 s)."""

    _EDGES = np.geomspace(1e-3, 1e5, 1001)

    def __init__(self, stages: tuple[str, ...] = SUMMARY_STAGES):
        self.stages = stages
        self.count = 0
        self._sum = np.zeros(len(stages))
        self._max = np.zeros(len(stages))
        self._hist = np.zeros((len(stages), len(self._EDGES) + 1), np.int64)

    def add(self, latency: dict[str, float]) -> None:
        v = np.array([latency.get(s, 0.0) for s in self.stages])
        self.count += 1
        self._sum += v
        np.maximum(self._max, v, out=self._max)
        self._hist[np.arange(len(self.stages)), np.searchsorted(self._EDGES, v)] += 1

    def percentile(self, stage: str, q: float) -> float:
        """The q-th percentile (0..100) of a stage, as the geometric centre of its histogram bin."""
        if not self.count:
            return math.nan
        i = self.stages.index(stage)
        k = int(np.searchsorted(np.cumsum(self._hist[i]), math.ceil(q / 100 * self.count)))
        if k == 0:
            return 0.0
        hi = self._EDGES[min(k, len(self._EDGES) - 1)]
        return float(min(math.sqrt(self._EDGES[k - 1] * hi), self._max[i]))

    def summary(self) -> dict[str, dict[str, float]]:
        """stage -> mean, p50, p95, max (ms)."""
        return {s: {"mean": float(self._sum[i] / max(self.count, 1)), "p50": self.percentile(s, 50),
                    "p95": self.percentile(s, 95), "max": float(self._max[i])} for i, s in enumerate(self.stages)}


# --- sources ------------------------------------------------------------------------------------------------------

class LogSource:
    """The frames of a recorded drive, not yet decoded (the runtime times decoding as its own stage). A damaged or
    cut-off log yields every readable frame; `damage` says where it stops."""

    live = False

    def __init__(self, path: str | Path):
        from sensors.log import LogReader
        from sensors.schemas import USS_TOPIC, image_topic

        self.path = Path(path)
        self.name = str(path)
        self.inputs = (self.path,)  # files the run reads: never to be overwritten by its output
        if not self.path.is_file():
            raise LogFormatError(f"{path}: no such log file")
        self.reader = LogReader(self.path)
        try:
            self.rig: Rig = self.reader.rig
            # Frames anchor on the camera images; without any, on the ultrasonic cycles (sensors.sync).
            self.total: int | None = (max((len(self.reader.index(image_topic(c))) for c in self.rig.cameras),
                                          default=0) or len(self.reader.index(USS_TOPIC)) or None)
            if self.total is None and not self.reader.damages:
                raise LogFormatError(f"{path}: no camera image (/camera/<name>/image) and no ultrasonic cycle "
                                     f"({USS_TOPIC}): no frame to run on")
        except Exception:
            self.reader.close()
            raise

    @property
    def damage(self) -> list[str]:
        return [str(d) for d in self.reader.damages]

    def frames(self) -> Iterator[Frame]:
        from sensors.replay import replay_frames

        return replay_frames(self.path, decode=False, reader=self.reader)

    def close(self) -> None:
        self.reader.close()


def open_source(source, stop: threading.Event | None = None):
    """A LogSource for an .mcap drive, a LiveSource for a LIVE_CONFIG .toml (or a LiveConfig); anything with
    rig, name, live, total, damage, frames() and close() (and optionally inputs, the files it reads) passes
    through."""
    from deploy.live_config import LiveConfig, LiveSource, load_live_config

    if isinstance(source, LiveConfig):
        return LiveSource(source, stop=stop)
    if isinstance(source, (str, Path)):
        suffix = Path(source).suffix.lower()
        if suffix == ".toml":
            return LiveSource(load_live_config(source), stop=stop)
        if suffix == ".mcap":
            return LogSource(source)
        raise ConfigError(f"--source {source}: give a drive log (.mcap) or a live configuration (.toml)")
    return source


# --- the run ------------------------------------------------------------------------------------------------------

@dataclass
class RunStats:
    """What a run did. `frames` counts every input frame taken; `written` those whose maps were published."""

    out: Path
    model: str
    backend: str
    source: str
    frames: int = 0
    written: int = 0
    late: int = 0
    dropped: int = 0
    degraded: int = 0
    discarded: int = 0  # live frames the runtime fell too far behind to take at all
    seconds: float = 0.0
    latency_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    input_damage: list[str] = field(default_factory=list)
    stopped_by: str | None = None  # SIGINT, SIGTERM or stop_event

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def format(self) -> str:
        lines = [f"{self.out}: {self.frames} frames from {self.source} through {self.model} ({self.backend}) in "
                 f"{self.seconds:.1f} s, {self.fps:.1f} frames/s end to end",
                 f"  written {self.written}, late {self.late}, dropped {self.dropped}, degraded {self.degraded}"
                 + (f", discarded (behind the live sources) {self.discarded}" if self.discarded else "")]
        if self.latency_ms:
            lines.append(f"  {'stage':<12} {'mean':>8} {'p50':>8} {'p95':>8} {'max':>8}  ms")
            lines += [f"  {s:<12} {v['mean']:>8.2f} {v['p50']:>8.2f} {v['p95']:>8.2f} {v['max']:>8.2f}"
                      for s, v in self.latency_ms.items()]
        if self.stopped_by:
            lines.append(f"  stopped by {self.stopped_by}; the results file is complete up to the last frame")
        for d in self.input_damage:
            lines.append(f"  input damaged: {d}; every readable frame before it was processed")
        return "\n".join(lines)


class Runtime:
    """Processes Frames into ResultRecords: the pipeline, the deadline monitor and latency statistics."""

    def __init__(self, pipeline: Pipeline, monitor: DeadlineMonitor, live: bool = False,
                 clock=time.monotonic_ns):
        self.pipeline, self.monitor, self.live, self.clock = pipeline, monitor, live, clock
        self.stats = LatencyStats()
        self.degraded = 0

    def process(self, frame: Frame) -> ResultRecord:
        # A live frame is stamped at capture on `clock`; a log's clock has nothing to do with now.
        age = max(0.0, (self.clock() - frame.stamp_ns) / 1e6) if self.live else 0.0
        if self.monitor.stale(age):
            self.degraded += frame.is_degraded
            late, dropped = self.monitor.judge(age)
            present = tuple(c for c in self.pipeline.prep.cameras if frame.images.get(c) is not None)
            return self._record(frame, None, {"age": age, "total": age}, present, late, dropped)
        t0 = time.perf_counter()
        # Live images arrive decoded (their driver checks their size): nothing to do.
        decode_frame(frame, self.pipeline.decode_scale, self.pipeline.rig)
        decode_ms = (time.perf_counter() - t0) * 1e3
        result = self.pipeline.process(frame)
        self.degraded += frame.is_degraded  # after decoding and preprocessing, which flag bad images
        latency = {"decode": decode_ms, **result.latency_ms, "age": age}
        latency["total"] = age + sum(latency[s] for s in ("decode", "preprocess", "inference", "postprocess"))
        late, dropped = self.monitor.judge(latency["total"])
        present = tuple(c for c, p in zip(self.pipeline.prep.cameras, result.present, strict=True) if p)
        return self._record(frame, None if dropped else result, latency, present, late, dropped)

    def _record(self, frame: Frame, result, latency, present, late, dropped) -> ResultRecord:
        s = None if result is None else result.sectors
        return ResultRecord(frame.index, frame.stamp_ns, None if result is None else result.class_map,
                            None if result is None else result.occupancy, None if s is None else s.distance,
                            None if s is None else s.level, () if s is None else tuple(s.names), latency,
                            list(frame.degraded if result is None else result.degraded), present,
                            list(frame.conditions), late, dropped,
                            self.monitor.counters, self.monitor.deadline_ms)

    def written(self, record: ResultRecord) -> None:
        """Account a record once the writer has added its write time."""
        self.stats.add(record.latency)


@contextlib.contextmanager
def _stop_on_signals(stop: threading.Event, caught: list[str]):
    """SIGINT/SIGTERM set `stop` (the loop finishes the frame in hand and the file) instead of killing the
    process mid-write. Only the main thread can own signal handlers; elsewhere the caller's stop_event rules."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, _frame):
        caught.append(signal.Signals(signum).name)
        log.warning("%s received: finishing the results file", caught[-1])
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, h in previous.items():
            signal.signal(sig, h)


def run(model: ZooModel | str, source, out: str | Path, backend: str = "ort", threads: int | None = None,
        deadline_ms: float | None = None, late_policy: str = "keep", progress: bool = True,
        stop_event: threading.Event | None = None, device: str = "cpu",
        free_confidence: float | None = None, memory_decay: float | None = None, echo_floor: bool = False) -> RunStats:
    """Run MODEL (zoo name or ZooModel) over SOURCE (drive .mcap, LIVE_CONFIG .toml, LiveConfig) into the results
    file OUT, one record per input frame, until the source ends, `stop_event` is set or SIGINT/SIGTERM arrives.
    The source and the model (its checksum) are checked before OUT is created: a bad one leaves no file.
    free_confidence, memory_decay, echo_floor: the near-field bias, memory and echo floor (Pipeline), recorded in the
    results' metadata."""
    monitor = DeadlineMonitor(deadline_ms, late_policy)
    stop = stop_event or threading.Event()
    caught: list[str] = []
    with _stop_on_signals(stop, caught):  # from the start: a signal during set-up still ends cleanly
        return _run(model, source, out, backend, threads, device, monitor, progress, stop, caught, free_confidence,
                    memory_decay, echo_floor)


def _run(model, source, out, backend, threads, device, monitor, progress, stop, caught, free_confidence,
         memory_decay, echo_floor) -> RunStats:
    if free_confidence is not None:
        check_free_confidence(free_confidence)  # before the source is opened
    if memory_decay is not None:
        check_decay(memory_decay)
    src = open_source(source, stop)
    pipeline = None
    try:
        model = get_model(model) if isinstance(model, str) else model
        # ResultsWriter creates OUT empty: an OUT that is the drive log (or the model) would be gone before it is read.
        refuse_overwrite(out, [*getattr(src, "inputs", ()), model.onnx], "--out")
        pipeline = Pipeline(model, src.rig, backend=backend, threads=threads, device=device, source=src.name,
                            free_confidence=free_confidence, memory_decay=memory_decay, echo_floor=echo_floor)
        runtime = Runtime(pipeline, monitor, live=src.live)
        m = pipeline.model
        stats = RunStats(Path(out), m.name, backend, src.name)
        meta = {"model": m.name, "model_sha256": m.sha256, "model_parent": m.parent, "model_method": m.method,
                "backend": backend, "threads": str(threads or "default"), "source": src.name,
                "deadline_ms": str(monitor.deadline_ms or ""), "late_policy": monitor.policy,
                "free_confidence": "" if free_confidence is None else f"{free_confidence:g}",
                "memory_decay": "" if memory_decay is None else f"{memory_decay:g}",
                "echo_floor": "on" if echo_floor else ""}
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        with ResultsWriter(out, src.rig, pipeline.grid, meta) as writer, _progress(progress, src.total) as bar:
            for frame in src.frames():
                if stop.is_set():
                    break
                record = runtime.process(frame)
                writer.write(record)
                runtime.written(record)
                stats.written += not record.dropped
                bar.update(1)
            stopped = caught[-1] if caught else ("stop_event" if stop.is_set() else "")
            writer.summarise({"run_frames": monitor.frames, "run_written": stats.written, "run_late": monitor.late,
                              "run_dropped": monitor.dropped, "run_degraded": runtime.degraded,
                              "run_discarded": getattr(src, "discarded", 0),
                              "run_input_damage": "; ".join(str(d) for d in src.damage),
                              "run_stopped_by": stopped})
        stats.seconds = time.perf_counter() - t0
    finally:
        src.close()
        if pipeline is not None:
            pipeline.close()
    stats.frames, stats.late, stats.dropped = monitor.frames, monitor.late, monitor.dropped
    stats.degraded = runtime.degraded
    stats.discarded = getattr(src, "discarded", 0)
    stats.latency_ms = runtime.stats.summary() if monitor.frames else {}
    stats.input_damage = src.damage
    stats.stopped_by = caught[-1] if caught else ("stop_event" if stop.is_set() else None)
    if stats.late:
        log.warning("%d of %d frames missed the %g ms deadline (%s)", stats.late, stats.frames, monitor.deadline_ms,
                    "dropped" if monitor.policy == "drop" else "kept, flagged late")
    for d in stats.input_damage:
        log.warning("input damaged: %s; %d frames processed (every readable one)", d, stats.frames)
    return stats


class _NoBar:
    def update(self, n: int) -> None:
        pass


@contextlib.contextmanager
def _progress(enabled: bool, total: int | None):
    if not enabled:
        yield _NoBar()
        return
    from tqdm import tqdm

    with tqdm(total=total, unit="frame", desc="run", leave=False) as bar:
        yield bar


__all__ = ["LATE_POLICIES", "DeadlineMonitor", "LatencyStats", "LogSource", "RunStats", "Runtime", "open_source",
           "run"]
