"""CAN log files (candump .log, Vector .asc, .blf) of the nearfield buses: the ultrasonic ECU's cycles
(sensors.drivers.can_uss) and the vehicle's motion frames (sensors.drivers.can_odometry), read and written with
python-can, and a nearfield log (MCAP) converted into one."""

from __future__ import annotations

import logging
import struct
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path

import can
from can.io.blf import BLFParseError

from sensors.drivers.can_odometry import OdometryCanEncoder, motion_decoder
from sensors.drivers.can_uss import UssCanDecoder, UssCanEncoder
from sensors.errors import LogFormatError
from sensors.files import refuse_overwrite
from sensors.messages import Odometry, UssCycle

log = logging.getLogger(__name__)

CAN_LOG_SUFFIXES = (".log", ".asc", ".blf")
# What python-can's readers raise on a damaged record: parse errors of their own making, not ours.
_READ_ERRORS = (ValueError, IndexError, TypeError, KeyError, OSError, EOFError, struct.error, zlib.error, BLFParseError,
                can.CanError)

class _CountingLines:
    """A text file that knows which line python-can's reader is on, so errors can name it."""

    def __init__(self, f):
        self._f = f
        self.line = 0

    def __iter__(self):
        for text in self._f:
            self.line += 1
            yield text

    def close(self) -> None:
        self._f.close()

    @property
    def closed(self) -> bool:
        return self._f.closed


def _open_reader(path: Path, suffix: str):
    """(python-can reader, function giving the current position for messages)."""
    if suffix == ".blf":
        f = path.open("rb")
        return can.BLFReader(f), lambda: f"byte {f.tell()}"
    lines = _CountingLines(path.open("r", encoding="ascii", errors="replace"))
    if suffix == ".asc":
        return can.ASCReader(lines, relative_timestamp=False), lambda: f"line {lines.line}"
    return can.CanutilsLogReader(lines), lambda: f"line {lines.line}"


def read_can_log(path: str | Path, db=None, decoder: UssCanDecoder | None = None,
                 errors: str = "raise", odometry=None) -> Iterator[UssCycle | Odometry]:
    """The complete USS cycles of a candump .log, Vector .asc or .blf file, in file order; with `odometry` (True,
    or an OdometryCanDecoder of sensors.drivers.can_odometry) also the Odometry poses of its VEH_Motion frames,
    interleaved in file order.

    A line or record that does not parse ends the stream after the cycles before it: `errors="raise"` then raises
    LogFormatError naming file and line (byte offset for .blf); `errors="skip"` logs a warning and, for candump
    .log, skips the line and reads on (.asc and .blf readers cannot resume, so they stop there). Frame-level
    problems are counted in `decoder.stats` (pass your own decoder to see them). Times: .log keeps absolute
    microseconds; .asc and .blf store the measurement start as a calendar time at millisecond resolution, so
    their absolute stamps are within ~1 ms and only the spacing between cycles is microsecond-exact (.blf keeps
    no absolute start at all for stamps near 0, i.e. a boot-time clock).
    """
    if errors not in ("raise", "skip"):
        raise ValueError(f"errors must be 'raise' or 'skip', not {errors!r}")
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in CAN_LOG_SUFFIXES:
        raise LogFormatError(f"{path}: not a CAN log; expected one of {', '.join(CAN_LOG_SUFFIXES)}")
    if not path.is_file():
        raise LogFormatError(f"{path}: no such CAN log file")
    decoder = decoder if decoder is not None else UssCanDecoder(db)
    motion = motion_decoder(odometry)
    try:
        reader, position = _open_reader(path, suffix)
    except _READ_ERRORS as e:
        raise LogFormatError(f"{path}: not a readable {suffix} CAN log ({type(e).__name__}: {e})") from None
    try:
        records = iter(reader)
        while True:
            try:
                msg = next(records)
            except StopIteration:
                break
            except _READ_ERRORS as e:
                where = f"{path}: {position()}"
                if errors == "raise":
                    raise LogFormatError(f"{where}: unreadable CAN record ({type(e).__name__}: {e}); the cycles "
                                         "before it were read; pass errors='skip' to read past it") from None
                if suffix != ".log":
                    log.warning("%s: unreadable CAN record (%s); stopping here", where, e)
                    break
                log.warning("%s: unreadable CAN record (%s); line skipped", where, e)
                decoder.finish(where)  # a cycle spanning a garbage line cannot be trusted whole
                records = iter(reader)  # the reader's generator died; a new one goes on from the next line
                continue
            if motion is not None and msg.arbitration_id in motion.frame_ids:
                yield from motion.feed(msg)
            else:
                yield from decoder.feed(msg)
    finally:
        reader.stop()
    _check_blf_size(reader, path, errors)
    if decoder.in_cycle:
        decoder.finish(f"{path}: end of file")
    log.info("%s: %s", path, ", ".join(f"{k} {v}" for k, v in decoder.stats.items() if v))


def _check_blf_size(reader, path: Path, errors: str) -> None:
    """python-can stops quietly inside a cut BLF container; the size in the file header tells."""
    declared = getattr(reader, "file_size", 0)
    actual = path.stat().st_size
    if not declared or actual >= declared:
        return
    text = f"{path}: byte {actual}: file ends before the {declared} bytes its header declares (truncated)"
    if errors == "raise":
        raise LogFormatError(f"{text}; the cycles before the cut were read; pass errors='skip' to accept them")
    log.warning("%s", text)


def write_can_log(cycles: Iterable[UssCycle | Odometry], path: str | Path, db=None, channel: str = "can0") -> int:
    """Write cycles (UssCycle) as a CAN log (.log candump by default; .asc and .blf by suffix), and Odometry samples
    among them as VEH_Motion frames (sensors/can/vehicle.dbc), in the order given; returns the frame count."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in CAN_LOG_SUFFIXES:
        raise LogFormatError(f"{path}: cannot write a CAN log with suffix {suffix!r}; use one of "
                             f"{', '.join(CAN_LOG_SUFFIXES)}")
    encoder = UssCanEncoder(db, channel=channel)
    motion = OdometryCanEncoder(channel=channel)
    count = 0
    writer = can.Logger(str(path))
    try:
        for cycle in cycles:
            for msg in [motion.encode(cycle)] if isinstance(cycle, Odometry) else encoder.encode(cycle):
                msg.is_rx = False  # this host did not receive them; candump marks transmitted frames " T"
                writer.on_message_received(msg)
                count += 1
    finally:
        writer.stop()
    return count


def log_to_can(log_path: str | Path, out_path: str | Path, db=None, channel: str = "can0") -> tuple[int, int, int]:
    """Write the ultrasonic cycles of a nearfield log (MCAP) as a CAN log (.log candump, .asc, .blf) encoded with
    the USS DBC, and its odometry as the vehicle DBC's VEH_Motion frames, in time order, so standard CAN tools can
    read them; returns (cycles, odometry samples, frames). The output appears only whole."""
    log_path, out_path = Path(log_path), Path(out_path)
    if not log_path.is_file():
        raise LogFormatError(f"{log_path}: no such log file")
    if out_path.suffix.lower() not in CAN_LOG_SUFFIXES:  # checked here so the message names the user's path
        raise LogFormatError(f"{out_path}: cannot write a CAN log with suffix {out_path.suffix!r}; use one of "
                             f"{', '.join(CAN_LOG_SUFFIXES)}")
    partial = out_path.with_name(f"{out_path.stem}.partial{out_path.suffix}")
    refuse_overwrite([out_path, partial], [log_path], "to-can OUT")
    try:
        out_path.parent.mkdir(parents=True, exist_ok=True)  # as every other command that writes a file does
    except (FileExistsError, NotADirectoryError):
        raise LogFormatError(f"{out_path}: cannot create its folder {out_path.parent}: it, or a folder above it, is a "
                             "file") from None
    # The MCAP layer is only needed for this conversion.
    from sensors.log import LogReader
    from sensors.schemas import ODOMETRY_TOPIC, USS_TOPIC

    counted = {USS_TOPIC: 0, ODOMETRY_TOPIC: 0}

    def cycles() -> Iterator[UssCycle | Odometry]:
        with LogReader(log_path) as reader:
            for record in reader.messages(topics=[USS_TOPIC, ODOMETRY_TOPIC]):
                counted[record.topic] += 1
                yield record.value

    try:
        n_frames = write_can_log(cycles(), partial, db=db, channel=channel)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    partial.replace(out_path)
    if not counted[USS_TOPIC]:
        log.warning("%s: no ultrasonic cycles (%s); %s holds no ultrasonic frames", log_path, USS_TOPIC, out_path)
    return counted[USS_TOPIC], counted[ODOMETRY_TOPIC], n_frames


__all__ = ["CAN_LOG_SUFFIXES", "log_to_can", "read_can_log", "write_can_log"]
