"""`nearfield train`, `nearfield eval`, `nearfield register-model`, `nearfield bench train` and `nearfield bench
model`: thin wrappers over perception.train, perception.model_eval and perception.registry (torch is imported only
when one runs)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from perception.postprocess import ECHO_FLOOR_HELP
from perception.temporal import DEFAULT_DECAY, MEMORY_HELP


def register(commands: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:
    t = commands.add_parser("train", help="train a model on simulated or labelled drives (torchrun for multi-GPU)")
    t.add_argument("--config", help="model config name (nf-small, ...) or TOML path; a --resume reads the run's own")
    t.add_argument("--data", required=True, help="directory with train/ and val/ folders of MCAP drive logs")
    t.add_argument("--out", required=True, help="run directory: checkpoints, config.toml, metrics.jsonl")
    t.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last checkpoint (saved at each epoch's end, at --max-steps "
                        "and on Ctrl-C or SIGTERM after the step under way), with the run's own config and plan: "
                        "--epochs, --schedule, --warmup, --no-augment and --freeze-bn may be left out")
    t.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N")
    t.add_argument("--epochs", type=int, help="override the config's train.epochs")
    t.add_argument("--max-steps", type=int, help="stop after this many optimizer steps in total (resumable)")
    t.add_argument("--threads", type=int, help="torch CPU threads per process, at least 1 (default: all cores, "
                                                "shared among the processes)")
    t.add_argument("--amp", default="auto", choices=("auto", "bf16", "fp16", "off"), help="mixed precision (CUDA)")
    t.add_argument("--workers", type=int, help="data loader processes, 0 to load in the training process (default: "
                                                "the config's train.num_workers)")
    t.add_argument("--schedule", choices=("cosine", "onecycle"), help="learning-rate schedule (default cosine)")
    t.add_argument("--warmup", type=float, help="share of the steps spent warming up (0.05 cosine, 0.3 one-cycle)")
    t.add_argument("--no-augment", dest="augment", action="store_false", default=None,
                   help="no photometric jitter or camera/USS dropout")
    t.add_argument("--freeze-bn", action="store_const", const=True, default=None,
                   help="keep BatchNorm running statistics fixed")
    t.add_argument("--train-split", nargs="+", default=["train"], metavar="FOLDER",
                   help="training folders under --data (default: train), e.g. train train-street")
    t.add_argument("--init", metavar="MODEL|RUN_DIR",
                   help="fine-tune: start from a trained model's weights (the same network; fresh optimizer)")
    t.add_argument("--set", action="append", default=[], metavar="train.KEY=VALUE",
                   help="override a [train] field of the config, e.g. train.lr=5e-4 train.camera_dropout=0.2")
    t.set_defaults(func=_train)

    e = commands.add_parser("eval", help="score a trained or deploy model on drive logs: IoU, mIoU by condition, "
                                         "recall, sector distance error")
    e.add_argument("--model", required=True,
                   help="registered model name (nf-small, ...), a training run directory, or a deploy model of the zoo "
                        "(nf-small-int8-r5, ...: `nearfield zoo list`; see --deploy)")
    e.add_argument("--data", required=True, nargs="+", help="MCAP drive logs or directories of them")
    e.add_argument("--json", help="write the scores to this JSON file, with .md and .png beside it")
    e.add_argument("--device", default="auto", help="torch device of a trained model: auto (cuda if available), cpu, "
                                                    "cuda, cuda:N")
    e.add_argument("--batch-size", type=int, default=4, help="frames per forward pass of a trained model, at least 1 "
                                                             "(default 4)")
    e.add_argument("--no-cache", action="store_true", help="do not cache preprocessed frames in .cache/")
    e.add_argument("--blind-cameras", action="store_true",
                   help="score a fusion model as if every camera had failed: what its ultrasonic branch finds alone")
    e.add_argument("--free-confidence", type=float, metavar="P",
                   help="near-field bias: within 1 m of the body call a cell free only where the network gives FREE "
                        "at least P (0.5 <= P < 1; default: the argmax); trades precision within 1 m for recall")
    e.add_argument("--memory", type=float, nargs="?", const=DEFAULT_DECAY, metavar="DECAY", help=MEMORY_HELP)
    e.add_argument("--echo-floor", action="store_true", help=ECHO_FLOOR_HELP)
    e.set_defaults(func=_eval)


    rp = commands.add_parser("report", help="modality x condition tables and chart from several `eval --json` files")
    rp.add_argument("results", nargs="+", metavar="NAME=JSON", help="a label and an eval JSON, e.g. fusion=f.json")
    rp.add_argument("--markdown", help="write the tables it prints (mIoU, recall and precision within 1 m, recall by "
                                       "class and by ultrasonic coverage, warning levels) to this Markdown file")
    rp.add_argument("--png", help="write the mIoU-by-condition chart to this PNG")
    rp.add_argument("--warning-level", type=int, default=2, metavar="N",
                    help="the parking display's level whose obstacles shown clear the last table counts (1..3: "
                         "within 1.5, 0.8, 0.3 m; default 2)")
    rp.set_defaults(func=_report)

    r = commands.add_parser("register-model", help="add a training run's weights to perception/weights/MODELS.toml")
    r.add_argument("run_dir", help="training run directory (its best checkpoint, else its last)")
    r.add_argument("--name", required=True, help="the name --model will take (e.g. nf-small)")
    r.add_argument("--data", required=True, help="what it was trained on, e.g. 'simulate --preset train, 20x100'")
    r.add_argument("--dtype", default="float16", choices=("float16", "bfloat16", "float32"),
                   help="storage precision of the weights file (loading casts to float32)")
    r.add_argument("--manifest", help="manifest to add it to (default: perception/weights/MODELS.toml)")
    r.add_argument("--checkpoint", choices=("best", "last"), help="which of the run's checkpoints (default: best "
                   "by validation mIoU, else last)")
    r.add_argument("--file", metavar="STEM", help="weights and config file names beside the manifest (default: the "
                   "name; a new revision of a model gets files of its own, e.g. nf-small-r2)")
    r.add_argument("--replace", action="store_true",
                   help="replace the entry of that name if there is one (its data text, val mIoU and sha256 are "
                        "dropped; `nearfield zoo rename OLD NEW --with-trained` keeps it instead)")
    r.set_defaults(func=_register_model)

    bt = bench.add_parser("train", help="training samples per second (synthetic batches, no data loading)")
    bt.add_argument("--config", default="nf-small")
    bt.add_argument("--batch", type=int, help="frames per step (default: the config's train.batch_size)")
    bt.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="CPU thread counts to compare")
    bt.add_argument("--steps", type=int, default=5, help="timed steps (after 2 warm-up steps)")
    bt.add_argument("--device", default="cpu")
    bt.set_defaults(func=_bench_train)

    bm = bench.add_parser("model", help="inference latency of every backbone and of the whole network")
    bm.add_argument("--config", default="nf-small", help="its image size and camera width are used")
    bm.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    bm.add_argument("--width", type=float, help="backbone width multiplier (default: the config's camera_width)")
    bm.add_argument("--repeats", type=int, default=5)
    bm.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    bm.add_argument("--device", default="cpu", help="the whole network's device (backbones run on the CPU)")
    bm.set_defaults(func=_bench_model)


def _train(args) -> int:
    from perception.devices import init_processes
    from perception.model import load_model_config, override_train
    from perception.train import TrainOptions, train_from_dir
    from sensors.errors import ConfigError

    if args.config is None and not args.resume:
        raise ConfigError("train: --config is needed for a new run (nf-small, nf-small-camera, ... or a TOML path)")
    config = load_model_config(args.config) if args.config else None
    if args.set:
        if config is None:
            raise ConfigError("train: --set needs --config (a resumed run keeps its own config.toml)")
        config = override_train(config, args.set)
    options = TrainOptions(device=args.device, epochs=args.epochs, max_steps=args.max_steps, resume=args.resume,
                           threads=args.threads, amp=args.amp, num_workers=args.workers, schedule=args.schedule,
                           warmup=args.warmup, augment=args.augment, freeze_bn=args.freeze_bn,
                           init=args.init)
    result = train_from_dir(config, args.data, args.out, options, train_splits=args.train_split)
    if init_processes(args.device).main:
        best = "–" if result.best_miou is None else f"{100 * result.best_miou:.1f}%"
        print(f"{result.run_dir}: {result.steps} steps, best validation mIoU {best}")
    return 0


def _eval(args) -> int:
    from perception.model_eval import check_batch_size, evaluate_logs
    from perception.registry import load_trained

    check_report_paths(args)
    check_batch_size(args.batch_size)
    model, config = load_trained(args.model)
    result = evaluate_logs(model, args.data, cache=not args.no_cache, device=args.device, batch_size=args.batch_size,
                           progress=sys.stderr.isatty(), blind_cameras=args.blind_cameras,
                           free_confidence=args.free_confidence, memory_decay=args.memory,
                           echo_floor=args.echo_floor)
    title = f"{args.model} ({config.name})" if args.model != config.name else config.name
    return print_eval(result, title + (", cameras blinded" if args.blind_cameras else ""), args)


def check_report_paths(args) -> None:
    """`eval --json OUT`: neither OUT nor the .md and .png written beside it may be one of the --data logs. Checked
    before the evaluation, not after minutes of it."""
    if args.json:
        from perception.model_eval import report_paths
        from sensors.files import find_logs, refuse_overwrite

        refuse_overwrite(report_paths(args.json), find_logs(args.data), "--json")


def print_eval(result: dict, title: str, args) -> int:
    """`eval`'s output, for a trained or (deploy.commands.eval) a deploy model: the table under TITLE and the near-field
    settings of ARGS, and with --json the report files."""
    from perception.model_eval import write_eval_report
    from perception.report import markdown_table

    title += f", free within 1 m only at P(free) ≥ {args.free_confidence:g}" if args.free_confidence is not None else ""
    title += f", near-field memory (decay {args.memory:g})" if args.memory is not None else ""
    title += ", echo floor" if args.echo_floor else ""
    print(markdown_table(result, title))
    if args.json:
        for path in write_eval_report(result, args.json, title):
            print(path)
    return 0


def _report(args) -> int:
    import json

    from perception.report import modality_table, plot_by_condition, split_recall_table, warning_table
    from sensors.errors import ConfigError
    from sensors.files import refuse_overwrite

    refuse_overwrite([p for p in (args.markdown, args.png) if p],
                     [item.partition("=")[2] or None for item in args.results], "report output")
    results = {}
    for item in args.results:
        label, sep, path = item.partition("=")
        if not sep or not label or not path:
            raise ConfigError(f"report: {item!r} must be NAME=JSON (e.g. fusion=out/nf-small.json)")
        try:
            results[label] = json.loads(Path(path).read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: not an eval JSON ({e}); write one with `nearfield eval --json`") from None
        if not isinstance(results[label], dict):
            raise ConfigError(f"{path}: not an eval JSON (not an object); write one with `nearfield eval --json`")
        needed = ("miou", "recall_1m", "by_condition", "recall_1m_by_condition")
        missing = [k for k in needed if k not in results[label]]
        if missing:
            raise ConfigError(f"{path}: not an eval JSON (no {', '.join(missing)}); write one with "
                              "`nearfield eval --json`")
    text = (modality_table(results, "miou", "mIoU over the obstacle classes (%)") + "\n"
            + modality_table(results, "recall_1m", "Recall of obstacle cells within 1 m of the car body (%)"))
    if any("precision_1m" in r for r in results.values()):
        text += "\n" + modality_table(results, "precision_1m", "Precision of the obstacle calls within 1 m of the car "
                                                                "body (%)")
    for by, title in (("class", "Recall within 1 m of the car body by true class (%)"),
                      ("uss_coverage", "Recall within 1 m of the car body, where an ultrasonic beam reached the cell "
                                       "and where none did (%)")):
        table = split_recall_table(results, by, title)
        text += "\n" + table if table else ""
    table = warning_table(results, args.warning_level)
    text += "\n" + table if table else ""
    print(text)
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(text)
    if args.png:
        plot_by_condition(results, args.png)
    return 0


def _register_model(args) -> int:
    from perception.registry import MANIFEST, register_trained

    manifest = Path(args.manifest or MANIFEST)
    created = not manifest.exists()
    entry = register_trained(args.run_dir, args.name, args.data, manifest, args.dtype, stem=args.file,
                             checkpoint=args.checkpoint, replace=args.replace)
    if created:
        print(f"{manifest}: no such manifest, a new one was created")
    miou = "–" if entry.val_miou is None else f"{100 * entry.val_miou:.1f}%"
    print(f"{manifest}: {entry.name} -> {entry.weights.name} ({entry.dtype}, sha256 {entry.sha256[:16]}..., "
          f"val mIoU {miou})")
    return 0


def _bench_train(args) -> int:
    from perception.bench import bench_train
    from perception.model import load_model_config
    from sensors.timing import format_table, machine_description

    config = load_model_config(args.config)
    rows = bench_train(config, args.batch, args.threads, args.steps, device=args.device)
    print(f"machine: {machine_description()}")
    print(format_table([(r["config"], r["device"], r["threads"], r["batch"], r["ms_per_step"], r["samples_per_s"])
                        for r in rows], ("config", "device", "threads", "batch", "ms per step", "samples per s")))
    print("forward + loss + backward + AdamW step on synthetic batches; data loading not included")
    return 0


def _bench_model(args) -> int:
    import torch

    from perception.backbones import list_backbones
    from perception.backbones.bench import bench_backbones
    from perception.bench import bench_network
    from perception.model import load_model_config
    from sensors.timing import format_table, machine_description

    config = load_model_config(args.config)
    if args.threads:
        torch.set_num_threads(args.threads)
    width = args.width if args.width is not None else config.camera_width
    rows = []
    for batch in args.batches:
        for r in bench_backbones(list_backbones(), config.bev.image_size, batch, repeats=args.repeats,
                                 width_mult=width):
            rows.append((r["name"], f"{width:g}", batch, r["params"] / 1e6, r["macs"] / 1e9, r["ms_median"],
                         r["ms_per_image"]))
    for r in bench_network(config, args.batches, args.repeats, device=args.device):
        rows.append((f"{config.name} (whole network, 4 cameras)", f"{config.camera_width:g}", r["batch"], "", "",
                     r["ms_per_batch"], r["ms_per_frame"]))
    w, h = config.bev.image_size
    print(f"machine: {machine_description()}; {torch.get_num_threads()} torch threads")
    print(format_table(rows, ("model", "width", "batch", "params M", "GMAC/img", "ms/batch", "ms/img or frame")))
    print(f"images {w}x{h} ({config.name}'s deploy resolution); backbones per image, the network per frame of 4 "
          f"cameras on a {config.bev.size}x{config.bev.size} grid; median of {args.repeats} after warm-up")
    return 0
