"""Pure statistics and parsing for the load generator: percentiles, SSE decoding, OpenAI chunk reading, error buckets.

Nothing here does I/O, so every function is unit-tested on fixed inputs (tests/loadtest/test_loadtest_stats.py).
The runner (runner.py) feeds it lines and timestamps; the report (report.py) prints and saves what it returns.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

DONE = "[DONE]"


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0 <= q <= 100) by linear interpolation between closest ranks (numpy's default).

    Returns None for an empty sequence, so a report can say "no data" rather than invent a zero.
    """
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile q={q!r} is outside [0, 100]")
    if not values:
        return None
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summarize(values: Sequence[float]) -> dict[str, float | int | None]:
    """count, mean, p50, p95, p99, min, max of a sample (None where the sample is empty)."""
    n = len(values)
    return {
        "count": n,
        "mean": (sum(values) / n) if n else None,
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "p99": percentile(values, 99),
        "min": min(values) if n else None,
        "max": max(values) if n else None,
    }


@dataclass
class SSEEvent:
    """One server-sent event: its `event:` name (default "message") and its joined `data:` lines."""

    data: str
    event: str = "message"


@dataclass
class SSEParser:
    """Incremental text/event-stream decoder, fed one line at a time (line terminators already stripped).

    Follows the WHATWG rules that matter here: `data:` lines accumulate (joined by "\\n", one leading space
    removed), a blank line dispatches the event, `:` lines are comments, `event:` names the event, unknown
    fields are ignored. An event with no data line is not dispatched.
    """

    _data: list[str] = field(default_factory=list)
    _event: str = ""

    def feed(self, line: str) -> SSEEvent | None:
        """Consume one line; return the event it completes, if any."""
        if line == "":
            if not self._data:
                self._event = ""
                return None
            ev = SSEEvent(data="\n".join(self._data), event=self._event or "message")
            self._data, self._event = [], ""
            return ev
        if line.startswith(":"):
            return None
        name, sep, value = line.partition(":")
        if not sep:
            value = ""
        elif value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        return None

    def flush(self) -> SSEEvent | None:
        """End of stream: a trailing event without its blank line still counts (servers often omit it at EOF)."""
        return self.feed("")


def parse_sse_lines(lines: Iterable[str]) -> list[SSEEvent]:
    """Decode a whole stream of lines into its events (for tests and offline use)."""
    parser = SSEParser()
    out = [ev for ev in (parser.feed(line) for line in lines) if ev is not None]
    tail = parser.flush()
    if tail is not None:
        out.append(tail)
    return out


@dataclass
class ChunkInfo:
    """What one OpenAI completion chunk (or non-streamed body) tells the load generator."""

    text: str = ""  # generated text in this chunk, over all choices (completions `text` or chat `delta.content`)
    usage: dict | None = None  # the `usage` object when present (the last chunk with include_usage)
    error: str | None = None  # message of an in-band `{"error": {...}}` object
    bundle_version: int | None = None  # the Brainstacks extension, when the server sends it


def read_chunk(payload: dict) -> ChunkInfo:
    """Extract text, usage, in-band error and bundle version from a completions or chat.completions object."""
    if not isinstance(payload, dict):
        return ChunkInfo(error=f"chunk is {type(payload).__name__}, not an object")
    err = payload.get("error")
    if err is not None:
        msg = err.get("message") if isinstance(err, dict) else str(err)
        return ChunkInfo(error=str(msg))
    parts: list[str] = []
    for choice in payload.get("choices") or []:
        if not isinstance(choice, dict):
            continue
        if isinstance(choice.get("text"), str):
            parts.append(choice["text"])
        for key in ("delta", "message"):
            body = choice.get(key)
            if isinstance(body, dict) and isinstance(body.get("content"), str):
                parts.append(body["content"])
    usage = payload.get("usage")
    bs = payload.get("brainstacks")
    version = bs.get("bundle_version") if isinstance(bs, dict) else None
    return ChunkInfo(
        text="".join(parts),
        usage=usage if isinstance(usage, dict) else None,
        bundle_version=version if isinstance(version, int) else None,
    )


def parse_event_data(data: str) -> ChunkInfo | None:
    """Decode one SSE `data` payload; None for the `[DONE]` sentinel. Malformed JSON is an in-band error."""
    if data.strip() == DONE:
        return None
    try:
        payload = json.loads(data)
    except json.JSONDecodeError as e:
        return ChunkInfo(error=f"malformed chunk JSON: {e.msg}")
    return read_chunk(payload)


def error_kind(status: int | None = None, exc: BaseException | None = None, note: str | None = None) -> str:
    """The bucket an error is counted in: `http_<status>`, the exception's class name, or a protocol note.

    Precedence: an exception wins (the status may be unknown), then an HTTP error status, then the note
    (`stream_error`, `incomplete_stream`, `bad_json`, ...). A 2xx/3xx status with nothing else is not an error.
    """
    if exc is not None:
        return type(exc).__name__
    if status is not None and status >= 400:
        return f"http_{status}"
    if note:
        return note
    raise ValueError("error_kind needs an exception, an HTTP error status or a note")


def gaps(times: Sequence[float]) -> list[float]:
    """Successive differences of increasing timestamps (inter-token latency from chunk arrival times)."""
    return [b - a for a, b in zip(times[:-1], times[1:], strict=True)]
