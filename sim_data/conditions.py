"""The conditions of a simulated drive: lighting and sun, rain, lens soiling and sensor faults, drawn either from a
realistic training mix or from a list of conditions to cover."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np

from sensors.errors import ConfigError
from sensors.messages import CONDITIONS, LIGHTING
from sensors.rig import Rig
from sim_data.world import Condition, Scene

log = logging.getLogger(__name__)

EXTRAS = tuple(c for c in CONDITIONS if c not in LIGHTING)  # rain and the sensor faults
# The training mix: mostly day, plenty of the hard lighting, some rain, a few faults.
LIGHTING_MIX = {"day": 0.50, "dusk": 0.15, "night": 0.20, "glare": 0.15}
EXTRA_MIX = {"rain": 0.15, "soiling": 0.10, "camera_failure": 0.05, "uss_failure": 0.07}
GLARE_ELEVATION_DEG = (3.0, 10.0)
GLARE_AZIMUTH_SPREAD_DEG = 30.0  # sun within this of the front or rear camera's axis: well inside its view
# Outdoor nights whose lamps are out or absent (a dark lot, an unlit street or driveway): the ego's headlights
# and tail lights are all the camera gets. Drawn from the scene's own seed, not the drive's random stream, so
# that every other draw of a drive (and so every day drive) is what it was before unlit nights existed.
UNLIT_NIGHT = 0.5


def sample_condition(rng: np.random.Generator, rig: Rig, scene: Scene,
                     allowed: Sequence[str] | None = None, street_lamps: bool | None = None) -> Condition:
    """Draw the conditions of one drive through `scene`.

    allowed: names from sensors.messages.CONDITIONS to draw from; None is the training mix. With a list, one of
    its names is forced (chosen uniformly, so a single name always appears) and its other names may join at
    their mix rates. The lighting is always set: from the allowed lightings, or 'day' when the list names none.
    Indoors (a scene with a ceiling) there is no sun and no rain: 'glare' and 'rain' are replaced by another
    allowed condition, or dropped; 'night' there means only the ceiling lamps light the scene.
    street_lamps: whether an outdoor night's lamps are lit; None draws it (UNLIT_NIGHT, from the scene's seed).
    """
    if allowed is not None:
        allowed = list(dict.fromkeys(allowed))
        bad = [c for c in allowed if c not in CONDITIONS]
        if bad or not allowed:
            raise ConfigError(f"condition {bad[0] if bad else '(none)'!r} is not one of {', '.join(CONDITIONS)}")
    indoor = scene.ceiling_height is not None
    impossible = {"glare", "rain"} if indoor else set()
    if allowed is None:
        lighting = _weighted(rng, {k: v for k, v in LIGHTING_MIX.items() if k not in impossible})
        extras = {e for e, p in EXTRA_MIX.items() if e not in impossible and rng.random() < p}
        if lighting == "glare":
            extras.discard("rain")  # a low sun in a clear sky
    else:
        possible = [c for c in allowed if c not in impossible]
        if len(possible) < len(allowed):
            log.info("scene %s is indoors: no %s; drawing from %s instead", scene.kind,
                     " or ".join(sorted(impossible & set(allowed))), possible or "the indoor mix")
        lightings = {k: LIGHTING_MIX[k] for k in possible if k in LIGHTING}
        if not possible:
            lightings = {k: v for k, v in LIGHTING_MIX.items() if k not in impossible}
        primary = str(rng.choice(possible)) if possible else None
        extras = {primary} if primary in EXTRAS else set()
        extras |= {e for e in possible if e in EXTRAS and e != primary and rng.random() < EXTRA_MIX[e]}
        if primary in LIGHTING:
            lighting = primary
        else:
            if "rain" in extras and len(lightings) > 1:
                lightings.pop("glare", None)
            lighting = _weighted(rng, lightings) if lightings else "day"
        if lighting == "glare" and primary != "rain":
            extras.discard("rain")
    azimuth, elevation = _sun(rng, rig, scene, lighting)
    cams = list(rig.cameras)
    soiling: dict[str, float] = {}
    failed_cameras: dict[str, str] = {}
    failed_uss: dict[str, str] = {}
    if "soiling" in extras:
        for c in rng.choice(cams, size=int(rng.integers(1, 3)), replace=False):
            soiling[str(c)] = float(rng.uniform(0.2, 0.6))
    if "camera_failure" in extras:
        healthy = [c for c in cams if c not in soiling] or cams
        failed_cameras[str(rng.choice(healthy))] = str(rng.choice(["black", "frozen"]))
    if "uss_failure" in extras:
        names = [s.name for s in rig.uss]
        for s in rng.choice(names, size=int(rng.integers(1, 3)), replace=False):
            failed_uss[str(s)] = str(rng.choice(["dead", "blocked"]))
    lamps = True
    if lighting == "night" and not indoor:
        lamps = not street_lamps_off(scene) if street_lamps is None else bool(street_lamps)
    return Condition(lighting, azimuth, elevation, "rain" in extras, soiling, failed_cameras, failed_uss, lamps)


def street_lamps_off(scene: Scene) -> bool:
    """Whether an outdoor night in SCENE is an unlit one (probability UNLIT_NIGHT, fixed per scene seed)."""
    from sim_data.effects import stable_seed

    return bool(np.random.default_rng(stable_seed(scene.kind, scene.seed, "unlit")).random() < UNLIT_NIGHT)


def _weighted(rng: np.random.Generator, weights: dict[str, float]) -> str:
    names = list(weights)
    p = np.array([weights[n] for n in names], float)
    return names[int(rng.choice(len(names), p=p / p.sum()))]


def camera_yaw(rig: Rig, name: str) -> float:
    """Yaw of a camera's optical axis in the vehicle frame (0 = forward)."""
    axis = rig.camera(name).extrinsic.rotation[:, 2]
    return math.atan2(axis[1], axis[0])


def _sun(rng: np.random.Generator, rig: Rig, scene: Scene, lighting: str) -> tuple[float, float]:
    """(azimuth, elevation) of the sun in radians, world frame, for the lighting."""
    t = rng.uniform(scene.ego.times[0], scene.ego.times[-1])
    heading = scene.ego.pose(t).yaw
    if lighting == "glare":
        # Low sun straight ahead of the front or the rear camera at some moment of the drive.
        axis = camera_yaw(rig, str(rng.choice(["FV", "RV"])))
        spread = math.radians(GLARE_AZIMUTH_SPREAD_DEG)
        azimuth = heading + axis + rng.uniform(-spread, spread)
        elevation = math.radians(rng.uniform(*GLARE_ELEVATION_DEG))
    elif lighting == "dusk":
        # Near the horizon but off to a side, so it does not shine into the front or rear camera.
        azimuth = heading + rng.choice([-1, 1]) * math.radians(rng.uniform(65, 115))
        elevation = math.radians(rng.uniform(-4.0, 4.0))
    elif lighting == "night":
        azimuth, elevation = rng.uniform(-math.pi, math.pi), math.radians(rng.uniform(-40.0, -12.0))
    else:
        azimuth, elevation = rng.uniform(-math.pi, math.pi), math.radians(rng.uniform(20.0, 65.0))
    return float(math.atan2(math.sin(azimuth), math.cos(azimuth))), float(elevation)
