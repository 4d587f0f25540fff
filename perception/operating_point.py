"""Choosing the near-field bias (postprocess.class_map's free confidence) on a validation split by a stated rule,
rather than by trying values on the test split: `nearfield operating-point`.

The rule: the smallest bias (the argmax counting as the smallest) whose recall of obstacle cells within 1 m of the
body reaches the goal overall and in every condition of the split. A larger bias only buys recall with precision and
false warnings, so the smallest that meets the goal is the one to ship; the table shows what each costs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from perception.report import pct, sector_levels
from sensors.errors import ConfigError

# The values `nearfield operating-point` tries when none are given.
DEFAULT_SWEEP = (None, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99)


@dataclass(frozen=True)
class Choice:
    """The outcome of the rule: the chosen setting's index into the sweep (None: no setting meets the goal), and for
    every setting its worst condition and that condition's recall."""

    index: int | None
    worst: list[tuple[str, float | None]]


def sort_settings(values: Sequence[float | None]) -> list[float | None]:
    """VALUES without repeats, the argmax (None) first, then ascending."""
    unique = list(dict.fromkeys(values))
    return ([None] if None in unique else []) + sorted(v for v in unique if v is not None)


def worst_condition(result: Mapping[str, Any]) -> tuple[str, float | None]:
    """(name, recall within 1 m) of the condition where RESULT's recall within 1 m is lowest, counting the whole
    split as the condition 'all'; ('all', None) when nothing in the split had an obstacle within 1 m."""
    recalls = {"all": result.get("recall_1m")}
    by_condition = result.get("recall_1m_by_condition")
    if isinstance(by_condition, Mapping):
        recalls.update(by_condition)
    defined = [(name, float(r)) for name, r in recalls.items() if isinstance(r, int | float)]
    return min(defined, key=lambda item: item[1]) if defined else ("all", None)


def check_recall_goal(goal: float) -> float:
    """The recall goal: a share in (0, 1]; a ConfigError otherwise."""
    if not (isinstance(goal, int | float) and 0 < goal <= 1):
        raise ConfigError(f"the recall goal must be a share in (0, 1], got {goal!r} (0.95: 95 % of the obstacle cells "
                          "within 1 m in every condition)")
    return float(goal)


def choose(results: Sequence[Mapping[str, Any]], goal: float = 0.95) -> Choice:
    """The rule (module doc) over RESULTS, one eval result per setting in the order the settings are tried (smallest
    bias first)."""
    check_recall_goal(goal)
    worst = [worst_condition(r) for r in results]
    index = next((i for i, (_, recall) in enumerate(worst) if recall is not None and recall >= goal), None)
    return Choice(index, worst)


def setting_label(free_confidence: float | None) -> str:
    return "argmax" if free_confidence is None else f"{free_confidence:g}"


def sweep_table(settings: Sequence[float | None], results: Sequence[Mapping[str, Any]], goal: float = 0.95,
                level: int = 2) -> str:
    """Markdown: one row per setting, with what it buys (recall within 1 m overall and in its worst condition) and
    what it costs (precision within 1 m, mIoU, sectors clear in truth that show a warning), the share of obstacles
    within the display's LEVEL shown clear, and the rule's choice under it."""
    if len(settings) != len(results):
        raise ConfigError(f"sweep_table: {len(settings)} settings but {len(results)} results")
    choice = choose(results, goal)
    lines = ["| free confidence | recall ≤ 1 m | worst condition | precision ≤ 1 m | mIoU "
             "| close obstacles shown clear | clear sectors shown a warning |",
             "|---|---:|---|---:|---:|---:|---:|"]
    for i, (p, r) in enumerate(zip(settings, results, strict=True)):
        name, recall = choice.worst[i]
        levels = sector_levels(r)
        missed = levels.get("missed_by_level") if levels else None
        shown_clear = missed[level - 1] if isinstance(missed, list) and len(missed) >= level else None
        mark = " **(chosen)**" if i == choice.index else ""
        lines.append(f"| {setting_label(p)}{mark} | {pct(r.get('recall_1m'))} | {name} {pct(recall)} | "
                     f"{pct(r.get('precision_1m'))} | {pct(r.get('miou'))} | {pct(shown_clear)} | "
                     f"{pct(levels.get('false_alarm') if levels else None)} |")
    if choice.index is not None:
        verdict = (f"Chosen: {setting_label(settings[choice.index])}, the smallest bias with a recall within 1 m of at "
                   f"least {goal * 100:g} % overall and in every condition.")
    else:
        best = max(range(len(results)), key=lambda i: -1.0 if choice.worst[i][1] is None else choice.worst[i][1])
        name, recall = choice.worst[best]
        verdict = (f"None of these reaches a recall within 1 m of {goal * 100:g} % in every condition; the closest, "
                   f"{setting_label(settings[best])}, reaches {pct(recall)} % in its worst ({name}).")
    return "\n".join(lines) + "\n\n" + verdict + "\n"
