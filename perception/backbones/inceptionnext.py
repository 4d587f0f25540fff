"""InceptionNeXt (arXiv 2303.16900): ConvNeXt-style MetaNeXt blocks whose token mixer splits the channels into
an identity band and three depthwise bands (3x3, 1xk, kx1); features of the four stages at strides 4, 8, 16, 32.

Layout as in the authors' code (sail-sg/inceptionnext): 4x4/4 conv + BN stem; each later stage starts with
BN + 2x2/2 conv; block = mixer -> BN -> 1x1 MLP (GELU) -> layer scale (init 1e-6) + shortcut; MLP ratios
(4, 4, 4, 3); head = global pool -> fc (3x) -> GELU -> LayerNorm -> fc. Tiny: depths (3, 3, 9, 3), dims
(96, 192, 384, 768), band kernel 11, branch ratio 1/8. Atto: depths (2, 2, 6, 2), dims (40, 80, 160, 320), band
kernel 9, branch ratio 1/4.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import Backbone, check_width, make_divisible, model_table, on_meta

MODELS, named = model_table()


class InceptionDWConv2d(nn.Module):
    """Token mixer: of C channels, `int(C * branch_ratio)` each go through a 3x3, a 1xk and a kx1 depthwise
    conv; the rest pass unchanged (most channels need no spatial mixing, which keeps the mixer cheap)."""

    def __init__(self, dim: int, band_kernel: int = 11, branch_ratio: float = 0.125, square_kernel: int = 3) -> None:
        super().__init__()
        gc = int(dim * branch_ratio)
        self.dwconv_hw = nn.Conv2d(gc, gc, square_kernel, padding=square_kernel // 2, groups=gc)
        self.dwconv_w = nn.Conv2d(gc, gc, (1, band_kernel), padding=(0, band_kernel // 2), groups=gc)
        self.dwconv_h = nn.Conv2d(gc, gc, (band_kernel, 1), padding=(band_kernel // 2, 0), groups=gc)
        self.split = (dim - 3 * gc, gc, gc, gc)

    def forward(self, x: Tensor) -> Tensor:
        x_id, x_hw, x_w, x_h = torch.split(x, self.split, dim=1)
        return torch.cat((x_id, self.dwconv_hw(x_hw), self.dwconv_w(x_w), self.dwconv_h(x_h)), dim=1)


class MetaNeXtBlock(nn.Module):
    def __init__(self, dim: int, mlp_ratio: float, band_kernel: int, branch_ratio: float,
                 ls_init: float = 1e-6) -> None:
        super().__init__()
        hidden = int(mlp_ratio * dim)
        self.token_mixer = InceptionDWConv2d(dim, band_kernel, branch_ratio)
        self.norm = nn.BatchNorm2d(dim)
        self.mlp = nn.Sequential(nn.Conv2d(dim, hidden, 1), nn.GELU(), nn.Conv2d(hidden, dim, 1))
        self.gamma = nn.Parameter(torch.full((dim,), ls_init))

    def forward(self, x: Tensor) -> Tensor:
        y = self.mlp(self.norm(self.token_mixer(x)))
        return x + y * self.gamma.view(1, -1, 1, 1)


class MlpHead(nn.Module):
    """InceptionNeXt's classifier: an MLP with hidden ratio 3 instead of a single linear layer."""

    def __init__(self, dim: int, num_classes: int = 1000, mlp_ratio: float = 3.0) -> None:
        super().__init__()
        hidden = int(mlp_ratio * dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.norm = nn.LayerNorm(hidden, eps=1e-6)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.norm(self.act(self.fc1(x.mean((2, 3))))))


class InceptionNeXt(Backbone):
    def __init__(self, depths: tuple[int, ...], dims: tuple[int, ...], *, band_kernel: int, branch_ratio: float,
                 mlp_ratios: tuple[float, ...] = (4, 4, 4, 3), width_mult: float = 1.0, in_chans: int = 3,
                 name: str = "inceptionnext") -> None:
        super().__init__()
        check_width(width_mult, in_chans, name)
        dims = tuple(make_divisible(d * width_mult, 8) for d in dims)
        self.stem = nn.Sequential(nn.Conv2d(in_chans, dims[0], 4, 4), nn.BatchNorm2d(dims[0]))
        stages = []
        for i, (depth, dim) in enumerate(zip(depths, dims, strict=True)):
            down = [] if i == 0 else [nn.BatchNorm2d(dims[i - 1]), nn.Conv2d(dims[i - 1], dim, 2, 2)]
            blocks = [MetaNeXtBlock(dim, mlp_ratios[i], band_kernel, branch_ratio) for _ in range(depth)]
            stages.append(nn.Sequential(*down, *blocks))
        self.stages = nn.ModuleList(stages)
        self.out_channels = dims
        self.strides = (4, 8, 16, 32)
        if not on_meta(self):
            for m in self.modules():
                if isinstance(m, nn.Conv2d | nn.Linear):
                    nn.init.trunc_normal_(m.weight, std=0.02)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)

    def classifier(self, num_classes: int = 1000) -> nn.Module:
        return MlpHead(self.out_channels[-1], num_classes)


@named("inceptionnext_atto")
def inceptionnext_atto(width_mult: float = 1.0, in_chans: int = 3) -> InceptionNeXt:
    return InceptionNeXt((2, 2, 6, 2), (40, 80, 160, 320), band_kernel=9, branch_ratio=0.25,
                         width_mult=width_mult, in_chans=in_chans, name="inceptionnext_atto")


@named("inceptionnext_tiny")
def inceptionnext_tiny(width_mult: float = 1.0, in_chans: int = 3) -> InceptionNeXt:
    return InceptionNeXt((3, 3, 9, 3), (96, 192, 384, 768), band_kernel=11, branch_ratio=0.125,
                         width_mult=width_mult, in_chans=in_chans, name="inceptionnext_tiny")
