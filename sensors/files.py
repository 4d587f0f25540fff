"""Files a user hands over: drive logs found from paths and directories, and the sha256 every model, weights and
log file is checked against. Torch-free: training, the zoo and the embedded runtime share it."""

from __future__ import annotations

import hashlib
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


__all__ = ["file_sha256", "find_logs"]
