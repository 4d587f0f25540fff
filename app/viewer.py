"""Starting the viewer: `nearfield view [LOG] [--model NAME]` opens the window; with --screenshot it renders one
frame offscreen into a PNG and exits."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from pathlib import Path

from deploy.zoo import MANIFEST
from sensors.errors import ConfigError

log = logging.getLogger(__name__)

SCREENSHOT_SIZE = (1600, 1000)  # a saved window geometry is clamped to the offscreen screen (800 x 600): set it


def launch(log_path: str | Path | None = None, model: str | None = None, frame: int = 0,
           screenshot: str | Path | None = None, manifest: str | Path = MANIFEST, settings: str | Path | None = None,
           threads: int | None = None, free_confidence: float | None = None, memory_decay: float | None = None,
           echo_floor: bool = False, operating_point: bool = False, history: bool = False) -> int:
    """Open the viewer on LOG_PATH (None: the demo drive) with MODEL at FRAME. With SCREENSHOT: draw that frame
    offscreen, save the window as a PNG and return 0, or raise ConfigError with what went wrong; it starts from
    the default layout and layers (or SETTINGS, given) and writes no settings. free_confidence:
    the near-field bias of the model's class map, memory_decay its near-field memory, echo_floor its echo floor
    (deploy.pipeline.Pipeline); operating_point: each model with its registered operating point instead of the two
    (zoo.ZooModel.operating_settings; the argmax for a model without one, said in the info line). history: with
    SCREENSHOT, run frames 0 .. FRAME one after the other, so that the plots hold the drive up to FRAME."""
    from perception.postprocess import check_free_confidence
    from perception.temporal import check_decay

    if free_confidence is not None:
        check_free_confidence(free_confidence)
    if memory_decay is not None:
        check_decay(memory_decay)
    if screenshot is not None:
        if Path(screenshot).suffix.lower() != ".png":
            raise ConfigError(f"--screenshot {screenshot}: give a .png path")
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # no display needed
    elif sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
                                                   or os.environ.get("QT_QPA_PLATFORM")):
        # Qt would abort the process without a display: say what to do instead.
        raise ConfigError("view: no display (DISPLAY is not set); use --screenshot OUT.png, or set "
                          "QT_QPA_PLATFORM=offscreen")
    if frame < 0:
        raise ConfigError(f"--frame {frame}: frames count from 0")
    from PyQt6.QtCore import QSettings
    from PyQt6.QtWidgets import QApplication

    from app.window import ViewerWindow

    app = QApplication.instance() or QApplication(sys.argv[:1])
    fresh = screenshot is not None and not settings
    with tempfile.TemporaryDirectory(prefix="nearfield-view-") if fresh else contextlib.nullcontext() as scratch:
        if fresh:
            # Not the user's saved settings: the picture must not depend on their toggles, nor change them. A file
            # that is never written (persist=False) gives the defaults.
            settings = Path(scratch) / "viewer.ini"
        qsettings = QSettings(str(settings), QSettings.Format.IniFormat) if settings else None
        win = ViewerWindow(qsettings, manifest, threads, dialogs=screenshot is None, free_confidence=free_confidence,
                           memory_decay=memory_decay, echo_floor=echo_floor, operating_point=operating_point,
                           persist=screenshot is None)
        return _show(app, win, log_path, model, frame, screenshot, history)


def _show(app, win, log_path, model, frame, screenshot, history) -> int:
    """Run the window until it is closed, or draw the screenshot into its PNG and close it."""
    if screenshot is not None:
        win.resize(*SCREENSHOT_SIZE)
    win.open_log(log_path)
    if model:
        win.select_model(model)
    win.go_to(0 if history else frame)
    win.show()
    if screenshot is None:
        return app.exec()
    try:
        if history:
            _wait_for(win, 0)
            frames = len(win.source)
            if frame >= frames:
                raise ConfigError(f"view --screenshot: {win.source.path}: frame {frame} is past the end "
                                  f"({frames} frames)")
            for k in range(1, frame + 1):
                win.go_to(k)
                _wait_for(win, k)
        else:
            _wait_for(win, frame)
        if not win.export_png(screenshot):
            raise ConfigError(f"view --screenshot: {win.errors[-1]}")
        for warning in win.errors:
            log.warning("%s", warning)
    finally:
        win.close()
    return 0


def _wait_for(win, frame: int) -> None:
    """Run the viewer until FRAME is drawn with its model, or raise ConfigError with what went wrong."""
    if not win.wait_for_frame(frame, timeout_ms=600_000, since=0):  # any error since the start fails it
        problems = "; ".join(win._fatal_errors()) or f"timed out waiting for frame {frame}"
        raise ConfigError(f"view --screenshot: {problems}")
