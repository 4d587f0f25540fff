"""The zoo commands on a tmp manifest with a tiny exported model and a child of it: checksums, `zoo list`, and
`zoo measure`, whose mIoU must equal what Evaluator computes on the same class maps."""

import json
import re
import shutil
import time
from dataclasses import replace

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from runtime_world import rewrite_log, without_fv_and_last_truth  # noqa: E402

from app.cli import main  # noqa: E402
from deploy.backends.ort import OrtBackend  # noqa: E402
from deploy.commands.export import verify, zoo_rows  # noqa: E402
from deploy.export import export_onnx, input_shapes  # noqa: E402
from deploy.flops import onnx_flops  # noqa: E402
from deploy.measure import block_ratios, count_parameters, measure_model, time_blocks  # noqa: E402
from deploy.zoo import ZooModel, get_model, read_zoo, register, update_metrics, write_zoo  # noqa: E402
from perception.bev_config import BevConfig, ego_mask  # noqa: E402
from perception.evaluate import Evaluator  # noqa: E402
from perception.model import FusionNet, load_model_config  # noqa: E402
from perception.model import count_parameters as torch_parameters  # noqa: E402
from perception.postprocess import class_map  # noqa: E402
from perception.preprocess import FramePreprocessor  # noqa: E402
from sensors.errors import ChecksumError, ConfigError  # noqa: E402
from sensors.log import LogReader  # noqa: E402
from sensors.messages import GroundTruth  # noqa: E402
from sensors.replay import replay_frames  # noqa: E402
from sim_data.simulate import DriveSpec, simulate_drive  # noqa: E402

pytestmark = pytest.mark.usefixtures("torch_one_thread")

TINY_BEV = BevConfig(extent=16.0, cell=0.4, heights=(0.25, 0.75), image_size=(64, 64))


@pytest.fixture(scope="module")
def night_log(tmp_path_factory, rig):
    return simulate_drive(DriveSpec("night", 31, 3, ("night",)), tmp_path_factory.mktemp("logs"), rig, scale=0.25)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """tiny.onnx (a fresh small network) and its torch parameter count."""
    config = load_model_config("nf-small").replace(name="tiny", camera_width=0.125, uss_width=0.125,
                                                   neck_channels=8, bev_channels=8, decoder_channels=8, bev=TINY_BEV)
    torch.manual_seed(0)
    model = FusionNet(config).eval()
    path = export_onnx(model, config, tmp_path_factory.mktemp("build") / "tiny.onnx")
    return path, config, torch_parameters(model)


@pytest.fixture
def zoo(tmp_path, built):
    """A manifest with 'tiny' (parent: a trained name) and 'tiny-copy' (parent: tiny, the same network)."""
    path, config, _ = built
    manifest = tmp_path / "zoo" / "ZOO.toml"
    manifest.parent.mkdir()
    for name, parent in (("tiny", "nf-tiny-trained"), ("tiny-copy", "tiny")):
        shutil.copyfile(path, manifest.parent / f"{name}.onnx")
        register(ZooModel(name, manifest.parent / f"{name}.onnx", "", parent, "fp32", "any", config.bev,
                          input_shapes(path)), manifest)
    return manifest


def test_a_damaged_zoo_file_raises_checksum_error(zoo, capsys):
    assert verify(zoo) == {"tiny": True, "tiny-copy": True}
    assert main(["zoo", "--manifest", str(zoo), "verify"]) == 0
    f = zoo.parent / "tiny-copy.onnx"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match="tiny-copy"):
        get_model("tiny-copy", zoo).verified_onnx()
    with pytest.raises(ChecksumError, match=r"1 of 2 model file\(s\) .*: tiny-copy;"):
        verify(zoo)
    capsys.readouterr()
    assert main(["zoo", "--manifest", str(zoo), "verify"]) == 2
    assert "nearfield zoo: error:" in capsys.readouterr().err


def test_zoo_list_shows_measured_figures_and_blanks(zoo, capsys):
    update_metrics("tiny", {"test_miou": 0.4123, "test_miou_night": 0.305, "ort_cpu_ms": 12.5, "params": 2_500_000},
                   zoo)
    # A quarter of its parent's time: 4x faster; 3.33x to 5x in the slowest and fastest timing rounds.
    update_metrics("tiny-copy", {"ort_cpu_ratio": 0.25, "ort_cpu_ratio_range": [0.2, 0.3]}, zoo)
    assert main(["zoo", "--manifest", str(zoo), "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split("|")[1].strip() == "name" and "night mIoU" in lines[0]
    tiny = [c.strip() for c in lines[2].split("|")[1:-1]]
    copy = [c.strip() for c in lines[3].split("|")[1:-1]]
    size = f"{(zoo.parent / 'tiny.onnx').stat().st_size / 1e6:.2f}"
    gflops = f"{onnx_flops(zoo.parent / 'tiny.onnx') / 1e9:.2f}"  # counted from the file, nothing measured
    assert tiny == ["tiny", "fp32", "any", "nf-tiny-trained", "2.50", gflops, size, "41.2%", "30.5%", "12.50", ""]
    assert copy == ["tiny-copy", "fp32", "any", "tiny", "", gflops, size, "", "", "", "4.00x (3.33–5.00)"]
    assert main(["zoo", "--manifest", str(zoo), "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows == zoo_rows(zoo) and rows[0]["test_miou"] == 0.4123 and rows[1]["ort_cpu_ms"] is None


def test_an_empty_zoo_lists_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("deploy.zoo.MANIFEST", tmp_path / "ZOO.toml")  # the default manifest, not there yet
    assert main(["zoo", "list"]) == 0
    assert "no models yet" in capsys.readouterr().out
    assert main(["zoo", "verify"]) == 2  # checking no model is no pass
    assert "no such zoo manifest" in capsys.readouterr().err


def test_a_missing_or_empty_manifest_given_explicitly_is_an_error(tmp_path, capsys):
    missing = str(tmp_path / "nonexistent" / "ZOO.toml")
    for argv in (["zoo", "--manifest", missing, "verify"], ["zoo", "--manifest", missing, "list"],
                 ["zoo", "list", "--manifest", missing],
                 ["run", "--model", "tiny", "--source", "x.mcap", "--out", str(tmp_path / "o.mcap"), "--manifest",
                  missing]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert f"{missing}: no such zoo manifest" in err and err.count("\n") == 1
    empty = tmp_path / "EMPTY.toml"
    write_zoo({}, empty)
    assert main(["zoo", "--manifest", str(empty), "verify"]) == 2
    assert f"{empty}: the zoo manifest lists no model" in capsys.readouterr().err


def test_registering_a_zoo_name_again_needs_replace_and_drops_only_what_no_longer_holds(tmp_path, caplog):
    from deploy.zoo import set_operating_point

    manifest = tmp_path / "zoo" / "ZOO.toml"
    manifest.parent.mkdir()
    files = {}
    for name in ("a", "a-r2", "a-int8"):
        files[name] = manifest.parent / f"{name}.onnx"
        files[name].write_bytes(f"the file {name}".encode())
    register(ZooModel("a", files["a"], "", "a"), manifest)
    register(ZooModel("a-int8", files["a-int8"], "", "a", "int8-ptq"), manifest)
    update_metrics("a", {"test_miou": 0.5, "parity_max_abs": 1e-6}, manifest)
    set_operating_point("a", {"free_confidence": 0.9}, manifest)
    before = manifest.read_bytes()
    with pytest.raises(ConfigError, match=r"zoo model a is in .* already \(fp32, file a.onnx, parent a, measured "
                                          r"figures, an operating point\); give --replace .*`nearfield zoo rename a "
                                          r"a-old \[--with-trained\]`"):
        register(ZooModel("a", files["a-r2"], "", "run-2"), manifest)
    # Another entry's file is not taken over either, whatever the name.
    with pytest.raises(ConfigError, match=r"a-int8\.onnx: is the file of zoo model a-int8"):
        register(ZooModel("b", files["a-int8"], "", "a"), manifest)
    assert manifest.read_bytes() == before
    # The same file again (an identical re-export): its figures and operating point still hold.
    same = register(ZooModel("a", files["a"], "", "a", metrics={"parity_max_abs": 2e-6}), manifest, replace=True)
    assert same.metrics == {"test_miou": 0.5, "parity_max_abs": 2e-6} and same.operating_point == {
        "free_confidence": 0.9}
    # Another file: they were measured on what is gone; dropped, and said so, with the entries made from the old one.
    with caplog.at_level("WARNING", logger="deploy.zoo"):
        new = register(ZooModel("a", files["a-r2"], "", "run-2"), manifest, replace=True)
    assert new.metrics == {} and new.operating_point == {} and list(read_zoo(manifest)) == ["a", "a-int8"]
    said = caplog.text
    for words in ("zoo model a replaced", "figures (test_miou)", "operating point (free_confidence 0.9)",
                  "parent a -> run-2", "still naming it: a-int8"):
        assert words in said, said
    # A manifest that is not UTF-8 text is one line, not a traceback.
    manifest.write_bytes(b"\xff\xfe[a]\n")
    with pytest.raises(ConfigError, match="unreadable zoo manifest"):
        read_zoo(manifest)


def test_every_zoo_action_takes_manifest_after_it_too(zoo, capsys):
    assert main(["zoo", "--manifest", str(zoo), "list"]) == 0
    before = capsys.readouterr().out
    assert main(["zoo", "list", "--manifest", str(zoo)]) == 0
    assert capsys.readouterr().out == before
    assert main(["zoo", "verify", "--manifest", str(zoo)]) == 0
    assert "2 model file(s) match" in capsys.readouterr().out
    assert main(["zoo", "rename", "tiny-copy", "tiny-2", "--manifest", str(zoo)]) == 0
    assert list(read_zoo(zoo)) == ["tiny", "tiny-2"]


@pytest.mark.parametrize(("key", "value"), [("options", '"abc"'), ("metrics", "3"), ("method", "4"),
                                            ("target", "[1]"), ("notes", "true")])
def test_a_mistyped_manifest_entry_is_a_one_line_error_naming_it(zoo, capsys, key, value):
    text = zoo.read_text()
    if f"\n{key} = " in text:  # [tiny] comes first: its line of KEY is the first
        text = re.sub(rf"\n{key} = .*\n", f"\n{key} = {value}\n", text, count=1)
    else:
        text = text.replace("[tiny]\n", f"[tiny]\n{key} = {value}\n", 1)
    zoo.write_text(text)
    with pytest.raises(ConfigError, match=rf"{zoo} \[tiny\]: {key}"):
        read_zoo(zoo)
    for argv in (["zoo", "--manifest", str(zoo), "list"], ["zoo", "--manifest", str(zoo), "verify"],
                 ["run", "--model", "tiny", "--source", "x.mcap", "--out", "o.mcap", "--manifest", str(zoo)]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "[tiny]" in err and err.count("\n") == 1


def test_zoo_list_and_plot_survive_a_damaged_file(zoo, capsys, tmp_path):
    update_metrics("tiny", {"gflops": 1.25, "test_miou": 0.4, "ort_cpu_ms": 10.0}, zoo)
    for name in ("tiny", "tiny-copy"):  # truncated: onnx.load raised DecodeError through `zoo list`
        f = zoo.parent / f"{name}.onnx"
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 3])
    rows = {r["name"]: r for r in zoo_rows(zoo)}
    assert rows["tiny"]["gflops"] == 1.25 and rows["tiny"]["file_problem"] is None  # stored: the file is not read
    assert rows["tiny-copy"]["gflops"] is None and "does not parse" in rows["tiny-copy"]["file_problem"]
    assert main(["zoo", "--manifest", str(zoo), "list"]) == 0
    out = capsys.readouterr().out
    copy = [c.strip() for c in out.splitlines()[3].split("|")[1:-1]]
    assert copy[0] == "tiny-copy" and copy[5] == "?"
    assert "? FLOPs not counted" in out and "tiny-copy: tiny-copy.onnx does not parse" in out
    assert main(["zoo", "--manifest", str(zoo), "plot", str(tmp_path / "zoo.png")]) == 0
    (zoo.parent / "tiny-copy.onnx").unlink()
    assert "tiny-copy.onnx is missing" in {r["name"]: r for r in zoo_rows(zoo)}["tiny-copy"]["file_problem"]


def _expected_scores(onnx_path, log):
    """mIoU straight from Evaluator on class maps computed here, without deploy.pipeline."""
    with LogReader(log) as reader:
        rig = reader.rig
    prep = FramePreprocessor(rig, TINY_BEV)
    grid = TINY_BEV.grid(rig)
    ego = ego_mask(rig.vehicle, grid)
    backend = OrtBackend(onnx_path, threads=1)
    ev = Evaluator(rig, grid)
    for frame in replay_frames(log, decode=True, decode_scale=prep.reduction):
        inputs, _ = prep.network_inputs(frame)
        logits = backend.run(inputs)["class_logits"][0]
        ev.update(class_map(logits, ego), prep.target(frame.truth), frame.conditions)
    return ev.result()


def test_measure_gives_evaluator_miou_latency_ratio_and_size(zoo, night_log, built, capsys):
    expected = _expected_scores(zoo.parent / "tiny-copy.onnx", night_log)
    assert main(["zoo", "--manifest", str(zoo), "measure", "tiny-copy", "--data", str(night_log),
                 "--threads", "1"]) == 0
    assert "3 test frames" in capsys.readouterr().out
    m = read_zoo(zoo)["tiny-copy"].metrics
    assert expected["miou"] is not None
    assert m["test_miou"] == pytest.approx(expected["miou"], abs=1e-12)
    assert m["test_miou_night"] == pytest.approx(expected["by_condition"]["night"]["miou"], abs=1e-12)
    assert m["test_frames"] == 3
    assert m["size_mb"] == pytest.approx((zoo.parent / "tiny-copy.onnx").stat().st_size / 1e6, abs=1e-3)
    assert m["ort_cpu_ms"] > 0 and m["ort_cpu_parent_ms"] > 0
    # The median of the per-round ratios, inside the range of the rounds (the same file: about 1).
    lo, hi = m["ort_cpu_ratio_range"]
    assert lo <= m["ort_cpu_ratio"] <= hi and 0.5 < m["ort_cpu_ratio"] < 2
    # The deployed weights: BatchNorm folded away and parameters the forward pass never reads left out by the export.
    assert m["params"] == count_parameters(zoo.parent / "tiny-copy.onnx") and 0 < m["params"] <= built[2]
    assert m["gflops"] == pytest.approx(onnx_flops(zoo.parent / "tiny-copy.onnx") / 1e9, abs=1e-4) and m["gflops"] > 0
    assert "1 onnxruntime threads" in m["measured_on"] and m["command"].startswith("nearfield zoo measure tiny-copy")


def test_measure_accuracy_only_rescores_and_keeps_the_stored_timings(zoo, night_log, capsys):
    from deploy.zoo import update_metrics

    timed = {"ort_cpu_ms": 9.5, "ort_cpu_ratio": 1.7, "measured_on": "some machine", "command": "earlier",
             "test_miou": 0.99}
    update_metrics("tiny-copy", timed, zoo)
    expected = _expected_scores(zoo.parent / "tiny-copy.onnx", night_log)
    assert main(["zoo", "--manifest", str(zoo), "measure", "tiny-copy", "--data", str(night_log), "--threads", "1",
                 "--accuracy-only"]) == 0
    assert "accuracy only" in capsys.readouterr().out
    m = read_zoo(zoo)["tiny-copy"].metrics
    assert m["test_miou"] == pytest.approx(expected["miou"], abs=1e-12)  # re-scored, not the stored 0.99
    assert m["test_miou_night"] == pytest.approx(expected["by_condition"]["night"]["miou"], abs=1e-12)
    assert {k: m[k] for k in ("ort_cpu_ms", "ort_cpu_ratio", "measured_on", "command")} == \
        {k: timed[k] for k in ("ort_cpu_ms", "ort_cpu_ratio", "measured_on", "command")}
    assert m["accuracy_command"].endswith("--accuracy-only")


def test_measure_without_a_parent_in_the_zoo_has_no_ratio(zoo, night_log):
    m = measure_model("tiny", [night_log], threads=1, manifest=zoo, store=False)
    assert "ort_cpu_ratio" not in m and m["test_frames"] == 3
    assert "test_miou" not in read_zoo(zoo)["tiny"].metrics  # store=False leaves the manifest alone


def test_a_tensorrt_artifact_is_scored_but_not_timed_in_onnxruntime(zoo, built, night_log, capsys):
    path, config, _ = built
    shutil.copyfile(path, zoo.parent / "tiny-trt.onnx")
    register(ZooModel("tiny-trt", zoo.parent / "tiny-trt.onnx", "", "tiny", "int8-ptq", "tensorrt", config.bev,
                      input_shapes(path)), zoo)
    m = measure_model("tiny-trt", [night_log], threads=1, manifest=zoo)
    assert m["test_frames"] == 3 and "test_miou_night" in m
    assert not {"ort_cpu_ms", "ort_cpu_ratio", "measured_on"} & set(m)
    assert m["accuracy_command"].endswith("--accuracy-only")
    capsys.readouterr()
    assert main(["zoo", "--manifest", str(zoo), "measure", "tiny-trt", "--data", str(night_log), "--threads",
                 "1"]) == 0
    assert "3 test frames; accuracy only: a TensorRT artifact is not timed" in capsys.readouterr().out


def test_parameter_count_skips_quantisation_scales(tmp_path):
    from onnx import TensorProto, helper, numpy_helper, save

    w = numpy_helper.from_array(np.zeros((8, 3, 3, 3), np.int8), "w")
    sc = numpy_helper.from_array(np.ones(8, np.float32), "sc")
    zp = numpy_helper.from_array(np.zeros(8, np.int8), "zp")
    graph = helper.make_graph([helper.make_node("DequantizeLinear", ["w", "sc", "zp"], ["y"], axis=0)], "g", [],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8, 3, 3, 3])], [w, sc, zp])
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "q.onnx"))
    assert count_parameters(tmp_path / "q.onnx") == 8 * 27


def test_measure_needs_labelled_logs(zoo, tmp_path):
    from sensors.errors import ConfigError

    with pytest.raises(ConfigError, match="no such log file"):
        measure_model("tiny", [tmp_path / "absent.mcap"], manifest=zoo)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"holds no \*\.mcap"):
        measure_model("tiny", tmp_path / "empty", manifest=zoo)


def test_the_zoo_entry_keeps_its_other_fields_after_measure(zoo, night_log):
    before = read_zoo(zoo)["tiny"]
    measure_model("tiny", night_log, threads=1, manifest=zoo)
    after = read_zoo(zoo)["tiny"]
    assert replace(after, metrics={}) == replace(before, metrics={})


def test_bench_ops_profiles_every_model_on_the_same_frames(zoo, night_log, capsys):
    from deploy.op_profile import format_profiles, profile_ops

    profiles = profile_ops([get_model("tiny", zoo), get_model("tiny-copy", zoo)], night_log, frames=2, threads=1)
    tiny = profiles[0]
    assert [p.model for p in profiles] == ["tiny", "tiny-copy"] and tiny.frames == 2
    assert tiny.op_nodes["GridSample"] == 1 and tiny.op_nodes.get("Conv", 0) + tiny.op_nodes.get("FusedConv", 0) > 5
    assert tiny.kernel_ms == pytest.approx(sum(tiny.op_ms.values())) and tiny.wall_ms > 0
    assert tiny.share(("GridSample",)) == pytest.approx(tiny.op_ms["GridSample"] / tiny.kernel_ms)
    assert tiny.op_nodes == profiles[1].op_nodes  # the same network: the same nodes
    table = format_profiles(profiles)
    assert "| GridSample" in table and "in int8 kernels" in table
    assert main(["bench", "ops", "--manifest", str(zoo), "--model", "tiny", "--model", "tiny-copy", "--log",
                 str(night_log), "--frames", "1", "--threads", "1"]) == 0
    assert "tiny-copy ms" in capsys.readouterr().out
    outside = zoo.parent.parent / "older.onnx"  # an ONNX file outside the zoo, e.g. an older build from git
    outside.write_bytes((zoo.parent / "tiny.onnx").read_bytes())
    assert main(["bench", "ops", "--manifest", str(zoo), "--model", "tiny", "--onnx", str(outside), "--log",
                 str(night_log), "--frames", "1", "--threads", "1"]) == 0
    assert "tiny@older.onnx ms" in capsys.readouterr().out
    assert main(["bench", "ops", "--manifest", str(zoo), "--model", "tiny", "--onnx", str(outside) + ".gone",
                 "--log", str(night_log), "--frames", "1"]) == 2
    assert "no such ONNX file" in capsys.readouterr().err


class _Clock:
    """A fake backend whose run takes COST ms and logs who ran when."""

    def __init__(self, name, cost, calls):
        self.name, self.cost, self.calls = name, cost, calls
        self.input_names = ["x"]

    def run(self, feed):
        self.calls.append(self.name)
        time.sleep(self.cost / 1000)


def test_timing_rounds_alternate_and_the_ratio_cancels_a_load_change():
    calls = []
    a, b = _Clock("a", 2.0, calls), _Clock("b", 4.0, calls)
    times = time_blocks([a, b], [{"x": 0}, {"x": 1}], rounds=3)
    # An untimed pass each, then blocks a b | b a | a b: neither always runs right after the other.
    assert calls == list("aabb" + "aabb" + "bbaa" + "aabb")
    assert [len(t) for t in times] == [6, 6]
    # Per-round ratios: a round where the machine was three times slower for both gives the same ratio; the ratio of
    # the overall medians would not if the slow round hit one model's block more than the other's.
    ms = [10.0, 10.0, 30.0, 30.0, 10.0, 10.0]
    parent = [20.0, 20.0, 60.0, 60.0, 20.0, 20.0]
    assert block_ratios(ms, parent, 3) == [0.5, 0.5, 0.5]
    with pytest.raises(ValueError, match="rounds"):
        block_ratios(ms, parent[:4], 3)


def test_rename_keeps_file_and_figures_and_children_follow(zoo, tmp_path, capsys):
    from perception.registry import read_manifest

    update_metrics("tiny", {"test_miou": 0.25, "command": "nearfield zoo measure tiny --data data --threads 2",
                            "accuracy_command": "nearfield zoo measure tiny --data data --accuracy-only"}, zoo)
    before = read_zoo(zoo)
    trained = tmp_path / "weights" / "MODELS.toml"
    trained.parent.mkdir()
    trained.write_text('[tiny]\nconfig = "nf-small"\nweights = "tiny.safetensors"\nsha256 = "ab"\n')
    assert main(["zoo", "--manifest", str(zoo), "rename", "tiny", "tiny-r1"]) == 0
    after = read_zoo(zoo)
    assert set(after) == {"tiny-r1", "tiny-copy"}
    old, new = before["tiny"], after["tiny-r1"]
    assert (new.onnx, new.sha256, new.parent) == (old.onnx, old.sha256, old.parent)
    assert new.metrics == {**old.metrics, "command": "nearfield zoo measure tiny-r1 --data data --threads 2",
                           "accuracy_command": "nearfield zoo measure tiny-r1 --data data --accuracy-only"}
    assert after["tiny-copy"].parent == "tiny-r1" and new.verified_onnx()
    assert main(["zoo", "--manifest", str(zoo), "rename", "tiny-copy", "tiny-r1"]) == 2
    assert "already a zoo model" in capsys.readouterr().err
    assert main(["zoo", "--manifest", str(zoo), "rename", "nope", "x"]) == 2
    from deploy.zoo import rename

    rename("tiny-copy", "tiny-copy-r1", zoo, trained_manifest=trained)  # no trained model of that name
    assert set(read_manifest(trained)) == {"tiny"}
    trained.write_text(trained.read_text().replace("[tiny]", "[tiny-r1]"))
    rename("tiny-r1", "tiny-r0", zoo, trained_manifest=trained)
    assert set(read_manifest(trained)) == {"tiny-r0"} and read_manifest(trained)["tiny-r0"].sha256 == "ab"
    assert read_zoo(zoo)["tiny-copy-r1"].parent == "tiny-r0"


def test_rename_keeps_the_entry_s_parent_a_trained_model_that_exists(zoo, tmp_path):
    """`zoo rename nf-small-uss nf-small-uss-r3` without --with-trained made the entry's parent nf-small-uss-r3, a
    trained model that does not exist: a zoo model is not its own parent, its parent of its own name is the trained
    model, which keeps that name."""
    from deploy.zoo import rename
    from perception.registry import read_manifest

    models = read_zoo(zoo)
    models["tiny"] = replace(models["tiny"], parent="tiny")  # exported from the trained model of the same name
    write_zoo(models, zoo)
    assert main(["zoo", "--manifest", str(zoo), "rename", "tiny", "tiny-r1"]) == 0
    after = read_zoo(zoo)
    assert after["tiny-r1"].parent == "tiny" and after["tiny-copy"].parent == "tiny-r1"  # the zoo child follows
    trained = tmp_path / "MODELS.toml"
    trained.write_text('[tiny]\nconfig = "nf-small"\nweights = "tiny.safetensors"\nsha256 = "ab"\n')
    models = {**after, "tiny": replace(after["tiny-r1"], name="tiny")}
    del models["tiny-r1"]
    write_zoo(models, zoo)
    rename("tiny", "tiny-r2", zoo, trained_manifest=trained)  # the trained model renamed too: the parent follows
    assert read_zoo(zoo)["tiny-r2"].parent == "tiny-r2" and set(read_manifest(trained)) == {"tiny-r2"}


def test_rename_carries_the_operating_point_s_record_with_the_model(zoo, tmp_path):
    """The point's command registers into the renamed zoo model; the trained model it was chosen with follows only
    when that was renamed too (the shipped nf-small-r4 still said it was chosen with nf-small, revision 5's name)."""
    from deploy.zoo import rename

    models = read_zoo(zoo)
    point = {"free_confidence": 0.9, "chosen_with": "tiny",
             "command": "nearfield operating-point --model tiny --data data/val-paired --memory 0.95 --register tiny"}
    models["tiny"] = replace(models["tiny"], parent="tiny", operating_point=point)
    write_zoo(models, zoo)
    rename("tiny", "tiny-r1", zoo)  # the trained model keeps its name: so does the record of what chose the point
    op = read_zoo(zoo)["tiny-r1"].operating_point
    assert op["chosen_with"] == "tiny" and op["free_confidence"] == 0.9
    assert op["command"].endswith("--model tiny --data data/val-paired --memory 0.95 --register tiny-r1")
    trained = tmp_path / "MODELS.toml"
    trained.write_text('[tiny-r1]\nconfig = "nf-small"\nweights = "tiny.safetensors"\nsha256 = "ab"\n')
    models = read_zoo(zoo)
    models["tiny-r1"] = replace(models["tiny-r1"], operating_point={**point, "chosen_with": "tiny-r1", "command":
                                point["command"].replace("tiny", "tiny-r1")})
    write_zoo(models, zoo)
    rename("tiny-r1", "tiny-r2", zoo, trained_manifest=trained)
    op = read_zoo(zoo)["tiny-r2"].operating_point
    assert op["chosen_with"] == "tiny-r2" and "--model tiny-r2 " in op["command"]
    assert op["command"].endswith("--register tiny-r2")


def test_rename_rewrites_options_that_name_the_model(zoo, tmp_path):
    """A distilled entry's teachers and an E2GC entry's baseline keep naming the model that was used; the trained
    model behind an entry is rewritten only when the trained model is renamed too."""
    from deploy.zoo import rename, write_zoo

    models = read_zoo(zoo)
    models["tiny-copy"] = replace(models["tiny-copy"], options={
        "teachers": ["tiny", "other"], "baseline": "tiny", "trained": "tiny", "student": "tiny", "steps": 3})
    write_zoo(models, zoo)
    rename("tiny", "tiny-r1", zoo)
    options = read_zoo(zoo)["tiny-copy"].options
    assert options["teachers"] == ["tiny-r1", "other"] and options["baseline"] == "tiny-r1"
    assert options["student"] == "tiny" and options["steps"] == 3  # a config name and a number are left alone
    assert options["trained"] == "tiny"  # no trained model was renamed: it still has its old name
    trained = tmp_path / "MODELS.toml"
    trained.write_text('[tiny-r1]\nconfig = "nf-small"\nweights = "tiny.safetensors"\nsha256 = "ab"\n')
    models = read_zoo(zoo)
    models["tiny-copy"] = replace(models["tiny-copy"], options={**options, "trained": "tiny-r1"})
    write_zoo(models, zoo)
    rename("tiny-r1", "tiny-r0", zoo, trained_manifest=trained)
    options = read_zoo(zoo)["tiny-copy"].options
    assert options["trained"] == "tiny-r0" and options["baseline"] == "tiny-r0"


def test_eval_scores_a_deploy_model_through_the_runtime_pipeline(zoo, night_log, tmp_path, capsys):
    out = tmp_path / "eval" / "tiny.json"
    assert main(["eval", "--model", "tiny", "--manifest", str(zoo), "--data", str(night_log), "--threads", "1",
                 "--json", str(out)]) == 0
    assert "tiny (deploy: fp32, any, tiny.onnx)" in capsys.readouterr().out
    scores = json.loads(out.read_text())
    expected = _expected_scores(zoo.parent / "tiny.onnx", night_log)
    assert scores["frames"] == 3 and scores["miou"] == pytest.approx(expected["miou"], abs=1e-12)
    assert scores["recall_1m"] == expected["recall_1m"]
    # The coverage split comes from the pipeline's raster: every near cell counted once, covered or not.
    cells = scores["near_cells_by_uss_coverage"]
    assert cells["covered"] + cells["uncovered"] == sum(scores["near_cells_by_class"].values())
    assert cells["covered"] > 0
    assert out.with_suffix(".md").is_file() and out.with_suffix(".png").is_file()


def test_eval_skips_frames_without_ground_truth_and_counts_degraded_frames(zoo, night_log, tmp_path, capsys):
    # The last frame's ground truth lost (as a log cut off mid-frame loses it; a frame of data/test/test-00-day.mcap
    # cut at byte 2,200,106 stopped the scoring), camera FV gone from every frame.
    log = without_fv_and_last_truth(night_log, tmp_path / "cut.mcap")
    out = tmp_path / "eval" / "cut.json"
    assert main(["eval", "--model", "tiny", "--manifest", str(zoo), "--data", str(log), "--threads", "1",
                 "--json", str(out)]) == 0
    text = capsys.readouterr().out
    scores = json.loads(out.read_text())
    assert scores["frames"] == 2 and scores["skipped_frames"] == 1 and scores["damaged_logs"] == {}
    assert scores["degraded_frames"] == 2 and scores["degraded_by_reason"] == {"camera FV missing": 2}
    assert scores["by_condition"]["night"]["degraded_frames"] == 2
    assert "Degraded frames (a sensor missing or failed, or a corrupt image): 2 of 2: camera FV missing 2." in text
    assert "Not scored: 1 frame(s) without ground truth." in text
    assert "camera FV missing 2" in out.with_suffix(".md").read_text()
    # A log without any ground truth is still refused, in one line.
    bare = rewrite_log(night_log, tmp_path / "bare.mcap", keep=lambda m: not isinstance(m.value, GroundTruth))
    assert main(["eval", "--model", "tiny", "--manifest", str(zoo), "--data", str(bare), "--threads", "1"]) == 2
    assert "no frame with ground truth (/gt/occupancy) among its 3 readable frame(s)" in capsys.readouterr().err


def test_eval_scores_the_readable_frames_of_a_truncated_log(zoo, night_log, tmp_path, capsys):
    small = rewrite_log(night_log, tmp_path / "small.mcap", chunk_size=32 << 10)
    cut = tmp_path / "cut.mcap"
    cut.write_bytes(small.read_bytes()[: small.stat().st_size * 9 // 10])
    out = tmp_path / "cut.json"
    assert main(["eval", "--model", "tiny", "--manifest", str(zoo), "--data", str(cut), "--threads", "1",
                 "--json", str(out)]) == 0
    scores = json.loads(out.read_text())
    assert 1 <= scores["frames"] < 3 and list(scores["damaged_logs"]) == [str(cut)]
    assert "damaged log(s), their readable frames scored: " in capsys.readouterr().out


def test_eval_hands_the_near_field_settings_to_the_deploy_pipeline(zoo, night_log, capsys, monkeypatch):
    import deploy.measure

    seen = []

    class Recording(deploy.measure.Pipeline):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            seen.append(self.near_field)

    monkeypatch.setattr(deploy.measure, "Pipeline", Recording)
    assert main(["eval", "--model", "tiny", "--manifest", str(zoo), "--data", str(night_log), "--threads", "1",
                 "--free-confidence", "0.9", "--memory", "--echo-floor"]) == 0
    assert [(s.free_confidence, s.memory_decay, s.echo_floor) for s in seen] == [(0.9, 0.95, True)]
    assert "P(free) ≥ 0.9, near-field memory (decay 0.95), echo floor" in capsys.readouterr().out


def test_eval_of_an_unknown_or_unfit_deploy_model_is_a_one_line_error(zoo, night_log, capsys):
    argv = ["eval", "--manifest", str(zoo), "--data", str(night_log)]
    assert main([*argv, "--model", "tiny", "--blind-cameras"]) == 2
    assert "--blind-cameras is for trained models" in capsys.readouterr().err
    assert main([*argv, "--model", "nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'nope': neither a trained model (nf-small," in err and "nor a deploy model in" in err
    assert main([*argv, "--model", "nf-small-r1", "--deploy"]) == 2  # trained, but not in this zoo
    assert "--deploy: no deploy model 'nf-small-r1'" in capsys.readouterr().err
