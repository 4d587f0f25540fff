"""MCAP at the byte level, for a reader that must survive damaged files: records packed in a buffer, chunk
decompression with sizes bounded before allocation, CRC checks, and the chunk bookkeeping sensors.log.LogReader keeps.
Anything that does not parse raises CorruptError, which the reader turns into a LogDamage with its location."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
from mcap.data_stream import ReadDataStream
from mcap.opcode import Opcode
from mcap.records import Message

MAGIC = b"\x89MCAP0\r\n"
HEAD = struct.Struct("<BQ")  # every record: opcode, length of what follows
FOOTER = struct.Struct("<BQQQI")  # opcode, length, summary_start, summary_offset_start, summary_crc
MESSAGE_HEAD = 22  # channel id, sequence, log time, publish time
MAX_SUMMARY = 1 << 30


class CorruptError(Exception):
    """Bytes on disk that do not parse; becomes a LogDamage with the location."""


def stream(body: bytes) -> ReadDataStream:
    return ReadDataStream(io.BytesIO(body))


def records(data: bytes) -> Iterator[tuple[int, int, bytes]]:
    """(offset, opcode, body) of the records packed in `data` (a chunk's content or the summary section)."""
    pos, end = 0, len(data)
    while pos < end:
        if end - pos < HEAD.size:
            raise CorruptError(f"a record header is cut off {end - pos} bytes before the end")
        opcode, length = HEAD.unpack_from(data, pos)
        if length > end - pos - HEAD.size:
            raise CorruptError(f"a record claims {length} bytes, only {end - pos - HEAD.size} remain")
        yield pos, opcode, data[pos + HEAD.size: pos + HEAD.size + length]
        pos += HEAD.size + length


def message(body: bytes) -> Message:
    if len(body) < MESSAGE_HEAD:
        raise CorruptError(f"a message record of {len(body)} bytes is shorter than its header")
    return Message.read(stream(body), len(body))


def decompress(compression: str, data: bytes, size: int) -> bytes:
    # The sizes come from the file: bound them before any buffer is allocated for them (lz4 compresses at most
    # ~255:1; zstd checks its own frame size against the bound).
    limit = {"": len(data), "lz4": max(1 << 16, 256 * len(data))}.get(compression, 1 << 31)
    if size > limit:
        raise CorruptError(f"uncompressed size {size} is impossible for {len(data)} {compression or 'raw'} bytes")
    if compression == "":
        return data
    if compression == "lz4":
        import lz4.frame

        decompressor = lz4.frame.LZ4FrameDecompressor()
        out = decompressor.decompress(data, max_length=size)
        if not decompressor.eof:
            raise CorruptError("lz4 data does not end where the chunk says")
        return out
    if compression == "zstd":
        try:
            import zstandard
        except ImportError:
            raise CorruptError("chunk is zstd-compressed and the zstandard package is not installed") from None
        return zstandard.ZstdDecompressor().decompress(data, max_output_size=size)
    raise CorruptError(f"unknown chunk compression {compression!r}")


def chunk_records(body: bytes) -> list[tuple[int, bytes]]:
    """The (opcode, body) records inside a chunk record, decompressed and checked against the chunk's CRC."""
    s = stream(body)
    s.read8(), s.read8()  # message start and end times: recomputed from the messages, not trusted
    size, crc = s.read8(), s.read4()
    compression = s.read_prefixed_string()
    length = s.read8()
    if length != len(body) - s.count:
        raise CorruptError(f"chunk data length {length} disagrees with the record length")
    data = decompress(compression, body[s.count:], size)
    if len(data) != size:
        raise CorruptError(f"chunk decompresses to {len(data)} bytes, its header says {size}")
    if crc and zlib.crc32(data) != crc:
        raise CorruptError("chunk fails its CRC check (flipped bytes)")
    return [(opcode, rec) for _, opcode, rec in records(data)]


@dataclass
class Chunk:
    """A chunk (or a message record outside chunks) as the reader indexes it."""

    offset: int
    length: int  # the whole record, header included
    start_ns: int
    end_ns: int
    number: int  # position in file order
    loose: bool = False  # a single message record outside any chunk
    channels: frozenset[int] | None = None  # channels with messages here; None: unknown
    index_offsets: dict[int, int] = field(default_factory=dict)  # channel -> MessageIndex record (summary)
    times: dict[int, np.ndarray] | None = None  # channel -> log times (linear scan)
    last_good_ns: int | None = None  # latest stamp in the file before this record


def opcode_name(opcode: int) -> str:
    try:
        return Opcode(opcode).name.lower()
    except ValueError:
        return f"opcode 0x{opcode:02x}"
