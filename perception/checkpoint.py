"""Checkpoints without pickle: weights as safetensors with a sha256, the training state for an exact resume
(optimizer tensors in a second safetensors file, scalars, schedule position and RNG states in JSON) and the
layout of a training run directory."""

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
LAST, BEST = "last", "best"  # STEM.safetensors weights + STEM.json; LAST also STEM.state.safetensors

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}



def _replace_atomically(path: Path, write) -> None:
    """write(tmp_path), then rename: a killed run never leaves a half-written file under the real name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    write(tmp)
    os.replace(tmp, path)


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
            raise ChecksumError(f"{path}: sha256 {actual[:16]}... does not match the recorded {sha256[:16]}...; the "
                                "file is damaged or was replaced: restore it (git checkout / re-download) or "
                                "re-register the model")
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
    """STEM.safetensors (float32 weights) and STEM.json (info + the weights' sha256); with an optimizer also
    STEM.state.safetensors (its tensors, the RNG states) so that load_training_state resumes exactly. Returns
    the weights' sha256."""
    run_dir = Path(run_dir)
    sha = save_weights(model, run_dir / f"{stem}.safetensors")
    record = {**info, "weights_sha256": sha}
    if optimizer is not None:
        tensors, opt_info = _optimizer_state(optimizer)
        rng_tensors, rng_info = _rng_state()
        tensors.update(rng_tensors)
        state_path = run_dir / f"{stem}.state.safetensors"
        _replace_atomically(state_path, lambda tmp: save_file(tensors, str(tmp)))
        record["state"] = {"optimizer": opt_info, "rng": rng_info, "sha256": file_sha256(state_path),
                           "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None}
    text = json.dumps(record, indent=1)
    _replace_atomically(run_dir / f"{stem}.json", lambda tmp: tmp.write_text(text))
    return sha


def read_record(run_dir: str | Path, stem: str) -> dict[str, Any] | None:
    """STEM.json of a run directory, None if the checkpoint does not exist."""
    path = Path(run_dir) / f"{stem}.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: unreadable checkpoint record ({e}); delete the run directory or restore the "
                          "file") from None


def load_training_state(run_dir: str | Path, stem: str, model: nn.Module, optimizer: torch.optim.Optimizer,
                        scaler: Any = None) -> dict[str, Any]:
    """Restore weights, optimizer, grad scaler and RNG states saved by save_checkpoint; returns the info."""
    run_dir = Path(run_dir)
    record = read_record(run_dir, stem)
    if record is None or "state" not in record:
        raise ConfigError(f"{run_dir}: no resumable checkpoint ({stem}.json with training state); start a new run "
                          "without --resume")
    load_weights(model, run_dir / f"{stem}.safetensors", record["weights_sha256"])
    state_path = run_dir / f"{stem}.state.safetensors"
    if not state_path.is_file() or file_sha256(state_path) != record["state"]["sha256"]:
        raise ChecksumError(f"{state_path}: missing or does not match the sha256 in {stem}.json; the run cannot "
                            "resume exactly (start a new run, or fine-tune from its weights)")
    tensors = load_file(str(state_path))
    _restore_optimizer(optimizer, tensors, record["state"]["optimizer"])
    if scaler is not None and record["state"]["scaler"] is not None:
        scaler.load_state_dict(record["state"]["scaler"])
    _restore_rng(tensors, record["state"]["rng"])
    return {k: v for k, v in record.items() if k != "state"}


def run_weights(run_dir: str | Path, checkpoint: str | None = None) -> tuple[Path, str | None, dict[str, Any]]:
    """The weights a run directory stands for: its best checkpoint (highest validation mIoU), else its last; or the
    one named (BEST or LAST). Returns (path, recorded sha256 or None, record)."""
    run_dir = Path(run_dir)
    if checkpoint not in (None, BEST, LAST):
        raise ConfigError(f"checkpoint must be {BEST!r} or {LAST!r}, got {checkpoint!r}")
    for stem in (BEST, LAST) if checkpoint is None else (checkpoint,):
        record = read_record(run_dir, stem)
        if record is not None:
            return run_dir / f"{stem}.safetensors", record.get("weights_sha256"), record
    raise ConfigError(f"{run_dir}: no checkpoint ({BEST}.json or {LAST}.json); is it a `nearfield train --out` "
                      "directory, and did the run finish a step?")
