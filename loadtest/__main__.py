"""`python -m loadtest --url URL --concurrency N --requests M [--stream] ...`: load an OpenAI-compatible server.

Prints a table; `--json PATH` writes the full report, `--plot PNG` a latency-over-time chart. The exit status is
0 when every request and every reload succeeded, 1 otherwise, so scripts can gate on it.
"""

from __future__ import annotations

import argparse
import os
import sys

from loadtest.report import format_table, plot_latency, write_json
from loadtest.runner import LoadConfig, load_prompts, run


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m loadtest", description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True, help="server base URL, e.g. http://127.0.0.1:8000")
    p.add_argument("--concurrency", type=int, default=1, help="concurrent clients (default 1)")
    p.add_argument("--requests", type=int, default=16, help="total requests to send (default 16)")
    p.add_argument("--duration", type=float, default=None, help="stop issuing requests after this many seconds")
    p.add_argument("--stream", action="store_true", help="stream (SSE); measures time to first token and inter-token")
    p.add_argument("--chat", action="store_true", help="use /v1/chat/completions instead of /v1/completions")
    p.add_argument("--prompts", default=None, help="file of prompts: JSONL with prompt/messages, or one per line")
    p.add_argument("--max-tokens", type=int, default=16, help="max_tokens per request (default 16)")
    p.add_argument("--temperature", type=float, default=0.0, help="sampling temperature (default 0: greedy)")
    p.add_argument("--model", default="brainstacks", help="model field (default brainstacks)")
    p.add_argument("--api-key", default=os.environ.get("BRAINSTACKS_API_KEY"),
                   help="Bearer key for /v1 (default $BRAINSTACKS_API_KEY)")
    p.add_argument("--admin-key", default=os.environ.get("BRAINSTACKS_ADMIN_KEY"),
                   help="Bearer key for /admin (default $BRAINSTACKS_ADMIN_KEY)")
    p.add_argument("--reload-every", type=float, default=None, help="POST /admin/reload every S seconds during the run")
    p.add_argument("--timeout", type=float, default=120.0, help="per-request time limit in seconds (default 120)")
    p.add_argument("--json", default=None, help="write the full report as JSON here")
    p.add_argument("--plot", default=None, help="write a PNG of latency over time here")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = LoadConfig(
            url=args.url, concurrency=args.concurrency, requests=args.requests, duration=args.duration,
            stream=args.stream, endpoint="chat" if args.chat else "completions", max_tokens=args.max_tokens,
            temperature=args.temperature, model=args.model, api_key=args.api_key, admin_key=args.admin_key,
            reload_every=args.reload_every, timeout=args.timeout,
            **({"prompts": load_prompts(args.prompts)} if args.prompts else {}),
        )
    except (ValueError, OSError) as e:
        print(f"loadtest: error: {e}", file=sys.stderr)
        return 2
    report = run(cfg)
    print(format_table(report))
    if args.json:
        write_json(report, args.json)
        print(f"wrote {args.json}")
    if args.plot:
        plot_latency(report, args.plot)
        print(f"wrote {args.plot}")
    s = report.summary()
    return 0 if s["errors"] == 0 and s["reloads"]["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
