"""JPEG encoding and decoding of camera images (RGB in memory, JPEG on the wire), and PNG files of the pictures the
tools draw (contact sheets, charts)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from sensors.errors import ConfigError, SensorError


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


def decoded_sizes(width: int, height: int, reduce: int = 1) -> set[tuple[int, int]]:
    """The (width, height) an image of WIDTH x HEIGHT has when decoded at 1/reduce: JPEG's DCT scaling rounds up,
    OpenCV's reduced decoding of other formats rounds down."""
    return {(-(-width // reduce), -(-height // reduce)), (width // reduce, height // reduce)}


# JPEG start-of-frame markers (baseline, progressive, ...), which carry the image size; not DHT, JPG or DAC.
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def encoded_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG's start-of-frame or a PNG's header without decoding it; None if neither is
    found (error messages then give the decoded size instead)."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    i = 2
    while data[:2] == b"\xff\xd8" and i + 9 <= len(data) and data[i] == 0xFF:
        marker = data[i + 1]
        if marker in _SOF:
            return int.from_bytes(data[i + 7:i + 9], "big"), int.from_bytes(data[i + 5:i + 7], "big")
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    return None


def write_png(rgb: np.ndarray, out: str | Path, what: str = "picture") -> Path:
    """Write (H, W, 3) uint8 RGB to OUT (a .png path; its folder is created). A name not ending in .png or a file
    that cannot be written is a ConfigError naming OUT and WHAT, never an OpenCV exception."""
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise ConfigError(f"{out}: the {what} is written as PNG; give a path ending in .png")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        ok = cv2.imwrite(str(out), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    except (OSError, cv2.error) as e:
        raise ConfigError(f"{out}: cannot write the {what} ({e})") from None
    if not ok:
        raise ConfigError(f"{out}: cannot write the {what} (check the folder exists and is writable)")
    return out


_HALO = [(dx, dy) for dx in (-1, 0, 1) for dy in (-1, 0, 1) if dx or dy]


def outlined_text(img: np.ndarray, text: str, org, scale: float = 0.5, color=(255, 255, 255)) -> None:
    """Text with a dark 1-px halo, readable on any background, in place. The halo is the text itself shifted by one
    pixel each way: a thicker stroke would not do, as OpenCV 5's font widens with its thickness and the halo would
    overhang the text's end."""
    x, y = (round(float(v)) for v in org)
    for dx, dy in _HALO:
        cv2.putText(img, text, (x + dx, y + dy), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, color, 1, cv2.LINE_AA)
