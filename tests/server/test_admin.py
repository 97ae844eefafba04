"""Debug, admin (stacks, reload, --watch) and metrics, against a real server over a tiny bundle."""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from server.app import create_app
from server.settings import ServerSettings

from .conftest import add_domain, build_bundle


def sha256(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture()
def served(tmp_path, core_base_dir, live_server_factory):
    bundle = build_bundle(tmp_path / "bundle", core_base_dir)
    s = live_server_factory(create_app(ServerSettings(bundle=str(bundle), quantize="none", max_tokens_limit=64)))
    return s, bundle


def metrics(url: str) -> dict[str, list]:
    text = httpx.get(url + "/metrics").text
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def value(samples, name, **labels):
    return sum(s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def test_debug_route_and_request_history(served):
    s, _ = served
    route = httpx.post(s.url + "/debug/route", json={"prompt": "two plus two equals"}).json()
    assert set(route["weights"]) == {"math", "code"} and route["routed"] and route["bundle_version"] == 1
    r = httpx.post(s.url + "/v1/completions", json={"prompt": "two plus two equals", "max_tokens": 4, "user": "u-7"},
                   headers={"X-Request-Id": "dbg-1"})
    body = r.json()
    assert body["brainstacks"]["weights"] == route["weights"]  # same prompt, same router pass
    assert r.headers["x-request-id"] != "dbg-1"  # the server's id keys the record; the client's is kept in it
    for key in (body["id"], r.headers["x-request-id"]):
        rec = httpx.get(s.url + f"/debug/requests/{key}").json()
        assert rec["id"] == body["id"] and rec["weights"] == route["weights"] and rec["routed"]
        assert rec["usage"] == body["usage"] and rec["bundle_version"] == 1 and rec["user"] == "u-7"
        assert rec["active_stacks"] == [f"{d}/0" for d, w in route["weights"].items() if w > 0]
        t = rec["timings"]
        assert 0 <= t["queue_ms"] <= t["ttft_ms"] <= t["e2e_ms"] and t["route_ms"] >= 0 and t["prefill_ms"] > 0
    chat = httpx.post(s.url + "/debug/route", json={"messages": [{"role": "user", "content": "def add"}]})
    assert chat.status_code == 200
    bad = httpx.post(s.url + "/debug/route", json={"prompt": "x", "messages": [{"role": "user", "content": "y"}]})
    assert bad.status_code == 400


def test_admin_stacks_hashes_match_files(served):
    s, bundle = served
    info = httpx.get(s.url + "/admin/stacks").json()
    assert info["bundle_version"] == 1 and info["stacks_loaded"] == 2
    assert [d["name"] for d in info["domains"]] == ["math", "code"]
    for d in info["domains"]:
        st = d["stacks"][0]
        f = bundle / st["path"] / "stack.safetensors"
        assert st["sha256"] == sha256(f) and st["bytes"] == f.stat().st_size
    assert info["router"]["sha256"] == sha256(bundle / "router" / "router.safetensors")


def test_reload_adds_domain_and_refuses_bad_bundle(served):
    s, bundle = served
    assert httpx.post(s.url + "/admin/reload").json()["result"] == "unchanged"
    v = add_domain(bundle, "medical")
    r = httpx.post(s.url + "/admin/reload").json()
    assert r["result"] == "ok" and r["bundle_version"] == v == 2 and r["added"] == ["medical"]
    ids = [m["id"] for m in httpx.get(s.url + "/v1/models").json()["data"]]
    assert "brainstacks:medical" in ids
    out = httpx.post(s.url + "/v1/completions", json={"prompt": "dose", "model": "brainstacks:medical",
                                                      "max_tokens": 2}).json()
    assert out["brainstacks"] == {"weights": {"math": 0.0, "code": 0.0, "medical": 1.0}, "bundle_version": 2}

    # a corrupt stack in the next version: refused with the reason, the served version untouched
    v3 = add_domain(bundle, "legal", seed=3)
    f = bundle / "stacks" / "legal" / "0" / "stack.safetensors"
    f.write_bytes(f.read_bytes()[:-10] + b"0123456789")
    r = httpx.post(s.url + "/admin/reload")
    assert r.status_code == 409
    err = r.json()["error"]
    assert err["code"] == "bundle_refused" and any("legal" in x and "sha256" in x for x in err["reasons"])
    assert httpx.get(s.url + "/health").json()["bundle_version"] == 2
    assert "brainstacks:legal" not in [m["id"] for m in httpx.get(s.url + "/v1/models").json()["data"]]
    assert v3 == 3
    m = metrics(s.url)
    assert value(m["brainstacks_reloads"], "brainstacks_reloads_total", result="ok") == 1
    assert value(m["brainstacks_reloads"], "brainstacks_reloads_total", result="refused") == 1
    assert value(m["brainstacks_bundle_version"], "brainstacks_bundle_version") == 2
    assert value(m["brainstacks_stacks_loaded"], "brainstacks_stacks_loaded") == 3


def test_hot_load_under_steady_load_fails_no_request(served):
    """A new domain written into the served bundle appears while clients keep streaming; none fails."""
    s, bundle = served
    stop = threading.Event()
    results: list[tuple[int, int]] = []  # (status, bundle_version)
    errors: list[str] = []

    def client():
        with httpx.Client(base_url=s.url, timeout=60) as c:
            while not stop.is_set():
                try:
                    with c.stream("POST", "/v1/completions", json={"prompt": "two plus two", "max_tokens": 12,
                                                                    "stream": True}) as r:
                        lines = [ln for ln in r.iter_lines() if ln.startswith("data: ")]
                        ok = r.status_code == 200 and lines[-1] == "data: [DONE]" and '"error"' not in "".join(lines)
                        if not ok:
                            errors.append(f"{r.status_code}: {lines[-1:]}")
                        results.append((r.status_code, int(lines[0].split('"bundle_version": ')[1].split("}")[0])))
                except Exception as e:  # noqa: BLE001 - any failure counts
                    errors.append(repr(e))

    threads = [threading.Thread(target=client) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        while len(results) < 6:
            time.sleep(0.02)
        add_domain(bundle, "medical")
        r = httpx.post(s.url + "/admin/reload", timeout=60).json()
        assert r["result"] == "ok"
        n = len(results)
        while len(results) < n + 6:
            time.sleep(0.02)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert errors == []
    versions = [v for _, v in results]
    assert 1 in versions and 2 in versions and versions[-1] == 2


def test_watch_reloads_on_manifest_change(tmp_path, core_base_dir, live_server_factory):
    bundle = build_bundle(tmp_path / "bundle", core_base_dir)
    s = live_server_factory(create_app(ServerSettings(bundle=str(bundle), quantize="none", watch=True,
                                                      watch_interval=0.1)))
    add_domain(bundle, "medical")
    deadline = time.monotonic() + 30
    while httpx.get(s.url + "/health").json()["bundle_version"] != 2:
        assert time.monotonic() < deadline, "--watch did not pick up the new manifest"
        time.sleep(0.05)
    assert "medical" in httpx.get(s.url + "/health").json()["domains"]


def test_metrics_cover_design_set(served):
    s, _ = served
    for _ in range(2):
        httpx.post(s.url + "/v1/completions", json={"prompt": "two plus two", "max_tokens": 5})
    httpx.post(s.url + "/v1/completions", json={"prompt": ""})
    m = metrics(s.url)
    for name in ("brainstacks_requests", "brainstacks_time_to_first_token_seconds",
                 "brainstacks_time_per_output_token_seconds", "brainstacks_e2e_request_latency_seconds",
                 "brainstacks_queue_time_seconds", "brainstacks_prompt_tokens", "brainstacks_generation_tokens",
                 "brainstacks_running_requests", "brainstacks_waiting_requests", "brainstacks_batch_size",
                 "brainstacks_router_weight", "brainstacks_stacks_loaded", "brainstacks_bundle_version",
                 "brainstacks_reloads"):
        assert name in m, name
    req = m["brainstacks_requests"]
    assert value(req, "brainstacks_requests_total", endpoint="/v1/completions", status="200") == 2
    assert value(req, "brainstacks_requests_total", endpoint="/v1/completions", status="400") == 1
    assert value(m["brainstacks_generation_tokens"], "brainstacks_generation_tokens_total") >= 2
    assert value(m["brainstacks_time_to_first_token_seconds"], "brainstacks_time_to_first_token_seconds_count") == 2
    for dom in ("math", "code"):
        assert value(m["brainstacks_router_weight"], "brainstacks_router_weight_count", domain=dom) == 2
    assert value(m["brainstacks_running_requests"], "brainstacks_running_requests") == 0


def test_reload_refuses_paths_outside_the_bundle(served, tmp_path):
    s, bundle = served
    import json

    outside = tmp_path / "outside"
    (outside / "stack").mkdir(parents=True)
    m = json.loads((bundle / "manifest.json").read_text())
    m["version"] += 1
    m["domains"].append({"name": "evil", "stacks": ["../outside/stack"]})
    (bundle / "manifest.json").write_text(json.dumps(m))
    r = httpx.post(s.url + "/admin/reload")
    assert r.status_code == 409 and "escapes the bundle" in r.json()["error"]["message"]
    assert httpx.get(s.url + "/health").json()["bundle_version"] == 1
