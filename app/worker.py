"""The viewer's worker thread: opens logs, loads models, reads and infers frames and writes videos off the UI thread,
one job at a time, so the window never freezes. Frame requests are coalesced: while scrubbing, only the newest runs."""

from __future__ import annotations

import logging
import threading
from collections import deque
from pathlib import Path

from PyQt6.QtCore import QThread, pyqtSignal

from app.render import Layers
from app.session import DriveSession, write_video
from deploy.zoo import ZooModel
from sensors.errors import NearfieldError

log = logging.getLogger(__name__)


class Worker(QThread):
    """Jobs are queued by the UI (`open`, `set_model`, `request`, `export_video`) and answered by signals, which Qt
    delivers on the UI thread. Failures arrive as `failed(what, message)`; the worker keeps running."""

    opened = pyqtSignal(object)  # app.frames.FrameSource (read-only use on the UI thread: index and rig)
    model_changed = pyqtSignal(object)  # the model's name, or None
    frame_ready = pyqtSignal(object)  # app.session.FrameView
    failed = pyqtSignal(str, str)  # what was being done ("open", "model", "frame", "video", "demo"), the reason
    busy = pyqtSignal(str)  # a line for the status bar while a long job runs
    video_progress = pyqtSignal(int, int)
    video_done = pyqtSignal(str)

    def __init__(self, threads: int | None = None, demo_cache: str | Path | None = None,
                 free_confidence: float | None = None, memory_decay: float | None = None, echo_floor: bool = False,
                 operating_point: bool = False):
        super().__init__()
        self.session = DriveSession(threads, free_confidence, memory_decay, echo_floor, operating_point)
        self.demo_cache = demo_cache
        self._jobs: deque[tuple] = deque()
        self._cv = threading.Condition()
        self._stopping = False

    # --- queueing (UI thread) -------------------------------------------------------------------------------------

    def _put(self, job: tuple, replace_kind: str | None = None) -> None:
        with self._cv:
            if replace_kind is not None:
                self._jobs = deque(j for j in self._jobs if j[0] != replace_kind)
            self._jobs.append(job)
            self._cv.notify()

    def open(self, path: str | Path | None) -> None:
        """Open a log; None: the simulated demo drive (simulated into the cache on first use)."""
        self._put(("open", path), replace_kind="frame")

    def set_model(self, model: ZooModel | None) -> None:
        self._put(("model", model))

    def request(self, index: int) -> None:
        self._put(("frame", index), replace_kind="frame")

    def export_video(self, path: str | Path, first: int, last: int, layers: Layers) -> None:
        self._put(("video", Path(path), first, last, layers))

    @property
    def pending(self) -> int:
        with self._cv:
            return len(self._jobs)

    def stop(self) -> None:
        with self._cv:
            self._stopping = True
            self._jobs.clear()
            self._cv.notify()
        self.wait()
        self.session.close()

    # --- the thread -----------------------------------------------------------------------------------------------

    def run(self) -> None:
        while True:
            with self._cv:
                while not self._jobs and not self._stopping:
                    self._cv.wait()
                if self._stopping:
                    return
                job = self._jobs.popleft()
            try:
                self._do(job)
            except NearfieldError as e:
                self.failed.emit(job[0], str(e))
            except OSError as e:
                where = f"{e.filename}: " if e.filename else ""
                self.failed.emit(job[0], f"{where}{e.strerror or e}")
            except Exception as e:  # a bug must not take the viewer down with it: log it with its traceback
                log.exception("viewer worker: %s failed", job[0])
                self.failed.emit(job[0], f"unexpected {type(e).__name__}: {e}")

    def _do(self, job: tuple) -> None:
        kind = job[0]
        if kind == "open":
            path = job[1]
            if path is None:
                from app.demo import demo_log

                self.busy.emit("simulating the demo drive (first use only) ...")
                path = demo_log(self.demo_cache)
            self.busy.emit(f"indexing {path} ...")
            source = self.session.open(path)
            self.opened.emit(source)
        elif kind == "model":
            model = job[1]
            if model is not None:
                self.busy.emit(f"loading model {model.name} ...")
            self.session.set_model(model)
            self.model_changed.emit(model.name if model is not None else None)
        elif kind == "frame":
            if self.session.source is not None:
                self.frame_ready.emit(self.session.view(job[1]))
        elif kind == "video":
            _, path, first, last, layers = job
            write_video(self.session, path, first, last, layers, progress=self.video_progress.emit)
            self.video_done.emit(str(path))
