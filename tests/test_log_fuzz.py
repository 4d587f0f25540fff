"""Property-based checks of the log reader on hostile input: arbitrary bytes, flipped bits and mutated logs end
in messages (a subset of the real ones, in time order, damage reported when any is missing) or LogFormatError,
never another exception."""

import contextlib
import logging

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_log import make_log

from sensors.errors import LogFormatError
from sensors.log import MAGIC, LogReader

FUZZ = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _fingerprint(m):
    v = m.value
    if hasattr(v, "jpeg"):
        body = v.jpeg
    elif hasattr(v, "occupancy"):
        body = v.occupancy.tobytes()
    elif hasattr(v, "distance"):
        body = b"".join(a.tobytes() for a in (v.sender, v.receiver, v.distance, v.amplitude)) + repr(v.status).encode()
    elif hasattr(v, "to_dict"):
        body = repr(v.to_dict()).encode()
    else:
        body = repr(v).encode()
    return m.topic, m.stamp_ns, body


class _Sample(tuple):
    """(bytes of a valid log, its messages' fingerprints, where to write mutants); short repr for hypothesis."""

    def __repr__(self):
        return "small_log"


@pytest.fixture(scope="module")
def small_log(tmp_path_factory, rig):
    folder = tmp_path_factory.mktemp("fuzz")
    path = folder / "small.mcap"
    make_log(path, rig, frames=6, chunk_size=4 << 10)
    with LogReader(path) as r:
        truth = [_fingerprint(m) for m in r.messages()]
    return _Sample((path.read_bytes(), truth, folder / "mutant.mcap"))


@pytest.fixture(autouse=True)
def _quiet():
    # Every example reports damage as warnings; keep the test output readable.
    logging.getLogger("sensors.log").setLevel(logging.ERROR)
    yield
    logging.getLogger("sensors.log").setLevel(logging.NOTSET)


def _read(path, strict):
    """Everything a caller can ask of a log; LogFormatError is the only acceptable failure."""
    try:
        with LogReader(path, strict=strict) as r:
            got = [_fingerprint(m) for m in r.messages()]
            r.summary().format()
            for topic in r.topics:
                r.index(topic)
            list(r.seek(0))
            with contextlib.suppress(LogFormatError):
                assert r.rig.cameras
            return got, r.damage
    except LogFormatError as e:
        assert str(e)
        return None, e


@FUZZ
@given(data=st.one_of(st.binary(max_size=3000), st.binary(max_size=3000).map(lambda b: MAGIC + b)),
       strict=st.booleans())
def test_arbitrary_bytes(small_log, data, strict):
    _, _, path = small_log
    path.write_bytes(data)
    got, damage = _read(path, strict)
    if got is not None:
        assert damage is not None or got == []


@FUZZ
@given(flips=st.lists(st.tuples(st.integers(0, 2**31), st.integers(0, 7)), min_size=1, max_size=4),
       strict=st.booleans())
def test_flipped_bits(small_log, flips, strict):
    data, truth, path = small_log
    mutant = bytearray(data)
    for where, bit in flips:
        mutant[where % len(mutant)] ^= 1 << bit
    path.write_bytes(bytes(mutant))
    got, damage = _read(path, strict)
    if got is None:
        return
    assert set(got) <= set(truth)  # nothing invented: CRCs catch flipped bits inside chunks
    assert [g[1] for g in got] == sorted(g[1] for g in got)
    if len(got) < len(truth):
        assert damage is not None


@FUZZ
@given(ops=st.lists(st.tuples(st.sampled_from(["cut", "delete", "insert", "overwrite"]),
                              st.integers(0, 2**31), st.binary(min_size=1, max_size=64)),
                    min_size=1, max_size=3),
       strict=st.booleans())
def test_mutated_logs(small_log, ops, strict):
    data, truth, path = small_log
    mutant = bytearray(data)
    for op, where, blob in ops:
        i = where % (len(mutant) + 1)
        if op == "cut":
            del mutant[i:]
        elif op == "delete":
            del mutant[i:i + len(blob)]
        elif op == "insert":
            mutant[i:i] = blob
        else:
            mutant[i:i + len(blob)] = blob
    path.write_bytes(bytes(mutant))
    got, damage = _read(path, strict)
    if got is not None:
        assert [g[1] for g in got] == sorted(g[1] for g in got)
        if len(got) < len(truth):
            assert damage is not None


def test_flipped_byte_in_every_chunk_region(small_log):
    """Deterministic sweep: one flipped byte every 541 bytes; every readable message is a real one."""
    data, truth, path = small_log
    for i in range(len(MAGIC), len(data), 541):
        mutant = bytearray(data)
        mutant[i] ^= 0x5A
        path.write_bytes(bytes(mutant))
        got, damage = _read(path, strict=False)
        assert got is not None and set(got) <= set(truth)
        if len(got) < len(truth):
            assert damage is not None
