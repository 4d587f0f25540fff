"""Distillation: the soft terms vanish when the student's outputs are the teacher's and equal torch's KL otherwise,
the ensemble averages probabilities, and the method trains a smaller student next to the same student alone
(same steps and seed), records both mIoUs and exports an ONNX that onnxruntime runs."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402, N812
from torch import nn  # noqa: E402

from deploy.compress import METHODS, load_methods, option  # noqa: E402
from deploy.distill import (  # noqa: E402
    DistillLoss,
    FeatureMimic,
    channel_targets,
    channel_term,
    distill_terms,
    ensemble_targets,
    half_width,
    teacher_outputs,
)
from perception.bev_config import BevConfig  # noqa: E402
from perception.checkpoint import CONFIG_FILE, LAST, save_checkpoint  # noqa: E402
from perception.model import FusionNet, ModelConfig, count_parameters, dummy_inputs  # noqa: E402
from sensors.classes import IGNORE  # noqa: E402
from sensors.errors import ConfigError  # noqa: E402
from sim_data.simulate import DriveSpec, simulate_drive  # noqa: E402

pytestmark = pytest.mark.usefixtures("torch_one_thread")

TINY_BEV = BevConfig(extent=16.0, cell=0.4, heights=(0.25, 0.75), image_size=(64, 48))
TINY = ModelConfig(name="tiny", camera_width=0.25, uss_width=0.25, neck_channels=8, bev_channels=8,
                   decoder_channels=8, bev=TINY_BEV).replace(train={"batch_size": 2, "num_workers": 0})
INPUTS = dict.fromkeys(("images", "grid", "valid", "uss"))  # what a fixed teacher ignores


class Fixed(nn.Module):
    """A 'teacher' that answers every batch with the same logits."""

    def __init__(self, classes, occupancy):
        super().__init__()
        self.classes, self.occupancy = classes, occupancy

    def forward(self, images, grid, valid, uss):
        return self.classes, self.occupancy


def logits(seed, shape=(2, 5, 4, 4)):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g) * 3, torch.randn((shape[0], 1, *shape[2:]), generator=g) * 3


def test_soft_terms_vanish_when_the_student_is_the_teacher():
    classes, occupancy = logits(0)
    probs, occupied = ensemble_targets([Fixed(classes, occupancy)], INPUTS, 4.0)
    terms = distill_terms(classes, occupancy, probs, occupied, 4.0)
    assert abs(float(terms["kd"])) < 1e-5 and abs(float(terms["occupancy"])) < 1e-5
    other, other_occ = logits(1)
    moved = distill_terms(other, other_occ, probs, occupied, 4.0)
    assert moved["kd"] > 0.01 and moved["occupancy"] > 0.01
    # the KD term is T^2 times torch's KL(teacher || student) per cell, averaged over cells
    kl = F.kl_div(F.log_softmax(other / 4.0, 1), probs, reduction="none").sum(1).mean()
    assert float(moved["kd"]) == pytest.approx(16 * float(kl), rel=1e-5)


def test_the_ensemble_averages_probabilities_and_the_mask_selects_cells():
    (a, oa), (b, ob) = logits(2), logits(3)
    probs, occupied = ensemble_targets([Fixed(a, oa), Fixed(b, ob)], INPUTS,
                                       2.0)
    assert torch.allclose(probs, (torch.softmax(a / 2, 1) + torch.softmax(b / 2, 1)) / 2)
    assert torch.allclose(occupied, (torch.sigmoid(oa) + torch.sigmoid(ob)) / 2)
    mask = torch.zeros(2, 4, 4, dtype=torch.bool)
    mask[0, 1, 2] = True  # one cell: the masked mean is that cell's value
    student, student_occ = logits(4)
    one = distill_terms(student, student_occ, probs, occupied, 2.0, mask)
    cell = distill_terms(student[:1, :, 1:2, 2:3], student_occ[:1, :, 1:2, 2:3], probs[:1, :, 1:2, 2:3],
                         occupied[:1, :, 1:2, 2:3], 2.0)
    assert torch.allclose(one["kd"], cell["kd"]) and torch.allclose(one["occupancy"], cell["occupancy"])


def test_distill_loss_weights_its_terms():
    classes, occupancy = logits(5)
    batch = INPUTS | {"target": torch.zeros(2, 4, 4, dtype=torch.long)}
    hard = lambda b, c, o: {"total": torch.tensor(2.0)}  # noqa: E731
    loss = DistillLoss([Fixed(classes, occupancy)], hard, temperature=3.0, hard_weight=0.25)
    out = loss(batch, classes, occupancy)
    assert float(out["total"]) == pytest.approx(0.5, abs=1e-5)  # soft terms 0, 0.25 * hard 2


def test_half_width_student_is_smaller_and_options_are_checked():
    student = half_width(TINY)
    assert student.bev == TINY.bev and student.bev_channels == 4
    assert count_parameters(FusionNet(student)) < 0.5 * count_parameters(FusionNet(TINY))
    assert option({"steps": "7"}, "steps", 1, int) == 7 and option({}, "lr", 0.1) == 0.1
    with pytest.raises(ConfigError, match="temperature"):
        option({"temperature": "-1"}, "temperature", 4.0, float, 1e-3, 100)


def test_distill_method_end_to_end(tmp_path, rig):
    import onnxruntime as ort

    root = tmp_path / "data"
    simulate_drive(DriveSpec("tune", 10, 3), root / "train", rig, scale=0.25)
    run = tmp_path / "teacher"
    run.mkdir()
    (run / CONFIG_FILE).write_text(TINY.to_toml())
    torch.manual_seed(0)
    save_checkpoint(run, LAST, FusionNet(TINY), {"step": 0})
    load_methods()
    options = {"steps": 2, "threads": 1, "feature_weight": 1, "channel_weight": 2}
    entry = METHODS["distill"](str(run), "tiny-student", str(root), options, tmp_path / "ZOO.toml")
    assert entry.method == "distill" and entry.options["teachers"] == [str(run)]
    assert entry.options["student"] == "tiny-half" and entry.options["eval_frames"] == 3
    assert {"miou_distilled", "miou_alone"} <= set(entry.metrics)
    assert entry.options["student_config"]["bev_channels"] == 4 and entry.options["feature_weight"] == 1
    assert entry.options["channel_weight"] == 2 and entry.options["channel_temperature"] == 4.0
    assert "trained alone" in entry.notes
    session = ort.InferenceSession(str(entry.verified_onnx()), providers=["CPUExecutionProvider"])
    feeds = dict(zip(("images", "grid", "valid", "uss"), (t.numpy() for t in dummy_inputs(TINY)), strict=True))
    classes, occupancy = session.run(None, {i.name: feeds[i.name] for i in session.get_inputs()})
    assert classes.shape == (1, 5, 40, 40) and occupancy.shape == (1, 1, 40, 40) and np.isfinite(classes).all()


def test_class_balanced_soft_terms_weigh_cells_by_their_label():
    (t, to), (st, so) = logits(6), logits(7)
    probs, occupied = ensemble_targets([Fixed(t, to)], INPUTS, 2.0)
    target = torch.zeros(2, 4, 4, dtype=torch.long)
    target[0, 1, 2] = 3  # one obstacle cell among free ones
    target[1, 0, 0] = IGNORE
    weights = torch.tensor([0.0, 1.0, 1.0, 1.0, 1.0])  # free cells weigh nothing: only the obstacle cell counts
    loss = DistillLoss([Fixed(t, to)], None, temperature=2.0, class_weights=weights)
    out = loss(INPUTS | {"target": target}, st, so)
    cell = distill_terms(st[:1, :, 1:2, 2:3], so[:1, :, 1:2, 2:3], probs[:1, :, 1:2, 2:3], occupied[:1, :, 1:2, 2:3],
                         2.0)
    assert torch.allclose(out["kd"], cell["kd"]) and torch.allclose(out["occupancy"], cell["occupancy"])
    plain = DistillLoss([Fixed(t, to)], None, temperature=2.0)(INPUTS | {"target": target}, st, so)
    assert not torch.allclose(plain["kd"], out["kd"])


def test_fine_tuning_data_joins_splits_in_the_data_sets_one_cache(tmp_path, rig):
    from deploy.distill import train_splits, training_data

    root = tmp_path / "data"
    simulate_drive(DriveSpec("a", 10, 2), root / "train", rig, scale=0.25)
    simulate_drive(DriveSpec("b", 11, 3), root / "train-street", rig, scale=0.25)
    simulate_drive(DriveSpec("v", 12, 2), root / "val", rig, scale=0.25)
    splits = train_splits({"train_splits": "train,train-street"})
    assert splits == ["train", "train-street"] and train_splits({}) == ["train"]
    both = training_data(root, TINY_BEV, splits)
    assert len(both) == 5 and {m.drive for m in both.meta} == {"a", "b"}
    assert len(training_data(root, TINY_BEV, "val")) == 2
    # One cache for the data set, the one `nearfield train` fills: no second cache inside a split's folder.
    assert len(list((root / ".cache").glob("*.npz"))) == 3
    assert not any((root / s / ".cache").exists() for s in ("train", "train-street", "val"))
    with pytest.raises(ConfigError, match="no nope/ folder"):
        training_data(root, TINY_BEV, ["train", "nope"])
    assert len(training_data(root / "train-street", TINY_BEV)) == 3  # a plain folder of logs


@torch.no_grad()
def test_feature_mimic_compares_the_decoders_inputs_through_the_adapter():
    torch.manual_seed(0)
    teacher, student = FusionNet(TINY).eval(), FusionNet(TINY).eval()
    student.load_state_dict(teacher.state_dict())  # the same network: its features are the teacher's
    mimic = FeatureMimic(teacher, student)
    mimic.attach(student)
    assert "distill_adapter" in dict(student.named_children())
    width = teacher.decoder.trunk[0].in_channels
    mimic.adapter.weight.copy_(torch.eye(width).view(width, width, 1, 1))
    mimic.adapter.bias.zero_()
    args = dummy_inputs(TINY)
    teacher(*args)
    student(*args)
    mask = torch.ones(1, 40, 40)
    assert float(mimic.term(mask)) < 1e-10
    mimic.adapter.weight.mul_(0.5)  # half the student's features: error (f/2)^2 = a quarter of the mean square
    assert float(mimic.term(mask)) == pytest.approx(0.25, rel=1e-4)
    mimic.detach(student)
    assert "distill_adapter" not in dict(student.named_children())
    mimic.features.clear()
    student(*args)
    assert "student" not in mimic.features  # the hook is gone too


def test_feature_mimic_needs_one_decoder():
    late = FusionNet(TINY.replace(fusion="late"))
    with pytest.raises(ConfigError, match="late fusion"):
        FeatureMimic(late, FusionNet(TINY))


def test_the_default_learning_rates_come_from_the_networks_config_file():
    from deploy.distill import from_scratch_lr
    from perception.model import load_model_config

    shipped = load_model_config("nf-small")
    revision = shipped.replace(train={**shipped.train, "lr": 5e-4})  # a fine-tuned revision's registered config
    assert from_scratch_lr(revision) == shipped.train["lr"] == 2e-3
    assert from_scratch_lr(TINY.replace(train={**TINY.train, "lr": 3e-3})) == 3e-3  # no file of that name


def test_fine_tuning_logs_its_progress_at_every_tenth_of_the_steps(caplog):
    from deploy.distill import fine_tune

    torch.manual_seed(0)
    frame = dict(zip(("images", "grid", "valid", "uss"), (t[0] for t in dummy_inputs(TINY)), strict=True))
    frames = [frame, frame]

    def loss(batch, classes, occupancy):
        return {"total": classes.square().mean() + occupancy.square().mean()}

    with caplog.at_level("INFO", logger="deploy.distill"):
        losses = fine_tune(FusionNet(TINY), frames, 20, 1e-3, loss=loss, batch_size=1, desc="tiny")
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("tiny: step")]
    assert len(losses) == 20 and len(lines) == 10
    assert lines[0].startswith("tiny: step 2 of 20") and lines[-1].startswith("tiny: step 20 of 20")
    # each line's loss is the mean over the steps since the line before
    assert f"loss {sum(losses[18:]) / 2:.4f} (mean of the last 2)" in lines[-1]
    assert lines[-1].endswith(", 0 s left")


def test_channel_term_compares_where_each_class_is_over_the_labelled_cells():
    (t, to), (st, so) = logits(8), logits(9)
    mask = torch.ones(2, 4, 4, dtype=torch.bool)
    mask[0, 0, :] = False  # the ego footprint, say
    maps = channel_targets(teacher_outputs([Fixed(t, to)], INPUTS), 4.0, mask)
    assert float(channel_term(t, to, maps, 4.0, mask)) == pytest.approx(0.0, abs=1e-6)
    # a constant added to a whole map moves no probability between cells
    assert float(channel_term(t + 5.0, to - 2.0, maps, 4.0, mask)) == pytest.approx(0.0, abs=1e-5)
    moved = channel_term(st, so, maps, 4.0, mask)
    # by hand: per (frame, map) a softmax over the frame's labelled cells, T^2 * KL, averaged over frames and maps
    expected = []
    for b in range(2):
        cells = mask[b].flatten()
        for tm, sm in zip(torch.cat([t, to], 1)[b], torch.cat([st, so], 1)[b], strict=True):
            p = torch.softmax(tm.flatten()[cells] / 4.0, 0)
            q = torch.log_softmax(sm.flatten()[cells] / 4.0, 0)
            expected.append(16 * float((p * (p.log() - q)).sum()))
    assert float(moved) == pytest.approx(sum(expected) / len(expected), rel=1e-5)
    # what the student says in cells outside the mask does not count
    elsewhere = st.clone()
    elsewhere[0, :, 0, :] += 100.0
    assert float(channel_term(elsewhere, so, maps, 4.0, mask)) == pytest.approx(float(moved), rel=1e-6)


def test_channel_targets_average_the_teachers_distributions_and_the_loss_adds_the_term():
    (a, oa), (b, ob) = logits(10), logits(11)
    maps = channel_targets(teacher_outputs([Fixed(a, oa), Fixed(b, ob)], INPUTS), 2.0)
    one = lambda c, o: torch.softmax(torch.cat([c, o], 1).flatten(2) / 2.0, 2)  # noqa: E731
    assert torch.allclose(maps.exp(), (one(a, oa) + one(b, ob)) / 2, atol=1e-7)
    batch = INPUTS | {"target": torch.zeros(2, 4, 4, dtype=torch.long)}
    (st, so) = logits(12)
    plain = DistillLoss([Fixed(a, oa)], None, temperature=2.0)(batch, st, so)
    with_channels = DistillLoss([Fixed(a, oa)], None, temperature=2.0, channel_weight=3.0,
                                channel_temperature=2.0)(batch, st, so)
    assert "channel" not in plain and float(with_channels["channel"]) > 0.01
    assert float(with_channels["total"]) == pytest.approx(float(plain["total"]) + 3 * float(with_channels["channel"]),
                                                          rel=1e-5)
