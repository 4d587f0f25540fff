"""What the runtime tests share (tests/test_runtime.py, tests/test_runtime_nearfield.py): a drive log rewritten with
new stamps, the tiny zoo model of the `world` fixture (conftest.py), the `nearfield run` arguments, a spy on the
pipelines it builds."""

from pathlib import Path

from sensors.log import ConditionRecord, LogReader
from sensors.log_writer import LogWriter
from sensors.messages import CameraImage, GroundTruth, Odometry, UssCycle


def rewrite_log(src: Path, dst: Path, loops: int = 1, chunk_size: int = 1 << 20, drop_image=None, keep=None,
                image=None) -> Path:
    """SRC's messages written LOOPS times one after the other (re-stamped, so time runs forward), optionally
    without camera drop_image[0]'s image number drop_image[1], only those for which keep(message) is true, and with
    every camera image passed through IMAGE (CameraImage -> CameraImage, or None to leave it out)."""
    with LogReader(src) as r:
        msgs = [m for m in r.messages() if keep is None or keep(m)]
        w = LogWriter(dst, r.rig, chunk_size=chunk_size, stamp_creation=False)
        grid = next((m.grid for m in msgs if m.grid is not None), None)
    span = msgs[-1].stamp_ns - msgs[0].stamp_ns + 100_000_000
    seen = {}
    with w:
        for k in range(loops):
            shift = k * span
            for m in msgs:
                v, t = m.value, m.stamp_ns + shift
                if isinstance(v, CameraImage):
                    n = seen[v.camera] = seen.get(v.camera, -1) + 1
                    if drop_image == (v.camera, n):
                        continue
                    im = CameraImage(v.camera, t, jpeg=v.jpeg)
                    im = image(im) if image is not None else im
                    if im is not None:
                        w.write_camera(im)
                elif isinstance(v, UssCycle):
                    w.write_uss(UssCycle(t, v.cycle, v.sender, v.receiver, v.distance, v.amplitude, v.status))
                elif isinstance(v, GroundTruth):
                    w.write_truth(GroundTruth(t, v.occupancy, v.cell, []), grid)
                elif isinstance(v, ConditionRecord):
                    w.write_condition(t, v.labels, v.scene)
                elif isinstance(v, Odometry):
                    w.write_odometry(Odometry(t, v.pose))
    return dst


def make_world(root: Path, rig) -> dict:
    """A 6-frame simulated drive (ultrasonic failure: degraded frames) with one image missing, a tiny FusionNet
    and its ONNX file in a zoo manifest of its own, under ROOT."""
    import torch

    from deploy.export import export_onnx, input_shapes
    from deploy.zoo import ZooModel, register
    from perception.bev_config import BevConfig
    from perception.model import FusionNet, load_model_config
    from sim_data.simulate import DriveSpec, simulate_drive

    sim = simulate_drive(DriveSpec("rt", 3, 6, ("uss_failure",)), root / "sim", rig, scale=0.25)
    drive = rewrite_log(sim, root / "drive.mcap", drop_image=("MVL", 4))
    config = load_model_config("nf-small").replace(
        name="tiny", camera_width=0.25, uss_width=0.25, neck_channels=8, bev_channels=8, decoder_channels=8,
        bev=BevConfig(cell=0.4, image_size=(128, 96)))
    torch.manual_seed(0)
    net = FusionNet(config).eval()
    onnx = export_onnx(net, config, root / "zoo" / "tiny.onnx")
    manifest = root / "zoo" / "ZOO.toml"
    model = register(ZooModel("tiny", onnx, "", "untrained", bev=config.bev, inputs=input_shapes(onnx)), manifest)
    return {"root": root, "drive": drive, "net": net, "config": config, "model": model, "manifest": manifest}


def run_args(*args, manifest) -> list[str]:
    return ["run", "--model", "tiny", "--manifest", str(manifest), "--threads", "1", "--no-progress", *args]


def spy_pipelines(monkeypatch, what):
    """A list that `nearfield run` appends WHAT(pipeline) to for every Pipeline it builds."""
    import deploy.runtime as rt
    from deploy.pipeline import Pipeline

    built = []

    class Spy(Pipeline):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            built.append(what(self))

    monkeypatch.setattr(rt, "Pipeline", Spy)
    return built


def without_fv_and_last_truth(src: Path, dst: Path) -> Path:
    """SRC with camera FV gone from every frame and the last frame's ground truth lost (as a log cut off mid-frame
    loses it): a log whose scoring must count degraded frames and skip the unlabelled one."""
    with LogReader(src) as reader:
        last = max(m.stamp_ns for m in reader.messages() if isinstance(m.value, GroundTruth))
    return rewrite_log(src, dst, keep=lambda m: not (
        (isinstance(m.value, GroundTruth) and m.stamp_ns == last)
        or (isinstance(m.value, CameraImage) and m.value.camera == "FV")))
