"""`nearfield eval` for deploy models: perception registers the command for trained models; the deploy package
extends it (here, so that perception never imports deploy) with the zoo's models, which run through the embedded
runtime's pipeline in onnxruntime (deploy.measure.score_logs): compressed models, or with --deploy the ONNX file of a
name a trained model also has."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(commands: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:
    e = commands.choices.get("eval")
    if e is None:  # perception's commands are not there
        return
    trained_eval = e.get_default("func")
    e.add_argument("--deploy", action="store_true",
                   help="score the zoo's deploy model of that name (its ONNX file, as `nearfield run` runs it) even "
                        "where a trained model has the same name; names only in the zoo always are")
    e.add_argument("--manifest", help="zoo manifest for deploy models (default: deploy/zoo/ZOO.toml)")
    e.add_argument("--threads", type=int, help="onnxruntime intra-op threads for a deploy model (default: all cores)")
    e.set_defaults(func=lambda args: _eval(args, trained_eval))


def _eval(args, trained_eval) -> int:
    model = _deploy_model(args)
    return trained_eval(args) if model is None else _eval_deploy(args, model)


def _deploy_model(args):
    """The zoo model `eval --model` names (with --deploy, or a name no trained model has), else None for the trained
    model path; a ConfigError naming both registries when neither knows the name."""
    from deploy.zoo import MANIFEST as ZOO_MANIFEST
    from deploy.zoo import read_zoo
    from perception.registry import MANIFEST, read_manifest
    from sensors.errors import ConfigError

    if Path(args.model).is_dir() and not args.deploy:
        return None
    trained = read_manifest(MANIFEST)
    if args.model in trained and not args.deploy:
        return None
    manifest = args.manifest or ZOO_MANIFEST
    zoo = read_zoo(manifest, required=args.manifest is not None)  # a mistyped --manifest is not an empty zoo
    if args.model in zoo:
        return zoo[args.model]
    if args.deploy:
        raise ConfigError(f"--deploy: no deploy model {args.model!r} in {manifest} (`nearfield zoo list`)")
    raise ConfigError(f"unknown model {args.model!r}: neither a trained model ({', '.join(sorted(trained))}; "
                      f"{MANIFEST}) nor a deploy model in {manifest} (`nearfield zoo list`); or give a training run "
                      "directory (nearfield train --out)")


def _eval_deploy(args, model) -> int:
    """`eval` of a deploy model: deploy.measure.score_logs over the logs, with the near-field settings given."""
    from deploy.measure import score_logs
    from perception.cli import check_report_paths, print_eval
    from perception.near_field import NearFieldSettings
    from sensors.errors import ConfigError
    from sensors.files import find_logs

    if args.blind_cameras:
        raise ConfigError("eval: --blind-cameras is for trained models (it blanks the torch dataset's images); a "
                          "deploy model is scored on what the logs hold")
    check_report_paths(args)
    settings = NearFieldSettings(args.free_confidence, args.memory, args.echo_floor)
    result = score_logs(model, find_logs(args.data), threads=args.threads, settings=settings)
    return print_eval(result, f"{model.name} (deploy: {model.method}, {model.target}, {model.onnx.name})", args)
