"""Checkpoints without pickle: weights as safetensors with a sha256, the training state for an exact resume
(optimizer tensors in a second safetensors file, scalars, schedule position and RNG states in JSON) and the
layout of a training run directory.

A checkpoint is saved as a whole or not at all: its files get names of their own (STEM-STEP.safetensors,
STEM-STEP.state.safetensors), STEM.json naming them is renamed into place last, and only then are the previous
checkpoint's files removed. A run killed at any moment of a save keeps the old checkpoint or the new one, complete."""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from sensors.errors import ChecksumError, ConfigError
from sensors.files import file_sha256

# A run directory (nearfield train --out RUN_DIR):
CONFIG_FILE = "config.toml"  # the model config the run trained (ModelConfig.to_toml)
METRICS_FILE = "metrics.jsonl"  # one JSON object per epoch
LAST, BEST = "last", "best"  # STEM.json names its STEM-STEP.safetensors weights (LAST also STEM-STEP.state.safetensors)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _replace_atomically(path: Path, write) -> None:
    """write(tmp_path), then rename: a killed run never leaves a half-written file under the real name. The data
    reaches the disk before the rename, so that a crash of the machine cannot leave the name on an empty file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    write(tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _discard(path: Path) -> None:
    path.unlink(missing_ok=True)


def save_weights(model: nn.Module, path: str | Path, dtype: str = "float32", metadata: dict[str, str] | None = None
                 ) -> str:
    """The model's state dict (parameters and buffers) as safetensors, floating tensors cast to `dtype` (float16 or
    bfloat16 halves the file; load_weights casts back). Returns the file's sha256."""
    if dtype not in DTYPES:
        raise ConfigError(f"weights dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    state = {k: (v.detach().to(DTYPES[dtype]) if v.is_floating_point() else v.detach()).cpu().contiguous()
             for k, v in model.state_dict().items()}
    path = Path(path)
    _replace_atomically(path, lambda tmp: save_file(state, str(tmp), metadata={"dtype": dtype, **(metadata or {})}))
    return file_sha256(path)


def load_weights(model: nn.Module, path: str | Path, sha256: str | None = None) -> None:
    """Load a safetensors state dict into `model`, cast to each tensor's dtype in the model. With `sha256` the file
    is checked first (ChecksumError on mismatch). Missing or unexpected keys and wrong shapes are a ConfigError
    naming them: the weights belong to another configuration."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: weights file does not exist")
    if sha256 is not None:
        actual = file_sha256(path)
        if actual != sha256:
            mismatch = f"{path}: sha256 {actual[:16]}... does not match the recorded {sha256[:16]}..."
            if _in_run_dir(path):
                raise ChecksumError(f"{mismatch}; it is a checkpoint of the training run {path.parent} (not a "
                                    "registered model), damaged or changed after it was saved: take the run's other "
                                    f"checkpoint if it has one (register-model --checkpoint {BEST}|{LAST}), or train "
                                    "again into a new --out")
            raise ChecksumError(f"{mismatch}; the file is damaged or was replaced: restore it (git checkout / "
                                "re-download) or re-register the model")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise ConfigError(f"{path}: not a readable safetensors file ({e})") from None
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        parts = [f"{what}: {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}"
                 for what, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if keys]
        raise ConfigError(f"{path}: weights do not fit the model ({'; '.join(parts)}); load them with the config "
                          "they were trained with (the run's config.toml)")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})


def _in_run_dir(path: Path) -> bool:
    """Whether PATH lies in a training run directory (`nearfield train --out`), not beside a model manifest."""
    d = path.parent
    return (d / CONFIG_FILE).is_file() and any((d / f"{stem}.json").is_file() for stem in (LAST, BEST))


# --- training state ---------------------------------------------------------------------------------------------

def _optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for pid, state in sd["state"].items():
        for key, v in state.items():
            if torch.is_tensor(v):
                tensors[f"optimizer.{pid}.{key}"] = v.detach().cpu().contiguous()
            else:
                scalars[f"{pid}.{key}"] = v
    groups = [{k: list(v) if isinstance(v, tuple) else v for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def _restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], info: dict[str, Any]
                       ) -> None:
    state: dict[int, dict[str, Any]] = {}
    for name, v in tensors.items():
        if name.startswith("optimizer."):
            _, pid, key = name.split(".", 2)
            state.setdefault(int(pid), {})[key] = v
    for name, v in info["scalars"].items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = v
    groups = [{k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in info["param_groups"]]
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def _rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(keys.astype(np.int64))
    version, py_state, py_gauss = random.getstate()
    info = {"numpy": [kind, int(pos), int(has_gauss), float(gauss)], "python": [version, list(py_state), py_gauss]}
    return tensors, info


def _restore_rng(tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])
    kind, pos, has_gauss, gauss = info["numpy"]
    np.random.set_state((kind, tensors["rng.numpy"].numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, py_state, py_gauss = info["python"]
    random.setstate((version, tuple(py_state), py_gauss))


@dataclass
class TrainingState:
    """What a resume needs beyond the weights; `info` holds the trainer's own scalars (step, plan, best score)."""

    info: dict[str, Any]
    tensors: dict[str, torch.Tensor]
    extra: dict[str, Any]


def save_checkpoint(run_dir: str | Path, stem: str, model: nn.Module, info: dict[str, Any],
                    optimizer: torch.optim.Optimizer | None = None, scaler: Any = None) -> str:
    """STEM-STEP.safetensors (float32 weights) and STEM.json (info, the weights' sha256 and the names of the
    checkpoint's files); with an optimizer also STEM-STEP.state.safetensors (its tensors, the RNG states) so that
    load_training_state resumes exactly. STEM.json is replaced last and the previous checkpoint's files removed only
    after it: killed at any point, the run keeps a complete checkpoint, the old one or the new. Returns the weights'
    sha256."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        previous = read_record(run_dir, stem)
    except ConfigError:  # an unreadable record names nothing worth keeping; this save replaces it
        previous = None
    committed = set(checkpoint_files(previous, stem).values()) if previous is not None else set()
    name = _fresh_name(stem, info.get("step"), committed)
    files = {"weights": f"{name}.safetensors"}
    sha = save_weights(model, run_dir / files["weights"])
    record = {**info, "weights_sha256": sha, "files": files}
    if optimizer is not None:
        tensors, opt_info = _optimizer_state(optimizer)
        rng_tensors, rng_info = _rng_state()
        tensors.update(rng_tensors)
        files["state"] = f"{name}.state.safetensors"
        state_path = run_dir / files["state"]
        _replace_atomically(state_path, lambda tmp: save_file(tensors, str(tmp)))
        record["state"] = {"optimizer": opt_info, "rng": rng_info, "sha256": file_sha256(state_path),
                           "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None}
    text = json.dumps(record, indent=1)
    _replace_atomically(run_dir / f"{stem}.json", lambda tmp: tmp.write_text(text))  # the commit point
    _remove_unnamed(run_dir, stem, set(files.values()))
    return sha


def remove_leftovers(run_dir: str | Path) -> None:
    """Remove the files of a save killed before or just after its STEM.json was replaced: those no checkpoint
    record names (a resume calls it; every save does it for its own checkpoint)."""
    run_dir = Path(run_dir)
    for stem in (LAST, BEST):
        record = read_record(run_dir, stem)
        if record is not None:
            _remove_unnamed(run_dir, stem, set(checkpoint_files(record, stem).values()))


def _remove_unnamed(run_dir: Path, stem: str, keep: set[str]) -> None:
    for path in _stem_files(run_dir, stem):
        if path.name not in keep:
            _discard(path)


def _fresh_name(stem: str, step: Any, taken: set[str]) -> str:
    """STEM-STEP (STEM-STEP-N when the committed checkpoint already uses it: a second save at one step)."""
    base = f"{stem}-{int(step):06d}" if isinstance(step, int) and step >= 0 else stem + "-0"
    name, n = base, 0
    while any(f.startswith(name + ".") for f in taken):
        n += 1
        name = f"{base}-{n}"
    return name


def _stem_files(run_dir: Path, stem: str) -> list[Path]:
    """Every file of STEM's checkpoints in RUN_DIR but STEM.json: the named ones (older runs: STEM.safetensors and
    STEM.state.safetensors), leftovers of a killed save and its .part files."""
    names = (f"{stem}.safetensors", f"{stem}.state.safetensors", f"{stem}.safetensors.part",
             f"{stem}.state.safetensors.part")
    out = [run_dir / n for n in names if (run_dir / n).is_file()]
    return out + sorted(p for p in run_dir.glob(f"{stem}-*.safetensors*") if p.is_file())


def checkpoint_files(record: dict[str, Any], stem: str) -> dict[str, str]:
    """The file names a STEM.json record stands for: "weights" and, with a training state, "state" (records of
    runs from before the names were recorded: STEM.safetensors and STEM.state.safetensors)."""
    files = dict(record.get("files") or {})
    files.setdefault("weights", f"{stem}.safetensors")
    if "state" in record:
        files.setdefault("state", f"{stem}.state.safetensors")
    return files


def checkpoint_file(run_dir: str | Path, stem: str, which: str = "weights") -> Path:
    """The path of STEM's "weights" or "state" file in a run directory (a ConfigError when there is none)."""
    record = read_record(run_dir, stem)
    files = checkpoint_files(record, stem) if record is not None else {}
    if which not in files:
        raise ConfigError(f"{run_dir}: no {which} file of a {stem} checkpoint ({stem}.json)")
    return Path(run_dir) / files[which]


def read_record(run_dir: str | Path, stem: str) -> dict[str, Any] | None:
    """STEM.json of a run directory, None if the checkpoint does not exist."""
    path = Path(run_dir) / f"{stem}.json"
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: unreadable checkpoint record ({e}); delete the run directory or restore the "
                          "file") from None
    if not isinstance(record, dict):
        raise ConfigError(f"{path}: not a checkpoint record (a JSON object); delete the run directory or restore "
                          "the file")
    return record


def load_training_state(run_dir: str | Path, stem: str, model: nn.Module, optimizer: torch.optim.Optimizer,
                        scaler: Any = None) -> dict[str, Any]:
    """Restore weights, optimizer, grad scaler and RNG states saved by save_checkpoint; returns the info."""
    run_dir = Path(run_dir)
    record = read_record(run_dir, stem)
    if record is None or "state" not in record:
        raise ConfigError(f"{run_dir}: no resumable checkpoint ({stem}.json with training state); start a new run "
                          "without --resume")
    files = checkpoint_files(record, stem)
    load_weights(model, run_dir / files["weights"], record["weights_sha256"])
    state_path = run_dir / files["state"]
    if not state_path.is_file() or file_sha256(state_path) != record["state"]["sha256"]:
        raise ChecksumError(f"{state_path}: missing or does not match the sha256 in {stem}.json; the run cannot "
                            "resume exactly (start a new run, or fine-tune from its weights with --init)")
    tensors = load_file(str(state_path))
    _restore_optimizer(optimizer, tensors, record["state"]["optimizer"])
    if scaler is not None and record["state"]["scaler"] is not None:
        scaler.load_state_dict(record["state"]["scaler"])
    _restore_rng(tensors, record["state"]["rng"])
    return {k: v for k, v in record.items() if k not in ("state", "files")}


def run_weights(run_dir: str | Path, checkpoint: str | None = None) -> tuple[Path, str | None, dict[str, Any]]:
    """The weights a run directory stands for: its best checkpoint (highest validation mIoU), else its last; or the
    one named (BEST or LAST). Returns (path, recorded sha256 or None, record)."""
    run_dir = Path(run_dir)
    if checkpoint not in (None, BEST, LAST):
        raise ConfigError(f"checkpoint must be {BEST!r} or {LAST!r}, got {checkpoint!r}")
    for stem in (BEST, LAST) if checkpoint is None else (checkpoint,):
        record = read_record(run_dir, stem)
        if record is not None:
            return run_dir / checkpoint_files(record, stem)["weights"], record.get("weights_sha256"), record
    if checkpoint is not None:
        other = BEST if checkpoint == LAST else LAST
        if read_record(run_dir, other) is not None:
            raise ConfigError(f"{run_dir}: no {checkpoint} checkpoint ({checkpoint}.json); the run has only its "
                              f"{other} checkpoint ({other}.json): take that one (--checkpoint {other}, or name none)")
    raise ConfigError(f"{run_dir}: no checkpoint ({BEST}.json or {LAST}.json); is it a `nearfield train --out` "
                      "directory, and did the run finish a step?")
