"""`nearfield bench ops`: where a deploy model's inference time goes, by onnxruntime operator type, for several
zoo models on the same frames. The answer to "why is the INT8 model not faster": float islands (GridSample, the
camera mean, the stems) and quantise/dequantise nodes show up as their own rows next to the int8 kernels."""

from __future__ import annotations

import json
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deploy.backends.ort import OrtBackend
from deploy.measure import time_blocks
from deploy.zoo import ZooModel
from perception.preprocess import FramePreprocessor
from sensors.errors import ConfigError

# Kernels that compute in 8 bits (onnxruntime's QDQ fusions and com.microsoft quantised ops).
INT8_KERNELS = ("QLinearConv", "QLinearAdd", "QLinearMul", "QLinearConcat", "QLinearSigmoid", "QLinearAveragePool",
                "QLinearGlobalAveragePool", "QLinearLeakyRelu", "MatMulInteger", "ConvInteger", "NhwcMaxPool",
                "QGemm", "QLinearMatMul")
QDQ_KERNELS = ("QuantizeLinear", "DequantizeLinear")


@dataclass
class OpProfile:
    model: str
    frames: int
    wall_ms: float  # median session.run wall time per frame
    op_ms: dict[str, float]  # operator type -> kernel ms per frame (summed over its nodes)
    op_nodes: dict[str, int]  # operator type -> nodes run per frame

    @property
    def kernel_ms(self) -> float:
        return sum(self.op_ms.values())

    def share(self, kinds: tuple[str, ...]) -> float:
        return sum(v for k, v in self.op_ms.items() if k in kinds) / self.kernel_ms if self.kernel_ms else 0.0

    def as_dict(self) -> dict:
        return {"model": self.model, "frames": self.frames, "wall_ms": self.wall_ms, "kernel_ms": self.kernel_ms,
                "op_ms": self.op_ms, "op_nodes": self.op_nodes}


def network_inputs(model: ZooModel, log: str | Path, frames: int) -> list[dict[str, np.ndarray]]:
    """The network inputs of the first FRAMES frames of LOG, built for MODEL's [bev]."""
    from sensors.log import LogReader
    from sensors.replay import replay_frames

    with LogReader(log) as reader:
        rig = reader.rig
    prep = FramePreprocessor(rig, model.bev, str(log))
    out = []
    for frame in replay_frames(log, decode=True, decode_scale=prep.reduction):
        out.append(prep.network_inputs(frame)[0])
        if len(out) == frames:
            break
    if not out:
        raise ConfigError(f"{log}: no frames to profile on")
    return out


def profile_ops(models: list[ZooModel], log: str | Path, frames: int = 20, threads: int | None = None
                ) -> list[OpProfile]:
    """Profile each model's onnxruntime CPU session (deploy.backends.ort, the runtime's settings) over the same
    FRAMES frames of LOG, one model after the other (deploy.measure.time_blocks: an untimed pass, then one timed
    block per model; taking turns frame by frame made every model slower, each evicting the others' weights)."""
    if frames < 1:
        raise ConfigError(f"bench ops: --frames must be at least 1, got {frames}")
    if not models:
        raise ConfigError("bench ops: name at least one --model")
    if any(m.bev != models[0].bev for m in models):
        raise ConfigError("bench ops: the models must share one [bev] configuration (the same inputs)")
    inputs = network_inputs(models[0], log, frames)
    with tempfile.TemporaryDirectory(prefix="nearfield-ops-") as tmp:
        backends = []
        try:
            for k, m in enumerate(models):
                backends.append(OrtBackend(m.verified_onnx(), threads=threads, profile_prefix=Path(tmp) / f"m{k}"))
            walls = time_blocks(backends, inputs, rounds=1)
            paths = [b.end_profiling() for b in backends]
        finally:
            for b in backends:
                b.close()
        runs = 2 * len(inputs)  # the untimed pass and the timed block: the profile holds both
        return [_summarise(m.name, p, runs, len(inputs), float(np.median(w)))
                for m, p, w in zip(models, paths, walls, strict=True)]


def _summarise(name: str, path: Path, runs: int, frames: int, wall_ms: float) -> OpProfile:
    """Kernel times per operator type per frame from an onnxruntime profile (warm-up runs included in the
    profile are averaged in: every run executes the same nodes)."""
    op_us: dict[str, float] = defaultdict(float)
    nodes: dict[str, int] = defaultdict(int)
    for event in json.loads(path.read_text()):
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            op = event["args"]["op_name"]
            op_us[op] += event["dur"]
            nodes[op] += 1
    op_ms = {k: v / runs / 1000 for k, v in sorted(op_us.items(), key=lambda kv: -kv[1])}
    return OpProfile(name, frames, wall_ms, op_ms, {k: nodes[k] // runs for k in op_ms})


def format_profiles(profiles: list[OpProfile], top: int = 14) -> str:
    """A Markdown table: operator types (the TOP slowest of any model, the rest summed) x models, ms per frame
    with the share of the model's kernel time and the nodes of that type."""
    ops: list[str] = []
    for p in profiles:
        ops += [o for o in list(p.op_ms)[:top] if o not in ops]
    head = ["operator", *(f"{p.model} ms" for p in profiles)]
    rows = []
    for op in ops:
        rows.append([op, *(_cell(p.op_ms.get(op), p.kernel_ms, p.op_nodes.get(op)) for p in profiles)])
    rest = [p.kernel_ms - sum(p.op_ms.get(o, 0.0) for o in ops) for p in profiles]
    rows.append(["(others)", *(f"{r:.2f}" for r in rest)])
    rows.append(["kernels, sum", *(f"{p.kernel_ms:.2f}" for p in profiles)])
    rows.append(["run, wall p50", *(f"{p.wall_ms:.2f}" for p in profiles)])
    rows.append(["in int8 kernels", *(f"{100 * p.share(INT8_KERNELS):.0f}%" for p in profiles)])
    rows.append(["in Q/DQ", *(f"{100 * p.share(QDQ_KERNELS):.0f}%" for p in profiles)])
    from sensors.timing import format_table

    return format_table(rows, head)


def _cell(ms: float | None, total: float, nodes: int | None) -> str:
    if ms is None:
        return ""
    return f"{ms:.2f} ({100 * ms / total:.0f}%, {nodes}x)" if total else f"{ms:.2f}"


__all__ = ["INT8_KERNELS", "QDQ_KERNELS", "OpProfile", "format_profiles", "network_inputs", "profile_ops"]
