"""The viewer's widgets: a panel that shows an RGB picture scaled to fit, the info line, the layer controls of the
BEV view with the class and sector ring legends, and the latency / IoU plots over the drive (pyqtgraph)."""

from __future__ import annotations

import html

import numpy as np
import pyqtgraph as pg
from PyQt6.QtCore import QPointF, QRectF, QSize, Qt, pyqtSignal
from PyQt6.QtGui import QColor, QImage, QPainter, QPalette
from PyQt6.QtWidgets import QCheckBox, QFormLayout, QHBoxLayout, QLabel, QSizePolicy, QSlider, QVBoxLayout, QWidget

from app.render import FAILED_COLOR, Layers, ring_key
from deploy.pipeline import STAGES
from sensors.classes import CLASS_COLORS, CLASS_NAMES


def to_qimage(rgb: np.ndarray) -> QImage:
    """(H, W, 3) uint8 RGB -> a QImage that owns a copy of the pixels."""
    rgb = np.ascontiguousarray(rgb)
    h, w, _ = rgb.shape
    return QImage(rgb.data, w, h, 3 * w, QImage.Format.Format_RGB888).copy()


class ImagePanel(QWidget):
    """Shows one picture, scaled to fit with its aspect ratio kept, centred on a dark background. `resized` tells
    whoever draws the picture that the panel changed size (pictures with text are drawn at the panel's size, so the
    text keeps its size on screen instead of being scaled with the picture)."""

    resized = pyqtSignal()

    def __init__(self, name: str, min_size: tuple[int, int] = (160, 120), parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName(name)
        self.setMinimumSize(*min_size)
        self.image: QImage | None = None
        self.rgb: np.ndarray | None = None

    def set_image(self, rgb: np.ndarray | None) -> None:
        self.rgb = rgb
        self.image = to_qimage(rgb) if rgb is not None else None
        self.update()

    def pixel_size(self) -> tuple[int, int]:
        """(width, height) of the panel in device pixels: the size a picture drawn for it is shown at 1:1."""
        ratio = self.devicePixelRatioF()
        return round(self.width() * ratio), round(self.height() * ratio)

    def resizeEvent(self, event) -> None:  # noqa: N802 - Qt's name
        super().resizeEvent(event)
        self.resized.emit()

    def image_rect(self) -> QRectF:
        """Where the picture is drawn, in widget coordinates."""
        if self.image is None or self.image.width() == 0:
            return QRectF()
        s = min(self.width() / self.image.width(), self.height() / self.image.height())
        w, h = self.image.width() * s, self.image.height() * s
        return QRectF((self.width() - w) / 2, (self.height() - h) / 2, w, h)

    def to_widget(self, x: float, y: float) -> QPointF:
        """Picture pixel coordinates (pixel centres at integers) -> widget coordinates."""
        r = self.image_rect()
        s = r.width() / self.image.width()
        return QPointF(r.x() + (x + 0.5) * s, r.y() + (y + 0.5) * s)

    def paintEvent(self, event) -> None:  # noqa: N802 - Qt's name
        p = QPainter(self)
        p.fillRect(self.rect(), QColor(12, 12, 14))
        if self.image is not None:
            p.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, True)
            p.drawImage(self.image_rect(), self.image)
        p.end()


class InfoLine(QWidget):
    """One line of text that never asks for more width than it gets (a toolbar would move it into its overflow
    menu): as much of the text as fits, elided at its end, and the alert (the degraded sensors) in full at its right
    in red, cut only where it alone is wider than the line. The whole line is the tooltip."""

    SEPARATOR = "  |  "
    MARGIN = 8

    def __init__(self, name: str = "info", parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName(name)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        self._text = self._alert = ""

    def set_text(self, text: str, alert: str = "") -> None:
        self._text, self._alert = text, alert
        self.setToolTip(self.text())
        self.update()

    def text(self) -> str:
        return self.SEPARATOR.join(t for t in (self._text, self._alert) if t)

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt's name
        return QSize(200, self.fontMetrics().height() + 6)

    def minimumSizeHint(self) -> QSize:  # noqa: N802 - Qt's name
        return QSize(60, self.fontMetrics().height() + 6)

    def shown(self) -> tuple[str, str]:
        """(text, alert) as drawn at the present width."""
        fm = self.fontMetrics()
        room = max(0, self.width() - 2 * self.MARGIN)
        alert = fm.elidedText(self._alert, Qt.TextElideMode.ElideRight, room)
        if alert:
            room = max(0, room - fm.horizontalAdvance(alert) - fm.horizontalAdvance(self.SEPARATOR))
        return fm.elidedText(self._text, Qt.TextElideMode.ElideRight, room), alert

    def paintEvent(self, event) -> None:  # noqa: N802 - Qt's name
        text, alert = self.shown()
        p = QPainter(self)
        r = self.rect().adjusted(self.MARGIN, 0, -self.MARGIN, 0)
        p.setPen(self.palette().color(QPalette.ColorRole.WindowText))
        p.drawText(r, Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter, text)
        p.setPen(QColor(*FAILED_COLOR))
        p.drawText(r, Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter, alert)
        p.end()


class LayerControls(QWidget):
    """Toggles and opacity sliders of the BEV layers, and the class legend. `changed` carries a new Layers."""

    changed = pyqtSignal(object)

    def __init__(self, layers: Layers, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("layers")
        form = QFormLayout()
        self.truth = self._check("ground truth", layers.truth)
        self.truth_opacity = self._slider(layers.truth_opacity)
        self.prediction = self._check("prediction", layers.prediction)
        self.prediction_opacity = self._slider(layers.prediction_opacity)
        self.uss = self._check("ultrasonic echoes", layers.uss)
        self.sectors = self._check("sector distances", layers.sectors)
        form.addRow(self.truth, self.truth_opacity)
        form.addRow(self.prediction, self.prediction_opacity)
        form.addRow(self.uss)
        form.addRow(self.sectors)
        legend = QVBoxLayout()
        for i, name in enumerate(CLASS_NAMES):
            r, g, b = CLASS_COLORS[i]
            row = QHBoxLayout()
            swatch = QLabel()
            swatch.setFixedSize(14, 14)
            swatch.setStyleSheet(f"background-color: rgb({r},{g},{b}); border: 1px solid #888;")
            row.addWidget(swatch)
            row.addWidget(QLabel(name))
            row.addStretch(1)
            legend.addLayout(row)
        self.echo_key = QLabel('<span style="color:#00e6ff">&#9644; direct echo (arc)</span><br>'
                               '<span style="color:#ff50ff">&#9644; cross echo (ellipse)</span><br>'
                               '<span style="color:#ff2828">&#10005; failed sensor</span><br>'
                               '<span style="color:#6e6e6e">&#9636; hatched: recalled by the near-field memory</span>')
        self.ring_key = QLabel()
        self.ring_key.setObjectName("ring_key")
        self.ring_key.hide()  # until a frame says which thresholds its sectors have (set_levels)
        outer = QVBoxLayout(self)
        outer.addLayout(form)
        outer.addLayout(legend)
        outer.addWidget(self.ring_key)
        outer.addWidget(self.echo_key)
        outer.addStretch(1)

    def set_levels(self, levels_m: tuple[float, ...]) -> None:
        """The sector ring's legend for the warning thresholds LEVELS_M (clear -> stop); none: hidden."""
        rows = [f'<span style="color:rgb{colour}">&#9632;</span> {name} {html.escape(bound)}'
                for name, colour, bound in ring_key(levels_m)]
        self.ring_key.setText("sector ring, distance to the body:<br>" + "<br>".join(rows))
        self.ring_key.setVisible(bool(rows))

    def _check(self, text: str, on: bool) -> QCheckBox:
        box = QCheckBox(text)
        box.setChecked(on)
        box.toggled.connect(self._emit)
        return box

    def _slider(self, value: float) -> QSlider:
        s = QSlider(Qt.Orientation.Horizontal)
        s.setRange(0, 100)
        s.setValue(round(100 * value))
        s.setToolTip("opacity")
        s.valueChanged.connect(self._emit)
        return s

    def layers(self) -> Layers:
        return Layers(self.truth.isChecked(), self.truth_opacity.value() / 100, self.prediction.isChecked(),
                      self.prediction_opacity.value() / 100, self.uss.isChecked(), self.sectors.isChecked())

    def set_layers(self, layers: Layers) -> None:
        for widget, value in ((self.truth, layers.truth), (self.prediction, layers.prediction),
                              (self.uss, layers.uss), (self.sectors, layers.sectors)):
            widget.setChecked(value)
        self.truth_opacity.setValue(round(100 * layers.truth_opacity))
        self.prediction_opacity.setValue(round(100 * layers.prediction_opacity))

    def _emit(self, *_) -> None:
        self.changed.emit(self.layers())


STAGE_PENS = {"preprocess": (120, 200, 255), "inference": (255, 170, 60), "postprocess": (160, 255, 140)}


class TimelinePlots(pg.GraphicsLayoutWidget):
    """Per-stage latency (ms) and per-frame mIoU (%) against the frame index, with a cursor at the shown frame.
    Values are kept per model run: switching model starts them afresh."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("plots")
        self.setBackground((20, 20, 24))
        self.latency_plot = self.addPlot(row=0, col=0, title="latency per stage (ms)")
        self.latency_plot.addLegend(offset=(-5, 5))  # top right
        self.iou_plot = self.addPlot(row=0, col=1, title="per-frame mIoU vs ground truth (%)")
        self.iou_plot.setXLink(self.latency_plot)
        self.iou_plot.setYRange(0, 100)
        self.curves = {s: self.latency_plot.plot([], [], pen=pg.mkPen(STAGE_PENS[s], width=2), name=s, symbol="o",
                                                 symbolSize=4, symbolPen=None, symbolBrush=STAGE_PENS[s])
                       for s in STAGES}
        self.iou_curve = self.iou_plot.plot([], [], pen=None, symbol="o", symbolSize=5, symbolBrush=(255, 220, 80))
        self.cursors = [pg.InfiniteLine(0, pen=pg.mkPen((200, 200, 200), style=Qt.PenStyle.DashLine))
                        for _ in range(2)]
        self.latency_plot.addItem(self.cursors[0])
        self.iou_plot.addItem(self.cursors[1])
        self.reset(1)

    def reset(self, frames: int) -> None:
        self.latency = {s: np.full(frames, np.nan) for s in STAGES}
        self.iou = np.full(frames, np.nan)
        self.latency_plot.setXRange(0, max(frames - 1, 1))
        self._redraw()

    def add(self, index: int, latency_ms: dict[str, float] | None, miou: float | None) -> None:
        if not 0 <= index < len(self.iou):
            return
        for s in STAGES:
            self.latency[s][index] = (latency_ms or {}).get(s, np.nan)
        self.iou[index] = 100 * miou if miou is not None else np.nan
        for c in self.cursors:
            c.setValue(index)
        self._redraw()

    def _redraw(self) -> None:
        x = np.arange(len(self.iou), dtype=float)
        for s, curve in self.curves.items():
            y = self.latency[s]
            if np.isfinite(y).any():  # gaps (frames not run yet) break the line
                curve.setData(x, y, connect="finite")
            else:
                curve.setData([], [])
        have = np.isfinite(self.iou)
        self.iou_curve.setData(x[have], self.iou[have])
