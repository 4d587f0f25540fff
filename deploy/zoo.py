"""The model zoo: deploy models (ONNX files) by name, with where each came from, its input sizes and its measured
accuracy, speed and size. deploy/zoo/ZOO.toml is the manifest; every file is checked against its sha256 before
it is loaded. Torch-free: the embedded runtime and the viewer read it."""

from __future__ import annotations

import dataclasses
import logging
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from perception.bev_config import BevConfig
from perception.near_field import NearFieldSettings
from sensors.errors import ChecksumError, ConfigError
from sensors.files import file_sha256, same_file

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 (JetPack 6)
    import tomli as tomllib

log = logging.getLogger(__name__)

ZOO_DIR = Path(__file__).parent / "zoo"
MANIFEST = ZOO_DIR / "ZOO.toml"
TARGETS = ("any", "cpu", "tensorrt")  # which backends a model is built for (int8 artifacts differ per target)

_HEADER = """\
# The deploy model zoo (deploy.zoo): one table per ONNX model that `--model NAME` runs.
#   onnx     - the ONNX file, beside this manifest;  sha256 - of that file, checked before every load
#   parent   - the trained model (perception/weights/MODELS.toml) or zoo model it was made from
#   method   - fp32, int8-ptq, qat-int8, prune-structured, ... ;  options - the method's settings
#   target   - any | cpu | tensorrt: the backends the file is meant for
#   inputs   - input name -> shape (batch 1);  [NAME.bev] - the BEV grid and image size the inputs are built for
#   [NAME.metrics] - measured figures (test mIoU overall and at night, latency, size), with the command behind them
#   [NAME.operating_point] - the near-field bias, memory and echo floor chosen for it on a validation split, the rule's
#                    figures (`nearfield operating-point --register`; `nearfield run --operating-point` uses it)
# Written by `nearfield export` / `nearfield compress` / `nearfield zoo measure`; do not edit sha256 by hand.
"""


@dataclass(frozen=True)
class ZooModel:
    """One manifest entry; `onnx` resolved against the manifest's directory."""

    name: str
    onnx: Path
    sha256: str
    parent: str
    method: str = "fp32"
    target: str = "any"
    bev: BevConfig = field(default_factory=BevConfig)
    inputs: dict[str, tuple[int, ...]] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    notes: str = ""
    operating_point: dict[str, Any] = field(default_factory=dict)

    @property
    def size_bytes(self) -> int:
        return self.onnx.stat().st_size if self.onnx.is_file() else 0

    def verified_onnx(self) -> Path:
        """The ONNX path after checking the file against the manifest's sha256: ChecksumError if it is missing,
        damaged or replaced."""
        if not self.onnx.is_file():
            raise ChecksumError(f"zoo model {self.name}: file {self.onnx} is missing; rebuild it with "
                                f"`nearfield export --model {self.parent}` or restore it from git")
        actual = file_sha256(self.onnx)
        if actual != self.sha256:
            raise ChecksumError(f"zoo model {self.name}: {self.onnx} has sha256 {actual[:16]}..., the manifest "
                                f"records {self.sha256[:16]}...; the file is damaged or was replaced; restore it "
                                "or re-register it")
        return self.onnx

    def to_table(self) -> dict[str, Any]:
        t: dict[str, Any] = {"onnx": self.onnx.name, "sha256": self.sha256, "parent": self.parent,
                             "method": self.method, "target": self.target, "bev": self.bev.to_dict(),
                             "inputs": {k: list(v) for k, v in self.inputs.items()}}
        if self.options:
            t["options"] = dict(self.options)
        if self.metrics:
            t["metrics"] = dict(self.metrics)
        if self.notes:
            t["notes"] = self.notes
        if self.operating_point:
            t["operating_point"] = dict(self.operating_point)
        return t

    def operating_settings(self) -> NearFieldSettings:
        """The near-field settings of the operating point registered for this model (absent keys: the argmax, no
        memory, no echo floor); a ConfigError when none is registered."""
        if not self.operating_point:
            raise ConfigError(f"zoo model {self.name} has no registered operating point; choose one on a validation "
                              f"split with `nearfield operating-point --model {self.parent} --data data/val-paired "
                              f"--memory --echo-floor --register {self.name}`, or give --free-confidence / --memory / "
                              "--echo-floor")
        return _settings_of(self.operating_point)

    def near_field_settings(self, operating_point: bool, flags: NearFieldSettings, command: str) -> NearFieldSettings:
        """What a COMMAND runs this model with: the registered operating point when OPERATING_POINT (a ConfigError if
        any of the flags is given too: one or the other), else the FLAGS."""
        if not operating_point:
            return flags
        if not flags.plain:
            raise ConfigError(f"{command}: --operating-point brings its own bias, memory and echo floor; give it "
                              "without --free-confidence, --memory and --echo-floor")
        return self.operating_settings()



def unlisted(onnx: str | Path, like: ZooModel) -> ZooModel:
    """A ZooModel for an ONNX file outside the zoo (a candidate, an older build), with LIKE's BEV configuration and
    inputs, named LIKE@FILE; its checksum is the file's own. ConfigError when the file is not there."""
    path = Path(onnx)
    if not path.is_file():
        raise ConfigError(f"{path}: no such ONNX file")
    return replace(like, name=f"{like.name}@{path.name}", onnx=path, sha256=file_sha256(path), metrics={})


def read_zoo(manifest: str | Path = MANIFEST, required: bool = False) -> dict[str, ZooModel]:
    """The manifest's models by name, in file order (an absent manifest: none). A malformed entry is a
    ConfigError naming the manifest and the entry. REQUIRED: a manifest that is absent or lists no model is a
    ConfigError too (one named on the command line: a mistyped path is not an empty zoo)."""
    manifest = Path(manifest)
    if not manifest.is_file():
        if required:
            raise ConfigError(f"{manifest}: no such zoo manifest; give the path of an existing one, or leave out "
                              f"--manifest for the shipped {MANIFEST}")
        return {}
    try:
        data = tomllib.loads(manifest.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"{manifest}: unreadable zoo manifest ({e}); restore it from git") from None
    out = {}
    for name, t in data.items():
        where = f"{manifest} [{name}]"
        if not isinstance(t, dict) or not all(isinstance(t.get(k), str) for k in ("onnx", "sha256", "parent")):
            raise ConfigError(f"{where}: needs string fields onnx, sha256 and parent")
        for key, kind, what in (("method", str, "a string"), ("notes", str, "a string"), ("options", dict, "a table"),
                                ("metrics", dict, "a table")):
            if key in t and not isinstance(t[key], kind):
                raise ConfigError(f"{where}: {key} must be {what}, got {t[key]!r}")
        target = t.get("target", "any")
        if not isinstance(target, str) or target not in TARGETS:
            raise ConfigError(f"{where}: target {target!r} is not one of {', '.join(TARGETS)}")
        inputs = t.get("inputs", {})
        if not isinstance(inputs, dict) or not all(
                isinstance(v, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in v)
                for v in inputs.values()):
            raise ConfigError(f"{where}: inputs must map input names to lists of whole numbers (shapes)")
        bev = BevConfig.from_dict(t.get("bev", {}), source=where)
        point = checked_operating_point(t.get("operating_point", {}), where)
        out[name] = ZooModel(name, manifest.parent / t["onnx"], t["sha256"], t["parent"], t.get("method", "fp32"),
                             target, bev, {k: tuple(v) for k, v in inputs.items()}, dict(t.get("options", {})),
                             dict(t.get("metrics", {})), t.get("notes", ""), point)
    if required and not out:
        raise ConfigError(f"{manifest}: the zoo manifest lists no model; register one (`nearfield export --register "
                          "NAME`) or give another manifest")
    return out


def checked_operating_point(point: Any, where: str) -> dict[str, Any]:
    """An [operating_point] table: its free_confidence, memory_decay and echo_floor, where present, valid (the
    argmax, no memory and no echo floor where absent); a ConfigError naming WHERE otherwise."""
    if not isinstance(point, dict):
        raise ConfigError(f"{where}: operating_point must be a table (free_confidence, memory_decay, echo_floor, ...)")
    try:
        _settings_of(point)
    except ConfigError as e:
        raise ConfigError(f"{where}: operating_point: {e}") from None
    return dict(point)


def _settings_of(point: dict[str, Any]) -> NearFieldSettings:
    return NearFieldSettings(point.get("free_confidence"), point.get("memory_decay"), point.get("echo_floor", False))


def set_operating_point(name: str, point: dict[str, Any], manifest: str | Path = MANIFEST) -> ZooModel:
    """Record POINT (free_confidence and memory_decay where used, and how they were chosen) as NAME's operating
    point, replacing any earlier one."""
    models = read_zoo(manifest)
    model = get_model(name, manifest)
    models[name] = replace(model, operating_point=checked_operating_point(point, f"zoo model {name}"))
    write_zoo(models, manifest)
    return models[name]


def list_models(manifest: str | Path = MANIFEST) -> list[str]:
    return list(read_zoo(manifest))


def get_model(name: str, manifest: str | Path = MANIFEST) -> ZooModel:
    """The zoo model NAME; ConfigError listing the known names if there is none."""
    models = read_zoo(manifest)
    if name not in models:
        known = ", ".join(models) or "none yet"
        raise ConfigError(f"unknown deploy model {name!r}; the zoo ({manifest}) has: {known}. `nearfield zoo list` "
                          "shows them")
    return models[name]


def register(model: ZooModel, manifest: str | Path = MANIFEST, replace: bool = False) -> ZooModel:
    """Add MODEL to the manifest (its file must already sit beside the manifest). The sha256 is computed here from
    the file, never taken on trust. A name the zoo has already is a ConfigError unless REPLACE (check_new_names);
    replacing keeps the old entry's figures and operating point only when the file is the same, and says what it
    drops (carried_over). A file another entry points at is a ConfigError."""
    manifest = Path(manifest)
    check_zoo_name(model.name)
    if model.onnx.parent.resolve() != manifest.parent.resolve():
        raise ConfigError(f"zoo model {model.name}: {model.onnx} must sit beside the manifest {manifest}")
    if model.target not in TARGETS:
        raise ConfigError(f"zoo model {model.name}: target {model.target!r} is not one of {', '.join(TARGETS)}")
    check_new_names([model.name], manifest, replace)
    check_own_file(model.onnx, model.name, manifest)
    models = read_zoo(manifest)
    model = dataclasses.replace(model, sha256=file_sha256(model.onnx))
    if model.name in models:
        model = carried_over(models[model.name], model, models, manifest)
    models[model.name] = model  # a replaced entry keeps its place in the file
    write_zoo(models, manifest)
    return model


def check_new_names(names: Iterable[str], manifest: str | Path = MANIFEST, replace: bool = False) -> None:
    """ConfigError for the first of NAMES the zoo has already, unless REPLACE: registering it would drop what its
    entry records (file, figures, operating point), so replacing is asked for explicitly or the entry renamed first.
    Commands call it before any work, so that a refusal costs nothing."""
    if replace:
        return
    models = read_zoo(manifest)
    for name in names:
        old = models.get(name)
        if old is None:
            continue
        has = [f"{old.method}", f"file {old.onnx.name}", f"parent {old.parent}"]
        if measured(old.metrics):
            has.append("measured figures")
        if old.operating_point:
            has.append("an operating point")
        # An export of the trained model of the same name: that one may be kept under the new name too.
        trained = " [--with-trained]" if old.parent == name else ""
        raise ConfigError(f"zoo model {name} is in {manifest} already ({', '.join(has)}); give --replace to replace "
                          f"it (what was measured on its file is dropped), or keep it under another name first: "
                          f"`nearfield zoo rename {name} {name}-old{trained}`")


def check_own_file(path: str | Path, name: str | None, manifest: str | Path = MANIFEST) -> None:
    """ConfigError when PATH is the file of a zoo model other than NAME (None: of any zoo model) in MANIFEST: writing
    it would leave that entry with a file its sha256 no longer matches."""
    for other, m in read_zoo(manifest).items():
        if other != name and same_file(m.onnx, path):
            raise ConfigError(f"{path}: is the file of zoo model {other} ({manifest}); writing it would break that "
                              "entry: choose another file name")


# Figures that describe the file's export rather than a measurement of the model (recomputed by every export).
EXPORT_FIGURES = ("parity_max_abs", "parity_agreement")


def measured(metrics: dict[str, Any]) -> list[str]:
    return [k for k in metrics if k not in EXPORT_FIGURES]


def carried_over(old: ZooModel, new: ZooModel, models: dict[str, ZooModel], manifest: Path) -> ZooModel:
    """NEW, replacing OLD of the same name: with the same file (sha256), OLD's figures, operating point and notes
    still hold and are kept (NEW's figures win); with another file they were measured on what is gone and are dropped,
    with a warning naming them, the entries made from OLD and a changed parent."""
    if new.sha256 == old.sha256:
        log.info("zoo model %s: the same file as before; its figures and operating point are kept", new.name)
        return dataclasses.replace(new, metrics={**old.metrics, **new.metrics},
                                   operating_point=new.operating_point or old.operating_point,
                                   notes=new.notes or old.notes)
    dropped = []
    if measured(old.metrics):
        dropped.append(f"figures ({', '.join(measured(old.metrics))})")
    if old.operating_point and not new.operating_point:
        dropped.append("operating point (" + ", ".join(f"{k} {old.operating_point[k]}" for k in
                                                      ("free_confidence", "memory_decay", "echo_floor")
                                                      if k in old.operating_point) + ")")
    lines = [f"{manifest}: zoo model {new.name} replaced: file {old.onnx.name} (sha256 {old.sha256[:12]}...) -> "
             f"{new.onnx.name} (sha256 {new.sha256[:12]}...)"]
    if dropped:
        lines.append(f"dropped what was measured on the old file: {'; '.join(dropped)}; measure it again "
                     f"(`nearfield zoo measure {new.name} --data ...`"
                     + (f", `nearfield operating-point --model {new.parent} --data ... --register {new.name}`"
                        if old.operating_point else "") + ")")
    if old.parent != new.parent:
        lines.append(f"parent {old.parent} -> {new.parent}")
    children = [n for n, m in models.items() if n != new.name and (m.parent == new.name or new.name in
                                                                   _references(m.options))]
    if children:
        lines.append(f"made from the old file and still naming it: {', '.join(children)} (remake them, or rename "
                     "the old entry first to keep the pair)")
    log.warning("; ".join(lines))
    return new


def _references(options: dict[str, Any]) -> list[str]:
    out = []
    for key in ZOO_REFERENCE_OPTIONS:
        value = options.get(key)
        out += value if isinstance(value, list) else [value] if isinstance(value, str) else []
    return out


def update_metrics(name: str, metrics: dict[str, Any], manifest: str | Path = MANIFEST) -> ZooModel:
    """Merge measured figures into NAME's [metrics] table."""
    models = read_zoo(manifest)
    model = get_model(name, manifest)
    models[name] = replace(model, metrics={**model.metrics, **metrics})
    write_zoo(models, manifest)
    return models[name]


def rename(old: str, new: str, manifest: str | Path = MANIFEST, trained_manifest: str | Path | None = None) -> None:
    """Give zoo model OLD the name NEW, keeping its file, checksum and figures (e.g. to keep a model's previous revision
    when a new one takes its name). Entries whose parent is OLD follow it, and so do the options that name it
    (teachers, baseline), and the stored measure commands, so that rerunning them re-measures this model. With
    `trained_manifest`, the trained model OLD there (perception/weights/MODELS.toml), if
    any, is renamed too, and the `trained` options with it, so that names keep meaning one thing in both manifests."""
    models = read_zoo(manifest)
    get_model(old, manifest)
    if new in models:
        raise ConfigError(f"zoo rename: {new!r} is already a zoo model ({manifest})")
    check_zoo_name(new)
    keys = ZOO_REFERENCE_OPTIONS
    trained_renamed = False
    if trained_manifest is not None:
        from perception.registry import read_manifest, rename_trained

        if old in read_manifest(trained_manifest):
            rename_trained(old, new, trained_manifest)
            keys += TRAINED_REFERENCE_OPTIONS
            trained_renamed = True
    out = {}
    for name, m in models.items():
        options = renamed_references(m.options, old, new, keys)
        # A zoo model is not its own parent: OLD's own parent OLD is the trained model of that name, which keeps its
        # name unless it was renamed too (NEW would name no trained model). Other entries' parent OLD is this model.
        follows = m.parent == old and (name != old or trained_renamed)
        m = replace(m, parent=new if follows else m.parent, options=options)
        if name == old:
            m = replace(m, name=new, metrics=renamed_commands(m.metrics, old, new),
                        operating_point=renamed_operating_point(m.operating_point, old, new, trained_renamed))
        out[new if name == old else name] = m
    write_zoo(out, manifest)


# The method options that name other models, so that a rename rewrites them and they keep meaning the model that was
# used: zoo models (distillation teachers, the E2GC baseline; `compress` resolves them in the zoo first) and trained
# models (the one behind an E2GC entry; rewritten only when the trained model of that name is renamed too).
ZOO_REFERENCE_OPTIONS = ("teachers", "baseline")
TRAINED_REFERENCE_OPTIONS = ("trained",)


def renamed_references(options: dict[str, Any], old: str, new: str, keys: tuple[str, ...]) -> dict[str, Any]:
    out = dict(options)
    for key in keys:
        value = out.get(key)
        if value == old:
            out[key] = new
        elif isinstance(value, list):
            out[key] = [new if v == old else v for v in value]
    return out


MEASURE_COMMANDS = ("command", "accuracy_command")


def renamed_commands(metrics: dict[str, Any], old: str, new: str) -> dict[str, Any]:
    """The `nearfield zoo measure OLD ...` commands stored with OLD's figures, naming NEW instead."""
    out = dict(metrics)
    for key in MEASURE_COMMANDS:
        words = str(out.get(key, "")).split(" ")
        if words[:4] == ["nearfield", "zoo", "measure", old]:
            out[key] = " ".join([*words[:3], new, *words[4:]])
    return out


def renamed_operating_point(point: dict[str, Any], old: str, new: str, trained_renamed: bool) -> dict[str, Any]:
    """OLD's registered operating point, renamed with it: the command's `--register OLD` names NEW; the trained model
    it was chosen with (`chosen_with`, `--model`) only where that was renamed too (`--with-trained`), so that the
    record names the model the point was really chosen on and rerunning its command chooses it again."""
    if not point:
        return point
    out = dict(point)
    renames = {"--register": True, "--model": trained_renamed}
    words = str(out.get("command", "")).split(" ")
    for i in range(len(words) - 1):
        if renames.get(words[i]) and words[i + 1] == old:
            words[i + 1] = new
    if "command" in out:
        out["command"] = " ".join(words)
    if trained_renamed and out.get("chosen_with") == old:
        out["chosen_with"] = new
    return out


def check_zoo_name(name: str) -> None:
    if not name or any(c in name for c in "/\\ \"'[].="):
        raise ConfigError(f"zoo model name {name!r} must be non-empty, without spaces, quotes, dots, "
                          "brackets or slashes")


def remove(name: str, manifest: str | Path = MANIFEST) -> None:
    models = read_zoo(manifest)
    get_model(name, manifest)
    del models[name]
    write_zoo(models, manifest)


def write_zoo(models: dict[str, ZooModel], manifest: str | Path = MANIFEST) -> None:
    import tomli_w

    manifest = Path(manifest)
    manifest.parent.mkdir(parents=True, exist_ok=True)
    body = tomli_w.dumps({name: m.to_table() for name, m in models.items()})
    tmp = manifest.with_suffix(".toml.tmp")
    tmp.write_text(_HEADER + ("\n" + body if models else ""))
    tmp.replace(manifest)  # a crash mid-write never leaves half a manifest


def verify_zoo(manifest: str | Path = MANIFEST) -> dict[str, bool]:
    """Per model: does its file exist and match its sha256."""
    return {name: m.onnx.is_file() and file_sha256(m.onnx) == m.sha256 for name, m in read_zoo(manifest).items()}


__all__ = ["EXPORT_FIGURES", "MANIFEST", "TARGETS", "ZOO_DIR", "ZooModel", "carried_over", "check_new_names",
           "check_own_file", "get_model", "list_models", "measured", "read_zoo", "register", "remove", "rename",
           "set_operating_point", "unlisted", "update_metrics", "verify_zoo", "write_zoo"]
