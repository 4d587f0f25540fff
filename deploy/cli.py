"""The deploy package's `nearfield` subcommands: each area registers its own from deploy/commands/."""

from __future__ import annotations

import argparse
import importlib

# export + zoo, the embedded runtime and its operating point, compression, replay regression tests, the benchmark
# suite, and `eval` extended to deploy models.
AREAS = ("export", "runtime", "operating_point", "compress", "replay", "bench_all", "eval")


def register(commands: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:
    for area in AREAS:
        name = f"deploy.commands.{area}"
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:  # not written yet
                continue
            raise
        module.register(commands, bench)
