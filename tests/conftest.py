import os

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


@pytest.fixture(scope="module")
def torch_one_thread():
    """Tiny models gain nothing from intra-op threads, and on a shared 2-core machine spinning OpenMP workers make
    a 20 ms forward take seconds. Use with `pytestmark = pytest.mark.usefixtures("torch_one_thread")`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def rig():
    from sensors.rig import load_rig

    return load_rig()


@pytest.fixture(scope="session")
def world(tmp_path_factory, rig):
    """The runtime tests' drive and tiny zoo model (runtime_world.make_world)."""
    from runtime_world import make_world

    return make_world(tmp_path_factory.mktemp("runtime"), rig)


@pytest.fixture(scope="session")
def long_drive(world):
    """The drive 40 times over (240 frames) in small chunks: long enough to interrupt, cut to a readable prefix."""
    from runtime_world import rewrite_log

    return rewrite_log(world["drive"], world["root"] / "long.mcap", loops=40, chunk_size=64 << 10)


# CI replays the same hypothesis examples every run (a failure must reproduce); developers explore new ones.
try:
    from hypothesis import settings

    settings.register_profile("ci", derandomize=True, print_blob=True)
    if os.environ.get("CI"):
        settings.load_profile("ci")
except ImportError:  # pragma: no cover
    pass
