import os

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


@pytest.fixture(scope="session")
def rig():
    from sensors.rig import load_rig

    return load_rig()
