import numpy as np
import pytest

from sensors.bev import BevGrid
from sensors.errors import RigError
from sensors.rig import CAMERA_NAMES, load_rig, rig_from_toml


def test_default_rig_contents(rig):
    assert tuple(rig.cameras) == CAMERA_NAMES
    assert len(rig.uss) == 12
    front = [s for s in rig.uss if s.bumper == "front"]
    assert len(front) == 6
    assert rig.uss_neighbours(0) == (1,)
    assert rig.uss_neighbours(2) == (1, 3)
    assert rig.uss_neighbours(5) == (4,)  # the front-right corner has no neighbour in the rear bumper
    for s in rig.uss:
        assert s.range_min == 0.15 and s.range_max == 5.5
        # Every sensor sits on the body outline and looks away from the car.
        assert rig.vehicle.distance_to_body(np.array(s.position[:2])) < 0.2
        cx, _ = rig.vehicle.centre
        out = np.array(s.position[:2]) - [cx, 0]
        assert np.dot(out, s.axis[:2]) > 0


def test_rig_round_trips_through_self_contained_toml(rig):
    again = rig_from_toml(rig.to_toml(), "inline")
    assert again.vehicle == rig.vehicle
    assert again.uss == rig.uss
    pts = np.array([[5.0, 1.0, 0.0], [2.0, 4.0, 0.3]])
    for n in CAMERA_NAMES:
        assert np.allclose(again.cameras[n].project(pts)[0], rig.cameras[n].project(pts)[0])


def _default_text():
    from sensors.rig import DEFAULT_RIG_PATH

    return DEFAULT_RIG_PATH.read_text(), DEFAULT_RIG_PATH.parent


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("[cameras.RV]\ncalibration", "[cameras.XX]\ncalibration", "missing RV"),
        ("wheelbase = 2.70", "wheelbase = -1", "vehicle.wheelbase"),
        ('calibration = "default/FV.json"', 'calibration = "nope.json"', "camera FV"),
        ("range_max = 5.5", "range_max = 0.1", "range_min"),
        ('name = "FOL"', 'name = "FSL"', "unique"),
        ("position = [3.55, 0.60, 0.50]", "position = [3.55, 0.60]", "position"),
        ("[vehicle]", "[vehicle", "not valid TOML"),
        ('calibration = "default/FV.json"', "calibration = 5", r"'cameras\.FV\.calibration' must be the path"),
        ("camera_tolerance_ms = 20.0", 'camera_tolerance_ms = "20"', r"'sync\.camera_tolerance_ms' is not a number"),
        ("camera_tolerance_ms = 20.0", "camera_tolerance_ms = true", r"'sync\.camera_tolerance_ms' is not a number"),
        ("range_max = 5.5", 'range_max = "5.5"', r"'uss\[0\]\.range_max' is not a number"),
        ("position = [3.30, 0.86, 0.52]", 'position = ["3.30", 0.86, 0.52]', r"'uss\[0\]\.position'"),
        # Ids: whole numbers the DBC's 4-bit Sender/Receiver signals carry (id 100000000 once made the rasteriser
        # allocate a 71 PiB table), each used once.
        ("id = 0\n", 'id = "abc"\n', r"'uss\[0\]\.id' must be a whole number 0\.\.15"),
        ("id = 0\n", "id = 100000000\n", r"'uss\[0\]\.id' must be a whole number 0\.\.15"),
        ("id = 0\n", "id = 16\n", r"'uss\[0\]\.id'"),
        ("id = 0\n", "id = -1\n", r"'uss\[0\]\.id'"),
        ("id = 0\n", "id = 1.7\n", r"'uss\[0\]\.id'"),
        ("id = 0\n", "id = true\n", r"'uss\[0\]\.id'"),
        ("id = 0\n", "id = 1\n", "unique"),
    ],
)
def test_bad_rig_files(tmp_path, old, new, message):
    text, base = _default_text()
    assert old in text
    p = tmp_path / "rig.toml"
    p.write_text(text.replace(old, new, 1))
    (tmp_path / "default").symlink_to(base / "default")
    with pytest.raises(RigError, match=message):
        load_rig(p)


def test_missing_rig_file(tmp_path):
    with pytest.raises(RigError, match="cannot read"):
        load_rig(tmp_path / "none.toml")


def test_bev_grid_conventions(rig):
    g = BevGrid.around(rig.vehicle)
    assert g.shape == (160, 160)
    c = g.cell_centres()
    # Row 0 is the front-most row, column 0 the left-most (+y) column.
    assert c[0, 0, 0] > c[1, 0, 0] and c[0, 0, 1] > c[0, 1, 1]
    assert c[0, 0].tolist() == pytest.approx([rig.vehicle.centre[0] + 7.95, 7.95])
    rc = g.to_cell(c.reshape(-1, 2))
    ij = np.stack(np.meshgrid(np.arange(160), np.arange(160), indexing="ij"), -1).reshape(-1, 2)
    assert np.allclose(rc - 0.5, ij)
    small = g.resampled(0.2)
    assert small.shape == (80, 80) and small.x_max == pytest.approx(g.x_max)


def test_uss_ids_fit_the_dbc_sender_and_receiver_signals():
    from sensors.drivers.can_uss import load_dbc
    from sensors.rig import USS_ID_MAX

    echo = load_dbc().get_message_by_name("USS_Echo")
    for name in ("Sender", "Receiver"):
        assert (1 << echo.get_signal_by_name(name).length) - 1 == USS_ID_MAX


def test_the_rasteriser_tables_do_not_grow_with_the_sensor_ids(rig):
    from dataclasses import replace

    from perception.bev_config import BevConfig
    from perception.uss_raster import UssRasterizer
    from sensors.messages import UssCycle

    # Ids spread over 0..15 (as a rig file may have them) give the same raster as 0..11 for the same echoes.
    ids = {s.id: 15 - s.id for s in rig.uss}
    spread = replace(rig, uss=tuple(replace(s, id=ids[s.id]) for s in rig.uss))
    config = BevConfig(cell=0.4)
    plain, moved = UssRasterizer(rig, config), UssRasterizer(spread, config)
    assert moved._lut.shape == (12, 12)
    echoes = [(2, 2, 1.5, 0.6), (2, 3, 1.7, 0.4), (8, 8, 0.9, 0.8)]
    status = {s.id: 0 for s in rig.uss}

    def cycle(mapping):
        e = np.array([(mapping[s], mapping[r], d, a) for s, r, d, a in echoes])
        return UssCycle(0, 0, e[:, 0], e[:, 1], e[:, 2], e[:, 3], {mapping[k]: v for k, v in status.items()})

    assert np.array_equal(plain(cycle({k: k for k in ids})), moved(cycle(ids)))


def test_a_bad_rig_file_is_one_line_and_exit_2_through_the_cli(tmp_path, capsys):
    from app.cli import main

    text, base = _default_text()
    p = tmp_path / "rig.toml"
    p.write_text(text.replace("id = 0\n", "id = 100000000\n", 1))
    (tmp_path / "default").symlink_to(base / "default")
    assert main(["simulate", "--out", str(tmp_path / "out"), "--rig", str(p), "--frames", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("nearfield simulate: error: ") and "'uss[0].id'" in err


def test_a_rig_file_that_is_not_text_is_one_line_and_exit_2(tmp_path, capsys):
    from app.cli import main

    p = tmp_path / "rig.toml"
    p.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    with pytest.raises(RigError, match="not UTF-8 text"):
        load_rig(p)
    assert main(["simulate", "--out", str(tmp_path / "out"), "--rig", str(p), "--frames", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{p}: not a rig file" in err and not (tmp_path / "out").exists()
