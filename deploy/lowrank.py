"""Low-rank factorisation as a deploy model (method 'lowrank': SVD of 1x1 convolutions, Tucker-2 of kxk ones, then
fine-tuning; a physically smaller network) and the zoo entry of a trained E2GC constant-group-size model ('e2gc'):
both make the convolutions themselves cheaper rather than removing whole channels or single weights."""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from deploy.compress import Source, load_torch_model, method, option, output_path, register_output, resolve_source
from deploy.distill import KD_OPTIONS, TUNE_OPTIONS, loss_record, set_threads, tune, wants_teacher
from deploy.zoo import MANIFEST, ZooModel, read_zoo
from perception.model import FusionNet
from sensors.errors import ConfigError

log = logging.getLogger(__name__)


# --- ranks --------------------------------------------------------------------------------------------------------

def rank_for(singular: Tensor, rank_ratio: float | None = None, energy: float | None = None) -> int:
    """How many of the descending SINGULAR values to keep: round(rank_ratio * their number), or the fewest whose
    squares hold ENERGY of the total; at least 1."""
    n = singular.numel()
    if energy is not None:
        sq = singular.double() ** 2
        share = torch.cumsum(sq, 0) / sq.sum().clamp(min=torch.finfo(torch.float64).tiny)
        return min(n, int(torch.searchsorted(share, torch.tensor(energy, dtype=torch.float64) - 1e-12)) + 1)
    return max(1, min(n, round((1.0 if rank_ratio is None else rank_ratio) * n)))


# --- factorisations -----------------------------------------------------------------------------------------------

def svd_factors(weight: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    """A 1x1 convolution's (O, I, 1, 1) weight as (I -> rank) then (rank -> O) 1x1 weights, the singular values
    split evenly (sqrt) between the two so neither factor's scale dominates fine-tuning."""
    c_out, c_in = weight.shape[:2]
    u, s, vh = torch.linalg.svd(weight.detach().reshape(c_out, c_in).double(), full_matrices=False)
    root = s[:rank].sqrt()
    first = (root[:, None] * vh[:rank]).reshape(rank, c_in, 1, 1)
    second = (u[:, :rank] * root[None]).reshape(c_out, rank, 1, 1)
    return first.to(weight.dtype), second.to(weight.dtype)


def tucker2_factors(weight: Tensor, rank_out: int, rank_in: int) -> tuple[Tensor, Tensor, Tensor]:
    """Tucker-2 of a kxk convolution's (O, I, kh, kw) weight by HOSVD over the output and input channel modes:
    (I -> rank_in 1x1, rank_in -> rank_out kxk core, rank_out -> O 1x1) weights. The factors are the leading left
    singular vectors of the mode unfoldings, the core the weight projected onto them; exact at full rank."""
    w = weight.detach().double()
    c_out, c_in = w.shape[:2]
    u_out = torch.linalg.svd(w.reshape(c_out, -1), full_matrices=False)[0][:, :rank_out]  # (O, R_out)
    u_in = torch.linalg.svd(w.transpose(0, 1).reshape(c_in, -1), full_matrices=False)[0][:, :rank_in]  # (I, R_in)
    core = torch.einsum("oikl,or,is->rskl", w, u_out, u_in)  # (R_out, R_in, kh, kw)
    first = u_in.t().reshape(rank_in, c_in, 1, 1)
    last = u_out.reshape(c_out, rank_out, 1, 1)
    return first.to(weight.dtype), core.to(weight.dtype), last.to(weight.dtype)


def mode_singular_values(weight: Tensor) -> tuple[Tensor, Tensor]:
    """Singular values of the output-channel and input-channel unfoldings (the ranks' evidence)."""
    w = weight.detach().double()
    return (torch.linalg.svdvals(w.reshape(w.shape[0], -1)),
            torch.linalg.svdvals(w.transpose(0, 1).reshape(w.shape[1], -1)))


def _conv(conv: nn.Conv2d, weight: Tensor, bias: Tensor | None, *, spatial: bool) -> nn.Conv2d:
    """A convolution with WEIGHT; a SPATIAL one takes CONV's stride, padding and dilation."""
    out_ch, in_ch, kh, kw = weight.shape
    kwargs = dict(stride=conv.stride, padding=conv.padding, dilation=conv.dilation, padding_mode=conv.padding_mode) \
        if spatial else {}
    new = nn.Conv2d(in_ch, out_ch, (kh, kw), bias=bias is not None, **kwargs)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias.detach())
    return new


def factorised(conv: nn.Conv2d, rank_out: int, rank_in: int | None = None) -> tuple[nn.Sequential, Tensor]:
    """CONV (groups 1) as thinner convolutions at the given ranks, and the weight they stand for: a 1x1 as SVD
    (I -> rank_out -> O), a kxk as Tucker-2 (I -> rank_in 1x1, kxk core, rank_out -> O 1x1)."""
    w = conv.weight
    c_out, c_in, kh, kw = w.shape
    if kh == kw == 1:
        first, second = svd_factors(w, rank_out)
        # stride and padding go to the first 1x1: a bias-free 1x1 commutes with subsampling and zero padding
        seq = nn.Sequential(_conv(conv, first, None, spatial=True), _conv(conv, second, conv.bias, spatial=False))
        return seq, (second.reshape(c_out, rank_out).double() @ first.reshape(rank_out, c_in).double()).reshape(w.shape)
    rank_in = rank_out if rank_in is None else rank_in
    first, core, last = tucker2_factors(w, rank_out, rank_in)
    seq = nn.Sequential(_conv(conv, first, None, spatial=False), _conv(conv, core, None, spatial=True),
                        _conv(conv, last, conv.bias, spatial=False))
    return seq, torch.einsum("rskl,or,si->oikl", core.double(), last.reshape(c_out, rank_out).double(),
                             first.reshape(rank_in, c_in).double())


def factorise_conv(conv: nn.Conv2d, rank_ratio: float | None = None, energy: float | None = None
                   ) -> tuple[nn.Sequential, float] | None:
    """CONV factorised at the ranks that RANK_RATIO or ENERGY pick, and the relative Frobenius error of the weight
    it stands for; None where that would not save parameters (or the conv is grouped)."""
    if conv.groups != 1:
        return None
    c_out, c_in, kh, kw = conv.weight.shape
    s_out, s_in = mode_singular_values(conv.weight)
    r_out, r_in = rank_for(s_out, rank_ratio, energy), rank_for(s_in, rank_ratio, energy)
    if kh == kw == 1:
        r_out = r_in = min(r_out, r_in)  # one rank: the matrix's singular values are those of both unfoldings
        cost = r_out * (c_out + c_in)
    else:
        cost = c_in * r_in + r_in * r_out * kh * kw + r_out * c_out
    if cost >= c_out * c_in * kh * kw:
        return None
    seq, approx = factorised(conv, r_out, r_in)
    w = conv.weight.detach().double()
    return seq, float(torch.linalg.norm(approx - w) / torch.linalg.norm(w).clamp(min=1e-30))


@dataclass
class LowRankResult:
    params_before: int
    params_after: int
    layers: dict[str, dict[str, Any]]  # conv name -> {"ranks": [...], "error": relative weight error}


def factorise_model(model: nn.Module, rank_ratio: float | None = None, energy: float | None = None) -> LowRankResult:
    """Replace, in place, every nn.Conv2d of MODEL whose factorisation saves parameters (SVD for 1x1, Tucker-2 for
    kxk; grouped ones and functional kernels such as the content-aware dilated convolution's stay)."""
    if (rank_ratio is None) == (energy is None):
        raise ConfigError("lowrank: give exactly one of rank_ratio (share of each rank kept) or energy (share of "
                          "the squared singular values kept)")
    if rank_ratio is not None and not 0 < rank_ratio <= 1:
        raise ConfigError(f"lowrank: rank_ratio must lie in (0, 1], got {rank_ratio}")
    if energy is not None and not 0 < energy <= 1:
        raise ConfigError(f"lowrank: energy must lie in (0, 1], got {energy}")
    before = sum(p.numel() for p in model.parameters())
    layers: dict[str, dict[str, Any]] = {}
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    for name, conv in convs:
        made = factorise_conv(conv, rank_ratio, energy)
        if made is None:
            continue
        seq, error = made
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, seq)
        ranks = [seq[0].out_channels] + ([seq[1].out_channels] if len(seq) == 3 else [])
        layers[name] = {"ranks": ranks, "error": round(error, 5)}
    return LowRankResult(before, sum(p.numel() for p in model.parameters()), layers)


@method("lowrank", ("energy", "rank_ratio", "steps", *TUNE_OPTIONS, *KD_OPTIONS))
def lowrank_method(source: str, out: str, data: str | None, options: dict[str, Any], manifest: Path) -> ZooModel:
    """`nearfield compress --method lowrank --opt rank_ratio=0.5` (or `--opt energy=0.9`): factorise, fine-tune
    --steps on --data, export the thinner network."""
    from deploy.export import export_onnx
    from deploy.prune import count_flops

    name = "lowrank"
    set_threads(options)
    src = resolve_source(source, manifest)
    model, config = load_torch_model(src)
    energy = option(options, "energy", None, float, 1e-6, 1, name)
    ratio = option(options, "rank_ratio", None if energy is not None else 0.5, float, 1e-6, 1, name)
    steps = option(options, "steps", 20, int, 0, 10**7, name)
    flops_before = count_flops(model, config)
    teacher = copy.deepcopy(model).eval() if wants_teacher(options) else None
    result = factorise_model(model, ratio, energy)
    if not result.layers:
        raise ConfigError(f"lowrank: no convolution of {source} gets cheaper at rank_ratio={ratio} energy={energy}; "
                          "lower it")
    flops_after = count_flops(model, config)
    losses = tune(model, config, data, steps, options, name, teacher=teacher)
    path = export_onnx(model, config, output_path(out, manifest))
    recorded = {**options, "rank_ratio": ratio, "energy": energy, "params_before": result.params_before,
                "params_after": result.params_after, "gflops_before": round(flops_before / 1e9, 4),
                "gflops_after": round(flops_after / 1e9, 4), "layers": result.layers, **loss_record(losses)}
    notes = (f"{len(result.layers)} convolutions factorised (SVD 1x1, Tucker-2 kxk): "
             f"{result.params_after / result.params_before:.2f} of the parameters, {flops_after / flops_before:.2f} "
             "of the FLOPs; thinner layers in the ONNX, so the saving is real on every backend (small 1x1 layers "
             "may not run proportionally faster)")
    return register_output(out, path, src, name, "any", recorded, notes, manifest)


# --- E2GC ---------------------------------------------------------------------------------------------------------

def e2gc_group_sizes(model: FusionNet) -> dict[str, int]:
    """Which encoders of MODEL are E2GC backbones (`*_e2gc_g{G}`), with their channels per group G."""
    config = model.config
    out = {}
    for branch in ("camera", "uss"):
        backbone = getattr(config, f"{branch}_backbone")
        used = config.uses_camera if branch == "camera" else config.uses_uss
        if used and "_e2gc_g" in backbone:
            out[branch] = int(backbone.rsplit("_e2gc_g", 1)[1])
    return out


def register_e2gc(trained: str, out: str, manifest: str | Path = MANIFEST, baseline: str | None = None) -> ZooModel:
    """Export a trained model with an E2GC constant-group-size backbone into the zoo as method 'e2gc' (the
    training is `nearfield train` with such a backbone; this records what makes it a compression variant).
    BASELINE: the zoo model with the fixed-group-count backbone it is compared with (trained the same way); it
    becomes the entry's parent, so `zoo measure` times the two in the same run and the zoo lists the ratio."""
    src = resolve_source(trained, manifest)
    model, config = load_torch_model(src)
    sizes = e2gc_group_sizes(model)
    if not sizes:
        raise ConfigError(f"e2gc: {trained} uses backbones {config.camera_backbone} / {config.uss_backbone}; train "
                          "one with an E2GC backbone (e.g. camera_backbone = \"resnext50_e2gc_g8\") first")
    if baseline is not None:
        zoo = read_zoo(manifest)
        if baseline not in zoo:
            raise ConfigError(f"e2gc: --opt baseline={baseline} is not a zoo model ({', '.join(zoo) or 'empty zoo'});"
                              " export the fixed-group-count model first (nearfield export --model M --register M)")
        if zoo[baseline].bev != src.bev:
            raise ConfigError(f"e2gc: baseline {baseline} has another BEV grid or image size than {trained}; the "
                              "comparison needs the same inputs")
        src = Source(baseline, src.bev, zoo[baseline], src.trained)
    grouped = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    from deploy.export import export_onnx

    path = export_onnx(model, config, output_path(out, Path(manifest)))
    options = {"group_size": sizes, "camera_backbone": config.camera_backbone, "uss_backbone": config.uss_backbone,
               "grouped_convs": len(grouped), "params": sum(p.numel() for p in model.parameters()),
               "trained": trained, "baseline": baseline}
    notes = (f"E2GC backbone(s) {', '.join(f'{b}: {g} channels per group' for b, g in sizes.items())} (constant "
             "group size instead of a constant group count; arXiv 2006.15100)")
    if baseline is not None:
        notes += f"; parent = the fixed-group-count model it is compared with ({baseline}), trained the same way"
    return register_output(out, path, src, "e2gc", "any", options, notes, Path(manifest))


@method("e2gc", ("baseline",))
def e2gc_method(source: str, out: str, data: str | None, options: dict[str, Any], manifest: Path) -> ZooModel:
    """`nearfield compress --method e2gc --from TRAINED [--opt baseline=ZOO_MODEL]`: the zoo entry of a trained E2GC
    model (nothing is changed), compared with BASELINE, the fixed-group-count model trained the same way."""
    set_threads(options)
    baseline = options.get("baseline")
    return register_e2gc(source, out, manifest, str(baseline) if baseline is not None else None)


__all__ = ["LowRankResult", "e2gc_group_sizes", "e2gc_method", "factorise_conv", "factorise_model", "factorised",
           "lowrank_method", "mode_singular_values", "rank_for", "register_e2gc", "svd_factors",
           "tucker2_factors"]
