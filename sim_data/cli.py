"""`nearfield simulate` and `nearfield bench sim`."""

from __future__ import annotations

import argparse


def register(commands: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:
    from sensors.messages import CONDITIONS
    from sim_data.simulate import PRESETS

    p = commands.add_parser("simulate", help="write simulated drives (MCAP logs with ground truth)")
    p.add_argument("--out", required=True, help="output directory")
    paired = ", ".join(name for name, preset in PRESETS.items() if preset.paired)
    p.add_argument("--preset", default="demo", choices=tuple(PRESETS), help="which drives (default demo)")
    p.add_argument("--frames", type=int, help="frames per drive (10 Hz)")
    p.add_argument("--drives", type=int, help=f"number of drives (default: the preset's); for the paired presets "
                                              f"({paired}) the number of scenes, each driven once per condition")
    p.add_argument("--seed", type=int, help="base seed, at least 0 (drive i uses seed + i; default: the preset's)")
    p.add_argument("--condition", nargs="+", choices=CONDITIONS, metavar="NAME",
                   help=f"restrict conditions to these ({', '.join(CONDITIONS)})")
    p.add_argument("--rig", help="rig file (default: the shipped rig)")
    p.add_argument("--scale", type=float, default=None,
                   help="image scale of the native 1280x966, 0.1..1.0 (default 0.5)")
    p.add_argument("--workers", type=int, help="parallel processes, at least 1 (default: one per core)")
    p.add_argument("--overwrite", action="store_true",
                   help="write over logs of the same names in --out (without it they are an error)")
    p.set_defaults(func=_simulate)

    c = commands.add_parser("contact-sheet", help="PNG of a frame of each log: four cameras and BEV ground truth")
    c.add_argument("logs", nargs="+", help="MCAP logs, one row each")
    c.add_argument("--out", required=True, help="output PNG")
    c.add_argument("--frame", type=int, default=0, help="frame index in each log")
    c.set_defaults(func=_contact_sheet)

    d = bench.add_parser("decode", help="replaying a drive into Frames (JPEG decode included): frames per second")
    d.add_argument("log", nargs="?", help="a log to replay (default: simulate a 40-frame drive first)")
    d.add_argument("--frames", type=int, default=40, help="frames of the simulated drive (default 40)")
    d.set_defaults(func=_bench_decode)

    b = bench.add_parser("sim", help="simulation frames per second at the default resolution")
    b.add_argument("--frames", type=int, default=20, help="frames per drive (default 20)")
    b.add_argument("--workers", type=int, help="parallel processes, one drive each (default: one per core)")
    b.set_defaults(func=_bench_sim)


def _simulate(args) -> int:
    from sim_data.simulate import DEFAULT_SCALE, simulate

    paths = simulate(args.out, args.preset, args.frames, args.seed, args.condition, args.rig, args.drives,
                     DEFAULT_SCALE if args.scale is None else args.scale, args.workers, overwrite=args.overwrite)
    for p in paths:
        print(p)
    return 0


def _contact_sheet(args) -> int:
    from sim_data.contact_sheet import contact_sheet

    print(contact_sheet(args.logs, args.out, args.frame))
    return 0


def _bench_decode(args) -> int:
    import tempfile

    from sensors.live import bench_decode
    from sensors.rig import load_rig
    from sensors.timing import format_table, machine_description
    from sim_data.simulate import DriveSpec, simulate_drive

    with tempfile.TemporaryDirectory() as tmp:
        log = args.log or simulate_drive(DriveSpec("bench-decode", 12345, args.frames), tmp, load_rig())
        rows = []
        for reduced in (False, True):
            r = bench_decode(log, reduced)
            size = r["resolution"] if not reduced else f"{r['resolution']} decoded at 1/2"
            rows.append((size, r["frames"], r["fps"], r["camera_rate_multiple"]))
    print(f"machine: {machine_description()}")
    print(format_table(rows, ("images", "frames", "frames per second", "x 30 Hz camera rate")))
    return 0


def _bench_sim(args) -> int:
    from sensors.timing import format_table, machine_description
    from sim_data.simulate import bench_sim

    r = bench_sim(args.frames, workers=args.workers)
    print(f"machine: {machine_description()}")
    print(f"resolution per camera: {r['resolution']} (4 cameras), {r['frames']} frames per drive\n")
    rows = [(stage, ms) for stage, ms in r["stage_ms"].items()]
    print(format_table(rows, ("stage (one process)", "ms per frame")))
    print()
    print(format_table([
        ("frames per second, one process", r["fps_single_process"]),
        (f"frames per second, {r['workers']} process{'es' if r['workers'] != 1 else ''}", r["fps_parallel"]),
        ("minutes for a 2000-frame training set", r["minutes_for_2000_frames"]),
    ], ("figure", "value")))
    return 0
