"""Data-parallel training: two gloo processes on the CPU, each with half of every global batch and gradients
averaged by DDP, end with the weights of one process trained on the whole batches.

What makes the two runs comparable (perception/train.py explains the general case): BatchNorm layers keep their
running statistics (freeze_bn), since per-process batch statistics over half a batch differ from those over the
whole; and class_weight_power 0 (uniform class weights), so that each process's weighted-mean loss has the same
denominator (every target has the same ego footprint) and the average of the two halves' gradients is the
whole batch's gradient. Augmentation stays on: it is seeded per sample, not per process."""

import os
import socket

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from perception.bev_config import BevConfig  # noqa: E402
from perception.checkpoint import checkpoint_file  # noqa: E402
from perception.model import ModelConfig, dummy_inputs  # noqa: E402
from perception.tables import camera_tables  # noqa: E402
from perception.train import TrainOptions, train  # noqa: E402
from sensors.classes import IGNORE, NUM_CLASSES  # noqa: E402

BEV = BevConfig(extent=6.4, cell=0.2, heights=(0.25, 0.75), image_size=(64, 48))
CONFIG = ModelConfig(name="tiny-ddp", camera_width=0.125, uss_width=0.125, neck_channels=8, bev_channels=8,
                     decoder_channels=8, bev=BEV).replace(
    train={"batch_size": 4, "epochs": 2, "lr": 3e-3, "num_workers": 0, "class_weight_power": 0.0,
           "camera_dropout": 0.5, "uss_dropout": 0.5})
STEPS = 3
OPTIONS = {"max_steps": STEPS, "freeze_bn": True, "threads": 1, "progress": False, "device": "cpu"}


class Synthetic(torch.utils.data.Dataset):
    """8 frames: random images and raster on the default rig's tables, block-shaped targets with the ego cells
    (a fixed square) ignored."""

    def __init__(self, seed: int = 0):
        from sensors.rig import load_rig

        tables = camera_tables(load_rig(), BEV)
        self.grid, self.valid = torch.from_numpy(tables.grid), torch.from_numpy(tables.valid)
        self.images, _, _, self.uss = dummy_inputs(CONFIG, batch=8, seed=seed)
        rng = np.random.default_rng(seed)
        S = BEV.size
        blocks = rng.integers(0, NUM_CLASSES, (8, S // 4, S // 4))
        target = np.kron(blocks, np.ones((4, 4), np.int64))
        target[:, 12:20, 14:18] = IGNORE
        self.target = torch.from_numpy(target)

    def __len__(self):
        return 8

    def __getitem__(self, i):
        return {"images": self.images[i], "grid": self.grid, "valid": self.valid, "uss": self.uss[i],
                "target": self.target[i]}

    def label_counts(self):
        t = self.target[self.target != IGNORE]
        return np.bincount(t.numpy(), minlength=NUM_CLASSES)


def _worker(rank: int, port: int, out: str) -> None:
    # What torchrun sets; train() joins the group from these.
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    try:
        train(CONFIG, Synthetic(), None, out, TrainOptions(**OPTIONS))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_processes_match_one_process_on_the_same_global_batch(tmp_path):
    n = torch.get_num_threads()
    try:
        single = train(CONFIG, Synthetic(), None, tmp_path / "one", TrainOptions(**OPTIONS))
    finally:
        torch.set_num_threads(n)
    assert single.steps == STEPS
    mp.spawn(_worker, args=(_free_port(), str(tmp_path / "two")), nprocs=2, join=True)

    one, two = (load_file(str(checkpoint_file(tmp_path / d, "last"))) for d in ("one", "two"))
    torch.manual_seed(CONFIG.train["seed"])
    from perception.model import FusionNet

    init = FusionNet(CONFIG).state_dict()
    moved = max((one[k] - init[k]).abs().max().item() for k in one if one[k].is_floating_point())
    assert moved > 1e-3  # the runs trained: the comparison is not between two copies of the initial weights
    for k in one:
        torch.testing.assert_close(two[k], one[k], atol=1e-5, rtol=0, msg=k)
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted([  # rank 0 alone wrote, no best: no val
        "config.toml", f"last-{STEPS:06d}.safetensors", f"last-{STEPS:06d}.state.safetensors", "last.json",
        "metrics.jsonl"])
