"""`brainstacks serve` with no arguments: the shipped demo bundle over the real SmolLM2 base, through the real
`openai` client on a real socket. The base converts from the installed package's GGUF into the session's cache."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from brainstacks.demo import DEMO_BUNDLE

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory):
    """`brainstacks serve --port P` and nothing else, with an empty cache: it must find and convert the base."""
    assert (DEMO_BUNDLE / "manifest.json").is_file(), "the demo bundle ships with the package"
    port = _free_port()
    tmp = tmp_path_factory.mktemp("serve")
    env = {**os.environ, "BRAINSTACKS_CACHE": str(tmp / "cache")}
    env.pop("BRAINSTACKS_API_KEY", None)
    log_path = tmp / "serve.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "brainstacks_cli", "serve", "--port", str(port)], cwd=ROOT,
                                env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 400
        while True:
            assert proc.poll() is None, log_path.read_text()
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "server did not become ready: " + log_path.read_text()[-2000:]
            time.sleep(0.5)
        yield url, log_path
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_first_serve_converts_the_base_and_says_so(demo_server):
    _, log_path = demo_server
    text = log_path.read_text()
    assert "converting GGUF base SmolLM2-135M-Instruct.Q4_1.gguf once" in text
    assert "convert SmolLM2-135M-Instruct.Q4_1.gguf" in text  # the progress bar
    assert "decode path: fused" in text and "warmed up in" in text  # the default path, built at start-up


def test_serve_without_arguments_answers_a_chat_sensibly(demo_server):
    from openai import OpenAI

    client = OpenAI(base_url=demo_server[0] + "/v1", api_key="unused")
    out = client.chat.completions.create(model="brainstacks", temperature=0, max_tokens=48,
                                         messages=[{"role": "user", "content": "What is the capital of France?"}])
    choice = out.choices[0]
    assert "Paris" in choice.message.content.split("\n")[0]  # answered first
    # (stopping at <|im_end|> is tested on the base in tests/brainstacks/test_gguf.py; the routed composition
    # was measured to run on to the token budget here, finish_reason "length")
    assert choice.finish_reason in ("stop", "length")
    ext = out.model_extra["brainstacks"]
    assert set(ext["weights"]) == {"chat", "code", "math", "medical", "reasoning"}
    assert ext["bundle_version"] >= 1


@pytest.mark.parametrize("prompt,domain", [
    ("What is 17 + 25?", "math"),
    ("A patient weighs 20 kg. The dose is 5 mg/kg. How many mg?", "medical"),
    ("Write a Python function that returns the factorial of n.", "code"),
    ("Anna is older than Ben, and Ben is older than Carl. Who is the youngest?", "reasoning"),
])  # fmt: skip
def test_debug_route_picks_the_domain(demo_server, prompt, domain):
    """The router switches on exactly the composition it was trained towards for the prompt's domain (the outcome
    oracle's typical set, in the bundle's routing report): medical is math + medical at nearly equal weights, so which
    of the two is a hair higher means nothing, but a missing or an extra domain does."""
    import json

    typical = json.loads((DEMO_BUNDLE / "reports" / "routing.json").read_text())["typical_oracle_sets"]
    r = httpx.post(demo_server[0] + "/debug/route", json={"prompt": prompt}, timeout=60)
    assert r.status_code == 200
    weights = r.json()["weights"]
    assert {d for d, w in weights.items() if w > 0.5} == set(typical[domain]), weights


def test_readme_examples_answer_right_and_better_than_the_base(demo_server):
    """The README's chat and completion examples, greedy, on the shipped bundle: the routed model answers them right
    (measured; docs/DEMO.md has the held-out accuracy, which is what the demo claims in general) and the base alone,
    asked the same, does not."""
    from openai import OpenAI

    client = OpenAI(base_url=demo_server[0] + "/v1", api_key="unused")
    ask = [{"role": "user", "content": "What is 17 + 25?"}]
    routed = client.chat.completions.create(model="brainstacks", messages=ask, max_tokens=64, temperature=0)
    base = client.chat.completions.create(model="brainstacks:base", messages=ask, max_tokens=64, temperature=0)
    assert "Answer: 42" in routed.choices[0].message.content, routed.choices[0].message.content
    assert "42" not in base.choices[0].message.content, base.choices[0].message.content
    assert routed.model_extra["brainstacks"]["weights"]["math"] > 0.5

    prompt = "Q: A patient weighs 30 kg and the dose is 4 mg/kg. How many mg?\nA:"
    done = client.completions.create(model="brainstacks", prompt=prompt, max_tokens=32, temperature=0)
    assert "Answer: 120 mg" in done.choices[0].text, done.choices[0].text
    w = done.model_extra["brainstacks"]["weights"]
    assert max(w, key=w.get) == "medical" and w["math"] > 0, w  # medical on top of math, as it was trained

    fruits = client.chat.completions.create(model="brainstacks", max_tokens=32, temperature=0,
                                            messages=[{"role": "user", "content": "List three fruits as bullets."}])
    lines = [x for x in fruits.choices[0].message.content.splitlines() if x.strip()]
    assert len(lines) == 3 and all(x.startswith("- ") for x in lines), lines


def test_structured_output_and_tokenize_on_the_real_model(demo_server):
    """response_format json_schema through the openai client on SmolLM2 (a real byte-level BPE tokenizer): the
    reply parses and validates; /tokenize counts what the chat completion was fed."""
    import json

    import jsonschema
    from openai import OpenAI

    client = OpenAI(base_url=demo_server[0] + "/v1", api_key="unused")
    schema = {"type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"],
              "additionalProperties": False}
    ask = [{"role": "user", "content": "What is 17 + 25? Reply in JSON."}]
    out = client.chat.completions.create(
        model="brainstacks", messages=ask, max_tokens=24, temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "sum", "schema": schema, "strict": True}})
    choice = out.choices[0]
    assert choice.finish_reason == "stop", choice
    jsonschema.validate(json.loads(choice.message.content), schema)
    print("json_schema reply:", choice.message.content)
    counted = httpx.post(demo_server[0] + "/tokenize", json={"messages": ask}, timeout=60).json()
    assert counted["count"] == out.usage.prompt_tokens and counted["max_model_len"] >= 2048
