"""sensors.files: log discovery (with a data directory's split), file checksums, outputs that are inputs."""

import hashlib
import os

import pytest

from sensors.errors import ConfigError
from sensors.files import file_sha256, find_logs, refuse_overwrite


def test_find_logs_takes_the_split_of_a_data_directory_and_plain_directories(tmp_path):
    for name in ("test/b.mcap", "test/a.mcap", "train/c.mcap", "loose/d.mcap"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in find_logs(tmp_path, split="test")] == ["a.mcap", "b.mcap"]
    assert [p.name for p in find_logs([tmp_path / "loose", tmp_path / "train/c.mcap"], split="test")] == [
        "d.mcap", "c.mcap"]  # no test/ folder in loose/: its own logs
    with pytest.raises(ConfigError, match=r"holds no \*\.mcap drive log \(nor a val/ folder"):
        find_logs(tmp_path / "test" / "..", split="val")
    with pytest.raises(ConfigError, match="no such log file"):
        find_logs(tmp_path / "missing.mcap")
    with pytest.raises(ConfigError, match="no drive logs given"):
        find_logs([])


def test_file_sha256_reads_large_files_in_blocks(tmp_path):
    data = bytes(range(256)) * 9000  # > 2 MiB: several blocks
    (tmp_path / "f").write_bytes(data)
    assert file_sha256(tmp_path / "f") == hashlib.sha256(data).hexdigest()


def test_refuse_overwrite_knows_an_input_under_any_name(tmp_path):
    (tmp_path / "sub").mkdir()
    log = tmp_path / "drive.mcap"
    log.write_bytes(b"recorded")
    os.link(log, tmp_path / "hard.mcap")
    (tmp_path / "soft.mcap").symlink_to(log)
    for out in (log, tmp_path / "sub" / ".." / "drive.mcap", tmp_path / "hard.mcap", tmp_path / "soft.mcap"):
        with pytest.raises(ConfigError, match=r"^--out .*: is an input of this command.*choose another output path"):
            refuse_overwrite(out, [tmp_path / "other.mcap", log])
    with pytest.raises(ConfigError, match="--json"):
        refuse_overwrite([tmp_path / "r.md", tmp_path / "drive.mcap"], [None, log], "--json")
    (tmp_path / "copy.mcap").write_bytes(b"recorded")  # equal bytes, another file: fine
    refuse_overwrite([tmp_path / "copy.mcap", tmp_path / "new.mcap"], [log, None])
    assert log.read_bytes() == b"recorded"
