"""The two decode paths (server/runner.py: fused and eager) on the shipped demo bundle (SmolLM2-135M-Instruct over
its GGUF base, NF4): the README's examples, routed as the server routes them, give the same greedy tokens on both,
and the logits agree within the fused kernel's tolerance (tests/brainstacks/test_fastpath.py states it)."""

from __future__ import annotations

import pytest
import torch

from brainstacks.demo import DEMO_BUNDLE
from brainstacks.fastpath import FusedDecoder
from brainstacks.text import encode_prompt, render_chat
from server.loading import load_runner
from server.settings import ServerSettings

README = [  # (chat?, text, max_tokens): the README's examples
    (True, "What is 17 + 25?", 24),
    (False, "Q: A patient weighs 30 kg and the dose is 4 mg/kg. How many mg?\nA:", 24),
    (True, "List three fruits as bullets.", 24),
]


@pytest.fixture(scope="module")
def demo_runner():
    assert (DEMO_BUNDLE / "manifest.json").is_file()
    return load_runner(ServerSettings(decode_path="eager", threads=1))


def greedy(runner, ids, weights, steps):
    R = runner.routing(weights)
    kv, logits = runner.prefill([ids], R)
    toks, out = [], [logits[0]]
    for _ in range(steps):
        t = logits.argmax(-1)
        toks.append(int(t))
        if int(t) in runner.eos_token_ids:
            break
        logits = runner.decode(t, kv, R)
        out.append(logits[0])
    return toks, torch.stack(out)


def test_readme_examples_decode_alike_on_both_paths(demo_runner):
    r = demo_runner
    prompts = []
    for chat, text, n in README:
        s = render_chat(r.tokenizer, [{"role": "user", "content": text}], add_generation_prompt=True) if chat else text
        prompts.append((encode_prompt(r.tokenizer, s), n))
    routed = r.route([ids for ids, _ in prompts])
    weights = [torch.tensor([[w.get(d, 0.0) for d in r.domains]]) for w in routed]
    eager = [greedy(r, ids, w, n) for (ids, n), w in zip(prompts, weights, strict=True)]
    fused = FusedDecoder(r.model, r.stacked)
    r.use_fused(fused)
    try:
        tol = 1e-3 if fused.kernel == "fp32" else 5e-2
        for (ids, n), w, (etoks, elog) in zip(prompts, weights, eager, strict=True):
            ftoks, flog = greedy(r, ids, w, n)
            assert ftoks == etoks, r.tokenizer.decode(ftoks) + " != " + r.tokenizer.decode(etoks)
            err = float((flog - elog).abs().max() / elog.abs().max())
            assert err < tol, f"relative logit error {err:.2e}"
    finally:
        r.use_fused(None)
