"""Benchmarks of the embedded runtime: per-stage latency and end-to-end frames/s against the same model in torch
eager (`nearfield bench runtime`), and a soak run whose resident memory must not grow (`nearfield bench soak`).
torch is imported only for the eager column."""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploy.pipeline import Pipeline
from deploy.results import ResultsWriter
from deploy.runtime import DeadlineMonitor, LatencyStats, Runtime
from deploy.zoo import ZooModel
from sensors.errors import ConfigError, NearfieldError
from sensors.messages import Frame

log = logging.getLogger(__name__)

BENCH_DRIVE_FRAMES = 10  # a short simulated drive, looped: enough distinct scenes to keep caches honest
WARMUP_FRAMES = 5  # not timed: first-call allocations, backend graph preparation, decoder threads


def looped_frames(path: str | Path, count: int) -> Iterator[Frame]:
    """COUNT undecoded frames of a drive replayed in a loop, re-indexed and re-stamped so that they keep running
    forward in time (a results file stays in time order)."""
    from sensors.replay import replay_frames

    produced, offset = 0, 0
    while produced < count:
        first = last = None
        for frame in replay_frames(path, decode=False):
            first = frame.stamp_ns if first is None else first
            last = frame.stamp_ns
            frame.index = produced
            frame.stamp_ns += offset
            yield frame
            produced += 1
            if produced >= count:
                return
        if first is None:
            raise ConfigError(f"{path}: the drive has no frames to replay")
        offset += last - first + 100_000_000  # one frame period between the end of a loop and the next start


@contextlib.contextmanager
def bench_drive(log_path: str | Path | None) -> Iterator[Path]:
    """LOG_PATH, or a short drive simulated into a temporary folder (removed afterwards)."""
    if log_path is not None:
        yield Path(log_path)
        return
    from sensors.rig import load_rig
    from sim_data.simulate import DriveSpec, simulate_drive

    with tempfile.TemporaryDirectory(prefix="nearfield-bench-") as tmp:
        log.warning("no --log given: simulating a %d-frame drive for the benchmark", BENCH_DRIVE_FRAMES)
        yield simulate_drive(DriveSpec("bench", 11, BENCH_DRIVE_FRAMES, ("day",)), tmp, load_rig())


def _rig_of(path: Path):
    from sensors.log import LogReader

    with LogReader(path) as reader:
        return reader.rig


# --- bench runtime ------------------------------------------------------------------------------------------------

@dataclass
class RuntimeBench:
    model: str
    backend: str
    threads: int | None
    frames: int
    seconds: float
    latency_ms: dict[str, dict[str, float]]
    torch_ms: float | None = None  # torch eager forward, median over the same inputs
    torch_skipped: str = ""  # why there is no torch column
    memory_decay: float | None = None  # the near-field memory ran in the postprocess stage

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    @property
    def ratio(self) -> float | None:
        """torch eager / onnxruntime inference time: how many times faster the deploy backend is."""
        ort = self.latency_ms["inference"]["p50"]
        return self.torch_ms / ort if self.torch_ms is not None and ort > 0 else None

    def as_dict(self) -> dict[str, Any]:
        return {"model": self.model, "backend": self.backend, "threads": self.threads, "frames": self.frames,
                "seconds": self.seconds, "fps": self.fps, "latency_ms": self.latency_ms, "torch_ms": self.torch_ms,
                "torch_vs_backend": self.ratio, "torch_skipped": self.torch_skipped or None,
                "memory_decay": self.memory_decay}

    def format(self) -> str:
        memory = ("" if self.memory_decay is None
                  else f", near-field memory (decay {self.memory_decay:g}) in postprocess")
        lines = [f"{self.model}: {self.frames} frames, backend {self.backend}, threads "
                 f"{self.threads or 'default'}{memory}",
                 f"{'stage':<12} {'mean':>8} {'p50':>8} {'p95':>8} {'max':>8}  ms"]
        lines += [f"{s:<12} {v['mean']:>8.2f} {v['p50']:>8.2f} {v['p95']:>8.2f} {v['max']:>8.2f}"
                  for s, v in self.latency_ms.items()]
        lines.append(f"end to end   {self.fps:.1f} frames/s (log reading and synchronisation included)")
        if self.torch_ms is None:
            lines.append(f"torch eager  skipped: {self.torch_skipped}")
        else:
            lines.append(f"torch eager  {self.torch_ms:.2f} ms inference (p50), {self.ratio:.2f}x the "
                         f"{self.backend} backend's {self.latency_ms['inference']['p50']:.2f} ms")
        return "\n".join(lines)


def bench_runtime(model: ZooModel, log: str | Path | None = None, frames: int = 100, threads: int | None = None,
                  onnx: str | Path | None = None, torch_model: str | Path | None = None,
                  backend: str = "ort", memory_decay: float | None = None) -> RuntimeBench:
    """Time the runtime's stages over FRAMES frames of a drive (looped; results written to a temporary file) and
    the same network in torch eager on the same inputs: `torch_model` (a run directory or trained name), else the
    zoo model's parent when that is a trained model; otherwise the torch column is skipped with the reason.
    memory_decay: run the near-field memory (its cost lands in the postprocess stage)."""
    if frames < 1:
        raise ConfigError(f"bench runtime: --frames must be at least 1, got {frames}")
    with bench_drive(log) as drive, tempfile.TemporaryDirectory(prefix="nearfield-bench-") as tmp:
        rig = _rig_of(drive)
        kw = {"backend": backend, "threads": threads, "memory_decay": memory_decay}
        pipeline = Pipeline.from_onnx(onnx, model, rig, **kw) if onnx else Pipeline(model, rig, **kw)
        try:
            runtime = Runtime(pipeline, DeadlineMonitor())
            samples = []  # network inputs of a few frames, for torch
            with ResultsWriter(Path(tmp) / "results.mcap", rig, pipeline.grid) as writer:
                t0 = None
                for k, frame in enumerate(looped_frames(drive, WARMUP_FRAMES + frames)):
                    if k == WARMUP_FRAMES:
                        runtime.stats, t0 = LatencyStats(), time.perf_counter()
                    record = runtime.process(frame)
                    writer.write(record)
                    runtime.written(record)
                    if len(samples) < BENCH_DRIVE_FRAMES and k >= WARMUP_FRAMES:
                        samples.append(pipeline.prep.network_inputs(frame)[0])
                seconds = time.perf_counter() - t0
        finally:
            pipeline.close()
        result = RuntimeBench(pipeline.model.name, backend, threads, frames, seconds, runtime.stats.summary(),
                              memory_decay=memory_decay)
        result.torch_ms, result.torch_skipped = _torch_eager_ms(model, torch_model, samples, threads)
    return result


def _torch_eager_ms(model: ZooModel, torch_model, samples: list[dict], threads: int | None,
                    repeats: int = 3) -> tuple[float | None, str]:
    """Median forward time of the torch model over the samples, or (None, why not)."""
    import statistics

    source = torch_model or model.parent
    try:
        import torch

        from perception.registry import load_trained
    except ImportError as e:
        return None, f"torch is not installed ({e.name}); this is a runtime-only install"
    try:
        net, config = load_trained(source)
    except NearfieldError as e:
        return None, (f"the zoo model's parent {source!r} is not a trained model ({e}); pass --torch-model RUN_DIR"
                      if torch_model is None else f"--torch-model {source}: {e}")
    if config.bev != model.bev:
        return None, f"{source}'s [bev] table differs from {model.name}'s: not the same network"
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        times = []
        with torch.inference_mode():
            for k in range(repeats):
                for inputs in samples:
                    args = [torch.from_numpy(inputs[n]) for n in ("images", "grid", "valid", "uss")]
                    t0 = time.perf_counter()
                    net(*args)
                    if k:  # the first pass warms up
                        times.append((time.perf_counter() - t0) * 1e3)
    finally:
        torch.set_num_threads(before)
    return (statistics.median(times), "") if times else (None, "no frames to time")


# --- bench soak ---------------------------------------------------------------------------------------------------

def rss_mb() -> float:
    """Resident memory of this process now (Linux /proc), else the peak so far (getrusage)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        import resource
        import sys

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 1024


@dataclass
class SoakResult:
    model: str
    frames: int
    warmup: int
    seconds: float
    rss_start_mb: float  # model loaded, before the first frame
    rss_warm_mb: float  # after the warm-up frames: the baseline
    rss_end_mb: float
    max_growth_mb: float
    samples: list[tuple[int, float]] = field(default_factory=list)  # (frames done, RSS MB)

    @property
    def growth_mb(self) -> float:
        return self.rss_end_mb - self.rss_warm_mb

    @property
    def growth_pct(self) -> float:
        return 100 * self.growth_mb / self.rss_warm_mb

    @property
    def passed(self) -> bool:
        return self.growth_mb <= self.max_growth_mb

    def as_dict(self) -> dict[str, Any]:
        return {"model": self.model, "frames": self.frames, "warmup": self.warmup, "seconds": self.seconds,
                "rss_start_mb": self.rss_start_mb, "rss_warm_mb": self.rss_warm_mb, "rss_end_mb": self.rss_end_mb,
                "growth_mb": self.growth_mb, "growth_pct": self.growth_pct, "max_growth_mb": self.max_growth_mb,
                "passed": self.passed, "samples": self.samples}

    def format(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        return "\n".join([
            f"{self.model}: {self.frames} frames in {self.seconds:.1f} s ({self.frames / self.seconds:.1f} frames/s)",
            f"RSS start        {self.rss_start_mb:8.1f} MB",
            f"RSS after {self.warmup:<6} {self.rss_warm_mb:8.1f} MB  (baseline)",
            f"RSS end          {self.rss_end_mb:8.1f} MB",
            f"growth           {self.growth_mb:+8.2f} MB ({self.growth_pct:+.2f} %) after warm-up; bound "
            f"{self.max_growth_mb:g} MB: {verdict}"])


def soak(model: ZooModel, log: str | Path | None = None, frames: int = 3000, warmup: int = 200,
         max_growth_mb: float = 16.0, threads: int | None = None, backend: str = "ort",
         sample_every: int = 100, memory_decay: float | None = None) -> SoakResult:
    """The whole runtime path (decode, preprocessing, inference, post-processing with the near-field memory at
    MEMORY_DECAY where given, results file in a temporary folder) over FRAMES frames of a looped drive, resident
    memory sampled along the way."""
    if warmup < 1 or frames <= warmup:
        raise ConfigError(f"bench soak: need 1 <= --warmup < --frames, got warm-up {warmup} of {frames}")
    with bench_drive(log) as drive, tempfile.TemporaryDirectory(prefix="nearfield-soak-") as tmp:
        rig = _rig_of(drive)
        pipeline = Pipeline(model, rig, backend=backend, threads=threads, memory_decay=memory_decay)
        try:
            runtime = Runtime(pipeline, DeadlineMonitor())
            start = rss_mb()
            warm = start
            samples = [(0, start)]
            t0 = time.perf_counter()
            with ResultsWriter(Path(tmp) / "soak.mcap", rig, pipeline.grid) as writer:
                for k, frame in enumerate(looped_frames(drive, frames), start=1):
                    record = runtime.process(frame)
                    writer.write(record)
                    runtime.written(record)
                    if k == warmup:
                        warm = rss_mb()
                    if k % sample_every == 0:
                        samples.append((k, rss_mb()))
            seconds = time.perf_counter() - t0
            end = rss_mb()
        finally:
            pipeline.close()
    return SoakResult(model.name, frames, warmup, seconds, start, warm, end, max_growth_mb, samples)


__all__ = ["RuntimeBench", "SoakResult", "bench_drive", "bench_runtime", "looped_frames", "rss_mb", "soak"]
