"""The backbone menu: every encoder of the network by name (`create_backbone("resnext50_32x4d")`), each a
`Backbone` returning multi-scale features; a family adds its models to its module's `MODELS` table."""

from __future__ import annotations

import difflib
import inspect

import torch

from sensors.errors import ConfigError

from . import inceptionnext, mobilenet, resnet
from .base import Backbone, Constructor, make_divisible

__all__ = ["Backbone", "count_params", "create_backbone", "list_backbones", "make_divisible", "register"]

_REGISTRY: dict[str, Constructor] = {}


def register(name: str, constructor: Constructor | None = None):
    """Add a constructor `(width_mult, in_chans, **options) -> Backbone` under `name`; usable as a decorator."""

    def add(fn: Constructor) -> Constructor:
        if name in _REGISTRY and _REGISTRY[name] is not fn:
            raise ConfigError(f"backbone {name!r} is already registered; pick another name")
        _REGISTRY[name] = fn
        return fn

    return add(constructor) if constructor is not None else add


for _family in (resnet, mobilenet, inceptionnext):
    for _name, _fn in _family.MODELS.items():
        register(_name, _fn)


def list_backbones() -> list[str]:
    return sorted(_REGISTRY)


def create_backbone(name: str, width_mult: float = 1.0, in_chans: int = 3, **kwargs) -> Backbone:
    """Build the named backbone. Options beyond width and input channels are the constructor's keywords
    (e.g. `zero_init_last` for the ResNet family); unknown names and options raise ConfigError."""
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, _REGISTRY, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ConfigError(f"unknown backbone {name!r}{hint}; known backbones: {', '.join(list_backbones())}")
    fn = _REGISTRY[name]
    accepted = set(inspect.signature(fn).parameters) - {"width_mult", "in_chans"}
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ConfigError(f"backbone {name!r} does not take option(s) {', '.join(unknown)}; "
                          f"it takes: {', '.join(sorted(accepted)) or 'no options'}")
    return fn(width_mult=width_mult, in_chans=in_chans, **kwargs)


def count_params(name: str, width_mult: float = 1.0, with_head: bool = True, num_classes: int = 1000) -> int:
    """Trainable parameters of the named backbone, plus its ImageNet head when `with_head` (the published count).
    Built on the meta device: shapes only, no memory or initialisation, so counting the big models is instant."""
    with torch.device("meta"):
        model = create_backbone(name, width_mult)
        head = model.classifier(num_classes) if with_head else torch.nn.Identity()
    return sum(p.numel() for p in model.parameters()) + sum(p.numel() for p in head.parameters())
