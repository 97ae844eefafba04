"""A multimodal Gemma 3 bundle (Gemma3ForConditionalGeneration, tiny SigLIP tower) served over HTTP on text.

The family matrix (tests/brainstacks/test_families.py) covers the library and the engine for every family; this
checks the one family whose config nests its sizes (Gemma3Config.text_config) through the real server, the real
`openai` client and the family's own chat template (system turn folded into the first user turn).
"""

from __future__ import annotations

import openai
import pytest

from brainstacks.tiny_models import tiny_base
from server.app import create_app
from server.settings import ServerSettings

from .conftest import LiveServer, build_bundle


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    root = tmp_path_factory.mktemp("gemma3mm")
    base = tiny_base(root / "base", family="gemma3_mm", instruct=True)
    bundle = build_bundle(root / "bundle", base)
    s = LiveServer(create_app(ServerSettings(bundle=str(bundle), quantize="nf4", max_tokens_limit=32))).start()
    with openai.OpenAI(base_url=s.url + "/v1", api_key="unused", max_retries=0, timeout=60) as c:
        yield c
    s.stop()


def test_multimodal_gemma3_serves_routed_text(client):
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "what is 2 plus 3 ?"}]
    r = client.chat.completions.create(model="brainstacks", messages=msgs, max_tokens=6, temperature=0)
    choice = r.choices[0]
    assert choice.finish_reason in ("length", "stop") and isinstance(choice.message.content, str)
    assert 1 <= r.usage.completion_tokens <= 6
    # the prompt is the family's template: BOS, one user turn holding the system text, the model's turn opened
    assert r.usage.prompt_tokens == len("<bos> <start_of_turn> user be brief what is 2 plus 3 ? <end_of_turn> "
                                        "<start_of_turn> model".split())
    ext = r.model_extra["brainstacks"]
    assert set(ext["weights"]) == {"math", "code"} and ext["bundle_version"] == 1
    one = client.completions.create(model="brainstacks:math", prompt="the patient dose is", max_tokens=4, temperature=0)
    assert one.model_extra["brainstacks"]["weights"] == {"math": 1.0, "code": 0.0}
    assert 1 <= one.usage.completion_tokens <= 4
