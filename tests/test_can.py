"""USS over CAN: DBC codec round trips, log files (.log/.asc/.blf), damaged logs, decoder problem counting,
the live source on python-can's virtual bus."""

from __future__ import annotations

import itertools
import re
import threading
import uuid
from typing import ClassVar

import can
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sensors.drivers.can_log import read_can_log, write_can_log
from sensors.drivers.can_uss import (
    DBC_PATH,
    CanUssSource,
    UssCanDecoder,
    UssCanEncoder,
    crc8_j1850,
    encode_cycle,
    frame_crc,
    load_dbc,
    quantisation_step,
)
from sensors.errors import LogFormatError, SensorError
from sensors.messages import UssCycle, UssStatus

DIST_STEP, AMP_STEP = quantisation_step()
T0 = 1_700_000_000_000_000_000  # an epoch stamp in ns, as a recorder on the car writes


def make_cycle(cycle: int, stamp_ns: int, n: int = 6, seed: int = 0, status=None) -> UssCycle:
    rng = np.random.default_rng(seed + cycle)
    sender = rng.integers(0, 12, n)
    receiver = np.clip(sender + rng.integers(-1, 2, n), 0, 11)
    return UssCycle(stamp_ns, cycle, sender, receiver, rng.uniform(0.15, 5.5, n), rng.uniform(0, 1, n),
                    status if status is not None else {0: UssStatus.OK, 4: UssStatus.BLOCKED, 9: UssStatus.NO_RESPONSE})


def stream(count: int = 5, start: int = 0, stamp0: int = T0, period_ns: int = 66_666_667) -> list[UssCycle]:
    return [make_cycle(start + i, stamp0 + i * period_ns, n=3 + i % 5) for i in range(count)]


def assert_same(got: UssCycle, want: UssCycle, stamp_tol_ns: int = 1000) -> None:
    assert got.cycle == want.cycle
    assert abs(got.stamp_ns - want.stamp_ns) <= stamp_tol_ns
    np.testing.assert_array_equal(got.sender, want.sender)
    np.testing.assert_array_equal(got.receiver, want.receiver)
    # Quantisation bound plus float32 storage of the decoded values.
    np.testing.assert_allclose(got.distance, want.distance, atol=DIST_STEP / 2 + 1e-6, rtol=0)
    np.testing.assert_allclose(got.amplitude, want.amplitude, atol=AMP_STEP / 2 + 1e-6, rtol=0)
    assert got.status == want.status


def decode_all(frames, decoder=None) -> list[UssCycle]:
    decoder = decoder if decoder is not None else UssCanDecoder()
    return [c for m in frames for c in decoder.feed(m)]


# --- DBC and codec -------------------------------------------------------------------------------------------


def test_dbc_is_classic_can_and_documented():
    db = load_dbc(DBC_PATH)
    names = {m.name: m for m in db.messages}
    assert set(names) == {"USS_CycleStart", "USS_Echo", "USS_CycleEnd"}
    for m in db.messages:
        assert m.length == 8 and not m.is_extended_frame and m.frame_id <= 0x7FF
        assert m.comment and all(s.comment for s in m.signals)
        assert max(s.start + s.length for s in m.signals) <= 64
    echo = names["USS_Echo"]
    assert echo.get_signal_by_name("Distance").scale == pytest.approx(0.001)
    assert echo.get_signal_by_name("Sender").choices[0] == "FSL"
    assert names["USS_CycleStart"].get_signal_by_name("Status_11").choices[2] == "BLOCKED"


def test_crc8_sae_j1850_check_value():
    # The catalogued check value of CRC-8/SAE-J1850 over "123456789".
    assert crc8_j1850(b"123456789") == 0x4B


def test_frame_layout_known_values():
    cycle = UssCycle(T0, 0x1234, [2], [3], [1.5], [1.0], {0: UssStatus.OK, 1: UssStatus.BLOCKED})
    start, echo, end = encode_cycle(cycle)
    assert [f.arbitration_id for f in (start, echo, end)] == [0x300, 0x301, 0x302]
    # NumEchoes 1 at bit 12, cycle counter little endian in bytes 3..4, sensor 0 OK, 1 BLOCKED, rest not reported.
    assert start.data[1] == 0x10 and start.data[3:5] == b"\x34\x12"
    assert start.data[5] == 0b11111000 and start.data[6:8] == b"\xff\xff"
    assert echo.data[1] >> 4 == 0x4  # CycleCounterLow
    assert echo.data[2] == 0x32  # sender 2 low nibble, receiver 3 high nibble
    raw_dist = (int.from_bytes(echo.data[4:8], "little") >> 2) & 0x1FFF
    assert raw_dist == 1500
    for f in (start, echo, end):
        assert f.data[0] == frame_crc(f.arbitration_id, f.data)
        assert f.timestamp == pytest.approx(T0 / 1e9, abs=1e-6)


cycles_st = st.builds(
    lambda n, stamp, cyc, ids, dist, amp, status: UssCycle(
        stamp, cyc, ids[:n, 0], ids[:n, 1], dist[:n], amp[:n], status),
    n=st.integers(0, 40),
    stamp=st.integers(0, 2 * 10**18),
    cyc=st.integers(0, 65535),
    ids=st.lists(st.tuples(st.integers(0, 11), st.integers(0, 11)), min_size=40, max_size=40).map(np.array),
    dist=st.lists(st.floats(0, 8.19), min_size=40, max_size=40).map(np.array),
    amp=st.lists(st.floats(0, 1), min_size=40, max_size=40).map(np.array),
    status=st.dictionaries(st.integers(0, 11), st.sampled_from(list(UssStatus))),
)


@settings(max_examples=60, deadline=None)
@given(cycle=cycles_st)
def test_encode_decode_round_trip(cycle):
    frames = encode_cycle(cycle)
    assert len(frames) == cycle.num_echoes + 2
    assert all(len(f.data) == 8 for f in frames)
    decoder = UssCanDecoder()
    (got,) = decode_all(frames, decoder)
    assert_same(got, cycle)
    assert decoder.stats["cycles"] == 1 and decoder.stats["bad_values"] == 0


def test_stream_keeps_counters_running_and_unwraps_cycle_counter():
    cycles = stream(6, start=65533)  # crosses the 16-bit cycle counter wrap
    encoder, decoder = UssCanEncoder(), UssCanDecoder()
    got = decode_all([f for c in cycles for f in encoder.encode(c)], decoder)
    assert [c.cycle for c in got] == list(range(65533, 65539))
    assert decoder.stats["counter_jumps"] == 0 and decoder.stats["incomplete_cycles"] == 0


@pytest.mark.parametrize("field,value", [("distance", np.nan), ("distance", -0.01), ("distance", 9.0),
                                         ("amplitude", 1.5), ("amplitude", np.nan), ("sender", 12),
                                         ("receiver", -1)])
def test_encode_rejects_garbage(field, value):
    cycle = make_cycle(7, T0, n=3)
    getattr(cycle, field)[1] = value
    with pytest.raises(SensorError, match=f"cycle 7 .*echo 1 has {field}"):
        encode_cycle(cycle)


def test_encode_rejects_bad_status_and_negative_stamp():
    with pytest.raises(SensorError, match="sensor 12"):
        encode_cycle(make_cycle(1, T0, status={12: UssStatus.OK}))
    with pytest.raises(SensorError, match="negative"):
        encode_cycle(make_cycle(1, -5))


# --- decoder robustness --------------------------------------------------------------------------------------


def frames_of(cycles):
    encoder = UssCanEncoder()
    return [encoder.encode(c) for c in cycles]


def test_bad_checksum_drops_that_cycle_only():
    cycles = stream(3)
    per_cycle = frames_of(cycles)
    per_cycle[1][2].data[5] ^= 0x04  # one bit of one echo's distance
    decoder = UssCanDecoder()
    got = decode_all(itertools.chain(*per_cycle), decoder)
    assert [c.cycle for c in got] == [0, 2]
    assert decoder.stats["bad_checksum"] == 1
    assert decoder.stats["incomplete_cycles"] == 1
    assert decoder.stats["counter_jumps"] == 1  # the echo counter skips the rejected frame
    assert_same(got[1], cycles[2])


def test_lost_echo_frame_counts_jump_and_incomplete_cycle():
    cycles = stream(3)
    per_cycle = frames_of(cycles)
    del per_cycle[1][2]
    decoder = UssCanDecoder()
    got = decode_all(itertools.chain(*per_cycle), decoder)
    assert [c.cycle for c in got] == [0, 2]
    assert decoder.stats["counter_jumps"] == 1 and decoder.stats["incomplete_cycles"] == 1
    assert any("cycle 1 dropped" in p for p in decoder.problems)


def test_lost_start_and_lost_end_frames():
    cycles = stream(4)
    per_cycle = frames_of(cycles)
    del per_cycle[1][0]  # start of cycle 1 lost: its echoes are orphans, its end has no start
    del per_cycle[2][-1]  # end of cycle 2 lost: the start of cycle 3 closes it as incomplete
    decoder = UssCanDecoder()
    got = decode_all(itertools.chain(*per_cycle), decoder)
    assert [c.cycle for c in got] == [0, 3]
    assert decoder.stats["orphan_echoes"] == cycles[1].num_echoes
    assert decoder.stats["incomplete_cycles"] == 2
    assert_same(got[1], cycles[3])


def test_duplicate_echo_frame_is_ignored():
    cycles = stream(2)
    per_cycle = frames_of(cycles)
    per_cycle[0].insert(2, per_cycle[0][1])
    decoder = UssCanDecoder()
    got = decode_all(itertools.chain(*per_cycle), decoder)
    assert len(got) == 2 and decoder.stats["bad_frames"] == 1
    assert_same(got[0], cycles[0])


def _echo_frame(db, counter, sender, receiver, index, distance_raw, cycle_low=0):
    msg = db.get_message_by_name("USS_Echo")
    data = bytearray(msg.encode({"CRC": 0, "AliveCounter": counter, "CycleCounterLow": cycle_low, "Sender": sender,
                                 "Receiver": receiver, "EchoIndex": index, "Distance": distance_raw,
                                 "Amplitude": 512}, scaling=False))
    data[0] = frame_crc(msg.frame_id, data)
    return can.Message(timestamp=T0 / 1e9, arbitration_id=msg.frame_id, is_extended_id=False, data=data)


def test_decoder_rejects_unknown_sensor_and_unavailable_distance():
    db = load_dbc()
    cycle = make_cycle(0, T0, n=4)
    start, *echoes, end = encode_cycle(cycle)
    echoes[1] = _echo_frame(db, 1, sender=13, receiver=2, index=1, distance_raw=1000)  # no sensor 13
    echoes[2] = _echo_frame(db, 2, sender=2, receiver=2, index=2, distance_raw=8191)  # SNA
    decoder = UssCanDecoder(db)
    (got,) = decode_all([start, *echoes, end], decoder)
    assert decoder.stats["bad_values"] == 2
    keep = [0, 3]
    np.testing.assert_array_equal(got.sender, cycle.sender[keep])
    np.testing.assert_allclose(got.distance, cycle.distance[keep], atol=DIST_STEP / 2 + 1e-6)


def test_unknown_ids_and_wrong_lengths_are_counted():
    decoder = UssCanDecoder()
    frames = [can.Message(arbitration_id=0x123, data=b"\0" * 8, is_extended_id=False),
              can.Message(arbitration_id=0x300, data=b"\0" * 8, is_extended_id=True),
              can.Message(arbitration_id=0x301, data=b"\1\2\3", is_extended_id=False),
              can.Message(arbitration_id=0x300, is_remote_frame=True, dlc=8, is_extended_id=False)]
    assert decode_all(frames, decoder) == []
    assert decoder.stats["unknown_id"] == 2 and decoder.stats["bad_frames"] == 2 and decoder.stats["frames"] == 4


# --- log files -----------------------------------------------------------------------------------------------

CANDUMP_LINE = re.compile(r"^\(\d+\.\d{6}\) can0 30[0-2]#[0-9A-F]{16} T$")


def test_candump_log_round_trip(tmp_path):
    cycles = stream(20, stamp0=T0 + 123_456)  # sub-millisecond part must survive
    path = tmp_path / "uss.log"
    n_frames = write_can_log(cycles, path)
    assert n_frames == sum(c.num_echoes + 2 for c in cycles)
    lines = path.read_text().splitlines()
    assert len(lines) == n_frames and all(CANDUMP_LINE.match(x) for x in lines)
    decoder = UssCanDecoder()
    got = list(read_can_log(path, decoder=decoder))
    assert len(got) == len(cycles)
    for g, c in zip(got, cycles, strict=True):
        assert_same(g, c, stamp_tol_ns=1000)
    assert decoder.stats["counter_jumps"] == 0 and decoder.stats["cycles"] == 20


@pytest.mark.parametrize("suffix", [".asc", ".blf"])
def test_asc_and_blf_round_trip(tmp_path, suffix):
    cycles = stream(10, stamp0=T0 + 987_654_321)
    path = tmp_path / f"uss{suffix}"
    write_can_log(cycles, path)
    got = list(read_can_log(path))
    assert len(got) == len(cycles)
    for g, c in zip(got, cycles, strict=True):
        assert_same(g, c, stamp_tol_ns=2_000_000)  # absolute start stored at ms resolution
    # The spacing between cycles is microsecond-exact in both formats.
    np.testing.assert_allclose(np.diff([g.stamp_ns for g in got]), np.diff([c.stamp_ns for c in cycles]), atol=1000)


def test_truncated_candump_gives_cycles_before_the_cut(tmp_path):
    cycles = stream(6)
    path = tmp_path / "cut.log"
    write_can_log(cycles, path)
    lines = path.read_text().splitlines(keepends=True)
    k = sum(c.num_echoes + 2 for c in cycles[:4]) + 1  # the first echo line of cycle 4
    path.write_text("".join(lines[:k]) + lines[k][:6])  # the recorder died mid-line: "(17000"
    got = []
    with pytest.raises(LogFormatError, match=rf"cut\.log: line {k + 1}: unreadable"):
        got.extend(read_can_log(path))
    assert [c.cycle for c in got] == [0, 1, 2, 3]
    for g, c in zip(got, cycles, strict=False):
        assert_same(g, c)


def test_log_cut_after_a_full_line_warns_and_counts(tmp_path, caplog):
    cycles = stream(3)
    path = tmp_path / "cut.log"
    write_can_log(cycles, path)
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-2]))  # the last cycle loses its last echo and its end frame
    decoder = UssCanDecoder()
    got = list(read_can_log(path, decoder=decoder))
    assert [c.cycle for c in got] == [0, 1]
    assert decoder.stats["incomplete_cycles"] == 1
    assert "end of file: cycle 2 cut off" in caplog.text


def test_garbage_lines_raise_or_are_skipped(tmp_path):
    cycles = stream(5)
    path = tmp_path / "garbage.log"
    write_can_log(cycles, path)
    lines = path.read_text().splitlines(keepends=True)
    k = sum(c.num_echoes + 2 for c in cycles[:2]) + 1  # inside cycle 2
    lines.insert(k, "this is not a candump line\n")
    lines.append("(1700000099.000000) can0 30Z#00\n")
    path.write_text("".join(lines))
    with pytest.raises(LogFormatError, match=rf"line {k + 1}:.*errors='skip'"):
        list(read_can_log(path))
    decoder = UssCanDecoder()
    got = list(read_can_log(path, errors="skip", decoder=decoder))
    assert [c.cycle for c in got] == [0, 1, 3, 4]  # only the cycle spanning the garbage is lost
    for g in got:
        assert_same(g, cycles[g.cycle])


def test_corrupt_and_truncated_blf_raise_typed_errors_with_offset(tmp_path):
    path = tmp_path / "bad.blf"
    write_can_log(stream(40), path)
    good = path.read_bytes()
    path.write_bytes(good[:200] + b"\xff" * 60 + good[260:])
    with pytest.raises(LogFormatError, match=r"bad\.blf: byte \d+: unreadable"):
        list(read_can_log(path))
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(LogFormatError, match=rf"byte {len(good) // 2}: file ends before"):
        list(read_can_log(path))
    decoder = UssCanDecoder()
    got = list(read_can_log(path, decoder=decoder, errors="skip"))
    assert 0 < len(got) < 40
    assert decoder.stats["incomplete_cycles"] == 1
    path.write_bytes(b"LOGG")
    with pytest.raises(LogFormatError, match=r"not a readable \.blf"):
        list(read_can_log(path))


def test_missing_and_unsupported_files(tmp_path):
    with pytest.raises(LogFormatError, match="no such CAN log"):
        list(read_can_log(tmp_path / "nope.log"))
    with pytest.raises(LogFormatError, match="not a CAN log"):
        list(read_can_log(tmp_path / "x.mcap"))
    with pytest.raises(LogFormatError, match="suffix"):
        write_can_log(stream(1), tmp_path / "x.txt")


# --- live bus ------------------------------------------------------------------------------------------------


def test_virtual_bus_source_receives_cycles():
    channel = f"uss-{uuid.uuid4().hex[:8]}"
    cycles = stream(4)
    with can.Bus(interface="virtual", channel=channel) as ecu, \
            CanUssSource(channel, interface="virtual", timeout=2.0) as source:
        ecu.send(can.Message(arbitration_id=0x7DF, data=b"\2\1\0\0\0\0\0\0", is_extended_id=False))  # other traffic
        encoder = UssCanEncoder()
        for c in cycles:
            for f in encoder.encode(c):
                ecu.send(f)
        got = list(itertools.islice(source, len(cycles)))
        assert source.stats["unknown_id"] == 0  # filtered before decoding
    assert [g.cycle for g in got] == [0, 1, 2, 3]
    for g, c in zip(got, cycles, strict=True):
        # On a live bus the stamp is the receive time; the echoes are the ECU's.
        np.testing.assert_allclose(g.distance, c.distance, atol=DIST_STEP / 2 + 1e-6)
        assert g.status == c.status
    assert all(b.stamp_ns >= a.stamp_ns for a, b in itertools.pairwise(got))


def test_virtual_bus_restamps_with_given_clock_and_times_out():
    channel = f"uss-{uuid.uuid4().hex[:8]}"
    ticks = itertools.count(1_000_000_000, 1_000)
    with can.Bus(interface="virtual", channel=channel) as ecu, \
            CanUssSource(channel, interface="virtual", timeout=0.3, clock=lambda: next(ticks)) as source:

        def send():
            for f in encode_cycle(make_cycle(0, T0, n=2)):
                ecu.send(f)

        threading.Thread(target=send).start()
        it = iter(source)
        first = next(it)
        assert first.stamp_ns == 1_000_000_000  # the clock reading at the start frame's arrival
        with pytest.raises(SensorError, match=r"no ultrasonic frame for 0\.3 s"):
            next(it)


def test_bus_open_failure_is_a_sensor_error():
    with pytest.raises(SensorError, match="cannot open"):
        CanUssSource("nonexistent0", interface="no-such-interface")


# --- conversion from a nearfield log -------------------------------------------------------------------------


class _FakeLogReader:
    """Stands in for sensors.log.LogReader (the MCAP layer) so the conversion is tested on its own."""

    records: ClassVar[list] = []

    def __init__(self, path):
        self.path = path

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def messages(self, topics=None):
        return (r for r in self.records if topics is None or r.topic in topics)


def test_log_to_can_converts_only_uss_topic_and_writes_whole_files(tmp_path, monkeypatch):
    import sys
    import types
    from dataclasses import dataclass

    from sensors.drivers.can_log import log_to_can
    from sensors.schemas import USS_TOPIC

    @dataclass
    class Record:
        topic: str
        stamp_ns: int
        value: object

    cycles = stream(4)
    fake = types.ModuleType("sensors.log")
    fake.LogReader = _FakeLogReader
    _FakeLogReader.records = [Record("/camera/FV/image", c.stamp_ns, None) for c in cycles] + \
        [Record(USS_TOPIC, c.stamp_ns, c) for c in cycles]
    monkeypatch.setitem(sys.modules, "sensors.log", fake)
    src = tmp_path / "drive.mcap"
    src.write_bytes(b"")
    out = tmp_path / "drive.log"
    assert log_to_can(src, out) == (4, 0, sum(c.num_echoes + 2 for c in cycles))
    for g, c in zip(read_can_log(out), cycles, strict=True):
        assert_same(g, c)
    # A cycle that cannot be encoded aborts the conversion and leaves no half-written output behind.
    bad = make_cycle(9, T0, n=2)
    bad.distance[0] = np.nan
    _FakeLogReader.records = [Record(USS_TOPIC, c.stamp_ns, c) for c in [*cycles, bad]]
    out2 = tmp_path / "bad.log"
    with pytest.raises(SensorError, match="cycle 9"):
        log_to_can(src, out2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["drive.log", "drive.mcap"]
    with pytest.raises(LogFormatError, match="no such log"):
        log_to_can(tmp_path / "missing.mcap", out2)


def test_cli_bench_and_missing_input(capsys, tmp_path):
    from app.cli import main

    assert main(["convert", "to-can", str(tmp_path / "none.mcap"), str(tmp_path / "o.log")]) == 2
    assert "no such log file" in capsys.readouterr().err
    assert main(["bench", "can", "--cycles", "20", "--echoes", "4"]) == 0
    assert "decode_frames_per_s" in capsys.readouterr().out


def test_distance_limits_are_exact():
    top = make_cycle(3, T0, n=2)
    top.distance[:] = [0.0, 8.19]  # both ends of the DBC range encode
    (got,) = decode_all(encode_cycle(top))
    np.testing.assert_allclose(got.distance, [0.0, 8.19], atol=1e-6)
    top.distance[1] = 8.1906  # rounds past the range: refused rather than clipped
    with pytest.raises(SensorError, match=r"0\.\.8\.19 m"):
        encode_cycle(top)


def test_convert_to_can_end_to_end_from_mcap(tmp_path, rig, capsys):
    from app.cli import main
    from sensors.log_writer import LogWriter

    cycles = [make_cycle(i, T0 + 123_456_789 + i * 66_666_667, n=2 + i % 4) for i in range(8)]
    drive = tmp_path / "drive.mcap"
    from sensors.geometry import Pose2D
    from sensors.messages import Odometry

    odometry = [Odometry(T0 + k * 20_000_000, Pose2D(0.02 * k, 0.0, 0.0)) for k in range(30)]  # 1 m/s ahead
    with LogWriter(drive, rig) as writer:
        for c in cycles:
            writer.write_uss(c)
        for o in odometry:
            writer.write_odometry(o)
    out = tmp_path / "drive.log"
    assert main(["convert", "to-can", str(drive), str(out)]) == 0
    assert "8 ultrasonic cycles and 30 odometry samples in" in capsys.readouterr().out
    # Into a folder that does not exist yet: made, as eval and register-model make theirs; a file on the way is said.
    deep = tmp_path / "new" / "dir" / "drive.asc"
    assert main(["convert", "to-can", str(drive), str(deep)]) == 0
    assert sorted(p.name for p in deep.parent.iterdir()) == ["drive.asc"]
    capsys.readouterr()
    assert main(["convert", "to-can", str(drive), str(out / "x.log")]) == 2
    err = capsys.readouterr().err
    assert f"cannot create its folder {out}" in err and "partial" not in err
    poses = [o.pose.x for o in read_can_log(out, odometry=True) if isinstance(o, Odometry)]
    assert np.allclose(poses, [o.pose.x for o in odometry], atol=1e-3)
    decoder = UssCanDecoder()
    got = list(read_can_log(out, decoder=decoder))
    assert len(got) == len(cycles) and decoder.stats["counter_jumps"] == 0
    for g, c in zip(got, cycles, strict=True):
        assert_same(g, c, stamp_tol_ns=1000)  # candump keeps microseconds
