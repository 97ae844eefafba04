"""Presenting a load run: a readable table, the JSON file, and a PNG of latency over the run (matplotlib Agg)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from loadtest.runner import LoadReport


def _ms(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x * 1000:.1f}"


def format_table(report: LoadReport) -> str:
    """The run's figures as aligned text: throughput, then a p50/p95/p99 table in milliseconds, then errors."""
    s = report.summary()
    cfg = report.config
    lines = [
        f"loadtest  {cfg.url}  endpoint={cfg.endpoint}  model={cfg.model}  stream={cfg.stream}  "
        f"concurrency={cfg.concurrency}  max_tokens={cfg.max_tokens}",
        f"requests   {s['requests']} sent, {s['ok']} ok, {s['errors']} failed in {s['wall_s']:.2f} s",
        f"throughput {s['requests_per_s']:.2f} req/s, {s['tokens_per_s']:.1f} generated tok/s "
        f"({s['generated_tokens']} tokens)",
    ]
    if s["usage_missing"]:
        lines.append(f"note       {s['usage_missing']} ok responses had no usage (tokens counted from chunks or 0)")
    lines.append("")
    lines.append(f"{'metric (ms)':<16}{'n':>7}{'mean':>10}{'p50':>10}{'p95':>10}{'p99':>10}{'max':>10}")
    for name, key in (("latency", "latency_s"), ("ttft", "ttft_s"), ("inter-token", "itl_s")):
        st = s[key]
        lines.append(
            f"{name:<16}{st['count']:>7}{_ms(st['mean']):>10}{_ms(st['p50']):>10}{_ms(st['p95']):>10}"
            f"{_ms(st['p99']):>10}{_ms(st['max']):>10}"
        )
    if s["errors_by_kind"]:
        lines.append("")
        lines.append("errors     " + ", ".join(f"{k}: {v}" for k, v in s["errors_by_kind"].items()))
        first = next((r for r in report.results if not r.ok and r.message), None)
        if first is not None:
            lines.append(f"           first: [{first.error}] {first.message}")
    rl = s["reloads"]
    if cfg.reload_every is not None:
        lines.append(
            f"reloads    every {cfg.reload_every:g} s: {rl['attempted']} attempted, {rl['ok']} ok, "
            f"{rl['failed']} failed"
            + (f" ({', '.join(f'{k}: {v}' for k, v in rl['by_result'].items())})" if rl["failed"] else "")
        )
    if s["bundle_versions_seen"]:
        lines.append(f"versions   bundle versions seen in responses: {s['bundle_versions_seen']}")
    return "\n".join(lines)


def _clean(obj):
    """JSON has no NaN/Infinity: write them as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    return obj


def write_json(report: LoadReport, path: str | Path) -> None:
    """The full report (config, summary, reloads, every request) as strict JSON."""
    Path(path).write_text(json.dumps(_clean(report.to_dict()), indent=2, allow_nan=False) + "\n", encoding="utf-8")


def plot_latency(report: LoadReport, path: str | Path) -> None:
    """Latency (and TTFT when streaming) of each request against its completion time; reloads as vertical lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=110)
    ok = [r for r in report.results if r.ok]
    bad = [r for r in report.results if not r.ok]
    ax.scatter([r.t_start + r.latency_s for r in ok], [r.latency_s * 1000 for r in ok], s=10, label="latency (ok)")
    ttft = [r for r in ok if r.ttft_s is not None]
    if ttft:
        ax.scatter([r.t_start + r.ttft_s for r in ttft], [r.ttft_s * 1000 for r in ttft], s=8, marker="x",
                   label="time to first token")
    if bad:
        ax.scatter([r.t_start + r.latency_s for r in bad], [r.latency_s * 1000 for r in bad], s=18, c="red",
                   marker="v", label="failed")
    for i, rl in enumerate(report.reloads):
        ax.axvline(rl.t, color="green" if rl.result == "ok" else "red", ls="--", lw=0.8,
                   label="reload" if i == 0 else None)
    ax.set_xlabel("time since start of run (s)")
    ax.set_ylabel("ms")
    cfg = report.config
    ax.set_title(f"{cfg.url}  concurrency={cfg.concurrency}  stream={cfg.stream}")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
