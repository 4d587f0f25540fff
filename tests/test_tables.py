import subprocess
import sys

import numpy as np
import pytest

from perception.bev_config import BevConfig, ego_mask
from perception.tables import INVALID, camera_tables, tables_checksum
from sensors.calibration import Extrinsic
from sensors.classes import IGNORE
from sensors.errors import ConfigError
from sensors.geometry import Pose2D
from sensors.rig import CAMERA_NAMES

CONFIG = BevConfig()  # 16 m at 0.2 m: 80 x 80, heights 0.25 / 0.75 / 1.25


@pytest.fixture(scope="module")
def tables(rig):
    return camera_tables(rig, CONFIG)


@pytest.fixture(scope="module")
def grid(rig):
    return CONFIG.grid(rig)


def to_pixel(norm, cam):
    """Inverse of the align_corners=False normalisation."""
    return np.stack([((norm[..., 0] + 1) * cam.width - 1) / 2, ((norm[..., 1] + 1) * cam.height - 1) / 2], -1)


# --- config ---------------------------------------------------------------------------------------------------

def test_config_grid_is_centred_on_the_body(rig, grid):
    assert grid.shape == (80, 80) and grid.cell == 0.2
    assert (grid.centre_x, grid.centre_y) == rig.vehicle.centre
    assert BevConfig(cell=0.1).grid(rig).shape == (160, 160)


def test_config_round_trips_and_names_bad_fields():
    cfg = BevConfig.from_dict({"cell": 0.1, "heights": [0.5, 1.0], "image_size": [320, 240]}, "model.toml")
    assert cfg == BevConfig(cell=0.1, heights=(0.5, 1.0), image_size=(320, 240))
    assert BevConfig.from_dict(cfg.to_dict()) == cfg
    hash(cfg)  # frozen and hashable: usable as a cache key
    bad = [({"cel": 0.1}, "bev.cel"), ({"cell": 0.3}, "bev.cell"), ({"cell": -0.1}, "bev.cell"),
           ({"heights": []}, "bev.heights"), ({"heights": [0.5, "x"]}, "bev.heights"),
           ({"image_size": [256]}, "bev.image_size"), ({"image_size": [256.5, 192]}, "bev.image_size"),
           ({"extent": float("nan")}, "bev.extent")]
    for d, field in bad:
        with pytest.raises(ConfigError, match=field) as e:
            BevConfig.from_dict(d, "model.toml")
        assert "model.toml" in str(e.value)


def test_ego_mask_matches_the_ground_truth_ignore_cells(rig):
    from sim_data.groundtruth import rasterize_truth

    for cell in (0.2, 0.1):
        grid = BevConfig(cell=cell).grid(rig)
        gt = rasterize_truth([], Pose2D(0.0, 0.0, 0.0), rig.vehicle, grid, 0)
        assert np.array_equal(ego_mask(rig.vehicle, grid), gt.occupancy == IGNORE)
    assert ego_mask(rig.vehicle, BevConfig(cell=0.1).grid(rig)).sum() == 44 * 18  # 4.4 m x 1.8 m


# --- tables ---------------------------------------------------------------------------------------------------

def test_table_layout(tables, grid):
    assert tables.cameras == CAMERA_NAMES
    assert tables.grid.shape == (4, 3 * 80, 80, 2) and tables.grid.dtype == np.float32
    assert tables.valid.shape == (4, 3, 80, 80) and tables.valid.dtype == np.float32
    assert set(np.unique(tables.valid)) == {0.0, 1.0}
    ok = tables.valid.reshape(4, 3 * 80, 80) > 0
    assert np.all(np.abs(tables.grid[ok]) <= 1.0)
    assert np.all(tables.grid[~ok] == INVALID)


def test_table_entries_are_the_projection_of_the_cell_centre_at_each_height(rig, tables, grid):
    rng = np.random.default_rng(1)
    xy = rng.uniform([grid.x_max - 16, grid.y_max - 16], [grid.x_max, grid.y_max], (400, 2))
    rc = np.floor(grid.to_cell(xy)).astype(int)
    centres = grid.cell_centres()[rc[:, 0], rc[:, 1]]
    assert np.all(np.abs(centres - xy) <= grid.cell / 2 + 1e-9)  # the point lies in the cell to_cell names
    checked = 0
    for i, name in enumerate(CAMERA_NAMES):
        cam = rig.camera(name)
        for z, h in enumerate(CONFIG.heights):
            uv, ok = cam.project(np.column_stack([centres, np.full(len(xy), h)]))
            entry = tables.grid[i, z * grid.rows + rc[:, 0], rc[:, 1]]
            valid = tables.valid[i, z, rc[:, 0], rc[:, 1]] > 0
            assert np.all(valid <= ok)  # never valid where the camera model says the point is not seen
            assert np.allclose(to_pixel(entry[valid], cam), uv[valid], atol=1e-2)
            checked += valid.sum()
            # The world point itself (not the cell centre) lands within the pixels one cell spans there.
            uv_point, _ = cam.project(np.column_stack([xy, np.full(len(xy), h)]))
            assert np.all(np.linalg.norm(uv_point[valid] - uv[valid], axis=1) < 0.2 * cam.width)
    assert checked > 1000


def test_the_front_camera_axis_projects_near_the_principal_column(rig, tables, grid):
    # Cells straight ahead of FV, 2..5 m in front of the bumper: their centres sit 0.1 m left of the axis, so
    # they project a little left of the principal point's column, and farther cells higher in the image.
    fv = rig.camera("FV")
    rows = [int(grid.to_cell(np.array([x, 0.05]))[0]) for x in (9.0, 8.0, 7.0, 6.0, 5.0)]
    col = int(grid.to_cell(np.array([6.0, 0.05]))[1])
    u, v = to_pixel(tables.grid[0, rows, col], fv).T
    assert np.all((u < fv.cx) & (u > fv.cx - 40))
    assert np.all(np.diff(u) < 0)  # the 0.1 m offset subtends a larger angle nearer the camera
    assert np.all(np.diff(v) > 0)
    assert np.all(tables.valid[0, :, rows, col] == 1)


def test_each_camera_sees_its_side_and_not_the_opposite_one(rig, tables, grid):
    body = rig.vehicle
    xy = grid.cell_centres()
    front = (xy[..., 0] > body.x_max + 0.5) & (np.abs(xy[..., 1]) < 3)
    rear = (xy[..., 0] < body.x_min - 0.5) & (np.abs(xy[..., 1]) < 3)
    left = (xy[..., 1] > body.width / 2 + 0.5) & (xy[..., 0] > body.x_min) & (xy[..., 0] < body.x_max)
    right = (xy[..., 1] < -body.width / 2 - 0.5) & (xy[..., 0] > body.x_min) & (xy[..., 0] < body.x_max)
    ground = tables.valid[:, 0]  # 0.25 m above ground
    expect = {"FV": (front, rear), "RV": (rear, front), "MVL": (left, right), "MVR": (right, left)}
    for i, name in enumerate(CAMERA_NAMES):
        sees, opposite = expect[name]
        assert ground[i][sees].mean() > 0.9, name
        assert ground[i][opposite].mean() == 0.0, name


def test_cells_under_the_car_are_invalid_for_every_camera(rig, tables, grid):
    under = ego_mask(rig.vehicle, grid)
    assert tables.valid[:, :, under].max() == 0
    assert np.all(tables.grid.reshape(4, 3, 80, 80, 2)[:, :, under] == INVALID)
    # Without the body as occluder the mirror cameras would claim to see the ground under the doors.
    bare = camera_tables(rig, CONFIG, occlude_body=False)
    assert bare.valid[:, :, under].max() == 1
    # Every cell outside the body is seen by some camera at the lowest height.
    assert tables.valid[:, 0].max(axis=0)[~under].min() == 1


def test_tables_are_resolution_independent(rig, tables):
    half = camera_tables(rig.scaled(0.5), CONFIG)
    both = (half.valid > 0) & (tables.valid > 0)
    assert both.sum() > 0.95 * (tables.valid > 0).sum()
    a = tables.grid.reshape(4, 3, 80, 80, 2)[both]
    b = half.grid.reshape(4, 3, 80, 80, 2)[both]
    assert np.max(np.abs(a - b)) < 1e-4


def test_checksum_follows_the_calibration(rig, tables):
    assert tables_checksum(camera_tables(rig, CONFIG)) == tables_checksum(tables)
    fv = rig.camera("FV")
    shifted = Extrinsic(fv.extrinsic.rotation, fv.extrinsic.translation + np.array([0.0, 0.01, 0.0]))
    moved = type(fv)(fv.name, fv.k, fv.width, fv.height, fv.cx_offset, fv.cy_offset, fv.aspect, shifted, fv.fov_deg)
    other = camera_tables(rig.with_cameras({**rig.cameras, "FV": moved}), CONFIG)
    assert tables_checksum(other) != tables_checksum(tables)
    assert np.array_equal(other.grid[1:], tables.grid[1:])  # only FV's table changed
    assert tables_checksum(camera_tables(rig, BevConfig(heights=(0.25, 0.75)))) != tables_checksum(tables)


def test_grid_sample_reads_the_projected_pixel(rig, tables):
    """The contract with the network: torch's grid_sample(align_corners=False) at the table reads the image at
    the pixel the camera model gives, for an image at another resolution than the calibration's."""
    torch = pytest.importorskip("torch")

    W, H = CONFIG.image_size
    for i, name in enumerate(CAMERA_NAMES):
        cam = rig.camera(name)
        # An image whose two channels hold each pixel centre's position in calibration pixels: bilinear
        # interpolation of a linear ramp is exact, so the sample is the sampled position.
        u = (np.arange(W) + 0.5) * cam.width / W - 0.5
        v = (np.arange(H) + 0.5) * cam.height / H - 0.5
        img = np.stack([np.broadcast_to(u, (H, W)), np.broadcast_to(v[:, None], (H, W))])
        image = torch.from_numpy(img[None].astype(np.float32))
        out = torch.nn.functional.grid_sample(image, torch.from_numpy(tables.grid[i:i + 1]), mode="bilinear",
                                              padding_mode="zeros", align_corners=False)[0].numpy()
        got = out.reshape(2, 3, 80, 80).transpose(1, 2, 3, 0)  # (Z, rows, cols, 2)
        valid = tables.valid[i] > 0
        expect = to_pixel(tables.grid[i].reshape(3, 80, 80, 2), cam)
        # Away from the last half pixel of the border, where zero padding blends in.
        margin = np.array([cam.width / W, cam.height / H])
        inner = valid & np.all((expect > margin) & (expect < np.array([cam.width, cam.height]) - 1 - margin), -1)
        assert inner.sum() > 0.9 * valid.sum()
        assert np.allclose(got[inner], expect[inner], atol=0.05)
        assert np.all(got[~valid] == 0)


def test_preprocessing_modules_do_not_import_torch():
    code = ("import sys; import perception.bev_config, perception.tables, perception.uss_raster, "
            "perception.postprocess; bad = [m for m in ('torch', 'PyQt6') if m in sys.modules]; "
            "sys.exit(f'imported {bad}' if bad else 0)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr


def test_a_camera_inside_the_body_box_warns_instead_of_going_blind(rig, caplog):
    mvl = rig.camera("MVL")
    inside = Extrinsic(mvl.extrinsic.rotation, np.array([1.95, 0.8, 1.0]))
    moved = type(mvl)(mvl.name, mvl.k, mvl.width, mvl.height, mvl.cx_offset, mvl.cy_offset, mvl.aspect, inside,
                      mvl.fov_deg)
    with caplog.at_level("WARNING", logger="perception.tables"):
        t = camera_tables(rig.with_cameras({**rig.cameras, "MVL": moved}), CONFIG)
    assert "camera MVL" in caplog.text and "inside the vehicle box" in caplog.text
    assert t.valid[2].mean() > 0.3
