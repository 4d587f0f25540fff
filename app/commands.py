"""`nearfield view`: the Qt viewer over recorded and simulated drives (PyQt6 is imported only when it runs)."""

from __future__ import annotations

import argparse


def register(commands: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:
    from perception.postprocess import ECHO_FLOOR_HELP
    from perception.temporal import DEFAULT_DECAY, MEMORY_HELP

    v = commands.add_parser("view", help="play a drive log: cameras, ultrasonics, ground truth and a zoo model's "
                                         "predictions on one timeline")
    v.add_argument("log", nargs="?", help="MCAP drive log (default: the simulated demo drive, made on first use)")
    v.add_argument("--model", help="deploy model from the zoo to run on every frame (`nearfield zoo list`)")
    v.add_argument("--manifest", help="zoo manifest to take --model from (default: deploy/zoo/ZOO.toml)")
    v.add_argument("--frame", type=int, default=0, help="frame to show first (0-based)")
    v.add_argument("--screenshot", metavar="OUT.png", help="draw --frame offscreen, save the window as a PNG, exit")
    v.add_argument("--history", action="store_true",
                   help="with --screenshot: run every frame from 0 to --frame first, so that the latency and mIoU "
                        "plots show the drive up to it (as stepping through it in the window would)")
    v.add_argument("--threads", type=int, help="inference threads (default: onnxruntime's)")
    v.add_argument("--free-confidence", type=float, metavar="P",
                   help="near-field bias of the model's map and sectors: within 1 m of the body a cell is free only "
                        "where the model gives FREE at least P (0.5 <= P < 1; default: the argmax)")
    v.add_argument("--memory", type=float, nargs="?", const=DEFAULT_DECAY, metavar="DECAY", help=MEMORY_HELP)
    v.add_argument("--echo-floor", action="store_true", help=ECHO_FLOOR_HELP)
    v.add_argument("--operating-point", action="store_true",
                   help="the near-field bias, memory and echo floor registered for --model (`nearfield "
                        "operating-point --register`), instead of --free-confidence, --memory and --echo-floor; "
                        "a model chosen later in the window runs with its own")
    v.add_argument("--settings", metavar="FILE.ini", help="settings file instead of the user's (layout, recent files)")
    v.set_defaults(func=_view)


def _view(args) -> int:
    from app.viewer import launch
    from deploy.zoo import MANIFEST, get_model
    from perception.near_field import NearFieldSettings
    from sensors.errors import ConfigError

    manifest = args.manifest or MANIFEST
    if args.operating_point:
        if not args.model:
            raise ConfigError("view: --operating-point is that of a zoo model: give --model NAME too")
        # Checked for the model it starts with (one or the other, and that it has a point); a model chosen later in
        # the window runs with its own point.
        get_model(args.model, manifest).near_field_settings(
            True, NearFieldSettings(args.free_confidence, args.memory, args.echo_floor), "view")
    if args.history and not args.screenshot:
        raise ConfigError("view: --history is for --screenshot (in the window, step or play to build the plots)")
    code = launch(args.log, args.model, args.frame, args.screenshot, manifest, args.settings, args.threads,
                  args.free_confidence, args.memory, args.echo_floor, args.operating_point, history=args.history)
    if args.screenshot:
        print(args.screenshot)
    return code
