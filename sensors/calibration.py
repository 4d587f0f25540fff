"""Fisheye camera models (WoodScape radial polynomial, OpenCV Kannala-Brandt) and their calibration files.

Both models are radial: a ray at angle θ to the optical axis lands at image radius ρ(θ) from the principal
point, in the direction of its azimuth; they differ only in ρ(θ). Conversion between them is a least-squares
fit of ρ over the field of view.
"""

from __future__ import annotations

import json
import math
import numbers
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sensors.errors import CalibrationError
from sensors.geometry import matrix_to_quat, quat_to_matrix, vector_norm

DEFAULT_FOV_DEG = 190.0


@dataclass(frozen=True)
class Extrinsic:
    """Camera → vehicle transform: p_vehicle = rotation @ p_camera + translation."""

    rotation: np.ndarray
    translation: np.ndarray

    @property
    def quaternion(self) -> np.ndarray:
        return matrix_to_quat(self.rotation)

    @classmethod
    def from_quaternion(cls, q, t) -> Extrinsic:
        return cls(quat_to_matrix(np.asarray(q, float)), np.asarray(t, float).reshape(3))

    def to_dict(self) -> dict[str, list[float]]:
        return {"quaternion": [float(v) for v in self.quaternion], "translation": [float(v) for v in self.translation]}


class FisheyeCamera(ABC):
    """A radial fisheye camera with its pose on the vehicle. All methods are vectorised over points."""

    model: str

    def __init__(self, name: str, width: int, height: int, cx: float, cy: float, aspect: float,
                 extrinsic: Extrinsic, fov_deg: float = DEFAULT_FOV_DEG):
        self.name = name
        self.width = int(width)
        self.height = int(height)
        self.cx = float(cx)  # principal point in pixels (pixel centres at integers)
        self.cy = float(cy)
        self.aspect = float(aspect)
        self.extrinsic = extrinsic
        self.fov_deg = float(fov_deg)
        self.theta_max = math.radians(fov_deg) / 2
        self._inverse_table: tuple[np.ndarray, np.ndarray] | None = None

    # --- the radial function, per model -------------------------------------------------------------
    @abstractmethod
    def rho(self, theta: np.ndarray) -> np.ndarray:
        """Image radius in pixels for angle θ (radians) to the optical axis."""

    @abstractmethod
    def drho(self, theta: np.ndarray) -> np.ndarray:
        """dρ/dθ."""

    @abstractmethod
    def intrinsic_dict(self) -> dict[str, Any]:
        """The intrinsic block of the calibration file."""

    @abstractmethod
    def scaled(self, factor: float) -> FisheyeCamera:
        """The same camera with its image resampled by `factor` (0.5 = half resolution)."""

    def theta(self, rho: np.ndarray) -> np.ndarray:
        """Inverse of ρ(θ): a table lookup for the start, then Newton steps to full precision."""
        if self._inverse_table is None:
            th = np.linspace(0.0, min(self.theta_max * 1.15, math.pi), 4097)
            r = self.rho(th)
            # Past the last monotonic sample the table would fold back; cut it there.
            bad = np.nonzero(np.diff(r) <= 0)[0]
            end = bad[0] + 1 if bad.size else th.size
            self._inverse_table = (r[:end], th[:end])
        r_tab, th_tab = self._inverse_table
        rho = np.asarray(rho, dtype=float)
        th = np.interp(rho, r_tab, th_tab)
        for _ in range(3):
            th = th - (self.rho(th) - rho) / np.maximum(self.drho(th), 1e-9)
            th = np.clip(th, 0.0, th_tab[-1])
        return th

    # --- camera frame -------------------------------------------------------------------------------
    @property
    def principal_point(self) -> tuple[float, float]:
        return self.cx, self.cy

    def project_camera(self, points_cam: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, 3) camera-frame points -> (uv (N, 2), valid (N,)). Valid: inside the field of view and
        inside the image."""
        p = np.asarray(points_cam, dtype=float).reshape(-1, 3)
        X, Y, Z = p[:, 0], p[:, 1], p[:, 2]
        chi = np.hypot(X, Y)
        theta = np.arctan2(chi, Z)
        r = self.rho(theta)
        with np.errstate(invalid="ignore", divide="ignore"):
            ux = np.where(chi > 0, X / chi, 0.0)
            uy = np.where(chi > 0, Y / chi, 0.0)
        u = r * ux + self.cx
        v = r * uy * self.aspect + self.cy
        uv = np.stack([u, v], axis=1)
        norm = np.linalg.norm(p, axis=1)
        valid = (
            (norm > 1e-9)
            & (theta <= self.theta_max)
            & (u >= -0.5) & (u <= self.width - 0.5)
            & (v >= -0.5) & (v <= self.height - 0.5)
        )
        return uv, valid

    def unproject_camera(self, uv: np.ndarray) -> np.ndarray:
        """(N, 2) pixels -> (N, 3) unit rays in the camera frame."""
        uv = np.asarray(uv, dtype=float).reshape(-1, 2)
        dx = uv[:, 0] - self.cx
        dy = (uv[:, 1] - self.cy) / self.aspect
        r = np.hypot(dx, dy)
        theta = self.theta(r)
        with np.errstate(invalid="ignore", divide="ignore"):
            cx_ = np.where(r > 0, dx / r, 0.0)
            cy_ = np.where(r > 0, dy / r, 0.0)
        s = np.sin(theta)
        return np.stack([s * cx_, s * cy_, np.cos(theta)], axis=1)

    def in_fov(self, uv: np.ndarray) -> np.ndarray:
        """(N, 2) pixels -> (N,) whether the pixel sees through the lens (inside the image circle)."""
        uv = np.asarray(uv, dtype=float).reshape(-1, 2)
        r = np.hypot(uv[:, 0] - self.cx, (uv[:, 1] - self.cy) / self.aspect)
        return r <= float(self.rho(np.array(self.theta_max)))

    # --- vehicle frame ------------------------------------------------------------------------------
    @property
    def origin(self) -> np.ndarray:
        """The camera centre in the vehicle frame."""
        return self.extrinsic.translation.copy()

    def project(self, points_vehicle: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        p = np.asarray(points_vehicle, dtype=float).reshape(-1, 3)
        cam = (p - self.extrinsic.translation) @ self.extrinsic.rotation  # R^T (p - t), row-wise
        return self.project_camera(cam)

    def unproject(self, uv: np.ndarray) -> np.ndarray:
        return self.unproject_camera(uv) @ self.extrinsic.rotation.T

    def pixel_rays(self) -> np.ndarray:
        """(H, W, 3) unit rays in the vehicle frame for every pixel centre."""
        v, u = np.mgrid[0 : self.height, 0 : self.width]
        uv = np.stack([u.ravel(), v.ravel()], 1)
        return self.unproject(uv).reshape(self.height, self.width, 3)

    # --- files --------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "intrinsic": self.intrinsic_dict(), "extrinsic": self.extrinsic.to_dict()}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    def check(self, source: str = "<calibration>") -> None:
        """Raise CalibrationError unless ρ(θ) is increasing over the whole field of view."""
        th = np.linspace(0.0, self.theta_max, 2049)
        d = self.drho(th)
        if not np.all(np.isfinite(d)) or np.any(d <= 0):
            bad = math.degrees(float(th[np.argmax(~np.isfinite(d) | (d <= 0))]))
            raise CalibrationError(
                f"{source}: intrinsic polynomial is not monotonic over the {self.fov_deg:.0f}° field of view "
                f"(dρ/dθ ≤ 0 at θ = {bad:.1f}°); the coefficients cannot be inverted, recalibrate the camera"
            )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {self.width}x{self.height})"


class WoodScapeCamera(FisheyeCamera):
    """WoodScape radial polynomial ρ(θ) = k1·θ + k2·θ² + k3·θ³ + k4·θ⁴ (ρ in pixels)."""

    model = "radial_poly"

    def __init__(self, name: str, k: tuple[float, float, float, float], width: int, height: int,
                 cx_offset: float, cy_offset: float, aspect: float, extrinsic: Extrinsic,
                 fov_deg: float = DEFAULT_FOV_DEG):
        self.k = tuple(float(v) for v in k)
        self.cx_offset = float(cx_offset)
        self.cy_offset = float(cy_offset)
        super().__init__(name, width, height, cx_offset + width / 2 - 0.5, cy_offset + height / 2 - 0.5,
                         aspect, extrinsic, fov_deg)

    def rho(self, theta):
        k1, k2, k3, k4 = self.k
        t = np.asarray(theta, dtype=float)
        return t * (k1 + t * (k2 + t * (k3 + t * k4)))

    def drho(self, theta):
        k1, k2, k3, k4 = self.k
        t = np.asarray(theta, dtype=float)
        return k1 + t * (2 * k2 + t * (3 * k3 + t * 4 * k4))

    def intrinsic_dict(self):
        k1, k2, k3, k4 = self.k
        return {"model": self.model, "poly_order": 4, "k1": k1, "k2": k2, "k3": k3, "k4": k4,
                "cx_offset": self.cx_offset, "cy_offset": self.cy_offset, "aspect_ratio": self.aspect,
                "width": self.width, "height": self.height, "fov_deg": self.fov_deg}

    def scaled(self, factor: float) -> WoodScapeCamera:
        return WoodScapeCamera(self.name, tuple(k * factor for k in self.k), round(self.width * factor),
                               round(self.height * factor), self.cx_offset * factor, self.cy_offset * factor,
                               self.aspect, self.extrinsic, self.fov_deg)

    def to_kannala_brandt(self) -> tuple[KannalaBrandtCamera, float]:
        """Fit the OpenCV model to this one; returns the camera and the largest radial error in pixels."""
        th = np.linspace(0.0, self.theta_max, 512)
        A = np.stack([th, th**3, th**5, th**7, th**9], 1)
        c, *_ = np.linalg.lstsq(A, self.rho(th), rcond=None)
        fx = c[0]
        cam = KannalaBrandtCamera(self.name, fx, fx * self.aspect, self.cx, self.cy, tuple(c[1:] / fx),
                                  self.width, self.height, self.extrinsic, self.fov_deg)
        return cam, float(np.max(np.abs(cam.rho(th) - self.rho(th))))


class KannalaBrandtCamera(FisheyeCamera):
    """OpenCV's fisheye model: θd = θ(1 + k1θ² + k2θ⁴ + k3θ⁶ + k4θ⁸), u = fx·θd·X/χ + cx, v = fy·θd·Y/χ + cy."""

    model = "kannala_brandt"

    def __init__(self, name: str, fx: float, fy: float, cx: float, cy: float,
                 k: tuple[float, float, float, float], width: int, height: int, extrinsic: Extrinsic,
                 fov_deg: float = DEFAULT_FOV_DEG):
        self.fx, self.fy = float(fx), float(fy)
        self.k = tuple(float(v) for v in k)
        super().__init__(name, width, height, cx, cy, fy / fx, extrinsic, fov_deg)

    def rho(self, theta):
        k1, k2, k3, k4 = self.k
        t = np.asarray(theta, dtype=float)
        t2 = t * t
        return self.fx * t * (1 + t2 * (k1 + t2 * (k2 + t2 * (k3 + t2 * k4))))

    def drho(self, theta):
        k1, k2, k3, k4 = self.k
        t = np.asarray(theta, dtype=float)
        t2 = t * t
        return self.fx * (1 + t2 * (3 * k1 + t2 * (5 * k2 + t2 * (7 * k3 + t2 * 9 * k4))))

    def intrinsic_dict(self):
        k1, k2, k3, k4 = self.k
        return {"model": self.model, "fx": self.fx, "fy": self.fy, "cx": self.cx, "cy": self.cy,
                "k1": k1, "k2": k2, "k3": k3, "k4": k4, "width": self.width, "height": self.height,
                "fov_deg": self.fov_deg}

    def scaled(self, factor: float) -> KannalaBrandtCamera:
        return KannalaBrandtCamera(self.name, self.fx * factor, self.fy * factor, (self.cx + 0.5) * factor - 0.5,
                                   (self.cy + 0.5) * factor - 0.5, self.k, round(self.width * factor),
                                   round(self.height * factor), self.extrinsic, self.fov_deg)

    def opencv_matrices(self) -> tuple[np.ndarray, np.ndarray]:
        """(K, D) for cv2.fisheye (valid for points in front of the camera, θ < 90°)."""
        K = np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])
        return K, np.array(self.k, dtype=float).reshape(4, 1)

    def to_woodscape(self) -> tuple[WoodScapeCamera, float]:
        """Fit the WoodScape polynomial to this model; returns the camera and the largest radial error (px)."""
        th = np.linspace(0.0, self.theta_max, 512)
        A = np.stack([th, th**2, th**3, th**4], 1)
        k, *_ = np.linalg.lstsq(A, self.rho(th), rcond=None)
        cam = WoodScapeCamera(self.name, tuple(k), self.width, self.height, self.cx - self.width / 2 + 0.5,
                              self.cy - self.height / 2 + 0.5, self.aspect, self.extrinsic, self.fov_deg)
        return cam, float(np.max(np.abs(cam.rho(th) - self.rho(th))))


# --- loading ------------------------------------------------------------------------------------------

def is_number(value: Any) -> bool:
    """A JSON or TOML number: not a string ("1280" is a quoted number, a typo to point out) nor a bool (true would
    read as 1)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _field(block: dict, key: str, source: str, section: str) -> float:
    if not isinstance(block, dict) or key not in block:
        raise CalibrationError(f"{source}: field '{section}.{key}' is missing")
    value = block[key]
    if not is_number(value):
        raise CalibrationError(f"{source}: field '{section}.{key}' is not a number: {value!r}")
    x = float(value)
    if not math.isfinite(x):
        raise CalibrationError(f"{source}: field '{section}.{key}' is not finite: {value!r}")
    return x


def _vector(block: dict, key: str, n: int, source: str, section: str) -> np.ndarray:
    if not isinstance(block, dict) or key not in block:
        raise CalibrationError(f"{source}: field '{section}.{key}' is missing")
    value = block[key]
    if not isinstance(value, list | tuple | np.ndarray) or len(value) != n or not all(is_number(v) for v in value):
        raise CalibrationError(f"{source}: field '{section}.{key}' must be {n} numbers, got {value!r}")
    v = np.asarray(value, dtype=float)
    if not np.all(np.isfinite(v)):
        raise CalibrationError(f"{source}: field '{section}.{key}' has a non-finite value: {value!r}")
    return v


def camera_from_dict(data: dict[str, Any], source: str = "<calibration>", name: str | None = None) -> FisheyeCamera:
    """Build a camera from a WoodScape-layout mapping, by key name. Raises CalibrationError naming the field."""
    if not isinstance(data, dict):
        raise CalibrationError(f"{source}: a calibration must be a JSON object, got {type(data).__name__}")
    intr = data.get("intrinsic")
    extr = data.get("extrinsic")
    if not isinstance(intr, dict):
        raise CalibrationError(f"{source}: field 'intrinsic' is missing")
    if not isinstance(extr, dict):
        raise CalibrationError(f"{source}: field 'extrinsic' is missing")
    name = name or str(data.get("name", Path(source).stem))

    q = _vector(extr, "quaternion", 4, source, "extrinsic")
    qn = vector_norm(q)
    if abs(qn - 1.0) > 1e-3:
        raise CalibrationError(f"{source}: field 'extrinsic.quaternion' is not a unit quaternion (norm {qn:.6f})")
    t = _vector(extr, "translation", 3, source, "extrinsic")
    extrinsic = Extrinsic.from_quaternion(q / qn, t)

    width = _field(intr, "width", source, "intrinsic")
    height = _field(intr, "height", source, "intrinsic")
    if width <= 0 or height <= 0 or width != int(width) or height != int(height):
        raise CalibrationError(f"{source}: image size {width}x{height} in 'intrinsic.width/height' must be "
                               "positive whole pixels")
    fov = _field(intr, "fov_deg", source, "intrinsic") if "fov_deg" in intr else DEFAULT_FOV_DEG
    if not (0 < fov < 360):
        raise CalibrationError(f"{source}: field 'intrinsic.fov_deg' must be in (0, 360), got {fov}")
    model = intr.get("model", "radial_poly")
    k = tuple(_field(intr, f"k{i}", source, "intrinsic") for i in range(1, 5))
    if model == "radial_poly":
        aspect = _field(intr, "aspect_ratio", source, "intrinsic")
        if aspect <= 0:
            raise CalibrationError(f"{source}: field 'intrinsic.aspect_ratio' must be positive, got {aspect}")
        cam: FisheyeCamera = WoodScapeCamera(
            name, k, int(width), int(height), _field(intr, "cx_offset", source, "intrinsic"),
            _field(intr, "cy_offset", source, "intrinsic"), aspect, extrinsic, fov)
    elif model == "kannala_brandt":
        fx, fy = _field(intr, "fx", source, "intrinsic"), _field(intr, "fy", source, "intrinsic")
        if fx <= 0 or fy <= 0:
            raise CalibrationError(f"{source}: focal lengths 'intrinsic.fx/fy' must be positive, got {fx}, {fy}")
        cam = KannalaBrandtCamera(name, fx, fy, _field(intr, "cx", source, "intrinsic"),
                                  _field(intr, "cy", source, "intrinsic"), k, int(width), int(height),
                                  extrinsic, fov)
    else:
        raise CalibrationError(f"{source}: field 'intrinsic.model' is {model!r}; expected 'radial_poly' "
                               "(WoodScape) or 'kannala_brandt' (OpenCV fisheye)")
    cam.check(source)
    return cam


def load_camera(path: str | Path) -> FisheyeCamera:
    """Read a WoodScape-layout calibration JSON file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except OSError as e:
        raise CalibrationError(f"{path}: cannot read calibration file ({e.strerror})") from None
    except json.JSONDecodeError as e:
        raise CalibrationError(f"{path}: not valid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    return camera_from_dict(data, str(path))
