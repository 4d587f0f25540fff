"""Reading the drive log (one MCAP file per drive, written by sensors.log_writer): LogReader reads it back in time
order through the summary indexes, or linearly when the file was cut off, and reports damage (where it starts, the
last good timestamp) instead of failing.
"""

from __future__ import annotations

import heapq
import logging
import os
import struct
import zlib
from collections import defaultdict
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from foxglove_schemas_protobuf.Grid_pb2 import Grid
from mcap.opcode import Opcode
from mcap.records import (
    Attachment,
    AttachmentIndex,
    Channel,
    ChunkIndex,
    MessageIndex,
    Metadata,
    MetadataIndex,
    Schema,
    Statistics,
)
from mcap.well_known import MessageEncoding, SchemaEncoding

from sensors.calibration import FisheyeCamera
from sensors.errors import LogFormatError, RigError
from sensors.log_records import LogDamage, LogMessage, LogSummary, TopicSummary
from sensors.log_writer import METADATA_NAME, RIG_ATTACHMENT
from sensors.mcap_records import (
    FOOTER,
    HEAD,
    MAGIC,
    MAX_SUMMARY,
    Chunk,
    CorruptError,
    chunk_records,
    message,
    opcode_name,
    records,
    stream,
)
from sensors.rig import Rig, rig_from_toml
from sensors.schemas import (
    CONDITION_TOPIC,
    USS_TOPIC,
    ConditionRecord,
    calibration_topic,
    grid_of,
    topic_spec,
)

__all__ = ["MAGIC", "ConditionRecord", "LogDamage", "LogMessage", "LogReader", "LogSummary", "TopicSummary"]

logger = logging.getLogger(__name__)


# --- reading ------------------------------------------------------------------------------------------------------

class LogReader:
    """Reads a drive log without loading it into memory. Not thread-safe.

    Damage (a cut-off file, corrupt chunks, messages that do not decode) is logged as a warning and collected
    in `damages` (`damage`: the first) while every readable message is still delivered; with strict=True the
    first damage raises LogFormatError instead. A file that is not MCAP at all raises LogFormatError.
    """

    def __init__(self, path: str | Path, strict: bool = False):
        self.path = Path(path)
        self.strict = strict
        self.damage: LogDamage | None = None
        self.damages: list[LogDamage] = []
        self.metadata: dict[str, str] = {}
        self.indexed = False
        self._seen: set[tuple] = set()
        self._quiet_topics: dict[str, int] = defaultdict(int)
        self._schemas: dict[int, Schema] = {}
        self._channels: dict[int, Channel] = {}
        self._chunks: list[Chunk] = []
        self._decoders: dict[int, Any] = {}
        self._rig_toml: bytes | None = None
        self._rig: Rig | None = None
        try:
            self._file = open(self.path, "rb")  # noqa: SIM115 - closed in close()
        except OSError as e:
            raise LogFormatError(f"{self.path}: cannot open the log ({e.strerror})") from None
        try:
            self._size = os.fstat(self._file.fileno()).st_size
            self._open()
        except BaseException:
            self._file.close()
            raise

    def __enter__(self) -> LogReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    # --- public queries ---------------------------------------------------------------------------------------

    @property
    def rig(self) -> Rig:
        """The rig from the rig.toml attachment, cameras replaced by each camera's first calibration message."""
        if self._rig is None:
            if self._rig_toml is None:
                raise LogFormatError(f"{self.path}: the log carries no {RIG_ATTACHMENT} attachment (not written by "
                                     "nearfield, or the start of the file is damaged)")
            source = f"{self.path} [{RIG_ATTACHMENT}]"
            try:
                rig = rig_from_toml(self._rig_toml.decode(), source)
            except (RigError, UnicodeDecodeError) as e:
                raise LogFormatError(f"{source}: the rig attachment does not load: {e}") from None
            cameras = dict(rig.cameras)
            for name in cameras:
                first = next(self.messages(calibration_topic(name)), None)
                if first is not None and isinstance(first.value, FisheyeCamera):
                    cameras[name] = first.value
            self._rig = rig.with_cameras(cameras)
        return self._rig

    @property
    def topics(self) -> list[str]:
        return sorted({c.topic for c in self._channels.values()})

    def messages(self, topics: str | Iterable[str] | None = None, start_ns: int | None = None,
                 end_ns: int | None = None) -> Iterator[LogMessage]:
        """Messages of `topics` (all when None) with start_ns <= stamp < end_ns, in time order across topics
        (ties in file order). Only the chunks that can hold them are read, a few at a time."""
        wanted = self._channel_ids(topics)
        heap: list[tuple] = []
        for c in self._chunks:
            if (start_ns is not None and c.end_ns < start_ns) or (end_ns is not None and c.start_ns >= end_ns):
                continue
            if wanted is not None and c.channels is not None and not (c.channels & wanted):
                continue
            heap.append((c.start_ns, 0, c.offset, 0, c))
        heapq.heapify(heap)
        # A chunk is opened when its start time comes up, so messages leave in time order even when chunks overlap.
        while heap:
            stamp, kind, offset, _, item = heapq.heappop(heap)
            if kind == 1:
                decoded = self._decode(item, stamp)
                if decoded is not None:
                    yield decoded
                continue
            for j, (cid, log_time, data) in enumerate(self._load(item)):
                if wanted is not None and cid not in wanted:
                    continue
                if (start_ns is not None and log_time < start_ns) or (end_ns is not None and log_time >= end_ns):
                    continue
                heapq.heappush(heap, (log_time, 1, offset, j, (cid, data, item)))

    def seek(self, stamp_ns: int) -> Iterator[LogMessage]:
        """All messages from `stamp_ns` on; the chunk index skips everything that ends earlier."""
        return self.messages(start_ns=stamp_ns)

    def index(self, topic: str) -> np.ndarray:
        """Sorted int64 log times of a topic, from the message indexes (no chunk is decompressed for them)."""
        ids = self._channel_ids(topic) or set()
        parts = []
        for c in self._chunks:
            for cid in ids:
                if c.times is not None:
                    parts.append(c.times.get(cid, np.empty(0, np.int64)))
                elif c.channels is not None and cid not in c.channels:
                    continue
                else:
                    times = self._message_index(c, cid)
                    if times is None:  # no usable message index: read the chunk itself
                        times = np.array([t for ch, t, _ in self._load(c) if ch == cid], np.int64)
                    parts.append(times)
        if not parts:
            return np.empty(0, np.int64)
        return np.sort(np.concatenate(parts), kind="stable")

    def summary(self) -> LogSummary:
        """Topics with counts, schemas and rates, time span, condition labels with the frames they cover, rig,
        metadata and damage (reads the condition messages; everything else comes from the indexes)."""
        by_topic: dict[str, list[Channel]] = defaultdict(list)
        for ch in self._channels.values():
            by_topic[ch.topic].append(ch)
        topics, times = {}, {}
        for topic, channels in by_topic.items():
            t = times[topic] = self.index(topic)
            schema = self._schemas.get(channels[0].schema_id)
            topics[topic] = TopicSummary(topic, schema.name if schema else channels[0].message_encoding, int(t.size),
                                         int(t[0]) if t.size else None, int(t[-1]) if t.size else None)
        nonempty = [t for t in times.values() if t.size]
        start = min(int(t[0]) for t in nonempty) if nonempty else None
        end = max(int(t[-1]) for t in nonempty) if nonempty else None

        cameras = [t for t in times if t.startswith("/camera/") and t.endswith("/image")]
        frames = times[max(cameras, key=lambda t: times[t].size)] if cameras else times.get(USS_TOPIC)
        condition_records = [m.value for m in self.messages(CONDITION_TOPIC) if isinstance(m.value, ConditionRecord)]
        if frames is None:
            frames = np.array([r.stamp_ns for r in condition_records], np.int64)
        try:  # camera stamps jitter around the frame time that the condition messages carry
            tolerance = self.rig.sync.camera_tolerance_ns
        except LogFormatError:
            tolerance = 0
        conditions: dict[str, int] = defaultdict(int)
        # A condition message holds from its stamp until the next one: count the frames in that span.
        bounds = np.searchsorted(frames, [r.stamp_ns - tolerance for r in condition_records] + [np.iinfo(np.int64).max])
        for r, lo, hi in zip(condition_records, bounds[:-1], bounds[1:], strict=True):
            for label in r.labels:
                conditions[label] += int(hi - lo)
        rig_name = self.metadata.get("rig")
        if rig_name is None and self._rig_toml is not None:
            try:
                rig_name = self.rig.name
            except LogFormatError:
                rig_name = None
        return LogSummary(str(self.path), rig_name, dict(self.metadata), topics, start, end, dict(conditions),
                          int(frames.size), self.indexed, list(self.damages))

    # --- opening ----------------------------------------------------------------------------------------------

    def _open(self) -> None:
        if self._size == 0:
            raise LogFormatError(f"{self.path}: the file is empty (0 bytes), not an MCAP log")
        head = self._file.read(len(MAGIC))
        if head != MAGIC:
            if len(head) < len(MAGIC) and MAGIC.startswith(head):
                self._report(LogDamage(str(self.path), 0, "the file is cut off inside the MCAP magic",
                                       "truncated"))
                return
            raise LogFormatError(f"{self.path}: not an MCAP file (it starts with {head!r}); nearfield logs are MCAP "
                                 "files written by `nearfield simulate` or `nearfield record`")
        summary_problem = self._read_summary()
        if not self.indexed:
            self._scan(summary_problem)

    def _report(self, damage: LogDamage) -> None:
        key = (damage.offset, damage.reason, damage.topic, damage.stamp_ns)
        if key not in self._seen:
            self._seen.add(key)
            self.damages.append(damage)
            self.damage = self.damage or damage
            topic = damage.topic or ""
            self._quiet_topics[topic] += 1
            if self.strict:
                pass  # the error raised below says it
            elif damage.kind != "undecodable" or self._quiet_topics[topic] <= 5:
                logger.warning("%s", damage)
            elif self._quiet_topics[topic] == 6:
                logger.warning("%s: more messages on %s do not decode; see LogReader.damages", self.path, topic)
        if self.strict:
            raise LogFormatError(str(damage))

    def _read_at(self, offset: int, length: int) -> bytes:
        self._file.seek(offset)
        data = self._file.read(length)
        if len(data) != length:
            raise CorruptError(f"{length} bytes at byte {offset} reach past the end of the file")
        return data

    def _record_at(self, offset: int, opcodes: tuple[int, ...], length: int | None = None) -> bytes:
        """The body of the record at `offset`, checked to be one of `opcodes` and to fit in the file."""
        opcode, body_length = HEAD.unpack(self._read_at(offset, HEAD.size))
        if opcode not in opcodes:
            raise CorruptError(f"expected a {opcode_name(opcodes[0])} record, found {opcode_name(opcode)}")
        if body_length > self._size - offset - HEAD.size or (length is not None and
                                                               body_length + HEAD.size != length):
            raise CorruptError(f"{opcode_name(opcode)} record length {body_length} is inconsistent")
        return self._read_at(offset + HEAD.size, body_length)

    def _read_summary(self) -> str | None:
        """Use the summary section when the footer and its CRC are good; else say why not (None: no footer)."""
        footer_at = self._size - len(MAGIC) - FOOTER.size
        if footer_at < len(MAGIC):
            return None
        self._file.seek(footer_at)
        tail = self._file.read(FOOTER.size + len(MAGIC))
        opcode, length, start, _, crc = FOOTER.unpack(tail[:FOOTER.size])
        if tail[FOOTER.size:] != MAGIC or opcode != Opcode.FOOTER or length != FOOTER.size - HEAD.size:
            return None
        if start == 0:
            return ""  # a complete file written without a summary section
        if not len(MAGIC) <= start <= footer_at or footer_at - start > MAX_SUMMARY:
            return f"the footer points at byte {start}, outside the file"
        section = self._read_at(start, footer_at - start)
        if crc and zlib.crc32(tail[:FOOTER.size - 4], zlib.crc32(section)) != crc:
            return "the summary section fails its CRC check"
        schemas, channels, chunk_indexes, attachments, metadata = {}, {}, [], [], []
        stats = None
        try:
            for _, op, body in records(section):
                if op == Opcode.SCHEMA:
                    s = Schema.read(stream(body))
                    schemas[s.id] = s
                elif op == Opcode.CHANNEL:
                    c = Channel.read(stream(body))
                    channels[c.id] = c
                elif op == Opcode.CHUNK_INDEX:
                    chunk_indexes.append(ChunkIndex.read(stream(body)))
                elif op == Opcode.ATTACHMENT_INDEX:
                    attachments.append(AttachmentIndex.read(stream(body)))
                elif op == Opcode.METADATA_INDEX:
                    metadata.append(MetadataIndex.read(stream(body)))
                elif op == Opcode.STATISTICS:
                    stats = Statistics.read(stream(body))
        except Exception as e:  # any bytes that do not parse: fall back to reading linearly
            return f"the summary section does not parse ({type(e).__name__}: {e})"
        if not chunk_indexes and (stats is None or stats.message_count > 0):
            return ""  # messages outside chunks (or unknown): only a linear read finds them
        if any(not len(MAGIC) <= ci.chunk_start_offset <= start - ci.chunk_length for ci in chunk_indexes) or \
                any(ci.message_start_time > ci.message_end_time for ci in chunk_indexes):
            return "the summary's chunk index points outside the data section"
        chunk_indexes.sort(key=lambda ci: ci.chunk_start_offset)
        last_good = None
        for number, ci in enumerate(chunk_indexes):
            self._chunks.append(Chunk(ci.chunk_start_offset, ci.chunk_length, ci.message_start_time,
                                       ci.message_end_time, number,
                                       channels=frozenset(ci.message_index_offsets) or None,
                                       index_offsets=dict(ci.message_index_offsets), last_good_ns=last_good))
            last_good = max(last_good or 0, ci.message_end_time)
        self._schemas, self._channels, self.indexed = schemas, channels, True
        for entry in attachments:
            if entry.name == RIG_ATTACHMENT:
                self._read_attachment(entry.offset, entry.length)
        for entry in metadata:
            try:
                self._add_metadata(self._record_at(entry.offset, (Opcode.METADATA,), entry.length), entry.offset)
            except CorruptError as e:
                self._report(LogDamage(str(self.path), entry.offset, f"metadata record is corrupt: {e}"))
        return None

    def _read_attachment(self, offset: int, length: int | None) -> None:
        try:
            body = self._record_at(offset, (Opcode.ATTACHMENT,), length)
            self._add_attachment(body)
        except Exception as e:  # bytes from disk that do not parse
            self._report(LogDamage(str(self.path), offset, f"attachment {RIG_ATTACHMENT} is corrupt: {e}"))

    def _add_attachment(self, body: bytes) -> None:
        attachment = Attachment.read(stream(body))
        stored = struct.unpack_from("<I", body, len(body) - 4)[0]
        if stored and zlib.crc32(body[:-4]) != stored:
            raise CorruptError(f"attachment {attachment.name} fails its CRC check")
        if attachment.name == RIG_ATTACHMENT:
            self._rig_toml = attachment.data

    def _add_metadata(self, body: bytes, offset: int) -> None:
        try:
            record = Metadata.read(stream(body))
        except Exception as e:  # bytes from disk that do not parse
            raise CorruptError(f"{type(e).__name__}: {e}") from None
        if record.name == METADATA_NAME:
            self.metadata.update(record.metadata)
        else:
            self.metadata.update({k: v for k, v in record.metadata.items() if k not in self.metadata})

    def _scan(self, summary_problem: str | None) -> None:
        """Read the file record by record: the way to read a log without (a usable) summary. Builds the chunk
        list the indexed path gets from the summary, and stops at the first record that does not fit."""
        path, pos, last_good = str(self.path), len(MAGIC), None
        if summary_problem:
            self._report(LogDamage(path, self._size, f"{summary_problem}; reading the file linearly"))
        f = self._file
        while True:
            if pos == self._size:
                self._report(LogDamage(path, pos, "the file ends without a footer: the recording was cut off",
                                       "truncated", last_good_ns=last_good))
                return
            f.seek(pos)
            head = f.read(HEAD.size)
            if len(head) < HEAD.size:
                self._report(LogDamage(path, pos, "the file is cut off inside a record header", "truncated",
                                       last_good_ns=last_good))
                return
            opcode, length = HEAD.unpack(head)
            left = self._size - pos - HEAD.size
            if opcode == 0 or length > left:
                kind = "truncated" if opcode in Opcode._value2member_map_ and length > left else "corrupt"
                self._report(LogDamage(path, pos, f"a {opcode_name(opcode)} record claims {length} bytes, "
                                       f"{left} remain: the file is {'cut off' if kind == 'truncated' else 'corrupt'}"
                                       " here", kind, last_good_ns=last_good))
                return
            body = f.read(length)
            try:
                if opcode == Opcode.CHUNK:
                    last_good = self._scan_chunk(pos, body, last_good)
                elif opcode == Opcode.MESSAGE:
                    m = message(body)
                    self._chunks.append(Chunk(pos, HEAD.size + length, m.log_time, m.log_time, len(self._chunks),
                                               loose=True, channels=frozenset([m.channel_id]),
                                               times={m.channel_id: np.array([m.log_time], np.int64)},
                                               last_good_ns=last_good))
                    last_good = max(last_good or 0, m.log_time)
                elif opcode in (Opcode.SCHEMA, Opcode.CHANNEL):
                    self._register(opcode, body)
                elif opcode == Opcode.ATTACHMENT:
                    self._add_attachment(body)
                elif opcode == Opcode.METADATA:
                    self._add_metadata(body, pos)
                elif opcode in (Opcode.DATA_END, Opcode.FOOTER):
                    if summary_problem is None and opcode == Opcode.DATA_END:
                        self._report(LogDamage(path, pos + HEAD.size + length,
                                               "the summary section is cut off (every message is readable)",
                                               "truncated", last_good_ns=last_good))
                    return
            except Exception as e:  # a record whose frame fits but whose bytes do not parse: skip it
                self._report(LogDamage(path, pos, f"{opcode_name(opcode)} record is corrupt "
                                       f"({type(e).__name__}: {e})",
                                       chunk=len(self._chunks) if opcode == Opcode.CHUNK else None,
                                       last_good_ns=last_good))
            pos += HEAD.size + length

    def _scan_chunk(self, pos: int, body: bytes, last_good: int | None) -> int | None:
        times: dict[int, list[int]] = defaultdict(list)
        for opcode, rec in chunk_records(body):
            if opcode == Opcode.MESSAGE:
                m = message(rec)
                times[m.channel_id].append(m.log_time)
            elif opcode in (Opcode.SCHEMA, Opcode.CHANNEL):
                self._register(opcode, rec)
        if not times:
            return last_good
        arrays = {cid: np.array(t, np.int64) for cid, t in times.items()}
        lo = min(int(a.min()) for a in arrays.values())
        hi = max(int(a.max()) for a in arrays.values())
        self._chunks.append(Chunk(pos, HEAD.size + len(body), lo, hi, len(self._chunks),
                                   channels=frozenset(arrays), times=arrays, last_good_ns=last_good))
        return max(last_good or 0, hi)

    def _register(self, opcode: int, body: bytes) -> None:
        if opcode == Opcode.SCHEMA:
            s = Schema.read(stream(body))
            self._schemas[s.id] = s
        else:
            c = Channel.read(stream(body))
            self._channels[c.id] = c

    # --- chunks and messages ----------------------------------------------------------------------------------

    def _channel_ids(self, topics: str | Iterable[str] | None) -> set[int] | None:
        if topics is None:
            return None
        wanted = {topics} if isinstance(topics, str) else set(topics)
        return {cid for cid, ch in self._channels.items() if ch.topic in wanted}

    def _load(self, chunk: Chunk) -> list[tuple[int, int, bytes]]:
        """(channel id, log time, data) of a chunk's messages; [] and a damage report if it does not read."""
        try:
            if chunk.loose:
                m = message(self._record_at(chunk.offset, (Opcode.MESSAGE,), chunk.length))
                return [(m.channel_id, m.log_time, m.data)]
            out = []
            for opcode, rec in chunk_records(self._record_at(chunk.offset, (Opcode.CHUNK,), chunk.length)):
                if opcode == Opcode.MESSAGE:
                    m = message(rec)
                    if not chunk.start_ns <= m.log_time <= chunk.end_ns:
                        raise CorruptError(f"a message at {m.log_time} ns lies outside the chunk's indexed time range")
                    out.append((m.channel_id, m.log_time, m.data))
            return out
        except Exception as e:  # bytes from disk that do not parse: report where, keep the other chunks
            self._report(LogDamage(str(self.path), chunk.offset, f"chunk is corrupt ({type(e).__name__}: {e})",
                                   chunk=chunk.number, last_good_ns=chunk.last_good_ns))
            return []

    def _message_index(self, chunk: Chunk, cid: int) -> np.ndarray | None:
        offset = chunk.index_offsets.get(cid)
        if offset is None:
            return None
        try:
            index = MessageIndex.read(stream(self._record_at(offset, (Opcode.MESSAGE_INDEX,))))
            times = np.array([t for t, _ in index.records], np.int64)
        except Exception:  # an unreadable index is not damage to the data: the chunk itself is read instead
            return None
        if index.channel_id != cid or (times.size and (times.min() < chunk.start_ns or times.max() > chunk.end_ns)):
            return None
        return times

    def _decode(self, item: tuple[int, bytes, Chunk], stamp: int) -> LogMessage | None:
        cid, data, chunk = item
        channel = self._channels.get(cid)
        topic = channel.topic if channel else f"<channel {cid}>"
        try:
            if channel is None:
                raise CorruptError(f"the message names channel {cid}, which the log never defines")
            decode = self._decoders.get(cid)
            if decode is None:
                decode = self._decoders[cid] = self._decoder_for(channel)
            value, grid = decode(data, topic)
        except Exception as e:  # a message that does not decode is reported with its topic and time
            self._report(LogDamage(str(self.path), chunk.offset, f"message does not decode ({type(e).__name__}: {e})",
                                   "undecodable", chunk=None if chunk.loose else chunk.number, topic=topic,
                                   stamp_ns=stamp))
            return None
        return LogMessage(topic, stamp, value, grid)

    def _decoder_for(self, channel: Channel):
        schema = self._schemas.get(channel.schema_id)
        if channel.schema_id != 0 and schema is None:
            raise CorruptError(f"the channel names schema {channel.schema_id}, which the log never defines "
                                "(lost with a damaged chunk?)")
        spec = topic_spec(channel.topic)
        protobuf = channel.message_encoding == MessageEncoding.Protobuf and schema is not None and \
            schema.encoding == SchemaEncoding.Protobuf
        if spec is not None and protobuf and schema.name == spec.schema_name:
            def decode(data: bytes, topic: str):
                proto = spec.message_class.FromString(data)
                return spec.decode(proto, topic), (grid_of(proto) if isinstance(proto, Grid) else None)
            return decode
        if protobuf:
            # Another tool's topic: decode with the schema stored in the file, as any MCAP reader would.
            from mcap_protobuf.decoder import DecoderFactory

            raw = DecoderFactory().decoder_for(channel.message_encoding, schema)
            return lambda data, topic: (raw(data), None)
        return lambda data, topic: (bytes(data), None)
