"""`nearfield convert to-can`: a log's ultrasonic cycles and odometry as a CAN log that standard CAN tools read;
`nearfield record` and `nearfield bench can`."""

from __future__ import annotations

import argparse


def _subcommands(commands, name: str, help_text: str):
    """The subparsers of command `name`, creating the command unless another module already did."""
    parser = commands.choices.get(name)
    if parser is None:
        parser = commands.add_parser(name, help=help_text)
    for action in parser._actions:  # argparse has no public accessor for an existing subparsers action
        if isinstance(action, argparse._SubParsersAction):
            return action
    return parser.add_subparsers(dest=f"{name}_command", metavar="TARGET", required=True)


def register(commands, bench) -> None:
    convert = _subcommands(commands, "convert", "convert logs to other formats")
    p = convert.add_parser("to-can", help="write a log's ultrasonic cycles and odometry as a CAN log (candump .log, "
                           ".asc or .blf), encoded with sensors/can/uss.dbc and vehicle.dbc (VEH_Motion)")
    p.add_argument("log", help="nearfield log (.mcap)")
    p.add_argument("out", help="CAN log to write; the suffix picks the format (.log candump, .asc, .blf)")
    p.add_argument("--channel", default="can0", help="CAN channel name written in the log (default can0)")
    p.add_argument("--dbc", help="another DBC with the same ultrasonic messages (default: the packaged uss.dbc)")
    p.set_defaults(func=_to_can)
    r = commands.add_parser("record", help="record live cameras and CAN ultrasonics into a log")
    r.add_argument("--rig", help="rig file (default: the shipped rig)")
    r.add_argument("--camera", action="append", default=[], metavar="NAME=SOURCE",
                   help="a rig camera and its source: video file, /dev/videoN or index, GStreamer pipeline")
    r.add_argument("--can", metavar="CHANNEL|FILE", help="CAN channel (e.g. can0) or CAN log file (.log/.asc/.blf)")
    r.add_argument("--can-interface", default="socketcan", help="python-can interface for a channel (default "
                                                                "socketcan)")
    r.add_argument("--duration", type=float, help="stop after this many seconds, more than 0 (default: until the "
                   "sources end or Ctrl-C)")
    r.add_argument("--out", required=True, help="the log to write (.mcap)")
    r.add_argument("--overwrite", action="store_true", help="record over an existing --out (refused otherwise: it is "
                                                            "most likely a drive recorded before)")
    r.set_defaults(func=_record)
    b = bench.add_parser("can", help="USS CAN codec throughput (encode and decode frames per second)")
    b.add_argument("--cycles", type=int, default=300, help="ultrasonic cycles encoded and decoded (default 300)")
    b.add_argument("--echoes", type=int, default=24, help="echoes per cycle")
    b.set_defaults(func=_bench_can)


def _to_can(args) -> int:
    from sensors.drivers.can_log import log_to_can
    from sensors.drivers.can_uss import load_dbc

    db = load_dbc(args.dbc) if args.dbc else None
    cycles, odometry, frames = log_to_can(args.log, args.out, db=db, channel=args.channel)
    print(f"{args.out}: {cycles} ultrasonic cycles and {odometry} odometry samples in {frames} CAN frames")
    return 0


def _record(args) -> int:
    from sensors.live import record

    result = record(args.out, args.camera, args.can, args.rig, args.can_interface, args.duration,
                    overwrite=args.overwrite)
    counts = ", ".join(f"{t} {n}" for t, n in sorted(result.counts.items())) or "nothing"
    print(f"{result.path}: {result.seconds:.1f} s recorded: {counts}")
    for err in result.errors:
        print(f"source failed: {err}")
    return 1 if result.errors else 0


def _bench_can(args) -> int:
    from sensors.drivers.can_uss import benchmark_codec

    result = benchmark_codec(args.cycles, args.echoes)
    for key, value in result.items():
        print(f"{key:<24} {value:>12,.0f}")
    return 0
