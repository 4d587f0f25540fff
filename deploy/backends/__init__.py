"""Inference backends behind one small interface: a backend runs one ONNX deploy model on numpy inputs and
returns numpy outputs by name. onnxruntime (CPU, CUDA) everywhere; TensorRT where `tensorrt` imports."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

import numpy as np

from sensors.errors import ConfigError

BACKENDS = ("ort", "tensorrt")


class Backend(Protocol):
    """What the runtime needs of an inference engine. `input_names` are the inputs the model really reads (an
    exported single-modality model drops the others); `run` takes at least those (extra names are ignored) and
    returns every output by name. Output arrays may be reused by the next call: copy what you keep."""

    name: str
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def close(self) -> None: ...


def create_backend(kind: str, onnx_path: str | Path, threads: int | None = None, device: str = "cpu",
                   **options) -> Backend:
    """A backend of KIND ('ort' or 'tensorrt') for the (already verified) ONNX file."""
    if kind == "ort":
        from deploy.backends.ort import OrtBackend

        return OrtBackend(onnx_path, threads=threads, device=device)
    if kind == "tensorrt":
        from deploy.backends.tensorrt import TensorRTBackend

        return TensorRTBackend(onnx_path, **options)
    raise ConfigError(f"unknown backend {kind!r}; choose one of {', '.join(BACKENDS)}")


__all__ = ["BACKENDS", "Backend", "create_backend"]
