"""JPEG encoding and decoding of camera images (RGB in memory, JPEG on the wire)."""

from __future__ import annotations

import cv2
import numpy as np

from sensors.errors import SensorError


def encode_jpeg(rgb: np.ndarray, quality: int = 90) -> bytes:
    """(H, W, 3) uint8 RGB -> JPEG bytes."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected (H, W, 3) uint8 RGB, got {rgb.shape} {rgb.dtype}")
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise SensorError("JPEG encoding failed")
    return buf.tobytes()


_REDUCED = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
            8: cv2.IMREAD_REDUCED_COLOR_8}


def decode_jpeg(data: bytes, where: str = "image", reduce: int = 1) -> np.ndarray:
    """JPEG bytes -> (H, W, 3) uint8 RGB. Corrupt data raises SensorError naming `where`
    (e.g. "/camera/FV/image at 1234567 ns"). reduce 2, 4 or 8 decodes directly at 1/reduce of the size (the
    JPEG DCT scaling: several times faster than decoding in full and resizing)."""
    if reduce not in _REDUCED:
        raise ValueError(f"reduce must be one of {sorted(_REDUCED)}, got {reduce}")
    if not data:
        raise SensorError(f"{where}: empty JPEG payload")
    arr = np.frombuffer(data, dtype=np.uint8)
    try:
        bgr = cv2.imdecode(arr, _REDUCED[reduce])
    except cv2.error as e:  # pragma: no cover - depends on the OpenCV build
        raise SensorError(f"{where}: JPEG does not decode ({e})") from None
    if bgr is None:
        raise SensorError(f"{where}: JPEG does not decode (corrupt or truncated image data)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
