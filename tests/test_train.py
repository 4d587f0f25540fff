"""Trainer on tiny simulated drives: the loss falls, a resumed run equals an uninterrupted one bit for bit,
checkpoints are safetensors + TOML and load by run directory or registered name, a tampered file fails its
checksum; the schedule, the global batches and the seeded augmentation by hand."""

import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from safetensors.torch import load_file  # noqa: E402

from perception.bev_config import BevConfig  # noqa: E402
from perception.checkpoint import ChecksumError, checkpoint_file, checkpoint_files  # noqa: E402
from perception.dataset import DriveDataset  # noqa: E402
from perception.model import ModelConfig, load_model_config  # noqa: E402
from perception.registry import load_trained, read_manifest, register_trained  # noqa: E402
from perception.train import (  # noqa: E402
    GlobalBatches,
    SeededAugment,
    TrainOptions,
    UssDropout,
    lr_at,
    train,
)
from sensors.errors import ConfigError  # noqa: E402
from sim_data.simulate import DriveSpec, simulate_drive  # noqa: E402

# The simulator's 16 m ground truth at 0.4 m (40 x 40 cells), two heights, 64 x 48 images, 1/8-width backbones.
TINY_BEV = BevConfig(extent=16.0, cell=0.4, heights=(0.25, 0.75), image_size=(64, 48))
TINY = ModelConfig(name="tiny", camera_width=0.125, uss_width=0.125, neck_channels=8, bev_channels=8,
                   decoder_channels=8, bev=TINY_BEV).replace(
    train={"batch_size": 2, "epochs": 10, "lr": 3e-3, "num_workers": 0, "camera_dropout": 0.3, "uss_dropout": 0.3})
QUIET = {"threads": 1, "progress": False}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def data(tmp_path_factory, rig):
    """Two 3-frame training drives and one 2-frame validation drive at a quarter of the native resolution."""
    root = tmp_path_factory.mktemp("drives")
    for i in range(2):
        simulate_drive(DriveSpec(f"train-{i}", 10 + i, 3), root / "train", rig, scale=0.25)
    simulate_drive(DriveSpec("val-0", 50, 2), root / "val", rig, scale=0.25)
    train_set = DriveDataset([root / "train"], TINY_BEV, cache_dir=root / ".cache", progress=False)
    val_set = DriveDataset([root / "val"], TINY_BEV, cache_dir=root / ".cache", progress=False)
    return train_set, val_set


@pytest.fixture(scope="module")
def run(tmp_path_factory, data):
    """A 12-step run with validation (4 epochs of 3 steps)."""
    out = tmp_path_factory.mktemp("run") / "tiny"
    result = train(TINY, *data, out, TrainOptions(epochs=4, **QUIET))
    return out, result


def test_loss_falls_over_a_few_dozen_steps(tmp_path, data):
    cfg = TINY.replace(train={**TINY.train, "lr": 5e-3})
    result = train(cfg, data[0], None, tmp_path / "run", TrainOptions(epochs=12, augment=False, **QUIET))
    losses = [r["loss"] for r in result.history]
    assert result.steps == 36 and len(losses) == 12
    assert np.mean(losses[-3:]) < 0.75 * losses[0], losses


def test_resume_continues_exactly(tmp_path, data):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    train(TINY, *data, whole, TrainOptions(max_steps=5, **QUIET))
    train(TINY, *data, parts, TrainOptions(max_steps=2, **QUIET))  # stops inside the first epoch
    resumed = train(None, *data, parts, TrainOptions(max_steps=5, resume=True, **QUIET))
    assert resumed.steps == 5
    for which in ("weights", "state"):
        a, b = (load_file(str(checkpoint_file(d, "last", which))) for d in (whole, parts))
        assert set(a) == set(b)
        for k in a:
            assert torch.equal(a[k], b[k]), (which, k)
    records = [json.loads(line) for line in (parts / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["partial"]) for r in records] == [(2, True), (3, False), (5, True)]


def test_resume_refuses_what_would_not_continue_exactly(tmp_path, data):
    with pytest.raises(ConfigError, match="nothing to resume"):
        train(None, *data, tmp_path / "none", TrainOptions(resume=True, **QUIET))
    train(TINY, *data, tmp_path / "r", TrainOptions(max_steps=1, **QUIET))
    with pytest.raises(ConfigError, match="already holds a training run"):
        train(TINY, *data, tmp_path / "r", TrainOptions(max_steps=1, **QUIET))
    with pytest.raises(ConfigError, match="epochs=10"):
        train(None, *data, tmp_path / "r", TrainOptions(resume=True, epochs=3, **QUIET))
    with pytest.raises(ConfigError, match="differs"):
        train(TINY.replace(bev_channels=4), *data, tmp_path / "r", TrainOptions(resume=True, **QUIET))


def test_checkpoints_are_safetensors_and_toml_and_load_by_run_dir(run, data):
    out, result = run
    best_step = json.loads((out / "best.json").read_text())["step"]
    assert sorted(p.name for p in out.iterdir()) == sorted([  # each checkpoint's files named after its step, no more
        "best.json", f"best-{best_step:06d}.safetensors", "config.toml", "last-000012.safetensors",
        "last-000012.state.safetensors", "last.json", "metrics.jsonl"])
    assert load_model_config(out / "config.toml").to_dict() == TINY.to_dict()
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [3, 6, 9, 12] and all(r["val_frames"] == 2 for r in records)
    best = json.loads((out / "best.json").read_text())
    assert best["val_miou"] == max(r["val_miou"] for r in records) == result.best_miou
    model, config = load_trained(out)
    assert not model.training and config.to_dict() == TINY.to_dict()
    saved = load_file(str(checkpoint_file(out, "best")))
    for k, v in model.state_dict().items():
        assert torch.equal(v, saved[k])


def test_a_tampered_weights_file_fails_its_checksum(tmp_path, run):
    out = tmp_path / "copy"
    shutil.copytree(run[0], out)
    best = checkpoint_file(out, "best")
    raw = bytearray(best.read_bytes())
    raw[-5] ^= 0xFF  # one byte of the last tensor's data
    best.write_bytes(bytes(raw))
    with pytest.raises(ChecksumError, match="sha256") as e:
        load_trained(out)
    # A run's checkpoint, not a registered model: no advice to re-download or re-register it.
    assert "checkpoint of the training run" in str(e.value) and "re-register" not in str(e.value)


def test_registered_models_load_by_name_in_half_precision(tmp_path, run, data):
    manifest = tmp_path / "weights" / "MODELS.toml"
    entry = register_trained(run[0], "nf-tiny", "2 x 3 simulated frames", manifest)
    assert entry.dtype == "float16" and read_manifest(manifest)["nf-tiny"].sha256 == entry.sha256
    assert entry.val_miou == pytest.approx(run[1].best_miou, abs=1e-4)
    registered, _ = load_trained("nf-tiny", manifest=manifest)
    original, _ = load_trained(run[0])
    assert all(p.dtype == torch.float32 for p in registered.parameters())
    item = data[1][0]
    inputs = [item[k][None] for k in ("images", "grid", "valid", "uss")]
    with torch.no_grad():
        a, b = registered(*inputs)[0], original(*inputs)[0]
    assert torch.allclose(a, b, atol=0.05 * b.abs().max().item())  # float16 storage, not bit-exact
    with pytest.raises(ConfigError, match="known: nf-tiny"):
        load_trained("nf-huge", manifest=manifest)
    raw = bytearray(entry.weights.read_bytes())
    raw[-3] ^= 0x01
    entry.weights.write_bytes(bytes(raw))
    with pytest.raises(ChecksumError):
        load_trained("nf-tiny", manifest=manifest)


def test_schedules_by_hand():
    # cosine, 100 steps, 5 of warm-up: linear up to the peak at step 4, then down to 1 % at the last step.
    assert lr_at(0, 100, 1.0) == pytest.approx(0.2)
    assert lr_at(4, 100, 1.0) == pytest.approx(1.0)
    assert lr_at(5, 100, 1.0) == pytest.approx(1.0)
    assert lr_at(99, 100, 1.0) == pytest.approx(0.01)
    assert lr_at(52, 100, 1.0) == pytest.approx(0.505, abs=1e-3)  # halfway through the decay
    # one-cycle: from peak/25 at step 0, the peak after 30 %, then to peak/25e4.
    assert lr_at(0, 100, 1.0, "onecycle") == pytest.approx(1 / 25)
    assert lr_at(30, 100, 1.0, "onecycle") == pytest.approx(1.0)
    assert lr_at(99, 100, 1.0, "onecycle") == pytest.approx(1 / 25e4)


def test_global_batches_split_across_processes_and_resume_mid_epoch():
    one = list(GlobalBatches(10, 4, seed=3, epoch=2))
    halves = [list(GlobalBatches(10, 4, seed=3, epoch=2, rank=r, world=2)) for r in (0, 1)]
    assert len(one) == 2 and all(len(b) == 4 for b in one)
    for k in range(2):
        assert sorted(one[k]) == sorted(halves[0][k] + halves[1][k])
        assert all(epoch == 2 for _, epoch in one[k])
    assert list(GlobalBatches(10, 4, seed=3, epoch=2, start=1)) == one[1:]
    assert list(GlobalBatches(10, 4, seed=3, epoch=3)) != one  # a new order every epoch
    with pytest.raises(ConfigError, match="multiple"):
        GlobalBatches(10, 3, seed=0, epoch=0, world=2)


class _Items(torch.utils.data.Dataset):
    def __len__(self):
        return 3

    def __getitem__(self, i):
        return {"images": torch.full((4, 3, 8, 8), 100, dtype=torch.uint8), "valid": torch.ones(4, 2, 4, 4),
                "uss": torch.ones(6, 4, 4)}


def test_augmentation_is_a_function_of_seed_epoch_and_index():
    from perception.dataset import PhotometricJitter

    view = SeededAugment(_Items(), seed=5, augments=[PhotometricJitter(), UssDropout(0.5)])
    state = torch.get_rng_state()
    a, b, c = view[(1, 0)], view[(1, 0)], view[(1, 1)]
    assert torch.equal(torch.get_rng_state(), state)  # the global generator is left alone
    assert torch.equal(a["images"], b["images"]) and torch.equal(a["uss"], b["uss"])
    assert not torch.equal(a["images"], c["images"])
    assert torch.equal(UssDropout(1.0)(a)["uss"], torch.zeros(6, 4, 4))
    assert UssDropout(0.0)(a) is a


def test_fine_tuning_starts_from_the_given_weights_and_records_them(tmp_path, run, data):
    from perception.model import FusionNet
    from perception.train import load_init_weights

    source, _ = load_trained(run[0])
    fresh = FusionNet(TINY)
    sha = load_init_weights(fresh, str(run[0]))
    assert sha == json.loads((run[0] / "best.json").read_text())["weights_sha256"]
    for k, v in source.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k
    # One step from the source moves the weights only a little; from scratch they are far from it.
    tuned = train(TINY.replace(train={**TINY.train, "lr": 1e-5}), data[0], None, tmp_path / "ft",
                  TrainOptions(max_steps=1, augment=False, init=str(run[0]), **QUIET))
    record = json.loads((tuned.run_dir / "last.json").read_text())
    assert record["init_sha256"] == sha and record["plan"]["init"] == str(run[0])
    after = load_file(str(checkpoint_file(tuned.run_dir, "last")))
    key = "camera.backbone.stem.0.weight" if "camera.backbone.stem.0.weight" in after else next(
        k for k, v in after.items() if v.dim() == 4)
    ref = source.state_dict()[key]
    assert (after[key] - ref).abs().max() < 0.01 * ref.abs().max()
    scratch = FusionNet(TINY).state_dict()[key]
    assert (scratch - ref).abs().max() > 0.1 * ref.abs().max()
    # A resume continues the fine-tuning run without --init again and keeps the source's sha256 in its records.
    resumed = train(None, data[0], None, tuned.run_dir, TrainOptions(max_steps=2, augment=False, resume=True, **QUIET))
    record = json.loads((resumed.run_dir / "last.json").read_text())
    assert resumed.steps == 2 and record["init_sha256"] == sha and record["plan"]["init"] == str(run[0])


def test_fine_tuning_refuses_another_network_and_unknown_names(tmp_path, run, data):
    with pytest.raises(ConfigError, match="differs in bev_channels"):
        train(TINY.replace(bev_channels=4), data[0], None, tmp_path / "a",
              TrainOptions(max_steps=1, init=str(run[0]), **QUIET))
    with pytest.raises(ConfigError, match="not a registered model"):
        train(TINY, data[0], None, tmp_path / "b", TrainOptions(max_steps=1, init="nf-nonexistent", **QUIET))
    # The [train] table and the name may differ: they do not change the weights' shapes.
    other = TINY.replace(name="tiny-ft", train={**TINY.train, "camera_dropout": 0.0})
    train(other, data[0], None, tmp_path / "c", TrainOptions(max_steps=1, init=str(run[0]), **QUIET))


def test_override_train_sets_validated_fields():
    from perception.model import override_train

    cfg = override_train(TINY, ["train.lr=5e-4", "train.camera_dropout = 0.2", "train.epochs=3"])
    assert (cfg.train["lr"], cfg.train["camera_dropout"], cfg.train["epochs"]) == (5e-4, 0.2, 3)
    assert cfg.bev_channels == TINY.bev_channels
    for bad, message in (("lr=1", "train.KEY=VALUE"), ("train.camera_dropout=2", "camera_dropout"),
                         ("train.nope=1", "unknown field"), ("train.lr=fast", "not a number")):
        with pytest.raises(ConfigError, match=message):
            override_train(TINY, [bad])


def test_training_augments_follow_the_config():
    from perception.dataset import CameraDropout, PhotometricJitter
    from perception.model import override_train
    from perception.train import UssDropout, training_augments

    def kinds(cfg):
        return [type(a) for a in training_augments(cfg)]

    plain = TINY.replace(train={**TINY.train, "camera_dropout": 0.0, "uss_dropout": 0.0})
    assert kinds(plain) == [PhotometricJitter]
    blind = override_train(plain, ["train.camera_blackout=0.3"])
    (drop,) = [a for a in training_augments(blind) if isinstance(a, CameraDropout)]
    assert (drop.p, drop.blackout) == (0.0, 0.3)
    assert kinds(override_train(TINY, ["train.camera_blackout=0.3"])) == [PhotometricJitter, CameraDropout, UssDropout]
    with pytest.raises(ConfigError, match="camera_blackout is for fusion"):  # refused with the config itself
        blind.replace(modality="camera")


def test_near_weight_weighs_the_loss_in_the_band_round_the_body(tmp_path, data, rig, monkeypatch):
    import perception.train as tr

    seen = []
    real = tr.OccupancyLoss
    monkeypatch.setattr(tr, "OccupancyLoss", lambda *a, **kw: seen.append(kw.get("cell_weights")) or real(*a, **kw))
    cfg = TINY.replace(train={**TINY.train, "near_weight": 3.0, "near_m": 0.8})
    train(cfg, data[0], None, tmp_path / "near", TrainOptions(max_steps=1, **QUIET))
    train(TINY, data[0], None, tmp_path / "plain", TrainOptions(max_steps=1, **QUIET))
    near, plain = seen
    assert plain is None
    grid = TINY_BEV.grid(rig)
    assert near.shape == grid.shape
    assert np.array_equal(near == 3.0, rig.vehicle.distance_to_body(grid.cell_centres()) <= 0.8)
    assert np.all((near == 3.0) | (near == 1.0)) and 0 < (near == 3.0).mean() < 0.2
    with pytest.raises(ConfigError, match="near_weight"):
        from perception.model import override_train

        override_train(TINY, ["train.near_weight=0.5"])  # below 1 would weigh the near band down


def test_train_from_dir_joins_several_training_folders(tmp_path, rig, monkeypatch):
    import perception.train as tr

    root = tmp_path / "data"
    simulate_drive(DriveSpec("a-0", 10, 2), root / "train", rig, scale=0.25)
    simulate_drive(DriveSpec("b-0", 20, 3), root / "train-street", rig, scale=0.25)
    simulate_drive(DriveSpec("v-0", 50, 2), root / "val", rig, scale=0.25)
    seen = {}

    def fake_train(config, train_set, val_set, out_dir, options=None, rig=None):
        seen.update(train=sorted({m.drive for m in train_set.meta}), frames=len(train_set), val=len(val_set))

    monkeypatch.setattr(tr, "train", fake_train)
    tr.train_from_dir(TINY, root, tmp_path / "run", TrainOptions(**QUIET), train_splits=["train", "train-street"])
    assert seen == {"train": ["a-0", "b-0"], "frames": 5, "val": 2}
    assert len(list((root / ".cache").glob("*.npz"))) == 3  # one cache for every split
    with pytest.raises(ConfigError, match="no nope/ folder"):
        tr.train_from_dir(TINY, root, tmp_path / "run", TrainOptions(**QUIET), train_splits=["train", "nope"])
    with pytest.raises(ConfigError, match="validation split"):
        tr.train_from_dir(TINY, root, tmp_path / "run", TrainOptions(**QUIET), train_splits=["val"])


def test_registering_a_name_again_needs_replace_and_says_what_it_drops(tmp_path, run, caplog):
    manifest = tmp_path / "weights" / "MODELS.toml"
    register_trained(run[0], "nf-tiny", "first data", manifest, stem="nf-tiny-r1")
    before = manifest.read_bytes()
    with pytest.raises(ConfigError, match=r"nf-tiny is registered already .*--replace.*zoo rename nf-tiny nf-tiny-old "
                                          r"--with-trained"):
        register_trained(run[0], "nf-tiny", "second data", manifest, stem="nf-tiny-r2")
    assert manifest.read_bytes() == before and not (manifest.parent / "nf-tiny-r2.safetensors").exists()
    with caplog.at_level("WARNING", logger="perception.registry"):
        entry = register_trained(run[0], "nf-tiny", "second data", manifest, stem="nf-tiny-r2", replace=True)
    assert entry.data == "second data" and read_manifest(manifest)["nf-tiny"].weights.name == "nf-tiny-r2.safetensors"
    said = caplog.text
    assert "nf-tiny replaced" in said and "nf-tiny-r1.safetensors" in said and "'first data'" in said
    assert (manifest.parent / "nf-tiny-r1.safetensors").is_file()  # the old files stay, as said
    # A manifest that is not UTF-8 text is a ConfigError naming it, not a UnicodeDecodeError.
    manifest.write_bytes(b"\xff\xfe[nf-tiny]\n")
    with pytest.raises(ConfigError, match=r"MODELS\.toml: unreadable model manifest"):
        read_manifest(manifest)


def test_a_new_revision_is_registered_beside_the_files_it_replaces(tmp_path, run):
    manifest = tmp_path / "weights" / "MODELS.toml"
    old = register_trained(run[0], "nf-tiny", "first", manifest)
    old_bytes = old.weights.read_bytes()
    # The old revision keeps its files under a new name (a manifest table renamed, sha256 unchanged).
    manifest.write_text(manifest.read_text().replace("[nf-tiny]", "[nf-tiny-r1]"))
    with pytest.raises(ConfigError, match="belongs to another model"):
        register_trained(run[0], "nf-tiny", "second", manifest)
    rev = register_trained(run[0], "nf-tiny", "second", manifest, stem="nf-tiny-r2")
    assert rev.weights.name == "nf-tiny-r2.safetensors" and old.weights.read_bytes() == old_bytes
    entries = read_manifest(manifest)
    assert entries["nf-tiny"].weights.name == "nf-tiny-r2.safetensors"
    assert entries["nf-tiny"].config == "nf-tiny-r2.toml"
    assert entries["nf-tiny-r1"].weights.name == "nf-tiny.safetensors"
    load_trained("nf-tiny-r1", manifest=manifest)
    load_trained("nf-tiny", manifest=manifest)
    # The last checkpoint instead of the best by validation (a validation split unlike the training data).
    last = register_trained(run[0], "nf-tiny-last", "last", manifest, checkpoint="last")
    record = json.loads((run[0] / "last.json").read_text())
    assert last.val_miou == pytest.approx(record["val_miou"], abs=1e-4)
    state = load_file(str(checkpoint_file(run[0], "last")))
    model, _ = load_trained("nf-tiny-last", manifest=manifest)
    k = next(k for k, v in state.items() if v.is_floating_point() and v.dim() == 4)
    assert torch.allclose(model.state_dict()[k], state[k].float(), atol=1e-2)
    with pytest.raises(ConfigError, match="checkpoint must be"):
        register_trained(run[0], "nf-tiny-x", "x", manifest, checkpoint="middle")


# --- a run stopped or diverging keeps a checkpoint it can resume from -----------------------------------------------

class Killed(BaseException):
    """The process dying: nothing catches it as it would an Exception."""


def _same_checkpoint(a, b):
    for which in ("weights", "state"):
        x, y = (load_file(str(checkpoint_file(d, "last", which))) for d in (a, b))
        assert set(x) == set(y)
        for k in x:
            assert torch.equal(x[k], y[k]), (which, k)


def test_a_run_killed_at_any_point_of_a_save_resumes_exactly(tmp_path, data, monkeypatch):
    """Each file operation of the saves at step 6 (best and last checkpoint) in turn is the last the process does;
    the run then still has a complete checkpoint (step 3's or step 6's), and resuming it ends where an uninterrupted
    run ends, metrics without a step twice."""
    import perception.checkpoint as ck

    whole, first = tmp_path / "whole", tmp_path / "first"
    train(TINY, *data, whole, TrainOptions(max_steps=6, **QUIET))
    train(TINY, *data, first, TrainOptions(max_steps=3, **QUIET))
    real_replace, real_discard = ck._replace_atomically, ck._discard
    ops: list[str] = []
    kill_after = {"n": None}

    def op(name):
        ops.append(name)
        if len(ops) == kill_after["n"]:
            raise Killed(name)

    def replace_atomically(path, write):
        real_replace(path, lambda tmp: (write(tmp), op(f"write {tmp.name}")))
        op(f"rename {path.name}")

    def discard(path):
        real_discard(path)
        op(f"remove {path.name}")

    monkeypatch.setattr(ck, "_replace_atomically", replace_atomically)
    monkeypatch.setattr(ck, "_discard", discard)
    train(None, *data, shutil.copytree(first, tmp_path / "count"), TrainOptions(max_steps=6, resume=True, **QUIET))
    n = len(ops)
    assert n >= 8 and any(o.startswith("remove last-000003") for o in ops), ops  # both saves, the old files removed
    for k in range(1, n + 1):
        ops.clear()
        kill_after["n"] = k
        run = shutil.copytree(first, tmp_path / f"kill-{k}")
        with pytest.raises(Killed):
            train(None, *data, run, TrainOptions(max_steps=6, resume=True, **QUIET))
        kill_after["n"] = None
        step = json.loads((run / "last.json").read_text())["step"]
        assert step in (3, 6), (k, ops[-1])
        load_trained(run)  # the best checkpoint, whichever it is, is whole too
        resumed = train(None, *data, run, TrainOptions(max_steps=6, resume=True, **QUIET))
        assert resumed.steps == 6, (k, ops[-1])
        _same_checkpoint(whole, run)
        steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert steps == [3, 6], (k, ops[-1], steps)
        named = {"config.toml", "metrics.jsonl", "last.json", "best.json"}
        for stem in ("last", "best"):
            named |= set(checkpoint_files(json.loads((run / f"{stem}.json").read_text()), stem).values())
        assert {p.name for p in run.iterdir()} == named, k  # no leftover of the killed save


def test_a_signal_saves_a_checkpoint_after_the_step_under_way(tmp_path, data, monkeypatch):
    """SIGINT (Ctrl-C) during step 5: the step completes, a checkpoint is saved at step 5 and the run stops with
    KeyboardInterrupt; its resume ends as an uninterrupted run does. The handlers are restored."""
    import os
    import signal

    import perception.train as tr

    whole, parts = tmp_path / "whole", tmp_path / "parts"
    train(TINY, *data, whole, TrainOptions(max_steps=6, **QUIET))
    real_step, calls = tr.train_step, []

    def step_with_signal(*args):
        calls.append(1)
        if len(calls) == 5:
            os.kill(os.getpid(), signal.SIGINT)
        return real_step(*args)

    monkeypatch.setattr(tr, "train_step", step_with_signal)
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN where the tests run in the background (nohup, CI)
    with pytest.raises(KeyboardInterrupt):
        train(TINY, *data, parts, TrainOptions(max_steps=6, **QUIET))
    assert signal.getsignal(signal.SIGINT) is before
    record = json.loads((parts / "last.json").read_text())
    assert record["step"] == 5 and record["val_miou"] is None  # saved straight away, not validated
    metrics = [json.loads(line) for line in (parts / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r.get("interrupted", False)) for r in metrics] == [(3, False), (5, True)]
    monkeypatch.setattr(tr, "train_step", real_step)
    assert train(None, *data, parts, TrainOptions(max_steps=6, resume=True, **QUIET)).steps == 6
    _same_checkpoint(whole, parts)


def test_resume_takes_the_runs_plan_for_what_is_left_out(tmp_path, data):
    out = tmp_path / "r"
    train(TINY, *data, out, TrainOptions(epochs=2, max_steps=2, schedule="onecycle", warmup=0.5, augment=False,
                                         freeze_bn=True, **QUIET))
    resumed = train(None, *data, out, TrainOptions(resume=True, **QUIET))
    assert resumed.steps == 6  # 2 epochs of 3 steps, as planned, not the config's 10
    plan = json.loads((out / "last.json").read_text())["plan"]
    assert plan == {"epochs": 2, "batch_size": 2, "schedule": "onecycle", "warmup": 0.5, "augment": False,
                    "freeze_bn": True}
    with pytest.raises(ConfigError, match="planned with schedule='onecycle'"):
        train(None, *data, out, TrainOptions(resume=True, schedule="cosine", **QUIET))


def test_a_diverging_step_stops_the_run_before_its_weights_are_saved(tmp_path, data, monkeypatch):
    import perception.train as tr
    from sensors.errors import TrainingError

    real_step, calls = tr.train_step, []

    def poisoning_step(net, *args):
        out = real_step(net, *args)
        calls.append(1)
        if len(calls) == 5:
            with torch.no_grad():
                next(net.parameters()).fill_(float("nan"))
        return out

    monkeypatch.setattr(tr, "train_step", poisoning_step)
    out = tmp_path / "r"
    with pytest.raises(TrainingError, match="step 5 left non-finite weights in") as e:
        train(TINY, *data, out, TrainOptions(max_steps=6, **QUIET))
    # Advice that can be followed: --set works on a new run only, --init keeps what was learnt.
    assert "--set train.lr=" in str(e.value) and f"--init {out}" in str(e.value) and "resume" not in str(e.value)
    assert json.loads((out / "last.json").read_text())["step"] == 3
    assert all(torch.isfinite(v).all() for v in load_file(str(checkpoint_file(out, "last"))).values())
    assert tr.nonfinite_tensors(torch.nn.Linear(2, 2)) == []


def test_the_learning_rate_must_be_finite_and_positive():
    from perception.model import override_train

    for value in ("inf", "0", "-1e-3", "nan"):
        with pytest.raises(ConfigError, match=r"'train.lr' must be a finite number > 0"):
            override_train(TINY, [f"train.lr={value}"])
    with pytest.raises(ConfigError, match=r"'train.weight_decay' must be a finite number >= 0, got inf"):
        override_train(TINY, ["train.weight_decay=inf"])
    assert override_train(TINY, ["train.lr=1e-4"]).train["lr"] == 1e-4


def test_train_from_dir_checks_everything_it_can_before_reading_data(tmp_path, run, monkeypatch):
    """Mistakes in the options or --out are reported before the drives are preprocessed (minutes on real data)."""
    import perception.dataset
    import perception.train as tr

    def no_loading(*args, **kwargs):
        raise AssertionError("the drives were read before the options were checked")

    monkeypatch.setattr(perception.dataset, "DriveDataset", no_loading)
    root = tmp_path / "data"
    for split in ("train", "val"):
        (root / split).mkdir(parents=True)
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    new = tmp_path / "new"
    for out, options, message in [
        (run[0], {}, "already holds a training run"),
        (new, {"resume": True}, "nothing to resume"),
        (new, {"epochs": 0}, "--epochs must be at least 1"),
        (new, {"max_steps": 0}, "--max-steps must be at least 1"),
        (new, {"warmup": 1.5}, r"--warmup must be a share of the steps in \[0, 1\)"),
        (new, {"schedule": "linear"}, "--schedule must be one of"),
        (new, {"init": "nf-nonexistent"}, "not a registered model"),
        (new, {"threads": 0}, "--threads must be at least 1"),
        (new, {"num_workers": -1}, "--workers must be at least 0"),
        (a_file, {}, "is a file"),
        (a_file / "run", {}, "is a file"),
        (run[0], {"resume": True, "epochs": 2}, "planned with epochs=4"),
    ]:
        with pytest.raises(ConfigError, match=message):
            tr.train_from_dir(TINY, root, out, TrainOptions(**{**QUIET, **options}))
    assert not new.exists()
    with pytest.raises(ConfigError, match="differs in bev_channels"):
        tr.train_from_dir(TINY.replace(bev_channels=4), root, new, TrainOptions(init=str(run[0]), **QUIET))


def test_a_missing_checkpoint_names_the_one_the_run_has(tmp_path, run):
    from perception.checkpoint import run_weights

    out = shutil.copytree(run[0], tmp_path / "only-last")
    (out / "best.json").unlink()
    with pytest.raises(ConfigError, match=r"no best checkpoint \(best.json\); the run has only its last checkpoint"):
        run_weights(out, "best")
    assert run_weights(out)[0] == checkpoint_file(out, "last")
