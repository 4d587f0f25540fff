"""ONNX export of the fusion network under the deploy contract: opset 17, one self-contained file, named inputs
(uint8 images, sampling tables, ultrasonic raster) and outputs (class logits, stage-1 occupancy), normalisation
inside the graph, rank-4 GridSample only. Needs torch (a desktop or CI machine, never the car)."""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from deploy.zoo import MANIFEST, ZooModel, register
from perception.preprocess import INPUT_NAMES, OUTPUT_NAMES
from sensors.errors import ConfigError, DeployError

log = logging.getLogger(__name__)

OPSET = 17


def export_onnx(model, config, out: str | Path, cameras: int = 4) -> Path:
    """Write MODEL (a FusionNet in eval mode, float32, CPU) to OUT as ONNX, batch 1. Inputs the graph never reads
    (e.g. 'uss' of a camera-only model) are dropped by the exporter; the runtime feeds what the file lists."""
    import onnx
    import torch

    from perception.model import dummy_inputs

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval().float().cpu()
    args = dummy_inputs(config, batch=1, cameras=cameras)
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about shape asserts: the shapes are fixed by design
        try:
            torch.onnx.export(model, args, buf, opset_version=OPSET, input_names=list(INPUT_NAMES),
                              output_names=list(OUTPUT_NAMES), dynamo=False, do_constant_folding=True)
        except Exception as e:
            raise DeployError(f"model {config.name}: ONNX export failed ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:300]})") from e
    proto = onnx.load_from_string(buf.getvalue())
    proto.producer_name = "nearfield"
    proto.doc_string = f"nearfield deploy model from config {config.name}"
    tmp = out.with_suffix(out.suffix + ".part")
    onnx.save_model(proto, str(tmp), save_as_external_data=False)
    tmp.replace(out)
    return out


def input_shapes(onnx_path: str | Path) -> dict[str, tuple[int, ...]]:
    """Input name -> static shape of an ONNX file."""
    import onnx

    proto = onnx.load(str(onnx_path), load_external_data=False)
    init = {i.name for i in proto.graph.initializer}
    return {i.name: tuple(d.dim_value for d in i.type.tensor_type.shape.dim)
            for i in proto.graph.input if i.name not in init}


def export_trained(trained: str | Path, name: str | None = None, manifest: str | Path = MANIFEST,
                   metrics: dict | None = None, check: Callable[[Any, Any, Path], dict | None] | None = None,
                   stem: str | None = None, replace: bool = False) -> ZooModel:
    """Export a trained model (a registered name or a run directory) into the zoo as NAME (default: the trained
    model's name) and register it as method fp32, in the file STEM.onnx (default NAME.onnx; a new revision of a
    model takes a file of its own, so the file of the revision it replaces stays for the entry that keeps it).
    CHECK(model, config, onnx_path), when given, runs on the new file before it replaces the zoo's; it raises to
    refuse the file (the zoo then stays as it was) and may return figures to record in the entry's metrics. A NAME the
    zoo has already is replaced only with REPLACE (deploy.zoo.register)."""
    from deploy.zoo import check_new_names, read_zoo
    from perception.registry import load_trained

    model, config = load_trained(trained)
    name = name or (config.name if Path(str(trained)).is_dir() else str(trained))
    if not name:
        raise ConfigError("export: give --name for the zoo entry")
    check_new_names([name], manifest, replace)  # before the export's work, not after it
    stem = stem or name
    if not stem or any(c in stem for c in "/\\ \"'[]"):
        raise ConfigError(f"export: file stem {stem!r} must be non-empty, without spaces, quotes or slashes")
    path = Path(manifest).parent / f"{stem}.onnx"
    owner = next((n for n, m in read_zoo(manifest).items() if n != name and m.onnx.name == path.name), None)
    if owner is not None:
        raise ConfigError(f"export: {path} belongs to zoo model {owner}; give the new file another name (--file)")
    fresh = path.with_name(f"{stem}.new.onnx")
    export_onnx(model, config, fresh)
    try:
        extra = check(model, config, fresh) if check is not None else None
    except BaseException:
        fresh.unlink(missing_ok=True)
        raise
    fresh.replace(path)
    metrics = {**(metrics or {}), **(extra or {})}
    entry = ZooModel(name, path, "", str(trained), "fp32", "any", config.bev, input_shapes(path),
                     metrics=dict(metrics or {}))
    return register(entry, manifest, replace=replace)


__all__ = ["OPSET", "export_onnx", "export_trained", "input_shapes"]
