"""Training batches and augmentations: the global batches of an epoch split over data-parallel processes, and
augmentations seeded per (seed, epoch, sample) so that a sample is augmented the same in any worker, process or
resumed run (perception.train)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler
from torch.utils.data.distributed import DistributedSampler

from perception.model import ModelConfig
from sensors.errors import ConfigError


class UssDropout:
    """Training augmentation: with probability p the ultrasonic raster is zeroed (a failed USS bus), so the
    fusion network learns to keep working on the cameras alone."""

    def __init__(self, p: float = 0.1):
        if not 0 <= p <= 1:
            raise ConfigError(f"UssDropout: p must be a probability in [0, 1], got {p}")
        self.p = p

    def __call__(self, item: dict[str, Tensor]) -> dict[str, Tensor]:
        if torch.rand(()) >= self.p:
            return item
        return {**item, "uss": torch.zeros_like(item["uss"])}


def sample_seed(seed: int, epoch: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


class SeededAugment(Dataset):
    """Items keyed (index, epoch); the augmentations draw from torch's generator seeded by (seed, epoch, index)
    in a forked RNG scope, so a sample is augmented the same in any worker, process or resumed run."""

    def __init__(self, dataset: Dataset, seed: int, augments: Sequence = ()):
        self.dataset, self.seed, self.augments = dataset, seed, tuple(augments)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Tensor]:
        index, epoch = key
        item = self.dataset[index]
        if not self.augments:
            return item
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed(self.seed, epoch, index))
            for augment in self.augments:
                item = augment(item)
        return item


def training_augments(config: ModelConfig) -> list:
    from perception.dataset import CameraDropout, PhotometricJitter

    out: list = [PhotometricJitter()]
    if (config.train["camera_dropout"] > 0 or config.train["camera_blackout"] > 0) and config.uses_camera:
        out.append(CameraDropout(config.train["camera_dropout"], config.train["camera_blackout"]))
    if config.train["uss_dropout"] > 0 and config.uses_uss:
        out.append(UssDropout(config.train["uss_dropout"]))
    return out


class GlobalBatches(Sampler[list[tuple[int, int]]]):
    """The batches of one epoch for one process, from optimizer step `start` of the epoch on.

    Global batch k is positions k*B..(k+1)*B of DistributedSampler's permutation seeded by (seed, epoch) (B =
    batch_size); each of `world` processes takes B/world of it (DistributedSampler interleaves ranks, so rank r
    gets every world-th position of those). A partial last batch is dropped. Yields lists of (index, epoch)."""

    def __init__(self, n: int, batch_size: int, seed: int, epoch: int, rank: int = 0, world: int = 1, start: int = 0):
        if batch_size % world:
            raise ConfigError(f"train.batch_size {batch_size} must be a multiple of the {world} processes (it is "
                              "the global batch, split evenly)")
        self.n, self.batch, self.seed, self.epoch, self.rank, self.world = n, batch_size, seed, epoch, rank, world
        self.steps = n // batch_size
        self.start = start

    def __len__(self) -> int:
        return max(self.steps - self.start, 0)

    def __iter__(self):
        sampler = DistributedSampler(range(self.n), num_replicas=self.world, rank=self.rank, shuffle=True,
                                     seed=self.seed, drop_last=True)
        sampler.set_epoch(self.epoch)
        indices = list(sampler)
        b = self.batch // self.world
        for k in range(self.start, self.steps):
            yield [(int(i), self.epoch) for i in indices[k * b:(k + 1) * b]]


__all__ = ["GlobalBatches", "SeededAugment", "UssDropout", "sample_seed", "training_augments"]
