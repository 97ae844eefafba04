"""A server given a versioned bundle (BUNDLE/CURRENT -> versions/<n>) follows the pointer: at start, on
POST /admin/reload and with --watch; a refused version keeps the served one; a single-directory bundle is unchanged."""

from __future__ import annotations

import json
import shutil
import time

import httpx

from brainstacks.versions import publish_version, version_dir
from server.app import create_app
from server.settings import ServerSettings

from .conftest import add_domain, build_bundle


def _stacks(url: str) -> dict:
    return httpx.get(url + "/admin/stacks", timeout=30).json()


def _wait_version(url: str, version: int, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = _stacks(url)
        if s["bundle_version"] == version:
            return s
        time.sleep(0.05)
    raise AssertionError(f"still serving {s['bundle_version']}, not {version}, after {timeout}s")


def test_watch_follows_the_pointer_and_refuses_a_corrupt_version(tmp_path, core_base_dir, live_server_factory):
    work, shared = tmp_path / "work", tmp_path / "shared"
    build_bundle(work, core_base_dir, version=1)
    publish_version(shared, src=work)
    s = live_server_factory(create_app(ServerSettings(bundle=str(shared), quantize="none", watch=True,
                                                      watch_interval=0.1, max_tokens_limit=16)))
    st = _stacks(s.url)
    assert st["bundle_version"] == 1 and st["bundle_dir"] == str(version_dir(shared, 1).resolve())
    # the writer changes its working copy: nothing moves until it publishes
    assert add_domain(work, "chat", seed=3) == 2
    reg = s.app.state.bs.registry
    assert reg.manifest_stamp() == reg.seen_manifest  # what --watch compares has not changed: nothing to reload
    assert _stacks(s.url)["bundle_version"] == 1
    publish_version(shared, src=work)
    st = _wait_version(s.url, 2)
    assert st["bundle_dir"] == str(version_dir(shared, 2).resolve()) and "chat" in [d["name"] for d in st["domains"]]
    out = httpx.post(s.url + "/v1/completions", json={"prompt": "hello", "max_tokens": 2}, timeout=30).json()
    assert out["brainstacks"]["bundle_version"] == 2
    # a corrupt version 3 is published: the reload is refused and version 2 keeps serving
    bad = tmp_path / "bad"
    shutil.copytree(version_dir(shared, 2), bad)
    m = json.loads((bad / "manifest.json").read_text())
    m["version"] = 3
    (bad / "manifest.json").write_text(json.dumps(m))
    f = bad / m["domains"][0]["stacks"][0] / "stack.safetensors"
    f.write_bytes(f.read_bytes()[:-4] + b"\0\0\0\0")
    publish_version(shared, src=bad)
    r = httpx.post(s.url + "/admin/reload", timeout=60)
    assert r.status_code == 409 and "corrupt or truncated" in r.text
    assert _stacks(s.url)["bundle_version"] == 2


def test_single_directory_bundle_still_reloads_in_place(tmp_path, core_base_dir, live_server_factory):
    bundle = build_bundle(tmp_path / "bundle", core_base_dir, version=1)
    s = live_server_factory(create_app(ServerSettings(bundle=str(bundle), quantize="none", max_tokens_limit=16)))
    assert _stacks(s.url)["bundle_dir"] == str(bundle.resolve())
    add_domain(bundle, "chat", seed=2)
    r = httpx.post(s.url + "/admin/reload", timeout=60).json()
    assert r["result"] == "ok" and r["bundle_version"] == 2 and _stacks(s.url)["bundle_dir"] == str(bundle.resolve())
