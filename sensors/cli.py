"""`nearfield info`: what a drive log holds (topics, time span, conditions, rig, metadata, damage)."""

from __future__ import annotations

import argparse


def register(commands: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:
    p = commands.add_parser("info", help="describe a drive log: topics, rates, duration, conditions, rig, damage")
    p.add_argument("log", help="an MCAP drive log")
    p.add_argument("--strict", action="store_true",
                   help="fail on the first damage instead of listing what is readable (exit code 2)")
    p.set_defaults(func=_info)


def _info(args) -> int:
    from sensors.log import LogReader

    with LogReader(args.log, strict=args.strict) as reader:
        print(reader.summary().format())
    return 0
