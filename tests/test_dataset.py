"""Training data: label resampling on hand-made blocks, the dataset on tiny simulated drives (shapes, targets,
missing and failed cameras, cache, damaged and unlabelled logs), augmentation hooks."""

import logging

import cv2
import numpy as np
import pytest
import torch

import perception.dataset as dataset_module
from perception.bev_config import BevConfig, ego_mask
from perception.dataset import (
    CameraDropout,
    DriveDataset,
    FramePreprocessor,
    PhotometricJitter,
    decode_reduction,
    find_logs,
)
from perception.labels import resample_labels
from perception.tables import camera_tables
from perception.uss_raster import USS_CHANNELS
from sensors.bev import BevGrid
from sensors.classes import IGNORE, NUM_CLASSES, PRIORITY, SemanticClass
from sensors.errors import ConfigError, LogFormatError
from sensors.log import ConditionRecord, LogReader
from sensors.log_writer import LogWriter
from sensors.messages import CameraImage, GroundTruth, UssCycle
from sensors.replay import replay_frames
from sim_data.groundtruth import PAINT_ORDER
from sim_data.simulate import DriveSpec, simulate_drive

F, V, P, S, L, X = 0, 1, 2, 3, 4, IGNORE  # free, vehicle, pedestrian, structure, low obstacle, ignore
CONFIG = BevConfig()  # 0.2 m, 80 x 80, images 256 x 192


# --- labels -------------------------------------------------------------------------------------------------------

def test_priority_matches_the_ground_truth_paint_order():
    assert tuple(PRIORITY) == tuple(reversed(PAINT_ORDER))


def test_blocks_keep_the_highest_priority_obstacle_and_ignore_follows_the_footprint():
    occ = np.array([
        [V, P, S, F, X, X, X, F],
        [V, V, F, L, X, V, F, F],
        [X, X, F, F, F, F, S, F],
        [F, F, F, F, F, F, F, F],
    ], np.uint8)
    out = resample_labels(occ, 2)
    # pedestrian beats vehicle; low obstacle beats structure; 3 of 4 ignore beats the vehicle beside the car;
    # 1 of 4 ignore is free; half ignore is ignore; a lone structure cell survives; an all-free block is free.
    np.testing.assert_array_equal(out, [[P, L, X, F],
                                        [X, F, F, S]])
    assert out.dtype == np.uint8


def test_a_pole_one_fine_cell_wide_survives_a_factor_of_four():
    occ = np.zeros((8, 8), np.uint8)
    occ[6, 1] = S
    out = resample_labels(occ, 4)
    np.testing.assert_array_equal(out, [[F, F], [S, F]])
    np.testing.assert_array_equal(resample_labels(occ, 1), occ)


def test_coarse_ignore_is_exactly_the_coarse_ego_mask(rig):
    fine = BevGrid.around(rig.vehicle)  # ground truth's 0.1 m grid
    occ = np.where(ego_mask(rig.vehicle, fine), IGNORE, F).astype(np.uint8)
    coarse = resample_labels(occ, 2)
    np.testing.assert_array_equal(coarse == IGNORE, ego_mask(rig.vehicle, CONFIG.grid(rig)))


@pytest.mark.parametrize(("occ", "factor", "error", "match"), [
    (np.zeros((6, 6), np.uint8), 4, ConfigError, "blocks"),
    (np.zeros((4, 4), np.uint8), 0, ConfigError, "factor"),
    (np.full((4, 4), 7, np.uint8), 2, LogFormatError, r"value\(s\) \[7\]"),
    (np.zeros((4, 4), np.int32), 2, LogFormatError, "uint8"),
])
def test_bad_labels_raise(occ, factor, error, match):
    with pytest.raises(error, match=match):
        resample_labels(occ, factor)


# --- simulated drives ---------------------------------------------------------------------------------------------

def _rewrite(src, dst, drop_image=None, drop_truth=False, chunk_size=1 << 20):
    """Copy a log, leaving out the image (camera, frame number) and/or all ground truth."""
    with LogReader(src) as r:
        rig = r.rig
        meta = dict(r.metadata)
        with LogWriter(dst, rig, metadata=meta, stamp_creation=False, chunk_size=chunk_size) as w:
            seen: dict[str, int] = {}
            for m in r.messages():
                v = m.value
                if isinstance(v, CameraImage):
                    k = seen[v.camera] = seen.get(v.camera, -1) + 1
                    if (v.camera, k) != drop_image:
                        w.write_camera(v)
                elif isinstance(v, UssCycle):
                    w.write_uss(v)
                elif isinstance(v, GroundTruth) and not drop_truth:
                    w.write_truth(v, m.grid)
                elif isinstance(v, ConditionRecord):
                    w.write_condition(v.stamp_ns, v.labels, v.scene)
    return dst


@pytest.fixture(scope="module")
def drives(tmp_path_factory, rig):
    root = tmp_path_factory.mktemp("drives")
    failed = simulate_drive(DriveSpec("failed", 5, 3, ("camera_failure",)), root / "logs", rig, scale=0.25)
    other = root / "other"
    other.mkdir()
    missing = _rewrite(failed, other / "missing.mcap", drop_image=("MVL", 1))
    unlabelled = _rewrite(failed, root / "unlabelled.mcap", drop_truth=True)
    chunked = _rewrite(failed, root / "chunked.mcap", chunk_size=16 << 10)  # small chunks: a cut keeps a prefix
    return {"failed": failed, "missing": missing, "unlabelled": unlabelled, "chunked": chunked, "root": root}


@pytest.fixture(scope="module")
def data(drives):
    return DriveDataset([drives["failed"]], CONFIG, progress=False)


def test_decode_reduction_keeps_at_least_the_network_size(rig):
    assert decode_reduction(rig, CONFIG) == 4  # 1280 x 966 native: / 4 = 320 x 241 >= 256 x 192
    assert decode_reduction(rig.scaled(0.5), CONFIG) == 2
    assert decode_reduction(rig.scaled(0.25), CONFIG) == 1  # 320 x 242: / 2 would be too small
    assert decode_reduction(rig, BevConfig(image_size=(1280, 966))) == 1


def test_items_have_the_documented_shapes_and_dtypes(data):
    assert len(data) == 3
    R = CONFIG.size
    Z = len(CONFIG.heights)
    W, H = CONFIG.image_size
    item = data[0]
    expected = {"images": ((4, 3, H, W), torch.uint8), "grid": ((4, Z * R, R, 2), torch.float32),
                "valid": ((4, Z, R, R), torch.float32), "uss": ((len(USS_CHANNELS), R, R), torch.float32),
                "target": ((R, R), torch.int64)}
    assert set(item) == set(expected)
    for key, (shape, dtype) in expected.items():
        assert tuple(item[key].shape) == shape, key
        assert item[key].dtype == dtype, key
    d = data.drives[0]
    assert d.images.dtype == np.uint8 and d.uss.dtype == np.float16 and d.target.dtype == np.uint8
    assert d.grid.shape == (4, Z * R, R, 2)  # once per drive, not per frame
    assert data.meta[2].drive == "failed" and data.meta[2].index == 2
    assert data.meta[0].conditions[1].startswith("camera_failure:")


def test_target_images_and_raster_are_those_of_the_log(data, drives, rig):
    frames = list(replay_frames(drives["failed"], decode=True))
    with LogReader(drives["failed"]) as r:
        log_rig = r.rig
    tables = camera_tables(log_rig, CONFIG)
    prep = FramePreprocessor(log_rig, CONFIG)
    for i, frame in enumerate(frames):
        s = data.sample(i)
        np.testing.assert_array_equal(s.target, resample_labels(frame.truth.occupancy, 2))
        rgb = cv2.resize(frame.images["FV"].rgb, CONFIG.image_size, interpolation=cv2.INTER_AREA)
        np.testing.assert_array_equal(s.images[0], rgb.transpose(2, 0, 1))
        np.testing.assert_array_equal(s.grid, tables.grid)
        np.testing.assert_array_equal(s.valid, tables.valid)  # every camera delivered an image
        np.testing.assert_allclose(s.uss, prep.rasterizer(frame.uss), atol=1e-3)  # float16 storage
        assert s.stamp_ns == frame.stamp_ns and s.conditions == frame.conditions
    assert (data.sample(0).target == IGNORE).sum() == ego_mask(rig.vehicle, CONFIG.grid(rig)).sum()


def test_a_labelled_camera_failure_is_masked_only_on_request(data, drives):
    failed_cam = data.meta[0].conditions[1].split(":")[1]
    k = data.cameras.index(failed_cam)
    assert data[0]["valid"][k].sum() > 0  # a black or frozen image still arrives: the network must cope
    masked = DriveDataset([drives["failed"]], CONFIG, mask_labelled_failures=True, progress=False)
    for i in range(len(masked)):
        v = masked[i]["valid"]
        assert v[k].sum() == 0
        others = [j for j in range(4) if j != k]
        torch.testing.assert_close(v[others], data[i]["valid"][others])


def test_a_removed_camera_image_zeroes_its_valid_slice_in_that_frame_only(drives, data):
    ds = DriveDataset([drives["root"] / "other"], CONFIG, progress=False)  # a directory of logs
    assert [m.index for m in ds.meta] == [0, 1, 2]
    k = ds.cameras.index("MVL")
    item = ds[1]
    assert item["valid"][k].sum() == 0 and item["images"][k].sum() == 0
    assert item["valid"].sum() > 0 and not ds.drives[0].present[1, k] and ds.drives[0].present[1].sum() == 3
    for i in (0, 2):
        torch.testing.assert_close(ds[i]["valid"], data[i]["valid"])
        torch.testing.assert_close(ds[i]["target"], data[i]["target"])


def test_cache_round_trip_gives_identical_arrays(drives, data, tmp_path, monkeypatch):
    first = DriveDataset([drives["failed"]], CONFIG, cache_dir=tmp_path, progress=False)
    files = list(tmp_path.glob("failed-*.npz"))
    assert len(files) == 1

    def no_reading(*args, **kwargs):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(dataset_module, "read_drive", no_reading)
    second = DriveDataset([drives["failed"]], CONFIG, cache_dir=tmp_path, progress=False)
    for name in ("grid", "valid", "present", "images", "uss", "target", "index", "stamp"):
        a, b = getattr(first.drives[0], name), getattr(second.drives[0], name)
        assert a.dtype == b.dtype, name
        np.testing.assert_array_equal(a, b, err_msg=name)
        np.testing.assert_array_equal(a, getattr(data.drives[0], name), err_msg=name)
    assert second.meta == first.meta
    # Another configuration is another cache entry, not a stale hit.
    monkeypatch.undo()
    DriveDataset([drives["failed"]], BevConfig(cell=0.1, image_size=(128, 96)), cache_dir=tmp_path, progress=False)
    assert len(list(tmp_path.glob("failed-*.npz"))) == 2


def test_two_writers_filling_one_cache_do_not_trip_over_each_other(drives, data, tmp_path, monkeypatch):
    """Two trainings on one data folder preprocess the same log at once. Interleaved deterministically: while the
    first writer is inside its savez, the second writes and renames its own file. With one shared temporary name
    the first writer's rename then finds nothing (FileNotFoundError) after corrupting the second's file."""
    real_savez = np.savez
    nested, calls = [], []

    def savez_with_a_second_writer(f, **arrays):
        calls.append(1)
        if len(calls) == 1:  # the first writer's call: the second writer runs to the end inside it
            nested.append(DriveDataset([drives["failed"]], CONFIG, cache_dir=tmp_path, progress=False))
        real_savez(f, **arrays)

    monkeypatch.setattr(np, "savez", savez_with_a_second_writer)
    first = DriveDataset([drives["failed"]], CONFIG, cache_dir=tmp_path, progress=False)
    monkeypatch.setattr(np, "savez", real_savez)
    assert [p.suffix for p in tmp_path.iterdir()] == [".npz"]  # no temporary file left behind
    reread = DriveDataset([drives["failed"]], CONFIG, cache_dir=tmp_path, progress=False)
    for a in (first, nested[0], reread):
        np.testing.assert_array_equal(a.drives[0].images, data.drives[0].images)
        np.testing.assert_array_equal(a.drives[0].target, data.drives[0].target)


def test_a_corrupt_cache_file_is_rebuilt_with_a_warning(drives, tmp_path, caplog):
    DriveDataset([drives["failed"]], CONFIG, cache_dir=tmp_path, progress=False)
    cache = next(tmp_path.glob("*.npz"))
    cache.write_bytes(b"not a zip")
    with caplog.at_level(logging.WARNING):
        ds = DriveDataset([drives["failed"]], CONFIG, cache_dir=tmp_path, progress=False)
    assert len(ds) == 3 and "does not load" in caplog.text


def test_label_counts_sum_to_the_labelled_cells(data):
    counts = data.label_counts()
    assert counts.shape == (NUM_CLASSES,) and counts.dtype == np.int64
    targets = np.stack([data.sample(i).target for i in range(len(data))])
    assert counts.sum() + data.ignored_cells() == targets.size == len(data) * CONFIG.size**2
    for c in range(NUM_CLASSES):
        assert counts[c] == (targets == c).sum()
    assert counts[SemanticClass.FREE] > 0


def test_a_truncated_log_gives_its_readable_frames_and_one_warning(drives, tmp_path, caplog):
    data = drives["chunked"].read_bytes()
    cut = tmp_path / "cut.mcap"
    cut.write_bytes(data[: int(len(data) * 0.75)])
    with caplog.at_level(logging.WARNING, logger="perception.dataset"):
        ds = DriveDataset([cut], CONFIG, progress=False)
    full = DriveDataset([drives["failed"]], CONFIG, progress=False)
    assert 1 <= len(ds) < len(full)
    np.testing.assert_array_equal(ds.drives[0].target, full.drives[0].target[: len(ds)])
    ours = [r for r in caplog.records if r.name == "perception.dataset"]
    assert len(ours) == 1 and "damaged log" in ours[0].message and "cut.mcap" in ours[0].message
    assert ds.drives[0].damage


def test_a_log_without_ground_truth_is_an_error_naming_it(drives):
    with pytest.raises(LogFormatError, match=r"unlabelled\.mcap: no frame with ground truth"):
        DriveDataset([drives["unlabelled"]], CONFIG, progress=False)


def test_bad_paths(tmp_path):
    with pytest.raises(ConfigError, match="no such log"):
        find_logs([tmp_path / "nope.mcap"])
    with pytest.raises(ConfigError, match=r"no \*\.mcap"):
        find_logs([tmp_path])
    with pytest.raises(ConfigError, match="no drive logs"):
        find_logs([])


def test_a_truth_grid_that_does_not_fit_the_config_is_an_error(rig):
    prep = FramePreprocessor.__new__(FramePreprocessor)
    prep.config, prep.source = BevConfig(extent=12.0), "x.mcap"
    truth = GroundTruth(0, np.zeros((160, 160), np.uint8), 0.1)
    with pytest.raises(ConfigError, match=r"x\.mcap: ground truth covers 16 x 16 m"):
        prep.target(truth)
    prep.config = BevConfig(cell=0.25)
    with pytest.raises(ConfigError, match="not a whole multiple"):
        prep.target(truth)


# --- augmentation -------------------------------------------------------------------------------------------------

def test_photometric_jitter_changes_only_images_and_leaves_the_store_alone(data):
    before = data.drives[0].images.copy()
    item = data[0]
    torch.manual_seed(0)
    out = PhotometricJitter(0.5, 0.5)(item)
    assert out["images"].dtype == torch.uint8 and not torch.equal(out["images"], item["images"])
    for key in ("grid", "valid", "uss", "target"):
        assert out[key] is item[key]
    assert torch.equal(PhotometricJitter(0.0, 0.0)(item)["images"], item["images"])
    # Pure brightness scales a camera's mean by its factor (within rounding and clipping of bright pixels).
    torch.manual_seed(1)
    bright = PhotometricJitter(0.3, 0.0)(item)["images"].float().mean(dim=(1, 2, 3))
    torch.manual_seed(1)
    factor = 1 + 0.3 * (2 * torch.rand(4) - 1)
    dark = item["images"].float().mean(dim=(1, 2, 3))
    unclipped = factor <= 1
    torch.testing.assert_close(bright[unclipped], (dark * factor)[unclipped], atol=0.6, rtol=0)
    np.testing.assert_array_equal(data.drives[0].images, before)


def test_camera_dropout_zeroes_one_camera(data):
    item = data[0]
    out = CameraDropout(1.0)(item)
    dropped = [k for k in range(4) if out["valid"][k].sum() == 0]
    assert len(dropped) == 1 and out["images"][dropped[0]].sum() == 0
    assert CameraDropout(0.0)(item) is item
    assert item["valid"].sum() == data[0]["valid"].sum()  # the original item is not modified
    with pytest.raises(ConfigError):
        CameraDropout(1.5)


def test_camera_blackout_zeroes_every_camera_at_its_own_rate(data):
    item = data[0]
    out = CameraDropout(0.0, blackout=1.0)(item)
    assert out["valid"].sum() == 0 and out["images"].sum() == 0
    assert out["uss"] is item["uss"] and item["valid"].sum() > 0  # the ultrasonic raster stays, the item is kept
    torch.manual_seed(0)
    blind = sum(int(CameraDropout(0.5, blackout=0.25)(item)["valid"].sum() == 0) for _ in range(2000))
    assert 430 < blind < 570  # 500 expected: a single dropped camera never blanks the whole rig
    with pytest.raises(ConfigError, match="blackout"):
        CameraDropout(0.1, blackout=-0.1)


def test_augment_hook_runs_on_items(drives):
    calls = []

    def hook(item):
        calls.append(1)
        return {**item, "images": torch.zeros_like(item["images"])}

    ds = DriveDataset([drives["failed"]], CONFIG, augment=hook, progress=False)
    assert ds[0]["images"].sum() == 0 and calls == [1]
    assert ds.sample(0).images.sum() > 0  # sample() is the un-augmented frame
