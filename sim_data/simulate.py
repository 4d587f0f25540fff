"""Simulated drives written as MCAP logs: scene → per frame camera images, ultrasonic cycle, ground truth; wheel
odometry at its own rate (sim_data.odometry).

A drive is a pure function of (rig, preset entry, seed): the same arguments give the same log content.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from queue import Empty

import numpy as np

from sensors.bev import BevGrid
from sensors.errors import ConfigError
from sensors.messages import CONDITIONS, CameraImage, Odometry
from sensors.rig import Rig, load_rig
from sensors.timing import StageTimer, maybe_stage
from sim_data.odometry import ODOMETRY_PERIOD_NS, OdometryErrors, dead_reckon, odometry_rng

log = logging.getLogger(__name__)

FRAME_PERIOD_NS = 100_000_000  # 10 Hz
START_NS = 1_000_000_000
USS_OFFSET_NS = 12_000_000  # the ultrasonic cycle completes a little after the camera exposure
CAMERA_JITTER_NS = 2_000_000  # free-running cameras are not exactly simultaneous
DEFAULT_SCALE = 0.5  # images at half the native 1280 x 966 (640 x 483): see README "Simulated data"
JPEG_QUALITY = 88
OUTDOOR_KINDS = ("parking_lot", "street", "driveway")


@dataclass(frozen=True)
class DriveSpec:
    """One drive to simulate."""

    name: str
    seed: int
    frames: int
    conditions: tuple[str, ...] | None = None  # None: the realistic training mix
    scene_kinds: tuple[str, ...] | None = None
    motions: tuple[str, ...] | None = None
    street_lamps: bool | None = None  # an outdoor night's lamps lit or not; None: drawn (conditions.UNLIT_NIGHT)
    close_obstacle: bool = False  # end the drive just short of an obstacle (close.add_close_obstacle)


@dataclass(frozen=True)
class Preset:
    drives: int
    frames: int
    seed: int
    # Per-drive condition cycle (None: sampled mix).
    condition_cycle: tuple[tuple[str, ...], ...] | None = None
    # Paired: each of `drives` scenes is driven once under every condition of the cycle (same seed, same scene and
    # ego path; only the condition differs), so that conditions are compared on the same scenes and not confounded
    # with them. Drives are then named PRESET-SS-CONDITION.
    paired: bool = False
    # Scene kinds the drives are drawn from (None: every kind, weighted as scenes.KIND_WEIGHTS).
    scene_kinds: tuple[str, ...] | None = None
    # Every drive ends with an obstacle within the parking display's last level (close.add_close_obstacle).
    close_obstacle: bool = False


# Seeds of the splits are disjoint ranges: the test split never shares a seed with training.
PRESETS: dict[str, Preset] = {
    "demo": Preset(drives=1, frames=60, seed=7),
    "train": Preset(drives=20, frames=100, seed=100_000),
    # Kerb-side street drives added to training: `train` draws few streets (scenes.KIND_WEIGHTS), while three of the
    # four test scenes are streets, and a kerb beside the car is the near obstacle a parking car meets most.
    "train-street": Preset(drives=10, frames=100, seed=110_000, scene_kinds=("street",)),
    # Drives of the training mix that end just short of an obstacle (as `test-close`): every other training scene keeps
    # 0.35 m clear of the car, so without these no model sees anything within the display's last level. 40 drives
    # since 2026-12-07 (10 before: `--drives 10` gives those, the same bytes).
    "train-close": Preset(drives=40, frames=100, seed=120_000, close_obstacle=True),
    "val": Preset(drives=4, frames=100, seed=200_000),
    # 4 outdoor scenes x 8 conditions x 25 frames = 800 frames (outdoor: glare and rain need the sky). Its nights
    # alternate between lit (even scenes) and unlit (odd scenes), so both kinds of night are covered equally.
    "test": Preset(drives=4, frames=25, seed=300_000, condition_cycle=tuple((c,) for c in CONDITIONS), paired=True),
    # Built like `test` on seeds of its own, for choosing operating points (the near-field memory's decay, the free
    # confidence) without looking at the test split: `val` has too few moving drives with obstacles near the car.
    # As many scenes as `test` (it had 2 until 2026-12-07: both parking lots, so no kerb beside the car; the first
    # two scenes are the same, `--drives 2` gives them alone).
    "val-paired": Preset(drives=4, frames=25, seed=400_000, condition_cycle=tuple((c,) for c in CONDITIONS),
                         paired=True),
    # Built like `test-close` on seeds of its own, for choosing what the close range needs (a model, a setting)
    # without looking at `test-close`.
    "val-close": Preset(drives=4, frames=25, seed=600_000, condition_cycle=tuple((c,) for c in CONDITIONS),
                        paired=True, close_obstacle=True),
    # Built like `test` on seeds of its own, with every drive ending 0.08-0.2 m short of a bollard, cone, bin or box:
    # the scenes of the other splits keep the ego's drive 0.35 m clear of everything, so the display's last level
    # (within 0.3 m) is scored only here. For evaluation: no model has been trained on such drives.
    "test-close": Preset(drives=4, frames=25, seed=500_000, condition_cycle=tuple((c,) for c in CONDITIONS),
                         paired=True, close_obstacle=True),
}


def plan_drives(preset: str, frames: int | None = None, seed: int | None = None, drives: int | None = None,
                conditions: Sequence[str] | None = None) -> list[DriveSpec]:
    """The drives a `nearfield simulate` invocation writes."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    p = PRESETS[preset]
    for c in conditions or ():
        if c not in CONDITIONS:
            raise ConfigError(f"unknown condition {c!r}; choose from {', '.join(CONDITIONS)}")
    n = drives if drives is not None else p.drives
    if n < 1:
        raise ConfigError("--drives must be at least 1")
    nf = frames if frames is not None else p.frames
    if nf < 1:
        raise ConfigError("--frames must be at least 1")
    base = seed if seed is not None else p.seed
    if base < 0:
        raise ConfigError(f"--seed must be at least 0 (drive i uses seed + i), got {base}")
    out = []
    if p.paired and not conditions:
        # The scene is drawn from the seed before the condition (simulate_drive), so one seed = one scene.
        for i in range(n):
            for cond in p.condition_cycle or ((),):
                label = "-".join(cond) or "mix"
                out.append(DriveSpec(f"{preset}-{i:02d}-{label}", base + i, nf, cond or None,
                                     scene_kinds=OUTDOOR_KINDS, street_lamps=i % 2 == 0,
                                     close_obstacle=p.close_obstacle))
        return out
    for i in range(n):
        if conditions:
            cond = tuple(conditions)
        elif p.condition_cycle:
            cond = p.condition_cycle[i % len(p.condition_cycle)]
        else:
            cond = None
        # Glare and rain need the sky: a drive forced to them is not put in the garage.
        kinds = p.scene_kinds
        if cond and set(cond) & {"glare", "rain"}:
            kinds = tuple(k for k in kinds or OUTDOOR_KINDS if k in OUTDOOR_KINDS)
        out.append(DriveSpec(f"{preset}-{i:03d}", base + i, nf, cond, scene_kinds=kinds,
                             close_obstacle=p.close_obstacle))
    return out


def simulate_drive(spec: DriveSpec, out_dir: str | Path, rig: Rig, scale: float = DEFAULT_SCALE,
                   progress: Callable[[int], None] | None = None, timer: StageTimer | None = None) -> Path:
    """Write one drive to OUT_DIR/NAME.mcap and return its path. `timer` collects per-stage times."""
    from sensors.imaging import encode_jpeg
    from sensors.log_writer import LogWriter
    from sim_data.conditions import sample_condition
    from sim_data.groundtruth import rasterize_truth
    from sim_data.render import FisheyeRenderer
    from sim_data.scenes import sample_drive
    from sim_data.ultrasonic import UltrasonicSimulator

    rng = np.random.default_rng(spec.seed)
    duration = spec.frames * FRAME_PERIOD_NS / 1e9
    with maybe_stage(timer, "scene"):
        scene = sample_drive(rng, rig, duration, kinds=spec.scene_kinds, motions=spec.motions)
        if spec.close_obstacle:  # its own random stream: the drive and its condition stay what they are without it
            from sim_data.close import add_close_obstacle

            scene, gap = add_close_obstacle(scene, rig.vehicle, np.random.default_rng([spec.seed, 1]))
            if gap is None:
                log.warning("%s: no room for an obstacle where the drive ends; simulated without one", spec.name)
        condition = sample_condition(rng, rig, scene, spec.conditions, spec.street_lamps)
    render_rig = rig.scaled(scale) if not math.isclose(scale, 1.0) else rig
    with maybe_stage(timer, "renderer setup"):
        renderer = FisheyeRenderer(render_rig.cameras, rig.vehicle, scene)
    uss = UltrasonicSimulator(rig, scene.kind)
    grid = BevGrid.around(rig.vehicle)
    labels = condition.labels()
    with maybe_stage(timer, "odometry"):
        # Over every frame, and past the last one so that its pose is interpolated too; never from `rng`.
        odometry_per_frame = FRAME_PERIOD_NS // ODOMETRY_PERIOD_NS
        odometry_stamps = [j * ODOMETRY_PERIOD_NS for j in range(spec.frames * odometry_per_frame)]
        odometry = dead_reckon(scene.ego, [s / 1e9 for s in odometry_stamps],
                               OdometryErrors.draw(odometry_rng(spec.seed)))

    path = Path(out_dir) / f"{spec.name}.mcap"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".mcap.part")
    metadata = {"generator": "nearfield simulate", "drive": spec.name, "seed": str(spec.seed),
                "scene": scene.kind, "frames": str(spec.frames), "scale": f"{scale:g}",
                "conditions": ",".join(labels)}
    if condition.lighting == "night":
        metadata["street_lamps"] = "on" if condition.street_lamps else "off"
    frozen: dict[str, bytes] = {}
    with LogWriter(tmp, render_rig, metadata=metadata, stamp_creation=False) as writer:
        for k in range(spec.frames):
            t = k * FRAME_PERIOD_NS / 1e9
            stamp = START_NS + k * FRAME_PERIOD_NS
            ego = scene.ego.pose(t)
            objects = scene.objects_at(t)
            with maybe_stage(timer, "render"):
                images = renderer.render(t, ego, condition, rng)
            jitter = rng.integers(-CAMERA_JITTER_NS, CAMERA_JITTER_NS + 1, size=len(images))
            for (cam, img), dt in zip(images.items(), jitter, strict=True):
                failure = condition.failed_cameras.get(cam)
                with maybe_stage(timer, "jpeg"):
                    if failure == "black":
                        jpeg = encode_jpeg(np.zeros_like(img.rgb), JPEG_QUALITY)
                    elif failure == "frozen" and cam in frozen:
                        jpeg = frozen[cam]  # the last good image repeats, only the timestamp moves on
                    else:
                        jpeg = encode_jpeg(img.rgb, JPEG_QUALITY)
                        if failure == "frozen":
                            frozen[cam] = jpeg
                with maybe_stage(timer, "write"):
                    writer.write_camera(CameraImage(cam, stamp + int(dt), jpeg=jpeg))
            with maybe_stage(timer, "ultrasonic"):
                cycle = uss.cycle(objects, ego, condition, stamp + USS_OFFSET_NS, k, rng)
            with maybe_stage(timer, "ground truth"):
                truth = rasterize_truth(objects, ego, rig.vehicle, grid, stamp)
            with maybe_stage(timer, "write"):
                writer.write_uss(cycle)
                writer.write_truth(truth, grid)
                writer.write_condition(stamp, labels, scene.kind)
                for j in range(k * odometry_per_frame, (k + 1) * odometry_per_frame):
                    writer.write_odometry(Odometry(START_NS + odometry_stamps[j], odometry[j]))
            if progress:
                progress(1)
    os.replace(tmp, path)
    return path


def _check_workers(workers: int | None) -> None:
    if workers is not None and workers < 1:
        raise ConfigError(f"--workers must be at least 1 (leave it out for one per core), got {workers}")


def _drive_worker(args) -> str:
    spec, out_dir, rig_path, scale, queue = args
    rig = load_rig(rig_path)
    return str(simulate_drive(spec, out_dir, rig, scale, progress=(lambda n: queue.put(n)) if queue else None))


def simulate(out_dir: str | Path, preset: str = "demo", frames: int | None = None, seed: int | None = None,
             conditions: Sequence[str] | None = None, rig_path: str | Path | None = None, drives: int | None = None,
             scale: float = DEFAULT_SCALE, workers: int | None = None, show_progress: bool = True,
             overwrite: bool = False) -> list[Path]:
    """Simulate the drives of a preset into OUT_DIR, one MCAP file each, drives in parallel processes (WORKERS,
    default one per core). A log of the same name already in OUT_DIR is a ConfigError unless OVERWRITE."""
    from tqdm import tqdm

    if not (0.1 <= scale <= 1.0):
        raise ConfigError(f"--scale must be in 0.1..1.0, got {scale}")
    _check_workers(workers)
    rig = load_rig(rig_path)  # validate before starting workers
    specs = plan_drives(preset, frames, seed, drives, conditions)  # checked before --out is made
    out = Path(out_dir)
    existing = [s.name + ".mcap" for s in specs if (out / f"{s.name}.mcap").exists()]
    if existing and not overwrite:
        names = ", ".join(existing[:3]) + (f" and {len(existing) - 3} more" if len(existing) > 3 else "")
        raise ConfigError(f"{out}: {len(existing)} of the {len(specs)} logs to write exist already ({names}); "
                          "choose another --out, delete them, or give --overwrite")
    out.mkdir(parents=True, exist_ok=True)  # an unwritable --out fails before any work
    total = sum(s.frames for s in specs)
    workers = max(1, min(workers or os.cpu_count() or 1, len(specs)))
    bar = tqdm(total=total, unit="frame", desc=f"simulate {preset}", disable=not show_progress)
    try:
        if workers == 1:
            paths = [simulate_drive(s, out_dir, rig, scale, progress=bar.update) for s in specs]
        else:
            import multiprocessing as mp

            ctx = mp.get_context("spawn")
            with ctx.Manager() as manager:
                queue = manager.Queue()
                with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
                    futures = [pool.submit(_drive_worker, (s, str(out_dir), rig_path, scale, queue)) for s in specs]
                    while True:
                        finished = all(f.done() for f in futures)
                        try:
                            while True:
                                bar.update(queue.get(timeout=0.2))
                        except Empty:
                            pass
                        if finished:
                            break
                    paths = [Path(f.result()) for f in futures]  # re-raises a worker's error
    finally:
        bar.close()
    return paths


def bench_sim(frames: int = 20, scale: float = DEFAULT_SCALE, workers: int | None = None) -> dict[str, object]:
    """Measure simulation speed: per-stage times of one drive in this process, then the throughput of
    `workers` drives in parallel processes (the way `nearfield simulate` makes a training set)."""
    import tempfile
    import time

    _check_workers(workers)
    rig = load_rig()
    workers = workers or os.cpu_count() or 1
    timer = StageTimer()
    with tempfile.TemporaryDirectory() as tmp:
        spec = DriveSpec("bench-single", PRESETS["train"].seed, frames)
        t0 = time.perf_counter()
        simulate_drive(spec, tmp, rig, scale, timer=timer)
        single = time.perf_counter() - t0
        t0 = time.perf_counter()
        simulate(tmp, "train", frames=frames, drives=workers, scale=scale, workers=workers, show_progress=False)
        parallel = time.perf_counter() - t0
    cam = rig.scaled(scale).cameras["FV"]
    fps_parallel = workers * frames / parallel
    return {
        "resolution": f"{cam.width}x{cam.height}",
        "frames": frames,
        "stage_ms": {k: v * 1e3 / frames for k, v in timer.total.items()},
        "fps_single_process": frames / single,
        "workers": workers,
        "fps_parallel": fps_parallel,
        "minutes_for_2000_frames": 2000 / fps_parallel / 60,
    }
