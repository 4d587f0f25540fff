
import numpy as np
import pytest

from perception.bev_config import BevConfig
from perception.uss_raster import AMPLITUDE, COVERAGE, CROSS_ARC, DIRECT_ARC, FREE, USS_CHANNELS, UssRasterizer
from sensors.errors import SensorError
from sensors.messages import UssCycle, UssStatus

CONFIG = BevConfig(cell=0.1)  # 160 x 160: arcs a few cells wide, so geometry checks are sharp
FIL, FIR, FSL = 2, 3, 0  # front inner left/right, front side left (sensors/rigs/default.toml)


@pytest.fixture(scope="module")
def raster(rig):
    return UssRasterizer(rig, CONFIG)


@pytest.fixture(scope="module")
def grid(rig):
    return CONFIG.grid(rig)


def cycle(rig, echoes=(), failed=(), status=UssStatus.NO_RESPONSE):
    """A cycle from (sender, receiver, distance, amplitude) tuples; every sensor OK except `failed`."""
    e = np.array(echoes, float).reshape(-1, 4)
    st = {s.id: (status if s.id in failed else UssStatus.OK) for s in rig.uss}
    return UssCycle(1_000, 7, e[:, 0], e[:, 1], e[:, 2], e[:, 3], st)


def others(rig, *keep):
    return [s.id for s in rig.uss if s.id not in keep]


def polar(rig, grid, sensor_id):
    """(rows, cols) distance and bearing off the beam axis of every cell centre from a sensor."""
    s = rig.uss_by_id(sensor_id)
    d = grid.cell_centres() - np.array(s.position[:2])
    bearing = (np.arctan2(d[..., 1], d[..., 0]) - s.yaw + np.pi) % (2 * np.pi) - np.pi
    return np.hypot(d[..., 0], d[..., 1]), bearing


def test_output_layout_and_missing_cycle(rig, raster):
    empty = raster(None)
    assert empty.shape == (len(USS_CHANNELS), 160, 160) and empty.dtype == np.float32
    assert not empty.any()  # no information at all: coverage 0 too
    quiet = raster(cycle(rig))  # every sensor works and hears nothing
    assert quiet[COVERAGE].mean() > 0.3 and quiet[FREE].any()
    assert not quiet[DIRECT_ARC].any() and not quiet[CROSS_ARC].any() and not quiet[AMPLITUDE].any()


def test_direct_echo_draws_the_arc_at_its_distance_inside_the_beam(rig, raster, grid):
    d = 1.5
    out = raster(cycle(rig, [(FIL, FIL, d, 0.6)]))
    arc = out[DIRECT_ARC]
    s = rig.uss_by_id(FIL)
    # Along the beam axis the arc peaks in the cell that holds the point at distance d.
    expected = np.floor(grid.to_cell(np.array(s.position[:2]) + d * s.axis[:2] / np.linalg.norm(s.axis[:2])))
    steps = np.array(s.position[:2]) + np.linspace(0.05, 5.0, 500)[:, None] * np.array([np.cos(s.yaw), np.sin(s.yaw)])
    rc = np.unique(np.floor(grid.to_cell(steps)).astype(int), axis=0)
    peak = rc[np.argmax(arc[rc[:, 0], rc[:, 1]])]
    assert tuple(peak) == tuple(expected.astype(int))
    assert arc[tuple(peak)] > 0.9
    r, bearing = polar(rig, grid, FIL)
    bright = arc > 0.5
    assert bright.sum() > 20  # a real arc, not a dot: ~d x 120° / cell cells long
    assert np.all(np.abs(r[bright] - d) < 1.5 * grid.cell)  # about two cells wide at half height
    assert np.all(arc[np.abs(r - d) > 2.5 * grid.cell] < 0.02)
    assert np.all(np.abs(bearing[bright]) <= s.horizontal_opening / 2)
    assert not arc[np.abs(bearing) > s.horizontal_opening / 2].any()  # nothing outside the beam, nor behind
    assert not out[CROSS_ARC].any()
    # The amplitude channel is the arc profile scaled by the echo's amplitude.
    assert np.allclose(out[AMPLITUDE], 0.6 * arc, atol=1e-6)
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_cross_echo_lies_on_the_analytic_ellipse(rig, raster, grid):
    a = 1.2  # half the path sender -> object -> receiver
    out = raster(cycle(rig, [(FIL, FIR, a, 0.5)]))
    ell = out[CROSS_ARC]
    assert not out[DIRECT_ARC].any()
    ps, pr = (np.array(rig.uss_by_id(i).position[:2]) for i in (FIL, FIR))
    xy = grid.cell_centres()
    half_path = (np.linalg.norm(xy - ps, axis=-1) + np.linalg.norm(xy - pr, axis=-1)) / 2
    bright = ell > 0.5
    assert bright.sum() > 20
    assert np.all(np.abs(half_path[bright] - a) < 1.5 * grid.cell)
    assert np.all(ell[np.abs(half_path - a) > 2.5 * grid.cell] < 0.02)
    # Straight ahead of the midpoint the ellipse is at the semi-minor axis b = sqrt(a² - c²).
    mid, c = (ps + pr) / 2, np.linalg.norm(ps - pr) / 2
    ahead = mid + np.array([np.sqrt(a * a - c * c), 0.0])
    r0, c0 = np.floor(grid.to_cell(ahead)).astype(int)
    column = ell[:, c0]
    assert np.argmax(column[:r0 + 20]) == r0 and column[r0] > 0.9
    # Only inside both beams: behind either sensor, nothing.
    for sid in (FIL, FIR):
        _, bearing = polar(rig, grid, sid)
        assert not ell[np.abs(bearing) > rig.uss_by_id(sid).horizontal_opening / 2].any()


def test_free_space_ends_before_the_first_echo(rig, raster, grid):
    d = 1.5
    # FIL alone works and hears two echoes; free space stops short of the first.
    out = raster(cycle(rig, [(FIL, FIL, 2.5, 0.4), (FIL, FIL, d, 0.6)], failed=others(rig, FIL)))
    r, bearing = polar(rig, grid, FIL)
    s = rig.uss_by_id(FIL)
    beam = np.abs(bearing) < s.horizontal_opening / 2 - 0.05  # away from the sector's jagged edge
    free = out[FREE]
    assert np.all(free[beam & (r > s.range_min + grid.cell) & (r < d - 3 * grid.cell)] == 1)
    assert not free[r > d].any()
    assert not free[~(np.abs(bearing) <= s.horizontal_opening / 2)].any()
    # The coverage is FIL's sector only, out to its range.
    cov = out[COVERAGE] > 0
    assert np.all(cov[beam & (r > s.range_min + grid.cell) & (r < s.range_max - grid.cell)])
    assert not cov[(r > s.range_max) | ~(np.abs(bearing) <= s.horizontal_opening / 2)].any()


def test_a_quiet_sensor_reports_free_space_out_to_the_free_range(rig, raster, grid):
    out = raster(cycle(rig, failed=others(rig, FIL)))
    r, bearing = polar(rig, grid, FIL)
    beam = np.abs(bearing) < rig.uss_by_id(FIL).horizontal_opening / 2 - 0.05
    assert np.all(out[FREE][beam & (r > 0.3) & (r < raster.free_range - grid.cell)] == 1)
    assert not out[FREE][r > raster.free_range].any()


@pytest.mark.parametrize("status", [UssStatus.NO_RESPONSE, UssStatus.BLOCKED])
def test_a_failed_sensor_leaves_a_hole_and_its_echoes_are_ignored(rig, raster, grid, status):
    ok = raster(cycle(rig))
    # The failed sensor's ringing echo is what a blocked membrane produces; it must not show.
    failed = raster(cycle(rig, [(FSL, FSL, 0.22, 0.95), (FSL, 1, 1.0, 0.5)], failed=[FSL], status=status))
    hole = (ok[COVERAGE] > 0) & (failed[COVERAGE] == 0)
    assert hole.sum() > 100
    r, bearing = polar(rig, grid, FSL)
    s = rig.uss_by_id(FSL)
    assert np.all((np.abs(bearing[hole]) <= s.horizontal_opening / 2) & (r[hole] <= s.range_max))
    # FSL's free space goes (where the others' own free range does not reach) and nothing else does.
    free_hole = (ok[FREE] > 0) & (failed[FREE] == 0)
    assert free_hole.sum() > 100
    assert np.all((np.abs(bearing[free_hole]) <= s.horizontal_opening / 2) & (r[free_hole] <= raster.free_range))
    assert not np.any((failed[FREE] > 0) & (ok[FREE] == 0))
    assert not failed[DIRECT_ARC].any() and not failed[CROSS_ARC].any() and not failed[AMPLITUDE].any()


def test_a_pair_outside_the_rig_neighbours_is_still_drawn(rig, raster, grid):
    out = raster(cycle(rig, [(1, 4, 1.5, 0.5)]))  # FOL -> FOR, not neighbours
    assert out[CROSS_ARC].max() > 0.9


def test_echoes_beyond_the_range_draw_nothing_and_do_not_leak_into_other_pairs(rig, raster):
    out = raster(cycle(rig, [(FIL, FIL, 900.0, 0.5), (FIL, FIR, 1e6, 0.5), (FSL, FSL, 499.9, 0.5)]))
    assert not out[DIRECT_ARC].any() and not out[CROSS_ARC].any()


def test_bad_echoes_are_typed_errors_naming_the_cycle(rig, raster):
    with pytest.raises(SensorError, match=r"1000 ns.*\[42\]"):
        raster(cycle(rig, [(42, 42, 1.0, 0.5)]))
    with pytest.raises(SensorError, match="1000 ns"):
        raster(cycle(rig, [(FIL, FIL, float("nan"), 0.5)]))


def test_a_dense_simulated_cycle_rasterises(rig, raster):
    from sensors.geometry import Pose2D
    from sim_data.objects import make_bollard, make_car, make_pole
    from sim_data.ultrasonic import UltrasonicSimulator
    from sim_data.world import Condition

    rng = np.random.default_rng(0)
    objects = [make_car(1, 5.5, 0.3, 0.2, rng), make_pole(2, 4.2, -1.5, rng, 2.0, 0.06),
               make_bollard(3, -1.8, 0.8, rng), make_car(4, 1.5, 2.8, 0.0, rng), make_car(5, 1.0, -2.9, 0.05, rng)]
    c = UltrasonicSimulator(rig).cycle(objects, Pose2D(0.0, 0.0, 0.0), Condition(), 0, 0, rng)
    # Twice the simulator's echoes (more than an ECU reports) with a little jitter, for a worst case.
    big = UssCycle(0, 0, np.tile(c.sender, 2), np.tile(c.receiver, 2),
                   np.tile(c.distance, 2) + rng.normal(0, 0.05, 2 * c.num_echoes), np.tile(c.amplitude, 2), c.status)
    assert big.num_echoes >= 100
    small = UssRasterizer(rig, BevConfig(cell=0.2))
    for r in (small, raster):
        out = r(big)
        assert out[DIRECT_ARC].max() > 0.9 and out[CROSS_ARC].max() > 0.9
