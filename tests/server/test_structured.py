"""The OpenAI surface clients rely on (issue 21): logit_bias, response_format (constrained decoding with llguidance),
/tokenize and /detokenize, through the real `openai` client and LangChain against a real server on a tiny bundle."""

from __future__ import annotations

import json
from typing import Literal

import httpx
import jsonschema
import pytest
import torch

from server.app import create_app
from server.sampling import SamplingParams, make_generator, sample_batch
from server.settings import ServerSettings

from .conftest import LiveServer, build_bundle

PROMPT = "the quick brown fox"
SCHEMA = {"type": "object", "additionalProperties": False, "required": ["ok", "level", "count"],
          "properties": {"ok": {"type": "boolean"}, "level": {"enum": ["low", "high"]},
                         "count": {"type": "integer", "minimum": 0, "maximum": 99}}}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from brainstacks.tiny_models import tiny_base

    # a byte-level BPE tokenizer (the tiny qwen2 base's), as real checkpoints have: every JSON string is spellable
    base = tiny_base(tmp_path_factory.mktemp("structured_base") / "base", family="qwen2", seed=0)
    bundle = build_bundle(tmp_path_factory.mktemp("structured") / "bundle", base)
    s = LiveServer(create_app(ServerSettings(bundle=str(bundle), quantize="none", max_tokens_limit=96,
                                             max_batch=16))).start()
    yield s
    s.stop()


def post(server, path: str, body: dict) -> httpx.Response:
    return httpx.post(server.url + path, json=body, timeout=120)


def vocab(server) -> int:
    return server.app.state.bs.runner.vocab_size


# ---------------------------------------------------------------------------------------------------- logit_bias
def test_sampler_applies_each_rows_bias_and_leaves_the_others():
    logits = torch.randn(3, 50)
    plain = SamplingParams(temperature=0.0)
    favour = SamplingParams(temperature=0.0, logit_bias=((7, 100.0),))
    ban = SamplingParams(temperature=0.0, logit_bias=((int(logits[2].argmax()), -100.0),))
    gens = [make_generator(0) for _ in range(3)]
    toks, lps = sample_batch(logits, [plain, favour, ban], gens)
    assert toks[0] == int(logits[0].argmax())
    assert toks[1] == 7
    assert toks[2] != int(logits[2].argmax()) and toks[2] == int(logits[2].topk(2).indices[1])
    # sampled rows see the bias too: a +100 token is drawn every time at temperature 1
    hot = SamplingParams(temperature=1.0, logit_bias=((3, 100.0),))
    assert all(sample_batch(logits[:1], [hot], [make_generator(s)])[0][0] == 3 for s in range(5))


def detok(server, ids: list[int]) -> str:
    return post(server, "/detokenize", {"tokens": ids}).json()["prompt"]


def test_logit_bias_steers_greedy_decoding(server, client):
    tid = post(server, "/tokenize", {"prompt": "a", "add_special_tokens": False}).json()["tokens"][-1]
    r = client.completions.create(model="brainstacks", prompt=PROMPT, max_tokens=4, temperature=0,
                                  logit_bias={str(tid): 100})
    assert r.choices[0].finish_reason == "length" and r.choices[0].text == detok(server, [tid] * 4) == "aaaa"
    chat = client.chat.completions.create(model="brainstacks", messages=[{"role": "user", "content": "hi"}],
                                          max_tokens=3, temperature=0, logit_bias={str(tid): 100})
    assert chat.choices[0].message.content == "aaa"
    # a zero bias changes nothing
    plain = client.completions.create(model="brainstacks", prompt=PROMPT, max_tokens=4, temperature=0)
    zero = client.completions.create(model="brainstacks", prompt=PROMPT, max_tokens=4, temperature=0,
                                     logit_bias={str(tid): 0})
    assert zero.choices[0].text == plain.choices[0].text


@pytest.mark.parametrize("bias,param", [({"abc": 1}, "logit_bias"), ({"-1": 1}, "logit_bias"),
                                        ({"99999": 1}, "logit_bias.99999"), ({"5": 101}, "logit_bias"),
                                        ({"5": "x"}, "logit_bias")])
def test_bad_logit_bias_is_400_naming_it(server, bias, param):
    for path, body in (("/v1/completions", {"prompt": PROMPT}),
                       ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]})):
        r = post(server, path, {**body, "max_tokens": 2, "logit_bias": bias})
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"].startswith(param), r.json()


def test_null_logit_bias_and_response_format_are_accepted(server):
    r = post(server, "/v1/completions", {"prompt": PROMPT, "max_tokens": 2, "logit_bias": None,
                                         "response_format": None})
    assert r.status_code == 200, r.text
    r = post(server, "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
                                              "response_format": {"type": "text"}})
    assert r.status_code == 200, r.text


# ---------------------------------------------------------------------------------------------------- response_format
def schema_format(schema=SCHEMA, strict=True) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "verdict", "schema": schema, "strict": strict}}


def test_json_schema_output_validates_or_ends_at_length(client):
    r = client.chat.completions.create(model="brainstacks", messages=[{"role": "user", "content": "answer in JSON"}],
                                       max_tokens=64, temperature=1.0, seed=3, n=6, response_format=schema_format())
    stopped = 0
    for ch in r.choices:
        if ch.finish_reason == "stop":
            jsonschema.validate(json.loads(ch.message.content), SCHEMA)
            stopped += 1
        else:
            assert ch.finish_reason == "length"
    assert stopped >= 1  # a random model still closes this small object within 64 tokens
    # completions take it too, and a tight budget ends at length with a prefix, never an invalid finished object
    c = client.completions.create(model="brainstacks", prompt=PROMPT, max_tokens=3, temperature=0,
                                  extra_body={"response_format": schema_format()})
    assert c.choices[0].finish_reason == "length" and c.choices[0].text.startswith("{")


def test_json_object_parses_and_streams(client):
    for seed in range(3):
        stream = client.chat.completions.create(
            model="brainstacks", messages=[{"role": "user", "content": "json please"}], max_tokens=96,
            temperature=0.8, seed=seed, stream=True, response_format={"type": "json_object"})
        text, finish = "", None
        for chunk in stream:
            for ch in chunk.choices:
                text += ch.delta.content or ""
                finish = ch.finish_reason or finish
        assert text.startswith("{")
        if finish == "stop":
            assert isinstance(json.loads(text), dict)
        else:
            assert finish == "length"


def test_constrained_and_free_rows_share_a_batch(server, client):
    """A constrained request beside free ones: the free rows' greedy text is what they get alone."""
    import concurrent.futures as cf

    def free(i):
        return client.completions.create(model="brainstacks", prompt=f"{PROMPT} {i}", max_tokens=12,
                                         temperature=0).choices[0].text

    alone = [free(i) for i in range(3)]

    def constrained():
        return client.chat.completions.create(model="brainstacks", messages=[{"role": "user", "content": "x"}],
                                              max_tokens=64, temperature=1.0, seed=1, n=4,
                                              response_format=schema_format())

    with cf.ThreadPoolExecutor(6) as ex:
        futs = [ex.submit(constrained)] + [ex.submit(free, i) for i in range(3)]
        got = [f.result() for f in futs]
    assert got[1:] == alone
    for ch in got[0].choices:
        if ch.finish_reason == "stop":
            jsonschema.validate(json.loads(ch.message.content), SCHEMA)


@pytest.mark.parametrize("fmt,param", [
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "wizard"}}},
     "response_format.json_schema.schema"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "string", "pattern": "(("}}},
     "response_format.json_schema.schema"),
    ({"type": "json_schema"}, "response_format"),
    ({"type": "json_schema", "json_schema": {"name": "bad name!", "schema": {}}}, "response_format"),
    ({"type": "yaml"}, "response_format"),
])
def test_invalid_response_format_is_400(server, fmt, param):
    r = post(server, "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
                                              "response_format": fmt})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"].startswith(param), r.json()


def test_langchain_with_structured_output(server):
    from langchain_openai import ChatOpenAI
    from pydantic import BaseModel, Field

    class Verdict(BaseModel):
        ok: bool
        level: Literal["low", "high"]
        count: int = Field(ge=0, le=99)

    llm = ChatOpenAI(base_url=server.url + "/v1", api_key="unused", model="brainstacks", max_tokens=64,
                     temperature=0, max_retries=0)
    out = llm.with_structured_output(Verdict, method="json_schema").invoke("Rate this.")
    assert isinstance(out, Verdict)
    # LangChain's other default, function_calling, needs `tools` with a forced `tool_choice` (and sends
    # parallel_tool_calls=false): the reply is one call whose arguments follow the function's parameters
    out = llm.with_structured_output(Verdict, method="function_calling").invoke("Rate this.")
    assert isinstance(out, Verdict)


TOOLS = [{"type": "function", "function": {"name": "verdict", "description": "Record a verdict.",
                                           "parameters": SCHEMA}},
         {"type": "function", "function": {"name": "noop", "parameters": {"type": "object", "properties": {}}}}]


def test_a_forced_tool_call_is_a_tool_call_with_valid_arguments(client):
    msgs = [{"role": "user", "content": "rate it"}]
    force = {"type": "function", "function": {"name": "verdict"}}
    r = client.chat.completions.create(model="brainstacks", messages=msgs, max_tokens=64, temperature=1.0, seed=2,
                                       n=4, tools=TOOLS, tool_choice=force)
    called = 0
    for ch in r.choices:
        assert ch.message.content is None and len(ch.message.tool_calls) == 1
        call = ch.message.tool_calls[0]
        assert call.type == "function" and call.function.name == "verdict" and call.id.startswith("call_")
        if ch.finish_reason == "tool_calls":
            jsonschema.validate(json.loads(call.function.arguments), SCHEMA)
            called += 1
        else:
            assert ch.finish_reason == "length"
    assert called >= 1
    # streamed: the id and name first, then the arguments in pieces; together the same call
    stream = client.chat.completions.create(model="brainstacks", messages=msgs, max_tokens=64, temperature=0,
                                            tools=TOOLS, tool_choice=force, stream=True)
    args, ids, finish = "", set(), None
    for chunk in stream:
        for ch in chunk.choices:
            for tc in ch.delta.tool_calls or []:
                ids |= {tc.id} - {None}
                args += tc.function.arguments or ""
            finish = ch.finish_reason or finish
    whole = client.chat.completions.create(model="brainstacks", messages=msgs, max_tokens=64, temperature=0,
                                           tools=TOOLS, tool_choice=force)
    assert args == whole.choices[0].message.tool_calls[0].function.arguments and len(ids) == 1
    assert finish == whole.choices[0].finish_reason
    # auto (or no tool_choice): a text reply, no call
    auto = client.chat.completions.create(model="brainstacks", messages=msgs, max_tokens=4, tools=TOOLS,
                                          tool_choice="auto")
    assert auto.choices[0].message.tool_calls is None and auto.choices[0].message.content is not None


@pytest.mark.parametrize("extra,param", [
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "missing"}}},
     "tool_choice.function.name"),
    ({"tools": TOOLS, "tool_choice": "required"}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": TOOLS[:1], "tool_choice": "required", "response_format": {"type": "json_object"}}, "response_format"),
    ({"tools": [{"type": "function", "function": {"name": "bad", "parameters": {"type": "wizard"}}}],
      "tool_choice": "required"}, "tools"),
])
def test_bad_tool_requests_are_400(server, extra, param):
    r = post(server, "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
                                              **extra})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"].startswith(param), r.json()


# ---------------------------------------------------------------------------------------------------- tokenize
def test_tokenize_counts_what_a_completion_feeds(client, server):
    r = client.completions.create(model="brainstacks", prompt=PROMPT, max_tokens=1)
    t = post(server, "/tokenize", {"prompt": PROMPT, "return_token_strs": True}).json()
    assert t["count"] == len(t["tokens"]) == r.usage.prompt_tokens
    assert t["max_model_len"] == server.app.state.bs.runner.max_model_len
    assert len(t["token_strs"]) == t["count"]
    assert post(server, "/detokenize", {"tokens": t["tokens"]}).json()["prompt"].endswith(PROMPT)
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}]
    c = client.chat.completions.create(model="brainstacks", messages=msgs, max_tokens=1)
    t = post(server, "/tokenize", {"messages": msgs}).json()
    assert t["count"] == c.usage.prompt_tokens and t["token_strs"] is None
    shorter = post(server, "/tokenize", {"messages": msgs, "add_generation_prompt": False}).json()
    assert shorter["count"] <= t["count"]
    plain = post(server, "/tokenize", {"prompt": PROMPT, "add_special_tokens": False}).json()
    assert plain["count"] <= r.usage.prompt_tokens


@pytest.mark.parametrize("path,body,param", [
    ("/tokenize", {}, "prompt"),
    ("/tokenize", {"prompt": "a", "messages": [{"role": "user", "content": "b"}]}, "prompt"),
    ("/tokenize", {"prompt": 5}, "prompt"),
    ("/detokenize", {"tokens": [10**6]}, "tokens"),
    ("/detokenize", {"tokens": ["a"]}, "tokens"),
])
def test_tokenize_refuses_bad_bodies(server, path, body, param):
    r = post(server, path, body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"].startswith(param), r.json()
