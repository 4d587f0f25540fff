"""Ultrasonic echoes over CAN: encode UssCycles into frames of sensors/can/uss.dbc, decode frames back into cycles
from a live python-can bus (SocketCAN on the car, the virtual bus in tests); CAN log files (.log, .asc, .blf) are
sensors.drivers.can_log.

A cycle travels as USS_CycleStart, one USS_Echo per echo, USS_CycleEnd (the DBC's comments are the spec). Every
frame carries an AUTOSAR-style CRC-8 and a 4-bit alive counter per message, so a decoder can tell a corrupt or lost
frame from a real echo; problems are counted in `UssCanDecoder.stats`, never raised, because a bus keeps going.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import can
import cantools
import numpy as np

from sensors.errors import SensorError
from sensors.messages import UssCycle, UssStatus

log = logging.getLogger(__name__)

DBC_PATH = Path(__file__).resolve().parent.parent / "can" / "uss.dbc"
START, ECHO, END = "USS_CycleStart", "USS_Echo", "USS_CycleEnd"
STATUS_NOT_REPORTED = 3  # the 2-bit status value for "absent from UssCycle.status"
STAT_KEYS = ("frames", "cycles", "unknown_id", "bad_frames", "bad_checksum", "counter_jumps", "incomplete_cycles",
             "orphan_echoes", "bad_values")
_LOUD_PROBLEMS = 20  # problems logged as warnings before the decoder drops to debug level (a bad bus floods logs)


def load_dbc(path: str | Path | None = None) -> cantools.database.can.Database:
    """The USS database shipped with the package, or another DBC with the same three messages."""
    return load_database(path if path is not None else DBC_PATH, (START, ECHO, END), "ultrasonic", DBC_PATH)


def load_database(path: str | Path, messages: Iterable[str], what: str, template: Path):
    """A DBC that must define MESSAGES; SensorError naming the file otherwise."""
    path = Path(path)
    try:
        db = cantools.database.load_file(str(path))
    except (OSError, cantools.database.UnsupportedDatabaseFormatError) as e:
        raise SensorError(f"{path}: cannot load the {what} CAN database ({e})") from None
    for name in messages:
        try:
            db.get_message_by_name(name)
        except KeyError:
            raise SensorError(f"{path}: DBC has no message {name!r}; use sensors/can/{template.name} as the "
                              "template") from None
    return db


def _crc8_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1D) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
        table.append(crc)
    return table


_CRC8 = _crc8_table()


def crc8_j1850(data: bytes | bytearray, crc: int = 0xFF) -> int:
    """CRC-8 SAE J1850 (poly 0x1D, init 0xFF, xor-out 0xFF), as AUTOSAR E2E profile 1 uses it."""
    for b in data:
        crc = _CRC8[crc ^ b]
    return crc ^ 0xFF


def frame_crc(arbitration_id: int, data: bytes | bytearray) -> int:
    """The CRC byte of a USS frame: over the identifier's low byte (the data ID) and data bytes 1..7."""
    return crc8_j1850(bytes([arbitration_id & 0xFF]) + bytes(data[1:8]))


def e2e_problem(message, msg: can.Message) -> tuple[str, str] | None:
    """("bad_frames" or "bad_checksum", why) when a frame with MESSAGE's (a cantools message's) id is not a classic
    data frame of its length or fails its CRC byte; None when it passes."""
    if msg.is_remote_frame or msg.is_fd or len(msg.data) != message.length:
        return "bad_frames", (f"{len(msg.data)}-byte {'remote ' if msg.is_remote_frame else ''}frame, expected "
                              f"{message.length} data bytes")
    data = bytes(msg.data)
    if data[0] != frame_crc(message.frame_id, data):
        return "bad_checksum", f"CRC {data[0]:#04x} != {frame_crc(message.frame_id, data):#04x}"
    return None


@dataclass(frozen=True)
class _Layout:
    """What the codec needs from the DBC: frame ids and the scaling and limits of the echo signals."""

    start: cantools.database.can.Message
    echo: cantools.database.can.Message
    end: cantools.database.can.Message
    distance_scale: float
    distance_sna: int  # raw value meaning "signal not available"
    distance_max_raw: int
    amplitude_max_raw: int
    max_echoes: int
    status_signals: int

    @property
    def distance_max(self) -> float:
        return self.distance_max_raw * self.distance_scale

    @classmethod
    def of(cls, db) -> _Layout:
        start, echo, end = (db.get_message_by_name(n) for n in (START, ECHO, END))
        dist, amp = echo.get_signal_by_name("Distance"), echo.get_signal_by_name("Amplitude")
        sna = (1 << dist.length) - 1
        max_raw = round(dist.maximum / dist.scale) if dist.maximum is not None else sna - 1
        return cls(start=start, echo=echo, end=end, distance_scale=float(dist.scale), distance_sna=sna,
                   distance_max_raw=min(max_raw, sna - 1), amplitude_max_raw=(1 << amp.length) - 1,
                   max_echoes=(1 << start.get_signal_by_name("NumEchoes").length) - 1,
                   status_signals=sum(s.name.startswith("Status_") for s in start.signals))


class UssCanEncoder:
    """Turns UssCycles into CAN frames; keeps the per-message alive counters running from cycle to cycle."""

    def __init__(self, db=None, num_sensors: int = 12, channel: str | int | None = None):
        self.db = db if db is not None else load_dbc()
        self.layout = _Layout.of(self.db)
        if num_sensors > self.layout.status_signals:
            raise SensorError(f"the USS DBC has status signals for {self.layout.status_signals} sensors, "
                              f"not {num_sensors}")
        self.num_sensors = num_sensors
        self.channel = channel
        self._counters = {m.frame_id: 0 for m in (self.layout.start, self.layout.echo, self.layout.end)}

    def encode(self, cycle: UssCycle) -> list[can.Message]:
        """Start frame, one echo frame per echo, end frame; all stamped with the cycle's time in seconds."""
        raw = self._validate(cycle)
        lay, n = self.layout, cycle.num_echoes
        cc = cycle.cycle & 0xFFFF
        status = {f"Status_{i:02d}": STATUS_NOT_REPORTED for i in range(lay.status_signals)}
        for sensor, st in cycle.status.items():
            status[f"Status_{int(sensor):02d}"] = int(st)
        frames = [self._frame(lay.start, cycle.stamp_ns,
                              {"NumEchoes": n, "CycleCounter": cc, **status})]
        sender, receiver, dist, amp = raw
        for k in range(n):
            frames.append(self._frame(lay.echo, cycle.stamp_ns, {
                "CycleCounterLow": cc & 0xF, "Sender": int(sender[k]), "Receiver": int(receiver[k]),
                "EchoIndex": k, "Distance": int(dist[k]), "Amplitude": int(amp[k])}))
        frames.append(self._frame(lay.end, cycle.stamp_ns, {"NumEchoes": n, "CycleCounter": cc}))
        return frames

    def _frame(self, message, stamp_ns: int, signals: dict[str, int]) -> can.Message:
        counter = self._counters[message.frame_id]
        self._counters[message.frame_id] = (counter + 1) & 0xF
        data = bytearray(message.encode({"CRC": 0, "AliveCounter": counter, **signals}, scaling=False))
        data[0] = frame_crc(message.frame_id, data)
        return can.Message(timestamp=stamp_ns / 1e9, arbitration_id=message.frame_id, is_extended_id=False,
                           data=data, channel=self.channel)

    def _validate(self, cycle: UssCycle) -> tuple[np.ndarray, ...]:
        """Raw integer signals of the echoes; refuses anything that would put garbage on the bus."""
        where = f"USS cycle {cycle.cycle} at {cycle.stamp_ns} ns"
        lay = self.layout
        if cycle.stamp_ns < 0 or cycle.cycle < 0:
            raise SensorError(f"{where}: negative stamp or cycle number cannot be encoded")
        if cycle.num_echoes > lay.max_echoes:
            raise SensorError(f"{where}: {cycle.num_echoes} echoes, the DBC carries at most {lay.max_echoes}")
        for sensor, st in cycle.status.items():
            if not 0 <= int(sensor) < self.num_sensors or int(st) not in (s.value for s in UssStatus):
                raise SensorError(f"{where}: status {st!r} for sensor {sensor!r}; sensor ids are 0.."
                                  f"{self.num_sensors - 1}, status one of {[s.name for s in UssStatus]}")
        for name, ids in (("sender", cycle.sender), ("receiver", cycle.receiver)):
            bad = np.flatnonzero((ids < 0) | (ids >= self.num_sensors))
            if bad.size:
                raise SensorError(f"{where}: echo {bad[0]} has {name} {ids[bad[0]]}, not a sensor id "
                                  f"0..{self.num_sensors - 1}")
        d, a = cycle.distance.astype(np.float64), cycle.amplitude.astype(np.float64)
        dist_raw = np.rint(d / lay.distance_scale)
        bad = np.flatnonzero(~np.isfinite(d) | (d < 0) | (dist_raw > lay.distance_max_raw))
        if bad.size:
            raise SensorError(f"{where}: echo {bad[0]} has distance {d[bad[0]]} m; the DBC carries "
                              f"0..{lay.distance_max:g} m (drop the echo or fix the source)")
        bad = np.flatnonzero(~np.isfinite(a) | (a < 0) | (a > 1))
        if bad.size:
            raise SensorError(f"{where}: echo {bad[0]} has amplitude {a[bad[0]]}, expected 0..1")
        amp_raw = np.rint(a * lay.amplitude_max_raw)
        return cycle.sender, cycle.receiver, dist_raw.astype(np.int64), amp_raw.astype(np.int64)


def encode_cycle(cycle: UssCycle, db=None, encoder: UssCanEncoder | None = None) -> list[can.Message]:
    """The frames of one cycle, timestamps in seconds = stamp_ns / 1e9. For a stream of cycles pass one
    `encoder` so the alive counters run on (a fresh encoder starts them at 0, which a decoder counts as a jump)."""
    return (encoder if encoder is not None else UssCanEncoder(db)).encode(cycle)


@dataclass
class _OpenCycle:
    stamp_ns: int
    cycle: int
    raw_cycle: int
    status: dict[int, UssStatus]
    sender: np.ndarray
    receiver: np.ndarray
    distance: np.ndarray
    amplitude: np.ndarray
    received: np.ndarray  # bool per echo index
    valid: np.ndarray  # bool per echo index: received and its values accepted


class UssCanDecoder:
    """Stateful decoder: feed frames in bus order, get each cycle when its end frame completes it.

    Never raises on bus content: wrong ids, bad CRCs, counter jumps, lost frames and impossible values are
    counted in `stats` (keys STAT_KEYS), the latest described in `problems`, and logged.
    """

    def __init__(self, db=None, num_sensors: int = 12):
        self.db = db if db is not None else load_dbc()
        self.layout = _Layout.of(self.db)
        self.num_sensors = min(num_sensors, self.layout.status_signals)
        self.stats: dict[str, int] = dict.fromkeys(STAT_KEYS, 0)
        self.problems: deque[str] = deque(maxlen=100)
        self._by_id = {m.frame_id: m for m in (self.layout.start, self.layout.echo, self.layout.end)}
        self._counters: dict[int, int] = {}
        self._open: _OpenCycle | None = None
        self._last_cycle: tuple[int, int] | None = None  # (raw 16-bit counter, unwrapped cycle)
        self._logged = 0

    @property
    def in_cycle(self) -> bool:
        """A cycle has started and not yet ended (at the end of a log: it was truncated)."""
        return self._open is not None

    def feed(self, msg: can.Message) -> list[UssCycle]:
        self.stats["frames"] += 1
        message = self._by_id.get(msg.arbitration_id)
        if message is None or msg.is_extended_id or msg.is_error_frame:
            self.stats["unknown_id"] += 1
            return []
        where = f"{message.name} at {msg.timestamp:.6f} s"
        problem = e2e_problem(message, msg)
        if problem:
            self._problem(problem[0], f"{where}: {problem[1]}")
            return []
        sig = message.decode(bytes(msg.data), decode_choices=False, scaling=False)
        self._check_counter(message, int(sig["AliveCounter"]), where)
        if message is self.layout.start:
            return self._on_start(msg, sig, where)
        if message is self.layout.echo:
            self._on_echo(sig, where)
            return []
        return self._on_end(sig, where)

    def _check_counter(self, message, counter: int, where: str) -> None:
        last = self._counters.get(message.frame_id)
        self._counters[message.frame_id] = counter
        if last is not None and counter != (last + 1) & 0xF:
            self._problem("counter_jumps", f"{where}: alive counter {last} -> {counter} ({message.name} frames lost "
                          "or repeated)")

    def _on_start(self, msg: can.Message, sig: dict, where: str) -> list[UssCycle]:
        if self._open is not None:
            o = self._open
            self._problem("incomplete_cycles", f"{where}: cycle {o.cycle} never ended "
                          f"({int(o.received.sum())}/{o.received.size} echoes)")
        raw_cycle, n = int(sig["CycleCounter"]), int(sig["NumEchoes"])
        status = {}
        for i in range(self.num_sensors):
            value = int(sig[f"Status_{i:02d}"])
            if value != STATUS_NOT_REPORTED:
                status[i] = UssStatus(value)
        self._open = _OpenCycle(
            stamp_ns=round(msg.timestamp * 1e9), cycle=self._unwrap(raw_cycle), raw_cycle=raw_cycle, status=status,
            sender=np.zeros(n, np.int32), receiver=np.zeros(n, np.int32), distance=np.zeros(n, np.float32),
            amplitude=np.zeros(n, np.float32), received=np.zeros(n, bool), valid=np.zeros(n, bool))
        return []

    def _unwrap(self, raw: int) -> int:
        """The 16-bit cycle counter continued past 65535 (a jump back of more than half the range is an ECU reset)."""
        if self._last_cycle is None:
            return raw
        last_raw, last = self._last_cycle
        step = (raw - last_raw) & 0xFFFF
        return last + step if step < 0x8000 else raw

    def _on_echo(self, sig: dict, where: str) -> None:
        o = self._open
        if o is not None and int(sig["CycleCounterLow"]) != o.raw_cycle & 0xF:
            # The end of the open cycle and the start of this echo's cycle were both lost.
            self._problem("incomplete_cycles", f"{where}: echo of cycle ...{int(sig['CycleCounterLow']):x} inside "
                          f"cycle {o.cycle}")
            self._open = o = None
        if o is None:
            self._problem("orphan_echoes", f"{where}: echo outside a cycle (its USS_CycleStart was lost)")
            return
        k = int(sig["EchoIndex"])
        if k >= o.received.size or o.received[k]:
            self._problem("bad_frames", f"{where}: echo index {k} {'repeated' if k < o.received.size else 'beyond'} "
                          f"in cycle {o.cycle} of {o.received.size} echoes")
            return
        o.received[k] = True
        sender, receiver, dist_raw = int(sig["Sender"]), int(sig["Receiver"]), int(sig["Distance"])
        distance = dist_raw * self.layout.distance_scale
        if sender >= self.num_sensors or receiver >= self.num_sensors:
            self._problem("bad_values", f"{where}: echo {k} of cycle {o.cycle}: sender {sender} / receiver "
                          f"{receiver} is not a sensor id 0..{self.num_sensors - 1}; echo dropped")
            return
        if dist_raw > self.layout.distance_max_raw:  # includes the SNA value
            self._problem("bad_values", f"{where}: echo {k} of cycle {o.cycle}: distance not available "
                          f"(raw {dist_raw}); echo dropped")
            return
        o.sender[k], o.receiver[k], o.distance[k] = sender, receiver, distance
        o.amplitude[k] = int(sig["Amplitude"]) / self.layout.amplitude_max_raw
        o.valid[k] = True

    def _on_end(self, sig: dict, where: str) -> list[UssCycle]:
        o, self._open = self._open, None
        raw_cycle, n = int(sig["CycleCounter"]), int(sig["NumEchoes"])
        if o is None:
            self._problem("incomplete_cycles", f"{where}: end of cycle {raw_cycle} whose start was lost")
            return []
        if raw_cycle != o.raw_cycle or n != o.received.size or not o.received.all():
            self._problem("incomplete_cycles", f"{where}: cycle {o.cycle} dropped: end says cycle {raw_cycle} "
                          f"with {n} echoes, got {int(o.received.sum())}/{o.received.size} echoes")
            return []
        self._last_cycle = (o.raw_cycle, o.cycle)
        self.stats["cycles"] += 1
        v = o.valid
        return [UssCycle(o.stamp_ns, o.cycle, o.sender[v], o.receiver[v], o.distance[v], o.amplitude[v], o.status)]

    def finish(self, where: str = "end of stream") -> None:
        """Count a cycle left open when the stream ends (a truncated log or a closed bus)."""
        if self._open is not None:
            o, self._open = self._open, None
            self._problem("incomplete_cycles", f"{where}: cycle {o.cycle} cut off "
                          f"({int(o.received.sum())}/{o.received.size} echoes)")

    def _problem(self, kind: str, text: str) -> None:
        self.stats[kind] += 1
        self.problems.append(text)
        self._logged += 1
        if self._logged <= _LOUD_PROBLEMS:
            log.warning("USS CAN: %s%s", text, "; further problems at debug level" if
                        self._logged == _LOUD_PROBLEMS else "")
        else:
            log.debug("USS CAN: %s", text)


def benchmark_codec(num_cycles: int = 300, echoes: int = 24, seed: int = 0) -> dict[str, float]:
    """Encode and decode synthetic cycles; frames per second each way (one CPU core, cantools in Python)."""
    rng = np.random.default_rng(seed)
    cycles = [UssCycle(i * 50_000_000, i, rng.integers(0, 12, echoes), rng.integers(0, 12, echoes),
                       rng.uniform(0.15, 5.5, echoes), rng.uniform(0, 1, echoes)) for i in range(num_cycles)]
    encoder = UssCanEncoder()
    t0 = time.perf_counter()
    frames = [f for c in cycles for f in encoder.encode(c)]
    t1 = time.perf_counter()
    decoder = UssCanDecoder(encoder.db)
    decoded = sum(len(decoder.feed(f)) for f in frames)
    t2 = time.perf_counter()
    if decoded != num_cycles:
        raise SensorError(f"benchmark: decoded {decoded} of {num_cycles} cycles ({decoder.stats})")
    return {"frames": len(frames), "encode_frames_per_s": len(frames) / (t1 - t0),
            "decode_frames_per_s": len(frames) / (t2 - t1), "cycles_per_s_at_decode": num_cycles / (t2 - t1)}


# --- live bus -----------------------------------------------------------------------------------------------


class CanUssSource:
    """Live USS cycles from a python-can bus: `CanUssSource("can0")` on the car (SocketCAN), or
    `CanUssSource("test", interface="virtual")`; pass `bus` to use a bus you opened yourself (not shut down here).

    Stamps are the bus's receive time of the cycle-start frame (SocketCAN: kernel time); pass `clock`
    (e.g. time.monotonic_ns) to restamp frames on arrival with the clock the cameras use. No ultrasonic frame for
    `timeout` seconds raises SensorError: a silent USS bus is a fault, not the end of a drive. With `odometry` the
    vehicle's VEH_Motion frames on the same bus (sensors/can/vehicle.dbc) come out too, as Odometry poses
    (sensors.drivers.can_odometry; their problems in `motion.stats`).
    """

    def __init__(self, channel: str, interface: str = "socketcan", bitrate: int | None = None, bus=None,
                 timeout: float = 1.0, db=None, num_sensors: int = 12, clock: Callable[[], int] | None = None,
                 odometry: bool = False):
        self.name = f"{interface}:{channel}"
        self.timeout = timeout
        self.clock = clock
        self.decoder = UssCanDecoder(db, num_sensors)
        from sensors.drivers.can_odometry import motion_decoder  # it builds on this module

        self.motion = motion_decoder(odometry)
        self._owns_bus = bus is None
        if bus is None:
            kwargs = {"bitrate": bitrate} if bitrate is not None else {}
            try:
                bus = can.Bus(channel=channel, interface=interface, **kwargs)
            except (can.CanError, OSError, ValueError, ImportError) as e:
                raise SensorError(f"USS CAN bus {self.name}: cannot open ({e}); on the car check "
                                  f"`ip link set {channel} up type can bitrate 500000`") from None
        self.bus = bus
        lay = self.decoder.layout
        # Only the three USS ids (and VEH_Motion's) reach us; SocketCAN filters in the kernel, so a busy vehicle bus
        # costs nothing.
        ids = [m.frame_id for m in (lay.start, lay.echo, lay.end)]
        ids += sorted(self.motion.frame_ids) if self.motion is not None else []
        self.bus.set_filters([{"can_id": i, "can_mask": 0x7FF, "extended": False} for i in ids])

    @property
    def stats(self) -> dict[str, int]:
        return self.decoder.stats

    def __iter__(self) -> Iterator:
        last = time.monotonic()
        while True:
            try:
                msg = self.bus.recv(timeout=min(self.timeout, 0.1))
            except can.CanError as e:
                raise SensorError(f"USS CAN bus {self.name}: receive failed ({e})") from None
            if msg is None:
                if time.monotonic() - last > self.timeout:
                    raise SensorError(f"USS CAN bus {self.name}: no ultrasonic frame for {self.timeout:g} s; "
                                      "is the ECU powered and the bus up?")
                continue
            if self.clock is not None:
                msg.timestamp = self.clock() / 1e9
            if self.motion is not None and msg.arbitration_id in self.motion.frame_ids:
                yield from self.motion.feed(msg)  # odometry does not show that the ultrasonic ECU is alive
                continue
            last = time.monotonic()
            yield from self.decoder.feed(msg)

    def close(self) -> None:
        if self._owns_bus and self.bus is not None:
            self.bus.shutdown()
        self.bus = None

    def __enter__(self) -> CanUssSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def quantisation_step(db=None) -> tuple[float, float]:
    """(distance step m, amplitude step): the round-trip error bound of a USS echo over CAN is half of each."""
    lay = _Layout.of(db if db is not None else load_dbc())
    return lay.distance_scale, 1.0 / lay.amplitude_max_raw
