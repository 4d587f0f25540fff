"""The log's messages: nearfield's own protobuf schemas (built in Python, no protoc), the Foxglove schemas it
reuses, the conversions to and from nearfield types, and the table topic -> schema -> decoder.

The own descriptors live in protobuf's default pool next to Foxglove's, and the MCAP writer stores their
FileDescriptorSet in every log, so any MCAP tool decodes them without nearfield.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from foxglove_schemas_protobuf.CompressedImage_pb2 import CompressedImage
from foxglove_schemas_protobuf.Grid_pb2 import Grid
from foxglove_schemas_protobuf.PackedElementField_pb2 import PackedElementField
from foxglove_schemas_protobuf.PoseInFrame_pb2 import PoseInFrame
from foxglove_schemas_protobuf.SceneEntityDeletion_pb2 import SceneEntityDeletion
from foxglove_schemas_protobuf.SceneUpdate_pb2 import SceneUpdate
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, timestamp_pb2

from sensors.bev import BevGrid
from sensors.calibration import FisheyeCamera, camera_from_dict
from sensors.classes import CLASS_COLORS, CLASS_NAMES
from sensors.errors import LogFormatError
from sensors.geometry import Pose2D, wrap_angle
from sensors.messages import CameraImage, GroundTruth, ObjectBox, Odometry, UssCycle, UssStatus

PACKAGE = "nearfield"
FILE_NAME = "nearfield/sensors.proto"

_F = descriptor_pb2.FieldDescriptorProto
_TIMESTAMP = "." + timestamp_pb2.Timestamp.DESCRIPTOR.full_name

# (name, type, label, type_name) per field; field numbers follow the order and must never be reused.
_SCALARS = {"string": _F.TYPE_STRING, "double": _F.TYPE_DOUBLE, "float": _F.TYPE_FLOAT, "uint32": _F.TYPE_UINT32}


def _message(name: str, fields: list[tuple[str, str, bool]]) -> descriptor_pb2.DescriptorProto:
    """fields: (name, type, repeated); type is a scalar name, "timestamp", ".nearfield.X" or "enum:.nearfield.X"."""
    msg = descriptor_pb2.DescriptorProto(name=name)
    for number, (field_name, kind, repeated) in enumerate(fields, start=1):
        f = msg.field.add(name=field_name, number=number,
                          label=_F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL)
        if kind == "timestamp":
            f.type, f.type_name = _F.TYPE_MESSAGE, _TIMESTAMP
        elif kind.startswith("enum:"):
            f.type, f.type_name = _F.TYPE_ENUM, kind[len("enum:"):]
        elif kind.startswith("."):
            f.type, f.type_name = _F.TYPE_MESSAGE, kind
        else:
            f.type = _SCALARS[kind]
    return msg


def _file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    fd = descriptor_pb2.FileDescriptorProto(name=FILE_NAME, package=PACKAGE, syntax="proto3")
    fd.dependency.append(timestamp_pb2.DESCRIPTOR.name)

    # WoodScape calibration layout (see sensors.calibration); fx, fy, cx, cy only for kannala_brandt.
    fd.message_type.append(_message("CameraCalibration", [
        ("timestamp", "timestamp", False), ("name", "string", False), ("model", "string", False),
        ("k1", "double", False), ("k2", "double", False), ("k3", "double", False), ("k4", "double", False),
        ("cx_offset", "double", False), ("cy_offset", "double", False), ("aspect_ratio", "double", False),
        ("width", "uint32", False), ("height", "uint32", False), ("fov_deg", "double", False),
        ("fx", "double", False), ("fy", "double", False), ("cx", "double", False), ("cy", "double", False),
        ("quaternion", "double", True), ("translation", "double", True),
    ]))
    # distance: half the acoustic path sender -> object -> receiver, metres (sensors.messages.UssCycle).
    fd.message_type.append(_message("UltrasonicEcho", [
        ("sender", "uint32", False), ("receiver", "uint32", False), ("distance", "float", False),
        ("amplitude", "float", False),
    ]))
    status = _message("UltrasonicSensorStatus", [("id", "uint32", False),
                                                 ("status", "enum:.nearfield.UltrasonicSensorStatus.Status", False)])
    enum = status.enum_type.add(name="Status")
    for number, value in enumerate(("OK", "NO_RESPONSE", "BLOCKED")):  # = sensors.messages.UssStatus
        enum.value.add(name=value, number=number)
    fd.message_type.append(status)
    fd.message_type.append(_message("UltrasonicCycle", [
        ("timestamp", "timestamp", False), ("cycle", "uint32", False),
        ("echoes", ".nearfield.UltrasonicEcho", True), ("sensors", ".nearfield.UltrasonicSensorStatus", True),
    ]))
    # labels: the sensors.messages.CONDITIONS vocabulary, faults with their sensor ("camera_failure:RV").
    fd.message_type.append(_message("Condition", [
        ("timestamp", "timestamp", False), ("labels", "string", True), ("scene", "string", False),
    ]))
    return fd


def _register() -> descriptor_pb2.FileDescriptorProto:
    pool = descriptor_pool.Default()
    fd = _file_descriptor()
    try:
        pool.FindFileByName(FILE_NAME)
    except KeyError:
        pool.Add(fd)
    return fd


FILE_DESCRIPTOR = _register()


def _class(name: str):
    return message_factory.GetMessageClass(descriptor_pool.Default().FindMessageTypeByName(f"{PACKAGE}.{name}"))


CameraCalibration = _class("CameraCalibration")
UltrasonicEcho = _class("UltrasonicEcho")
UltrasonicSensorStatus = _class("UltrasonicSensorStatus")
UltrasonicCycle = _class("UltrasonicCycle")
Condition = _class("Condition")


# --- topics -------------------------------------------------------------------------------------------------------

FRAME_ID = "vehicle"  # the frame of grids and boxes; Foxglove shows them there
USS_TOPIC = "/uss/echoes"
GT_OCCUPANCY_TOPIC = "/gt/occupancy"
GT_OBJECTS_TOPIC = "/gt/objects"
CONDITION_TOPIC = "/meta/condition"
ODOMETRY_TOPIC = "/odometry"
ODOM_FRAME_ID = "odom"  # the frame the odometry poses are given in (sensors.messages.Odometry)


def image_topic(camera: str) -> str:
    return f"/camera/{camera}/image"


def calibration_topic(camera: str) -> str:
    return f"/camera/{camera}/calibration"


def _camera_of(topic: str) -> str:
    parts = topic.split("/")
    return parts[2] if len(parts) > 2 else ""


@dataclass
class ConditionRecord:
    """A /meta/condition message: the condition labels in force from `stamp_ns` on, and the scene kind."""

    stamp_ns: int
    labels: list[str] = field(default_factory=list)
    scene: str = ""


def set_stamp(timestamp: Any, stamp_ns: int) -> None:
    """Fill a google.protobuf.Timestamp exactly from integer nanoseconds."""
    timestamp.seconds, timestamp.nanos = divmod(int(stamp_ns), 1_000_000_000)


def stamp_of(timestamp: Any) -> int:
    return int(timestamp.seconds) * 1_000_000_000 + int(timestamp.nanos)


# --- cameras ------------------------------------------------------------------------------------------------------

def image_to_proto(image: CameraImage) -> CompressedImage:
    """sensors.messages.CameraImage (its JPEG bytes) -> foxglove.CompressedImage."""
    if not image.jpeg:
        raise LogFormatError(f"{image_topic(image.camera)} at {image.stamp_ns} ns: CameraImage.jpeg is not set; "
                             "encode the image with sensors.imaging.encode_jpeg before writing it")
    msg = CompressedImage(frame_id=image.camera, data=bytes(image.jpeg), format="jpeg")
    set_stamp(msg.timestamp, image.stamp_ns)
    return msg


def image_from_proto(msg: CompressedImage, topic: str) -> CameraImage:
    if msg.format.lower() not in ("jpeg", "jpg"):
        raise LogFormatError(f"image format is {msg.format!r}; nearfield reads JPEG images only")
    return CameraImage(msg.frame_id or _camera_of(topic), stamp_of(msg.timestamp), jpeg=msg.data)


# The calibration fields of each model, as FisheyeCamera.intrinsic_dict names them.
_INTRINSIC_FIELDS = {
    "radial_poly": ("k1", "k2", "k3", "k4", "cx_offset", "cy_offset", "aspect_ratio", "width", "height", "fov_deg"),
    "kannala_brandt": ("fx", "fy", "cx", "cy", "k1", "k2", "k3", "k4", "width", "height", "fov_deg"),
}


def calibration_to_proto(camera: FisheyeCamera, stamp_ns: int) -> Any:
    d = camera.to_dict()
    intr, extr = d["intrinsic"], d["extrinsic"]
    msg = CameraCalibration(name=camera.name, model=intr["model"], quaternion=extr["quaternion"],
                            translation=extr["translation"])
    for key in _INTRINSIC_FIELDS[intr["model"]]:
        setattr(msg, key, intr[key])
    set_stamp(msg.timestamp, stamp_ns)
    return msg


def calibration_from_proto(msg: Any, topic: str) -> FisheyeCamera:
    """nearfield.CameraCalibration -> FisheyeCamera, validated like a calibration file."""
    if msg.model not in _INTRINSIC_FIELDS:
        raise LogFormatError(f"calibration model {msg.model!r} is unknown; expected one of "
                             f"{', '.join(_INTRINSIC_FIELDS)}")
    intrinsic = {"model": msg.model, **{k: getattr(msg, k) for k in _INTRINSIC_FIELDS[msg.model]}}
    data = {"name": msg.name, "intrinsic": intrinsic,
            "extrinsic": {"quaternion": list(msg.quaternion), "translation": list(msg.translation)}}
    return camera_from_dict(data, topic, name=msg.name or _camera_of(topic))


# --- ultrasonic ---------------------------------------------------------------------------------------------------

_UINT32 = 1 << 32


def uss_to_proto(cycle: UssCycle) -> Any:
    where = f"{USS_TOPIC} at {cycle.stamp_ns} ns"
    if not 0 <= int(cycle.cycle) < _UINT32:
        raise LogFormatError(f"{where}: cycle counter {cycle.cycle} does not fit in uint32")
    if cycle.num_echoes and (min(cycle.sender.min(), cycle.receiver.min()) < 0):
        raise LogFormatError(f"{where}: negative sensor id in sender/receiver")
    msg = UltrasonicCycle(cycle=int(cycle.cycle))
    set_stamp(msg.timestamp, cycle.stamp_ns)
    # The schema asks for one object per echo (Foxglove shows them as a table); a cycle holds tens of echoes.
    msg.echoes.extend(UltrasonicEcho(sender=s, receiver=r, distance=d, amplitude=a) for s, r, d, a in zip(
        cycle.sender.tolist(), cycle.receiver.tolist(), cycle.distance.tolist(), cycle.amplitude.tolist(), strict=True))
    msg.sensors.extend(UltrasonicSensorStatus(id=int(i), status=int(s)) for i, s in cycle.status.items())
    return msg


def uss_from_proto(msg: Any, topic: str) -> UssCycle:
    echoes = msg.echoes
    n = len(echoes)
    status = {}
    for s in msg.sensors:
        if s.status not in UssStatus._value2member_map_:
            raise LogFormatError(f"sensor {s.id} has unknown status {s.status}")
        status[int(s.id)] = UssStatus(s.status)
    sender = np.fromiter((e.sender for e in echoes), np.int64, n)
    receiver = np.fromiter((e.receiver for e in echoes), np.int64, n)
    if n and max(sender.max(), receiver.max()) > np.iinfo(np.int32).max:
        raise LogFormatError("sensor id out of range in sender/receiver")
    return UssCycle(stamp_of(msg.timestamp), int(msg.cycle), sender, receiver,
                    np.fromiter((e.distance for e in echoes), np.float32, n),
                    np.fromiter((e.amplitude for e in echoes), np.float32, n), status)


# --- grids (ground truth now, predictions later) ------------------------------------------------------------------

_NUMERIC = {np.dtype(t): getattr(PackedElementField, name) for t, name in (
    (np.uint8, "UINT8"), (np.int8, "INT8"), (np.uint16, "UINT16"), (np.int16, "INT16"), (np.uint32, "UINT32"),
    (np.int32, "INT32"), (np.float32, "FLOAT32"), (np.float64, "FLOAT64"))}
_DTYPES = {v: k for k, v in _NUMERIC.items()}
# BevGrid rows run towards -x and columns towards -y (sensors.bev): the grid frame is the vehicle frame turned
# 180° about the (1, -1, 0) axis, its origin the front-left corner. This makes Foxglove draw it in place.
_GRID_ORIENTATION = (-math.sqrt(0.5), math.sqrt(0.5), 0.0, 0.0)


def grid_to_proto(values: np.ndarray, grid: BevGrid, stamp_ns: int, fields: tuple[str, ...] = ("class",),
                  frame_id: str = FRAME_ID) -> Grid:
    """(rows, cols) or (rows, cols, C) values in the BevGrid layout -> foxglove.Grid with one field per channel."""
    values = np.asarray(values)
    if values.ndim == 2:
        values = values[..., None]
    if values.shape != (grid.rows, grid.cols, len(fields)):
        raise LogFormatError(f"grid at {stamp_ns} ns: values of shape {values.shape} do not match the BevGrid "
                             f"{grid.rows}x{grid.cols} with {len(fields)} field(s)")
    dtype = values.dtype.newbyteorder("=")
    if dtype not in _NUMERIC:
        raise LogFormatError(f"grid at {stamp_ns} ns: dtype {values.dtype} cannot be stored in a foxglove.Grid")
    item = dtype.itemsize
    msg = Grid(frame_id=frame_id, column_count=grid.cols, cell_stride=item * len(fields),
               row_stride=item * len(fields) * grid.cols,
               data=np.ascontiguousarray(values, dtype=dtype.newbyteorder("<")).tobytes())
    set_stamp(msg.timestamp, stamp_ns)
    msg.cell_size.x = msg.cell_size.y = grid.cell
    msg.pose.position.x, msg.pose.position.y = grid.x_max, grid.y_max
    o = msg.pose.orientation
    o.x, o.y, o.z, o.w = _GRID_ORIENTATION
    msg.fields.extend(PackedElementField(name=n, offset=i * item, type=_NUMERIC[dtype]) for i, n in enumerate(fields))
    return msg


def _grid_layout(msg: Grid) -> tuple[np.dtype, int, BevGrid]:
    """Check a foxglove.Grid is in the layout grid_to_proto writes: (little-endian dtype, fields, BevGrid)."""
    types = {f.type for f in msg.fields}
    if len(types) != 1 or next(iter(types)) not in _DTYPES:
        raise LogFormatError("grid fields must share one numeric type")
    dtype = _DTYPES[next(iter(types))].newbyteorder("<")
    item, n_fields = dtype.itemsize, len(msg.fields)
    if [f.offset for f in msg.fields] != [i * item for i in range(n_fields)] or msg.cell_stride != item * n_fields:
        raise LogFormatError("grid fields are not packed one after the other")
    cols = msg.column_count
    if cols <= 0 or msg.row_stride != cols * msg.cell_stride or len(msg.data) % msg.row_stride:
        raise LogFormatError(f"grid data of {len(msg.data)} bytes does not hold whole rows of {cols} columns")
    rows = len(msg.data) // msg.row_stride
    cell = msg.cell_size.x
    if rows == 0 or not (math.isfinite(cell) and cell > 0 and cell == msg.cell_size.y):
        raise LogFormatError(f"grid is empty or has non-square cells ({msg.cell_size.x} x {msg.cell_size.y})")
    o, p = msg.pose.orientation, msg.pose.position
    q = np.array([o.x, o.y, o.z, o.w])
    if min(np.abs(q - _GRID_ORIENTATION).max(), np.abs(q + _GRID_ORIENTATION).max()) > 1e-6:
        raise LogFormatError("grid orientation is not the BevGrid layout (rows towards -x, columns towards -y)")
    if not (math.isfinite(p.x) and math.isfinite(p.y)):
        raise LogFormatError("grid origin is not finite")
    # Rounded so that the decimal centres BevGrid uses (1.40 m) read back identical despite the corner sums.
    grid = BevGrid(rows, cols, cell, round(p.x - rows * cell / 2, 9), round(p.y - cols * cell / 2, 9))
    return dtype, n_fields, grid


def grid_of(msg: Grid) -> BevGrid:
    """The BevGrid of a foxglove.Grid written by grid_to_proto."""
    return _grid_layout(msg)[2]


def grid_from_proto(msg: Grid) -> tuple[np.ndarray, BevGrid]:
    """foxglove.Grid written by grid_to_proto -> ((rows, cols) or (rows, cols, C) values, its BevGrid)."""
    dtype, n_fields, grid = _grid_layout(msg)
    values = np.frombuffer(msg.data, dtype).astype(dtype.newbyteorder("="))
    values = values.reshape(grid.rows, grid.cols, n_fields)
    return (values[..., 0] if n_fields == 1 else values), grid


def truth_to_proto(truth: GroundTruth, grid: BevGrid) -> Grid:
    where = f"{GT_OCCUPANCY_TOPIC} at {truth.stamp_ns} ns"
    occ = np.asarray(truth.occupancy)
    if occ.dtype != np.uint8:
        raise LogFormatError(f"{where}: occupancy must be uint8 classes, got {occ.dtype}")
    if occ.shape != grid.shape or not math.isclose(truth.cell, grid.cell):
        raise LogFormatError(f"{where}: occupancy {occ.shape} at {truth.cell} m does not match the BevGrid "
                             f"{grid.shape} at {grid.cell} m")
    return grid_to_proto(occ, grid, truth.stamp_ns, ("class",))


def truth_from_proto(msg: Grid, topic: str) -> GroundTruth:
    values, grid = grid_from_proto(msg)
    if values.ndim != 2 or values.dtype != np.uint8:
        raise LogFormatError("ground-truth occupancy must be one uint8 field")
    return GroundTruth(stamp_of(msg.timestamp), values, grid.cell)


# --- object boxes -------------------------------------------------------------------------------------------------

_BOX_ALPHA = 0.6


def objects_to_proto(objects: list[ObjectBox], stamp_ns: int, frame_id: str = FRAME_ID) -> SceneUpdate:
    msg = SceneUpdate()
    # Each update replaces the boxes of the previous one: delete everything older first.
    deletion = msg.deletions.add(type=SceneEntityDeletion.ALL)
    set_stamp(deletion.timestamp, stamp_ns)
    for box in objects:
        e = msg.entities.add(frame_id=frame_id, id=str(box.id))
        set_stamp(e.timestamp, stamp_ns)
        cls = CLASS_NAMES[box.cls] if 0 <= box.cls < len(CLASS_NAMES) else str(int(box.cls))
        e.metadata.add(key="class", value=cls)
        e.metadata.add(key="kind", value=box.kind)
        e.metadata.add(key="id", value=str(box.id))
        cube = e.cubes.add()
        pos, rot = cube.pose.position, cube.pose.orientation
        pos.x, pos.y, pos.z = box.centre
        rot.z, rot.w = math.sin(box.yaw / 2), math.cos(box.yaw / 2)
        cube.size.x, cube.size.y, cube.size.z = box.size
        rgb = CLASS_COLORS.get(box.cls, (255, 255, 255))
        cube.color.r, cube.color.g, cube.color.b = (c / 255 for c in rgb)
        cube.color.a = _BOX_ALPHA
    return msg


def objects_from_proto(msg: SceneUpdate, topic: str) -> list[ObjectBox]:
    boxes = []
    for e in msg.entities:
        meta = {kv.key: kv.value for kv in e.metadata}
        if len(e.cubes) != 1 or "class" not in meta or "id" not in meta:
            raise LogFormatError(f"entity {e.id!r} is not a ground-truth box (one cube, metadata class and id)")
        cls_name = meta["class"]
        try:
            cls = CLASS_NAMES.index(cls_name) if cls_name in CLASS_NAMES else int(cls_name)
            box_id = int(meta["id"])
        except ValueError:
            raise LogFormatError(f"entity {e.id!r}: class {cls_name!r} or id {meta['id']!r} is not valid") from None
        c = e.cubes[0]
        p, o, s = c.pose.position, c.pose.orientation, c.size
        boxes.append(ObjectBox(box_id, cls, meta.get("kind", ""), (p.x, p.y, p.z), (s.x, s.y, s.z),
                               2 * math.atan2(o.z, o.w)))
    return boxes


# --- odometry ----------------------------------------------------------------------------------------------------

# How far a stored orientation may be from a unit quaternion about z: float32 writers and normalisation round-off
# pass, a roll or pitch of 1e-4 rad (a pose from a 3-D estimator) does not.
_QUAT_TOLERANCE = 1e-6


def odometry_to_proto(odo: Odometry) -> PoseInFrame:
    """sensors.messages.Odometry -> foxglove.PoseInFrame in the "odom" frame, the yaw as a quaternion about z."""
    pose = odo.pose
    if not all(math.isfinite(v) for v in (pose.x, pose.y, pose.yaw)):
        raise LogFormatError(f"{ODOMETRY_TOPIC} at {odo.stamp_ns} ns: pose ({pose.x}, {pose.y}, {pose.yaw}) is not "
                             "finite")
    msg = PoseInFrame(frame_id=ODOM_FRAME_ID)
    set_stamp(msg.timestamp, odo.stamp_ns)
    msg.pose.position.x, msg.pose.position.y = pose.x, pose.y
    msg.pose.orientation.z, msg.pose.orientation.w = math.sin(pose.yaw / 2), math.cos(pose.yaw / 2)
    return msg


def odometry_from_proto(msg: PoseInFrame, topic: str) -> Odometry:
    """foxglove.PoseInFrame -> Odometry; the orientation must be a rotation about z (the pose is planar)."""
    stamp = stamp_of(msg.timestamp)
    where = f"{topic} at {stamp} ns"
    p, o = msg.pose.position, msg.pose.orientation
    values = (p.x, p.y, p.z, o.x, o.y, o.z, o.w)
    if not all(math.isfinite(v) for v in values):
        raise LogFormatError(f"{where}: pose position {p.x, p.y, p.z} / orientation {o.x, o.y, o.z, o.w} is not "
                             "finite")
    if max(abs(o.x), abs(o.y), abs(math.hypot(o.z, o.w) - 1.0)) > _QUAT_TOLERANCE:
        raise LogFormatError(f"{where}: orientation [x, y, z, w] = {[o.x, o.y, o.z, o.w]} is not a unit rotation "
                             "about z; odometry is a planar pose (x, y, yaw)")
    return Odometry(stamp, Pose2D(p.x, p.y, wrap_angle(2 * math.atan2(o.z, o.w))))


# --- conditions ---------------------------------------------------------------------------------------------------

def condition_to_proto(record: ConditionRecord) -> Any:
    msg = Condition(labels=list(record.labels), scene=record.scene)
    set_stamp(msg.timestamp, record.stamp_ns)
    return msg


def condition_from_proto(msg: Any, topic: str) -> ConditionRecord:
    return ConditionRecord(stamp_of(msg.timestamp), list(msg.labels), msg.scene)


# --- the topic table ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TopicSpec:
    """The schema of the topics whose name fully matches `pattern`, and how to decode them into nearfield types."""

    pattern: str
    message_class: Any
    decode: Callable[[Any, str], Any]

    @property
    def schema_name(self) -> str:
        return self.message_class.DESCRIPTOR.full_name


TOPICS: list[TopicSpec] = [
    TopicSpec(r"/camera/[^/]+/image", CompressedImage, image_from_proto),
    TopicSpec(r"/camera/[^/]+/calibration", CameraCalibration, calibration_from_proto),
    TopicSpec(re.escape(USS_TOPIC), UltrasonicCycle, uss_from_proto),
    TopicSpec(re.escape(GT_OCCUPANCY_TOPIC), Grid, truth_from_proto),
    TopicSpec(re.escape(GT_OBJECTS_TOPIC), SceneUpdate, objects_from_proto),
    TopicSpec(re.escape(CONDITION_TOPIC), Condition, condition_from_proto),
    TopicSpec(re.escape(ODOMETRY_TOPIC), PoseInFrame, odometry_from_proto),
]


def register_topic(pattern: str, message_class: Any, decode: Callable[[Any, str], Any]) -> TopicSpec:
    """Add a topic (a later registration of the same pattern replaces the earlier one)."""
    spec = TopicSpec(pattern, message_class, decode)
    TOPICS[:] = [spec, *(t for t in TOPICS if t.pattern != pattern)]
    return spec


def topic_spec(topic: str) -> TopicSpec | None:
    return next((t for t in TOPICS if re.fullmatch(t.pattern, topic)), None)
