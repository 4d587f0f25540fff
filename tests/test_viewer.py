"""The Qt viewer, offscreen (pytest-qt): open, step, scrub, play a loop, toggle layers, switch models (the prediction
layer changes), failed sensors, damaged logs and bad models reported without a crash, PNG / MP4 / screenshot
exports checked by their content, settings that persist (and that a screenshot neither reads nor writes)."""

import itertools
import os
import shutil
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
pytest.importorskip("pytestqt")

from PyQt6.QtCore import QPoint, QSettings, Qt
from PyQt6.QtWidgets import QApplication
from test_viewer_render import make_zoo

from app.render import FAILED_COLOR, FAILED_FILL, Layers, view_grid
from app.session import DriveSession
from app.window import ViewerWindow
from sensors.classes import CLASS_COLORS, IGNORE, SemanticClass
from sim_data.simulate import DriveSpec, simulate_drive

TIMEOUT = 30_000  # ms; generous: the test machine may be busy


@pytest.fixture(scope="module")
def drives(tmp_path_factory, rig):
    root = tmp_path_factory.mktemp("drives")
    return {"ok": simulate_drive(DriveSpec("viewer", 11, 6), root, rig, scale=0.25),
            "failing": simulate_drive(DriveSpec("failing", 14, 3, ("camera_failure", "uss_failure")), root, rig,
                                      scale=0.25)}


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    torch = pytest.importorskip("torch")
    root = tmp_path_factory.mktemp("zoo")
    make_zoo(torch, root)
    return root / "ZOO.toml"


def make_window(qtbot, tmp_path, manifest, name="viewer.ini"):
    settings = QSettings(str(tmp_path / name), QSettings.Format.IniFormat)
    win = ViewerWindow(settings, manifest, threads=1, demo_cache=tmp_path / "demo")
    qtbot.addWidget(win)
    win.show()
    return win


@pytest.fixture
def window(qtbot, tmp_path, zoo):
    return make_window(qtbot, tmp_path, zoo)


def wait_shown(qtbot, win, index):
    qtbot.waitUntil(lambda: win.view is not None and win.view.index == index and win.awaiting is None
                    and win.view.model == win.wanted_model and not win.worker.pending, timeout=TIMEOUT)


def bev_pixel(win, xy):
    """Vehicle-frame point -> its pixel position in a grab of the window."""
    view = view_grid(win.source.rig, 16.0, win.bev.image.width())  # the picture is drawn at the panel's size
    px, py = view.to_pixel(np.asarray([xy], float))[0]
    p = win.bev.to_widget(px, py)
    q = win.bev.mapTo(win, QPoint(round(p.x() - 0.5), round(p.y() - 0.5)))
    return q.y(), q.x()


def grab(win, path):
    assert win.export_png(path)
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def obstacle_blocks(view):
    """Vehicle-frame centres of the 0.4 m prediction cells that hold a ground-truth obstacle and no ego cell."""
    grid = view.pred_grid
    truth = view.truth.reshape(grid.rows, 4, grid.cols, 4)
    has = ((truth != SemanticClass.FREE) & (truth != IGNORE)).any(axis=(1, 3)) & ~(truth == IGNORE).any(axis=(1, 3))
    return grid.cell_centres()[has]


# --- playback -----------------------------------------------------------------------------------------------------

def test_open_step_scrub_jump_and_play_a_loop(qtbot, window, drives):
    win = window
    win.open_log(drives["ok"])
    wait_shown(qtbot, win, 0)
    assert win.slider.maximum() == 5 and win.bev.rgb.shape == (win.bev_size(), win.bev_size(), 3)
    assert all(p.rgb is not None and p.rgb.std() > 10 for p in win.cameras.values())
    keys = dict((text, k) for k, text in win.shortcuts())
    assert keys["Play"] == "Space" and keys["Step ▶"] == "Right" and keys["Loop in"] == "["
    win.activateWindow()
    qtbot.keyClick(win, Qt.Key.Key_Right)
    wait_shown(qtbot, win, 1)
    qtbot.keyClick(win, Qt.Key.Key_Left)
    wait_shown(qtbot, win, 0)
    win.slider.setValue(5)  # scrubbing
    wait_shown(qtbot, win, 5)
    assert "frame 5 (0-5)" in win.info.text() and "day" in win.info.text()  # 0-based, like --frame
    win.jump_to(0.31)
    wait_shown(qtbot, win, 3)

    win.set_speed(4.0)
    assert win.timer.interval() == round(win.source.period_ns / 1e6 / 4)
    shown = []
    win.view_shown.connect(shown.append)
    win.set_loop(1, 2)
    win.play()
    qtbot.waitUntil(lambda: any(a == 2 and b == 1 for a, b in itertools.pairwise(shown)), timeout=TIMEOUT)
    win.pause()
    assert set(shown) <= {1, 2, 3}  # 3 only as the frame playback started from
    assert not win.errors


def test_fast_steps_and_scrubbing_end_where_asked_and_never_go_back(qtbot, window, drives, monkeypatch):
    win = window
    win.open_log(drives["ok"])
    win.select_model("tiny-structure")
    wait_shown(qtbot, win, 0)
    view = DriveSession.view
    monkeypatch.setattr(DriveSession, "view", lambda self, k: (time.sleep(0.1), view(self, k))[1])  # a slow model
    drawn = []  # (frame drawn, slider then)
    win.view_shown.connect(lambda i: drawn.append((i, win.slider.value())))
    win.activateWindow()
    for _ in range(5):  # faster than the frames come: answers to older presses arrive while newer ones wait
        qtbot.keyClick(win, Qt.Key.Key_Right)
        qtbot.wait(30)
    wait_shown(qtbot, win, 5)
    assert win.current == win.slider.value() == 5  # no press lost
    frames = [i for i, _ in drawn]
    assert frames == sorted(frames) and all(slider >= i for i, slider in drawn)  # in order; the slider ahead
    drawn.clear()
    pulled = []
    win.slider.setSliderDown(True)  # dragged back to the start
    for v in range(4, -1, -1):
        win.slider.setValue(v)
        qtbot.wait(30)
        if win.slider.value() != v:
            pulled.append((v, win.slider.value()))
    win.slider.setSliderDown(False)
    wait_shown(qtbot, win, 0)
    assert not pulled and win.slider.value() == 0
    assert [i for i, _ in drawn] == sorted((i for i, _ in drawn), reverse=True)


def test_after_go_to_time_the_keys_step_the_view_again(qtbot, window, drives):
    win = window
    win.open_log(drives["ok"])
    wait_shown(qtbot, win, 0)
    win.activateWindow()
    qtbot.keyClick(win, Qt.Key.Key_G, Qt.KeyboardModifier.ControlModifier)
    assert win.jump_box.hasFocus()
    qtbot.keyClicks(win.jump_box, "0.2")
    qtbot.keyClick(win.jump_box, Qt.Key.Key_Return)
    wait_shown(qtbot, win, 2)
    assert not win.jump_box.hasFocus()
    qtbot.keyClick(QApplication.focusWidget() or win, Qt.Key.Key_Right)  # where a key press goes
    wait_shown(qtbot, win, 3)


def test_layers_toggle_and_switching_model_changes_the_prediction_layer(qtbot, window, drives, tmp_path):
    win = window
    win.open_log(drives["ok"])
    wait_shown(qtbot, win, 0)
    controls = win.layer_controls
    controls.uss.setChecked(False)
    controls.sectors.setChecked(False)
    controls.truth_opacity.setValue(100)
    view = win.view
    # Without a model the BEV shows the truth: a truth obstacle's colour at its cell, background once toggled off.
    cells = np.argwhere(view.truth == SemanticClass.VEHICLE)
    xy = view.truth_grid.cell_centres()[tuple(cells[len(cells) // 2])]
    img = grab(win, tmp_path / "truth.png")
    assert np.abs(img[bev_pixel(win, xy)].astype(int) - CLASS_COLORS[SemanticClass.VEHICLE]).max() <= 3
    controls.truth.setChecked(False)
    img = grab(win, tmp_path / "no_truth.png")
    assert np.abs(img[bev_pixel(win, xy)].astype(int) - CLASS_COLORS[SemanticClass.VEHICLE]).max() > 60

    controls.prediction_opacity.setValue(100)
    colours = {}
    for name, cls in (("tiny-vehicle", SemanticClass.VEHICLE), ("tiny-structure", SemanticClass.STRUCTURE)):
        win.select_model(name)
        wait_shown(qtbot, win, 0)
        assert win.view.model == name and win.view.miou is not None
        img = grab(win, tmp_path / f"{name}.png")
        blocks = obstacle_blocks(win.view)
        assert len(blocks) > 10
        colours[name] = np.array([img[bev_pixel(win, b)] for b in blocks]).astype(int)
        # Where the ground truth has obstacles, the prediction's colour shows.
        assert np.abs(colours[name] - CLASS_COLORS[cls]).max() <= 3
        assert np.isfinite(win.plots.latency["inference"][0]) and np.isfinite(win.plots.iou[0])
    assert np.abs(colours["tiny-vehicle"] - colours["tiny-structure"]).max() > 60
    win.select_model(None)
    wait_shown(qtbot, win, 0)
    assert win.view.result is None and not win.errors


def test_failed_camera_and_ultrasonic_sensor_are_shown(qtbot, window, drives):
    win = window
    win.open_log(drives["failing"])
    win.go_to(1)  # asked before the log is open: shown once it is
    wait_shown(qtbot, win, 1)
    labels = win.view.frame.conditions
    failed_cams = [lab.split(":")[1] for lab in labels if lab.startswith("camera_failure:")]
    failed_uss = [lab.split(":")[1] for lab in labels if lab.startswith("uss_failure:")]
    assert failed_cams and failed_uss
    for name, panel in win.cameras.items():
        rgb = panel.rgb.astype(int)
        grey = (rgb[..., 0] == rgb[..., 1]) & (rgb[..., 1] == rgb[..., 2])
        # A failed camera's panel is greyed (only its red label has colour); a working one is in colour.
        assert (grey.mean() > 0.9) == (name in failed_cams)
        if name in failed_cams:
            assert np.all(rgb == FAILED_COLOR, axis=-1).sum() > 20
    assert "camera_failure" in win.info.text() and "degraded: " in win.info.text()
    # One red cell in the ultrasonic strip per failed sensor, and a red cross at it in the BEV.
    cells = np.all(win.uss_panel.rgb == FAILED_FILL, axis=-1).any(axis=0)
    assert np.count_nonzero(np.diff(cells.astype(int)) == 1) + cells[0] == len(failed_uss)
    assert np.all(win.bev.rgb == FAILED_COLOR, axis=-1).sum() > 20


def test_the_info_line_stays_in_sight_at_1024_px_and_never_cuts_the_degraded_sensors(qtbot, window, drives, tmp_path):
    win = window
    win.open_log(drives["failing"])
    win.select_model("tiny-structure")
    win.go_to(1)
    wait_shown(qtbot, win, 1)
    degraded = f"degraded: {'; '.join(win.view.frame.degraded)}"
    assert win.view.frame.degraded and win.info.text().endswith(degraded)
    win.resize(1024, 700)
    qtbot.waitUntil(lambda: win.width() == 1024)
    grab(win, tmp_path / "narrow.png")
    info = win.info
    assert info.isVisible() and info.width() > 300  # in the toolbar, not in its overflow menu
    assert info.mapTo(win, QPoint(info.width(), 0)).x() <= win.width()
    text, alert = info.shown()
    assert alert == degraded and text.startswith("frame 1 (0-2)")
    fm = info.fontMetrics()
    assert fm.horizontalAdvance(text) + fm.horizontalAdvance(alert) <= info.width()
    assert info.toolTip() == info.text()  # the whole line, whatever was cut


def test_pictures_are_drawn_at_the_panels_size_and_the_docks_follow_the_window(qtbot, window, drives, tmp_path):
    """The BEV and the ultrasonic strip are drawn at their panels' size, so their labels keep their size on screen;
    a window made small and large again gets its panels back instead of keeping the squeezed docks."""
    win = window
    win.open_log(drives["ok"])
    wait_shown(qtbot, win, 0)

    def drawn_at_panel_size():
        w, h = win.bev.pixel_size()
        uw, uh = win.uss_panel.pixel_size()
        return (win.bev.image.width() == win.bev.image.height() == min(max(min(w, h), 320), 1600)
                and win.uss_panel.image.width() == min(max(uw, 360), 2400)
                and win.uss_panel.image.height() == min(max(uh, 40), 140))

    for size in ((1024, 700), (1920, 1080), (1366, 768)):
        win.resize(*size)
        qtbot.waitUntil(lambda size=size: (win.width(), win.height()) == size and drawn_at_panel_size(),
                        timeout=TIMEOUT)
    big = (1920, 1080)
    win.resize(1024, 700)
    qtbot.waitUntil(lambda: win._fitted == (1024, 700), timeout=TIMEOUT)
    win.resize(*big)
    qtbot.waitUntil(lambda: win._fitted == big and drawn_at_panel_size(), timeout=TIMEOUT)
    plots, cams = win.docks["plots"], win.docks["cameras"]
    qtbot.waitUntil(lambda: plots.height() >= 0.2 * big[1] and cams.width() >= 0.3 * big[0],  # not left squeezed
                    timeout=TIMEOUT)
    assert min(win.bev.width(), win.bev.height()) >= 0.45 * big[1]  # the BEV has the rest
    grab(win, tmp_path / "big.png")


def test_the_sector_ring_has_a_legend_with_the_frames_thresholds(qtbot, window, drives):
    win = window
    key = win.layer_controls.ring_key
    assert key.isHidden()  # no frame yet: no thresholds to tell
    win.open_log(drives["ok"])
    wait_shown(qtbot, win, 0)
    levels = win.view.levels_m
    assert levels == win.worker.session._truth_sectors[next(iter(win.worker.session._truth_sectors))].levels_m
    assert not key.isHidden() and f"clear &gt; {levels[0]:g} m" in key.text()
    for name, t in zip(("caution", "warning", "stop"), levels, strict=True):
        assert f"{name} ≤ {t:g} m" in key.text()
    win.layer_controls.set_levels((2.0, 1.0, 0.25))
    assert "stop ≤ 0.25 m" in key.text()


def test_the_help_lists_every_shortcut_in_aligned_columns(qtbot, window):
    window.show_shortcuts()
    box = next(w for w in QApplication.topLevelWidgets() if w.windowTitle() == "Keyboard shortcuts" and w.isVisible())
    assert box.text().startswith("<table>") and box.text().count("<tr>") == len(window.shortcuts())
    box.close()


# --- errors -------------------------------------------------------------------------------------------------------

def test_damaged_and_unreadable_logs_are_reported_and_the_viewer_goes_on(qtbot, window, drives, tmp_path):
    win = window
    junk = tmp_path / "junk.mcap"
    junk.write_bytes(b"definitely not MCAP" * 20)
    win.open_log(junk)
    qtbot.waitUntil(lambda: len(win.errors) == 1, timeout=TIMEOUT)
    assert win.errors[0].startswith("open: ") and "not an MCAP file" in win.errors[0]
    box = win._message_box
    assert box is not None and box.isVisible() and not box.isModal()  # never blocks
    cut = tmp_path / "cut.mcap"
    cut.write_bytes(drives["ok"].read_bytes()[:-100])
    win.open_log(cut)
    wait_shown(qtbot, win, 0)
    assert win.errors[-1].startswith("damage: ") and "cut off" in win.errors[-1]
    win.go_to(5)
    wait_shown(qtbot, win, 5)


def test_a_model_with_a_bad_checksum_is_refused_and_the_previous_model_stays(qtbot, drives, zoo, tmp_path):
    bad = tmp_path / "zoo"
    shutil.copytree(zoo.parent, bad)
    with open(bad / "tiny-structure.onnx", "ab") as f:
        f.write(b"\0")
    win = make_window(qtbot, tmp_path, bad / "ZOO.toml")
    win.open_log(drives["ok"])
    win.select_model("tiny-vehicle")
    wait_shown(qtbot, win, 0)
    win.select_model("tiny-structure")
    qtbot.waitUntil(lambda: any(e.startswith("model: ") for e in win.errors), timeout=TIMEOUT)
    assert "sha256" in win.errors[-1]
    assert win.model_box.currentText() == "tiny-vehicle" and win.model_name == "tiny-vehicle"
    win.step(1)
    wait_shown(qtbot, win, 1)
    assert win.view.model == "tiny-vehicle"


# --- exports and settings -----------------------------------------------------------------------------------------

def test_png_and_mp4_exports(qtbot, window, drives, tmp_path):
    win = window
    win.open_log(drives["ok"])
    win.select_model("tiny-vehicle")
    wait_shown(qtbot, win, 0)
    img = grab(win, tmp_path / "view.png")
    assert img.shape[:2] == (win.height(), win.width())
    for panel in (*win.cameras.values(), win.bev, win.uss_panel):  # every panel is in the picture, not blank
        r = panel.image_rect()
        top_left = panel.mapTo(win, QPoint(round(r.x()), round(r.y())))
        crop = img[top_left.y(): top_left.y() + int(r.height()), top_left.x(): top_left.x() + int(r.width())]
        assert crop.size and crop.std() > 10, panel.objectName()
    with qtbot.waitSignal(win.worker.video_done, timeout=TIMEOUT * 2) as done:
        win.export_mp4(tmp_path / "clip.mp4", 0, 2)
    cap = cv2.VideoCapture(done.args[0])
    count = 0
    while cap.read()[0]:
        count += 1
    cap.release()
    assert count == 3


def test_layout_layers_speed_and_recent_files_persist(qtbot, drives, zoo, tmp_path):
    win = make_window(qtbot, tmp_path, zoo)
    win.open_log(drives["ok"])
    wait_shown(qtbot, win, 0)
    win.layer_controls.uss.setChecked(False)
    win.layer_controls.truth_opacity.setValue(30)
    win.set_speed(2.0)
    win.docks["plots"].hide()
    win.close()
    again = make_window(qtbot, tmp_path, zoo)
    layers = again.layer_controls.layers()
    assert not layers.uss and layers.truth_opacity == pytest.approx(0.3) and again.speed == 2.0
    assert again.docks["plots"].isHidden() and not again.docks["cameras"].isHidden()
    assert again.recent_files() == [str(drives["ok"].resolve())]
    assert [a.text() for a in again.recent_menu.actions()] == again.recent_files()


def test_the_demo_drive_is_reused_from_the_cache(qtbot, window, drives, tmp_path):
    (tmp_path / "demo").mkdir()
    shutil.copy(drives["ok"], tmp_path / "demo" / "demo-000.mcap")  # as if simulated on an earlier run
    window.open_log(None)
    wait_shown(qtbot, window, 0)
    assert window.source.path == tmp_path / "demo" / "demo-000.mcap"


def test_view_command_screenshot(qtbot, drives, zoo, tmp_path, capsys, monkeypatch):
    from app.cli import main

    plotted = []  # frames in the latency plot when each screenshot is taken
    export_png = ViewerWindow.export_png
    monkeypatch.setattr(ViewerWindow, "export_png", lambda self, path: (
        plotted.append(int(np.isfinite(self.plots.latency["inference"]).sum())), export_png(self, path))[1])

    out = tmp_path / "shot.png"
    argv = ["view", str(drives["ok"]), "--model", "tiny-structure", "--manifest", str(zoo), "--frame", "3",
            "--screenshot", str(out), "--settings", str(tmp_path / "cli.ini"), "--threads", "1"]
    assert main(argv) == 0
    img = cv2.imread(str(out))
    assert img is not None and img.shape[0] > 400 and img.std() > 10
    assert main([*argv[:-6], "--frame", "9", *argv[-6:-4], *argv[-4:]]) == 2
    assert "frame 9 is past the end (6 frames)" in capsys.readouterr().err
    assert main([*argv, "--history"]) == 0  # frames 0..3 run in turn: the plots hold all four
    assert plotted == [1, 4]
    assert main([*argv[:-6], "--frame", "9", *argv[-6:], "--history"]) == 2
    assert "frame 9 is past the end (6 frames)" in capsys.readouterr().err
    assert main(["view", str(drives["ok"]), "--history"]) == 2
    assert "--history is for --screenshot" in capsys.readouterr().err
    assert main(["view", str(drives["ok"]), "--model", "nope", "--manifest", str(zoo), "--screenshot",
                 str(out), "--settings", str(tmp_path / "cli.ini")]) == 2
    assert "unknown deploy model 'nope'" in capsys.readouterr().err
    assert main([*argv, "--free-confidence", "1.5"]) == 2
    assert "free confidence must be a probability" in capsys.readouterr().err
    assert main([*argv, "--memory", "2"]) == 2
    assert "memory decay must be in (0, 1]" in capsys.readouterr().err


def test_a_screenshot_starts_from_the_defaults_and_never_writes_the_users_settings(qtbot, drives, zoo, tmp_path,
                                                                                   monkeypatch):
    from app.cli import main

    native, user = QSettings.Format.NativeFormat, QSettings.Scope.UserScope
    home = Path(QSettings("nearfield", "viewer").fileName()).parent.parent  # put back at the end
    QSettings.setPath(native, user, str(tmp_path / "config"))
    try:
        saved = QSettings("nearfield", "viewer")
        saved.setValue("layers/prediction", False)  # what the user last left the window with
        saved.setValue("recent", ["/somewhere/else.mcap"])
        saved.sync()
        mine = Path(saved.fileName())
        assert mine.is_relative_to(tmp_path)
        before = mine.read_bytes()
        seen = []  # (layers, info line) when each screenshot is taken
        export_png = ViewerWindow.export_png
        monkeypatch.setattr(ViewerWindow, "export_png", lambda self, path: (
            seen.append((self.layer_controls.layers(), self.info.text())), export_png(self, path))[1])
        argv = ["view", str(drives["ok"]), "--model", "tiny-structure", "--manifest", str(zoo), "--screenshot",
                str(tmp_path / "shot.png"), "--threads", "1"]
        assert main(argv) == 0
        assert seen[0][0] == Layers() and "sectors: prediction" in seen[0][1]
        assert mine.read_bytes() == before
        # A settings file given with --settings is read, and not written either.
        given = QSettings(str(tmp_path / "given.ini"), QSettings.Format.IniFormat)
        given.setValue("layers/uss", False)
        given.sync()
        before_given = (tmp_path / "given.ini").read_bytes()
        assert main([*argv, "--settings", str(tmp_path / "given.ini")]) == 0
        assert not seen[1][0].uss and seen[1][0].prediction
        assert (tmp_path / "given.ini").read_bytes() == before_given and mine.read_bytes() == before
    finally:
        QSettings.setPath(native, user, str(home))


def test_a_results_log_is_named_with_the_drive_and_model_to_open_instead(qtbot, window, drives, zoo, tmp_path,
                                                                          capsys):
    from app.cli import main
    from deploy.runtime import run
    from deploy.zoo import read_zoo

    results = tmp_path / "results.mcap"
    run(read_zoo(zoo)["tiny-structure"], drives["ok"], results, threads=1, progress=False)
    window.open_log(results)
    qtbot.waitUntil(lambda: bool(window.errors), timeout=TIMEOUT)
    assert window.errors == [f"open: {results} is a results log of tiny-structure over {drives['ok']}, not a drive "
                             f"log; open {drives['ok']} with --model tiny-structure"]
    assert main(["view", str(results), "--screenshot", str(tmp_path / "r.png"), "--manifest", str(zoo)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "is a results log of tiny-structure" in err
    assert "no complete frame" not in err


def _window_with_option(qtbot, drives, zoo, tmp_path, absent, **option):
    """A viewer started with a post-processing option; the info line names it only once a model runs."""
    settings = QSettings(str(tmp_path / "option.ini"), QSettings.Format.IniFormat)
    win = ViewerWindow(settings, zoo, threads=1, demo_cache=tmp_path / "demo", **option)
    qtbot.addWidget(win)
    win.show()
    win.open_log(drives["ok"])
    wait_shown(qtbot, win, 0)
    assert absent not in win.info.text()  # no model, nothing to speak of
    win.select_model("tiny-structure")
    wait_shown(qtbot, win, 0)
    return win


def test_the_echo_floor_reaches_the_pipeline_and_the_info_line(qtbot, drives, zoo, tmp_path):
    win = _window_with_option(qtbot, drives, zoo, tmp_path, "echo floor", echo_floor=True)
    assert win.worker.session.pipeline.echo_floor and win.worker.session.pipeline.echo_zone.any()
    assert "echo floor" in win.info.text()


def test_the_near_field_bias_reaches_the_pipeline_and_the_info_line(qtbot, drives, zoo, tmp_path):
    win = _window_with_option(qtbot, drives, zoo, tmp_path, "free within 1 m", free_confidence=0.9)
    assert win.worker.session.pipeline.free_confidence == 0.9
    assert "free within 1 m at P ≥ 0.9" in win.info.text()


def test_the_near_field_memory_reaches_the_pipeline_and_the_info_line(qtbot, drives, zoo, tmp_path):
    win = _window_with_option(qtbot, drives, zoo, tmp_path, "near-field memory", memory_decay=0.8)
    assert win.worker.session.pipeline.memory_decay == 0.8
    assert "near-field memory (decay 0.8): " in win.info.text() and " cells recalled" in win.info.text()


def test_view_operating_point_takes_the_models_registered_bias_and_memory(drives, zoo, tmp_path, capsys, monkeypatch):
    import app.viewer
    from app.cli import main
    from deploy.zoo import set_operating_point

    shutil.copytree(Path(zoo).parent, tmp_path / "zoo")
    manifest = tmp_path / "zoo" / Path(zoo).name
    seen = []
    monkeypatch.setattr(app.viewer, "launch", lambda *a, **kw: seen.append(a[-4:]) or 0)
    argv = ["view", str(drives["ok"]), "--manifest", str(manifest), "--operating-point"]
    assert main(argv) == 2 and "give --model NAME too" in capsys.readouterr().err
    assert main([*argv, "--model", "tiny-structure"]) == 2
    assert "has no registered operating point" in capsys.readouterr().err
    set_operating_point("tiny-structure", {"free_confidence": 0.95, "memory_decay": 0.9}, manifest)
    # The window takes each model's own point (next test); the flags stay unset.
    assert main([*argv, "--model", "tiny-structure"]) == 0 and seen == [(None, None, False, True)]
    for flag in ("--memory", "--echo-floor"):
        assert main([*argv, "--model", "tiny-structure", flag]) == 2
        assert "without --free-confidence, --memory and --echo-floor" in capsys.readouterr().err


def test_with_operating_point_each_model_in_the_window_runs_its_own_point(qtbot, drives, zoo, tmp_path):
    from deploy.zoo import set_operating_point

    shutil.copytree(Path(zoo).parent, tmp_path / "zoo")
    manifest = tmp_path / "zoo" / Path(zoo).name
    set_operating_point("tiny-structure", {"free_confidence": 0.95, "memory_decay": 0.9, "echo_floor": True}, manifest)
    win = _window_with_option(qtbot, drives, manifest, tmp_path, "operating point", operating_point=True)
    pipe = win.worker.session.pipeline
    assert (pipe.free_confidence, pipe.memory_decay, pipe.echo_floor) == (0.95, 0.9, True)
    assert "operating point of tiny-structure" in win.info.text() and "P ≥ 0.95" in win.info.text()
    assert "echo floor" in win.info.text()
    win.select_model("tiny-vehicle")  # none registered: the argmax, and the info line says so
    wait_shown(qtbot, win, 0)
    pipe = win.worker.session.pipeline
    assert win.worker.session.model.name == "tiny-vehicle"
    assert (pipe.free_confidence, pipe.memory_decay, pipe.echo_floor) == (None, None, False)
    assert "tiny-vehicle has no registered operating point" in win.info.text() and "P ≥" not in win.info.text()
    assert "echo floor" not in win.info.text()
    win.select_model("tiny-structure")
    wait_shown(qtbot, win, 0)
    assert win.worker.session.pipeline.free_confidence == 0.95
