"""The embedded runtime (`nearfield run`): one result per frame equal to torch's, torch and Qt blocked, SIGTERM
mid-run, checksum mismatch, truncated input, the deadline monitor, live video + CAN sources, the benchmarks. The
near-field post-processing options are in test_runtime_nearfield.py."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from runtime_world import rewrite_log, run_args

from deploy.live_config import LiveConfig, load_live_config
from deploy.results import read_results
from deploy.runtime import DeadlineMonitor, LatencyStats, run
from sensors.classes import IGNORE
from sensors.errors import ConfigError
from sensors.log import LogReader
from sensors.messages import CameraImage
from sensors.replay import replay_frames

pytestmark = pytest.mark.usefixtures("torch_one_thread")
ROOT = Path(__file__).resolve().parents[1]


def _blocking_prelude(forbidden=("torch", "PyQt6", "PySide6")) -> str:
    return textwrap.dedent(f"""
        import sys
        class _Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {forbidden!r}:
                    raise ImportError(f"{{name}} is blocked: the runtime must not import it")
        sys.meta_path.insert(0, _Block())
    """)


# --- one result per frame, equal to torch -------------------------------------------------------------------------

def test_one_result_per_frame_equal_to_torch(world, tmp_path):
    import torch

    from perception.preprocess import FramePreprocessor

    out = tmp_path / "results.mcap"
    stats = run(world["model"], world["drive"], out, threads=1, progress=False)
    records = read_results(out)
    with LogReader(world["drive"]) as r:
        rig = r.rig
    prep = FramePreprocessor(rig, world["config"].bev)
    frames = list(replay_frames(world["drive"], decode_scale=prep.reduction))
    assert stats.frames == len(records) == len(frames) == 6
    assert stats.written == 6 and stats.late == stats.dropped == 0 and not stats.input_damage
    assert [r.index for r in records] == list(range(6))
    # Degraded flags and missing cameras pass through from the synchroniser.
    assert [r.degraded for r in records] == [f.degraded for f in frames]
    assert any("uss" in d for r in records for d in r.degraded)
    assert [r.present for r in records] == [tuple(c for c in prep.cameras if f.images[c] is not None)
                                           for f in frames]
    assert "MVL" not in records[4].present and "camera MVL missing" in records[4].degraded
    for rec, frame in zip(records, frames, strict=True):
        inputs, _ = prep.network_inputs(frame)
        with torch.no_grad():
            logits, occ = world["net"](*(torch.from_numpy(inputs[k]) for k in ("images", "grid", "valid", "uss")))
        logits = logits[0].numpy()
        expect = logits.argmax(0).astype(np.uint8)
        ignore = rec.class_map == IGNORE
        assert ignore.any() and not ignore.all()
        top2 = np.sort(logits, axis=0)[-2:]
        clear = (top2[1] - top2[0] > 1e-4) & ~ignore  # a near-tie may flip between backends
        assert clear.mean() > 0.95
        np.testing.assert_array_equal(rec.class_map[clear], expect[clear])
        np.testing.assert_allclose(rec.stage1, torch.sigmoid(occ[0, 0]).numpy(), atol=1e-4)
        assert rec.stamp_ns == frame.stamp_ns and rec.sector_distance.shape == (16,)
        assert set(rec.latency) >= {"decode", "preprocess", "inference", "postprocess", "write", "total"}
        assert rec.latency["total"] >= rec.latency["inference"] > 0
    with LogReader(out) as r:  # the results file carries the drive's rig
        assert r.rig.cameras["FV"].to_dict() == rig.cameras["FV"].to_dict()
        assert r.metadata["model_sha256"] == world["model"].sha256


def test_the_runtime_imports_neither_torch_nor_qt(world, tmp_path):
    out = tmp_path / "blocked.mcap"
    code = _blocking_prelude() + textwrap.dedent(f"""
        from app.cli import main
        rc = main({run_args("--source", str(world["drive"]), "--out", str(out), manifest=world["manifest"])!r})
        from deploy.results import read_results
        assert len(read_results({str(out)!r})) == 6
        leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "PyQt6", "PySide6"))
        assert not leaked, leaked
        sys.exit(rc)
    """)
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "6 frames" in p.stdout


def test_sigterm_mid_run_leaves_a_complete_results_file(world, long_drive, tmp_path):
    out = tmp_path / "interrupted.mcap"
    marker = tmp_path / "written"
    code = _blocking_prelude() + textwrap.dedent(f"""
        import pathlib
        from deploy.results import ResultsWriter
        _write = ResultsWriter.write
        def write(self, record):  # tells the test how far the run is, whatever the machine's load
            _write(self, record)
            pathlib.Path({str(marker)!r}).write_text(str(self.frames))
        ResultsWriter.write = write
        from app.cli import main
        sys.exit(main({run_args("--source", str(long_drive), "--out", str(out), manifest=world["manifest"])!r}))
    """)
    p = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    try:
        deadline = time.monotonic() + 120
        while p.poll() is None and time.monotonic() < deadline:
            done = marker.read_text() if marker.exists() else ""
            if done and int(done) >= 3:
                break
            time.sleep(0.02)
        p.send_signal(signal.SIGTERM)
        stdout, stderr = p.communicate(timeout=120)
    finally:
        p.kill()
    assert p.returncode == 128 + signal.SIGTERM, stderr
    assert "stopped by SIGTERM" in stdout
    with LogReader(out) as r:
        assert r.damage is None and r.indexed  # finished properly: summary and footer written
        assert r.metadata["run_stopped_by"] == "SIGTERM" and r.metadata["run_input_damage"] == ""
    records = read_results(out)
    assert 3 <= len(records) < 240
    assert f"{len(records)} frames" in stdout  # every frame taken was written
    assert [r.index for r in records] == list(range(len(records)))
    assert all(r.class_map is not None and r.latency for r in records)


def test_checksum_mismatch_is_one_line_and_writes_nothing(world, tmp_path, capsys):
    import shutil

    from app.cli import main
    from deploy.zoo import ZooModel, register

    zoo = tmp_path / "zoo"
    zoo.mkdir()
    onnx = shutil.copy(world["model"].onnx, zoo / "tiny.onnx")
    register(ZooModel("tiny", Path(onnx), "", "untrained", bev=world["config"].bev), zoo / "ZOO.toml")
    with open(onnx, "r+b") as f:  # one flipped byte
        f.seek(1000)
        b = f.read(1)
        f.seek(1000)
        f.write(bytes([b[0] ^ 0xFF]))
    out = tmp_path / "never.mcap"
    rc = main(run_args("--source", str(world["drive"]), "--out", str(out), manifest=zoo / "ZOO.toml"))
    err = capsys.readouterr().err
    assert rc == 2
    assert len(err.strip().splitlines()) == 1 and "sha256" in err and "tiny" in err
    assert not out.exists()


def test_a_truncated_log_processes_every_readable_frame_and_says_so(world, long_drive, tmp_path, capsys):
    from app.cli import main

    cut = tmp_path / "cut.mcap"
    data = long_drive.read_bytes()
    cut.write_bytes(data[: len(data) * 2 // 5])
    readable = sum(1 for _ in replay_frames(cut, decode=False))
    assert 0 < readable < 240
    out = tmp_path / "results.mcap"
    rc = main(run_args("--source", str(cut), "--out", str(out), manifest=world["manifest"]))
    stdout = capsys.readouterr().out
    assert rc == 1
    assert "input damaged" in stdout and "every readable frame" in stdout and "truncated" in stdout.lower()
    assert len(read_results(out)) == readable
    # The results file itself says what the run found: whoever opens it later sees the input was cut short.
    with LogReader(out) as r:
        meta = r.metadata
    assert meta["run_frames"] == meta["run_written"] == str(readable)
    assert "truncated" in meta["run_input_damage"].lower() and meta["run_stopped_by"] == ""


# --- outputs that are inputs -------------------------------------------------------------------------------------

def test_run_refuses_to_write_over_its_source_or_model(world, tmp_path, capsys):
    import shutil

    from app.cli import main

    (tmp_path / "sub").mkdir()
    drive = Path(shutil.copy(world["drive"], tmp_path / "drive.mcap"))
    os.link(drive, tmp_path / "hard.mcap")
    data = drive.read_bytes()
    for out in (drive, tmp_path / "sub" / ".." / "drive.mcap", tmp_path / "hard.mcap", world["model"].onnx):
        rc = main(run_args("--source", str(drive), "--out", str(out), manifest=world["manifest"]))
        err = capsys.readouterr().err
        assert rc == 2 and len(err.strip().splitlines()) == 1 and f"--out {out}: is an input" in err
    assert drive.read_bytes() == data  # a log truncated to its header before, on the car's only copy of a drive
    world["model"].verified_onnx()  # ChecksumError had the model file been written


def test_commands_that_read_a_log_refuse_to_write_over_it(world, tmp_path, capsys):
    import shutil

    from app.cli import main
    from sensors.drivers.camera import write_video

    drive = Path(shutil.copy(world["drive"], tmp_path / "drive.log"))  # an MCAP log, whatever its name
    data = drive.read_bytes()
    video = tmp_path / "FV.avi"
    write_video(video, [np.zeros((48, 64, 3), np.uint8)] * 2)
    video_data = video.read_bytes()
    for argv in (["convert", "to-can", str(drive), str(tmp_path / "sub" / ".." / "drive.log")],
                 ["eval", "--model", "tiny", "--manifest", str(world["manifest"]), "--data", str(drive), "--json",
                  str(drive)],
                 ["bench", "soak", "--model", "tiny", "--manifest", str(world["manifest"]), "--log", str(drive),
                  "--json", str(drive)],
                 ["record", "--camera", f"FV={video}", "--out", str(video)]):
        (tmp_path / "sub").mkdir(exist_ok=True)
        rc = main(argv)
        err = capsys.readouterr().err
        assert rc == 2 and len(err.strip().splitlines()) == 1 and "is an input of this command" in err, (argv, err)
    assert drive.read_bytes() == data and video.read_bytes() == video_data


# --- inputs the runtime used to take silently ----------------------------------------------------------------------

def test_a_log_without_camera_images_runs_on_its_ultrasonics(world, tmp_path):
    blind = rewrite_log(world["drive"], tmp_path / "blind.mcap", image=lambda im: None)
    stats = run(world["model"], blind, tmp_path / "results.mcap", threads=1, progress=False)
    records = read_results(tmp_path / "results.mcap")
    assert stats.frames == stats.written == stats.degraded == len(records) == 6
    for r in records:
        assert r.present == () and all(f"camera {c} missing" in r.degraded for c in ("FV", "RV", "MVL", "MVR"))
        assert r.class_map is not None


def test_the_ultrasonic_model_gives_the_same_maps_without_the_cameras(tmp_path):
    """nf-small-uss reads no image: a drive whose cameras are all gone gives it the same maps as the whole drive."""
    drive = ROOT / "tests" / "replay" / "drives" / "uss_failure.mcap"
    blind = rewrite_log(drive, tmp_path / "blind.mcap", image=lambda im: None)
    whole = run("nf-small-uss", drive, tmp_path / "whole.mcap", threads=1, progress=False)
    alone = run("nf-small-uss", blind, tmp_path / "alone.mcap", threads=1, progress=False)
    assert alone.frames == whole.frames == 8
    for a, b in zip(read_results(tmp_path / "alone.mcap"), read_results(tmp_path / "whole.mcap"), strict=True):
        np.testing.assert_array_equal(a.class_map, b.class_map)
        assert a.present == () and "camera FV missing" in a.degraded


def test_a_log_with_nothing_to_run_on_is_one_line_and_writes_nothing(world, tmp_path, capsys):
    from app.cli import main
    from sensors.log_writer import LogWriter
    from sensors.messages import Odometry

    with LogReader(world["drive"]) as r:
        rig, odometry = r.rig, [m.value for m in r.messages() if isinstance(m.value, Odometry)]
    with LogWriter(tmp_path / "odometry.mcap", rig) as w:
        for o in odometry:
            w.write_odometry(o)
    out = tmp_path / "never.mcap"
    rc = main(run_args("--source", str(tmp_path / "odometry.mcap"), "--out", str(out), manifest=world["manifest"]))
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "no camera image" in err and "/uss/echoes" in err
    assert not out.exists()


def test_an_image_of_the_wrong_size_is_left_out_and_flagged_not_stretched(world, tmp_path):
    import cv2

    from sensors.imaging import decode_jpeg, encode_jpeg

    def shrink(im):  # MVR at half size (160 x 121 against 320 x 242): decoded at 1/2 it is 80 x 61, not 160 x 121
        if im.camera != "MVR":
            return im
        rgb = decode_jpeg(im.jpeg)
        return CameraImage(im.camera, im.stamp_ns, jpeg=encode_jpeg(cv2.resize(rgb, (160, 121))))

    small = rewrite_log(world["drive"], tmp_path / "small.mcap", image=shrink)
    stats = run(world["model"], small, tmp_path / "results.mcap", threads=1, progress=False)
    records = read_results(tmp_path / "results.mcap")
    assert stats.degraded == len(records) == 6
    for r in records:
        assert "MVR" not in r.present and "camera MVR wrong size 160x121, calibration says 320x242" in r.degraded


# --- the deadline monitor -----------------------------------------------------------------------------------------

def test_late_policy_drop_drops_and_records_frames(world, tmp_path):
    out = tmp_path / "drop.mcap"
    stats = run(world["model"], world["drive"], out, threads=1, deadline_ms=1e-3, late_policy="drop",
                progress=False)
    assert (stats.frames, stats.late, stats.dropped, stats.written) == (6, 6, 6, 0)
    records = read_results(out)
    assert len(records) == 6
    for k, r in enumerate(records):
        assert r.late and r.dropped and r.deadline_ms == pytest.approx(1e-3)
        assert r.class_map is None and r.stage1 is None and r.sector_distance is None
        assert r.counters == {"frames": k + 1, "late_frames": k + 1, "dropped_frames": k + 1}
        assert r.latency["inference"] > 0  # processed, then withheld: a log frame is never stale on arrival
    kept = run(world["model"], world["drive"], tmp_path / "keep.mcap", threads=1, deadline_ms=1e-3,
               late_policy="keep", progress=False)
    assert (kept.late, kept.dropped, kept.written) == (6, 0, 6)
    assert all(r.late and not r.dropped and r.class_map is not None for r in read_results(tmp_path / "keep.mcap"))


def test_deadline_monitor_judges_and_counts():
    m = DeadlineMonitor(10.0, "drop")
    assert m.stale(10.5) and not m.stale(9.0)
    assert m.judge(5.0) == (False, False)
    assert m.judge(12.0) == (True, True)
    assert m.counters == {"frames": 2, "late_frames": 1, "dropped_frames": 1}
    keep = DeadlineMonitor(10.0, "keep")
    assert not keep.stale(1e9) and keep.judge(12.0) == (True, False)
    assert DeadlineMonitor(None, "drop").judge(1e9) == (False, False)
    with pytest.raises(ConfigError, match="late-policy"):
        DeadlineMonitor(10.0, "skip")
    with pytest.raises(ConfigError, match="deadline"):
        DeadlineMonitor(0.0)


def test_latency_percentiles_within_two_percent():
    rng = np.random.default_rng(0)
    values = rng.lognormal(2.0, 0.7, 2000)
    stats = LatencyStats(("inference",))
    for v in values:
        stats.add({"inference": float(v)})
    s = stats.summary()["inference"]
    assert s["mean"] == pytest.approx(values.mean())
    assert s["max"] == pytest.approx(values.max())
    for q in (50, 95):
        assert stats.percentile("inference", q) == pytest.approx(np.percentile(values, q), rel=0.02)


# --- live sources -------------------------------------------------------------------------------------------------

def test_live_video_files_and_can_log(world, tmp_path, rig):
    """Video files (one per camera, played in real time) and a CAN log of the drive's ultrasonics, through the
    synchroniser into the runtime, as on the car."""
    from sensors.drivers.camera import write_video
    from sensors.drivers.can_log import log_to_can

    small = rig.scaled(0.25)
    (tmp_path / "rig.toml").write_text(small.to_toml())
    frames = list(replay_frames(world["drive"]))
    for cam in small.cameras:
        imgs = [f.images[cam].rgb if f.images[cam] is not None else frames[0].images[cam].rgb for f in frames]
        write_video(tmp_path / f"{cam}.avi", imgs, fps=5.0)
    log_to_can(world["drive"], tmp_path / "uss.log")
    config = tmp_path / "live.toml"
    config.write_text('rig = "rig.toml"\n[cameras]\n' + "".join(f'{c} = "{c}.avi"\n' for c in small.cameras)
                      + '[can]\nchannel = "uss.log"\n'
                      # One thread per source: on a busy machine one may start late; give it time to catch up.
                      + '[sync]\nlatency_ms = 500\n')
    out = tmp_path / "live.mcap"
    stats = run(world["model"], config, out, threads=1, progress=False)
    records = read_results(out)
    # One thread per source: unloaded, the 6 instants give 6 frames of 4 cameras each. A starved machine can make
    # a camera's image miss its instant and form a frame of its own; no image is ever counted twice.
    assert stats.frames == len(records) >= 6
    for cam in small.cameras:
        assert 1 <= sum(cam in r.present for r in records) <= 6
    assert all(r.class_map is not None for r in records)
    # Live frames are stamped at capture on the monotonic clock: their age when taken is measured.
    assert all(r.latency["total"] >= r.latency["age"] > 0 for r in records)
    assert any("uss missing" not in r.degraded for r in records)  # the CAN ultrasonics arrived alongside
    # The CAN log carries the drive's odometry as VEH_Motion frames: the near-field memory runs on the live frames.
    remembered = read_results(tmp_path / "memory.mcap") if run(
        world["model"], config, tmp_path / "memory.mcap", threads=1, progress=False, memory_decay=0.9) else []
    restarted = [r for r in remembered if any(d.startswith("near-field memory restarted") for d in r.degraded)]
    assert len(remembered) >= 6 and len(restarted) <= len(remembered) // 2, [r.degraded for r in remembered]
    # Without VEH_Motion frames on the bus every frame says that the memory had nothing to carry it.
    from sensors.drivers.can_log import read_can_log, write_can_log

    write_can_log(list(read_can_log(tmp_path / "uss.log")), tmp_path / "uss-only.log")
    (tmp_path / "no-odometry.toml").write_text(config.read_text().replace('"uss.log"', '"uss-only.log"'))
    run(world["model"], tmp_path / "no-odometry.toml", tmp_path / "plain.mcap", threads=1, progress=False,
        memory_decay=0.9)
    plain = read_results(tmp_path / "plain.mcap")
    assert plain and all("near-field memory restarted: no odometry" in r.degraded for r in plain)


def test_live_files_start_their_time_when_frames_are_taken(world, tmp_path, rig):
    """Video files and a CAN log standing in for live sensors are stamped from when the run takes frames, together,
    not from when they were opened: a model load in between must not age every frame (with --late-policy drop it
    dropped them all) nor set the cameras apart from the ultrasonics."""
    from deploy.live_config import LiveSource
    from sensors.drivers.camera import write_video
    from sensors.drivers.can_log import log_to_can

    small = rig.scaled(0.25)
    (tmp_path / "rig.toml").write_text(small.to_toml())
    frames = list(replay_frames(world["drive"]))
    for cam in ("FV", "RV"):
        write_video(tmp_path / f"{cam}.avi", [f.images[cam].rgb for f in frames], fps=10.0)
    log_to_can(world["drive"], tmp_path / "uss.log")
    (tmp_path / "live.toml").write_text('rig = "rig.toml"\n[cameras]\nFV = "FV.avi"\nRV = "RV.avi"\n'
                                        '[can]\nchannel = "uss.log"\n[sync]\nlatency_ms = 500\n')
    loading = [0]  # a model load of 2 s between opening the sources and taking frames, on the sources' clock

    def clock():
        return time.monotonic_ns() + loading[0]

    source = LiveSource(load_live_config(tmp_path / "live.toml"), clock=clock)
    try:
        loading[0] = 2_000_000_000
        started = clock()
        taken = [(f, clock()) for f in source.frames()]
    finally:
        source.close()
    assert len(taken) >= 6
    assert taken[0][0].stamp_ns >= started - 20_000_000  # the file's first frame: when frames were first asked for
    assert max(now - f.stamp_ns for f, now in taken) < 1_500_000_000  # fresh, not 2 s old
    assert sum(f.uss is not None and f.images["FV"] is not None for f, _ in taken) >= 4  # cameras and CAN together


def test_live_config_errors_are_one_line(tmp_path, capsys):
    from app.cli import main

    cases = {"rig5.toml": ('rig = 5\n[cameras]\nFV = "front.avi"\n', "rig must be the path of a rig file"),
             "log.toml": ('[can]\nchannel = "missing.log"\n', "can.channel 'missing.log': no such CAN log file"),
             "path.toml": ('[can]\nchannel = "logs/uss"\n', "can.channel 'logs/uss': no such CAN log file"),
             "bad.toml": ("[cameras\n", "cannot read the live configuration"),
             "binary.toml": (None, "cannot read the live configuration"),
             "absent.toml": ("", "cannot read the live configuration (No such file or directory)"),
             "empty.toml": ("[sync]\n", "names no source")}
    for name, (text, message) in cases.items():
        if name == "binary.toml":
            (tmp_path / name).write_bytes(b"\xff\xfe\x00rig")
        elif name != "absent.toml":
            (tmp_path / name).write_text(text)
        rc = main(["run", "--model", "nf-small", "--source", str(tmp_path / name), "--out", str(tmp_path / "o.mcap")])
        err = capsys.readouterr().err
        assert rc == 2 and len(err.strip().splitlines()) == 1 and message in err, (name, err)
        assert str(tmp_path / name) in err
    assert not (tmp_path / "o.mcap").exists()
    # Bus channels stay channels, whatever dots they have (python-can's udp_multicast takes an address).
    (tmp_path / "bus.toml").write_text('[can]\nchannel = "239.74.163.2"\ninterface = "udp_multicast"\n')
    assert load_live_config(tmp_path / "bus.toml").can == "239.74.163.2"


def test_live_config_is_validated(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[cameras]\nFV = "front.avi"\n[can]\nchanel = "can0"\n')
    with pytest.raises(ConfigError, match=r"can\.chanel"):
        load_live_config(bad)
    bad.write_text("[cameras]\n")
    with pytest.raises(ConfigError, match="names no source"):
        load_live_config(bad)
    good = tmp_path / "good.toml"
    good.write_text('[cameras]\nFV = "v/front.avi"\nRV = 2\n[can]\nchannel = "can0"\ninterface = "virtual"\n')
    cfg = load_live_config(good)
    assert cfg == LiveConfig({"FV": str(tmp_path / "v/front.avi"), "RV": 2}, "can0", "virtual", None, None,
                             100.0, str(good))
    bad.write_text('[cameras]\nFV = "front.avi"\n[sync]\nlatency_ms = -1\n')
    with pytest.raises(ConfigError, match="latency_ms"):
        load_live_config(bad)
    with pytest.raises(ConfigError, match="--source"):
        run("tiny", tmp_path / "drive.bag", tmp_path / "out.mcap")


# --- benchmarks ---------------------------------------------------------------------------------------------------

def test_bench_runtime_times_every_stage_and_torch(world, tmp_path, monkeypatch):
    from deploy.runtime_bench import bench_runtime
    from perception.temporal import NearFieldMemory

    run_dir = tmp_path / "run"
    _save_run(world, run_dir)
    b = bench_runtime(world["model"], log=world["drive"], frames=8, threads=1, torch_model=run_dir)
    assert b.frames == 8 and b.fps > 0
    assert set(b.latency_ms) >= {"decode", "preprocess", "inference", "postprocess", "write"}
    assert all(v["p50"] > 0 for v in b.latency_ms.values())
    assert b.torch_ms > 0 and b.ratio == pytest.approx(b.torch_ms / b.latency_ms["inference"]["p50"])
    skipped = bench_runtime(world["model"], log=world["drive"], frames=2, threads=1)
    assert skipped.torch_ms is None and "untrained" in skipped.torch_skipped and "--torch-model" in skipped.format()
    steps = []
    real = NearFieldMemory.step
    monkeypatch.setattr(NearFieldMemory, "step", lambda self, *a: steps.append(a[3]) or real(self, *a))
    remembering = bench_runtime(world["model"], log=world["drive"], frames=3, threads=1, memory_decay=0.9)
    assert len(steps) >= 3 and all(p is not None for p in steps)  # every timed frame, with the drive's odometry
    assert "near-field memory (decay 0.9) in postprocess" in remembering.format()
    assert remembering.as_dict()["memory_decay"] == 0.9 and skipped.as_dict()["memory_decay"] is None


def _save_run(world, run_dir: Path) -> None:
    """A training run directory holding the tiny network's weights, as `nearfield train --out` leaves it."""
    from perception.checkpoint import CONFIG_FILE, LAST, save_checkpoint

    run_dir.mkdir()
    (run_dir / CONFIG_FILE).write_text(world["config"].to_toml())
    save_checkpoint(run_dir, LAST, world["net"], {"step": 0})


@pytest.mark.parametrize("memory_decay", [None, 1.0])  # 1.0: the near-field memory forgets nothing by fading
def test_soak_memory_does_not_grow(world, memory_decay):
    from deploy.runtime_bench import soak

    s = soak(world["model"], log=world["drive"], frames=120, warmup=40, threads=1, sample_every=20,
             memory_decay=memory_decay)
    assert s.frames == 120 and s.rss_end_mb > 0
    assert s.passed, s.format()
    # Growth is what must stay bounded; the allocator may hand memory back after warm-up (-40 MB was seen).
    assert s.growth_mb < 16 and "PASS" in s.format()


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="RSS from /proc (Linux)")
def test_rss_reads_this_process():
    from deploy.runtime_bench import rss_mb

    before = rss_mb()
    block = np.ones(64 << 20, np.uint8)  # 64 MB touched
    assert rss_mb() - before > 50
    del block
