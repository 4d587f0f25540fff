"""What every backbone promises (multi-scale features at declared strides and channels, an ImageNet head for
parameter pinning) and the channel rounding that the width multiplier shares across families."""

from __future__ import annotations

import math
from collections.abc import Callable

from torch import Tensor, nn

from sensors.errors import ConfigError


class Backbone(nn.Module):
    """A feature extractor: `forward(x)` returns one map per entry of `strides`, highest resolution first,
    with `out_channels[i]` channels at 1/`strides[i]` of the input size. Subclasses build `stem` and one module
    per returned scale in `stages` (or override `forward`)."""

    out_channels: tuple[int, ...]
    strides: tuple[int, ...]
    stem: nn.Module
    stages: nn.ModuleList

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.stem(x)
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features

    def classifier(self, num_classes: int = 1000) -> nn.Module:
        """The family's ImageNet head over the last feature map (a new, untrained module each call)."""
        return PoolLinearHead(self.out_channels[-1], num_classes)


class PoolLinearHead(nn.Sequential):
    """Global average pool + fully connected layer: the head of ResNet and MobileNet."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__(nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(in_channels, num_classes))


def on_meta(module: nn.Module) -> bool:
    """True for a shapes-only build on the meta device (counting parameters and MACs): nothing to initialise,
    and skipping the init functions makes such a build several times faster."""
    return any(p.is_meta for p in module.parameters())


def make_divisible(value: float, divisor: int) -> int:
    """Round `value` to the nearest multiple of `divisor` (at least one multiple), never losing more than 10 %:
    the usual width-multiplier rounding, so that channel counts stay friendly to vector units and to groups."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def channel_divisor(group_size: int | None = None, groups: int | None = None) -> int:
    """The multiple a grouped layer's width must be rounded to: 8, and also the channels per group (E2GC) or the
    fixed group count (ResNeXt), so that `channels % groups == 0` holds at every width multiplier."""
    return math.lcm(8, group_size or 1, groups or 1)


def check_width(width_mult: float, in_chans: int, name: str) -> None:
    if not (isinstance(width_mult, int | float) and 0.0 < width_mult <= 8.0):
        raise ConfigError(f"backbone {name}: width_mult must be a number in (0, 8], got {width_mult!r}")
    if not (isinstance(in_chans, int) and in_chans >= 1):
        raise ConfigError(f"backbone {name}: in_chans must be a positive integer, got {in_chans!r}")


# A constructor takes (width_mult, in_chans, **options) and returns a Backbone.
Constructor = Callable[..., Backbone]


def model_table() -> tuple[dict[str, Constructor], Callable[[str], Callable[[Constructor], Constructor]]]:
    """A family module's menu: a dict of named constructors and the decorator that fills it."""
    table: dict[str, Constructor] = {}

    def named(name: str) -> Callable[[Constructor], Constructor]:
        def add(fn: Constructor) -> Constructor:
            table[name] = fn
            return fn

        return add

    return table, named
