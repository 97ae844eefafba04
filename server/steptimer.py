"""Always-on per-phase timing of the engine step and of the API side's per-token work.

Each phase accumulates wall seconds (time.perf_counter around it, ~0.1 us per reading) into a plain dict and, when
the server has metrics, into the Prometheus counter `brainstacks_step_phase_seconds_total{phase}`; steps are counted
in `brainstacks_engine_steps_total{kind}` (kind "all": every step that did work, "decode": steps that ran a decode
forward). benchmarks/throughput.py reads the counters from /metrics before and after a load phase and divides the
difference by the decode steps: milliseconds per step and phase.

Engine phases (the model thread): `tasks` (control calls), `route` (the router's base-only pass), `prefill_forward`,
`decode_forward` (the model), `sampling` (token choice and logprobs on the logits' device), `host_sync` (the copy of
the sampled ids / logprobs to the host; on CUDA it also waits for the queued GPU work), `emit` (per-row bookkeeping
and the sinks), `batch_ops` (joining, leaving and trimming the batch's cache); `step` is the whole step, so
`step - sum(phases)` is what no phase covers. API phases (the event loop): `detokenize` (token ids to text, stop
strings), `sse_encode` (building and JSON-encoding the stream's chunks), `wakeup` (applying a batch of events after
the loop was woken); `brainstacks_event_loop_wakeups_total` counts the wake-ups.
"""

from __future__ import annotations

import time
from typing import Any

ENGINE_PHASES = ("tasks", "route", "prefill_forward", "decode_forward", "sampling", "host_sync", "emit", "batch_ops",
                 "step")
API_PHASES = ("detokenize", "sse_encode", "wakeup")
PHASES = ENGINE_PHASES + API_PHASES

clock = time.perf_counter


class StepTimer:
    """Seconds per phase and step counts; `add` is called from one thread per phase (engine or event loop)."""

    def __init__(self, metrics: Any = None):
        self.seconds: dict[str, float] = dict.fromkeys(PHASES, 0.0)
        self.steps = 0
        self.decode_steps = 0
        self.wakeups = 0
        self._children = ({p: metrics.step_phase.labels(phase=p) for p in PHASES} if metrics is not None else None)
        self._steps = metrics.engine_steps.labels(kind="all") if metrics is not None else None
        self._decodes = metrics.engine_steps.labels(kind="decode") if metrics is not None else None
        self._wakeups = metrics.loop_wakeups if metrics is not None else None

    def add(self, phase: str, seconds: float) -> None:
        self.seconds[phase] += seconds
        if self._children is not None:
            self._children[phase].inc(seconds)

    def since(self, phase: str, t0: float) -> float:
        """Add the time since t0 to `phase`; returns the current clock (the next phase's start)."""
        t = clock()
        self.add(phase, t - t0)
        return t

    def step_done(self, decoded: bool) -> None:
        self.steps += 1
        if self._steps is not None:
            self._steps.inc()
        if decoded:
            self.decode_steps += 1
            if self._decodes is not None:
                self._decodes.inc()

    def woke(self) -> None:
        self.wakeups += 1
        if self._wakeups is not None:
            self._wakeups.inc()

    def snapshot(self) -> dict[str, float]:
        return {**self.seconds, "steps": self.steps, "decode_steps": self.decode_steps, "wakeups": self.wakeups}


def breakdown(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Per decode step, in ms, of every phase between two snapshots (or /metrics readings: see
    benchmarks/throughput.py), plus `other` = step minus the engine phases, and the counts."""
    steps = after.get("decode_steps", 0) - before.get("decode_steps", 0)
    out: dict[str, float] = {"decode_steps": steps, "steps": after.get("steps", 0) - before.get("steps", 0),
                             "wakeups": after.get("wakeups", 0) - before.get("wakeups", 0)}
    if not steps:
        return out
    d = {p: (after.get(p, 0.0) - before.get(p, 0.0)) * 1000 / steps for p in PHASES}
    out.update({f"{p} ms": d[p] for p in PHASES})
    out["other ms"] = d["step"] - sum(d[p] for p in ENGINE_PHASES if p != "step")
    out["wakeups/step"] = out["wakeups"] / steps
    return out
