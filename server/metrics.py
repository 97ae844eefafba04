"""Prometheus metrics (docs/DESIGN.md §6), prefix `brainstacks_`, in a registry per app so several apps can live in
one process."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.samples import Sample

from brainstacks.config import RouterConfig

_LAT = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_TPOT = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
# 0, the serving policy's default cut (weights at or below it are skipped), then tenths
_WEIGHT = tuple(sorted({0.0, RouterConfig.min_weight, *(k / 10 for k in range(2, 11))}))


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        p = "brainstacks_"
        self.requests = Counter(p + "requests", "HTTP requests by endpoint and status.", ["endpoint", "status"],
                                registry=r)
        self.ttft = Histogram(p + "time_to_first_token_seconds", "Arrival to first generated token.", buckets=_LAT,
                              registry=r)
        self.tpot = Histogram(p + "time_per_output_token_seconds", "Mean time per output token after the first.",
                              buckets=_TPOT, registry=r)
        self.e2e = Histogram(p + "e2e_request_latency_seconds", "Arrival to last token of a completion.", buckets=_LAT,
                             registry=r)
        self.queue = Histogram(p + "queue_time_seconds", "Arrival to admission into the running batch.", buckets=_LAT,
                               registry=r)
        self.route_time = Histogram(p + "routing_time_seconds", "Router pass per request (share of a batched pass).",
                                    buckets=_TPOT, registry=r)
        self.prompt_tokens = Counter(p + "prompt_tokens", "Prompt tokens processed.", registry=r)
        self.generation_tokens = Counter(p + "generation_tokens", "Tokens generated.", registry=r)
        self.running = Gauge(p + "running_requests", "Rows in the running batch.", registry=r)
        self.waiting = Gauge(p + "waiting_requests", "Rows waiting for a batch slot.", registry=r)
        self.batch_size = Histogram(p + "batch_size", "Rows per decode step.",
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=r)
        self.step_phase = Counter(p + "step_phase_seconds", "Seconds spent per phase of the engine step and of the "
                                  "API's per-token work (server/steptimer.py).", ["phase"], registry=r)
        self.engine_steps = Counter(p + "engine_steps", "Engine steps (kind all) and decode steps (kind decode).",
                                    ["kind"], registry=r)
        self.loop_wakeups = Counter(p + "event_loop_wakeups", "Times the event loop was woken to apply engine events.",
                                    registry=r)
        self.router_weight = Histogram(p + "router_weight", "Serving weight per domain and request.", ["domain"],
                                       buckets=_WEIGHT, registry=r)
        self.stacks_loaded = Gauge(p + "stacks_loaded", "Frozen stacks loaded.", registry=r)
        self.domains_loaded = Gauge(p + "domains_loaded", "Domains loaded.", registry=r)
        self.bundle_version = Gauge(p + "bundle_version", "Manifest version being served.", registry=r)
        self.reloads = Counter(p + "reloads", "Bundle reloads by result.", ["result"], registry=r)
        for res in ("ok", "refused", "unchanged"):
            self.reloads.labels(result=res)

        self.const_labels: dict[str, str] = {}
        self._labelled: CollectorRegistry | None = None

    def label_all(self, labels: dict[str, str]) -> None:
        """Add these labels to every sample rendered (a Ray Serve replica: {"replica": id})."""
        self.const_labels = dict(labels)
        self._labelled = CollectorRegistry()
        self._labelled.register(_Labelled(self.registry, self.const_labels))

    def render(self) -> bytes:
        return generate_latest(self._labelled if self._labelled is not None else self.registry)


class _Labelled:
    """A collector that re-yields another registry's metrics with constant labels added to every sample."""

    def __init__(self, source: CollectorRegistry, labels: dict[str, str]):
        self.source, self.labels = source, labels

    def collect(self):
        for mf in self.source.collect():
            out = Metric(mf.name, mf.documentation, mf.type, mf.unit)
            out.samples = [Sample(s.name, {**s.labels, **self.labels}, s.value, s.timestamp, s.exemplar)
                           for s in mf.samples]
            yield out
