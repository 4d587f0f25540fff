"""Compression methods by name: METHODS maps a method ('int8-ptq', 'qat', 'prune-structured', ...) to the function
that turns a source model into a zoo model; compress() dispatches, registers and measures. Method modules add
themselves to METHODS on import (METHOD_MODULES lists them), so a new method touches only its own file."""

from __future__ import annotations

import importlib
import logging
import math
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploy.zoo import (
    MANIFEST,
    ZooModel,
    check_new_names,
    check_own_file,
    get_model,
    read_zoo,
    register,
    update_metrics,
)
from perception.bev_config import BevConfig
from sensors.errors import ConfigError

log = logging.getLogger(__name__)

# A method: (source, out, data, options, manifest) -> the registered ZooModel named OUT. `source` is a zoo model or a
# trained model (registered name or training run directory); `data` a drive log or folder of logs (calibration,
# fine-tuning), None if not given; `options` the method's settings (the COMMON_OPTIONS it reads, with their defaults,
# included), recorded in the entry.
Method = Callable[[str, str, "str | None", dict[str, Any], Path], ZooModel]
METHODS: dict[str, Method] = {}
# The options each method reads (besides COMPRESS_OPTIONS): compress refuses any other, so that a typo or an option of
# another method is an error rather than a default quietly used and recorded.
METHOD_OPTIONS: dict[str, frozenset[str]] = {}
# The zoo names a method registers for --out OUT (default: OUT alone), checked before it runs.
METHOD_OUTPUTS: dict[str, Callable[[str, dict[str, Any]], list[str]]] = {}

# Imported by load_methods(); a module that is not written yet is skipped.
METHOD_MODULES = ("deploy.quantize", "deploy.qat", "deploy.prune", "deploy.distill", "deploy.lowrank")

# Defaults of the options that have a flag of their own (the CLI's common flags), for the methods that read them.
COMMON_OPTIONS: dict[str, Any] = {
    "steps": 20,  # fine-tuning steps (qat, distillation, pruning with fine-tuning)
    "calib_frames": 16,  # calibration frames (int8-ptq, activation ranges of qat)
    "calibration": "minmax",  # int8-ptq calibration: minmax | entropy | percentile
    "threads": None,  # CPU threads for calibration, fine-tuning and measuring (None: library default)
}
# Options compress itself reads whatever the method: the threads also measure the result.
COMPRESS_OPTIONS = ("threads",)

# Set by compress() while a method runs: whether register_output may replace a zoo model of the same name (the
# methods' signature has no room for it, and it must not land in the options they record).
_REPLACING: ContextVar[bool] = ContextVar("nearfield_compress_replacing", default=False)


def method(name: str, options: Iterable[str],
           outputs: Callable[[str, dict[str, Any]], list[str]] | None = None) -> Callable[[Method], Method]:
    """Decorator: register FN as compression method NAME that reads OPTIONS (COMPRESS_OPTIONS besides) and
    registers the zoo models OUTPUTS(out, options) (default: OUT alone)."""
    def add(fn: Method) -> Method:
        METHODS[name] = fn
        METHOD_OPTIONS[name] = frozenset(options) | frozenset(COMPRESS_OPTIONS)
        if outputs is not None:
            METHOD_OUTPUTS[name] = outputs
        return fn
    return add


def load_methods() -> dict[str, Method]:
    """METHODS after importing every method module that exists."""
    for name in METHOD_MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:  # a real missing dependency inside the module
                raise
    return METHODS


def compress(method: str, source: str, out: str, data: str | None, options: dict[str, Any],
             manifest: str | Path = MANIFEST, measure: bool = True, replace: bool = False) -> ZooModel:
    """Build deploy model OUT from SOURCE with METHOD, register it in MANIFEST and, when DATA is given and MEASURE,
    measure it on DATA's test split (its figures merged into the entry's metrics). OPTIONS the method does not read
    are a ConfigError (check_options); so is a zoo name the method would register that the zoo has already, unless
    REPLACE, and a file of another zoo model it would write: all checked before the method runs."""
    methods = load_methods()
    if method not in methods:
        raise ConfigError(f"unknown compression method {method!r}; known: {', '.join(sorted(methods)) or 'none'}")
    check_name(out)
    manifest = Path(manifest)
    if data is not None and not Path(data).exists():
        raise ConfigError(f"compress --data {data}: no such log file or directory")
    given = {k: v for k, v in options.items() if v is not None}
    check_options(method, given)
    options = {**{k: v for k, v in COMMON_OPTIONS.items() if k in METHOD_OPTIONS[method]}, **given}
    names = METHOD_OUTPUTS.get(method, lambda o, _: [o])(out, options)
    for name in names:
        check_name(name)
        check_own_file(manifest.parent / f"{name}.onnx", name, manifest)
    check_new_names(names, manifest, replace)
    before = read_zoo(manifest)
    token = _REPLACING.set(replace)
    try:
        entry = methods[method](source, out, data, options, manifest)
    finally:
        _REPLACING.reset(token)
    if out in before:
        _warn_stale_siblings(before, out, names, manifest)
    if data is not None and measure:
        entry = measure_entry(entry.name, data, options.get("threads"), manifest)
    return entry


def _warn_stale_siblings(before: dict[str, ZooModel], out: str, names: list[str], manifest: Path) -> None:
    """A warning naming the entries made together with the replaced OUT (OUT-tensorrt of int8-ptq: same method and
    parent, OUT's name as prefix) that this run did not remake: they still hold the old model's artifact."""
    old = before[out]
    stale = [n for n, m in before.items() if n.startswith(f"{out}-") and n not in names
             and (m.method, m.parent) == (old.method, old.parent)]
    if stale:
        log.warning("%s: %s was made together with the replaced %s (%s from %s) and was not remade; it still holds the "
                    "old model: remake or remove it", manifest, ", ".join(stale), out, old.method, old.parent)


# The options that have a flag of their own besides --opt KEY=VALUE (deploy/commands/compress.py).
FLAG_OPTIONS = ("steps", "calib_frames", "calibration", "threads")


def check_options(method: str, options: dict[str, Any]) -> None:
    """ConfigError for the first option in OPTIONS that METHOD does not read: one another method reads ("not used
    by"), else an unknown key with the nearest known one."""
    import difflib

    allowed = METHOD_OPTIONS.get(method, frozenset(COMPRESS_OPTIONS))
    reads = ", ".join(sorted(allowed))
    for key in sorted(set(options) - allowed):
        given = (f"--{key.replace('_', '-')} (--opt {key})" if key in FLAG_OPTIONS else f"--opt {key}")
        if any(key in o for o in METHOD_OPTIONS.values()):
            raise ConfigError(f"compress --method {method}: {given} is not used by {method}; it reads {reads}")
        known = sorted(set().union(allowed, *METHOD_OPTIONS.values()))
        close = difflib.get_close_matches(key, sorted(allowed), n=1) or difflib.get_close_matches(key, known, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigError(f"compress --method {method}: unknown option {given}{hint}; {method} reads {reads}")


def measure_entry(name: str, data: str, threads: int | None, manifest: Path) -> ZooModel:
    """Measured figures of zoo model NAME on DATA via deploy.measure (written separately); a warning if that module
    is not there yet."""
    try:
        from deploy.measure import measure_model
    except ModuleNotFoundError as e:
        if e.name != "deploy.measure":
            raise
        log.warning("zoo model %s: not measured (deploy.measure is not installed); run `nearfield zoo measure` "
                    "later", name)
        return get_model(name, manifest)
    figures = measure_model(name, data, threads, manifest)
    return update_metrics(name, figures, manifest) if figures else get_model(name, manifest)


def check_name(name: str) -> None:
    if not name or any(c in name for c in "/\\ \"'[].="):
        raise ConfigError(f"--out {name!r}: a zoo model name must be non-empty, without spaces, quotes, dots, "
                          "brackets or slashes")


# --- helpers the methods share ----------------------------------------------------------------------------------

def option(options: dict[str, Any], key: str, default: Any, kind: type = float, lo: float = -math.inf,
           hi: float = math.inf, method_name: str = "compress") -> Any:
    """OPTIONS[KEY] as KIND within [lo, hi] (the CLI hands `--opt KEY=VALUE` over as strings), else DEFAULT; a
    ConfigError naming the option otherwise."""
    v = options.get(key)
    if v is None:
        return default
    try:
        if kind is int and isinstance(v, str):
            v = int(v, 10)
        elif kind is int and (isinstance(v, bool) or not float(v).is_integer()):
            raise ValueError
        v = kind(v)
    except (TypeError, ValueError):
        what = "a whole number" if kind is int else "a number"
        raise ConfigError(f"{method_name}: option {key}={options[key]!r} must be {what}") from None
    if not lo <= v <= hi or (kind is float and not math.isfinite(v)):
        raise ConfigError(f"{method_name}: option {key}={v} must lie in [{lo}, {hi}]")
    return v


@dataclass(frozen=True)
class Source:
    """What a method starts from: a float torch model (trained, or the trained parent of an fp32 zoo model) and/or
    a float ONNX file (a zoo model that is not quantised)."""

    name: str  # as the user gave it; the new entry's parent
    bev: BevConfig
    zoo: ZooModel | None = None  # when SOURCE is a zoo model
    trained: str | None = None  # the trained model (name or run directory) behind it, when there is one


def resolve_source(source: str, manifest: str | Path = MANIFEST) -> Source:
    """SOURCE as a zoo model of MANIFEST first, else a trained model (registered name or run directory)."""
    zoo = read_zoo(manifest)
    if source in zoo:
        entry = zoo[source]
        trained = entry.parent if entry.method == "fp32" else None
        return Source(source, entry.bev, entry, trained)
    from perception.registry import list_trained

    if source in list_trained() or Path(source).is_dir():
        from perception.registry import load_trained

        _, config = load_trained(source)
        return Source(source, config.bev, None, source)
    from perception.registry import MANIFEST as TRAINED

    raise ConfigError(f"compress --from {source!r}: neither a zoo model of {manifest} (`nearfield zoo list` shows "
                      f"them) nor a trained model of {TRAINED} ({', '.join(list_trained()) or 'none registered'}) nor "
                      "a training run directory (`nearfield train --out`)")


def load_torch_model(src: Source):
    """(FusionNet float32 in eval mode, ModelConfig) of SOURCE; ConfigError when only ONNX is behind it (a zoo model
    that is already compressed: torch-side methods start from the fp32 model or the trained one)."""
    if src.trained is None:
        raise ConfigError(f"compress --from {src.name}: zoo model of method {src.zoo.method!r} has no torch weights; "
                          f"start from its fp32 parent or the trained model ({src.zoo.parent})")
    from perception.registry import load_trained

    return load_trained(src.trained)


def float_onnx(src: Source, workdir: Path) -> Path:
    """A float ONNX file of SOURCE: the zoo model's own file (checked) if it is not quantised, else the trained model
    exported into WORKDIR."""
    if src.zoo is not None and not is_quantised(src.zoo.verified_onnx()):
        return src.zoo.verified_onnx()
    if src.zoo is not None and src.trained is None:
        raise ConfigError(f"compress --from {src.name}: the model is already quantised ({src.zoo.method}); start "
                          f"from a float model such as {src.zoo.parent}")
    from deploy.export import export_onnx

    model, config = load_torch_model(src)
    return export_onnx(model, config, workdir / "float.onnx")


def is_quantised(onnx_path: Path) -> bool:
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear", "QLinearConv") for n in graph.node)


def register_output(out: str, onnx_path: Path, src: Source, method_name: str, target: str, options: dict[str, Any],
                    notes: str, manifest: Path) -> ZooModel:
    """Register ONNX_PATH (already beside the manifest) as zoo model OUT made from SOURCE."""
    from deploy.export import input_shapes

    options = {k: v for k, v in options.items() if v is not None}  # TOML has no null
    entry = ZooModel(out, onnx_path, "", src.name, method_name, target, src.bev, input_shapes(onnx_path), options,
                     notes=notes)
    return register(entry, manifest, replace=_REPLACING.get())


def output_path(out: str, manifest: Path) -> Path:
    check_name(out)
    manifest.parent.mkdir(parents=True, exist_ok=True)
    return manifest.parent / f"{out}.onnx"


__all__ = ["COMMON_OPTIONS", "COMPRESS_OPTIONS", "FLAG_OPTIONS", "METHODS", "METHOD_MODULES", "METHOD_OPTIONS",
           "METHOD_OUTPUTS", "Method", "Source", "check_name", "check_options", "compress", "float_onnx",
           "is_quantised", "load_methods", "load_torch_model", "measure_entry", "method", "option", "output_path",
           "register_output", "resolve_source"]
