"""Quantisation-aware training in plain torch: BatchNorm folded into the convolutions, per-channel symmetric weight
fake quantisation (8 bit, 4 bit as in AQT, ternary with BitNet b1.58's median scale) with a straight-through
estimator, 8-bit activation fake quantisation with ranges from running statistics."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from perception.layers import ContentAwareDilatedConv, TwoStageDecoder
from sensors.errors import ConfigError

SCHEMES: dict[str, int] = {"int8": 127, "int4": 7, "ternary": 1}  # weight scheme -> largest level (symmetric)


def quantise_weight(w: Tensor, scheme: str) -> tuple[Tensor, Tensor]:
    """(int levels (O, ...) int8, scale (O,) float) of W (O, ...) per output channel. int8 / int4: scale =
    max|W| / qmax (levels -qmax..qmax); ternary (BitNet b1.58 Reloaded): scale = median|W|, levels
    clip(round(W / scale), -1, 1)."""
    if scheme not in SCHEMES:
        raise ConfigError(f"weight scheme {scheme!r} is not one of {', '.join(SCHEMES)}")
    qmax = SCHEMES[scheme]
    flat = w.detach().reshape(w.shape[0], -1).abs()
    scale = flat.median(dim=1).values if scheme == "ternary" else flat.amax(dim=1) / qmax
    # A channel of zeros (or a ternary one with median 0) keeps a usable scale: its largest weight's.
    scale = torch.where(scale > 0, scale, flat.amax(dim=1).clamp(min=1e-8))
    view = (-1,) + (1,) * (w.dim() - 1)
    levels = torch.clamp(torch.round(w.detach() / scale.view(view)), -qmax, qmax)
    return levels.to(torch.int8), scale


class WeightFakeQuant(nn.Module):
    """A parametrization: the weight seen by the layer is its quantised value; gradients pass straight through to
    the float weight (straight-through estimator, identity gradient as in BitNet)."""

    def __init__(self, scheme: str) -> None:
        super().__init__()
        if scheme not in SCHEMES:
            raise ConfigError(f"weight scheme {scheme!r} is not one of {', '.join(SCHEMES)}")
        self.scheme = scheme

    def forward(self, w: Tensor) -> Tensor:
        levels, scale = quantise_weight(w, self.scheme)
        wq = levels.to(w.dtype) * scale.view((-1,) + (1,) * (w.dim() - 1))
        return w + (wq - w).detach()


class ActivationFakeQuant(nn.Module):
    """uint8 asymmetric fake quantisation of a tensor, range = running min/max (exponential average, the range
    always holding 0). Observes while `observing` (calibration) or training; quantises once `enabled`. Exported by
    torch.onnx as a QuantizeLinear / DequantizeLinear pair with constant scale and zero point."""

    def __init__(self, momentum: float = 0.9) -> None:
        super().__init__()
        self.momentum = momentum
        self.register_buffer("lo", torch.zeros(()))
        self.register_buffer("hi", torch.zeros(()))
        self.register_buffer("seen", torch.zeros((), dtype=torch.bool))
        self.enabled = False
        self.observing = False

    def qparams(self) -> tuple[float, int]:
        lo, hi = min(float(self.lo), 0.0), max(float(self.hi), 0.0)
        scale = max(hi - lo, 1e-8) / 255.0
        return scale, int(min(255, max(0, round(-lo / scale))))

    def forward(self, x: Tensor) -> Tensor:
        if (self.observing or self.training) and not torch.jit.is_tracing():
            with torch.no_grad():
                lo, hi = x.detach().min(), x.detach().max()
                if not bool(self.seen):
                    self.lo.copy_(lo)
                    self.hi.copy_(hi)
                    self.seen.fill_(True)
                else:
                    self.lo.mul_(self.momentum).add_((1 - self.momentum) * lo)
                    self.hi.mul_(self.momentum).add_((1 - self.momentum) * hi)
        if not self.enabled:
            return x
        scale, zero = self.qparams()
        return torch.fake_quantize_per_tensor_affine(x, scale, zero, 0, 255)


def fold_batchnorm(model: nn.Module, example: tuple[Tensor, ...]) -> int:
    """Fold every BatchNorm2d that directly follows a Conv2d (found by running EXAMPLE through MODEL) into that
    convolution, and the content-aware dilated convolution's norm into its shared kernel (its gate sums to 1, so
    BN(sum g_i conv_i) = sum g_i BN-folded conv_i). The folded BatchNorms become Identity. Returns how many were
    folded. Quantisation then sees the weights that the exported graph will hold."""
    # Convolution outputs by id, each kept alive with its entry: a freed output's id can be reused by a later tensor,
    # which paired a BatchNorm with the wrong convolution (seen as a channel mismatch on a clean CI run).
    produced: dict[int, tuple[nn.Conv2d, Tensor]] = {}
    pairs: list[tuple[nn.Conv2d, nn.BatchNorm2d]] = []
    hooks = []

    def reads(bn: nn.BatchNorm2d, inputs: tuple[Tensor, ...]) -> None:
        entry = produced.get(id(inputs[0]))
        if entry is not None and entry[1] is inputs[0]:
            pairs.append((entry[0], bn))

    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(lambda mod, i, o: produced.__setitem__(id(o), (mod, o))))
        elif isinstance(m, nn.BatchNorm2d):
            hooks.append(m.register_forward_pre_hook(reads))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(*example)
    finally:
        for h in hooks:
            h.remove()
    folded = {id(bn) for _, bn in pairs}
    with torch.no_grad():
        for conv, bn in pairs:
            k = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
            conv.weight.mul_(k.view(-1, 1, 1, 1))
            conv.bias = nn.Parameter((bias - bn.running_mean) * k + bn.bias)
        for m in model.modules():
            if isinstance(m, ContentAwareDilatedConv) and isinstance(m.norm, nn.BatchNorm2d):
                bn = m.norm
                k = bn.weight / torch.sqrt(bn.running_var + bn.eps)
                m.weight.mul_(k.view(-1, 1, 1, 1))
                m.bias.copy_((m.bias - bn.running_mean) * k + bn.bias)
                folded.add(id(bn))
    _replace_modules(model, lambda m: id(m) in folded, lambda m: nn.Identity())
    model.train(was_training)
    return len(folded)


def _replace_modules(model: nn.Module, match, make) -> None:
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if match(child):
                setattr(parent, name, make(child))


def first_and_last_layers(model: nn.Module) -> list[str]:
    """Module names of the first convolution of each backbone and the last convolution of each decoder head: the
    layers AQT keeps at 8 bits when the rest go lower."""
    names = {id(m): n for n, m in model.named_modules()}
    out = []
    for m in model.modules():
        if hasattr(m, "backbone") and isinstance(m.backbone, nn.Module):
            out.append(names[id(next(c for c in m.backbone.modules() if isinstance(c, nn.Conv2d)))])
        if isinstance(m, TwoStageDecoder):
            out += [names[id(m.stage1[-1])], names[id(m.stage2[-1])]]
    return out


class QatState:
    """What prepare_qat attached: weight scheme per quantised module and the activation quantisers."""

    def __init__(self) -> None:
        self.weights: dict[str, str] = {}  # module name -> scheme
        self.activations: list[ActivationFakeQuant] = []

    def observe(self, on: bool) -> None:
        for a in self.activations:
            a.observing = on

    def enable(self, on: bool = True) -> None:
        for a in self.activations:
            a.enabled = on


def prepare_qat(model: nn.Module, example: tuple[Tensor, ...], scheme: str = "int8", edge_scheme: str = "int8",
                float_outputs: tuple[str, ...] = ()) -> QatState:
    """Turn MODEL (a float FusionNet) into its fake-quantised self, in place: BatchNorm folded, weights of every
    convolution quantised per channel with SCHEME (first and last layers with EDGE_SCHEME), the input and output
    of every convolution 8-bit fake-quantised except the outputs of the modules named in FLOAT_OUTPUTS (layers
    feeding GridSample or the gate softmax). Activation quantisers start disabled: observe, then enable."""
    fold_batchnorm(model, example)
    edges = set(first_and_last_layers(model))
    state = QatState()
    for name, m in list(model.named_modules()):
        if not isinstance(m, (nn.Conv2d, ContentAwareDilatedConv)):
            continue
        s = edge_scheme if name in edges else scheme
        parametrize.register_parametrization(m, "weight", WeightFakeQuant(s))
        state.weights[name] = s
        m.input_quant = ActivationFakeQuant()
        m.register_forward_pre_hook(lambda mod, args: (mod.input_quant(args[0]), *args[1:]))
        state.activations.append(m.input_quant)
        if name not in float_outputs:
            m.output_quant = ActivationFakeQuant()
            m.register_forward_hook(lambda mod, args, out: mod.output_quant(out))
            state.activations.append(m.output_quant)
    return state


def bake_weights(model: nn.Module, state: QatState) -> dict[str, tuple[Tensor, Tensor]]:
    """Replace each weight parametrization by its quantised value (a plain parameter again, for export); returns
    parameter name -> (int8 levels, per-channel scale)."""
    modules = dict(model.named_modules())
    out = {}
    for name, scheme in state.weights.items():
        m = modules[name]
        levels, scale = quantise_weight(m.parametrizations.weight.original, scheme)
        parametrize.remove_parametrizations(m, "weight", leave_parametrized=False)
        with torch.no_grad():  # exactly on the grid (the straight-through sum w + (wq - w) is not, in float)
            m.weight.copy_(levels.to(m.weight.dtype) * scale.view((-1,) + (1,) * (m.weight.dim() - 1)))
        out[f"{name}.weight" if name else "weight"] = (levels, scale)
    return out


__all__ = ["SCHEMES", "ActivationFakeQuant", "QatState", "WeightFakeQuant", "bake_weights", "first_and_last_layers",
           "fold_batchnorm", "prepare_qat", "quantise_weight"]
