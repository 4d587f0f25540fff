"""Replay-based regression tests, after openpilot's process replay: short reference drives (tests/replay/drives)
run through the deploy runtime, and their outputs compared with pinned references (tests/replay/refs/NAME.npz +
NAME.json, keyed to the model's and the drives' sha256). A reference set is a model with the runtime options it ran
with: NAME is the model's name, plus "+memory0.95" for one made with the near-field memory at that decay (the
options are recorded in the JSON and replayed by the check). Torch-free."""

from __future__ import annotations

import io
import json
import logging
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from deploy.zoo import MANIFEST, ZooModel, get_model
from sensors.classes import IGNORE
from sensors.errors import ChecksumError, ConfigError, LogFormatError
from sensors.files import file_sha256
from sim_data.simulate import OUTDOOR_KINDS, DriveSpec

log = logging.getLogger(__name__)

REPLAY_DIR = Path(__file__).resolve().parent.parent / "tests" / "replay"
DRIVES_DIR = REPLAY_DIR / "drives"
REFS_DIR = REPLAY_DIR / "refs"
FORMAT = 1

# Quarter-size images (320 x 242) keep a drive under 0.5 MB in git and still cover nf-small's 256 x 192 input.
DRIVE_SCALE = 0.25
DRIVE_FRAMES = 8
# Seeds far from the simulate presets' ranges (100_000.. 300_000..), so a reference drive is never training data.
REFERENCE_DRIVES: tuple[DriveSpec, ...] = (
    DriveSpec("day", 9_000_001, DRIVE_FRAMES, ("day",)),
    DriveSpec("night", 9_000_002, DRIVE_FRAMES, ("night",)),
    DriveSpec("glare", 9_000_003, DRIVE_FRAMES, ("glare",), scene_kinds=OUTDOOR_KINDS),
    DriveSpec("camera_failure", 9_000_004, DRIVE_FRAMES, ("camera_failure",)),
    DriveSpec("uss_failure", 9_000_005, DRIVE_FRAMES, ("uss_failure",)),
    # Creeping along a kerbed street at night, long enough for the near-field memory to carry kerb cells from the
    # corner sensors' beams into the flanks (21 cells with nf-small at decay 0.95): the memory's reference sets
    # pin what it recalls, not only that it adds nothing.
    DriveSpec("street_night_creep", 9_000_007, 10, ("night",), scene_kinds=("street",), motions=("creep_forward",)),
)

# The runtime's result topics (deploy.runtime writes them to its results MCAP) and the fields compared in each.
OCCUPANCY, STAGE1, SECTORS, LATENCY, STATUS = (
    "/perception/occupancy", "/perception/stage1", "/perception/sectors", "/perception/latency", "/perception/status")
# How each field is compared: "classes" exactly with cell counts and IoU, "float" with atol + rtol, "exact"
# element by element, "text" as whole strings.
FIELDS: dict[tuple[str, str], str] = {
    (OCCUPANCY, "class_map"): "classes",
    (STAGE1, "occupancy"): "float",
    (SECTORS, "distance"): "float",
    (SECTORS, "level"): "exact",
    (STATUS, "present"): "text",
    (STATUS, "degraded"): "text",
}
EXPECTED_TOPICS = (OCCUPANCY, STAGE1, SECTORS, LATENCY, STATUS)


@dataclass(frozen=True)
class Tolerance:
    """Floats pass where |new - old| <= atol + rtol * |old| (np.isclose; equal infinities pass). `ignore` names
    topics ('/perception/latency') or fields ('/perception/status:degraded') left out of the comparison.
    Discrete outputs are compared exactly: onnxruntime on the CPU is deterministic for one build and machine."""

    atol: float = 1e-4
    rtol: float = 1e-3
    ignore: tuple[str, ...] = (LATENCY,)

    def ignores(self, topic: str, name: str) -> bool:
        return topic in self.ignore or f"{topic}:{name}" in self.ignore


# --- reference sets: a model and its runtime options ----------------------------------------------------------

_MEMORY = "+memory"


def refs_name(model: str, memory_decay: float | None = None) -> str:
    """The name of MODEL's reference set with these runtime options: "nf-small", "nf-small+memory0.95"."""
    return model if memory_decay is None else f"{model}{_MEMORY}{memory_decay:g}"


def parse_refs_name(name: str) -> tuple[str, float | None]:
    """(model, memory_decay) of a reference set's name; the inverse of refs_name."""
    model, plus, option = name.partition("+")
    if not plus:
        return name, None
    try:
        decay = float(option[len(_MEMORY) - 1:]) if option.startswith(_MEMORY[1:]) else None
    except ValueError:
        decay = None
    if decay is None or refs_name(model, decay) != name:
        raise ConfigError(f"reference set {name!r}: expected MODEL or MODEL{_MEMORY}DECAY (e.g. "
                          f"nf-small{_MEMORY}0.95)")
    return model, decay


# --- outputs of one replay ------------------------------------------------------------------------------------

@dataclass
class FrameOutput:
    """One frame's outputs: topic -> field -> array (a string field is a 0-d unicode array)."""

    index: int
    stamp_ns: int
    topics: dict[str, dict[str, np.ndarray]]


@dataclass
class DriveOutput:
    name: str
    sha256: str
    frames: list[FrameOutput]
    expected_frames: int  # frames the drive holds (the simulator's metadata; else the frames the runtime took)
    conditions: list[str] = field(default_factory=list)
    taken: int = -1  # frames the runtime took from the drive (RunStats.frames); -1: not known


def frame_output(record) -> FrameOutput:
    """A deploy.results.ResultRecord (as read back from the runtime's results file) as topic -> field -> array; a
    topic the file lacks for this frame stays out, so the coverage check sees it."""
    topics: dict[str, dict[str, np.ndarray]] = {
        LATENCY: {k: np.float64(v) for k, v in record.latency.items()},
        STATUS: {"present": np.array(",".join(record.present)), "degraded": np.array("; ".join(record.degraded))},
    }
    if record.class_map is not None:
        topics[OCCUPANCY] = {"class_map": np.asarray(record.class_map, np.uint8)}
    if record.stage1 is not None:
        topics[STAGE1] = {"occupancy": np.asarray(record.stage1, np.float32)}
    if record.sector_distance is not None:
        topics[SECTORS] = {"distance": np.asarray(record.sector_distance, np.float32),
                           "level": np.asarray(record.sector_level, np.uint8)}
    if not record.latency:
        del topics[LATENCY]
    return FrameOutput(record.index, int(record.stamp_ns), topics)


def find_drives(drives_dir: str | Path = DRIVES_DIR) -> list[Path]:
    drives = sorted(Path(drives_dir).glob("*.mcap"))
    if not drives:
        raise ConfigError(f"{drives_dir}: no reference drives (*.mcap); make them with `nearfield replay make-drives`")
    return drives


def replay_model(model: ZooModel, drives: Sequence[Path], threads: int | None = 1,
                 progress: bool = False, memory_decay: float | None = None) -> list[DriveOutput]:
    """Every drive through the embedded runtime (deploy.runtime.run, as `nearfield run` does it, with the near-field
    memory at MEMORY_DECAY where given), its results file read back (deploy.results.read_results): what is compared
    is what the runtime really wrote."""
    import tempfile

    from tqdm import tqdm

    from deploy.results import read_results
    from deploy.runtime import run
    from sensors.log import LogReader

    out: list[DriveOutput] = []
    with tempfile.TemporaryDirectory(prefix="nearfield-replay-") as tmp:
        for path in tqdm(drives, desc=f"replay {model.name}", unit="drive", disable=not progress):
            with LogReader(path, strict=True) as reader:  # a damaged reference drive is an error, not a skip
                frames_meta = reader.metadata.get("frames", "-1")
                if not frames_meta.lstrip("-").isdigit():
                    raise LogFormatError(f"{path}: metadata field 'frames' is {frames_meta!r}, not a whole number; "
                                         "regenerate the drive with `nearfield replay make-drives`")
                expected = int(frames_meta)
                conditions = [c for c in reader.metadata.get("conditions", "").split(",") if c]
            results = Path(tmp) / f"{path.stem}.results.mcap"
            stats = run(model, path, results, threads=threads, progress=False, memory_decay=memory_decay)
            frames = [frame_output(r) for r in read_results(results, strict=True)]
            if expected < 0:  # not a simulated drive: the frames the runtime took are all there is
                expected = stats.frames
            out.append(DriveOutput(path.stem, file_sha256(path), frames, expected, conditions, stats.frames))
    return out


# --- references on disk -----------------------------------------------------------------------------------------

@dataclass
class References:
    """Pinned outputs of one model with its runtime options: per drive, stacked per field over frames."""

    model: str
    model_sha256: str
    drives: dict[str, dict]  # name -> {"sha256", "frames", "conditions", ...summary}
    arrays: dict[str, np.ndarray]  # "drive:topic:field" and "drive::stamp_ns" -> (frames, ...) arrays
    memory_decay: float | None = None  # the runtime ran with the near-field memory at this decay

    @property
    def name(self) -> str:
        return refs_name(self.model, self.memory_decay)

    def field(self, drive: str, topic: str, name: str) -> np.ndarray | None:
        return self.arrays.get(f"{drive}:{topic}:{name}")

    def stamps(self, drive: str) -> np.ndarray:
        return self.arrays[f"{drive}::stamp_ns"]


def _stack(outputs: Sequence[DriveOutput], tol: Tolerance) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    for d in outputs:
        arrays[f"{d.name}::stamp_ns"] = np.array([f.stamp_ns for f in d.frames], np.int64)
        for topic, name in FIELDS:
            if d.frames and not tol.ignores(topic, name):
                arrays[f"{d.name}:{topic}:{name}"] = np.stack([f.topics[topic][name] for f in d.frames])
    return arrays


def _summary(d: DriveOutput) -> dict:
    """What a person reads in the JSON beside the arrays: enough to see a change in a diff of the file."""
    classes = np.stack([f.topics[OCCUPANCY]["class_map"] for f in d.frames]) if d.frames else np.zeros(0, np.uint8)
    counts = np.bincount(classes[classes != IGNORE].ravel(), minlength=1)
    occ = [float(f.topics[STAGE1]["occupancy"].mean()) for f in d.frames]
    return {"sha256": d.sha256, "frames": len(d.frames), "conditions": d.conditions,
            "class_cells": [int(c) for c in counts], "mean_occupancy": round(float(np.mean(occ)) if occ else 0.0, 6),
            "degraded_frames": sum(bool(str(f.topics[STATUS]["degraded"])) for f in d.frames)}


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """np.savez_compressed's layout with fixed zip timestamps, so unchanged references are unchanged bytes."""
    tmp = path.with_suffix(".npz.part")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        for key in sorted(arrays):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arrays[key]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, buf.getvalue())
    tmp.replace(path)


def refs_paths(name: str, refs_dir: str | Path = REFS_DIR) -> tuple[Path, Path]:
    """NAME.json and NAME.npz of a reference set (refs_name)."""
    return Path(refs_dir) / f"{name}.json", Path(refs_dir) / f"{name}.npz"


def write_refs(model: ZooModel, outputs: Sequence[DriveOutput], refs_dir: str | Path = REFS_DIR,
               tol: Tolerance = Tolerance(), memory_decay: float | None = None) -> Path:
    """Write NAME.npz (arrays, no pickles) and NAME.json (sha256 keys, the runtime options and a readable summary),
    NAME = refs_name(model, memory_decay)."""
    meta_path, npz_path = refs_paths(refs_name(model.name, memory_decay), refs_dir)
    npz_path.parent.mkdir(parents=True, exist_ok=True)
    _write_npz(npz_path, _stack(outputs, tol))
    meta = {"format": FORMAT, "model": model.name, "model_sha256": model.sha256, "onnx": model.onnx.name,
            "method": model.method, "runtime": {"memory_decay": memory_decay}, "refs_sha256": file_sha256(npz_path),
            "written_by": "nearfield replay update-refs", "drives": {d.name: _summary(d) for d in outputs}}
    tmp = meta_path.with_suffix(".json.part")
    tmp.write_text(json.dumps(meta, indent=1) + "\n")
    tmp.replace(meta_path)
    return meta_path


def read_refs(name: str, refs_dir: str | Path = REFS_DIR) -> References:
    """The reference set NAME (refs_name); ConfigError if there is none or the summary is unreadable or names
    another model or other options, ChecksumError if the array file is missing or does not match the sha256 the
    summary records."""
    model, memory_decay = parse_refs_name(name)
    meta_path, npz_path = refs_paths(name, refs_dir)
    memory = "" if memory_decay is None else f" --memory {memory_decay:g}"
    fix = f"run `nearfield replay update-refs --model {model}{memory}` (or restore {refs_dir} from git)"
    if not meta_path.is_file():
        raise ConfigError(f"{meta_path}: no replay references for model {model}; {fix}")
    try:
        meta = json.loads(meta_path.read_text())
        drives = meta["drives"]
        expected = meta["refs_sha256"]
        recorded = meta.get("runtime", {}).get("memory_decay")
        if meta.get("format") != FORMAT or meta.get("model") != model or not isinstance(drives, dict) \
                or recorded != memory_decay:
            raise ValueError(f"format {meta.get('format')!r}, model {meta.get('model')!r}, memory decay {recorded!r}")
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{meta_path}: unreadable replay references ({type(e).__name__}: {e}); {fix}") from None
    if not npz_path.is_file():
        raise ChecksumError(f"{npz_path}: the reference arrays are missing; {fix}")
    actual = file_sha256(npz_path)
    if actual != expected:
        raise ChecksumError(f"{npz_path}: sha256 {actual[:16]}... differs from {expected[:16]}... recorded in "
                            f"{meta_path.name}; the file is damaged or was edited; {fix}")
    try:
        with np.load(npz_path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise ChecksumError(f"{npz_path}: the reference arrays do not load ({e}); {fix}") from None
    return References(model, str(meta.get("model_sha256", "")), drives, arrays, memory_decay)


def models_with_refs(refs_dir: str | Path = REFS_DIR) -> list[str]:
    """The names of the reference sets in REFS_DIR (refs_name: a model, or a model with runtime options)."""
    return sorted(p.stem for p in Path(refs_dir).glob("*.json"))


# --- comparison ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FieldChange:
    """One field of one frame beyond tolerance."""

    drive: str
    frame: int
    stamp_ns: int
    topic: str
    name: str
    changed: int  # cells (elements) beyond tolerance
    total: int
    iou: float | None = None  # class maps: mean IoU over the classes in either map; occupancy: of p >= 0.5
    max_abs: float | None = None  # floats: the largest absolute difference
    detail: str = ""

    def __str__(self) -> str:
        s = (f"{self.drive} frame {self.frame} ({self.stamp_ns} ns) {self.topic} {self.name}: {self.changed} of "
             f"{self.total} cells changed")
        if self.iou is not None:
            s += f", IoU {self.iou:.3f}"
        if self.max_abs is not None:
            s += f", max |diff| {self.max_abs:.3g}"
        return s + (f" ({self.detail})" if self.detail else "")


@dataclass
class ReplayReport:
    """The verdict of one model's replay: `ok` when every output is within tolerance and the replay covered every
    drive, frame and topic. `notes` say what changed on the input side (model or drive files)."""

    model: str
    drives: int = 0
    frames: int = 0
    changes: list[FieldChange] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # coverage: missing drives, frames, topics
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.changes and not self.problems

    def format(self, limit: int = 20) -> str:
        verdict = "PASS" if self.ok else "FAIL"
        lines = [f"replay {self.model}: {verdict}: {self.drives} drives, {self.frames} frames, "
                 f"{len(self.changes)} field(s) beyond tolerance, {len(self.problems)} coverage problem(s)"]
        lines += [f"  note: {n}" for n in self.notes]
        lines += [f"  missing: {p}" for p in self.problems]
        # Per drive and field first (what a reviewer needs), then frame by frame.
        groups: dict[tuple[str, str, str], list[FieldChange]] = {}
        for c in self.changes:
            groups.setdefault((c.drive, c.topic, c.name), []).append(c)
        for (drive, topic, name), cs in groups.items():
            ious = [c.iou for c in cs if c.iou is not None]
            lowest = f", lowest IoU {min(ious):.3f}" if ious else ""
            lines.append(f"  summary: {drive} {topic} {name}: {len(cs)} frame(s) changed, "
                         f"{sum(c.changed for c in cs)} cells in all{lowest}")
        lines += [f"  changed: {c}" for c in self.changes[:limit]]
        if len(self.changes) > limit:
            lines.append(f"  ... and {len(self.changes) - limit} more")
        return "\n".join(lines)


def _mean_iou(a: np.ndarray, b: np.ndarray) -> float:
    keep = (a != IGNORE) | (b != IGNORE)
    a, b = a[keep], b[keep]
    ious = [np.sum((a == c) & (b == c)) / np.sum((a == c) | (b == c)) for c in np.union1d(a, b)]
    return float(np.mean(ious)) if ious else 1.0


def _compare(kind: str, old: np.ndarray, new: np.ndarray, tol: Tolerance) -> tuple[int, float | None, float | None]:
    """(elements beyond tolerance, IoU, max |diff|) of one frame's field; shapes already equal."""
    if kind == "float":
        old64, new64 = old.astype(np.float64), new.astype(np.float64)
        bad = ~np.isclose(new64, old64, rtol=tol.rtol, atol=tol.atol)
        finite = np.isfinite(old64) & np.isfinite(new64)
        diff = np.abs(np.subtract(new64, old64, out=np.zeros_like(old64), where=finite))[finite & bad]
        iou = None
        if old.ndim == 2:  # the stage-1 map: agreement of the occupied cells
            a, b = old64 >= 0.5, new64 >= 0.5
            union = np.sum(a | b)
            iou = float(np.sum(a & b) / union) if union else 1.0
        return int(bad.sum()), iou, float(diff.max()) if diff.size else (np.inf if bad.any() else 0.0)
    bad = old != new
    return int(bad.sum()), _mean_iou(old, new) if kind == "classes" else None, None


def compare(refs: References, outputs: Sequence[DriveOutput], tol: Tolerance = Tolerance(),
            model_sha256: str | None = None) -> ReplayReport:
    """Compare a replay with the references, field by field and frame by frame."""
    report = ReplayReport(refs.name, drives=len(outputs), frames=sum(len(d.frames) for d in outputs))
    if model_sha256 and refs.model_sha256 and model_sha256 != refs.model_sha256:
        report.notes.append(f"model file sha256 {model_sha256[:16]}... differs from the references' "
                            f"{refs.model_sha256[:16]}... (a new build or a changed model)")
    seen = {d.name for d in outputs}
    report.problems += [f"drive {name}: in the references but not replayed" for name in refs.drives if name not in seen]
    for d in outputs:
        ref = refs.drives.get(d.name)
        if ref is None:
            report.problems.append(f"drive {d.name}: no references for it; run `nearfield replay update-refs`")
            continue
        if ref.get("sha256") != d.sha256:
            report.notes.append(f"drive {d.name}: file sha256 {d.sha256[:16]}... differs from the references' "
                                f"{str(ref.get('sha256'))[:16]}... (the drive was regenerated or rewritten)")
        _check_coverage(d, int(ref.get("frames", -1)), tol, report)
        old_stamps = refs.stamps(d.name)
        for i, f in enumerate(d.frames[:len(old_stamps)]):
            if f.stamp_ns != old_stamps[i]:
                report.problems.append(f"drive {d.name} frame {i}: stamp {f.stamp_ns} ns, the references have "
                                       f"{int(old_stamps[i])} ns")
        for (topic, name), kind in FIELDS.items():
            old = refs.field(d.name, topic, name)
            if tol.ignores(topic, name) or old is None:
                continue
            for i, f in enumerate(d.frames[:len(old)]):
                new = f.topics.get(topic, {}).get(name)
                if new is None:
                    continue  # reported by the coverage check
                if new.shape != old[i].shape:
                    report.changes.append(FieldChange(d.name, i, f.stamp_ns, topic, name, max(new.size, old[i].size),
                                                      max(new.size, old[i].size),
                                                      detail=f"shape {old[i].shape} -> {new.shape}"))
                    continue
                changed, iou, max_abs = _compare(kind, old[i], new, tol)
                if changed:
                    detail = f"{str(old[i])!r} -> {str(new)!r}" if kind == "text" else ""
                    report.changes.append(FieldChange(d.name, i, f.stamp_ns, topic, name, changed, max(new.size, 1),
                                                      iou, max_abs, detail))
    return report


def _check_coverage(d: DriveOutput, ref_frames: int, tol: Tolerance, report: ReplayReport) -> None:
    """The replay must really have exercised the system: every frame of the drive processed, every topic
    written for every frame."""
    if len(d.frames) != d.expected_frames:
        report.problems.append(f"drive {d.name}: {len(d.frames)} frames in the results, the drive holds "
                               f"{d.expected_frames}")
    if d.taken >= 0 and d.taken != len(d.frames):
        report.problems.append(f"drive {d.name}: the runtime took {d.taken} frames but wrote {len(d.frames)}")
    if len(d.frames) != ref_frames:
        report.problems.append(f"drive {d.name}: {len(d.frames)} frames, the references have {ref_frames}")
    for f in d.frames:
        missing = [t for t in EXPECTED_TOPICS if t not in f.topics]
        missing += [f"{t}:{n}" for t, n in FIELDS if t in f.topics and n not in f.topics[t]
                    and not tol.ignores(t, n)]
        if missing:
            report.problems.append(f"drive {d.name} frame {f.index}: nothing written on {', '.join(missing)}")


# --- the commands' library functions ---------------------------------------------------------------------------

def _model_and_outputs(model: str | ZooModel, onnx: str | Path | None, manifest: str | Path,
                       drives_dir: str | Path, threads: int | None, progress: bool,
                       memory_decay: float | None) -> tuple[ZooModel, list[DriveOutput]]:
    from dataclasses import replace

    entry = get_model(model, manifest) if isinstance(model, str) else model
    if onnx is not None:
        # A newly built file checked against the references of the model it claims to be (as Pipeline.from_onnx).
        if not Path(onnx).is_file():
            raise ConfigError(f"--onnx {onnx}: no such file")
        entry = replace(entry, onnx=Path(onnx), sha256=file_sha256(onnx))
    return entry, replay_model(entry, find_drives(drives_dir), threads=threads, progress=progress,
                               memory_decay=memory_decay)


def check(model: str | ZooModel, onnx: str | Path | None = None, manifest: str | Path = MANIFEST,
          drives_dir: str | Path = DRIVES_DIR, refs_dir: str | Path = REFS_DIR, tol: Tolerance = Tolerance(),
          threads: int | None = 1, progress: bool = False) -> ReplayReport:
    """Replay the reference drives through MODEL (or through ONNX, a new build of MODEL) and compare with
    MODEL's references. MODEL may name a reference set with runtime options ("nf-small+memory0.95"): the replay
    runs with the options its references were made with."""
    name = model if isinstance(model, str) else model.name
    refs = read_refs(name, refs_dir)  # before the replay: a missing reference fails fast
    entry, outputs = _model_and_outputs(refs.model if isinstance(model, str) else model, onnx, manifest, drives_dir,
                                        threads, progress, refs.memory_decay)
    report = compare(refs, outputs, tol, entry.sha256)
    log.info("%s", report.format())
    return report


def update_refs(model: str | ZooModel, manifest: str | Path = MANIFEST, drives_dir: str | Path = DRIVES_DIR,
                refs_dir: str | Path = REFS_DIR, tol: Tolerance = Tolerance(),
                threads: int | None = 1, progress: bool = False,
                memory_decay: float | None = None) -> ReplayReport | None:
    """Replay and write MODEL's references with the runtime options (the near-field memory at MEMORY_DECAY, or
    none), as the reference set refs_name(MODEL, MEMORY_DECAY). Returns what changed against the previous references
    (None when there were none, or they were unreadable)."""
    if memory_decay is not None:
        from perception.temporal import check_decay

        check_decay(memory_decay)
    name = refs_name(model if isinstance(model, str) else model.name, memory_decay)
    try:
        previous = read_refs(name, refs_dir)
    except (ConfigError, ChecksumError):
        previous = None
    entry, outputs = _model_and_outputs(model, None, manifest, drives_dir, threads, progress, memory_decay)
    report = compare(previous, outputs, tol, entry.sha256) if previous else None
    coverage = ReplayReport(name)
    for d in outputs:
        _check_coverage(d, len(d.frames), tol, coverage)
        if not d.frames:
            coverage.problems.append(f"drive {d.name}: no frame at all")
    if coverage.problems:
        raise LogFormatError(f"model {name}: the replay did not exercise everything ({'; '.join(coverage.problems)});"
                             " references are not written from an incomplete replay")
    write_refs(entry, outputs, refs_dir, tol, memory_decay)
    return report


def make_drives(out_dir: str | Path = DRIVES_DIR, specs: Iterable[DriveSpec] = REFERENCE_DRIVES,
                scale: float = DRIVE_SCALE, rig_path: str | Path | None = None) -> list[Path]:
    """Simulate the reference drives (deterministic: the same simulator gives the same bytes)."""
    from sensors.rig import load_rig
    from sim_data.simulate import simulate_drive

    rig = load_rig(rig_path)
    return [simulate_drive(s, out_dir, rig, scale) for s in specs]


__all__ = ["DRIVES_DIR", "DRIVE_SCALE", "EXPECTED_TOPICS", "FIELDS", "REFERENCE_DRIVES", "REFS_DIR", "DriveOutput",
           "FieldChange", "FrameOutput", "References", "ReplayReport", "Tolerance", "check", "compare",
           "find_drives", "frame_output", "make_drives", "models_with_refs", "parse_refs_name", "read_refs",
           "refs_name", "refs_paths", "replay_model", "update_refs", "write_refs"]
