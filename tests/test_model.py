import pickle

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402, N812

from perception.bev_config import BevConfig  # noqa: E402
from perception.layers import ContentAwareDilatedConv, lift_to_bev  # noqa: E402
from perception.model import (  # noqa: E402
    FUSIONS,
    INPUT_NAMES,
    OUTPUT_NAMES,
    TRAIN_DEFAULTS,
    FusionNet,
    ModelConfig,
    count_parameters,
    dummy_inputs,
    list_model_configs,
    load_model_config,
)
from perception.tables import camera_tables  # noqa: E402
from perception.uss_raster import USS_CHANNELS  # noqa: E402
from sensors.classes import NUM_CLASSES  # noqa: E402
from sensors.errors import ConfigError  # noqa: E402
from sensors.rig import CAMERA_NAMES  # noqa: E402

# 6.4 m at 0.2 m: 32 x 32 cells, two heights, 64 x 48 images, 1/8-width backbones.
TINY_BEV = BevConfig(extent=6.4, cell=0.2, heights=(0.25, 0.75), image_size=(64, 48))
TINY = ModelConfig(name="tiny", camera_width=0.125, uss_width=0.125, neck_channels=8, bev_channels=8,
                   decoder_channels=8, bev=TINY_BEV)
VARIANTS = [("fusion", f) for f in FUSIONS] + [("camera", "middle"), ("uss", "middle")]


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def tiny(modality="fusion", fusion="middle", seed=0):
    torch.manual_seed(seed)
    return FusionNet(TINY.replace(modality=modality, fusion=fusion)).eval()


@pytest.fixture(scope="module")
def tiny_inputs(rig):
    """Real tables of the default rig on the tiny grid, random images and raster, batch of 2."""
    t = camera_tables(rig, TINY_BEV)
    images, _, _, uss = dummy_inputs(TINY, batch=2, seed=3)
    grid = torch.from_numpy(t.grid)[None].repeat(2, 1, 1, 1, 1)
    valid = torch.from_numpy(t.valid)[None].repeat(2, 1, 1, 1, 1)
    return images, grid, valid, uss


# --- config ---------------------------------------------------------------------------------------------------

def test_shipped_configs_load_by_name():
    assert {"nf-small", "nf-small-camera", "nf-small-uss", "nf-paper"} <= set(list_model_configs())
    small = load_model_config("nf-small")
    assert (small.modality, small.fusion, small.camera_backbone, small.uss_backbone) == \
        ("fusion", "middle", "resnet18", "resnet18")
    assert (small.camera_width, small.uss_width, small.bev.size, small.bev.image_size) == (0.5, 0.5, 80, (256, 192))
    assert small.bev.heights == (0.25, 0.75, 1.25)
    for name, modality in (("nf-small-camera", "camera"), ("nf-small-uss", "uss")):
        cfg = load_model_config(name)
        # The same network restricted to one modality: only name and modality differ.
        assert cfg.modality == modality and cfg.replace(name="nf-small", modality="fusion") == small
    paper = load_model_config("nf-paper")
    assert paper.camera_backbone == paper.uss_backbone == "resnext50_32x4d" and paper.bev.size == 160
    assert set(small.train) == set(TRAIN_DEFAULTS)


def test_config_round_trips_through_toml(tmp_path):
    cfg = load_model_config("nf-small").replace(fusion="late", dilations=(1, 3))
    path = tmp_path / "x.toml"
    path.write_text(cfg.to_toml())
    assert load_model_config(path) == cfg
    hash(cfg)
    assert pickle.loads(pickle.dumps(cfg)) == cfg  # data loader workers, checkpoints
    with pytest.raises(TypeError, match="read-only"):
        cfg.train["lr"] = 1.0


def test_extends_overrides_tables_key_by_key(tmp_path):
    (tmp_path / "a.toml").write_text('extends = "nf-small"\nname = "a"\n[train]\nlr = 0.01\n[bev]\ncell = 0.1\n')
    cfg = load_model_config(tmp_path / "a.toml")
    assert cfg.train["lr"] == 0.01 and cfg.train["epochs"] == load_model_config("nf-small").train["epochs"]
    assert cfg.bev.size == 160 and cfg.bev.image_size == (256, 192)
    (tmp_path / "b.toml").write_text('extends = "c.toml"\nname = "b"\n')
    (tmp_path / "c.toml").write_text('extends = "b.toml"\nname = "c"\n')
    with pytest.raises(ConfigError, match="loops"):
        load_model_config(tmp_path / "b.toml")


@pytest.mark.parametrize("text, field", [
    ('modality = "lidar"', "'modality'"),
    ('fusion = "sideways"', "'fusion'"),
    ('camera_backbone = "resnet19"', "'camera_backbone'"),
    ("neck_channels = 0", "'neck_channels'"),
    ("bev_channels = 8.5", "'bev_channels'"),
    ("uss_width = -1", "'uss_width'"),
    ("dilations = [1, 1]", "'dilations'"),
    ("colour = 3", "colour"),
    ("[train]\nlr = \"fast\"", "'train.lr'"),
    ("[train]\nepochs = 0", "'train.epochs'"),
    ("[train]\nepoch = 3", "train.epoch"),
    ("[bev]\ncell = 0.3", "bev.cell"),
])
def test_bad_configs_name_file_and_field(tmp_path, text, field):
    path = tmp_path / "bad.toml"
    path.write_text(f'extends = "nf-small"\nname = "bad"\n{text}\n')
    with pytest.raises(ConfigError, match=field) as e:
        load_model_config(path)
    assert "bad.toml" in str(e.value)


def test_config_contradictions_and_unknown_names():
    with pytest.raises(ConfigError, match="no meaning with modality 'camera'"):
        TINY.replace(modality="camera", fusion="late")
    with pytest.raises(ConfigError, match=r"unknown model config 'nf-huge'.*nf-small"):
        load_model_config("nf-huge")
    with pytest.raises(ConfigError, match="'name' is missing"):
        ModelConfig.from_dict({"modality": "uss"}, "x.toml")


# --- network --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("modality, fusion", VARIANTS)
def test_every_variant_gives_logits_on_the_grid(modality, fusion, tiny_inputs):
    cls, occ = tiny(modality, fusion)(*tiny_inputs)
    assert cls.shape == (2, NUM_CLASSES, 32, 32) and occ.shape == (2, 1, 32, 32)
    assert torch.isfinite(cls).all() and torch.isfinite(occ).all()


def test_parameter_counts_follow_the_variant():
    counts = {v: count_parameters(tiny(*v)) for v in VARIANTS}
    # Fusion middle = camera + uss, except the decoder's wider first conv and one decoder instead of two.
    assert counts[("fusion", "middle")] > max(counts[("camera", "middle")], counts[("uss", "middle")])
    assert counts[("fusion", "late")] > counts[("fusion", "middle")]  # two decoders
    with torch.device("meta"):
        big = FusionNet(load_model_config("nf-paper"))
    assert 40e6 < count_parameters(big) < 60e6  # two ResNeXt-50 trunks without heads (~23 M each) + the rest


def test_the_lift_reads_each_camera_at_its_projected_pixel(rig):
    """Features whose two channels hold each feature pixel's position in calibration pixels: the bilinear sample
    of a linear ramp is the sampled position, so the lifted value must be camera.project of the cell centre."""
    t = camera_tables(rig, TINY_BEV)
    grid_bev = TINY_BEV.grid(rig)
    Hf, Wf = 24, 32  # the feature map is coarser than the image: the table is resolution-free
    feats = []
    for name in CAMERA_NAMES:
        cam = rig.camera(name)
        u = (np.arange(Wf) + 0.5) * cam.width / Wf - 0.5
        v = (np.arange(Hf) + 0.5) * cam.height / Hf - 0.5
        feats.append(np.stack([np.broadcast_to(u, (Hf, Wf)), np.broadcast_to(v[:, None], (Hf, Wf))]))
    features = torch.from_numpy(np.stack(feats).astype(np.float32))  # (N, 2, Hf, Wf), B = 1
    grid = torch.from_numpy(t.grid)[None]
    valid = torch.from_numpy(t.valid)[None]
    xy = grid_bev.cell_centres().reshape(-1, 2)
    checked = 0
    for i, name in enumerate(CAMERA_NAMES):
        only = torch.zeros_like(valid)
        only[:, i] = valid[:, i]
        lifted = lift_to_bev(features, grid, only)[0].numpy().reshape(2, 2, 32, 32)  # (C, Z, R, W)
        cam = rig.camera(name)
        for z, h in enumerate(TINY_BEV.heights):
            uv, _ = cam.project(np.column_stack([xy, np.full(len(xy), h)]))
            uv = uv.reshape(32, 32, 2)
            ok = t.valid[i, z] > 0
            # Away from the outermost half feature pixel, where zero padding blends in.
            mx, my = cam.width / Wf, cam.height / Hf
            inner = ok & (uv[..., 0] > mx) & (uv[..., 0] < cam.width - 1 - mx) & (uv[..., 1] > my) \
                & (uv[..., 1] < cam.height - 1 - my)
            assert np.allclose(lifted[0, z][inner], uv[..., 0][inner], atol=0.05)
            assert np.allclose(lifted[1, z][inner], uv[..., 1][inner], atol=0.05)
            assert np.all(lifted[:, z][:, ~ok] == 0)
            checked += inner.sum()
    assert checked > 1000

    # All cameras at once: a cell no camera sees (the body) is exactly 0; the mean of equal values is the value.
    ones = torch.ones(4, 1, Hf, Wf)
    mean = lift_to_bev(ones, grid, valid)[0].reshape(2, 32, 32).numpy()
    unseen = t.valid.sum(0) == 0
    assert unseen.sum() > 0 and np.all(mean[unseen] == 0)
    # Per camera value k+1 on its own valid cells: the lift averages exactly over the cameras that see a cell.
    ranks = torch.arange(1.0, 5.0).view(4, 1, 1, 1).expand(4, 1, Hf, Wf)
    got = lift_to_bev(ranks, torch.zeros_like(grid), valid)[0].reshape(2, 32, 32).numpy()  # centre pixel
    n = t.valid.sum(0)
    expect = np.where(n > 0, (t.valid * np.arange(1, 5).reshape(4, 1, 1, 1)).sum(0) / np.maximum(n, 1), 0)
    assert np.allclose(got, expect, atol=1e-5) and (n >= 2).any()


def test_a_camera_marked_invalid_is_ignored(tiny_inputs):
    images, grid, valid, uss = tiny_inputs
    net = tiny()
    valid = valid.clone()
    valid[0, 2] = 0  # MVL missing in sample 0
    with torch.no_grad():
        ref = net(images, grid, valid, uss)
        other = images.clone()
        other[0, 2] = 255 - other[0, 2]
        same = net(other, grid, valid, uss)
        other = images.clone()
        other[0, 1] = 255 - other[0, 1]  # RV is valid: it must matter
        changed = net(other, grid, valid, uss)
    for a, b in zip(ref, same, strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    assert (changed[0][0] - ref[0][0]).abs().max() > 1e-4
    assert torch.allclose(changed[0][1], ref[0][1], atol=1e-6)  # sample 1 untouched


@pytest.mark.parametrize("modality, fusion", VARIANTS)
def test_each_variant_reads_exactly_its_modalities(modality, fusion, tiny_inputs):
    images, grid, valid, uss = tiny_inputs
    net = tiny(modality, fusion)
    with torch.no_grad():
        ref = net(images, grid, valid, uss)[0]
        d_uss = (net(images, grid, valid, 1 - uss)[0] - ref).abs().max().item()
        d_img = (net(255 - images, grid, valid, uss)[0] - ref).abs().max().item()
    assert (d_img > 1e-4) == (modality != "uss")
    assert (d_uss > 1e-4) == (modality != "camera")
    assert (d_img == 0) == (modality == "uss") and (d_uss == 0) == (modality == "camera")


def test_unused_inputs_are_not_read_and_bad_shapes_are_named(tiny_inputs):
    images, grid, valid, uss = tiny_inputs
    # A USS-only model takes placeholder camera inputs.
    cls, _ = tiny("uss")(torch.zeros(1, dtype=torch.uint8), torch.zeros(1), torch.zeros(1), uss)
    assert cls.shape == (2, NUM_CLASSES, 32, 32)
    with pytest.raises(ConfigError, match=r"input 'images'.*image_size 64x48"):
        tiny()(images[..., :32], grid, valid, uss)
    with pytest.raises(ConfigError, match=r"input 'images' is torch\.float32"):
        tiny()(images.float(), grid, valid, uss)
    with pytest.raises(ConfigError, match="input 'uss'"):
        tiny()(images, grid, valid, uss[:, :3])


def test_content_aware_dilated_conv_shares_one_kernel_and_gates_per_pixel():
    torch.manual_seed(0)
    layer = ContentAwareDilatedConv(4, (1, 2, 3)).eval()
    torch.nn.init.normal_(layer.gate_net[-1].weight)  # a non-uniform gate
    torch.nn.init.normal_(layer.norm.running_mean)
    x = torch.randn(2, 4, 17, 19)
    with torch.no_grad():
        g = layer.gate(x)
        assert g.shape == (2, 3, 17, 19) and torch.allclose(g.sum(1), torch.ones(2, 17, 19), atol=1e-6)
        assert g.std(dim=(2, 3)).min() > 1e-3  # varies from pixel to pixel

        # Impulse responses: branch d is the one 3x3 kernel with its taps d pixels apart.
        impulse = torch.zeros(1, 4, 17, 19)
        impulse[0, 1, 8, 9] = 1.0
        for d, out in zip((1, 2, 3), layer.branches(impulse), strict=True):
            out = out - layer.bias.view(1, 4, 1, 1)
            taps = out[0][:, 8 - d:8 + d + 1:d, 9 - d:9 + d + 1:d]  # (4, 3, 3)
            assert torch.allclose(taps, layer.weight[:, 1].flip(1, 2), atol=1e-6)
            assert out.abs().sum() == pytest.approx(taps.abs().sum().item(), rel=1e-5)

        branches = [F.conv2d(x, layer.weight, layer.bias, padding=d, dilation=d) for d in (1, 2, 3)]
        mixed = sum(g[:, i:i + 1] * b for i, b in enumerate(branches))
        assert torch.allclose(layer(x), x + torch.relu(layer.norm(mixed)), atol=1e-5)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # dynamo=False is the deploy choice
def test_onnx_export_meets_the_deploy_contract(tmp_path, tiny_inputs):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    net = tiny("fusion", "middle")
    path = tmp_path / "tiny.onnx"
    torch.onnx.export(net, tiny_inputs, str(path), opset_version=17, dynamo=False, input_names=list(INPUT_NAMES),
                      output_names=list(OUTPUT_NAMES))
    assert [p.name for p in tmp_path.iterdir()] == ["tiny.onnx"]  # one file, no external data
    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    onnx.checker.check_model(model)
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [17]
    assert {n.domain for n in model.graph.node} <= {"", "ai.onnx"}
    ranks = {v.name: len(v.type.tensor_type.shape.dim)
             for v in [*model.graph.value_info, *model.graph.input, *model.graph.output]}
    samples = [n for n in model.graph.node if n.op_type == "GridSample"]
    assert len(samples) == 1
    assert [ranks[i] for i in samples[0].input] == [4, 4] and ranks[samples[0].output[0]] == 4
    inputs = {i.name: i.type.tensor_type.elem_type for i in model.graph.input}
    assert inputs == {"images": onnx.TensorProto.UINT8, "grid": onnx.TensorProto.FLOAT,
                      "valid": onnx.TensorProto.FLOAT, "uss": onnx.TensorProto.FLOAT}

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(list(OUTPUT_NAMES), {n: t.numpy() for n, t in zip(INPUT_NAMES, tiny_inputs, strict=True)})
    with torch.no_grad():
        want = net(*tiny_inputs)
    for g, w in zip(got, want, strict=True):
        assert g.shape == tuple(w.shape)
        assert np.abs(g - w.numpy()).max() < 1e-4


def test_uss_channels_match_the_rasteriser():
    net = tiny("uss")
    assert net.uss.backbone.stem[0].in_channels == len(USS_CHANNELS)
