"""`nearfield zoo measure`: a zoo model's test accuracy (perception.evaluate), onnxruntime CPU latency (and its
ratio to the parent's, timed in the same run) and file size, stored into the zoo manifest. Torch-free."""

from __future__ import annotations

import logging
import shlex
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from deploy.flops import onnx_flops
from deploy.pipeline import Pipeline
from deploy.zoo import MANIFEST, ZooModel, get_model, read_zoo, update_metrics
from perception.evaluate import Evaluator
from perception.near_field import NearFieldSettings
from sensors.errors import LogFormatError
from sensors.files import find_logs
from sensors.schemas import GT_OCCUPANCY_TOPIC

log = logging.getLogger(__name__)


def count_parameters(onnx_path: str | Path) -> int:
    """Weights in an ONNX file: elements of its initialisers of rank >= 1, less quantisation scales and zero points
    (they describe weights rather than add any)."""
    import onnx

    proto = onnx.load(str(onnx_path), load_external_data=False)
    qparams = {n.input[i] for n in proto.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
               for i in (1, 2) if len(n.input) > i}
    return int(sum(np.prod(t.dims) for t in proto.graph.initializer if len(t.dims) >= 1 and t.name not in qparams))


# Latency protocol: after the accuracy pass, TIMING_FRAMES network inputs spread over the drives are run in
# TIMING_ROUNDS rounds, each model (the one measured and its parent, in alternating order from round to round)
# through all of them in a block, so that each runs with its own weights warm in cache. Frame-by-frame alternation
# made both slower (each evicts the other) and the ms column incomparable with models measured alone. The ratio is
# the median over rounds of the two blocks' ratio, so a load change on a shared machine falls on both alike: the
# ratio of the overall medians had put the same int8 graph at 1.31x to 1.71x in three runs.
TIMING_FRAMES = 24
TIMING_ROUNDS = 9


def measure_model(name: str, data: str | Path | Sequence[str | Path], threads: int | None = None,
                  manifest: str | Path = MANIFEST, store: bool = True, timing: bool = True) -> dict[str, Any]:
    """Run zoo model NAME over the test drives in DATA through deploy.pipeline.Pipeline (onnxruntime CPU, THREADS
    intra-op threads): test mIoU overall and at night; median ms of backend.run per frame (and the parent's, timed
    in the same run, when the parent is in the zoo too; see TIMING_ROUNDS); size, parameters and FLOPs
    (deploy.flops). Stored into NAME's [metrics] unless store=False; returned either way (keys absent where not
    measured, e.g. no night frames).

    timing=False re-scores accuracy only (after the test split changed, or on a busy machine): the test figures
    with `accuracy_command` and `accuracy_measured_at`; the stored timings, their machine and command stay. A
    TensorRT artifact (target tensorrt) is always measured so."""
    from sensors.log import LogReader
    from sensors.timing import machine_description

    model = get_model(name, manifest)
    if timing and model.target == "tensorrt":
        log.info("%s: a TensorRT artifact (symmetric int8 for TensorRT's kernels) is scored in onnxruntime but not "
                 "timed there: its CPU time says nothing about its engine's; accuracy only", name)
        timing = False
    zoo = read_zoo(manifest)
    parent: ZooModel | None = zoo.get(model.parent) if model.parent != name else None
    samples: list[dict[str, np.ndarray]] = []  # network inputs for the timing rounds
    logs = find_logs(data, split="test")
    per_drive = -(-TIMING_FRAMES // max(len(logs), 1))  # spread over the drives: ceil(frames / drives) from each
    taken: dict[str, int] = {}

    def keep_sample(pipe: Pipeline, frame, path: Path) -> None:
        if (taken.get(str(path), 0) < per_drive and len(samples) < TIMING_FRAMES
                and (frame.index % 4 == 2 or not samples)):
            samples.append({n: a.copy() for n, a in pipe.prep.network_inputs(frame)[0].items()})
            taken[str(path)] = taken.get(str(path), 0) + 1

    scores = score_logs(model, logs, threads=threads, on_frame=keep_sample if timing else None)
    if timing:  # the network inputs kept above, through fresh sessions of both models (time_blocks warms them)
        with LogReader(logs[0]) as reader:
            rig = reader.rig
        pipes = [Pipeline(model, rig, threads=threads, source=str(logs[0]))]
        try:
            if parent is not None:
                pipes.append(Pipeline(parent, rig, threads=threads, source=str(logs[0])))
            times = time_blocks([p.backend for p in pipes], samples)
        finally:
            for p in pipes:
                p.close()
        ms, parent_ms = times[0], times[1] if parent is not None else []
    data_args = " ".join(shlex.quote(str(d)) for d in ([data] if isinstance(data, str | Path) else data))
    if not timing:
        metrics = {"test_frames": int(scores["frames"])}
        if scores["miou"] is not None:
            metrics["test_miou"] = float(scores["miou"])
        night = scores["by_condition"].get("night", {}).get("miou")
        if night is not None:
            metrics["test_miou_night"] = float(night)
        metrics["accuracy_command"] = f"nearfield zoo measure {name} --data {data_args} --accuracy-only"
        metrics["accuracy_measured_at"] = time.strftime("%Y-%m-%d")
        log.info("%s: %s", name, metrics)
        if store:
            update_metrics(name, metrics, manifest)
        return metrics
    metrics: dict[str, Any] = {"test_frames": int(scores["frames"]), "ort_cpu_ms": round(float(np.median(ms)), 3),
                               "size_mb": round(model.size_bytes / 1e6, 3), "params": count_parameters(model.onnx),
                               "gflops": round(onnx_flops(model.onnx) / 1e9, 4)}
    if scores["miou"] is not None:
        metrics["test_miou"] = float(scores["miou"])
    night = scores["by_condition"].get("night", {}).get("miou")
    if night is not None:
        metrics["test_miou_night"] = float(night)
    if parent_ms:
        ratios = block_ratios(ms, parent_ms, TIMING_ROUNDS)
        metrics["ort_cpu_ratio"] = round(float(np.median(ratios)), 4)
        metrics["ort_cpu_ratio_range"] = [round(float(min(ratios)), 4), round(float(max(ratios)), 4)]
        metrics["ort_cpu_parent_ms"] = round(float(np.median(parent_ms)), 3)
    thread_note = f"{threads} onnxruntime threads" if threads else "onnxruntime default threads"
    metrics["measured_on"] = f"{machine_description()}; {thread_note}"
    metrics["command"] = (f"nearfield zoo measure {name} --data {data_args}" +
                          (f" --threads {threads}" if threads else ""))
    metrics["measured_at"] = time.strftime("%Y-%m-%d")
    log.info("%s: %s", name, metrics)
    if store:
        update_metrics(name, metrics, manifest)
    return metrics


def score_logs(model: ZooModel, logs: Sequence[str | Path], threads: int | None = None,
               settings: NearFieldSettings | None = None,
               on_frame: Callable[[Pipeline, Any, Path], None] | None = None) -> dict[str, Any]:
    """perception.evaluate's scores of deploy model MODEL on labelled drive LOGS (files, in order), run through
    deploy.pipeline.Pipeline exactly as `nearfield run` runs it (onnxruntime CPU, THREADS intra-op threads), with the
    near-field SETTINGS (None: the plain argmax; the memory starts afresh with each log). on_frame(pipeline, frame,
    path) is called after each frame.

    Frames without ground truth are left out and counted (skipped_frames), as perception's eval leaves them out: a
    damaged log scores its readable frames, the ones cut off at the damage without their ground truth are skipped,
    and damaged_logs quotes the reader's damage report per log. LogFormatError for a log without any ground truth,
    or no frames at all."""
    from sensors.log import LogReader
    from sensors.replay import replay_frames

    settings = settings or NearFieldSettings()
    pipe: Pipeline | None = None
    evaluator: Evaluator | None = None
    skipped, damaged = 0, {}
    try:
        for path in map(Path, logs):
            with LogReader(path) as reader:
                rig = reader.rig
                if pipe is None:
                    pipe = Pipeline(model, rig, threads=threads, source=str(path),
                                    free_confidence=settings.free_confidence, memory_decay=settings.memory_decay,
                                    echo_floor=settings.echo_floor)
                    evaluator = Evaluator(rig, pipe.grid)
                else:
                    pipe.set_rig(rig, str(path))  # the calibration of this drive; a fresh memory
                scored = unlabelled = 0
                for frame in replay_frames(path, decode=True, decode_scale=pipe.decode_scale, reader=reader):
                    where = f"{path} frame {frame.index} at {frame.stamp_ns} ns"
                    if frame.truth is None:
                        unlabelled += 1
                        continue
                    result = pipe.process(frame)
                    evaluator.update(result.class_map, pipe.prep.target(frame.truth, where), frame.conditions, where,
                                     covered=result.covered, degraded=frame.degraded)
                    scored += 1
                    if on_frame is not None:
                        on_frame(pipe, frame, path)
                damage = "; ".join(str(d) for d in reader.damages)
            if not scored:
                raise LogFormatError(f"{path}: no frame with ground truth ({GT_OCCUPANCY_TOPIC}) among its "
                                     f"{unlabelled} readable frame(s); scoring needs simulated or labelled drives"
                                     + (f"; damage: {damage}" if damage else ""))
            if damage:
                damaged[str(path)] = damage
            if unlabelled:
                log.warning("%s: %d frame(s) without ground truth (%s) left out%s", path, unlabelled,
                            GT_OCCUPANCY_TOPIC, " (cut off at the damage)" if damage else "")
            skipped += unlabelled
    finally:
        if pipe is not None:
            pipe.close()
    scores = evaluator.result() if evaluator is not None else None
    if not scores or not scores["frames"]:
        raise LogFormatError(f"no frames in {', '.join(map(str, logs))}")
    return {**scores, "skipped_frames": skipped, "damaged_logs": damaged}


def time_blocks(backends, samples: list[dict[str, np.ndarray]], rounds: int = TIMING_ROUNDS) -> list[list[float]]:
    """ms per backend.run for each backend, len(SAMPLES) per round, round after round: one untimed pass each over
    SAMPLES, then ROUNDS rounds in which every backend runs all SAMPLES in a block (each with its own weights warm
    in cache), the backends in reverse order every other round (neither always runs right after the other)."""
    feeds = [[{n: x[n] for n in b.input_names} for x in samples] for b in backends]
    times: list[list[float]] = [[] for _ in backends]
    for b, fb in zip(backends, feeds, strict=True):
        for f in fb:
            b.run(f)
    order = list(range(len(backends)))
    for r in range(rounds):
        for i in (order if r % 2 == 0 else order[::-1]):
            for f in feeds[i]:
                t0 = time.perf_counter()
                backends[i].run(f)
                times[i].append(1000 * (time.perf_counter() - t0))
    return times


def block_ratios(ms: Sequence[float], parent_ms: Sequence[float], rounds: int) -> list[float]:
    """Per round, the median of MS's block over the median of PARENT_MS's block (time_blocks' layout: ROUNDS equal
    blocks one after the other)."""
    if rounds < 1 or len(ms) != len(parent_ms) or len(ms) % rounds:
        raise ValueError(f"block_ratios: {len(ms)} and {len(parent_ms)} times do not split into {rounds} rounds")
    n = len(ms) // rounds
    return [float(np.median(ms[r * n:(r + 1) * n]) / np.median(parent_ms[r * n:(r + 1) * n])) for r in range(rounds)]


__all__ = ["TIMING_FRAMES", "TIMING_ROUNDS", "block_ratios", "count_parameters", "measure_model", "time_blocks"]
