"""What LogReader hands back besides the data: a message in nearfield types (LogMessage), where a log stops being
readable (LogDamage), and the per-topic and whole-log summary that `nearfield info` prints (TopicSummary,
LogSummary). Split out of sensors.log, which re-exports them."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from sensors.bev import BevGrid


@dataclass(frozen=True)
class LogMessage:
    """One message in nearfield types: CameraImage (JPEG, rgb None), FisheyeCamera, UssCycle, Odometry,
    GroundTruth, list[ObjectBox], ConditionRecord; the raw protobuf message on other topics. `grid`: the BevGrid of grid
    topics (/gt/occupancy)."""

    topic: str
    stamp_ns: int
    value: Any
    grid: BevGrid | None = None


@dataclass(frozen=True)
class LogDamage:
    """Where a log stops being readable, or a message that does not decode."""

    file: str
    offset: int  # byte offset where the damage starts
    reason: str
    kind: str = "corrupt"  # "truncated" (cut off), "corrupt" (bytes that do not parse), "undecodable" (one message)
    chunk: int | None = None  # number of the chunk in file order
    last_good_ns: int | None = None  # the latest message stamp read before the damage (file order)
    topic: str | None = None
    stamp_ns: int | None = None

    def __str__(self) -> str:
        where = [f"byte {self.offset}"]
        if self.chunk is not None:
            where.append(f"chunk {self.chunk}")
        if self.topic:
            where.append(f"topic {self.topic}")
        if self.stamp_ns is not None:
            where.append(f"at {self.stamp_ns} ns")
        text = f"{self.file}: {self.reason} ({', '.join(where)})"
        if self.last_good_ns is not None:
            text += f"; last good message at {self.last_good_ns} ns"
        elif self.kind != "undecodable":
            text += "; no message before it"
        return text


@dataclass
class TopicSummary:
    topic: str
    schema: str
    count: int
    first_ns: int | None
    last_ns: int | None

    @property
    def rate_hz(self) -> float:
        if self.count < 2 or self.first_ns is None or self.last_ns is None or self.last_ns <= self.first_ns:
            return 0.0
        return (self.count - 1) / ((self.last_ns - self.first_ns) / 1e9)


@dataclass
class LogSummary:
    """What `nearfield info` prints: topics, time span, conditions with frame counts, rig, metadata, damage."""

    path: str
    rig_name: str | None
    metadata: dict[str, str]
    topics: dict[str, TopicSummary]
    start_ns: int | None
    end_ns: int | None
    conditions: dict[str, int]  # label -> frames it covers
    frames: int  # frames counted for `conditions` (images of the busiest camera)
    indexed: bool  # read through the summary indexes (False: read linearly)
    damage: list[LogDamage] = field(default_factory=list)

    @property
    def duration_s(self) -> float:
        return 0.0 if self.start_ns is None else (self.end_ns - self.start_ns) / 1e9

    @property
    def message_count(self) -> int:
        return sum(t.count for t in self.topics.values())

    @property
    def truncated(self) -> bool:
        return any(d.kind == "truncated" for d in self.damage)

    def format(self) -> str:
        lines = [f"log        {self.path}", f"rig        {self.rig_name or '(none)'}"]
        if self.start_ns is None:
            lines.append("messages   none readable")
        else:
            start = f"{self.start_ns / 1e9:.9f} s"
            if self.start_ns > 946684800 * 10**9:  # looks like Unix time: show the date as well
                start += datetime.fromtimestamp(self.start_ns / 1e9, timezone.utc).strftime(" (%Y-%m-%d %H:%M:%S UTC)")
            how = "indexed" if self.indexed else "read linearly: no usable summary section"
            lines += [f"start      {start}", f"duration   {self.duration_s:.3f} s",
                      f"messages   {self.message_count} in {len(self.topics)} topics ({how})", ""]
            width = max(len(t) for t in self.topics)
            lines.append(f"{'topic':<{width}}  {'count':>7}  {'rate':>9}  schema")
            for t in sorted(self.topics.values(), key=lambda t: t.topic):
                rate = f"{t.rate_hz:>6.1f} Hz" if t.count > 1 else f"{'-':>9}"
                lines.append(f"{t.topic:<{width}}  {t.count:>7}  {rate}  {t.schema}")
        lines.append("")
        if self.conditions:
            lines.append(f"conditions (frames of {self.frames})")
            lines += [f"  {label:<24} {n}" for label, n in sorted(self.conditions.items())]
        else:
            lines.append("conditions none recorded")
        if self.metadata:
            lines += ["", "metadata"] + [f"  {k}: {v}" for k, v in sorted(self.metadata.items())]
        if self.damage:
            lines.append("")
            state = "TRUNCATED" if self.truncated else "DAMAGED"
            lines.append(f"{state}: everything listed above is readable; the file is damaged at:")
            lines += [f"  {d}" for d in self.damage[:20]]
            if len(self.damage) > 20:
                lines.append(f"  ... and {len(self.damage) - 20} more")
        return "\n".join(lines)


__all__ = ["LogDamage", "LogMessage", "LogSummary", "TopicSummary"]
