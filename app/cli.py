"""The `nearfield` command. Each package contributes its subcommands through a `register` function in its
`cli` module; handlers are thin wrappers over library functions and import heavy modules lazily."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import signal
import sys

from sensors.errors import NearfieldError

# Modules with `register(commands, bench)`; imported in this order, each optional until its package exists.
COMMAND_MODULES = (
    "sim_data.cli", "sensors.cli", "sensors.drivers.cli", "perception.cli", "deploy.cli",
    "app.commands",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nearfield",
        description="Near-field perception: fisheye cameras + ultrasonic sensors fused into a BEV occupancy grid.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    bench_parser = commands.add_parser("bench", help="benchmarks: print a table of measured figures")
    bench = bench_parser.add_subparsers(dest="bench", metavar="BENCH", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:  # the package has no commands yet
                continue
            raise
        module.register(commands, bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a reader that went away shows here, not at exit
        return code
    except NearfieldError as e:
        print(f"nearfield {args.command}: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader went away (`nearfield info LOG | head -1`): stop quietly, as Unix tools do, with the status of a
        # process SIGPIPE ended; stdout to /dev/null so that the flush at exit does not complain either.
        with contextlib.suppress(OSError, ValueError):  # ValueError: stdout is no file (captured)
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except OSError as e:
        # A path the user gave that cannot be read or written: one line naming it, as for any bad input.
        where = f"{e.filename}: " if e.filename else ""
        print(f"nearfield {args.command}: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"nearfield {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
