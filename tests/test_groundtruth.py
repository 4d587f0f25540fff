import math

import numpy as np
import pytest

from sensors.bev import BevGrid
from sensors.classes import IGNORE, SemanticClass
from sensors.errors import ConfigError
from sensors.geometry import Pose2D
from sim_data.groundtruth import rasterize_truth
from sim_data.objects import make_car, make_pedestrian, make_pole
from sim_data.scenes import sample_drive
from sim_data.world import Box, Cylinder, Material, Part, SceneObject, Sphere

M = Material((0.5, 0.5, 0.5))
IDENTITY = Pose2D(0.0, 0.0, 0.0)


@pytest.fixture(scope="module")
def grid(rig):
    g = BevGrid.around(rig.vehicle)
    assert (g.rows, g.cols, g.x_max, g.y_max) == (160, 160, pytest.approx(9.4), pytest.approx(8.0))
    return g


def box_object(oid, cls, x, y, yaw, length, width, kind="box"):
    b = Box(x, y, yaw, length, width, 0.0, 1.0)
    return SceneObject(oid, cls, kind, (Part(b, M),), b)


def cells(occ, value):
    return {tuple(rc) for rc in np.argwhere(occ == value)}


def test_axis_aligned_box_sets_exactly_the_cells_whose_centres_are_inside(rig, grid):
    # x 5.03..5.57, y 2.03..2.47. Cell centres: x = 9.4 - (r + .5) * .1, y = 8 - (c + .5) * .1, so rows 38..43
    # (x 5.55 .. 5.05) and columns 55..59 (y 2.45 .. 2.05); row 37 (x 5.65), row 44 (4.95), column 54 (2.55)
    # and column 60 (1.95) lie just outside.
    gt = rasterize_truth([box_object(1, SemanticClass.VEHICLE, 5.3, 2.25, 0.0, 0.54, 0.44)], IDENTITY,
                         rig.vehicle, grid, 123)
    expected = {(r, c) for r in range(38, 44) for c in range(55, 60)}
    assert cells(gt.occupancy, SemanticClass.VEHICLE) == expected
    assert gt.stamp_ns == 123 and gt.cell == pytest.approx(0.1)
    assert gt.occupancy.shape == (160, 160) and gt.occupancy.dtype == np.uint8


def test_rotated_ego_pose_moves_the_box_where_the_rotation_says(rig, grid):
    ego = Pose2D(10.0, 5.0, math.pi / 2)
    x, y = ego.to_world(np.array([5.3, 2.25]))
    obj = box_object(7, SemanticClass.VEHICLE, x, y, math.pi / 2, 0.54, 0.44)
    gt = rasterize_truth([obj], ego, rig.vehicle, grid, 0)
    assert cells(gt.occupancy, SemanticClass.VEHICLE) == {(r, c) for r in range(38, 44) for c in range(55, 60)}
    (ob,) = gt.objects
    assert ob.id == 7 and ob.centre[:2] == pytest.approx((5.3, 2.25))
    assert ob.yaw == pytest.approx(0.0, abs=1e-9) and ob.size == pytest.approx((0.54, 0.44, 1.0))
    # The same world box seen from the identity pose is somewhere else entirely.
    assert not (rasterize_truth([obj], IDENTITY, rig.vehicle, grid, 0).occupancy == SemanticClass.VEHICLE).any()


def _reference(poly_local, grid):
    """Brute force: every cell centre against every (counter-clockwise or clockwise) polygon edge."""
    centres = grid.cell_centres().reshape(-1, 2)
    a, b = poly_local, np.roll(poly_local, -1, 0)
    e = b - a
    cross = e[:, 0] * (centres[:, None, 1] - a[:, 1]) - e[:, 1] * (centres[:, None, 0] - a[:, 0])
    inside = np.all(cross >= 0, 1) | np.all(cross <= 0, 1)
    return inside.reshape(grid.shape)


@pytest.mark.parametrize("seed", range(4))
def test_random_rotated_shapes_match_a_brute_force_centre_test(rig, grid, seed):
    rng = np.random.default_rng(seed)
    ego = Pose2D(*rng.uniform(-20, 20, 2), rng.uniform(-math.pi, math.pi))
    shapes = [Box(*ego.to_world(rng.uniform(-6, 6, 2)), rng.uniform(-3, 3), rng.uniform(0.3, 6), rng.uniform(0.2, 3),
                  0, 1),
              Cylinder(*ego.to_world(rng.uniform(-6, 6, 2)), rng.uniform(0.15, 1.5), 0, 2, rng.uniform(0, 0.2)),
              Sphere(*ego.to_world(rng.uniform(-6, 6, 2)), 1.0, rng.uniform(0.2, 1.0))]
    for sh in shapes:
        obj = SceneObject(1, SemanticClass.STRUCTURE, "x", (Part(sh, M),), Box(sh.x, sh.y, 0, 4, 4, 0, 2))
        occ = rasterize_truth([obj], ego, rig.vehicle, grid, 0).occupancy
        ref = _reference(ego.to_local(sh.footprint()), grid)
        got = occ == SemanticClass.STRUCTURE
        ego_cells = occ == IGNORE
        centre_cell = tuple(np.floor(grid.to_cell(ego.to_local(np.array([sh.x, sh.y])))).astype(int))
        ref[centre_cell] = True  # the part's own centre cell is always set
        assert np.array_equal(got, ref & ~ego_cells), type(sh).__name__


def test_ego_footprint_is_ignore_and_overrides_objects(rig, grid):
    # Body x -0.8..3.6, y -0.9..0.9: rows 58..101, columns 71..88 (44 x 18 cells); a box straddles the car.
    gt = rasterize_truth([box_object(1, SemanticClass.STRUCTURE, 1.4, 0.0, 0.0, 6.0, 3.0)], IDENTITY,
                         rig.vehicle, grid, 0)
    assert cells(gt.occupancy, IGNORE) == {(r, c) for r in range(58, 102) for c in range(71, 89)}
    assert (gt.occupancy == SemanticClass.STRUCTURE).sum() == 60 * 30 - 44 * 18


def test_thin_pole_and_child_do_not_vanish(rig, grid):
    rng = np.random.default_rng(3)
    # A 6 cm pole between cell centres: no centre lies inside it, its own cell is set all the same.
    pole = SceneObject(1, SemanticClass.STRUCTURE, "pole", (Part(Cylinder(5.02, -2.02, 0.03, 0, 3), M),),
                       Box(5.02, -2.02, 0, 0.06, 0.06, 0, 3))
    child = make_pedestrian(2, 6.02, 3.02, 0.3, rng, child=True)
    assert child.box.z1 <= 1.3 * 1.0001
    sign = make_pole(3, -5.0, 5.0, rng, 2.6, 0.04, sign=True)
    gt = rasterize_truth([pole, child, sign], IDENTITY, rig.vehicle, grid, 0)
    occ = gt.occupancy
    assert occ[43, 100] == SemanticClass.STRUCTURE
    ped = cells(occ, SemanticClass.PEDESTRIAN)
    assert len(ped) >= 4 and (33, 49) in ped  # the cell of (6.02, 3.02): rows (9.4 - x) / .1, cols (8 - y) / .1
    assert {o.kind for o in gt.objects} == {"pole", "pedestrian"}


def test_class_priority_at_overlaps(rig, grid):
    wall = box_object(1, SemanticClass.STRUCTURE, 6.0, 0.0, 0.0, 0.6, 10.0, "wall")
    car = box_object(2, SemanticClass.VEHICLE, 6.0, 2.0, 0.0, 2.0, 2.0, "car")
    person = box_object(3, SemanticClass.PEDESTRIAN, 6.0, 2.0, 0.0, 0.4, 0.4, "pedestrian")
    cone = box_object(4, SemanticClass.LOW_OBSTACLE, 6.0, -2.0, 0.0, 1.0, 1.0, "cone")
    occ = rasterize_truth([person, car, cone, wall], IDENTITY, rig.vehicle, grid, 0).occupancy

    def at(x, y):
        r, c = np.floor(grid.to_cell(np.array([x, y]))).astype(int)
        return occ[r, c]

    assert at(6.04, 2.04) == SemanticClass.PEDESTRIAN  # over car and wall
    assert at(6.04, 2.64) == SemanticClass.VEHICLE  # car over wall
    assert at(6.04, -2.04) == SemanticClass.LOW_OBSTACLE  # cone over wall
    assert at(6.04, 4.04) == SemanticClass.STRUCTURE
    assert at(6.54, 2.64) == SemanticClass.VEHICLE and at(7.54, 2.64) == SemanticClass.FREE


def test_objects_outside_the_grid_do_not_appear(rig, grid):
    rng = np.random.default_rng(0)
    far = make_car(1, 30.0, 0.0, 0.0, rng)
    behind = make_car(2, -12.0, 3.0, 0.0, rng)
    edge = make_car(3, 10.5, -8.5, 0.0, rng)  # centre outside, front-right corner region inside
    gt = rasterize_truth([far, behind, edge], IDENTITY, rig.vehicle, grid, 0)
    assert [o.id for o in gt.objects] == [3]
    # Only the corner the edge car reaches is painted: x >= 7.9 (rows < 16), y <= -7.5 (columns >= 155).
    rc = np.argwhere(gt.occupancy == SemanticClass.VEHICLE)
    assert len(rc) > 0 and rc[:, 0].max() < 16 and rc[:, 1].min() >= 154


def test_unknown_class_is_a_typed_error(rig, grid):
    with pytest.raises(ConfigError, match="object 9"):
        rasterize_truth([box_object(9, 7, 3.0, 3.0, 0.0, 1.0, 1.0)], IDENTITY, rig.vehicle, grid, 0)


def test_a_generated_frame_is_populated(rig, grid):
    rng = np.random.default_rng(11)
    scene = sample_drive(rng, rig, 6.0, kinds=["parking_lot"], motions=["creep_forward"])
    objects, ego = scene.objects_at(3.0), scene.ego.pose(3.0)
    gt = rasterize_truth(objects, ego, rig.vehicle, grid, 0)
    assert (gt.occupancy == SemanticClass.VEHICLE).sum() > 500  # parked cars fill the BEV

