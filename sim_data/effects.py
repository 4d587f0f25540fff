"""Image-space effects on a camera's linear radiance image: sun glare, water on the lens and rain streaks, mud,
vignetting and rim softness, auto-exposure, sensor noise and the tone curve to 8-bit RGB."""

from __future__ import annotations

import math
import zlib

import cv2
import numpy as np

from sensors.calibration import FisheyeCamera

F32 = np.float32

EXPOSURE_TARGET = 0.16  # mean linear signal the auto-exposure aims for
BASE_GAIN = 0.30  # the exposure gain of a sunny day scene; sensor noise grows with gain above it
MAX_ANALOG_GAIN = 6.0  # the sensor cannot amplify more than this over BASE_GAIN: night stays dark
METER_CLIP = 3.0  # radiance above this counts as this in metering, so the sun disc does not black out a frame
TONE_MAX = 4.0  # linear signal mapped to the tone LUT's last entry


def stable_seed(*parts: object) -> int:
    """A seed that is the same in every process (Python's hash() of a str is not)."""
    return zlib.crc32("/".join(str(p) for p in parts).encode())


class Lens:
    """Per-camera optical constants (image circle, vignetting, rim softness, chromatic aberration maps)."""

    def __init__(self, camera: FisheyeCamera):
        self.camera = camera
        H, W = camera.height, camera.width
        self.shape = (H, W)
        v, u = np.mgrid[0:H, 0:W].astype(F32)
        du, dv = u - F32(camera.cx), (v - F32(camera.cy)) / F32(camera.aspect)
        r = np.hypot(du, dv)
        self.rho_max = float(camera.rho(np.array(camera.theta_max)))
        self.circle = r <= self.rho_max  # the same test as camera.in_fov, on the pixel grid
        self.circle_u8 = self.circle.astype(np.uint8)
        theta = camera.theta(np.minimum(r, self.rho_max).ravel()).reshape(H, W).astype(F32)
        f = theta / F32(camera.theta_max)
        # Natural fall-off of a fisheye is mild; real modules lose about half the light at the rim.
        self.vignette = ((1.0 - 0.5 * f**3) * self.circle)[..., None].astype(F32)
        edge = np.clip((f - 0.78) / 0.22, 0.0, 1.0)
        self.rim = (edge * edge)[..., None].astype(F32)
        # Vignetting and rim softness in one blend: keep * image + soft * blurred image.
        self.keep = (self.vignette * (1.0 - self.rim)).astype(F32)
        self.soft = (self.vignette * self.rim).astype(F32)
        self.circle3 = np.repeat(self.circle_u8[..., None], 3, axis=2)
        self.meter_frac = max(float(self.circle[2::4, 2::4].mean()), 1e-6)
        # Sensor noise is read from a fixed pool at a random offset per frame: far cheaper than fresh normals
        # for every pixel, and no model can learn anything from the pool's shifted repeats. The noise is
        # coarser than a pixel, as after demosaicing, at 0.6 of the noise sigma per channel: the strength the
        # drives so far were rendered with.
        pool = np.random.default_rng(stable_seed(camera.name, "noise"))
        chroma = pool.standard_normal((H + 1, (W + 1) // 2, 3), dtype=F32)
        noise = cv2.resize(chroma, (W, 2 * H), interpolation=cv2.INTER_LINEAR)
        noise *= F32(0.6)
        self.noise_pool = noise.reshape(-1)
        self.scale = W / 1280.0  # effect sizes are designed at native resolution
        self.centre = (camera.cx, camera.cy)
        self.axis = camera.extrinsic.rotation[:, 2].copy()
        self._soiling: dict[tuple[float, int], np.ndarray] = {}
        self._drops: dict[tuple, list] = {}
        grain = np.random.default_rng(stable_seed(camera.name, "grain")).random((H // 6 + 1, W // 6 + 1))
        self.grain = cv2.resize(grain.astype(F32), (W, H), interpolation=cv2.INTER_CUBIC)

    def px(self, native_px: float) -> float:
        """A length given in native-resolution pixels, at this image's resolution."""
        return native_px * self.scale


# --- optics -------------------------------------------------------------------------------------------------

def apply_lens(img: np.ndarray, lens: Lens) -> None:
    """Vignetting and softness towards the rim (a ~1 px blur blended in with the distance from the centre),
    in place."""
    blur = cv2.GaussianBlur(img, (3, 3), 0)
    img *= lens.keep
    blur *= lens.soft
    img += blur


def sun_glare(img: np.ndarray, lens: Lens, sun_cam: np.ndarray, sun_rgb: np.ndarray, strength: float,
              visible: float) -> None:
    """Blooming sun disc, veiling glare and lens-flare ghosts, in place.

    sun_cam: unit vector towards the sun in the camera frame; strength scales everything (glare ~1, a high
    day sun ~0.25); visible: fraction of the sun disc not hidden by objects.
    """
    cam = lens.camera
    theta = math.acos(max(-1.0, min(1.0, float(sun_cam[2]))))
    beyond = theta - cam.theta_max
    if beyond > math.radians(25) or strength <= 0:
        return
    H, W = lens.shape
    colour = np.asarray(sun_rgb, F32)  # glare is light of the sun: it scales with its irradiance
    # Stray light reaches the sensor even from a sun just outside the field of view, fading over ~35°.
    stray = 1.0 if beyond <= 0 else max(0.0, 1.0 - beyond / math.radians(25)) ** 3
    near_axis = 0.5 + 0.5 * math.cos(min(theta, math.pi / 2))
    veil = F32(0.2 * strength * stray * near_axis * max(visible, 0.3))
    img += (veil * colour) * lens.circle[..., None]
    if beyond > 0 or visible <= 0:
        return
    uv, _ = cam.project_camera(sun_cam[None, :] * 1e4)
    su, sv = float(uv[0, 0]), float(uv[0, 1])
    # Bloom and ghosts are smooth, so they are drawn on a quarter-resolution canvas and scaled up.
    q = 4
    h, w = (H + q - 1) // q, (W + q - 1) // q
    yy, xx = np.mgrid[0:h, 0:w].astype(F32)
    xx = xx * q + (q - 1) / 2
    yy = yy * q + (q - 1) / 2
    r2 = (xx - su) ** 2 + (yy - sv) ** 2
    s = lens.scale
    halo_r = 90.0 * s
    layer = np.zeros((h, w, 3), F32)
    halo = 3.0 / (1.0 + r2 / halo_r**2) ** 1.5 + 10.0 * np.exp(-r2 / (2 * (25.0 * s) ** 2))
    layer += (halo * strength * visible)[..., None] * colour
    # Starburst: a few thin spokes through the sun from the aperture blades.
    spokes = np.zeros((h, w), np.uint8)
    for a in np.radians([15, 75, 135]):
        d = 0.45 * lens.rho_max / q
        p0 = (int((su / q) - d * math.cos(a)), int((sv / q) - d * math.sin(a)))
        p1 = (int((su / q) + d * math.cos(a)), int((sv / q) + d * math.sin(a)))
        cv2.line(spokes, p0, p1, 255, 1, cv2.LINE_AA)
    fade = np.exp(-np.sqrt(r2) / (0.12 * lens.rho_max))
    layer += (spokes.astype(F32) * (F32(1.5 / 255) * strength * visible) * fade)[..., None] * colour
    # Ghosts: reflections between lens elements, on the line from the sun through the image centre.
    cx, cy = lens.centre
    ghosts = ((-0.25, 18, (0.5, 1.0, 0.6)), (-0.55, 40, (0.8, 0.5, 1.0)), (-0.9, 70, (0.4, 0.7, 1.0)),
              (0.35, 12, (1.0, 0.8, 0.5)), (0.6, 28, (0.6, 1.0, 0.8)), (-1.3, 110, (1.0, 0.6, 0.4)))
    gl = np.zeros((h, w, 3), F32)
    for k, radius, tint in ghosts:
        gx, gy = cx + k * (su - cx), cy + k * (sv - cy)
        rad = radius * s / q
        hexagon = np.array([[gx / q + rad * math.cos(a), gy / q + rad * math.sin(a)]
                            for a in np.radians(np.arange(0, 360, 60) + 10)])
        cv2.fillConvexPoly(gl, np.round(hexagon * 16).astype(np.int32), tuple(0.15 * t for t in tint),
                           cv2.LINE_AA, shift=4)
    gl = cv2.GaussianBlur(gl, (0, 0), max(1.0, 2.0 * s))
    layer += gl * (colour * F32(strength * visible))
    up = cv2.resize(layer, (w * q, h * q), interpolation=cv2.INTER_LINEAR)[:H, :W]
    img += up * lens.circle[..., None]


def lamp_glows(img: np.ndarray, lens: Lens, uv: np.ndarray, rgb: np.ndarray) -> None:
    """Lamps in view: a saturated core and a soft glow around each (uv (n, 2) pixels, rgb (n, 3) radiance
    of the glow's peak), in place."""
    H, W = lens.shape
    sigma = max(1.0, lens.px(6.0))
    half = int(4 * sigma) + 1
    for (u, v), c in zip(uv, rgb, strict=True):
        x0, x1 = max(int(u) - half, 0), min(int(u) + half + 1, W)
        y0, y1 = max(int(v) - half, 0), min(int(v) + half + 1, H)
        if x1 <= x0 or y1 <= y0:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(F32)
        r2 = (xx - F32(u)) ** 2 + (yy - F32(v)) ** 2
        g = np.exp(r2 * F32(-0.5 / sigma**2)) + F32(4.0) * np.exp(r2 * F32(-2.0 / sigma**2))
        img[y0:y1, x0:x1] += g[..., None] * np.asarray(c, F32)


# --- weather on the lens --------------------------------------------------------------------------------------

def rain_on_lens(img: np.ndarray, lens: Lens, seed: int, t: float, rng: np.random.Generator) -> None:
    """Water drops on the lens (each a small blurred, inverted view of the scene with a dark rim) and rain
    streaks in the air just in front of it, in place. Drops stay put for a few seconds (seeded by `seed`
    and the time window); streaks change every frame (`rng`)."""
    H, W = lens.shape
    s = lens.scale
    mean = np.array(cv2.mean(img, mask=lens.circle_u8)[:3], F32)
    # Water film and spray lower the contrast of the whole image.
    img *= F32(0.82)
    img += F32(0.18) * mean.astype(F32)
    blurred = cv2.GaussianBlur(img, (0, 0), max(1.0, 4.0 * s))
    for y0, y1, x0, x1, mx, my, alpha, shade in _drops(lens, seed, int(t // 4.0)):
        view = cv2.remap(blurred, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
        view *= shade
        view -= img[y0:y1, x0:x1]
        view *= alpha
        img[y0:y1, x0:x1] += view
    # Streaks: short bright slanted lines, out of focus because they are close to the lens.
    canvas = np.zeros((H, W), np.uint8)
    slant = rng.uniform(-0.35, 0.35)
    for _ in range(int(rng.integers(40, 90))):
        x, y = rng.uniform(0, W), rng.uniform(0, H)
        length = rng.uniform(20, 70) * s
        dx, dy = length * math.sin(slant), length * math.cos(slant)
        cv2.line(canvas, (int(x), int(y)), (int(x + dx), int(y + dy)), int(rng.integers(60, 200)), 1, cv2.LINE_AA)
    streaks = cv2.GaussianBlur(canvas.astype(F32) * F32(1 / 255), (0, 0), max(0.7, 1.5 * s))
    img += streaks[..., None] * (F32(0.5) * mean.astype(F32) + F32(0.01)) * lens.circle[..., None]


def _drops(lens: Lens, seed: int, window: int) -> list[tuple]:
    """Drops on the lens during one time window: (y0, y1, x0, x1, sample maps x/y, opacity, shading) each.
    A drop is a tiny fisheye: it shows a minified, upside-down view of what lies beyond it."""
    key = ("drops", seed, window)
    if key in lens._drops:
        return lens._drops[key]
    H, W = lens.shape
    s = lens.scale
    rng = np.random.default_rng([seed, window])
    out = []
    for _ in range(int(rng.integers(14, 30))):
        cx, cy = rng.uniform(0, W), rng.uniform(0, H)
        rad = rng.uniform(10.0, 45.0) * s
        x0, x1 = int(max(cx - rad - 1, 0)), int(min(cx + rad + 2, W))
        y0, y1 = int(max(cy - rad - 1, 0)), int(min(cy + rad + 2, H))
        if x1 - x0 < 2 or y1 - y0 < 2 or not lens.circle[int(min(cy, H - 1)), int(min(cx, W - 1))]:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(F32)
        dx, dy = xx - F32(cx), yy - F32(cy)
        rr = np.sqrt(dx * dx + dy * dy) / F32(rad)
        mag = F32(-2.5)
        alpha = (np.clip((1.0 - rr) * 4.0, 0.0, 1.0) * 0.9)[..., None].astype(F32)
        shade = ((1.0 - np.exp(-((rr - 0.9) / 0.1) ** 2) * 0.25) * 1.1)[..., None].astype(F32)
        out.append((y0, y1, x0, x1, F32(cx) + dx * mag, F32(cy) + dy * mag, alpha, shade))
    lens._drops = {key: out}  # only the current window is kept
    return out


def soiling_mask(lens: Lens, coverage: float, seed: int) -> np.ndarray:
    """(H, W) float32 opacity of mud on the lens, covering `coverage` of the image circle (opacity > 0.5
    there), the same for the same seed: blobs do not move between frames."""
    key = (round(float(coverage), 4), int(seed))
    if key in lens._soiling:
        return lens._soiling[key]
    H, W = lens.shape
    rng = np.random.default_rng(seed)
    circle = lens.circle
    if coverage <= 0:
        mask = np.zeros((H, W), F32)
    else:
        field = np.zeros((H, W), F32)
        for cell, amp in ((W / 3.0, 1.0), (W / 8.0, 0.6), (W / 24.0, 0.3)):
            gh, gw = int(H / cell) + 3, int(W / cell) + 3
            grid = rng.standard_normal((gh, gw)).astype(F32)
            field += amp * cv2.resize(grid, (W, H), interpolation=cv2.INTER_CUBIC)
        # Splashes thrown up from the road land mostly on the lower half of the lens.
        v = np.linspace(-1.0, 1.0, H, dtype=F32)[:, None]
        field += F32(0.6) * v
        thr = float(np.quantile(field[circle], 1.0 - min(coverage, 1.0)))
        soft = np.clip((field - thr) * 6.0 + 0.5, 0.0, 1.0)
        opacity = np.clip(0.8 + 0.35 * cv2.resize(rng.standard_normal((8, 8)).astype(F32), (W, H)), 0.6, 1.0)
        mask = cv2.GaussianBlur(soft * opacity, (0, 0), max(1.0, lens.px(3.0))) * circle
    lens._soiling[key] = mask.astype(F32)
    return lens._soiling[key]


def apply_soiling(img: np.ndarray, lens: Lens, mask: np.ndarray) -> None:
    """Mud over the image, in place: brown-grey, lit only by the diffuse light that reaches the lens."""
    H, W = lens.shape
    small = cv2.resize(img, (max(W // 16, 1), max(H // 16, 1)), interpolation=cv2.INTER_AREA)
    local = cv2.resize(cv2.GaussianBlur(small, (0, 0), 2.0), (W, H), interpolation=cv2.INTER_LINEAR)
    lum = local.mean(axis=2, keepdims=True)
    mud = np.array([0.50, 0.38, 0.25], F32) * (F32(0.55) * lum)
    # Dried mud is uneven: thicker, darker lumps and thinner, lighter film.
    mud = mud * (0.75 + 0.5 * lens.grain)[..., None]
    a = mask[..., None]
    img += a * (mud - img)


# --- the sensor -----------------------------------------------------------------------------------------------

def auto_exposure(img: np.ndarray, lens: Lens) -> float:
    """The gain that brings the mean metered signal to EXPOSURE_TARGET, within the sensor's range. The meter
    reads every 4th pixel of every 4th row: the same mean as the whole frame's, within noise."""
    small = np.minimum(img[2::4, 2::4], F32(METER_CLIP))
    lum = float(small.reshape(-1, 3).mean(axis=0) @ np.array([0.3, 0.59, 0.11])) / lens.meter_frac
    return float(np.clip(EXPOSURE_TARGET / max(lum, 1e-9), 0.05, BASE_GAIN * MAX_ANALOG_GAIN))


def sensor_noise(img: np.ndarray, lens: Lens, gain: float, rng: np.random.Generator) -> None:
    """Shot noise (grows with the signal) and read noise (constant), both amplified by the analog gain
    above BASE_GAIN, in place. `img` is the signal before the exposure `gain`, so the noise is scaled down
    by it: after the gain it has the sensor's strength."""
    H, W = lens.shape
    analog = max(gain / BASE_GAIN, 1.0)
    var = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    np.maximum(var, 0.0, out=var)
    var *= F32(0.0010 * analog / gain)
    var += F32((0.0012 * analog / gain) ** 2)
    sigma = cv2.sqrt(var)
    n = H * W * 3
    off = 3 * int(rng.integers(0, (lens.noise_pool.size - n) // 3))
    noise = lens.noise_pool[off:off + n].reshape(H, W, 3) * sigma[..., None]
    img += noise
    if analog > 3.0:
        # Row noise of the readout becomes visible in the dark.
        img += (rng.standard_normal((H, 1, 1), dtype=F32) * F32(0.0002 * analog / gain))


LUT_SIZE = 65536


def _tone_lut() -> np.ndarray:
    x = np.linspace(0.0, TONE_MAX, LUT_SIZE)
    # Soft shoulder above 0.75 instead of a hard clip, then the sRGB curve.
    knee = 0.75
    y = np.where(x < knee, x, knee + (1 - knee) * (1 - np.exp(-(x - knee) / (1 - knee))))
    srgb = np.where(y <= 0.0031308, 12.92 * y, 1.055 * np.power(np.maximum(y, 0), 1 / 2.4) - 0.055)
    return np.clip(np.round(srgb * 255), 0, 255).astype(np.uint8)


TONE_LUT = _tone_lut()


def to_display(img: np.ndarray, lens: Lens, gain: float = 1.0) -> np.ndarray:
    """Linear signal times the exposure `gain` -> (H, W, 3) uint8 RGB; black outside the image circle.
    Overwrites `img`."""
    img *= F32(gain * (LUT_SIZE - 1) / TONE_MAX)
    np.clip(img, 0.0, LUT_SIZE - 1, out=img)
    out = np.take(TONE_LUT, img.astype(np.uint16))
    out *= lens.circle3
    return out
