"""TensorRT 10 backend: builds an engine from the deploy ONNX file (fp32, fp16, or int8 from a Q/DQ model or a
calibration cache), caches it per ONNX file, TensorRT version, GPU and precision, and runs it on a CUDA stream with
device buffers allocated once. Every tensorrt/CUDA import is inside a function: this module imports without them."""

from __future__ import annotations

import hashlib
import logging
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sensors.errors import ConfigError, DeployError
from sensors.files import file_sha256

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "int8")
ENGINE_DIR = Path("~/.cache/nearfield/engines")  # NEARFIELD_ENGINE_CACHE overrides it
_INSTALL = ("install TensorRT 10 (x86-64: `pip install tensorrt-cu12`; Jetson: JetPack 6 ships it) on a machine with "
            "an NVIDIA GPU, or run with --backend ort")


def require_tensorrt():
    """The tensorrt module (10.x), or a DeployError that says what to install."""
    try:
        import tensorrt as trt
    except ImportError as e:
        raise DeployError(f"the TensorRT backend needs the `tensorrt` Python package, which is not importable here "
                          f"({e}); {_INSTALL}") from None
    major = int(str(trt.__version__).split(".")[0])
    if major < 10:
        raise DeployError(f"tensorrt {trt.__version__} found; the backend is written for TensorRT 10 (named-tensor "
                          f"API, execute_async_v3); {_INSTALL}")
    return trt


# --- engine cache -------------------------------------------------------------------------------------------------

def engine_cache_dir() -> Path:
    return Path(os.environ.get("NEARFIELD_ENGINE_CACHE") or ENGINE_DIR).expanduser()


def engine_cache_key(onnx_sha256: str, tensorrt_version: str, gpu_name: str, precision: str,
                     calibration_sha256: str = "") -> str:
    """An engine is only valid for the ONNX file, TensorRT version and GPU it was built with (and the precision and
    calibration cache): a hash of all of them names it."""
    if precision not in PRECISIONS:
        raise ConfigError(f"TensorRT precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    text = "\n".join(("nearfield-engine-v1", onnx_sha256, tensorrt_version, gpu_name.strip(), precision,
                      calibration_sha256))
    return hashlib.sha256(text.encode()).hexdigest()


def engine_path(onnx_path: str | Path, key: str, precision: str, cache_dir: Path | None = None) -> Path:
    return (cache_dir or engine_cache_dir()) / f"{Path(onnx_path).stem}-{precision}-{key[:20]}.engine"


# --- calibration cache --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CalibrationCache:
    """A TensorRT INT8 calibration cache: a header line ('TRT-<version>-EntropyCalibration2') and one line per tensor,
    'name: <8 hex digits>', the big-endian bits of its float32 scale."""

    path: Path
    header: str
    scales: dict[str, float]
    data: bytes


def read_calibration_cache(path: str | Path) -> CalibrationCache:
    """Read and validate a calibration cache; DeployError naming the file and line for anything malformed."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DeployError(f"{path}: cannot read the calibration cache ({e.strerror or e})") from None
    try:
        lines = data.decode("ascii").splitlines()
    except UnicodeDecodeError:
        raise DeployError(f"{path}: not a TensorRT calibration cache (not ASCII text)") from None
    if not lines or not lines[0].startswith("TRT-") or "Calibration" not in lines[0]:
        raise DeployError(f"{path}: line 1 should be a header like 'TRT-100100-EntropyCalibration2', found "
                          f"{(lines[0] if lines else '')[:60]!r}; regenerate the cache with the calibrator")
    scales: dict[str, float] = {}
    for n, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        name, sep, value = line.rpartition(":")
        value = value.strip()
        if not sep or not name or len(value) != 8:
            raise DeployError(f"{path}: line {n} {line[:60]!r} is not 'tensor: <8 hex digits>'")
        try:
            scales[name] = struct.unpack(">f", bytes.fromhex(value))[0]
        except ValueError:
            raise DeployError(f"{path}: line {n}: {value!r} is not 8 hex digits") from None
    if not scales:
        raise DeployError(f"{path}: the calibration cache holds no tensor scales")
    return CalibrationCache(path, lines[0], scales, data)


def _cache_calibrator(trt, cache: CalibrationCache):
    """An IInt8EntropyCalibrator2 that only replays CACHE: it has no batches, so TensorRT must find every scale in
    the cache (a cache from another model fails the build rather than calibrating on nothing)."""

    class CacheCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            trt.IInt8EntropyCalibrator2.__init__(self)

        def get_batch_size(self):
            return 1

        def get_batch(self, names):
            return None

        def read_calibration_cache(self):
            return cache.data

        def write_calibration_cache(self, data):
            pass

    return CacheCalibrator()


# --- CUDA memory --------------------------------------------------------------------------------------------------

class _Cuda:
    """Device buffers, copies and a stream through cuda-python (cuda.bindings.runtime) or, failing that, CuPy."""

    def __init__(self):
        try:
            try:
                from cuda.bindings import runtime as cudart
            except ImportError:
                from cuda import cudart  # cuda-python < 12.6
            self.kind, self.rt = "cuda-python", cudart
            self.stream = self._ok(cudart.cudaStreamCreate(), "cudaStreamCreate")
            self.handle = int(self.stream)
            return
        except ImportError:
            pass
        try:
            import cupy
        except ImportError:
            raise DeployError("the TensorRT backend needs CUDA memory from Python: install cuda-python "
                              "(`pip install cuda-python`) or CuPy (`pip install cupy-cuda12x`)") from None
        self.kind, self.cp = "cupy", cupy
        self.stream = cupy.cuda.Stream(non_blocking=True)
        self.handle = self.stream.ptr

    def _ok(self, result, what: str):
        err, *rest = result if isinstance(result, tuple) else (result,)
        if err != self.rt.cudaError_t.cudaSuccess:
            _, msg = self.rt.cudaGetErrorString(err)
            raise DeployError(f"CUDA {what} failed: {msg.decode() if isinstance(msg, bytes) else msg}")
        return rest[0] if len(rest) == 1 else (rest or None)

    def gpu_name(self) -> str:
        if self.kind == "cupy":
            name = self.cp.cuda.runtime.getDeviceProperties(self.cp.cuda.Device().id)["name"]
        else:
            device = self._ok(self.rt.cudaGetDevice(), "cudaGetDevice")
            name = self._ok(self.rt.cudaGetDeviceProperties(device), "cudaGetDeviceProperties").name
        return name.decode(errors="replace").rstrip("\x00") if isinstance(name, bytes) else str(name)

    def alloc(self, nbytes: int) -> tuple[int, Any]:
        """(device pointer, owner to keep alive)."""
        if self.kind == "cupy":
            mem = self.cp.cuda.alloc(max(nbytes, 1))
            return int(mem.ptr), mem
        ptr = self._ok(self.rt.cudaMalloc(max(nbytes, 1)), "cudaMalloc")
        return int(ptr), None

    def to_device(self, ptr: int, host: np.ndarray) -> None:
        if self.kind == "cupy":
            self.cp.cuda.runtime.memcpyAsync(ptr, host.ctypes.data, host.nbytes,
                                             self.cp.cuda.runtime.memcpyHostToDevice, self.handle)
        else:
            self._ok(self.rt.cudaMemcpyAsync(ptr, host.ctypes.data, host.nbytes,
                                             self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice, self.stream), "memcpy")

    def to_host(self, host: np.ndarray, ptr: int) -> None:
        if self.kind == "cupy":
            self.cp.cuda.runtime.memcpyAsync(host.ctypes.data, ptr, host.nbytes,
                                             self.cp.cuda.runtime.memcpyDeviceToHost, self.handle)
        else:
            self._ok(self.rt.cudaMemcpyAsync(host.ctypes.data, ptr, host.nbytes,
                                             self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, self.stream), "memcpy")

    def synchronize(self) -> None:
        if self.kind == "cupy":
            self.stream.synchronize()
        else:
            self._ok(self.rt.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")

    def free(self, ptr: int, owner: Any) -> None:
        if self.kind == "cuda-python":
            self.rt.cudaFree(ptr)

    def close(self) -> None:
        if self.kind == "cuda-python":
            self.rt.cudaStreamDestroy(self.stream)


# --- engine build and run -----------------------------------------------------------------------------------------

def _has_qdq(trt, network) -> bool:
    """Whether the parsed NETWORK holds Q/DQ layers (explicit quantisation). Read from TensorRT's own network, not
    with the onnx package, which the car does not install (deploy/JETSON.md)."""
    kinds = (trt.LayerType.QUANTIZE, trt.LayerType.DEQUANTIZE)
    return any(network.get_layer(i).type in kinds for i in range(network.num_layers))


# Zoo methods whose ONNX holds int8 Q/DQ nodes: TensorRT builds them with the INT8 flag (explicit quantisation).
QUANTISED_METHODS = ("int8-ptq", "qat-int8", "qat-int4", "qat-ternary")


def precision_for(method: str, target: str, name: str = "model") -> str:
    """The TensorRT precision for a zoo model of METHOD and TARGET: int8 for the quantised ones (their scales are in
    the graph), fp16 for the float ones. A model built for the CPU (onnxruntime's U8S8 layout: asymmetric uint8
    activations) is refused: TensorRT takes symmetric int8 only, and its `-tensorrt` sibling is the one to run."""
    if target == "cpu":
        raise ConfigError(f"{name} is built for onnxruntime on the CPU (target cpu: asymmetric uint8 activations), "
                          "which TensorRT does not take; run its TensorRT artifact (target tensorrt) or --backend ort")
    return "int8" if method in QUANTISED_METHODS else "fp16"


def build_engine(trt, onnx_path: Path, precision: str, calibration: CalibrationCache | None = None,
                 workspace_mb: int = 1024) -> bytes:
    """Parse ONNX_PATH and build a serialized engine. int8: explicit quantisation when the model holds Q/DQ nodes
    (the INT8 flag only), else the scales of CALIBRATION (a calibration cache; required then)."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: every network has an explicit batch; no flags needed
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise DeployError(f"{onnx_path}: TensorRT's ONNX parser rejects the model: {errors[:600]}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    if precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)  # int8: layers without int8 kernels fall back to fp16, not fp32
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
        if not _has_qdq(trt, network):
            if calibration is None:
                raise DeployError(f"{onnx_path}: int8 needs a Q/DQ model (nearfield compress --method int8-ptq "
                                  "--target tensorrt) or a calibration cache (--calibration-cache FILE)")
            config.int8_calibrator = _cache_calibrator(trt, calibration)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise DeployError(f"{onnx_path}: TensorRT could not build a {precision} engine (see the TensorRT log above)")
    return bytes(serialized)


class TensorRTBackend:
    """A TensorRT engine over a deploy ONNX file, static shapes (batch 1 as exported). Engines are cached under
    ~/.cache/nearfield/engines (NEARFIELD_ENGINE_CACHE) by engine_cache_key; a changed ONNX file, TensorRT version,
    GPU or precision builds a new one."""

    name = "tensorrt"

    def __init__(self, onnx_path: str | Path, precision: str = "fp16", calibration_cache: str | Path | None = None,
                 cache_dir: str | Path | None = None, workspace_mb: int = 1024):
        if precision not in PRECISIONS:
            raise ConfigError(f"TensorRT precision {precision!r} is not one of {', '.join(PRECISIONS)}")
        trt = require_tensorrt()
        self.path = Path(onnx_path)
        self.precision = precision
        self.cuda = _Cuda()
        calibration = read_calibration_cache(calibration_cache) if calibration_cache else None
        key = engine_cache_key(file_sha256(self.path), trt.__version__, self.cuda.gpu_name(), precision,
                               hashlib.sha256(calibration.data).hexdigest() if calibration else "")
        self.engine_file = engine_path(self.path, key, precision, Path(cache_dir) if cache_dir else None)
        if self.engine_file.is_file():
            blob = self.engine_file.read_bytes()
            log.info("%s: cached engine %s", self.path, self.engine_file)
        else:
            log.info("%s: building a %s TensorRT engine (minutes on a Jetson)", self.path, precision)
            blob = build_engine(trt, self.path, precision, calibration, workspace_mb)
            self.engine_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.engine_file.with_suffix(".part")
            tmp.write_bytes(blob)
            tmp.replace(self.engine_file)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self._logger)
        self.engine = self.runtime.deserialize_cuda_engine(blob)
        if self.engine is None:
            raise DeployError(f"{self.engine_file}: TensorRT cannot deserialize the engine; delete it to rebuild")
        self.context = self.engine.create_execution_context()
        inputs, outputs = [], []
        self._buffers: dict[str, tuple[int, Any, tuple[int, ...], np.dtype]] = {}
        self._outputs: dict[str, np.ndarray] = {}
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            shape = tuple(self.engine.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise DeployError(f"{self.path}: tensor '{name}' has dynamic shape {shape}; export with static "
                                  "shapes (the deploy contract)")
            dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))
            ptr, owner = self.cuda.alloc(int(np.prod(shape)) * dtype.itemsize)
            self._buffers[name] = (ptr, owner, shape, dtype)
            self.context.set_tensor_address(name, ptr)
            if self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                inputs.append(name)
            else:
                outputs.append(name)
                self._outputs[name] = np.empty(shape, dtype)
        self.input_names, self.output_names = tuple(inputs), tuple(outputs)

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [n for n in self.input_names if n not in inputs]
        if missing:
            raise DeployError(f"{self.path}: inputs {', '.join(missing)} not given (the engine reads "
                              f"{', '.join(self.input_names)})")
        staged = []
        for name in self.input_names:
            ptr, _, shape, dtype = self._buffers[name]
            arr = inputs[name]
            if arr.dtype != dtype or arr.shape != shape:
                raise DeployError(f"{self.path}: input '{name}' is {arr.dtype} {arr.shape}, the engine wants {dtype} "
                                  f"{shape}; build the inputs with this model's [bev] configuration")
            arr = np.ascontiguousarray(arr)
            staged.append(arr)  # the host array must outlive the asynchronous copy
            self.cuda.to_device(ptr, arr)
        if not self.context.execute_async_v3(self.cuda.handle):
            raise DeployError(f"{self.path}: TensorRT execution failed (see the TensorRT log)")
        for name in self.output_names:
            self.cuda.to_host(self._outputs[name], self._buffers[name][0])
        self.cuda.synchronize()
        return self._outputs

    def close(self) -> None:
        if getattr(self, "_buffers", None):
            for ptr, owner, _, _ in self._buffers.values():
                self.cuda.free(ptr, owner)
            self._buffers = {}
            self.context = self.engine = None
            self.cuda.close()


__all__ = ["PRECISIONS", "QUANTISED_METHODS", "CalibrationCache", "TensorRTBackend", "build_engine",
           "engine_cache_dir", "engine_cache_key", "engine_path", "precision_for", "read_calibration_cache",
           "require_tensorrt"]
