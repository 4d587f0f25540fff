"""Where torch work runs: the device (--device auto, cpu, cuda, cuda:N), mixed precision (--amp) and the process
group of a torchrun. Shared by training, evaluation and the benchmarks."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from sensors.errors import ConfigError

log = logging.getLogger(__name__)

AMP_MODES = ("auto", "bf16", "fp16", "off")


@dataclass(frozen=True)
class Processes:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def init_processes(device: str = "auto") -> Processes:
    """Under torchrun (WORLD_SIZE > 1) join the process group: nccl on CUDA, gloo on CPU. Idempotent."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Processes()
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
        if cuda:
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if cuda else "gloo")
        log.info("rank %d of %d joined the process group (%s)", rank, world, dist.get_backend())
    return Processes(rank, world, local)


def resolve_device(name: str, procs: Processes = Processes()) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {name}: this torch build or machine has no CUDA; use --device cpu")
        return torch.device("cuda", procs.local_rank) if procs.world > 1 or name == "cuda" else torch.device(name)
    if name != "cpu":
        raise ConfigError(f"--device must be auto, cpu, cuda or cuda:N, got {name!r}")
    return torch.device("cpu")


def amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype (None: float32). AMP runs on CUDA only: CPU autocast is slower than float32 there."""
    if mode not in AMP_MODES:
        raise ConfigError(f"--amp must be one of {', '.join(AMP_MODES)}, got {mode!r}")
    if device.type != "cuda" or mode == "off":
        if mode in ("bf16", "fp16"):
            log.warning("--amp %s: mixed precision runs on CUDA only; training in float32 on %s", mode, device)
        return None
    if mode == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if mode == "bf16" else torch.float16


def to_device(batch: dict[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    """Every tensor of a batch on DEVICE (non-blocking from pinned memory)."""
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


__all__ = ["AMP_MODES", "Processes", "amp_dtype", "init_processes", "resolve_device", "to_device"]
