"""The viewer's Qt-free core: ultrasonic echo geometry, BEV layer placement, the random-access frame source, the
session that runs zoo models on frames (IoU, checksum), the MP4 export and the demo-drive cache."""

import shutil
from dataclasses import replace

import cv2
import numpy as np
import pytest

from app.frames import FrameSource
from app.render import (
    BACKGROUND,
    FAILED_COLOR,
    LEVEL_COLORS,
    SECTOR_LABEL_SCALE,
    Layers,
    _runs,
    bev_picture,
    camera_failures,
    distance_text,
    echo_curves,
    label_anchors,
    legend,
    nearest_direct,
    paint_layer,
    ring_key,
    sector_labels,
    sector_polygons,
    shown_distance,
    shown_levels,
    uss_strip,
    view_grid,
)
from app.session import DriveSession, compose, write_video
from perception.postprocess import SectorLayout
from sensors.bev import BevGrid
from sensors.classes import CLASS_COLORS, IGNORE, SemanticClass
from sensors.errors import ChecksumError, ConfigError, LogFormatError
from sensors.messages import CameraImage, UssCycle, UssStatus
from sensors.replay import replay_frames
from sim_data.simulate import DriveSpec, simulate_drive


@pytest.fixture(scope="module")
def drive(tmp_path_factory, rig):
    return simulate_drive(DriveSpec("viewer", 11, 6), tmp_path_factory.mktemp("drives"), rig, scale=0.25)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """Two tiny ultrasonic-only models whose class head is constant: one says vehicle everywhere, one structure."""
    torch = pytest.importorskip("torch")
    return make_zoo(torch, tmp_path_factory.mktemp("zoo"))


def make_zoo(torch, root):
    from deploy.export import export_onnx, input_shapes
    from deploy.zoo import ZooModel, read_zoo, register
    from perception.bev_config import BevConfig
    from perception.model import FusionNet, ModelConfig

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    bev = BevConfig(extent=16.0, cell=0.4, heights=(0.25, 0.75), image_size=(64, 48))
    config = ModelConfig(name="tiny", modality="uss", uss_width=0.125, neck_channels=8, bev_channels=8,
                         decoder_channels=8, bev=bev)
    try:
        for name, cls in (("tiny-vehicle", SemanticClass.VEHICLE), ("tiny-structure", SemanticClass.STRUCTURE)):
            torch.manual_seed(0)
            net = FusionNet(config).eval()
            head = net.decoder.stage2[-1]
            with torch.no_grad():
                head.weight.zero_()
                head.bias.zero_()
                head.bias[int(cls)] = 5.0
            onnx = export_onnx(net, config, root / f"{name}.onnx")
            register(ZooModel(name, onnx, "", "test", bev=bev, inputs=input_shapes(onnx)), manifest=root / "ZOO.toml")
    finally:
        torch.set_num_threads(threads)
    return read_zoo(root / "ZOO.toml")


# --- ultrasonic geometry ------------------------------------------------------------------------------------------

def test_a_direct_echo_is_an_arc_of_its_distance_across_the_sensor_opening(rig):
    s = rig.uss[2]
    curves = echo_curves(UssCycle(0, 0, [s.id], [s.id], [1.7], [0.5]), rig)
    assert len(curves) == 1 and curves[0][0]
    pts = curves[0][1]
    np.testing.assert_allclose(np.hypot(*(pts - s.position[:2]).T), 1.7, atol=1e-9)
    bearings = np.arctan2(*(pts - s.position[:2]).T[::-1])
    np.testing.assert_allclose([bearings.min(), bearings.max()],
                               [s.yaw - s.horizontal_opening / 2, s.yaw + s.horizontal_opening / 2], atol=1e-9)


def test_a_cross_echo_is_the_ellipse_arc_with_both_sensors_as_foci_inside_both_beams(rig):
    a, b = rig.uss[2], rig.uss[3]
    curves = echo_curves(UssCycle(0, 0, [a.id], [b.id], [1.2], [0.5]), rig)
    assert curves and not any(direct for direct, _ in curves)
    pts = np.concatenate([p for _, p in curves])
    path = np.hypot(*(pts - a.position[:2]).T) + np.hypot(*(pts - b.position[:2]).T)
    np.testing.assert_allclose(path, 2 * 1.2, atol=1e-9)
    assert (pts[:, 0] > a.position[0]).all()  # in front of the bumper: the beams look forward
    # Shorter than half the spacing of the two sensors: no ellipse exists, nothing is drawn.
    half_gap = np.hypot(*(np.subtract(a.position[:2], b.position[:2]))) / 2
    assert echo_curves(UssCycle(0, 0, [a.id], [b.id], [half_gap * 0.9], [0.5]), rig) == []


def test_runs_of_a_closed_curve_join_across_the_seam():
    pts = np.arange(10, dtype=float)[:, None] * [1.0, 0.0]
    keep = np.array([1, 1, 0, 0, 1, 1, 0, 1, 1, 1], bool)
    runs = _runs(pts, keep, closed=True)
    assert sorted(r[:, 0].tolist() for r in runs) == [[4.0, 5.0], [7.0, 8.0, 9.0, 0.0, 1.0]]
    assert [r[:, 0].tolist() for r in _runs(pts, keep, closed=False)] == [[0.0, 1.0], [4.0, 5.0], [7.0, 8.0, 9.0]]


def test_nearest_direct_echo_per_sensor_in_rig_order(rig):
    ids = [s.id for s in rig.uss]
    cycle = UssCycle(0, 0, sender=[ids[1], ids[1], ids[4], ids[4], 99], receiver=[ids[1], ids[1], ids[5], ids[4], 99],
                     distance=[2.0, 1.5, 0.4, 0.9, 0.2], amplitude=[1] * 5)
    d = nearest_direct(cycle, rig)
    assert d[1] == pytest.approx(1.5) and d[4] == pytest.approx(0.9)  # the cross echo 4->5 and sensor 99 do not count
    assert np.isnan(np.delete(d, [1, 4])).all()
    assert np.isnan(nearest_direct(None, rig)).all()


# --- the BEV picture ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cell", [0.1, 0.4])
def test_a_layer_cell_covers_exactly_its_square_of_the_picture(rig, cell):
    view = view_grid(rig, 16.0, 640)  # 2.5 cm a pixel
    grid = BevGrid.around(rig.vehicle, 16.0, cell)
    cm = np.zeros(grid.shape, np.uint8)
    cm[0, 0], cm[-1, -1] = SemanticClass.VEHICLE, SemanticClass.PEDESTRIAN
    pic = np.zeros((640, 640, 3), np.uint8)
    paint_layer(pic, view, cm, grid, 1.0)
    n = round(cell / view.cell)
    for cls, corner in ((SemanticClass.VEHICLE, slice(0, n)), (SemanticClass.PEDESTRIAN, slice(640 - n, 640))):
        hit = np.all(pic == CLASS_COLORS[cls], axis=-1)
        assert hit.sum() == n * n and hit[corner, corner].all()
    pic[:] = 100
    paint_layer(pic, view, cm, grid, 0.25)  # opacity blends with what is below
    np.testing.assert_array_equal(pic[-1, -1], np.round(100 * 0.75 + 0.25 * np.array(CLASS_COLORS[2])))


def test_layers_toggle_and_a_failed_sensor_is_marked(rig):
    grid = BevGrid.around(rig.vehicle, 16.0, 0.2)
    truth = np.zeros(grid.shape, np.uint8)
    truth[5:10, 5:10] = SemanticClass.STRUCTURE
    probe = (7 * 8 + 4, 7 * 8 + 4)  # a truth cell's middle at 8 px a cell (640 px over 16 m at 0.2 m)
    on = bev_picture(rig, 640, 16.0, Layers(truth_opacity=1.0), truth=(truth, grid))
    off = bev_picture(rig, 640, 16.0, Layers(truth=False), truth=(truth, grid))
    assert tuple(on[probe]) == CLASS_COLORS[SemanticClass.STRUCTURE]
    assert tuple(off[probe]) == BACKGROUND
    # Over a prediction the truth is outlined: its border in its colour, its inside showing the prediction.
    pred = np.full(grid.shape, SemanticClass.VEHICLE, np.uint8)
    both = bev_picture(rig, 640, 16.0, Layers(truth_opacity=1.0, prediction_opacity=1.0), truth=(truth, grid),
                       prediction=(pred, grid))
    assert tuple(both[probe]) == CLASS_COLORS[SemanticClass.VEHICLE]
    assert tuple(both[5 * 8, 7 * 8]) == tuple(both[7 * 8, 10 * 8 - 1]) == CLASS_COLORS[SemanticClass.STRUCTURE]
    s = rig.uss[0]
    cycle = UssCycle(0, 0, [], [], [], [], status={s.id: UssStatus.NO_RESPONSE})
    pic = bev_picture(rig, 640, 16.0, uss=cycle)
    col, row = np.round(view_grid(rig, 16.0, 640).to_pixel(np.array([s.position[:2]]))[0]).astype(int)
    patch = pic[row - 4: row + 5, col - 4: col + 5]
    assert np.all(patch == FAILED_COLOR, axis=-1).sum() >= 10


def test_cells_the_memory_recalled_are_hatched_over_their_class(rig):
    from app.render import RECALLED_COLOR

    grid = BevGrid.around(rig.vehicle, 16.0, 0.2)
    pred = np.zeros(grid.shape, np.uint8)
    pred[5:10, 5:10] = SemanticClass.LOW_OBSTACLE
    recalled = np.zeros(grid.shape, bool)
    recalled[5:10, 5:7] = True  # two of the five columns came from the memory
    layers = Layers(prediction_opacity=1.0)
    plain = bev_picture(rig, 640, 16.0, layers, prediction=(pred, grid))
    marked = bev_picture(rig, 640, 16.0, layers, prediction=(pred, grid), recalled=(recalled, grid))
    changed = np.any(plain != marked, axis=-1)
    rows, cols = np.nonzero(changed)
    assert rows.min() >= 5 * 8 and rows.max() < 10 * 8 and cols.min() >= 5 * 8 and cols.max() < 7 * 8  # only there
    block = marked[5 * 8:10 * 8, 5 * 8:7 * 8]
    stripes = np.all(block == RECALLED_COLOR, axis=-1).mean()
    low = np.all(block == CLASS_COLORS[SemanticClass.LOW_OBSTACLE], axis=-1).mean()
    assert 0.2 < stripes < 0.45 and stripes + low == 1.0  # striped, the class colour still between the stripes
    hidden = bev_picture(rig, 640, 16.0, Layers(prediction=False), prediction=(pred, grid), recalled=(recalled, grid))
    assert np.array_equal(hidden, bev_picture(rig, 640, 16.0, Layers(prediction=False)))  # with its layer off


def test_sector_bands_lie_just_outside_the_body(rig):
    grid = BevGrid.around(rig.vehicle, 16.0, 0.2)
    sectors = SectorLayout(rig, grid)(np.zeros(grid.shape, np.uint8))
    polys = sector_polygons(sectors, rig, inner=0.1, width=0.2)
    assert len(polys) == len(sectors.names) == 16
    d = rig.vehicle.distance_to_body(np.concatenate(polys))
    np.testing.assert_allclose(np.sort(d)[[0, -1]], [0.1, 0.3], atol=1e-6)
    assert np.isclose(d, 0.1, atol=1e-6).sum() == np.isclose(d, 0.3, atol=1e-6).sum() == len(d) // 2


def _label_box(text, org):
    (w, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, SECTOR_LABEL_SCALE, 1)
    return org[0], org[1] - h, org[0] + w, org[1] + base


def test_sector_labels_never_overlap_and_keep_the_nearest(rig):
    grid = BevGrid.around(rig.vehicle, 16.0, 0.2)
    view = view_grid(rig, 16.0, 640)
    sectors = SectorLayout(rig, grid)(np.zeros(grid.shape, np.uint8))
    polys = sector_polygons(sectors, rig)
    anchors, outward = label_anchors(view, rig, polys)
    n = len(sectors.names)
    # Every sector warned, the nearest obstacle behind the rear bumper's third sector.
    rear = [k for k, name in enumerate(sectors.names) if name.startswith("rear")]
    dist = np.linspace(0.25, 1.4, n).astype(np.float32)[::-1].copy()
    dist[rear[2]] = 0.11
    warned = replace(sectors, distance=dist, level=np.full(n, 3, np.uint8))
    labels = sector_labels(warned, anchors, outward=outward)
    texts = [t for t, _ in labels]
    assert texts[0] == "0.11" and labels[0][1][0] < anchors[rear[2]][0] < labels[0][1][0] + 30  # nearest first
    assert labels[0][1][1] - 8 > anchors[rear[2]][1]  # behind the rear bumper's band, not on it
    assert 4 <= len(labels) < n  # crowded bumpers lose labels, the flanks keep theirs

    boxes = [_label_box(*lbl) for lbl in labels]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert not (a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]), (a, b)
    # Beyond the ring: no label covers a pixel of a band (which obstacles in it would share).
    band = np.zeros((640, 640), np.uint8)
    for p in polys:
        cv2.fillPoly(band, [np.round(view.to_pixel(p)).astype(np.int32)], 1)
    for x0, y0, x1, y1 in boxes:
        assert not band[y0:y1 + 1, x0:x1 + 1].any(), (x0, y0, x1, y1)
    # Clear sectors and sectors without a distance get no label; spread-out warnings all keep theirs.
    level = np.zeros(n, np.uint8)
    level[::4] = 2
    dist = np.full(n, np.inf, np.float32)
    dist[::4] = 0.6
    spread = sector_labels(replace(sectors, distance=dist, level=level), anchors, outward=outward)
    assert [t for t, _ in spread] == ["0.60"] * len(range(0, n, 4))
    level[1] = 1  # warned but no finite distance
    assert len(sector_labels(replace(sectors, distance=dist, level=level), anchors)) == len(spread)


def test_an_obstacle_at_the_bumper_stays_in_sight_inside_the_sector_ring(rig):
    grid = BevGrid.around(rig.vehicle, 16.0, 0.1)
    view = view_grid(rig, 16.0, 640)
    body = rig.vehicle
    # A bollard 0.1 m in front of the front bumper (0.05 .. 0.15 m), inside the ring's band (0.12 .. 0.34 m).
    xy = grid.cell_centres()
    ahead = xy[..., 0] - body.x_max
    bollard = (ahead > 0.05) & (ahead < 0.15) & (np.abs(xy[..., 1]) < 0.15)
    truth = np.where(bollard, SemanticClass.LOW_OBSTACLE, SemanticClass.FREE).astype(np.uint8)
    sectors = SectorLayout(rig, grid)(truth)
    assert sectors.level.max() == 3  # the front sector at the stop level: its band is drawn red
    pixels = np.zeros((640, 640), bool)
    pixels[tuple(np.round(view.to_pixel(xy[bollard])).astype(int)[:, ::-1].T)] = True
    # Filled truth alone, and as the prediction's fill under the truth's outline: the class colour survives.
    for layers, kw in ((Layers(truth_opacity=1.0), {"truth": (truth, grid)}),
                       (Layers(prediction_opacity=1.0, truth_opacity=1.0),
                        {"truth": (truth, grid), "prediction": (truth, grid)})):
        on = bev_picture(rig, 640, 16.0, layers, sectors=sectors, **kw)
        off = bev_picture(rig, 640, 16.0, replace(layers, sectors=False), sectors=sectors, **kw)
        assert np.all(on[pixels] == CLASS_COLORS[SemanticClass.LOW_OBSTACLE])
        assert np.array_equal(on[pixels], off[pixels])
        # ... and the ring is drawn all the same, in the stop colour, around it
        band_px = np.round(view.to_pixel(np.array([[body.x_max + 0.25, 0.4]]))).astype(int)[0]
        assert tuple(off[band_px[1], band_px[0]]) != tuple(on[band_px[1], band_px[0]])
        assert on[band_px[1], band_px[0]][0] > 200 and on[band_px[1], band_px[0]][1] < 80  # red


def test_a_clear_sector_draws_no_band_and_the_ring_has_a_key(rig):
    grid = BevGrid.around(rig.vehicle, 16.0, 0.2)
    clear = SectorLayout(rig, grid)(np.zeros(grid.shape, np.uint8))
    assert not clear.level.any()
    assert np.array_equal(bev_picture(rig, 640, 16.0, sectors=clear),
                          bev_picture(rig, 640, 16.0, Layers(sectors=False), sectors=clear))
    assert all(c not in LEVEL_COLORS for c in (CLASS_COLORS[SemanticClass.LOW_OBSTACLE], (70, 150, 70)))
    # The key reads the thresholds it is given, whatever they are.
    assert [(name, text) for name, _, text in ring_key((2.0, 1.0, 0.25))] == [
        ("clear", "> 2 m, no band"), ("caution", "≤ 2 m"), ("warning", "≤ 1 m"), ("stop", "≤ 0.25 m")]
    assert [c for _, c, _ in ring_key((1.5, 0.8, 0.3))] == list(LEVEL_COLORS)
    wide = legend(1400, levels_m=(2.0, 1.0, 0.25))
    assert not np.array_equal(wide, legend(1400, levels_m=()))
    assert np.all(wide[13, :] == wide[13, 0], axis=-1).mean() < 0.95  # the ring's swatches are on the band
    for colour in LEVEL_COLORS:
        assert np.all(wide == colour, axis=-1).sum() >= 100


def test_distances_are_shown_cut_toward_the_car_and_never_milder_in_colour(rig):
    assert distance_text(0.36, 1) == "0.3" and distance_text(0.36, 2) == "0.36"  # rounding said 0.4
    assert distance_text(0.369, 2) == "0.36" and distance_text(1.4998, 1) == "1.4"
    # float32 thresholds stay what they stand for, on either side of the exact value
    assert distance_text(np.float32(0.3), 2) == "0.30" and distance_text(0.29999998, 2) == "0.30"
    assert distance_text(0.2998, 2) == "0.29"
    np.testing.assert_allclose(shown_distance([0.805, 1.5, 2.0], 2), [0.80, 1.5, 2.0])
    # A label that reads a threshold gets that threshold's level, though the distance just misses it.
    grid = BevGrid.around(rig.vehicle, 16.0, 0.2)
    sectors = SectorLayout(rig, grid)(np.zeros(grid.shape, np.uint8))
    n = len(sectors.names)
    dist = np.full(n, np.inf, np.float32)
    dist[::4] = [0.305, 0.8049, 1.5049, 0.31]  # one a side: no label crowds out another
    levelled = replace(sectors, distance=dist, level=SectorLayout(rig, grid).levels(dist))
    assert levelled.level[::4].tolist() == [2, 1, 0, 2]
    assert shown_levels(levelled, (1.5, 0.8, 0.3)).level[::4].tolist() == [3, 2, 1, 2]
    view = view_grid(rig, 16.0, 640)
    anchors, outward = label_anchors(view, rig, sector_polygons(levelled, rig))
    assert sorted(t for t, _ in sector_labels(shown_levels(levelled, (1.5, 0.8, 0.3)), anchors, outward=outward)) \
        == ["0.30", "0.31", "0.80", "1.50"]
    # The ultrasonic strip: 0.8049 m reads "0.80" and is drawn at the warning level, not the caution one.
    s = rig.uss[0]
    strip = uss_strip(UssCycle(0, 0, [s.id], [s.id], [0.8049], [0.5]), rig, 720, 64)
    cell = strip[:, : 720 // len(rig.uss)]
    assert np.all(cell == LEVEL_COLORS[2], axis=-1).sum() > 50 and not np.all(cell == LEVEL_COLORS[1], axis=-1).any()


def test_camera_failures_come_from_missing_images_and_failure_labels():
    rgb = np.zeros((4, 4, 3), np.uint8)
    images = {"FV": CameraImage("FV", 0, rgb=rgb), "RV": None, "MVL": CameraImage("MVL", 0, rgb=rgb),
              "MVR": CameraImage("MVR", 0, rgb=rgb)}
    out = camera_failures(images, ["camera RV missing", "uss FSL blocked"], ["day", "camera_failure:MVL"])
    assert out == {"RV": "missing", "MVL": "camera failure"}


# --- frames -------------------------------------------------------------------------------------------------------

def test_any_frame_reads_back_the_same_as_a_full_replay(drive):
    full = list(replay_frames(drive, decode=True))
    src = FrameSource(drive, cache_frames=2)
    try:
        assert len(src) == len(full) == 6
        np.testing.assert_array_equal(src.stamps, [f.stamp_ns for f in full])
        for k in (4, 1, 2, 3, 5, 0):
            f, ref = src.frame(k), full[k]
            assert f.index == k and f.stamp_ns == ref.stamp_ns and f.conditions == ref.conditions
            assert f.uss.stamp_ns == ref.uss.stamp_ns
            np.testing.assert_array_equal(f.truth.occupancy, ref.truth.occupancy)
            for cam, im in ref.images.items():
                np.testing.assert_array_equal(f.images[cam].rgb, im.rgb)
            assert len(src._cache) <= 2  # memory stays bounded
        assert src.index_at(0.21) == 2 and src.index_at(-5) == 0 and src.index_at(99) == 5
        with pytest.raises(ConfigError, match="frame 6 is outside"):
            src.frame(6)
    finally:
        src.close()


def test_bad_and_truncated_logs(drive, tmp_path):
    junk = tmp_path / "junk.mcap"
    junk.write_bytes(b"not a log at all" * 10)
    with pytest.raises(LogFormatError, match="not an MCAP file"):
        FrameSource(junk)
    data = drive.read_bytes()
    cut = tmp_path / "cut.mcap"
    cut.write_bytes(data[:-100])  # the recording stopped while writing the summary: every frame is still there
    src = FrameSource(cut)
    try:
        assert len(src) == 6 and src.damages and src.damages[0].kind == "truncated"
        assert src.frame(5).index == 5
    finally:
        src.close()
    head = tmp_path / "head.mcap"
    head.write_bytes(data[: len(data) // 2])  # cut inside the first chunk: nothing to show, and it says so
    with pytest.raises(LogFormatError, match=r"no complete frame in the log .*cut off"):
        FrameSource(head)


# --- models on frames ---------------------------------------------------------------------------------------------

def test_a_frame_shows_the_same_memory_however_it_was_reached(drive, zoo):
    """Jumping, stepping back and redrawing give a frame what playing the drive gives it: after a jump the session
    replays the frames within the memory's reach, and no more."""
    def session_with_memory():
        session = DriveSession(threads=1, memory_decay=0.6)  # reach 1: one frame back is enough
        session.open(drive)
        session.set_model(zoo["tiny-vehicle"])
        processed = []
        real = session.pipeline.process
        session.pipeline.process = lambda frame: processed.append(frame.index) or real(frame)
        return session, processed

    played, _ = session_with_memory()
    jumped, processed = session_with_memory()
    try:
        assert played.pipeline.memory.reach == 1
        reference = [played.view(k).result for k in range(6)]
        for k, expected_calls in ((4, [3, 4]), (4, [4]), (5, [5]), (2, [1, 2]), (0, [0])):
            processed.clear()
            result = jumped.view(k).result
            assert processed == expected_calls, (k, processed)
            assert np.array_equal(result.class_map, reference[k].class_map)
            assert np.array_equal(result.recalled, reference[k].recalled)
            assert result.degraded == reference[k].degraded
    finally:
        played.close()
        jumped.close()


def test_a_memory_that_never_forgets_catches_up_from_the_start_or_says_how_far(drive, zoo, monkeypatch):
    import app.session as session_module

    session = DriveSession(threads=1, memory_decay=1.0)  # no reach: every earlier frame could matter
    try:
        session.open(drive)
        session.set_model(zoo["tiny-vehicle"])
        assert session.view(4).notes == []  # frames 0-3 replayed first: the whole past, nothing to say
        monkeypatch.setattr(session_module, "MEMORY_CATCH_UP", 2)
        assert session.view(5).notes == []  # stepping on from frame 4 needs no catch-up at all...
        assert session.view(2).notes == []  # ...and a jump back to frame 2 replays its 2 frames: the whole past
        assert session.view(5).notes == ["near-field memory caught up over the 2 frames before this one only"]
    finally:
        session.close()


def test_a_model_runs_on_frames_with_iou_against_the_truth(drive, zoo, tmp_path):
    session = DriveSession(threads=1)
    try:
        session.open(drive)
        plain = session.view(3)
        assert plain.result is None and plain.sectors_of == "truth" and plain.miou is None
        session.set_model(zoo["tiny-vehicle"])
        view = session.view(3)
        cm = view.result.class_map
        assert view.model == "tiny-vehicle" and view.pred_grid.shape == cm.shape == (40, 40)
        assert set(np.unique(cm)) == {SemanticClass.VEHICLE, IGNORE}
        # Obstacles everywhere: every sector's nearest one lies within a cell of the body, at the stop level.
        assert view.sectors_of == "prediction" and np.all(view.sectors.distance <= 0.4)
        assert np.all(view.sectors.level == 3)
        # Known value: vehicle everywhere scores |truth vehicle| / |labelled cells| for vehicle, 0 for the other
        # obstacle classes in the truth; classes in neither are left out of the mean.
        target = session.pipeline.prep.target(view.frame.truth)
        labelled = target != IGNORE
        ious = [np.sum(target == SemanticClass.VEHICLE) / labelled.sum()]
        ious += [0.0 for c in (2, 3, 4) if np.any(target == c)]
        assert view.miou == pytest.approx(np.mean(ious))
        assert set(view.result.latency_ms) == {"preprocess", "inference", "postprocess"}

        # A damaged file: the checksum stops it and the previous model stays.
        bad = tmp_path / "zoo"
        shutil.copytree(zoo["tiny-structure"].onnx.parent, bad)
        with open(bad / "tiny-structure.onnx", "ab") as f:
            f.write(b"\0")
        from deploy.zoo import read_zoo

        with pytest.raises(ChecksumError, match="sha256"):
            session.set_model(read_zoo(bad / "ZOO.toml")["tiny-structure"])
        assert session.model.name == "tiny-vehicle" and session.view(2).model == "tiny-vehicle"

        out = write_video(session, tmp_path / "clip.mp4", 1, 3, Layers())
        cap = cv2.VideoCapture(str(out))
        frames = []
        while True:
            ok, img = cap.read()
            if not ok:
                break
            frames.append(img)
        cap.release()
        pic = compose(session.view(1), session.source.rig, Layers())
        assert len(frames) == 3 and frames[0].shape == pic.shape
        # mp4v is lossy: compare the decoded first frame with the picture loosely.
        assert np.abs(frames[0].astype(int) - cv2.cvtColor(pic, cv2.COLOR_RGB2BGR)).mean() < 12
        with pytest.raises(ConfigError, match="outside the drive"):
            write_video(session, tmp_path / "bad.mp4", 4, 9, Layers())
    finally:
        session.close()


def test_the_demo_drive_is_simulated_once_and_reused(tmp_path, monkeypatch):
    import app.demo as demo

    calls = []
    real = demo.__dict__.get("simulate_drive")
    assert real is None  # imported lazily inside demo_log

    import sim_data.simulate as simulate

    original = simulate.simulate_drive

    def counting(*a, **kw):
        calls.append(a[0].name)
        return original(*a, **kw)

    monkeypatch.setattr(simulate, "simulate_drive", counting)
    first = demo.demo_log(tmp_path / "cache", frames=2, scale=0.2)
    again = demo.demo_log(tmp_path / "cache", frames=2, scale=0.2)
    assert first == again and first.is_file() and calls == ["demo-000"]
    from sensors.log_writer import LogWriter
    from sensors.rig import load_rig

    with LogWriter(first, load_rig()):  # a demo cached before the logs had odometry (or any other topic)
        pass
    assert demo.demo_log(tmp_path / "cache", frames=2, scale=0.2) == first and calls == ["demo-000"] * 2
    first.write_bytes(b"not an mcap file")
    assert demo.demo_log(tmp_path / "cache", frames=2, scale=0.2) == first and calls == ["demo-000"] * 3
    demo.demo_log(tmp_path / "cache", frames=2, scale=0.2)
    assert calls == ["demo-000"] * 3  # and the new one is kept
    monkeypatch.setenv("NEARFIELD_CACHE", str(tmp_path / "elsewhere"))
    assert demo.cache_dir() == tmp_path / "elsewhere"
