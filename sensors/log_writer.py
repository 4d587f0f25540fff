"""Writing the drive log: one MCAP file per drive, protobuf messages with their schemas stored in the file (so any
MCAP tool decodes them) and the rig as the attachment rig.toml. sensors.log reads it back."""

from __future__ import annotations

import os
import time
from collections import defaultdict
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
from mcap.well_known import MessageEncoding
from mcap.writer import LIBRARY_IDENTIFIER, CompressionType
from mcap.writer import Writer as McapWriter
from mcap_protobuf.schema import register_schema

from sensors.bev import BevGrid
from sensors.calibration import FisheyeCamera
from sensors.errors import ConfigError, LogFormatError
from sensors.messages import CameraImage, GroundTruth, Odometry, UssCycle
from sensors.rig import Rig
from sensors.schemas import (
    CONDITION_TOPIC,
    GT_OBJECTS_TOPIC,
    GT_OCCUPANCY_TOPIC,
    ODOMETRY_TOPIC,
    USS_TOPIC,
    ConditionRecord,
    calibration_to_proto,
    calibration_topic,
    condition_to_proto,
    image_to_proto,
    image_topic,
    objects_to_proto,
    odometry_to_proto,
    topic_spec,
    truth_to_proto,
    uss_to_proto,
)

RIG_ATTACHMENT = "rig.toml"
METADATA_NAME = "nearfield"
_MAX_U64 = (1 << 64) - 1


def _nearfield_version() -> str:
    try:
        return version("nearfield")
    except PackageNotFoundError:
        return "0+unknown"


_MODULES = {"zstd": "zstandard", "lz4": "lz4"}


def _installed(compression: str) -> bool:
    try:
        __import__(_MODULES[compression])
        return True
    except ImportError:
        return False


DEFAULT_COMPRESSION = next((c for c in ("zstd", "lz4") if _installed(c)), "none")
_COMPRESSION = {"zstd": CompressionType.ZSTD, "lz4": CompressionType.LZ4, "none": CompressionType.NONE,
                "": CompressionType.NONE}


# --- writing ------------------------------------------------------------------------------------------------------

def check_outgoing(topic: str, proto_message: Any, stamp_ns: int) -> None:
    """Raise LogFormatError unless the message can go into a log: a protobuf message of the topic's schema with
    a stamp in integer nanoseconds that MCAP can hold."""
    if not isinstance(stamp_ns, (int, np.integer)) or not 0 <= int(stamp_ns) <= _MAX_U64:
        raise LogFormatError(f"{topic}: timestamp {stamp_ns!r} must be integer nanoseconds in 0..2^64-1")
    descriptor = getattr(proto_message, "DESCRIPTOR", None)
    if descriptor is None or not hasattr(proto_message, "SerializeToString"):
        raise LogFormatError(f"{topic} at {stamp_ns} ns: {type(proto_message).__name__} is not a protobuf message")
    spec = topic_spec(topic)
    if spec is not None and descriptor.full_name != spec.schema_name:
        raise LogFormatError(f"{topic} at {stamp_ns} ns: the topic carries {spec.schema_name}, "
                             f"not {descriptor.full_name}")


class LogWrites:
    """The typed write methods shared by LogWriter (writes) and Recorder (queues); both define write_message."""

    def write_message(self, topic: str, proto_message: Any, stamp_ns: int) -> None:
        raise NotImplementedError

    def write_camera(self, image: CameraImage) -> None:
        self.write_message(image_topic(image.camera), image_to_proto(image), image.stamp_ns)

    def write_calibration(self, camera: FisheyeCamera, stamp_ns: int) -> None:
        self.write_message(calibration_topic(camera.name), calibration_to_proto(camera, stamp_ns), stamp_ns)

    def write_uss(self, cycle: UssCycle) -> None:
        self.write_message(USS_TOPIC, uss_to_proto(cycle), cycle.stamp_ns)

    def write_odometry(self, odo: Odometry) -> None:
        """/odometry: the vehicle's pose in the odom frame as a foxglove.PoseInFrame."""
        self.write_message(ODOMETRY_TOPIC, odometry_to_proto(odo), odo.stamp_ns)

    def write_truth(self, truth: GroundTruth, grid: BevGrid) -> None:
        """/gt/occupancy (the class map as a foxglove.Grid) and /gt/objects (the boxes as a SceneUpdate)."""
        occupancy = truth_to_proto(truth, grid)
        objects = objects_to_proto(truth.objects, truth.stamp_ns)
        self.write_message(GT_OCCUPANCY_TOPIC, occupancy, truth.stamp_ns)
        self.write_message(GT_OBJECTS_TOPIC, objects, truth.stamp_ns)

    def write_condition(self, stamp_ns: int, labels: list[str], scene: str = "") -> None:
        self.write_message(CONDITION_TOPIC, condition_to_proto(ConditionRecord(stamp_ns, list(labels), scene)),
                           stamp_ns)


class LogWriter(LogWrites):
    """Writes one drive. Not thread-safe (sensors.recorder.Recorder is). The rig goes in as the attachment
    rig.toml and every rig camera's calibration is written at the first message's stamp.

    sync_chunks: flush and fsync the file each time a chunk is complete, so that a killed process leaves a log
    readable up to its last chunk.
    """

    def __init__(self, path: str | Path, rig: Rig, metadata: dict[str, str] | None = None,
                 chunk_size: int = 1 << 20, compression: str = DEFAULT_COMPRESSION, sync_chunks: bool = False,
                 stamp_creation: bool = True):
        if compression not in _COMPRESSION:
            raise ConfigError(f"log compression {compression!r} is unknown; use zstd, lz4 or none")
        if compression in _MODULES and not _installed(compression):
            raise ConfigError(f"log compression {compression!r} needs the {_MODULES[compression]} package, which is "
                              f"not installed; use {DEFAULT_COMPRESSION}")
        self.path = Path(path)
        self.rig = rig
        self._sync = sync_chunks
        try:
            self._file = open(self.path, "wb")  # noqa: SIM115 - closed in close()
        except OSError as e:
            raise LogFormatError(f"{self.path}: cannot create the log ({e.strerror})") from None
        self._mcap = McapWriter(self._file, chunk_size=chunk_size, compression=_COMPRESSION[compression])
        self._mcap.start(library=f"nearfield/{_nearfield_version()} {LIBRARY_IDENTIFIER}")
        # stamp_creation=False keeps wall-clock time out of the file, so that a simulated drive is byte-for-byte
        # a function of its arguments.
        self._mcap.add_attachment(create_time=time.time_ns() if stamp_creation else 0, log_time=0,
                                  name=RIG_ATTACHMENT, media_type="application/toml", data=rig.to_toml().encode())
        meta = {"nearfield_version": _nearfield_version(), "rig": rig.name}
        if stamp_creation:
            meta["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        meta.update({str(k): str(v) for k, v in (metadata or {}).items()})
        self._mcap.add_metadata(METADATA_NAME, meta)
        self._schemas: dict[str, int] = {}
        self._channels: dict[str, tuple[int, str]] = {}
        self._sequence: dict[int, int] = defaultdict(int)
        self._started = False
        self._closed = False
        self.messages_written = 0
        self._on_disk = -1
        self._to_disk()  # the rig is on disk before the first message

    def __enter__(self) -> LogWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def write_message(self, topic: str, proto_message: Any, stamp_ns: int) -> None:
        """Write any protobuf message (later topics register their decoder in sensors.schemas.TOPICS)."""
        check_outgoing(topic, proto_message, stamp_ns)
        if self._closed:
            raise LogFormatError(f"{self.path}: the log is closed; cannot write {topic} at {stamp_ns} ns")
        if not self._started:
            self._started = True
            for name, camera in self.rig.cameras.items():
                if calibration_topic(name) != topic:  # an explicit first calibration replaces the rig's
                    self._add(calibration_topic(name), calibration_to_proto(camera, stamp_ns), int(stamp_ns))
        self._add(topic, proto_message, int(stamp_ns))

    def _add(self, topic: str, proto_message: Any, stamp_ns: int) -> None:
        name = proto_message.DESCRIPTOR.full_name
        channel = self._channels.get(topic)
        if channel is None:
            if name not in self._schemas:
                self._schemas[name] = register_schema(self._mcap, type(proto_message))
            channel = self._channels[topic] = (
                self._mcap.register_channel(topic, MessageEncoding.Protobuf, self._schemas[name]), name)
        elif channel[1] != name:
            raise LogFormatError(f"{self.path}: topic {topic} carries {channel[1]}; cannot write a {name}")
        cid = channel[0]
        self._mcap.add_message(cid, log_time=stamp_ns, data=proto_message.SerializeToString(),
                               publish_time=stamp_ns, sequence=self._sequence[cid] & 0xFFFFFFFF)
        self._sequence[cid] += 1
        self.messages_written += 1
        if self._sync and self._file.tell() != self._on_disk:  # the mcap writer just completed a chunk
            self._to_disk()

    def add_metadata(self, name: str, values: dict[str, str]) -> None:
        """One more MCAP metadata record (LogReader.metadata merges it under the file's own); e.g. what a run found
        by its end. The file's own record (METADATA_NAME) is written once, at the start."""
        if self._closed:
            raise LogFormatError(f"{self.path}: the log is closed; cannot add metadata {name!r}")
        if name == METADATA_NAME:
            raise ConfigError(f"{self.path}: metadata {name!r} is the log's own record, written at the start")
        self._mcap.add_metadata(name, {str(k): str(v) for k, v in values.items()})

    def flush(self) -> None:
        """Close the chunk in progress and put it on disk (a live recorder does this at least every second)."""
        if not self._closed:
            self._mcap.flush()
            self._to_disk()

    def _to_disk(self) -> None:
        self._file.flush()
        if self._sync:
            os.fsync(self._file.fileno())
        self._on_disk = self._file.tell()

    def close(self) -> None:
        """Write the summary (indexes, statistics) and the footer. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        try:
            self._mcap.finish()
            self._to_disk()
        finally:
            self._file.close()
