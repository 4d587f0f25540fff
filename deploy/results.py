"""The runtime's results file: per input frame the class map, stage-1 occupancy, sector distances, per-stage latency
and sensor status, written into an MCAP that Foxglove opens (schemas in the file, rig attached), and read back."""

from __future__ import annotations

import logging
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from foxglove_schemas_protobuf.Grid_pb2 import Grid
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, timestamp_pb2

from sensors.bev import BevGrid
from sensors.errors import LogFormatError
from sensors.log_writer import LogWriter
from sensors.rig import Rig
from sensors.schemas import grid_from_proto, grid_to_proto, register_topic, set_stamp, stamp_of

log = logging.getLogger(__name__)

OCCUPANCY_TOPIC = "/perception/occupancy"  # foxglove.Grid, uint8 field "class" (like /gt/occupancy)
STAGE1_TOPIC = "/perception/stage1"  # foxglove.Grid, float32 field "probability" (stage-1 occupied)
SECTORS_TOPIC = "/perception/sectors"
LATENCY_TOPIC = "/perception/latency"
STATUS_TOPIC = "/perception/status"
TOPICS = (OCCUPANCY_TOPIC, STAGE1_TOPIC, SECTORS_TOPIC, LATENCY_TOPIC, STATUS_TOPIC)

# The runtime's stages in the order a frame passes them; latency messages carry one field each (`<stage>_ms`).
LATENCY_STAGES = ("decode", "preprocess", "inference", "postprocess", "write")

_PACKAGE = "nearfield"
_FILE_NAME = "nearfield/perception.proto"
_F = descriptor_pb2.FieldDescriptorProto
_TYPES = {"string": _F.TYPE_STRING, "double": _F.TYPE_DOUBLE, "float": _F.TYPE_FLOAT, "uint32": _F.TYPE_UINT32,
          "bool": _F.TYPE_BOOL}
# (name, type, repeated); field numbers follow the order and must never be reused: append only.
_MESSAGES: dict[str, list[tuple[str, str, bool]]] = {
    # distance: metres from the body outline to the nearest obstacle per sector (inf: none on the grid);
    # level: 0 clear .. 3 stop (perception.postprocess.SectorLayout).
    "PerceptionSectors": [("timestamp", "timestamp", False), ("names", "string", True), ("distance", "float", True),
                          ("level", "uint32", True)],
    # age: how old the frame was when the runtime took it (live sources; 0 for logs); total: age + decode ..
    # postprocess, what the deadline is checked against. deadline_ms 0: no deadline.
    "PerceptionLatency": [("timestamp", "timestamp", False), ("index", "uint32", False),
                          *((f"{s}_ms", "double", False) for s in LATENCY_STAGES),
                          ("age_ms", "double", False), ("total_ms", "double", False),
                          ("deadline_ms", "double", False), ("late", "bool", False), ("dropped", "bool", False)],
    # present: cameras that delivered an image; degraded: the synchroniser's reasons; frames, late, dropped:
    # counters over the run so far, this frame included.
    "PerceptionStatus": [("timestamp", "timestamp", False), ("index", "uint32", False), ("present", "string", True),
                         ("degraded", "string", True), ("conditions", "string", True), ("late", "bool", False),
                         ("dropped", "bool", False), ("frames", "uint32", False), ("late_frames", "uint32", False),
                         ("dropped_frames", "uint32", False)],
}


def _file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    fd = descriptor_pb2.FileDescriptorProto(name=_FILE_NAME, package=_PACKAGE, syntax="proto3")
    fd.dependency.append(timestamp_pb2.DESCRIPTOR.name)
    for name, fields in _MESSAGES.items():
        msg = fd.message_type.add(name=name)
        for number, (field_name, kind, repeated) in enumerate(fields, start=1):
            f = msg.field.add(name=field_name, number=number, label=_F.LABEL_REPEATED if repeated else
                              _F.LABEL_OPTIONAL)
            if kind == "timestamp":
                f.type, f.type_name = _F.TYPE_MESSAGE, "." + timestamp_pb2.Timestamp.DESCRIPTOR.full_name
            else:
                f.type = _TYPES[kind]
    return fd


def _message_classes() -> dict[str, Any]:
    pool = descriptor_pool.Default()
    try:
        pool.FindFileByName(_FILE_NAME)
    except KeyError:
        pool.Add(_file_descriptor())
    return {n: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.{n}")) for n in _MESSAGES}


_CLASSES = _message_classes()
PerceptionSectors = _CLASSES["PerceptionSectors"]
PerceptionLatency = _CLASSES["PerceptionLatency"]
PerceptionStatus = _CLASSES["PerceptionStatus"]


@dataclass
class ResultRecord:
    """The runtime's output for one input frame, as written and as read back. A dropped frame (late-policy drop)
    has no class map, stage-1 map or sectors: only its latency and status."""

    index: int
    stamp_ns: int
    class_map: np.ndarray | None  # (R, W) uint8 classes, IGNORE on the ego footprint
    stage1: np.ndarray | None  # (R, W) float32 stage-1 probability that a cell is occupied
    sector_distance: np.ndarray | None  # (S,) float32 metres, inf: nothing on the grid
    sector_level: np.ndarray | None  # (S,) uint8 0 clear .. 3 stop
    sector_names: tuple[str, ...] = ()
    latency: dict[str, float] = field(default_factory=dict)  # ms: LATENCY_STAGES, "age", "total"
    degraded: list[str] = field(default_factory=list)
    present: tuple[str, ...] = ()  # cameras that delivered an image
    conditions: list[str] = field(default_factory=list)
    late: bool = False
    dropped: bool = False
    counters: dict[str, int] = field(default_factory=dict)  # frames, late_frames, dropped_frames so far
    deadline_ms: float | None = None
    grid: BevGrid | None = None  # of the maps (read back from the file)


# --- decoders for sensors.log.LogReader ---------------------------------------------------------------------------

def _grid_values(msg: Grid, topic: str) -> np.ndarray:
    return grid_from_proto(msg)[0]


def _sectors_from_proto(msg: Any, topic: str) -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
    n = len(msg.names)
    if len(msg.distance) != n or len(msg.level) != n:
        raise LogFormatError(f"{len(msg.names)} sector names, {len(msg.distance)} distances and {len(msg.level)} "
                             "levels: the lists must be parallel")
    return tuple(msg.names), np.array(msg.distance, np.float32), np.array(msg.level, np.uint8)


def _identity(msg: Any, topic: str) -> Any:
    return msg


register_topic(re.escape(OCCUPANCY_TOPIC), Grid, _grid_values)
register_topic(re.escape(STAGE1_TOPIC), Grid, _grid_values)
register_topic(re.escape(SECTORS_TOPIC), PerceptionSectors, _sectors_from_proto)
register_topic(re.escape(LATENCY_TOPIC), PerceptionLatency, _identity)
register_topic(re.escape(STATUS_TOPIC), PerceptionStatus, _identity)


# --- writing ------------------------------------------------------------------------------------------------------

RUN_SUMMARY = "nearfield_run_summary"  # the metadata record a run writes at its end (ResultsWriter.summarise)


class ResultsWriter:
    """Writes ResultRecords into a results MCAP: the rig attached and every camera's calibration (LogWriter), so
    the file describes itself. Chunks are fsync'ed as they complete, so even a killed process leaves a file
    readable up to its last chunk; close() (also on SIGINT/SIGTERM, by the runtime) finishes it properly."""

    def __init__(self, path: str | Path, rig: Rig, grid: BevGrid, metadata: dict[str, str] | None = None,
                 chunk_size: int = 1 << 20):
        self.path = Path(path)
        self.grid = grid
        self.frames = 0
        self._log = LogWriter(self.path, rig, {"generator": "nearfield run", **(metadata or {})},
                              chunk_size=chunk_size, sync_chunks=True)

    def __enter__(self) -> ResultsWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def write(self, record: ResultRecord) -> None:
        """Occupancy, stage-1 map and sectors (unless dropped), status, then latency with this write's own time
        filled in as record.latency['write']."""
        t0 = time.perf_counter()
        stamp = record.stamp_ns
        if not record.dropped:
            if record.class_map is None or record.stage1 is None or record.sector_distance is None:
                raise LogFormatError(f"{self.path}: frame {record.index} at {stamp} ns is not dropped but has no "
                                     "class map, stage-1 map or sectors")
            self._log.write_message(OCCUPANCY_TOPIC, grid_to_proto(record.class_map.astype(np.uint8, copy=False),
                                                                   self.grid, stamp, ("class",)), stamp)
            self._log.write_message(STAGE1_TOPIC, grid_to_proto(record.stage1.astype(np.float32, copy=False),
                                                                self.grid, stamp, ("probability",)), stamp)
            self._log.write_message(SECTORS_TOPIC, self._sectors(record), stamp)
        self._log.write_message(STATUS_TOPIC, self._status(record), stamp)
        record.latency["write"] = (time.perf_counter() - t0) * 1e3
        self._log.write_message(LATENCY_TOPIC, self._latency(record), stamp)
        self.frames += 1

    def summarise(self, values: dict[str, str]) -> None:
        """What the run found by its end (frames, late, dropped, degraded, input damage, what stopped it), as the
        metadata record RUN_SUMMARY: `nearfield info` and LogReader.metadata show it beside the run's settings."""
        self._log.add_metadata(RUN_SUMMARY, values)

    def close(self) -> None:
        self._log.close()

    @staticmethod
    def _sectors(r: ResultRecord) -> Any:
        msg = PerceptionSectors(names=list(r.sector_names), distance=r.sector_distance.tolist(),
                                level=r.sector_level.astype(int).tolist())
        set_stamp(msg.timestamp, r.stamp_ns)
        return msg

    @staticmethod
    def _status(r: ResultRecord) -> Any:
        c = r.counters
        msg = PerceptionStatus(index=r.index, present=list(r.present), degraded=list(r.degraded),
                               conditions=list(r.conditions), late=r.late, dropped=r.dropped,
                               frames=c.get("frames", 0), late_frames=c.get("late_frames", 0),
                               dropped_frames=c.get("dropped_frames", 0))
        set_stamp(msg.timestamp, r.stamp_ns)
        return msg

    @staticmethod
    def _latency(r: ResultRecord) -> Any:
        msg = PerceptionLatency(index=r.index, late=r.late, dropped=r.dropped, deadline_ms=r.deadline_ms or 0.0,
                                age_ms=r.latency.get("age", 0.0), total_ms=r.latency.get("total", 0.0),
                                **{f"{s}_ms": r.latency.get(s, 0.0) for s in LATENCY_STAGES})
        set_stamp(msg.timestamp, r.stamp_ns)
        return msg


# --- reading ------------------------------------------------------------------------------------------------------

def read_results(path: str | Path, strict: bool = False) -> list[ResultRecord]:
    """The ResultRecords of a results file in frame order, one per /perception/status message. A damaged or
    cut-off file gives every frame before the damage (LogReader warns; strict=True raises instead); a file
    without /perception/status is not a results file (LogFormatError)."""
    from sensors.log import LogReader

    with LogReader(path, strict=strict) as reader:
        if STATUS_TOPIC not in reader.topics:
            raise LogFormatError(f"{path}: no {STATUS_TOPIC} topic; not a results file of `nearfield run` "
                                 f"(topics: {', '.join(reader.topics) or 'none'})")
        records: list[ResultRecord] = []
        pending: dict[int, dict[str, Any]] = {}  # stamp -> maps and sectors waiting for their status
        last: dict[int, ResultRecord] = {}  # stamp -> the latest record, which its latency message completes
        # Two frames may share a stamp (a late camera's image forms a frame of its own at the same instant), but
        # messages of one stamp come in file order: maps, sectors, status, latency, frame after frame.
        for m in reader.messages(TOPICS):
            if m.topic == STATUS_TOPIC:
                last[m.stamp_ns] = _record(m.stamp_ns, m.value, pending.pop(m.stamp_ns, {}))
                records.append(last[m.stamp_ns])
            elif m.topic == LATENCY_TOPIC:
                if m.stamp_ns in last:  # else the file was cut between a frame's messages
                    _add_latency(last[m.stamp_ns], m.value)
            else:
                slot = pending.setdefault(m.stamp_ns, {})
                slot[m.topic] = m.value
                if m.grid is not None:
                    slot["grid"] = m.grid
    records.sort(key=lambda r: r.index)
    return records


def _record(stamp: int, status: Any, parts: dict[str, Any]) -> ResultRecord:
    if stamp_of(status.timestamp) != stamp:
        raise LogFormatError(f"{STATUS_TOPIC} at {stamp} ns: its timestamp field says {stamp_of(status.timestamp)} ns")
    names, distance, level = parts.get(SECTORS_TOPIC, ((), None, None))
    return ResultRecord(int(status.index), stamp, parts.get(OCCUPANCY_TOPIC), parts.get(STAGE1_TOPIC), distance,
                        level, tuple(names), {}, list(status.degraded), tuple(status.present),
                        list(status.conditions), bool(status.late), bool(status.dropped),
                        {"frames": int(status.frames), "late_frames": int(status.late_frames),
                         "dropped_frames": int(status.dropped_frames)}, None, parts.get("grid"))


def _add_latency(record: ResultRecord, lat: Any) -> None:
    record.latency = {s: getattr(lat, f"{s}_ms") for s in LATENCY_STAGES}
    record.latency.update(age=lat.age_ms, total=lat.total_ms)
    record.deadline_ms = lat.deadline_ms if lat.deadline_ms > 0 and math.isfinite(lat.deadline_ms) else None


__all__ = ["LATENCY_STAGES", "LATENCY_TOPIC", "OCCUPANCY_TOPIC", "SECTORS_TOPIC", "STAGE1_TOPIC", "STATUS_TOPIC",
           "TOPICS", "PerceptionLatency", "PerceptionSectors", "PerceptionStatus", "ResultRecord", "ResultsWriter",
           "read_results"]
