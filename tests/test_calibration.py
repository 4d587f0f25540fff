import json
import math

import cv2
import numpy as np
import pytest

from sensors.calibration import (
    Extrinsic,
    KannalaBrandtCamera,
    WoodScapeCamera,
    camera_from_dict,
    load_camera,
)
from sensors.errors import CalibrationError
from sensors.geometry import camera_rotation


def _rays_over_fov(n=4000, theta_max_deg=95.0, seed=0):
    rng = np.random.default_rng(seed)
    th = np.radians(theta_max_deg) * np.sqrt(rng.random(n))
    th[:3] = [0.0, 1e-6, np.radians(theta_max_deg)]
    ph = rng.random(n) * 2 * np.pi
    return np.stack([np.sin(th) * np.cos(ph), np.sin(th) * np.sin(ph), np.cos(th)], 1)


@pytest.mark.parametrize("name", ["FV", "RV", "MVL", "MVR"])
def test_woodscape_round_trip_whole_fov(rig, name):
    cam = rig.cameras[name]
    rays_cam = _rays_over_fov()
    # Points at various depths in the vehicle frame along those rays.
    depth = np.linspace(0.3, 20.0, len(rays_cam))[:, None]
    pts = rays_cam * depth @ cam.extrinsic.rotation.T + cam.origin
    uv, _valid = cam.project(pts)
    back = cam.unproject(uv)
    assert np.allclose(np.linalg.norm(back, axis=1), 1.0)
    uv2, _ = cam.project(cam.origin + back * 5.0)
    err = np.abs(uv2 - uv).max()
    assert err < 1e-3
    # The unprojected ray is the direction of the original point.
    d = pts - cam.origin
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    assert np.degrees(np.arccos(np.clip((back * d).sum(1), -1, 1))).max() < 1e-4


def test_known_projection_on_axis_and_at_90_degrees():
    k = (330.0, -20.0, 30.0, -5.0)
    cam = WoodScapeCamera("T", k, 1280, 966, 4.0, -3.0, 1.0, Extrinsic(np.eye(3), np.zeros(3)))
    uv, valid = cam.project_camera(np.array([[0.0, 0.0, 2.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
    cx, cy = 4.0 + 640 - 0.5, -3.0 + 483 - 0.5
    assert uv[0] == pytest.approx([cx, cy])
    t = math.pi / 2
    rho = k[0] * t + k[1] * t**2 + k[2] * t**3 + k[3] * t**4
    assert uv[1] == pytest.approx([cx + rho, cy])
    assert uv[2] == pytest.approx([cx, cy + rho])
    assert valid[0] and valid[1]


def test_fov_limit_marks_points_behind_invalid():
    cam = WoodScapeCamera("T", (330.0, -20.0, 30.0, -5.0), 1280, 966, 0, 0, 1.0, Extrinsic(np.eye(3), np.zeros(3)))
    th = np.radians([94.0, 96.0, 150.0])
    p = np.stack([np.sin(th), np.zeros(3), np.cos(th)], 1)
    _, valid = cam.project_camera(p)
    # 94° is inside the 190° field of view but its radius (~614 px) is inside the 1280 px width.
    assert valid.tolist() == [True, False, False]


def test_kannala_brandt_matches_opencv_fisheye():
    cam = KannalaBrandtCamera("T", 320.0, 318.0, 641.0, 480.0, (0.02, -0.005, 0.001, -0.0002), 1280, 966,
                              Extrinsic(np.eye(3), np.zeros(3)))
    rays = _rays_over_fov(500, 80.0)
    pts = rays * 3.0
    uv, _ = cam.project_camera(pts)
    K, D = cam.opencv_matrices()
    ocv, _ = cv2.fisheye.projectPoints(pts.reshape(-1, 1, 3), np.zeros(3), np.zeros(3), K, D)
    assert np.abs(ocv.reshape(-1, 2) - uv).max() < 1e-6
    # Round trip over the full 190° as well.
    rays = _rays_over_fov(500, 95.0)
    uv, _ = cam.project_camera(rays)
    uv2, _ = cam.project_camera(cam.unproject_camera(uv))
    assert np.abs(uv2 - uv).max() < 1e-3


def test_conversion_between_models_by_fitting(rig):
    ws = rig.cameras["FV"]
    kb, residual = ws.to_kannala_brandt()
    assert residual < 1.0
    rays = _rays_over_fov(300)
    a, _ = ws.project_camera(rays)
    b, _ = kb.project_camera(rays)
    assert np.abs(a - b).max() < 1.0
    back, residual2 = kb.to_woodscape()
    assert residual2 < 1.0
    assert np.abs(back.project_camera(rays)[0] - a).max() < 1.5


def test_scaled_camera_maps_pixels_consistently(rig):
    cam = rig.cameras["MVL"]
    half = cam.scaled(0.5)
    assert (half.width, half.height) == (640, 483)
    pts = np.array([[2.0, 3.0, 0.0], [1.0, 2.0, 0.5], [4.0, 1.5, 1.0]])
    uv, _ = cam.project(pts)
    uvh, _ = half.project(pts)
    assert np.allclose((uv + 0.5) * 0.5 - 0.5, uvh, atol=1e-9)


def _ws_dict():
    return {
        "name": "FV",
        "extrinsic": {"translation": [3.6, 0.0, 0.6], "quaternion": [0.5, -0.5, 0.5, -0.5]},
        "intrinsic": {"width": 1280, "height": 966, "k4": -7.201, "k3": 48.275, "k2": -31.988, "k1": 339.749,
                      "aspect_ratio": 1.0, "cy_offset": -3.093, "cx_offset": 3.942, "model": "radial_poly"},
    }


def test_load_reads_by_key_name_not_order(tmp_path):
    p = tmp_path / "FV.json"
    p.write_text(json.dumps(_ws_dict()))
    cam = load_camera(p)
    assert cam.k == (339.749, -31.988, 48.275, -7.201)
    assert cam.origin.tolist() == [3.6, 0.0, 0.6]


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda d: d["intrinsic"].pop("k3"), "intrinsic.k3"),
        (lambda d: d["intrinsic"].__setitem__("k1", float("nan")), "intrinsic.k1"),
        (lambda d: d["intrinsic"].__setitem__("width", 0), "width"),
        (lambda d: d["extrinsic"].__setitem__("quaternion", [0.5, 0.5, 0.5, 0.9]), "extrinsic.quaternion"),
        (lambda d: d["intrinsic"].__setitem__("k4", -60.0), "not monotonic"),
        (lambda d: d["extrinsic"].pop("translation"), "extrinsic.translation"),
        (lambda d: d["intrinsic"].__setitem__("model", "pinhole"), "intrinsic.model"),
        # Loose types: a quoted number and a bool are typos, not numbers.
        (lambda d: d["intrinsic"].__setitem__("width", "1280"), "intrinsic.width"),
        (lambda d: d["intrinsic"].__setitem__("width", True), "intrinsic.width"),
        (lambda d: d["intrinsic"].__setitem__("k1", "339.7"), "intrinsic.k1"),
        (lambda d: d["intrinsic"].__setitem__("fov_deg", "wide"), "intrinsic.fov_deg"),
        (lambda d: d["extrinsic"].__setitem__("translation", ["3.6", 0.0, 0.6]), "extrinsic.translation"),
    ],
)
def test_bad_calibration_names_file_and_field(tmp_path, mutate, field):
    d = _ws_dict()
    mutate(d)
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(d))
    with pytest.raises(CalibrationError) as e:
        load_camera(p)
    assert str(p) in str(e.value)
    assert field in str(e.value)


def test_unreadable_files(tmp_path):
    with pytest.raises(CalibrationError, match="cannot read"):
        load_camera(tmp_path / "missing.json")
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(CalibrationError, match="not valid JSON"):
        load_camera(tmp_path / "x.json")
    with pytest.raises(CalibrationError, match="JSON object"):
        camera_from_dict([1, 2], "list.json")


def test_default_rig_cameras_look_where_a_production_rig_does(rig):
    # Optical axes: FV forward and down, RV backward and down, mirrors sideways and steeply down.
    axis = {n: c.extrinsic.rotation[:, 2] for n, c in rig.cameras.items()}
    assert axis["FV"][0] > 0.9 and axis["FV"][2] < -0.1
    assert axis["RV"][0] < -0.8 and axis["RV"][2] < -0.3
    assert axis["MVL"][1] > 0.5 and axis["MVL"][2] < -0.6
    assert axis["MVR"][1] < -0.5 and axis["MVR"][2] < -0.6
    # The camera image "up" points roughly to the sky for all of them (no upside-down mounts).
    for c in rig.cameras.values():
        assert c.extrinsic.rotation[:, 1][2] < 0
    assert camera_rotation(0, 0)[:, 2].tolist() == [1.0, 0.0, 0.0]
