import math
from dataclasses import replace

import numpy as np
import pytest

from sensors.errors import ConfigError
from sensors.geometry import Pose2D
from sensors.messages import UssStatus
from sim_data.ultrasonic import EchoModel, UltrasonicSimulator, echo_level_db
from sim_data.world import Box, Condition, Cylinder, Material, Part, SceneObject, Sphere

EGO = Pose2D(0.0, 0.0, 0.0)  # world = vehicle frame
# Default rig: FIL (id 2) at (3.60, 0.21, 0.50), FIR (id 3) at (3.60, -0.21, 0.50), FOL (id 1) at (3.55, 0.60, 0.50).
FIL, FIR, FOL = 2, 3, 1
BUMPER_X = 3.60
QUIET = EchoModel(jitter=0.0, amplitude_noise_db=0.0, rain_jitter=0.0, rain_amplitude_noise_db=0.0,
                  ghost_rate=0.0, rain_ghost_rate=0.0, clutter_rate=0.0)


def thing(shape, refl=0.9, oid=0, kind="wall"):
    box = shape if isinstance(shape, Box) else Box(shape.x, shape.y, 0.0, 0.2, 0.2, 0.0, 1.0)
    return SceneObject(oid, 3, kind, (Part(shape, Material((0.5, 0.5, 0.5), uss_reflectivity=refl)),), box)


def wall_ahead(d, refl=0.9, oid=0, width=10.0, height=2.5):
    """A wall whose face is the plane x = BUMPER_X + d, perpendicular to the bumper's forward axis."""
    return thing(Box(BUMPER_X + d + 0.1, 0.0, 0.0, 0.2, width, 0.0, height), refl, oid)


def run(rig, objects, model=QUIET, condition=None, seed=0, kind="parking_lot", ego=EGO):
    sim = UltrasonicSimulator(rig, kind, model=model)
    return sim.cycle(objects, ego, condition or Condition(), 1_000, 7, np.random.default_rng(seed))


def echoes(cycle, sender, receiver):
    sel = (cycle.sender == sender) & (cycle.receiver == receiver)
    return cycle.distance[sel], cycle.amplitude[sel]


def first(cycle, sender, receiver):
    d, a = echoes(cycle, sender, receiver)
    assert d.size, f"no echo {sender}->{receiver}"
    return float(d[0]), float(a[0])


@pytest.mark.parametrize("d", [1.0, 2.5, 4.0])
def test_wall_gives_direct_circle_and_cross_ellipse_distances(rig, d):
    cycle = run(rig, [wall_ahead(d)], model=EchoModel(), seed=3)  # with the default noise
    assert first(cycle, FIL, FIL)[0] == pytest.approx(d, abs=0.04)
    # Wall parallel to the FIL-FIR baseline (b = 0.42 m): the ellipse's semi-major axis.
    b = 0.42
    assert first(cycle, FIL, FIR)[0] == pytest.approx(math.sqrt(d**2 + (b / 2) ** 2), abs=0.04)
    assert first(cycle, FIR, FIL)[0] == pytest.approx(math.sqrt(d**2 + (b / 2) ** 2), abs=0.04)
    # Oblique baseline FIL-FOL: half the distance from the sender's mirror image to the receiver.
    s, r = np.array(rig.uss_by_id(FIL).position), np.array(rig.uss_by_id(FOL).position)
    image = s.copy()
    image[0] = 2 * (BUMPER_X + d) - s[0]
    assert first(cycle, FIL, FOL)[0] == pytest.approx(np.linalg.norm(image - r) / 2, abs=0.04)
    # Without clutter and ghosts, only the bumper facing the wall hears anything.
    assert set(run(rig, [wall_ahead(d)]).sender.tolist()) <= {0, 1, 2, 3, 4, 5}


def test_amplitude_falls_with_distance_and_stays_normalised(rig):
    amps = [first(run(rig, [wall_ahead(d)]), FIL, FIL)[1] for d in (0.5, 1.0, 2.5, 4.0, 5.3)]
    assert all(0.0 < a <= 1.0 for a in amps)
    assert all(np.diff(amps) < 0), amps


def test_nothing_beyond_range_or_behind_the_sensor_plane(rig):
    assert run(rig, [wall_ahead(5.9)]).num_echoes == 0
    assert run(rig, [wall_ahead(5.3)]).num_echoes > 0
    # FIL turned to look sideways (yaw 100°): a short wall 1 m ahead of the bumper lies behind its plane. With a
    # threshold so low that the tail of the Gaussian beam alone would be heard, this checks the plane cut.
    turned = replace(rig, uss=tuple(replace(s, yaw=math.radians(100.0)) if s.id == FIL else s for s in rig.uss))
    short = thing(Box(BUMPER_X + 1.1, 0.0, 0.0, 0.2, 0.5, 0.0, 2.5))
    cycle = run(turned, [short], model=replace(QUIET, threshold_db=-80.0, floor_db=-85.0))
    assert echoes(cycle, FIL, FIL)[0].size == 0
    assert first(cycle, FIR, FIR)[0] == pytest.approx(1.0, abs=0.02)
    assert first(run(rig, [short]), FIL, FIL)[0] == pytest.approx(1.0, abs=0.05)


def test_low_curb_is_missed_close_and_weaker_than_a_wall(rig):
    def curb(d):
        return thing(Box(BUMPER_X + d + 0.075, 0.21, 0.0, 0.15, 3.0, 0.0, 0.12), kind="curb")

    near_d, near_a = echoes(run(rig, [curb(0.4)]), FIL, FIL)
    far_d, far_a = first(run(rig, [curb(2.0)]), FIL, FIL)
    wall_a = first(run(rig, [wall_ahead(2.0)]), FIL, FIL)[1]
    # Close, the curb sits under the beam: missed (or at least 10 dB weaker than at 2 m).
    assert near_d.size == 0 or echo_level_db(near_a[0]) < echo_level_db(far_a) - 10
    # At 2 m it fills a sliver of the vertical beam: the echo comes from its top edge, far below the wall's.
    assert far_d == pytest.approx(math.hypot(2.0, 0.50 - 0.12), abs=0.03)
    assert echo_level_db(far_a) < echo_level_db(wall_a) - 10


def test_thin_pole_and_soft_pedestrian_are_weaker(rig):
    wall_a = first(run(rig, [wall_ahead(2.0)]), FIL, FIL)[1]
    pole_d, pole_a = first(run(rig, [thing(Cylinder(BUMPER_X + 2.05, 0.21, 0.05, 0.0, 2.5), kind="pole")]), FIL, FIL)
    assert pole_d == pytest.approx(2.0, abs=0.02)
    # A cylinder returns ~a/d of a plane's intensity: 0.05/2 is -16 dB.
    assert echo_level_db(pole_a) < echo_level_db(wall_a) - 10
    body = Cylinder(BUMPER_X + 2.2, 0.21, 0.2, 0.0, 1.7)
    hard = first(run(rig, [thing(body, refl=0.9)]), FIL, FIL)[1]
    soft = first(run(rig, [thing(body, refl=0.3, kind="pedestrian")]), FIL, FIL)[1]
    assert echo_level_db(hard) - echo_level_db(soft) == pytest.approx(10 * math.log10(3), abs=0.1)
    # A sphere (a ball, a head) is weaker still than a cylinder of the same radius.
    ball = first(run(rig, [thing(Sphere(BUMPER_X + 2.2, 0.21, 0.5, 0.2))]), FIL, FIL)[1]
    assert ball < hard


def test_occluded_object_returns_nothing(rig):
    pole = thing(Cylinder(BUMPER_X + 3.0, 0.0, 0.1, 0.0, 2.0), oid=1, kind="pillar")
    alone = run(rig, [pole])
    assert np.any(np.abs(alone.distance - 2.9) < 0.1)
    wall = thing(Box(BUMPER_X + 1.1, 0.0, 0.0, 0.2, 6.0, 0.0, 2.5), oid=0)
    hidden = run(rig, [wall, pole])
    assert hidden.num_echoes > 0 and np.all(hidden.distance < 1.6)
    # A low curb in front does not hide it: the beam passes over.
    curb = thing(Box(BUMPER_X + 1.0, 0.0, 0.0, 0.15, 6.0, 0.0, 0.12), oid=0, kind="curb")
    over = run(rig, [curb, pole])
    assert np.any(np.abs(over.distance - 2.9) < 0.1)


def test_dead_sensor_is_silent_and_reports_no_response(rig):
    cycle = run(rig, [wall_ahead(1.5)], condition=Condition(failed_uss={"FIL": "dead"}))
    assert FIL not in cycle.sender and FIL not in cycle.receiver
    assert cycle.status[FIL] == UssStatus.NO_RESPONSE
    assert all(v == UssStatus.OK for k, v in cycle.status.items() if k != FIL)
    assert first(cycle, FIR, FIR)[0] == pytest.approx(1.5, abs=0.02)


def test_blocked_sensor_rings_and_loses_real_echoes(rig):
    cond = Condition(failed_uss={"FIL": "blocked"})
    statuses = set()
    for seed in range(12):
        cycle = run(rig, [wall_ahead(1.5)], condition=cond, seed=seed)
        d, a = echoes(cycle, FIL, FIL)
        assert d.size == 1 and 0.15 <= d[0] <= 0.3 and a[0] > 0.8
        assert not np.any((cycle.receiver == FIL) & (cycle.sender != FIL))
        assert echoes(cycle, FIL, FIR)[0].size == 0
        assert first(cycle, FIR, FIR)[0] == pytest.approx(1.5, abs=0.02)
        statuses.add(cycle.status[FIL])
    # The ECU detects a blocked membrane only sometimes.
    assert statuses == {UssStatus.OK, UssStatus.BLOCKED}


def _busy_scene():
    objs = [wall_ahead(3.0, oid=0),
            thing(Cylinder(BUMPER_X + 1.2, -0.6, 0.05, 0.0, 2.5), oid=1, kind="pole"),
            thing(Cylinder(-2.0, 0.5, 0.2, 0.0, 1.7), refl=0.3, oid=2, kind="pedestrian"),
            thing(Box(-1.5, -2.2, 0.3, 4.3, 1.8, 0.25, 1.4), oid=3, kind="car"),
            thing(Cylinder(BUMPER_X + 0.9, 0.8, 0.16, 0.0, 0.7, 0.02), refl=0.6, oid=4, kind="cone")]
    return objs


def test_lighting_changes_nothing(rig):
    objs = _busy_scene()
    ref = run(rig, objs, model=EchoModel(), seed=11, condition=Condition(lighting="day"))
    assert ref.num_echoes > 5
    for lighting in ("night", "dusk", "glare"):
        other = run(rig, objs, model=EchoModel(), seed=11,
                    condition=Condition(lighting=lighting, sun_azimuth=2.0, sun_elevation=0.1))
        for f in ("sender", "receiver", "distance", "amplitude"):
            assert np.array_equal(getattr(ref, f), getattr(other, f))
        assert ref.status == other.status


def test_deterministic_for_a_given_rng_state(rig):
    objs = _busy_scene()
    a = run(rig, objs, model=EchoModel(), seed=5)
    b = run(rig, objs, model=EchoModel(), seed=5)
    c = run(rig, objs, model=EchoModel(), seed=6)
    assert np.array_equal(a.distance, b.distance) and np.array_equal(a.amplitude, b.amplitude)
    assert not (a.distance.shape == c.distance.shape and np.array_equal(a.distance, c.distance))


def test_ego_pose_moves_the_world_not_the_echoes(rig):
    objs = _busy_scene()
    ref = run(rig, objs)
    ego = Pose2D(12.0, -4.0, 0.7)

    def move(sh):
        x, y = ego.to_world(np.array([sh.x, sh.y]))
        sh = replace(sh, x=float(x), y=float(y))
        return replace(sh, yaw=sh.yaw + ego.yaw) if isinstance(sh, Box) else sh

    moved = [replace(o, parts=tuple(Part(move(p.shape), p.material) for p in o.parts), box=move(o.box)) for o in objs]
    out = run(rig, moved, ego=ego)
    assert np.array_equal(out.sender, ref.sender) and np.array_equal(out.receiver, ref.receiver)
    assert np.allclose(out.distance, ref.distance, atol=2e-3)
    assert np.allclose(out.amplitude, ref.amplitude, atol=0.01)


def test_at_most_three_echoes_per_listening_sorted_by_distance(rig):
    spots = ((0.8, 0.21), (1.3, 0.8), (1.8, -0.5), (2.3, 1.3), (2.8, -1.1))  # none hides another
    poles = [thing(Cylinder(BUMPER_X + x, y, 0.06, 0.0, 2.0), oid=i, kind="pole") for i, (x, y) in enumerate(spots)]
    cycle = run(rig, poles)
    d, _ = echoes(cycle, FIL, FIL)
    assert d.size == 3 and np.all(np.diff(d) > 0)
    assert d[0] == pytest.approx(0.74, abs=0.02)
    keys = cycle.sender.astype(np.int64) * 100 + cycle.receiver
    assert np.bincount(keys).max() <= 3
    assert np.all((cycle.distance >= 0.15) & (cycle.distance <= 5.5))


def test_ground_clutter_depends_on_the_ground_and_is_weak_and_a_few_metres_out(rig):
    def spurious(kind):
        sim = UltrasonicSimulator(rig, kind, model=replace(EchoModel(), ghost_rate=0.0))
        cycles = [sim.cycle([], EGO, Condition(), 0, k, np.random.default_rng(k)) for k in range(300)]
        return np.concatenate([c.distance for c in cycles]), np.concatenate([c.amplitude for c in cycles])

    garage, _ = spurious("garage")
    gravel, amp = spurious("gravel")
    assert gravel.size > 4 * max(garage.size, 1)
    assert 0.0 < gravel.size / 300 < 3  # occasional: a few of the 32 listenings of a cycle at most
    assert np.all((gravel > 0.6) & (gravel < 3.2))
    assert np.all(echo_level_db(amp) < EchoModel().threshold_db + 12)


def test_rain_adds_a_little_noise(rig):
    def spread(rain):
        sim = UltrasonicSimulator(rig, model=replace(EchoModel(), ghost_rate=0, rain_ghost_rate=0, clutter_rate=0))
        d = [first(sim.cycle([wall_ahead(2.0)], EGO, Condition(rain=rain), 0, k, np.random.default_rng(k)),
                   FIL, FIL)[0] for k in range(60)]
        return np.std(d), np.mean(d)

    (dry, dry_mean), (wet, wet_mean) = spread(False), spread(True)
    assert 0.005 < dry < wet < 0.03
    assert dry_mean == pytest.approx(2.0, abs=0.01) and wet_mean == pytest.approx(2.0, abs=0.01)


def test_bad_input_raises_typed_errors(rig):
    with pytest.raises(ConfigError, match="scene kind"):
        UltrasonicSimulator(rig, "moon")
    with pytest.raises(ConfigError, match="XYZ"):
        run(rig, [], condition=Condition(failed_uss={"XYZ": "dead"}))
    with pytest.raises(ConfigError, match="melted"):
        run(rig, [], condition=Condition(failed_uss={"FIL": "melted"}))
    with pytest.raises(ConfigError, match=r"object 4 \(pole\) part 0: degenerate"):
        run(rig, [thing(Cylinder(5.0, 0.0, 0.05, 1.0, 1.0), oid=4, kind="pole")])
    with pytest.raises(ConfigError, match="uss_reflectivity"):
        run(rig, [wall_ahead(1.0, refl=1.5)])


def parking_lot(n_rows=6):
    """~30 objects: two rows of parked cars, pillars, pedestrians, cones, poles, curbs and a wall."""
    objs, i = [], 0

    def add(shape, refl, kind, extra=()):
        nonlocal i
        parts = (Part(shape, Material((0.5, 0.5, 0.5), uss_reflectivity=refl)), *extra)
        objs.append(SceneObject(i, 3, kind, parts, shape if isinstance(shape, Box) else
                                Box(shape.x, shape.y, 0, 0.4, 0.4, 0, 1.8)))
        i += 1

    for k in range(n_rows):
        for side in (1, -1):
            x, yaw = -6 + 2.6 * k, side * math.pi / 2
            cabin = Part(Box(x, side * 4.0, yaw, 2.4, 1.6, 1.0, 1.45), Material((0.2, 0.2, 0.2), uss_reflectivity=0.85))
            add(Box(x, side * 4.2, yaw, 4.3, 1.8, 0.25, 1.0), 0.9, "car", (cabin,))
    for k in range(4):
        add(Box(-8 + 6 * k, 7.5, 0, 0.5, 0.5, 0, 3.0), 0.95, "pillar")
    for k in range(4):
        head = Part(Sphere(7 + 0.8 * k, 1.5 - k, 1.6, 0.11), Material((0.8, 0.6, 0.5), uss_reflectivity=0.4))
        add(Cylinder(7 + 0.8 * k, 1.5 - k, 0.18, 0, 1.45), 0.3, "pedestrian", (head,))
    for k in range(3):
        add(Cylinder(6.0, -1 + k, 0.16, 0, 0.7, 0.02), 0.6, "cone")
        add(Cylinder(9 + k, 2.5, 0.05, 0, 2.5), 0.9, "pole")
    add(Box(2, 8.5, 0, 20, 0.15, 0, 0.12), 0.9, "curb")
    add(Box(2, -8.5, 0, 20, 0.15, 0, 0.12), 0.9, "curb")
    add(Box(14, 0, 0, 0.3, 20, 0, 3), 0.9, "wall")
    return objs


def test_busy_parking_lot_cycle(rig):
    objs = parking_lot()
    assert len(objs) == 29
    sim = UltrasonicSimulator(rig)
    cycle = sim.cycle(objs, EGO, Condition(), 0, 0, np.random.default_rng(0))
    # The nearest car body to each side sensor (cars across the aisle, their near ends at |y| = 2.05 m).
    for sid in (0, 5, 6, 11):
        x, y, _ = rig.uss_by_id(sid).position
        gap = min(max(abs(x - (-6 + 2.6 * k)) - 0.9, 0.0) for k in range(6))
        assert first(cycle, sid, sid)[0] == pytest.approx(math.hypot(gap, 2.05 - abs(y)), abs=0.05)
    assert np.all((cycle.amplitude >= 0) & (cycle.amplitude <= 1))
