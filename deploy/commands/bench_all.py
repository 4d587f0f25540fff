"""`nearfield bench all`: a thin wrapper over deploy.bench_all."""

from __future__ import annotations

import argparse


def register(commands: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:
    b = bench.add_parser("all", help="every benchmark in one table (the README's performance section)")
    b.add_argument("--json", help="also write the figures to this JSON file")
    b.add_argument("--markdown", help="also write the table to this Markdown file")
    b.add_argument("--quick", action="store_true", help="CI-sized: a few frames and steps, one backbone")
    b.add_argument("--only", help="comma-separated sections: sim,decode,can,train,network,runtime,compression")
    b.add_argument("--config", default="nf-small", help="model config of the train and network sections")
    b.add_argument("--manifest", help="zoo manifest of the runtime and compression sections (default: the zoo's)")
    b.add_argument("--models", nargs="+", help="zoo models of the runtime section (default: all)")
    b.add_argument("--threads", type=int, help="onnxruntime threads of the runtime section (default: its own)")
    b.add_argument("--log", help="drive for the decode and runtime sections (default: simulated)")
    b.set_defaults(func=_bench_all)


def _bench_all(args) -> int:
    import json
    from pathlib import Path

    from deploy.bench_all import BenchSettings, bench_all, parse_sections
    from deploy.zoo import MANIFEST
    from sensors.files import refuse_overwrite

    sections = parse_sections(args.only)  # a typo fails before minutes of benchmarks
    refuse_overwrite([p for p in (args.json, args.markdown) if p], [args.log], "bench all output")
    settings = BenchSettings(args.quick, args.config, args.manifest or MANIFEST,
                             tuple(args.models) if args.models else None, args.threads, args.log)
    report = bench_all(settings, sections)
    print(f"machine: {report.machine}")
    print(report.table())
    for note in report.notes:
        print(note)
    if args.json:
        Path(args.json).write_text(json.dumps(report.as_dict(), indent=1, default=str) + "\n")
        print(args.json)
    if args.markdown:
        Path(args.markdown).write_text(report.markdown())
        print(args.markdown)
    return 0
