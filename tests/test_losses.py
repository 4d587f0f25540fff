import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402, N812

from perception.bev_config import BevConfig  # noqa: E402
from perception.losses import (  # noqa: E402
    OccupancyLoss,
    class_counts,
    class_weights,
    near_field_weights,
    occupancy_pos_weight,
)
from perception.model import FusionNet, ModelConfig, dummy_inputs  # noqa: E402
from sensors.classes import IGNORE, NUM_CLASSES  # noqa: E402
from sensors.errors import ConfigError  # noqa: E402

COUNTS = [900, 50, 10, 30, 10]  # free dominates, as in a car park


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def labels(seed=0, shape=(2, 16, 16)):
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(0, NUM_CLASSES, shape, generator=g)
    t[:, :3, :4] = IGNORE  # an ego footprint
    return t


# --- weights --------------------------------------------------------------------------------------------------

def test_class_weights_are_inverse_sqrt_frequency_with_unit_mean():
    w = class_weights(COUNTS).numpy()
    freq = np.array(COUNTS) / sum(COUNTS)
    assert w.shape == (NUM_CLASSES,) and w.dtype == np.float32
    assert np.isclose((w * freq).sum(), 1.0, atol=1e-6)  # mean weight over labelled cells
    assert np.isclose(w[1] / w[0], np.sqrt(900 / 50), rtol=1e-5)
    assert np.isclose(w[2], w[4]) and w[2] > w[3] > w[1] > w[0]
    # power 1: every class carries the same total weight; power 0: plain cross-entropy
    w1 = class_weights(COUNTS, power=1.0).numpy()
    assert np.allclose(w1 * freq, 1 / NUM_CLASSES, atol=1e-6)
    assert np.allclose(class_weights(COUNTS, power=0.0).numpy(), 1.0)


def test_weights_from_label_maps_count_every_cell_but_the_ignored():
    maps = [np.full((4, 5), 0, np.uint8), np.array([[1, 1, 2, IGNORE], [3, IGNORE, IGNORE, 0]], np.uint8)]
    assert class_counts(maps).tolist() == [21, 2, 1, 1, 0]
    assert torch.equal(class_weights(maps), class_weights([21, 2, 1, 1, 0]))
    assert torch.equal(class_weights(torch.from_numpy(np.stack([maps[0]] * 2)).long()), class_weights([40, 0, 0, 0, 0]))
    w = class_weights([21, 2, 1, 1, 0]).numpy()
    assert w[4] == w[1:4].max()  # an absent class gets the largest measured weight, not infinity
    with pytest.raises(ValueError, match="label 7"):
        class_counts(np.array([[0, 7]]))
    with pytest.raises(ValueError, match="no labelled cells"):
        class_weights(np.full((3, 3), IGNORE, np.uint8))


def test_occupancy_pos_weight_from_the_free_occupied_ratio():
    assert occupancy_pos_weight(COUNTS) == pytest.approx(np.sqrt(900 / 100))
    assert occupancy_pos_weight(COUNTS, power=1.0) == pytest.approx(9.0)
    assert occupancy_pos_weight([10, 0, 0, 0, 0]) == 1.0


# --- loss -----------------------------------------------------------------------------------------------------

def test_loss_is_the_weighted_mean_over_labelled_cells():
    torch.manual_seed(0)
    target = labels()
    cls = torch.randn(2, NUM_CLASSES, 16, 16)
    occ = torch.randn(2, 1, 16, 16)
    w = class_weights(COUNTS)
    loss = OccupancyLoss(w, pos_weight=3.0, stage1_weight=0.5)(cls, occ, target)

    ref_cls = F.cross_entropy(cls, target, weight=w, ignore_index=IGNORE)
    keep = target != IGNORE
    y = (target[keep] != 0).float()
    ref_occ = F.binary_cross_entropy_with_logits(occ[:, 0][keep], y, pos_weight=torch.tensor(3.0))
    assert torch.allclose(loss["classes"], ref_cls, atol=1e-6)
    assert torch.allclose(loss["occupancy"], ref_occ, atol=1e-6)
    assert torch.allclose(loss["total"], ref_cls + 0.5 * ref_occ, atol=1e-6)
    # by hand, for one cell: -w[t] log softmax / w[t]
    one = OccupancyLoss(w)(cls[:1, :, 5:6, 7:8], occ[:1, :, 5:6, 7:8], target[:1, 5:6, 7:8])["classes"]
    t = target[0, 5, 7]
    assert torch.allclose(one, -torch.log_softmax(cls[0, :, 5, 7], 0)[t], atol=1e-6)


def test_ignored_cells_do_not_matter():
    torch.manual_seed(1)
    target = labels()
    cls = torch.randn(2, NUM_CLASSES, 16, 16, requires_grad=True)
    occ = torch.randn(2, 1, 16, 16, requires_grad=True)
    fn = OccupancyLoss(class_weights(COUNTS), pos_weight=2.0, dice_weight=1.0)
    ref = fn(cls, occ, target)
    ref["total"].backward()
    ignored = target == IGNORE
    assert cls.grad.permute(0, 2, 3, 1)[ignored].abs().max() == 0
    assert occ.grad[:, 0][ignored].abs().max() == 0
    with torch.no_grad():
        cls2, occ2 = cls.clone(), occ.clone()
        cls2.permute(0, 2, 3, 1)[ignored] = 100.0
        occ2[:, 0][ignored] = -100.0
    for key, value in fn(cls2, occ2, target).items():
        assert torch.allclose(value, ref[key]), key

    everything_ignored = torch.full_like(target, IGNORE)
    out = fn(cls, occ, everything_ignored)
    assert all(v.item() == 0 for v in out.values())  # no NaN from an empty mean
    out["total"].backward()


def test_class_weights_shift_the_loss_towards_the_weighted_class():
    target = torch.zeros(1, 4, 4, dtype=torch.long)
    target[0, 0, 0] = 2  # one pedestrian cell among free cells
    cls = torch.zeros(1, NUM_CLASSES, 4, 4)
    cls[:, 0] = 3.0  # predicts free everywhere: right on 15 cells, wrong on the pedestrian
    occ = torch.zeros(1, 1, 4, 4)
    flat = OccupancyLoss()(cls, occ, target)["classes"]
    weighted = OccupancyLoss(torch.tensor([1.0, 1.0, 15.0, 1.0, 1.0]))(cls, occ, target)["classes"]
    p_free = torch.softmax(cls[0, :, 1, 1], 0)[0]
    p_ped = torch.softmax(cls[0, :, 0, 0], 0)[2]
    assert torch.allclose(flat, (-15 * torch.log(p_free) - torch.log(p_ped)) / 16)
    assert torch.allclose(weighted, (-15 * torch.log(p_free) - 15 * torch.log(p_ped)) / 30)


def test_cell_weights_make_a_miss_near_the_car_cost_more():
    target = torch.zeros(1, 4, 4, dtype=torch.long)
    target[0, 0, 0] = 1  # a vehicle cell next to the car, missed; every other cell free and right
    cls = torch.zeros(1, NUM_CLASSES, 4, 4)
    cls[:, 0] = 3.0
    occ = torch.full((1, 1, 4, 4), -2.0)  # "free" everywhere
    near = torch.ones(4, 4)
    near[0, :] = 5.0  # the first row is the near band
    flat = OccupancyLoss()(cls, occ, target)
    weighted = OccupancyLoss(cell_weights=near)(cls, occ, target)
    p_free = torch.softmax(cls[0, :, 1, 1], 0)[0]
    p_veh = torch.softmax(cls[0, :, 0, 0], 0)[1]
    # weighted mean: (5 * miss + 3 * 5 * right-near + 12 * right-far) / (4 * 5 + 12)
    assert torch.allclose(weighted["classes"], (-5 * torch.log(p_veh) - 27 * torch.log(p_free)) / 32)
    assert weighted["classes"] > flat["classes"] and weighted["occupancy"] > flat["occupancy"]
    bce_miss = F.softplus(torch.tensor(2.0))  # -log sigmoid(-2) on the occupied cell
    bce_right = F.softplus(torch.tensor(-2.0))
    assert torch.allclose(weighted["occupancy"], (5 * bce_miss + 27 * bce_right) / 32)
    # all ones is no weighting at all
    cls_r, occ_r, t_r = torch.randn(2, NUM_CLASSES, 16, 16), torch.randn(2, 1, 16, 16), labels(3)
    a = OccupancyLoss(class_weights(COUNTS), 2.0)(cls_r, occ_r, t_r)
    b = OccupancyLoss(class_weights(COUNTS), 2.0, cell_weights=torch.ones(16, 16))(cls_r, occ_r, t_r)
    assert all(torch.allclose(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="do not match the BEV grid"):
        OccupancyLoss(cell_weights=torch.ones(8, 8))(cls_r, occ_r, t_r)
    with pytest.raises(ConfigError, match="cell_weights"):
        OccupancyLoss(cell_weights=torch.zeros(16, 16))


def test_near_field_weights_mark_the_band_round_the_body():
    from sensors.rig import load_rig

    rig = load_rig()
    grid = BevConfig(extent=16.0, cell=0.2).grid(rig)
    assert near_field_weights(rig, grid, 1.0) is None
    w = near_field_weights(rig, grid, 4.0, near_m=1.0)
    assert w.shape == grid.shape and set(np.unique(w)) == {1.0, 4.0}
    d = rig.vehicle.distance_to_body(grid.cell_centres())
    assert np.array_equal(w == 4.0, d <= 1.0)
    body = rig.vehicle
    front = np.array([[body.x_max + 0.5, 0.0], [body.x_max + 1.5, 0.0]])  # 0.5 m and 1.5 m ahead of the bumper
    (r0, c0), (r1, c1) = grid.to_cell(front).astype(int)
    assert w[r0, c0] == 4.0 and w[r1, c1] == 1.0
    wide = near_field_weights(rig, grid, 4.0, near_m=2.0)
    assert (wide == 4.0).sum() > (w == 4.0).sum()


def test_soft_dice_is_zero_for_a_perfect_prediction_and_bad_input_is_named():
    target = labels(2)
    keep = target != IGNORE
    perfect = F.one_hot(torch.where(keep, target, 0), NUM_CLASSES).permute(0, 3, 1, 2).float() * 50
    fn = OccupancyLoss(dice_weight=1.0)
    assert fn(perfect, torch.zeros(2, 1, 16, 16), target)["dice"].item() < 1e-2
    assert fn(-perfect, torch.zeros(2, 1, 16, 16), target)["dice"].item() > 0.9
    bad = target.clone()
    bad[0, 8, 8] = 9
    with pytest.raises(ValueError, match="label 9"):
        fn(perfect, torch.zeros(2, 1, 16, 16), bad)
    with pytest.raises(ConfigError, match="class_weights"):
        OccupancyLoss(torch.ones(3))
    with pytest.raises(ConfigError, match="pos_weight"):
        OccupancyLoss(pos_weight=0.0)


def test_a_tiny_network_overfits_a_fixed_batch():
    torch.manual_seed(0)
    bev = BevConfig(extent=3.2, cell=0.2, heights=(0.5,), image_size=(32, 32))  # 16 x 16 cells
    cfg = ModelConfig(name="overfit", camera_width=0.125, uss_width=0.125, neck_channels=8, bev_channels=8,
                      decoder_channels=8, bev=bev)
    net = FusionNet(cfg).train()
    images, grid, valid, uss = dummy_inputs(cfg, batch=2, seed=1)
    # A target the USS raster explains: occupied where the first channel is high, class by a threshold band.
    target = torch.zeros(2, 16, 16, dtype=torch.long)
    target[uss[:, 0] > 0.6] = 1
    target[uss[:, 0] > 0.85] = 3
    target[:, 7:9, 7:9] = IGNORE
    fn = OccupancyLoss(class_weights(target), occupancy_pos_weight(target))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        out = fn(*net(images, grid, valid, uss), target)
        opt.zero_grad()
        out["total"].backward()
        opt.step()
        losses.append(out["total"].item())
    assert np.mean(losses[-5:]) < 0.4 * np.mean(losses[:3])
