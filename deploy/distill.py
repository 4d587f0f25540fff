"""Knowledge distillation into a smaller student (method 'distill': MEAL V2's averaged teacher ensemble, softened
class logits plus the stage-1 occupancy probability) and the fine-tuning loop that every torch-side compression
method shares (pruning, low rank), with the option parsing they share."""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812 - the universal torch idiom
from torch import Tensor, nn

from deploy.compress import load_torch_model, method, option, output_path, register_output, resolve_source
from deploy.zoo import ZooModel, update_metrics
from perception.bev_config import BevConfig
from perception.model import FusionNet, ModelConfig, load_model_config
from sensors.classes import IGNORE
from sensors.errors import ConfigError, NearfieldError

log = logging.getLogger(__name__)

# A fine-tuning loss: (batch, class_logits, occupancy_logits) -> dict of scalars with "total".
Loss = Callable[[dict[str, Tensor], Tensor, Tensor], dict[str, Tensor]]


def name_list(value: Any) -> list[str]:
    """'a,b' or ['a', 'b'] -> ['a', 'b']."""
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else list(value)
    return [str(x).strip() for x in items if str(x).strip()]


# --- data and the fine-tuning loop -------------------------------------------------------------------------------

def training_data(data: str | Path | None, bev: BevConfig, split: str | Sequence[str] = "train",
                  method_name: str = "compress"):
    """DriveDataset of DATA: a data set laid out as `nearfield simulate` writes it (DATA/SPLIT folders; several
    splits are joined, e.g. ("train", "train-street"); DATA/train when the one split asked for is absent), or a log
    or folder of logs. Preprocessed once and cached in DATA/.cache for a data set, the cache `nearfield train` fills
    (one cache per data set, not one per split), else in .cache beside the logs."""
    from perception.dataset import DriveDataset, find_logs

    if data is None:
        raise ConfigError(f"{method_name}: fine-tuning needs --data (drive logs with ground truth), or --steps 0")
    root = Path(data)
    splits = [split] if isinstance(split, str) else list(split)
    present = [s for s in splits if (root / s).is_dir()]
    if present:
        missing = [s for s in splits if s not in present]
        if missing:
            raise ConfigError(f"{method_name}: {root} has no {', '.join(f'{s}/' for s in missing)} folder of drive "
                              f"logs (it has {', '.join(p.name for p in sorted(root.iterdir()) if p.is_dir())})")
        folders, cache = [root / s for s in present], root / ".cache"
    elif (root / "train").is_dir():
        folders, cache = [root / "train"], root / ".cache"
    else:
        folders, cache = [root], (root if root.is_dir() else root.parent) / ".cache"
    return DriveDataset(find_logs(folders), bev, cache_dir=cache, progress=False)


def hard_loss(config: ModelConfig, dataset) -> Loss:
    """The training loss of perception.train (class-balanced, both decoder stages) on the dataset's labels."""
    from perception.losses import OccupancyLoss, class_weights, occupancy_pos_weight

    t = config.train
    counts = dataset.label_counts()
    fn = OccupancyLoss(class_weights(counts, t["class_weight_power"]),
                       occupancy_pos_weight(counts, t["class_weight_power"]), t["stage1_weight"], t["dice_weight"])
    return lambda batch, classes, occupancy: fn(classes, occupancy, batch["target"])


def fine_tune(model: FusionNet, dataset, steps: int, lr: float, seed: int = 0, batch_size: int | None = None,
              loss: Loss | None = None, after_step: Callable[[nn.Module], None] | None = None,
              desc: str = "fine-tune", progress: bool | None = None) -> list[float]:
    """STEPS AdamW steps of MODEL on DATASET (seeded order, cosine schedule from LR, gradient clipping of the
    config); `after_step(model)` runs after every optimizer step (pruning masks). Returns the losses per step; the
    model is left in eval mode. A progress bar where stderr is a terminal (PROGRESS None) or as PROGRESS says; and
    whatever the bar, an INFO line at every tenth of the steps (mean loss since the last line, rate, time left), so
    that a run in the background (`nohup nearfield -v compress …`) shows where it is."""
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    from perception.train import lr_at

    if steps <= 0:
        return []
    t = model.config.train
    batch = min(batch_size or t["batch_size"], len(dataset))
    if batch < 1:
        raise ConfigError(f"{desc}: the fine-tuning data holds no frames")
    loss = loss or hard_loss(model.config, dataset)
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() > 1]
    other = [p for p in model.parameters() if p.requires_grad and p.dim() <= 1]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": t["weight_decay"]},
                                   {"params": other, "weight_decay": 0.0}], lr=lr)
    torch.manual_seed(seed)
    order = torch.Generator().manual_seed(seed)  # its own generator: the global RNG stays the caller's
    losses: list[float] = []
    every, start, last = max(1, steps // 10), time.perf_counter(), 0
    model.train()
    with tqdm(total=steps, desc=desc, unit="step", disable=None if progress is None else not progress) as bar:
        while len(losses) < steps:
            for b in DataLoader(dataset, batch_size=batch, shuffle=True, drop_last=True, generator=order):
                for g in optimizer.param_groups:
                    g["lr"] = lr_at(len(losses), steps, lr)
                classes, occupancy = model(b["images"], b["grid"], b["valid"], b["uss"])
                total = loss(b, classes, occupancy)["total"]
                if not torch.isfinite(total):
                    raise NearfieldError(f"{desc}: loss is {float(total)} at step {len(losses)}; lower --opt lr")
                optimizer.zero_grad(set_to_none=True)
                total.backward()
                if t["grad_clip"] > 0:
                    nn.utils.clip_grad_norm_(model.parameters(), t["grad_clip"])
                optimizer.step()
                if after_step is not None:
                    after_step(model)
                losses.append(total.item())
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
                if len(losses) % every == 0 or len(losses) == steps:
                    last = _log_progress(desc, losses, last, steps, time.perf_counter() - start)
                if len(losses) >= steps:
                    break
    model.eval()
    return losses


def _log_progress(desc: str, losses: list[float], last: int, steps: int, seconds: float) -> int:
    done = len(losses)
    rate = done / seconds if seconds > 0 else float("inf")
    log.info("%s: step %d of %d, loss %.4f (mean of the last %d), %.2f steps/s, %.0f s left", desc, done, steps,
             sum(losses[last:]) / (done - last), done - last, rate, (steps - done) / rate)
    return done


def tune(model: FusionNet, config: ModelConfig, data: str | None, steps: int, options: dict[str, Any],
         method_name: str, after_step: Callable[[nn.Module], None] | None = None,
         teacher: nn.Module | None = None) -> list[float]:
    """A compression method's fine-tuning: STEPS on DATA's train split at options lr (default a quarter of the
    network's from-scratch lr, from_scratch_lr: the weights are trained already) and seed; nothing when STEPS is 0.
    With TEACHER (the uncompressed source, see wants_teacher), the loss adds its soft predictions to the labels
    (DistillLoss at options kd_temperature, default 1, class-balanced): the compressed network learns back what its
    source knew."""
    if steps == 0:
        return []
    dataset = training_data(data, config.bev, train_splits(options), method_name)
    lr = option(options, "lr", from_scratch_lr(config) / 4, float, 1e-12, 10, method_name)
    seed = option(options, "seed", config.train["seed"], int, 0, 2**31, method_name)
    loss = None
    if teacher is not None:
        from perception.losses import class_weights

        temperature = option(options, "kd_temperature", 1.0, float, 1e-3, 100, method_name)
        loss = DistillLoss([teacher], hard_loss(config, dataset), temperature, hard_weight=1.0,
                           class_weights=class_weights(dataset.label_counts(), config.train["class_weight_power"]))
    return fine_tune(model, dataset, steps, lr, seed, loss=loss, after_step=after_step, desc=method_name)


def from_scratch_lr(config: ModelConfig) -> float:
    """The learning rate CONFIG's network trains at from scratch: that of the config file of its name
    (perception/configs), as a registered revision's config carries the lr of its last fine-tuning (nf-small r3:
    5e-4, where nf-small trains at 2e-3, and a quarter of that left a pruned r3 14 mIoU short after 500 steps);
    the config's own lr when no file has its name."""
    from perception.model import list_model_configs

    if config.name in list_model_configs():
        return load_model_config(config.name).train["lr"]
    return config.train["lr"]


# The options tune() reads (fine-tuning), and those of fine-tuning against the uncompressed source (wants_teacher):
# the methods that fine-tune with them declare them (deploy.compress.method).
TUNE_OPTIONS = ("lr", "seed", "train_splits")
KD_OPTIONS = ("kd", "kd_temperature")


def wants_teacher(options: dict[str, Any]) -> bool:
    """--opt kd=true: fine-tune a compressed model against its uncompressed source's predictions too (tune)."""
    return str(options.get("kd", False)).lower() in ("true", "1", "yes")


def train_splits(options: dict[str, Any]) -> list[str]:
    """The data set folders a method fine-tunes on: --opt train_splits=train,train-street (default train)."""
    return name_list(options.get("train_splits")) or ["train"]


def loss_record(losses: list[float]) -> dict[str, Any]:
    """The fine-tuning's figures for a zoo entry's options."""
    if not losses:
        return {"fine_tune_steps": 0}
    return {"fine_tune_steps": len(losses), "loss_first": round(losses[0], 4), "loss_last": round(losses[-1], 4)}


def set_threads(options: dict[str, Any]) -> None:
    threads = option(options, "threads", None, int, 1, 1024)
    if threads is not None:
        torch.set_num_threads(threads)


# --- distillation -------------------------------------------------------------------------------------------------

@torch.no_grad()
def teacher_outputs(teachers: Sequence[nn.Module], batch: dict[str, Tensor]) -> list[tuple[Tensor, Tensor]]:
    """Each teacher's (class logits, occupancy logits) on BATCH."""
    return [teacher(batch["images"], batch["grid"], batch["valid"], batch["uss"]) for teacher in teachers]


def soft_targets(outputs: Sequence[tuple[Tensor, Tensor]], temperature: float) -> tuple[Tensor, Tensor]:
    """The teachers' averaged soft predictions (MEAL V2 averages probabilities, not logits): class probabilities
    at TEMPERATURE (B, C, R, W) and stage-1 occupied probabilities (B, 1, R, W)."""
    probs = sum(torch.softmax(classes / temperature, dim=1) for classes, _ in outputs) / len(outputs)
    occupied = sum(torch.sigmoid(occupancy) for _, occupancy in outputs) / len(outputs)
    return probs, occupied


def ensemble_targets(teachers: Sequence[nn.Module], batch: dict[str, Tensor], temperature: float
                     ) -> tuple[Tensor, Tensor]:
    """soft_targets of the TEACHERS on BATCH."""
    return soft_targets(teacher_outputs(teachers, batch), temperature)


_MASKED = -1e9  # a logit whose softmax share is exactly 0 (finite, so 0 * log p stays 0)


def channel_distributions(classes: Tensor, occupancy: Tensor, temperature: float, mask: Tensor | None = None
                          ) -> Tensor:
    """Channel-wise distillation's view of a BEV prediction (Shu et al. 2021, "Channel-wise Knowledge
    Distillation for Dense Prediction"): each class's logit map and the stage-1 occupancy map, softened by
    TEMPERATURE and normalised by a softmax over the cells of MASK (B, R, W; all cells when None) into a
    distribution of where that class is. (B, C + 1, R * W) log-probabilities; cells outside MASK get none."""
    maps = torch.cat([classes, occupancy], dim=1).flatten(2) / temperature
    if mask is not None:
        maps = maps.masked_fill(~mask.flatten(1)[:, None, :], _MASKED)
    return F.log_softmax(maps, dim=2)


def channel_term(classes: Tensor, occupancy: Tensor, teacher_log_maps: Tensor, temperature: float,
                 mask: Tensor | None = None) -> Tensor:
    """T^2 * KL(teacher || student) of each map's distribution over the cells (channel_distributions), averaged
    over the maps and the batch; 0 when the student's maps are the teacher's up to a constant per map (a softmax
    does not see a shift)."""
    student = channel_distributions(classes, occupancy, temperature, mask)
    teacher = teacher_log_maps.exp()
    kl = (teacher * (teacher_log_maps - student)).sum(dim=2)
    return temperature ** 2 * kl.mean()


def channel_targets(outputs: Sequence[tuple[Tensor, Tensor]], temperature: float, mask: Tensor | None = None
                    ) -> Tensor:
    """The teachers' averaged channel distributions (log), as soft_targets averages probabilities."""
    mean = sum(channel_distributions(c, o, temperature, mask).exp() for c, o in outputs) / len(outputs)
    return torch.log(mean.clamp(min=1e-30)).masked_fill(mean == 0, _MASKED)


def distill_terms(classes: Tensor, occupancy: Tensor, teacher_probs: Tensor, teacher_occupied: Tensor,
                  temperature: float, mask: Tensor | None = None, cell_weight: Tensor | None = None
                  ) -> dict[str, Tensor]:
    """kd: T^2 * KL(teacher || student) of the class distributions softened by T (Hinton's T^2 keeps the gradient
    scale independent of T); occupancy: binary KL(teacher || student) of the stage-1 probability (= BCE against
    the soft target minus the target's own entropy: same gradients, and 0 when the student matches). Both are
    means over the cells of MASK (B, R, W; all cells when None), weighted by CELL_WEIGHT (B, R, W) when given.
    Zero when the student's outputs are the teacher's."""
    m = torch.ones_like(classes[:, 0]) if mask is None else mask.float()
    if cell_weight is not None:
        m = m * cell_weight
    log_student = F.log_softmax(classes / temperature, dim=1)
    kl = (torch.special.xlogy(teacher_probs, teacher_probs) - teacher_probs * log_student).sum(dim=1)
    p = teacher_occupied[:, 0]
    entropy = -(torch.special.xlogy(p, p) + torch.special.xlogy(1 - p, 1 - p))
    binary_kl = F.binary_cross_entropy_with_logits(occupancy[:, 0], p, reduction="none") - entropy
    cells = m.sum().clamp(min=1e-6 if cell_weight is not None else 1.0)
    return {"kd": temperature ** 2 * (kl * m).sum() / cells, "occupancy": (binary_kl * m).sum() / cells}


class FeatureMimic:
    """BEV feature imitation next to the soft predictions: the student's decoder input (its fused BEV features),
    through a trained 1x1 adapter to the teacher's width, against the first teacher's decoder input on the same
    batch (the features of an ensemble of different networks do not average). Forward pre-hooks on both decoders
    catch the features as the models run; `attach(student)` adds the hooks and the adapter (as the student's
    `distill_adapter`, so the student's optimizer trains it), `detach(student)` removes both before export."""

    def __init__(self, teacher: FusionNet, student: FusionNet) -> None:
        for model, role in ((teacher, "teacher"), (student, "student")):
            if getattr(model, "decoder", None) is None:
                raise ConfigError(f"distill: feature_weight needs a {role} with one decoder (camera, ultrasonic, "
                                  f"early or middle fusion); {model.config.name} averages two (late fusion)")
        self.adapter = nn.Conv2d(student.decoder.trunk[0].in_channels, teacher.decoder.trunk[0].in_channels, 1)
        self.features: dict[str, Tensor] = {}
        self._hooks = [teacher.decoder.register_forward_pre_hook(self._catch("teacher"))]
        self._student_hook = None

    def _catch(self, role: str):
        def hook(module, args):
            self.features[role] = args[0]
        return hook

    def attach(self, student: FusionNet) -> None:
        student.add_module("distill_adapter", self.adapter)
        self._student_hook = student.decoder.register_forward_pre_hook(self._catch("student"))

    def detach(self, student: FusionNet) -> None:
        if "distill_adapter" in student._modules:
            del student._modules["distill_adapter"]
        for h in [*self._hooks, self._student_hook]:
            if h is not None:
                h.remove()

    def term(self, mask: Tensor) -> Tensor:
        """Mean over the cells of MASK (B, R, W, weights) of the squared error per channel, in units of the
        teacher features' mean square (the term's scale does not depend on the teacher's)."""
        teacher = self.features["teacher"].detach()
        error = (self.adapter(self.features["student"]) - teacher).pow(2).mean(dim=1)
        scale = teacher.pow(2).mean().clamp(min=1e-6)
        return (error * mask).sum() / mask.sum().clamp(min=1e-6) / scale


class DistillLoss:
    """total = kd_weight * kd + occupancy_weight * occupancy + hard_weight * (the usual labelled loss)
    (+ feature_weight * feature with a FeatureMimic) (+ channel_weight * channel, channel-wise distillation at
    channel_temperature: channel_term), the soft terms against the teachers' averaged predictions on the same batch,
    over the labelled cells (the ego footprint carries no information). CLASS_WEIGHTS (K,): each cell's per-cell
    soft terms weighted by its labelled class's weight, the hard loss's class balance: unweighted, the ~90 % free
    cells drown the obstacle cells the mIoU is about (nf-small: a half-width student scored 11.0 val mIoU distilled
    that way against 15.4 trained alone). The channel term needs no weights: each class's map is its own
    distribution, however few cells the class holds."""

    def __init__(self, teachers: Sequence[nn.Module], hard: Loss | None, temperature: float = 4.0,
                 kd_weight: float = 1.0, occupancy_weight: float = 1.0, hard_weight: float = 0.5,
                 class_weights: Tensor | None = None, mimic: FeatureMimic | None = None,
                 feature_weight: float = 0.0, channel_weight: float = 0.0, channel_temperature: float = 4.0) -> None:
        self.teachers = [t.eval() for t in teachers]
        self.hard, self.temperature = hard, temperature
        self.kd_weight, self.occupancy_weight, self.hard_weight = kd_weight, occupancy_weight, hard_weight
        self.class_weights = class_weights
        self.mimic, self.feature_weight = mimic, feature_weight
        self.channel_weight, self.channel_temperature = channel_weight, channel_temperature

    def __call__(self, batch: dict[str, Tensor], classes: Tensor, occupancy: Tensor) -> dict[str, Tensor]:
        outputs = teacher_outputs(self.teachers, batch)
        probs, occupied = soft_targets(outputs, self.temperature)
        labelled = batch["target"] != IGNORE
        weight = None
        if self.class_weights is not None:
            weight = self.class_weights.to(classes.device)[torch.where(labelled, batch["target"], 0).long()]
        out = distill_terms(classes, occupancy, probs, occupied, self.temperature, labelled, weight)
        total = self.kd_weight * out["kd"] + self.occupancy_weight * out["occupancy"]
        if self.channel_weight > 0:
            maps = channel_targets(outputs, self.channel_temperature, labelled)
            out["channel"] = channel_term(classes, occupancy, maps, self.channel_temperature, labelled)
            total = total + self.channel_weight * out["channel"]
        if self.mimic is not None and self.feature_weight > 0:
            out["feature"] = self.mimic.term(labelled.float() if weight is None else labelled.float() * weight)
            total = total + self.feature_weight * out["feature"]
        if self.hard is not None and self.hard_weight > 0:
            out["hard"] = self.hard(batch, classes, occupancy)["total"]
            total = total + self.hard_weight * out["hard"]
        out["total"] = total
        return out


def half_width(config: ModelConfig) -> ModelConfig:
    """The default student: the teacher's network with both encoders and every BEV width halved."""
    return config.replace(name=f"{config.name}-half", camera_width=config.camera_width / 2,
                          uss_width=config.uss_width / 2, neck_channels=max(4, config.neck_channels // 2),
                          bev_channels=max(4, config.bev_channels // 2),
                          decoder_channels=max(4, config.decoder_channels // 2))


def miou(model: FusionNet, dataset) -> float | None:
    """The obstacle-class mIoU of MODEL on DATASET (perception.model_eval.evaluate_dataset)."""
    from perception.dataset import dataset_rig
    from perception.model_eval import evaluate_dataset

    return evaluate_dataset(model, dataset, dataset_rig(dataset))["miou"]


@method("distill", ("teachers", "student", "steps", "seed", "lr", "temperature", "kd_weight", "occupancy_weight",
                    "hard_weight", "feature_weight", "channel_weight", "channel_temperature", "balance",
                    "train_splits"))
def distill_method(source: str, out: str, data: str | None, options: dict[str, Any], manifest: Path) -> ZooModel:
    """`nearfield compress --method distill`: a student trained from the teachers' soft BEV predictions (options
    teachers=A,B (default: SOURCE), student=CONFIG (default: SOURCE's config at half width), temperature (2),
    kd_weight (1), occupancy_weight (1), hard_weight (1), feature_weight (0: off; SOURCE's BEV features imitated,
    FeatureMimic), balance (true: soft terms class-balanced per cell, see DistillLoss), lr, seed), and the same
    student trained alone with the same steps and seed; both mIoUs on DATA's val split (else DATA itself) go into
    the entry."""
    name = "distill"
    set_threads(options)
    src = resolve_source(source, manifest)
    teacher, config = load_torch_model(src)
    teachers = [teacher]
    from perception.registry import load_trained

    for extra in name_list(options.get("teachers")):
        if extra != src.trained:
            model, cfg = load_trained(extra)
            if cfg.bev != config.bev:
                raise ConfigError(f"{name}: teacher {extra} has a different [bev] than {source}; an ensemble must "
                                  "share the BEV grid and image size")
            teachers.append(model)
    student_config = load_model_config(options["student"]) if options.get("student") else half_width(config)
    if student_config.bev != config.bev:
        raise ConfigError(f"{name}: student config {student_config.name} has a different [bev] than the teacher "
                          f"{source}; give it the teacher's [bev] table (the deploy inputs must not change)")
    steps = option(options, "steps", 20, int, 1, 10**7, name)
    seed = option(options, "seed", student_config.train["seed"], int, 0, 2**31, name)
    scratch = student_config.train["lr"] if options.get("student") else from_scratch_lr(config)
    lr = option(options, "lr", scratch, float, 1e-12, 10, name)
    temperature = option(options, "temperature", 2.0, float, 1e-3, 100, name)
    weights = {k: option(options, k, d, float, 0, 1e6, name)
               for k, d in (("kd_weight", 1.0), ("occupancy_weight", 1.0), ("hard_weight", 1.0),
                            ("feature_weight", 0.0), ("channel_weight", 0.0))}
    weights["channel_temperature"] = option(options, "channel_temperature", 4.0, float, 1e-3, 100, name)
    balance = str(options.get("balance", True)).lower() not in ("false", "0", "no")
    train_set = training_data(data, config.bev, train_splits(options), name)
    eval_set = training_data(data, config.bev, "val", name)
    from perception.losses import class_weights

    balanced = (class_weights(train_set.label_counts(), student_config.train["class_weight_power"])
                if balance else None)

    torch.manual_seed(seed)
    student = FusionNet(student_config)
    alone = copy.deepcopy(student)  # the same initial weights: the comparison isolates the teachers' effect
    mimic = FeatureMimic(teacher, student) if weights["feature_weight"] > 0 else None
    kd = DistillLoss(teachers, hard_loss(student_config, train_set), temperature, **weights,
                     class_weights=balanced, mimic=mimic)
    if mimic is not None:
        mimic.attach(student)
    try:
        fine_tune(student, train_set, steps, lr, seed, loss=kd, desc="distill")
    finally:
        if mimic is not None:
            mimic.detach(student)
    fine_tune(alone, train_set, steps, lr, seed, desc="student alone")
    scores = {"miou_distilled": miou(student, eval_set), "miou_alone": miou(alone, eval_set)}
    log.info("%s: student %s mIoU %s distilled vs %s alone", out, student_config.name, scores["miou_distilled"],
             scores["miou_alone"])

    from deploy.export import export_onnx

    path = export_onnx(student, student_config, output_path(out, manifest))
    teacher_names = [src.trained] + [t for t in name_list(options.get("teachers")) if t != src.trained]
    recorded = {**options, "student": student_config.name, "student_config": student_config.to_dict(),
                "teachers": teacher_names, "temperature": temperature, "seed": seed, "lr": lr, **weights,
                "balance": balance, "eval_frames": len(eval_set)}
    notes = (f"student {student_config.name} distilled from {', '.join(teacher_names)} (T={temperature}, {steps} "
             f"steps): torch mIoU {_pct(scores['miou_distilled'])} vs {_pct(scores['miou_alone'])} for the same "
             f"student trained alone (same steps and seed) on {len(eval_set)} frames of {data}")
    entry = register_output(out, path, src, "distill", "any", recorded, notes, manifest)
    figures = {k: round(v, 4) for k, v in scores.items() if v is not None}
    return update_metrics(out, figures, manifest) if figures else entry


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}"


__all__ = ["KD_OPTIONS", "TUNE_OPTIONS", "DistillLoss", "FeatureMimic", "Loss", "channel_distributions",
           "channel_targets", "channel_term", "distill_method", "distill_terms", "ensemble_targets", "fine_tune",
           "from_scratch_lr", "half_width", "hard_loss", "loss_record", "miou", "name_list", "set_threads",
           "soft_targets", "teacher_outputs", "train_splits", "training_data", "tune", "wants_teacher"]
