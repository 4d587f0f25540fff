"""Quantisation-aware fine-tuning as a deploy method ('qat'; 'qat-int8', 'qat-int4', 'qat-ternary'): a float model
fake-quantised with perception.qat, fine-tuned on drive logs, exported as QDQ ONNX (int8 weight initialisers +
DequantizeLinear, 8-bit QuantizeLinear/DequantizeLinear activation pairs) that onnxruntime runs."""

from __future__ import annotations

import copy
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from deploy.compress import load_torch_model, method, option, output_path, register_output, resolve_source
from deploy.zoo import ZooModel
from sensors.errors import ConfigError, DeployError

log = logging.getLogger(__name__)

WEIGHTS = ("int8", "int4", "ternary")


def _float_outputs(model) -> tuple[str, ...]:
    """Convolutions whose outputs stay float: the neck's last conv (feeds GridSample) and the gate's last conv
    (feeds the softmax), as int8-ptq keeps them."""
    names = []
    for name, m in model.named_modules():
        if name.endswith("neck.out") and hasattr(m, "__getitem__"):
            names.append(f"{name}.0")
        if name.endswith("dilated.gate_net"):
            names.append(f"{name}.{len(m) - 1}")
    return tuple(names)


def finetune(model, config, data: str | Path, weights: str, steps: int, calib_frames: int, lr: float = 1e-4,
             batch_size: int = 2, seed: int = 0, threads: int | None = None):
    """MODEL (float FusionNet) fake-quantised with WEIGHTS ('int8' | 'int4' | 'ternary'; first and last layers at
    8 bits), activation ranges observed on CALIB_FRAMES frames, then STEPS of AdamW on DATA's drives. Returns
    (model in eval mode, perception.qat.QatState)."""
    import torch
    from torch.utils.data import DataLoader, Subset
    from tqdm import tqdm

    from perception.dataset import DriveDataset
    from perception.losses import OccupancyLoss, class_weights, occupancy_pos_weight
    from perception.model import dummy_inputs
    from perception.qat import prepare_qat

    if weights not in WEIGHTS:
        raise ConfigError(f"qat: --opt weights={weights!r} is not one of {', '.join(WEIGHTS)}")
    if steps < 0 or calib_frames < 1:
        raise ConfigError(f"qat: --steps must be >= 0 (got {steps}) and --calib-frames >= 1 (got {calib_frames})")
    if threads:
        torch.set_num_threads(int(threads))
    data = Path(data)
    dataset = DriveDataset([data / "train" if (data / "train").is_dir() else data], config.bev)
    torch.manual_seed(seed)
    model = copy.deepcopy(model).float().cpu()
    state = prepare_qat(model, dummy_inputs(config), weights, "int8", _float_outputs(model))

    # Activation ranges from running statistics over calibration frames before the first step (AQT).
    model.eval()
    state.observe(True)
    calib = Subset(dataset, np.linspace(0, len(dataset) - 1, min(calib_frames, len(dataset))).astype(int).tolist())
    with torch.no_grad():
        for b in DataLoader(calib, batch_size=batch_size):
            model(b["images"], b["grid"], b["valid"], b["uss"])
    state.observe(False)
    state.enable(True)

    if steps:
        t = config.train
        counts = dataset.label_counts()
        loss_fn = OccupancyLoss(class_weights(counts, t["class_weight_power"]),
                                occupancy_pos_weight(counts, t["class_weight_power"]), t["stage1_weight"])
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=len(dataset) >= batch_size,
                            generator=torch.Generator().manual_seed(seed))
        model.train()  # BatchNorm is folded away, so train mode only moves the activation ranges
        step, bar = 0, tqdm(total=steps, desc=f"qat {weights}", unit="step")
        while step < steps:
            for b in loader:
                logits, occupancy = model(b["images"], b["grid"], b["valid"], b["uss"])
                loss = loss_fn(logits, occupancy, b["target"])["total"]
                value = float(loss.detach())
                if not np.isfinite(value):
                    raise DeployError(f"qat: loss is {value} at step {step}; lower --opt lr")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
                optimizer.step()
                step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{value:.3f}")
                if step >= steps:
                    break
        bar.close()
    return model.eval(), state


def export_qat(model, state, config, out: Path) -> dict[str, str]:
    """Write the fake-quantised MODEL as QDQ ONNX to OUT: weights as int8 initialisers + per-channel
    DequantizeLinear, activations as the QuantizeLinear/DequantizeLinear pairs torch.onnx makes of the fake
    quantisers. MODEL's weights are baked in place (plain parameters on the quantisation grid; the activation
    quantisers stay, so MODEL still computes what the file does). Returns parameter name -> weight scheme."""
    import onnx
    from onnx import helper, numpy_helper

    from deploy.export import export_onnx
    from perception.qat import bake_weights

    # In place: a deep copy would share the parametrized classes, and removing them there breaks the original.
    baked = bake_weights(model, state)
    schemes = {f"{n}.weight": s for n, s in state.weights.items()}
    with tempfile.TemporaryDirectory(prefix="nearfield-qat-") as tmp:
        path = export_onnx(model, config, Path(tmp) / "qat.onnx")
        proto = onnx.load(str(path))
    g = proto.graph
    inits = {i.name: i for i in g.initializer}
    missing = [n for n in baked if n not in inits]
    if missing:
        raise DeployError(f"qat export: weight(s) {', '.join(missing[:5])} are not initialisers of the exported "
                          "graph (renamed or folded by the exporter); cannot store them as int8")
    dq_nodes = []
    for name, (levels, scale) in baked.items():
        init = inits[name]
        g.initializer.remove(init)
        q = levels.numpy().astype(np.int8)
        g.initializer.extend([numpy_helper.from_array(q, f"{name}_int8"),
                              numpy_helper.from_array(scale.numpy().astype(np.float32), f"{name}_scale"),
                              numpy_helper.from_array(np.zeros(q.shape[0], np.int8), f"{name}_zero_point")])
        dq_nodes.append(helper.make_node("DequantizeLinear", [f"{name}_int8", f"{name}_scale", f"{name}_zero_point"],
                                         [name], name=f"{name}_DequantizeLinear", axis=0))
    for node in reversed(dq_nodes):  # before their consumers: the graph stays topologically sorted
        g.node.insert(0, node)
    onnx.checker.check_model(proto)
    tmp_out = out.with_suffix(".part")
    onnx.save_model(proto, str(tmp_out))
    tmp_out.replace(out)
    return schemes


NOTES = {
    "int8": "quantisation-aware fine-tuned, int8 per-channel weights and uint8 activations (QDQ)",
    "int4": "quantisation-aware fine-tuned, 4-bit per-channel weights (levels -7..7; first and last layers 8 bit), "
            "uint8 activations. Stored as int8 and run in 8-bit kernels: smaller once packed, not faster",
    "ternary": "quantisation-aware fine-tuned, ternary weights {-1, 0, 1} x median(|W|) per channel (BitNet b1.58; "
               "first and last layers 8 bit), uint8 activations. Stored as int8 and run in 8-bit kernels: the size "
               "and speed gain needs a ternary kernel",
}


def _qat(source: str, out: str, data: str | None, options: dict[str, Any], manifest: Path, weights: str) -> ZooModel:
    if data is None:
        raise ConfigError("qat needs --data: drive logs with ground truth to fine-tune on")
    src = resolve_source(source, manifest)
    model, config = load_torch_model(src)
    name = f"qat-{weights}"
    steps = option(options, "steps", 20, int, 0, 10**7, name)
    calib = option(options, "calib_frames", 16, int, 1, 100_000, name)
    lr = option(options, "lr", 1e-4, float, 1e-12, 10, name)
    batch = option(options, "batch_size", 2, int, 1, 4096, name)
    seed = option(options, "seed", 0, int, 0, 2**31, name)
    qmodel, state = finetune(model, config, data, weights, steps, calib, lr, batch, seed, options.get("threads"))
    path = output_path(out, manifest)
    schemes = export_qat(qmodel, state, config, path)
    eight = sorted(n for n, s in schemes.items() if s == "int8") if weights != "int8" else []
    opts = {"weights": weights, "steps": steps, "calib_frames": calib, "lr": lr, "batch_size": batch,
            "data": str(data), "activations": "quint8-per-tensor", "layers_at_8_bits": eight}
    return register_output(out, path, src, f"qat-{weights}", "cpu", opts, NOTES[weights], manifest)


@method("qat")
def qat(source: str, out: str, data: str | None, options: dict[str, Any], manifest: Path) -> ZooModel:
    """Options: weights (int8 | int4 | ternary; default int8), steps, calib_frames, lr, batch_size, seed."""
    return _qat(source, out, data, options, manifest, str(options.get("weights", "int8")))


for _w in WEIGHTS:
    method(f"qat-{_w}")(lambda source, out, data, options, manifest, _w=_w: _qat(source, out, data, options,
                                                                                  manifest, _w))


__all__ = ["NOTES", "WEIGHTS", "export_qat", "finetune", "qat"]
