"""Files a user hands over: drive logs found from paths and directories, the sha256 every model, weights and log
file is checked against, and the check that an output path is none of a command's inputs. Torch-free: training, the
zoo and the embedded runtime share it."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

from sensors.errors import ConfigError


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks (model files are tens of MB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def find_logs(paths: Iterable[str | Path] | str | Path, split: str | None = None) -> list[Path]:
    """Log files from logs and directories: a directory gives its *.mcap files, sorted, or those of its SPLIT
    sub-folder when it has one (a data directory with train/, val/, test/). ConfigError naming the path when a
    path does not exist or a directory holds no log."""
    paths = [paths] if isinstance(paths, str | Path) else list(paths)
    logs: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            folder = p / split if split and (p / split).is_dir() else p
            found = sorted(folder.glob("*.mcap"))
            if not found:
                also = f" (nor a {split}/ folder of them)" if split else ""
                raise ConfigError(f"{p}: directory holds no *.mcap drive log{also}; simulate some with "
                                  "`nearfield simulate`")
            logs += found
        elif p.is_file():
            logs.append(p)
        else:
            raise ConfigError(f"{p}: no such log file or directory")
    if not logs:
        raise ConfigError("no drive logs given")
    return logs


def same_file(a: str | Path, b: str | Path) -> bool:
    """Whether A and B name one file: the same inode when both exist (a hard or symbolic link, `..` in the path),
    else the same resolved path."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        try:
            return Path(a).resolve() == Path(b).resolve()
        except (OSError, RuntimeError):  # a symbolic link loop
            return False


def refuse_overwrite(outputs: Iterable[str | Path] | str | Path, inputs: Iterable[str | Path | None],
                     option: str = "--out") -> None:
    """ConfigError naming OPTION and both paths when an output is one of the command's INPUTS (the same file under
    another name included): writers create their file empty, so the input would be gone before it is read. Call it
    before the first output is opened; None among the inputs is skipped."""
    outputs = [outputs] if isinstance(outputs, str | Path) else list(outputs)
    inputs = [i for i in inputs if i is not None]
    for out in outputs:
        for inp in inputs:
            if same_file(out, inp):
                also = "" if Path(out) == Path(inp) else f" (the same file as the input {inp})"
                raise ConfigError(f"{option} {out}: is an input of this command{also}; writing it would destroy "
                                  "the input: choose another output path")


__all__ = ["file_sha256", "find_logs", "refuse_overwrite", "same_file"]
