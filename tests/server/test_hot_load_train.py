"""Issue 5 acceptance: under steady load, a new domain trained by `brainstacks train --out` into the served bundle
appears (via --watch) with no failed request."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from server.app import create_app
from server.settings import ServerSettings

ROOT = Path(__file__).resolve().parents[2]


def train(recipe: Path, out: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-m", "brainstacks_cli", "train", "--recipe", str(recipe), "--out", str(out),
                        "--quiet", "--device", "cpu"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]


def test_trained_domain_appears_under_load_without_failures(tmp_path, core_base_dir, live_server_factory):
    from tests.toy_recipes import write_toy_recipe

    kw = dict(steps_per_round=4, max_rounds=1, eval_every=2)
    r1 = write_toy_recipe(tmp_path, core_base_dir, ["math"], **kw)
    r2 = write_toy_recipe(tmp_path, core_base_dir, ["math", "medical"], **kw)
    bundle = tmp_path / "bundle"
    train(r1, bundle)
    app = create_app(ServerSettings(bundle=str(bundle), quantize="nf4", watch=True, watch_interval=0.2, threads=1))
    s = live_server_factory(app)
    v0 = httpx.get(s.url + "/health").json()["bundle_version"]

    stop = threading.Event()
    done: list[int] = []
    errors: list[str] = []

    def client(stream: bool):
        with httpx.Client(base_url=s.url, timeout=60) as c:
            while not stop.is_set():
                body = {"prompt": "patient dose mg per kg", "max_tokens": 8, "stream": stream}
                try:
                    if stream:
                        with c.stream("POST", "/v1/completions", json=body) as r:
                            lines = [ln for ln in r.iter_lines() if ln.startswith("data: ")]
                            if r.status_code != 200 or lines[-1] != "data: [DONE]":
                                errors.append(f"{r.status_code} {lines[-2:]}")
                                continue
                            v = int(lines[0].split('"bundle_version": ')[1].split("}")[0])
                    else:
                        r = c.post("/v1/completions", json=body)
                        if r.status_code != 200:
                            errors.append(f"{r.status_code} {r.text[:200]}")
                            continue
                        v = r.json()["brainstacks"]["bundle_version"]
                    done.append(v)
                except Exception as e:  # noqa: BLE001 - every failure counts
                    errors.append(repr(e))

    threads = [threading.Thread(target=client, args=(st,)) for st in (True, False)]
    for t in threads:
        t.start()
    try:
        train(r2, bundle)  # trains only the missing domain, retrains the router, bumps the version
        final = max(int(p.read_text().split('"version": ')[1].split(",")[0]) for p in [bundle / "manifest.json"])
        deadline = time.monotonic() + 60
        while httpx.get(s.url + "/health").json()["bundle_version"] != final:
            assert time.monotonic() < deadline, "the new version was not picked up"
            time.sleep(0.1)
        n = len(done)
        while len(done) < n + 4:  # keep serving on the new version
            time.sleep(0.05)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert errors == []
    assert done.count(v0) > 0 and done[-1] == final > v0
    health = httpx.get(s.url + "/health").json()
    assert health["domains"] == ["math", "medical"]
    routed = httpx.post(s.url + "/debug/route", json={"prompt": "patient dose mg per kg for the heart drug"}).json()
    assert set(routed["weights"]) == {"math", "medical"}
    ids = [m["id"] for m in httpx.get(s.url + "/v1/models").json()["data"]]
    assert "brainstacks:medical" in ids
