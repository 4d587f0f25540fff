"""Training and inference speed of the fusion network: `nearfield bench train` and `nearfield bench model`."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from functools import partial
from typing import Any

import torch

from perception.devices import amp_dtype, resolve_device
from perception.losses import OccupancyLoss
from perception.model import FusionNet, ModelConfig, dummy_inputs
from perception.train import train_step
from sensors.classes import NUM_CLASSES


def _median_ms(fn, repeats: int, warmup: int, device: torch.device) -> float:
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def bench_train(config: ModelConfig, batch_size: int | None = None, threads: Sequence[int] = (1, 2),
                steps: int = 5, warmup: int = 2, device: str = "cpu") -> list[dict[str, Any]]:
    """Training throughput on synthetic batches (dummy_inputs, random targets): forward, loss, backward, AdamW
    step; data loading not included. One row per thread count (CPU) or one row (CUDA)."""
    dev = resolve_device(device)
    batch = batch_size or config.train["batch_size"]
    rows = []
    before = torch.get_num_threads()
    try:
        for n in (threads if dev.type == "cpu" else (before,)):
            torch.set_num_threads(n)
            torch.manual_seed(0)
            model = FusionNet(config).to(dev).train()
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
            loss_fn = OccupancyLoss().to(dev)
            images, grid, valid, uss = (x.to(dev) for x in dummy_inputs(config, batch))
            S = config.bev.size
            target = torch.randint(0, NUM_CLASSES, (batch, S, S), generator=torch.Generator().manual_seed(0)).to(dev)
            scaler = torch.amp.GradScaler(dev.type, enabled=False)
            b = {"images": images, "grid": grid, "valid": valid, "uss": uss, "target": target}
            step = partial(train_step, model, b, loss_fn, optimizer, scaler, amp_dtype("auto", dev), 5.0)
            ms = _median_ms(step, steps, warmup, dev)
            rows.append({"config": config.name, "device": str(dev), "threads": n, "batch": batch,
                         "ms_per_step": ms, "samples_per_s": batch / ms * 1e3})
    finally:
        torch.set_num_threads(before)
    return rows


def bench_network(config: ModelConfig, batches: Sequence[int] = (1, 4), repeats: int = 5, warmup: int = 2,
                  device: str = "cpu") -> list[dict[str, Any]]:
    """Inference latency of the whole network (inputs ready; tables and rasters not included) per batch size."""
    dev = resolve_device(device)
    torch.manual_seed(0)
    model = FusionNet(config).to(dev).eval()
    rows = []
    for b in batches:
        inputs = [x.to(dev) for x in dummy_inputs(config, b)]
        with torch.inference_mode():
            ms = _median_ms(partial(model, *inputs), repeats, warmup, dev)
        rows.append({"name": config.name, "batch": b, "ms_per_batch": ms, "ms_per_frame": ms / b,
                     "threads": torch.get_num_threads(), "device": str(dev)})
    return rows
