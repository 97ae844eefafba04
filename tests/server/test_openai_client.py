"""The official `openai` client against a real uvicorn server on loopback, serving a tiny routed bundle (NF4 base)."""

from __future__ import annotations

import httpx
import openai
import pytest

from server.app import create_app
from server.settings import ServerSettings

from .conftest import LiveServer, build_bundle


@pytest.fixture(scope="module")
def server(tmp_path_factory, core_base_dir):
    bundle = build_bundle(tmp_path_factory.mktemp("oa") / "bundle", core_base_dir)
    s = LiveServer(create_app(ServerSettings(bundle=str(bundle), quantize="nf4", max_tokens_limit=64))).start()
    yield s
    s.stop()


PROMPT = "the patient drug dose is"


def test_completion_shape_usage_and_extension(client):
    r = client.completions.create(model="brainstacks", prompt=PROMPT, max_tokens=6, temperature=0)
    assert r.object == "text_completion" and r.id.startswith("cmpl-")
    assert len(r.choices) == 1 and r.choices[0].index == 0
    assert r.choices[0].finish_reason in ("length", "stop")
    assert r.usage.prompt_tokens > 0 and 1 <= r.usage.completion_tokens <= 6
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    ext = r.model_extra["brainstacks"]
    assert set(ext["weights"]) == {"math", "code"} and ext["bundle_version"] == 1
    again = client.completions.create(model="brainstacks", prompt=PROMPT, max_tokens=6, temperature=0)
    assert again.choices[0].text == r.choices[0].text


def test_chat_completion(client):
    r = client.chat.completions.create(model="brainstacks",
                                       messages=[{"role": "user", "content": "what is two plus two"}],
                                       max_tokens=5, temperature=0)
    assert r.object == "chat.completion" and r.choices[0].message.role == "assistant"
    assert isinstance(r.choices[0].message.content, str)
    assert r.usage.completion_tokens >= 1
    assert "weights" in r.model_extra["brainstacks"]


def test_streaming_completion_equals_non_streaming(client):
    full = client.completions.create(prompt=PROMPT, model="brainstacks", max_tokens=10, temperature=0)
    chunks = list(client.completions.create(prompt=PROMPT, model="brainstacks", max_tokens=10, temperature=0,
                                            stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == full.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        full.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    assert all(c.object == "text_completion" and c.id == chunks[0].id for c in chunks)


def test_streaming_chat(client):
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "add two and two"}]
    full = client.chat.completions.create(model="brainstacks", messages=msgs, max_tokens=8, temperature=0)
    chunks = list(client.chat.completions.create(model="brainstacks", messages=msgs, max_tokens=8, temperature=0,
                                                 stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == full.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == full.choices[0].finish_reason


def test_stop_string_across_tokens(client):
    full = client.completions.create(model="brainstacks", prompt=PROMPT, max_tokens=16, temperature=0, logprobs=0)
    toks = full.choices[0].logprobs.tokens
    text = full.choices[0].text
    # stop = tail of one generated token + head of the next (both non-empty pieces of the text)
    j = next((i for i in range(1, len(toks) - 1) if toks[i].strip() and toks[i + 1].strip()), None)
    if j is None:
        pytest.skip("generated text has no two adjacent visible tokens")
    off = full.choices[0].logprobs.text_offset
    stop = text[off[j + 1] - 1 : off[j + 1] + 1]
    assert len(stop) == 2
    expected = text[: text.find(stop)]
    r = client.completions.create(model="brainstacks", prompt=PROMPT, max_tokens=16, temperature=0, stop=[stop, "@@"])
    assert r.choices[0].text == expected and r.choices[0].finish_reason == "stop"
    s = list(client.completions.create(model="brainstacks", prompt=PROMPT, max_tokens=16, temperature=0, stop=stop,
                                       stream=True))
    assert "".join(c.choices[0].text for c in s if c.choices) == expected


def test_seed_reproducible_and_n(client):
    kw = dict(model="brainstacks", prompt=PROMPT, max_tokens=8, temperature=1.0, top_p=0.95, seed=42, n=3)
    a = client.completions.create(**kw)
    b = client.completions.create(**kw)
    assert [c.index for c in a.choices] == [0, 1, 2]
    assert [c.text for c in a.choices] == [c.text for c in b.choices]
    assert a.usage.completion_tokens >= 3


def test_logprobs_completion_and_chat(client):
    r = client.completions.create(model="brainstacks", prompt=PROMPT, max_tokens=5, temperature=0, logprobs=2)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == r.usage.completion_tokens
    assert all(v <= 0 for v in lp.token_logprobs)
    assert all(1 <= len(t) <= 2 for t in lp.top_logprobs)
    # greedy: the chosen token is the most likely one
    assert all(abs(max(t.values()) - v) < 1e-5 for t, v in zip(lp.top_logprobs, lp.token_logprobs, strict=True))
    c = client.chat.completions.create(model="brainstacks", messages=[{"role": "user", "content": "hi"}], max_tokens=4,
                                       temperature=0, logprobs=True, top_logprobs=3)
    content = c.choices[0].logprobs.content
    assert len(content) == c.usage.completion_tokens and all(len(e.top_logprobs) == 3 for e in content)


def test_model_selects_composition_and_weights_override(client):
    base = client.completions.create(model="brainstacks:base", prompt=PROMPT, max_tokens=8, temperature=0)
    assert base.model_extra["brainstacks"]["weights"] == {"math": 0.0, "code": 0.0}
    math = client.completions.create(model="brainstacks:math", prompt=PROMPT, max_tokens=8, temperature=0)
    assert math.model_extra["brainstacks"]["weights"] == {"math": 1.0, "code": 0.0}
    allw = client.completions.create(model="brainstacks:all", prompt=PROMPT, max_tokens=8, temperature=0)
    assert allw.model_extra["brainstacks"]["weights"] == {"math": 1.0, "code": 1.0}
    over = client.completions.create(model="brainstacks", prompt=PROMPT, max_tokens=8, temperature=0,
                                     extra_body={"weights": {"math": 1.0}})
    assert over.model_extra["brainstacks"]["weights"] == {"math": 1.0, "code": 0.0}
    assert over.choices[0].text == math.choices[0].text
    with pytest.raises(openai.NotFoundError) as e:
        client.completions.create(model="brainstacks:nope", prompt=PROMPT, max_tokens=2)
    assert e.value.code == "model_not_found"


def test_list_prompts_and_models(client, server):
    r = client.completions.create(model="brainstacks", prompt=["two plus two", "def add"], max_tokens=3, temperature=0,
                                  n=2)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    assert len(r.model_extra["brainstacks"]["prompt_weights"]) == 2
    ids = [m.id for m in client.models.list()]
    assert ids == ["brainstacks", "brainstacks:base", "brainstacks:all", "brainstacks:math", "brainstacks:code"]
    h = httpx.get(server.url + "/health")
    assert h.status_code == 200 and h.json()["bundle_version"] == 1 and h.headers["x-request-id"]


def test_token_id_prompt_equals_text_prompt(client, server):
    tok = server.app.state.bs.runner.tokenizer
    from brainstacks.text import encode_prompt

    ids = encode_prompt(tok, PROMPT)
    a = client.completions.create(model="brainstacks:math", prompt=ids, max_tokens=6, temperature=0)
    b = client.completions.create(model="brainstacks:math", prompt=PROMPT, max_tokens=6, temperature=0)
    assert a.choices[0].text == b.choices[0].text and a.usage.prompt_tokens == len(ids)


def test_streaming_n_and_logprobs_match_non_streaming(client):
    kw = dict(model="brainstacks", prompt=PROMPT, max_tokens=8, temperature=0.9, seed=5, n=2, logprobs=1)
    full = client.completions.create(**kw)
    chunks = list(client.completions.create(**kw, stream=True))
    for i in range(2):
        parts = [c for ch in chunks for c in ch.choices if c.index == i]
        assert "".join(c.text for c in parts) == full.choices[i].text
        streamed_lp = [v for c in parts if c.logprobs for v in c.logprobs.token_logprobs]
        assert streamed_lp == full.choices[i].logprobs.token_logprobs
        assert parts[-1].finish_reason == full.choices[i].finish_reason
