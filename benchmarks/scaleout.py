"""Scale-out benchmark (issue 12): tokens/s with 1 and 2 Ray Serve replicas, the latency Ray's proxy adds, and a
rollout under load.

    python -m benchmarks.scaleout [--quick] [--json PATH] [--workdir DIR] [--threads N]

One run, servers one at a time (each has the machine to itself), all on 127.0.0.1:
  1. a tiny bundle built through the library (benchmarks.throughput.build_tiny_bundle: random Llama base carried
     in the bundle, 2 domains, a random router) published as a versioned bundle (BUNDLE/versions/1 + CURRENT);
  2. `brainstacks serve` (direct), then `brainstacks serve --ray --replicas 1`, then `--replicas 2` (each a fresh local
     Ray, 1 CPU reserved per replica), each driven with loadtest's code:
       - `clients` streaming clients for `load_s` seconds: tokens/s and latency;
       - 1 client, non-streaming, 1 token, for `probe_s` seconds: the per-request latency, whose p50 difference
         (Ray, 1 replica - direct) is what the proxy adds;
     and, with 2 replicas, the same load while a new version is published and rolled out (POST /admin/reload
     every `reload_every` s): failed requests are counted.
Each server runs torch with `--threads` intra-op threads (default 1) per replica. On the 2-core machines here the
load generator, Ray's proxy and controller share the cores with the replicas, so 2 replicas cannot be expected to
double anything: the figures say what one machine gives, not what a cluster of them would (docs/SCALE_OUT.md derives
the capacity plan from the per-replica figure).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from benchmarks.bundles import build_tiny_bundle
from benchmarks.common import Target, benchmark_parser, machine_info, print_table, print_targets, ratio, write_report
from benchmarks.servers import ServerProcess, free_port, load, row


@dataclass
class Plan:
    clients: int
    max_tokens: int
    load_s: float
    probe_s: float
    reload_every: float


QUICK = Plan(clients=8, max_tokens=32, load_s=15, probe_s=8, reload_every=4)
FULL = Plan(clients=16, max_tokens=64, load_s=40, probe_s=20, reload_every=8)


def publish_next(work: Path, shared: Path) -> int:
    """A new version for the rollout: the working copy's manifest with version + 1, published (CURRENT switched)."""
    from brainstacks.bundle import read_manifest, write_manifest
    from brainstacks.versions import publish_version

    m = read_manifest(work)
    m.version += 1
    write_manifest(work, m)
    publish_version(shared, src=work)
    return m.version


def serve_cmd(shared: Path, port: int, threads: int, replicas: int | None) -> list[str]:
    cmd = [sys.executable, "-m", "brainstacks_cli", "serve", "--bundle", str(shared), "--port", str(port),
           "--quantize", "none", "--threads", str(threads), "--max-batch", "16", "--log-level", "warning"]
    if replicas is not None:
        cmd += ["--ray", "--replicas", str(replicas), "--ray-num-cpus", "1"]
    return cmd


def main(argv: list[str] | None = None) -> int:
    parser = benchmark_parser("scaleout", __doc__)
    parser.add_argument("--workdir", default=None, help="keep the bundle and server logs here")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads per server / replica")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    scratch = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bs-scaleout-"))
    scratch.mkdir(parents=True, exist_ok=True)
    work, shared = scratch / "work", scratch / "shared"
    for d in (work, shared):
        shutil.rmtree(d, ignore_errors=True)
    from brainstacks.versions import publish_version

    build_tiny_bundle(work)
    publish_version(shared, src=work)
    env = {"TOKENIZERS_PARALLELISM": "false", "RAY_USAGE_STATS_ENABLED": "0"}
    rows: list[dict] = []
    figures: dict[str, dict] = {}
    try:
        for name, replicas in (("direct", None), ("ray 1 replica", 1), ("ray 2 replicas", 2)):
            port = free_port()
            srv = ServerProcess(name, serve_cmd(shared, port, args.threads, replicas), port,
                                scratch / f"{name.replace(' ', '_')}.log", env)
            with srv:
                print(f"{name}: ready in {srv.ready_s:.1f} s at {srv.url}", flush=True)
                main_load = load(srv.url, plan.clients, plan.load_s, plan.max_tokens, stream=True)
                rows.append({"server": name, **row(f"{plan.clients} clients stream", main_load)})
                probe = load(srv.url, 1, plan.probe_s, 1, stream=False)
                rows.append({"server": name, **row("1 client, 1 token", probe)})
                figures[name] = {"tok_s": main_load.summary()["tokens_per_s"],
                                 "errors": main_load.summary()["errors"] + probe.summary()["errors"],
                                 "probe_p50": probe.summary()["latency_s"]["p50"], "ready_s": srv.ready_s}
                if replicas == 2:
                    roll = load(srv.url, plan.clients, plan.load_s, plan.max_tokens, stream=True,
                                reload_every=plan.reload_every, before_reload=lambda: publish_next(work, shared))
                    rows.append({"server": name, **row(f"{plan.clients} clients + rollout", roll)})
                    s = roll.summary()
                    figures["rollout"] = {"errors": s["errors"], "reloads": s["reloads"],
                                          "versions_seen": s["bundle_versions_seen"]}
    finally:
        if not args.workdir:
            shutil.rmtree(scratch, ignore_errors=True)
    print_table(rows, title=f"scale-out ({os.cpu_count()} cores; servers one at a time)")

    d, r1, r2 = figures["direct"], figures["ray 1 replica"], figures["ray 2 replicas"]
    added_ms = (r1["probe_p50"] - d["probe_p50"]) * 1000 if r1["probe_p50"] and d["probe_p50"] else None
    roll = figures["rollout"]
    targets = [
        Target("Ray 2 replicas / 1 replica tok/s (same machine)", ratio(r2["tok_s"], r1["tok_s"]), ">=", 1.0, "x"),
        Target("Ray 1 replica / direct server tok/s", ratio(r1["tok_s"], d["tok_s"]), ">=", 0.8, "x"),
        Target("latency Ray's proxy adds (p50, 1 client, 1 token)", added_ms, "<=", 50.0, "ms"),
        Target("failed requests while versions roll out (2 replicas)", float(roll["errors"]), "<=", 0.0, "requests"),
        Target("failed reloads during the rollout", float(roll["reloads"]["failed"]), "<=", 0.0, "reloads"),
        Target("errors without rollouts (all servers)", float(sum(f["errors"] for k, f in figures.items()
                                                                  if k != "rollout")), "<=", 0.0, "requests"),
    ]
    print_targets(targets)
    print(json.dumps({"rollout": roll, "ready_s": {k: v.get("ready_s") for k, v in figures.items()}}), flush=True)
    if args.json:
        write_report(args.json, "scaleout", results=rows + [{"figures": figures, "plan": plan.__dict__}],
                     targets=targets, machine=machine_info())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
