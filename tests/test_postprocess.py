import re

import numpy as np
import pytest

from perception.bev_config import BevConfig, ego_mask
from perception.postprocess import SectorLayout, class_map, near_mask
from sensors.classes import IGNORE, NUM_CLASSES, SemanticClass
from sensors.errors import ConfigError
from sensors.geometry import Pose2D

CONFIG = BevConfig(cell=0.1)


@pytest.fixture(scope="module")
def grid(rig):
    return CONFIG.grid(rig)


@pytest.fixture(scope="module")
def layout(rig, grid):
    return SectorLayout(rig, grid)


def with_obstacles(grid, points, cls=SemanticClass.VEHICLE):
    cm = np.zeros(grid.shape, np.uint8)
    rc = np.floor(grid.to_cell(np.asarray(points, float).reshape(-1, 2))).astype(int)
    cm[rc[:, 0], rc[:, 1]] = cls
    return cm


def test_class_map_is_the_argmax_with_the_ego_footprint_ignored(rig, grid):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(NUM_CLASSES, *grid.shape)).astype(np.float32)
    ego = ego_mask(rig.vehicle, grid)
    cm = class_map(logits, ego)
    assert cm.dtype == np.uint8 and cm.shape == grid.shape
    assert np.all(cm[ego] == IGNORE)
    assert np.array_equal(cm[~ego], np.argmax(logits, 0)[~ego])
    batch = class_map(np.stack([logits, -logits]), ego)
    assert np.array_equal(batch[0], cm) and np.array_equal(batch[1][~ego], np.argmin(logits, 0)[~ego])
    with pytest.raises(ConfigError, match="do not match"):
        class_map(logits[:, :-1], ego)
    with pytest.raises(ConfigError, match="shape"):
        class_map(logits[0], ego)


def test_free_confidence_calls_doubtful_near_cells_obstacles(rig, grid):
    ego = ego_mask(rig.vehicle, grid)
    near = near_mask(rig.vehicle, grid, 1.0)
    d = rig.vehicle.distance_to_body(grid.cell_centres())
    assert near.any() and not (near & ego).any() and np.all(d[near] <= 1.0) and np.all(d[~near & ~ego] > 1.0)
    probs = np.zeros((NUM_CLASSES, *grid.shape), np.float32)
    probs[:] = np.array([0.95, 0.01, 0.01, 0.01, 0.02])[:, None, None]  # confidently free everywhere
    doubtful = np.array([0.85, 0.02, 0.03, 0.04, 0.06])  # free by the argmax, but only at 85 %
    (r_near, c_near), (r_far, c_far) = np.argwhere(near)[0], np.argwhere(~near & ~ego)[0]
    probs[:, r_near, c_near] = probs[:, r_far, c_far] = doubtful
    logits = np.log(probs) + 7.0  # softmax is shift-invariant
    plain = class_map(logits, ego)
    assert np.all(plain[~ego] == SemanticClass.FREE)
    biased = class_map(logits, ego, near, 0.9)
    assert biased[r_near, c_near] == 4  # its most likely obstacle class
    assert biased[r_far, c_far] == SemanticClass.FREE  # beyond the near field: the argmax
    assert np.sum(biased != plain) == 1 and np.all(biased[ego] == IGNORE)
    assert np.array_equal(class_map(logits, ego, near, 0.8), plain)  # 85 % is enough at 0.8
    batch = class_map(np.stack([logits, logits]), ego, near, 0.9)
    assert np.array_equal(batch[0], biased) and np.array_equal(batch[1], biased)
    big = logits * 1e4  # no overflow in the softmax
    assert class_map(big, ego, near, 0.99)[r_near, c_near] == SemanticClass.FREE
    for bad in (0.3, 1.0, float("nan")):
        with pytest.raises(ConfigError, match="free confidence"):
            class_map(logits, ego, near, bad)
    with pytest.raises(ConfigError, match="near mask"):
        class_map(logits, ego, None, 0.9)


def test_layout_is_four_by_four_around_the_body(layout, grid, rig):
    assert layout.count == 16
    assert layout.names[:4] == ("front_1", "front_2", "front_3", "front_4")
    assert layout.names[4::4] == ("right_1", "rear_1", "left_1")
    # Every cell lies in exactly one wedge of the documented (start, end) rule, the one sector_of_cells says.
    s = layout(np.zeros(grid.shape, np.uint8))
    cx, cy = rig.vehicle.centre
    xy = grid.cell_centres().reshape(-1, 2)
    b = np.arctan2(xy[:, 1] - cy, xy[:, 0] - cx)
    start, end = s.angles[:, 0].astype(float), s.angles[:, 1].astype(float)
    inside = (b[:, None] - start) % (2 * np.pi) < (end - start) % (2 * np.pi)
    assert np.all(inside.sum(1) == 1)
    assert np.array_equal(np.argmax(inside, 1), layout.sector_of_cells().reshape(-1))
    # The four front wedges split the bumper into four equal parts.
    bumper = np.stack([np.full(9, rig.vehicle.x_max), np.linspace(0.9, -0.9, 9)], 1)[1::2]  # part middles
    rc = np.floor(grid.to_cell(bumper + np.array([0.3, 0.0]))).astype(int)
    assert list(layout.sector_of_cells()[rc[:, 0], rc[:, 1]]) == [0, 1, 2, 3]


@pytest.mark.parametrize("gap, level", [(2.0, 0), (1.0, 1), (0.5, 2), (0.2, 3)])
def test_an_obstacle_ahead_of_the_bumper_gives_its_distance_and_level(layout, grid, rig, gap, level):
    cm = with_obstacles(grid, [rig.vehicle.x_max + gap + 0.01, 0.3], SemanticClass.PEDESTRIAN)
    s = layout(cm)
    k = layout.names.index("front_2")
    assert abs(s.distance[k] - gap) <= grid.cell / 2
    assert s.level[k] == level
    assert np.all(np.isinf(np.delete(s.distance, k))) and np.all(np.delete(s.level, k) == 0)
    assert s.distance.dtype == np.float32 and s.level.dtype == np.uint8


@pytest.mark.parametrize("grid_cell", [0.1, 0.2])
def test_an_obstacle_exactly_at_a_threshold_gets_that_level(rig, grid_cell):
    """A cell whose edge is exactly 0.3 m (0.8 m, 1.5 m) from the body is within that level. Carried in float32 the
    distance came out 0.30000001 and the display showed one level milder at 0.3 and 0.8 m."""
    from perception.postprocess import body_cell_distance

    grid = BevConfig(cell=grid_cell).grid(rig)
    layout = SectorLayout(rig, grid)
    d = body_cell_distance(rig.vehicle, grid)
    for level, t in enumerate(layout.levels_m, start=1):
        cells = np.argwhere(np.abs(d - t) < 1e-9)
        assert len(cells), t
        for r, c in cells[:: max(1, len(cells) // 8)]:
            cm = np.zeros(grid.shape, np.uint8)
            cm[r, c] = SemanticClass.VEHICLE
            s = layout(cm)
            k = int(layout.sector_of_cells()[r, c])
            assert s.level[k] == level, (t, float(s.distance[k]))
        # One millimetre farther is the milder level.
        assert layout.levels(np.array([t + 1e-3]))[0] == level - 1


def test_side_and_corner_obstacles(layout, grid, rig):
    body = rig.vehicle
    side = [body.x_min + 0.3, -body.width / 2 - 0.6]  # by the rear wheel, right
    corner = [body.x_max + 0.5, body.width / 2 + 0.5]  # diagonally off the front-left corner
    s = layout(with_obstacles(grid, [side, corner], SemanticClass.STRUCTURE))
    near = np.flatnonzero(np.isfinite(s.distance))
    assert [layout.names[k] for k in near] == ["right_4", "left_4"]
    assert abs(s.distance[near[0]] - 0.6) <= grid.cell / 2
    assert abs(s.distance[near[1]] - np.hypot(0.5, 0.5)) <= grid.cell / 2 * np.sqrt(2)


def test_free_ignore_and_the_ego_footprint_are_not_obstacles(layout, grid, rig):
    cm = np.full(grid.shape, SemanticClass.FREE, np.uint8)
    cm[ego_mask(rig.vehicle, grid)] = SemanticClass.VEHICLE  # a raw argmax that calls the ego car a vehicle
    cm[0, :] = IGNORE
    s = layout(cm)
    assert np.all(np.isinf(s.distance)) and np.all(s.level == 0)
    with pytest.raises(ConfigError, match="does not match"):
        layout(cm[:-1])


def test_ground_truth_gap_to_a_parked_car(layout, grid, rig):
    """Truth and prediction go through the same code: a car 0.7 m ahead of the bumper reads 0.7 m."""
    from sim_data.groundtruth import rasterize_truth
    from sim_data.world import Box, Material, Part, SceneObject

    gap = 0.7
    b = Box(rig.vehicle.x_max + gap + 2.2, 0.0, 0.0, 4.4, 1.8, 0.0, 1.5)
    car = SceneObject(1, SemanticClass.VEHICLE, "car", (Part(b, Material((0.5, 0.5, 0.5))),), b)
    truth = rasterize_truth([car], Pose2D(0.0, 0.0, 0.0), rig.vehicle, grid, 0)
    s = layout(truth.occupancy)
    front = [layout.names.index(f"front_{i}") for i in (1, 2, 3, 4)]
    assert np.all(np.abs(s.distance[front] - gap) <= grid.cell / 2)
    assert np.all(s.level[front] == 2)
    assert np.isinf(s.distance[layout.names.index("rear_2")])


def test_other_counts_and_bad_layouts(rig, grid):
    layout = SectorLayout(rig, grid, count=18)  # the two sectors beyond 4 x 4 go to the bumpers
    assert layout.count == 18
    assert [sum(n.startswith(e) for n in layout.names) for e in ("front", "right", "rear", "left")] == [5, 4, 5, 4]
    assert len(np.unique(layout.sector_of_cells())) == 18
    for bad in ({"count": 7}, {"count": 2}, {"levels_m": (0.3, 0.8)}, {"levels_m": ()}):
        with pytest.raises(ConfigError):
            SectorLayout(rig, grid, **bad)


def test_the_echo_floor_zone_is_the_bumper_band_near_the_sensors(rig, grid, layout):
    from perception.postprocess import body_cell_distance, echo_floor_zone

    zone = echo_floor_zone(rig, grid)
    d = body_cell_distance(rig.vehicle, grid)
    xy = grid.cell_centres()
    sensors = np.array([s.position[:2] for s in rig.uss])
    to_sensor = np.hypot(xy[..., None, 0] - sensors[:, 0], xy[..., None, 1] - sensors[:, 1]).min(-1)
    assert zone.any() and not (zone & ego_mask(rig.vehicle, grid)).any()
    assert (d[zone] <= 0.3 + 1e-4).all() and (to_sensor[zone] <= 0.35).all()
    assert ((d <= 0.3 + 1e-4) & (to_sensor <= 0.35) & ~ego_mask(rig.vehicle, grid) == zone).all()
    # The band sits at the bumpers, where the sensors are: none of it beside the doors.
    assert (np.abs(xy[zone][:, 0] - rig.vehicle.centre[0]) > 1.5).all()
    # The display measures by the same distance.
    assert np.allclose(layout._distance.reshape(grid.shape), d)


def test_the_echo_floor_adds_low_obstacles_on_close_arcs_and_nothing_else(rig, grid):
    from perception.postprocess import apply_echo_floor, echo_floor_zone

    zone = echo_floor_zone(rig, grid)
    classes = np.zeros(grid.shape, np.uint8)
    r, c = np.argwhere(zone)[0]
    classes[r, c + 1] = SemanticClass.VEHICLE  # a cell the network already calls something keeps its class
    arc = np.zeros(grid.shape, np.float32)
    arc[r, c], arc[r, c + 1] = 0.9, 1.0
    far = np.argwhere(~zone)[0]
    arc[tuple(far)] = 1.0  # an arc outside the bumper band is left to the network
    arc[tuple(np.argwhere(zone)[1])] = 0.4  # a weak arc too
    out = apply_echo_floor(classes, arc, zone)
    assert out[r, c] == SemanticClass.LOW_OBSTACLE and out[r, c + 1] == SemanticClass.VEHICLE
    assert (out != classes).sum() == 1 and out.dtype == classes.dtype
    with pytest.raises(ConfigError, match="same grid"):
        apply_echo_floor(classes, arc[:-1], zone)


def test_near_field_settings_are_checked_and_know_the_plain_argmax():
    from perception.near_field import NearFieldSettings

    assert NearFieldSettings().plain and not NearFieldSettings(echo_floor=True).plain
    assert not NearFieldSettings(memory_decay=0.95).plain and not NearFieldSettings(0.99).plain
    for bad, says in (({"free_confidence": 0.3}, "free confidence must be a probability"),
                      ({"memory_decay": 0.0}, "memory decay must be in (0, 1]"),
                      ({"echo_floor": "yes"}, "echo_floor must be true or false")):
        with pytest.raises(ConfigError, match=re.escape(says)):
            NearFieldSettings(**bad)
