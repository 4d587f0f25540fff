"""`nearfield operating-point`: the near-field bias of a deploy model chosen on a validation split by the rule of
perception.operating_point, and recorded with the zoo model (`--register`) for `nearfield run --operating-point`.
A deploy command: it writes the zoo manifest, which perception does not touch."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(commands: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:
    from perception.postprocess import ECHO_FLOOR_HELP
    from perception.temporal import DEFAULT_DECAY, MEMORY_HELP

    op = commands.add_parser("operating-point", help="choose the near-field bias on a validation split: the "
                                                     "smallest free confidence whose recall within 1 m meets the goal "
                                                     "in every condition")
    op.add_argument("--model", required=True, help="registered model name (nf-small, ...) or a training run directory")
    op.add_argument("--data", required=True, nargs="+",
                    help="MCAP drive logs or directories of them: a validation split (val-paired), not the test split")
    op.add_argument("--free-confidence", type=float, nargs="+", metavar="P",
                    help="the biases to try (0.5 <= P < 1; the argmax is always tried too; default: 0.7 0.8 0.9 0.95 "
                         "0.98 0.99)")
    op.add_argument("--memory", type=float, nargs="?", const=DEFAULT_DECAY, metavar="DECAY", help=MEMORY_HELP)
    op.add_argument("--echo-floor", action="store_true", help=ECHO_FLOOR_HELP + " (every setting scored with it, "
                                                                               "and registered with the choice)")
    op.add_argument("--recall-goal", type=float, default=0.95, metavar="R",
                    help="recall of obstacle cells within 1 m to reach overall and in every condition (default 0.95)")
    op.add_argument("--json", help="write every setting's eval result and the choice to this JSON file")
    op.add_argument("--register", metavar="ZOONAME",
                    help="record the chosen setting as this zoo model's operating point (`nearfield run "
                         "--operating-point` uses it); an error when no setting meets the goal")
    op.add_argument("--manifest", help="zoo manifest for --register (default: deploy/zoo/ZOO.toml)")
    op.add_argument("--device", default="auto")
    op.add_argument("--batch-size", type=int, default=4)
    op.set_defaults(func=_operating_point)


def _operating_point(args) -> int:
    import json

    from perception.model_eval import evaluate_logs_settings
    from perception.operating_point import (
        DEFAULT_SWEEP,
        check_recall_goal,
        choose,
        setting_label,
        sort_settings,
        sweep_table,
    )
    from perception.registry import load_trained
    from sensors.files import find_logs, refuse_overwrite

    settings = sort_settings([None, *(args.free_confidence or DEFAULT_SWEEP)])
    if args.json:
        refuse_overwrite(args.json, find_logs(args.data), "--json")
    check_recall_goal(args.recall_goal)  # the goal and the zoo model are checked before any log is read
    if args.register:
        from deploy.zoo import MANIFEST, read_zoo

        if args.manifest:
            read_zoo(args.manifest, required=True)  # a mistyped path is not an empty zoo
        check_derives(args.register, args.model, args.manifest or MANIFEST)
    model, config = load_trained(args.model)
    results = evaluate_logs_settings(model, args.data, settings, device=args.device, batch_size=args.batch_size,
                                     progress=sys.stderr.isatty(), memory_decay=args.memory,
                                     echo_floor=args.echo_floor)
    memory = f", near-field memory (decay {args.memory:g})" if args.memory is not None else ""
    memory += ", echo floor" if args.echo_floor else ""
    print(f"### {args.model}{memory}: near-field bias on {', '.join(args.data)}\n")
    print(sweep_table(settings, results, args.recall_goal))
    if args.json:
        choice = choose(results, args.recall_goal)
        chosen = None if choice.index is None else setting_label(settings[choice.index])
        out = {"model": args.model, "config": config.name, "data": list(args.data), "memory_decay": args.memory,
               "echo_floor": args.echo_floor, "recall_goal": args.recall_goal, "chosen": chosen,
               "settings": [{"free_confidence": p, "worst_condition": w[0], "worst_recall_1m": w[1], "result": r}
                            for p, w, r in zip(settings, choice.worst, results, strict=True)]}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
        print(args.json)
    if args.register:
        _register_operating_point(args, settings, results)
    return 0


def lineage(name: str, models: dict) -> list[str]:
    """Zoo model NAME and what it was made from, back to the trained model: each entry's parent (for an entry that
    names its trained model in options.trained, as an E2GC one whose parent is the baseline it is compared with,
    that one), followed through the zoo while it names another zoo model."""
    out, current = [name], models[name]
    while True:
        trained = current.options.get("trained")
        origin = trained if isinstance(trained, str) else current.parent
        out.append(origin)
        # A zoo model's parent of its own name is the trained model it was exported from.
        if origin == current.name or origin not in models or origin in out[:-1]:
            return out
        current = models[origin]


def check_derives(zoo_name: str, model: str, manifest: str | Path) -> None:
    """ConfigError unless zoo model ZOO_NAME is MODEL (a trained model's name or run directory) exported, or made
    from it (lineage): an operating point chosen on one network says nothing about another's outputs."""
    from deploy.zoo import get_model, read_zoo
    from sensors.errors import ConfigError
    from sensors.files import same_file

    get_model(zoo_name, manifest)
    chain = lineage(zoo_name, read_zoo(manifest))
    if any(model == c or (Path(model).is_dir() and same_file(model, c)) for c in chain):
        return
    raise ConfigError(f"operating-point --register {zoo_name}: that zoo model is made from "
                      f"{' <- '.join(chain[1:])}, not from --model {model}; the operating point is chosen on "
                      f"{model}'s outputs, so register it into {model}'s own zoo model or one made from it (`nearfield "
                      f"zoo list` shows the parents), or choose it with --model {chain[-1]}")


def _register_operating_point(args, settings, results) -> None:
    from datetime import date

    from deploy.zoo import MANIFEST, set_operating_point
    from perception.operating_point import choose, setting_label
    from sensors.errors import ConfigError

    choice = choose(results, args.recall_goal)
    if choice.index is None:
        raise ConfigError(f"operating-point: no setting reaches the recall goal {args.recall_goal:g} in every "
                          f"condition, so nothing is registered for {args.register}")
    p = settings[choice.index]
    worst, recall = choice.worst[choice.index]
    result = results[choice.index]
    point = {**({"free_confidence": p} if p is not None else {}),
             **({"memory_decay": args.memory} if args.memory is not None else {}),
             **({"echo_floor": True} if args.echo_floor else {}),
             "recall_goal": args.recall_goal, "chosen_on": " ".join(args.data), "chosen_with": args.model,
             "settings_tried": ", ".join(setting_label(s) for s in settings),
             "recall_1m": round(result["recall_1m"], 4), "worst_condition": worst, "worst_recall_1m": round(recall, 4),
             "precision_1m": round(result["precision_1m"], 4) if result.get("precision_1m") is not None else "",
             "date": date.today().isoformat(), "command": _operating_point_command(args)}
    set_operating_point(args.register, point, args.manifest or MANIFEST)
    print(f"registered for zoo model {args.register}: free confidence {setting_label(p)}, memory "
          f"{'off' if args.memory is None else f'{args.memory:g}'}, echo floor {'on' if args.echo_floor else 'off'}")


def _operating_point_command(args) -> str:
    """The `nearfield operating-point` command line that ARGS stand for (recorded with a registered choice)."""
    parts = ["nearfield operating-point --model", args.model, "--data", *args.data]
    if args.memory is not None:
        parts += ["--memory", f"{args.memory:g}"]
    if args.echo_floor:
        parts.append("--echo-floor")
    if args.free_confidence:
        parts += ["--free-confidence", *(f"{p:g}" for p in args.free_confidence)]
    if args.recall_goal != 0.95:
        parts += ["--recall-goal", f"{args.recall_goal:g}"]
    return " ".join([*parts, "--register", args.register])
