"""MobileNet-V1 (1.0-224 layout, BatchNorm after every convolution) and its E2GC variants; features at strides
4, 8, 16, 32 (the last layer of each resolution).

E2GC (arXiv 2006.15100): `mobilenet_v1_e2gc_g{4,8,16}` replace every 3x3 depthwise convolution (groups = C) with
a group convolution of G channels per group (groups = C / G), the pointwise layers unchanged. Parameters and
MACs of each 3x3 layer grow by the factor G; the pointwise layers still dominate.
"""

from __future__ import annotations

from torch import nn

from .base import Backbone, channel_divisor, check_width, make_divisible, model_table, on_meta

MODELS, named = model_table()

# (output channels, stride) of the separable layers after the 32-channel stem, grouped by output resolution.
LAYOUT: tuple[tuple[tuple[int, int], ...], ...] = (
    ((64, 1),),  # stride 2: joins the stem, not returned
    ((128, 2), (128, 1)),
    ((256, 2), (256, 1)),
    ((512, 2),) + ((512, 1),) * 5,
    ((1024, 2), (1024, 1)),
)


class SeparableConv(nn.Sequential):
    """3x3 depthwise (or grouped) conv + BN + ReLU, then 1x1 pointwise conv + BN + ReLU."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, groups: int) -> None:
        super().__init__(
            nn.Conv2d(in_ch, in_ch, 3, stride, 1, groups=groups, bias=False), nn.BatchNorm2d(in_ch),
            nn.ReLU(inplace=True),
            nn.Conv2d(in_ch, out_ch, 1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True),
        )


class MobileNetV1(Backbone):
    """group_size None: depthwise (the original); an integer G: E2GC with C / G groups in every 3x3 layer."""

    def __init__(self, *, width_mult: float = 1.0, in_chans: int = 3, group_size: int | None = None,
                 name: str = "mobilenet_v1") -> None:
        super().__init__()
        check_width(width_mult, in_chans, name)
        divisor = channel_divisor(group_size)

        def ch(c: int) -> int:
            return make_divisible(c * width_mult, divisor)

        def groups(c: int) -> int:
            return c // group_size if group_size else c

        in_ch = ch(32)
        levels: list[list[nn.Module]] = []
        for level in LAYOUT:
            levels.append([])
            for out, stride in level:
                levels[-1].append(SeparableConv(in_ch, ch(out), stride, groups(in_ch)))
                in_ch = ch(out)
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, ch(32), 3, 2, 1, bias=False), nn.BatchNorm2d(ch(32)), nn.ReLU(inplace=True),
            *levels[0],
        )
        self.stages = nn.ModuleList(nn.Sequential(*level) for level in levels[1:])
        self.out_channels = tuple(ch(level[-1][0]) for level in LAYOUT[1:])
        self.strides = (4, 8, 16, 32)
        if not on_meta(self):
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


@named("mobilenet_v1")
def mobilenet_v1(width_mult: float = 1.0, in_chans: int = 3) -> MobileNetV1:
    return MobileNetV1(width_mult=width_mult, in_chans=in_chans)


def _mobilenet_v1_e2gc(group_size: int):
    name = f"mobilenet_v1_e2gc_g{group_size}"

    def build(width_mult: float = 1.0, in_chans: int = 3) -> MobileNetV1:
        return MobileNetV1(width_mult=width_mult, in_chans=in_chans, group_size=group_size, name=name)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = f"MobileNet-V1 with E2GC grouping: {group_size} channels per group in every 3x3 layer."
    return named(name)(build)


for _g in (4, 8, 16):
    _mobilenet_v1_e2gc(_g)
