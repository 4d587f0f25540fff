"""`nearfield export` and `nearfield zoo list | verify | measure`: thin wrappers over deploy.checks, deploy.zoo
and deploy.measure."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# `zoo list` columns: (header, key of zoo_rows' dicts)
COLUMNS = (("name", "name"), ("method", "method"), ("target", "target"), ("parent", "parent"),
           ("params M", "params_m"), ("GFLOPs", "gflops"), ("size MB", "size_mb"), ("test mIoU", "test_miou"),
           ("night mIoU", "test_miou_night"), ("ORT CPU ms", "ort_cpu_ms"), ("speed-up vs parent", "speedup"))


def register(commands: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:
    e = commands.add_parser("export", help="export a trained model to ONNX (opset 17) and check it: ONNX checker, "
                                           "TensorRT operators, parity with torch on simulated frames")
    e.add_argument("--model", required=True, help="trained model name (perception/weights/MODELS.toml) or a "
                                                  "training run directory")
    e.add_argument("--out", help="the ONNX file to write")
    e.add_argument("--register", metavar="ZOONAME", help="also put it into the model zoo under this name")
    e.add_argument("--manifest", help="zoo manifest for --register (default: deploy/zoo/ZOO.toml)")
    e.add_argument("--file", metavar="STEM", help="with --register: the zoo file STEM.onnx (default: the zoo name; a "
                                                  "new revision of a model gets a file of its own)")
    e.add_argument("--replace", action="store_true",
                   help="with --register: replace the zoo model of that name if there is one (what was measured on its "
                        "old file is dropped, with a warning); `nearfield zoo rename OLD NEW` keeps it instead")
    e.add_argument("--parity-data", nargs="+", help="drive logs for the parity check (default: a small drive "
                                                    "simulated for it)")
    e.add_argument("--parity-frames", type=int, default=4, help="frames compared with torch (default 4)")
    e.set_defaults(func=_export)

    z = commands.add_parser("zoo", help="the deploy model zoo: list, verify checksums, measure accuracy and speed")
    z.add_argument("--manifest", help=MANIFEST_HELP)
    sub = z.add_subparsers(dest="zoo", metavar="ACTION", required=True)
    ls = sub.add_parser("list", help="the zoo's models with their measured figures (blank: not measured)")
    ls.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ls.set_defaults(func=_list)
    p = sub.add_parser("plot", help="test mIoU against onnxruntime CPU latency, one point per measured model, the "
                                    "Pareto front marked")
    p.add_argument("out", metavar="OUT.png", help="the PNG to write")
    p.set_defaults(func=_plot)
    v = sub.add_parser("verify", help="check every model file against its sha256; exit 2 on a mismatch")
    v.set_defaults(func=_verify)
    rn = sub.add_parser("rename", help="rename a zoo model (file, checksum and figures kept; its children follow), "
                                       "e.g. to keep a previous revision when a new one takes the name")
    rn.add_argument("old", help="the zoo model's present name")
    rn.add_argument("new", help="its new name (no zoo model may have it yet)")
    rn.add_argument("--with-trained", action="store_true", help="rename the trained model of the same name in "
                                                               "perception/weights/MODELS.toml too")
    rn.set_defaults(func=_rename)
    m = sub.add_parser("measure", help="test mIoU (overall, night), onnxruntime CPU latency and its ratio to the "
                                       "parent, size; stored in the manifest")
    m.add_argument("name", help="zoo model name")
    m.add_argument("--data", required=True, nargs="+", help="test drive logs, directories of them, or a data "
                                                            "directory with a test/ split")
    m.add_argument("--threads", type=int, help="onnxruntime intra-op threads (default: onnxruntime's, all cores)")
    m.add_argument("--accuracy-only", action="store_true", help="re-score the test mIoU only; the stored timings "
                                                                  "and the machine they were taken on stay")
    m.set_defaults(func=_measure)
    # Every other command takes --manifest after its name: so does each zoo action (before it works too).
    for action in sub.choices.values():
        action.add_argument("--manifest", default=argparse.SUPPRESS, help=MANIFEST_HELP)


MANIFEST_HELP = "zoo manifest (default: deploy/zoo/ZOO.toml); one given must exist and list models"


def _manifest(args) -> Path:
    """--manifest, else the shipped one. One given explicitly must exist and list a model (a mistyped path is not an
    empty zoo)."""
    from deploy.zoo import MANIFEST, read_zoo

    if not args.manifest:
        return MANIFEST
    read_zoo(args.manifest, required=True)
    return Path(args.manifest)


def _export(args) -> int:
    from deploy.checks import export_checked

    if args.parity_frames < 1:
        from sensors.errors import ConfigError

        raise ConfigError(f"export: --parity-frames must be at least 1, got {args.parity_frames}")
    if args.file and not args.register:
        from sensors.errors import ConfigError

        raise ConfigError("export: --file names the zoo file; it needs --register ZOONAME")
    if args.replace and not args.register:
        from sensors.errors import ConfigError

        raise ConfigError("export: --replace replaces a zoo model; it needs --register ZOONAME")
    created = bool(args.register) and not _manifest_path(args).exists()
    path, report = export_checked(args.model, args.out, args.register, args.manifest, args.parity_data,
                                  args.parity_frames, stem=args.file, replace=args.replace)
    size = path.stat().st_size / 1e6
    print(f"{path}: {size:.1f} MB, opset 17, ONNX checker and TensorRT operators passed")
    print(report)
    if created:
        print(f"{_manifest_path(args)}: no such zoo manifest, a new one was created")
    if args.register:
        print(f"registered as {args.register} in {_manifest(args)}")
    return 0


def _manifest_path(args) -> Path:
    from deploy.zoo import MANIFEST

    return Path(args.manifest) if args.manifest else MANIFEST


def zoo_rows(manifest: str | Path) -> list[dict[str, Any]]:
    """One dict per zoo model for `zoo list`: COLUMNS' keys, None where nothing was measured. speedup is the parent's
    latency over the model's, both timed in the model's own `zoo measure` run (ort_cpu_ratio is its inverse), with
    speedup_range over that run's timing rounds when it recorded them;
    size_mb is the sparse weights file's for unstructured pruning (sparse: true; its ONNX holds dense zeros)."""
    from deploy.zoo import read_zoo

    rows = []
    for name, m in read_zoo(manifest).items():
        params = m.metrics.get("params")
        ratio = m.metrics.get("ort_cpu_ratio")
        spread = m.metrics.get("ort_cpu_ratio_range")
        rows.append({"name": name, "method": m.method, "target": m.target, "parent": m.parent,
                     "params_m": params / 1e6 if isinstance(params, int | float) else None,
                     "size_mb": (m.options["sparse_size_mb"] if "sparse_size_mb" in m.options
                                 else m.size_bytes / 1e6 if m.onnx.is_file() else None),
                     "sparse": "sparse_size_mb" in m.options,
                     "speedup": 1 / ratio if isinstance(ratio, int | float) and ratio > 0 else None,
                     "speedup_range": ([1 / spread[1], 1 / spread[0]] if isinstance(spread, list) and len(spread) == 2
                                       and all(isinstance(v, int | float) and v > 0 for v in spread) else None),
                     **_gflops(m),
                     **{k: m.metrics.get(k) for k in ("test_miou", "test_miou_night", "ort_cpu_ms")}})
    return rows


def _gflops(m) -> dict[str, Any]:
    """gflops: the stored figure, else FLOPs counted from the model's file (they need no measuring run; only then is
    the file read, unverified); file_problem: why the file could not be counted (missing, or it does not parse:
    damaged, truncated or replaced), else None."""
    from deploy.flops import onnx_flops

    if "gflops" in m.metrics:
        return {"gflops": m.metrics["gflops"], "file_problem": None}
    if not m.onnx.is_file():
        return {"gflops": None, "file_problem": f"{m.onnx.name} is missing"}
    try:
        return {"gflops": onnx_flops(m.onnx) / 1e9, "file_problem": None}
    except Exception as e:  # a damaged file leaves its row's figure blank; the listing goes on
        log.info("zoo model %s: FLOPs not counted, %s does not parse: %s", m.name, m.onnx, e)
        return {"gflops": None, "file_problem": f"{m.onnx.name} does not parse ({type(e).__name__})"}


def format_rows(rows: list[dict[str, Any]]) -> str:
    from sensors.timing import format_table

    def cell(key: str, v: Any) -> Any:
        if v is None:
            return ""
        if key in ("test_miou", "test_miou_night"):
            return f"{100 * v:.1f}%"
        if key == "speedup":
            return f"{v:.2f}x"
        if key in ("params_m", "gflops", "size_mb", "ort_cpu_ms"):
            return f"{v:.2f}" if v < 100 else f"{v:.0f}"
        return v

    def row(r: dict[str, Any]) -> list[Any]:
        cells = [cell(k, r[k]) for _, k in COLUMNS]
        if r.get("speedup") is not None and r.get("speedup_range"):  # the slowest and fastest timing round
            cells[[k for _, k in COLUMNS].index("speedup")] += " ({:.2f}–{:.2f})".format(*r["speedup_range"])
        if r.get("sparse") and r.get("size_mb") is not None:
            cells[[k for _, k in COLUMNS].index("size_mb")] += " *"
        if r.get("file_problem"):
            cells[[k for _, k in COLUMNS].index("gflops")] = "?"
        return cells

    table = format_table([row(r) for r in rows], [h for h, _ in COLUMNS])
    if any(r.get("sparse") for r in rows):
        table += ("\n\n\\* the sparse weights file (unstructured pruning); its ONNX holds the zeros densely and "
                  "runs no faster")
    problems = [f"{r['name']}: {r['file_problem']}" for r in rows if r.get("file_problem")]
    if problems:
        table += (f"\n\n? FLOPs not counted, the model file is missing or damaged ({'; '.join(problems)}); "
                  "`nearfield zoo verify` checks every file")
    return table


def _list(args) -> int:
    import json

    manifest = _manifest(args)
    rows = zoo_rows(manifest)
    if args.json:
        print(json.dumps(rows, indent=1))
    elif not rows:
        print(f"{manifest}: no models yet (`nearfield export --register NAME`)")
    else:
        print(format_rows(rows))
    return 0


def _plot(args) -> int:
    from deploy.zoo import read_zoo
    from deploy.zoo_plot import plot_zoo, zoo_points

    manifest = _manifest(args)
    points, missing = zoo_points(zoo_rows(manifest))
    lines = [*machine_lines(read_zoo(manifest), {p.name for p in points}),
             "a model with a parent in the zoo: the parent's ms / its speed-up timed in the same run",
             *([f"no CPU latency (TensorRT artifacts, models not measured), left out: {', '.join(missing)}"]
               if missing else [])]
    plot_zoo(points, args.out, footnote="\n".join(lines))
    note = "; ".join(lines)
    print(f"{args.out}: {len(points)} model(s)" + (f"; {note}" if note else ""))
    return 0


def machine_lines(models: dict, names: set[str]) -> list[str]:
    """Where the plotted models (NAMES) were timed: one line per machine, the one most were timed on first; a
    machine that timed only some of them names them."""
    by_machine: dict[str, list[str]] = {}
    for m in models.values():
        if m.name in names and "measured_on" in m.metrics:
            by_machine.setdefault(m.metrics["measured_on"], []).append(m.name)
    ranked = sorted(by_machine.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    if len(ranked) <= 1:
        return [f"measured on {machine}" for machine, _ in ranked]
    return [f"measured on {ranked[0][0]}: {len(ranked[0][1])} models"] + [
        f"measured on {machine}: {', '.join(sorted(models_))}" for machine, models_ in ranked[1:]]


def verify(manifest: str | Path) -> dict[str, bool]:
    """verify_zoo, then ChecksumError naming every model whose file is missing or does not match its sha256; a
    ConfigError when the manifest is missing or lists no model (checking nothing is no pass)."""
    from deploy.zoo import read_zoo, verify_zoo
    from sensors.errors import ChecksumError

    result = verify_zoo(manifest)
    if not result:
        read_zoo(manifest, required=True)
    bad = [name for name, ok in result.items() if not ok]
    if bad:
        raise ChecksumError(f"{manifest}: {len(bad)} of {len(result)} model file(s) missing or not matching their "
                            f"sha256: {', '.join(bad)}; restore them from git or re-export them")
    return result


def _rename(args) -> int:
    from deploy.zoo import rename

    trained = None
    if args.with_trained:
        from perception.registry import MANIFEST as TRAINED

        trained = TRAINED
    rename(args.old, args.new, _manifest(args), trained)
    print(f"{args.old} is now {args.new}" + (" (zoo and trained model)" if trained else ""))
    return 0


def _verify(args) -> int:
    result = verify(_manifest(args))
    for name in result:
        print(f"{name}: ok")
    print(f"{len(result)} model file(s) match their sha256")
    return 0


def _measure(args) -> int:
    from deploy.measure import measure_model

    metrics = measure_model(args.name, args.data, args.threads, _manifest(args), timing=not args.accuracy_only)
    rows = [r for r in zoo_rows(_manifest(args)) if r["name"] == args.name]
    print(format_rows(rows))
    if "measured_on" in metrics:
        how = metrics["measured_on"]
    elif args.accuracy_only:
        how = "accuracy only, the timings are the stored ones"
    else:  # measure_model does not time what onnxruntime's CPU time says nothing about (a TensorRT artifact)
        how = "accuracy only: a TensorRT artifact is not timed in onnxruntime"
    print(f"{metrics['test_frames']} test frames; {how}")
    return 0


__all__ = ["COLUMNS", "format_rows", "register", "verify", "zoo_rows"]
