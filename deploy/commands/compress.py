"""`nearfield compress --method METHOD --from NAME --out NAME`: a thin wrapper over deploy.compress.compress."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from sensors.errors import ConfigError


def register(commands: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:
    c = commands.add_parser("compress", help="make a compressed deploy model (int8-ptq, qat, pruning, ...) and "
                                             "register it in the model zoo; measured when --data is given")
    c.add_argument("--method", required=True, help="compression method (`--method list` shows them)")
    c.add_argument("--from", dest="source", help="source: a zoo model or a trained model (name or run directory)")
    c.add_argument("--out", help="zoo name of the result (int8-ptq also writes OUT-tensorrt)")
    c.add_argument("--data", help="drive logs (a folder; its train/ split if it has one) to calibrate / fine-tune on, "
                                  "and to measure the result on")
    c.add_argument("--steps", type=int, help="fine-tuning steps (qat, distill, ...)")
    c.add_argument("--calib-frames", type=int, help="calibration frames (int8-ptq, qat activation ranges)")
    c.add_argument("--calibration", choices=("minmax", "entropy", "percentile"), help="int8-ptq calibration method")
    c.add_argument("--threads", type=int, help="CPU threads for fine-tuning and measuring")
    c.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                   help="a method option, repeatable (e.g. weights=int4, targets=cpu, lr=1e-4)")
    c.add_argument("--no-measure", action="store_true", help="register without measuring on --data's test split "
                                                              "(measure several models later, one after the other, "
                                                              "with `nearfield zoo measure`)")
    c.add_argument("--manifest", help="zoo manifest (default: deploy/zoo/ZOO.toml)")
    c.add_argument("--replace", action="store_true",
                   help="replace the zoo model(s) of that name if there are any (what was measured on the old files is "
                        "dropped, with a warning); `nearfield zoo rename OLD NEW` keeps one instead")
    c.set_defaults(func=_compress)


def parse_options(pairs: list[str]) -> dict[str, Any]:
    """--opt KEY=VALUE strings -> dict; VALUE read as a whole number, a number, true/false, else kept as text."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ConfigError(f"--opt {pair!r}: expected KEY=VALUE, e.g. --opt weights=int4")
        out[key] = _value(value.strip())
    return out


def _value(text: str) -> Any:
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def method_line(name: str, fn) -> str:
    """NAME and its function's whole docstring, one paragraph wrapped under a hanging indent (the first line alone
    cut descriptions mid-sentence)."""
    import textwrap

    doc = " ".join((fn.__doc__ or "(no description)").split())
    return textwrap.fill(doc, width=120, initial_indent=f"{name:20s} ", subsequent_indent=" " * 21)


def _compress(args) -> int:
    from deploy.compress import compress, load_methods
    from deploy.zoo import MANIFEST, read_zoo

    if args.method == "list":
        for name, fn in sorted(load_methods().items()):
            print(method_line(name, fn))
        return 0
    if not args.source or not args.out:
        raise ConfigError("compress: --from and --out are needed (e.g. --from nf-small --out nf-small-int8)")
    manifest = Path(args.manifest) if args.manifest else MANIFEST
    options = parse_options(args.opt)
    for key in ("steps", "calib_frames", "calibration", "threads"):
        if getattr(args, key) is not None:
            options[key] = getattr(args, key)
    created = not manifest.exists()
    before = {n: m.sha256 for n, m in read_zoo(manifest).items()}
    compress(args.method, args.source, args.out, args.data, options, manifest, measure=not args.no_measure,
             replace=args.replace)
    if created:
        print(f"{manifest}: no such zoo manifest, a new one was created")
    for name, m in read_zoo(manifest).items():
        if before.get(name) != m.sha256:
            figures = ", ".join(f"{k} {v}" for k, v in m.metrics.items() if isinstance(v, (int, float)))
            print(f"{name}: {m.method} ({m.target}) {m.size_bytes / 1e6:.2f} MB, {m.onnx}"
                  + (f"; {figures}" if figures else ""))
    return 0


__all__ = ["method_line", "parse_options", "register"]
