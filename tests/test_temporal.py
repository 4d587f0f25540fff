"""The near-field memory (perception.temporal): obstacles carried with odometry into cells no sensor sees now."""

import math

import numpy as np
import pytest

from perception.temporal import NearFieldMemory, check_decay
from sensors.bev import BevGrid
from sensors.classes import NUM_CLASSES, SemanticClass
from sensors.errors import ConfigError
from sensors.geometry import Pose2D

GRID = BevGrid(20, 20, 0.2, 0.0, 0.0)  # 4 m x 4 m centred on the origin, 0.2 m cells
ALL = np.ones(GRID.shape, bool)
NONE = np.zeros(GRID.shape, bool)
LOW = int(SemanticClass.LOW_OBSTACLE)
FREE = int(SemanticClass.FREE)
T0 = 1_000_000_000
DT = 100_000_000  # 10 Hz


def logits_with(cells: dict[tuple[int, int], int], sure: float = 8.0) -> np.ndarray:
    """Logits that say FREE everywhere except CELLS {(row, col): class}."""
    x = np.zeros((NUM_CLASSES, *GRID.shape), np.float32)
    x[FREE] = sure
    for (r, c), k in cells.items():
        x[FREE, r, c] = 0.0
        x[k, r, c] = sure
    return x


def argmax(logits: np.ndarray) -> np.ndarray:
    return np.argmax(logits, 0).astype(np.uint8)


def step(memory, cells, pose, stamp, covered=NONE):
    x = logits_with(cells)
    return memory.step(x, argmax(x), covered, pose, stamp)


def cell_of(xy) -> tuple[int, int]:
    r, c = np.floor(GRID.to_cell(np.array(xy, float))).astype(int)
    return int(r), int(c)


def test_an_obstacle_seen_before_is_recalled_where_the_car_has_moved_it():
    memory = NearFieldMemory(GRID, ALL, NONE, decay=0.9)
    seen = cell_of((0.9, 1.1))
    out, recall = step(memory, {seen: LOW}, Pose2D(5.0, 2.0, 0.0), T0)
    assert out[seen] == LOW and not recall.cells.any() and recall.reset == ""
    # The car drives 0.4 m forwards; the network now sees nothing there (no beam, dark).
    out, recall = step(memory, {}, Pose2D(5.4, 2.0, 0.0), T0 + DT)
    moved = cell_of((0.5, 1.1))
    assert moved == (seen[0] + 2, seen[1])  # the map reads like a map: forwards is up, so the obstacle moves down
    assert out[moved] == LOW and recall.cells[moved]
    assert recall.cells.sum() == 1 and (out == FREE).sum() == out.size - 1


def test_a_turn_in_place_carries_the_obstacle_round_the_car():
    memory = NearFieldMemory(GRID, ALL, NONE, decay=1.0)
    step(memory, {cell_of((1.1, 0.1)): LOW}, Pose2D(0.0, 0.0, 0.0), T0)
    out, recall = step(memory, {}, Pose2D(0.0, 0.0, math.pi / 2), T0 + DT)
    # A quarter turn to the left: what was ahead is now on the right (y < 0).
    assert out[cell_of((0.1, -1.1))] == LOW and recall.cells.sum() == 1


def test_cells_a_beam_reaches_now_take_the_current_frame_only():
    memory = NearFieldMemory(GRID, ALL, NONE, decay=1.0)
    seen = cell_of((0.9, 1.1))
    step(memory, {seen: LOW}, Pose2D(0.0, 0.0, 0.0), T0)
    out, recall = step(memory, {}, Pose2D(0.0, 0.0, 0.0), T0 + DT, covered=ALL)
    assert (out == FREE).all() and not recall.cells.any()
    # ...and what the beam cleared stays cleared when the beam moves on.
    out, _ = step(memory, {}, Pose2D(0.0, 0.0, 0.0), T0 + 2 * DT)
    assert (out == FREE).all()


def test_evidence_decays_and_is_forgotten():
    memory = NearFieldMemory(GRID, ALL, NONE, decay=0.6)
    seen = cell_of((0.9, 1.1))
    step(memory, {seen: LOW}, Pose2D(0.0, 0.0, 0.0), T0)
    out, _ = step(memory, {}, Pose2D(0.0, 0.0, 0.0), T0 + DT)
    assert out[seen] == LOW  # 0.6 of a sure obstacle is still more likely occupied
    out, _ = step(memory, {}, Pose2D(0.0, 0.0, 0.0), T0 + 2 * DT)
    assert out[seen] == FREE  # 0.36 is not


def test_only_free_cells_of_the_near_field_change():
    near = NONE.copy()
    near[:, :10] = True  # the left half
    memory = NearFieldMemory(GRID, near, NONE, decay=1.0)
    left, right = cell_of((0.5, 1.1)), cell_of((0.5, -1.1))
    step(memory, {left: LOW, right: LOW}, Pose2D(0.0, 0.0, 0.0), T0)
    out, recall = step(memory, {left: int(SemanticClass.VEHICLE)}, Pose2D(0.0, 0.0, 0.0), T0 + DT)
    assert out[left] == SemanticClass.VEHICLE  # the network's own call wins over the memory's class
    assert out[right] == FREE  # outside the near field the memory is kept but not shown
    assert not recall.cells.any()


def test_the_ego_footprint_is_never_recalled():
    ego = NONE.copy()
    seen = cell_of((0.9, 1.1))
    ego[seen] = True
    memory = NearFieldMemory(GRID, ALL, ego, decay=1.0)
    step(memory, {seen: LOW}, Pose2D(0.0, 0.0, 0.0), T0)
    _, recall = step(memory, {}, Pose2D(0.0, 0.0, 0.0), T0 + DT)
    assert not recall.cells.any()


@pytest.mark.parametrize("pose2, stamp2, reason", [
    (None, T0 + DT, "no odometry"),
    (Pose2D(0.1, float("nan"), 0.0), T0 + DT, "odometry not finite (0.1, nan, 0.0)"),
    (Pose2D(0.0, 0.0, 0.0), T0 + 6 * DT, "0.60 s since the last frame"),
    (Pose2D(0.0, 0.0, 0.0), T0 - DT, "time ran backwards by 100 ms"),
    (Pose2D(3.0, 0.0, 0.0), T0 + DT, "odometry jumped 3.0 m in 100 ms"),
])
def test_the_memory_restarts_and_says_why(pose2, stamp2, reason):
    memory = NearFieldMemory(GRID, ALL, NONE, decay=1.0)
    step(memory, {cell_of((0.9, 1.1)): LOW}, Pose2D(0.0, 0.0, 0.0), T0)
    out, recall = step(memory, {}, pose2, stamp2)
    assert recall.reset == reason
    assert (out == FREE).all() and not recall.cells.any()


def test_after_a_frame_without_odometry_the_next_starts_afresh():
    memory = NearFieldMemory(GRID, ALL, NONE, decay=1.0)
    step(memory, {cell_of((0.9, 1.1)): LOW}, Pose2D(0.0, 0.0, 0.0), T0)
    step(memory, {}, None, T0 + DT)
    out, recall = step(memory, {}, Pose2D(0.0, 0.0, 0.0), T0 + 2 * DT)
    assert (out == FREE).all() and recall.reset == ""


def test_the_same_frame_twice_gives_the_same_result():
    memory = NearFieldMemory(GRID, ALL, NONE, decay=0.7)
    step(memory, {cell_of((0.9, 1.1)): LOW}, Pose2D(0.0, 0.0, 0.0), T0)
    first, r1 = step(memory, {}, Pose2D(0.2, 0.0, 0.0), T0 + DT)
    again, r2 = step(memory, {}, Pose2D(0.2, 0.0, 0.0), T0 + DT)  # a viewer redraws it
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(r1.cells, r2.cells)
    assert r1.cells.sum() == 1
    nxt, _ = step(memory, {}, Pose2D(0.2, 0.0, 0.0), T0 + 2 * DT)
    assert nxt[cell_of((0.7, 1.1))] == FREE  # 0.49: the redraw did not decay it twice, nor keep it


@pytest.mark.parametrize("bad", [0, -0.1, 1.5, float("nan"), "0.9"])
def test_decay_outside_zero_one_is_refused(bad):
    with pytest.raises(ConfigError, match="decay"):
        check_decay(bad)


def test_shapes_that_do_not_match_the_grid_are_refused():
    memory = NearFieldMemory(GRID, ALL, NONE)
    x = logits_with({})
    with pytest.raises(ConfigError, match="grid"):
        memory.step(x[:, :10], argmax(x), NONE, Pose2D(0, 0, 0), T0)
    with pytest.raises(ConfigError, match="near mask"):
        NearFieldMemory(GRID, ALL[:10], NONE)


@pytest.mark.parametrize("decay", [0.6, 0.9, 0.95])
def test_the_reach_frames_before_a_frame_give_it_what_the_whole_drive_gives_it(decay):
    """What the viewer relies on when it jumps: a fresh memory stepped through the `reach` frames before frame k
    gives frame k the same map as one stepped through every frame from the start, and one frame fewer may not."""
    rng = np.random.default_rng(7)
    n = 30
    logits = rng.normal(0.0, 3.0, (n, NUM_CLASSES, *GRID.shape)).astype(np.float32)
    logits[:, FREE] += 2.0  # mostly free, with obstacles here and there
    covered = rng.random((n, *GRID.shape)) < 0.3
    poses = [Pose2D(0.1 * k, 0.02 * k * k / n, 0.01 * k) for k in range(n)]
    stamps = [T0 + k * DT for k in range(n)]
    whole = NearFieldMemory(GRID, ALL, NONE, decay=decay)
    reach = whole.reach
    assert decay ** reach >= 0.5 > decay ** (reach + 1)
    full = [whole.step(logits[k], argmax(logits[k]), covered[k], poses[k], stamps[k]) for k in range(n)]
    assert sum(int(r.cells.sum()) for _, r in full) > 20  # the memory does recall things on this drive
    for k in (reach, n // 2, n - 1):
        window = NearFieldMemory(GRID, ALL, NONE, decay=decay)
        for j in range(k - reach, k + 1):
            out, recall = window.step(logits[j], argmax(logits[j]), covered[j], poses[j], stamps[j])
        assert np.array_equal(out, full[k][0]) and np.array_equal(recall.cells, full[k][1].cells)
    # An obstacle seen once, then never again: the whole drive still recalls it `reach` frames later...
    memory = NearFieldMemory(GRID, ALL, NONE, decay=decay)
    seen, still = cell_of((0.9, 1.1)), Pose2D(0.0, 0.0, 0.0)
    outs = [step(memory, {seen: LOW} if k == 0 else {}, still, T0 + k * DT)[0] for k in range(reach + 2)]
    assert [o[seen] for o in outs] == [LOW] * (reach + 1) + [FREE]
    # ...which a memory started one frame later, with `reach - 1` frames before it, cannot know.
    late = NearFieldMemory(GRID, ALL, NONE, decay=decay)
    assert [step(late, {}, still, T0 + k * DT)[0][seen] for k in range(1, reach + 1)][-1] == FREE
    assert NearFieldMemory(GRID, ALL, NONE, decay=1.0).reach is None  # never forgets


@pytest.mark.parametrize("per_frame", [0.05, 0.13, 0.29])
def test_a_creeping_car_leaves_the_obstacle_where_it_is_not_a_cell_per_frame(per_frame):
    """Motions of a fraction of a cell per frame add up: resampling the memory frame by frame would round each
    one (and leave the obstacle stuck to the car, or move it a whole cell a frame)."""
    memory = NearFieldMemory(GRID, ALL, NONE, decay=1.0)
    seen_at = np.array([1.5, 1.1])
    step(memory, {cell_of(seen_at): LOW}, Pose2D(0.0, 0.0, 0.0), T0)
    frames = round(0.8 / per_frame)
    for k in range(1, frames + 1):
        out, recall = step(memory, {}, Pose2D(k * per_frame, 0.0, 0.0), T0 + k * DT)
    travelled = frames * per_frame
    expected = cell_of(seen_at - [travelled, 0.0])  # the obstacle stays where it was: behind by what the car drove
    assert recall.cells.sum() == 1 and out[expected] == LOW, (np.argwhere(recall.cells), expected)


@pytest.mark.parametrize("motion", ["parked", "circling"])
def test_the_memory_stays_bounded_over_a_long_drive_even_when_it_never_forgets(motion):
    """Decay 1 forgets nothing by fading: what bounds the memory is one point per cell where a new one is seen and
    forgetting what lies far outside the grid. 600 frames (a minute) of dense obstacles."""
    rng = np.random.default_rng(3)
    memory = NearFieldMemory(GRID, ALL, NONE, decay=1.0)
    counts = []
    for k in range(600):
        x = rng.normal(0.0, 2.0, (NUM_CLASSES, *GRID.shape)).astype(np.float32)
        a = 0.0 if motion == "parked" else 0.05 * k
        pose = Pose2D(5 * math.sin(a), 5 * (1 - math.cos(a)), a)  # a 5 m circle at 2.5 m/s
        memory.step(x, argmax(x), rng.random(GRID.shape) < 0.2, pose, T0 + k * DT)
        counts.append(memory.points)
    cells = GRID.rows * GRID.cols
    # Bounded by the cells in and around the grid (the margin is half the grid on each side: 4x its area).
    assert max(counts) <= 4 * cells
    assert max(counts[300:]) <= 1.2 * max(counts[:300])  # no growth in the second half
