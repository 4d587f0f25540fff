"""Quantisation-aware fine-tuning as a deploy method ('qat'; 'qat-int8', 'qat-int4', 'qat-ternary'): a float model
fake-quantised with perception.qat, fine-tuned on drive logs, exported into int8-ptq's QDQ graph for onnxruntime on
CPUs with the learnt weight levels and scales (int8 initialisers + DequantizeLinear) and uint8 activations."""

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


def export_qat(model, state, config, out: Path, data: str | Path, calib_frames: int,
               calibration: str = "minmax") -> dict[str, str]:
    """Write the fine-tuned MODEL to OUT as the same QDQ graph int8-ptq makes for onnxruntime on CPUs (so it runs in
    the same fused int8 kernels: quantised residual adds, Relu folded into the quantisation, the same float layers),
    with the weights QAT learnt: every quantised layer's weight is stored as its int8 levels of the QAT scheme and
    per-channel scale (DequantizeLinear; int4 and ternary levels in int8 containers), the int32 biases re-scaled to
    match; the layers int8-ptq keeps float hold the same grid values as float.
    Activation ranges come from CALIBRATION over CALIB_FRAMES frames of DATA's drives, at the places that graph
    quantises (QAT's own quantisers sit at every convolution's input and output, which onnxruntime does not fuse:
    that export ran no faster than FP32). MODEL's weights are baked in place and its activation quantisers switched
    off (it is the float model of the file's weights). Returns parameter name -> weight scheme."""
    import onnx

    from deploy.export import export_onnx, input_shapes
    from deploy.quantize import calibration_frames, quantize_onnx
    from perception.qat import bake_weights

    # In place: a deep copy would share the parametrized classes, and removing them there breaks the original.
    baked = bake_weights(model, state)
    state.enable(False)
    schemes = {f"{n}.weight": s for n, s in state.weights.items()}
    with tempfile.TemporaryDirectory(prefix="nearfield-qat-") as tmp:
        fp = export_onnx(model, config, Path(tmp) / "float.onnx")
        frames = calibration_frames(data, config.bev, calib_frames, list(input_shapes(fp)))
        quantize_onnx(fp, Path(tmp) / "qdq.onnx", frames, "cpu", calibration)
        proto = onnx.load(str(Path(tmp) / "qdq.onnx"))
    set_weight_levels(proto, {n: (levels.numpy(), scale.numpy()) for n, (levels, scale) in baked.items()})
    onnx.checker.check_model(proto)
    tmp_out = out.with_suffix(".part")
    onnx.save_model(proto, str(tmp_out))
    tmp_out.replace(out)
    return schemes


def set_weight_levels(proto, weights: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    """Store each weight of WEIGHTS (initialiser name -> (int8 levels (O, ...), per-channel scale (O,))) in PROTO
    (an onnx ModelProto, in place) as exactly those levels and scales: a weight onnxruntime quantised gets its
    int8 tensor and scale replaced and the int32 biases of its convolutions re-scaled (bias scale = input scale x
    weight scale); a weight of a layer kept float stays a float initialiser holding the same grid values.
    DeployError if a weight is in neither form."""
    from onnx import TensorProto, numpy_helper

    g = proto.graph
    inits = {i.name: i for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    readers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)

    def put(name: str, array: np.ndarray) -> None:
        inits[name].CopyFrom(numpy_helper.from_array(array, name))

    quantised: dict[str, list] = {}  # int8 initialiser -> the DequantizeLinear nodes reading it
    for n in g.node:
        if n.op_type == "DequantizeLinear" and n.input[0] in inits:
            quantised.setdefault(n.input[0], []).append(n)
    missing, rescaled_biases = [], set()
    for name, (levels, scale) in weights.items():
        q = levels.astype(np.int8)
        scale = scale.astype(np.float32)
        dqs = quantised.get(f"{name}_quantized", [])
        if dqs:
            old_scale = numpy_helper.to_array(inits[dqs[0].input[1]]).astype(np.float64)
            put(f"{name}_quantized", q)
            for dq in dqs:
                put(dq.input[1], scale)
                put(dq.input[2], np.zeros(q.shape[0], np.int8))
                for conv in readers.get(dq.output[0], []):
                    bias_dq = producer.get(conv.input[2]) if len(conv.input) > 2 and conv.input[2] else None
                    if bias_dq is None or bias_dq.op_type != "DequantizeLinear" or bias_dq.input[0] in rescaled_biases:
                        continue
                    b_int = numpy_helper.to_array(inits[bias_dq.input[0]]).astype(np.float64)
                    b_scale = numpy_helper.to_array(inits[bias_dq.input[1]]).astype(np.float64)
                    new_scale = (b_scale / old_scale * scale).astype(np.float32)  # input scale x new weight scale
                    put(bias_dq.input[0], np.round(b_int * b_scale / new_scale).astype(np.int32))
                    put(bias_dq.input[1], new_scale)
                    rescaled_biases.add(bias_dq.input[0])
            continue
        if name in inits and inits[name].data_type == TensorProto.FLOAT:
            # A layer kept float keeps a float weight (its grid values): behind a DequantizeLinear, onnxruntime
            # could not pre-pack it and ran the three float convolutions ~2.5x slower (4.0 vs 1.5 ms, `bench ops`).
            put(name, (q.astype(np.float32) * scale.reshape((-1,) + (1,) * (q.ndim - 1))).astype(np.float32))
        else:
            missing.append(name)
    if missing:
        raise DeployError(f"qat export: weight(s) {', '.join(missing[:5])} are neither float initialisers nor "
                          "quantised ones of the exported graph (renamed or folded); cannot store their levels")


NOTES = {
    "int8": "quantisation-aware fine-tuned, int8 per-channel weights and uint8 activations (QDQ)",
    "int4": "quantisation-aware fine-tuned, 4-bit per-channel weights (levels -7..7; first and last layers 8 bit), "
            "uint8 activations. Stored as int8 and run in 8-bit kernels: smaller once packed, not faster",
    "ternary": "quantisation-aware fine-tuned, ternary weights {-1, 0, 1} x median(|W|) per channel (BitNet b1.58; "
               "first and last layers 8 bit), uint8 activations. Stored as int8 and run in 8-bit kernels: the size "
               "and speed gain needs a ternary kernel",
}


# What the qat methods read (qat also weights; qat-WEIGHTS has them in its name).
QAT_OPTIONS = ("steps", "calib_frames", "lr", "batch_size", "seed")


def _qat(source: str, out: str, data: str | None, options: dict[str, Any], manifest: Path, weights: str) -> ZooModel:
    name = f"qat-{weights}"
    # The options first: a bad one fails before the model is loaded.
    if weights not in WEIGHTS:
        raise ConfigError(f"qat: --opt weights={weights!r} is not one of {', '.join(WEIGHTS)}")
    steps = option(options, "steps", 20, int, 0, 10**7, name)
    if steps < 1:
        raise ConfigError(f"{name}: --steps {steps} fine-tunes nothing, and quantisation-aware fine-tuning is what "
                          "qat is; give --steps 1 or more (int8-ptq quantises without fine-tuning)")
    calib = option(options, "calib_frames", 16, int, 1, 100_000, name)
    lr = option(options, "lr", 1e-4, float, 1e-12, 10, name)
    batch = option(options, "batch_size", 2, int, 1, 4096, name)
    seed = option(options, "seed", 0, int, 0, 2**31, name)
    if data is None:
        raise ConfigError("qat needs --data: drive logs with ground truth to fine-tune on")
    src = resolve_source(source, manifest)
    model, config = load_torch_model(src)
    qmodel, state = finetune(model, config, data, weights, steps, calib, lr, batch, seed, options.get("threads"))
    path = output_path(out, manifest)
    schemes = export_qat(qmodel, state, config, path, data, calib)
    eight = sorted(n for n, s in schemes.items() if s == "int8") if weights != "int8" else []
    opts = {"weights": weights, "steps": steps, "calib_frames": calib, "lr": lr, "batch_size": batch,
            "data": str(data), "activations": "quint8-per-tensor", "layers_at_8_bits": eight}
    return register_output(out, path, src, f"qat-{weights}", "cpu", opts, NOTES[weights], manifest)


@method("qat", (*QAT_OPTIONS, "weights"))
def qat(source: str, out: str, data: str | None, options: dict[str, Any], manifest: Path) -> ZooModel:
    """Quantisation-aware fine-tuning on --data. Options: weights (int8 | int4 | ternary; default int8), steps,
    calib_frames, lr, batch_size, seed."""
    return _qat(source, out, data, options, manifest, str(options.get("weights", "int8")))


def _qat_with(weights: str):
    """The method `qat-WEIGHTS`: qat with its weights fixed (the zoo's method names say the weights)."""
    def run(source: str, out: str, data: str | None, options: dict[str, Any], manifest: Path) -> ZooModel:
        return _qat(source, out, data, options, manifest, weights)

    run.__doc__ = f"qat with weights={weights}: {NOTES[weights]}. Options: steps, calib_frames, lr, batch_size, seed."
    return run


for _w in WEIGHTS:
    method(f"qat-{_w}", QAT_OPTIONS)(_qat_with(_w))


__all__ = ["NOTES", "QAT_OPTIONS", "WEIGHTS", "export_qat", "finetune", "qat"]
