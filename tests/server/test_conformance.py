"""OpenAI conformance (issue 9, item 5), against a real uvicorn server on loopback: 400 (never 422) naming the field,
nulls accepted where OpenAI's spec allows them, GET /v1/models/{id}, presence/frequency penalties against a reference
computed another way (a transformers LogitsProcessor), echo, non-finite logprobs sent as null, eos ids from
generation_config.json, the rules the OpenAPI document states, and two real clients: the `openai` SDK and
langchain-openai's `ChatOpenAI` (invoke and stream).
"""

from __future__ import annotations

import json
import shutil

import httpx
import openai
import pytest
import torch

from server.app import create_app
from server.loading import load_runner
from server.settings import ServerSettings

from .conftest import LiveServer, build_bundle

PROMPT = "the quick brown fox"


@pytest.fixture(scope="module")
def server(tmp_path_factory, core_base_dir):
    bundle = build_bundle(tmp_path_factory.mktemp("conf") / "bundle", core_base_dir)
    s = LiveServer(create_app(ServerSettings(bundle=str(bundle), quantize="none", max_tokens_limit=32))).start()
    yield s
    s.stop()


def post(server, path: str, body: dict) -> httpx.Response:
    return httpx.post(server.url + path, json=body, timeout=60)


# ---------------------------------------------------------------------------------------------------- errors, nulls
@pytest.mark.parametrize("path,body,param", [
    ("/v1/completions", {"prompt": "x", "max_tokens": "5"}, "max_tokens"),
    ("/v1/completions", {"prompt": "x", "max_tokens": 2.5}, "max_tokens"),
    ("/v1/completions", {"prompt": "x", "echo": 0}, "echo"),
    ("/v1/completions", {"prompt": "x", "stream": "yes"}, "stream"),
    ("/v1/completions", {"prompt": "x", "temperature": 2.5}, "temperature"),
    ("/v1/completions", {"prompt": "x", "seed": 2**63}, "seed"),
    ("/v1/completions", {"prompt": "x", "stop": ["a", ""]}, "stop"),
    ("/v1/completions", {"prompt": "x", "frequency_penalty": 2.5}, "frequency_penalty"),
    ("/v1/completions", {"prompt": "x", "bogus": 1}, "bogus"),
    ("/v1/completions", {"prompt": "x", "max_tokens": 33}, "max_tokens"),
    ("/v1/completions", {"prompt": [10**6]}, "prompt"),
    ("/v1/chat/completions", {"messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "top_logprobs": 2}, "top_logprobs"),
])
def test_invalid_requests_answer_400_naming_the_field(server, path, body, param):
    r = post(server, path, body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == param, err


def test_the_sdk_raises_bad_request_error(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="brainstacks", prompt="x", max_tokens=2, extra_body={"echo": 0})
    assert e.value.status_code == 400 and e.value.param == "echo"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="brainstacks", messages=[{"role": "user", "content": "hi"}],
                                       max_tokens=1000)
    assert e.value.param == "max_tokens"


def test_null_is_accepted_for_every_nullable_field(server):
    common = {k: None for k in ("max_tokens", "temperature", "top_p", "top_k", "n", "stop", "seed", "stream",
                                "stream_options", "user", "presence_penalty", "frequency_penalty", "weights")}
    r = post(server, "/v1/completions", {"prompt": PROMPT, **common, "logprobs": None, "echo": None})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["choices"]) == 1 and body["choices"][0]["logprobs"] is None  # n -> 1, logprobs -> off
    assert 1 <= body["usage"]["completion_tokens"] <= 16  # max_tokens -> 16
    r = post(server, "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"},
                                                            {"role": "assistant", "content": None},
                                                            {"role": "user", "content": "again"}],
                                              **common, "logprobs": None, "top_logprobs": None,
                                              "max_completion_tokens": None})
    assert r.status_code == 200, r.text
    r = post(server, "/v1/completions", {"prompt": PROMPT, "max_tokens": 2, "stream": True,
                                         "stream_options": {"include_usage": None}})
    assert r.status_code == 200 and r.text.rstrip().endswith("data: [DONE]")


# ---------------------------------------------------------------------------------------------------- openai SDK
def test_models_list_and_retrieve(client):
    ids = [m.id for m in client.models.list().data]
    assert ids == ["brainstacks", "brainstacks:base", "brainstacks:all", "brainstacks:math", "brainstacks:code"]
    for mid in ids:
        m = client.models.retrieve(mid)
        assert m.id == mid and m.object == "model" and m.owned_by == "brainstacks"
    with pytest.raises(openai.NotFoundError) as e:
        client.models.retrieve("brainstacks:poetry")
    assert e.value.code == "model_not_found"


def test_sdk_completions_chat_and_streams(client):
    full = client.completions.create(model="brainstacks", prompt=PROMPT, max_tokens=8, temperature=0)
    text = "".join(c.choices[0].text for c in client.completions.create(
        model="brainstacks", prompt=PROMPT, max_tokens=8, temperature=0, stream=True) if c.choices)
    assert text == full.choices[0].text and full.usage.completion_tokens >= 1
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "what is two plus two"}]
    chat = client.chat.completions.create(model="brainstacks:math", messages=msgs, max_tokens=8, temperature=0,
                                          seed=3, frequency_penalty=0.5, presence_penalty=None, n=2, logprobs=True,
                                          top_logprobs=2)
    assert [c.index for c in chat.choices] == [0, 1] and chat.choices[0].message.role == "assistant"
    assert chat.choices[0].message.content == chat.choices[1].message.content  # temperature 0: n identical
    assert len(chat.choices[0].logprobs.content[0].top_logprobs) == 2
    deltas = list(client.chat.completions.create(model="brainstacks:math", messages=msgs, max_tokens=8,
                                                 temperature=0, frequency_penalty=0.5, stream=True,
                                                 stream_options={"include_usage": True}))
    assert "".join(d.choices[0].delta.content or "" for d in deltas if d.choices) == chat.choices[0].message.content
    assert deltas[-1].usage.completion_tokens == chat.usage.completion_tokens // 2


def test_langchain_chat_openai_invoke_and_stream(server):
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(base_url=server.url + "/v1", api_key="unused", model="brainstacks", temperature=0, max_tokens=8,
                     max_retries=0, timeout=60)
    out = llm.invoke([("system", "be brief"), ("human", "what is two plus two")])
    assert isinstance(out.content, str) and out.response_metadata["finish_reason"] in ("stop", "length")
    assert out.usage_metadata["output_tokens"] >= 1
    chunks = list(llm.stream([("system", "be brief"), ("human", "what is two plus two")]))
    assert len(chunks) >= 2 and "".join(c.content for c in chunks) == out.content


# ---------------------------------------------------------------------------------------------------- penalties, echo
def test_apply_penalties_is_openais_formula():
    from server.sampling import SamplingParams, apply_penalties

    logits = torch.arange(6, dtype=torch.float32)
    out = apply_penalties(logits, SamplingParams(presence_penalty=0.5, frequency_penalty=0.25), [2, 2, 4, 99])
    want = logits.clone()
    want[2] -= 2 * 0.25 + 0.5
    want[4] -= 1 * 0.25 + 0.5
    torch.testing.assert_close(out, want)  # an id outside the vocabulary (99) is ignored
    assert apply_penalties(logits, SamplingParams(), [1, 1]) is logits


class _Penalty:
    """The reference: OpenAI's penalties as a transformers LogitsProcessor over the generated part of input_ids."""

    def __init__(self, prompt_len: int, presence: float, frequency: float):
        self.n, self.pp, self.fp = prompt_len, presence, frequency

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        for i in range(scores.shape[0]):
            counts = torch.bincount(input_ids[i, self.n :], minlength=scores.shape[-1]).to(scores.dtype)
            scores[i] = scores[i] - counts * self.fp - (counts > 0).to(scores.dtype) * self.pp
        return scores


def test_penalties_match_a_reference_greedy_decode(server, core_base_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer, LogitsProcessorList

    from brainstacks.text import encode_prompt

    tok = AutoTokenizer.from_pretrained(core_base_dir)
    model = AutoModelForCausalLM.from_pretrained(core_base_dir).eval()
    ids = encode_prompt(tok, PROMPT)
    texts = {}
    for pp, fp in ((0.0, 0.0), (2.0, 0.0), (0.0, 1.5), (-1.0, 0.5)):
        with torch.no_grad():
            ref = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id,
                                 logits_processor=LogitsProcessorList([_Penalty(len(ids), pp, fp)]))
        want = tok.decode(ref[0, len(ids):], skip_special_tokens=True)
        r = post(server, "/v1/completions", {"model": "brainstacks:base", "prompt": PROMPT, "max_tokens": 12,
                                             "temperature": 0, "presence_penalty": pp, "frequency_penalty": fp})
        assert r.status_code == 200, r.text
        texts[(pp, fp)] = r.json()["choices"][0]["text"]
        assert texts[(pp, fp)] == want, (pp, fp)
    assert len(set(texts.values())) >= 2  # the penalties changed what was generated


def test_echo_prepends_the_prompt(server, client):
    plain = client.completions.create(model="brainstacks", prompt=PROMPT, max_tokens=6, temperature=0)
    echoed = client.completions.create(model="brainstacks", prompt=PROMPT, max_tokens=6, temperature=0, echo=True)
    assert echoed.choices[0].text == PROMPT + plain.choices[0].text
    assert echoed.usage == plain.usage
    chunks = list(client.completions.create(model="brainstacks", prompt=[PROMPT, "def add"], max_tokens=6,
                                            temperature=0, echo=True, stream=True))
    assert {c.index: c.text for c in chunks[0].choices} == {0: PROMPT, 1: "def add"}  # the prompts come first
    assert "".join(c.text for ch in chunks for c in ch.choices if c.index == 0) == echoed.choices[0].text
    ids = client.completions.create(model="brainstacks", prompt=[5, 6, 7], max_tokens=1, echo=True, temperature=0)
    assert ids.choices[0].text.startswith(server.app.state.bs.runner.tokenizer.decode([5, 6, 7]))
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="brainstacks", prompt=PROMPT, max_tokens=2, echo=True, logprobs=1)
    assert e.value.param == "echo" and "not supported" in e.value.message


# ---------------------------------------------------------------------------------------------------- numbers, eos
def test_non_finite_logprobs_are_sent_as_null(tmp_path, core_base_dir, live_server_factory):
    mode = {"kind": "ok"}

    def poisoned_runner(settings):
        runner = load_runner(settings)
        real_prefill, real_decode = runner.prefill, runner.decode

        def poison(out):
            out = out.clone()  # (B, V)
            if mode["kind"] == "inf":  # only tokens 40..42 possible: the other alternatives have logprob -inf
                keep = out[:, 40:43].clone()
                out[:] = float("-inf")
                out[:, 40:43] = keep
            elif mode["kind"] == "nan":
                out[:] = float("nan")
            return out

        def prefill(*args):
            kv, logits = real_prefill(*args)
            return kv, poison(logits)

        runner.prefill = prefill
        runner.decode = lambda *args: poison(real_decode(*args))
        return runner

    bundle = build_bundle(tmp_path / "b", core_base_dir)
    s = live_server_factory(create_app(ServerSettings(bundle=str(bundle), quantize="none"),
                                       runner_factory=poisoned_runner))
    for kind in ("inf", "nan"):
        mode["kind"] = kind
        for path, body in (("/v1/completions", {"prompt": PROMPT, "logprobs": 5}),
                           ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}],
                                                     "logprobs": True, "top_logprobs": 5})):
            for stream in (False, True):
                r = post(s, path, {**body, "max_tokens": 3, "temperature": 0, "stream": stream})
                assert r.status_code == 200, r.text
                assert "NaN" not in r.text and "Infinity" not in r.text
                if stream:
                    objs = [json.loads(ln[6:]) for ln in r.text.splitlines()
                            if ln.startswith("data: ") and ln != "data: [DONE]"]
                    assert all("error" not in o for o in objs) and r.text.rstrip().endswith("data: [DONE]")
                    lps = [c["logprobs"] for o in objs for c in o["choices"] if c.get("logprobs")]
                else:
                    lps = [c["logprobs"] for c in r.json()["choices"]]
                assert lps
                if path == "/v1/completions":
                    tops = [v for lp in lps for d in lp["top_logprobs"] for v in d.values()]
                    chosen = [v for lp in lps for v in lp["token_logprobs"]]
                else:
                    tops = [t["logprob"] for lp in lps for e in lp["content"] for t in e["top_logprobs"]]
                    chosen = [e["logprob"] for lp in lps for e in lp["content"]]
                assert None in tops  # -inf alternatives (inf) or every value (nan)
                if kind == "nan":
                    assert set(chosen) == {None} and set(tops) == {None}
                else:
                    assert all(isinstance(v, float) for v in chosen)


def test_eos_ids_come_from_generation_config(tmp_path, core_base_dir, live_server_factory):
    """The server stops at an id that only generation_config.json names as eos."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from brainstacks.text import encode_prompt

    base = tmp_path / "base"
    shutil.copytree(core_base_dir, base)
    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base).eval()
    ids = encode_prompt(tok, PROMPT)
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=tok.pad_token_id)
    new = out[0, len(ids):].tolist()
    known = {tok.eos_token_id, model.config.eos_token_id}
    k = next(i for i in range(1, len(new)) if new[i] not in known and new[i] not in new[:i])  # a fresh id at step k
    gen_file = base / "generation_config.json"
    gen = json.loads(gen_file.read_text()) if gen_file.exists() else {}
    gen["eos_token_id"] = [tok.eos_token_id, new[k]]
    (base / "generation_config.json").write_text(json.dumps(gen))
    s = live_server_factory(create_app(ServerSettings(base=str(base), quantize="none")))
    assert new[k] in s.app.state.bs.runner.eos_token_ids
    r = post(s, "/v1/completions", {"prompt": PROMPT, "max_tokens": 8, "temperature": 0}).json()
    assert r["choices"][0]["finish_reason"] == "stop" and r["usage"]["completion_tokens"] == k + 1
    assert r["choices"][0]["text"] == tok.decode(new[:k], skip_special_tokens=True)


# ---------------------------------------------------------------------------------------------------- OpenAPI
def test_openapi_states_the_rules_the_server_enforces(server):
    doc = httpx.get(server.url + "/openapi.json").json()
    assert '"422"' not in json.dumps(doc) and "HTTPValidationError" not in json.dumps(doc)
    sc = doc["components"]["schemas"]
    comp, chat = sc["CompletionRequest"]["properties"], sc["ChatCompletionRequest"]
    seed = next(s for s in comp["seed"]["anyOf"] if s["type"] == "integer")
    assert (seed["minimum"], seed["maximum"]) == (-(2**63), 2**63 - 1)
    assert [s["type"] for s in comp["echo"]["anyOf"]] == ["boolean", "null"]
    token_ids = next(s for s in comp["prompt"]["anyOf"] if s["type"] == "array" and s["items"]["type"] == "integer")
    assert token_ids["items"]["maximum"] == server.app.state.bs.runner.vocab_size - 1
    assert comp["model"]["enum"][:3] == ["brainstacks", "brainstacks:base", "brainstacks:all"]
    model_id = doc["paths"]["/v1/models/{model_id}"]["get"]["parameters"][0]["schema"]
    assert model_id["enum"] == comp["model"]["enum"]
    assert sc["RouteRequest"]["oneOf"] == [{"required": ["prompt"]}, {"required": ["messages"]}]
    assert chat["allOf"][0]["then"]["properties"]["logprobs"] == {"const": True}
    assert chat["allOf"][1]["then"]["properties"]["tools"]["maxItems"] == 1  # tool_choice required: one tool
    for path in ("/v1/completions", "/v1/chat/completions"):
        ok = doc["paths"][path]["post"]["responses"]["200"]["content"]
        assert {"application/json", "text/event-stream"} <= set(ok)
        assert "400" in doc["paths"][path]["post"]["responses"]
    r = httpx.get(server.url + "/v1/completions")
    assert r.status_code == 405 and r.headers["allow"] == "POST" and r.json()["error"]["code"] == "method_not_allowed"
    r = httpx.delete(server.url + "/v1/models")
    assert r.status_code == 405 and r.headers["allow"] == "GET"
