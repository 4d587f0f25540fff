"""onnxruntime backend: CPU (thread count configurable) or CUDA, with I/O binding into output buffers allocated
once, so a frame costs no allocation of its own."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from sensors.errors import ConfigError, DeployError

log = logging.getLogger(__name__)

# onnxruntime's QDQ propagation moves a QuantizeLinear up across a MaxPool, so the stem's pool (kept float on purpose,
# deploy.quantize) runs in its generic uint8 MaxPool kernel: 19.6 ms against 0.5 ms for the float pool on nf-small,
# most of what INT8 had gained (deploy/docs/int8_cpu.md). The pass does nothing for float models.
DISABLED_OPTIMIZERS = ("QDQPropagationTransformer",)

_NUMPY_OF = {"tensor(float)": np.float32, "tensor(uint8)": np.uint8, "tensor(float16)": np.float16,
             "tensor(int64)": np.int64, "tensor(int8)": np.int8, "tensor(int32)": np.int32}


class OrtBackend:
    """One onnxruntime session over an ONNX file. `threads` sets intra-op threads (None: onnxruntime's default,
    all cores); device 'cpu' or 'cuda' (CUDA falls back to a clear DeployError when this onnxruntime has no
    CUDA provider). profile_prefix: write onnxruntime's per-node profile (JSON) under this prefix; end_profiling()
    closes it and returns its path."""

    name = "ort"

    def __init__(self, onnx_path: str | Path, threads: int | None = None, device: str = "cpu",
                 profile_prefix: str | Path | None = None):
        import onnxruntime as ort

        self.path = Path(onnx_path)
        if threads is not None and threads < 1:
            raise ConfigError(f"--threads must be at least 1, got {threads}")
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads is not None:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        if profile_prefix is not None:
            opts.enable_profiling = True
            opts.profile_file_prefix = str(profile_prefix)
        opts.log_severity_level = 3  # warnings about unused initialisers etc. are not the user's business
        if device == "cpu":
            providers = ["CPUExecutionProvider"]
        elif device.startswith("cuda"):
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise DeployError(f"{self.path}: device {device!r} asked for, but this onnxruntime has no CUDA "
                                  "provider (install onnxruntime-gpu) ; use --device cpu")
            index = int(device.split(":")[1]) if ":" in device else 0
            providers = [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
        else:
            raise ConfigError(f"unknown device {device!r}; use cpu, cuda or cuda:N")
        try:
            self.session = ort.InferenceSession(str(self.path), opts, providers=providers,
                                                disabled_optimizers=list(DISABLED_OPTIMIZERS))
        except Exception as e:  # onnxruntime raises its own exception types for unreadable or invalid models
            raise DeployError(f"{self.path}: onnxruntime cannot load the model ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:300]})") from None
        self.device = device
        self.threads = threads
        self.input_names = tuple(i.name for i in self.session.get_inputs())
        self.output_names = tuple(o.name for o in self.session.get_outputs())
        self._in_types = {i.name: _NUMPY_OF.get(i.type) for i in self.session.get_inputs()}
        self._in_shapes = {i.name: tuple(i.shape) for i in self.session.get_inputs()}
        self._out_meta = [(o.name, tuple(o.shape), _NUMPY_OF.get(o.type, np.float32))
                          for o in self.session.get_outputs()]
        self._binding = self.session.io_binding()
        self._outputs: dict[str, np.ndarray] = {}
        self._batch: int | None = None

    def _bind_outputs(self, batch: int) -> None:
        """Output buffers for this batch size, allocated once and reused while the batch size stays."""
        self._binding.clear_binding_outputs()
        self._outputs = {}
        for name, shape, dtype in self._out_meta:
            dims = tuple(d if isinstance(d, int) else batch for d in shape)
            buf = np.empty(dims, dtype)
            self._outputs[name] = buf
            self._binding.bind_output(name, "cpu", 0, dtype, buf.shape, buf.ctypes.data)
        self._batch = batch

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [n for n in self.input_names if n not in inputs]
        if missing:
            raise DeployError(f"{self.path}: inputs {', '.join(missing)} not given (the model reads "
                              f"{', '.join(self.input_names)})")
        batch = None
        for name in self.input_names:
            arr = inputs[name]
            want = self._in_types[name]
            if want is not None and arr.dtype != want:
                raise DeployError(f"{self.path}: input '{name}' is {arr.dtype}, the model wants {np.dtype(want)}")
            shape = self._in_shapes[name]
            if arr.ndim != len(shape) or any(isinstance(d, int) and d != a for d, a in zip(shape, arr.shape,
                                                                                           strict=True)):
                raise DeployError(f"{self.path}: input '{name}' has shape {arr.shape}, the model wants "
                                  f"{tuple(d if isinstance(d, int) else 'N' for d in shape)}; build the inputs "
                                  "with this model's [bev] configuration")
            batch = arr.shape[0] if batch is None else batch
            self._binding.bind_cpu_input(name, np.ascontiguousarray(arr))
        if batch != self._batch:
            self._bind_outputs(batch or 1)
        self.session.run_with_iobinding(self._binding)
        return self._outputs

    def end_profiling(self) -> Path:
        """Stop profiling (profile_prefix given) and return the profile file's path."""
        return Path(self.session.end_profiling())

    def close(self) -> None:
        self._binding = None
        self.session = None


__all__ = ["OrtBackend"]
