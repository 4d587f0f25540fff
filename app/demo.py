"""The built-in demo drive: `nearfield view` without a log plays the simulator's demo preset, simulated once into
the user's cache directory and reused from there."""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

DEMO_PRESET = "demo"


def cache_dir() -> Path:
    """$NEARFIELD_CACHE, else $XDG_CACHE_HOME/nearfield, else ~/.cache/nearfield."""
    if os.environ.get("NEARFIELD_CACHE"):
        return Path(os.environ["NEARFIELD_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "nearfield"


def demo_log(directory: str | Path | None = None, frames: int | None = None, scale: float | None = None) -> Path:
    """The demo drive's log in DIRECTORY (default: cache_dir()/demo), simulated there on first use.
    frames/scale override the preset's (tests use a short, small drive)."""
    from sensors.rig import load_rig
    from sim_data.simulate import DEFAULT_SCALE, plan_drives, simulate_drive

    directory = Path(directory) if directory is not None else cache_dir() / "demo"
    spec = plan_drives(DEMO_PRESET, frames=frames)[0]
    path = directory / f"{spec.name}.mcap"
    if path.is_file():
        if _current(path):
            return path
        log.warning("the demo drive in %s predates odometry in the log format: simulating it again", directory)
    else:
        log.warning("simulating the demo drive into %s (first use only; about a second a frame)", directory)
    # simulate_drive writes NAME.mcap.part and renames it when complete: an interrupted run is never reused.
    return simulate_drive(spec, directory, load_rig(), scale if scale is not None else DEFAULT_SCALE)


def _current(path: Path) -> bool:
    """A cached demo log written by this simulator: readable, with every topic it writes now (odometry came last;
    an older cache would leave the viewer's near-field memory with nothing to carry it)."""
    from sensors.errors import NearfieldError
    from sensors.log import LogReader
    from sensors.schemas import ODOMETRY_TOPIC

    try:
        with LogReader(path) as reader:
            return reader.damage is None and ODOMETRY_TOPIC in reader.topics
    except (NearfieldError, OSError):
        return False
