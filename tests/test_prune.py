"""Pruning methods: structured channel pruning reaches its FLOPs target with a really smaller network and keeps the
deploy contract's channels; magnitude / LAMP / ERK masks hit the sparsity and the per-layer minimum; LAMP and ERK
by hand; sparse storage round-trips exactly; every method ends in an ONNX file that onnxruntime runs."""

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torch_pruning")
from torch import nn  # noqa: E402

from deploy.compress import METHODS, compress, load_methods  # noqa: E402
from deploy.export import export_onnx  # noqa: E402
from deploy.prune import (  # noqa: E402
    count_flops,
    count_params,
    erk_densities,
    fixed_channel_layers,
    global_masks,
    lamp_scores,
    load_sparse,
    prunable_weights,
    prune_lift,
    prune_structured,
    save_sparse,
    sparsity_of,
    unstructured_masks,
)
from perception.bev_config import BevConfig  # noqa: E402
from perception.checkpoint import CONFIG_FILE, LAST, save_checkpoint  # noqa: E402
from perception.model import FusionNet, ModelConfig, dummy_inputs  # noqa: E402
from sensors.errors import ConfigError  # noqa: E402
from sim_data.simulate import DriveSpec, simulate_drive  # noqa: E402

pytestmark = pytest.mark.usefixtures("torch_one_thread")

TINY_BEV = BevConfig(extent=16.0, cell=0.4, heights=(0.25, 0.75), image_size=(64, 48))
TINY = ModelConfig(name="tiny", camera_width=0.125, uss_width=0.125, neck_channels=8, bev_channels=8,
                   decoder_channels=8, bev=TINY_BEV).replace(train={"batch_size": 2, "num_workers": 0})
# round_to 1: the tiny network's 8-channel layers cannot shrink in the default multiples of 8.
QUIET = {"threads": 1, "iterative_steps": 20, "round_to": 1}


def tiny_model(config: ModelConfig = TINY, seed: int = 0) -> FusionNet:
    torch.manual_seed(seed)
    return FusionNet(config).eval()


def run_dir(path, config: ModelConfig = TINY, seed: int = 0):
    """A training run directory (what `nearfield train --out` leaves) holding a freshly initialised model."""
    path.mkdir(parents=True)
    (path / CONFIG_FILE).write_text(config.to_toml())
    save_checkpoint(path, LAST, tiny_model(config, seed), {"step": 0})
    return path


def onnx_outputs(path, config: ModelConfig):
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = dict(zip(("images", "grid", "valid", "uss"), (t.numpy() for t in dummy_inputs(config)), strict=True))
    names = {i.name for i in session.get_inputs()}
    return session.run(None, {k: v for k, v in feeds.items() if k in names})


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return str(run_dir(tmp_path_factory.mktemp("run") / "tiny"))


@pytest.fixture(scope="module")
def data(tmp_path_factory, rig):
    root = tmp_path_factory.mktemp("drives")
    simulate_drive(DriveSpec("tune", 10, 3), root / "train", rig, scale=0.25)
    return str(root)


# --- structured -------------------------------------------------------------------------------------------------

def test_structured_pruning_reaches_the_flops_target_and_keeps_the_contract():
    model = tiny_model()
    fixed = {id(m): m.out_channels for layer in fixed_channel_layers(model) for m in layer.modules()
             if isinstance(m, nn.Conv2d)}
    result = prune_structured(model, 0.5, resolution=20, round_to=1)
    assert 0.35 <= result.flops_ratio <= 0.5  # within one 5 % step of every layer below the target
    assert result.flops_after == count_flops(model, TINY) and result.params_after == count_params(model)
    assert result.params_after < 0.7 * result.params_before
    for layer in fixed_channel_layers(model):  # the lift, the dilated conv and the classifiers keep their channels
        for m in layer.modules():
            if isinstance(m, nn.Conv2d):
                assert m.out_channels == fixed[id(m)]
    assert model.uss.dilated.weight.shape == (8, 8, 3, 3)
    classes, occupancy = model(*dummy_inputs(TINY))
    assert classes.shape == (1, 5, 40, 40) and occupancy.shape == (1, 1, 40, 40)
    assert result.channels and all(after < before for before, after in result.channels.values())


@torch.no_grad()
def test_pruning_lift_channels_that_carry_nothing_keeps_the_outputs():
    # Neck channels 1, 4 and 6 silenced (weights, BatchNorm scale and shift 0: they lift zeros into BEV). Pruning
    # the lift to the other five must pick exactly those and leave every output as it was: a wrong c*Z + z mapping
    # of the consumer's input channels (e.g. z*C + c) would feed the 1x1 the wrong heights and change them.
    model = tiny_model()
    conv, bn = model.camera.neck.out[0], model.camera.neck.out[1]
    silent = [1, 4, 6]
    conv.weight[silent] = 0
    bn.weight[silent], bn.bias[silent], bn.running_mean[silent] = 0, 0, 0
    args = dummy_inputs(TINY)
    before = model(*args)
    kept = prune_lift(model, 5)
    assert kept == [0, 2, 3, 5, 7]
    assert conv.weight.shape[0] == bn.num_features == bn.running_var.shape[0] == 5
    assert model.camera_bev[0][0].in_channels == 5 * len(TINY.bev.heights)
    after = model(*args)
    for b, a in zip(before, after, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    with pytest.raises(ConfigError, match="lift_channels"):
        prune_lift(model, 6)  # more than it has now


def test_structured_pruning_with_lift_channels_shrinks_the_lift_and_still_meets_the_target():
    model = tiny_model()
    result = prune_structured(model, 0.5, resolution=20, round_to=1, lift_channels=4)
    assert result.lift_channels == [8, 4] and result.flops_ratio <= 0.5
    assert model.camera.neck.out[0].out_channels == 4
    classes, _ = model(*dummy_inputs(TINY))
    assert classes.shape == (1, 5, 40, 40)
    early = tiny_model(TINY.replace(fusion="early"))
    with pytest.raises(ConfigError, match="no camera BEV compressor"):
        prune_lift(early, 4)
    with pytest.raises(ConfigError, match="no camera BEV compressor"):  # not an AttributeError on the missing neck
        prune_structured(tiny_model(TINY.replace(modality="uss")), 0.5, resolution=20, round_to=1, lift_channels=4)


def test_grouped_convolutions_lose_the_same_channels_in_every_group():
    config = TINY.replace(camera_backbone="resnext50_32x4d", camera_width=0.5)  # 32 groups of 2 channels
    model = tiny_model(config)
    groups = {n: m.groups for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.groups > 1}
    result = prune_structured(model, 0.6, resolution=20, round_to=1)
    assert result.flops_ratio <= 0.6
    grouped = {n: m for n, m in model.named_modules() if n in groups}
    assert all(m.groups == groups[n] and m.in_channels % m.groups == 0 and m.out_channels % m.groups == 0
               for n, m in grouped.items())
    assert any(m.in_channels < 2 * m.groups for m in grouped.values())  # some really lost channels per group
    model(*dummy_inputs(config))


def test_pruned_channel_counts_stay_multiples_of_round_to():
    config = TINY.replace(camera_width=0.25, uss_width=0.25)  # 16..128 channels
    model = tiny_model(config)
    result = prune_structured(model, 0.6, resolution=20, round_to=8)
    assert result.flops_ratio <= 0.6 and result.channels
    assert all(after % 8 == 0 for _, after in result.channels.values()), result.channels
    model(*dummy_inputs(config))


def test_an_unreachable_flops_target_says_so():
    with pytest.raises(ConfigError, match="flops_ratio"):
        prune_structured(tiny_model(), 1.5)


def test_structured_method_makes_a_smaller_onnx_that_runs(tmp_path, source, data):
    load_methods()
    manifest = tmp_path / "ZOO.toml"
    entry = METHODS["prune-structured"](source, "tiny-pruned", data, {**QUIET, "flops_ratio": 0.5, "steps": 2},
                                        manifest)
    dense = export_onnx(tiny_model(), TINY, tmp_path / "dense.onnx")
    assert entry.method == "prune-structured" and entry.parent == source
    assert entry.size_bytes < 0.8 * dense.stat().st_size
    assert entry.options["params_after"] < entry.options["params_before"]
    assert entry.options["gflops_after"] <= 0.5 * entry.options["gflops_before"] + 1e-4
    assert entry.options["fine_tune_steps"] == 2 and entry.options["channels"]
    assert (entry.options["lift_channels_before"], entry.options["lift_channels"]) == (8, 6)  # sqrt(0.5) * 8
    classes, occupancy = onnx_outputs(entry.verified_onnx(), TINY)
    assert classes.shape == (1, 5, 40, 40) and np.isfinite(classes).all() and occupancy.shape == (1, 1, 40, 40)
    # The same with the unpruned source as teacher: its predictions, which pruning moved the student off, add a KL.
    taught = METHODS["prune-structured"](source, "tiny-pruned-kd", data, {**QUIET, "flops_ratio": 0.5, "steps": 2,
                                                                          "kd": "true"}, manifest)
    assert taught.options["loss_first"] > entry.options["loss_first"]


def test_compress_dispatches_without_data_when_no_fine_tuning(tmp_path, source):
    entry = compress("prune-structured", source, "p0", None, {**QUIET, "steps": 0, "flops_ratio": "0.7"},
                     tmp_path / "ZOO.toml")
    assert entry.options["fine_tune_steps"] == 0 and entry.options["gflops_after"] <= 0.7 * entry.options[
        "gflops_before"] + 1e-4
    with pytest.raises(ConfigError, match="needs --data"):
        compress("prune-structured", source, "p1", None, {**QUIET, "steps": 1}, tmp_path / "ZOO.toml")
    with pytest.raises(ConfigError, match="flops_ratio='half'"):
        compress("prune-structured", source, "p2", None, {**QUIET, "flops_ratio": "half"}, tmp_path / "ZOO.toml")
    # The same name again: refused before pruning, unless replacing, which the method's registration then does.
    before = (tmp_path / "ZOO.toml").read_bytes()
    with pytest.raises(ConfigError, match=r"zoo model p0 is in .* already"):
        compress("prune-structured", source, "p0", None, {**QUIET, "steps": 0, "flops_ratio": "0.5"},
                 tmp_path / "ZOO.toml")
    assert (tmp_path / "ZOO.toml").read_bytes() == before
    again = compress("prune-structured", source, "p0", None, {**QUIET, "steps": 0, "flops_ratio": "0.5"},
                     tmp_path / "ZOO.toml", replace=True)
    assert again.options["flops_ratio"] == 0.5 and again.verified_onnx()
    assert "calibration" not in again.options  # only the options the method reads are recorded


# --- unstructured -----------------------------------------------------------------------------------------------

def test_lamp_scores_by_hand():
    w = torch.tensor([[1.0, -3.0], [2.0, 0.0]])
    # squares 1, 9, 4, 0; "at least as large" sums: 0 -> 14, 1 -> 14, 4 -> 13, 9 -> 9
    expected = torch.tensor([[1 / 14, 1.0], [4 / 13, 0.0]], dtype=torch.float64)
    assert torch.allclose(lamp_scores(w), expected)


def test_global_masks_keep_the_largest_scores_and_the_per_layer_minimum():
    g = torch.Generator().manual_seed(0)
    scores = {"big": torch.rand(1000, generator=g) + 1.0, "small": torch.rand(200, generator=g)}
    masks = global_masks(scores, density=0.3, min_density=0.1)
    assert sum(int(m.sum()) for m in masks.values()) == 360  # 30 % of 1200 exactly
    assert int(masks["small"].sum()) == 20  # held at its minimum: a global threshold alone would keep none
    assert scores["small"][masks["small"]].min() >= scores["small"][~masks["small"]].max()
    assert int(masks["big"].sum()) == 340
    assert scores["big"][masks["big"]].min() >= scores["big"][~masks["big"]].max()
    with pytest.raises(ConfigError, match="min_density"):
        global_masks(scores, density=0.05, min_density=0.1)


def test_erk_densities_follow_the_formula_and_the_global_budget():
    shapes = {"thin": (8, 4, 3, 3), "wide": (64, 64, 3, 3), "fc": (10, 64)}
    d = erk_densities(shapes, 0.05)
    sizes = {n: math.prod(s) for n, s in shapes.items()}
    assert sum(d[n] * sizes[n] for n in shapes) == pytest.approx(0.05 * sum(sizes.values()), rel=1e-6)
    raw = {"thin": (8 + 4 + 9) / (8 * 4 * 9), "wide": (64 + 64 + 9) / (64 * 64 * 9), "fc": 74 / 640}
    unclipped = [n for n in shapes if d[n] < 1]
    ratios = {n: d[n] / raw[n] for n in unclipped}
    assert len(unclipped) == 3 and max(ratios.values()) == pytest.approx(min(ratios.values()), rel=1e-6)
    assert d["thin"] > d["wide"]


@pytest.mark.parametrize("how", ["magnitude", "lamp", "random"])
def test_unstructured_masks_reach_the_sparsity_and_the_minimum(how):
    model = tiny_model()
    masks = unstructured_masks(model, how, 0.8, min_density=0.06, seed=3)
    weights = prunable_weights(model)
    assert set(masks) == set(weights) and all(masks[n].shape == weights[n].shape for n in masks)
    assert abs(sparsity_of(masks) - 0.8) < 0.01
    minimum = min(float(m.float().mean()) for m in masks.values())
    assert minimum >= 0.06 - 1 / min(m.numel() for m in masks.values())
    if how == "magnitude":  # layers above their minimum share one |w| threshold
        free = [n for n, m in masks.items() if m.sum() > math.ceil(0.06 * m.numel())]
        kept = min(float(weights[n].detach().abs()[masks[n]].min()) for n in free)
        dropped = max(float(weights[n].detach().abs()[~masks[n]].max()) for n in free)
        assert kept >= dropped


def test_sparse_storage_round_trips_exactly(tmp_path):
    g = torch.Generator().manual_seed(1)
    w = torch.randn(64, 64, 3, 3, generator=g)
    w[torch.rand(w.shape, generator=g) < 0.9] = 0
    state = {"conv.weight": w, "bn.weight": torch.randn(16, generator=g), "empty.weight": torch.zeros(4, 300),
             "count": torch.tensor(7)}
    path = save_sparse(state, tmp_path / "w.npz")
    back = load_sparse(path)
    assert set(back) == set(state)
    for k, v in state.items():
        np.testing.assert_array_equal(back[k], v.numpy())
        assert back[k].dtype == v.numpy().dtype
    assert path.stat().st_size < 0.25 * w.numel() * 4  # 10 % of the values, 2-byte column indices
    dense = save_sparse(state, tmp_path / "dense.npz", sparse=set())
    np.testing.assert_array_equal(load_sparse(dense)["conv.weight"], w.numpy())


@pytest.mark.parametrize("how", ["magnitude", "lamp", "random"])
def test_unstructured_methods_end_to_end(tmp_path, source, data, how):
    load_methods()
    manifest = tmp_path / "ZOO.toml"
    entry = METHODS[f"prune-{how}"](source, f"tiny-{how}", data, {"threads": 1, "sparsity": 0.7, "steps": 2},
                                    manifest)
    assert entry.method == f"prune-{how}" and "neither smaller nor faster" in entry.notes
    assert abs(entry.options["achieved_sparsity"] - 0.7) < 0.01
    assert min(entry.options["layer_density"].values()) >= 0.05 - 0.01
    sparse = load_sparse(manifest.parent / entry.options["sparse_file"])
    for name, density in entry.options["layer_density"].items():  # fine-tuning kept the masks
        assert np.count_nonzero(sparse[name]) <= math.ceil((density + 5e-5) * sparse[name].size)  # 4 decimals
    model = FusionNet(TINY)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in sparse.items()})  # the sparse file is the model
    import onnx
    from onnx import numpy_helper

    path = entry.verified_onnx()
    convs = [numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer if len(i.dims) == 4]
    zeros = sum(int((c == 0).sum()) for c in convs)
    pruned = sum(sparse[n].size for n in entry.options["layer_density"])
    assert zeros >= 0.69 * pruned  # dense zeros in the ONNX (BatchNorm folding keeps a zero weight zero)
    assert 0 < entry.options["sparse_size_mb"] < entry.options["dense_size_mb"]
    classes, occupancy = onnx_outputs(path, TINY)
    with torch.no_grad():
        expected = model.eval()(*dummy_inputs(TINY))
    np.testing.assert_allclose(classes, expected[0].numpy(), atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(occupancy, expected[1].numpy(), atol=1e-4, rtol=1e-4)


class Certain(nn.Module):
    """A stand-in teacher sure that every cell holds a structure (class 3), occupied."""

    def forward(self, images, grid, valid, uss):
        classes = torch.full((uss.shape[0], 5, *uss.shape[-2:]), -10.0)
        classes[:, 3] = 10.0
        return classes, torch.full((uss.shape[0], 1, *uss.shape[-2:]), 10.0)


def test_fine_tuning_with_a_teacher_adds_its_soft_targets_to_the_loss(data):
    # The first step's loss is the labelled loss alone without a teacher; a teacher whose predictions the fresh
    # student does not share adds the KL terms (several nats per cell for this one).
    from deploy.distill import tune, wants_teacher

    opts = {"threads": 1, "seed": 0}
    plain = tune(tiny_model(), TINY, data, 1, opts, "t")
    taught = tune(tiny_model(), TINY, data, 1, opts, "t", teacher=Certain())
    assert taught[0] > plain[0] + 1.0
    assert wants_teacher({"kd": "true"}) and not wants_teacher({}) and not wants_teacher({"kd": "false"})
