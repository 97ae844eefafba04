"""Runtime adapters against a real server: a real PEFT LoRA adapter loaded and unloaded through POST/DELETE
/admin/stacks and vLLM's /v1/load_lora_adapter and /v1/unload_lora_adapter (through the real `openai` client),
while a stream of requests runs and none fails; each change is a bundle version on disk; bad adapters are refused
with nothing changed; the admin key rules hold for the /v1 paths."""

from __future__ import annotations

import threading

import httpx
import openai
import pytest

from server.app import create_app
from server.settings import ServerSettings
from tests.peft_adapters import make_adapter as make_peft_adapter

from .conftest import build_bundle

peft = pytest.importorskip("peft")


def make_adapter(base, out, seed=0, r=4):
    """A PEFT LoRA on q/v/up (tests/peft_adapters.py)."""
    return make_peft_adapter(base, out, r=r, targets=("q_proj", "v_proj", "up_proj"), seed=seed, std=0.3)


def files(d):
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()
            and p.name != ".train.lock"}


class Stream:
    """Requests in a loop on two threads (routed and a named domain) until stopped; counts failures."""

    def __init__(self, url: str):
        self.url, self.ok, self.failed = url, 0, []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.run, args=(m,), daemon=True)
                        for m in ("brainstacks", "brainstacks:math")]

    def run(self, model: str) -> None:
        with openai.OpenAI(base_url=self.url + "/v1", api_key="x", max_retries=0, timeout=60) as c:
            while not self.stop.is_set():
                try:
                    c.completions.create(model=model, prompt="two plus two", max_tokens=6, temperature=0)
                    self.ok += 1
                except Exception as e:  # noqa: BLE001 - every failure is recorded and asserted on
                    self.failed.append(repr(e))

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(60)


@pytest.fixture()
def served(tmp_path, core_base_dir, live_server_factory):
    bundle = build_bundle(tmp_path / "bundle", core_base_dir)
    s = live_server_factory(create_app(ServerSettings(bundle=str(bundle), quantize="none", max_tokens_limit=64)))
    return s, bundle


def test_load_and_unload_while_serving(served, core_base_dir, tmp_path):
    s, bundle = served
    ad = make_adapter(core_base_dir, tmp_path / "mine")
    ad2 = make_adapter(core_base_dir, tmp_path / "theirs", seed=1, r=8)
    client = openai.OpenAI(base_url=s.url + "/v1", api_key="x", max_retries=0, timeout=60)
    with Stream(s.url) as stream:
        before = files(bundle)
        bad = httpx.post(s.url + "/admin/stacks", json={"domain": "mine", "path": str(tmp_path / "nowhere")})
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_adapter"
        assert "nowhere: not a directory" in bad.json()["error"]["message"]
        clash = httpx.post(s.url + "/admin/stacks", json={"domain": "math", "path": str(ad)})
        assert clash.status_code == 400 and "domain 'math' exists already" in clash.json()["error"]["message"]
        assert files(bundle) == before  # refused: nothing written

        r = httpx.post(s.url + "/admin/stacks", json={"domain": "mine", "path": str(ad)}, timeout=120)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["result"] == "ok" and body["added"] == ["mine"] and body["bundle_version"] == 2
        assert body["routed"] is False and body["model"] == "brainstacks:mine" and body["rank"] == 4
        assert (bundle / "CURRENT").read_text().strip() == "versions/2"  # a bundle version, not memory-only state
        ids = [m.id for m in client.models.list().data]
        assert "brainstacks:mine" in ids
        own = client.completions.create(model="brainstacks:mine", prompt="two plus two", max_tokens=6, temperature=0)
        assert own.model_extra["brainstacks"]["weights"] == {"math": 0.0, "code": 0.0, "mine": 1.0}
        mixed = client.completions.create(model="brainstacks", prompt="two plus two", max_tokens=6, temperature=0,
                                          extra_body={"weights": {"mine": 0.5, "math": 1.0}})
        assert mixed.model_extra["brainstacks"]["weights"] == {"math": 1.0, "code": 0.0, "mine": 0.5}
        routed = client.completions.create(model="brainstacks", prompt="two plus two", max_tokens=6)
        assert routed.model_extra["brainstacks"]["weights"].get("mine", 0.0) == 0.0  # the router does not know it
        info = httpx.get(s.url + "/admin/stacks").json()
        mine = next(d for d in info["domains"] if d["name"] == "mine")
        assert mine["routed"] is False and mine["kind"] == "lora"

        ok = client.post("/load_lora_adapter", body={"lora_name": "theirs", "lora_path": str(ad2)},
                         cast_to=httpx.Response)
        assert ok.status_code == 200 and ok.text == "Success: LoRA adapter 'theirs' added successfully."
        assert "brainstacks:theirs" in [m.id for m in client.models.list().data]
        ok = client.post("/unload_lora_adapter", body={"lora_name": "theirs"}, cast_to=httpx.Response)
        assert ok.text == "Success: LoRA adapter 'theirs' removed successfully."
        gone = httpx.post(s.url + "/v1/unload_lora_adapter", json={"lora_name": "theirs"})
        assert gone.status_code == 404 and gone.json()["error"]["code"] == "domain_not_found"

        r = httpx.delete(s.url + "/admin/stacks/mine", timeout=120)
        assert r.status_code == 200 and r.json()["removed"] == ["mine"] and r.json()["bundle_version"] == 5
        assert "brainstacks:mine" not in [m.id for m in client.models.list().data]
        assert httpx.delete(s.url + "/admin/stacks/mine").status_code == 404
        assert (bundle / "CURRENT").read_text().strip() == "versions/5"
    assert stream.ok > 0 and stream.failed == [], stream.failed[:3]


def test_the_vllm_paths_follow_the_admin_key_rules(tmp_path, core_base_dir, live_server_factory):
    bundle = build_bundle(tmp_path / "bundle", core_base_dir)
    s = live_server_factory(create_app(ServerSettings(bundle=str(bundle), quantize="none", api_key="api-k",
                                                      admin_key="admin-k")))
    body = {"lora_name": "mine", "lora_path": str(tmp_path)}
    for path in ("/v1/load_lora_adapter", "/admin/stacks"):
        r = httpx.post(s.url + path, json=body, headers={"Authorization": "Bearer api-k"})
        assert r.status_code == 401, path  # the API key is not enough
    r = httpx.post(s.url + "/v1/load_lora_adapter", json=body, headers={"Authorization": "Bearer admin-k"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_adapter"  # past the key: the path is bad


def test_a_runtime_load_reaches_a_watching_server_on_the_same_bundle(tmp_path, core_base_dir, live_server_factory):
    """A runtime load is a bundle version, not memory-only state: a second server with --watch on the same
    directory (a replica on shared storage) serves the new domain too."""
    import time

    bundle = build_bundle(tmp_path / "bundle", core_base_dir)
    a = live_server_factory(create_app(ServerSettings(bundle=str(bundle), quantize="none")))
    b = live_server_factory(create_app(ServerSettings(bundle=str(bundle), quantize="none", watch=True,
                                                      watch_interval=0.1)))
    ad = make_adapter(core_base_dir, tmp_path / "mine")
    assert httpx.post(a.url + "/admin/stacks", json={"domain": "mine", "path": str(ad)}, timeout=120).status_code == 200
    deadline = time.monotonic() + 60
    while "brainstacks:mine" not in [m["id"] for m in httpx.get(b.url + "/v1/models").json()["data"]]:
        assert time.monotonic() < deadline, "the watching server never saw the new version"
        time.sleep(0.2)
    assert httpx.get(b.url + "/admin/stacks").json()["bundle_version"] == 2
