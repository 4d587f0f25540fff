"""The simulator end to end: presets, determinism, log content, condition labels, CLI."""

import hashlib
from dataclasses import replace

import numpy as np
import pytest

from app.cli import main
from sensors.classes import IGNORE
from sensors.errors import ConfigError
from sensors.log import LogReader
from sensors.messages import CONDITIONS
from sensors.replay import replay_frames
from sim_data.simulate import OUTDOOR_KINDS, PRESETS, DriveSpec, plan_drives, simulate, simulate_drive


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_presets_use_disjoint_seeds_and_the_test_split_covers_every_condition():
    seeds = {name: {d.seed for d in plan_drives(name)} for name in PRESETS}
    assert not seeds["train"] & seeds["test"]
    assert not seeds["train"] & seeds["val"]
    assert not seeds["val"] & seeds["test"]
    test = plan_drives("test")
    # Every scene under every condition: same seed (same scene) per scene, one drive per condition.
    by_seed: dict[int, list] = {}
    for d in test:
        by_seed.setdefault(d.seed, []).append(d.conditions[0])
    assert len(by_seed) == 4 and all(sorted(c) == sorted(CONDITIONS) for c in by_seed.values())
    assert len({d.name for d in test}) == len(test) == 32
    assert all("garage" not in d.scene_kinds for d in test)
    assert sum(d.frames for d in plan_drives("train")) == 2000
    # Every split's seeds apart from every other's (train-street joins training, so it must miss val and test too).
    names = sorted(seeds)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not seeds[a] & seeds[b], (a, b)


def test_train_street_preset_draws_only_kerb_side_streets(rig):
    from sim_data.scenes import sample_drive

    specs = plan_drives("train-street")
    assert len(specs) == 10 and sum(d.frames for d in specs) == 1000
    assert all(d.scene_kinds == ("street",) for d in specs)
    for d in specs[:3]:  # the scene a drive's seed draws is a street (sample_drive honours scene_kinds)
        scene = sample_drive(np.random.default_rng(d.seed), rig, 1.0, kinds=d.scene_kinds)
        assert scene.kind == "street"
    # A condition that needs the sky keeps the preset's own kinds where they are outdoor.
    assert all(d.scene_kinds == ("street",) for d in plan_drives("train-street", conditions=["glare"]))
    assert plan_drives("train", conditions=["rain"])[0].scene_kinds == OUTDOOR_KINDS


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"preset": "nope"}, "unknown preset"),
    ({"preset": "demo", "conditions": ["fog"]}, "unknown condition"),
    ({"preset": "demo", "frames": 0}, "--frames"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        plan_drives(**kwargs)


def test_same_arguments_give_the_same_log_bytes(tmp_path, rig):
    spec = DriveSpec("d", 42, 3, ("night",))
    a = simulate_drive(spec, tmp_path / "a", rig, scale=0.25)
    b = simulate_drive(spec, tmp_path / "b", rig, scale=0.25)
    c = simulate_drive(DriveSpec("d", 43, 3, ("night",)), tmp_path / "c", rig, scale=0.25)
    assert _sha(a) == _sha(b)
    assert _sha(a) != _sha(c)


def test_log_content_and_frames(tmp_path, rig):
    path = simulate_drive(DriveSpec("drive", 5, 4, ("camera_failure",)), tmp_path, rig, scale=0.25)
    with LogReader(path) as reader:
        s = reader.summary()
        assert reader.damage is None
        assert reader.rig.cameras["FV"].width == 320  # the calibration describes the images as stored
        assert reader.metadata["seed"] == "5"
    for cam in ("FV", "RV", "MVL", "MVR"):
        assert s.topics[f"/camera/{cam}/image"].count == 4
        assert s.topics[f"/camera/{cam}/calibration"].count == 1
    for topic in ("/uss/echoes", "/gt/occupancy", "/gt/objects", "/meta/condition"):
        assert s.topics[topic].count == 4
    frames = list(replay_frames(path))
    assert len(frames) == 4
    failed = [lab.split(":")[1] for lab in frames[0].conditions if lab.startswith("camera_failure:")]
    assert len(failed) == 1
    for f in frames:
        assert not f.degraded  # a failed camera still delivers images: the fault is in the content
        assert f.truth is not None and f.truth.occupancy.shape == (160, 160)
        assert (f.truth.occupancy == IGNORE).sum() == 792  # the ego footprint, 4.4 m x 1.8 m
        assert f.uss is not None and f.uss.num_echoes > 0
        img = f.images[failed[0]].rgb
        assert img.shape == (242, 320, 3)
    # A black camera is black; a frozen one repeats its first image exactly.
    imgs = [f.images[failed[0]].rgb for f in frames]
    if imgs[0].max() < 8:
        assert all(i.max() < 8 for i in imgs)
    else:
        assert all(np.array_equal(imgs[0], i) for i in imgs[1:])
    healthy = next(c for c in ("FV", "RV", "MVL", "MVR") if c != failed[0])
    assert not np.array_equal(frames[0].images[healthy].rgb, frames[-1].images[healthy].rgb)  # sensor noise


def test_cli_simulate_and_info(tmp_path, capsys):
    out = tmp_path / "sim"
    assert main(["simulate", "--out", str(out), "--frames", "2", "--drives", "2", "--scale", "0.25",
                 "--condition", "rain", "--workers", "1"]) == 0
    files = sorted(out.glob("*.mcap"))
    assert [f.name for f in files] == ["demo-000.mcap", "demo-001.mcap"]
    assert not list(out.glob("*.part"))
    capsys.readouterr()
    assert main(["info", str(files[0])]) == 0
    text = capsys.readouterr().out
    assert "/uss/echoes" in text and "rain" in text
    assert main(["simulate", "--out", str(out), "--preset", "demo", "--frames", "0"]) == 2
    assert "--frames must be at least 1" in capsys.readouterr().err


@pytest.mark.slow
def test_parallel_workers_give_the_same_drives(tmp_path):
    a = simulate(tmp_path / "a", "demo", frames=2, drives=2, scale=0.25, workers=2, show_progress=False)
    b = simulate(tmp_path / "b", "demo", frames=2, drives=2, scale=0.25, workers=1, show_progress=False)
    assert [_sha(p) for p in a] == [_sha(p) for p in b]


def test_unwritable_output_is_one_line_not_a_traceback(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main(["simulate", "--out", str(blocker / "sub"), "--frames", "1", "--scale", "0.25",
                 "--workers", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(blocker) in err[0] and "Traceback" not in err[0]
    assert main(["contact-sheet", str(blocker), "--out", str(tmp_path / "sheet.jpg")]) == 2


def test_paired_test_drives_share_the_scene_and_differ_in_condition(tmp_path, rig):
    from sensors.log import LogReader
    from sensors.schemas import GT_OCCUPANCY_TOPIC

    specs = [d for d in plan_drives("test", frames=2, drives=1) if d.conditions[0] in ("day", "night")]
    truths, labels = [], []
    for spec in specs:
        path = simulate_drive(spec, tmp_path, rig, scale=0.25)
        with LogReader(path) as r:
            truths.append([m.value.occupancy for m in r.messages(topics=[GT_OCCUPANCY_TOPIC])])
            labels.append(r.metadata.get("conditions", ""))
    assert all((a == b).all() for a, b in zip(*truths, strict=True))  # the same scene, cell for cell
    assert labels == ["day", "night"]


def test_the_test_split_covers_lit_and_unlit_nights(tmp_path, rig):
    nights = [d for d in plan_drives("test") if d.conditions == ("night",)]
    assert [d.street_lamps for d in nights] == [True, False, True, False]
    assert all(d.street_lamps is None for d in plan_drives("train"))  # the training mix draws them
    lamps = []
    for spec in nights[:2]:
        with LogReader(simulate_drive(replace(spec, frames=1), tmp_path, rig, scale=0.25)) as r:
            lamps.append(r.metadata.get("street_lamps"))
    assert lamps == ["on", "off"]


def _ego_of(spec, rig):
    from sim_data.scenes import sample_drive
    from sim_data.simulate import FRAME_PERIOD_NS

    rng = np.random.default_rng(spec.seed)
    return sample_drive(rng, rig, spec.frames * FRAME_PERIOD_NS / 1e9, kinds=spec.scene_kinds,
                        motions=spec.motions).ego


def test_dead_reckoning_without_errors_is_the_true_motion_and_its_errors_drift_as_modelled():
    from sensors.geometry import Pose2D
    from sim_data.odometry import OdometryErrors, dead_reckon
    from sim_data.world import EgoPath

    # A quarter circle of radius 5 m driven in 4 s, starting away from the origin and facing +y.
    ts = [0.1 * k for k in range(41)]
    arc = EgoPath(tuple(ts), tuple(Pose2D(3 + 5 * np.cos(t * np.pi / 8), 2 + 5 * np.sin(t * np.pi / 8),
                                          np.pi / 2 + t * np.pi / 8) for t in ts))
    exact = dead_reckon(arc, ts)
    assert exact[0] == Pose2D(0.0, 0.0, 0.0)
    for t, p in zip(ts, exact, strict=True):
        truth = arc.pose(0.0).relative(arc.pose(t))
        assert p.x == pytest.approx(truth.x, abs=1e-9) and p.y == pytest.approx(truth.y, abs=1e-9)
        assert p.yaw == pytest.approx(truth.yaw, abs=1e-9)
    # The end of a quarter circle of radius 5 seen from its start: 5 m ahead, 5 m to the left, turned 90°.
    assert (exact[-1].x, exact[-1].y, exact[-1].yaw) == pytest.approx((5.0, 5.0, np.pi / 2), abs=1e-9)
    long = dead_reckon(arc, ts, OdometryErrors(scale=1.02))
    assert np.hypot(long[-1].x, long[-1].y) == pytest.approx(1.02 * np.hypot(5, 5), rel=1e-9)
    assert long[-1].yaw == pytest.approx(np.pi / 2)  # the scale lengthens the path, it does not turn it
    biased = dead_reckon(arc, ts, OdometryErrors(yaw_bias=0.01))
    assert biased[-1].yaw - exact[-1].yaw == pytest.approx(0.04)  # 0.01 rad/s over 4 s
    still = EgoPath((0.0, 1.0), (Pose2D(1, 1, 0.3), Pose2D(1, 1, 0.3)))
    parked = dead_reckon(still, [0.0, 0.5, 1.0], OdometryErrors(scale=1.1, yaw_bias=0.01))
    assert [(p.x, p.y) for p in parked] == [(0.0, 0.0)] * 3 and parked[-1].yaw == pytest.approx(0.01)


def test_simulated_odometry_follows_the_drive_at_50_hz_within_its_drift(tmp_path, rig):
    from sim_data.simulate import FRAME_PERIOD_NS, START_NS

    spec = DriveSpec("moving", 300_001, 6, ("day",))
    path = simulate_drive(spec, tmp_path, rig, scale=0.25)
    with LogReader(path) as reader:
        samples = [m.value for m in reader.messages() if m.topic == "/odometry"]
    assert [o.stamp_ns for o in samples] == [START_NS + 20_000_000 * j for j in range(6 * 5)]
    frames = list(replay_frames(path))
    tol = rig.sync.camera_tolerance_ns
    assert [round((f.stamp_ns - START_NS) / FRAME_PERIOD_NS) for f in frames] == list(range(6))
    assert all(abs(f.stamp_ns - START_NS - FRAME_PERIOD_NS * k) < tol for k, f in enumerate(frames))  # camera jitter
    assert all(f.odometry is not None and "odometry missing" not in f.degraded for f in frames)
    ego = _ego_of(spec, rig)
    start = ego.pose(0.0)
    travelled = 0.0
    for k, f in enumerate(frames):
        truth = start.relative(ego.pose((f.stamp_ns - START_NS) / 1e9))  # the pose at the frame's own stamp
        travelled = max(travelled, np.hypot(truth.x, truth.y))
        # 1 % scale error at 3 sigma, 0.002 rad/s yaw bias at 3 sigma over 0.6 s, times the distance.
        assert np.hypot(f.odometry.x - truth.x, f.odometry.y - truth.y) <= 0.03 * np.hypot(truth.x, truth.y) + 1e-6
        assert abs(f.odometry.yaw - truth.yaw) <= 0.006 * (k + 1) * FRAME_PERIOD_NS / 1e9
    assert travelled > 0.5  # the drive moves, so the comparison means something


def test_odometry_left_every_other_message_of_a_drive_as_it_was(tmp_path, rig):
    """The odometry errors come from their own generator: messages on the other topics are the same whatever it
    draws (here: whatever the odometry generator is seeded with)."""
    import sim_data.simulate as sim

    spec = DriveSpec("d", 7, 3, ("rain",))
    a = simulate_drive(spec, tmp_path / "a", rig, scale=0.25)
    real = sim.odometry_rng
    try:
        sim.odometry_rng = lambda seed: real(seed + 1)
        b = simulate_drive(spec, tmp_path / "b", rig, scale=0.25)
    finally:
        sim.odometry_rng = real

    def by_topic(path):
        from mcap.reader import make_reader

        with open(path, "rb") as f:
            return [(c.topic, m.log_time, m.data) for _, c, m in make_reader(f).iter_messages()]

    ma, mb = by_topic(a), by_topic(b)
    assert [m for m in ma if m[0] != "/odometry"] == [m for m in mb if m[0] != "/odometry"]
    assert [m for m in ma if m[0] == "/odometry"] != [m for m in mb if m[0] == "/odometry"]


def test_a_close_obstacle_drive_ends_in_the_displays_last_level_and_keeps_the_drive(tmp_path, rig):
    from perception.postprocess import SectorLayout
    from sensors.bev import BevGrid

    close = simulate_drive(DriveSpec("close", 500_001, 25, ("day",), OUTDOOR_KINDS, close_obstacle=True),
                           tmp_path / "close", rig, scale=0.25)
    plain = simulate_drive(DriveSpec("plain", 500_001, 25, ("day",), OUTDOOR_KINDS), tmp_path / "plain", rig,
                           scale=0.25)
    close_frames, plain_frames = list(replay_frames(close)), list(replay_frames(plain))
    layout = SectorLayout(rig, BevGrid())
    nearest = [float(layout(f.truth.occupancy).distance.min()) for f in close_frames]
    # The car brakes to a stop and stands with a low obstacle within 0.3 m; the drive without it never comes so
    # close (every other scene keeps 0.35 m clear), and its conditions and start are the same.
    assert nearest[-1] <= 0.3 and min(float(layout(f.truth.occupancy).distance.min()) for f in plain_frames) > 0.3
    odometry = [f.odometry for f in close_frames]
    assert {(o.x, o.y) for o in odometry[-3:]} == {(odometry[-1].x, odometry[-1].y)}  # standing still
    assert close_frames[0].conditions == plain_frames[0].conditions
    assert close_frames[0].odometry == plain_frames[0].odometry
    levels = layout.levels(np.array(nearest))
    assert levels[-1] == 3 and levels[0] < 3


def test_bad_counts_are_refused_before_out_is_made(tmp_path, capsys):
    out = tmp_path / "sim"
    for argv, message in [
        (["--frames", "0"], "--frames must be at least 1"),
        (["--seed", "-1"], "--seed must be at least 0"),
        (["--workers", "0"], "--workers must be at least 1"),
        (["--workers", "-2"], "--workers must be at least 1"),
        (["--scale", "0"], "--scale must be in 0.1..1.0, got 0"),  # not the default 0.5 in disguise
        (["--scale", "-1"], "--scale must be in 0.1..1.0"),
    ]:
        assert main(["simulate", "--out", str(out), *argv]) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, (argv, err)
        assert not out.exists(), argv


def test_logs_already_in_out_are_kept_unless_overwrite(tmp_path, capsys):
    out = tmp_path / "sim"
    args = ["simulate", "--out", str(out), "--frames", "1", "--drives", "2", "--scale", "0.25", "--workers", "1"]
    assert main(args) == 0
    first = out / "demo-000.mcap"
    first.write_bytes(b"mine")
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "2 of the 2 logs to write exist already (demo-000.mcap, demo-001.mcap)" in err and "--overwrite" in err
    assert first.read_bytes() == b"mine"
    assert main([*args, "--overwrite"]) == 0
    assert first.read_bytes() != b"mine"
    with pytest.raises(ConfigError, match="exist already"):
        simulate(out, "demo", frames=1, drives=1, scale=0.25, workers=1, show_progress=False)
