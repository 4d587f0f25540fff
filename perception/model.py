"""The BEV fusion network of Das et al. 2024 (camera encoder + BEV lift, ultrasonic encoder + content-aware
dilated convolution, two-stage occupancy decoder) and its configuration, one frozen dataclass read from TOML.

Variants are options of one network, not copies: `modality` (fusion, camera, uss) and, for fusion, `fusion`
(middle: BEV features concatenated, the paper's choice; early: the lifted camera features and the ultrasonic
raster joined before one BEV encoder; late: one decoder per modality, predictions averaged).
"""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from perception.backbones import create_backbone, list_backbones
from perception.bev_config import BevConfig, reject_unknown_fields
from perception.layers import BevEncoder, CameraNeck, ConvBnAct, TwoStageDecoder, lift_to_bev
from perception.preprocess import INPUT_NAMES, OUTPUT_NAMES
from perception.uss_raster import USS_CHANNELS
from sensors.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 (JetPack 6)
    import tomli as tomllib

MODALITIES: tuple[str, ...] = ("fusion", "camera", "uss")
FUSIONS: tuple[str, ...] = ("middle", "early", "late")
CONFIG_DIR = Path(__file__).parent / "configs"


# The [train] table: what the trainer reads, with defaults and types. Floats accept integers.
TRAIN_DEFAULTS: dict[str, Any] = {
    "epochs": 40,  # passes over the training split
    "batch_size": 4,  # frames per step
    "lr": 2e-3,  # AdamW peak learning rate
    "weight_decay": 1e-4,  # AdamW decoupled weight decay
    "seed": 0,  # torch / numpy seed of the run
    "stage1_weight": 0.5,  # weight of the stage-1 occupied/free loss next to the class loss (OccupancyLoss)
    "dice_weight": 0.0,  # weight of the soft-dice term on the obstacle classes (0 = off; OccupancyLoss)
    "class_weight_power": 0.5,  # class weight = frequency ** -power (0.5: inverse square root; class_weights)
    "grad_clip": 5.0,  # max gradient norm (0 = no clipping)
    "camera_dropout": 0.0,  # probability that a camera's valid is zeroed for a training sample (robustness)
    "camera_blackout": 0.0,  # probability that every camera's valid is zeroed for a training sample (fusion only)
    "uss_dropout": 0.0,  # probability that the ultrasonic raster is zeroed for a training sample
    "near_weight": 1.0,  # loss weight of cells within near_m of the car body, against 1 elsewhere (1 = off)
    "near_m": 1.0,  # the near band of near_weight, metres from the body outline (eval's recall_1m band: 1.0)
    "num_workers": 2,  # data loader processes
}
# Closed ranges (inf: no upper bound; a value must still be finite), except lr, which must also be above 0.
_TRAIN_RANGES: dict[str, tuple[float, float]] = {
    "epochs": (1, float("inf")), "batch_size": (1, float("inf")), "lr": (0, float("inf")),
    "weight_decay": (0, float("inf")), "seed": (0, float("inf")), "stage1_weight": (0, float("inf")),
    "dice_weight": (0, float("inf")), "class_weight_power": (0, 2), "grad_clip": (0, float("inf")),
    "camera_dropout": (0, 1), "camera_blackout": (0, 1), "uss_dropout": (0, 1), "num_workers": (0, 256),
    "near_weight": (1, 100), "near_m": (0, 10),
}


class TrainTable(dict):
    """The validated [train] table: a dict that refuses changes (the config is frozen) and still pickles (data
    loader workers, checkpoints), which MappingProxyType does not."""

    def _frozen(self, *args, **kwargs):
        raise TypeError("ModelConfig.train is read-only; use config.replace(train={...}) for a changed copy")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = __ior__ = _frozen

    def __reduce__(self):
        return TrainTable, (dict(self),)


@dataclass(frozen=True)
class ModelConfig:
    """A network variant. Validated on construction (also by dataclasses.replace), so an instance is always
    buildable; `source` (the file) only names the culprit in error messages."""

    name: str
    modality: str = "fusion"
    fusion: str = "middle"  # only meaningful with modality "fusion"
    camera_backbone: str = "resnet18"
    camera_width: float = 0.5
    uss_backbone: str = "resnet18"
    uss_width: float = 0.5
    neck_channels: int = 32  # camera features per height after the neck
    bev_channels: int = 32  # features per BEV cell of each modality before the decoder
    decoder_channels: int = 32
    dilations: tuple[int, ...] = (1, 2, 3)
    bev: BevConfig = field(default_factory=BevConfig)
    train: TrainTable = field(default_factory=lambda: TrainTable(TRAIN_DEFAULTS), hash=False)
    source: str = field(default="<model config>", compare=False, repr=False)

    def __post_init__(self):
        where = f"{self.source}: field"
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"{where} 'name' must be a non-empty string, got {self.name!r}")
        if self.modality not in MODALITIES:
            raise ConfigError(f"{where} 'modality' must be one of {', '.join(MODALITIES)}, got {self.modality!r}")
        if self.fusion not in FUSIONS:
            raise ConfigError(f"{where} 'fusion' must be one of {', '.join(FUSIONS)}, got {self.fusion!r}")
        if self.modality != "fusion" and self.fusion != "middle":
            raise ConfigError(f"{where} 'fusion' = {self.fusion!r} has no meaning with modality "
                              f"{self.modality!r}; remove it or set modality = \"fusion\"")
        for key in ("camera_backbone", "uss_backbone"):
            if getattr(self, key) not in list_backbones():
                raise ConfigError(f"{where} '{key}' = {getattr(self, key)!r} is not a known backbone; "
                                  f"known: {', '.join(list_backbones())}")
        for key in ("camera_width", "uss_width"):
            v = getattr(self, key)
            if not _is_number(v) or not 0 < v <= 8:
                raise ConfigError(f"{where} '{key}' must be a width multiplier in (0, 8], got {v!r}")
            object.__setattr__(self, key, float(v))
        for key in ("neck_channels", "bev_channels", "decoder_channels"):
            v = getattr(self, key)
            if not _is_int(v) or v <= 0:
                raise ConfigError(f"{where} '{key}' must be a positive whole number of channels, got {v!r}")
        d = self.dilations
        if (not isinstance(d, (tuple, list)) or not d or not all(_is_int(x) and x >= 1 for x in d)
                or len(set(d)) != len(d)):
            raise ConfigError(f"{where} 'dilations' must be a non-empty list of distinct whole numbers >= 1, "
                              f"got {d!r}")
        object.__setattr__(self, "dilations", tuple(d))
        if not isinstance(self.bev, BevConfig):
            raise ConfigError(f"{where} 'bev' must be a BevConfig, got {type(self.bev).__name__}")
        object.__setattr__(self, "train", TrainTable(_validate_train(dict(self.train), self.source)))
        if self.train["camera_blackout"] > 0 and self.modality != "fusion":
            raise ConfigError(f"{self.source}: train.camera_blackout is for fusion models (it leaves the ultrasonic "
                              f"branch alone); a {self.modality} model would learn from blank inputs")

    @property
    def uses_camera(self) -> bool:
        return self.modality in ("fusion", "camera")

    @property
    def uses_uss(self) -> bool:
        return self.modality in ("fusion", "uss")

    def replace(self, **changes: Any) -> ModelConfig:
        """A validated copy with some fields changed (e.g. `modality="camera"` for an ablation)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The TOML tables that from_dict reads back (complete: no `extends`)."""
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("bev", "train", "source")}
        d["dilations"] = list(self.dilations)
        d["bev"] = self.bev.to_dict()
        d["train"] = dict(self.train)
        return d

    def to_toml(self) -> str:
        import tomli_w

        return tomli_w.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "<model config>") -> ModelConfig:
        """Build from the parsed TOML; missing keys take the defaults, unknown keys are an error (a typo must not
        silently fall back to a default)."""
        if not isinstance(d, dict):
            raise ConfigError(f"{source}: a model config must be a table, got {type(d).__name__}")
        reject_unknown_fields(cls, d, source)
        if "name" not in d:
            raise ConfigError(f"{source}: field 'name' is missing; every model config names itself")
        kw = dict(d)
        kw["bev"] = BevConfig.from_dict(d.get("bev", {}), source)
        train = d.get("train", {})
        if not isinstance(train, dict):
            raise ConfigError(f"{source}: [train] must be a table, got {type(train).__name__}")
        kw["train"] = {**TRAIN_DEFAULTS, **train}
        if isinstance(kw.get("dilations"), list):
            kw["dilations"] = tuple(kw["dilations"])
        return cls(**kw, source=source)

    @classmethod
    def from_file(cls, path: str | Path) -> ModelConfig:
        """Read a TOML config. `extends = "nf-small"` (a config name or a path relative to this file) starts from
        another config: its keys are overridden here, the [bev] and [train] tables key by key."""
        return cls.from_dict(_read_with_extends(Path(path), ()), str(path))


def load_model_config(name_or_path: str | Path) -> ModelConfig:
    """A config by name ("nf-small" -> perception/configs/nf-small.toml) or by path."""
    return ModelConfig.from_file(_resolve(str(name_or_path), Path.cwd()))


def override_train(config: ModelConfig, assignments: list[str]) -> ModelConfig:
    """The config with [train] fields set from `train.KEY=VALUE` strings (`nearfield train --set`); values are
    read as TOML (2e-3, 0.2, 8), validated like the file's own."""
    train = dict(config.train)
    for text in assignments:
        key, sep, value = text.partition("=")
        key = key.strip()
        if not sep or not key.startswith("train."):
            raise ConfigError(f"--set {text!r}: expected train.KEY=VALUE, e.g. train.lr=5e-4")
        try:
            parsed = tomllib.loads(f"v = {value.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            raise ConfigError(f"--set {text!r}: {value.strip()!r} is not a number") from None
        train[key[len("train."):]] = parsed
    return config.replace(train=TrainTable(_validate_train(train, "--set")))


def list_model_configs() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.toml"))


def _resolve(name: str, base: Path) -> Path:
    if name.endswith(".toml") or "/" in name or "\\" in name:
        path = Path(name) if Path(name).is_absolute() else base / name
        if not path.is_file():
            raise ConfigError(f"model config file {path} does not exist")
        return path
    path = CONFIG_DIR / f"{name}.toml"
    if not path.is_file():
        raise ConfigError(f"unknown model config {name!r}; known: {', '.join(list_model_configs())} "
                          f"(or give a path to a .toml file)")
    return path


def _read_with_extends(path: Path, chain: tuple[Path, ...]) -> dict[str, Any]:
    path = path.resolve()
    if path in chain:
        raise ConfigError(f"{chain[0]}: 'extends' loops back to {path}")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"cannot read model config {path}: {e.strerror}") from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not a TOML model config (not UTF-8 text: byte {e.start}); give a .toml file "
                          "written by hand or by `nearfield train` (a run's config.toml)") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from e
    base_name = data.pop("extends", None)
    if base_name is None:
        return data
    if not isinstance(base_name, str):
        raise ConfigError(f"{path}: field 'extends' must be a config name or path, got {base_name!r}")
    base = _read_with_extends(_resolve(base_name, path.parent), (*chain, path))
    merged = {**base, **data}
    for table in ("bev", "train"):
        if isinstance(base.get(table), dict) and isinstance(data.get(table), dict):
            merged[table] = {**base[table], **data[table]}
    return merged


def _validate_train(train: dict[str, Any], source: str) -> dict[str, Any]:
    unknown = sorted(set(train) - set(TRAIN_DEFAULTS))
    if unknown:
        raise ConfigError(f"{source}: unknown field(s) {', '.join('train.' + k for k in unknown)}; expected "
                          f"some of {', '.join(TRAIN_DEFAULTS)}")
    out = {}
    for key, default in TRAIN_DEFAULTS.items():
        v = train.get(key, default)
        lo, hi = _TRAIN_RANGES[key]
        ok = _is_int(v) if isinstance(default, int) else _is_number(v) and math.isfinite(v)
        if not ok or not lo <= v <= hi or (key == "lr" and v <= 0):
            kind = "a whole number" if isinstance(default, int) else "a finite number"
            where = (f"> {lo:g}" if key == "lr" else f">= {lo:g}") if math.isinf(hi) else f"in [{lo:g}, {hi:g}]"
            raise ConfigError(f"{source}: field 'train.{key}' must be {kind} {where}, got {v!r}")
        out[key] = type(default)(v)
    return out


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# --- the network ------------------------------------------------------------------------------------------------

class CameraEncoder(nn.Module):
    """uint8 camera images -> lifted BEV features (B, neck_channels * Z, R, W): normalisation inside the graph,
    one backbone shared by all cameras, the neck, the lift."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.backbone = create_backbone(config.camera_backbone, config.camera_width)
        strides = self.backbone.strides
        if tuple(strides[-3:]) != (8, 16, 32):
            raise ConfigError(f"{config.source}: camera backbone {config.camera_backbone!r} returns strides "
                              f"{strides}; the neck needs 8, 16, 32 as its last three")
        self.neck = CameraNeck(self.backbone.out_channels[-3:], config.neck_channels)
        # ImageNet statistics on the 0-255 scale, so normalising is one subtract and one multiply.
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255)
        self.register_buffer("inv_std", 1 / (torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255))

    def forward(self, images: Tensor, grid: Tensor, valid: Tensor) -> Tensor:
        B, N, _, H, W = images.shape
        x = (images.reshape(B * N, 3, H, W).float() - self.mean) * self.inv_std
        feats = self.backbone(x)
        return lift_to_bev(self.neck(feats[-3:]), grid, valid)


class FusionNet(nn.Module):
    """forward(images, grid, valid, uss) -> (class_logits (B, NUM_CLASSES, R, W), occupancy_logits (B, 1, R, W)).

    images (B, N, 3, H, W) uint8 RGB at config.bev.image_size; grid (B, N, Z*R, W, 2) and valid (B, N, Z, R, W)
    float32 from perception.tables.camera_tables (a missing camera: valid 0 for that frame); uss
    (B, len(USS_CHANNELS), R, W) float32 from perception.uss_raster. Every variant takes all four; those of a
    modality it does not use are not read. In train mode the camera backbone's BatchNorm sees every image of the
    batch, a missing camera's too; the lift ignores it in both modes.

    ONNX (torch.onnx.export, opset 17, dynamo=False, names INPUT_NAMES / OUTPUT_NAMES): the exporter drops inputs
    the graph never reads, so a camera-only file has no 'uss' input and a USS-only file only 'uss'; a runtime
    feeds the inputs the session lists. The batch axis may be exported dynamic.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        c, bev_ch, dec_ch = config, config.bev_channels, config.decoder_channels
        lifted = c.neck_channels * len(c.bev.heights)
        self.camera = CameraEncoder(c) if c.uses_camera else None
        early = c.modality == "fusion" and c.fusion == "early"
        # Simple-BEV's compressor: 1x1 across the folded heights, then a 3x3 for neighbourhood context.
        self.camera_bev = None if early or not c.uses_camera else nn.Sequential(
            ConvBnAct(lifted, bev_ch, 1), ConvBnAct(bev_ch, bev_ch, 3))
        uss_in = len(USS_CHANNELS) + (lifted if early else 0)
        self.uss = BevEncoder(c.uss_backbone, c.uss_width, uss_in, bev_ch, c.dilations) if c.uses_uss else None
        if c.modality == "fusion" and c.fusion == "late":
            self.decoder = None
            self.camera_decoder = TwoStageDecoder(bev_ch, dec_ch)
            self.uss_decoder = TwoStageDecoder(bev_ch, dec_ch)
        else:
            middle = c.modality == "fusion" and c.fusion == "middle"
            self.decoder = TwoStageDecoder(2 * bev_ch if middle else bev_ch, dec_ch)

    def forward(self, images: Tensor, grid: Tensor, valid: Tensor, uss: Tensor) -> tuple[Tensor, Tensor]:
        c = self.config
        if not (torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()):
            self._check_inputs(images, grid, valid, uss)
        if c.modality == "camera":
            return self.decoder(self.camera_bev(self.camera(images, grid, valid)))
        if c.modality == "uss":
            return self.decoder(self.uss(uss))
        lifted = self.camera(images, grid, valid)
        if c.fusion == "early":
            return self.decoder(self.uss(torch.cat([lifted, uss], dim=1)))
        cam, ultra = self.camera_bev(lifted), self.uss(uss)
        if c.fusion == "middle":
            return self.decoder(torch.cat([cam, ultra], dim=1))
        cls_c, occ_c = self.camera_decoder(cam)
        cls_u, occ_u = self.uss_decoder(ultra)
        return (cls_c + cls_u) * 0.5, (occ_c + occ_u) * 0.5

    def _check_inputs(self, images: Tensor, grid: Tensor, valid: Tensor, uss: Tensor) -> None:
        """Shapes against the config, so a mismatched table or image size fails here with names, not deep inside
        a convolution."""
        c = self.config
        S, Z, (Wi, Hi) = c.bev.size, len(c.bev.heights), c.bev.image_size
        B = None
        expect = []
        if c.uses_camera:
            B, N = images.shape[:2] if images.dim() == 5 else (-1, -1)
            expect += [("images", images, (B, N, 3, Hi, Wi), torch.uint8), ("grid", grid, (B, N, Z * S, S, 2), None),
                       ("valid", valid, (B, N, Z, S, S), None)]
        if c.uses_uss:
            B = uss.shape[0] if B is None and uss.dim() == 4 else B
            expect.append(("uss", uss, (B, len(USS_CHANNELS), S, S), None))
        for name, t, shape, dtype in expect:
            if tuple(t.shape) != shape or (dtype is not None and t.dtype != dtype) or (
                    dtype is None and not t.is_floating_point()):
                want = f"{'uint8' if dtype is torch.uint8 else 'float'} {shape}".replace("-1", "N")
                raise ConfigError(f"model {c.name} ({c.source}): input '{name}' is {t.dtype} {tuple(t.shape)}, "
                                  f"expected {want} for bev.size {S}, {Z} heights, image_size {Wi}x{Hi}; build "
                                  "the tables and rasters with this model's [bev] config")


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def dummy_inputs(config: ModelConfig, batch: int = 1, cameras: int = 4, seed: int = 0) -> tuple[Tensor, ...]:
    """Random inputs of the right shapes and dtypes (export, benchmarks, tests): images, grid in [-1, 1], all
    cameras valid, ultrasonic raster in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    S, Z, (Wi, Hi) = config.bev.size, len(config.bev.heights), config.bev.image_size
    images = torch.randint(0, 256, (batch, cameras, 3, Hi, Wi), generator=g, dtype=torch.uint8)
    grid = torch.rand((batch, cameras, Z * S, S, 2), generator=g) * 2 - 1
    valid = torch.ones((batch, cameras, Z, S, S))
    uss = torch.rand((batch, len(USS_CHANNELS), S, S), generator=g)
    return images, grid, valid, uss


__all__ = ["FUSIONS", "INPUT_NAMES", "MODALITIES", "OUTPUT_NAMES", "TRAIN_DEFAULTS", "FusionNet",
           "ModelConfig", "count_parameters", "dummy_inputs", "list_model_configs", "load_model_config",
           "override_train"]
