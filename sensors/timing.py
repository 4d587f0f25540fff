"""Per-stage timing and plain-text tables for benchmarks and the runtime's latency reports."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from contextlib import contextmanager


class StageTimer:
    """Accumulates wall time per named stage: `with timer.stage("render"): ...`."""

    def __init__(self):
        self.total: dict[str, float] = defaultdict(float)
        self.count: dict[str, int] = defaultdict(int)

    @contextmanager
    def stage(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.total[name] += time.perf_counter() - t0
            self.count[name] += 1

    def mean_ms(self) -> dict[str, float]:
        return {k: 1e3 * v / max(self.count[k], 1) for k, v in self.total.items()}


@contextmanager
def maybe_stage(timer: StageTimer | None, name: str):
    if timer is None:
        yield
    else:
        with timer.stage(name):
            yield


def format_table(rows: Sequence[Sequence[object]], header: Sequence[str]) -> str:
    """A Markdown table (reads well in a terminal and pastes into the README)."""

    def cell(v: object) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
        return str(v)

    text = [[cell(v) for v in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in text)) if text else len(h) for i, h in enumerate(header)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"  # noqa: E731
    out = [line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in text]
    return "\n".join(out)


def machine_description() -> str:
    """One line naming the machine a benchmark ran on."""
    import os
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for ln in f:
                if ln.startswith("model name"):
                    cpu = ln.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, {platform.system()}"
