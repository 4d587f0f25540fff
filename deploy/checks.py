"""Checks of an exported deploy model before anyone runs it: the ONNX checker, the deploy contract (opset, one file,
named inputs and outputs), TensorRT's operator support (deploy/trt_ops.toml) and numerical parity with torch."""

from __future__ import annotations

import logging
import shutil
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from perception.preprocess import INPUT_NAMES, OUTPUT_NAMES
from sensors.errors import ConfigError, DeployError
from sensors.files import refuse_overwrite, same_file

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 (JetPack 6)
    import tomli as tomllib

log = logging.getLogger(__name__)

TRT_OPS = Path(__file__).parent / "trt_ops.toml"
CONTRACT_OPSET = 17
ONNX_DOMAINS = ("", "ai.onnx")  # the standard operator set; anything else is a custom op TensorRT has no parser for
PARITY_ATOL = 1e-3  # max |logit difference| torch vs onnxruntime, fp32
PARITY_AGREEMENT = 0.999  # share of BEV cells (outside the ego footprint) whose class must agree


@dataclass(frozen=True)
class TrtOpTable:
    """deploy/trt_ops.toml: which ONNX operators TensorRT's parser takes, and the restrictions checked by machine."""

    source: str
    tensorrt: str
    opset_min: int
    opset_max: int
    supported: dict[str, dict[str, Any]]
    unsupported: frozenset[str]
    checks: dict[str, dict[str, Any]]
    path: Path


@lru_cache(maxsize=4)
def load_trt_table(path: str | Path = TRT_OPS) -> TrtOpTable:
    path = Path(path)
    try:
        d = tomllib.loads(path.read_text())
        return TrtOpTable(str(d["source"]), str(d["tensorrt"]), int(d["opset_min"]), int(d["opset_max"]),
                          dict(d["supported"]), frozenset(d.get("unsupported", ())), dict(d.get("checks", {})), path)
    except (OSError, tomllib.TOMLDecodeError, KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"{path}: unreadable TensorRT operator table ({type(e).__name__}: {e}); restore it from "
                          "git") from None


# --- operators ----------------------------------------------------------------------------------------------------

def _load(model) -> Any:
    import onnx

    if isinstance(model, onnx.ModelProto):
        return model
    return onnx.load(str(model), load_external_data=False)


def _nodes(graph, where: str = "") -> Iterator[tuple[Any, str]]:
    """Every node of a graph and of its subgraphs (If/Loop/Scan bodies), with where it sits."""
    import onnx

    for node in graph.node:
        yield node, where
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _nodes(attr.g, f"{where}{node.name or node.op_type}/{attr.name}/")
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _nodes(g, f"{where}{node.name or node.op_type}/{attr.name}/")


def _ranks(proto) -> dict[str, int]:
    """Tensor name -> rank, from the graph's declared and inferred shapes (missing: rank unknown)."""
    import onnx

    try:
        proto = onnx.shape_inference.infer_shapes(proto)
    except Exception as e:  # inference failing is itself reported by the checker; ranks then stay unknown
        log.debug("shape inference failed: %s", e)
    g = proto.graph
    ranks = {i.name: len(i.dims) for i in g.initializer}
    for v in (*g.input, *g.value_info, *g.output):
        if v.type.HasField("tensor_type") and v.type.tensor_type.HasField("shape"):
            ranks[v.name] = len(v.type.tensor_type.shape.dim)
    return ranks


def _constants(proto) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    out = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type == "Constant" and node.domain in ONNX_DOMAINS:
            for attr in node.attribute:
                if attr.name == "value":
                    out[node.output[0]] = numpy_helper.to_array(attr.t)
    return out


def _attr(node, name: str, default: Any) -> Any:
    import onnx

    for a in node.attribute:
        if a.name == name:
            v = onnx.helper.get_attribute_value(a)
            return v.decode() if isinstance(v, bytes) else v
    return default


# ONNX's defaults for the attributes the table restricts: an absent attribute means this value.
_DEFAULTS = {("Resize", "mode"): "nearest", ("Resize", "coordinate_transformation_mode"): "half_pixel",
             ("Resize", "nearest_mode"): "round_prefer_floor", ("Resize", "antialias"): 0,
             ("Resize", "keep_aspect_ratio_policy"): "stretch", ("GridSample", "mode"): "bilinear"}


def check_operators(model, table: TrtOpTable | None = None) -> list[str]:
    """Problems that would stop TensorRT (per TABLE, default deploy/trt_ops.toml) from parsing MODEL (an ONNX path or
    ModelProto): custom-domain or unsupported operators, an opset outside TensorRT's range, and the per-op checks of
    the table (GridSample rank-4 and pre-opset-20, Resize modes, pooling dilations, Q/DQ zero points). Empty: fine."""
    table = table or load_trt_table()
    proto = _load(model)
    problems: list[str] = []
    opset = next((o.version for o in proto.opset_import if o.domain in ONNX_DOMAINS), None)
    if opset is None:
        problems.append("the model imports no ai.onnx opset")
    elif not table.opset_min <= opset <= table.opset_max:
        problems.append(f"ai.onnx opset {opset} is outside TensorRT {table.tensorrt}'s range "
                        f"{table.opset_min}..{table.opset_max}")
    ranks: dict[str, int] | None = None
    constants: dict[str, np.ndarray] | None = None
    for node, where in _nodes(proto.graph):
        name = f"{where}{node.name or '(unnamed)'}"
        op = node.op_type
        if node.domain not in ONNX_DOMAINS:
            problems.append(f"node {name}: custom op {node.domain}::{op} (TensorRT parses only the ai.onnx domain; "
                            "custom ops would need a plugin)")
            continue
        if op not in table.supported:
            why = "listed as unsupported" if op in table.unsupported else "not in the support matrix"
            problems.append(f"node {name}: operator {op} is {why} for TensorRT {table.tensorrt}")
            continue
        rules = table.checks.get(op)
        if not rules:
            continue
        if "max_opset" in rules and opset is not None and opset > rules["max_opset"]:
            problems.append(f"node {name}: {op} of opset {opset}; TensorRT takes it only up to opset "
                            f"{rules['max_opset']} here (export with opset {CONTRACT_OPSET})")
        if "input_rank" in rules:
            ranks = ranks if ranks is not None else _ranks(proto)
            rank = ranks.get(node.input[0]) if node.input else None
            if rank not in rules["input_rank"]:
                have = "unknown rank (export with static shapes)" if rank is None else f"rank-{rank} input"
                problems.append(f"node {name}: {op} with {have}; TensorRT takes rank "
                                f"{' or '.join(map(str, rules['input_rank']))} only")
        for attr, allowed in rules.get("attributes", {}).items():
            value = _attr(node, attr, _DEFAULTS.get((op, attr)))
            if value is not None and value not in allowed:
                problems.append(f"node {name}: {op} {attr}={value!r}; TensorRT takes {', '.join(map(str, allowed))}")
        for attr in rules.get("ones", ()):
            value = _attr(node, attr, [])
            if any(v != 1 for v in value):
                problems.append(f"node {name}: {op} {attr}={list(value)}; TensorRT needs them empty or all ones")
        if "max_outputs" in rules and sum(1 for o in node.output if o) > rules["max_outputs"]:
            problems.append(f"node {name}: {op} with {len(node.output)} outputs; TensorRT produces only "
                            f"{rules['max_outputs']}")
        k = rules.get("zero_input")
        if k is not None and len(node.input) > k and node.input[k]:
            constants = constants if constants is not None else _constants(proto)
            zp = constants.get(node.input[k])
            if zp is None:
                problems.append(f"node {name}: {op} zero point {node.input[k]} is computed; TensorRT needs constant 0")
            elif np.any(zp != 0):
                problems.append(f"node {name}: {op} zero point {node.input[k]} is not zero (symmetric quantisation "
                                "only: quantise for TensorRT with S8S8)")
    return problems


# --- the whole file -----------------------------------------------------------------------------------------------

def check_onnx(path: str | Path, table: TrtOpTable | None = None, opset: int = CONTRACT_OPSET) -> None:
    """The ONNX checker, the deploy contract and TensorRT's operators on the file at PATH; DeployError listing every
    problem found."""
    import onnx

    path = Path(path)
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise DeployError(f"{path}: the ONNX checker rejects the file: {str(e).splitlines()[0][:300]}") from None
    proto = onnx.load(str(path), load_external_data=False)
    problems = contract_problems(proto, opset) + check_operators(proto, table)
    if problems:
        table = table or load_trt_table()
        raise DeployError(f"{path}: {len(problems)} deploy check(s) failed (TensorRT {table.tensorrt} table "
                          f"{table.path.name}): " + "; ".join(problems[:12]) +
                          (f"; ... {len(problems) - 12} more" if len(problems) > 12 else ""))


def contract_problems(proto, opset: int = CONTRACT_OPSET) -> list[str]:
    """Where PROTO departs from the deploy contract: opset, a single file, input/output names, uint8 images."""
    import onnx

    problems = []
    have = next((o.version for o in proto.opset_import if o.domain in ONNX_DOMAINS), None)
    if have != opset:
        problems.append(f"ai.onnx opset {have}, the deploy contract is opset {opset}")
    if any(i.data_location == onnx.TensorProto.EXTERNAL for i in proto.graph.initializer):
        problems.append("weights stored as external data; the contract is one self-contained file")
    init = {i.name for i in proto.graph.initializer}
    inputs = {i.name: i for i in proto.graph.input if i.name not in init}
    unknown = sorted(set(inputs) - set(INPUT_NAMES))
    if unknown:
        problems.append(f"inputs {', '.join(unknown)} are not contract inputs ({', '.join(INPUT_NAMES)})")
    if "images" in inputs and inputs["images"].type.tensor_type.elem_type != onnx.TensorProto.UINT8:
        problems.append("input 'images' is not uint8 (normalisation belongs inside the graph)")
    outputs = tuple(o.name for o in proto.graph.output)
    if outputs != OUTPUT_NAMES:
        problems.append(f"outputs {', '.join(outputs)}; the contract is {', '.join(OUTPUT_NAMES)}")
    return problems


# --- parity -------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ParityReport:
    """Torch against onnxruntime on real frames: the worst logit difference and the share of agreeing cells."""

    frames: int
    max_abs: float
    agreement: float
    cells: int

    def __str__(self) -> str:
        return (f"parity on {self.frames} frames: class logits max |torch - onnx| {self.max_abs:.2e}, class map "
                f"agreement {100 * self.agreement:.3f}% of {self.cells} cells")


def check_parity(model, onnx_path: str | Path, logs: Sequence[str | Path], frames: int = 4,
                 atol: float = PARITY_ATOL, min_agreement: float = PARITY_AGREEMENT,
                 threads: int | None = 1) -> ParityReport:
    """Run up to FRAMES frames of LOGS (drive logs) through perception.preprocess into both MODEL (torch, eval) and
    the ONNX file (onnxruntime CPU); DeployError with the numbers when the logits differ by more than ATOL or the
    class maps agree on less than MIN_AGREEMENT of the cells outside the ego footprint."""
    import torch

    from deploy.backends.ort import OrtBackend
    from perception.bev_config import ego_mask
    from perception.postprocess import class_map
    from perception.preprocess import FramePreprocessor
    from sensors.log import LogReader
    from sensors.replay import replay_frames

    bev = model.config.bev
    backend = OrtBackend(onnx_path, threads=threads)
    model = model.eval().float().cpu()
    worst, agree, cells, seen = 0.0, 0, 0, 0
    try:
        for path in logs:
            with LogReader(path) as reader:
                rig = reader.rig
            prep = FramePreprocessor(rig, bev, str(path))
            ego = ego_mask(rig.vehicle, bev.grid(rig))
            for frame in replay_frames(path, decode=True, decode_scale=prep.reduction):
                inputs, _ = prep.network_inputs(frame)
                with torch.no_grad():
                    ref = model(*(torch.from_numpy(inputs[n]) for n in INPUT_NAMES))[0][0].numpy()
                got = backend.run(inputs)["class_logits"][0]
                worst = max(worst, float(np.abs(ref - got).max()))
                a, b = class_map(ref, ego)[~ego], class_map(got, ego)[~ego]
                agree += int((a == b).sum())
                cells += a.size
                seen += 1
                if seen >= frames:
                    break
            if seen >= frames:
                break
    finally:
        backend.close()
    if not seen:
        raise DeployError(f"parity: no frames in {', '.join(map(str, logs))}; give a drive log with frames")
    report = ParityReport(seen, worst, agree / cells, cells)
    log.info("%s: %s", onnx_path, report)
    if worst > atol or report.agreement < min_agreement:
        raise DeployError(f"{onnx_path}: torch and ONNX disagree: {report} (limits: {atol:g} and "
                          f"{100 * min_agreement:g}%); the export is not faithful, do not ship it")
    return report


def simulate_parity_log(out_dir: str | Path, frames: int = 3, seed: int = 4242, scale: float = 0.25) -> Path:
    """A small simulated drive (default rig) for parity when no log is given: real rendered images and echoes."""
    from sensors.rig import load_rig
    from sim_data.simulate import DriveSpec, simulate_drive

    return simulate_drive(DriveSpec("parity", seed, frames), out_dir, load_rig(), scale=scale)


def export_checked(trained: str | Path, out: str | Path | None = None, register_as: str | None = None,
                   manifest: str | Path | None = None, parity_logs: Sequence[str | Path] | None = None,
                   frames: int = 4, stem: str | None = None, replace: bool = False) -> tuple[Path, ParityReport]:
    """`nearfield export`: export a trained model (registered name or run directory) to OUT and/or into the zoo as
    REGISTER_AS (in the file STEM.onnx, default REGISTER_AS.onnx), then check it (check_onnx) and its parity with torch
    on PARITY_LOGS (default: a small drive simulated for the purpose). A file that fails is not left behind and not
    registered: DeployError.

    Nothing is written over before every check passed: the new file is written beside OUT (and beside the zoo's) and
    moved into place after, so a failing export leaves what was there. OUT may not be one of the inputs (the parity
    logs, the trained model's files) nor the file of a zoo model other than REGISTER_AS; a REGISTER_AS the zoo has
    already is replaced only with REPLACE (deploy.zoo.register): ConfigError before any work."""
    import tempfile

    from deploy.export import export_onnx, export_trained
    from deploy.zoo import MANIFEST, check_new_names, check_own_file
    from perception.registry import load_trained

    if out is None and register_as is None:
        raise ConfigError("export: give --out FILE.onnx, --register ZOONAME, or both")
    manifest = Path(manifest or MANIFEST)
    if out is not None:
        out = Path(out)
        refuse_overwrite(out, [*(parity_logs or ()), *trained_files(trained)], "--out")
        # The zoo registered into (REGISTER_AS may take its own file there), the shipped one, and one beside OUT.
        for zoo in (manifest, MANIFEST, out.parent / MANIFEST.name):
            check_own_file(out, register_as if same_file(zoo, manifest) else None, zoo)
    if register_as:
        check_new_names([register_as], manifest, replace)
    with tempfile.TemporaryDirectory(prefix="nearfield-parity-") as tmp:
        logs = list(parity_logs) if parity_logs else [simulate_parity_log(tmp, frames=min(frames, 4))]
        reports: list[ParityReport] = []

        def check(model, config, path: Path) -> dict[str, Any]:
            check_onnx(path)
            reports.append(check_parity(model, path, logs, frames))
            return {"parity_max_abs": reports[-1].max_abs, "parity_agreement": reports[-1].agreement}

        if register_as:
            entry = export_trained(trained, register_as, manifest, check=check, stem=stem, replace=replace)
            path = entry.onnx
            if out is not None and not same_file(out, path):
                fresh = _beside(out)
                try:
                    shutil.copyfile(path, fresh)
                except BaseException:
                    fresh.unlink(missing_ok=True)
                    raise
                path = fresh.replace(out)
        else:
            model, config = load_trained(trained)
            fresh = _beside(out)
            try:
                export_onnx(model, config, fresh)
                check(model, config, fresh)
            except BaseException:
                fresh.unlink(missing_ok=True)
                raise
            path = fresh.replace(out)
    return path, reports[-1]


def _beside(out: Path) -> Path:
    """A new, empty file in OUT's directory (created if missing) to write OUT's next content to, then rename it:
    the rename stays on one file system, and what OUT held stays until then."""
    import os
    import tempfile

    out.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.stem}.", suffix=".new.onnx")
    os.close(fd)
    return Path(name)


def trained_files(trained: str | Path) -> list[Path]:
    """The files a trained model is read from: a run directory's own files, or a registered model's weights and
    config file (none for a name the registry does not know: loading it fails later with the known names)."""
    path = Path(trained)
    if path.is_dir():
        return [p for p in path.iterdir() if p.is_file()]
    from perception.registry import MANIFEST, read_manifest

    entry = read_manifest(MANIFEST).get(str(trained))
    return [] if entry is None else [entry.weights, MANIFEST.parent / entry.config]


__all__ = ["CONTRACT_OPSET", "PARITY_AGREEMENT", "PARITY_ATOL", "TRT_OPS", "ParityReport", "TrtOpTable",
           "check_onnx", "check_operators", "check_parity", "contract_problems", "export_checked", "load_trt_table",
           "simulate_parity_log", "trained_files"]
