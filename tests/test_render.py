"""The fisheye renderer: geometry of what each pixel sees (ids, depth, occlusion, ego body, image circle) checked
against the calibration's own projection and analytic ray distances, plus the condition effects."""

import math
from dataclasses import replace

import numpy as np
import pytest

from sensors.errors import ConfigError
from sensors.geometry import Pose2D
from sim_data import effects
from sim_data.raycast import (
    RayBundle,
    cull_geometry,
    hit_distance,
    primitive_kind,
    surface_at,
    surfaces_at,
)
from sim_data.render import (
    OBJ_EGO,
    OBJ_GROUND,
    OBJ_OUTSIDE,
    FisheyeRenderer,
    ego_parts,
)
from sim_data.textures import SURFACE_TEXTURES, surface_albedo, surface_albedos
from sim_data.world import (
    Box,
    Condition,
    Cylinder,
    EgoPath,
    Ground,
    Marking,
    Material,
    Part,
    Scene,
    SceneObject,
    Sphere,
)

GREY = Material((0.5, 0.5, 0.5), "concrete")
EGO = Pose2D(10.0, -4.0, 0.6)  # a non-trivial pose, so the world -> vehicle transform is exercised


def world(xv, yv):
    """World (x, y) of a point given in the ego's vehicle frame."""
    return tuple(float(v) for v in EGO.to_world(np.array([xv, yv])))


def obj(oid, *shapes, material=GREY, cls=3):
    parts = tuple(Part(s, material) for s in shapes)
    s = shapes[0]
    return SceneObject(oid, cls, "thing", parts, Box(s.x, s.y, 0.0, 1.0, 1.0, 0.0, 1.0))


def scene(*objects, lights=(), ceiling=None, seed=3):
    ground = Ground(markings=(Marking(*world(5.0, 2.0), *world(9.0, 2.0)),))
    return Scene("parking_lot", tuple(objects), ground, EgoPath((0.0,), (EGO,)), lights, ceiling, seed)


@pytest.fixture(scope="module")
def small_rig(rig):
    return rig.scaled(0.25)


def vehicle_point(x, y, z):
    return np.array([[x, y, z]], float)


def pixel(cam, p):
    uv, ok = cam.project(p)
    assert ok.all(), "test point must be visible"
    return [(round(v), round(u)) for u, v in uv]


def render(renderer, cond=None, seed=0, t=0.0, cameras=None):
    return renderer.render(t, EGO, cond or Condition("day"), np.random.default_rng(seed), cameras)


# --- geometry -----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def geometry(small_rig):
    """A box ahead, a box behind it (occluded), a cylinder to the left, a cone and a sphere to the right."""
    box = obj(11, Box(*world(7.0, 0.0), EGO.yaw + 0.3, 1.0, 1.2, 0.0, 1.5))
    hidden = obj(12, Box(*world(11.0, 0.0), EGO.yaw, 1.0, 1.0, 0.0, 1.0))
    cyl = obj(13, Cylinder(*world(1.5, 3.5), 0.4, 0.0, 1.8))
    cone = obj(14, Cylinder(*world(1.0, -3.0), 0.3, 0.0, 0.8, radius_top=0.0))
    ball = obj(15, Sphere(*world(3.0, -3.5), 0.6, 0.5))  # x, y, z, radius
    sc = scene(box, hidden, cyl, cone, ball)
    renderer = FisheyeRenderer(small_rig.cameras, small_rig.vehicle, sc)
    return renderer, render(renderer)


def test_objects_appear_where_the_calibration_projects_them(geometry, small_rig):
    _, images = geometry
    fv, mvl, mvr = (small_rig.cameras[c] for c in ("FV", "MVL", "MVR"))
    # Box 11 (front face at x = 6.4..6.6 m, rotated): centre at mid-height and points on its faces.
    for (r, c) in pixel(fv, np.array([[7.0, 0.0, 0.75], [7.0, 0.3, 0.3], [7.0, -0.3, 1.2]])):
        assert images["FV"].object_id[r, c] == 11
    for (r, c) in pixel(mvl, np.array([[1.5, 3.5, 0.9], [1.5, 3.1, 0.3], [1.5, 3.5, 1.75]])):
        assert images["MVL"].object_id[r, c] == 13
    for (r, c) in pixel(mvr, np.array([[1.0, -3.0, 0.2], [1.0, -3.0, 0.55]])):
        assert images["MVR"].object_id[r, c] == 14
    (r, c), = pixel(mvr, vehicle_point(3.0, -3.5, 0.5))
    assert images["MVR"].object_id[r, c] == 15
    # Off the cone's slanted side, just above its tip, is the ground beyond it.
    (r, c), = pixel(mvr, vehicle_point(1.0, -3.0, 0.95))
    assert images["MVR"].object_id[r, c] != 14


def test_depth_at_the_sphere_and_ground_is_the_analytic_distance(geometry, small_rig):
    _, images = geometry
    mvr = small_rig.cameras["MVR"]
    o = mvr.origin
    (r, c), = pixel(mvr, vehicle_point(3.0, -3.5, 0.5))
    ray = mvr.unproject(np.array([[c, r]], float))[0]
    centre = np.array([3.0, -3.5, 0.6])
    b = ray @ (o - centre)
    expected = -b - math.sqrt(b * b - (np.sum((o - centre) ** 2) - 0.25))
    assert images["MVR"].depth[r, c] == pytest.approx(expected, rel=1e-4)
    # Every ground pixel: the ray meets z = 0 at -oz / dz.
    for name in ("FV", "MVL"):
        cam = small_rig.cameras[name]
        img = images[name]
        rays = cam.pixel_rays()
        ground = (img.object_id == OBJ_GROUND) & np.isfinite(img.depth)
        assert ground.sum() > 1000
        expected = -cam.origin[2] / rays[..., 2][ground]
        np.testing.assert_allclose(img.depth[ground], expected, rtol=2e-4)


def test_nearer_object_occludes_the_farther(geometry, small_rig):
    _, images = geometry
    fv = small_rig.cameras["FV"]
    (r, c), = pixel(fv, vehicle_point(11.0, 0.0, 0.5))  # behind box 11, on the same line of sight
    assert images["FV"].object_id[r, c] == 11
    assert not (images["FV"].object_id == 12).any()


@pytest.fixture(scope="module")
def clutter(small_rig):
    """Forty random primitives around the car, some right next to the cameras and the rim of their view."""
    rng = np.random.default_rng(42)
    objects = []
    for i in range(40):
        x, y = rng.uniform(-5.0, 8.0), rng.choice([-1, 1]) * rng.uniform(1.1, 6.0)
        kind = i % 4
        if kind == 0:
            shape = Box(*world(x, y), rng.uniform(-3, 3), rng.uniform(0.2, 4.5), rng.uniform(0.2, 1.8), 0.0,
                        rng.uniform(0.3, 2.5))
        elif kind == 1:
            shape = Cylinder(*world(x, y), rng.uniform(0.05, 0.5), 0.0, rng.uniform(0.3, 3.0))
        elif kind == 2:
            shape = Cylinder(*world(x, y), rng.uniform(0.1, 0.4), 0.0, rng.uniform(0.3, 1.0), rng.uniform(0.0, 0.1))
        else:
            shape = Sphere(*world(x, y), rng.uniform(0.2, 1.8), rng.uniform(0.1, 0.4))
        objects.append(obj(100 + i, shape))
    renderer = FisheyeRenderer(small_rig.cameras, small_rig.vehicle, scene(*objects))
    return renderer, render(renderer)


@pytest.mark.parametrize("which", ["geometry", "clutter"])
def test_tile_culling_matches_brute_force(which, request, small_rig):
    """Every primitive against every ray, without tiles, gives the same nearest hits."""
    renderer, images = request.getfixturevalue(which)
    seen = 0
    for name, cam in small_rig.cameras.items():
        inside = images[name].object_id != OBJ_OUTSIDE
        rays = RayBundle(cam.origin, cam.pixel_rays()[inside])
        best = np.where(rays.dz < 0, -cam.origin[2] / rays.dz, np.inf).astype(np.float32)
        ids = np.zeros(best.size, np.int32)
        shapes = [(OBJ_EGO, p.shape) for p in ego_parts(small_rig.vehicle)]
        for o in renderer.scene.objects:
            for p in o.parts:
                sh = p.shape
                x, y = EGO.to_local(np.array([sh.x, sh.y]))
                kw = {"yaw": sh.yaw - EGO.yaw} if isinstance(sh, Box) else {}
                shapes.append((o.id, replace(sh, x=float(x), y=float(y), **kw)))
        for oid, sh in shapes:
            t = hit_distance(sh, rays)
            nearer = t < best
            best[nearer], ids[nearer] = t[nearer], oid
        seen += int((ids > 0).sum())
        np.testing.assert_array_equal(images[name].object_id[inside], ids)
        np.testing.assert_allclose(images[name].depth[inside], best, rtol=1e-5)
    assert seen > 5000


def test_rays_never_see_the_inside_of_a_primitive():
    rng = np.random.default_rng(0)
    d = rng.standard_normal((500, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    rays = RayBundle(np.array([0.1, -0.2, 0.5]), d)
    for shape in (Box(0.0, 0.0, 0.4, 2.0, 1.0, 0.0, 1.0), Cylinder(0.0, 0.0, 1.0, 0.0, 1.0),
                  Cylinder(0.0, 0.0, 1.0, 0.0, 1.5, radius_top=0.2), Sphere(0.0, 0.0, 0.5, 1.0)):
        assert np.isinf(hit_distance(shape, rays)).all(), shape
    # From outside, the same primitives are hit at the entering surface.
    ray = RayBundle(np.array([-5.0, 0.0, 0.5]), np.array([[1.0, 0.0, 0.0]]))
    assert hit_distance(Cylinder(0.0, 0.0, 1.0, 0.0, 1.0), ray)[0] == pytest.approx(4.0)
    # A cone of radius 1 at z=0 tapering to 0 at z=2 has radius 0.75 at z=0.5.
    assert hit_distance(Cylinder(0.0, 0.0, 1.0, 0.0, 2.0, 0.0), ray)[0] == pytest.approx(4.25, abs=1e-5)
    assert hit_distance(Sphere(0.0, 0.0, 0.5, 1.0), ray)[0] == pytest.approx(4.0)
    down = RayBundle(np.array([0.0, 0.0, 3.0]), np.array([[0.0, 0.0, -1.0]]))
    assert hit_distance(Cylinder(0.0, 0.0, 1.0, 0.0, 1.0), down)[0] == pytest.approx(2.0)  # the top cap


def test_batched_surfaces_match_the_per_primitive_ones():
    """Normals and texture coordinates of many parts at once equal those of each part on its own."""
    rng = np.random.default_rng(1)
    shapes = [Box(1.0, 2.0, 0.7, 2.0, 1.0, 0.2, 1.4), Cylinder(-2.0, 1.0, 0.5, 0.0, 1.8),
              Cylinder(0.5, -2.5, 0.4, 0.1, 0.9, radius_top=0.0), Sphere(-1.5, -2.0, 1.0, 0.6)]
    origin = np.array([0.0, 0.0, 1.0])
    d = rng.standard_normal((20000, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    rays = RayBundle(origin, d)
    ts = np.stack([hit_distance(sh, rays) for sh in shapes])
    k = np.argmin(ts, axis=0)
    hit = np.flatnonzero(np.isfinite(ts.min(axis=0)))
    assert all((k[hit] == i).sum() > 30 for i in range(len(shapes)))  # every primitive is hit many times
    kind = np.array([primitive_kind(sh) for sh in shapes], np.int32)
    radii = np.array([(sh.radius, sh.r_top) if isinstance(sh, Cylinder) else (0, 0) for sh in shapes], np.float32)
    geom = np.array([cull_geometry(sh) for sh in shapes])
    batched = surfaces_at(kind, geom, radii, k[hit], rays.take(hit), ts.min(axis=0)[hit])
    for i, sh in enumerate(shapes):
        sel = np.flatnonzero(k[hit] == i)
        idx = hit[sel]
        single = np.stack(surface_at(sh, rays.take(idx), ts[i, idx]))
        np.testing.assert_allclose(batched[:, sel], single, atol=2e-4)


def test_batched_textures_match_each_texture():
    rng = np.random.default_rng(2)
    n = 3000
    kind = rng.integers(0, len(SURFACE_TEXTURES), n).astype(np.int32)
    rgb = rng.random((n, 3)).astype(np.float32)
    s, z = (rng.random(n) * 10).astype(np.float32), (rng.random(n) * 3).astype(np.float32)
    batched = surface_albedos(kind, rgb, s, z)
    for i, name in enumerate(SURFACE_TEXTURES):
        m = kind == i
        np.testing.assert_allclose(batched[m], surface_albedo(name, rgb[m], s[m], z[m]), atol=1e-6)


def test_ego_body_seen_by_mirror_cameras_not_at_the_front_centre(geometry, small_rig):
    _, images = geometry
    fv = small_rig.cameras["FV"]
    assert images["FV"].object_id[round(fv.cy), round(fv.cx)] != OBJ_EGO
    for name in ("MVL", "MVR"):
        cam = small_rig.cameras[name]
        ids = images[name].object_id
        col = round(cam.cx)
        bottom = ids[-3:, col - 2:col + 3]
        assert (bottom == OBJ_EGO).all(), name
        # The body the camera sees is the ego's flank next to it: depth below the mirror's height + width.
        assert np.all(images[name].depth[-3:, col] < 1.5)
    # The ego body as a whole: a sizeable part of every mirror image, a sliver of the front one.
    frac = {n: float((images[n].object_id == OBJ_EGO).mean()) for n in images}
    assert frac["MVL"] > 0.1 and frac["MVR"] > 0.1
    assert frac["FV"] < frac["MVL"]


def test_outside_the_image_circle_is_black(geometry, small_rig):
    _, images = geometry
    for name, img in images.items():
        lens = effects.Lens(small_rig.cameras[name])
        outside = ~lens.circle
        assert outside.sum() > 0
        assert (img.rgb[outside] == 0).all()
        assert (img.object_id[outside] == OBJ_OUTSIDE).all()
        assert np.isinf(img.depth[outside]).all()
        assert (img.object_id[lens.circle] != OBJ_OUTSIDE).all()
        assert img.rgb.dtype == np.uint8 and img.rgb.shape == (*outside.shape, 3)
        assert img.object_id.dtype == np.int32 and img.depth.dtype == np.float32


def test_render_is_deterministic(geometry):
    renderer, _ = geometry
    cond = Condition("day", rain=True, soiling={"RV": 0.2})
    a = render(renderer, cond, seed=5, t=1.0)
    b = render(renderer, cond, seed=5, t=1.0)
    c = render(renderer, cond, seed=6, t=1.0)
    for n in a:
        assert np.array_equal(a[n].rgb, b[n].rgb)
        assert np.array_equal(a[n].object_id, b[n].object_id)
    assert any(not np.array_equal(a[n].rgb, c[n].rgb) for n in a)  # sensor noise follows the rng


# --- conditions ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def open_lot(small_rig):
    cars = [obj(20 + i, Box(*world(x, y), EGO.yaw, 4.2, 1.8, 0.2, 1.4), material=Material((0.6, 0.1, 0.1), "car_paint",
                                                                                          0.6), cls=1)
            for i, (x, y) in enumerate(((8.0, 3.0), (-4.0, -3.5), (2.0, 4.0)))]
    sc = scene(*cars)
    return FisheyeRenderer(small_rig.cameras, small_rig.vehicle, sc)


def mean(images, names=None):
    return float(np.mean([images[n].rgb.mean() for n in (names or images)]))


def test_night_is_much_darker_than_day(open_lot):
    day = render(open_lot, Condition("day"))
    night = render(open_lot, Condition("night"))
    assert mean(day) > 2.0 * mean(night)
    # The headlights light the ground ahead: the front camera is the brightest at night.
    assert mean(night, ["FV"]) > 1.5 * mean(night, ["MVL", "MVR", "RV"])
    # Object ids do not depend on the light.
    for n in day:
        assert np.array_equal(day[n].object_id, night[n].object_id)


def test_an_unlit_night_leaves_only_the_ego_lamps(small_rig):
    from sim_data.world import Light

    # Street lamps beside the car on both sides: lit, they light what the mirror cameras see.
    lamps = tuple(Light(*world(x, y), 5.0) for x in (-3.0, 1.0, 5.0) for y in (-4.0, 4.0))
    renderer = FisheyeRenderer(small_rig.cameras, small_rig.vehicle, scene(lights=lamps))
    lit = render(renderer, Condition("night"))
    unlit = render(renderer, Condition("night", street_lamps=False))
    sides = ["MVL", "MVR"]
    assert mean(lit, sides) > 3.0 * mean(unlit, sides)
    # The headlights still light the ground ahead: the front camera keeps most of its light.
    assert mean(unlit, ["FV"]) > 0.6 * mean(lit, ["FV"])
    # Daylight does not depend on the lamps.
    day = render(renderer, Condition("day"))
    day_unlit = render(renderer, Condition("day", street_lamps=False))
    assert all(np.array_equal(day[n].rgb, day_unlit[n].rgb) for n in day)


def test_glare_brightens_around_the_projected_sun(open_lot, small_rig):
    fv = small_rig.cameras["FV"]
    az = EGO.yaw  # the sun straight ahead of the car, low
    glare = render(open_lot, Condition("glare", sun_azimuth=az, sun_elevation=math.radians(6)))["FV"].rgb
    behind = render(open_lot, Condition("glare", sun_azimuth=az + math.pi, sun_elevation=math.radians(6)))["FV"].rgb
    sun_v = np.array([math.cos(math.radians(6)), 0.0, math.sin(math.radians(6))])
    (r, c), = pixel(fv, (fv.origin + 1e4 * sun_v)[None])
    win = (slice(max(r - 12, 0), r + 12), slice(c - 12, c + 12))
    assert glare[win].mean() > 200
    assert glare[win].mean() > behind[win].mean() + 40
    # Veiling glare lowers the contrast of the whole image facing the sun.
    gray = glare.mean(axis=2)[effects.Lens(fv).circle]
    gray_b = behind.mean(axis=2)[effects.Lens(fv).circle]
    assert np.percentile(gray, 5) > np.percentile(gray_b, 5)


def test_soiling_covers_the_requested_fraction_and_stays_put(open_lot, small_rig):
    cam = small_rig.cameras["MVL"]
    lens = open_lot._cams["MVL"].lens
    seed = effects.stable_seed(open_lot.scene.seed, "MVL", "soiling")
    mask = effects.soiling_mask(lens, 0.35, seed)
    covered = float((mask[lens.circle] > 0.5).mean())
    assert covered == pytest.approx(0.35, abs=0.05)
    # A fresh lens (another process) builds the identical mask: the blobs are fixed per drive.
    assert np.array_equal(mask, effects.soiling_mask(effects.Lens(cam), 0.35, seed))
    clean = render(open_lot, Condition("day"), seed=1, cameras=["MVL"])["MVL"].rgb.astype(float)
    cond = Condition("day", soiling={"MVL": 0.35})
    dirty0 = render(open_lot, cond, seed=1, t=0.0, cameras=["MVL"])["MVL"].rgb.astype(float)
    dirty1 = render(open_lot, cond, seed=2, t=2.0, cameras=["MVL"])["MVL"].rgb.astype(float)
    core, free = (mask > 0.9) & lens.circle, (mask < 0.01) & lens.circle
    change = np.abs(dirty0 - clean).mean(axis=2)
    assert change[core].mean() > 25  # mud hides the scene
    # Where there is no mud the image is the clean one up to the exposure change the mud causes.
    assert change[free].mean() < change[core].mean() / 3
    # Mud is dark and brownish (red above blue) and in the same place in later frames.
    assert dirty1[core].mean() < clean[core].mean()
    assert dirty1[core][:, 0].mean() > dirty1[core][:, 2].mean()
    assert np.abs(dirty1 - dirty0).mean(axis=2)[core].mean() < 12


def test_rain_drops_stay_for_a_while_then_change(open_lot):
    dry = render(open_lot, Condition("day"), seed=1, cameras=["RV"])["RV"].rgb
    rain = Condition("day", rain=True)
    wet = [render(open_lot, rain, seed=1, t=t, cameras=["RV"])["RV"].rgb for t in (0.5, 1.5, 9.0)]
    # Same rng state: noise and streaks are equal, so only the drops (fixed for a few seconds) can differ.
    assert np.array_equal(wet[0], wet[1])
    assert not np.array_equal(wet[0], wet[2])
    assert np.abs(wet[0].astype(float) - dry).mean() > 3


def test_garage_has_a_ceiling_and_is_lit_by_its_lamps(small_rig):
    from sim_data.world import Light

    lamps = tuple(Light(*world(x, y), 2.7, intensity=0.6) for x in (-4.0, 2.0, 8.0) for y in (-3.0, 3.0))
    sc = scene(obj(31, Box(*world(6.0, 3.0), EGO.yaw, 0.6, 0.6, 0.0, 2.8)), lights=lamps, ceiling=2.8)
    renderer = FisheyeRenderer(small_rig.cameras, small_rig.vehicle, sc)
    images = render(renderer, Condition("night"))
    for name, img in images.items():
        cam = small_rig.cameras[name]
        up = (cam.pixel_rays()[..., 2] > 0.05) & (img.object_id == OBJ_GROUND)
        assert up.any()
        expected = (2.8 - cam.origin[2]) / cam.pixel_rays()[..., 2][up]
        np.testing.assert_allclose(img.depth[up], expected, rtol=2e-4)
        assert np.isfinite(img.depth[img.object_id != OBJ_OUTSIDE]).all()  # no sky indoors
    assert mean(images) > 20  # the lamps light the garage at night


# --- bad input ----------------------------------------------------------------------------------------------

def test_bad_input_raises_typed_errors(small_rig, open_lot):
    bad = obj(1, Box(*world(5.0, 0.0), 0.0, 1.0, 1.0, 0.0, 1.0), material=Material((0.5, 0.5, 0.5), "velvet"))
    with pytest.raises(ConfigError, match=r"object 1 .*velvet"):
        FisheyeRenderer(small_rig.cameras, small_rig.vehicle, scene(bad))
    flat = obj(2, Box(*world(5.0, 0.0), 0.0, 1.0, 0.0, 0.0, 1.0))
    with pytest.raises(ConfigError, match="object 2"):
        FisheyeRenderer(small_rig.cameras, small_rig.vehicle, scene(flat))
    with pytest.raises(ConfigError, match="ids must be unique"):
        FisheyeRenderer(small_rig.cameras, small_rig.vehicle, scene(obj(0, Sphere(*world(5.0, 0.0), 1.0, 0.4))))
    lawn = Scene("driveway", (), Ground(texture="lawn"), EgoPath((0.0,), (EGO,)))
    with pytest.raises(ConfigError, match="ground: unknown texture 'lawn'"):
        FisheyeRenderer(small_rig.cameras, small_rig.vehicle, lawn)
    with pytest.raises(ConfigError, match="no camera 'XV'"):
        render(open_lot, cameras=["XV"])
    with pytest.raises(ConfigError, match="soiling"):
        render(open_lot, Condition("day", soiling={"FV": 1.5}))
