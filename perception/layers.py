"""Building blocks of the fusion network: the camera→BEV lift (one rank-4 grid_sample, masked mean over cameras),
the camera neck, the BEV encoder with content-aware dilated convolution, and the two-stage occupancy decoder."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F  # noqa: N812 - the universal torch idiom
from torch import Tensor, nn

from perception.backbones import create_backbone
from sensors.classes import NUM_CLASSES


class ConvBnAct(nn.Sequential):
    """Conv (no bias: BatchNorm follows) + BatchNorm + ReLU, "same" padding."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 3, dilation: int = 1) -> None:
        pad = dilation * (kernel // 2)
        super().__init__(nn.Conv2d(in_ch, out_ch, kernel, padding=pad, dilation=dilation, bias=False),
                         nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True))


def lift_to_bev(features: Tensor, grid: Tensor, valid: Tensor) -> Tensor:
    """Camera features into BEV, Simple-BEV style and parameter-free.

    features (B*N, C, Hf, Wf): one map per camera image, cameras of a sample contiguous.
    grid (B, N, Z*R, W, 2): normalised sampling positions (perception.tables), invalid entries outside [-1, 1].
    valid (B, N, Z, R, W): 1 where the camera sees the point; a missing camera is all 0.
    Returns (B, C*Z, R, W): the mean over the cameras that see each point (0 where none does), heights folded
    into channels (channel c*Z + z). The grid_sample is rank-4 on purpose: TensorRT parses only that.
    """
    B, N, ZR, W, _ = grid.shape
    Z, R = valid.shape[2], valid.shape[3]
    C = features.shape[1]
    sampled = F.grid_sample(features, grid.reshape(B * N, ZR, W, 2), mode="bilinear", padding_mode="zeros",
                            align_corners=False)  # (B*N, C, Z*R, W)
    sampled = sampled.reshape(B, N, C, Z * R, W)
    # Each camera's weight (1 / cameras seeing the point, or 0) on the small validity tensor, then one multiply-add
    # per camera: the same mean as (sampled * valid).sum(1) / count, but onnxruntime's ReduceSum over the camera axis
    # of the big tensor (with its multiply and divide) cost about as much as the GridSample itself
    # (deploy/docs/int8_cpu.md: 4.3 -> 2.9 ms per frame for nf-small on two threads).
    weight = (valid / valid.sum(dim=1, keepdim=True).clamp(min=1.0)).reshape(B, N, 1, Z * R, W)
    mean = sampled[:, 0] * weight[:, 0]
    for n in range(1, N):
        mean = mean + sampled[:, n] * weight[:, n]
    return mean.reshape(B, C * Z, R, W)  # (B, C, Z*R, W) -> channel c*Z + z


class CameraNeck(nn.Module):
    """FPN-lite over the stride 8/16/32 maps: 1x1 laterals to `channels`, upsample-add down to stride 8, one 3x3
    conv. Stride 8 keeps enough resolution for 0.1-0.2 m cells near the car at a fraction of stride 4's cost."""

    def __init__(self, in_channels: tuple[int, int, int], channels: int) -> None:
        super().__init__()
        self.laterals = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in in_channels)
        self.out = ConvBnAct(channels, channels, 3)

    def forward(self, feats: list[Tensor]) -> Tensor:
        """feats: the maps at strides 8, 16, 32 (highest resolution first) -> (.., channels, H/8, W/8)."""
        x = self.laterals[-1](feats[-1])
        for lateral, f in zip(reversed(self.laterals[:-1]), reversed(feats[:-1]), strict=True):
            y = lateral(f)
            # Explicit size: odd input sizes make the coarser map's 2x smaller by one than the finer map.
            x = y + F.interpolate(x, size=y.shape[-2:], mode="bilinear", align_corners=False)
        return self.out(x)


class ContentAwareDilatedConv(nn.Module):
    """One 3x3 kernel applied at every rate of `dilations` in parallel, mixed per pixel by a softmax gate that a
    small conv predicts from the input, plus a residual (Switchable Atrous Convolution, DetectoRS, generalised
    from two rates to several). Sharing the kernel means the gate chooses *how far apart* to look, not *what*
    to look for: the ultrasonic evidence is smeared along arcs and offset from the camera's view of the same
    object by a distance that varies with the scene, and the gate picks the reach that fits each cell."""

    def __init__(self, channels: int, dilations: tuple[int, ...] = (1, 2, 3)) -> None:
        super().__init__()
        self.dilations = tuple(int(d) for d in dilations)
        self.weight = nn.Parameter(torch.empty(channels, channels, 3, 3))
        self.bias = nn.Parameter(torch.zeros(channels))
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")
        hidden = max(8, channels // 4)
        self.gate_net = nn.Sequential(ConvBnAct(channels, hidden, 3), nn.Conv2d(hidden, len(self.dilations), 1))
        # A uniform gate at start: every rate gets the same share until the content says otherwise.
        nn.init.zeros_(self.gate_net[-1].weight)
        nn.init.zeros_(self.gate_net[-1].bias)
        self.norm = nn.BatchNorm2d(channels)
        self.act = nn.ReLU(inplace=True)

    def gate(self, x: Tensor) -> Tensor:
        """(B, D, H, W): per-pixel weights of the D dilation branches, a softmax over D."""
        return torch.softmax(self.gate_net(x), dim=1)

    def branches(self, x: Tensor) -> list[Tensor]:
        """The shared 3x3 kernel at each dilation, each (B, C, H, W) ("same" padding = the dilation)."""
        return [F.conv2d(x, self.weight, self.bias, padding=d, dilation=d) for d in self.dilations]

    def forward(self, x: Tensor) -> Tensor:
        g = self.gate(x)
        branches = self.branches(x)
        mixed = g[:, 0:1] * branches[0]
        for i in range(1, len(branches)):
            mixed = mixed + g[:, i:i + 1] * branches[i]
        return x + self.act(self.norm(mixed))


class BevEncoder(nn.Module):
    """A backbone over a BEV raster, decoded back to the raster's full resolution, then content-aware dilated
    convolution. Used for the ultrasonic raster (middle and late fusion, USS only) and for the joined
    camera + ultrasonic raster (early fusion).

    The decoder is FPN-style (1x1 laterals, upsample-add from stride 32 to 4), then an upsample to (R, W) with an
    explicit size (80 / 32 is not an integer) and a skip from the input raster itself: the echo arcs are sharp at
    full resolution and a stride-4 map alone would blur them by two cells at 0.2 m."""

    def __init__(self, backbone: str, width: float, in_chans: int, channels: int,
                 dilations: tuple[int, ...]) -> None:
        super().__init__()
        self.backbone = create_backbone(backbone, width, in_chans=in_chans)
        self.laterals = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in self.backbone.out_channels)
        self.fuse = ConvBnAct(channels + in_chans, channels, 3)
        self.dilated = ContentAwareDilatedConv(channels, dilations)

    def forward(self, raster: Tensor) -> Tensor:
        """raster (B, in_chans, R, W) -> (B, channels, R, W)."""
        feats = self.backbone(raster)
        x = self.laterals[-1](feats[-1])
        for lateral, f in zip(reversed(self.laterals[:-1]), reversed(feats[:-1]), strict=True):
            y = lateral(f)
            x = y + F.interpolate(x, size=y.shape[-2:], mode="bilinear", align_corners=False)
        x = F.interpolate(x, size=raster.shape[-2:], mode="bilinear", align_corners=False)
        return self.dilated(self.fuse(torch.cat([x, raster], dim=1)))


class TwoStageDecoder(nn.Module):
    """The semantic occupancy decoder: stage 1 says occupied or free (one logit per cell); stage 2 predicts the
    classes from the features concatenated with sigmoid(stage 1), so the class head knows where stage 1 found
    something and can spend its capacity on *what* it is."""

    def __init__(self, in_channels: int, channels: int, num_classes: int = NUM_CLASSES,
                 occupied_prior: float = 0.1) -> None:
        super().__init__()
        self.trunk = ConvBnAct(in_channels, channels, 3)
        self.stage1 = nn.Sequential(ConvBnAct(channels, channels, 3), nn.Conv2d(channels, 1, 1))
        self.stage2 = nn.Sequential(ConvBnAct(channels + 1, channels, 3), ConvBnAct(channels, channels, 3),
                                    nn.Conv2d(channels, num_classes, 1))
        # Start stage 1 at the prior share of occupied cells rather than 0.5 (focal-loss init, Lin et al. 2017):
        # the early loss is not spent learning that most of a car park is free.
        nn.init.constant_(self.stage1[-1].bias, math.log(occupied_prior / (1 - occupied_prior)))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x (B, in_channels, R, W) -> class logits (B, num_classes, R, W), occupancy logits (B, 1, R, W)."""
        f = self.trunk(x)
        occupancy = self.stage1(f)
        classes = self.stage2(torch.cat([f, torch.sigmoid(occupancy)], dim=1))
        return classes, occupancy
