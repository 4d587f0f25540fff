"""The rule that picks the near-field bias on a validation split (perception.operating_point), on hand-made results."""

import pytest

from perception.operating_point import choose, sort_settings, sweep_table, worst_condition
from sensors.errors import ConfigError


def result(overall, by_condition, precision=0.5, false_alarm=0.02, missed=(0.1, 0.05, None)):
    return {"recall_1m": overall, "recall_1m_by_condition": by_condition, "precision_1m": precision, "miou": 0.3,
            "sector_levels": {"thresholds_m": [1.5, 0.8, 0.3], "missed_by_level": list(missed),
                              "false_alarm": false_alarm}}


def test_settings_are_tried_argmax_first_then_ascending_once_each():
    assert sort_settings([0.9, None, 0.7, 0.9, 0.99]) == [None, 0.7, 0.9, 0.99]
    assert sort_settings([0.95]) == [0.95]


def test_worst_condition_counts_the_whole_split_and_skips_conditions_without_near_obstacles():
    assert worst_condition(result(0.9, {"day": 0.95, "glare": 0.8, "rain": None})) == ("glare", 0.8)
    assert worst_condition(result(0.7, {"day": 0.95})) == ("all", 0.7)
    assert worst_condition(result(None, {"day": None})) == ("all", None)


def test_the_smallest_bias_that_meets_the_goal_in_every_condition_is_chosen():
    results = [result(0.90, {"day": 0.96, "glare": 0.80}),   # argmax: glare short
               result(0.96, {"day": 0.97, "glare": 0.949}),  # overall met, glare just short
               result(0.97, {"day": 0.98, "glare": 0.95}),   # every condition at the goal
               result(0.99, {"day": 0.99, "glare": 0.99})]   # also meets it, at more cost
    choice = choose(results, 0.95)
    assert choice.index == 2 and choice.worst[1] == ("glare", 0.949)
    assert choose(results, 0.995).index is None
    assert choose([result(None, {})], 0.95).index is None  # nothing near the car: nothing shows the goal is met
    with pytest.raises(ConfigError, match="recall goal"):
        choose(results, 95)


def test_sweep_table_marks_the_choice_and_shows_what_each_setting_costs():
    settings = [None, 0.9, 0.98]
    results = [result(0.80, {"glare": 0.70}, precision=0.60, false_alarm=0.02),
               result(0.96, {"glare": 0.955}, precision=0.45, false_alarm=0.04, missed=(0.1, 0.0, None)),
               result(0.99, {"glare": 0.98}, precision=0.40, false_alarm=0.06)]
    text = sweep_table(settings, results, 0.95)
    rows = [line for line in text.splitlines() if line.startswith("| ") and "free confidence" not in line]
    assert rows[0] == "| argmax | 80.0 | glare 70.0 | 60.0 | 30.0 | 5.0 | 2.0 |"
    assert rows[1] == "| 0.9 **(chosen)** | 96.0 | glare 95.5 | 45.0 | 30.0 | 0.0 | 4.0 |"
    assert "Chosen: 0.9, the smallest bias" in text
    text = sweep_table(settings, results, 0.99)
    assert "(chosen)" not in text and "the closest, 0.98, reaches 98.0 % in its worst (glare)" in text
    with pytest.raises(ConfigError, match="3 settings but 2 results"):
        sweep_table(settings, results[:2])
