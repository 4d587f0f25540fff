"""Replay regression tests: the committed reference drives, references of a tiny model made here, a check that
passes, fails on perturbed weights and on a shifted calibration, update-refs, damaged references; and the CI
check of every model that has references under tests/replay/refs."""

import copy
import json
import math
import shutil

import numpy as np
import pytest

from app.cli import main
from deploy import replay
from deploy.replay import (
    DRIVES_DIR,
    OCCUPANCY,
    REFERENCE_DRIVES,
    REFS_DIR,
    SECTORS,
    STAGE1,
    STATUS,
    DriveOutput,
    FrameOutput,
    References,
    Tolerance,
    compare,
)
from sensors.classes import IGNORE
from sensors.errors import ChecksumError, ConfigError
from sensors.files import file_sha256

pytestmark = pytest.mark.usefixtures("torch_one_thread")
DRIVES, FRAMES = len(REFERENCE_DRIVES), sum(d.frames for d in REFERENCE_DRIVES)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """A tiny FusionNet (40 x 40 cells, 64 x 48 images) in a manifest of its own. Its output layers are scaled up
    so that the class map is not one class everywhere, as a freshly initialised network's would be."""
    import torch

    from deploy.export import export_onnx, input_shapes
    from deploy.zoo import ZooModel, register
    from perception.bev_config import BevConfig
    from perception.model import FusionNet, ModelConfig

    bev = BevConfig(extent=16.0, cell=0.4, heights=(0.25, 0.75), image_size=(64, 48))
    config = ModelConfig(name="tiny", camera_width=0.125, uss_width=0.125, neck_channels=8, bev_channels=8,
                         decoder_channels=8, bev=bev)
    torch.manual_seed(0)
    net = FusionNet(config).eval()
    with torch.no_grad():
        for head in (net.decoder.stage1[-1], net.decoder.stage2[-1]):
            head.weight.mul_(40.0)
            head.bias.zero_()
    root = tmp_path_factory.mktemp("zoo")
    onnx = export_onnx(net, config, root / "tiny.onnx")
    register(ZooModel("tiny", onnx, "", "test", bev=bev, inputs=input_shapes(onnx)), manifest=root / "ZOO.toml")
    return root / "ZOO.toml"


@pytest.fixture(scope="module")
def refs(zoo, tmp_path_factory):
    root = tmp_path_factory.mktemp("refs")
    assert replay.update_refs("tiny", zoo, DRIVES_DIR, root) is None  # none before
    return root


def cli(*args) -> int:
    return main(["replay", *args])


# --- the reference drives ------------------------------------------------------------------------------------------

def test_the_reference_drives_are_committed_small_and_cover_their_conditions():
    from sensors.log import LogReader

    for spec in REFERENCE_DRIVES:
        path = DRIVES_DIR / f"{spec.name}.mcap"
        assert path.is_file(), f"{path}: run `nearfield replay make-drives`"
        assert path.stat().st_size < 1_000_000
        with LogReader(path, strict=True) as reader:
            assert reader.metadata["frames"] == str(spec.frames)
            assert reader.metadata["seed"] == str(spec.seed)
            assert spec.conditions[0] in reader.metadata["conditions"]


@pytest.mark.slow  # 15-35 s of rendering
def test_make_drives_reproduces_the_committed_drives_byte_for_byte(tmp_path):
    # All five: a simulator change that only some conditions see (unlit nights did) must not leave a stale drive.
    for path in replay.make_drives(tmp_path):
        assert file_sha256(path) == file_sha256(DRIVES_DIR / path.name), f"{path.name}: run `nearfield replay " \
            "make-drives` and `nearfield replay update-refs`, and review what changed"


# --- check, references ---------------------------------------------------------------------------------------------

def test_the_check_passes_for_the_model_its_references_were_made_with(zoo, refs, capsys):
    report = replay.check("tiny", manifest=zoo, refs_dir=refs)
    assert report.ok, report.format()
    assert (report.drives, report.frames) == (len(REFERENCE_DRIVES), FRAMES)
    assert cli("check", "--model", "tiny", "--manifest", str(zoo), "--refs", str(refs)) == 0
    assert f"replay tiny: PASS: {DRIVES} drives, {FRAMES} frames" in capsys.readouterr().out


def test_references_are_compact_pickle_free_keyed_and_reproducible(zoo, refs, tmp_path, capsys):
    from deploy.zoo import get_model

    meta = json.loads((refs / "tiny.json").read_text())
    assert meta["model_sha256"] == get_model("tiny", zoo).sha256
    assert {n: d["sha256"] for n, d in meta["drives"].items()} == {
        s.name: file_sha256(DRIVES_DIR / f"{s.name}.mcap") for s in REFERENCE_DRIVES}
    with np.load(refs / "tiny.npz", allow_pickle=False) as z:
        classes = z[f"day:{OCCUPANCY}:class_map"]
        assert classes.shape == (8, 40, 40) and classes.dtype == np.uint8
        assert z[f"day:{STAGE1}:occupancy"].dtype == np.float32
        assert not any("latency" in k for k in z.files)  # ignored fields are not pinned
    assert len(np.unique(classes[classes != IGNORE])) >= 2  # a map worth comparing
    assert (refs / "tiny.npz").stat().st_size < 300_000
    # Unchanged outputs give unchanged bytes, so an update without an effect leaves git clean.
    again = tmp_path / "again"
    shutil.copytree(refs, again)
    assert cli("update-refs", "--model", "tiny", "--manifest", str(zoo), "--refs", str(again)) == 0
    assert f"references for tiny rewritten, no output changed ({FRAMES} frames)" in capsys.readouterr().out
    assert file_sha256(again / "tiny.npz") == file_sha256(refs / "tiny.npz")
    assert (again / "tiny.json").read_text() == (refs / "tiny.json").read_text()


def _perturbed(zoo, out):
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(zoo.parent / "tiny.onnx"))
    rng = np.random.default_rng(0)
    for init in proto.graph.initializer:
        w = numpy_helper.to_array(init)
        if w.dtype == np.float32 and w.ndim >= 1:
            init.CopyFrom(numpy_helper.from_array(w + rng.normal(0, 1e-2, w.shape).astype(np.float32), init.name))
    onnx.save(proto, str(out))
    return out


def test_a_model_file_with_perturbed_weights_fails_and_says_where(zoo, refs, tmp_path, capsys):
    onnx_path = _perturbed(zoo, tmp_path / "tiny.onnx")
    report = replay.check("tiny", onnx_path, manifest=zoo, refs_dir=refs)
    assert not report.ok and not report.problems  # every frame ran: the outputs changed
    assert any("model file sha256" in n for n in report.notes)
    classes = [c for c in report.changes if c.topic == OCCUPANCY]
    assert classes and {c.drive for c in classes} <= {s.name for s in REFERENCE_DRIVES}
    c = classes[0]
    assert 0 < c.changed < c.total == 40 * 40 and c.iou is not None and 0 < c.iou < 1
    assert any(c.topic == STAGE1 and c.max_abs > Tolerance().atol for c in report.changes)
    # The command: --onnx alone finds the references of the model named like the file; exit 1; a readable report.
    assert cli("check", "--onnx", str(onnx_path), "--manifest", str(zoo), "--refs", str(refs)) == 1
    out = capsys.readouterr().out
    assert "replay tiny: FAIL" in out
    assert f"changed: {c.drive} frame {c.frame} ({c.stamp_ns} ns) {OCCUPANCY} class_map: {c.changed} of 1600 " \
           f"cells changed, IoU {c.iou:.3f}" in out
    same = [x for x in classes if x.drive == c.drive]
    assert f"summary: {c.drive} {OCCUPANCY} class_map: {len(same)} frame(s) changed, " \
           f"{sum(x.changed for x in same)} cells in all, lowest IoU {min(x.iou for x in same):.3f}" in out


def _rewrite_rig(src, dst, camera: str, yaw_deg: float) -> None:
    """Copy a drive with CAMERA turned by YAW_DEG about the vehicle's z axis: the rig attachment and the camera's
    calibration messages change, every other byte of content stays."""
    from mcap.reader import make_reader
    from mcap.writer import Writer

    from sensors.calibration import Extrinsic
    from sensors.log import LogReader
    from sensors.schemas import calibration_to_proto, calibration_topic

    with LogReader(src) as reader:
        rig = reader.rig
    a = math.radians(yaw_deg)
    turn = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    cam = copy.copy(rig.cameras[camera])
    cam.extrinsic = Extrinsic(turn @ cam.extrinsic.rotation, cam.extrinsic.translation)
    rig = rig.with_cameras({**rig.cameras, camera: cam})
    with open(src, "rb") as f, open(dst, "wb") as g:
        r, w = make_reader(f), Writer(g)
        header = r.get_header()
        w.start(header.profile, header.library)
        for a in r.iter_attachments():
            data = rig.to_toml().encode() if a.name == "rig.toml" else a.data
            w.add_attachment(a.create_time, a.log_time, a.name, a.media_type, data)
        for m in r.iter_metadata():
            w.add_metadata(m.name, m.metadata)
        schemas, channels = {}, {}
        for schema, channel, message in r.iter_messages(log_time_order=False):
            if schema.id not in schemas:
                schemas[schema.id] = w.register_schema(schema.name, schema.encoding, schema.data)
            if channel.id not in channels:
                channels[channel.id] = w.register_channel(channel.topic, channel.message_encoding,
                                                          schemas[schema.id], channel.metadata)
            data = message.data
            if channel.topic == calibration_topic(camera):
                data = calibration_to_proto(cam, message.log_time).SerializeToString()
            w.add_message(channels[channel.id], message.log_time, data, message.publish_time, message.sequence)
        w.finish()
    with LogReader(dst, strict=True) as check:  # the copy reads back with the turned camera
        np.testing.assert_allclose(check.rig.cameras[camera].extrinsic.rotation, cam.extrinsic.rotation, atol=1e-9)


def test_a_shifted_calibration_fails_until_update_refs(zoo, refs, tmp_path, capsys):
    drives, own_refs = tmp_path / "drives", tmp_path / "refs"
    shutil.copytree(DRIVES_DIR, drives)
    shutil.copytree(refs, own_refs)
    _rewrite_rig(DRIVES_DIR / "day.mcap", drives / "day.mcap", "FV", 2.0)
    report = replay.check("tiny", manifest=zoo, drives_dir=drives, refs_dir=own_refs)
    assert not report.ok and not report.problems
    assert {c.drive for c in report.changes} == {"day"}  # the other drives are untouched
    assert {c.topic for c in report.changes} >= {STAGE1}
    assert any("drive day: file sha256" in n for n in report.notes)
    # update-refs is the one way to accept the change; it says what changed, then the check passes.
    args = ("--model", "tiny", "--manifest", str(zoo), "--drives", str(drives), "--refs", str(own_refs))
    assert cli("update-refs", *args) == 0
    out = capsys.readouterr().out
    assert "references for tiny rewritten; what changed" in out and "changed: day frame" in out
    assert cli("check", *args) == 0


def test_a_reference_set_with_the_near_field_memory_replays_with_it(zoo, refs, tmp_path, capsys, monkeypatch):
    from perception.temporal import NearFieldMemory

    own = tmp_path / "refs"
    shutil.copytree(refs, own)
    steps = []
    real = NearFieldMemory.step
    monkeypatch.setattr(NearFieldMemory, "step", lambda self, *a: steps.append(a[3]) or real(self, *a))
    args = ("--manifest", str(zoo), "--refs", str(own))
    assert cli("update-refs", "--model", "tiny", "--memory", "0.9", *args) == 0
    assert "tiny+memory0.9.json: new references for tiny" in capsys.readouterr().out
    meta = json.loads((own / "tiny+memory0.9.json").read_text())
    assert meta["model"] == "tiny" and meta["runtime"] == {"memory_decay": 0.9}
    assert len(steps) == FRAMES and all(p is not None for p in steps)  # every frame, with the drives' odometry
    steps.clear()
    assert cli("check", "--model", "tiny", *args) == 0  # every reference set of the model
    out = capsys.readouterr().out
    assert f"replay tiny: PASS: {DRIVES} drives, {FRAMES} frames" in out
    assert f"replay tiny+memory0.9: PASS: {DRIVES} drives, {FRAMES} frames" in out
    assert len(steps) == FRAMES  # the memory ran for its set only
    # A set whose file name and recorded options disagree, or a name that is no set, is one typed line.
    shutil.copy(own / "tiny.json", own / "tiny+memory0.8.json")
    with pytest.raises(ConfigError, match=r"tiny\+memory0\.8\.json: unreadable .* memory decay None"):
        replay.read_refs("tiny+memory0.8", own)
    for bad in ("tiny+fast", "tiny+memoryx", "tiny+memory0.90"):
        with pytest.raises(ConfigError, match="expected MODEL or MODEL\\+memoryDECAY"):
            replay.parse_refs_name(bad)
    assert cli("update-refs", "--memory", "0.9", *args) == 2
    assert "--memory: give --model NAME" in capsys.readouterr().err


def test_missing_or_damaged_references_are_one_typed_line(zoo, refs, tmp_path, capsys):
    bad = tmp_path / "refs"
    with pytest.raises(ConfigError, match=r"no replay references for model tiny; run `nearfield replay update-refs"):
        replay.read_refs("tiny", bad)
    shutil.copytree(refs, bad)
    data = bytearray((bad / "tiny.npz").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bad / "tiny.npz").write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match=r"tiny\.npz: sha256 .* differs .* damaged or was edited"):
        replay.read_refs("tiny", bad)
    (bad / "tiny.npz").unlink()
    with pytest.raises(ChecksumError, match="the reference arrays are missing"):
        replay.read_refs("tiny", bad)
    (bad / "tiny.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"tiny\.json: unreadable replay references \(JSONDecodeError"):
        replay.read_refs("tiny", bad)
    assert cli("check", "--model", "tiny", "--manifest", str(zoo), "--refs", str(bad)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("nearfield replay: error: ") and "Traceback" not in err
    assert cli("check", "--manifest", str(zoo), "--refs", str(tmp_path / "none")) == 2
    assert "no model has references yet" in capsys.readouterr().err


# --- comparison rules, on hand-made outputs -----------------------------------------------------------------------

def _outputs(classes: np.ndarray, occupancy: np.ndarray, distance=(1.0, np.inf), degraded="") -> DriveOutput:
    frame = FrameOutput(0, 100, {
        OCCUPANCY: {"class_map": classes}, STAGE1: {"occupancy": occupancy},
        SECTORS: {"distance": np.array(distance, np.float32), "level": np.array([1, 0], np.uint8)},
        replay.LATENCY: {"inference": np.float64(5.0)},
        STATUS: {"present": np.array("FV,RV"), "degraded": np.array(degraded)}})
    return DriveOutput("d", "sha", [frame], 1)


def _refs(out: DriveOutput) -> References:
    return References("m", "msha", {"d": {"sha256": "sha", "frames": 1}}, replay._stack([out], Tolerance()))


def test_known_cell_counts_and_iou():
    old = np.zeros((4, 4), np.uint8)
    old[:2] = 1  # 8 vehicle, 8 free cells
    new = old.copy()
    new[0, :2] = 0  # 2 vehicle cells become free: vehicle IoU 6/8, free IoU 8/10
    occ = np.zeros((4, 4), np.float32)
    (change,) = compare(_refs(_outputs(old, occ)), [_outputs(new, occ)]).changes
    assert (change.topic, change.name, change.changed, change.total) == (OCCUPANCY, "class_map", 2, 16)
    assert change.iou == pytest.approx((6 / 8 + 8 / 10) / 2)


def test_floats_within_tolerance_pass_and_beyond_fail_and_ignored_fields_never_count():
    classes = np.zeros((4, 4), np.uint8)
    occ = np.full((4, 4), 0.5, np.float32)
    refs = _refs(_outputs(classes, occ))
    assert compare(refs, [_outputs(classes, occ + 4e-4)]).ok  # 4e-4 <= 1e-4 + 1e-3 * 0.5
    (change,) = compare(refs, [_outputs(classes, occ + 1e-2)]).changes
    assert change.changed == 16 and change.max_abs == pytest.approx(1e-2, rel=1e-3)
    assert compare(refs, [_outputs(classes, occ + 1e-2)], Tolerance(atol=0.02)).ok
    assert compare(refs, [_outputs(classes, occ + 1e-2)], Tolerance(ignore=(replay.LATENCY, STAGE1))).ok
    # Infinite distances (nothing in the sector) equal themselves; a finite one in their place is a change.
    (inf,) = compare(refs, [_outputs(classes, occ, distance=(1.0, 3.0))]).changes
    assert (inf.topic, inf.name, inf.changed) == (SECTORS, "distance", 1)
    (text,) = compare(refs, [_outputs(classes, occ, degraded="camera FV missing")]).changes
    assert text.name == "degraded" and "'camera FV missing'" in text.detail
    # Latencies differ from run to run and are never compared.
    slow = _outputs(classes, occ)
    slow.frames[0].topics[replay.LATENCY]["inference"] = np.float64(500.0)
    assert compare(refs, [slow]).ok


def test_a_replay_that_did_not_exercise_everything_fails():
    classes, occ = np.zeros((4, 4), np.uint8), np.zeros((4, 4), np.float32)
    refs = _refs(_outputs(classes, occ))
    unwritten = _outputs(classes, occ)
    del unwritten.frames[0].topics[SECTORS]  # e.g. a dropped frame: no maps, no sectors
    report = compare(refs, [unwritten])
    assert report.problems == [f"drive d frame 0: nothing written on {SECTORS}"]
    short = _outputs(classes, occ)
    short.expected_frames, short.taken = 2, 2
    assert any("1 frames in the results, the drive holds 2" in p for p in compare(refs, [short]).problems)
    assert any("runtime took 2 frames but wrote 1" in p for p in compare(refs, [short]).problems)
    assert compare(refs, []).problems == ["drive d: in the references but not replayed"]
    renamed = _outputs(classes, occ)
    renamed.name = "e"
    assert any("drive e: no references" in p for p in compare(refs, [renamed]).problems)


# --- CI: every model with references under tests/replay/refs -------------------------------------------------------

@pytest.mark.parametrize("model", replay.models_with_refs(REFS_DIR))
def test_replay_of_a_model_with_committed_references(model):
    report = replay.check(model)
    assert report.ok, report.format()


def test_the_committed_memory_references_pin_obstacles_it_recalled():
    """nf-small's reference set with the memory differs from the plain one by obstacles added where the network
    said free, on the drive that creeps along a kerb: the set pins what the memory recalls."""
    if "nf-small+memory0.95" not in replay.models_with_refs(REFS_DIR):
        pytest.skip("nf-small+memory0.95 has no committed references")
    plain, memory = replay.read_refs("nf-small"), replay.read_refs("nf-small+memory0.95")
    assert memory.memory_decay == 0.95 and plain.memory_decay is None
    added = {}
    for spec in REFERENCE_DRIVES:
        a = plain.field(spec.name, OCCUPANCY, "class_map")
        b = memory.field(spec.name, OCCUPANCY, "class_map")
        differ = a != b
        assert np.all(a[differ] == 0) and np.all((b[differ] != 0) & (b[differ] != IGNORE))  # only added obstacles
        added[spec.name] = int(differ.sum())
    assert added["street_night_creep"] > 0, added


def test_replay_check_command_uses_the_shipped_zoo_by_default(capsys):
    from app.cli import main

    shipped = replay.models_with_refs(REFS_DIR)
    if "nf-small-uss" not in shipped:
        pytest.skip("nf-small-uss has no committed references")
    assert main(["replay", "check", "--model", "nf-small-uss"]) == 0
    assert "PASS" in capsys.readouterr().out
