"""Pruning methods as deploy models: structured channel pruning to a FLOPs target (torch-pruning; a physically
smaller network, real speed-ups) and unstructured global magnitude / ERK random / LAMP masks (smaller files via a
sparse weights file, no speed-up: the ONNX holds dense zeros), each followed by (masked) fine-tuning."""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from deploy.compress import load_torch_model, method, option, output_path, register_output, resolve_source
from deploy.distill import KD_OPTIONS, TUNE_OPTIONS, loss_record, set_threads, tune, wants_teacher
from deploy.zoo import ZooModel
from perception.model import FusionNet, ModelConfig, dummy_inputs
from sensors.errors import ConfigError, DeployError

log = logging.getLogger(__name__)

FLOPS_COUNTER = "torch.utils.flop_counter.FlopCounterMode (aten level: every convolution and matmul)"
UNSTRUCTURED = ("magnitude", "random", "lamp")


# --- counting -----------------------------------------------------------------------------------------------------

@torch.no_grad()
def count_flops(model: nn.Module, config: ModelConfig) -> int:
    """FLOPs of one batch-1 forward (2 per multiply-add) of convolutions and matrix products, counted at the aten
    level so the content-aware dilated convolution's functional conv2d counts too (module hooks would miss it)."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    with FlopCounterMode(display=False) as counter:
        model(*dummy_inputs(config))
    model.train(was_training)
    return int(counter.get_total_flops())


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --- structured -------------------------------------------------------------------------------------------------

def fixed_channel_layers(model: FusionNet) -> list[nn.Module]:
    """Layers whose output channels torch-pruning must leave alone: the camera neck's output (folded with the
    heights by the lift, channel c*Z + z, which torch-pruning cannot follow through the GridSample; prune_lift
    prunes it instead), the ultrasonic BEV features (the content-aware dilated convolution's residual and its
    functional kernel), the gate (its channels are the dilation rates) and the decoders' final classifier
    convolutions (classes, one occupancy logit)."""
    fixed: list[nn.Module] = []
    if model.camera is not None:
        fixed.append(model.camera.neck.out)
    if model.uss is not None:
        fixed += [model.uss.fuse, model.uss.dilated]
    for decoder in (model.decoder, getattr(model, "camera_decoder", None), getattr(model, "uss_decoder", None)):
        if decoder is not None:
            fixed += [decoder.stage1[-1], decoder.stage2[-1]]
    return fixed


def _grouped(model: nn.Module) -> set[nn.Module]:
    return {m for m in model.modules() if isinstance(m, nn.Conv2d) and 1 < m.groups < m.in_channels}


def _magnitude_importance(grouped: set[nn.Module]):
    """MagnitudeImportance (L2) that leaves a grouped convolution alone once it is down to one channel per group:
    torch-pruning would then score its input channels as a depthwise layer's and fail (1.6.1)."""
    import torch_pruning as tp

    class GroupSafeMagnitude(tp.importance.MagnitudeImportance):
        def __call__(self, group):
            for dep, _ in group:
                layer = dep.target.module
                if layer in grouped and layer.in_channels == layer.groups:
                    return None
            return super().__call__(group)

    return GroupSafeMagnitude(p=2)


@dataclass
class StructuredResult:
    flops_before: int
    flops_after: int
    params_before: int
    params_after: int
    channels: dict[str, list[int]] = field(default_factory=dict)  # conv name -> [output channels before, after]
    lift_channels: list[int] | None = None  # camera features lifted into BEV per height: [before, after]

    @property
    def flops_ratio(self) -> float:
        return self.flops_after / self.flops_before


def prune_structured(model: FusionNet, flops_ratio: float, resolution: int = 100, round_to: int = 8,
                     lift_channels: int | None = None) -> StructuredResult:
    """Remove output channels of MODEL in place (torch-pruning's MetaPruner, L2 magnitude of each coupled channel
    group, every prunable layer at the same ratio) in steps of 1/RESOLUTION of each layer's channels until its
    FLOPs are at most FLOPS_RATIO of the original, keeping channel counts multiples of ROUND_TO. Grouped
    convolutions lose the same channels in every group; fixed_channel_layers keep theirs. LIFT_CHANNELS (None:
    unchanged) first cuts the camera features the lift samples into BEV to that many (prune_lift); the
    MetaPruner then prunes the rest to the FLOPs target. DeployError if the target cannot be reached.

    ROUND_TO 8: onnxruntime's CPU convolutions work on blocks of 8 or 16 channels (NCHWc); nf-small pruned to 0.49
    of its FLOPs with counts like 20 and 41 ran only 1.07x faster than the parent."""
    import torch_pruning as tp

    if not 0 < flops_ratio < 1:
        raise ConfigError(f"prune-structured: flops_ratio must lie in (0, 1), got {flops_ratio}")
    config = model.config
    model.eval()
    before = {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    f0, p0 = count_flops(model, config), count_params(model)
    lift = None
    if lift_channels is not None:
        before_lift = model.camera.neck.out[0].out_channels if model.camera_bev is not None else None
        prune_lift(model, lift_channels)  # a ConfigError for a network without the camera BEV compressor
        lift = [before_lift, lift_channels]
    unwrapped = []
    if model.uss is not None:  # the dilated convolution's functional kernel: tell torch-pruning its channel axis
        unwrapped = [(model.uss.dilated.weight, 0), (model.uss.dilated.bias, 0)]
    pruner = tp.pruner.MetaPruner(model, dummy_inputs(config), importance=_magnitude_importance(_grouped(model)),
                                  pruning_ratio=1.0, iterative_steps=resolution,
                                  ignored_layers=fixed_channel_layers(model), unwrapped_parameters=unwrapped,
                                  round_to=round_to if round_to > 1 else None)
    flops = f0
    for _ in range(resolution - 1):  # the last step would empty every layer
        pruner.step()
        flops = count_flops(model, config)
        if flops <= flops_ratio * f0:
            break
    if flops > flops_ratio * f0:
        raise DeployError(f"prune-structured: model {config.name} reaches only {flops / f0:.2f} of its FLOPs with "
                          f"every prunable channel group at its minimum; ask for flops_ratio >= {flops / f0:.2f}")
    after = {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    channels = {n: [before[n], after[n]] for n in before if n in after and after[n] != before[n]}
    return StructuredResult(f0, flops, p0, count_params(model), channels, lift)


@torch.no_grad()
def prune_lift(model: FusionNet, keep: int) -> list[int]:
    """Keep KEEP of the C camera feature channels that the lift samples into BEV, in place: the neck's output
    convolution and BatchNorm lose output channels, the convolution reading the lifted features the Z input
    channels c*Z + z of each removed c. The GridSample and the per-camera weighting work on C channels per height,
    so their time (a quarter of a pruned nf-small's, deploy/docs/int8_cpu.md) falls with C, which the FLOPs
    count does not see. Channels ranked like torch-pruning's group L2 magnitude: each coupled tensor's squared
    norm per channel over its mean, summed over the tensors. Returns the kept channels, ascending."""
    if model.camera_bev is None:
        # Early fusion joins the lifted features with the ultrasonic raster and reads them twice (the encoder's
        # stem and its full-resolution skip); that case is not handled.
        raise ConfigError(f"prune-structured: model {model.config.name} has no camera BEV compressor (camera, "
                          "middle or late fusion); lift_channels does not apply to it")
    conv, bn = model.camera.neck.out[0], model.camera.neck.out[1]
    consumer = model.camera_bev[0][0]
    C, Z = conv.out_channels, len(model.config.bev.heights)
    if not 1 <= keep <= C:
        raise ConfigError(f"prune-structured: lift_channels must lie in 1..{C} (the model lifts {C} per height), "
                          f"got {keep}")
    cols = consumer.weight.reshape(consumer.out_channels, C, Z, *consumer.weight.shape[2:])
    norms = [conv.weight.pow(2).flatten(1).sum(1), bn.weight.pow(2), cols.pow(2).transpose(0, 1).flatten(1).sum(1)]
    score = sum(n / n.mean().clamp(min=1e-12) for n in norms)
    kept = sorted(torch.topk(score, keep).indices.tolist())
    idx = torch.tensor(kept)
    conv.weight = nn.Parameter(conv.weight[idx].clone())
    conv.out_channels = keep
    for name in ("weight", "bias"):
        setattr(bn, name, nn.Parameter(getattr(bn, name)[idx].clone()))
    bn.running_mean, bn.running_var = bn.running_mean[idx].clone(), bn.running_var[idx].clone()
    bn.num_features = keep
    cols_in = (idx[:, None] * Z + torch.arange(Z)).reshape(-1)
    consumer.weight = nn.Parameter(consumer.weight[:, cols_in].clone())
    consumer.in_channels = len(cols_in)
    return kept


@method("prune-structured", ("flops_ratio", "iterative_steps", "round_to", "steps", "lift_channels", *TUNE_OPTIONS,
                            *KD_OPTIONS))
def structured_method(source: str, out: str, data: str | None, options: dict[str, Any], manifest: Path) -> ZooModel:
    """`nearfield compress --method prune-structured --opt flops_ratio=0.5`: channel pruning to the FLOPs target,
    channel counts multiples of round_to (default 8), the lifted camera features cut to lift_channels first
    (default_lift_channels), then --steps of fine-tuning on --data (lr, seed options)."""
    name = "prune-structured"
    set_threads(options)
    src = resolve_source(source, manifest)
    model, config = load_torch_model(src)
    ratio = option(options, "flops_ratio", 0.5, float, 1e-3, 0.999, name)
    resolution = option(options, "iterative_steps", 100, int, 2, 10_000, name)
    round_to = option(options, "round_to", 8, int, 1, 1024, name)
    steps = option(options, "steps", 20, int, 0, 10**7, name)
    lift = None
    if model.camera_bev is not None:
        lift = option(options, "lift_channels", default_lift_channels(model, ratio, round_to), int, 1, 1 << 16, name)
    teacher = copy.deepcopy(model).eval() if wants_teacher(options) else None
    result = prune_structured(model, ratio, resolution, round_to, lift)
    log.info("%s: FLOPs %.3g -> %.3g (%.2f), parameters %d -> %d", out, result.flops_before, result.flops_after,
             result.flops_ratio, result.params_before, result.params_after)
    losses = tune(model, config, data, steps, options, name, teacher=teacher)
    from deploy.export import export_onnx

    path = export_onnx(model, config, output_path(out, manifest))
    recorded = {**options, "flops_ratio": ratio, "iterative_steps": resolution, "round_to": round_to,
                "flops_counter": FLOPS_COUNTER,
                "gflops_before": round(result.flops_before / 1e9, 4),
                "gflops_after": round(result.flops_after / 1e9, 4),
                "params_before": result.params_before, "params_after": result.params_after,
                "channels": result.channels, **loss_record(losses)}
    if result.lift_channels is not None:
        recorded["lift_channels"] = result.lift_channels[1]
        recorded["lift_channels_before"] = result.lift_channels[0]
    notes = (f"channels removed (torch-pruning, L2 magnitude) to {result.flops_ratio:.2f} of the FLOPs and "
             f"{result.params_after / result.params_before:.2f} of the parameters; the ONNX carries the pruned "
             "shapes, so it runs faster on every backend")
    return register_output(out, path, src, name, "any", recorded, notes, manifest)


def default_lift_channels(model: FusionNet, flops_ratio: float, round_to: int) -> int:
    """The lifted channels kept by default: the fraction of channels a convolution keeps when both its sides shrink
    to FLOPS_RATIO of its FLOPs (sqrt(flops_ratio)), as the nearest multiple of ROUND_TO, at least ROUND_TO (and at
    most the model's own count)."""
    C = model.camera.neck.out[0].out_channels
    step = max(1, round_to)
    return min(C, max(step, step * round(math.sqrt(flops_ratio) * C / step)))


# --- unstructured -----------------------------------------------------------------------------------------------

def prunable_weights(model: nn.Module) -> dict[str, nn.Parameter]:
    """Every weight with a fan-in (convolutions, the dilated convolution's kernel, linear layers) by name."""
    return {n: p for n, p in model.named_parameters() if p.dim() >= 2}


def lamp_scores(weight: Tensor) -> Tensor:
    """LAMP (Lee et al. 2021): w_i^2 / the sum of w_j^2 over the weights of the layer at least as large as w_i.
    The largest weight of every layer scores 1, so a global threshold never empties a layer."""
    sq = weight.detach().reshape(-1).double() ** 2
    order = torch.argsort(sq)
    ranked = sq[order]
    tail = torch.flip(torch.cumsum(torch.flip(ranked, (0,)), 0), (0,))  # sum of the ranked[i:]
    scores = torch.empty_like(sq)
    scores[order] = ranked / tail.clamp(min=torch.finfo(torch.float64).tiny)
    return scores.reshape(weight.shape)


def global_masks(scores: dict[str, Tensor], density: float, min_density: float) -> dict[str, Tensor]:
    """Keep the highest-scoring DENSITY of all weights across layers (one global threshold), but at least
    ceil(MIN_DENSITY * n) of each layer (its highest scores): layers that the threshold would cut below their
    minimum are held at it and the threshold is found again over the rest, until no layer falls below."""
    sizes = {n: s.numel() for n, s in scores.items()}
    budget = round(density * sum(sizes.values()))
    minimum = {n: min(k, math.ceil(min_density * k)) for n, k in sizes.items()}
    if sum(minimum.values()) > budget:
        raise ConfigError(f"pruning: min_density {min_density} keeps {sum(minimum.values())} weights, more than the "
                          f"{budget} that density {density:.3f} allows; lower min_density or the sparsity")
    held: set[str] = set()
    while True:
        free = [n for n in scores if n not in held]
        left = budget - sum(minimum[n] for n in held)
        flat = torch.cat([scores[n].reshape(-1).double() for n in free]) if free else torch.zeros(0)
        kept = torch.zeros(flat.numel(), dtype=torch.bool)
        if left > 0 and flat.numel():
            kept[torch.topk(flat, min(left, flat.numel())).indices] = True
        counts = {n: int(c.sum()) for n, c in zip(free, torch.split(kept, [sizes[n] for n in free]), strict=True)}
        short = [n for n in free if counts[n] < minimum[n]]
        if not short:
            break
        held.update(short)
    masks: dict[str, Tensor] = {}
    for n, part in zip(free, torch.split(kept, [sizes[n] for n in free]), strict=True):
        masks[n] = part.reshape(scores[n].shape)
    for n in held:
        masks[n] = _top(scores[n], minimum[n])
    return {n: masks[n] for n in scores}


def _top(score: Tensor, k: int) -> Tensor:
    mask = torch.zeros(score.numel(), dtype=torch.bool)
    mask[torch.topk(score.reshape(-1).double(), k).indices] = True
    return mask.reshape(score.shape)


def erk_densities(shapes: dict[str, tuple[int, ...]], density: float, min_density: float = 0.0) -> dict[str, float]:
    """Erdős-Rényi-kernel layer densities: proportional to (c_in + c_out + k*k) / (c_in * c_out * k*k) (a linear
    layer: (c_in + c_out) / (c_in * c_out)), scaled by one factor so that the layers together keep DENSITY of the
    weights; each layer clipped to [MIN_DENSITY, 1] (the factor found by bisection). Thin layers stay denser."""
    raw = {n: (s[0] + s[1] + (math.prod(s[2:]) if len(s) > 2 else 0)) / math.prod(s) for n, s in shapes.items()}
    sizes = {n: math.prod(s) for n, s in shapes.items()}
    total = sum(sizes.values())

    def kept(scale: float) -> float:
        return sum(min(1.0, max(min_density, scale * raw[n])) * sizes[n] for n in shapes)

    if kept(0.0) > density * total:
        raise ConfigError(f"prune-random: min_density {min_density} alone keeps more than density {density:.3f}")
    lo, hi = 0.0, 1.0
    while kept(hi) < density * total and hi < 1e12:
        hi *= 2
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if kept(mid) < density * total else (lo, mid)
    return {n: min(1.0, max(min_density, hi * raw[n])) for n in shapes}


def erk_masks(weights: dict[str, Tensor], density: float, min_density: float, seed: int) -> dict[str, Tensor]:
    """Random masks with ERK densities (Liu et al. 2022, "The unreasonable effectiveness of random pruning")."""
    g = torch.Generator().manual_seed(seed)
    densities = erk_densities({n: tuple(w.shape) for n, w in weights.items()}, density, min_density)
    masks = {}
    for n, w in weights.items():
        k = max(1, round(densities[n] * w.numel()))
        mask = torch.zeros(w.numel(), dtype=torch.bool)
        mask[torch.randperm(w.numel(), generator=g)[:k]] = True
        masks[n] = mask.reshape(w.shape)
    return masks


def unstructured_masks(model: nn.Module, how: str, sparsity: float, min_density: float = 0.05,
                       seed: int = 0) -> dict[str, Tensor]:
    """Boolean keep-masks for prunable_weights(MODEL): HOW is magnitude (one global |w| threshold), lamp (one
    global LAMP threshold) or random (ERK densities); SPARSITY the share of those weights removed."""
    if not 0 <= sparsity < 1:
        raise ConfigError(f"prune-{how}: sparsity must lie in [0, 1), got {sparsity}")
    if not 0 <= min_density <= 1:
        raise ConfigError(f"prune-{how}: min_density must lie in [0, 1], got {min_density}")
    weights = {n: p.detach() for n, p in prunable_weights(model).items()}
    if how == "magnitude":
        return global_masks({n: w.abs() for n, w in weights.items()}, 1 - sparsity, min_density)
    if how == "lamp":
        return global_masks({n: lamp_scores(w) for n, w in weights.items()}, 1 - sparsity, min_density)
    if how == "random":
        return erk_masks(weights, 1 - sparsity, min_density, seed)
    raise ConfigError(f"unknown unstructured pruning {how!r}; known: {', '.join(UNSTRUCTURED)}")


@torch.no_grad()
def apply_masks(model: nn.Module, masks: dict[str, Tensor]) -> None:
    params = dict(model.named_parameters())
    for n, mask in masks.items():
        params[n].mul_(mask.to(params[n].dtype))


def sparsity_of(masks: dict[str, Tensor]) -> float:
    return 1 - sum(int(m.sum()) for m in masks.values()) / sum(m.numel() for m in masks.values())


# --- sparse storage -----------------------------------------------------------------------------------------------

def save_sparse(state: dict[str, Tensor], path: str | Path, sparse: set[str] | None = None) -> Path:
    """The tensors of STATE into a compressed .npz: those named in SPARSE (default: every tensor of rank >= 2
    holding zeros) as CSR of the (dim 0, rest) matrix (values float32, column indices in the smallest unsigned
    type, row pointers), the rest dense. load_sparse reads it back exactly."""
    import scipy.sparse

    path = Path(path)
    arrays: dict[str, np.ndarray] = {}
    for name, t in state.items():
        a = t.detach().cpu().numpy()
        if (name in sparse) if sparse is not None else (a.ndim >= 2 and not a.all()):
            csr = scipy.sparse.csr_matrix(a.reshape(a.shape[0], -1))
            cols = a.size // max(a.shape[0], 1)
            arrays[f"{name}:data"] = csr.data
            arrays[f"{name}:indices"] = csr.indices.astype(np.uint16 if cols <= 1 << 16 else np.uint32)
            arrays[f"{name}:indptr"] = csr.indptr.astype(np.uint32 if csr.nnz < 1 << 32 else np.uint64)
            arrays[f"{name}:shape"] = np.asarray(a.shape, np.int64)
        else:
            arrays[f"{name}:dense"] = a
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)
    tmp.replace(path)
    return path


def load_sparse(path: str | Path) -> dict[str, np.ndarray]:
    """The dense tensors of a save_sparse file, by name."""
    import scipy.sparse

    out: dict[str, np.ndarray] = {}
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = list(z.keys())
            for key in keys:
                name, kind = key.rsplit(":", 1)
                if kind == "dense":
                    out[name] = z[key]
                elif kind == "shape":
                    shape = tuple(int(s) for s in z[key])
                    rows = shape[0]
                    csr = scipy.sparse.csr_matrix((z[f"{name}:data"], z[f"{name}:indices"].astype(np.int64),
                                                   z[f"{name}:indptr"].astype(np.int64)),
                                                  shape=(rows, math.prod(shape) // max(rows, 1)))
                    out[name] = csr.toarray().reshape(shape)
    except (OSError, ValueError, KeyError) as e:
        raise DeployError(f"{path}: not a readable sparse weights file ({e}); write it again with "
                          "`nearfield compress`") from None
    return out


# --- the unstructured methods -------------------------------------------------------------------------------------

def _unstructured_method(how: str):
    name = f"prune-{how}"

    def build(source: str, out: str, data: str | None, options: dict[str, Any], manifest: Path) -> ZooModel:
        set_threads(options)
        src = resolve_source(source, manifest)
        model, config = load_torch_model(src)
        sparsity = option(options, "sparsity", 0.5, float, 0, 0.999, name)
        min_density = option(options, "min_density", 0.05, float, 0, 1, name)
        seed = option(options, "seed", config.train["seed"], int, 0, 2**31, name)
        steps = option(options, "steps", 20, int, 0, 10**7, name)
        masks = unstructured_masks(model, how, sparsity, min_density, seed)
        apply_masks(model, masks)
        losses = tune(model, config, data, steps, options, name, after_step=lambda m: apply_masks(m, masks))
        from deploy.export import export_onnx

        path = export_onnx(model, config, output_path(out, manifest))
        sparse_path = save_sparse(model.state_dict(), path.with_name(f"{out}.sparse.npz"), set(masks))
        dense_mb = sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 1e6
        sparse_mb = sparse_path.stat().st_size / 1e6
        densities = {n: round(float(m.float().mean()), 4) for n, m in masks.items()}
        recorded = {**options, "sparsity": sparsity, "min_density": min_density, "seed": seed,
                    "achieved_sparsity": round(sparsity_of(masks), 4), "sparse_file": sparse_path.name,
                    "sparse_size_mb": round(sparse_mb, 3), "dense_size_mb": round(dense_mb, 3),
                    "layer_density": densities, **loss_record(losses)}
        notes = (f"unstructured {how} pruning to {sparsity_of(masks):.1%} sparsity of the conv weights: the ONNX "
                 "holds the zeros densely, so it is neither smaller nor faster in onnxruntime or TensorRT; the "
                 f"size saving is the sparse weights file {sparse_path.name} ({sparse_mb:.2f} MB vs {dense_mb:.2f} "
                 "MB dense float32)")
        return register_output(out, path, src, name, "any", recorded, notes, manifest)

    build.__name__ = build.__qualname__ = f"{how}_method"
    build.__doc__ = f"`nearfield compress --method {name} --opt sparsity=0.5 --opt min_density=0.05`."
    return method(name, ("sparsity", "min_density", "seed", "steps", *TUNE_OPTIONS))(build)


for _how in UNSTRUCTURED:
    _unstructured_method(_how)


__all__ = ["FLOPS_COUNTER", "StructuredResult", "apply_masks", "count_flops", "count_params", "erk_densities",
           "erk_masks", "fixed_channel_layers", "global_masks", "lamp_scores", "load_sparse", "prunable_weights",
           "prune_structured", "save_sparse", "sparsity_of", "structured_method", "unstructured_masks"]
