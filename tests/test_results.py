"""The results file of `nearfield run`: records round-trip exactly, dropped frames keep only latency and status,
schemas and rig travel in the file, a cut-off file gives its readable prefix."""

import math

import numpy as np
import pytest
from google.protobuf import descriptor_pb2
from mcap.reader import make_reader

from deploy.results import (
    LATENCY_STAGES,
    OCCUPANCY_TOPIC,
    SECTORS_TOPIC,
    STAGE1_TOPIC,
    STATUS_TOPIC,
    ResultRecord,
    ResultsWriter,
    read_results,
)
from sensors.bev import BevGrid
from sensors.errors import LogFormatError
from sensors.log import LogReader
from sensors.log_writer import LogWriter

GRID = BevGrid(40, 40, 0.4, 1.4, 0.0)
NAMES = tuple(f"s{i}" for i in range(16))


def _record(i: int, dropped: bool = False) -> ResultRecord:
    rng = np.random.default_rng(i)
    cm = rng.integers(0, 5, GRID.shape, dtype=np.uint8)
    cm[18:22, 18:22] = 255
    dist = rng.uniform(0.1, 6.0, 16).astype(np.float32)
    dist[3] = np.inf
    return ResultRecord(
        i, 1_000_000_000 + i * 33_333_333, None if dropped else cm,
        None if dropped else rng.random(GRID.shape, dtype=np.float32),
        None if dropped else dist, None if dropped else rng.integers(0, 4, 16).astype(np.uint8),
        () if dropped else NAMES,
        {"decode": 1.5, "preprocess": 2.25, "inference": 10.0 + i, "postprocess": 0.5, "age": 0.0,
         "total": 14.25 + i},
        ["camera RV missing"] if i % 2 else [], ("FV", "MVL", "MVR") if i % 2 else ("FV", "RV", "MVL", "MVR"),
        ["night"], late=dropped, dropped=dropped, counters={"frames": i + 1, "late_frames": int(dropped),
                                                            "dropped_frames": int(dropped)},
        deadline_ms=12.5)


@pytest.fixture()
def written(tmp_path, rig):
    path = tmp_path / "results.mcap"
    records = [_record(i, dropped=(i == 2)) for i in range(5)]
    with ResultsWriter(path, rig, GRID, {"model": "m"}) as w:
        for r in records:
            w.write(r)
    return path, records


def test_records_round_trip_exactly(written):
    path, records = written
    back = read_results(path)
    assert [r.index for r in back] == [0, 1, 2, 3, 4]
    for a, b in zip(records, back, strict=True):
        assert b.stamp_ns == a.stamp_ns
        assert b.present == a.present and b.degraded == a.degraded and b.conditions == a.conditions
        assert (b.late, b.dropped, b.counters) == (a.late, a.dropped, a.counters)
        assert b.deadline_ms == 12.5
        # The writer measured its own write time into the record before writing the latency message.
        assert a.latency["write"] > 0
        assert b.latency == pytest.approx(a.latency) and set(LATENCY_STAGES) <= set(b.latency)
        if a.dropped:
            assert b.class_map is None and b.stage1 is None and b.sector_distance is None
            continue
        np.testing.assert_array_equal(b.class_map, a.class_map)
        assert b.class_map.dtype == np.uint8
        np.testing.assert_array_equal(b.stage1, a.stage1)  # float32 stored exactly
        np.testing.assert_array_equal(b.sector_distance, a.sector_distance)
        assert math.isinf(b.sector_distance[3])
        np.testing.assert_array_equal(b.sector_level, a.sector_level)
        assert b.sector_names == NAMES
        assert b.grid == GRID


def test_the_file_describes_itself(written, rig):
    path, _ = written
    with LogReader(path) as reader:
        # The calibration read back, to the last bits: quaternion -> matrix -> quaternion is not idempotent to the
        # bit (1 ulp apart on an AMD EPYC; equal by chance on an Intel Xeon).
        got, want = reader.rig.cameras["FV"].to_dict(), rig.cameras["FV"].to_dict()
        assert got.keys() == want.keys() and got["intrinsic"] == want["intrinsic"]
        for key in ("quaternion", "translation"):
            np.testing.assert_allclose(got["extrinsic"][key], want["extrinsic"][key], rtol=0, atol=1e-12)
        assert reader.metadata["generator"] == "nearfield run" and reader.metadata["model"] == "m"
        assert reader.summary().topics[STATUS_TOPIC].count == 5
        assert reader.summary().topics[OCCUPANCY_TOPIC].count == 4  # the dropped frame has no maps
    # Any MCAP tool (Foxglove) decodes the messages from the schemas stored in the file.
    with open(path, "rb") as f:
        schemas = {s.name: s for s in make_reader(f).get_summary().schemas.values()}
    assert schemas["foxglove.Grid"].encoding == "protobuf"
    fds = descriptor_pb2.FileDescriptorSet.FromString(schemas["nearfield.PerceptionStatus"].data)
    assert "nearfield/perception.proto" in [f.name for f in fds.file]


def test_a_cut_off_results_file_gives_its_readable_prefix(tmp_path, rig):
    path = tmp_path / "results.mcap"
    w = ResultsWriter(path, rig, GRID, chunk_size=16 << 10)  # small chunks, each fsync'ed when complete
    for i in range(12):
        w.write(_record(i))
    w._log._file.flush()
    cut = tmp_path / "cut.mcap"
    cut.write_bytes(path.read_bytes())  # as a killed process leaves it: no summary, no footer
    w.close()
    back = read_results(cut)
    assert 1 <= len(back) < 12
    assert [r.index for r in back] == list(range(len(back)))
    np.testing.assert_array_equal(back[-1].class_map, _record(len(back) - 1).class_map)
    with pytest.raises(LogFormatError):
        read_results(cut, strict=True)


def test_frames_sharing_a_stamp_stay_apart(tmp_path, rig):
    # A late camera's image can form a frame of its own at the instant of the frame that went out without it.
    a, b = _record(0), _record(1)
    b.stamp_ns = a.stamp_ns
    with ResultsWriter(tmp_path / "r.mcap", rig, GRID) as w:
        w.write(a)
        w.write(b)
    back = read_results(tmp_path / "r.mcap")
    assert [r.index for r in back] == [0, 1]
    for x, y in zip((a, b), back, strict=True):
        np.testing.assert_array_equal(y.class_map, x.class_map)
        assert y.present == x.present and y.latency == pytest.approx(x.latency)


def test_a_drive_log_is_not_a_results_file(tmp_path, rig):
    path = tmp_path / "drive.mcap"
    with LogWriter(path, rig):
        pass
    with pytest.raises(LogFormatError, match="not a results file"):
        read_results(path)


def test_a_frame_that_is_not_dropped_needs_its_maps(tmp_path, rig):
    r = _record(0)
    r.class_map = None
    with ResultsWriter(tmp_path / "r.mcap", rig, GRID) as w, pytest.raises(LogFormatError, match="frame 0"):
        w.write(r)


def test_topics_are_decoded_by_the_log_reader(written):
    path, records = written
    with LogReader(path) as reader:
        sectors = next(reader.messages(SECTORS_TOPIC)).value
        stage1 = next(reader.messages(STAGE1_TOPIC))
    assert sectors[0] == NAMES
    np.testing.assert_array_equal(sectors[1], records[0].sector_distance)
    assert stage1.grid == GRID and stage1.value.dtype == np.float32
