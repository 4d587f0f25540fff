"""Trained models by name: perception/weights/MODELS.toml lists each one's config, weights file, sha256, training
data and validation mIoU; load_trained(name | run_dir) checks the file and returns the network ready to run."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from perception.checkpoint import CONFIG_FILE, ChecksumError, file_sha256, load_weights, run_weights, save_weights
from perception.model import FusionNet, ModelConfig, load_model_config
from sensors.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 (JetPack 6)
    import tomli as tomllib

log = logging.getLogger(__name__)

WEIGHTS_DIR = Path(__file__).parent / "weights"
MANIFEST = WEIGHTS_DIR / "MODELS.toml"
SHIPPED_DTYPE = "float16"  # halves the repository's weight files; loading casts back to float32

_HEADER = """\
# Trained models that `--model NAME` loads (perception.registry). One table per model:
#   config   - the model config: a file beside this one (the run's own config.toml, copied) or a config name
#   weights  - safetensors file beside this one; floating tensors stored as `dtype`, cast to float32 on load
#   sha256   - of the weights file, checked before every load
#   data     - what the model was trained on;  val_miou - its validation mIoU (obstacle classes)
# Add a trained run with `nearfield register-model RUN_DIR --name NAME --data "..."`; do not edit sha256 by hand.
"""


@dataclass(frozen=True)
class TrainedModel:
    """One manifest entry; paths resolved against the manifest's directory."""

    name: str
    config: str
    weights: Path
    sha256: str
    data: str = ""
    val_miou: float | None = None
    dtype: str = SHIPPED_DTYPE

    def model_config(self, base: Path) -> ModelConfig:
        return load_model_config(base / self.config if self.config.endswith(".toml") else self.config)


def read_manifest(manifest: str | Path = MANIFEST) -> dict[str, TrainedModel]:
    """The manifest's entries by name (an absent manifest: none)."""
    manifest = Path(manifest)
    if not manifest.is_file():
        return {}
    try:
        data = tomllib.loads(manifest.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"{manifest}: unreadable model manifest ({type(e).__name__}: {e}); restore it from git or "
                          "give another --manifest") from None
    out = {}
    for name, entry in data.items():
        if not isinstance(entry, dict) or not all(isinstance(entry.get(k), str) for k in ("config", "weights",
                                                                                            "sha256")):
            raise ConfigError(f"{manifest}: entry [{name}] needs string fields config, weights and sha256")
        out[name] = TrainedModel(name, entry["config"], manifest.parent / entry["weights"], entry["sha256"],
                                 str(entry.get("data", "")), entry.get("val_miou"), entry.get("dtype", SHIPPED_DTYPE))
    return out


def list_trained(manifest: str | Path = MANIFEST) -> list[str]:
    return sorted(read_manifest(manifest))


def load_trained(name_or_run_dir: str | Path, device: str = "cpu", manifest: str | Path = MANIFEST,
                 checkpoint: str | None = None) -> tuple[FusionNet, ModelConfig]:
    """(FusionNet in eval mode, float32, on `device`; its ModelConfig) for a registered name or a training run directory
    (its best checkpoint, else its last; or `checkpoint`). The weights' sha256 is checked first: ChecksumError on a
    mismatch; an unknown name is a ConfigError listing the known ones."""
    path = Path(name_or_run_dir)
    if path.is_dir():
        config = load_model_config(_run_config(path))
        weights, sha, _ = run_weights(path, checkpoint)
    else:
        entries = read_manifest(manifest)
        if str(name_or_run_dir) not in entries:
            known = ", ".join(sorted(entries)) or "none registered yet"
            raise ConfigError(f"unknown trained model {str(name_or_run_dir)!r}; known: {known} ({manifest}); or give "
                              "a training run directory (nearfield train --out)")
        entry = entries[str(name_or_run_dir)]
        config, weights, sha = entry.model_config(Path(manifest).parent), entry.weights, entry.sha256
    model = FusionNet(config)
    load_weights(model, weights, sha)
    return model.to(device).eval(), config


def _run_config(run_dir: Path) -> Path:
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise ConfigError(f"{run_dir}: no {CONFIG_FILE}; is it a `nearfield train --out` directory?")
    return path


def register_trained(run_dir: str | Path, name: str, data: str, manifest: str | Path = MANIFEST,
                     dtype: str = SHIPPED_DTYPE, stem: str | None = None, checkpoint: str | None = None,
                     replace: bool = False) -> TrainedModel:
    """Add NAME to the manifest from a training run: its weights saved as STEM.safetensors in `dtype` beside the
    manifest, its config copied as STEM.toml (STEM defaults to NAME), sha256 and validation mIoU recorded;
    `checkpoint` picks the run's best (default, else last) or last. A new revision of a shipped model takes a new STEM,
    so the files of the revision it replaces stay as they are (another entry may still use them).

    A NAME the manifest already has is a ConfigError unless REPLACE: the entry's data text, val mIoU and sha256 would
    be lost (`nearfield zoo rename OLD NEW --with-trained` keeps it under another name). Replacing logs what the old
    entry recorded."""
    run_dir, manifest = Path(run_dir), Path(manifest)
    for what, value in (("model name", name), ("file stem", name if stem is None else stem)):
        if not value or any(c in value for c in "/\\ \"'[]"):
            raise ConfigError(f"{what} {value!r} must be non-empty, without spaces, quotes, brackets or slashes")
    stem = name if stem is None else stem
    entries = read_manifest(manifest)
    old = entries.get(name)
    if old is not None and not replace:
        raise ConfigError(f"{manifest}: trained model {name} is registered already ({old.weights.name}, "
                          f"{_miou_text(old.val_miou)}); give --replace to replace it, or keep it under another name "
                          f"first: `nearfield zoo rename {name} {name}-old --with-trained`")
    used = {e.weights.name for n, e in entries.items() if n != name}
    if f"{stem}.safetensors" in used:
        raise ConfigError(f"{manifest}: {stem}.safetensors belongs to another model; choose another --file")
    model, config = load_trained(run_dir, checkpoint=checkpoint)
    _, _, record = run_weights(run_dir, checkpoint)
    base = manifest.parent
    base.mkdir(parents=True, exist_ok=True)
    (base / f"{stem}.toml").write_text(config.to_toml())
    sha = save_weights(model, base / f"{stem}.safetensors", dtype, metadata={"model": name, "config": config.name})
    entry = TrainedModel(name, f"{stem}.toml", base / f"{stem}.safetensors", sha, data, record.get("val_miou"), dtype)
    if old is not None:
        kept = ("; its files stay beside the manifest" if old.weights.name != entry.weights.name
                else "; its weights file was overwritten")
        log.warning("%s: trained model %s replaced: the old entry (%s, sha256 %s..., %s, data %r) is dropped%s",
                    manifest, name, old.weights.name, old.sha256[:16], _miou_text(old.val_miou), old.data, kept)
    _write_manifest(manifest, {**entries, name: entry})
    return entry


def _miou_text(miou: float | None) -> str:
    return "no val mIoU" if miou is None else f"val mIoU {100 * miou:.1f}%"


def rename_trained(old: str, new: str, manifest: str | Path = MANIFEST) -> TrainedModel:
    """Give trained model OLD the name NEW, keeping its files and sha256 (a previous revision kept beside the new
    one that takes its name)."""
    manifest = Path(manifest)
    entries = read_manifest(manifest)
    if old not in entries:
        raise ConfigError(f"unknown trained model {old!r}; known: {', '.join(sorted(entries)) or 'none'} ({manifest})")
    if new in entries:
        raise ConfigError(f"{manifest}: {new!r} is already a trained model")
    if not new or any(c in new for c in "/\\ \"'[]"):
        raise ConfigError(f"model name {new!r} must be non-empty, without spaces, quotes, brackets or slashes")
    out = {(new if n == old else n): (replace(e, name=new) if n == old else e) for n, e in entries.items()}
    _write_manifest(manifest, out)
    return out[new]


def _write_manifest(manifest: Path, entries: dict[str, TrainedModel]) -> None:
    import tomli_w

    tables: dict[str, Any] = {}
    for name, e in sorted(entries.items()):
        t = {"config": e.config, "weights": e.weights.name, "sha256": e.sha256, "dtype": e.dtype, "data": e.data}
        if e.val_miou is not None:
            t["val_miou"] = round(float(e.val_miou), 4)
        tables[name] = t
    tmp = manifest.with_suffix(".toml.tmp")
    tmp.write_text(_HEADER + ("\n" + tomli_w.dumps(tables) if tables else ""))
    tmp.replace(manifest)  # a crash mid-write never leaves half a manifest


def verify_manifest(manifest: str | Path = MANIFEST) -> dict[str, bool]:
    """Per registered model: does its weights file exist and match its sha256 (no loading)."""
    entries = read_manifest(manifest)
    return {name: e.weights.is_file() and file_sha256(e.weights) == e.sha256 for name, e in entries.items()}


__all__ = ["MANIFEST", "ChecksumError", "TrainedModel", "list_trained", "load_trained", "read_manifest",
           "register_trained", "rename_trained", "verify_manifest"]
