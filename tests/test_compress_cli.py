"""`nearfield compress`: option parsing, the method list, one-line errors, and int8-ptq end to end into a manifest
(measured when the data folder has a test split)."""

import pytest

from app.cli import main
from deploy.commands.compress import parse_options
from deploy.zoo import read_zoo
from perception.bev_config import BevConfig
from perception.checkpoint import CONFIG_FILE, LAST, save_checkpoint
from perception.model import FusionNet, load_model_config
from sensors.errors import ConfigError
from sim_data.simulate import DriveSpec, simulate_drive

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def tiny_config():
    return load_model_config("nf-small").replace(
        name="tiny", camera_width=0.25, uss_width=0.25, neck_channels=8, bev_channels=8, decoder_channels=8,
        bev=BevConfig(extent=16.0, cell=0.8, heights=(0.5, 1.0), image_size=(64, 48)))


def test_options_are_typed():
    assert parse_options(["weights=int4", "lr=1e-4", "steps=3", "fast=true", "calib-frames=2"]) == {
        "weights": "int4", "lr": 1e-4, "steps": 3, "fast": True, "calib_frames": 2}
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_options(["weights"])


def test_method_list_names_the_quantisation_methods(capsys):
    assert main(["compress", "--method", "list"]) == 0
    out = capsys.readouterr().out
    assert all(m in out for m in ("int8-ptq", "qat", "qat-int4", "qat-ternary"))


def test_bad_input_ends_in_one_line(capsys, tmp_path):
    assert main(["compress", "--method", "int8-ptq", "--out", "x"]) == 2
    assert "--from and --out" in capsys.readouterr().err
    assert main(["compress", "--method", "int9", "--from", "a", "--out", "x", "--manifest",
                 str(tmp_path / "Z.toml")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown compression method 'int9'" in err
    for method, opt, said in (("int8-ptq", "percentile=abc", "option percentile='abc' must be a number"),
                              ("int8-ptq", "calib_frames=1.5", "option calib_frames=1.5 must be a whole number"),
                              ("qat", "lr=fast", "option lr='fast' must be a number")):
        assert main(["compress", "--method", method, "--from", "nf-small", "--out", "x", "--data", str(tmp_path),
                     "--opt", opt, "--manifest", str(tmp_path / "Z.toml"), "--no-measure"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and said in err, err


@pytest.mark.parametrize(("method", "args", "said"), [
    ("int8-ptq", ["--opt", "calibraton=entropy"], "unknown option --opt calibraton (did you mean calibration?)"),
    ("int8-ptq", ["--opt", "unknown_key=1"], "unknown option --opt unknown_key; int8-ptq reads calib_frames, "
                                             "calibration, percentile, targets, threads"),
    ("int8-ptq", ["--steps", "500"], "--steps (--opt steps) is not used by int8-ptq"),
    ("qat", ["--calibration", "entropy"], "--calibration (--opt calibration) is not used by qat"),
    ("qat-int4", ["--opt", "weights=int8"], "--opt weights is not used by qat-int4"),
    ("prune-magnitude", ["--opt", "kd=true"], "--opt kd is not used by prune-magnitude"),
    ("prune-lamp", ["--opt", "sparsty=0.5"], "(did you mean sparsity?)"),
    ("qat", ["--steps", "0"], "qat-int8: --steps 0 fine-tunes nothing"),
])
def test_an_option_the_method_does_not_read_is_a_one_line_error(tmp_path, capsys, method, args, said):
    manifest = tmp_path / "zoo" / "ZOO.toml"
    assert main(["compress", "--method", method, "--from", "nowhere", "--out", "x", "--data", str(tmp_path),
                 *args, "--manifest", str(manifest), "--no-measure"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and said in err, err
    assert not manifest.parent.exists()  # refused before anything was made


def test_compress_refuses_a_zoo_name_or_file_it_would_replace(tmp_path, capsys):
    from deploy.zoo import ZooModel, register

    manifest = tmp_path / "zoo" / "ZOO.toml"
    manifest.parent.mkdir()
    for name, stem in (("m", "m-r2"), ("m-int8", "m-int8"), ("n-tensorrt", "n-tensorrt")):
        (manifest.parent / f"{stem}.onnx").write_bytes(name.encode())
        register(ZooModel(name, manifest.parent / f"{stem}.onnx", "", "m"), manifest)
    before = {p.name: p.read_bytes() for p in manifest.parent.iterdir()}
    args = ["compress", "--method", "int8-ptq", "--from", "nowhere", "--data", str(tmp_path), "--manifest",
            str(manifest)]
    for out, said in (("m-int8", "zoo model m-int8 is in"), ("n", "zoo model n-tensorrt is in"),  # OUT-tensorrt too
                      ("m-r2", "m-r2.onnx: is the file of zoo model m")):
        assert main([*args, "--out", out]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and said in err, err
    assert "give --replace to replace it" in err or "choose another file name" in err
    assert {p.name: p.read_bytes() for p in manifest.parent.iterdir()} == before
    # --replace lets the name through to the method (here to its next check, the unknown source).
    assert main([*args, "--out", "m-int8", "--replace"]) == 2
    err = capsys.readouterr().err
    assert "compress --from 'nowhere': neither a zoo model" in err and "`nearfield zoo list`" in err
    assert "nearfield models" not in err  # no such command


@pytest.mark.slow
def test_int8_ptq_from_a_run_directory_is_registered_and_measured(tmp_path, rig, capsys):
    data = tmp_path / "data"
    simulate_drive(DriveSpec("train-0", 41, 3), data / "train", rig, scale=0.25)
    simulate_drive(DriveSpec("test-0", 42, 2), data / "test", rig, scale=0.25)
    run = tmp_path / "run"
    run.mkdir()
    (run / CONFIG_FILE).write_text(tiny_config().to_toml())
    save_checkpoint(run, LAST, FusionNet(tiny_config()).eval(), {"step": 0})
    manifest = tmp_path / "zoo" / "ZOO.toml"
    assert main(["compress", "--method", "int8-ptq", "--from", str(run), "--out", "t-int8", "--data", str(data),
                 "--calib-frames", "2", "--calibration", "percentile", "--opt", "targets=cpu", "--manifest",
                 str(manifest), "--threads", "1"]) == 0
    assert f"{manifest}: no such zoo manifest, a new one was created" in capsys.readouterr().out
    zoo = read_zoo(manifest)
    assert list(zoo) == ["t-int8"]
    entry = zoo["t-int8"]
    assert entry.options["calibration"] == "percentile" and entry.options["calib_frames"] == 2
    assert entry.metrics  # measured on data/test
    assert main(["compress", "--method", "int8-ptq", "--from", str(run), "--out", "t-int8b", "--data", str(data),
                 "--calib-frames", "2", "--opt", "targets=cpu", "--manifest", str(manifest), "--threads", "1",
                 "--no-measure"]) == 0
    assert read_zoo(manifest)["t-int8b"].metrics == {}  # registered, measuring left for `zoo measure`
    out = capsys.readouterr().out
    assert "t-int8b: int8-ptq (cpu)" in out and "a new one was created" not in out
