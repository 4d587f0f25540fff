"""`nearfield train`, `eval`, `operating-point`, `register-model`, `bench train` and `bench model` end to end on a
tiny simulated drives: the files each writes, what they hold, and one-line errors for bad input."""

import json

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from app.cli import main  # noqa: E402
from perception.backbones import list_backbones  # noqa: E402
from sensors.classes import CLASS_NAMES  # noqa: E402
from sim_data.simulate import DriveSpec, simulate_drive  # noqa: E402

TINY_TOML = """\
name = "tiny-cli"
camera_width = 0.125
uss_width = 0.125
neck_channels = 8
bev_channels = 8
decoder_channels = 8

[bev]
extent = 16.0
cell = 0.4
heights = [0.25, 0.75]
image_size = [64, 64]

[train]
epochs = 2
batch_size = 2
num_workers = 0
"""


@pytest.fixture(autouse=True, scope="module")
def restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, rig):
    root = tmp_path_factory.mktemp("cli")
    simulate_drive(DriveSpec("train-0", 21, 4), root / "data" / "train", rig, scale=0.25)
    simulate_drive(DriveSpec("val-0", 22, 2, ("night",)), root / "data" / "val", rig, scale=0.25)
    config = root / "tiny.toml"
    config.write_text(TINY_TOML)
    return root, config


@pytest.fixture(scope="module")
def run_dir(setup):
    root, config = setup
    out = root / "run"
    assert main(["train", "--config", str(config), "--data", str(root / "data"), "--out", str(out), "--threads", "1",
                 "--max-steps", "3"]) == 0
    return out


def test_train_writes_a_run_and_resumes_it(setup, run_dir, capsys):
    root, _ = setup
    assert (root / "data" / ".cache").is_dir()
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 3] and records[-1]["partial"]
    assert main(["train", "--data", str(root / "data"), "--out", str(run_dir), "--resume", "--threads", "1"]) == 0
    assert "4 steps" in capsys.readouterr().out  # 2 epochs of 2 steps: the resume finished the plan
    assert json.loads((run_dir / "last.json").read_text())["step"] == 4


def test_eval_writes_json_markdown_and_chart(setup, run_dir, tmp_path, capsys):
    root, _ = setup
    out = tmp_path / "eval" / "scores.json"
    assert main(["eval", "--model", str(run_dir), "--data", str(root / "data" / "val"), "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    for key in ("miou", "iou", "by_condition", "recall_1m", "sector_error_m", "frames"):
        assert key in result
    assert result["frames"] == 2 and set(result["iou"]) == set(CLASS_NAMES)
    assert result["by_condition"]["night"]["frames"] == 2
    assert set(result["by_condition"]["night"]) >= {"miou", "frames"}
    assert set(result["sector_error_m"]) >= {"median", "p95"}
    cells = result["near_cells_by_uss_coverage"]  # the raster's coverage channel reaches the evaluator
    assert cells["covered"] > 0 and cells["uncovered"] > 0
    assert sum(cells.values()) == sum(result["near_cells_by_class"].values())
    md = out.with_suffix(".md").read_text()
    assert "| **all** |" in md and "| night |" in md
    png = cv2.imread(str(out.with_suffix(".png")))
    assert png is not None and png.shape[0] > 100 and png.shape[1] > 100
    assert "| **all** |" in capsys.readouterr().out


def test_eval_counts_degraded_frames_and_skips_frames_without_ground_truth(setup, run_dir, tmp_path, capsys):
    from runtime_world import without_fv_and_last_truth

    root, _ = setup
    src = next((root / "data" / "val").glob("*.mcap"))
    # Camera FV gone from every frame (the report showed a plain "night" row), the last frame's ground truth lost.
    log = without_fv_and_last_truth(src, tmp_path / "no-fv.mcap")
    out = tmp_path / "eval" / "scores.json"
    assert main(["eval", "--model", str(run_dir), "--data", str(log), "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["frames"] == 1 and result["skipped_frames"] == 1 and result["damaged_logs"] == {}
    assert result["degraded_frames"] == 1 and result["degraded_by_reason"] == {"camera FV missing": 1}
    assert result["by_condition"]["night"]["degraded_frames"] == 1
    text = capsys.readouterr().out
    assert "Degraded frames (a sensor missing or failed, or a corrupt image): 1 of 1: camera FV missing 1." in text
    assert "Not scored: 1 frame(s) without ground truth." in text
    assert "camera FV missing 1" in out.with_suffix(".md").read_text()


def test_eval_with_blind_cameras_feeds_the_network_no_camera(setup, run_dir, tmp_path, capsys, monkeypatch):
    import perception.model_eval as me

    root, _ = setup
    seen = []
    real = me.evaluate_settings
    monkeypatch.setattr(me, "evaluate_settings", lambda model, data, *a, **kw: seen.append(data) or real(model, data,
                                                                                                          *a, **kw))
    assert main(["eval", "--model", str(run_dir), "--data", str(root / "data" / "val"), "--blind-cameras"]) == 0
    assert "cameras blinded" in capsys.readouterr().out
    (data,) = seen
    item = data[1]
    assert item["images"].abs().sum() == 0 and item["valid"].abs().sum() == 0
    recorded = data.dataset[1]
    assert recorded["valid"].sum() > 0 and (item["uss"] == recorded["uss"]).all()
    assert (item["target"] == recorded["target"]).all() and data.meta[1].conditions == ("night",)
    camera = tmp_path / "camera.toml"
    camera.write_text(TINY_TOML.replace('name = "tiny-cli"', 'name = "tiny-cam"\nmodality = "camera"'))
    cam_run = tmp_path / "cam-run"
    assert main(["train", "--config", str(camera), "--data", str(root / "data"), "--out", str(cam_run), "--threads",
                 "1", "--max-steps", "1"]) == 0
    capsys.readouterr()
    assert main(["eval", "--model", str(cam_run), "--data", str(root / "data" / "val"), "--blind-cameras"]) == 2
    assert "blind cameras are for fusion models" in capsys.readouterr().err


def test_eval_free_confidence_reaches_the_class_map_over_the_near_field(setup, run_dir, tmp_path, capsys,
                                                                         monkeypatch):
    import perception.model_eval as me

    root, _ = setup
    val = str(root / "data" / "val")
    plain, biased = tmp_path / "plain.json", tmp_path / "biased.json"
    assert main(["eval", "--model", str(run_dir), "--data", val, "--json", str(plain)]) == 0
    calls = []
    real = me.class_map
    monkeypatch.setattr(me, "class_map", lambda logits, ego, *a: calls.append(a) or real(logits, ego, *a))
    assert main(["eval", "--model", str(run_dir), "--data", val, "--json", str(biased), "--free-confidence",
                 "0.9999"]) == 0
    assert "free within 1 m only at P(free) ≥ 0.9999" in capsys.readouterr().out
    near, confidence = calls[0]
    assert confidence == 0.9999 and near.any() and near.sum() < near.size / 4  # a band around the body
    p, b = json.loads(plain.read_text()), json.loads(biased.read_text())
    assert b["recall_1m"] == 1.0 >= p["recall_1m"]  # a 3-step network is never that sure a near cell is free
    assert 0 < b["precision_1m"] <= p["precision_1m"] and set(b["precision_1m_by_condition"]) == {"night"}
    for bad in ("0.2", "1"):
        assert main(["eval", "--model", str(run_dir), "--data", val, "--free-confidence", bad]) == 2
        assert "free confidence must be a probability in [0.5, 1)" in capsys.readouterr().err


def test_eval_memory_steps_each_drive_in_time_order_with_its_odometry(setup, run_dir, tmp_path, capsys, monkeypatch):
    from dataclasses import replace

    import perception.model_eval as me
    from perception.dataset import DriveDataset, dataset_rig
    from perception.registry import load_trained
    from perception.temporal import DEFAULT_DECAY, NearFieldMemory
    from sensors.errors import ConfigError

    root, _ = setup
    steps, resets = [], []
    real_step, real_reset = NearFieldMemory.step, NearFieldMemory.reset
    monkeypatch.setattr(NearFieldMemory, "step", lambda self, logits, classes, covered, pose, stamp: steps.append(
        (pose, stamp)) or real_step(self, logits, classes, covered, pose, stamp))
    monkeypatch.setattr(NearFieldMemory, "reset", lambda self: resets.append(len(steps)) or real_reset(self))
    drives = [str(root / "data" / "train"), str(root / "data" / "val")]
    out = tmp_path / "memory.json"
    assert main(["eval", "--model", str(run_dir), "--data", *drives, "--json", str(out), "--memory"]) == 0
    printed = capsys.readouterr().out
    assert f"near-field memory (decay {DEFAULT_DECAY:g})" in printed
    result = json.loads(out.read_text())
    recalled = result["memory"]["recalled_cells"]
    assert f"Near-field memory (decay {DEFAULT_DECAY:g}): {recalled:,} cells recalled" in printed
    assert result["memory"]["decay"] == DEFAULT_DECAY and result["memory"]["frames_without_odometry"] == 0
    assert len(steps) == result["frames"] == 6  # the 4-frame drive and the 2-frame one
    model, config = load_trained(run_dir)
    data = DriveDataset(drives, config.bev, cache_dir=root / "data" / ".cache", progress=False)
    assert [p for p, _ in steps] == [m.odometry for m in data.meta] and all(p is not None for p, _ in steps)
    assert [s for _, s in steps] == [m.stamp_ns for m in data.meta]
    first_of_drive = [i for i, m in enumerate(data.meta) if i == 0 or m.drive != data.meta[i - 1].drive]
    assert first_of_drive == [0, 4] and set(first_of_drive) <= set(resets)  # a fresh memory for every drive
    plain = tmp_path / "plain.json"
    assert main(["eval", "--model", str(run_dir), "--data", *drives, "--json", str(plain)]) == 0
    p = json.loads(plain.read_text())
    assert "memory" not in p and result["recall_1m"] >= p["recall_1m"]  # the memory only adds obstacles
    # The recalls are scored against the target: a memory that recalled every cell of every frame is right exactly
    # where the target holds an obstacle.
    from perception.temporal import Recall
    from sensors.classes import IGNORE, SemanticClass

    monkeypatch.setattr(NearFieldMemory, "step", lambda self, logits, classes, covered, pose, stamp: (
        classes, Recall(np.ones(classes.shape, bool))))
    everywhere = me.evaluate_dataset(model, data, dataset_rig(data), memory_decay=0.9)["memory"]
    targets = np.stack([data[i]["target"].numpy() for i in range(len(data))])
    obstacles = int(((targets != SemanticClass.FREE) & (targets != IGNORE)).sum())
    assert everywhere["recalled_cells"] == targets.size and everywhere["recalled_true"] == obstacles > 0
    obstacle = (targets != SemanticClass.FREE) & (targets != IGNORE)
    beside = np.stack([cv2.dilate(o.astype(np.uint8), np.ones((3, 3), np.uint8)) for o in obstacle]).astype(bool)
    assert everywhere["recalled_beside_an_obstacle"] == int((beside & ~obstacle).sum()) > 0
    assert everywhere["recalled_precision"] == pytest.approx(obstacles / targets.size)
    monkeypatch.setattr(NearFieldMemory, "step", real_step)
    data.meta = [replace(m, odometry=None) for m in data.meta]
    with pytest.raises(ConfigError, match="odometry"):
        me.evaluate_dataset(model, data, dataset_rig(data), memory_decay=0.9)
    capsys.readouterr()
    assert main(["eval", "--model", str(run_dir), "--data", *drives, "--memory", "1.5"]) == 2
    assert "memory decay must be in (0, 1]" in capsys.readouterr().err


def test_operating_point_scores_every_bias_from_one_pass_as_eval_does(setup, run_dir, tmp_path, capsys, monkeypatch):
    import perception.model_eval as me
    from perception.model import FusionNet

    root, _ = setup
    drives = [str(root / "data" / "train"), str(root / "data" / "val")]
    single = {}
    for p in (None, 0.9):
        out = tmp_path / f"eval-{p}.json"
        assert main(["eval", "--model", str(run_dir), "--data", *drives, "--memory", "0.9", "--json", str(out),
                     *(["--free-confidence", str(p)] if p else [])]) == 0
        single[p] = json.loads(out.read_text())
    capsys.readouterr()
    forwards = []
    real_forward = FusionNet.forward
    monkeypatch.setattr(FusionNet, "forward", lambda self, *a: forwards.append(1) or real_forward(self, *a))
    out = tmp_path / "op.json"
    # 0.9 given twice and out of order: each setting is scored once, the argmax first.
    assert main(["operating-point", "--model", str(run_dir), "--data", *drives, "--memory", "0.9",
                 "--free-confidence", "0.9", "0.6", "0.9", "--recall-goal", "0.0001", "--json", str(out)]) == 0
    assert len(forwards) == len(me.DataLoader(range(6), batch_size=4))  # one pass over the 6 frames, not three
    printed = capsys.readouterr().out
    sweep = json.loads(out.read_text())
    assert [s["free_confidence"] for s in sweep["settings"]] == [None, 0.6, 0.9]
    for p in (None, 0.9):
        got = next(s["result"] for s in sweep["settings"] if s["free_confidence"] == p)
        want = {k: v for k, v in single[p].items() if k != "model"}
        assert got == want  # the same scores as `nearfield eval` with that bias, memory included
    # The smallest bias meeting the goal is chosen: the argmax meets any goal it reaches.
    assert sweep["chosen"] == "argmax" and "| argmax **(chosen)** |" in printed
    assert main(["operating-point", "--model", str(run_dir), "--data", *drives, "--recall-goal", "1.5"]) == 2
    assert "the recall goal must be a share in (0, 1]" in capsys.readouterr().err
    assert main(["operating-point", "--model", str(run_dir), "--data", *drives, "--free-confidence", "1"]) == 2
    assert "free confidence must be a probability in [0.5, 1)" in capsys.readouterr().err


def test_operating_point_registers_the_choice_with_the_zoo_model(setup, run_dir, tmp_path, capsys, monkeypatch):
    import perception.model_eval as me
    import perception.operating_point as op
    from deploy.zoo import ZooModel, read_zoo, register
    from perception.near_field import NearFieldSettings

    root, _ = setup
    drives = [str(root / "data" / "train"), str(root / "data" / "val")]
    manifest = tmp_path / "zoo" / "ZOO.toml"
    manifest.parent.mkdir()
    (manifest.parent / "tiny.onnx").write_bytes(b"not run here")
    register(ZooModel("tiny", manifest.parent / "tiny.onnx", "", str(run_dir)), manifest)
    args = ["operating-point", "--model", str(run_dir), "--data", *drives, "--memory", "0.9", "--free-confidence",
            "0.6", "--manifest", str(manifest)]
    assert main([*args, "--register", "nope"]) == 2  # an unknown zoo model fails before any log is read
    assert "unknown deploy model 'nope'" in capsys.readouterr().err
    with monkeypatch.context() as m:  # every setting short of the goal somewhere (the tiny net marks everything)
        m.setattr(op, "worst_condition", lambda result: ("night", 0.5))
        assert main([*args, "--register", "tiny"]) == 2
    assert "nothing is registered for tiny" in capsys.readouterr().err
    assert not read_zoo(manifest)["tiny"].operating_point
    assert main([*args, "--recall-goal", "0.0001", "--register", "tiny"]) == 0
    printed = capsys.readouterr().out
    assert "registered for zoo model tiny: free confidence argmax, memory 0.9, echo floor off" in printed
    point = read_zoo(manifest)["tiny"].operating_point
    assert "free_confidence" not in point and point["memory_decay"] == 0.9 and point["recall_goal"] == 0.0001
    assert point["chosen_on"] == " ".join(drives) and point["settings_tried"] == "argmax, 0.6"
    assert point["command"] == (f"nearfield operating-point --model {run_dir} --data {' '.join(drives)} --memory 0.9 "
                                "--free-confidence 0.6 --recall-goal 0.0001 --register tiny")
    assert read_zoo(manifest)["tiny"].operating_settings() == NearFieldSettings(None, 0.9)
    # With --echo-floor every setting is scored with it and the choice records it.
    seen = []
    evaluate = me.evaluate_logs_settings
    monkeypatch.setattr(me, "evaluate_logs_settings", lambda *a, **k: seen.append(k["echo_floor"]) or evaluate(*a, **k))
    assert main([*args, "--recall-goal", "0.0001", "--echo-floor", "--register", "tiny"]) == 0
    assert seen == [True] and "echo floor on" in capsys.readouterr().out
    point = read_zoo(manifest)["tiny"].operating_point
    assert point["echo_floor"] is True and point["command"].endswith("--echo-floor --free-confidence 0.6 "
                                                                    "--recall-goal 0.0001 --register tiny")
    assert read_zoo(manifest)["tiny"].operating_settings() == NearFieldSettings(None, 0.9, True)


def test_eval_echo_floor_only_adds_obstacles_at_the_bumper(setup, run_dir, tmp_path, capsys, monkeypatch):
    import perception.model_eval as me

    root, _ = setup
    drives = [str(root / "data" / "train"), str(root / "data" / "val")]
    seen = []
    real = me.apply_echo_floor
    monkeypatch.setattr(me, "apply_echo_floor", lambda m, arc, zone: seen.append(
        (m.copy(), (out := real(m, arc, zone)), zone)) or out)
    out = tmp_path / "floor.json"
    assert main(["eval", "--model", str(run_dir), "--data", *drives, "--echo-floor", "--json", str(out)]) == 0
    assert ", echo floor" in capsys.readouterr().out
    assert len(seen) == 6  # every frame's map, the 4-frame drive and the 2-frame one
    for before, after, zone in seen:
        changed = before != after
        assert not (changed & ~zone).any() and (before[changed] == 0).all()  # free cells at the bumper only


def test_register_model_writes_the_manifest_entry(setup, run_dir, tmp_path, capsys):
    manifest = tmp_path / "weights" / "MODELS.toml"
    assert main(["register-model", str(run_dir), "--name", "nf-tiny", "--data", "one 4-frame drive",
                 "--manifest", str(manifest)]) == 0
    text = manifest.read_text()
    assert "[nf-tiny]" in text and 'dtype = "float16"' in text and 'weights = "nf-tiny.safetensors"' in text
    assert (manifest.parent / "nf-tiny.toml").is_file()
    capsys.readouterr()


def test_register_model_replaces_a_name_only_with_replace(setup, run_dir, tmp_path, capsys):
    manifest = tmp_path / "new" / "MODELS.toml"
    args = ["register-model", str(run_dir), "--name", "nf-tiny", "--manifest", str(manifest)]
    assert main([*args, "--data", "first"]) == 0
    assert f"{manifest}: no such manifest, a new one was created" in capsys.readouterr().out
    before = manifest.read_text()
    assert main([*args, "--data", "second"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nf-tiny is registered already" in err and "--replace" in err, err
    assert "nearfield zoo rename nf-tiny nf-tiny-old --with-trained" in err
    assert manifest.read_text() == before
    assert main([*args, "--data", "second", "--replace"]) == 0
    assert "a new one was created" not in capsys.readouterr().out
    assert 'data = "second"' in manifest.read_text()


def test_operating_point_registers_only_into_a_zoo_model_made_from_the_model(setup, run_dir, tmp_path, capsys):
    from deploy.commands.operating_point import check_derives, lineage
    from deploy.zoo import ZooModel, read_zoo, register
    from sensors.errors import ConfigError

    root, _ = setup
    manifest = tmp_path / "zoo" / "ZOO.toml"
    manifest.parent.mkdir()
    # e2gc: its parent is the baseline it is compared with; its trained model is in options.trained.
    for name, parent, options in (("tiny", str(run_dir), {}), ("tiny-int8", "tiny", {}),
                                  ("tiny-int8-pruned", "tiny-int8", {}), ("uss", "uss", {}),
                                  ("e2gc", "uss", {"trained": "e2gc"})):
        (manifest.parent / f"{name}.onnx").write_bytes(name.encode())
        register(ZooModel(name, manifest.parent / f"{name}.onnx", "", parent, options=options), manifest)
    zoo = read_zoo(manifest)
    assert lineage("tiny-int8-pruned", zoo) == ["tiny-int8-pruned", "tiny-int8", "tiny", str(run_dir)]
    assert lineage("e2gc", zoo) == ["e2gc", "e2gc"]
    for name in ("tiny", "tiny-int8", "tiny-int8-pruned"):
        check_derives(name, str(run_dir), manifest)
        check_derives(name, f"{run_dir}/", manifest)  # the same run directory, spelled otherwise
    check_derives("tiny-int8-pruned", "tiny-int8", manifest)
    check_derives("e2gc", "e2gc", manifest)
    with pytest.raises(ConfigError, match="made from uss, not from --model e2gc"):
        check_derives("uss", "e2gc", manifest)
    # From the command line: refused before any log is read, nothing registered.
    drives = [str(root / "data" / "val")]
    assert main(["operating-point", "--model", str(run_dir), "--data", *drives, "--register", "uss", "--manifest",
                 str(manifest)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"that zoo model is made from uss, not from --model {run_dir}" in err, err
    assert not read_zoo(manifest)["uss"].operating_point
    assert main(["operating-point", "--model", str(run_dir), "--data", *drives, "--register", "tiny", "--manifest",
                 str(tmp_path / "nope.toml")]) == 2
    assert "no such zoo manifest" in capsys.readouterr().err


def test_bad_input_is_one_line_and_exit_2(setup, tmp_path, capsys):
    root, config = setup
    assert main(["eval", "--model", "no-such-model", "--data", str(root / "data" / "val")]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'no-such-model': neither a trained model" in err and err.count("\n") == 1
    assert main(["train", "--data", str(root / "data"), "--out", str(tmp_path / "r")]) == 2
    assert "--config is needed" in capsys.readouterr().err
    assert main(["train", "--config", str(config), "--data", str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    assert "no train/ folder" in capsys.readouterr().err


def test_bench_train_and_model_print_tables(setup, capsys):
    _, config = setup
    assert main(["bench", "train", "--config", str(config), "--threads", "1", "--steps", "1", "--batch", "2"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("machine: ") and "samples per s" in out and "| tiny-cli " in out
    assert main(["bench", "model", "--config", str(config), "--repeats", "1", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    rows = [ln for ln in out.splitlines() if ln.startswith("| ")][1:]  # without the header
    for name in list_backbones():
        assert sum(r.startswith(f"| {name} ") for r in rows) == 2  # batch 1 and 4
    assert sum("tiny-cli (whole network" in r for r in rows) == 2
    assert "64x64" in out


def test_report_tabulates_models_by_condition(tmp_path, capsys):
    def result(miou, night, recall):
        return {"miou": miou, "recall_1m": recall, "frames": 10,
                "by_condition": {"day": {"miou": miou, "frames": 5}, "night": {"miou": night, "frames": 5}},
                "recall_1m_by_condition": {"day": recall, "night": recall}}

    (tmp_path / "f.json").write_text(json.dumps(result(0.5, 0.45, 0.97)))
    (tmp_path / "c.json").write_text(json.dumps(result(0.4, 0.125, 0.6)))
    md, png = tmp_path / "t.md", tmp_path / "t.png"
    assert main(["report", f"fusion={tmp_path / 'f.json'}", f"camera={tmp_path / 'c.json'}",
                 "--markdown", str(md), "--png", str(png)]) == 0
    text = md.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| fusion") or line.startswith("| camera")]
    assert rows[0].split("|")[2:5] == [" 50.0 ", " 50.0 ", " 45.0 "]  # all, day, night of the mIoU table
    assert rows[1].split("|")[2:5] == [" 40.0 ", " 40.0 ", " 12.5 "]
    assert "97.0" in text and "60.0" in text  # the recall table
    assert "by true class" not in text  # these JSONs have no per-class recall
    (tmp_path / "f.json").write_text(json.dumps(result(0.5, 0.45, 0.97) | {"recall_1m_by_class": {
        "vehicle": 0.75, "low_obstacle": 0.01}}))
    assert main(["report", f"fusion={tmp_path / 'f.json'}", f"camera={tmp_path / 'c.json'}", "--markdown",
                 str(md)]) == 0
    rows = md.read_text().split("by true class")[1].splitlines()
    assert "| fusion | 75.0 | 1.0 |" in rows and "| camera | – | – |" in rows
    assert "ultrasonic beam" not in md.read_text()
    (tmp_path / "c.json").write_text(json.dumps(result(0.4, 0.125, 0.6) | {
        "recall_1m_by_uss_coverage": {"uncovered": 0.25, "covered": 0.5},
        "near_cells_by_uss_coverage": {"uncovered": 40, "covered": 1200}}))
    assert main(["report", f"fusion={tmp_path / 'f.json'}", f"camera={tmp_path / 'c.json'}", "--markdown",
                 str(md)]) == 0
    rows = md.read_text().split("ultrasonic beam")[1].splitlines()
    assert "| model | uncovered | covered |" in rows
    assert "| camera | 25.0 (40 cells) | 50.0 (1,200 cells) |" in rows and "| fusion | – | – |" in rows
    assert "Precision" not in md.read_text()  # no JSON has precision within 1 m
    (tmp_path / "f.json").write_text(json.dumps(result(0.5, 0.45, 0.97) | {
        "precision_1m": 0.8, "precision_1m_by_condition": {"day": 0.9, "night": 0.7}}))
    assert main(["report", f"fusion={tmp_path / 'f.json'}", f"camera={tmp_path / 'c.json'}", "--markdown",
                 str(md)]) == 0
    rows = md.read_text().split("Precision")[1].splitlines()
    assert "| fusion | 80.0 | 90.0 | 70.0 |" in rows and "| camera | – | – | – |" in rows
    assert cv2.imread(str(png)) is not None
    # The last table counts the obstacles of the display level asked for shown clear.
    levels = {"thresholds_m": [1.5, 0.8, 0.3], "missed_by_level": [0.1, 0.02, 0.5], "false_alarm": 0.03}
    (tmp_path / "f.json").write_text(json.dumps(result(0.5, 0.45, 0.97) | {"sector_levels": levels}))
    for level, shown in ((None, "2.0"), ("3", "50.0")):
        assert main(["report", f"fusion={tmp_path / 'f.json'}", "--markdown", str(md),
                     *(["--warning-level", level] if level else [])]) == 0
        within = "0.3" if level else "0.8"
        table = md.read_text().split(f"Obstacles within {within} m of the car body")[1]
        assert f"| fusion | {shown} | – | – | 3.0 |" in table.splitlines()
    assert main(["report", f"fusion={tmp_path / 'f.json'}", "--warning-level", "4"]) == 2
    assert "level must be 1..3" in capsys.readouterr().err
    assert main(["report", "nolabel.json"]) == 2
    assert "NAME=JSON" in capsys.readouterr().err
    (tmp_path / "x.json").write_text(json.dumps({"miou": 0.1}))
    assert main(["report", f"x={tmp_path / 'x.json'}"]) == 2
    assert "not an eval JSON" in capsys.readouterr().err


def test_counts_and_files_a_command_cannot_use_are_one_line_errors(setup, run_dir, tmp_path, capsys):
    """Bad counts and files that are not text: exit 2 and one line naming the option or file, no traceback."""
    root, config = setup
    binary = tmp_path / "binary.toml"
    binary.write_bytes(bytes(range(128, 256)))
    data = str(root / "data" / "val")
    out = str(tmp_path / "r")
    for argv, message in [
        (["eval", "--model", str(run_dir), "--data", data, "--batch-size", "0"], "--batch-size must be"),
        (["operating-point", "--model", str(run_dir), "--data", data, "--batch-size", "0"], "--batch-size must be"),
        (["train", "--config", str(config), "--data", str(root / "data"), "--out", out, "--workers", "-1"],
         "--workers must be at least 0"),
        (["train", "--config", str(config), "--data", str(root / "data"), "--out", out, "--threads", "-1"],
         "--threads must be at least 1"),
        (["train", "--config", str(config), "--data", str(root / "data"), "--out", out, "--threads", "0"],
         "--threads must be at least 1"),
        (["train", "--config", str(config), "--data", str(root / "data"), "--out", str(config)],
         f"--out {config} is a file"),
        (["train", "--config", str(config), "--data", str(root / "data"), "--out", out, "--set", "train.lr=inf"],
         "'train.lr' must be a finite number > 0, got inf"),
        (["train", "--config", str(binary), "--data", str(root / "data"), "--out", out], "not UTF-8 text"),
        (["report", f"a={binary}"], f"{binary}: not an eval JSON"),
    ]:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err and "Traceback" not in err, (argv, err)
    assert not (tmp_path / "r").exists()


def test_train_help_says_what_a_resume_continues_from():
    from app.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    helps = {a.option_strings[0]: a.help for a in sub.choices["train"]._actions if a.option_strings}
    assert "from its last checkpoint" in helps["--resume"] and "exactly where it stopped" not in helps["--resume"]
    assert "Ctrl-C" in helps["--resume"]
    eval_helps = {a.option_strings[0]: a.help for a in sub.choices["eval"]._actions if a.option_strings}
    assert "0.5 <= P < 1" in eval_helps["--free-confidence"]  # as check_free_confidence: 1 is refused
