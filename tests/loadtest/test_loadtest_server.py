"""loadtest against the project's own server: `create_app(settings)` on a tiny bundle, served by uvicorn on a
loopback port, streamed to by concurrent clients while the bundle is republished and hot-reloaded.

This checks that loadtest reads the real server's SSE chunks and `usage` (exact token counts), and that the
server-side hot reload it drives costs no request.
"""

from __future__ import annotations

import threading
import time

import pytest

from loadtest import LoadConfig, run


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    import uvicorn

    from benchmarks.bundles import build_tiny_bundle
    from server.app import create_app
    from server.settings import ServerSettings

    bundle = build_tiny_bundle(tmp_path_factory.mktemp("lt") / "bundle")
    app = create_app(ServerSettings(bundle=str(bundle), quantize="none", admin_key="adm", threads=1,
                                    log_level="warning"))
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", access_log=False))
    th = threading.Thread(target=srv.run, daemon=True)
    th.start()
    import httpx

    deadline = time.monotonic() + 120
    url = None
    while True:
        assert th.is_alive() and time.monotonic() < deadline, "server did not become ready"
        if srv.started and url is None:
            url = f"http://127.0.0.1:{srv.servers[0].sockets[0].getsockname()[1]}"
        if url is not None:
            try:
                if httpx.get(url + "/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
        time.sleep(0.05)  # polling startup, not timing anything
    yield url, bundle
    srv.should_exit = True
    th.join(timeout=30)


def test_streaming_load_with_hot_reloads_against_real_server(live):
    from benchmarks.bundles import bump_manifest

    url, bundle = live
    published = []
    cfg = LoadConfig(url=url, concurrency=4, requests=10_000, duration=1.5, stream=True, max_tokens=8,
                     reload_every=0.4, admin_key="adm", timeout=60)
    report = run(cfg, before_reload=lambda: published.append(bump_manifest(bundle)))
    s = report.summary()
    assert s["ok"] >= 4 and s["errors"] == 0, s["errors_by_kind"]
    assert s["usage_missing"] == 0
    assert s["generated_tokens"] == 8 * s["ok"]  # the tiny bundle never emits EOS: exact lengths from usage
    assert s["ttft_s"]["count"] == s["ok"] and s["itl_s"]["count"] > 0
    # the run lasts >= 1.5 s, so the 0.4 s reloader fired; every reload validated and swapped without a failure
    assert s["reloads"]["attempted"] >= 1 and s["reloads"]["failed"] == 0, report.reloads
    assert [r.version for r in report.reloads] == published
    assert s["bundle_versions_seen"] and set(s["bundle_versions_seen"]) <= {1, *published}


def test_non_streaming_and_errors_against_real_server(live):
    url, _ = live
    s = run(LoadConfig(url=url, concurrency=2, requests=4, max_tokens=5)).summary()
    assert s["ok"] == 4 and s["generated_tokens"] == 20 and s["ttft_s"]["count"] == 0
    s = run(LoadConfig(url=url, concurrency=2, requests=3, model="brainstacks:nope")).summary()
    assert s["errors_by_kind"] == {"http_404": 3}
    s = run(LoadConfig(url=url, concurrency=1, requests=10_000, duration=0.3, reload_every=0.05,
                       admin_key="wrong", max_tokens=4)).summary()
    assert s["ok"] >= 1 and s["errors"] == 0
    assert s["reloads"]["attempted"] >= 1 and set(s["reloads"]["by_result"]) == {"http_401"}
