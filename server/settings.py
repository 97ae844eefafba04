"""Server settings: one pydantic-settings model read from `BRAINSTACKS_*` environment variables and CLI flags.

Every field carries a description and bounds; the `serve` CLI (server/cli.py) builds its flags from these fields, so
defaults live here and nowhere else. Example: `BRAINSTACKS_API_KEY=secret brainstacks serve --bundle out/ --port 8000`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from brainstacks.quant import QUANTIZE_CHOICES


class ServerSettings(BaseSettings):
    """Everything `brainstacks serve` can be told."""

    model_config = SettingsConfigDict(env_prefix="BRAINSTACKS_", extra="forbid", validate_default=True)

    bundle: str | None = Field(None, description=(
        "Bundle directory to serve (None: the embedded demo bundle, or --base alone)."))
    base: str | None = Field(None, description="Base model directory; overrides the manifest's base path.")
    host: str = Field("127.0.0.1", description="Address to bind.", min_length=1, max_length=255)
    port: int = Field(8000, description="TCP port to bind (0 = any free port).", ge=0, le=65535)
    quantize: Literal[QUANTIZE_CHOICES] = Field("nf4", description="Base model quantization.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field("auto", description=(
        "Compute dtype of the base model (auto: bfloat16 on CUDA, float32 on CPU)."))
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description=(
        "Device for the model (auto: cuda when available)."))
    watch: bool = Field(False, description="Reload the bundle when its manifest.json changes.")
    watch_interval: float = Field(1.0, description=(
        "Seconds between bundle content checks with --watch; a change is reloaded once it has been seen "
        "unchanged on two checks in a row (settled)."), gt=0.05, le=3600)

    api_key: str | None = Field(None, description="Bearer token required on /v1 and /metrics (None: open).",
                                min_length=1)
    admin_key: str | None = Field(None, description=(
        "Bearer token required on /admin and /debug (None: the API key guards them; with neither key set they "
        "answer loopback clients only)."), min_length=1)

    max_batch: int = Field(16, description="Most rows in the running decode batch.", ge=1, le=1024)
    max_waiting: int = Field(64, description="Most rows waiting for a batch slot; beyond it requests get 429.", ge=1,
                             le=100_000)
    max_prefill_tokens: int = Field(8192, description="Most (padded) prompt tokens prefilled together in one step.",
                                    ge=1, le=10_000_000)
    max_prompt_tokens: int = Field(2048, description=(
        "Most prompt tokens per request (also capped by the model's context)."), ge=1, le=1_000_000)
    max_tokens_limit: int = Field(1024, description="Largest max_tokens a request may ask for.", ge=1, le=1_000_000)
    max_n: int = Field(8, description="Largest n (samples per prompt).", ge=1, le=128)
    max_prompts: int = Field(16, description="Most prompts in one /v1/completions request.", ge=1, le=1024)
    max_logprobs: int = Field(5, description="Most alternatives per token for logprobs / top_logprobs.", ge=0, le=20)
    max_prompt_chars: int = Field(262_144, description=(
        "Most characters in one prompt string or one message's content, checked before tokenizing (400 beyond)."),
        ge=1, le=100_000_000)
    max_body_bytes: int = Field(1024 * 1024, description="Largest request body in bytes (413 beyond).", ge=1024,
                                le=1 << 31)
    retry_after: int = Field(1, description="Seconds in the Retry-After header of a 429.", ge=1, le=3600)
    request_timeout: float = Field(600.0, description="Seconds a request may take before it is cancelled.", gt=0,
                                   le=86_400)
    drain_timeout: float = Field(10.0, description=(
        "Seconds shutdown waits for in-flight requests before aborting them."), ge=0, le=3600)
    kv_token_budget: int = Field(65_536, description=(
        "Most KV-cache token positions the running batch may hold (rows x widest prompt + max_tokens); beyond it "
        "requests wait. 0: no bound."), ge=0, le=1 << 40)
    max_queue_wait: float = Field(120.0, description=(
        "Seconds a request may wait for a batch slot before it fails with 503 (0: no bound)."), ge=0, le=86_400)
    engine_call_timeout: float = Field(60.0, description=(
        "Seconds a control call (a reload's swap, a routing pass) may wait for the engine thread."), gt=0, le=3600)
    ready_failed_steps: int = Field(3, description=(
        "/health/ready answers 503 after this many consecutive failed engine steps."), ge=1, le=1_000_000)
    ready_stuck_seconds: float = Field(60.0, description=(
        "/health/ready answers 503 when no engine step finished for this many seconds while work waits."),
        gt=0, le=86_400)
    router_tokens: int = Field(0, description=(
        "Prompt tokens the router reads (0: the router's own router_tokens, as trained; more than that is capped "
        "to it). Fewer is cheaper: on the demo, 64 instead of 128 halves the routing pass of a long prompt at the "
        "same hand-written top-1 (docs/BENCHMARKS.md, TTFT)."), ge=0, le=1 << 20)
    dense_prefill: Literal["auto", "on", "off"] = Field("auto", description=(
        "Keep a dense copy of a 4-bit base's projections for multi-token calls (prefill, the router's pass), never "
        "decode steps: auto = on for a 4-bit base on a CPU with native bf16 (where it makes a 128-token prefill "
        "~2.5x faster for 2 bytes per base weight; brainstacks/dense_base.py), off elsewhere."))
    decode_path: Literal["auto", "fused", "eager"] = Field("auto", description=(
        "How prefill and decode steps run: fused = brainstacks/fastpath.py (dense merged projections, fused stack "
        "groups, an in-place slot KV cache; llama, mistral, qwen2, qwen3), eager = transformers' modules over a "
        "DynamicCache (every family). auto = fused where the family allows it, eager with one warning elsewhere."))
    debug_history: int = Field(256, description="Completed requests kept for /debug/requests/{id}.", ge=1, le=1_000_000)
    warmup: bool = Field(True, description="Run one tiny generation before reporting ready.")
    threads: int = Field(1, description=(
        "torch intra-op threads. 1 (the default) holds up when other processes share the CPU; 0: torch's default "
        "(one per core: on a dedicated machine it can be faster, but its spinning threads stall whenever one is "
        "descheduled; docs/BENCHMARKS.md measured 3.8x fewer tokens/s on a shared 2-core machine)."), ge=0, le=1024)
    malloc_arena_max: int = Field(2, description=(
        "Most glibc malloc arenas (0: glibc's default, 8 per core). Few arenas keep RSS from creeping under traffic "
        "spread over many threads (server/memory.py)."), ge=0, le=1024)
    malloc_trim_interval: float = Field(60.0, description=(
        "Seconds between malloc_trim calls on the model thread, between steps (0: never); returns freed pages to "
        "the OS (server/memory.py)."), ge=0, le=86_400)
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description=(
        "Log level of the server loggers."))

    # Ray Serve (server/ray_serve.py, docs/SCALE_OUT.md): N replicas of this app behind Ray's HTTP proxy at host:port
    ray: bool = Field(False, description="Serve through Ray Serve: --replicas engines behind one endpoint.")
    replicas: int = Field(1, description="Ray Serve replicas (each loads the whole bundle); with autoscaling: the "
                          "initial count.", ge=1, le=4096)
    ray_address: str | None = Field(None, description=(
        "Ray cluster to join (e.g. ray://head:10001 or auto); None: start a local Ray instance."), min_length=1)
    ray_num_cpus: float = Field(1.0, description="CPUs Ray reserves for each replica.", ge=0, le=1024)
    ray_num_gpus: float = Field(0.0, description="GPUs Ray reserves for each replica (fractions share one GPU).",
                                ge=0, le=64)
    ray_min_replicas: int = Field(1, description=(
        "Autoscaling lower bound (with ray_max_replicas > 0; 0 lets Serve scale to zero, and the next request waits "
        "for a full bundle load)."),
        ge=0, le=4096)
    ray_max_replicas: int = Field(0, description="Autoscaling upper bound (0: no autoscaling, --replicas fixed).",
                                  ge=0, le=4096)
    ray_target_ongoing_requests: float = Field(8.0, description=(
        "Autoscaling target: ongoing requests per replica Serve aims for."), gt=0, le=100_000)
    ray_max_ongoing_requests: int = Field(64, description=(
        "Most requests Ray routes to one replica at a time (the rest queue at the proxy)."), ge=1, le=100_000)
