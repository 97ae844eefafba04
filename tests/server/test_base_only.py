"""Serving a bare base (--base without --bundle), and the chat rendering shared with training."""

from __future__ import annotations

import httpx

from brainstacks.text import render_chat
from server.app import create_app
from server.settings import ServerSettings


def test_bare_base_serves_without_domains(tiny_base_dir, live_server_factory):
    s = live_server_factory(create_app(ServerSettings(base=str(tiny_base_dir), quantize="none")))
    ids = [m["id"] for m in httpx.get(s.url + "/v1/models").json()["data"]]
    assert ids == ["brainstacks", "brainstacks:base", "brainstacks:all"]
    r = httpx.post(s.url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "café 🙂"}],
                                                         "max_tokens": 4, "temperature": 0})
    assert r.status_code == 200 and r.json()["brainstacks"] == {"weights": {}, "bundle_version": 0}
    assert httpx.post(s.url + "/v1/completions", json={"prompt": "x", "weights": {"math": 1}}).status_code == 400
    rel = httpx.post(s.url + "/admin/reload")
    assert rel.status_code == 409 and "no bundle" in rel.json()["error"]["message"]
    assert httpx.get(s.url + "/admin/stacks").json()["domains"] == []


def test_chat_fallback_without_a_template(tiny_tokenizer):
    """A tokenizer with no chat template still renders a conversation (one rendering for training and serving:
    brainstacks.text.render_chat), ending with the assistant's turn."""
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "two plus two"}]
    assert not getattr(tiny_tokenizer, "chat_template", None)
    text = render_chat(tiny_tokenizer, msgs, add_generation_prompt=True)
    assert "be brief" in text and "two plus two" in text and text.endswith("<|assistant|>\n")
    assert not render_chat(tiny_tokenizer, msgs).endswith("<|assistant|>\n")
