"""ResNet family: ResNet-18/34/50, ResNeXt-50 32x4d (the paper's encoder), IBN-Net-a and E2GC variants of
ResNeXt-50; features of the four residual stages at strides 4, 8, 16, 32.

E2GC (arXiv 2006.15100) keeps the channels per group G constant instead of the group count: the grouped 3x3
convolution of a stage with width C has C / G groups. `resnext50_e2gc_g{4,8,16}` keep ResNeXt-50 32x4d's stage
widths (128, 256, 512, 1024) and change only the grouping, so stage 1 of `_g4` equals 32x4d (32 groups of 4)
and deeper stages get more, thinner groups (fewer parameters and MACs); `_g8` and `_g16` move the crossover
to stages 2 and 3.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import Backbone, channel_divisor, check_width, make_divisible, model_table, on_meta

MODELS, named = model_table()


def conv_bn(in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1) -> tuple[nn.Conv2d, nn.Module]:
    conv = nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, groups=groups, bias=False)
    return conv, nn.BatchNorm2d(out_ch)


def shortcut(in_ch: int, out_ch: int, stride: int) -> nn.Module:
    """Identity when shapes match, else the projection (1x1 conv + BN) of the original ResNet ("option B")."""
    if stride == 1 and in_ch == out_ch:
        return nn.Identity()
    return nn.Sequential(*conv_bn(in_ch, out_ch, 1, stride))


class IBN(nn.Module):
    """IBN-Net's mixed normalisation: the first half of the channels (rounded down) through InstanceNorm with
    affine parameters (appearance invariance), the rest through BatchNorm (content discrimination)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.half = channels // 2
        self.IN = nn.InstanceNorm2d(self.half, affine=True)
        self.BN = nn.BatchNorm2d(channels - self.half)

    def forward(self, x: Tensor) -> Tensor:
        a, b = torch.split(x, (self.half, x.shape[1] - self.half), dim=1)
        return torch.cat((self.IN(a), self.BN(b)), dim=1)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions and a shortcut (ResNet-18/34)."""

    expansion = 1

    def __init__(self, in_ch: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1, self.bn1 = conv_bn(in_ch, planes, 3, stride)
        self.conv2, self.bn2 = conv_bn(planes, planes, 3)
        self.act = nn.ReLU(inplace=True)
        self.downsample = shortcut(in_ch, planes, stride)

    def forward(self, x: Tensor) -> Tensor:
        y = self.act(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.act(y + self.downsample(x))


class Bottleneck(nn.Module):
    """1x1 reduce to `width`, grouped 3x3 (stride here, as in torchvision's "ResNet v1.5"), 1x1 expand to
    4 x planes. `groups` > 1 makes it a ResNeXt block; `ibn` puts IBN in place of the first BatchNorm."""

    expansion = 4

    def __init__(self, in_ch: int, planes: int, stride: int = 1, width: int | None = None, groups: int = 1,
                 ibn: bool = False) -> None:
        super().__init__()
        width = width or planes
        out_ch = planes * self.expansion
        self.conv1 = nn.Conv2d(in_ch, width, 1, bias=False)
        self.bn1 = IBN(width) if ibn else nn.BatchNorm2d(width)
        self.conv2, self.bn2 = conv_bn(width, width, 3, stride, groups)
        self.conv3, self.bn3 = conv_bn(width, out_ch, 1)
        self.act = nn.ReLU(inplace=True)
        self.downsample = shortcut(in_ch, out_ch, stride)

    def forward(self, x: Tensor) -> Tensor:
        y = self.act(self.bn1(self.conv1(x)))
        y = self.act(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.act(y + self.downsample(x))


class ResNet(Backbone):
    """7x7/2 stem + 3x3/2 max-pool, then four stages of residual blocks (stride 1, 2, 2, 2).

    cardinality, base_width: ResNeXt's fixed group count and channels per group at stage 1 (1, 64 for ResNet).
    group_size: E2GC; the 3x3 width stays cardinality * base_width * 2**stage, groups become width / group_size.
    ibn_stages: stage indices (0-based) whose blocks use IBN-a.
    """

    def __init__(self, block: type[BasicBlock | Bottleneck], depths: tuple[int, ...], *, width_mult: float = 1.0,
                 in_chans: int = 3, cardinality: int = 1, base_width: int = 64, group_size: int | None = None,
                 ibn_stages: tuple[int, ...] = (), zero_init_last: bool = True, name: str = "resnet") -> None:
        super().__init__()
        check_width(width_mult, in_chans, name)
        stem = make_divisible(64 * width_mult, 8)
        self.stem = nn.Sequential(*conv_bn(in_chans, stem, 7, 2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
        # The grouped width is rounded so that every group keeps its size (E2GC) or the group count divides it.
        divisor = channel_divisor(group_size, None if group_size else cardinality)
        stages, channels, in_ch = [], [], stem
        for i, depth in enumerate(depths):
            planes = make_divisible(64 * 2**i * width_mult, 8)
            width = make_divisible(cardinality * base_width * 2**i * width_mult, divisor)
            groups = width // group_size if group_size else cardinality
            blocks = []
            for j in range(depth):
                stride = 2 if i > 0 and j == 0 else 1
                if block is Bottleneck:
                    blocks.append(Bottleneck(in_ch, planes, stride, width, groups, ibn=i in ibn_stages))
                else:
                    blocks.append(BasicBlock(in_ch, planes, stride))
                in_ch = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
            channels.append(in_ch)
        self.stages = nn.ModuleList(stages)
        self.out_channels = tuple(channels)
        self.strides = (4, 8, 16, 32)
        if not on_meta(self):
            self._init_weights(zero_init_last)

    def _init_weights(self, zero_init_last: bool) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d | nn.InstanceNorm2d) and m.weight is not None:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_last:
            # Each residual branch starts as identity: trains faster from scratch (Goyal et al. 2017).
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)
                elif isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)


@named("resnet18")
def resnet18(width_mult: float = 1.0, in_chans: int = 3, zero_init_last: bool = True) -> ResNet:
    return ResNet(BasicBlock, (2, 2, 2, 2), width_mult=width_mult, in_chans=in_chans,
                  zero_init_last=zero_init_last, name="resnet18")


@named("resnet34")
def resnet34(width_mult: float = 1.0, in_chans: int = 3, zero_init_last: bool = True) -> ResNet:
    return ResNet(BasicBlock, (3, 4, 6, 3), width_mult=width_mult, in_chans=in_chans,
                  zero_init_last=zero_init_last, name="resnet34")


@named("resnet50")
def resnet50(width_mult: float = 1.0, in_chans: int = 3, zero_init_last: bool = True) -> ResNet:
    return ResNet(Bottleneck, (3, 4, 6, 3), width_mult=width_mult, in_chans=in_chans,
                  zero_init_last=zero_init_last, name="resnet50")


@named("resnext50_32x4d")
def resnext50_32x4d(width_mult: float = 1.0, in_chans: int = 3, zero_init_last: bool = True) -> ResNet:
    return ResNet(Bottleneck, (3, 4, 6, 3), width_mult=width_mult, in_chans=in_chans, cardinality=32,
                  base_width=4, zero_init_last=zero_init_last, name="resnext50_32x4d")


@named("resnet50_ibn_a")
def resnet50_ibn_a(width_mult: float = 1.0, in_chans: int = 3, zero_init_last: bool = True) -> ResNet:
    return ResNet(Bottleneck, (3, 4, 6, 3), width_mult=width_mult, in_chans=in_chans, ibn_stages=(0, 1, 2),
                  zero_init_last=zero_init_last, name="resnet50_ibn_a")


def _resnext50_e2gc(group_size: int):
    name = f"resnext50_e2gc_g{group_size}"

    def build(width_mult: float = 1.0, in_chans: int = 3, zero_init_last: bool = True) -> ResNet:
        return ResNet(Bottleneck, (3, 4, 6, 3), width_mult=width_mult, in_chans=in_chans, cardinality=32,
                      base_width=4, group_size=group_size, zero_init_last=zero_init_last, name=name)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = f"ResNeXt-50 with the 32x4d stage widths and E2GC grouping: {group_size} channels per group."
    return named(name)(build)


for _g in (4, 8, 16):
    _resnext50_e2gc(_g)
