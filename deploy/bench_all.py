"""`nearfield bench all`: every benchmark of the project (simulation, decode, CAN codec, training, network and
backbone latency, the runtime per zoo model, compression figures from the zoo manifest) in one table, with the
machine named; the README's performance section is its Markdown output."""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from deploy.zoo import MANIFEST, ZooModel, read_zoo
from sensors.errors import ConfigError
from sensors.timing import format_table, machine_description

log = logging.getLogger(__name__)

SECTIONS = ("sim", "decode", "can", "train", "network", "runtime", "compression")


@dataclass(frozen=True)
class BenchSettings:
    """What to measure and how long. quick: a CI-sized run (a few frames and steps, one thread count, one
    backbone): the figures prove the benchmarks run, they are not the README's figures."""

    quick: bool = False
    config: str | Path = "nf-small"  # model config of the training and network sections
    manifest: str | Path = MANIFEST  # the zoo: runtime and compression sections
    models: tuple[str, ...] | None = None  # zoo models for the runtime section (None: all)
    threads: int | None = None  # onnxruntime threads of the runtime section (None: its default)
    drive: str | Path | None = None  # drive of the decode and runtime sections (None: simulated / reference)


@dataclass(frozen=True)
class BenchRow:
    section: str
    item: str
    metric: str
    value: float | int | str
    unit: str = ""


@dataclass
class BenchReport:
    machine: str
    settings: BenchSettings
    rows: list[BenchRow] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)  # wall time per section
    notes: list[str] = field(default_factory=list)

    def table(self) -> str:
        return format_table([(r.section, r.item, r.metric, r.value, r.unit) for r in self.rows],
                            ("section", "item", "metric", "value", "unit"))

    def markdown(self) -> str:
        s = self.settings
        head = [f"Measured with `nearfield bench all{' --quick' if s.quick else ''}` on: {self.machine}.", ""]
        tail = ["", *(f"- {n}" for n in self.notes)] if self.notes else []
        return "\n".join([*head, self.table(), *tail]) + "\n"

    def as_dict(self) -> dict[str, Any]:
        settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self.settings).items()}
        return {"machine": self.machine, "settings": settings, "seconds": self.seconds, "notes": self.notes,
                "rows": [asdict(r) for r in self.rows]}


def parse_sections(only: str | Sequence[str] | None) -> tuple[str, ...]:
    """'sim,runtime' -> ('sim', 'runtime') in SECTIONS order; None: all. Unknown names are a ConfigError."""
    if only is None:
        return SECTIONS
    names = [n.strip() for n in (only.split(",") if isinstance(only, str) else only) if n.strip()]
    unknown = [n for n in names if n not in SECTIONS]
    if unknown or not names:
        raise ConfigError(f"--only {','.join(names) or '(empty)'}: unknown section(s) {', '.join(unknown) or '-'}; "
                          f"choose from {','.join(SECTIONS)}")
    return tuple(n for n in SECTIONS if n in names)


def bench_all(settings: BenchSettings = BenchSettings(), only: str | Sequence[str] | None = None,
              progress: bool = True) -> BenchReport:
    """Run the chosen sections in order and gather their figures into one report."""
    from tqdm import tqdm

    sections = parse_sections(only)
    report = BenchReport(machine_description(), settings)
    for name in tqdm(sections, desc="bench all", unit="section", disable=not progress):
        t0 = time.perf_counter()
        rows, notes = _SECTION_FUNCS[name](settings)
        report.seconds[name] = round(time.perf_counter() - t0, 2)
        report.rows += rows
        report.notes += notes
        log.info("bench %s: %d figures in %.1f s", name, len(rows), report.seconds[name])
    return report


# --- sections: each returns (rows, notes) --------------------------------------------------------------------------

Section = Callable[[BenchSettings], tuple[list[BenchRow], list[str]]]


def _sim(s: BenchSettings) -> tuple[list[BenchRow], list[str]]:
    from sim_data.simulate import DEFAULT_SCALE, bench_sim

    r = bench_sim(frames=1, scale=0.25, workers=1) if s.quick else bench_sim(frames=20, scale=DEFAULT_SCALE)
    item = f"{r['resolution']}, {r['frames']} frames"
    rows = [BenchRow("sim", item, "one process", r["fps_single_process"], "frames/s"),
            BenchRow("sim", item, f"{r['workers']} worker process(es)", r["fps_parallel"], "frames/s")]
    rows += [BenchRow("sim", item, f"stage {k}", v, "ms/frame") for k, v in r["stage_ms"].items()]
    return rows, []


@contextlib.contextmanager
def _drive(s: BenchSettings, frames: int, quick_drive: str = "day") -> Iterator[Path]:
    """The given drive; in quick mode a committed reference drive; else a drive simulated at full scale."""
    if s.drive is not None:
        yield Path(s.drive)
        return
    if s.quick:
        from deploy.replay import DRIVES_DIR

        path = DRIVES_DIR / f"{quick_drive}.mcap"
        if path.is_file():
            yield path
            return
    from sensors.rig import load_rig
    from sim_data.simulate import DriveSpec, simulate_drive

    with tempfile.TemporaryDirectory(prefix="nearfield-bench-all-") as tmp:
        yield simulate_drive(DriveSpec("bench-all", 12345, frames, ("day",)), tmp, load_rig(),
                             scale=0.25 if s.quick else 0.5)


def _decode(s: BenchSettings) -> tuple[list[BenchRow], list[str]]:
    from sensors.live import bench_decode

    rows = []
    with _drive(s, 30) as path:
        for reduced in (False, True):
            r = bench_decode(path, reduced)
            item = f"{r['resolution']}{' at 1/2' if reduced else ''}, {r['frames']} frames"
            rows += [BenchRow("decode", item, "replay + JPEG decode", r["fps"], "frames/s"),
                     BenchRow("decode", item, "multiple of 30 fps cameras", r["camera_rate_multiple"], "x")]
    return rows, []


def _can(s: BenchSettings) -> tuple[list[BenchRow], list[str]]:
    from sensors.drivers.can_uss import benchmark_codec

    cycles = 30 if s.quick else 300
    r = benchmark_codec(cycles)
    item = f"{cycles} cycles of 24 echoes, {r['frames']} frames"
    return [BenchRow("can", item, "encode", r["encode_frames_per_s"], "frames/s"),
            BenchRow("can", item, "decode", r["decode_frames_per_s"], "frames/s"),
            BenchRow("can", item, "decode", r["cycles_per_s_at_decode"], "cycles/s")], []


def _config(s: BenchSettings):
    from perception.model import load_model_config

    return load_model_config(s.config)


def _train(s: BenchSettings) -> tuple[list[BenchRow], list[str]]:
    from perception.bench import bench_train

    config = _config(s)
    rows = bench_train(config, threads=(1,) if s.quick else (1, 2), steps=1 if s.quick else 5,
                       warmup=1 if s.quick else 2)
    out = []
    for r in rows:
        item = f"{r['config']}, batch {r['batch']}, {r['threads']} thread(s), {r['device']}"
        out += [BenchRow("train", item, "step", r["ms_per_step"], "ms"),
                BenchRow("train", item, "throughput", r["samples_per_s"], "samples/s")]
    return out, ["train: forward + loss + backward + AdamW on synthetic batches; data loading not included"]


def _network(s: BenchSettings) -> tuple[list[BenchRow], list[str]]:
    from perception.backbones import list_backbones
    from perception.backbones.bench import bench_backbones
    from perception.bench import bench_network

    config = _config(s)
    repeats, warmup = (1, 1) if s.quick else (5, 2)
    names = [config.camera_backbone] if s.quick else list_backbones()
    w, h = config.bev.image_size
    rows = []
    for r in bench_backbones(names, config.bev.image_size, batch=1 if s.quick else 4, repeats=repeats,
                             warmup=warmup, width_mult=config.camera_width):
        item = f"{r['name']} x{r['width_mult']:g}, {w}x{h}, batch {r['batch']}, {r['threads']} thread(s)"
        rows += [BenchRow("network", item, "params", round(r["params"] / 1e6, 3), "M"),
                 BenchRow("network", item, "MACs per image", round(r["macs"] / 1e9, 3), "G"),
                 BenchRow("network", item, "latency per image", r["ms_per_image"], "ms")]
    for r in bench_network(config, (1,) if s.quick else (1, 4), repeats, warmup):
        item = f"{r['name']} whole network, 4 cameras, batch {r['batch']}, {r['threads']} thread(s), {r['device']}"
        rows.append(BenchRow("network", item, "latency per frame", r["ms_per_frame"], "ms"))
    return rows, [f"network: torch eager, median after warm-up; backbones at {config.name}'s image size {w}x{h}"]


def _zoo_models(s: BenchSettings) -> list[ZooModel]:
    models = read_zoo(s.manifest)
    if s.models is None:
        return list(models.values())
    missing = [m for m in s.models if m not in models]
    if missing:
        raise ConfigError(f"--models {', '.join(missing)}: not in the zoo ({s.manifest}); it has: "
                          f"{', '.join(models) or 'none yet'}")
    return [models[m] for m in s.models]


def _runtime(s: BenchSettings) -> tuple[list[BenchRow], list[str]]:
    models = _zoo_models(s)
    if not models:
        return [], [f"runtime: the zoo ({s.manifest}) has no model yet"]
    frames = 3 if s.quick else 100
    rows, notes = [], []
    with _drive(s, 10) as drive:
        for m in models:
            stages, fps, torch_ratio, why = _time_runtime(m, drive, frames, s.threads)
            item = f"{m.name} ({m.method}), ort, {s.threads or 'default'} thread(s)"
            rows += [BenchRow("runtime", item, f"{stage} p50", v, "ms") for stage, v in stages.items()]
            rows.append(BenchRow("runtime", item, "end to end", fps, "frames/s"))
            if torch_ratio is not None:
                rows.append(BenchRow("runtime", item, "torch eager / backend inference", torch_ratio, "x"))
            elif why:
                notes.append(f"runtime {m.name}: no torch column ({why})")
    notes.append(f"runtime: {frames} frames of {drive.name} after warm-up, results written as `nearfield run` does")
    return rows, notes


def _time_runtime(model: ZooModel, drive: Path, frames: int, threads: int | None):
    """(p50 ms per stage, frames/s, torch/backend ratio, why no ratio) from the runtime's own benchmark."""
    from deploy.runtime_bench import bench_runtime

    r = bench_runtime(model, drive, frames=frames, threads=threads)
    return ({stage: v["p50"] for stage, v in r.latency_ms.items()}, r.fps, r.ratio, r.torch_skipped)


# Figures the compression methods store in the zoo manifest (deploy.measure and the compress commands), with units.
_METRIC_UNITS = {"test_miou": "mIoU", "test_miou_night": "mIoU", "ort_cpu_ms": "ms", "ort_cpu_ratio": "time / parent's",
                 "size_mb": "MB", "params": "", "sparsity": "", "test_frames": "frames"}


def _compression(s: BenchSettings) -> tuple[list[BenchRow], list[str]]:
    models = read_zoo(s.manifest)
    rows = []
    for m in models.values():
        item = f"{m.name} ({m.method}{', from ' + m.parent if m.parent in models else ''})"
        for key, value in m.metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                rows.append(BenchRow("compression", item, key, value, _METRIC_UNITS.get(key, "")))
        # The method's own numbers (pruning amount, weight bits, rank ...) say what the figures were bought with.
        for key, value in m.options.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                rows.append(BenchRow("compression", item, f"option {key}", value, ""))
        parent = models.get(m.parent)
        if parent is not None and parent.size_bytes and m.size_bytes:
            rows.append(BenchRow("compression", item, "file size / parent's", m.size_bytes / parent.size_bytes, "x"))
    notes = [] if models else [f"compression: the zoo ({s.manifest}) has no model yet"]
    if any(m.notes for m in models.values()):
        notes += [f"{m.name}: {m.notes}" for m in models.values() if m.notes]
    return rows, notes


_SECTION_FUNCS: dict[str, Section] = {"sim": _sim, "decode": _decode, "can": _can, "train": _train,
                                      "network": _network, "runtime": _runtime, "compression": _compression}


__all__ = ["SECTIONS", "BenchReport", "BenchRow", "BenchSettings", "bench_all", "parse_sections"]
