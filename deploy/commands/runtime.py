"""`nearfield run` (the embedded runtime), `nearfield bench runtime` and `nearfield bench soak`: thin wrappers over
deploy.runtime and deploy.runtime_bench."""

from __future__ import annotations

import argparse
import json
import signal
from pathlib import Path


def register(commands: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:
    from deploy.backends import BACKENDS
    from deploy.runtime import LATE_POLICIES
    from perception.postprocess import ECHO_FLOOR_HELP
    from perception.temporal import DEFAULT_DECAY, MEMORY_HELP

    r = commands.add_parser("run", help="run a deploy model over a drive log or live sensors into a results MCAP",
                            description="Exit status: 0 done; 1 the input log was damaged (every readable frame "
                            "was processed); 2 bad input; 128+N stopped by signal N (the results file is complete).")
    r.add_argument("--model", required=True, help="zoo model name (`nearfield zoo list`)")
    r.add_argument("--source", required=True, metavar="LOG|LIVE_CONFIG",
                   help="a drive log (.mcap), or a TOML naming live cameras and the CAN ultrasonics")
    r.add_argument("--out", required=True, help="results file to write (.mcap; opens in Foxglove)")
    r.add_argument("--backend", default="ort", choices=BACKENDS)
    r.add_argument("--threads", type=int, help="inference threads (default: the backend's)")
    r.add_argument("--device", default="cpu", help="onnxruntime device: cpu, cuda, cuda:N")
    r.add_argument("--deadline-ms", type=float, help="frame deadline: capture to results ready (default: none)")
    r.add_argument("--late-policy", default="keep", choices=LATE_POLICIES,
                   help="keep: publish late frames, flagged; drop: withhold their maps (always recorded)")
    r.add_argument("--free-confidence", type=float, metavar="P",
                   help="near-field bias: within 1 m of the body call a cell free only where the model gives FREE at "
                        "least P (0.5 <= P < 1; default: the argmax); more warnings, fewer misses beside the car")
    r.add_argument("--memory", type=float, nargs="?", const=DEFAULT_DECAY, metavar="DECAY", help=MEMORY_HELP)
    r.add_argument("--echo-floor", action="store_true", help=ECHO_FLOOR_HELP)
    r.add_argument("--operating-point", action="store_true",
                   help="the near-field bias, memory and echo floor registered for the model (`nearfield "
                        "operating-point --register`), instead of --free-confidence, --memory and --echo-floor")
    r.add_argument("--manifest", help="zoo manifest (default: deploy/zoo/ZOO.toml)")
    r.add_argument("--no-progress", action="store_true", help="no progress bar (for logs and scripts)")
    r.set_defaults(func=_run)

    b = bench.add_parser("runtime", help="per-stage latency and end-to-end frames/s of the runtime, and the same "
                         "model in torch eager")
    _model_args(b)
    b.add_argument("--onnx", help="time this ONNX file (e.g. a candidate not yet in the zoo) with --model's BEV "
                   "configuration and parent")
    b.add_argument("--frames", type=int, default=100, help="frames to time (the drive is looped)")
    b.add_argument("--threads", type=int, help="inference threads of both backends (default: onnxruntime's)")
    b.add_argument("--torch-model", metavar="RUN_DIR|NAME",
                   help="the torch model to compare (default: the zoo model's parent, when it is a trained model)")
    b.add_argument("--memory", type=float, nargs="?", const=DEFAULT_DECAY, metavar="DECAY",
                   help="run the near-field memory too (its cost is part of the postprocess stage)")
    b.add_argument("--json", help="write the figures to this JSON file")
    b.set_defaults(func=_bench_runtime)

    o = bench.add_parser("ops", help="onnxruntime CPU time by operator type for one or more zoo models on the same "
                                     "frames (where the time goes: int8 kernels, float islands, Q/DQ)")
    o.add_argument("--model", action="append", required=True, help="zoo model name, repeatable")
    o.add_argument("--onnx", action="append", default=[], help="also profile this ONNX file (e.g. an older build "
                                                              "from git), with the first --model's BEV; repeatable")
    o.add_argument("--log", help="drive log whose frames are the inputs (default: a short drive simulated for it)")
    o.add_argument("--frames", type=int, default=20, help="frames per model (default 20)")
    o.add_argument("--threads", type=int, help="onnxruntime intra-op threads (default: onnxruntime's)")
    o.add_argument("--manifest", help="zoo manifest (default: deploy/zoo/ZOO.toml)")
    o.add_argument("--json", help="write the figures to this JSON file")
    o.set_defaults(func=_bench_ops)

    s = bench.add_parser("soak", help="replay a drive in a loop through the runtime; resident memory must not grow")
    _model_args(s)
    s.add_argument("--frames", type=int, default=3000)
    s.add_argument("--warmup", type=int, default=200, help="frames before the baseline is taken")
    s.add_argument("--max-growth-mb", type=float, default=16.0,
                   help="fail when resident memory grows by more than this after warm-up (default 16 MB)")
    s.add_argument("--threads", type=int)
    s.add_argument("--memory", type=float, nargs="?", const=DEFAULT_DECAY, metavar="DECAY",
                   help="run the near-field memory too (its points must not pile up either)")
    s.add_argument("--json", help="write the figures to this JSON file")
    s.set_defaults(func=_bench_soak)


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="zoo model name (default: the zoo's first model)")
    p.add_argument("--log", help="drive log to replay (default: a short drive simulated for the bench)")
    p.add_argument("--manifest", help="zoo manifest (default: deploy/zoo/ZOO.toml)")


def _zoo_model(name: str | None, manifest: str | None):
    from deploy.zoo import MANIFEST, get_model, list_models, read_zoo
    from sensors.errors import ConfigError

    if manifest:  # one named on the command line must exist and list models: a mistyped path is not an empty zoo
        read_zoo(manifest, required=True)
    manifest = manifest or MANIFEST
    if name is None:
        names = list_models(manifest)
        if not names:
            raise ConfigError(f"the zoo ({manifest}) is empty; export a model first (`nearfield export`) or pass "
                              "--manifest")
        name = names[0]
    return get_model(name, manifest)


def _run(args) -> int:
    from deploy.runtime import run
    from perception.near_field import NearFieldSettings

    model = _zoo_model(args.model, args.manifest)
    near = model.near_field_settings(
        args.operating_point, NearFieldSettings(args.free_confidence, args.memory, args.echo_floor), "run")
    stats = run(model, args.source, args.out, backend=args.backend, threads=args.threads,
                deadline_ms=args.deadline_ms, late_policy=args.late_policy, progress=not args.no_progress,
                device=args.device, free_confidence=near.free_confidence, memory_decay=near.memory_decay,
                echo_floor=near.echo_floor)
    print(stats.format())
    if stats.stopped_by in ("SIGINT", "SIGTERM"):
        return 128 + signal.Signals[stats.stopped_by].value
    return 1 if stats.input_damage else 0


def _bench_runtime(args) -> int:
    from deploy.runtime_bench import bench_runtime

    _check_json(args)
    model = _zoo_model(args.model, args.manifest)
    result = bench_runtime(model, log=args.log, frames=args.frames, threads=args.threads, onnx=args.onnx,
                           torch_model=args.torch_model, memory_decay=args.memory)
    print(result.format())
    _write_json(args.json, result.as_dict())
    return 0


def _bench_ops(args) -> int:
    from deploy.op_profile import format_profiles, profile_ops
    from deploy.runtime_bench import bench_drive
    from deploy.zoo import unlisted
    from sensors.timing import machine_description

    _check_json(args)
    models = [_zoo_model(name, args.manifest) for name in args.model]
    models += [unlisted(path, models[0]) for path in args.onnx]
    with bench_drive(args.log) as drive:
        profiles = profile_ops(models, drive, args.frames, args.threads)
    print(format_profiles(profiles))
    threads = f"{args.threads} onnxruntime threads" if args.threads else "onnxruntime default threads"
    print(f"{args.frames} frames of {args.log or 'a simulated drive'}; {machine_description()}; {threads}")
    _write_json(args.json, {"profiles": [p.as_dict() for p in profiles], "machine": machine_description(),
                            "threads": args.threads})
    return 0


def _bench_soak(args) -> int:
    from deploy.runtime_bench import soak

    _check_json(args)
    model = _zoo_model(args.model, args.manifest)
    result = soak(model, log=args.log, frames=args.frames, warmup=args.warmup, max_growth_mb=args.max_growth_mb,
                  threads=args.threads, memory_decay=args.memory)
    print(result.format())
    _write_json(args.json, result.as_dict())
    return 0 if result.passed else 1


def _check_json(args) -> None:
    """--json must not be the --log it reads (checked before the benchmark, which the write would follow)."""
    from sensors.files import refuse_overwrite

    if args.json:
        refuse_overwrite(args.json, [args.log], "--json")


def _write_json(path: str | None, data: dict) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(data, indent=2, allow_nan=False, default=str) + "\n")
