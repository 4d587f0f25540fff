"""Evaluation on hand-made class maps (IoUs, conditions, ignore, recall near the car, sector distance error) and
the report's tables and chart."""

import json

import cv2
import numpy as np
import pytest

from perception.bev_config import BevConfig, ego_mask
from perception.evaluate import Evaluator
from perception.report import PALETTE, markdown_table, modality_table, plot_by_condition, warning_table
from sensors.bev import BevGrid
from sensors.classes import IGNORE
from sensors.errors import ConfigError

X = IGNORE
# Hand-made 4 x 4 maps, counted by hand below (the ignore cell at (3, 0) does not count).
TARGET = np.array([[0, 0, 1, 1],
                   [0, 0, 1, 1],
                   [2, 0, 0, 3],
                   [X, 0, 4, 4]], np.uint8)
PRED = np.array([[0, 1, 1, 1],
                 [0, 0, 1, 0],
                 [2, 2, 0, 3],
                 [1, 0, 4, 0]], np.uint8)
# class: (intersection, union)
HAND = {"free": (5, 9), "vehicle": (3, 5), "pedestrian": (1, 2), "structure": (1, 1), "low_obstacle": (1, 2)}


@pytest.fixture(scope="module")
def tiny(rig):
    """4 x 4 cells of 10 m around the car: no cell centre on the body, none within 1 m of it."""
    return BevGrid(4, 4, 10.0, *rig.vehicle.centre)


@pytest.fixture(scope="module")
def grid(rig):
    return BevConfig().grid(rig)  # 80 x 80 at 0.2 m


def _empty(grid, rig):
    m = np.zeros(grid.shape, np.uint8)
    m[ego_mask(rig.vehicle, grid)] = IGNORE
    return m


def test_ious_on_hand_made_maps(rig, tiny):
    ev = Evaluator(rig, tiny)
    ev.update(PRED, TARGET, ["day"])
    r = ev.result()
    for name, (i, u) in HAND.items():
        assert r["iou"][name] == pytest.approx(i / u), name
    obstacles = [i / u for name, (i, u) in HAND.items() if name != "free"]
    assert r["miou"] == pytest.approx(sum(obstacles) / 4) == pytest.approx(0.65)
    assert r["miou_all"] == pytest.approx((5 / 9 + sum(obstacles)) / 5)
    assert r["frames"] == 1 and r["by_condition"]["day"]["miou"] == pytest.approx(0.65)
    json.dumps(r, allow_nan=False)  # the result is plain JSON


def test_ious_accumulate_counts_not_per_frame_means(rig, tiny):
    ev = Evaluator(rig, tiny)
    t = np.zeros((4, 4), np.uint8)
    t[0, 0] = 1
    ev.update(t, t, [])  # vehicle IoU 1 in this frame
    t2 = np.zeros((4, 4), np.uint8)
    t2[1, :3] = 1
    ev.update(np.zeros((4, 4), np.uint8), t2, [])  # vehicle IoU 0 in this one
    # Over both frames: 1 true positive, 4 vehicle cells in truth, none predicted falsely: 1/4 (not 1/2).
    assert ev.result()["iou"]["vehicle"] == pytest.approx(0.25)


def test_conditions_split_and_a_frame_counts_in_each_of_its_conditions(rig, tiny):
    ev = Evaluator(rig, tiny)
    ev.update(PRED, TARGET, ["night", "uss_failure:FSL"])
    only_free = np.zeros((4, 4), np.uint8)
    ev.update(only_free, only_free, ["day"])
    r = ev.result()
    assert r["frames"] == 2
    assert list(r["by_condition"]) == ["day", "night", "uss_failure"]  # sensors.messages.CONDITIONS order
    assert r["by_condition"]["night"]["frames"] == r["by_condition"]["uss_failure"]["frames"] == 1
    assert r["by_condition"]["night"]["iou"] == r["by_condition"]["uss_failure"]["iou"]
    assert r["by_condition"]["night"]["iou"]["vehicle"] == pytest.approx(3 / 5)
    day = r["by_condition"]["day"]
    # No obstacle in truth or prediction: those IoUs are undefined (null), and so is the obstacle mean.
    assert day["iou"]["free"] == 1.0 and day["iou"]["vehicle"] is None
    assert day["miou"] is None and day["miou_all"] == 1.0
    # Overall, free gains 16 agreeing cells: (5 + 16) / (9 + 16).
    assert r["iou"]["free"] == pytest.approx(21 / 25)
    assert r["miou"] == pytest.approx(0.65)
    assert "day" not in r["recall_1m_by_condition"] or r["recall_1m_by_condition"]["day"] is None


def test_a_class_only_predicted_has_iou_zero_not_undefined(rig, tiny):
    ev = Evaluator(rig, tiny)
    t = np.zeros((4, 4), np.uint8)
    p = t.copy()
    p[2, 2] = 2
    ev.update(p, t, [])
    r = ev.result()
    assert r["iou"]["pedestrian"] == 0.0 and r["iou"]["vehicle"] is None and r["miou"] == 0.0


def test_ignore_cells_are_excluded_and_an_ignore_prediction_is_a_miss(rig, tiny):
    a, b = Evaluator(rig, tiny), Evaluator(rig, tiny)
    other = PRED.copy()
    other[3, 0] = 3  # under the target's ignore cell: must change nothing
    a.update(PRED, TARGET)
    b.update(other, TARGET)
    assert a.result()["iou"] == b.result()["iou"]
    c = Evaluator(rig, tiny)
    pred = TARGET.copy()
    pred[0, 2] = IGNORE  # a labelled vehicle cell predicted as ignore: a miss, not a false positive elsewhere
    c.update(pred, TARGET)
    iou = c.result()["iou"]
    assert iou["vehicle"] == pytest.approx(3 / 4)
    assert iou["free"] == iou["pedestrian"] == iou["structure"] == iou["low_obstacle"] == 1.0


def test_recall_within_1m_counted_by_hand(rig, grid):
    body = rig.vehicle
    # (row, col) -> what is there; distances from the body outline to the cell centres.
    ahead_01 = (28, 39)  # x 3.7, y 0.1: 0.1 m ahead of the front bumper (x_max 3.6)
    ahead_09 = (24, 39)  # x 4.5: 0.9 m ahead
    ahead_11 = (23, 39)  # x 4.7: 1.1 m ahead, beyond 1 m
    right_04 = (39, 46)  # x 1.5, y -1.3: 0.4 m off the right flank (y -0.9)
    centres = grid.cell_centres()
    d = {rc: float(body.distance_to_body(centres[rc])) for rc in (ahead_01, ahead_09, ahead_11, right_04)}
    assert d == pytest.approx({ahead_01: 0.1, ahead_09: 0.9, ahead_11: 1.1, right_04: 0.4})

    target = _empty(grid, rig)
    target[ahead_01], target[ahead_09], target[ahead_11], target[right_04] = 1, 4, 3, 1
    pred = _empty(grid, rig)
    pred[ahead_01] = 4  # wrong class, but an obstacle: a hit
    pred[right_04] = 1  # a hit; ahead_09 is missed; ahead_11 does not count
    pred[10, 10] = 2  # a false alarm far away does not change recall
    ev = Evaluator(rig, grid)
    covered = np.zeros(grid.shape, bool)
    covered[20:30, 35:45] = True  # a front beam: the two cells ahead, not the right flank
    ev.update(pred, target, ["night", "camera_failure:FV"], covered=covered)
    ev.update(target, target, ["day"])  # no coverage given: left out of the coverage split
    r = ev.result()
    assert r["recall_1m_by_uss_coverage"] == {"uncovered": 1.0, "covered": 0.5}
    assert r["near_cells_by_uss_coverage"] == {"uncovered": 1, "covered": 2}
    assert ("Recall within 1 m where an ultrasonic beam reached the cell: covered 50.0 % of 2 cells, uncovered "
            "100.0 % of 1 cells." in markdown_table(r).splitlines())
    with pytest.raises(ConfigError, match="coverage mask"):
        ev.update(pred, target, covered=covered[:-1])
    assert r["recall_1m_by_condition"]["night"] == pytest.approx(2 / 3)
    assert r["recall_1m_by_condition"]["camera_failure"] == pytest.approx(2 / 3)
    assert r["recall_1m_by_condition"]["day"] == 1.0
    assert r["recall_1m"] == pytest.approx(5 / 6)
    # By true class over both frames: vehicles 2 + 2 of 4, the low obstacle ahead_09 1 of 2 (missed in the first)
    assert r["recall_1m_by_class"] == {"vehicle": 1.0, "pedestrian": None, "structure": None,
                                       "low_obstacle": pytest.approx(1 / 2)}
    assert r["near_cells_by_class"] == {"vehicle": 4, "pedestrian": 0, "structure": 0, "low_obstacle": 2}
    assert ("Recall within 1 m by true class: vehicle 100.0 % of 4 cells, low_obstacle 50.0 % of 2 cells."
            in markdown_table(r).splitlines())
    # Precision: every near cell called an obstacle was one (the far false alarm at (10, 10) is not near).
    assert r["precision_1m"] == 1.0 and r["precision_1m_by_condition"]["night"] == 1.0


def test_precision_within_1m_counts_near_false_alarms_only(rig, grid):
    target = _empty(grid, rig)
    target[28, 39] = 1  # 0.1 m ahead of the bumper
    pred = target.copy()
    pred[24, 39] = pred[39, 46] = 4  # two false alarms within 1 m (0.9 m ahead, 0.4 m off the right flank)
    pred[23, 39] = 2  # 1.1 m ahead: not near, not counted
    pred[39, 31] = 3  # x 1.5, y 1.7: 0.8 m off the left flank, a third near false alarm
    assert float(rig.vehicle.distance_to_body(grid.cell_centres()[39, 31])) == pytest.approx(0.8)
    unlabelled = target.copy()
    ev = Evaluator(rig, grid)
    ev.update(pred, target, ["night"])
    unlabelled[24, 39] = IGNORE  # an unlabelled cell's call does not count either way
    ev.update(pred, unlabelled, ["day"])
    r = ev.result()
    assert r["recall_1m"] == 1.0
    assert r["precision_1m_by_condition"]["night"] == pytest.approx(1 / 4)
    assert r["precision_1m_by_condition"]["day"] == pytest.approx(1 / 3)
    assert r["precision_1m"] == pytest.approx(2 / 7)
    assert "| night | " in markdown_table(r) and "| 25.0 | 1 |" in markdown_table(r)
    # Nothing called within 1 m: undefined, not 0 or 1.
    ev.reset()
    ev.update(_empty(grid, rig), target)
    assert ev.result()["precision_1m"] is None and ev.result()["recall_1m"] == 0.0


def test_sector_error_is_zero_for_identical_maps_and_the_shift_otherwise(rig, grid):
    target = _empty(grid, rig)
    target[26, 39] = 1  # x 4.0..4.2: its near edge 0.4 m ahead of the bumper (x 3.6)
    ev = Evaluator(rig, grid)
    ev.update(target, target, ["day"])
    assert ev.result()["sector_error_m"] == {"median": 0.0, "p95": 0.0, "sectors": 1}

    pred = _empty(grid, rig)
    pred[21, 39] = 1  # x 5.0..5.2: 1.4 m ahead, same sector
    ev = Evaluator(rig, grid)
    ev.update(pred, target)
    assert ev.result()["sector_error_m"]["median"] == pytest.approx(1.0, abs=1e-5)

    # Missed: the prediction says clear, which counts as the grid's edge in that sector: row 0's near edge,
    # x 9.2, is 5.6 m ahead of the bumper.
    ev = Evaluator(rig, grid)
    ev.update(_empty(grid, rig), target)
    assert ev.result()["sector_error_m"]["median"] == pytest.approx(5.6 - 0.4, abs=1e-5)

    # A false alarm in a sector that is clear in truth is not scored.
    ev = Evaluator(rig, grid)
    ev.update(pred, _empty(grid, rig))
    assert ev.result()["sector_error_m"] == {"median": None, "p95": None, "sectors": 0}


def test_sector_warning_levels_count_understated_and_false_warnings(rig, grid):
    ev = Evaluator(rig, grid)
    assert ev.layout.levels_m == (1.5, 0.8, 0.3)
    front, flank = ev.layout.sector_of_cells()[26, 39], ev.layout.sector_of_cells()[39, 47]
    assert front != flank
    target = _empty(grid, rig)
    target[26, 39] = 1  # 0.4 m ahead of the bumper: level 2 (within 0.8, not 0.3)
    pred = _empty(grid, rig)
    pred[22, 39] = 1  # 1.2 m ahead, same sector: level 1, one too low
    pred[39, 47] = 4  # its edge 0.5 m off the right flank, where the truth is clear: a false alarm at level 2
    assert ev.layout(target).level[front] == 2 and ev.layout(pred).level[front] == 1
    assert ev.layout(pred).level[flank] == 2
    ev.update(pred, target, ["night"])
    ev.update(target, target, ["day"])  # shown as it is: no error
    levels = ev.result()["sector_levels"]
    cm = np.array(levels["confusion"])
    assert cm.sum() == 2 * 16 and cm[2, 1] == 1 and cm[0, 2] == 1 and cm[2, 2] == 1 and cm[0, 0] == 2 * 16 - 3
    assert levels["warned_sectors"] == 2 and levels["clear_sectors"] == 30
    assert levels["under_warned"] == pytest.approx(1 / 2)  # the front sector on the night frame
    assert levels["missed_warning"] == 0.0  # shown too low, but shown
    assert levels["false_alarm"] == pytest.approx(1 / 30)  # the flank on the night frame
    assert levels["over_warned"] == pytest.approx(1 / 32)  # no sector is at the top level: the false alarm of 32
    night = ev.result()["sector_levels_by_condition"]["night"]
    assert night["under_warned"] == 1.0 and night["false_alarm"] == pytest.approx(1 / 15)
    assert ev.result()["sector_levels_by_condition"]["day"]["false_alarm"] == 0.0
    text = markdown_table(ev.result())
    assert ("50.0 % of the 2 sectors with a true warning shown a lower level (0.0 % shown clear; nearest obstacle "
            "0.3–0.8 m: 0.0 %)") in text
    table = warning_table({"fusion": ev.result(), "old": {"by_condition": {}}})
    assert table.splitlines()[0] == ("### Obstacles within 0.8 m of the car body that a parking display would show "
                                     "clear, by sector (%)")
    assert "| fusion | 0.0 | 0.0 | 0.0 | 3.3 |" in table and "| old | – | – | – | – |" in table
    assert warning_table({"old": {"by_condition": {}}}) == ""
    odd = {"by_condition": {}, "sector_levels": {"confusion": []}, "sector_levels_by_condition": []}
    assert warning_table({"odd": odd}) == ""  # not the shape the Evaluator writes: as if absent, no traceback
    assert "| odd | – | – | – | – |\n" in warning_table({"fusion": ev.result(), "odd": odd})
    with pytest.raises(ConfigError, match=r"level must be 1\.\.3"):
        warning_table({"fusion": ev.result()}, level=4)
    ev.update(_empty(grid, rig), target, ["rain"])  # the front obstacle not shown at all
    assert ev.result()["sector_levels"]["missed_warning"] == pytest.approx(1 / 3)
    assert ev.result()["sector_levels"]["missed_by_level"] == [None, pytest.approx(1 / 3), None]
    assert "3.3 % of the 30 clear sectors shown a warning" in text


def test_empty_evaluator_and_bad_input(rig, tiny):
    ev = Evaluator(rig, tiny)
    r = ev.result()
    assert r["frames"] == 0 and r["miou"] is None and r["recall_1m"] is None and r["by_condition"] == {}
    with pytest.raises(ConfigError, match="grid's shape"):
        ev.update(np.zeros((3, 3), np.uint8), np.zeros((3, 3), np.uint8))
    with pytest.raises(ConfigError, match=r"frame 7: prediction holds value\(s\) \[5\]"):
        ev.update(np.full((4, 4), 5, np.uint8), TARGET, where="frame 7")
    with pytest.raises(ConfigError, match="integer"):
        ev.update(np.zeros((4, 4), np.float32), TARGET)
    ev.update(PRED.astype(np.int64), TARGET.astype(np.int64))  # the dataset's int64 targets are fine
    assert ev.result()["frames"] == 1
    ev.reset()
    assert ev.result()["frames"] == 0


def test_degraded_frames_are_counted_by_condition_and_reason(rig, tiny):
    ev = Evaluator(rig, tiny)
    ev.update(PRED, TARGET, ["day"], degraded=["camera FV missing"])
    ev.update(PRED, TARGET, ["day"], degraded=["camera FV missing", "uss 3 invalid echoes dropped"])
    ev.update(PRED, TARGET, ["night"], degraded=["uss 7 invalid echoes dropped"])
    ev.update(PRED, TARGET, ["night"])  # healthy
    r = ev.result()
    assert r["frames"] == 4 and r["degraded_frames"] == 3
    # Counts in a reason are written N, so that a noisy drive gives one reason, not one per count.
    assert r["degraded_by_reason"] == {"camera FV missing": 2, "uss N invalid echoes dropped": 2}
    assert r["by_condition"]["day"]["degraded_frames"] == 2 and r["by_condition"]["night"]["degraded_frames"] == 1
    text = markdown_table(r, "t")
    assert ("Degraded frames (a sensor missing or failed, or a corrupt image): 3 of 4: camera FV missing 2, uss N "
            "invalid echoes dropped 2.") in text


# --- report -------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def results(rig, tiny):
    out = {}
    for name, pred in (("camera", PRED), ("fusion", TARGET)):
        ev = Evaluator(rig, tiny)
        ev.update(pred, TARGET, ["night", "uss_failure:FSL"])
        ev.update(np.zeros((4, 4), np.uint8), np.zeros((4, 4), np.uint8), ["day"])  # free only: mIoU undefined
        out[name] = ev.result()
    return out


def test_markdown_table_rows_and_values(results):
    text = markdown_table(results["camera"], "Camera only")
    lines = text.splitlines()
    assert lines[0] == "### Camera only"
    assert lines[2] == ("| condition | mIoU | free | vehicle | pedestrian | structure | low_obstacle | recall ≤1 m "
                        "| precision ≤1 m | frames |")
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in lines[4:7]}
    assert list(rows) == ["**all**", "day", "night"]
    assert rows["night"][0] == "65.0" and rows["night"][2] == "60.0" and rows["night"][-1] == "1"
    assert rows["day"][0] == "–"  # undefined, not 0
    assert rows["**all**"][-1] == "2"
    assert "| uss_failure | 65.0 |" in text
    assert "by true class" not in text  # no obstacle within 1 m of the body on this grid: no line
    assert "Degraded" not in text and "Not scored" not in text  # healthy frames, nothing left out: no line


def test_modality_table(results):
    text = modality_table(results)
    lines = text.splitlines()
    assert lines[0] == "| model | all | day | night | uss_failure |"
    assert lines[2] == "| camera | 65.0 | – | 65.0 | 65.0 |"
    assert lines[3] == "| fusion | 100.0 | – | 100.0 | 100.0 |"
    with pytest.raises(ConfigError, match="metric"):
        modality_table(results, metric="accuracy")


def test_chart_bars_have_the_heights_of_their_values(results, tmp_path):
    out = tmp_path / "sub" / "chart.png"
    img = plot_by_condition(results, out)
    back = cv2.cvtColor(cv2.imread(str(out)), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(back, img)

    def bar_heights(colour):
        """The longest vertical run of the colour in each column that has one (bars, and the legend swatch)."""
        mask = np.all(img == np.array(colour, np.uint8), axis=-1)
        runs = set()
        for col in mask.T[mask.any(axis=0)]:
            edges = np.flatnonzero(np.diff(np.concatenate([[0], col.astype(int), [0]])))
            runs.add(int((edges[1::2] - edges[::2]).max()))
        return runs

    camera, fusion = bar_heights(PALETTE[0]), bar_heights(PALETTE[1])
    # 300 px is 100 %: fusion is perfect wherever it is defined (no bar for day); camera's mIoU is 65 %
    # (all, night, uss_failure); 13 px: the legend swatch.
    assert fusion == {300, 13}
    assert camera == {round(0.65 * 300), 13}
    with pytest.raises(ConfigError, match="no results"):
        plot_by_condition({}, tmp_path / "x.png")
