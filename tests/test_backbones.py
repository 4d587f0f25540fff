import functools

import pytest
import torch
from torch import nn

from perception.backbones import Backbone, count_params, create_backbone, list_backbones, make_divisible
from perception.backbones.bench import bench_backbones, count_macs, format_bench_table
from perception.backbones.inceptionnext import InceptionDWConv2d
from perception.backbones.resnet import IBN
from sensors.errors import ConfigError

ALL = list_backbones()
params = functools.cache(count_params)  # pure; several tests ask for the same counts

# Parameter counts with the 1000-class ImageNet head, as published (torchvision / timm model cards).
PUBLISHED_PARAMS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnext50_32x4d": 25_028_904,
    "mobilenet_v1": 4_231_976,
    "resnet50_ibn_a": 25_557_032,  # IN with affine has the same 2 parameters per channel as BN
}

# Multiply-accumulates at 224x224 with the head: torchvision's "GFLOPS" column (which counts MACs), MobileNet
# paper's 569 M mult-adds, InceptionNeXt paper's 4.2 G MACs.
PUBLISHED_GMACS = {"resnet18": 1.81, "resnet34": 3.66, "resnet50": 4.09, "resnext50_32x4d": 4.23,
                   "mobilenet_v1": 0.569, "inceptionnext_tiny": 4.2}

# ResNeXt-50 32x4d: width of the grouped 3x3 conv and number of blocks per stage; MobileNet-V1: the channels of
# its 13 3x3 layers. Written out from the papers' tables, independent of the code.
RESNEXT_STAGES = ((128, 3), (256, 4), (512, 6), (1024, 3))
MOBILENET_3X3 = (32, 64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024)


pytestmark = pytest.mark.usefixtures("torch_one_thread")


class WithHead(nn.Module):
    def __init__(self, backbone: Backbone) -> None:
        super().__init__()
        self.backbone, self.head = backbone, backbone.classifier(1000)

    def forward(self, x):
        return self.head(self.backbone(x)[-1])


def test_registry_lists_the_issue_menu():
    expected = {"resnet18", "resnet34", "resnet50", "resnext50_32x4d", "mobilenet_v1", "resnet50_ibn_a",
                "inceptionnext_atto", "inceptionnext_tiny", "resnext50_e2gc_g8", "mobilenet_v1_e2gc_g8"}
    assert expected <= set(ALL)
    assert sorted(ALL) == ALL


@pytest.mark.parametrize(("name", "published"), PUBLISHED_PARAMS.items())
def test_parameter_counts_match_published(name, published):
    assert params(name) == published


def test_inceptionnext_parameter_counts_match_paper():
    # Paper table: InceptionNeXt-T 28.06 M, InceptionNeXt-A 4.2 M (at the precision they are published).
    assert round(params("inceptionnext_tiny") / 1e6, 2) == 28.06
    assert round(params("inceptionnext_atto") / 1e6, 1) == 4.2


def test_head_is_what_separates_with_and_without():
    # ResNet-50's head is a 2048 -> 1000 linear layer; InceptionNeXt-T's an MLP 768 -> 2304 -> LN -> 1000.
    assert params("resnet50") - params("resnet50", with_head=False) == 2048 * 1000 + 1000
    mlp = 768 * 2304 + 2304 + 2 * 2304 + 2304 * 1000 + 1000
    assert params("inceptionnext_tiny") - params("inceptionnext_tiny", with_head=False) == mlp


@pytest.mark.parametrize(("name", "gmacs"), PUBLISHED_GMACS.items())
def test_macs_match_published(name, gmacs):
    with torch.device("meta"):
        model = WithHead(create_backbone(name))
        macs = count_macs(model, torch.empty(1, 3, 224, 224))
    assert macs / 1e9 == pytest.approx(gmacs, rel=0.01)


def test_count_macs_of_one_conv_and_one_linear_by_hand():
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2)
    assert count_macs(conv, torch.zeros(1, 4, 10, 12)) == (6 * 5 * 6) * (4 // 2) * 9
    assert count_macs(nn.Linear(7, 3), torch.zeros(5, 7)) == 5 * 3 * 7


@pytest.mark.parametrize("name", ALL)
def test_full_width_declares_the_shapes_it_returns(name):
    # On the meta device: the real layer shapes, no memory, no arithmetic.
    with torch.device("meta"):
        model = create_backbone(name)
        feats = model(torch.empty(2, 3, 64, 96))
    assert model.strides == (4, 8, 16, 32)
    expected = [(2, c, 64 // s, 96 // s) for c, s in zip(model.out_channels, model.strides, strict=True)]
    assert [f.shape for f in feats] == expected


@pytest.mark.parametrize("name", ALL)
def test_small_width_forward_on_real_tensors(name):
    torch.manual_seed(0)
    model = create_backbone(name, width_mult=0.25, in_chans=4).train()
    x = torch.randn(2, 4, 64, 96)
    feats = model(x)
    assert len(feats) == len(model.strides) == len(model.out_channels)
    for f, c, s in zip(feats, model.out_channels, model.strides, strict=True):
        assert f.shape == (2, c, 64 // s, 96 // s)
        assert torch.isfinite(f).all()
    # Features depend on the input (no dead path from a zero-initialised branch or a wrong wiring).
    feats[-1].sum().backward()
    assert model.stem[0].weight.grad.abs().sum() > 0
    logits = model.classifier(10)(feats[-1])
    assert logits.shape == (2, 10)


def test_resnet_family_default_channels():
    assert create_backbone("resnet18", 0.5).out_channels == (32, 64, 128, 256)
    with torch.device("meta"):
        assert create_backbone("resnet18").out_channels == (64, 128, 256, 512)
        assert create_backbone("resnext50_32x4d").out_channels == (256, 512, 1024, 2048)
        assert create_backbone("mobilenet_v1").out_channels == (128, 256, 512, 1024)
        assert create_backbone("inceptionnext_tiny").out_channels == (96, 192, 384, 768)


@pytest.mark.parametrize("name", ALL)
def test_width_multiplier_shrinks_parameters_quadratically(name):
    full = params(name, with_head=False)
    half = params(name, 0.5, with_head=False)
    quarter = params(name, 0.25, with_head=False)
    # Dense layers scale with w^2; grouped (E2GC) and stem layers only with w, hence the slack above 1/4.
    assert 0.24 <= half / full <= 0.31
    assert 0.055 <= quarter / full <= 0.1


def test_make_divisible():
    assert make_divisible(64 * 0.5, 8) == 32
    assert make_divisible(40 * 0.5, 8) == 24  # 20 rounds to the nearest multiple, 24 (not down to 16)
    assert make_divisible(3, 8) == 8
    assert make_divisible(128 * 0.25, 32) == 32
    assert make_divisible(100, 8) == 104


def grouped_convs(model):
    return [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]


@pytest.mark.parametrize("g", [4, 8, 16])
@pytest.mark.parametrize("width", [1.0, 0.5, 0.3])
def test_e2gc_keeps_channels_per_group_constant(g, width):
    with torch.device("meta"):
        resnext = create_backbone(f"resnext50_e2gc_g{g}", width)
        mobile = create_backbone(f"mobilenet_v1_e2gc_g{g}", width)
    for model, n_layers in ((resnext, 16), (mobile, 13)):
        # Every 3x3 conv but the stem (which maps the image's 3 channels) is a grouped one.
        convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)
                 and m.in_channels == m.out_channels]
        assert len(convs) == n_layers
        for conv in convs:
            assert conv.in_channels % g == 0
            assert conv.groups == conv.in_channels // g


def test_fixed_group_versions_keep_their_group_count():
    with torch.device("meta"):
        resnext = create_backbone("resnext50_32x4d", 0.5)
        mobile = create_backbone("mobilenet_v1")
    assert {c.groups for c in grouped_convs(resnext)} == {32}
    assert all(c.groups == c.in_channels == c.out_channels for c in grouped_convs(mobile))


@pytest.mark.parametrize("g", [4, 8, 16])
def test_e2gc_parameter_difference_by_hand(g):
    # A grouped 3x3 conv of width C with groups k has C * (C / k) * 9 weights: C * 4 * 2**i * 9 for 32x4d
    # (stage i has C / 32 = 4 * 2**i channels per group), C * G * 9 for E2GC. Everything else is unchanged.
    diff = sum(blocks * c * 9 * (g - c // 32) for c, blocks in RESNEXT_STAGES)
    assert params(f"resnext50_e2gc_g{g}") - params("resnext50_32x4d") == diff
    # MobileNet: a depthwise 3x3 has C * 9 weights, the E2GC one C * G * 9.
    diff = sum(c * 9 * (g - 1) for c in MOBILENET_3X3)
    assert params(f"mobilenet_v1_e2gc_g{g}") - params("mobilenet_v1") == diff


def test_e2gc_one_layer_by_hand():
    with torch.device("meta"):
        fixed = create_backbone("resnext50_32x4d")
        e2gc = create_backbone("resnext50_e2gc_g8")
    last_fixed, last_e2gc = grouped_convs(fixed)[-1], grouped_convs(e2gc)[-1]
    assert last_fixed.weight.numel() == 1024 * (1024 // 32) * 9 == 294_912
    assert last_e2gc.weight.numel() == 1024 * 8 * 9 == 73_728
    assert (last_fixed.groups, last_e2gc.groups) == (32, 128)


def test_ibn_a_layout():
    with torch.device("meta"):
        model = create_backbone("resnet50_ibn_a")
    for i, stage in enumerate(model.stages):
        ibns = [b.bn1 for b in stage if isinstance(b.bn1, IBN)]
        assert len(ibns) == (len(stage) if i < 3 else 0)
        for block in stage:
            if isinstance(block.bn1, IBN):
                assert block.bn1.IN.num_features == block.bn1.BN.num_features == block.conv1.out_channels // 2


def test_ibn_instance_half_ignores_contrast_and_brightness():
    torch.manual_seed(1)
    ibn = IBN(8).eval()
    ibn.BN.running_var.fill_(1.0)
    x = torch.randn(2, 8, 6, 7)
    y, y2 = ibn(x), ibn(3.0 * x + 5.0)
    # InstanceNorm removes per-image, per-channel affine changes; BatchNorm at inference does not.
    assert torch.allclose(y[:, :4], y2[:, :4], atol=1e-4)
    assert not torch.allclose(y[:, 4:], y2[:, 4:], atol=1e-1)


def test_inception_mixer_leaves_the_identity_band_untouched():
    mixer = InceptionDWConv2d(96, band_kernel=11, branch_ratio=0.125)
    assert mixer.split == (60, 12, 12, 12)
    assert mixer.dwconv_w.kernel_size == (1, 11) and mixer.dwconv_h.kernel_size == (11, 1)
    x = torch.randn(1, 96, 9, 13)
    y = mixer(x)
    assert torch.equal(y[:, :60], x[:, :60])
    assert not torch.allclose(y[:, 60:], x[:, 60:])


def test_inceptionnext_atto_uses_its_own_mixer_settings():
    with torch.device("meta"):
        model = create_backbone("inceptionnext_atto")
    mixer = model.stages[0][0].token_mixer
    assert mixer.split == (10, 10, 10, 10)  # 40 channels, branch ratio 1/4
    assert mixer.dwconv_w.kernel_size == (1, 9)


def test_unknown_name_lists_known_backbones():
    with pytest.raises(ConfigError, match="resnext50_32x4d") as e:
        create_backbone("resnext50")
    assert "did you mean" in str(e.value)
    assert all(n in str(e.value) for n in ALL)
    with pytest.raises(ConfigError, match="unknown backbone"):
        params("vgg16")


def test_bad_options_raise_config_error():
    with pytest.raises(ConfigError, match="zero_init_last"):
        create_backbone("resnet18", depth=3)
    with pytest.raises(ConfigError, match="width_mult"):
        create_backbone("resnet18", width_mult=0)
    with pytest.raises(ConfigError, match="in_chans"):
        create_backbone("mobilenet_v1", in_chans=0)


def test_zero_init_last_starts_residual_branches_as_identity():
    model = create_backbone("resnet18", 0.25)
    assert all(float(b.bn2.weight.detach().abs().sum()) == 0 for s in model.stages for b in s)
    model = create_backbone("resnet18", 0.25, zero_init_last=False)
    assert all(float(b.bn2.weight.detach().abs().sum()) > 0 for s in model.stages for b in s)


def test_bench_reports_measured_figures():
    rows = bench_backbones(["resnet18", "mobilenet_v1"], image_size=(96, 64), batch=2, repeats=2, warmup=1,
                           width_mult=0.25, threads=1)
    assert [r["name"] for r in rows] == ["resnet18", "mobilenet_v1"]
    for r in rows:
        assert r["params"] == params(r["name"], 0.25, with_head=False)
        assert r["flops"] == 2 * r["macs"] > 0
        assert 0 < r["ms_min"] <= r["ms_median"] <= r["ms_max"]
        assert r["ms_per_image"] == pytest.approx(r["ms_median"] / 2)
        assert r["threads"] == 1 and r["image_size"] == (96, 64)
    # MACs scale with the number of pixels: resnet18's at 96x64 is 6144/50176 of its 224x224 count less the fc.
    with torch.device("meta"):
        ref = count_macs(create_backbone("resnet18", 0.25), torch.empty(1, 3, 224, 224))
    assert rows[0]["macs"] == pytest.approx(ref * (96 * 64) / (224 * 224), rel=0.02)
    table = format_bench_table(rows)
    assert "resnet18" in table and "mobilenet_v1" in table and "1 threads" in table
    with pytest.raises(ConfigError, match="multiples of 32"):
        bench_backbones(["resnet18"], image_size=(100, 64))


# Without onnxscript only the TorchScript exporter exists (deprecated, still the one this venv can run); its
# "instance_norm train=True" note is right: InstanceNorm always normalises with the input's own statistics.
@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore:ONNX export mode:UserWarning",
                            "ignore::torch.jit.TracerWarning")
@pytest.mark.parametrize("name", ["resnet50_ibn_a", "mobilenet_v1_e2gc_g8", "inceptionnext_atto"])
def test_exports_to_onnx_opset17_with_the_same_outputs(name, tmp_path):
    # The deploy contract: plain ops only, one file, opset 17 (InstanceNorm, grouped conv, split/concat included).
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = create_backbone(name, 0.25).eval()
    for m in model.modules():  # non-trivial statistics, so that a wrong norm export would show
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    x = torch.randn(1, 3, 64, 96)
    path = tmp_path / f"{name}.onnx"
    torch.onnx.export(model, (x,), str(path), opset_version=17, dynamo=False, input_names=["image"])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outputs = session.run(None, {"image": x.numpy()})
    with torch.inference_mode():
        expected = model(x)
    assert len(outputs) == len(expected)
    for got, want in zip(outputs, expected, strict=True):
        assert got.shape == tuple(want.shape)
        assert abs(got - want.numpy()).max() <= 1e-4 * max(1.0, float(want.abs().max()))
