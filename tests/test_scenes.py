import itertools
import math
from collections import Counter
from dataclasses import replace

import cv2
import numpy as np
import pytest

from sensors.bev import BevGrid
from sensors.classes import SemanticClass
from sensors.errors import ConfigError
from sensors.messages import CONDITIONS, LIGHTING, condition_of
from sim_data.conditions import camera_yaw, sample_condition
from sim_data.groundtruth import rasterize_truth
from sim_data.scenes import EGO_MOTIONS, MAX_SPEED, SCENE_KINDS, generate_scene, sample_drive
from sim_data.world import Box

DURATION = 8.0
COMBOS = list(itertools.product(SCENE_KINDS, EGO_MOTIONS, (1, 2)))


@pytest.fixture(scope="module")
def scenes(rig):
    return {(k, m, s): generate_scene(k, m, DURATION, np.random.default_rng(s * 1000 + i), rig, s)
            for i, (k, m, s) in enumerate(COMBOS)}


def ids(combos):
    return [f"{k}-{m}-{s}" for k, m, s in combos]


def _moving(scene):
    """Per path step: displacement along the heading (signed) and speed."""
    p = np.array([(q.x, q.y, q.yaw) for q in scene.ego.poses])
    t = np.array(scene.ego.times)
    d = np.diff(p[:, :2], axis=0)
    along = d[:, 0] * np.cos(p[:-1, 2]) + d[:, 1] * np.sin(p[:-1, 2])
    return along, np.hypot(d[:, 0], d[:, 1]) / np.diff(t)


@pytest.mark.parametrize("key", COMBOS, ids=ids(COMBOS))
def test_objects_never_overlap_and_parts_stay_in_their_boxes(scenes, key):
    scene = scenes[key]
    assert len({o.id for o in scene.objects}) == len(scene.objects) and min(o.id for o in scene.objects) >= 1
    for t in (0.0, DURATION / 3, DURATION):
        objs = scene.objects_at(t)
        polys = [o.box.footprint().astype(np.float32) for o in objs]
        for o in objs:
            grown = Box(o.box.x, o.box.y, o.box.yaw, o.box.length + 1e-3, o.box.width + 1e-3, 0, 0).footprint()
            for p in o.parts:
                assert p.shape.z1 <= o.box.z1 + 1e-9 if hasattr(p.shape, "z1") else True
                pts = p.shape.footprint().astype(np.float32)
                assert all(cv2.pointPolygonTest(grown.astype(np.float32), tuple(map(float, v)), False) >= 0
                           for v in pts), (o.kind, o.id)
        c = np.array([[o.box.x, o.box.y] for o in objs])
        r = np.array([math.hypot(o.box.length, o.box.width) / 2 for o in objs])
        near = np.hypot(*(c[:, None] - c[None]).transpose(2, 0, 1)) < r[:, None] + r[None] + 0.01
        for i, j in zip(*np.nonzero(np.triu(near, 1)), strict=True):
            area, _ = cv2.intersectConvexConvex(polys[i], polys[j])
            assert area <= 1e-6, (t, objs[i].kind, objs[i].id, objs[j].kind, objs[j].id, area)


@pytest.mark.parametrize("key", COMBOS, ids=ids(COMBOS))
def test_ego_path_keeps_clear_of_every_object(scenes, key, rig):
    scene, veh = scenes[key], rig.vehicle
    for k in range(0, len(scene.ego.times), 2):
        t, ego = scene.ego.times[k], scene.ego.poses[k]
        objs = [o for o in scene.objects_at(t) if math.hypot(o.box.x - ego.x, o.box.y - ego.y) < 12 + o.box.length]
        polys = [p.shape.footprint() for o in objs for p in o.parts]
        verts = ego.to_local(np.concatenate(polys))
        assert veh.distance_to_body(verts).min() >= 0.3, (t, key)
        # Ego corners against polygon edges (a long wall's edge can pass a corner between its vertices).
        a = np.concatenate(polys)
        b = np.concatenate([np.roll(p, -1, 0) for p in polys])
        corners = ego.to_world(veh.footprint())
        ab = b - a
        f = np.clip(np.einsum("cld,ld->cl", corners[:, None] - a[None], ab) / np.einsum("ld,ld->l", ab, ab), 0, 1)
        closest = a[None] + f[..., None] * ab[None]
        assert np.hypot(*(corners[:, None] - closest).transpose(2, 0, 1)).min() >= 0.3, (t, key)


@pytest.mark.parametrize("key", COMBOS, ids=ids(COMBOS))
def test_ego_path_samples_speeds_and_start(scenes, key):
    scene = scenes[key]
    t = np.array(scene.ego.times)
    assert t[0] == 0.0 and t[-1] >= DURATION - 1e-9 and np.diff(t).max() <= 0.1 + 1e-9
    p0 = scene.ego.poses[0]
    assert (p0.x, p0.y, p0.yaw) == pytest.approx((0.0, 0.0, 0.0), abs=1e-9)
    _, speed = _moving(scene)
    assert speed.max() <= MAX_SPEED
    assert max(scene.ego.speed(tt) for tt in np.linspace(0, DURATION, 41)) <= MAX_SPEED


@pytest.mark.parametrize("kind", SCENE_KINDS)
def test_motion_kinds(scenes, kind):
    parked = scenes[(kind, "parked", 1)]
    assert len({(p.x, p.y, p.yaw) for p in parked.ego.poses}) == 1
    for s in (1, 2):
        along, speed = _moving(scenes[(kind, "creep_forward", s)])
        moving = speed > 0.05
        assert moving.sum() > 0.5 * len(speed) and (along[moving] > 0).all()
        assert speed[moving].max() <= 2.0 + 1e-6 and speed[: len(speed) // 2].min() >= 0.5 - 1e-6
        along, speed = _moving(scenes[(kind, "reverse_into_slot", s)])
        assert -along[along < 0].sum() >= 2.0, "reverses at least 2 m"
        last = np.nonzero(np.abs(along) > 1e-4)[0][-1]
        if kind != "street":  # parallel parking ends with a short roll forward
            assert along[last] < 0, "the drive ends reversing into the slot"
        assert speed[-5:].max() < 1e-6, "and stands still at the end"


def _bay_lines_around(scene, pose, veh):
    """The painted lines parallel to the ego that flank its footprint, left and right."""
    c, s = math.cos(pose.yaw), math.sin(pose.yaw)
    sides = set()
    for m in scene.ground.markings:
        d = np.array([m.x1 - m.x0, m.y1 - m.y0])
        if abs(d[0] * s - d[1] * c) / np.linalg.norm(d) > 0.1:
            continue
        local = pose.to_local(np.array([[m.x0, m.y0], [m.x1, m.y1]]))
        xs = sorted(local[:, 0])
        lateral = local[0, 1]
        if xs[0] < veh.x_max - 1.0 and xs[1] > veh.x_min + 1.0 and veh.width / 2 < abs(lateral) < veh.width / 2 + 1.2:
            sides.add(np.sign(lateral))
    return sides


@pytest.mark.parametrize("key", [c for c in COMBOS if c[1] == "reverse_into_slot"], ids=str)
def test_reverse_into_slot_ends_inside_a_slot(scenes, key, rig):
    scene, veh = scenes[key], rig.vehicle
    end = scene.ego.poses[-1]
    if key[0] in ("parking_lot", "garage"):
        assert _bay_lines_around(scene, end, veh) == {-1.0, 1.0}
    elif key[0] == "street":
        # Parallel to the kerb, right next to it, with parked cars ahead of and behind the gap.
        def gap(o):  # from the ego's side to the kerb's near face
            return np.abs(end.to_local(o.box.footprint())[:, 1]).min() - veh.width / 2

        kerb = min((o for o in scene.objects if o.kind == "curb"), key=gap)
        assert abs(math.sin(end.yaw - kerb.box.yaw)) < 0.05
        assert 0.3 < gap(kerb) < 0.8
        cars = [end.to_local(np.array([o.box.x, o.box.y])) for o in scene.objects if o.kind == "car"]
        row = [xy for xy in cars if abs(xy[1]) < 1.0]
        assert any(0 < x < 10 for x, _ in row) and any(-6 < x < 0 for x, _ in row)
    else:
        drive = [p for p in scene.ground.patches if p.texture == "paving" and len(p.polygon) == 4]
        fp = end.to_world(veh.footprint()).astype(np.float32)
        assert any(all(cv2.pointPolygonTest(np.array(p.polygon, np.float32), tuple(map(float, v)), False) >= 0
                       for v in fp) for p in drive)


@pytest.mark.parametrize("key", COMBOS, ids=ids(COMBOS))
def test_bev_area_is_populated_all_along_the_drive(scenes, key, rig):
    scene = scenes[key]
    grid = BevGrid.around(rig.vehicle)
    corners = np.concatenate([o.box.footprint() for o in scene.objects])
    for t in (0.0, DURATION / 2, DURATION):
        e = scene.ego.pose(t)
        occ = rasterize_truth(scene.objects_at(t), e, rig.vehicle, grid, 0).occupancy
        classes = set(np.unique(occ)) - {0, 255}
        assert ((occ > 0) & (occ < 255)).sum() >= 150 and classes, (t, classes)
        # Things beyond the BEV square on at least three of its four sides: the world does not end at its edge.
        local = e.to_local(corners)
        ring = [(local[:, 0] > 10).any(), (local[:, 0] < -7).any(), (local[:, 1] > 8).any(), (local[:, 1] < -8).any()]
        assert sum(ring) >= 3


def test_scenes_hold_their_kinds_of_things(scenes):
    kinds = {k: Counter() for k in SCENE_KINDS}
    heights = []
    for (k, _, _), sc in scenes.items():
        kinds[k].update(o.kind for o in sc.objects)
        heights += [o.box.z1 for o in sc.objects if o.cls == SemanticClass.PEDESTRIAN]
    assert {"car", "pole", "pedestrian"} <= set(kinds["parking_lot"])
    assert {"car", "pillar", "wall", "pedestrian"} <= set(kinds["garage"])
    assert {"car", "curb", "pole", "wall", "pedestrian", "bollard"} <= set(kinds["street"])
    assert {"car", "wall", "bin", "pedestrian"} <= set(kinds["driveway"])
    h = np.array(heights)
    assert ((h >= 1.0) & (h <= 1.3)).any() and ((h >= 1.6) & (h <= 1.9)).any()
    assert (((h >= 1.0) & (h <= 1.3)) | ((h >= 1.6) & (h <= 1.9))).all()
    walkers = [o for sc in scenes.values() for o in sc.objects if o.motion is not None]
    assert walkers and all(0.8 * 0.85 <= o.motion.speed <= 1.5 for o in walkers)
    garage = scenes[("garage", "parked", 1)]
    assert garage.ceiling_height and 2.3 < garage.ceiling_height < 2.8 and len(garage.lights) >= 4


def test_same_seed_same_scene(rig):
    a = generate_scene("parking_lot", "reverse_into_slot", 6.0, np.random.default_rng(5), rig, 5)
    b = generate_scene("parking_lot", "reverse_into_slot", 6.0, np.random.default_rng(5), rig, 5)
    c = generate_scene("parking_lot", "reverse_into_slot", 6.0, np.random.default_rng(6), rig, 6)
    assert a == b and a != c


def test_sample_drive_respects_its_choices_and_rejects_unknown_names(rig):
    rng = np.random.default_rng(0)
    seen = {sample_drive(rng, rig, 3.0, kinds=["garage", "street"]).kind for _ in range(12)}
    assert seen == {"garage", "street"}
    parked = sample_drive(rng, rig, 3.0, motions=["parked"])
    assert len({(p.x, p.y) for p in parked.ego.poses}) == 1
    with pytest.raises(ConfigError, match="moon"):
        sample_drive(rng, rig, 3.0, kinds=["moon"])
    with pytest.raises(ConfigError, match="scene kind"):
        generate_scene("moon", "parked", 3.0, rng, rig, 0)
    with pytest.raises(ConfigError, match="duration"):
        generate_scene("street", "parked", -1.0, rng, rig, 0)


# --- conditions -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def street(scenes):
    return scenes[("street", "creep_forward", 1)]


@pytest.mark.parametrize("name", CONDITIONS)
def test_a_condition_given_alone_is_forced(rig, street, name):
    rng = np.random.default_rng(1)
    for _ in range(15):
        cond = sample_condition(rng, rig, street, [name])
        present = {condition_of(label) for label in cond.labels()}
        assert name in present
        assert present <= {name, "day"}  # 'day' is the lighting when the list names none


def test_allowed_lists_are_respected(rig, street):
    rng = np.random.default_rng(2)
    allowed = ["night", "dusk", "uss_failure"]
    seen = Counter()
    for _ in range(60):
        labels = {condition_of(label) for label in sample_condition(rng, rig, street, allowed).labels()}
        assert labels <= set(allowed)
        seen.update(labels)
    assert seen["night"] and seen["dusk"] and seen["uss_failure"]
    with pytest.raises(ConfigError, match="fog"):
        sample_condition(rng, rig, street, ["fog"])


def test_unlit_nights_are_drawn_per_scene_without_touching_the_drive_stream(rig, street):
    from sim_data.conditions import UNLIT_NIGHT, street_lamps_off

    def draw(seed, **kw):
        rng = np.random.default_rng(seed)
        return sample_condition(rng, rig, street, ["night"], **kw), rng.random()

    (drawn, after), (forced, after_forced) = draw(5), draw(5, street_lamps=street_lamps_off(street))
    # Forcing the lamps changes nothing else: the same sun, faults and random stream after the draw.
    assert drawn.street_lamps != forced.street_lamps and after == after_forced
    assert (drawn.sun_azimuth, drawn.failed_uss) == (forced.sun_azimuth, forced.failed_uss)
    assert drawn.street_lamps == (not street_lamps_off(street))  # fixed by the scene, not by the drive's rng
    assert all(draw(s)[0].street_lamps == drawn.street_lamps for s in range(6))
    # Across scene seeds about UNLIT_NIGHT of outdoor nights are unlit; by day the lamps are always on.
    off = np.mean([street_lamps_off(replace(street, seed=s)) for s in range(400)])
    assert abs(off - UNLIT_NIGHT) < 0.08
    rng = np.random.default_rng(6)
    assert all(sample_condition(rng, rig, street, ["day"], street_lamps=False).street_lamps for _ in range(5))


def test_garage_has_no_glare_and_no_rain(rig, scenes):
    garage = scenes[("garage", "creep_forward", 1)]
    rng = np.random.default_rng(3)
    mix = Counter(sample_condition(rng, rig, garage).lighting for _ in range(300))
    assert mix["glare"] == 0 and mix["day"] > 0
    assert all(sample_condition(rng, rig, garage, ["glare"]).lighting != "glare" for _ in range(20))
    assert all(sample_condition(rng, rig, garage, ["glare", "night"]).lighting == "night" for _ in range(20))
    assert all(sample_condition(rng, rig, garage, ["night"], street_lamps=False).street_lamps for _ in range(5))
    assert not any(sample_condition(rng, rig, garage, ["rain"]).rain for _ in range(20))


def test_glare_puts_a_low_sun_in_front_of_the_front_or_rear_camera(rig, scenes):
    rng = np.random.default_rng(4)
    for key in (("street", "creep_forward", 1), ("parking_lot", "reverse_into_slot", 2)):
        scene = scenes[key]
        yaws = np.array([p.yaw for p in scene.ego.poses])
        for _ in range(20):
            cond = sample_condition(rng, rig, scene, ["glare"])
            assert cond.lighting == "glare" and not cond.rain
            assert math.radians(3) <= cond.sun_elevation <= math.radians(10)
            off = min(np.abs(np.angle(np.exp(1j * (cond.sun_azimuth - yaws - camera_yaw(rig, cam))))).min()
                      for cam in ("FV", "RV"))
            assert off <= math.radians(30) + 1e-9


def test_sensor_faults_name_real_sensors(rig, street):
    rng = np.random.default_rng(5)
    uss_names = {s.name for s in rig.uss}
    for _ in range(30):
        cond = sample_condition(rng, rig, street, ["soiling", "camera_failure", "uss_failure"])
        assert all(c in rig.cameras and 0.2 <= v <= 0.6 for c, v in cond.soiling.items())
        assert len(cond.soiling) <= 2 and len(cond.failed_cameras) <= 1 and len(cond.failed_uss) <= 2
        assert all(c in rig.cameras and v in ("black", "frozen") for c, v in cond.failed_cameras.items())
        assert all(s in uss_names and v in ("dead", "blocked") for s, v in cond.failed_uss.items())
        assert cond.soiling or cond.failed_cameras or cond.failed_uss


def test_the_training_mix_is_mostly_day_with_plenty_of_hard_light_and_few_faults(rig, street):
    rng = np.random.default_rng(6)
    conds = [sample_condition(rng, rig, street) for _ in range(400)]
    light = Counter(c.lighting for c in conds)
    assert set(light) == set(LIGHTING) and light.most_common(1)[0][0] == "day"
    assert 0.3 < (light["night"] + light["dusk"] + light["glare"]) / 400 < 0.7
    faults = sum(bool(c.failed_cameras or c.failed_uss) for c in conds) / 400
    assert 0.03 < faults < 0.25
    assert 0.05 < sum(c.rain for c in conds) / 400 < 0.3



@pytest.mark.parametrize("key", COMBOS[::2], ids=ids(COMBOS[::2]))
def test_a_close_obstacle_stands_within_the_last_warning_level_where_the_car_stops(scenes, key, rig):
    from sim_data.close import CLOSE_GAP_M, add_close_obstacle

    scene, veh = scenes[key], rig.vehicle
    close, gap = add_close_obstacle(scene, veh, np.random.default_rng(7))
    if key == ("street", "reverse_into_slot", 1):
        # Parallel parking swings both ends of the car through where it stops: no room, nothing added or removed.
        assert gap is None and close.objects == scene.objects
        return
    assert gap is not None and CLOSE_GAP_M[0] <= gap <= CLOSE_GAP_M[1]
    obstacle = close.objects[-1]
    assert obstacle.cls == SemanticClass.LOW_OBSTACLE and obstacle.id not in {o.id for o in close.objects[:-1]}
    # The car stands still at the end of the drive, the obstacle the gap from its body, nothing closer.
    t = np.array(close.ego.times)
    assert t[-1] == pytest.approx(scene.ego.times[-1]) and t[0] == 0.0
    end = close.ego.poses[-1]
    assert close.ego.speed(t[-1] - 0.1) < 1e-6
    footprint = np.concatenate([p.shape.footprint() for p in obstacle.parts])
    assert veh.distance_to_body(end.to_local(footprint)).min() == pytest.approx(gap, abs=0.03)
    # The car never drove through it (a manoeuvre may swing past it closer than where it stops).
    for k in range(0, len(t)):
        assert veh.distance_to_body(close.ego.poses[k].to_local(footprint)).min() > 0.08
    # It took the place of what stood there, and no walker walks through it at any time.
    mine = cv2.convexHull(footprint.astype(np.float32))
    for tt in np.linspace(0.0, t[-1], 17):
        for o in close.objects_at(tt)[:-1]:
            poly = np.concatenate([p.shape.footprint() for p in o.parts]).astype(np.float32)
            area, _ = cv2.intersectConvexConvex(mine, cv2.convexHull(poly))
            assert area <= 1e-6, (key, o.kind, tt)


def test_stop_short_brakes_a_moving_drive_to_a_standstill_along_the_same_way(scenes):
    from sim_data.close import stop_short

    scene = scenes[("street", "creep_forward", 1)]
    ego = stop_short(scene.ego, np.random.default_rng(0))
    along, speed = _moving(replace(scene, ego=ego))
    assert (along >= -1e-9).all() and speed.max() <= max(_moving(scene)[1]) + 1e-6  # forwards, never faster
    stand = next(i for i in range(len(speed)) if speed[i:].max() < 1e-9)
    assert 0.5 * DURATION - 0.2 <= ego.times[stand] <= 0.75 * DURATION + 0.2
    decel = np.diff(speed[:stand])
    assert decel[-5:].max() <= 1e-6  # braking, not stopping dead from cruising speed
    # Every pose lies on the original way (the same poses, cut where it stops).
    p = np.array([(q.x, q.y) for q in scene.ego.poses])
    for q in ego.poses:
        assert np.hypot(*(p - (q.x, q.y)).T).min() <= 0.05 + 1e-9
    parked = scenes[("street", "parked", 1)]
    assert stop_short(parked.ego, np.random.default_rng(0)) is parked.ego  # nothing to stop
