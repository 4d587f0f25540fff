"""Backbone cost at the deploy resolution: parameters, multiply-accumulates (counted by forward hooks on conv
and linear layers) and CPU latency per batch (inference mode, warm-up, median of repeats)."""

from __future__ import annotations

import contextlib
import logging
import statistics
import time
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn
from tqdm import tqdm

from sensors.errors import ConfigError

from . import create_backbone

log = logging.getLogger(__name__)

DEPLOY_IMAGE_SIZE = (256, 192)  # (width, height) of each camera image fed to the encoder


def count_macs(model: nn.Module, x: Tensor) -> int:
    """Multiply-accumulates of one forward pass over `x` (whole batch) in Conv2d and Linear layers; norms,
    activations and pooling are not counted, as in the published figures. Works on the meta device."""
    total = 0

    def conv_hook(m: nn.Conv2d, _inputs, out: Tensor) -> None:
        nonlocal total
        kh, kw = m.kernel_size
        total += out.numel() * (m.in_channels // m.groups) * kh * kw

    def linear_hook(m: nn.Linear, _inputs, out: Tensor) -> None:
        nonlocal total
        total += out.numel() * m.in_features

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    try:
        with torch.inference_mode():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return total


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[None]:
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def bench_backbones(names: Sequence[str], image_size: tuple[int, int] = DEPLOY_IMAGE_SIZE, batch: int = 4,
                    threads: int | None = None, repeats: int = 10, warmup: int = 2,
                    width_mult: float = 1.0) -> list[dict]:
    """One row per backbone: name, width_mult, image_size (width, height), batch, threads, params (without
    head), macs and flops (= 2 x MACs) per image, ms_median / ms_min / ms_max per batch, ms_per_image."""
    width, height = image_size
    if width < 32 or height < 32 or width % 32 or height % 32:
        raise ConfigError(f"bench image_size {image_size}: width and height must be multiples of 32 (stride 32)")
    if batch < 1 or repeats < 1 or warmup < 0:
        raise ConfigError(f"bench: batch ({batch}) and repeats ({repeats}) must be >= 1, warmup ({warmup}) >= 0")
    rows = []
    with _threads(threads):
        for name in tqdm(names, desc="bench backbones", unit="model"):
            model = create_backbone(name, width_mult).eval()
            x = torch.randn(batch, 3, height, width)
            macs = count_macs(model, x[:1])
            times = []
            with torch.inference_mode():
                for _ in range(warmup):
                    model(x)
                for _ in range(repeats):
                    start = time.perf_counter()
                    model(x)
                    times.append((time.perf_counter() - start) * 1e3)
            median = statistics.median(times)
            row = {
                "name": name, "width_mult": width_mult, "image_size": (width, height), "batch": batch,
                "threads": torch.get_num_threads(), "params": sum(p.numel() for p in model.parameters()),
                "macs": macs, "flops": 2 * macs, "ms_median": median, "ms_min": min(times), "ms_max": max(times),
                "ms_per_image": median / batch,
            }
            log.info("%s: %.1f ms per batch of %d at %dx%d", name, median, batch, width, height)
            rows.append(row)
    return rows


def format_bench_table(rows: Sequence[dict]) -> str:
    """The rows of `bench_backbones` as a fixed-width text table."""
    lines = [f"{'backbone':<24}{'width':>6}{'params M':>10}{'GMAC/img':>10}{'ms/batch':>10}{'min':>8}{'max':>8}"
             f"{'ms/img':>8}"]
    for r in rows:
        lines.append(f"{r['name']:<24}{r['width_mult']:>6.2f}{r['params'] / 1e6:>10.2f}{r['macs'] / 1e9:>10.2f}"
                     f"{r['ms_median']:>10.1f}{r['ms_min']:>8.1f}{r['ms_max']:>8.1f}{r['ms_per_image']:>8.1f}")
    if rows:
        r = rows[0]
        lines.append(f"batch {r['batch']}, {r['image_size'][0]}x{r['image_size'][1]}, {r['threads']} threads, "
                     "median of repeats after warm-up")
    return "\n".join(lines)
