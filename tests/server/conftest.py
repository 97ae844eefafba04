"""Shared fixtures for the server tests: a tiny random Llama and a byte-level BPE tokenizer, built locally (no
downloads)."""

from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(1)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "routed compositions of frozen adapter stacks over a small base model",
    "two plus two is four and three times three is nine",
    "hello world, this is a tiny tokenizer trained for tests",
    "def add(a, b): return a + b",
    "café naïve résumé — unicode text 🙂 stays intact",
]


def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def build_model(vocab_size: int = 320, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    # random init gives near-uniform logits; a larger output scale makes greedy choices well separated
    with torch.no_grad():
        model.lm_head.weight.mul_(20.0)
    return model.eval()


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="session")
def tiny_base_dir(tmp_path_factory, tiny_tokenizer):
    """A local HF model directory (config, safetensors weights, tokenizer)."""
    d = tmp_path_factory.mktemp("tiny_base")
    build_model(vocab_size=320).save_pretrained(d)
    tiny_tokenizer.save_pretrained(d)
    return d


@pytest.fixture(params=["eager", "fused"])
def tiny_runner(request, tiny_tokenizer):
    """A runner over the tiny Llama, on each decode path (server/runner.py)."""
    from brainstacks.fastpath import FusedDecoder
    from server.runner import ModelRunner

    r = ModelRunner(build_model(vocab_size=320), tiny_tokenizer)
    if request.param == "fused":
        r.use_fused(FusedDecoder(r.model))
    return r


class LiveServer:
    """A real uvicorn server on 127.0.0.1 (ephemeral port) in a thread; always stopped by the fixture."""

    def __init__(self, app):
        import socket
        import threading

        import uvicorn

        self.app = app
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        cfg = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=5)
        self.server = uvicorn.Server(cfg)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def start(self, ready_timeout: float = 120.0) -> LiveServer:
        import time

        import httpx

        self.thread.start()
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if self.app.state.bs.load_error:
                raise RuntimeError(self.app.state.bs.load_error)
            time.sleep(0.05)
        raise RuntimeError("server did not become ready")

    def start_unready(self) -> LiveServer:
        """Start and wait only until the socket answers (the app is live before the model is loaded)."""
        import time

        import httpx

        self.thread.start()
        for _ in range(400):
            try:
                httpx.get(self.url + "/metrics", timeout=2)
                return self
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError("server did not start")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()


@pytest.fixture()
def live_server_factory():
    servers = []

    def make(app):
        s = LiveServer(app)
        servers.append(s)
        return s.start()

    yield make
    for s in servers:
        s.stop()


def build_bundle(bundle_dir, base_dir, domains=("math", "code"), seed=0, version=1, router=True, scale=0.3):
    """A tiny bundle through the library: one random frozen stack per domain, a random router, a manifest."""
    from brainstacks.base import load_base
    from brainstacks.bundle import DomainEntry, Manifest, save_router, save_stack, write_manifest
    from brainstacks.config import StackConfig
    from brainstacks.router import MetaRouter
    from brainstacks.stacks import StackedModel

    lb = load_base(base_dir, quantize="none")
    cfg = StackConfig(experts=2, top_k=1, rank=4, alpha=4.0)
    sm = StackedModel(lb.model, cfg)
    entries = []
    torch.manual_seed(seed)
    for d in domains:
        sm.add_domain(d)
        params = sm.start_stack(d)
        with torch.no_grad():
            for prm in params:
                prm.normal_(0.0, scale)
        _, k = sm.freeze_active()
        rel = save_stack(bundle_dir, d, k, sm.stack_tensors(d, k))
        entries.append(DomainEntry(d, [rel]))
    rel_router = None
    if router:
        r = MetaRouter(lb.fingerprint["hidden_size"], list(domains))
        with torch.no_grad():
            r.head.bias.fill_(0.5)  # most domains on, so routed output differs from base
        rel_router = save_router(bundle_dir, r)
    m = Manifest(version=version, base={"path": str(base_dir), "fingerprint": lb.fingerprint},
                 stack_config=cfg.to_dict(), domains=entries, router=rel_router)
    write_manifest(bundle_dir, m)
    return bundle_dir


@pytest.fixture(scope="session")
def core_base_dir(tmp_path_factory):
    from brainstacks.tiny_models import tiny_base

    return tiny_base(tmp_path_factory.mktemp("core_base") / "base", family="llama", seed=0)


@pytest.fixture()
def tiny_bundle(tmp_path, core_base_dir):
    return build_bundle(tmp_path / "bundle", core_base_dir)


def add_domain(bundle_dir, name, seed=1, scale=0.3):
    """What `brainstacks train --out BUNDLE` does for a new domain: a new frozen stack, a router over all domains
    retrained (here: random), the manifest replaced atomically with version + 1."""
    from brainstacks.base import load_base
    from brainstacks.bundle import (
        DomainEntry,
        install_stacks,
        read_manifest,
        read_stacks,
        resolve_base_path,
        save_router,
        save_stack,
        write_manifest,
    )
    from brainstacks.config import StackConfig
    from brainstacks.router import MetaRouter
    from brainstacks.stacks import StackedModel

    m = read_manifest(bundle_dir)
    lb = load_base(resolve_base_path(bundle_dir, m, None), quantize="none")
    sm = StackedModel(lb.model, StackConfig.from_dict(m.stack_config, "manifest"))
    install_stacks(sm, read_stacks(bundle_dir, m, lb.fingerprint))
    torch.manual_seed(seed)
    sm.add_domain(name)
    with torch.no_grad():
        for prm in sm.start_stack(name):
            prm.normal_(0.0, scale)
    _, k = sm.freeze_active()
    rel = save_stack(bundle_dir, name, k, sm.stack_tensors(name, k))
    domains = m.domain_names + [name]
    r = MetaRouter(lb.fingerprint["hidden_size"], domains)
    with torch.no_grad():
        r.head.bias.fill_(0.5)
    m.domains.append(DomainEntry(name, [rel]))
    m.router = save_router(bundle_dir, r)
    m.version += 1
    write_manifest(bundle_dir, m)
    return m.version


@pytest.fixture(scope="module")
def client(server):
    """The real `openai` client on a module's live `server` fixture (no retries, so every error surfaces)."""
    import openai

    with openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60) as c:
        yield c
