"""Training of the fusion network: seeded data order and augmentation, AdamW with a warmed-up schedule,
class-balanced losses for both decoder stages, validation mIoU every epoch with the best checkpoint kept
(perception.model_eval), an exact resume, mixed precision on CUDA and data-parallel training under torchrun
(perception.devices).

Reproducibility: the data order of epoch e is a permutation seeded by (seed, e) and each sample's augmentation
draws from a generator seeded by (seed, e, sample index), so neither depends on workers, ranks or where a run
was interrupted; the learning rate is a pure function of the step. A resume therefore continues exactly, from the
last checkpoint: saved at each epoch's end, at --max-steps and, in a single process, when SIGINT (Ctrl-C) or SIGTERM
stops the run (after the optimizer step under way). A step that leaves the loss or a weight non-finite stops the
run before anything of it is saved.

Data parallel (torchrun): config.train.batch_size is the global batch (frames per optimizer step), split evenly
across the processes, so a run's hyper-parameters do not depend on the number of GPUs. BatchNorm becomes
SyncBatchNorm on CUDA; on CPU (gloo), SyncBatchNorm has no kernel, so each process normalises with the statistics
of its own share of the batch and DDP broadcasts rank 0's running statistics. The class-weighted loss is a
weighted mean per process and DDP averages gradients, which equals the single-process loss of the global batch
when the processes' weight sums agree (always with class_weight_power 0; approximately otherwise).
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from perception.batches import GlobalBatches, SeededAugment, UssDropout, sample_seed, training_augments
from perception.checkpoint import (
    BEST,
    CONFIG_FILE,
    LAST,
    METRICS_FILE,
    load_training_state,
    load_weights,
    read_record,
    remove_leftovers,
    run_weights,
    save_checkpoint,
)
from perception.dataset import dataset_rig
from perception.devices import amp_dtype, init_processes, resolve_device, to_device
from perception.losses import OccupancyLoss, class_weights, near_field_weights, occupancy_pos_weight
from perception.model import FusionNet, ModelConfig, load_model_config
from perception.model_eval import evaluate_dataset
from sensors.errors import ConfigError, TrainingError
from sensors.files import file_sha256
from sensors.rig import Rig

log = logging.getLogger(__name__)

# `nearfield bench train` on the 2-core development machine, nf-small, batch 4: 1 thread 1095 ms per step (3.7
# samples/s), 2 threads 694 ms (5.8 samples/s). Unlike a lone tiny inference, a training step has enough work per
# convolution to use every core, so the default is all of them, shared among the processes of a torchrun.
DEFAULT_CPU_THREADS = os.cpu_count() or 1
SCHEDULES = ("cosine", "onecycle")
_WARMUP = {"cosine": 0.05, "onecycle": 0.3}  # default share of the steps spent warming up
_FINAL = {"cosine": 0.01, "onecycle": 1 / 25 / 1e4}  # final learning rate / peak
_START = {"cosine": 0.0, "onecycle": 1 / 25}  # warm-up start / peak (cosine: linear from 0, first step > 0)


@dataclass
class TrainOptions:
    """How to run a training (the model config's [train] table says what to train)."""

    device: str = "auto"  # auto (cuda if available), cpu, cuda, cuda:N
    epochs: int | None = None  # overrides config.train.epochs (fixes the schedule's length)
    max_steps: int | None = None  # stop after this many optimizer steps in total; the schedule still spans epochs
    resume: bool = False  # continue the run in out_dir from its last checkpoint (None fields: the run's plan)
    threads: int | None = None  # torch CPU threads per process (default DEFAULT_CPU_THREADS / processes)
    amp: str = "auto"  # CUDA only: auto (bf16 where supported, else fp16 with loss scaling), bf16, fp16, off
    num_workers: int | None = None  # overrides config.train.num_workers
    schedule: str | None = None  # cosine (default): linear warm-up then cosine decay; onecycle: Smith's one-cycle
    warmup: float | None = None  # share of the steps for warm-up (default 0.05 cosine, 0.3 one-cycle)
    augment: bool | None = None  # photometric jitter, camera and ultrasonic dropout (default on)
    freeze_bn: bool | None = None  # BatchNorm layers keep their running statistics (default off; tiny batches)
    val_batch_size: int | None = None  # default: config.train.batch_size
    init: str | None = None  # fine-tune: start from this trained model's weights (registered name or run dir)
    progress: bool = True

    def plan(self, config: ModelConfig) -> dict[str, Any]:
        """What fixes the run's trajectory: stored with each checkpoint and checked on resume."""
        schedule = "cosine" if self.schedule is None else self.schedule
        if schedule not in SCHEDULES:
            raise ConfigError(f"--schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
        warmup = _WARMUP[schedule] if self.warmup is None else self.warmup
        if not 0 <= warmup < 1:
            raise ConfigError(f"--warmup must be a share of the steps in [0, 1), got {warmup}")
        epochs = self.epochs if self.epochs is not None else config.train["epochs"]
        if epochs < 1:
            raise ConfigError(f"--epochs must be at least 1, got {epochs}")
        plan = {"epochs": int(epochs), "batch_size": config.train["batch_size"], "schedule": schedule,
                "warmup": float(warmup), "augment": self.augment is not False, "freeze_bn": bool(self.freeze_bn)}
        if self.init is not None:
            plan["init"] = str(self.init)
        return plan

    def check(self) -> None:
        """The counts a run is given, each a ConfigError naming its option when out of range."""
        for option, value, least in (("--max-steps", self.max_steps, 1), ("--threads", self.threads, 1),
                                     ("--workers", self.num_workers, 0), ("val_batch_size", self.val_batch_size, 1)):
            if value is not None and value < least:
                raise ConfigError(f"{option} must be at least {least}, got {value}")


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    best_miou: float | None
    history: list[dict[str, Any]] = field(default_factory=list)  # the metrics.jsonl records of this call


def lr_at(step: int, total: int, peak: float, schedule: str = "cosine", warmup: float | None = None) -> float:
    """Learning rate of optimizer step `step` (0-based) of `total`: warm-up over the first share of the steps
    (cosine: linear from 0; one-cycle: cosine from peak/25), then cosine decay to the schedule's final rate."""
    warmup = _WARMUP[schedule] if warmup is None else warmup
    warm = round(warmup * total)
    start, final = _START[schedule] * peak, _FINAL[schedule] * peak
    if step < warm:
        if schedule == "cosine":
            return peak * (step + 1) / warm
        return start + (peak - start) * (1 - math.cos(math.pi * step / warm)) / 2
    t = (step - warm) / max(total - warm - 1, 1)
    return final + (peak - final) * (1 + math.cos(math.pi * min(t, 1.0))) / 2


def _set_train_mode(model: nn.Module, freeze_bn: bool) -> None:
    model.train()
    if freeze_bn:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on norms and biases (vectors): decaying them only fights the normalisation."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() > 1]
    other = [p for p in model.parameters() if p.requires_grad and p.dim() <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": other, "weight_decay": 0.0}]


# --- training -----------------------------------------------------------------------------------------------------

def _read_run_config(run_dir: Path) -> ModelConfig:
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise ConfigError(f"{run_dir}: no {CONFIG_FILE} to resume from; start a new run without --resume")
    return load_model_config(path)


def _same(a: ModelConfig, b: ModelConfig) -> bool:
    return a.to_dict() == b.to_dict()


def network_fields(config: ModelConfig) -> dict[str, Any]:
    """What fixes the network's weights: the config less its name and [train] table."""
    d = config.to_dict()
    d.pop("name")
    d.pop("train")
    return d


def load_init_weights(model: FusionNet, source: str) -> str:
    """Fine-tuning: load a trained model's weights (a registered name or a training run directory) into `model`,
    checked against their sha256; returns that sha256. The source must be the same network (same fields but the
    name and [train] table): otherwise a ConfigError naming the fields that differ."""
    weights, sha = resolve_init(model.config, source)
    load_weights(model, weights, sha)
    return sha


def resolve_init(config: ModelConfig, source: str) -> tuple[Path, str]:
    """The weights file of --init SOURCE and its sha256, checked (an unknown name, another network than CONFIG, a
    damaged file: a ConfigError or ChecksumError) without building a model."""
    from perception.registry import MANIFEST, read_manifest

    path = Path(source)
    if path.is_dir():
        weights, sha, _ = run_weights(path)
        other = _read_run_config(path)
    else:
        entries = read_manifest(MANIFEST)
        if source not in entries:
            known = ", ".join(sorted(entries)) or "none registered yet"
            raise ConfigError(f"--init {source!r}: not a registered model ({known}) nor a training run directory")
        entry = entries[source]
        weights, sha, other = entry.weights, entry.sha256, entry.model_config(MANIFEST.parent)
    mine, theirs = network_fields(config), network_fields(other)
    if mine != theirs:
        diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        raise ConfigError(f"--init {source}: a different network from config {config.name!r} (differs in "
                          f"{', '.join(diff)}); fine-tune with the config it was trained with")
    if not Path(weights).is_file():
        raise ConfigError(f"--init {source}: its weights file {weights} does not exist")
    actual = file_sha256(weights)
    if sha is not None and actual != sha:
        load_weights(FusionNet(config), weights, sha)  # raises the ChecksumError that says what to do
    return Path(weights), actual


@dataclass
class RunStart:
    """What a training call settles before any data is read: the config (a resumed run's own), the options with
    a resumed run's plan filled in, the plan, the run's last checkpoint record and the --init weights."""

    config: ModelConfig
    options: TrainOptions
    plan: dict[str, Any]
    previous: dict[str, Any] | None
    init: tuple[Path, str] | None


def start_run(config: ModelConfig | None, out_dir: str | Path, options: TrainOptions) -> RunStart:
    """Every check of a training call that needs no data, so that a mistake is reported before minutes of
    preprocessing: --out (a new run or one to --resume), the config against the run's, the options and the plan
    against the run's, the --init weights. A resume takes the run's own plan for what the options leave out
    (--epochs, --schedule, --warmup, --no-augment, --freeze-bn, --init)."""
    out = Path(out_dir)
    options.check()
    _check_out_dir(out)
    previous = read_record(out, LAST) if out.is_dir() else None
    if options.resume:
        if previous is None:
            raise ConfigError(f"{out}: nothing to resume (no {LAST}.json); start the run without --resume")
        saved = _read_run_config(out)
        if config is not None and not _same(config, saved):
            raise ConfigError(f"{out}: --config differs from the run's {CONFIG_FILE}; resume without --config or "
                              "start a new run")
        config = saved
        stored = previous.get("plan") or {}
        given = {"epochs": options.epochs, "schedule": options.schedule, "warmup": options.warmup,
                 "augment": options.augment, "freeze_bn": options.freeze_bn, "init": options.init}
        options = replace(options, **{k: stored[k] for k, v in given.items() if v is None and k in stored})
    elif previous is not None:
        raise ConfigError(f"{out} already holds a training run; continue it with --resume or choose another --out")
    if config is None:
        raise ConfigError("train: a model config is needed for a new run")
    plan = options.plan(config)
    if options.resume and previous["plan"] != plan:
        changed = sorted(k for k in plan.keys() | previous["plan"].keys()
                         if previous["plan"].get(k) != plan.get(k))
        was = ", ".join(f"{k}={previous['plan'].get(k)!r}" for k in changed)
        raise ConfigError(f"{out}: the run was planned with {was}; resume with the same settings (or leave those "
                          "options out: a resume takes the run's own) or start a new run")
    # A resumed run restores its own weights; the source's sha256 stays in its records.
    init = resolve_init(config, options.init) if options.init is not None and not options.resume else None
    return RunStart(config, options, plan, previous, init)


def _check_out_dir(out: Path) -> None:
    """--out must be a directory or not exist yet, below a directory."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; the run directory must be a directory (or not exist yet)")
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise ConfigError(f"--out {out}: {parent} is a file, so the run directory cannot be made there")


def train(config: ModelConfig | None, train_set: Dataset, val_set: Dataset | None, out_dir: str | Path,
          options: TrainOptions | None = None, rig: Rig | None = None) -> TrainResult:
    """Train `config` on train_set (items {images, grid, valid, uss, target}; label_counts() for the class
    weights), validate on val_set each epoch, write checkpoints and metrics.jsonl to out_dir (rank 0 only).
    With options.resume, config may be None (the run's config.toml is used)."""
    options = options or TrainOptions()
    out = Path(out_dir)
    run = start_run(config, out, options)
    config, options, plan, previous = run.config, run.options, run.plan, run.previous
    procs = init_processes(options.device)
    device = resolve_device(options.device, procs)
    if device.type == "cpu":
        torch.set_num_threads(options.threads or max(1, DEFAULT_CPU_THREADS // procs.world))
    t = config.train
    seed, batch_size = t["seed"], plan["batch_size"]
    steps_per_epoch = len(train_set) // batch_size
    if steps_per_epoch < 1:
        raise ConfigError(f"training set has {len(train_set)} frame(s), fewer than train.batch_size {batch_size}; "
                          "simulate more drives or lower the batch size")
    total = plan["epochs"] * steps_per_epoch
    stop = min(total, options.max_steps) if options.max_steps is not None else total

    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    model = FusionNet(config)
    if options.resume:  # the run's own weights are restored below; the source's sha256 stays in the records
        init_sha = previous.get("init_sha256")
    elif run.init is not None:
        load_weights(model, *run.init)
        init_sha = run.init[1]
    else:
        init_sha = None
    model = model.to(device)
    if procs.world > 1 and device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    optimizer = torch.optim.AdamW(_param_groups(model, t["weight_decay"]), lr=t["lr"])
    dtype = amp_dtype(options.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    counts = train_set.label_counts()
    power = t["class_weight_power"]
    rig = rig if rig is not None else dataset_rig(val_set if val_set is not None else train_set)
    near = near_field_weights(rig, config.bev.grid(rig), t["near_weight"], t["near_m"])
    loss_fn = OccupancyLoss(class_weights(counts, power), occupancy_pos_weight(counts, power), t["stage1_weight"],
                            t["dice_weight"], cell_weights=near).to(device)

    step, best = 0, None
    if options.resume:
        info = load_training_state(out, LAST, model, optimizer, scaler)
        step, best = int(info["step"]), info.get("best_miou")
        log.info("%s: resuming at step %d of %d", out, step, total)
        if procs.main:
            _drop_metrics_after(out / METRICS_FILE, step)
            remove_leftovers(out)
    elif procs.main:
        out.mkdir(parents=True, exist_ok=True)
        (out / CONFIG_FILE).write_text(config.to_toml())
        (out / METRICS_FILE).unlink(missing_ok=True)
    net = model
    if procs.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    view = SeededAugment(train_set, seed, training_augments(config) if plan["augment"] else ())
    workers = t["num_workers"] if options.num_workers is None else options.num_workers
    history: list[dict[str, Any]] = []
    bar = tqdm(total=stop, initial=step, desc=f"train {config.name}", unit="step",
               disable=not (options.progress and procs.main), dynamic_ncols=True)
    last_miou, lr = None, t["lr"]
    saved = step if options.resume else None  # the step of the run's last checkpoint
    stopper = _StopSignals() if procs.world == 1 else None  # ranks would have to agree on the step to stop at
    try:
        if stopper is not None:
            stopper.install()
        while step < stop:
            epoch, start = divmod(step, steps_per_epoch)
            loader = DataLoader(view, batch_sampler=GlobalBatches(len(train_set), batch_size, seed, epoch,
                                                                  procs.rank, procs.world, start),
                                num_workers=workers, pin_memory=device.type == "cuda",
                                # its own generator: a loader draws worker seeds, which would move the global RNG
                                generator=torch.Generator().manual_seed(sample_seed(seed, epoch, 2**32 - 1 - start)))
            sums, n, t0, first = torch.zeros(3, dtype=torch.float64), 0, time.perf_counter(), step
            _set_train_mode(net, plan["freeze_bn"])
            for batch in loader:
                lr = lr_at(step, total, t["lr"], plan["schedule"], plan["warmup"])
                for g in optimizer.param_groups:
                    g["lr"] = lr
                losses = train_step(net, to_device(batch, device), loss_fn, optimizer, scaler, dtype, t["grad_clip"])
                values = [float(losses[k]) for k in ("total", "classes", "occupancy")]
                if not math.isfinite(values[0]) and dtype != torch.float16:  # fp16: the scaler skips such steps
                    raise _diverged(out, f"the loss is {values[0]} in step {step + 1}", t, lr, saved)
                bad = nonfinite_tensors(model)
                if bad:
                    more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
                    raise _diverged(out, f"step {step + 1} left non-finite weights in {bad[0]}{more}", t, lr, saved)
                sums += torch.tensor(values, dtype=torch.float64)
                n += 1
                step += 1
                bar.update(1)
                bar.set_postfix(epoch=epoch + 1, loss=f"{values[0]:.3f}",
                                val_miou="–" if last_miou is None else f"{100 * last_miou:.1f}")
                if step >= stop or (stopper is not None and stopper.signal is not None):
                    break
            seconds = time.perf_counter() - t0
            # Checked here, not per step: a signal during the validation and saves below still saves this step.
            interrupted = stopper is not None and stopper.signal is not None and step < stop
            if procs.world > 1:
                dist.all_reduce(sums)
                sums /= procs.world
            record = {"epoch": epoch + 1, "step": step, "partial": step % steps_per_epoch != 0, "lr": lr,
                      "loss": sums[0].item() / max(n, 1), "loss_classes": sums[1].item() / max(n, 1),
                      "loss_occupancy": sums[2].item() / max(n, 1),
                      "samples_per_s": (step - first) * batch_size / seconds if seconds > 0 else None,
                      "seconds": seconds}
            if interrupted:
                record["interrupted"] = True
            if procs.main:
                if interrupted:  # stop soon: no validation, so this checkpoint has no score
                    last_miou = None
                elif val_set is not None:
                    result = evaluate_dataset(model, val_set, rig, device, options.val_batch_size or batch_size,
                                              dtype, options.progress, desc="validate")
                    last_miou = result["miou"]
                    record.update(val_miou=result["miou"], val_miou_all=result["miou_all"],
                                  val_recall_1m=result["recall_1m"], val_frames=result["frames"])
                improved = last_miou is not None and (best is None or last_miou > best)
                best = last_miou if improved else best
                info = {"step": step, "epoch": epoch + 1, "plan": plan, "best_miou": best, "val_miou": last_miou,
                        "config": config.name, "world_size": procs.world}
                if init_sha is not None:
                    info["init_sha256"] = init_sha
                # LAST last: a run killed before it is in place resumes from the previous step and redoes what
                # follows it (the metrics record dropped, the best checkpoint saved again), as it was.
                with open(out / METRICS_FILE, "a") as f:
                    f.write(json.dumps(record) + "\n")
                if improved:
                    save_checkpoint(out, BEST, model, info)
                save_checkpoint(out, LAST, model, info, optimizer, scaler)
                saved = step
                history.append(record)
                log.info("epoch %d step %d: loss %.4f, val mIoU %s", epoch + 1, step, record["loss"],
                         "–" if last_miou is None else f"{last_miou:.3f}")
                bar.set_postfix(epoch=epoch + 1, loss=f"{record['loss']:.3f}",
                                val_miou="–" if last_miou is None else f"{100 * last_miou:.1f}")
            procs.barrier()
            if stopper is not None and stopper.signal is not None and step < stop:
                name = signal.Signals(stopper.signal).name
                bar.close()
                log.warning("%s: stopped by %s at step %d of %d; its checkpoint is saved: continue with `nearfield "
                            "train --resume --out %s --data ...`", out, name, step, stop, out)
                raise KeyboardInterrupt(name)
    finally:
        if stopper is not None:
            stopper.uninstall()
        bar.close()
    return TrainResult(out, step, best, history)


class _StopSignals:
    """SIGINT (Ctrl-C) and SIGTERM while training: noted, so that the loop stops after the optimizer step under way
    and saves a checkpoint there; a second signal stops at once (the last checkpoint saved stays complete)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}
        self._pid = os.getpid()

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():  # only there can Python handle signals
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, self._note)

    def uninstall(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()

    def _note(self, signum: int, frame: Any) -> None:
        if os.getpid() != self._pid:  # a data loader worker, forked with this handler
            if signum == signal.SIGTERM:  # sent to it alone (the loader ending a stuck worker): it ends as it would
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)
            return  # Ctrl-C reaches the whole process group: the worker serves the step under way
        if self.signal is not None:
            raise KeyboardInterrupt
        self.signal = signum
        log.warning("%s: stopping after this step and saving a checkpoint (again to stop at once)",
                    signal.Signals(signum).name)


def nonfinite_tensors(model: nn.Module) -> list[str]:
    """Names of the parameters and buffers with a NaN or infinite value (one device sync when there are none)."""
    tensors = [(k, v) for k, v in model.state_dict().items() if v.is_floating_point()]
    if not tensors or bool(torch.stack([torch.isfinite(v).all() for _, v in tensors]).all()):
        return []
    return [k for k, v in tensors if not bool(torch.isfinite(v).all())]


def _diverged(out: Path, what: str, t: dict[str, Any], lr: float, saved: int | None) -> TrainingError:
    """The error of a diverged run: what went wrong at which step, and what can be done (--set cannot change a
    resumed run, so the way on is a new run, from this one's last checkpoint where there is one)."""
    keep = (f"; to keep what it learnt up to step {saved}, give it --init {out} (this run's best checkpoint, else "
            "its last)" if saved is not None else "")
    clip = (f"a lower train.grad_clip (now {t['grad_clip']:g})" if t["grad_clip"] > 0
            else "gradient clipping (train.grad_clip=1)")
    kept = f"its last checkpoint is step {saved}'s" if saved is not None else "no checkpoint was saved"
    return TrainingError(f"{out}: training diverged: {what} (train.lr {t['lr']:g}, the step's rate {lr:.3g}); {kept}. "
                         f"Start a new run{' (another --out)' if saved is not None else ''} with a lower train.lr or "
                         f"{clip}, e.g. --set train.lr={t['lr'] / 10:g}{keep}")


def _drop_metrics_after(path: Path, step: int) -> None:
    """A resumed run redoes the steps after its checkpoint: their records (written by a run killed before the
    checkpoint was in place) go, so that none is counted twice."""
    if not path.is_file():
        return
    lines = path.read_text().splitlines(keepends=True)
    kept = [ln for ln in lines if _record_step(ln) <= step]
    if len(kept) != len(lines):
        tmp = path.with_name(path.name + ".part")
        tmp.write_text("".join(kept))
        os.replace(tmp, path)


def _record_step(line: str) -> int:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return -1  # not a record of a step: kept


def train_step(net: nn.Module, b: dict[str, Tensor], loss_fn: OccupancyLoss, optimizer: torch.optim.Optimizer,
                scaler: torch.amp.GradScaler, dtype: torch.dtype | None, grad_clip: float) -> dict[str, Tensor]:
    device_type = b["target"].device.type
    with torch.autocast(device_type, dtype=dtype, enabled=dtype is not None):
        logits, occupancy = net(b["images"], b["grid"], b["valid"], b["uss"])
    losses = loss_fn(logits.float(), occupancy.float(), b["target"])  # the loss in float32 under AMP too
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(losses["total"]).backward()
    if grad_clip > 0:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(net.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    return {k: v.detach() for k, v in losses.items()}


def train_from_dir(config: ModelConfig | None, data_dir: str | Path, out_dir: str | Path,
                   options: TrainOptions | None = None, train_splits: Sequence[str] = ("train",)) -> TrainResult:
    """`nearfield train`: the folders DATA_DIR/SPLIT of `train_splits` (default train/) hold the training drives,
    DATA_DIR/val the validation drives; preprocessed arrays are cached in DATA_DIR/.cache (rank 0 fills the cache
    first, the other processes then read it)."""
    from perception.dataset import DriveDataset

    options = options or TrainOptions()
    data = Path(data_dir)
    splits = tuple(dict.fromkeys(train_splits))
    if not splits:
        raise ConfigError("train: at least one training split (folder under --data) is needed")
    if "val" in splits:
        raise ConfigError("train: val/ is the validation split; it cannot also be a training split")
    for split in (*splits, "val"):
        if not (data / split).is_dir():
            raise ConfigError(f"{data}: no {split}/ folder of drive logs; write one with `nearfield simulate "
                              f"--preset {split} --out {data / split}`")
    run = start_run(config, out_dir, options)  # before minutes of preprocessing
    config, options = run.config, run.options
    bev = config.bev
    procs = init_processes(options.device)
    resolve_device(options.device, procs)
    sets = {}
    for turn in (True, False):  # rank 0 first, then the others from its cache
        if procs.main == turn:
            for name, folders in (("train", splits), ("val", ("val",))):
                sets[name] = DriveDataset([data / f for f in folders], bev, cache_dir=data / ".cache",
                                          progress=options.progress and procs.main)
        procs.barrier()
    if procs.main:
        log.info("training on %d frames (%s), validating on %d", len(sets["train"]), ", ".join(splits),
                 len(sets["val"]))
    return train(config, sets["train"], sets["val"], out_dir, options)


__all__ = ["DEFAULT_CPU_THREADS", "GlobalBatches", "RunStart", "SeededAugment", "TrainOptions", "TrainResult",
           "UssDropout", "load_init_weights", "lr_at", "network_fields", "nonfinite_tensors", "resolve_init",
           "start_run", "train", "train_from_dir", "train_step"]
