"""Low rank: ranks by ratio and energy by hand; SVD and Tucker-2 factorisations equal the convolution at full rank
and approximate it better as the rank rises; the method makes a smaller ONNX that runs; E2GC models register."""

import itertools

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from deploy.compress import METHODS, load_methods  # noqa: E402
from deploy.export import export_onnx  # noqa: E402
from deploy.lowrank import factorise_conv, factorise_model, factorised, rank_for, register_e2gc  # noqa: E402
from perception.bev_config import BevConfig  # noqa: E402
from perception.checkpoint import CONFIG_FILE, LAST, save_checkpoint  # noqa: E402
from perception.model import FusionNet, ModelConfig, dummy_inputs  # noqa: E402
from sensors.errors import ConfigError  # noqa: E402

pytestmark = pytest.mark.usefixtures("torch_one_thread")

TINY_BEV = BevConfig(extent=16.0, cell=0.4, heights=(0.25, 0.75), image_size=(64, 48))
TINY = ModelConfig(name="tiny", camera_width=0.125, uss_width=0.125, neck_channels=8, bev_channels=8,
                   decoder_channels=8, bev=TINY_BEV).replace(train={"batch_size": 2, "num_workers": 0})


def run_dir(path, config: ModelConfig = TINY, seed: int = 0):
    """A training run directory holding a freshly initialised model."""
    path.mkdir(parents=True)
    (path / CONFIG_FILE).write_text(config.to_toml())
    torch.manual_seed(seed)
    save_checkpoint(path, LAST, FusionNet(config), {"step": 0})
    return path


def conv(c_in, c_out, k, seed=0, **kw):
    torch.manual_seed(seed)
    return nn.Conv2d(c_in, c_out, k, **kw).eval()


def test_rank_by_ratio_and_by_energy():
    s = torch.tensor([3.0, 2.0, 1.0])  # squares 9, 4, 1 of 14
    assert [rank_for(s, energy=e) for e in (0.5, 9 / 14, 0.9, 13 / 14, 0.99)] == [1, 1, 2, 2, 3]
    assert [rank_for(s, rank_ratio=r) for r in (0.01, 0.5, 1.0)] == [1, 2, 3]


@pytest.mark.parametrize("layer", [
    dict(c_in=12, c_out=20, k=1, stride=2),  # SVD, a strided projection shortcut
    dict(c_in=12, c_out=20, k=3, stride=2, padding=1),  # Tucker-2
    dict(c_in=16, c_out=8, k=3, padding=2, dilation=2, bias=True),
])
def test_full_rank_factorisation_equals_the_convolution(layer):
    c = conv(**layer)
    seq, approx = factorised(c, c.out_channels, c.in_channels) if c.kernel_size[0] > 1 else factorised(
        c, min(c.in_channels, c.out_channels))
    x = torch.randn(2, c.in_channels, 17, 13)
    with torch.no_grad():
        np.testing.assert_allclose(seq(x).numpy(), c(x).numpy(), atol=1e-5)
    np.testing.assert_allclose(approx.numpy(), c.weight.detach().double().numpy(), atol=1e-6)


@pytest.mark.parametrize("k", [1, 3])
def test_reconstruction_error_falls_as_the_rank_rises(k):
    c = conv(32, 48, k, padding=k // 2)
    errors = []
    for ratio in (0.1, 0.25, 0.5, 0.75):
        made = factorise_conv(c, rank_ratio=ratio)
        if made is None:  # no saving left at this rank
            break
        errors.append(made[1])
    assert len(errors) >= 2 and all(a > b for a, b in itertools.pairwise(errors)), errors
    low = factorise_conv(c, energy=0.7)
    # SVD (Eckart-Young): squared relative error = the energy left out <= 0.3; HOSVD: at most the sum over modes
    assert low is not None and low[1] ** 2 <= (0.3 if k == 1 else 0.6) + 1e-6


def test_factorised_model_is_smaller_and_still_runs():
    torch.manual_seed(0)
    model = FusionNet(TINY).eval()
    result = factorise_model(model, rank_ratio=0.5)
    assert result.layers and result.params_after == sum(p.numel() for p in model.parameters())
    assert result.params_after < 0.8 * result.params_before
    assert all(0 <= layer["error"] < 1 for layer in result.layers.values())
    assert model.uss.dilated.weight.shape == (8, 8, 3, 3)  # the functional kernel is not an nn.Conv2d: kept
    classes, occupancy = model(*dummy_inputs(TINY))
    assert classes.shape == (1, 5, 40, 40) and occupancy.shape == (1, 1, 40, 40)
    with pytest.raises(ConfigError, match="exactly one"):
        factorise_model(model, rank_ratio=0.5, energy=0.9)


def test_lowrank_method_end_to_end(tmp_path):
    import onnxruntime as ort

    load_methods()
    source = str(run_dir(tmp_path / "run"))
    entry = METHODS["lowrank"](source, "tiny-lr", None, {"rank_ratio": "0.25", "steps": 0, "threads": 1},
                               tmp_path / "ZOO.toml")
    torch.manual_seed(0)
    dense = export_onnx(FusionNet(TINY), TINY, tmp_path / "dense.onnx")
    assert entry.method == "lowrank" and entry.options["params_after"] < entry.options["params_before"]
    assert entry.size_bytes < dense.stat().st_size
    session = ort.InferenceSession(str(entry.verified_onnx()), providers=["CPUExecutionProvider"])
    feeds = dict(zip(("images", "grid", "valid", "uss"), (t.numpy() for t in dummy_inputs(TINY)), strict=True))
    classes, _ = session.run(None, {i.name: feeds[i.name] for i in session.get_inputs()})
    assert classes.shape == (1, 5, 40, 40) and np.isfinite(classes).all()


def test_e2gc_models_register_and_others_are_refused(tmp_path):
    e2gc = TINY.replace(camera_backbone="resnext50_e2gc_g8", camera_width=0.25)
    entry = register_e2gc(str(run_dir(tmp_path / "e2gc", e2gc)), "tiny-e2gc", tmp_path / "ZOO.toml")
    assert entry.method == "e2gc" and entry.options["group_size"] == {"camera": 8}
    assert entry.options["grouped_convs"] > 0 and entry.verified_onnx().is_file()
    with pytest.raises(ConfigError, match="E2GC backbone"):
        register_e2gc(str(run_dir(tmp_path / "plain")), "tiny-plain", tmp_path / "ZOO.toml")


def test_e2gc_entry_is_compared_with_its_fixed_group_count_baseline(tmp_path):
    from deploy.export import input_shapes
    from deploy.zoo import ZooModel, read_zoo, register

    manifest = tmp_path / "zoo" / "ZOO.toml"
    fixed = TINY.replace(camera_backbone="resnext50_32x4d", camera_width=0.25)
    path = export_onnx(FusionNet(fixed).eval(), fixed, manifest.parent / "tiny-fixed.onnx")
    register(ZooModel("tiny-fixed", path, "", "run", "fp32", "any", TINY_BEV, input_shapes(path)), manifest)
    e2gc = TINY.replace(camera_backbone="resnext50_e2gc_g8", camera_width=0.25)
    entry = METHODS["e2gc"](str(run_dir(tmp_path / "e2gc", e2gc)), "tiny-e2gc", None, {"baseline": "tiny-fixed"},
                            manifest)
    # The baseline is the parent: zoo measure times the two in the same run and lists the ratio.
    assert (entry.parent, entry.options["baseline"]) == ("tiny-fixed", "tiny-fixed")
    assert entry.options["trained"] == str(tmp_path / "e2gc") and "tiny-fixed" in entry.notes
    assert read_zoo(manifest)["tiny-e2gc"].parent == "tiny-fixed"
    with pytest.raises(ConfigError, match="not a zoo model"):
        METHODS["e2gc"](str(tmp_path / "e2gc"), "x", None, {"baseline": "nope"}, manifest)
    other = e2gc.replace(bev=BevConfig(extent=16.0, cell=0.8, heights=(0.25, 0.75), image_size=(64, 48)))
    with pytest.raises(ConfigError, match="same inputs"):
        METHODS["e2gc"](str(run_dir(tmp_path / "other", other)), "x", None, {"baseline": "tiny-fixed"}, manifest)


def test_lowrank_fine_tuning_learns_from_its_source_with_kd(tmp_path, rig):
    from sim_data.simulate import DriveSpec, simulate_drive

    load_methods()
    simulate_drive(DriveSpec("tune", 10, 3), tmp_path / "drives" / "train", rig, scale=0.25)
    source, data = str(run_dir(tmp_path / "run")), str(tmp_path / "drives")
    common = {"rank_ratio": "0.25", "steps": 2, "threads": 1}
    alone = METHODS["lowrank"](source, "tiny-lr", data, common, tmp_path / "ZOO.toml")
    taught = METHODS["lowrank"](source, "tiny-lr-kd", data, {**common, "kd": "true"}, tmp_path / "ZOO.toml")
    # The same first batch and weights: the teacher's term (factorisation moved the student off it) adds to the loss.
    assert taught.options["loss_first"] > alone.options["loss_first"]
