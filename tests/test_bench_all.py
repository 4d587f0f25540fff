"""`nearfield bench all --quick` on a tiny model config and a tiny zoo: every section gives its figures, the zoo's
compression metrics come through unchanged, JSON and Markdown outputs, bad --only."""

import json
import math
import shutil

import pytest

from app.cli import main
from deploy.bench_all import SECTIONS, BenchSettings, bench_all, parse_sections
from sensors.errors import ConfigError
from sensors.timing import machine_description

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny model config (TOML) and a zoo of two models: 'tiny' and 'tiny-int8', its child with metrics."""
    import tomli_w
    import torch

    from deploy.export import export_onnx, input_shapes
    from deploy.zoo import ZooModel, register, update_metrics
    from perception.bev_config import BevConfig
    from perception.model import FusionNet, ModelConfig

    root = tmp_path_factory.mktemp("bench")
    bev = BevConfig(extent=16.0, cell=0.4, heights=(0.25, 0.75), image_size=(64, 64))  # backbones need 32 | size
    config = ModelConfig(name="tiny-bench", camera_width=0.125, uss_width=0.125, neck_channels=8, bev_channels=8,
                         decoder_channels=8, bev=bev).replace(train={"batch_size": 2, "num_workers": 0})
    (root / "tiny.toml").write_text(tomli_w.dumps(config.to_dict()))
    torch.manual_seed(0)
    manifest = root / "zoo" / "ZOO.toml"
    onnx = export_onnx(FusionNet(config).eval(), config, manifest.parent / "tiny.onnx")
    register(ZooModel("tiny", onnx, "", "test", bev=bev, inputs=input_shapes(onnx)), manifest)
    child = manifest.parent / "tiny-int8.onnx"
    shutil.copy(onnx, child)
    register(ZooModel("tiny-int8", child, "", "tiny", method="int8-ptq", bev=bev, inputs=input_shapes(child),
                      options={"calibration_frames": 16, "scheme": "u8s8"}, notes="same file: a stand-in child"),
             manifest)
    update_metrics("tiny-int8", {"test_miou": 0.25, "ort_cpu_ratio": 0.5, "measured_on": "here"}, manifest)
    return root / "tiny.toml", manifest


def test_sections_parse_in_order_and_typos_fail():
    assert parse_sections(None) == SECTIONS
    assert parse_sections("runtime, sim") == ("sim", "runtime")
    with pytest.raises(ConfigError, match=r"unknown section\(s\) simulation; choose from sim,decode"):
        parse_sections("simulation")


def test_bench_all_quick_gives_every_section_in_one_table(tiny, tmp_path, capsys):
    config, manifest = tiny
    out_json, out_md = tmp_path / "bench.json", tmp_path / "bench.md"
    assert main(["bench", "all", "--quick", "--config", str(config), "--manifest", str(manifest), "--threads", "1",
                 "--json", str(out_json), "--markdown", str(out_md)]) == 0
    printed = capsys.readouterr().out
    assert f"machine: {machine_description()}" in printed
    data = json.loads(out_json.read_text())
    rows = data["rows"]
    assert {r["section"] for r in rows} == set(SECTIONS)
    assert set(data["seconds"]) == set(SECTIONS) and data["settings"]["quick"] is True
    timings = [r for r in rows if r["unit"] in ("ms", "ms/frame", "frames/s", "samples/s", "cycles/s")]
    assert timings and all(isinstance(r["value"], float) and math.isfinite(r["value"]) and r["value"] > 0
                           for r in timings if not r["metric"].startswith("stage "))

    def figure(section, metric, item_part=""):
        (value,) = [r["value"] for r in rows if r["section"] == section and r["metric"] == metric
                    and item_part in r["item"]]
        return value

    assert figure("sim", "1 worker process(es)") > 0 and figure("sim", "one process") > 0
    assert figure("train", "throughput") == pytest.approx(2 / figure("train", "step") * 1e3)
    assert figure("network", "latency per image", "resnet18 x0.125, 64x64") > 0
    assert figure("network", "latency per frame", "tiny-bench whole network") > 0
    for model in ("tiny", "tiny-int8"):  # per zoo model, per stage of the runtime
        assert figure("runtime", "inference p50", f"{model} (") > 0
        assert figure("runtime", "end to end", f"{model} (") > 0
    # Compression figures are the zoo's, passed through; the size ratio is computed from the files.
    assert figure("compression", "test_miou", "tiny-int8") == 0.25
    assert figure("compression", "ort_cpu_ratio", "tiny-int8") == 0.5
    assert figure("compression", "file size / parent's", "tiny-int8 (int8-ptq, from tiny)") == 1.0
    assert figure("compression", "option calibration_frames", "tiny-int8") == 16
    assert not [r for r in rows if r["metric"] in ("measured_on", "option scheme")]  # text stays out of the table
    md = out_md.read_text()
    assert md.startswith(f"Measured with `nearfield bench all --quick` on: {machine_description()}.")
    assert "| section " in md and md.count("\n| ") == len(rows) + 1  # header + one line per figure
    assert "tiny-int8: same file: a stand-in child" in md


def test_only_and_an_empty_zoo(tiny, tmp_path):
    config, _ = tiny
    report = bench_all(BenchSettings(quick=True, config=config, manifest=tmp_path / "none.toml"),
                       only="can,runtime,compression", progress=False)
    assert {r.section for r in report.rows} == {"can"}
    assert f"runtime: the zoo ({tmp_path / 'none.toml'}) has no model yet" in report.notes
    with pytest.raises(ConfigError, match="--models nope: not in the zoo"):
        bench_all(BenchSettings(quick=True, manifest=tiny[1], models=("nope",)), only="runtime", progress=False)


def test_bad_only_is_one_line(capsys):
    assert main(["bench", "all", "--only", "sim,gpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown section(s) gpu" in err
