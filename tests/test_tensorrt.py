"""The TensorRT backend where TensorRT is absent: engine cache keys, the calibration cache reader, the one clear error
when tensorrt is missing; and, where it is installed, an engine that agrees with onnxruntime."""

import importlib.util
import struct

import numpy as np
import pytest

from deploy.backends import create_backend
from deploy.backends.tensorrt import (
    engine_cache_dir,
    engine_cache_key,
    engine_path,
    read_calibration_cache,
)
from sensors.errors import ConfigError, DeployError

HAVE_TRT = importlib.util.find_spec("tensorrt") is not None
SHA = "ab" * 32


def test_the_cache_key_changes_with_everything_an_engine_depends_on():
    base = engine_cache_key(SHA, "10.3.0", "Orin", "fp16")
    assert base == engine_cache_key(SHA, "10.3.0", "Orin", "fp16")
    assert len(base) == 64 and int(base, 16) >= 0
    others = {engine_cache_key("cd" * 32, "10.3.0", "Orin", "fp16"), engine_cache_key(SHA, "10.4.0", "Orin", "fp16"),
              engine_cache_key(SHA, "10.3.0", "NVIDIA H100", "fp16"), engine_cache_key(SHA, "10.3.0", "Orin", "int8"),
              engine_cache_key(SHA, "10.3.0", "Orin", "int8", calibration_sha256="ef" * 32)}
    assert base not in others and len(others) == 5


def test_engine_paths_live_in_the_cache_directory(monkeypatch, tmp_path):
    monkeypatch.setenv("NEARFIELD_ENGINE_CACHE", str(tmp_path))
    key = engine_cache_key(SHA, "10.3.0", "Orin", "fp32")
    p = engine_path("/zoo/nf-small.onnx", key, "fp32")
    assert engine_cache_dir() == tmp_path and p.parent == tmp_path
    assert p.name == f"nf-small-fp32-{key[:20]}.engine"
    monkeypatch.delenv("NEARFIELD_ENGINE_CACHE")
    assert str(engine_cache_dir()).endswith(".cache/nearfield/engines") and "~" not in str(engine_cache_dir())


def test_an_unknown_precision_is_a_config_error():
    with pytest.raises(ConfigError, match="fp8"):
        engine_cache_key(SHA, "10.3.0", "Orin", "fp8")


def _hex(x: float) -> str:
    return struct.pack(">f", x).hex()


def test_the_calibration_cache_reader_gives_the_scales_back(tmp_path):
    scales = {"images": 0.0078125, "backbone/conv1/output": 0.031, "grid": 1.5e-3}
    path = tmp_path / "calib.cache"
    path.write_text("TRT-100300-EntropyCalibration2\n" + "".join(f"{k}: {_hex(v)}\n" for k, v in scales.items()))
    cache = read_calibration_cache(path)
    assert cache.header == "TRT-100300-EntropyCalibration2"
    assert cache.scales.keys() == scales.keys()
    for k, v in scales.items():
        assert cache.scales[k] == pytest.approx(v, rel=1e-7)  # float32 round trip
    assert cache.data == path.read_bytes()  # what TensorRT is handed, byte for byte


@pytest.mark.parametrize("text, match", [
    ("not a cache\nimages: 3c000000\n", "line 1"),
    ("TRT-100300-EntropyCalibration2\nimages 3c000000\n", "line 2"),
    ("TRT-100300-EntropyCalibration2\nimages: 3c00\n", "line 2"),
    ("TRT-100300-EntropyCalibration2\nimages: zzzzzzzz\n", "line 2"),
    ("TRT-100300-EntropyCalibration2\n", "no tensor scales"),
])
def test_a_malformed_calibration_cache_names_file_and_line(tmp_path, text, match):
    path = tmp_path / "bad.cache"
    path.write_text(text)
    with pytest.raises(DeployError, match=match) as e:
        read_calibration_cache(path)
    assert str(path) in str(e.value)


def test_a_missing_calibration_cache_is_a_deploy_error(tmp_path):
    with pytest.raises(DeployError, match="cannot read"):
        read_calibration_cache(tmp_path / "absent.cache")


@pytest.mark.skipif(HAVE_TRT, reason="tensorrt is installed here")
def test_without_tensorrt_the_backend_says_what_to_install(tmp_path):
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"unused")
    with pytest.raises(DeployError, match="tensorrt") as e:
        create_backend("tensorrt", onnx)
    assert "pip install" in str(e.value) and "--backend ort" in str(e.value)


def test_each_zoo_model_gets_the_precision_its_graph_was_made_for():
    """The runtime picks the TensorRT precision from the zoo entry: the quantised TensorRT artifacts are built with
    the INT8 flag (their Q/DQ scales), float models in fp16, and a CPU artifact (asymmetric uint8) is refused
    before any engine is built, whether or not TensorRT is installed."""
    from deploy.backends.tensorrt import QUANTISED_METHODS, precision_for
    from deploy.zoo import read_zoo

    zoo = read_zoo()
    assert precision_for("int8-ptq", "tensorrt") == "int8" and precision_for("fp32", "any") == "fp16"
    assert precision_for("prune-structured", "any") == "fp16" and precision_for("distill", "any") == "fp16"
    for name, m in zoo.items():
        if m.target == "cpu":
            with pytest.raises(ConfigError, match="TensorRT does not take"):
                precision_for(m.method, m.target, name)
        else:
            assert precision_for(m.method, m.target, name) == ("int8" if m.method in QUANTISED_METHODS else "fp16")
    assert any(m.target == "tensorrt" and m.method == "int8-ptq" for m in zoo.values())


def test_the_runtime_refuses_a_cpu_artifact_on_tensorrt(rig):
    from deploy.pipeline import Pipeline
    from deploy.zoo import read_zoo

    cpu = next(m for m in read_zoo().values() if m.target == "cpu")
    with pytest.raises(ConfigError, match="target cpu"):
        Pipeline(cpu, rig, backend="tensorrt")


def _tiny_onnx(path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).normal(size=(4, 3, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["y"])],
        "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 16, 16])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.mark.skipif(not HAVE_TRT, reason="tensorrt not installed on this machine")
def test_an_engine_agrees_with_onnxruntime_and_is_cached(tmp_path):
    onnx = _tiny_onnx(tmp_path / "tiny.onnx")
    x = np.random.default_rng(1).normal(size=(1, 3, 16, 16)).astype(np.float32)
    ref = create_backend("ort", onnx).run({"x": x})["y"].copy()
    trt = create_backend("tensorrt", onnx, precision="fp32", cache_dir=tmp_path / "engines")
    np.testing.assert_allclose(trt.run({"x": x})["y"], ref, atol=1e-4)
    assert trt.engine_file.is_file()
    trt.close()
    again = create_backend("tensorrt", onnx, precision="fp32", cache_dir=tmp_path / "engines")
    assert again.engine_file == trt.engine_file and len(list((tmp_path / "engines").iterdir())) == 1
    again.close()
