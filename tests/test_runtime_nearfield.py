"""The embedded runtime's near-field post-processing (`nearfield run`): the near-field bias, the registered operating
point, the echo floor and the near-field memory, through the pipeline with fixed network outputs and through the
command line."""

import numpy as np
import pytest
from runtime_world import run_args, spy_pipelines

from sensors.classes import IGNORE
from sensors.log import LogReader
from sensors.replay import replay_frames

pytestmark = pytest.mark.usefixtures("torch_one_thread")


class _Scripted:
    """A backend that returns logits of its own choosing (next_logits) and no stage-1 evidence."""

    name, input_names, output_names = "scripted", (), ("class_logits", "occupancy_logits")

    def run(self, inputs):
        logits = self.next_logits()
        return {"class_logits": logits, "occupancy_logits": np.zeros((1, 1, *logits.shape[2:]), np.float32)}

    def close(self):
        pass


class _FixedOutputs(_Scripted):
    """A backend whose every cell is free at 85 % and otherwise most likely a low obstacle."""

    def __init__(self, shape):
        probs = np.array([0.85, 0.02, 0.03, 0.04, 0.06], np.float32)
        self.logits = np.broadcast_to(np.log(probs)[None, :, None, None], (1, 5, *shape)).copy()

    def next_logits(self):
        return self.logits


def test_free_confidence_turns_doubtful_near_cells_into_obstacles(world, tmp_path, capsys, monkeypatch):
    from app.cli import main
    from deploy.pipeline import Pipeline
    from perception.postprocess import near_mask

    with LogReader(world["drive"]) as r:
        rig = r.rig
    grid = world["config"].bev.grid(rig)
    frame = next(iter(replay_frames(world["drive"], decode_scale=2)))
    near = near_mask(rig.vehicle, grid, 1.0)
    plain = Pipeline(world["model"], rig, backend=_FixedOutputs(grid.shape)).process(frame)
    biased = Pipeline(world["model"], rig, backend=_FixedOutputs(grid.shape), free_confidence=0.9).process(frame)
    assert np.all((plain.class_map == 0) | (plain.class_map == IGNORE)) and np.isinf(plain.sectors.distance).all()
    assert np.all(biased.class_map[near] == 4)  # its most likely obstacle class
    assert np.array_equal(biased.class_map[~near], plain.class_map[~near])  # beyond 1 m: the argmax
    assert np.all(biased.sectors.distance <= 1.0) and np.all(biased.sectors.level >= 1)  # the display warns
    sure = Pipeline(world["model"], rig, backend=_FixedOutputs(grid.shape), free_confidence=0.8).process(frame)
    assert np.array_equal(sure.class_map, plain.class_map)  # 85 % free is enough at 0.8


    built = spy_pipelines(monkeypatch, lambda self: self.free_confidence)
    out = tmp_path / "biased.mcap"
    assert main(run_args("--source", str(world["drive"]), "--out", str(out), "--free-confidence", "0.9",
                     manifest=world["manifest"])) == 0
    assert built == [0.9]  # `nearfield run` hands the bias to the pipeline that makes the maps and sectors
    with LogReader(out) as r:
        assert r.metadata["free_confidence"] == "0.9"
    capsys.readouterr()
    never = tmp_path / "never.mcap"
    assert main(run_args("--source", str(world["drive"]), "--out", str(never), "--free-confidence", "1.5",
                     manifest=world["manifest"])) == 2
    assert "free confidence must be a probability" in capsys.readouterr().err and not never.exists()


def test_run_operating_point_uses_the_registered_bias_memory_and_echo_floor(world, tmp_path, capsys, monkeypatch):
    import shutil

    from app.cli import main
    from deploy.zoo import get_model, read_zoo, set_operating_point
    from perception.near_field import NearFieldSettings

    zoo = tmp_path / "zoo"
    shutil.copytree(world["manifest"].parent, zoo)
    manifest = zoo / "ZOO.toml"
    built = spy_pipelines(monkeypatch, lambda self: (self.free_confidence, self.memory_decay, self.echo_floor))
    out = tmp_path / "op.mcap"
    assert main(run_args("--source", str(world["drive"]), "--out", str(out), "--operating-point",
                         manifest=manifest)) == 2
    assert "has no registered operating point" in capsys.readouterr().err and not out.exists() and not built
    set_operating_point("tiny", {"free_confidence": 0.97, "memory_decay": 0.9, "echo_floor": True, "chosen_on": "val"},
                        manifest)
    assert get_model("tiny", manifest).operating_point["chosen_on"] == "val"  # the other fields are kept
    assert main(run_args("--source", str(world["drive"]), "--out", str(out), "--operating-point",
                         manifest=manifest)) == 0
    assert built == [(0.97, 0.9, True)]
    with LogReader(out) as r:  # the results say what they were made with
        assert r.metadata["free_confidence"] == "0.97" and r.metadata["echo_floor"] == "on"
    capsys.readouterr()
    for flag in (["--free-confidence", "0.9"], ["--echo-floor"]):  # one or the other
        assert main(run_args("--source", str(world["drive"]), "--out", str(tmp_path / "both.mcap"),
                             "--operating-point", *flag, manifest=manifest)) == 2
        assert "without --free-confidence, --memory and --echo-floor" in capsys.readouterr().err
    # The argmax without memory is an operating point too: absent keys.
    set_operating_point("tiny", {"chosen_on": "val"}, manifest)
    assert read_zoo(manifest)["tiny"].operating_settings() == NearFieldSettings()
    # A hand-edited manifest with a bias out of range is one line naming the entry, before any frame is read.
    manifest.write_text(manifest.read_text().replace('chosen_on = "val"', 'chosen_on = "val"\nfree_confidence = 1.5'))
    assert main(run_args("--source", str(world["drive"]), "--out", str(tmp_path / "bad.mcap"), "--operating-point",
                     manifest=manifest)) == 2
    assert "[tiny]: operating_point: free confidence must be a probability" in capsys.readouterr().err
    manifest.write_text(manifest.read_text().replace('free_confidence = 1.5', 'echo_floor = "yes"'))
    assert main(run_args("--source", str(world["drive"]), "--out", str(tmp_path / "bad.mcap"), "--operating-point",
                     manifest=manifest)) == 2
    assert "[tiny]: operating_point: echo_floor must be true or false" in capsys.readouterr().err


def test_the_echo_floor_marks_a_close_echo_the_network_missed(world, tmp_path, capsys, monkeypatch):
    from app.cli import main
    from deploy.pipeline import Pipeline
    from perception.uss_raster import DIRECT_ARC
    from sensors.classes import SemanticClass

    with LogReader(world["drive"]) as r:
        rig = r.rig
    grid = world["config"].bev.grid(rig)
    frame = next(iter(replay_frames(world["drive"], decode_scale=2)))
    pipe = Pipeline(world["model"], rig, backend=_FixedOutputs(grid.shape), echo_floor=True)
    cell = tuple(np.argwhere(pipe.echo_zone)[0])
    real = pipe.prep.network_inputs

    def with_arc(f):
        inputs, present = real(f)
        inputs["uss"][0, DIRECT_ARC] = 0.0
        inputs["uss"][0, DIRECT_ARC][cell] = 1.0  # an echo of a few cm at that cell
        return inputs, present

    monkeypatch.setattr(pipe.prep, "network_inputs", with_arc)
    out = pipe.process(frame)  # the network says free everywhere (85 %)
    assert out.class_map[cell] == SemanticClass.LOW_OBSTACLE
    assert (out.class_map == SemanticClass.LOW_OBSTACLE).sum() == 1
    assert out.sectors.level.max() == 3  # the display's last level
    plain = Pipeline(world["model"], rig, backend=_FixedOutputs(grid.shape))
    monkeypatch.setattr(plain.prep, "network_inputs", with_arc)
    assert (plain.process(frame).class_map != SemanticClass.LOW_OBSTACLE).all()  # off by default
    built = spy_pipelines(monkeypatch, lambda self: self.echo_floor)
    result = tmp_path / "floor.mcap"
    assert main(run_args("--source", str(world["drive"]), "--out", str(result), "--echo-floor",
                     manifest=world["manifest"])) == 0
    assert built == [True]
    with LogReader(result) as r:
        assert r.metadata["echo_floor"] == "on"


class _Sequence(_Scripted):
    """A backend that sees a low obstacle at CELL in its first frame and nothing (free at 99 %) after it."""

    def __init__(self, shape, cell):
        self.free = np.zeros((1, 5, *shape), np.float32)
        self.free[0, 0] = np.log(99.0 * 4)  # P(free) = 0.99
        self.first = self.free.copy()
        self.first[0, :, cell[0], cell[1]] = [0.0, 0.0, 0.0, 0.0, 8.0]
        self.calls = 0

    def next_logits(self):
        self.calls += 1
        return self.first if self.calls == 1 else self.free


def test_the_near_field_memory_recalls_an_obstacle_the_car_has_driven_past(world, tmp_path, capsys, monkeypatch):
    from app.cli import main
    from deploy.pipeline import Pipeline
    from sensors.geometry import Pose2D

    with LogReader(world["drive"]) as r:
        rig = r.rig
    grid = world["config"].bev.grid(rig)
    frames = list(replay_frames(world["drive"], decode_scale=2))[:3]
    # An obstacle 0.5 m beside the left flank, a little ahead of the mirror; the car then creeps 0.4 m forwards.
    body = rig.vehicle
    x_mid = (body.footprint()[0][0] + body.footprint()[2][0]) / 2
    y_left = body.footprint()[0][1]
    seen = tuple(int(v) for v in np.floor(grid.to_cell(np.array([x_mid + 0.4, y_left + 0.5]))))
    later = tuple(int(v) for v in np.floor(grid.to_cell(np.array([x_mid, y_left + 0.5]))))
    for k, f in enumerate(frames):
        f.odometry = Pose2D(0.4 * min(k, 1), 0.0, 0.0)
    pipe = Pipeline(world["model"], rig, backend=_Sequence(grid.shape, seen), memory_decay=0.9)
    first, second = pipe.process(frames[0]), pipe.process(frames[1])
    assert first.class_map[seen] == 4 and not first.recalled.any()
    assert second.class_map[later] == 4 and second.recalled[later] and second.recalled.sum() == 1
    assert second.sectors.distance.min() <= 0.6  # the parking display warns of it
    plain = Pipeline(world["model"], rig, backend=_Sequence(grid.shape, seen))
    plain.process(frames[0])
    assert plain.process(frames[1]).class_map[later] == 0 and plain.process(frames[1]).recalled is None
    frames[2].odometry = None
    third = pipe.process(frames[2])
    assert "near-field memory restarted: no odometry" in third.degraded and not third.recalled.any()

    from perception.temporal import DEFAULT_DECAY

    built = spy_pipelines(monkeypatch, lambda self: self.memory_decay)
    out = tmp_path / "memory.mcap"
    assert main(run_args("--source", str(world["drive"]), "--out", str(out), "--memory",
                         manifest=world["manifest"])) == 0
    assert built == [DEFAULT_DECAY]  # `--memory` without a value
    with LogReader(out) as r:
        assert r.metadata["memory_decay"] == f"{DEFAULT_DECAY:g}"
    capsys.readouterr()
    never = tmp_path / "never.mcap"
    assert main(run_args("--source", str(world["drive"]), "--out", str(never), "--memory", "0",
                     manifest=world["manifest"])) == 2
    assert "memory decay must be in (0, 1]" in capsys.readouterr().err and not never.exists()
