"""The viewer's main window: cameras, BEV view, ultrasonic strip and plots locked to one timeline, playback controls,
the zoo model selector, exports, persistent layout and settings. All reading and inference runs in app.worker."""

from __future__ import annotations

import html
import logging
from pathlib import Path

from PyQt6.QtCore import QByteArray, QEventLoop, QSettings, Qt, QTimer, pyqtSignal
from PyQt6.QtGui import QAction, QKeySequence
from PyQt6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDockWidget,
    QDoubleSpinBox,
    QFileDialog,
    QGridLayout,
    QLabel,
    QMainWindow,
    QMessageBox,
    QSlider,
    QToolBar,
    QWidget,
)

from app.frames import FrameSource
from app.panels import ImagePanel, InfoLine, LayerControls, TimelinePlots
from app.render import LEVELS_M, Layers, bev_picture, camera_tile, uss_strip
from app.session import FrameView, bev_layer, view_extent
from app.worker import Worker
from deploy.zoo import MANIFEST, ZooModel, read_zoo
from sensors.errors import NearfieldError
from sensors.replay import SPEED_RANGE
from sensors.rig import CAMERA_NAMES

log = logging.getLogger(__name__)

SPEEDS = (0.25, 0.5, 1.0, 2.0, 4.0)
assert SPEEDS[0] == SPEED_RANGE[0] and SPEEDS[-1] == SPEED_RANGE[1]
RECENT = 8  # recent files remembered
NO_MODEL = "(no model)"
BEV_SIZE = 640  # the BEV picture before the window is laid out; then the panel's size (bev_size)
BEV_PIXELS = (320, 1600)  # the BEV picture's side, in pixels, at least and at most
USS_PIXELS = ((360, 2400), (40, 140))  # the ultrasonic strip's width and height, at least and at most
# The bottom docks' and the side docks' share of the window (fit_docks): the BEV in the centre gets the rest.
DOCK_SHARES = {"uss": 0.09, "plots": 0.24, "cameras": 0.36, "layers": 0.15}


def _clamp(v: int, bounds: tuple[int, int]) -> int:
    return max(bounds[0], min(bounds[1], int(v)))


class ViewerWindow(QMainWindow):
    """`errors` lists every problem shown to the user ("open: ...", "model: ..."), so tests read them instead of
    clicking through dialogs; with dialogs=True each also opens a non-modal message box. persist=False: SETTINGS
    are read but never written (layout, layers, recent files), as for a screenshot."""

    view_shown = pyqtSignal(int)  # a frame's panels were drawn

    def __init__(self, settings: QSettings | None = None, manifest: str | Path = MANIFEST, threads: int | None = None,
                 demo_cache: str | Path | None = None, dialogs: bool = True, free_confidence: float | None = None,
                 memory_decay: float | None = None, echo_floor: bool = False, operating_point: bool = False,
                 persist: bool = True):
        super().__init__()
        self.setWindowTitle("nearfield viewer")
        self.settings = settings or QSettings("nearfield", "viewer")
        self.persist = persist
        self.manifest = Path(manifest)
        self.dialogs = dialogs
        self.errors: list[str] = []
        self.source: FrameSource | None = None
        self.view: FrameView | None = None
        self.models: dict[str, ZooModel] = {}
        self.model_name: str | None = None  # the model the worker runs
        self.wanted_model: str | None = None  # the model last chosen (the worker may still be loading it)
        self.current = 0  # the frame last asked for: shown, or on its way (the slider's place)
        self.awaiting: int | None = None  # the frame last asked for while it is on its way
        self.pending_frame: int | None = None
        self.loop_range = (0, 0)
        self._message_box: QMessageBox | None = None

        self.worker = Worker(threads, demo_cache, free_confidence, memory_decay, echo_floor, operating_point)
        self.worker.opened.connect(self._on_opened)
        self.worker.model_changed.connect(self._on_model_changed)
        self.worker.frame_ready.connect(self._on_frame)
        self.worker.failed.connect(self._on_failed)
        self.worker.busy.connect(lambda text: self.statusBar().showMessage(text))
        self.worker.video_progress.connect(lambda i, n: self.statusBar().showMessage(f"writing video: {i}/{n} frames"))
        self.worker.video_done.connect(lambda p: self.statusBar().showMessage(f"video written: {p}", 10_000))
        self.worker.start()

        self.timer = QTimer(self)
        self.timer.timeout.connect(self._tick)
        # A resize redraws the pictures at the panels' new size, once it has settled.
        self._redraw = QTimer(self)
        self._redraw.setSingleShot(True)
        self._redraw.setInterval(60)
        self._redraw.timeout.connect(self._draw)
        self._refit = QTimer(self)
        self._refit.setSingleShot(True)
        self._refit.setInterval(60)
        self._refit.timeout.connect(self.fit_docks)
        self._build_panels()
        self._build_toolbars()
        self._build_menu()
        self._restore_settings()
        self.reload_models()

    # --- layout -------------------------------------------------------------------------------------------------

    def _build_panels(self) -> None:
        self.bev = ImagePanel("bev", (320, 320))
        self.bev.setFocusPolicy(Qt.FocusPolicy.ClickFocus)  # the keys step the view; see _jumped
        self.setCentralWidget(self.bev)
        cams = QWidget()
        grid = QGridLayout(cams)
        grid.setContentsMargins(0, 0, 0, 0)
        grid.setSpacing(2)
        self.cameras = {name: ImagePanel(f"camera_{name}") for name in CAMERA_NAMES}
        for i, panel in enumerate(self.cameras.values()):
            grid.addWidget(panel, i // 2, i % 2)
        self.uss_panel = ImagePanel("uss", (360, 50))
        self.layer_controls = LayerControls(Layers())
        self.layer_controls.changed.connect(lambda _: self._draw())
        self.plots = TimelinePlots()
        self.docks = {}
        for name, title, widget, area in (
                ("cameras", "Cameras", cams, Qt.DockWidgetArea.LeftDockWidgetArea),
                ("layers", "Layers", self.layer_controls, Qt.DockWidgetArea.RightDockWidgetArea),
                ("uss", "Ultrasonic distances", self.uss_panel, Qt.DockWidgetArea.BottomDockWidgetArea),
                ("plots", "Latency and IoU", self.plots, Qt.DockWidgetArea.BottomDockWidgetArea)):
            dock = QDockWidget(title, self)
            dock.setObjectName(f"dock_{name}")
            dock.setWidget(widget)
            self.addDockWidget(area, dock)
            self.docks[name] = dock
        self.splitDockWidget(self.docks["uss"], self.docks["plots"], Qt.Orientation.Vertical)
        self.bev.resized.connect(self._redraw.start)
        self.uss_panel.resized.connect(self._redraw.start)
        self.resize(1600, 1000)
        self.fit_docks()

    def fit_docks(self) -> None:
        """The docks at their share of the window (DOCK_SHARES), the BEV taking the rest: on a small screen the
        plots do not crowd out the BEV, and a window made small and then large again gets its panels back (Qt
        leaves docks at whatever size a shrink squeezed them to). Runs whenever the window is resized; a dock
        dragged to another size keeps it until the window's size changes by more than a tenth."""
        self.layout().activate()  # the docks laid out at the window's new size first, or resizeDocks clamps to the old
        w, h = self.width(), self.height()
        self._fitted = (w, h)
        docks = self.docks
        self.resizeDocks([docks["cameras"], docks["layers"]],
                         [round(w * DOCK_SHARES["cameras"]), max(200, round(w * DOCK_SHARES["layers"]))],
                         Qt.Orientation.Horizontal)
        self.resizeDocks([docks["uss"], docks["plots"]],
                         [max(60, round(h * DOCK_SHARES["uss"])), max(120, round(h * DOCK_SHARES["plots"]))],
                         Qt.Orientation.Vertical)

    def resizeEvent(self, event) -> None:  # noqa: N802 - Qt's name
        super().resizeEvent(event)
        fitted = getattr(self, "_fitted", None)
        if self.isVisible() and fitted is not None and (abs(self.width() - fitted[0]) > fitted[0] / 10
                                                         or abs(self.height() - fitted[1]) > fitted[1] / 10):
            self._refit.start()

    def _build_toolbars(self) -> None:
        top = QToolBar("File")
        top.setObjectName("toolbar_file")
        self.addToolBar(Qt.ToolBarArea.TopToolBarArea, top)
        self.model_box = QComboBox()
        self.model_box.setObjectName("model")
        self.model_box.setMinimumContentsLength(18)
        self.model_box.currentTextChanged.connect(self._model_chosen)
        top.addWidget(QLabel(" model "))
        top.addWidget(self.model_box)
        self.info = InfoLine("info")  # elided to the room it gets, never into the toolbar's overflow menu
        top.addWidget(self.info)

        bar = QToolBar("Playback")
        bar.setObjectName("toolbar_playback")
        self.addToolBar(Qt.ToolBarArea.BottomToolBarArea, bar)
        self.play_action = self._action("Play", "Space", self.toggle_play, bar)
        self._action("◀ Step", "Left", lambda: self.step(-1), bar)
        self._action("Step ▶", "Right", lambda: self.step(1), bar)
        self._action("-10", "Shift+Left", lambda: self.step(-10))
        self._action("+10", "Shift+Right", lambda: self.step(10))
        self._action("First", "Home", lambda: self.go_to(0))
        self._action("Last", "End", lambda: self.go_to(len(self.source) - 1 if self.source else 0))
        self.speed_box = QComboBox()
        self.speed_box.addItems([f"{s:g}x" for s in SPEEDS])
        self.speed_box.setCurrentIndex(SPEEDS.index(1.0))
        self.speed_box.currentIndexChanged.connect(lambda i: self.set_speed(SPEEDS[i]))
        self._action("Slower", "-", lambda: self._speed_step(-1))
        self._action("Faster", ("+", "="), lambda: self._speed_step(1))
        bar.addWidget(self.speed_box)
        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.slider.setObjectName("timeline")
        self.slider.setMinimumWidth(400)
        self.slider.valueChanged.connect(self.go_to)
        bar.addWidget(self.slider)
        self.time_label = QLabel(" 0.00 s ")
        bar.addWidget(self.time_label)
        self.jump_box = QDoubleSpinBox()
        self.jump_box.setPrefix("go to ")
        self.jump_box.setSuffix(" s")
        self.jump_box.setDecimals(2)
        self.jump_box.editingFinished.connect(self._jumped)
        bar.addWidget(self.jump_box)
        self._action("Go to time", "Ctrl+G", lambda: (self.jump_box.setFocus(), self.jump_box.selectAll()))
        self.loop_box = QCheckBox("loop")
        self.loop_box.toggled.connect(lambda _: self._update_info())
        bar.addWidget(self.loop_box)
        self._action("Loop in", "[", self.set_loop_start, bar)
        self._action("Loop out", "]", self.set_loop_end, bar)
        self._action("Toggle loop", "L", self.loop_box.toggle)

    def _build_menu(self) -> None:
        file = self.menuBar().addMenu("&File")
        self._action("&Open log...", QKeySequence.StandardKey.Open, self._open_dialog, file)
        self.recent_menu = file.addMenu("Open &recent")
        self._action("Open &demo drive", "Ctrl+D", lambda: self.open_log(None), file)
        file.addSeparator()
        self._action("Export view as &PNG...", "Ctrl+S", self._png_dialog, file)
        self._action("Export loop range as &MP4...", "Ctrl+E", self._mp4_dialog, file)
        file.addSeparator()
        self._action("&Quit", QKeySequence.StandardKey.Quit, self.close, file)
        view = self.menuBar().addMenu("&View")
        for dock in self.docks.values():
            view.addAction(dock.toggleViewAction())
        self._action("Reload model list", "F5", self.reload_models, view)
        self._action("Keyboard shortcuts", "F1", self.show_shortcuts, self.menuBar().addMenu("&Help"))

    def shortcuts(self) -> list[tuple[str, str]]:
        """(keys, action) of every shortcut, as the Help menu lists them."""
        out = []
        for a in self.actions():
            keys = ", ".join(k.toString(QKeySequence.SequenceFormat.NativeText) for k in a.shortcuts())
            if keys:
                out.append((keys, a.text().replace("&", "").rstrip(".")))
        return out

    def show_shortcuts(self) -> None:
        rows = "".join(f"<tr><td><b>{html.escape(keys)}</b></td><td>&nbsp;&nbsp;{html.escape(text)}</td></tr>"
                       for keys, text in self.shortcuts())
        box = QMessageBox(QMessageBox.Icon.Information, "Keyboard shortcuts", f"<table>{rows}</table>", parent=self)
        box.setTextFormat(Qt.TextFormat.RichText)
        box.setModal(False)
        box.show()

    def _action(self, text: str, shortcut, slot, where=None) -> QAction:
        a = QAction(text, self)
        keys = shortcut if isinstance(shortcut, tuple) else (shortcut,)
        a.setShortcuts([QKeySequence(k) for k in keys])
        a.setShortcutContext(Qt.ShortcutContext.WindowShortcut)
        a.triggered.connect(lambda *_: slot())
        self.addAction(a)
        if where is not None:
            where.addAction(a)
        return a

    # --- opening, models ----------------------------------------------------------------------------------------

    def open_log(self, path: str | Path | None) -> None:
        """Open a drive log in the worker; None: the built-in demo drive."""
        self.pause()
        self.statusBar().showMessage(f"opening {path or 'the demo drive'} ...")
        self.worker.open(path)

    def reload_models(self) -> None:
        try:
            self.models = read_zoo(self.manifest)
        except NearfieldError as e:
            self.models = {}
            self._error("zoo", str(e))
        current = self.model_name
        self.model_box.blockSignals(True)
        self.model_box.clear()
        self.model_box.addItems([NO_MODEL, *self.models])
        self.model_box.setCurrentText(current if current in self.models else NO_MODEL)
        self.model_box.blockSignals(False)

    def select_model(self, name: str | None) -> None:
        """Run NAME (a zoo model) on the frames; None: no model. The current frame is re-run."""
        if name is not None and name not in self.models:
            self._error("model", f"unknown deploy model {name!r}; the zoo ({self.manifest}) has: "
                                 f"{', '.join(self.models) or 'none'}")
            return
        self.model_box.blockSignals(True)
        self.model_box.setCurrentText(name or NO_MODEL)
        self.model_box.blockSignals(False)
        self.wanted_model = name
        self.worker.set_model(self.models[name] if name else None)

    def _model_chosen(self, text: str) -> None:
        if text:
            self.select_model(None if text == NO_MODEL else text)

    # --- timeline -----------------------------------------------------------------------------------------------

    def go_to(self, index: int) -> None:
        if self.source is None:
            self.pending_frame = index
            return
        index = max(0, min(int(index), len(self.source) - 1))
        self.current = index
        self.awaiting = index
        self.worker.request(index)
        self._sync_slider()

    def step(self, delta: int) -> None:
        self.pause()
        self.go_to(self.current + delta)

    def jump_to(self, seconds: float) -> None:
        if self.source is not None:
            self.go_to(self.source.index_at(seconds))

    def _jumped(self) -> None:
        """The time box's Enter (or leaving it): jump, and after Enter hand the keys back to the view, where the
        arrows and space step and play instead of editing the box."""
        self.jump_to(self.jump_box.value())
        if self.jump_box.hasFocus():
            self.bev.setFocus()

    def toggle_play(self) -> None:
        self.pause() if self.timer.isActive() else self.play()

    def play(self) -> None:
        if self.source is None:
            return
        if not self.loop_box.isChecked() and self.current >= len(self.source) - 1:
            self.go_to(0)
        self.set_speed(self.speed)
        self.timer.start()
        self.play_action.setText("Pause")

    def pause(self) -> None:
        self.timer.stop()
        self.play_action.setText("Play")

    @property
    def speed(self) -> float:
        return SPEEDS[self.speed_box.currentIndex()]

    def set_speed(self, speed: float) -> None:
        if speed not in SPEEDS:
            self._error("speed", f"playback speed {speed} is not one of {', '.join(f'{s:g}' for s in SPEEDS)}")
            return
        if speed != self.speed:
            self.speed_box.setCurrentIndex(SPEEDS.index(speed))  # re-enters through currentIndexChanged
            return
        period_ms = (self.source.period_ns if self.source else 100_000_000) / 1e6
        self.timer.setInterval(max(1, round(period_ms / speed)))

    def _speed_step(self, delta: int) -> None:
        self.speed_box.setCurrentIndex(max(0, min(len(SPEEDS) - 1, self.speed_box.currentIndex() + delta)))

    def set_loop_start(self) -> None:
        self.loop_range = (self.current, max(self.current, self.loop_range[1]))
        self._update_info()

    def set_loop_end(self) -> None:
        self.loop_range = (min(self.loop_range[0], self.current), self.current)
        self._update_info()

    def set_loop(self, first: int, last: int, enabled: bool = True) -> None:
        self.loop_range = (min(first, last), max(first, last))
        self.loop_box.setChecked(enabled)
        self._update_info()

    def _tick(self) -> None:
        if self.source is None or self.awaiting is not None:
            return  # the previous frame is still on its way: play slower rather than queue frames up
        nxt = self.current + 1
        first, last = self.loop_range
        if self.loop_box.isChecked() and not first <= nxt <= last:
            nxt = first
        elif nxt >= len(self.source):
            self.pause()
            return
        self.go_to(nxt)

    def _sync_slider(self) -> None:
        self.slider.blockSignals(True)
        self.slider.setValue(self.current)
        self.slider.blockSignals(False)
        if self.source is not None:
            self.time_label.setText(f" {self.source.time_s(self.current):6.2f} s ")

    # --- worker answers -----------------------------------------------------------------------------------------

    def _on_opened(self, source: FrameSource) -> None:
        self.source = source
        self.view = None
        n = len(source)
        self.slider.blockSignals(True)
        self.slider.setRange(0, n - 1)
        self.slider.blockSignals(False)
        self.jump_box.setRange(0.0, source.time_s(n - 1))
        self.loop_range = (0, n - 1)
        self.plots.reset(n)
        self.set_speed(self.speed)
        self.setWindowTitle(f"nearfield viewer - {source.path.name}")
        self._remember(source.path)
        self.statusBar().showMessage(f"{source.path}: {n} frames, {source.time_s(n - 1):.1f} s", 5000)
        if source.damages:
            self._error("damage", f"the log is damaged; showing its {n} readable frames. {source.damages[0]}")
        start, self.pending_frame = self.pending_frame or 0, None
        if start >= n:
            self._error("frame", f"{source.path}: frame {start} is past the end ({n} frames); showing the last")
        self.go_to(start)

    def _on_model_changed(self, name: str | None) -> None:
        self.model_name = name
        self.statusBar().showMessage(f"model: {name or 'none'}", 5000)
        if self.source is not None:
            self.plots.reset(len(self.source))
            self.go_to(self.current)

    def _on_frame(self, view: FrameView) -> None:
        if view.index == self.awaiting:
            self.awaiting = None
        elif self.worker.pending:
            return  # a newer frame is already queued: skip drawing this one
        # An answer to an older request, while the newest is being made, is drawn (feedback while scrubbing) but
        # leaves the timeline on the frame last asked for: stepping goes on from there and the slider never jumps
        # back under the pointer.
        self.view = view
        if view.result is not None:
            self.plots.add(view.index, view.result.latency_ms, view.miou)
        for note in view.notes:
            self.statusBar().showMessage(note, 5000)
        self._draw()
        self.view_shown.emit(view.index)

    def _on_failed(self, what: str, message: str) -> None:
        if what == "frame":
            self.awaiting = None
            self.pause()
        if what == "model":  # the previous model stays selected
            self.wanted_model = self.model_name
            self.model_box.blockSignals(True)
            self.model_box.setCurrentText(self.model_name or NO_MODEL)
            self.model_box.blockSignals(False)
        self._error(what, message)

    def _error(self, what: str, message: str) -> None:
        text = f"{what}: {message}"
        self.errors.append(text)
        log.warning("viewer: %s", text)
        self.statusBar().showMessage(text, 15_000)
        if self.dialogs:
            if self._message_box is None:
                self._message_box = QMessageBox(QMessageBox.Icon.Warning, "nearfield viewer", "", parent=self)
                self._message_box.setModal(False)
            self._message_box.setText(text)
            self._message_box.show()

    # --- drawing --------------------------------------------------------------------------------------------------

    def _draw(self) -> None:
        view, source = self.view, self.source
        if view is None or source is None:
            return
        layers = self.layer_controls.layers()
        failures = view.camera_failures
        for name, panel in self.cameras.items():
            im = view.frame.images.get(name)
            rgb = im.rgb if im is not None else None
            size = (rgb.shape[1], rgb.shape[0]) if rgb is not None else (320, 240)
            panel.set_image(camera_tile(rgb, name, failures.get(name), size))
        pred = (view.result.class_map, view.pred_grid) if view.result is not None else None
        truth = (view.truth, view.truth_grid) if view.truth is not None else None
        recalled = view.result.recalled if view.result is not None else None
        levels_m = view.levels_m or LEVELS_M
        self.bev.set_image(bev_picture(source.rig, self.bev_size(), view_extent(view), layers, truth, pred,
                                       view.frame.uss, view.sectors, bev_layer(recalled, view.pred_grid), levels_m))
        uw, uh = self.uss_panel.pixel_size()
        self.uss_panel.set_image(uss_strip(view.frame.uss, source.rig, _clamp(uw, USS_PIXELS[0]),
                                           _clamp(uh, USS_PIXELS[1]), levels_m))
        self.layer_controls.set_levels(view.levels_m)
        self._update_info()

    def bev_size(self) -> int:
        """The BEV picture's side in pixels: the panel's smaller side at 1:1 (BEV_PIXELS bound it), so that its
        distance labels are drawn at their size on screen; BEV_SIZE until the window is laid out."""
        w, h = self.bev.pixel_size()
        return _clamp(min(w, h), BEV_PIXELS) if self.bev.isVisible() and min(w, h) > 0 else BEV_SIZE

    def _update_info(self) -> None:
        view = self.view
        if view is None or self.source is None:
            self.info.set_text("")
            return
        # 0-based like --frame, the loop range, the plots and the exports
        parts = [f"frame {view.index} (0-{len(self.source) - 1})", f"model {view.model or '-'}"]
        if view.operating_point:
            parts.append(view.operating_point)
        near = view.near_field
        if view.model and near.free_confidence is not None:
            parts.append(f"free within 1 m at P ≥ {near.free_confidence:g}")
        if view.model and near.echo_floor:
            parts.append("echo floor")
        if view.result is not None and view.result.recalled is not None:
            restarted = [d for d in view.result.degraded if d.startswith("near-field memory restarted")]
            parts.append(f"near-field memory (decay {near.memory_decay:g}): {int(view.result.recalled.sum())} cells "
                         f"recalled" + (f", {restarted[0][len('near-field memory '):]}" if restarted else ""))
        if view.miou is not None:
            parts.append(f"mIoU {100 * view.miou:.0f}%")
        if view.sectors_of:
            parts.append(f"sectors: {view.sectors_of}")
        parts.append(f"conditions: {', '.join(view.frame.conditions) or 'none'}")
        if self.loop_box.isChecked():
            parts.append(f"loop {self.loop_range[0]}-{self.loop_range[1]}")
        degraded = f"degraded: {'; '.join(view.frame.degraded)}" if view.frame.degraded else ""
        self.info.set_text("  |  ".join(parts), degraded)  # the degraded sensors are never what is cut

    # --- exports ------------------------------------------------------------------------------------------------

    def export_png(self, path: str | Path) -> bool:
        """The whole window as it is shown now, as a PNG."""
        path = Path(path)
        if path.suffix.lower() != ".png":
            self._error("export", f"{path}: give a .png path")
            return False
        path.parent.mkdir(parents=True, exist_ok=True)
        if not self.grab().save(str(path), "PNG"):
            self._error("export", f"{path}: could not write the PNG (is the folder writable?)")
            return False
        self.statusBar().showMessage(f"saved {path}", 5000)
        return True

    def export_mp4(self, path: str | Path, first: int | None = None, last: int | None = None) -> None:
        """Frames first..last (default: the loop range) as an MP4, drawn and written by the worker."""
        if self.source is None:
            self._error("video", "open a log first")
            return
        a, b = self.loop_range
        self.worker.export_video(path, a if first is None else first, b if last is None else last,
                                 self.layer_controls.layers())

    def _open_dialog(self) -> None:
        start = self.settings.value("last_dir", str(Path.cwd()))
        path, _ = QFileDialog.getOpenFileName(self, "Open drive log", start, "MCAP drive logs (*.mcap);;All files (*)")
        if path:
            self.settings.setValue("last_dir", str(Path(path).parent))
            self.open_log(path)

    def _png_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export view", f"frame_{self.current:05d}.png", "PNG (*.png)")
        if path:
            self.export_png(path)

    def _mp4_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export loop range", "view.mp4", "MP4 video (*.mp4)")
        if path:
            self.export_mp4(path)

    # --- settings -----------------------------------------------------------------------------------------------

    def _remember(self, path: Path) -> None:
        if not self.persist:
            return
        recent = [str(path.resolve())] + [p for p in self.recent_files() if p != str(path.resolve())]
        self.settings.setValue("recent", recent[:RECENT])
        self._fill_recent()

    def recent_files(self) -> list[str]:
        value = self.settings.value("recent", [])
        return [value] if isinstance(value, str) else list(value or [])

    def _fill_recent(self) -> None:
        self.recent_menu.clear()
        for p in self.recent_files():
            action = self.recent_menu.addAction(p)
            action.triggered.connect(lambda _=False, p=p: self.open_log(p))

    def _restore_settings(self) -> None:
        s = self.settings
        geometry, state = s.value("geometry"), s.value("state")
        if isinstance(geometry, QByteArray):
            self.restoreGeometry(geometry)
        if isinstance(state, QByteArray):
            self.restoreState(state)
            self._fitted = (self.width(), self.height())  # the user's own layout, until the window is resized
        else:
            self.fit_docks()
        layers = Layers()
        for key, default in vars(Layers()).items():
            value = s.value(f"layers/{key}", default)
            setattr(layers, key, (str(value).lower() == "true") if isinstance(default, bool) else float(value))
        self.layer_controls.set_layers(layers)
        speed = float(s.value("speed", 1.0))
        if speed in SPEEDS:
            self.speed_box.setCurrentIndex(SPEEDS.index(speed))
        self._fill_recent()

    def save_settings(self) -> None:
        if not self.persist:
            return
        s = self.settings
        s.setValue("geometry", self.saveGeometry())
        s.setValue("state", self.saveState())
        for key, value in vars(self.layer_controls.layers()).items():
            s.setValue(f"layers/{key}", value)
        s.setValue("speed", self.speed)
        s.sync()

    def _fatal_errors(self) -> list[str]:
        return [e for e in self.errors if not e.startswith("damage:")]

    def wait_for_frame(self, index: int, timeout_ms: int = 60_000, since: int | None = None) -> bool:
        """Run the event loop until frame INDEX is drawn with the chosen model; False after timeout_ms or on an
        error (other than a damage warning) after the first `since` errors (default: those already listed)."""
        loop = QEventLoop()
        errors = len(self._fatal_errors()) if since is None else since

        def shown() -> bool:
            v = self.view
            return (v is not None and v.index == index and self.awaiting is None and v.model == self.wanted_model
                    and not self.worker.pending)

        def check(*_):
            if len(self._fatal_errors()) > errors or shown():
                loop.quit()

        self.view_shown.connect(check)
        self.worker.failed.connect(check)
        QTimer.singleShot(timeout_ms, loop.quit)
        QTimer.singleShot(0, check)
        loop.exec()
        self.view_shown.disconnect(check)
        self.worker.failed.disconnect(check)
        return shown() and len(self._fatal_errors()) == errors

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt's name
        self.pause()
        self.save_settings()
        self.worker.stop()
        super().closeEvent(event)
