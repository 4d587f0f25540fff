"""The MCAP drive log: exact round trips of every topic, time order, seek, indexes, summary, Foxglove geometry,
decoding without nearfield, truncation and damage reports, `nearfield info`."""

import json
import logging
import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from foxglove_schemas_protobuf.Grid_pb2 import Grid
from foxglove_schemas_protobuf.Log_pb2 import Log
from foxglove_schemas_protobuf.PoseInFrame_pb2 import PoseInFrame
from mcap.reader import make_reader

from sensors.bev import BevGrid
from sensors.calibration import FisheyeCamera
from sensors.errors import ConfigError, LogFormatError
from sensors.geometry import Pose2D, quat_to_matrix
from sensors.imaging import encode_jpeg
from sensors.log import ConditionRecord, LogReader
from sensors.log_writer import LogWriter
from sensors.messages import CameraImage, GroundTruth, ObjectBox, Odometry, UssCycle, UssStatus
from sensors.schemas import (
    ODOMETRY_TOPIC,
    UltrasonicCycle,
    grid_to_proto,
    odometry_from_proto,
    odometry_to_proto,
    set_stamp,
    truth_to_proto,
)

MS = 1_000_000
T0 = 5_000 * MS
FRAMES = 20
CAMS = ("FV", "RV", "MVL", "MVR")
PERIOD = 100 * MS


def make_log(path, rig, frames=FRAMES, chunk_size=16 << 10, compression="lz4", seed=0):
    """A small drive: per frame 4 JPEGs (jittered stamps), a USS cycle, 160x160 ground truth with boxes and a
    condition; FV is recalibrated half-way. Returns what was written, per topic, in write order."""
    rng = np.random.default_rng(seed)
    grid = BevGrid.around(rig.vehicle)
    written = {"images": [], "uss": [], "truth": [], "conditions": [], "grid": grid}
    recalibrated = rig.cameras["FV"].scaled(0.5)
    recalibrated.name = "FV"
    written["recalibrated"] = recalibrated
    with LogWriter(path, rig, {"seed": str(seed), "scene": "parking"}, chunk_size=chunk_size,
                   compression=compression) as w:
        for k in range(frames):
            t = T0 + k * PERIOD
            for j, cam in enumerate(CAMS):
                img = CameraImage(cam, t + (j - 1) * MS,
                                  jpeg=encode_jpeg(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)))
                w.write_camera(img)
                written["images"].append(img)
            n = int(rng.integers(0, 8))
            cycle = UssCycle(t + 15 * MS, k, rng.integers(0, 12, n), rng.integers(0, 12, n), rng.random(n) * 5,
                             rng.random(n), {0: UssStatus.OK, 7: UssStatus(k % 3)})
            w.write_uss(cycle)
            written["uss"].append(cycle)
            occ = rng.integers(0, 5, grid.shape).astype(np.uint8)
            occ[70:90, 70:90] = 255
            boxes = [ObjectBox(i, int(rng.integers(1, 5)), "car", tuple(rng.normal(size=3)),
                               tuple(rng.random(3) + 0.5), float(rng.uniform(-math.pi, math.pi)))
                     for i in range(int(rng.integers(0, 4)))]
            truth = GroundTruth(t, occ, grid.cell, boxes)
            w.write_truth(truth, grid)
            written["truth"].append(truth)
            labels = ["night", "camera_failure:RV"] if k >= 12 else ["day"]
            w.write_condition(t, labels, "parking")
            written["conditions"].append(ConditionRecord(t, labels, "parking"))
            if k == FRAMES // 2:
                w.write_calibration(recalibrated, t + 50 * MS)
    return written


@pytest.fixture(scope="module")
def drive(tmp_path_factory, rig):
    path = tmp_path_factory.mktemp("log") / "drive.mcap"
    return path, make_log(path, rig)


def _read_all(path, **kw):
    with LogReader(path, **kw) as r:
        return list(r.messages())


def _file_order(path):
    """(topic, log time) of every message in the order the bytes hold them (mcap's own reader)."""
    with open(path, "rb") as f:
        return [(c.topic, m.log_time) for _, c, m in make_reader(f).iter_messages(log_time_order=False)]


def test_round_trip_every_topic(drive, rig):
    path, w = drive
    msgs = _read_all(path)
    by = {}
    for m in msgs:
        by.setdefault(m.topic, []).append(m)

    for cam in CAMS:
        got = by[f"/camera/{cam}/image"]
        want = [i for i in w["images"] if i.camera == cam]
        assert [(g.value.camera, g.value.stamp_ns, g.value.jpeg, g.value.rgb) for g in got] == \
               [(i.camera, i.stamp_ns, i.jpeg, None) for i in want]
        assert all(g.stamp_ns == g.value.stamp_ns for g in got)

    got = [m.value for m in by["/uss/echoes"]]
    assert len(got) == FRAMES
    for g, c in zip(got, w["uss"], strict=True):
        assert (g.stamp_ns, g.cycle, g.status) == (c.stamp_ns, c.cycle, c.status)
        for name in ("sender", "receiver", "distance", "amplitude"):
            a, b = getattr(g, name), getattr(c, name)
            assert a.dtype == b.dtype and np.array_equal(a, b)

    for g, t in zip(by["/gt/occupancy"], w["truth"], strict=True):
        assert g.value.stamp_ns == t.stamp_ns and g.value.cell == t.cell
        assert g.value.occupancy.dtype == np.uint8 and np.array_equal(g.value.occupancy, t.occupancy)
        assert g.grid == w["grid"]  # the BevGrid comes back identical, centre included
    for g, t in zip(by["/gt/objects"], w["truth"], strict=True):
        assert len(g.value) == len(t.objects)
        for a, b in zip(g.value, t.objects, strict=True):
            assert (a.id, a.cls, a.kind, a.centre, a.size) == (b.id, b.cls, b.kind, b.centre, b.size)
            assert a.yaw == pytest.approx(b.yaw, abs=1e-12)

    assert [m.value for m in by["/meta/condition"]] == w["conditions"]

    fv = by["/camera/FV/calibration"]
    assert [m.stamp_ns for m in fv] == [msgs[0].stamp_ns, T0 + FRAMES // 2 * PERIOD + 50 * MS]
    for got_cam, want_cam in ((fv[0].value, rig.cameras["FV"]), (fv[1].value, w["recalibrated"])):
        assert isinstance(got_cam, FisheyeCamera)
        a, b = got_cam.to_dict(), want_cam.to_dict()
        assert a["intrinsic"] == b["intrinsic"]
        np.testing.assert_allclose(got_cam.extrinsic.rotation, want_cam.extrinsic.rotation, atol=1e-15)
        assert np.array_equal(got_cam.extrinsic.translation, want_cam.extrinsic.translation)
    for cam in ("RV", "MVL", "MVR"):
        assert len(by[f"/camera/{cam}/calibration"]) == 1


def test_messages_in_time_order_across_topics(drive):
    path, _ = drive
    msgs = _read_all(path)
    stamps = [m.stamp_ns for m in msgs]
    assert stamps == sorted(stamps)
    # Every message once: 4 images + uss + 2 truth + condition per frame, 4 calibrations, 1 recalibration.
    assert len(msgs) == FRAMES * 8 + 4 + 1
    # Jittered cameras interleave with the other topics (MVL is 1 ms after FV's frame stamp, RV at it).
    first_frame = [m.topic for m in msgs[4:12]]
    assert first_frame[0] == "/camera/FV/image" and "/gt/occupancy" in first_frame
    assert len(set(_file_order(path))) == len(msgs)


def test_seek_window_and_topic_filter(drive):
    path, _ = drive
    with LogReader(path) as r:
        everything = list(r.messages())
        t = T0 + 7 * PERIOD + 3 * MS
        assert [(m.topic, m.stamp_ns) for m in r.seek(t)] == \
               [(m.topic, m.stamp_ns) for m in everything if m.stamp_ns >= t]
        window = list(r.messages(["/uss/echoes", "/meta/condition"], start_ns=T0 + 2 * PERIOD,
                                 end_ns=T0 + 5 * PERIOD))
        assert [(m.topic, m.stamp_ns) for m in window] == [
            (m.topic, m.stamp_ns) for m in everything
            if m.topic in ("/uss/echoes", "/meta/condition") and T0 + 2 * PERIOD <= m.stamp_ns < T0 + 5 * PERIOD]
        assert [m.value.cycle for m in window if m.topic == "/uss/echoes"] == [2, 3, 4]
        assert list(r.messages("/no/such/topic")) == []


def test_index_equals_message_stamps(drive):
    path, _ = drive
    with LogReader(path) as r:
        assert r.indexed
        everything = list(r.messages())
        for topic in r.topics:
            want = [m.stamp_ns for m in everything if m.topic == topic]
            got = r.index(topic)
            assert got.dtype == np.int64 and got.tolist() == want
        assert r.index("/camera/FV/image").size == FRAMES


def test_summary(drive, rig):
    path, _ = drive
    with LogReader(path) as r:
        s = r.summary()
    assert s.indexed and not s.damage and not s.truncated
    assert s.topics["/camera/RV/image"].count == FRAMES
    assert s.topics["/camera/RV/image"].schema == "foxglove.CompressedImage"
    assert s.topics["/uss/echoes"].schema == "nearfield.UltrasonicCycle"
    assert s.topics["/camera/FV/calibration"].count == 2
    assert s.topics["/uss/echoes"].rate_hz == pytest.approx(10.0)
    assert s.start_ns == T0 - MS  # FV's first image is 1 ms before the frame stamp
    assert s.end_ns == T0 + (FRAMES - 1) * PERIOD + 15 * MS  # the last USS cycle
    assert s.frames == FRAMES
    assert s.conditions == {"day": 12, "night": FRAMES - 12, "camera_failure:RV": FRAMES - 12}
    assert s.rig_name == rig.name and s.metadata["seed"] == "0" and s.metadata["scene"] == "parking"
    text = s.format()
    assert "/gt/occupancy" in text and "foxglove.Grid" in text and "night" in text and "TRUNCATED" not in text


def test_rig_travels_in_the_log(drive, rig, tmp_path):
    path, _ = drive
    with LogReader(path) as r:
        got = r.rig
    assert (got.name, got.vehicle, got.uss, got.sync) == (rig.name, rig.vehicle, rig.uss, rig.sync)
    for name, cam in rig.cameras.items():
        assert got.cameras[name].to_dict()["intrinsic"] == cam.to_dict()["intrinsic"]

    # A first calibration written explicitly replaces the rig's for that camera.
    other = rig.cameras["MVL"].scaled(0.25)
    other.name = "MVL"
    p = tmp_path / "explicit.mcap"
    with LogWriter(p, rig) as w:
        w.write_calibration(other, T0)
        w.write_condition(T0, ["day"])
    with LogReader(p) as r:
        assert r.rig.cameras["MVL"].width == other.width != rig.cameras["MVL"].width
        assert r.rig.cameras["FV"].width == rig.cameras["FV"].width
        assert len(r.index("/camera/MVL/calibration")) == 1


def test_odometry_round_trip(rig, tmp_path):
    p = tmp_path / "odo.mcap"
    # Yaws beyond pi come back wrapped to (-pi, pi]; x and y exactly.
    sent = [Odometry(T0 + k * 20 * MS, Pose2D(0.37 * k - 1.0, -0.011 * k * k, -3.0 + 1.3 * k)) for k in range(6)]
    with LogWriter(p, rig) as w:
        for odo in sent:
            w.write_odometry(odo)
    with LogReader(p, strict=True) as r:
        got = [(m.topic, m.stamp_ns, m.value) for m in r.messages()]
        summary = r.summary()
    odometry = [(t, s, v) for t, s, v in got if t == ODOMETRY_TOPIC]
    assert [(t, s) for t, s, _ in odometry] == [(ODOMETRY_TOPIC, o.stamp_ns) for o in sent]
    for (_, _, back), o in zip(odometry, sent, strict=True):
        assert isinstance(back, Odometry) and back.stamp_ns == o.stamp_ns
        assert (back.pose.x, back.pose.y) == (o.pose.x, o.pose.y)
        assert -math.pi < back.pose.yaw <= math.pi
        assert math.remainder(back.pose.yaw - o.pose.yaw, 2 * math.pi) == pytest.approx(0.0, abs=1e-12)
    assert odometry[5][2].pose.yaw == pytest.approx(3.5 - 2 * math.pi)
    t = summary.topics[ODOMETRY_TOPIC]
    assert (t.schema, t.count, t.rate_hz) == ("foxglove.PoseInFrame", 6, pytest.approx(50.0))
    # Foxglove draws it in the odom frame, the yaw a rotation about z.
    proto = odometry_to_proto(sent[1])
    assert proto.frame_id == "odom"
    q = proto.pose.orientation
    assert (q.x, q.y, q.z, q.w) == pytest.approx((0.0, 0.0, math.sin(-1.7 / 2), math.cos(-1.7 / 2)))
    # Another writer's -q is the same rotation as q.
    flipped = odometry_from_proto(_pose_msg(q=(0.0, 0.0, -math.sin(0.3), -math.cos(0.3))), ODOMETRY_TOPIC)
    assert flipped.pose == Pose2D(1.0, 2.0, pytest.approx(0.6))


def _pose_msg(x=1.0, y=2.0, q=(0.0, 0.0, 0.0, 1.0)):
    msg = PoseInFrame(frame_id="odom")
    set_stamp(msg.timestamp, T0)
    msg.pose.position.x, msg.pose.position.y = x, y
    o = msg.pose.orientation
    o.x, o.y, o.z, o.w = q
    return msg


@pytest.mark.parametrize(("msg", "message"), [
    (_pose_msg(x=float("nan")), "not finite"),
    (_pose_msg(q=(0.0, 0.0, float("inf"), 1.0)), "not finite"),
    (_pose_msg(q=(math.sin(0.05), 0.0, 0.0, math.cos(0.05))), "not a unit rotation about z"),  # rolled 0.1 rad
    (_pose_msg(q=(0.0, 1e-4, 0.0, 1.0)), "not a unit rotation about z"),
    (_pose_msg(q=(0.0, 0.0, 0.0, 0.9)), "not a unit rotation about z"),
])
def test_odometry_decoder_refuses_what_is_not_a_planar_pose(msg, message):
    with pytest.raises(LogFormatError, match=f"/odometry at {T0} ns: .*{message}"):
        odometry_from_proto(msg, ODOMETRY_TOPIC)


def test_undecodable_odometry_is_damage_with_topic_and_time(rig, tmp_path):
    p = tmp_path / "bad-odo.mcap"
    with LogWriter(p, rig) as w:
        w.write_odometry(Odometry(T0, Pose2D(0.0, 0.0, 0.0)))
        w.write_message(ODOMETRY_TOPIC, _pose_msg(q=(0.0, 0.5, 0.0, math.sqrt(0.75))), T0 + MS)
        with pytest.raises(LogFormatError, match=f"/odometry at {T0 + 2 * MS} ns: pose .* is not finite"):
            w.write_odometry(Odometry(T0 + 2 * MS, Pose2D(0.0, float("inf"), 0.0)))
    with LogReader(p) as r:
        assert [m.stamp_ns for m in r.messages(ODOMETRY_TOPIC)] == [T0]
        assert (r.damage.kind, r.damage.topic, r.damage.stamp_ns) == ("undecodable", ODOMETRY_TOPIC, T0 + MS)


def test_grid_pose_puts_cells_where_bev_grid_says(rig):
    """Foxglove draws cell (row r, column c) at pose · ((c + ½)·cell, (r + ½)·cell, 0): that must be the BevGrid's
    vehicle-frame cell centre."""
    grid = BevGrid.around(rig.vehicle).resampled(0.2)
    msg = grid_to_proto(np.zeros(grid.shape, np.uint8), grid, 0)
    o, p = msg.pose.orientation, msg.pose.position
    R = quat_to_matrix([o.x, o.y, o.z, o.w])
    r, c = np.mgrid[0:grid.rows, 0:grid.cols]
    local = np.stack([(c + 0.5) * msg.cell_size.x, (r + 0.5) * msg.cell_size.y, np.zeros_like(r, float)], -1)
    world = local @ R.T + [p.x, p.y, p.z]
    np.testing.assert_allclose(world[..., :2], grid.cell_centres(), atol=1e-9)
    assert np.allclose(world[..., 2], 0)
    assert msg.row_stride == grid.cols and len(msg.data) == grid.rows * grid.cols


def test_multi_field_grid_round_trip(rig):
    from sensors.schemas import grid_from_proto

    grid = BevGrid(4, 6, 0.5, 1.25, -0.5)
    values = np.random.default_rng(1).random((4, 6, 3)).astype(np.float32)
    msg = Grid.FromString(grid_to_proto(values, grid, 7, ("free", "vehicle", "other")).SerializeToString())
    back, g = grid_from_proto(msg)
    assert g == grid and back.dtype == np.float32 and np.array_equal(back, values)
    assert [f.name for f in msg.fields] == ["free", "vehicle", "other"]


def test_decodes_in_a_fresh_process_without_nearfield(drive, tmp_path):
    """Any MCAP tool reads the log: mcap + mcap_protobuf with the schemas stored in the file, nearfield never
    imported."""
    path, w = drive
    script = textwrap.dedent(f"""
        import json, sys
        from mcap.reader import make_reader
        from mcap_protobuf.decoder import DecoderFactory
        out = {{}}
        with open({str(path)!r}, "rb") as f:
            for schema, channel, message, proto in make_reader(f, decoder_factories=[DecoderFactory()]) \\
                    .iter_decoded_messages():
                if channel.topic == "/uss/echoes" and "uss" not in out:
                    out["uss"] = [proto.cycle, proto.timestamp.seconds, proto.timestamp.nanos,
                                  [[e.sender, e.receiver, e.distance, e.amplitude] for e in proto.echoes],
                                  [[s.id, s.status] for s in proto.sensors], schema.name]
                elif channel.topic == "/camera/FV/calibration" and "cal" not in out:
                    out["cal"] = [proto.name, proto.model, proto.k1, list(proto.quaternion)]
                elif channel.topic == "/meta/condition":
                    out["cond"] = [list(proto.labels), proto.scene]
                elif channel.topic == "/gt/occupancy" and "grid" not in out:
                    out["grid"] = [proto.column_count, len(proto.data), proto.data[:50].hex()]
        out["nearfield_imported"] = any(m.split(".")[0] in ("sensors", "sim_data") for m in sys.modules)
        print(json.dumps(out))
    """)
    res = subprocess.run([sys.executable, "-I", "-c", script], capture_output=True, text=True, timeout=60,
                         cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["nearfield_imported"] is False
    c = w["uss"][0]
    cycle, sec, nanos, echoes, sensors, schema = out["uss"]
    assert (cycle, sec * 10**9 + nanos, schema) == (0, c.stamp_ns, "nearfield.UltrasonicCycle")
    assert echoes == [[int(s), int(r), float(d), float(a)] for s, r, d, a in
                      zip(c.sender, c.receiver, c.distance, c.amplitude, strict=True)]
    assert sensors == [[0, 0], [7, 0]]
    assert out["cal"][:2] == ["FV", "radial_poly"] and len(out["cal"][3]) == 4
    assert out["cond"] == [["night", "camera_failure:RV"], "parking"]
    occ = w["truth"][0].occupancy
    assert out["grid"][:2] == [160, 160 * 160] and out["grid"][2] == occ.reshape(-1)[:50].tobytes().hex()


def test_summary_cut_off_reads_everything_linearly(drive, tmp_path, caplog):
    path, _ = drive
    data = path.read_bytes()
    with LogReader(path) as r:
        want = [(m.topic, m.stamp_ns) for m in r.messages()]
        want_index = r.index("/gt/occupancy").tolist()
    cut = tmp_path / "nosummary.mcap"
    cut.write_bytes(data[:-60])  # footer and the end of the summary section gone
    with caplog.at_level(logging.WARNING, logger="sensors.log"), LogReader(cut) as r:
        assert not r.indexed
        assert [(m.topic, m.stamp_ns) for m in r.messages()] == want
        assert r.index("/gt/occupancy").tolist() == want_index
        assert r.damage is not None and r.damage.kind == "truncated"
        assert "summary" in r.damage.reason and r.summary().truncated
    assert "summary section is cut off" in caplog.text


def test_truncation_at_30_offsets_gives_a_prefix(drive, tmp_path):
    path, _ = drive
    data = path.read_bytes()
    order = _file_order(path)
    cut = tmp_path / "cut.mcap"
    counts = []
    for offset in np.linspace(1, len(data) - 1, 30).astype(int):
        cut.write_bytes(data[:offset])
        with LogReader(cut) as r:
            got = [(m.topic, m.stamp_ns) for m in r.messages()]
            assert r.damage is not None and r.damage.kind == "truncated"
            assert r.damage.offset <= offset
            if got:
                assert r.damage.last_good_ns == max(t for _, t in got)
        assert [t for _, t in got] == sorted(t for _, t in got)
        assert set(got) == set(order[:len(got)])  # exactly the first messages in file order
        counts.append(len(got))
        with pytest.raises(LogFormatError, match="cut off"):
            _read_all(cut, strict=True)
    assert counts == sorted(counts) and counts[0] == 0 and counts[-1] == len(order)


def test_not_mcap_and_empty(tmp_path):
    bad = tmp_path / "photo.mcap"
    bad.write_bytes(b"\xff\xd8\xff\xe0 JFIF" + bytes(100))
    with pytest.raises(LogFormatError, match="not an MCAP file"):
        LogReader(bad)
    empty = tmp_path / "empty.mcap"
    empty.write_bytes(b"")
    with pytest.raises(LogFormatError, match="empty"):
        LogReader(empty)
    with pytest.raises(LogFormatError, match="cannot open"):
        LogReader(tmp_path / "missing.mcap")


def test_undecodable_message_is_reported_with_topic_and_time(rig, tmp_path, caplog):
    p = tmp_path / "bad.mcap"
    with LogWriter(p, rig) as w:
        w.write_uss(UssCycle(T0, 1, [0], [0], [1.0], [0.5]))
        w._add("/uss/echoes", _Raw(UltrasonicCycle, b"\x0a\xff\xff\xff"), T0 + MS)  # a broken payload
        w.write_uss(UssCycle(T0 + 2 * MS, 3, [1], [1], [2.0], [0.5]))
    with caplog.at_level(logging.WARNING, logger="sensors.log"), LogReader(p) as r:
        got = [m.value.cycle for m in r.messages("/uss/echoes")]
        assert got == [1, 3]
        d = r.damage
        assert (d.kind, d.topic, d.stamp_ns) == ("undecodable", "/uss/echoes", T0 + MS)
    assert f"/uss/echoes, at {T0 + MS} ns" in caplog.text
    with pytest.raises(LogFormatError, match=f"topic /uss/echoes, at {T0 + MS} ns"):
        _read_all(p, strict=True)


class _Raw:
    """Bytes posing as a protobuf message of `cls` (to write a payload that does not decode)."""

    def __init__(self, cls, data):
        self.DESCRIPTOR, self._data = cls.DESCRIPTOR, data

    def SerializeToString(self):  # noqa: N802 - protobuf's name
        return self._data


def test_unknown_topic_gives_the_raw_protobuf_message(rig, tmp_path):
    p = tmp_path / "other.mcap"
    with LogWriter(p, rig) as w:
        msg = Log(level=Log.WARNING, message="fan speed low", name="ecu")
        msg.timestamp.FromNanoseconds(T0)
        w.write_message("/diagnostics", msg, T0)
    with LogReader(p) as r:
        (m,) = list(r.messages("/diagnostics"))
    assert m.value.DESCRIPTOR.full_name == "foxglove.Log"
    assert (m.value.message, m.value.level, m.stamp_ns) == ("fan speed low", Log.WARNING, T0)


def test_writer_rejects_bad_input_with_the_topic(rig, tmp_path):
    grid = BevGrid.around(rig.vehicle)
    with LogWriter(tmp_path / "w.mcap", rig, compression="none") as w:
        with pytest.raises(LogFormatError, match=r"/camera/FV/image at 5 ns: CameraImage\.jpeg is not set"):
            w.write_camera(CameraImage("FV", 5))
        with pytest.raises(LogFormatError, match=r"/uss/echoes: timestamp -1"):
            w.write_uss(UssCycle(-1, 0, [], [], [], []))
        with pytest.raises(LogFormatError, match=r"carries nearfield\.UltrasonicCycle, not foxglove\.Log"):
            w.write_message("/uss/echoes", Log(), 1)
        with pytest.raises(LogFormatError, match="does not match the BevGrid"):
            w.write_truth(GroundTruth(1, np.zeros((10, 10), np.uint8), grid.cell), grid)
        with pytest.raises(LogFormatError, match="uint8"):
            truth_to_proto(GroundTruth(1, np.zeros(grid.shape, np.int64), grid.cell), grid)
    with pytest.raises(ConfigError, match="brotli"):
        LogWriter(tmp_path / "x.mcap", rig, compression="brotli")


@pytest.mark.parametrize("compression", ["none", "lz4"])
def test_compressions_round_trip(rig, tmp_path, compression):
    p = tmp_path / f"{compression}.mcap"
    w = make_log(p, rig, frames=3, compression=compression)
    msgs = _read_all(p)
    assert [m.value.jpeg for m in msgs if m.topic == "/camera/MVR/image"] == \
           [i.jpeg for i in w["images"] if i.camera == "MVR"]


def test_nearfield_info(drive, tmp_path, capsys):
    from app.cli import main

    path, _ = drive
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "nearfield-default" in out and "/camera/MVL/image" in out and "duration   1.916 s" in out
    assert "camera_failure:RV" in out and "TRUNCATED" not in out

    cut = tmp_path / "cut.mcap"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert main(["info", str(cut)]) == 0
    out = capsys.readouterr().out
    assert "TRUNCATED" in out and "cut off" in out and "last good message at" in out

    junk = tmp_path / "junk.mcap"
    junk.write_text("hello")
    assert main(["info", str(junk)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not an MCAP file" in err[0]
