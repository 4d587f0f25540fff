"""Post-training static INT8 quantisation (method 'int8-ptq') with onnxruntime.quantization: calibration frames from
drive logs, two QDQ artifacts (U8S8 for CPUs, symmetric S8S8 for TensorRT), the layers that must stay float found in
the graph and excluded by name."""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from deploy.compress import Source, float_onnx, method, option, output_path, register_output, resolve_source
from deploy.zoo import ZooModel
from perception.bev_config import BevConfig
from sensors.errors import ConfigError, DeployError

log = logging.getLogger(__name__)

CALIBRATIONS = ("minmax", "entropy", "percentile")
TARGETS = ("cpu", "tensorrt")
TRT_SUFFIX = "-tensorrt"  # the TensorRT artifact of --out NAME is NAME-tensorrt

# Ops that only move or rescale one tensor (their other inputs are constants): the input normalisation and the
# reshapes between a graph input and the first convolution / GridSample are made of these.
_PASS_THROUGH = {"Cast", "Sub", "Mul", "Div", "Add", "Reshape", "Transpose", "Unsqueeze", "Squeeze", "Identity",
                 "Relu", "Flatten"}


# --- calibration data --------------------------------------------------------------------------------------------

def calibration_logs(data: str | Path) -> list[Path]:
    """The drive logs of DATA (a log, or a folder of logs; a folder with a train/ split uses that split)."""
    from perception.dataset import find_logs

    data = Path(data)
    return find_logs([data / "train" if (data / "train").is_dir() else data])


def calibration_frames(data: str | Path, bev: BevConfig, count: int, names: Sequence[str] | None = None
                       ) -> list[dict[str, np.ndarray]]:
    """COUNT frames' network inputs (batch of one, perception.preprocess), spread evenly over the logs of DATA and
    over each log's length; only the inputs in NAMES when given."""
    from perception.preprocess import FramePreprocessor
    from sensors.log import LogReader
    from sensors.replay import replay_frames

    if count < 1:
        raise ConfigError(f"--calib-frames must be at least 1, got {count}")
    logs = calibration_logs(data)
    quota = math.ceil(count / len(logs))
    out: list[dict[str, np.ndarray]] = []
    for path in logs:
        with LogReader(path) as reader:
            prep = FramePreprocessor(reader.rig, bev, str(path))
            stride = max(1, reader.summary().frames // quota)
            frames = replay_frames(path, decode=True, decode_scale=prep.reduction, reader=reader)
            taken = 0
            for i, frame in enumerate(frames):
                if i % stride or taken >= quota or len(out) >= count:
                    continue
                inputs, _ = prep.network_inputs(frame)
                out.append({k: v for k, v in inputs.items() if names is None or k in names})
                taken += 1
        if len(out) >= count:
            break
    if not out:
        raise ConfigError(f"--data {data}: no frames in its logs to calibrate on")
    if len(out) < count:
        log.warning("calibration: %d frame(s) found in %s, fewer than the %d asked for", len(out), data, count)
    return out


def _reader(frames: list[dict[str, np.ndarray]]):
    from onnxruntime.quantization import CalibrationDataReader

    class FrameReader(CalibrationDataReader):
        """Feeds the calibration frames once (quantize_static rewinds it per pass)."""

        def __init__(self) -> None:
            self._it = iter(frames)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

        def rewind(self) -> None:
            self._it = iter(frames)

    return FrameReader()


# --- the layers that stay float ----------------------------------------------------------------------------------

def float_nodes(model, target: str = "cpu") -> dict[str, list[str]]:
    """Node names that stay float, by reason: 'normalisation' (uint8 -> float and the mean/std), 'first_conv' (the
    first convolution on each input), 'grid_sample' (GridSample and the nodes computing its inputs, back to the
    feature map's convolution or the graph input), 'softmax' (the content-aware gate), and for target 'cpu'
    'stem_pool' (the activation and max-pool right after a first convolution: onnxruntime's uint8 MaxPool kernel is
    generic and was far slower than the float one here, deploy/docs/int8_cpu.md; quantising after the pool also
    reads 4x fewer values). MODEL: an onnx ModelProto."""
    g = model.graph
    consts = {i.name for i in g.initializer} | {o for n in g.node if n.op_type == "Constant" for o in n.output}
    producer = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    graph_inputs = {i.name for i in g.input} - consts

    def variable_inputs(n) -> list[str]:
        return [i for i in n.input if i and i not in consts]

    out: dict[str, list[str]] = {"normalisation": [], "first_conv": [], "stem_pool": [], "grid_sample": [],
                                 "softmax": []}
    for name in sorted(graph_inputs):
        frontier = [name]
        while frontier:  # forward through single-tensor ops to the first convolution(s)
            tensor = frontier.pop()
            for n in consumers.get(tensor, []):
                if n.op_type == "Conv" and n.input[0] == tensor:
                    out["first_conv"].append(n.name)
                    if target == "cpu":
                        out["stem_pool"] += _stem_pool(n, consumers)
                elif n.op_type in _PASS_THROUGH and len(variable_inputs(n)) == 1 and name in ("images",):
                    out["normalisation"].append(n.name)
                    frontier += list(n.output)
    for n in g.node:
        if n.op_type == "Softmax":
            out["softmax"].append(n.name)
        if n.op_type != "GridSample":
            continue
        out["grid_sample"].append(n.name)
        frontier = variable_inputs(n)
        while frontier:  # back to the convolution that makes the features, or to the graph input
            p = producer.get(frontier.pop())
            if p is None or p.name in out["grid_sample"]:
                continue
            out["grid_sample"].append(p.name)
            if p.op_type != "Conv" and p.op_type in _PASS_THROUGH:
                frontier += variable_inputs(p)
    return {k: sorted(set(v)) for k, v in out.items()}


def _stem_pool(conv, consumers) -> list[str]:
    """The Relu / Clip and MaxPool that follow CONV one after the other (each the only reader of the tensor before
    it), up to and including the first MaxPool; [] when no MaxPool comes first."""
    chain, node = [], conv
    while True:
        readers = consumers.get(node.output[0], [])
        if len(readers) != 1 or readers[0].op_type not in ("Relu", "Clip", "MaxPool"):
            return []
        node = readers[0]
        chain.append(node.name)
        if node.op_type == "MaxPool":
            return chain


def bypass_float_edges(model, float_names: Iterable[str]) -> int:
    """onnxruntime quantises a tensor for all its readers when one of them is quantised (the ultrasonic raster feeds
    the float stem and a quantised concatenation). Rewire FLOAT_NAMES' inputs that went through a Q/DQ pair from a
    graph input or another float node back to the original tensor, and drop pairs nobody reads any more. Returns
    the number of edges rewired."""
    g = model.graph
    float_names = set(float_names)
    producer = {o: n for n in g.node for o in n.output}
    inputs = {i.name for i in g.input}
    count = 0
    for n in g.node:
        if n.name not in float_names:
            continue
        for k, name in enumerate(n.input):
            dq = producer.get(name)
            if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in producer:
                continue
            q = producer[dq.input[0]]
            source = q.input[0] if q.op_type == "QuantizeLinear" else None
            if source is not None and (source in inputs or producer.get(source, q).name in float_names):
                n.input[k] = source
                count += 1
    while True:  # Q/DQ nodes whose outputs nobody reads
        used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
        dead = [n for n in g.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
                and not any(o in used for o in n.output)]
        if not dead:
            return count
        for n in dead:
            g.node.remove(n)


# --- quantisation ------------------------------------------------------------------------------------------------

def _settings(target: str) -> dict[str, Any]:
    from onnxruntime.quantization import QuantType

    if target == "cpu":
        # onnxruntime's CPU kernels: uint8 asymmetric activations (ReLU outputs use the whole range), int8
        # per-channel weights (U8S8).
        return {"activation_type": QuantType.QUInt8, "weight_type": QuantType.QInt8, "op_types_to_quantize": None,
                "extra_options": {"WeightSymmetric": True}}
    # TensorRT explicit quantisation: zero points 0 (int8 both ways) and QDQ on both inputs of residual adds and
    # concatenations, so TensorRT runs them in int8 instead of falling back to float around them.
    from onnxruntime.quantization.registry import QDQRegistry

    return {"activation_type": QuantType.QInt8, "weight_type": QuantType.QInt8,
            "op_types_to_quantize": sorted({*QDQRegistry, "Add", "Concat"}),
            "extra_options": {"ActivationSymmetric": True, "WeightSymmetric": True,
                              "QDQKeepRemovableActivations": True, "ForceQuantizeNoInputCheck": True}}


def quantize_onnx(float_path: Path, out: Path, frames: list[dict[str, np.ndarray]], target: str = "cpu",
                  calibration: str = "minmax", extra_exclude: Iterable[str] = (), percentile: float = 99.999
                  ) -> dict[str, Any]:
    """Quantise FLOAT_PATH into OUT for TARGET ('cpu' | 'tensorrt') from calibration FRAMES; returns the settings
    (for the zoo entry's options), float_nodes included. PERCENTILE: the share of values kept by 'percentile'
    calibration (onnxruntime's default 99.999 clips nothing on a few small frames)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if target not in TARGETS:
        raise ConfigError(f"int8-ptq: target {target!r} is not one of {', '.join(TARGETS)}")
    if calibration not in CALIBRATIONS:
        raise ConfigError(f"--calibration {calibration!r} is not one of {', '.join(CALIBRATIONS)}")
    calib = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
             "percentile": CalibrationMethod.Percentile}[calibration]
    settings = _settings(target)
    with tempfile.TemporaryDirectory(prefix="nearfield-ptq-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        try:
            quant_pre_process(str(float_path), str(pre))
        except Exception as e:
            raise DeployError(f"{float_path}: onnxruntime quant_pre_process failed ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:300] if str(e) else ''})") from e
        keep = float_nodes(onnx.load(str(pre)), target)
        exclude = sorted({n for names in keep.values() for n in names} | set(extra_exclude))
        extra = dict(settings["extra_options"])
        if calibration != "minmax":
            # Histograms of every activation: bounded memory by folding them every few frames.
            extra["CalibMaxIntermediateOutputs"] = 4
        if calibration == "percentile":
            if not 50 < percentile <= 100:
                raise ConfigError(f"--opt percentile={percentile}: must be in (50, 100]")
            extra["CalibPercentile"] = float(percentile)
        try:
            quantize_static(str(pre), str(out.with_suffix(".part")), _reader(frames), quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=settings["op_types_to_quantize"], per_channel=True,
                            activation_type=settings["activation_type"], weight_type=settings["weight_type"],
                            nodes_to_exclude=exclude, calibrate_method=calib, extra_options=extra)
        except Exception as e:
            raise DeployError(f"{float_path}: int8 quantisation for {target} failed ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:300] if str(e) else ''})") from e
    model = onnx.load(str(out.with_suffix(".part")))
    bypassed = bypass_float_edges(model, exclude)
    onnx.checker.check_model(model)
    onnx.save_model(model, str(out.with_suffix(".part")))
    out.with_suffix(".part").replace(out)
    log.debug("%s: %d float edge(s) taken out of quantisation", out, bypassed)
    return {"target": target, "calibration": calibration,
            "calib_frames": len(frames), "activations": settings["activation_type"].name.lower(),
            "weights": "qint8-per-channel", "symmetric_activations": bool(extra.get("ActivationSymmetric", False)),
            "nodes_to_exclude": exclude, "float_nodes": keep,
            "extra_options": {k: v for k, v in extra.items() if isinstance(v, (bool, int, float, str))}}


NOTES = {
    "cpu": "onnxruntime QDQ: uint8 activations, per-channel int8 weights (U8S8); input normalisation, the first "
           "convolutions with their activation and max-pool, GridSample with its inputs and the gate softmax stay "
           "float (options.nodes_to_exclude); deploy.backends.ort turns off onnxruntime's QDQ propagation, which "
           "would move the quantisation back above the pool",
    "tensorrt": "symmetric int8 QDQ (zero points 0) for TensorRT explicit quantisation, QDQ on residual adds and "
                "concatenations; the same layers stay float (options.nodes_to_exclude). Runs in onnxruntime too, "
                "but is built for TensorRT",
}


def ptq_outputs(out: str, options: dict[str, Any]) -> list[tuple[str, str]]:
    """(zoo name, target) of each artifact int8-ptq makes for --out OUT: OUT for the first of the targets (--opt
    targets, default cpu,tensorrt), OUT-tensorrt (or OUT-cpu) for the other."""
    targets = [t.strip() for t in str(options.get("targets", "cpu,tensorrt")).split(",") if t.strip()]
    bad = [t for t in targets if t not in TARGETS]
    if bad or not targets:
        raise ConfigError(f"--opt targets={options.get('targets')}: choose from {', '.join(TARGETS)}")
    return [(out if t == targets[0] else f"{out}{TRT_SUFFIX if t == 'tensorrt' else '-' + t}", t) for t in targets]


def _ptq_names(out: str, options: dict[str, Any]) -> list[str]:
    return [name for name, _ in ptq_outputs(out, options)]


@method("int8-ptq", ("calibration", "calib_frames", "targets", "percentile"), outputs=_ptq_names)
def int8_ptq(source: str, out: str, data: str | None, options: dict[str, Any], manifest: Path) -> ZooModel:
    """OUT (target cpu) and OUT-tensorrt (target tensorrt) from SOURCE, calibrated on frames of DATA. Options:
    calibration, calib_frames, targets ("cpu,tensorrt" by default), percentile."""
    if data is None:
        raise ConfigError("int8-ptq needs --data: drive logs to calibrate the activation ranges on")
    outputs = ptq_outputs(out, options)
    calibration = str(options.get("calibration", "minmax"))
    if calibration not in CALIBRATIONS:
        raise ConfigError(f"--calibration {calibration!r} is not one of {', '.join(CALIBRATIONS)}")
    count = option(options, "calib_frames", 16, int, 1, 100_000, "int8-ptq")
    percentile = option(options, "percentile", 99.999, float, 50, 100, "int8-ptq")
    src: Source = resolve_source(source, manifest)
    with tempfile.TemporaryDirectory(prefix="nearfield-ptq-") as tmp:
        fp = float_onnx(src, Path(tmp))
        from deploy.export import input_shapes

        frames = calibration_frames(data, src.bev, count, list(input_shapes(fp)))
        first = None
        for name, target in outputs:
            path = output_path(name, manifest)
            settings = quantize_onnx(fp, path, frames, target, calibration, percentile=percentile)
            opts = {"calib_data": str(data), **settings,
                    "float_nodes": {k: v for k, v in settings["float_nodes"].items() if v}}
            entry = register_output(name, path, src, "int8-ptq", target, opts, NOTES[target], manifest)
            log.info("int8-ptq: %s (%s) %.2f MB", name, target, entry.size_bytes / 1e6)
            first = first or entry
    return first


__all__ = ["CALIBRATIONS", "TARGETS", "TRT_SUFFIX", "bypass_float_edges", "calibration_frames", "calibration_logs",
           "float_nodes", "int8_ptq", "ptq_outputs", "quantize_onnx"]
