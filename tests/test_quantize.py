"""Quantisation methods on a tiny random network and a tiny simulated drive: weight quantisers on known values,
BatchNorm folding, the float layers found in the graph, int8-ptq (CPU and TensorRT artifacts) and qat (int8, int4,
ternary) end to end through the compress registry."""

import copy
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from deploy.compress import METHODS, compress, load_methods
from deploy.export import export_onnx, input_shapes
from deploy.quantize import calibration_frames, float_nodes, quantize_onnx
from deploy.zoo import ZooModel, get_model, register
from perception.bev_config import BevConfig
from perception.checkpoint import CONFIG_FILE, LAST, save_checkpoint
from perception.model import FusionNet, dummy_inputs, load_model_config
from perception.qat import WeightFakeQuant, fold_batchnorm, quantise_weight
from sensors.errors import ConfigError
from sim_data.simulate import DriveSpec, simulate_drive

pytestmark = pytest.mark.usefixtures("torch_one_thread")
load_methods()  # fills METHODS
INPUTS = ("images", "grid", "valid", "uss")


def tiny_config():
    c = load_model_config("nf-small")
    return c.replace(name="tiny", camera_width=0.25, uss_width=0.25, neck_channels=8, bev_channels=8,
                     decoder_channels=8, bev=BevConfig(extent=16.0, cell=0.8, heights=(0.5, 1.0), image_size=(64, 48)))


def tiny_model(seed=0):
    """Random weights with non-trivial BatchNorm statistics (as after training), so folding them matters."""
    torch.manual_seed(seed)
    model = FusionNet(tiny_config())
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(0.1 * torch.randn(n, generator=g))
            m.running_var.copy_(0.5 + torch.rand(n, generator=g))
            m.weight.data.copy_(0.5 + torch.rand(n, generator=g))
            m.bias.data.copy_(0.1 * torch.randn(n, generator=g))
    return model.eval()


@pytest.fixture(scope="module")
def world(tmp_path_factory, rig):
    """A data folder (train/ with one 4-frame drive), a training run directory of the tiny model, a zoo manifest
    holding its fp32 export as 'tiny'."""
    root = tmp_path_factory.mktemp("quantize")
    simulate_drive(DriveSpec("calib-0", 31, 4), root / "data" / "train", rig, scale=0.25)
    model, config = tiny_model(), tiny_config()
    run = root / "run"
    run.mkdir()
    (run / CONFIG_FILE).write_text(config.to_toml())
    save_checkpoint(run, LAST, model, {"step": 0})
    manifest = root / "zoo" / "ZOO.toml"
    path = export_onnx(model, config, manifest.parent / "tiny.onnx")
    register(ZooModel("tiny", path, "", str(run), "fp32", "any", config.bev, input_shapes(path)), manifest)
    frames = calibration_frames(root / "data", config.bev, 4)
    return {"root": root, "data": str(root / "data"), "run": str(run), "manifest": manifest, "model": model,
            "config": config, "frames": frames, "float": path}


def session(path, fused: bool = True):
    """onnxruntime on the CPU; fused=False runs every QuantizeLinear / DequantizeLinear as written (float
    arithmetic, no int8 kernels): the QDQ graph's own meaning, which TensorRT implements with its kernels."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    if not fused:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def run_onnx(path, frames, fused: bool = True):
    s = session(path, fused)
    names = [i.name for i in s.get_inputs()]
    return [s.run(None, {k: f[k] for k in names}) for f in frames]


def close_to(reference, outputs, rel):
    """Each output's RMS error relative to the reference's largest magnitude (8-bit steps are range / 255, so a
    handful of steps accumulated over ~20 quantised layers stays within a few percent of the range)."""
    worst = 0.0
    for ref, out in zip(reference, outputs, strict=True):
        for r, o in zip(ref, out, strict=True):
            worst = max(worst, float(np.sqrt(np.mean((r - o) ** 2)) / np.abs(r).max()))
    assert worst < rel, worst
    agree = np.mean([np.mean(r[0].argmax(1) == o[0].argmax(1)) for r, o in zip(reference, outputs, strict=True)])
    assert agree > 0.9, agree


def producers(graph):
    return {o: n for n in graph.node for o in n.output}


def int_weights(graph):
    """name -> int8 levels of every weight stored as an int8 initialiser feeding a DequantizeLinear."""
    inits = {i.name: i for i in graph.initializer}
    out = {}
    for n in graph.node:
        if n.op_type == "DequantizeLinear" and n.input[0] in inits:
            a = numpy_helper.to_array(inits[n.input[0]])
            if a.dtype == np.int8 and a.ndim == 4:
                out[n.input[0]] = a
    return out


def levels_per_channel(a):
    return max(len(np.unique(a[k])) for k in range(a.shape[0]))


# --- weight quantisers and folding -------------------------------------------------------------------------------

def test_ternary_uses_the_median_scale_and_three_levels():
    w = torch.tensor([[0.1, -0.4, 0.05, 1.0], [0.0, 0.0, 0.2, -0.2]])
    levels, scale = quantise_weight(w, "ternary")
    # median |w| (torch's lower median of an even count): 0.1 and 0.0 -> the second channel falls back to max|w|
    np.testing.assert_allclose(scale.numpy(), [0.1, 0.2])
    np.testing.assert_array_equal(levels.numpy(), [[1, -1, 0, 1], [0, 0, 1, -1]])  # 0.5 rounds to even: 0


def test_int4_and_int8_levels_and_the_straight_through_gradient():
    w = torch.randn(6, 5, 3, 3, generator=torch.Generator().manual_seed(1))
    for scheme, qmax in (("int4", 7), ("int8", 127)):
        levels, scale = quantise_weight(w, scheme)
        assert levels.abs().amax() == qmax and levels_per_channel(levels.numpy()) <= 2 * qmax + 1
        np.testing.assert_allclose((levels.float() * scale.view(-1, 1, 1, 1)).numpy(), w.numpy(),
                                   atol=float(scale.max()) / 2 + 1e-7)
    p = w.clone().requires_grad_(True)
    WeightFakeQuant("int4")(p).mul(torch.arange(p.numel()).view_as(p)).sum().backward()
    np.testing.assert_array_equal(p.grad.numpy(), torch.arange(p.numel()).view_as(p).float().numpy())


def test_folding_batchnorm_keeps_the_outputs():
    model, config = tiny_model(3), tiny_config()
    args = dummy_inputs(config)
    with torch.no_grad():
        before = model(*args)
        n = fold_batchnorm(model, args)
        after = model(*args)
    assert n == sum(isinstance(m, torch.nn.Identity) for m in model.modules()) - 10  # 10 Identity downsamples before
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    for b, a in zip(before, after, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * float(b.abs().max()))


def test_the_float_layers_are_found_in_the_graph(world):
    keep = float_nodes(onnx.load(str(world["float"])))
    g = onnx.load(str(world["float"])).graph
    ops = {n.name: n.op_type for n in g.node}
    assert {ops[n] for n in keep["normalisation"]} >= {"Cast", "Sub", "Mul"}
    assert sorted(ops[n] for n in keep["first_conv"]) == ["Conv", "Conv"]  # camera and ultrasonic stems
    assert any("stem" in n for n in keep["first_conv"])
    assert [ops[n] for n in keep["softmax"]] == ["Softmax"]
    assert {"GridSample", "Conv", "Reshape"} <= {ops[n] for n in keep["grid_sample"]}
    # For onnxruntime the stem's activation and max-pool stay float too (its uint8 MaxPool is slow); TensorRT has a
    # fast int8 pool, so there they are quantised.
    assert sorted(ops[n] for n in keep["stem_pool"]) == ["MaxPool", "MaxPool", "Relu", "Relu"]
    assert float_nodes(onnx.load(str(world["float"])), "tensorrt")["stem_pool"] == []


# --- int8-ptq ----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ptq(world):
    entry = METHODS["int8-ptq"]("tiny", "tiny-int8", world["data"], {"calib_frames": 4, "calibration": "minmax"},
                                world["manifest"])
    return entry, get_model("tiny-int8-tensorrt", world["manifest"])


def test_int8_ptq_registers_a_cpu_and_a_tensorrt_artifact_close_to_float(world, ptq):
    cpu, trt = ptq
    assert (cpu.method, cpu.target, trt.method, trt.target) == ("int8-ptq", "cpu", "int8-ptq", "tensorrt")
    assert cpu.parent == "tiny" and cpu.options["calibration"] == "minmax" and cpu.options["calib_frames"] == 4
    assert "/camera/GridSample" in cpu.options["nodes_to_exclude"]
    g = onnx.load(str(cpu.verified_onnx())).graph
    producer = {o: n for n in g.node for o in n.output}
    pools = [n for n in g.node if n.op_type == "MaxPool"]
    assert len(pools) == 2 and all(producer[p.input[0]].op_type == "Relu" for p in pools)  # float in, Q after
    reference = run_onnx(world["float"], world["frames"])
    # The CPU artifact through onnxruntime's int8 kernels, as it is deployed; the TensorRT artifact by its QDQ
    # semantics. onnxruntime's fused S8S8 kernels are no stand-in for TensorRT's: on a CPU without VNNI (AVX2 only)
    # they put this model 5.7 % off float, while the same graph's QDQ semantics are 0.3 % off.
    for entry, fused in ((cpu, True), (trt, False)):
        onnx.checker.check_model(str(entry.verified_onnx()))
        assert entry.size_bytes < 0.5 * world["float"].stat().st_size  # int8 weights: about a quarter
        close_to(reference, run_onnx(entry.onnx, world["frames"], fused), rel=0.03)


def test_tensorrt_artifact_is_symmetric_and_quantises_residual_adds_and_concats(ptq):
    _, trt = ptq
    g = onnx.load(str(trt.onnx)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    qs = [n for n in g.node if n.op_type == "QuantizeLinear"]
    assert qs
    for n in qs:
        zp = inits[n.input[2]]
        assert zp.dtype == np.int8 and not zp.any(), n.name
    prod = producers(g)
    adds = [n for n in g.node if n.op_type == "Add" and "stages" in n.name]  # the backbones' residual adds
    concats = [n for n in g.node if n.op_type == "Concat" and n.input[0] in prod
               and prod[n.input[0]].op_type == "DequantizeLinear"]
    assert adds and concats
    for n in adds:
        assert all(prod[i].op_type == "DequantizeLinear" for i in n.input), n.name


def test_cpu_artifact_uses_uint8_activations_and_per_channel_int8_weights(ptq):
    cpu, _ = ptq
    g = onnx.load(str(cpu.onnx)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    zps = [inits[n.input[2]] for n in g.node if n.op_type == "QuantizeLinear"]
    assert zps and all(z.dtype == np.uint8 for z in zps)
    weights = int_weights(g)
    assert weights
    scales = [inits[n.input[1]] for n in g.node if n.op_type == "DequantizeLinear" and n.input[0] in weights]
    assert any(s.size > 1 for s in scales)  # one scale per output channel


def test_excluded_nodes_stay_float(ptq):
    """A float node may read a dequantised tensor from the quantised part of the graph (that is how QDQ says "run
    this in float"), but its weights are float and no tensor between two float nodes, or from a graph input, is
    quantised on the way."""
    for entry in ptq:
        g = onnx.load(str(entry.onnx)).graph
        prod, inits = producers(g), {i.name: i for i in g.initializer}
        nodes = {n.name: n for n in g.node}
        names = set(entry.options["nodes_to_exclude"])
        excluded = [nodes[n] for n in names if n in nodes]
        assert len(excluded) >= 10 and {n.op_type for n in excluded} >= {"Conv", "GridSample", "Softmax", "Cast"}
        graph_inputs = {i.name for i in g.input}
        for n in excluded:
            if n.op_type == "Conv":
                assert inits[n.input[1]].data_type == onnx.TensorProto.FLOAT, n.name
            for i in n.input:
                if i in prod and prod[i].op_type == "DequantizeLinear":
                    q = prod[prod[i].input[0]]  # the QuantizeLinear before it
                    source = q.input[0]
                    assert source not in graph_inputs and prod[source].name not in names, (entry.target, n.name)


def test_entropy_and_percentile_calibration_give_other_ranges(world, tmp_path):
    scales = {}
    for calibration in ("minmax", "entropy", "percentile"):
        out = tmp_path / f"{calibration}.onnx"
        quantize_onnx(world["float"], out, world["frames"][:2], "cpu", calibration, percentile=99.0)
        g = onnx.load(str(out)).graph
        inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
        scales[calibration] = np.array([float(inits[n.input[1]]) for n in g.node if n.op_type == "QuantizeLinear"])
        run_onnx(out, world["frames"][:1])
    assert len(scales["minmax"]) == len(scales["entropy"]) == len(scales["percentile"])
    # histogram methods clip outliers: never wider than the full min-max range; keeping 99 % of the values is
    # narrower on most tensors (entropy may keep the full range on a few small frames)
    for c in ("entropy", "percentile"):
        assert np.all(scales[c] <= scales["minmax"] * 1.01), c
    assert np.mean(scales["percentile"] < 0.95 * scales["minmax"]) > 0.5


def test_int8_ptq_needs_data_and_a_known_calibration(world):
    with pytest.raises(ConfigError, match="needs --data"):
        METHODS["int8-ptq"]("tiny", "x", None, {}, world["manifest"])
    with pytest.raises(ConfigError, match="calibration"):
        METHODS["int8-ptq"]("tiny", "x", world["data"], {"calibration": "mse"}, world["manifest"])
    with pytest.raises(ConfigError, match=r"unknown compression method 'int3'.*int8-ptq"):
        compress("int3", "tiny", "x", None, {}, world["manifest"])


# --- qat ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("weights", "steps"), [("int8", 1), pytest.param("int4", 2, marks=pytest.mark.slow),
                                               pytest.param("ternary", 2, marks=pytest.mark.slow)])
def test_qat_exports_qdq_onnx_with_the_weight_levels_of_its_scheme(world, weights, steps):
    name = f"tiny-qat-{weights}"
    # int8: one step at the smallest learning rate, so that the weights stay the float model's (qat takes no 0 steps).
    lr = 1e-12 if weights == "int8" else 1e-4
    entry = METHODS["qat"](world["run"], name, world["data"], {"weights": weights, "steps": steps, "lr": lr,
                                                                "calib_frames": 4}, world["manifest"])
    assert (entry.method, entry.target, entry.parent) == (f"qat-{weights}", "cpu", world["run"])
    onnx.checker.check_model(str(entry.verified_onnx()))
    g = onnx.load(str(entry.onnx)).graph
    weights_int = int_weights(g)
    prod = producers(g)
    convs = [n for n in g.node if n.op_type == "Conv"]
    # Int8 weights everywhere but in the convolutions int8-ptq keeps float (the two stems, the neck convolution that
    # feeds GridSample), which hold float weights.
    kept = {n for names in float_nodes(onnx.load(str(entry.onnx))).values() for n in names}
    float_convs = {n.name for n in convs if n.input[1] not in prod}
    assert float_convs == kept & {n.name for n in convs} and len(float_convs) == 3
    assert all(prod[n.input[1]].op_type == "DequantizeLinear" for n in convs if n.name not in float_convs)
    assert len(weights_int) + 3 == 60  # every convolution (59 Conv2d and the shared dilated kernel)
    assert sum(n.op_type == "QuantizeLinear" for n in g.node) > 100  # activation pairs
    outputs = run_onnx(entry.onnx, world["frames"][:2])
    assert all(np.isfinite(o).all() for out in outputs for o in out)
    if weights == "int8":
        # A step that moves no weight: the float model's int8 weights in int8-ptq's graph, so close to it (5 % of
        # the range is about 13 steps of 1/255).
        close_to(run_onnx(world["float"], world["frames"][:2]), outputs, rel=0.05)
        return
    assert len(entry.options["layers_at_8_bits"]) == 4  # two backbone stems, the two decoder heads
    edge = {f"{n}_quantized" for n in entry.options["layers_at_8_bits"]}  # the decoder heads
    limit = 16 if weights == "int4" else 3
    low = {n: a for n, a in weights_int.items() if n not in edge}
    assert max(levels_per_channel(a) for a in low.values()) <= limit
    # The stems stay float, holding their 8-bit grid values: more levels than the low-bit layers have.
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    stems = [inits[n.input[1]] for n in convs if n.name in float_convs and "stem" in n.name]
    assert len(stems) == 2
    steps = [w / (np.abs(w).reshape(len(w), -1).max(1).reshape(-1, 1, 1, 1) / 127) for w in stems]
    assert all(np.allclose(st, np.round(st), atol=1e-3) for st in steps)
    assert max(levels_per_channel(np.round(st)) for st in steps) > limit
    assert "8-bit kernels" in entry.notes


def test_qat_file_holds_the_learnt_weights_in_the_int8_ptq_graph(world, tmp_path):
    from deploy.qat import export_qat, finetune

    model = copy.deepcopy(world["model"])
    with torch.no_grad():  # BatchNorm shifts, so the folded convolutions have biases that matter
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.bias.normal_(0.0, 0.5)
    model, state = finetune(model, world["config"], world["data"], "int4", 1, 2)
    schemes = export_qat(model, state, world["config"], tmp_path / "q.onnx", world["data"], 4)  # bakes the weights
    assert set(schemes.values()) == {"int4", "int8"}
    g = onnx.load(str(tmp_path / "q.onnx")).graph
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    params = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    # Every weight in the file is exactly the weight QAT ended with (int4 levels, QAT's scales): dequantised for the
    # quantised layers, the same grid values as float for the layers kept float.
    prod = producers(g)
    stored = {}
    for n in g.node:
        if n.op_type != "Conv":
            continue
        dq = prod.get(n.input[1])
        if dq is not None and dq.op_type == "DequantizeLinear":
            stored[dq.input[0].removesuffix("_quantized")] = inits[dq.input[0]].astype(np.float32) * \
                inits[dq.input[1]].reshape(-1, 1, 1, 1)
        else:
            stored[n.input[1]] = inits[n.input[1]]
    assert set(stored) == set(schemes) and len(stored) == 60
    for name, w in stored.items():
        np.testing.assert_allclose(w, params[name], rtol=1e-6, atol=1e-9)
    # int8-ptq's graph: residual adds quantised (both inputs dequantised, the output quantised), which onnxruntime
    # fuses into int8 kernels; the layers int8-ptq keeps float stay float.
    readers = {i: n for n in g.node for i in n.input}
    adds = [n for n in g.node if n.op_type == "Add" and all(prod.get(i) is not None for i in n.input)]
    quantised = [n for n in adds if all(prod[i].op_type == "DequantizeLinear" for i in n.input)
                 and readers[n.output[0]].op_type == "QuantizeLinear"]
    assert len(quantised) >= 8  # the residual adds of both ResNet-18 encoders
    assert any(n.op_type == "GridSample" for n in g.node)
    assert all(prod[i].op_type != "DequantizeLinear" for n in g.node if n.op_type == "GridSample" for i in n.input[:2])
    # The int32 biases were re-scaled to the new weight scales: onnxruntime's int8 convolution reads them as steps of
    # input scale x weight scale (int4 scales are 127/7 x int8's; on nf-small, unscaled biases left 62 % of the
    # cells' classes right).
    biased = 0
    for n in g.node:
        if n.op_type == "Conv" and len(n.input) > 2 and prod.get(n.input[2]) is not None \
                and prod[n.input[2]].op_type == "DequantizeLinear" and prod[n.input[0]].op_type == "DequantizeLinear":
            expected = inits[prod[n.input[0]].input[1]] * inits[prod[n.input[1]].input[1]]
            np.testing.assert_allclose(inits[prod[n.input[2]].input[1]], expected, rtol=1e-5)
            biased += 1
    assert biased > 20
    # The file computes the float model of its weights, up to 8-bit activations.
    with torch.no_grad():
        torch_out = [[t.numpy() for t in model(*[torch.from_numpy(f[k]) for k in INPUTS])] for f in world["frames"][:2]]
    close_to(torch_out, run_onnx(tmp_path / "q.onnx", world["frames"][:2]), rel=0.05)


def test_qat_needs_torch_weights(world, ptq):
    with pytest.raises(ConfigError, match="no torch weights"):
        METHODS["qat"]("tiny-int8", "x", world["data"], {}, world["manifest"])
    with pytest.raises(ConfigError, match="needs --data"):
        METHODS["qat"](world["run"], "x", None, {}, world["manifest"])
    with pytest.raises(ConfigError, match="weights"):
        METHODS["qat"](world["run"], "x", world["data"], {"weights": "int2", "steps": 0}, world["manifest"])


def test_compress_refuses_a_missing_data_path_and_a_bad_name(world):
    with pytest.raises(ConfigError, match="no such"):
        compress("int8-ptq", "tiny", "x", str(Path(world["data"]) / "nope"), {}, world["manifest"])
    with pytest.raises(ConfigError, match="zoo model name"):
        compress("int8-ptq", "tiny", "a.b", world["data"], {}, world["manifest"])
