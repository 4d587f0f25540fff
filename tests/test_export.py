"""Export checks: an nf-small-shaped fresh model exports, passes the ONNX checker, the contract and TensorRT's
operator table, and matches torch on real simulated frames; hand-built graphs with unsupported operators, custom ops
or rank-5 GridSample are rejected; `nearfield export` registers only files that pass."""

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

torch = pytest.importorskip("torch")

from app.cli import main  # noqa: E402
from deploy.checks import (  # noqa: E402
    check_onnx,
    check_operators,
    check_parity,
    contract_problems,
    load_trt_table,
    simulate_parity_log,
)
from deploy.export import export_onnx  # noqa: E402
from deploy.zoo import read_zoo  # noqa: E402
from perception.bev_config import ego_mask  # noqa: E402
from perception.checkpoint import save_weights  # noqa: E402
from perception.model import FusionNet, load_model_config  # noqa: E402
from sensors.errors import DeployError  # noqa: E402
from sensors.files import file_sha256  # noqa: E402
from sensors.log import LogReader  # noqa: E402

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def sim_log(tmp_path_factory):
    return simulate_parity_log(tmp_path_factory.mktemp("parity"), frames=3)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A freshly initialised nf-small and its ONNX export."""
    config = load_model_config("nf-small")
    torch.manual_seed(0)
    model = FusionNet(config).eval()
    path = export_onnx(model, config, tmp_path_factory.mktemp("export") / "nf-small.onnx")
    return model, config, path


def test_the_nf_small_export_passes_every_check(small):
    _, _, path = small
    check_onnx(path)  # raises on any problem
    proto = onnx.load(str(path))
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [17]
    assert [i.name for i in proto.graph.input] == ["images", "grid", "valid", "uss"]
    assert proto.graph.input[0].type.tensor_type.elem_type == TensorProto.UINT8
    assert [o.name for o in proto.graph.output] == ["class_logits", "occupancy_logits"]
    table = load_trt_table()
    assert {n.op_type for n in proto.graph.node} <= set(table.supported)
    assert any(n.op_type == "GridSample" for n in proto.graph.node)


def test_parity_with_torch_on_simulated_frames(small, sim_log):
    model, config, path = small
    report = check_parity(model, path, [sim_log], frames=3)
    assert report.frames == 3
    assert report.max_abs <= 1e-3 and report.agreement >= 0.999
    with LogReader(sim_log) as reader:
        rig = reader.rig
    ego = ego_mask(rig.vehicle, config.bev.grid(rig))
    assert report.cells == 3 * int((~ego).sum())  # every cell outside the ego footprint of every frame
    assert "parity on 3 frames" in str(report)


def test_parity_fails_with_the_numbers_for_a_different_network(small, sim_log):
    _, config, path = small
    torch.manual_seed(1)
    other = FusionNet(config).eval()
    with torch.no_grad():
        for p in other.parameters():  # make the difference large enough to show in the logits
            p.add_(torch.randn_like(p) * 0.5)
    with pytest.raises(DeployError, match=r"disagree: parity on 2 frames: class logits max") as e:
        check_parity(other, path, [sim_log], frames=2)
    assert "limits: 0.001 and 99.9%" in str(e.value)


# --- operators on hand-built graphs -------------------------------------------------------------------------------

def _model(nodes, inputs, outputs, opset=17, inits=(), extra_opsets=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), *extra_opsets])


def _t(name, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def test_a_custom_domain_op_is_rejected():
    m = _model([helper.make_node("FancyWarp", ["x"], ["y"], domain="com.nearfield")], [_t("x", [1, 4])],
               [_t("y", [1, 4])], extra_opsets=[helper.make_opsetid("com.nearfield", 1)])
    problems = check_operators(m)
    assert len(problems) == 1 and "custom op com.nearfield::FancyWarp" in problems[0]


@pytest.mark.parametrize("op, why", [("Unique", "listed as unsupported"), ("MaxRoiPool", "listed as unsupported"),
                                     ("Frobnicate", "not in the support matrix")])
def test_an_operator_outside_the_table_is_rejected(op, why):
    m = _model([helper.make_node("Relu", ["x"], ["r"]), helper.make_node(op, ["r"], ["y"], name="bad")],
               [_t("x", [4])], [_t("y", [4])])
    assert check_operators(m) == [f"node bad: operator {op} is {why} for TensorRT {load_trt_table().tensorrt}"]


def _grid_sample(rank, opset):
    spatial = [6] * (rank - 2)
    return _model([helper.make_node("GridSample", ["x", "g"], ["y"], name="gs",
                                    mode="linear" if opset >= 20 else "bilinear")],
                  [_t("x", [1, 2, *spatial]), _t("g", [1, *spatial, rank - 2])], [_t("y", [1, 2, *spatial])],
                  opset=opset)


def test_rank4_grid_sample_at_opset_17_passes():
    assert check_operators(_grid_sample(4, 17)) == []


def test_rank5_grid_sample_is_rejected():
    problems = check_operators(_grid_sample(5, 20))
    assert any("rank-5 input" in p for p in problems)
    assert any("opset 20" in p and "up to opset 19" in p for p in problems)
    # Without the rank problem, opset-20 GridSample is still refused (for its opset and its renamed mode).
    rank4 = check_operators(_grid_sample(4, 20))
    assert len(rank4) == 2 and "up to opset 19" in rank4[0] and "mode='linear'" in rank4[1]


def test_resize_modes_and_pool_dilations_follow_the_table():
    x = _t("x", [1, 2, 8, 8])
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "s")
    ok = helper.make_node("Resize", ["x", "", "s"], ["y"], mode="linear", coordinate_transformation_mode="half_pixel")
    cubic = helper.make_node("Resize", ["x", "", "s"], ["y"], name="r", mode="cubic")
    y = _t("y", [1, 2, 16, 16])
    assert check_operators(_model([ok], [x], [y], inits=[scales])) == []
    assert check_operators(_model([cubic], [x], [y], inits=[scales])) == [
        "node r: Resize mode='cubic'; TensorRT takes nearest, linear"]
    pool = helper.make_node("MaxPool", ["x"], ["y"], name="p", kernel_shape=[2, 2], dilations=[2, 2])
    assert "dilations=[2, 2]" in check_operators(_model([pool], [x], [_t("y", [1, 2, 6, 6])]))[0]


def test_quantisation_zero_points_must_be_zero():
    def qdq(zero):
        zp = numpy_helper.from_array(np.array(zero, np.int8), "zp")
        sc = numpy_helper.from_array(np.array(0.1, np.float32), "sc")
        nodes = [helper.make_node("QuantizeLinear", ["x", "sc", "zp"], ["q"], name="q"),
                 helper.make_node("DequantizeLinear", ["q", "sc", "zp"], ["y"], name="dq")]
        return _model(nodes, [_t("x", [4])], [_t("y", [4])], inits=[zp, sc])

    assert check_operators(qdq(0)) == []
    problems = check_operators(qdq(3))
    assert len(problems) == 2 and all("is not zero" in p for p in problems)


def test_contract_problems_name_opset_outputs_and_image_type():
    m = _model([helper.make_node("Identity", ["images"], ["logits"])], [_t("images", [1, 4])], [_t("logits", [1, 4])],
               opset=18)
    problems = contract_problems(m)
    assert any("opset 18" in p for p in problems)
    assert any("'images' is not uint8" in p for p in problems)
    assert any("outputs logits" in p for p in problems)


def _unique_model(shape):
    return _model([helper.make_node("Unique", ["images"], ["class_logits"]),
                   helper.make_node("Identity", ["images"], ["occupancy_logits"])],
                  [_t("images", [4], TensorProto.UINT8)],
                  [_t("class_logits", shape, TensorProto.UINT8), _t("occupancy_logits", [4], TensorProto.UINT8)])


def test_check_onnx_raises_with_every_problem(tmp_path):
    path = tmp_path / "bad.onnx"
    onnx.save(_unique_model(["n"]), str(path))
    with pytest.raises(DeployError, match=r"1 deploy check\(s\) failed .*operator Unique is listed as unsupported"):
        check_onnx(path)


def test_check_onnx_reports_what_the_onnx_checker_rejects(tmp_path):
    path = tmp_path / "invalid.onnx"
    onnx.save(_unique_model(None), str(path))  # an output without a shape field: invalid ONNX
    with pytest.raises(DeployError, match="the ONNX checker rejects the file"):
        check_onnx(path)


def test_the_table_names_its_source_and_tensorrt_version():
    table = load_trt_table()
    assert table.source.startswith("https://github.com/onnx/onnx-tensorrt/")
    assert table.tensorrt.startswith("10.")
    assert table.opset_min <= 17 <= table.opset_max
    assert "GridSample" in table.supported and table.checks["GridSample"]["input_rank"] == [4]
    assert not set(table.supported) & table.unsupported


# --- the command --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, small):
    """A training run directory holding the fresh nf-small (what `nearfield train --out` leaves)."""
    model, config, _ = small
    d = tmp_path_factory.mktemp("run")
    (d / "config.toml").write_text(config.to_toml())
    sha = save_weights(model, d / "last.safetensors", "float32")
    (d / "last.json").write_text(json.dumps({"weights_sha256": sha, "step": 1}))
    return d


def test_export_command_registers_a_checked_file(run_dir, sim_log, tmp_path, capsys):
    manifest = tmp_path / "zoo" / "ZOO.toml"
    out = tmp_path / "out" / "m.onnx"
    rc = main(["export", "--model", str(run_dir), "--out", str(out), "--register", "fresh", "--manifest",
               str(manifest), "--parity-data", str(sim_log), "--parity-frames", "2"])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "parity on 2 frames" in text and "registered as fresh" in text
    entry = read_zoo(manifest)["fresh"]
    assert entry.verified_onnx() == manifest.parent / "fresh.onnx"
    assert file_sha256(out) == entry.sha256
    assert entry.metrics["parity_max_abs"] <= 1e-3 and entry.metrics["parity_agreement"] >= 0.999
    assert entry.inputs["images"] == (1, 4, 3, 192, 256)


def test_a_new_revision_is_exported_into_a_file_of_its_own(run_dir, sim_log, tmp_path, capsys):
    manifest = tmp_path / "zoo" / "ZOO.toml"
    args = ["export", "--model", str(run_dir), "--manifest", str(manifest), "--parity-data", str(sim_log),
            "--parity-frames", "1"]
    assert main([*args, "--register", "m"]) == 0
    old = read_zoo(manifest)["m"]
    # The old revision keeps its file under a new name; the new one may not take that file.
    manifest.write_text(manifest.read_text().replace("[m]", "[m-r1]").replace("[m.", "[m-r1."))
    assert main([*args, "--register", "m"]) == 2
    assert "belongs to zoo model m-r1" in capsys.readouterr().err
    assert main([*args, "--register", "m", "--file", "m-r2"]) == 0
    zoo = read_zoo(manifest)
    assert zoo["m"].onnx.name == "m-r2.onnx" and zoo["m-r1"].onnx.name == "m.onnx"
    assert zoo["m-r1"].verified_onnx() and zoo["m-r1"].sha256 == old.sha256
    assert main([*args[:3], "--out", str(tmp_path / "x.onnx"), "--file", "y"]) == 2
    assert "--file names the zoo file" in capsys.readouterr().err


def test_a_file_that_fails_a_check_is_neither_registered_nor_left(run_dir, sim_log, tmp_path, capsys, monkeypatch):
    import deploy.checks

    monkeypatch.setattr(deploy.checks, "check_operators", lambda proto, table=None: ["node x: operator Foo"])
    manifest = tmp_path / "zoo" / "ZOO.toml"
    rc = main(["export", "--model", str(run_dir), "--register", "fresh", "--manifest", str(manifest),
               "--parity-data", str(sim_log)])
    err = capsys.readouterr().err
    assert rc == 2 and "nearfield export: error:" in err and "operator Foo" in err
    assert read_zoo(manifest) == {}
    assert not list((tmp_path / "zoo").glob("*.onnx"))
    out = tmp_path / "plain.onnx"
    assert main(["export", "--model", str(run_dir), "--out", str(out), "--parity-data", str(sim_log)]) == 2
    assert not out.exists()


def test_export_without_a_destination_is_one_line(run_dir, capsys):
    assert main(["export", "--model", str(run_dir)]) == 2
    assert "give --out FILE.onnx, --register ZOONAME, or both" in capsys.readouterr().err


def test_export_never_writes_over_an_input_or_another_zoo_model_s_file(run_dir, sim_log, tmp_path, capsys):
    import shutil

    from deploy.zoo import ZooModel, register

    drive = tmp_path / "val" / "val-000.mcap"
    drive.parent.mkdir()
    shutil.copyfile(sim_log, drive)
    kept = drive.read_bytes()
    assert main(["export", "--model", str(run_dir), "--out", str(drive), "--parity-data", str(drive)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is an input of this command" in err
    assert drive.read_bytes() == kept  # the drive log is still there, whole
    assert main(["export", "--model", str(run_dir), "--out", str(run_dir / "last.safetensors")]) == 2
    assert "is an input of this command" in capsys.readouterr().err
    # The file of a zoo model, in the manifest beside it or the one registered into.
    manifest = tmp_path / "zoo" / "ZOO.toml"
    manifest.parent.mkdir()
    theirs = manifest.parent / "m-r5.onnx"
    theirs.write_bytes(b"zoo model m's file")
    register(ZooModel("m", theirs, "", "m"), manifest)
    for extra in ([], ["--register", "fresh", "--manifest", str(manifest)]):
        assert main(["export", "--model", str(run_dir), "--out", str(theirs), "--parity-data", str(drive),
                     *extra]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "m-r5.onnx: is the file of zoo model m" in err, err
    assert theirs.read_bytes() == b"zoo model m's file" and list(read_zoo(manifest)) == ["m"]


def test_a_failed_check_leaves_what_was_at_out(run_dir, sim_log, tmp_path, capsys, monkeypatch):
    import deploy.checks

    out = tmp_path / "m.onnx"
    out.write_bytes(b"the previous build")
    with monkeypatch.context() as m:
        m.setattr(deploy.checks, "check_operators", lambda proto, table=None: ["node x: operator Foo"])
        assert main(["export", "--model", str(run_dir), "--out", str(out), "--parity-data", str(sim_log),
                     "--parity-frames", "1"]) == 2
    assert "operator Foo" in capsys.readouterr().err
    assert out.read_bytes() == b"the previous build" and [p.name for p in tmp_path.iterdir()] == ["m.onnx"]
    assert main(["export", "--model", str(run_dir), "--out", str(out), "--parity-data", str(sim_log),
                 "--parity-frames", "1"]) == 0  # passing every check, it takes the place
    check_onnx(out)
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


def test_export_replaces_a_zoo_model_only_with_replace(run_dir, small, sim_log, tmp_path, capsys, caplog):
    from deploy.zoo import set_operating_point, update_metrics

    model, config, _ = small
    manifest = tmp_path / "zoo" / "ZOO.toml"
    args = ["export", "--register", "m", "--manifest", str(manifest), "--parity-data", str(sim_log),
            "--parity-frames", "1"]
    assert main([*args, "--model", str(run_dir)]) == 0
    assert f"{manifest}: no such zoo manifest, a new one was created" in capsys.readouterr().out
    update_metrics("m", {"test_miou": 0.4}, manifest)
    set_operating_point("m", {"free_confidence": 0.9}, manifest)
    before = manifest.read_bytes()
    assert main([*args, "--model", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "zoo model m is in" in err and "--replace" in err and "zoo rename m m-old" in err
    assert manifest.read_bytes() == before
    assert main([*args, "--model", str(run_dir), "--replace"]) == 0  # the same weights: the same file, all holds
    entry = read_zoo(manifest)["m"]
    assert entry.metrics["test_miou"] == 0.4 and entry.operating_point == {"free_confidence": 0.9}
    # Other weights: what was measured on the old file is dropped, and said so.
    other = tmp_path / "run-2"
    other.mkdir()
    (other / "config.toml").write_text(config.to_toml())
    changed = FusionNet(config).eval()
    changed.load_state_dict(model.state_dict())
    with torch.no_grad():
        next(changed.parameters()).add_(0.01)
    sha = save_weights(changed, other / "last.safetensors", "float32")
    (other / "last.json").write_text(json.dumps({"weights_sha256": sha, "step": 1}))
    with caplog.at_level("WARNING", logger="deploy.zoo"):
        assert main([*args, "--model", str(other), "--replace"]) == 0
    entry = read_zoo(manifest)["m"]
    assert "test_miou" not in entry.metrics and not entry.operating_point and entry.parent == str(other)
    assert "figures (test_miou)" in caplog.text and "operating point (free_confidence 0.9)" in caplog.text
    assert main(["export", "--model", str(run_dir), "--out", str(tmp_path / "x.onnx"), "--replace"]) == 2
    assert "--replace replaces a zoo model; it needs --register" in capsys.readouterr().err
