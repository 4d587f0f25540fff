"""`nearfield replay make-drives | check | update-refs`: thin wrappers over deploy.replay."""

from __future__ import annotations

import argparse


def register(commands: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:
    p = commands.add_parser("replay", help="replay the reference drives through the runtime and compare the outputs "
                                           "with pinned references (regression tests)")
    sub = p.add_subparsers(dest="replay", metavar="ACTION", required=True)
    from deploy.replay import REFERENCE_DRIVES
    from perception.temporal import DEFAULT_DECAY

    names = ", ".join(s.name for s in REFERENCE_DRIVES)
    m = sub.add_parser("make-drives", help=f"simulate the {len(REFERENCE_DRIVES)} reference drives ({names}) into "
                                           "tests/replay/drives")
    m.add_argument("--out", help="directory for the drives (default: tests/replay/drives)")
    m.add_argument("--rig", help="rig TOML (default: the default rig)")
    m.set_defaults(func=_make_drives)

    for name, func, helptext in (
            ("check", _check, "replay and compare with the references; exit 1 on any change beyond tolerance"),
            ("update-refs", _update_refs, "replay and rewrite the references (the one way to refresh them)")):
        c = sub.add_parser(name, help=helptext)
        if name == "check":
            c.add_argument("--model", help="zoo model name: every reference set of that model, or one set by its "
                                            "name, e.g. nf-small+memory0.95 (default: every reference set)")
            c.add_argument("--onnx", help="a newly built ONNX file, checked against the references of --model (or of "
                                          "the model named like the file)")
            c.add_argument("--atol", type=float, help="absolute tolerance on floats (default 1e-4)")
            c.add_argument("--rtol", type=float, help="relative tolerance on floats (default 1e-3)")
            c.add_argument("--ignore", nargs="*", default=None,
                           help="topics or topic:field to leave out (default: /perception/latency)")
        else:
            c.add_argument("--model", help="zoo model name: rewrite its reference set (with --memory, the set with "
                                            "the memory), or one set by its name, e.g. nf-small+memory0.95 (default: "
                                            "rewrite every reference set)")
            c.add_argument("--memory", type=float, nargs="?", const=DEFAULT_DECAY, metavar="DECAY",
                           help="with --model: the reference set of the runtime with the near-field memory at DECAY "
                                f"({DEFAULT_DECAY:g} without a value), named MODEL+memoryDECAY")
        c.add_argument("--manifest", help="zoo manifest (default: deploy/zoo/ZOO.toml)")
        c.add_argument("--drives", help="reference drives (default: tests/replay/drives)")
        c.add_argument("--refs", help="reference outputs (default: tests/replay/refs)")
        c.add_argument("--threads", type=int, default=1, help="onnxruntime threads (default 1)")
        c.set_defaults(func=func)


def _defaults(args) -> None:
    from deploy.replay import DRIVES_DIR, REFS_DIR
    from deploy.zoo import MANIFEST

    args.drives = args.drives or DRIVES_DIR
    args.refs = args.refs or REFS_DIR
    args.manifest = args.manifest or MANIFEST


def _targets(args) -> list[str]:
    from pathlib import Path

    from deploy.replay import models_with_refs, parse_refs_name, refs_name
    from sensors.errors import ConfigError

    _defaults(args)
    memory = getattr(args, "memory", None)
    if memory is not None and not args.model:
        raise ConfigError("--memory: give --model NAME, the model whose reference set with the memory to write")
    if args.model and "+" in args.model:
        return [args.model]  # one reference set by its name
    if args.model and not hasattr(args, "memory"):  # check: every reference set of the model
        return [n for n in models_with_refs(args.refs) if parse_refs_name(n)[0] == args.model] or [args.model]
    if args.model:
        return [refs_name(args.model, memory)]
    if getattr(args, "onnx", None):
        stem = Path(args.onnx).stem
        if stem in models_with_refs(args.refs):
            return [stem]
        raise ConfigError(f"--onnx {args.onnx}: give --model NAME, the model whose references it is checked against "
                          f"(none is named {stem!r} in {args.refs})")
    names = models_with_refs(args.refs)
    if not names:
        raise ConfigError(f"{args.refs}: no model has references yet; make them with "
                          "`nearfield replay update-refs --model NAME`")
    return names


def _make_drives(args) -> int:
    from deploy.replay import DRIVES_DIR, make_drives

    for path in make_drives(args.out or DRIVES_DIR, rig_path=args.rig):
        print(f"{path} ({path.stat().st_size / 1e6:.2f} MB)")
    return 0


def _check(args) -> int:
    from dataclasses import replace

    from deploy.replay import Tolerance, check

    tol = Tolerance()
    tol = replace(tol, atol=tol.atol if args.atol is None else args.atol,
                  rtol=tol.rtol if args.rtol is None else args.rtol,
                  ignore=tol.ignore if args.ignore is None else tuple(args.ignore))
    failed = 0
    for name in _targets(args):
        report = check(name, args.onnx, args.manifest, args.drives, args.refs, tol, args.threads, progress=True)
        print(report.format())
        failed += not report.ok
    return 1 if failed else 0


def _update_refs(args) -> int:
    from deploy.replay import parse_refs_name, refs_paths, update_refs

    for name in _targets(args):
        model, memory_decay = parse_refs_name(name)
        report = update_refs(model, args.manifest, args.drives, args.refs, threads=args.threads, progress=True,
                             memory_decay=memory_decay)
        path = refs_paths(name, args.refs)[0]
        if report is None:
            print(f"{path}: new references for {name}")
        elif report.ok:
            print(f"{path}: references for {name} rewritten, no output changed ({report.frames} frames)")
            for note in report.notes:
                print(f"  note: {note}")
        else:
            print(f"{path}: references for {name} rewritten; what changed against the old ones:")
            print(report.format())
    return 0
