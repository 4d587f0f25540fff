"""Crash-safe live recording: drivers push messages from their threads, one writer thread puts them on disk.

Every completed chunk is flushed and fsync'ed (and a chunk is closed at least every `flush_interval_s`), so a
process killed with SIGKILL leaves a log readable up to its last chunk; SIGINT/SIGTERM finish the file properly
once install_signal_handlers() was called.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import signal
import threading
import time
from pathlib import Path
from typing import Any

from sensors.errors import NearfieldError, SensorError
from sensors.log_writer import DEFAULT_COMPRESSION, LogWriter, LogWrites, check_outgoing
from sensors.rig import Rig

logger = logging.getLogger(__name__)

_STOP = object()


class Recorder(LogWrites):
    """Thread-safe LogWriter: write_camera / write_uss / write_calibration / write_truth / write_condition /
    write_message check and encode the message in the caller's thread and queue it; bad input raises there.

    The queue is bounded (`queue_size` messages): a producer faster than the disk waits rather than growing
    memory without limit.
    """

    def __init__(self, path: str | Path, rig: Rig, metadata: dict[str, str] | None = None,
                 chunk_size: int = 1 << 20, flush_interval_s: float = 1.0, queue_size: int = 256,
                 compression: str = DEFAULT_COMPRESSION):
        self.path = Path(path)
        self.flush_interval_s = float(flush_interval_s)
        self._writer = LogWriter(path, rig, metadata, chunk_size, compression, sync_chunks=True)
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        # Re-entrant: a signal handler may close the recorder while the main thread is inside write_message.
        self._lock = threading.RLock()
        self._closed = False
        self._error: BaseException | None = None
        self._previous_handlers: dict[int, Any] = {}
        self._queue_ops = 0  # queue operations the main thread is inside (see _signals_deferred)
        self._pending_signal: int | None = None
        self._thread = threading.Thread(target=self._run, name=f"recorder {self.path.name}", daemon=True)
        self._thread.start()

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def messages_written(self) -> int:
        return self._writer.messages_written

    def write_message(self, topic: str, proto_message: Any, stamp_ns: int) -> None:
        check_outgoing(topic, proto_message, stamp_ns)
        with self._lock:
            if self._error is not None:
                raise SensorError(f"{self.path}: recording stopped: {self._error}") from self._error
            if self._closed:
                raise SensorError(f"{self.path}: the recorder is closed; cannot write {topic} at {stamp_ns} ns")
            with self._signals_deferred():
                self._queue.put((topic, proto_message, int(stamp_ns)))

    def close(self) -> None:
        """Write what is queued, then the summary and footer. Safe to call twice and from a signal handler."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            with self._signals_deferred():
                self._queue.put(_STOP)
        self._thread.join()
        self.restore_signal_handlers()
        if self._error is not None:
            raise SensorError(f"{self.path}: recording failed: {self._error}") from self._error

    def _run(self) -> None:
        last_flush = time.monotonic()
        try:
            while True:
                try:
                    item = self._queue.get(timeout=self.flush_interval_s)
                except queue.Empty:
                    item = None
                if item is _STOP:
                    break
                if item is not None:
                    self._writer.write_message(*item)
                if time.monotonic() - last_flush >= self.flush_interval_s:
                    # A slow stream must not keep a chunk open (and unsaved) for long.
                    self._writer.flush()
                    last_flush = time.monotonic()
        except (OSError, NearfieldError) as e:
            self._error = e
            logger.error("%s: recording failed: %s", self.path, e)
            self._drain()
        finally:
            try:
                self._writer.close()
            except OSError as e:
                self._error = self._error or e
                logger.error("%s: cannot finish the log: %s", self.path, e)

    def _drain(self) -> None:
        # Unblock producers waiting on a full queue; their messages cannot be written any more.
        lost = 0
        while True:
            try:
                if self._queue.get_nowait() is not _STOP:
                    lost += 1
            except queue.Empty:
                break
        if lost:
            logger.error("%s: %d queued messages were not written", self.path, lost)

    # --- signals ----------------------------------------------------------------------------------------------

    def install_signal_handlers(self, signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)) -> None:
        """Finish the file on SIGINT/SIGTERM, then stop the program: KeyboardInterrupt for SIGINT, SystemExit
        (128 + signal) otherwise. Call from the main thread."""
        if threading.current_thread() is not threading.main_thread():
            raise SensorError("Recorder.install_signal_handlers must be called from the main thread")
        for sig in signals:
            self._previous_handlers[sig] = signal.signal(sig, self._on_signal)

    def restore_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        while self._previous_handlers:
            sig, handler = self._previous_handlers.popitem()
            signal.signal(sig, handler)

    @contextlib.contextmanager
    def _signals_deferred(self):
        """Run a queue operation with the handled signals put off until it is done. Python runs a signal handler
        in the main thread between two bytecodes, and one that ran while put() held the queue's (non-reentrant)
        mutex deadlocked in its own put(_STOP). Blocking the signals in the main thread was not enough: the
        kernel then hands them to another thread (the writer, a driver's), whose C handler trips the flag all the
        same, and the main thread ran the Python handler inside put() (a SIGINT test hung in the full suite). Now
        the handler only notes a signal that lands inside a queue operation, and the operation acts on it when it
        is done (for a put that waits on a full queue: once the writer has made room)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        self._queue_ops += 1
        try:
            yield
        finally:
            self._queue_ops -= 1
        if not self._queue_ops and self._pending_signal is not None:
            signum, self._pending_signal = self._pending_signal, None
            self._finish_on_signal(signum)

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._queue_ops:  # inside a queue operation, whose mutex it may hold: finish once it is done
            self._pending_signal = self._pending_signal or signum
            return
        self._finish_on_signal(signum)

    def _finish_on_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        logger.warning("%s received: finishing %s", name, self.path)
        self.close()
        # The signal may have come while close() itself waited for the writer (close() then returns at once here):
        # wait for the file to be finished before stopping the program.
        if self._thread is not threading.current_thread():
            self._thread.join()
        logger.warning("%s: %d messages written, log complete", self.path, self.messages_written)
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + signum)
