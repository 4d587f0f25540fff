"""FLOPs counted from ONNX graphs (equal to torch's count, the same for a QDQ twin, smaller after channel pruning),
the Pareto front of the zoo and `nearfield zoo plot`."""

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from app.cli import main  # noqa: E402
from deploy.export import export_onnx, input_shapes  # noqa: E402
from deploy.flops import onnx_flops  # noqa: E402
from deploy.prune import count_flops, prune_structured  # noqa: E402
from deploy.zoo import ZooModel, register, update_metrics  # noqa: E402
from deploy.zoo_plot import FAMILY_COLOURS, ZooPoint, family, pareto_front, plot_zoo, zoo_points  # noqa: E402
from perception.bev_config import BevConfig  # noqa: E402
from perception.model import FusionNet, load_model_config  # noqa: E402
from sensors.errors import ConfigError  # noqa: E402

pytestmark = pytest.mark.usefixtures("torch_one_thread")

TINY_BEV = BevConfig(extent=16.0, cell=0.4, heights=(0.25, 0.75), image_size=(64, 64))


@pytest.fixture(scope="module")
def tiny():
    config = load_model_config("nf-small").replace(name="tiny", camera_width=0.125, uss_width=0.125,
                                                   neck_channels=8, bev_channels=8, decoder_channels=8, bev=TINY_BEV)
    torch.manual_seed(0)
    return FusionNet(config).eval(), config


def test_onnx_flops_equal_torch_count_and_fall_with_pruning(tiny, tmp_path):
    model, config = tiny
    path = export_onnx(model, config, tmp_path / "tiny.onnx")
    assert onnx_flops(path) == count_flops(model, config) > 0
    torch.manual_seed(0)
    pruned = FusionNet(config).eval()
    result = prune_structured(pruned, 0.5, round_to=1)  # in place; the tiny layers have 8 channels
    small = export_onnx(pruned, config, tmp_path / "small.onnx")
    assert onnx_flops(small) == count_flops(pruned, config) == result.flops_after
    assert onnx_flops(small) / onnx_flops(path) == pytest.approx(result.flops_ratio) and result.flops_ratio < 0.6


def test_conv_and_matmul_flops_by_hand(tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.zeros((6, 2, 3, 3), np.float32), "w")  # 6 out, 4 in, groups 2
    m = numpy_helper.from_array(np.zeros((10, 7), np.float32), "m")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1], group=2),
         helper.make_node("Reshape", ["y", "shape"], ["r"]),
         helper.make_node("MatMul", ["r", "m"], ["z"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 5, 6])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [18, 7])],
        [w, m, numpy_helper.from_array(np.array([18, 10], np.int64), "shape")])
    path = tmp_path / "hand.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    conv = 2 * (6 * 5 * 6) * (2 * 3 * 3)  # every output element: Cin/groups * kh * kw multiply-adds
    matmul = 2 * 18 * 7 * 10
    assert onnx_flops(path) == conv + matmul


def test_pareto_front_keeps_only_undominated_models():
    pts = [ZooPoint("fast", "a", 10, 0.10), ZooPoint("slow-bad", "a", 30, 0.09), ZooPoint("mid", "b", 20, 0.15),
           ZooPoint("best", "a", 40, 0.20), ZooPoint("twin", "b", 40, 0.20), ZooPoint("worse", "b", 45, 0.20)]
    assert [p.name for p in pareto_front(pts)] == ["fast", "mid", "best", "twin"]
    assert pareto_front([]) == []


def test_plot_draws_every_measured_model(tmp_path):
    pts = [ZooPoint("a", "fp32", 40, 0.2), ZooPoint("b", "int8-ptq", 15, 0.19)]
    img = plot_zoo(pts, tmp_path / "zoo.png")
    disk = cv2.cvtColor(cv2.imread(str(tmp_path / "zoo.png")), cv2.COLOR_BGR2RGB)
    assert np.array_equal(img, disk) and img.shape == (560, 900, 3)
    for method in ("fp32", "int8-ptq"):  # each model's marker in its family's colour (the legend has a smaller one)
        colour = FAMILY_COLOURS[family(method)]
        assert np.all(img == colour, axis=-1).sum() > 150
    assert not np.all(img == FAMILY_COLOURS["qat"], axis=-1).any()  # no model of that family, no such pixel
    with pytest.raises(ConfigError, match="zoo measure"):
        plot_zoo([], tmp_path / "none.png")
    with pytest.raises(ConfigError, match=r"zoo\.txt: the zoo plot is written as PNG"):
        plot_zoo(pts, tmp_path / "zoo.txt")


def test_zoo_plot_command_leaves_out_unmeasured_models(tiny, tmp_path, capsys):
    model, config = tiny
    manifest = tmp_path / "zoo" / "ZOO.toml"
    manifest.parent.mkdir()
    path = export_onnx(model, config, manifest.parent / "tiny.onnx")
    for name in ("tiny", "tiny-b"):
        if name != "tiny":
            (manifest.parent / f"{name}.onnx").write_bytes(path.read_bytes())
        register(ZooModel(name, manifest.parent / f"{name}.onnx", "", "t", "fp32", "any", config.bev,
                          input_shapes(path)), manifest)
    update_metrics("tiny", {"test_miou": 0.3, "ort_cpu_ms": 5.0}, manifest)
    out = tmp_path / "plot.png"
    assert main(["zoo", "--manifest", str(manifest), "plot", str(out)]) == 0
    said = capsys.readouterr().out
    assert "1 model(s)" in said and "left out: tiny-b" in said and out.is_file()


def test_derived_models_sit_at_their_parents_latency_over_the_same_run_speedup():
    rows = [
        {"name": "root", "method": "fp32", "parent": "root", "test_miou": 0.2, "ort_cpu_ms": 20.0, "speedup": None},
        # Its own run drifted (30 ms for a 2x speed-up over a 20 ms root): placed at 20 / 2 = 10 ms.
        {"name": "child", "method": "prune-structured", "parent": "root", "test_miou": 0.19, "ort_cpu_ms": 30.0,
         "speedup": 2.0},
        {"name": "grandchild", "method": "int8-ptq", "parent": "child", "test_miou": 0.18, "ort_cpu_ms": 9.0,
         "speedup": 1.25},
        # A parent outside the zoo, or no ratio: its own ms.
        {"name": "orphan", "method": "distill", "parent": "elsewhere", "test_miou": 0.1, "ort_cpu_ms": 7.0,
         "speedup": 3.0},
        {"name": "unmeasured", "method": "qat-int8", "parent": "root", "test_miou": None, "ort_cpu_ms": None,
         "speedup": None},
    ]
    points, missing = zoo_points(rows)
    assert {p.name: p.latency_ms for p in points} == {"root": 20.0, "child": 10.0, "grandchild": 8.0, "orphan": 7.0}
    assert missing == ["unmeasured"]


def test_a_label_in_a_crowd_avoids_other_labels_before_markers():
    from deploy.zoo_plot import _label_spot

    # Markers all around the point leave no spot free of them; the label already written to the right must still
    # not be written over (it was: both labels drawn on top of each other, 'nf-small-randpm50').
    centre, tw, th = (300, 200), 80, 10
    markers = [(300 + dx, 200 + dy) for dx in range(-120, 121, 10) for dy in range(-40, 41, 10) if dx or dy]
    right = (315 - 2, 205 - th - 2, 315 + tw + 2, 205 + 4)
    x, y = _label_spot(centre, tw, th, [right], markers, (0, 0, 800, 500))
    box = (x - 2, y - th - 2, x + tw + 2, y + 4)
    assert not (box[0] < right[2] and right[0] < box[2] and box[1] < right[3] and right[1] < box[3])


def test_the_plot_names_every_machine_its_models_were_timed_on():
    from types import SimpleNamespace

    from deploy.commands.export import machine_lines

    def model(name, machine):
        return SimpleNamespace(name=name, metrics={"measured_on": machine} if machine else {})

    models = {n: model(n, m) for n, m in (("a", "Xeon"), ("b", "Xeon"), ("c", "EPYC"), ("d", None), ("e", "Arm"))}
    assert machine_lines(models, {"a", "b"}) == ["measured on Xeon"] and machine_lines(models, {"d"}) == []
    assert machine_lines(models, {"a", "b", "c", "d"}) == ["measured on Xeon: 2 models", "measured on EPYC: c"]


def test_a_long_footnote_wraps_inside_the_picture(tmp_path):
    from deploy.zoo_plot import _wrap

    long = "measured on AMD EPYC: " + ", ".join(f"nf-small-model-{k}" for k in range(30))
    lines = _wrap(long, 820, 0.38)
    assert len(lines) > 2 and " ".join(lines) == long
    assert all(cv2.getTextSize(n, cv2.FONT_HERSHEY_SIMPLEX, 0.38, 1)[0][0] <= 820 for n in lines)
    pts = [ZooPoint("a", "fp32", 10.0, 0.3), ZooPoint("b", "int8-ptq", 5.0, 0.29)]
    short = plot_zoo(pts, tmp_path / "short.png", footnote="one line")
    wrapped = plot_zoo(pts, tmp_path / "long.png", footnote=long)
    assert wrapped.shape[0] == short.shape[0] + 16 * (len(lines) - 1)  # room for every wrapped line
    ink = np.any(wrapped < 128, axis=-1)
    assert not ink[:, -8:].any()  # nothing runs off the right edge
