"""Property-based fuzzing of the USS CAN decoder: arbitrary frames end in cycles or counted problems, never an
exception, and a damaged stream never yields a cycle that was not sent."""

from __future__ import annotations

import can
import numpy as np
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sensors.drivers.can_uss import STAT_KEYS, UssCanDecoder, UssCanEncoder, frame_crc, quantisation_step
from sensors.messages import UssCycle, UssStatus

USS_IDS = (0x300, 0x301, 0x302)
DIST_STEP, AMP_STEP = quantisation_step()
DECODER = UssCanDecoder()  # loading the DBC once keeps the examples fast; each test resets what it needs


def fresh_decoder() -> UssCanDecoder:
    return UssCanDecoder(DECODER.db)


@st.composite
def frames(draw):
    """Any classic or odd CAN frame; half of those on USS ids carry a valid CRC so decoding goes deep."""
    arb = draw(st.one_of(st.sampled_from(USS_IDS), st.integers(0, 0x7FF), st.integers(0, 0x1FFFFFFF)))
    data = bytearray(draw(st.binary(min_size=0, max_size=8)))
    if arb in USS_IDS and len(data) == 8 and draw(st.booleans()):
        data[0] = frame_crc(arb, data)
    return can.Message(timestamp=draw(st.floats(0, 4e9, allow_nan=False)), arbitration_id=arb,
                       is_extended_id=arb > 0x7FF or (draw(st.booleans()) and draw(st.booleans())),
                       is_remote_frame=draw(st.booleans()) and draw(st.booleans()), data=data)


def check_cycle(c: UssCycle, num_sensors: int = 12) -> None:
    assert isinstance(c, UssCycle)
    assert ((c.sender >= 0) & (c.sender < num_sensors)).all()
    assert ((c.receiver >= 0) & (c.receiver < num_sensors)).all()
    assert np.isfinite(c.distance).all() and (c.distance >= 0).all() and (c.distance <= 8.19 + 1e-6).all()
    assert ((c.amplitude >= 0) & (c.amplitude <= 1)).all()
    assert all(0 <= k < num_sensors and isinstance(v, UssStatus) for k, v in c.status.items())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(frames(), max_size=60))
def test_arbitrary_frames_never_raise(msgs):
    decoder = fresh_decoder()
    out = []
    for m in msgs:
        out.extend(decoder.feed(m))
    for c in out:
        check_cycle(c)
    assert decoder.stats["frames"] == len(msgs)
    assert decoder.stats["cycles"] == len(out)
    assert set(decoder.stats) == set(STAT_KEYS)


def sent_cycles(n_cycles: int, seed: int) -> list[UssCycle]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n_cycles):
        n = int(rng.integers(0, 6))
        s = rng.integers(0, 12, n)
        out.append(UssCycle(10**15 + i * 50_000_000, 100 + i, s, s, rng.uniform(0.15, 5.5, n),
                            rng.uniform(0, 1, n), {int(rng.integers(0, 12)): UssStatus(int(rng.integers(0, 3)))}))
    return out


mutation = st.tuples(st.sampled_from(["drop", "duplicate", "flip", "swap"]), st.integers(0, 10**6),
                     st.integers(0, 63))


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), mutations=st.lists(mutation, max_size=6))
@example(seed=11, mutations=[("drop", 0, 0), ("drop", 0, 0)])  # the whole first cycle gone: nothing to notice
def test_damaged_stream_yields_only_true_cycles(seed, mutations):
    cycles = sent_cycles(6, seed)
    encoder = UssCanEncoder(DECODER.db)
    stream, sent_in = [], []  # the frames, and each frame's cycle (moved along with it by the mutations)
    for k, c in enumerate(cycles):
        frames = encoder.encode(c)
        stream += frames
        sent_in += [k] * len(frames)
    for op, pos, bit in mutations:
        i = pos % len(stream)
        if op == "drop":
            del stream[i], sent_in[i]
        elif op == "duplicate":
            stream.insert(i, stream[i])
            sent_in.insert(i, sent_in[i])
        elif op == "swap" and i + 1 < len(stream):
            stream[i], stream[i + 1] = stream[i + 1], stream[i]
            sent_in[i], sent_in[i + 1] = sent_in[i + 1], sent_in[i]
        elif op == "flip":
            m = stream[i]
            data = bytearray(m.data)
            data[bit // 8] ^= 1 << (bit % 8)
            stream[i] = can.Message(timestamp=m.timestamp, arbitration_id=m.arbitration_id, is_extended_id=False,
                                    data=data)
        if not stream:
            break
    decoder = fresh_decoder()
    got = [c for m in stream for c in decoder.feed(m)]
    decoder.finish()  # a cycle whose end frame was dropped at the very end is only known as cut off here
    by_number = {c.cycle: c for c in cycles}
    for g in got:  # whatever survives is exactly what was sent: CRC, counters and counts caught the damage
        want = by_number[g.cycle]
        assert g.stamp_ns == want.stamp_ns
        np.testing.assert_array_equal(g.sender, want.sender)  # echo index puts reordered frames back in place
        np.testing.assert_allclose(g.distance, want.distance, atol=DIST_STEP / 2 + 1e-6)
        np.testing.assert_allclose(g.amplitude, want.amplitude, atol=AMP_STEP / 2 + 1e-6)
        assert g.status == want.status
    if not mutations:
        assert len(got) == len(cycles)
    problems = sum(v for k, v in decoder.stats.items() if k not in ("frames", "cycles"))
    # Whole cycles dropped before the first or after the last frame that arrived leave no trace (a stream that
    # starts or ends later); any other loss must show in the decoder's counts.
    reachable = max(sent_in) - min(sent_in) + 1 if sent_in else 0
    assert len(got) == reachable or problems > 0
