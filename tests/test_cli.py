"""The `nearfield` command as a whole: a closed pipe, and the help texts that said what the commands do not do."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from app.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]


def test_a_reader_that_goes_away_ends_the_command_quietly(tmp_path):
    """`nearfield info LOG | head -1` printed "nearfield info: error: Broken pipe" and exited 2."""
    r, w = os.pipe()
    os.close(r)  # the reader is gone before the command writes a byte
    try:
        proc = subprocess.run([sys.executable, "-m", "app.cli", "info", str(ROOT / "tests/replay/drives/day.mcap")],
                              stdout=w, stderr=subprocess.PIPE, cwd=ROOT, timeout=120, check=False)
    finally:
        os.close(w)
    assert proc.stderr == b"" and proc.returncode == 128 + signal.SIGPIPE


def _parser(*path: str):
    """The parser of the subcommand at PATH (e.g. "zoo", "rename")."""
    parser = build_parser()
    for name in path:
        parser = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices[name]
    return parser


def _helps(*path: str) -> dict[str, str | None]:
    """The help of each argument of the subcommand at PATH, by its first option string (or name)."""
    return {a.option_strings[0] if a.option_strings else a.dest: a.help for a in _parser(*path)._actions}


def _command_help(*path: str) -> str:
    """The one-line help of the subcommand at PATH in its parent's listing."""
    sub = next(a for a in _parser(*path[:-1])._actions if a.__class__.__name__ == "_SubParsersAction")
    return next(c.help for c in sub._choices_actions if c.dest == path[-1])


def test_help_texts_say_what_the_commands_do():
    from deploy.replay import REFERENCE_DRIVES

    assert "ultrasonic cycles and odometry" in _command_help("convert", "to-can")
    assert f"the {len(REFERENCE_DRIVES)} reference drives" in _command_help("replay", "make-drives")
    assert all(s.name in _command_help("replay", "make-drives") for s in REFERENCE_DRIVES)
    simulate = _helps("simulate")
    assert "paired presets (test, val-paired, val-close, test-close) the number of scenes" in simulate["--drives"]
    assert "(default demo)" in simulate["--preset"]
    check, update = _helps("replay", "check")["--model"], _helps("replay", "update-refs")["--model"]
    assert "rewrite its reference set" in update and "with check" not in update and check != update
    assert "warning levels" in _helps("report")["--markdown"]
    assert "(default socketcan)" in _helps("record")["--can-interface"]


@pytest.mark.parametrize(("path", "options"), [
    (("eval",), ("--device", "--batch-size")),
    (("run",), ("--no-progress",)),
    (("bench", "sim"), ("--frames", "--workers")),
    (("bench", "decode"), ("--frames",)),
    (("bench", "can"), ("--cycles",)),
    (("zoo", "rename"), ("old", "new")),
])
def test_every_option_has_help(path, options):
    helps = _helps(*path)
    for option in options:
        assert helps[option], f"{' '.join(path)} {option} has no help"


def test_compress_method_list_gives_whole_descriptions(capsys):
    assert main(["compress", "--method", "list"]) == 0
    out = capsys.readouterr().out
    entries: dict[str, str] = {}
    name = ""
    for line in out.splitlines():  # a method's name, then its description wrapped under a hanging indent
        if line.startswith(" "):
            entries[name] += " " + line.strip()
        else:
            name, _, text = line.partition(" ")
            entries[name] = text.strip()
    assert all(entries.values()), [n for n, t in entries.items() if not t]  # qat-int4/8/ternary printed nothing
    assert all(t.endswith(".") for t in entries.values())  # none cut off mid-sentence
    assert "4-bit per-channel weights" in entries["qat-int4"]


def test_bench_sim_says_process_for_one(monkeypatch, capsys):
    import sim_data.simulate

    figures = {"resolution": "640x483", "frames": 1, "stage_ms": {"render": 1.0}, "fps_single_process": 2.0,
               "workers": 1, "fps_parallel": 2.0, "minutes_for_2000_frames": 16.7}
    monkeypatch.setattr(sim_data.simulate, "bench_sim", lambda frames, workers=None: figures)
    assert main(["bench", "sim", "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "frames per second, 1 process " in out and "1 processes" not in out
