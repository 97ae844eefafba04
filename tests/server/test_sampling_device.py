"""Sampling stays on the logits' device (issue 11): only the sampled ids and the logprobs asked for come to the host,
and the batched path picks the same tokens and logprobs as sampling each row alone. Also: the serve dtype default
resolves to bfloat16 on CUDA, and the engine's step timers reach /metrics' counters."""

from __future__ import annotations

import pytest
import torch

import server.sampling as sampling
from server.sampling import SamplingParams, make_generator, sample_batch, sample_row


def _params():
    return [SamplingParams(temperature=0.0), SamplingParams(temperature=0.0, logprobs=2),
            SamplingParams(temperature=0.8, top_k=5, seed=3), SamplingParams(temperature=0.0, presence_penalty=2.0),
            SamplingParams(temperature=1.0, top_p=0.5, logprobs=0)]


def test_only_ids_and_requested_logprobs_reach_the_host(monkeypatch):
    torch.manual_seed(0)
    logits = torch.randn(5, 1000)
    copied: list[int] = []
    real = sampling.to_host

    def to_host(t):
        copied.append(t.numel())
        return real(t)

    monkeypatch.setattr(sampling, "to_host", to_host)
    monkeypatch.setattr(torch.Tensor, "cpu", lambda self, *a, **k: pytest.fail("a tensor was copied with .cpu()"))
    params = _params()
    gens = [make_generator(7) for _ in params]
    tokens, lps = sample_batch(logits, params, gens, [[], [], [], [int(logits[3].argmax())], []])
    assert copied[0] == 5  # the ids: B numbers, not B x V logits
    assert sum(copied) <= 5 + 2 + 2 * 2 * 2  # + chosen logprobs of 2 rows + top-2 values and ids of 2 rows
    assert lps[0] == (0.0, None) and lps[2] == (0.0, None) and lps[4][1] is None
    assert tokens[0] == int(logits[0].argmax()) and tokens[3] != int(logits[3].argmax())  # the penalty applied


def test_batched_sampling_equals_row_by_row():
    torch.manual_seed(1)
    logits = torch.randn(5, 1000)
    params = _params()
    hist = [[], [], [], [int(logits[3].argmax())], []]
    tokens, lps = sample_batch(logits, params, [make_generator(11 + i) for i in range(5)], hist)
    for i, p in enumerate(params):
        row = sampling.apply_penalties(logits[i], p, hist[i])
        assert tokens[i] == sample_row(row, p, make_generator(11 + i))
        if p.logprobs is not None:
            logp = torch.log_softmax(logits[i], -1)
            assert lps[i][0] == pytest.approx(float(logp[tokens[i]]), abs=1e-6)
            if p.logprobs:
                vals, ids = torch.topk(logp, p.logprobs)
                assert [t for t, _ in lps[i][1]] == ids.tolist()


def test_a_non_finite_row_falls_back_to_its_argmax_without_a_host_check():
    logits = torch.tensor([[1.0, float("nan"), 3.0], [0.0, 5.0, 1.0]])
    tokens, _ = sample_batch(logits, [SamplingParams(temperature=1.0), SamplingParams(temperature=0.0)],
                             [make_generator(0), make_generator(0)])
    assert tokens[1] == 1 and 0 <= tokens[0] < 3


def test_serve_dtype_is_bf16_on_cuda_and_fp32_on_cpu():
    from server.loading import serve_dtype
    from server.settings import ServerSettings

    assert ServerSettings().dtype == "auto"
    assert serve_dtype(ServerSettings(device="cuda")) == "bfloat16"
    assert serve_dtype(ServerSettings(device="cpu")) == "float32"
    assert serve_dtype(ServerSettings(device="cuda", dtype="float32")) == "float32"


def test_step_timer_counts_phases_into_metrics():
    from server.metrics import Metrics
    from server.steptimer import StepTimer, breakdown

    m = Metrics()
    t = StepTimer(m)
    before = t.snapshot()
    t.add("decode_forward", 0.010)
    t.add("sampling", 0.002)
    t.add("step", 0.013)
    t.step_done(decoded=True)
    t.woke()
    text = m.render().decode()
    assert 'brainstacks_step_phase_seconds_total{phase="decode_forward"} 0.01' in text
    assert 'brainstacks_engine_steps_total{kind="decode"} 1.0' in text
    assert "brainstacks_event_loop_wakeups_total 1.0" in text
    b = breakdown(before, t.snapshot())
    assert b["decode_steps"] == 1 and b["decode_forward ms"] == pytest.approx(10.0)
    assert b["other ms"] == pytest.approx(1.0)


def test_router_tokens_setting_caps_what_routing_reads(tiny_bundle):
    from brainstacks.router import route_prompts
    from server.loading import load_runner
    from server.settings import ServerSettings

    full = load_runner(ServerSettings(bundle=str(tiny_bundle), quantize="none"))
    own = full.router_tokens
    cut = load_runner(ServerSettings(bundle=str(tiny_bundle), quantize="none", router_tokens=4))
    assert cut.router_tokens == 4 and own > 4
    prompt = list(range(5, 25))
    w = cut.route([prompt])[0]
    ref = route_prompts(cut.stacked, cut.tokenizer, cut.router, [prompt[:4]])[0]  # the first 4 ids, nothing else
    assert w == {d: float(ref[j]) for j, d in enumerate(cut.router_domains)}
    assert cut.route([prompt[:4] + [99]])[0] == w  # the cache key is the first 4 ids too
    big = load_runner(ServerSettings(bundle=str(tiny_bundle), quantize="none", router_tokens=own + 100))
    assert big.router_tokens == own  # capped at the router's own
