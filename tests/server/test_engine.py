"""Engine tests on a tiny random Llama: batched rows equal solo runs, seeded sampling, n, cancellation, bounds."""

from __future__ import annotations

import pytest
import torch

from server.engine import Engine
from server.genrequest import GenRequest, QueueFullError
from server.sampling import SamplingParams


class Collector:
    def __init__(self):
        self.events = []

    def __call__(self, ev):
        self.events.append(ev)

    def tokens(self, index=0):
        return [e.token_id for e in self.events if e.kind == "token" and e.index == index]

    def logprobs(self, index=0):
        return [e.logprob for e in self.events if e.kind == "token" and e.index == index]

    def finish(self, index=0):
        return [e.finish_reason for e in self.events if e.kind == "finish" and e.index == index]


PROMPTS = [
    [5, 17, 33, 40, 41, 42, 60],
    [7, 8],
    [100, 101, 102, 103, 104, 105, 106, 107, 108, 109, 110, 111],
    [250, 12, 3],
    [9, 9, 9, 9, 9],
]
MAX_TOKENS = [12, 5, 9, 14, 3]


def run_until_idle(engine, limit=500):
    for _ in range(limit):
        if not engine.running_rows and not engine.waiting_rows:
            return
        engine.step()
    raise AssertionError("engine did not go idle")


def solo(runner, prompt, params, n=1):
    eng = Engine(runner, max_batch=8, max_waiting=8)
    eng.start(background=False)
    c = Collector()
    eng.submit(GenRequest("solo", prompt, params, c, n=n, weights={}))
    run_until_idle(eng)
    return c


def test_batched_rows_equal_solo_runs_with_staggered_join_and_leave(tiny_runner):
    params = [SamplingParams(max_tokens=m, temperature=0.0, logprobs=2) for m in MAX_TOKENS]
    alone = [solo(tiny_runner, p, sp) for p, sp in zip(PROMPTS, params, strict=True)]

    eng = Engine(tiny_runner, max_batch=3, max_waiting=16)  # a bound of 3 forces some to wait, then join late
    eng.start(background=False)
    cols = [Collector() for _ in PROMPTS]
    batch_sizes = []
    for i, (p, sp) in enumerate(zip(PROMPTS, params, strict=True)):
        eng.submit(GenRequest(f"r{i}", p, sp, cols[i], weights={}))
        for _ in range(i % 3):  # rows join at different steps
            eng.step()
            batch_sizes.append(eng.running_rows)
    run_until_idle(eng)
    assert max(batch_sizes) >= 2, "the test must actually batch rows together"
    for i in range(len(PROMPTS)):
        assert cols[i].tokens() == alone[i].tokens(), f"prompt {i}: batched tokens differ from the solo run"
        assert len(cols[i].tokens()) == MAX_TOKENS[i] or cols[i].finish() == ["stop"]
        torch.testing.assert_close(torch.tensor(cols[i].logprobs()), torch.tensor(alone[i].logprobs()), atol=1e-4,
                                   rtol=0)


def test_seeded_sampling_is_reproducible_regardless_of_batch_mates(tiny_runner):
    sp = SamplingParams(max_tokens=10, temperature=1.0, top_p=0.9, top_k=50, seed=1234)
    alone = solo(tiny_runner, PROMPTS[0], sp).tokens()
    eng = Engine(tiny_runner, max_batch=8, max_waiting=8)
    eng.start(background=False)
    mates = [Collector() for _ in range(3)]
    for i, c in enumerate(mates):
        eng.submit(GenRequest(f"m{i}", PROMPTS[i + 1], SamplingParams(max_tokens=7, temperature=0.8), c, weights={}))
    eng.step()
    c = Collector()
    eng.submit(GenRequest("seeded", PROMPTS[0], sp, c, weights={}))
    run_until_idle(eng)
    assert c.tokens() == alone
    other = solo(tiny_runner, PROMPTS[0], SamplingParams(max_tokens=10, temperature=1.0, top_p=0.9, top_k=50, seed=99))
    assert other.tokens() != alone  # different seeds draw differently (10 tokens from a peaked-but-random model)


def test_n_samples_share_prefill_and_each_finish(tiny_runner):
    sp = SamplingParams(max_tokens=6, temperature=1.0, seed=7)
    c = solo(tiny_runner, PROMPTS[1], sp, n=3)
    outs = [c.tokens(j) for j in range(3)]
    assert all(len(o) == 6 for o in outs)
    assert len({tuple(o) for o in outs}) > 1, "n samples with one seed must still differ (seed + index)"
    assert all(c.finish(j) == ["length"] for j in range(3))
    again = solo(tiny_runner, PROMPTS[1], sp, n=3)
    assert [again.tokens(j) for j in range(3)] == outs


def test_cancel_frees_slot_at_next_step(tiny_runner):
    eng = Engine(tiny_runner, max_batch=2, max_waiting=4)
    eng.start(background=False)
    a, b = Collector(), Collector()
    ra = GenRequest("a", PROMPTS[0], SamplingParams(max_tokens=100, temperature=0.0), a, weights={})
    eng.submit(ra)
    eng.submit(GenRequest("b", PROMPTS[1], SamplingParams(max_tokens=100, temperature=0.0), b, weights={}))
    eng.step()
    assert eng.running_rows == 2
    ra.cancel()
    eng.step()
    assert eng.running_rows == 1
    assert a.finish() == ["cancelled"]
    n_a = len(a.tokens())
    eng.step()
    assert len(a.tokens()) == n_a


def test_waiting_queue_bound_raises_queue_full(tiny_runner):
    eng = Engine(tiny_runner, max_batch=1, max_waiting=2)
    eng.start(background=False)
    sp = SamplingParams(max_tokens=2, temperature=0.0)
    eng.submit(GenRequest("a", [5], sp, Collector(), weights={}))
    eng.submit(GenRequest("b", [6], sp, Collector(), weights={}))
    with pytest.raises(QueueFullError):
        eng.submit(GenRequest("c", [7], sp, Collector(), weights={}))
    run_until_idle(eng)
    eng.submit(GenRequest("d", [7], sp, Collector(), weights={}))  # room again


def test_eos_stops_a_row(tiny_runner):
    # force the stop token set to contain whatever greedy picks first
    first = solo(tiny_runner, PROMPTS[2], SamplingParams(max_tokens=1, temperature=0.0)).tokens()[0]
    c = solo(tiny_runner, PROMPTS[2], SamplingParams(max_tokens=10, temperature=0.0, stop_token_ids=frozenset({first})))
    assert c.tokens() == [first] and c.finish() == ["stop"]


@pytest.mark.parametrize("quantize", ["none", "nf4"])
def test_rows_with_different_domain_weights_match_solo_runs(tiny_bundle, quantize):
    """Each row carries its own weights through the fused forward: batched == alone, and weights matter."""
    from server.loading import load_runner
    from server.settings import ServerSettings

    # nf4: with the dense prefill copies (brainstacks/dense_base.py): prefill takes them, decode the 4-bit kernel
    runner = load_runner(ServerSettings(bundle=str(tiny_bundle), quantize=quantize,
                                        dense_prefill="on" if quantize == "nf4" else "off"))
    assert runner.domains == ["math", "code"]
    assert (runner.dense_bytes > 0) == (quantize == "nf4")
    ws = [{"math": 1.0, "code": 0.0}, {"math": 0.0, "code": 1.0}, {"math": 0.0, "code": 0.0},
          {"math": 0.5, "code": 0.9}]
    prompt = [5, 17, 33, 40, 41]
    sp = SamplingParams(max_tokens=8, temperature=0.0, logprobs=0)

    def alone(w):
        eng = Engine(runner, max_batch=4, max_waiting=4)
        eng.start(background=False)
        c = Collector()
        eng.submit(GenRequest("x", prompt, sp, c, weights=w))
        run_until_idle(eng)
        return c

    solos = [alone(w) for w in ws]
    assert len({tuple(c.logprobs()) for c in solos}) == len(ws), "different weights must give different outputs"

    eng = Engine(runner, max_batch=4, max_waiting=4)
    eng.start(background=False)
    cols = [Collector() for _ in ws]
    for i, w in enumerate(ws):
        eng.submit(GenRequest(f"r{i}", prompt, sp, cols[i], weights=w))
        eng.step()  # each row joins one step after the previous
    run_until_idle(eng)
    for c, s in zip(cols, solos, strict=True):
        assert c.tokens() == s.tokens()
        torch.testing.assert_close(torch.tensor(c.logprobs()), torch.tensor(s.logprobs()), atol=1e-4, rtol=0)


def test_routed_rows_get_router_weights_and_start_event(tiny_bundle):
    from server.loading import load_runner
    from server.settings import ServerSettings

    runner = load_runner(ServerSettings(bundle=str(tiny_bundle), quantize="none"))
    eng = Engine(runner, max_batch=4, max_waiting=4)
    eng.start(background=False)
    c = Collector()
    eng.submit(GenRequest("routed", [5, 6, 7], SamplingParams(max_tokens=2, temperature=0.0), c))
    run_until_idle(eng)
    start = [e for e in c.events if e.kind == "start"][0]
    assert start.weights == runner.route([[5, 6, 7]])[0]
    assert set(start.weights) == {"math", "code"} and start.bundle_version == 1


@pytest.mark.parametrize("temperature,top_p", [(1e-300, 0.5), (5e-324, 0.5), (1e-6, 0.5), (2.0, 0.0), (1.0, 1e-300)])
def test_extreme_sampling_params_sample_valid_tokens(temperature, top_p):
    from server.sampling import make_generator, sample_row

    logits = torch.tensor([3.0, 1.0, -2.0, 80.0, -1e4])
    tok = sample_row(logits, SamplingParams(temperature=temperature, top_p=top_p, top_k=3), make_generator(0))
    assert tok == 3


def test_route_cache_hits_and_is_cleared_on_router_swap(tiny_bundle):
    from server.loading import load_runner
    from server.settings import ServerSettings

    runner = load_runner(ServerSettings(bundle=str(tiny_bundle), quantize="none"))
    a = runner.route([[5, 6, 7], [8, 9]])
    assert runner.route([[8, 9]]) == [a[1]] and len(runner._route_cache) == 2
    with torch.no_grad():
        runner.router.head.bias.fill_(-5.0)  # a different router's answer ...
    assert runner.route([[8, 9]]) == [a[1]]  # ... is not seen while cached
    runner.router = runner.router  # swapping (reload) clears the cache
    assert runner.route([[8, 9]]) != [a[1]]


def test_a_failing_step_fails_its_rows_and_the_engine_keeps_serving(tiny_runner):
    eng = Engine(tiny_runner, max_batch=4, max_waiting=4)
    eng.start()
    try:
        import threading

        real = tiny_runner.decode
        calls = {"n": 0}

        def flaky(*a, **k):
            calls["n"] += 1
            if calls["n"] == 1:  # the first decode step
                raise RuntimeError("boom")
            return real(*a, **k)

        tiny_runner.decode = flaky
        done = threading.Event()
        c = Collector()

        def sink(ev):
            c(ev)
            if ev.kind in ("error", "finish"):
                done.set()

        eng.submit(GenRequest("a", PROMPTS[0], SamplingParams(max_tokens=5, temperature=0.0), sink, weights={}))
        assert done.wait(30) and [e.kind for e in c.events][-1] == "error"
        tiny_runner.decode = real
        done.clear()
        c2 = Collector()

        def sink2(ev):
            c2(ev)
            if ev.kind in ("error", "finish"):
                done.set()

        eng.submit(GenRequest("b", PROMPTS[0], SamplingParams(max_tokens=3, temperature=0.0), sink2, weights={}))
        assert done.wait(30) and c2.finish() == ["length"] and len(c2.tokens()) == 3
    finally:
        eng.stop(1)


def test_prefill_token_budget_splits_admission(tiny_runner):
    eng = Engine(tiny_runner, max_batch=8, max_waiting=8, max_prefill_tokens=20)
    eng.start(background=False)
    sp = SamplingParams(max_tokens=3, temperature=0.0)
    cols = [Collector() for _ in range(3)]
    for i, c in enumerate(cols):
        eng.submit(GenRequest(f"p{i}", list(range(5, 17)), sp, c, weights={}))  # 12 tokens each
    eng.step()
    assert eng.running_rows == 1 and eng.waiting_rows == 2  # 2 x 12 > 20: one per step
    run_until_idle(eng)
    assert all(c.tokens() == cols[0].tokens() for c in cols)


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma2"])
def test_engine_matches_hf_generate(tmp_path, family):
    """A reference computed another way: each row of a staggered batch equals transformers' own greedy generate,
    including a sliding-window model whose sequences outgrow the window."""
    from transformers import AutoModelForCausalLM

    from brainstacks.tiny_models import tiny_base, tiny_tokenizer
    from server.runner import ModelRunner

    model = AutoModelForCausalLM.from_pretrained(tiny_base(tmp_path / "b", family=family)).eval()
    if family == "gemma2":
        model.config.sliding_window = 6
    with torch.no_grad():
        model.lm_head.weight.mul_(30.0)  # well-separated greedy choices
    prompts = [[5 + i for i in range(n)] for n in (12, 3, 9, 15)]
    ref = [model.generate(torch.tensor([p]), max_new_tokens=10, min_new_tokens=10, do_sample=False, eos_token_id=None,
                          pad_token_id=1)[0, len(p):].tolist() for p in prompts]
    eng = Engine(ModelRunner(model, tiny_tokenizer()), max_batch=4)
    eng.start(background=False)
    cols = [Collector() for _ in prompts]
    for i, p in enumerate(prompts):
        eng.submit(GenRequest(str(i), p, SamplingParams(max_tokens=10, temperature=0.0), cols[i], weights={}))
        eng.step()
    run_until_idle(eng)
    assert [c.tokens() for c in cols] == ref


def test_stop_drains_then_aborts_what_is_left(tiny_runner):
    import threading

    from server.genrequest import EngineStoppedError

    eng = Engine(tiny_runner, max_batch=1, max_waiting=4)
    eng.start()
    gate = threading.Event()
    eng.call(gate.wait)  # hold the model thread: nothing can finish during the drain
    a, b = Collector(), Collector()
    eng.submit(GenRequest("a", PROMPTS[0], SamplingParams(max_tokens=50, temperature=0.0), a, weights={}))
    eng.submit(GenRequest("b", PROMPTS[1], SamplingParams(max_tokens=50, temperature=0.0), b, weights={}))
    threading.Timer(0.3, gate.set).start()
    eng.stop(drain_timeout=0.0)
    with pytest.raises(EngineStoppedError):
        eng.submit(GenRequest("c", [5], SamplingParams(max_tokens=1), Collector(), weights={}))
    for c in (a, b):  # each request ends with a token stream that finished or an abort, never silence
        kinds = [e.kind for e in c.events]
        assert kinds and kinds[-1] in ("finish", "error")
    assert any(e.kind == "error" and "shutting down" in e.message for e in a.events + b.events)
