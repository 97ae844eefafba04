"""`ServerState`: what one server holds at runtime (settings, metrics, the debug history and, once loaded, the runner,
engine and registry), and its lifecycle: load and warm up in a background thread, drain, shut down.

server/app.py builds one per app (`app.state.bs`); the routes, server/api.py and server/responses.py read it. It
imports none of them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

from brainstacks.text import encode_prompt
from server.constraints import Grammars
from server.engine import Engine
from server.generation import Generation
from server.genrequest import Event, GenRequest
from server.history import History, record
from server.memory import tune_allocator
from server.metrics import Metrics
from server.registry import Registry, ReloadResult
from server.runner import ModelRunner
from server.sampling import SamplingParams
from server.settings import ServerSettings

log = logging.getLogger("brainstacks.server")


class Cluster(Protocol):
    """The other replicas, under Ray Serve (server/ray_serve.py's ClusterView): /admin and /metrics answer for all."""

    async def describe(self, local: dict) -> dict: ...

    async def reload(self) -> ReloadResult: ...

    async def metrics(self, own: bytes) -> bytes: ...


class ServerState:
    """Everything the routes share: settings, metrics, history, and (once loaded) runner, engine and registry."""

    def __init__(self, settings: ServerSettings, runner_factory: Callable[[ServerSettings], ModelRunner]):
        self.settings = settings
        self.runner_factory = runner_factory
        self.metrics = Metrics()
        self.history = History(settings.debug_history)
        self.runner: ModelRunner | None = None
        self.engine: Engine | None = None
        self.registry: Registry | None = None
        self.ready = False
        self.load_error: str | None = None
        self.loaded = threading.Event()
        self.on_load_error: Callable[[str], None] | None = None  # the CLI ends the process
        self.cluster: Cluster | None = None  # set on a Ray Serve replica
        self._grammars: Grammars | None = None

    def grammars(self) -> Grammars:
        """response_format's grammar compiler for the served tokenizer (built on first use; a reload keeps the base,
        so it keeps the tokenizer)."""
        r = self.runner
        g = self._grammars
        if g is None or g.tokenizer is not r.tokenizer:
            g = self._grammars = Grammars(r.tokenizer, r.vocab_size, r.eos_token_ids)
        return g

    # ------------------------------------------------------------------ lifecycle
    def load(self) -> None:
        """Load, start the engine and warm up (background thread)."""
        try:
            t0 = time.perf_counter()
            s = self.settings
            tune_allocator(s.malloc_arena_max)  # before the worker threads that tokenize exist
            if s.threads:
                import torch

                torch.set_num_threads(s.threads)
            runner = self.runner_factory(s)
            engine = Engine.from_settings(runner, s, self.metrics)
            engine.start()
            self.runner, self.engine = runner, engine
            self.registry = Registry(runner, engine, self.metrics, call_timeout=s.engine_call_timeout)
            self.registry.update_gauges()
            if s.warmup:
                self._warmup()
            self.ready = True
            log.info("ready: bundle version %d, domains %s, loaded in %.1fs", runner.bundle_version, runner.domains,
                     time.perf_counter() - t0)
        except Exception as e:  # reported by /health and, under the CLI, ends the process
            self.load_error = f"{type(e).__name__}: {e}"
            log.exception("loading failed")
            if self.on_load_error is not None:
                self.on_load_error(self.load_error)
        finally:
            self.loaded.set()

    def _warmup(self) -> None:
        """One short routed generation through every code path (router, prefill, decode)."""
        done = threading.Event()
        errors: list[str] = []

        def sink(ev: Event) -> None:
            if ev.kind == "error":
                errors.append(ev.message)
                done.set()
            elif ev.kind == "finish":
                done.set()

        ids = encode_prompt(self.runner.tokenizer, "hello") or [0]
        self.engine.submit(GenRequest("warmup", ids, SamplingParams(max_tokens=2, temperature=0.0), sink))
        if not done.wait(timeout=600):
            raise RuntimeError("warm-up generation did not finish")
        if errors:
            raise RuntimeError(f"warm-up failed: {errors[0]}")

    def drain(self) -> None:
        """First step of a graceful shutdown (SIGTERM; server.cli.DrainingServer runs it before uvicorn waits for
        open connections): stop admitting, let in-flight requests finish for drain_timeout, then end the rest with
        an error (a 503; in a stream: an error event, then [DONE]), so no stream is cut without a word."""
        self.ready = False
        if self.engine is not None:
            self.engine.drain(self.settings.drain_timeout)

    def shutdown(self) -> None:
        self.ready = False
        if self.engine is not None:
            self.engine.stop(self.settings.drain_timeout)

    # ------------------------------------------------------------------ finished generations
    def finish_generation(self, g: Generation) -> None:
        """Record a finished (or cancelled) generation, once: its metrics and its debug record."""
        r = self.runner
        record(self.history, self.metrics, g, r.domains, r.stacked.stacks if r.stacked is not None else [])
